"""Decoding: encoded file -> uint8 [H, W, 3] at the train / test size, an in-memory image store
indexed by record, and errors that name the unreadable file.

The resize is the reference's first transform (PIL bilinear to (H, W), uint8 out): TF's bilinear
resize with antialiasing (PIL's triangle filter, widened when shrinking), rounded half up to uint8.
"""

from collections.abc import Callable

import tensorflow as tf

from data_pipelines.datasets.records import Records

# The accelerators belong to JAX: a full TensorFlow install must not grab GPU memory.
tf.config.set_visible_devices([], "GPU")

DECODE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError)
CACHE_CHUNK = 256  # images decoded per step while filling the cache


def decode_resize(encoded: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """An encoded JPEG / PNG / BMP (scalar string) -> uint8 [H, W, 3], bilinearly resized."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    # Antialiasing only changes a shrink; skipping it when enlarging is 3x faster.
    shrink = tf.reduce_any(tf.shape(image)[:2] > tf.constant(size))
    resized = tf.cond(shrink, lambda: tf.image.resize(image, size, antialias=True),
                      lambda: tf.image.resize(image, size))
    return tf.cast(tf.clip_by_value(tf.floor(resized + 0.5), 0, 255), tf.uint8)


def encoded_dataset(records: Records) -> tf.data.Dataset:
    """The encoded files of `records` (scalar strings), in record order."""
    if records.encoded is not None:
        return tf.data.Dataset.from_tensor_slices(list(records.encoded))
    return tf.data.Dataset.from_tensor_slices(list(records.paths)).map(
        tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE)


def encoded_file(records: Records, index: int) -> bytes:
    """Record `index`'s encoded image file."""
    if records.encoded is not None:
        return records.encoded[index]
    with open(records.paths[index], "rb") as f:
        return f.read()


def raise_for_bad_image(records: Records, candidates: range, error: Exception) -> None:
    """Finds the first record of `candidates` that cannot be read or decoded and raises a
    ValueError naming its file; re-raises `error` when all of them decode."""
    for index in candidates:
        try:
            tf.io.decode_image(encoded_file(records, index), channels=3, expand_animations=False)
        except (OSError, *DECODE_ERRORS) as bad:
            message = getattr(bad, "message", str(bad))
            raise ValueError(f"cannot read or decode image {records.paths[index]}: {message}") \
                from error
    raise error


def checked(records: Records, next_batch: Callable[[], object], first: int,
            count: int) -> object:
    """`next_batch()`, turning a decode error into one naming the bad file among the `count`
    records from `first`."""
    try:
        return next_batch()
    except DECODE_ERRORS as error:
        raise_for_bad_image(records, range(first, min(first + count, len(records))), error)


class ImageStore:
    """The train images, addressed by record index, for use inside tf.data functions.

    cache=True: every image decoded and resized once, held as uint8 [N, H, W, 3] in a tf.Variable
    (N * H * W * 3 bytes: Market-1501 at 256x128, 1.3 GB). cache=False: the encoded files held in
    memory, decoded on every fetch.
    """

    def __init__(self, records: Records, size: tuple[int, int], cache: bool):
        self.size = tuple(size)
        self.cache = cache
        if cache:
            self.images = self._decode_all(records)
        else:
            self.encoded = tf.constant([encoded_file(records, i) for i in range(len(records))])

    def _decode_all(self, records: Records) -> tf.Variable:
        images = tf.Variable(tf.zeros((len(records), *self.size, 3), tf.uint8), trainable=False)
        decoded = (encoded_dataset(records)
                   .map(lambda e: decode_resize(e, self.size), num_parallel_calls=tf.data.AUTOTUNE)
                   .batch(CACHE_CHUNK).prefetch(2))
        iterator = iter(decoded)
        for start in range(0, len(records), CACHE_CHUNK):
            chunk = checked(records, lambda: next(iterator), start, CACHE_CHUNK)
            images.scatter_update(tf.IndexedSlices(chunk, tf.range(start, start + len(chunk))))
        return images

    def fetch(self, indices: tf.Tensor) -> tf.Tensor:
        """Record indices [B] int -> uint8 [B, H, W, 3] (graph-compatible)."""
        if self.cache:
            return tf.gather(self.images, indices)
        return tf.map_fn(lambda e: decode_resize(e, self.size), tf.gather(self.encoded, indices),
                         fn_output_signature=tf.TensorSpec((*self.size, 3), tf.uint8))
