"""A generic reader driven by a file-name regex, and the `cuhk03_pairs` preset built on it.

The regex full-matches file names and holds a group `pid` and either a group `camid` (a camera
number, `first_camera` being the first one) or a group `index` (an image index mapped to camera
`(index - index_offset) // images_per_camera`). Query and gallery may come from one folder,
split by camera. From the command line: `--config.data.dataset=pattern` and the
`config.data.pattern.*` keys (the PatternLayout fields).

`cuhk03_pairs` reads the shared `cuhk03-labeled` folder: `train/` and `val/` with names
`PPPP_II.jpg`, II 00-04 from camera A (-> 0), 05-09 from camera B (-> 1); the val queries are the
camera-A images, the gallery the camera-B images.
"""

import dataclasses
import re
from pathlib import Path

from data_pipelines.datasets.records import (
    Dataset,
    assemble,
    list_images,
    parse_name,
    read_folder,
)


@dataclasses.dataclass(frozen=True)
class PatternLayout:
    """regex: full-matches a file name (groups `pid` and `camid` or `index`).
    train_dir / query_dir / gallery_dir: folders under the root (query and gallery may share one).
    images_per_camera, index_offset: with an `index` group, camera =
      (index - index_offset) // images_per_camera (offset 1 for indices counted from 1).
    first_camera: with a `camid` group, the number of the first camera (ids become 0-based).
    query_cameras / gallery_cameras: keep only these 0-based cameras in that split (empty: all).
    """

    regex: str
    train_dir: str
    query_dir: str
    gallery_dir: str
    images_per_camera: int = 0
    index_offset: int = 0
    first_camera: int = 1
    query_cameras: tuple[int, ...] = ()
    gallery_cameras: tuple[int, ...] = ()

    def __post_init__(self):
        key = "config.data.pattern"
        try:
            groups = set(re.compile(self.regex).groupindex)
        except re.error as error:
            raise ValueError(f"{key}.regex={self.regex!r} is not a regular expression: "
                             f"{error}") from error
        if "pid" not in groups or ("camid" in groups) == ("index" in groups):
            raise ValueError(f"{key}.regex={self.regex!r} needs a group (?P<pid>...) and "
                             "exactly one of the groups (?P<camid>...) and (?P<index>...)")
        if "index" in groups and self.images_per_camera < 1:
            raise ValueError(f"{key}.regex={self.regex!r} has an `index` group: set "
                             f"{key}.images_per_camera (camera = (index - index_offset) // "
                             "images_per_camera)")
        object.__setattr__(self, "query_cameras", tuple(self.query_cameras))
        object.__setattr__(self, "gallery_cameras", tuple(self.gallery_cameras))

    def describe(self) -> str:
        return (f"  <root>/{self.train_dir}/, <root>/{self.query_dir}/, "
                f"<root>/{self.gallery_dir}/ holding files whose names match {self.regex!r}")


CUHK03_PAIRS = PatternLayout(regex=r"(?P<pid>\d{4})_(?P<index>\d{2})\.jpg", train_dir="train",
                             query_dir="val", gallery_dir="val", images_per_camera=5,
                             query_cameras=(0,), gallery_cameras=(1,))


def read_layout(name: str, root: str | Path, layout: PatternLayout) -> Dataset:
    """The Dataset under `root` laid out as `layout`."""
    root = Path(root)
    pattern = re.compile(layout.regex)
    example = f"a name matching {layout.regex}"

    def parse(path: Path) -> tuple[int, int]:
        match = parse_name(pattern, path, example)
        if "index" in pattern.groupindex:
            index = int(match["index"]) - layout.index_offset
            if index < 0:
                raise ValueError(f"image index {match['index']} in {path} is below "
                                 f"config.data.pattern.index_offset={layout.index_offset}")
            return int(match["pid"]), index // layout.images_per_camera
        camera = int(match["camid"]) - layout.first_camera
        if camera < 0:
            raise ValueError(f"camera {match['camid']} in {path} is below first_camera="
                             f"{layout.first_camera}")
        return int(match["pid"]), camera

    def split(folder: str, cameras: tuple[int, ...]):
        images = list_images(root / folder, layout.describe())
        if images and not any(pattern.fullmatch(p.name) for p in images):
            raise ValueError(f"config.data.pattern.regex={layout.regex!r} matches no file in "
                             f"{root / folder} (e.g. not {images[0].name!r})")
        records = read_folder(root / folder, layout.describe(), parse)
        return records if not cameras else records.select(
            [camid in cameras for camid in records.camids.tolist()])

    return assemble(name, root, split(layout.train_dir, None),
                    split(layout.query_dir, layout.query_cameras),
                    split(layout.gallery_dir, layout.gallery_cameras))


def read(root: str | Path, **layout) -> Dataset:
    """The "pattern" dataset: `layout` holds the PatternLayout fields."""
    return read_layout("pattern", root, PatternLayout(**layout))


def read_cuhk03_pairs(root: str | Path) -> Dataset:
    """The shared `cuhk03-labeled` folder (743 train ids; val: camera A queries, B gallery)."""
    return read_layout("cuhk03_pairs", root, CUHK03_PAIRS)
