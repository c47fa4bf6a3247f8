"""BoT strong baseline on MSMT17 (list-file layout: list_train.txt, list_query.txt, ...).

  python -m reid_jax.main --config=configs/msmt17.py --config.data.root=/data/MSMT17_V1
"""

import ml_collections

from configs.market import apply_ablation, base_config


def get_config(row: str = "bot") -> ml_collections.ConfigDict:
    return apply_ablation(base_config("msmt17"), row)
