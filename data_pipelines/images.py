"""Decoding: encoded file -> uint8 [H, W, 3] at the train / test size, an in-memory image store
indexed by record, and errors that name the unreadable file.

Decode and resize reproduce the reference's `PIL.Image.open(path).convert("RGB")` and its first
transform (`T.Resize((H, W))`, i.e. `Image.resize((W, H), BILINEAR)`) bit for bit, in TF graph
ops: JPEGs decode with libjpeg's accurate integer IDCT (PIL's), and the resize is Pillow's 8-bit
resampler. That is separable: per axis, each output pixel is a weighted sum of input pixels under a
triangle filter of support 1, widened by the scale when shrinking; the weights are normalised in
float64 and rounded to 22-bit fixed point, and each pass rounds its integer sum back to uint8. The
horizontal pass runs first, except that, like Pillow 13, the vertical one does when the height
shrinks by more than twice as many pixels as the width.
"""

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from data_pipelines.datasets.records import Records

# The accelerators belong to JAX: a full TensorFlow install must not grab GPU memory.
tf.config.set_visible_devices([], "GPU")

DECODE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError)
CACHE_CHUNK = 256  # images decoded per step while filling the cache
PRECISION_BITS = 22  # fraction bits of Pillow's fixed-point weights for 8-bit images


def bilinear_weights(in_shape: tf.Tensor,
                     out_sizes: tuple[int, ...]) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """Pillow's bilinear weights for resizing axis i of an image of shape `in_shape` (int32) to
    `out_sizes[i]` pixels, all axes in one set of ops (per image, their number costs more than
    their size).

    Per axis, with taps the most input pixels any output pixel sums: int32 [taps, out], the input
    pixels that each output pixel sums, and int32 [taps, out, 1, 1], their weights in units of
    2**-22 (0 for taps past an output pixel's last one, whose index is clamped into the image).
    The float64 operations are Pillow's, in its order.
    """
    axis = np.repeat(np.arange(len(out_sizes)), out_sizes)  # the axis of each output pixel
    in_size = tf.gather(in_shape, axis)
    scale = tf.cast(in_size, tf.float64) / tf.constant(np.asarray(out_sizes, np.float64)[axis])
    support = tf.maximum(scale, 1.0)
    center = tf.constant(np.concatenate([np.arange(n) for n in out_sizes]) + 0.5) * scale
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)  # casts truncate, as in C
    count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - first
    tap = tf.range(tf.reduce_max(count))[:, None]
    index = first + tap
    distance = (tf.cast(index, tf.float64) - center + 0.5) * (1.0 / support)
    weights = tf.where(tap < count, tf.maximum(1.0 - tf.abs(distance), 0.0), 0.0)
    # Pillow normalises by the sum accumulated tap after tap; a cumulative sum adds in that order
    # (a tree reduction can round differently).
    total = tf.cumsum(weights, axis=0)[-1]
    # Weights are >= 0, so Pillow's rounding half away from zero is floor(w + 0.5).
    fixed = tf.floor(tf.math.divide_no_nan(weights, total) * 2.0**PRECISION_BITS + 0.5)
    index = tf.minimum(index, in_size - 1)
    fixed = tf.cast(fixed, tf.int32)[:, :, None, None]
    return list(zip(tf.split(index, out_sizes, axis=1), tf.split(fixed, out_sizes, axis=1),
                    strict=True))


def resample_rows(image: tf.Tensor, index: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """One Pillow bilinear pass along axis 0 with `bilinear_weights` for that axis:
    uint8 [in, M, 3] -> uint8 [out, M, 3]."""
    pixels = tf.gather(tf.cast(image, tf.int32), index)  # [taps, out, M, 3]
    total = tf.reduce_sum(pixels * weights, axis=0) + 2**(PRECISION_BITS - 1)
    # Weights are >= 0, so only the top needs Pillow's clipping.
    return tf.cast(tf.minimum(tf.bitwise.right_shift(total, PRECISION_BITS), 255), tf.uint8)


def pil_resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """uint8 [h, w, 3] -> uint8 [H, W, 3] (size = (H, W)), equal to Pillow's
    `Image.resize((W, H), BILINEAR)` for every pixel."""
    height, width = size
    in_shape = tf.shape(image)
    rows, columns = bilinear_weights(in_shape, size)

    def transposed(x: tf.Tensor) -> tf.Tensor:
        return tf.transpose(x, [1, 0, 2])

    def horizontal_first() -> tf.Tensor:
        return resample_rows(transposed(resample_rows(transposed(image), *columns)), *rows)

    def vertical_first() -> tf.Tensor:
        return transposed(resample_rows(transposed(resample_rows(image, *rows)), *columns))

    in_height, in_width = in_shape[0], in_shape[1]
    # Pillow 13's choice of the first pass (see the module docstring).
    vertical = (height < in_height) & (in_height - height > 2 * (in_width - width))
    return tf.reshape(tf.cond(vertical, vertical_first, horizontal_first), (height, width, 3))


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """An encoded JPEG / PNG / BMP (scalar string; grey or RGB) -> uint8 [h, w, 3] at its own
    size, equal to PIL's `Image.open(f).convert("RGB")` (JPEG: libjpeg's accurate integer DCT,
    as PIL; TF's default fast DCT is not)."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def decode_resize(encoded: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """An encoded JPEG / PNG / BMP (scalar string; grey or RGB) -> uint8 [H, W, 3] (size = (H, W)),
    equal to PIL's `Image.open(f).convert("RGB").resize((W, H), BILINEAR)` for every pixel."""
    return pil_resize(decode(encoded), size)


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
