"""CUHK03-NP (the 767/700 split of Zhong et al.): `labeled/` and `detected/` under the root, each
holding the Market-1501 folder layout; names `0001_c1_1.png` (id, camera 1-2, image)."""

import re
from pathlib import Path

from data_pipelines.datasets.market1501 import read_market_layout
from data_pipelines.datasets.records import Dataset

BOXES = ("labeled", "detected")
PATTERN = re.compile(r"(?P<pid>\d+)_c(?P<camid>\d)_\d+\.(?:png|jpg)")
EXAMPLE = "0001_c1_1.png"


def read(root: str | Path, boxes: str) -> Dataset:
    """CUHK03-NP with the `boxes` ("labeled" | "detected") crops (e.g. `cuhk03-np/`)."""
    if boxes not in BOXES:
        raise ValueError(f"CUHK03 boxes {boxes!r}; expected one of {BOXES}")
    return read_market_layout(f"cuhk03_{boxes}", Path(root) / boxes, PATTERN, EXAMPLE,
                              top=f"<root>/{boxes}")
