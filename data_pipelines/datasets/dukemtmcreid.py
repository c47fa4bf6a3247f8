"""DukeMTMC-reID: the Market-1501 folder layout, names `0001_c2_f0046182.jpg` (id, camera 1-8,
frame)."""

import re
from pathlib import Path

from data_pipelines.datasets.market1501 import read_market_layout
from data_pipelines.datasets.records import Dataset

PATTERN = re.compile(r"(?P<pid>-1|\d{4})_c(?P<camid>\d)_f\d+\.jpg")
EXAMPLE = "0001_c2_f0046182.jpg"


def read(root: str | Path) -> Dataset:
    """DukeMTMC-reID (e.g. `DukeMTMC-reID/`)."""
    return read_market_layout("dukemtmcreid", root, PATTERN, EXAMPLE)
