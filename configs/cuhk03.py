"""BoT strong baseline on CUHK03-NP (767/700 split).

  python -m reid_jax.main --config=configs/cuhk03.py --config.data.root=/data/cuhk03-np
  python -m reid_jax.main --config=configs/cuhk03.py:detected ...

The argument picks the boxes: "labeled" (default) or "detected".
"""

import ml_collections

from configs.market import base_config

BOXES = ("labeled", "detected")


def get_config(boxes: str = "labeled") -> ml_collections.ConfigDict:
    if boxes not in BOXES:
        raise ValueError(f"unknown CUHK03 boxes {boxes!r}; expected one of {BOXES}")
    return base_config(f"cuhk03_{boxes}")
