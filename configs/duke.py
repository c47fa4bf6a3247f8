"""BoT strong baseline on DukeMTMC-reID (same recipe as Market-1501).

  python -m reid_jax.main --config=configs/duke.py --config.data.root=/data/DukeMTMC-reID
  python -m reid_jax.main --config=configs/duke.py:bnneck ...   # an ablation row
"""

import ml_collections

from configs.market import apply_ablation, base_config


def get_config(row: str = "bot") -> ml_collections.ConfigDict:
    return apply_ablation(base_config("dukemtmcreid"), row)
