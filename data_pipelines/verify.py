"""Every image of a split decoded once, before any compute: a bad file stops the run at start
with its path, not at the first evaluation (or never, for train images that are not cached)."""

import sys
import time

import tensorflow as tf

from data_pipelines.datasets.records import Records
from data_pipelines.images import CACHE_CHUNK, checked, decode, encoded_dataset


def verify_images(records: Records, split: str) -> None:
    """Decodes every image of `records` (in parallel, results dropped); ValueError naming the
    first file that cannot be read or decoded. Prints progress for large splits."""
    shapes = iter(encoded_dataset(records).map(lambda e: tf.shape(decode(e)),
                                               num_parallel_calls=tf.data.AUTOTUNE)
                  .batch(CACHE_CHUNK).prefetch(2))
    start, shown = time.perf_counter(), False
    for first in range(0, len(records), CACHE_CHUNK):
        checked(records, lambda: next(shapes), first, CACHE_CHUNK)
        if time.perf_counter() - start > 5 and (first // CACHE_CHUNK) % 20 == 0:
            done = min(first + CACHE_CHUNK, len(records))
            sys.stderr.write(f"checking {split} images: {done}/{len(records)}\n")
            shown = True
    if shown:
        sys.stderr.write(f"checked {len(records)} {split} images\n")
