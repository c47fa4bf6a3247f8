"""TFDS builders for the re-ID datasets, read from a manual download folder.

Each builder runs the folder reader of `data_pipelines.datasets` and stores its records: features
`image` (the original encoded file), `pid` (train: relabelled 0..C-1; query/gallery: original,
0 = distractor; junk -1 left out), `camid` (0-based), `path` (relative to the folder); splits
train / query / gallery. Build once, then read with `get_dataset("tfds:<name>", data_dir)`:

  python -m data_pipelines.build_tfds market1501 --manual_dir=/data/Market-1501-v15.09.15 \
      --data_dir=~/tensorflow_datasets
  # or, where the TFDS CLI works (it needs apache_beam):
  tfds build --imports=data_pipelines.tfds_builders market1501 --manual_dir=... --data_dir=...
"""

import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.datasets import get_dataset
from data_pipelines.datasets.records import Records

LAYOUTS = {
    "market1501": "Market-1501-v15.09.15/: bounding_box_train/, bounding_box_test/, query/",
    "dukemtmcreid": "DukeMTMC-reID/: bounding_box_train/, bounding_box_test/, query/",
    "cuhk03_labeled": "cuhk03-np/: labeled/{bounding_box_train,bounding_box_test,query}/",
    "cuhk03_detected": "cuhk03-np/: detected/{bounding_box_train,bounding_box_test,query}/",
    "msmt17": "MSMT17_V1/: list_{train,val,query,gallery}.txt, train/, test/",
    "cuhk03_pairs": "cuhk03-labeled/: train/, val/ with names PPPP_II.jpg",
}


class ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: subclasses set READER, a name of `data_pipelines.datasets.READERS`."""

    VERSION = tfds.core.Version("1.0.0")
    READER = ""
    # TFDS looks for a download-checksums file next to the code through `code_path`, which needs
    # the `importlib_resources` backport for builders inside a package; nothing is downloaded here.
    code_path = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.MANUAL_DOWNLOAD_INSTRUCTIONS = (
            f"Download the dataset and pass its root folder as --manual_dir; expected: "
            f"{LAYOUTS[cls.READER]}")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=f"{self.READER} person re-identification crops (train/query/gallery).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "pid": np.int32,
                "camid": np.int32,
                "path": tfds.features.Text(),
            }))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        dataset = get_dataset(self.READER, root)
        return {split: self._generate_examples(getattr(dataset, split), root)
                for split in ("train", "query", "gallery")}

    def _generate_examples(self, records: Records, root: Path):
        for key, (path, pid, camid) in enumerate(records):
            yield key, {"image": path, "pid": pid, "camid": camid,
                        "path": os.path.relpath(path, root)}


class Market1501(ReidBuilder):
    READER = "market1501"


class Dukemtmcreid(ReidBuilder):
    READER = "dukemtmcreid"


class Cuhk03Labeled(ReidBuilder):
    READER = "cuhk03_labeled"


class Cuhk03Detected(ReidBuilder):
    READER = "cuhk03_detected"


class Msmt17(ReidBuilder):
    READER = "msmt17"


class Cuhk03Pairs(ReidBuilder):
    READER = "cuhk03_pairs"


BUILDERS = {cls.READER: cls for cls in (Market1501, Dukemtmcreid, Cuhk03Labeled, Cuhk03Detected,
                                        Msmt17, Cuhk03Pairs)}


def build(name: str, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Prepares the TFDS dataset `name` from the folder `manual_dir` into `data_dir`."""
    builder = BUILDERS[name](data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder

