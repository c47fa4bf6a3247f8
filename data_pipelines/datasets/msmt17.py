"""MSMT17: list files under the root name each split's images and ids.

  <root>/list_train.txt, list_val.txt     lines `0000/0000_000_01_0303morning_0015_0.jpg 0`,
                                          paths relative to <root>/train (V2: mask_train_v2)
  <root>/list_query.txt, list_gallery.txt paths relative to <root>/test (V2: mask_test_v2)

The id is the list's; the camera is the third field of the file name (`0168_018_14_...`:
id 0168, image 018, camera 14 of 1-15). Training uses list_train + list_val (1,041 ids,
32,621 images), the usual protocol.
"""

import re
from pathlib import Path

import numpy as np

from data_pipelines.datasets.records import Dataset, Records, assemble, one_based_camera, parse_name

LIST_FILES = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",),
              "gallery": ("list_gallery.txt",)}
IMAGE_FOLDERS = {"train": ("train", "mask_train_v2"), "query": ("test", "mask_test_v2"),
                 "gallery": ("test", "mask_test_v2")}
PATTERN = re.compile(r"(?P<pid>\d{4})_(?P<image>\d{3})_(?P<camid>\d{2})_.+\.jpg")
EXAMPLE = "0168_018_14_0303morning_1118_1_ex.jpg"
LAYOUT = ("  <root>/list_train.txt, list_val.txt, list_query.txt, list_gallery.txt "
          "(lines `0000/0000_000_01_0303morning_0015_0.jpg 0`)\n"
          "  <root>/train/ (or mask_train_v2/), <root>/test/ (or mask_test_v2/)")


def parse_camera(path: Path) -> int:
    """The 0-based camera id from an MSMT17 file name."""
    return one_based_camera(parse_name(PATTERN, path, EXAMPLE)["camid"], path)


def image_folder(root: Path, candidates: tuple[str, ...]) -> Path:
    """The first existing folder of `candidates` (V1 / V2 names) under `root`."""
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"none of the folders {candidates} found under {root}; "
                            f"expected layout:\n{LAYOUT}")


def read_list(list_file: Path, folder: Path) -> Records:
    """Records of a list file whose lines are `relative/path.jpg pid`."""
    if not list_file.is_file():
        raise FileNotFoundError(f"list file {list_file} not found; expected layout:\n{LAYOUT}")
    paths, pids, camids = [], [], []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{list_file}:{number}: expected `relative/path.jpg pid`, "
                             f"got {line!r}")
        path = folder / fields[0]
        paths.append(str(path))
        pids.append(int(fields[1]))
        camids.append(parse_camera(path))
    return Records(tuple(paths), pids, camids)


def concat(parts: list[Records]) -> Records:
    """The records of `parts`, one after the other."""
    return Records(sum((r.paths for r in parts), ()), np.concatenate([r.pids for r in parts]),
                   np.concatenate([r.camids for r in parts]))


def read(root: str | Path) -> Dataset:
    """MSMT17 V1 or V2 (e.g. `MSMT17_V1/`)."""
    root = Path(root)
    splits = {key: concat([read_list(root / name, image_folder(root, IMAGE_FOLDERS[key]))
                           for name in names])
              for key, names in LIST_FILES.items()}
    return assemble("msmt17", root, **splits)
