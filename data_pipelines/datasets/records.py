"""Split records, the assembled Dataset, and the checks every reader shares.

A reader parses a dataset folder into three raw splits (file paths, original person ids, 0-based
camera ids) and hands them to `assemble`, which drops junk images (pid -1), relabels the train ids
to 0..C-1, refuses empty splits and warns about queries that no gallery image can match.
"""

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
JUNK_PID = -1


@dataclasses.dataclass(frozen=True)
class Records:
    """One split as parallel arrays, in record order.

    paths: N file paths (str); for a TFDS source, the path the image had in the source folder.
    pids: [N] int32 person ids (train: relabelled 0..C-1; query/gallery: as in the file names,
      0 = distractor).
    camids: [N] int32 camera ids, 0-based.
    encoded: None (read `paths` from disk) or N encoded image files (bytes), e.g. from TFDS.
    """

    paths: tuple[str, ...]
    pids: np.ndarray
    camids: np.ndarray
    encoded: tuple[bytes, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "pids", np.asarray(self.pids, np.int32).reshape(-1))
        object.__setattr__(self, "camids", np.asarray(self.camids, np.int32).reshape(-1))
        sizes = {len(self.paths), len(self.pids), len(self.camids)}
        if self.encoded is not None:
            object.__setattr__(self, "encoded", tuple(self.encoded))
            sizes.add(len(self.encoded))
        if len(sizes) != 1:
            raise ValueError(f"records of unequal lengths: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        """(path, pid, camid) per record."""
        return zip(self.paths, self.pids.tolist(), self.camids.tolist(), strict=True)

    def select(self, keep: np.ndarray) -> "Records":
        """The records where the boolean mask `keep` [N] is True, order kept."""
        index = np.flatnonzero(keep)
        encoded = None if self.encoded is None else tuple(self.encoded[i] for i in index)
        return Records(tuple(self.paths[i] for i in index), self.pids[index], self.camids[index],
                       encoded)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """train / query / gallery records; `num_train_ids` = C (train pids are 0..C-1);
    `num_cameras` = 1 + the largest camera id over all splits."""

    train: Records
    query: Records
    gallery: Records
    num_train_ids: int
    num_cameras: int


def parse_name(pattern: re.Pattern, path: Path, example: str) -> re.Match:
    """Full-matches `pattern` on the file name of `path`; ValueError naming the file otherwise."""
    match = pattern.fullmatch(path.name)
    if match is None:
        raise ValueError(f"cannot parse file name {path}: expected names like {example!r} "
                         f"(pattern {pattern.pattern!r})")
    return match


def one_based_camera(value: str, path: Path) -> int:
    """A 1-based camera number from a file name, as a 0-based id."""
    camera = int(value)
    if camera < 1:
        raise ValueError(f"camera {camera} in {path}: camera numbers in these names start at 1")
    return camera - 1


def list_images(folder: Path, layout: str) -> list[Path]:
    """The image files (IMAGE_SUFFIXES) directly in `folder`, sorted by name.

    FileNotFoundError naming the folder and the expected `layout` when it is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} not found; expected layout:\n{layout}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_folder(folder: Path, layout: str,
                parse: Callable[[Path], tuple[int, int]]) -> Records:
    """Records of every image in `folder`; `parse(path) -> (pid, camid)` reads a file name."""
    paths = list_images(folder, layout)
    ids = [parse(p) for p in paths]
    return Records(tuple(map(str, paths)), [pid for pid, _ in ids], [cam for _, cam in ids])


def relabel(pids: np.ndarray) -> tuple[np.ndarray, int]:
    """Maps the sorted distinct ids to 0..C-1: ([N] int32 labels, C)."""
    unique, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int32), len(unique)


def assemble(name: str, root: str | Path, train: Records, query: Records,
             gallery: Records) -> Dataset:
    """The finished Dataset from raw splits (original pids, 0-based cameras).

    Junk images (pid -1) leave every split; distractors (pid 0) stay. Train pids are relabelled
    0..C-1. ValueError naming the split and `root` when a split is empty; a UserWarning with
    counts when queries have no gallery image of their id from another camera (evaluation skips
    those queries).
    """
    splits = {"train": train, "query": query, "gallery": gallery}
    splits = {key: records.select(records.pids != JUNK_PID) for key, records in splits.items()}
    for key, records in splits.items():
        if not len(records):
            raise ValueError(f"{name}: the {key} split under {root} holds no images")
    labels, num_ids = relabel(splits["train"].pids)
    splits["train"] = dataclasses.replace(splits["train"], pids=labels)
    warn_unmatched_queries(name, splits["query"], splits["gallery"])
    num_cameras = 1 + max(int(records.camids.max()) for records in splits.values())
    return Dataset(**splits, num_train_ids=num_ids, num_cameras=num_cameras)


def warn_unmatched_queries(name: str, query: Records, gallery: Records) -> None:
    """Warns with counts when some queries have no gallery image of the same id taken by another
    camera: the evaluation protocol cannot score them."""
    gallery_cams: dict[int, set[int]] = {}
    for pid, cam in zip(gallery.pids.tolist(), gallery.camids.tolist(), strict=True):
        gallery_cams.setdefault(pid, set()).add(cam)
    unmatched = [pid for pid, cam in zip(query.pids.tolist(), query.camids.tolist(), strict=True)
                 if not gallery_cams.get(pid, set()) - {cam}]
    if unmatched:
        warnings.warn(
            f"{name}: {len(unmatched)} of {len(query)} queries ({len(set(unmatched))} ids) have "
            "no gallery image of their id from another camera; evaluation will skip them",
            UserWarning, stacklevel=3)
