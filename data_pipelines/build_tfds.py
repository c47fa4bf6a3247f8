"""Prepares a TFDS dataset (see `tfds_builders`) from its downloaded folder, once:

  python -m data_pipelines.build_tfds market1501 --manual_dir=/data/Market-1501-v15.09.15 \
      --data_dir=~/tensorflow_datasets

then train with config.data.dataset = "tfds:market1501", config.data.root = the data_dir.
"""

import argparse
import os

from data_pipelines import tfds_builders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(tfds_builders.BUILDERS))
    parser.add_argument("--manual_dir", required=True, help="the dataset's downloaded folder")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets")
    args = parser.parse_args()
    builder = tfds_builders.build(args.name, args.manual_dir, os.path.expanduser(args.data_dir))
    print(builder.info)


if __name__ == "__main__":
    main()
