"""Reads a prepared TFDS build (see `data_pipelines.tfds_builders`) back into a Dataset whose
records carry the encoded image files, so the pipelines treat it like a folder. The build is
read from its folder (`builder_from_directory`), without the builder classes."""

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.datasets.records import Dataset, Records

SPLITS = ("train", "query", "gallery")


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> Records:
    """One split, in the build's record order, images left encoded."""
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    paths, pids, camids, encoded = [], [], [], []
    for example in tfds.as_numpy(dataset):
        paths.append(example["path"].decode())
        pids.append(example["pid"])
        camids.append(example["camid"])
        encoded.append(example["image"])
    return Records(tuple(paths), np.asarray(pids), np.asarray(camids), tuple(encoded))


def read(name: str, data_dir: str) -> Dataset:
    """The TFDS dataset `name` (e.g. "market1501") prepared under `data_dir` (its newest
    version)."""
    versions = [info.parent for info in (Path(data_dir).expanduser() / name).glob(
        "*/dataset_info.json")]
    if not versions:
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared under {data_dir}; build it once with\n"
            f"  python -m data_pipelines.build_tfds {name} --data_dir={data_dir} "
            f"--manual_dir=<the {name} folder>")
    newest = max(versions, key=lambda p: tuple(int(x) for x in p.name.split(".")
                                               if x.isdigit()))
    builder = tfds.builder_from_directory(str(newest))
    splits = {split: read_split(builder, split) for split in SPLITS}
    num_cameras = 1 + max(int(records.camids.max()) for records in splits.values())
    return Dataset(**splits, num_train_ids=int(splits["train"].pids.max()) + 1,
                   num_cameras=num_cameras)
