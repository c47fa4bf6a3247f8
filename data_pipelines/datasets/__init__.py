"""Dataset readers and the registry `get_dataset(dataset, root, **options) -> Dataset`.

Names (`config.data.dataset`) and what `root` (`config.data.root`) points at:
  market1501        Market-1501-v15.09.15/ (bounding_box_train, bounding_box_test, query)
  dukemtmcreid      DukeMTMC-reID/ (same layout)
  cuhk03_labeled    cuhk03-np/ (labeled/ holding the Market layout)
  cuhk03_detected   cuhk03-np/ (detected/ holding the Market layout)
  msmt17            MSMT17_V1/ (list_*.txt, train/, test/)
  cuhk03_pairs      the shared cuhk03-labeled/ folder (train/, val/; names PPPP_II.jpg)
  pattern           any folder; options = the fields of `pattern.PatternLayout` (regex, folders)
  synthetic         a synthetic Market-layout folder, written there first when absent; options =
                    the arguments of `synthetic.write_synthetic_market` (default: DEMO_SPEC)
  tfds:<name>       a prepared TFDS build of one of the above (`tfds_builders`); root = data_dir
"""

import functools
from collections.abc import Callable
from pathlib import Path

from data_pipelines.datasets import cuhk03, dukemtmcreid, market1501, msmt17, pattern
from data_pipelines.datasets.records import Dataset, Records

TFDS_PREFIX = "tfds:"


def _read_synthetic(root: str | Path, **spec) -> Dataset:
    from data_pipelines import synthetic  # Imports TensorFlow (JPEG encoding): only when used.

    synthetic.ensure_synthetic_market(root, **(spec or synthetic.DEMO_SPEC))
    return market1501.read_market_layout("synthetic", root, market1501.PATTERN,
                                         market1501.EXAMPLE)


READERS: dict[str, Callable[..., Dataset]] = {
    "market1501": market1501.read,
    "dukemtmcreid": dukemtmcreid.read,
    "cuhk03_labeled": functools.partial(cuhk03.read, boxes="labeled"),
    "cuhk03_detected": functools.partial(cuhk03.read, boxes="detected"),
    "msmt17": msmt17.read,
    "cuhk03_pairs": pattern.read_cuhk03_pairs,
    "pattern": pattern.read,
    "synthetic": _read_synthetic,
}
OPTIONS = ("pattern", "synthetic")  # the readers that take keyword options


def get_dataset(dataset: str, root: str | Path, **options) -> Dataset:
    """The Dataset named `dataset` read from `root` (see the module docstring for the names)."""
    if not str(root):
        raise ValueError(f"config.data.root is empty; set it to the {dataset!r} folder")
    if dataset.startswith(TFDS_PREFIX):
        from data_pipelines.datasets import tfds_source  # Imports TensorFlow Datasets.

        return tfds_source.read(dataset[len(TFDS_PREFIX):], root)
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(READERS)} "
                         f"or '{TFDS_PREFIX}<name>'")
    if options and dataset not in OPTIONS:
        raise ValueError(f"dataset {dataset!r} takes no options, got {sorted(options)}")
    return READERS[dataset](root, **options)


__all__ = ["Dataset", "Records", "READERS", "get_dataset"]
