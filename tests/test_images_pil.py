"""`decode_resize` against Pillow, the reference's decoder and resizer, bit for bit: every real
image under ../shared/data at two sizes, random PNG / BMP / JPEG images (RGB and grey, noise and
smooth) of random sizes, named size pairs, Pillow's choice of the first pass, and the calls the
pipeline makes (tf.data map, tf.map_fn). Every comparison asserts that no pixel differs."""

import io
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
# Pillow 13 runs the vertical pass first when the height shrinks much more than the width;
# decode_resize follows it, so older versions differ there.
pytest.importorskip("PIL", minversion="13")

from PIL import Image  # noqa: E402

from data_pipelines.images import decode_resize  # noqa: E402

SHARED_FOLDERS = ("market1501-mini/bounding_box_train", "market1501-mini/bounding_box_test",
                  "market1501-mini/query", "duke-samples", "msmt17-samples",
                  "cuhk03-labeled/train", "cuhk03-labeled/val")
SIZES = ((256, 128), (96, 48))  # (H, W): the train size, and one that shrinks both axes


def pil_reference(encoded: bytes, size: tuple[int, int]) -> np.ndarray:
    """What the reference computes: uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB").resize(size[::-1], Image.BILINEAR))


def differing_pixels(ours: np.ndarray, theirs: np.ndarray) -> int:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.uint8
    return int((ours != theirs).any(axis=-1).sum())


def mapped(encoded: list[bytes], sizes: tuple[tuple[int, int], ...]) -> tf.data.Dataset:
    """decode_resize at every size in `sizes`, as the pipeline maps it."""
    return (tf.data.Dataset.from_tensor_slices(encoded)
            .map(lambda e: tuple(decode_resize(e, size) for size in sizes),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def encode(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


def random_image(rng: np.random.Generator, height: int, width: int, grey: bool,
                 smooth: bool) -> np.ndarray:
    """uint8 [height, width] (grey) or [height, width, 3]: noise, or noise upsampled 2-16x."""
    channels = () if grey else (3,)
    if not smooth:
        return rng.integers(0, 256, (height, width, *channels), dtype=np.uint8)
    factor = int(rng.integers(2, 17))
    coarse = rng.integers(0, 256, (-(-height // factor) + 1, -(-width // factor) + 1, *channels),
                          dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def test_every_shared_image_matches_pil_at_two_sizes(shared_data: Path):
    paths = [path for folder in SHARED_FOLDERS
             for path in sorted((shared_data / folder).glob("*.jpg"))]
    assert all(any((shared_data / folder).glob("*.jpg")) for folder in SHARED_FOLDERS)
    encoded = [path.read_bytes() for path in paths]
    compared = 0
    batches = mapped(encoded, SIZES).batch(64).as_numpy_iterator()
    for start, batch in zip(range(0, len(paths), 64), batches, strict=True):
        for index, ours in enumerate(zip(*batch, strict=True), start):
            with Image.open(io.BytesIO(encoded[index])) as image:
                rgb = image.convert("RGB")  # decoded once, resized to both sizes
            for size, resized in zip(SIZES, ours, strict=True):
                count = differing_pixels(resized, np.asarray(rgb.resize(size[::-1],
                                                                        Image.BILINEAR)))
                assert not count, f"{paths[index]} at {size}: {count} pixels differ"
            compared += 1
    assert compared == len(paths) > 8000


def test_random_images_match_pil():
    """6 random targets x 12 random sources, cycling through PNG / BMP / JPEG, RGB / grey, noise /
    smooth; sizes 10..500 per side."""
    rng = np.random.default_rng(20240607)
    failures, cases = [], 0
    for _ in range(6):  # one tf.data trace per target
        target = tuple(int(v) for v in rng.integers(10, 501, 2))
        group = []
        for index in range(12):
            height, width = (int(v) for v in rng.integers(10, 501, 2))
            image_format = ("PNG", "BMP", "JPEG")[index % 3]
            grey, smooth = bool(index // 3 % 2), bool(index // 6 % 2)
            encoded = encode(random_image(rng, height, width, grey, smooth), image_format)
            group.append((encoded, f"{'grey' if grey else 'RGB'} {'smooth' if smooth else 'noise'}"
                                   f" {image_format} {height}x{width} -> {target[0]}x{target[1]}"))
        ours = mapped([encoded for encoded, _ in group], (target,)).as_numpy_iterator()
        for (encoded, name), (image,) in zip(group, ours, strict=True):
            count = differing_pixels(image, pil_reference(encoded, target))
            cases += 1
            if count:
                failures.append(f"{name}: {count} pixels differ")
    assert cases == 72 and not failures, "\n".join(failures)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("source,target", [
    ((160, 60), (256, 128)),  # a Market-1501 crop (W x H 60x160) to the train size
    ((400, 480), (256, 128)),  # a large shrink
    ((128, 64), (256, 64)), ((73, 37), (73, 37)),  # same-size axes: Pillow skips those passes
    ((499, 30), (10, 11)), ((11, 499), (500, 10)),  # extreme aspect changes
])
def test_named_sizes_match_pil(source, target, grey, image_format):
    rng = np.random.default_rng(3)
    encoded = encode(random_image(rng, *source, grey=grey, smooth=False), image_format)
    ours = decode_resize(tf.constant(encoded), target).numpy()
    assert differing_pixels(ours, pil_reference(encoded, target)) == 0


@pytest.mark.parametrize("target,vertical_first", [
    ((100, 99), False), ((100, 100), False), ((100, 101), True),  # 300 - 100 vs 2 (200 - width)
    ((256, 128), False), ((96, 48), False), ((96, 150), True), ((40, 190), True),
    ((299, 10), False)])
def test_pass_order_follows_pillow(target, vertical_first):
    """From 300x200 (H x W). Pillow 13 runs the vertical pass first when the height shrinks by more
    than twice as many pixels as the width; one-axis resizes are single passes, so two of them in
    a row give either order."""
    height, width = target
    encoded = encode(random_image(np.random.default_rng(4), 300, 200, False, False), "PNG")
    with Image.open(io.BytesIO(encoded)) as image:
        source = image.convert("RGB")
    horizontal_then_vertical = source.resize((width, 300), Image.BILINEAR).resize((width, height),
                                                                                   Image.BILINEAR)
    vertical_then_horizontal = source.resize((200, height), Image.BILINEAR).resize((width, height),
                                                                                    Image.BILINEAR)
    first, second = ((vertical_then_horizontal, horizontal_then_vertical) if vertical_first else
                     (horizontal_then_vertical, vertical_then_horizontal))
    reference = pil_reference(encoded, target)
    assert np.array_equal(reference, np.asarray(first))
    assert not np.array_equal(reference, np.asarray(second))  # the order matters here
    ours = decode_resize(tf.constant(encoded), target).numpy()
    assert differing_pixels(ours, reference) == 0


def test_decode_resize_in_a_dataset_map(shared_data: Path):
    size = (256, 128)
    encoded = [path.read_bytes() for path in sorted((shared_data / "duke-samples").glob("*.jpg"))]
    encoded.append(encode(random_image(np.random.default_rng(2), 50, 30, True, False), "PNG"))
    dataset = tf.data.Dataset.from_tensor_slices(encoded).map(
        lambda e: decode_resize(e, size), num_parallel_calls=tf.data.AUTOTUNE)
    assert dataset.element_spec == tf.TensorSpec((*size, 3), tf.uint8)
    for data, ours in zip(encoded, dataset.as_numpy_iterator(), strict=True):
        assert differing_pixels(ours, pil_reference(data, size)) == 0


def test_decode_resize_in_map_fn(shared_data: Path):
    size = (96, 48)
    encoded = [path.read_bytes() for path in sorted((shared_data / "msmt17-samples").glob("*.jpg"))]

    @tf.function
    def decode_all(batch: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(lambda e: decode_resize(e, size), batch,
                         fn_output_signature=tf.TensorSpec((*size, 3), tf.uint8))

    ours = decode_all(tf.constant(encoded)).numpy()
    assert ours.shape == (len(encoded), *size, 3)
    assert sum(differing_pixels(image, pil_reference(data, size))
               for data, image in zip(encoded, ours, strict=True)) == 0


def test_cumsum_adds_tap_after_tap():
    """bilinear_weights normalises with tf.cumsum because it adds in order, as Pillow does."""
    tiny = 2.0**-53  # half an ulp of 1: lost when added to 1, not when added to another first
    taps = tf.constant([[1.0], [tiny], [tiny], [tiny], [tiny]], tf.float64)
    assert tf.cumsum(taps, axis=0)[-1].numpy() == 1.0
    assert tf.function(lambda x: tf.cumsum(x, axis=0)[-1])(taps).numpy() == 1.0
    assert tf.cumsum(taps, axis=0, reverse=True)[0].numpy() > 1.0  # the order shows
