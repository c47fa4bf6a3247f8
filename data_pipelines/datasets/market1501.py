"""Market-1501: `bounding_box_train/`, `bounding_box_test/` (gallery), `query/` under the root.

Names `0002_c1s1_000451_03.jpg`: person id (4 digits; -1 junk, 0000 distractor), camera 1-6,
sequence, frame, box. `read_market_layout` also serves the datasets sharing this layout.
"""

import re
from pathlib import Path

from data_pipelines.datasets.records import (
    Dataset,
    assemble,
    one_based_camera,
    parse_name,
    read_folder,
)

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
PATTERN = re.compile(r"(?P<pid>-1|\d{4})_c(?P<camid>\d)s\d+_\d+_\d+\.jpg")
EXAMPLE = "0002_c1s1_000451_03.jpg"


def market_layout(example: str, top: str = "<root>") -> str:
    """The expected folder layout, for error messages and TFDS download instructions."""
    return "\n".join(f"  {top}/{folder}/{example} ..." for folder in SPLIT_FOLDERS.values())


def read_market_layout(name: str, root: str | Path, pattern: re.Pattern, example: str,
                       top: str = "<root>") -> Dataset:
    """A Dataset from the three Market-layout folders under `root`; `pattern` full-matches a file
    name with groups `pid` and `camid` (1-based camera number); `top` names `root` in the layout
    shown when a folder is missing."""
    root = Path(root)
    layout = market_layout(example, top)

    def parse(path: Path) -> tuple[int, int]:
        match = parse_name(pattern, path, example)
        return int(match["pid"]), one_based_camera(match["camid"], path)

    splits = {key: read_folder(root / folder, layout, parse)
              for key, folder in SPLIT_FOLDERS.items()}
    return assemble(name, root, **splits)


def read(root: str | Path) -> Dataset:
    """Market-1501 (e.g. `Market-1501-v15.09.15/`)."""
    return read_market_layout("market1501", root, PATTERN, EXAMPLE)
