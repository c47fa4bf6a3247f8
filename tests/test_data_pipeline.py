"""tf.data streams on a tiny synthetic Market-layout dataset: the eval contract, train batches
against the sampler + augmentation recomputed in numpy from the files, resume, host slices,
corrupt files, and one TFDS build end to end (decoding and resizing against PIL:
tests/test_images_pil.py)."""

import math
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from configs.market import get_config  # noqa: E402
from data_pipelines.augment import AugmentConfig, augment_batch  # noqa: E402
from data_pipelines.datasets import get_dataset  # noqa: E402
from data_pipelines.pipeline import (  # noqa: E402
    augment_params,
    make_eval_iterator,
    make_train_iterator,
)
from data_pipelines.sampler import PKSampler  # noqa: E402
from data_pipelines.synthetic import write_synthetic_market  # noqa: E402

SIZE = (32, 16)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_market(tmp_path_factory.mktemp("synthetic"), num_train_ids=6,
                                  num_test_ids=4, num_cameras=3, images_per_id_per_camera=3,
                                  image_size=SIZE, seed=0)


@pytest.fixture()
def data_config():
    config = get_config().data
    config.image_size = SIZE
    config.pad = 3
    config.ids_per_batch, config.instances_per_id = 4, 2
    config.eval_batch_size = 5
    return config


def decoded(paths) -> np.ndarray:
    """uint8 [N, H, W, 3] straight from the JPEG files (already at SIZE: no resize), with the
    accurate integer DCT that PIL uses (tests/test_images_pil.py compares the decoder to PIL)."""
    return np.stack([tf.io.decode_jpeg(Path(p).read_bytes(), channels=3,
                                       dct_method="INTEGER_ACCURATE").numpy() for p in paths])


def test_eval_stream_yields_every_image_once_in_order(synthetic_root, data_config):
    dataset = get_dataset("market1501", synthetic_root)
    records = dataset.gallery  # 24 images -> 5 batches of 5, the last holding 4
    stream = make_eval_iterator(records, data_config)
    for _ in range(2):  # re-iterable
        batches = list(stream)
        assert len(batches) == len(stream) == math.ceil(len(records) / 5)
        for batch in batches:
            assert batch["image"].shape == (5, *SIZE, 3) and batch["image"].dtype == np.float32
            assert batch["pid"].dtype == batch["camid"].dtype == np.int32
            assert batch["mask"].dtype == bool
        mask = np.concatenate([b["mask"] for b in batches])
        assert mask.sum() == len(records) and not mask[len(records):].any()
        assert list(np.concatenate([b["path"] for b in batches])[mask]) == list(records.paths)
        assert np.array_equal(np.concatenate([b["pid"] for b in batches])[mask], records.pids)
        assert np.array_equal(np.concatenate([b["camid"] for b in batches])[mask],
                              records.camids)
    images = np.concatenate([b["image"] for b in batches])[mask]
    mean, std = np.float32(data_config.mean), np.float32(data_config.std)
    expected = (decoded(records.paths).astype(np.float32) / np.float32(255) - mean) / std
    np.testing.assert_allclose(images, expected, rtol=0, atol=2e-6)


def reference_train_batch(records, data_config, seed, epoch, step) -> dict:
    """A train batch recomputed without tf.data: the sampler's batch, the drawn parameters, and
    the numpy transform on the images decoded from their files."""
    sampler = PKSampler(records.pids, data_config.ids_per_batch, data_config.instances_per_id,
                        seed)
    indices = sampler.epoch_batches(epoch)[step]
    cfg = AugmentConfig.from_config(data_config)
    params = augment_params(seed, epoch, step, len(indices), cfg)
    images = augment_batch(decoded([records.paths[i] for i in indices]), params, cfg)
    return {"image": images, "label": records.pids[indices], "camid": records.camids[indices]}


@pytest.mark.parametrize("cache", [True, False])
def test_train_batches_follow_the_sampler_and_augmentation(synthetic_root, data_config, cache):
    data_config.cache = cache
    records = get_dataset("market1501", synthetic_root).train
    stream = make_train_iterator(records, data_config, seed=3)
    assert stream.num_classes == 6 and stream.batch_size == 8
    steps = stream.steps_in_epoch(1)
    items = [next(stream) for _ in range(steps + 2)]  # into the second epoch
    assert [(i.epoch, i.step) for i in items] == [(1, s) for s in range(steps)] + [(2, 0), (2, 1)]
    assert all(i.steps_in_epoch == steps for i in items[:steps])
    for item in items:
        batch = item.batch
        assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, *SIZE, 3)
        assert batch["label"].dtype == batch["camid"].dtype == np.int32
        ids = batch["label"].reshape(4, 2)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0])) == 4
        expected = reference_train_batch(records, data_config, 3, item.epoch, item.step)
        np.testing.assert_array_equal(batch["label"], expected["label"])
        np.testing.assert_array_equal(batch["camid"], expected["camid"])
        np.testing.assert_allclose(batch["image"], expected["image"], rtol=0, atol=2e-6)


def test_device_augmentation_gives_the_pixels_of_tf_data(synthetic_root, data_config):
    """`augment=False` streams uint8 images and their parameters; `augment_batch` under
    jax.jit on them (what the train step runs on an accelerator) gives, bit for bit, the pixels
    the tf.data pipeline makes from the same draws."""
    import jax
    import jax.numpy as jnp

    records = get_dataset("market1501", synthetic_root).train
    host = make_train_iterator(records, data_config, seed=5)
    device = make_train_iterator(records, data_config, seed=5, augment=False)
    cfg = AugmentConfig.from_config(data_config)
    augment = jax.jit(lambda images, params: augment_batch(images, params, cfg, jnp))
    flips = erased = 0
    for _ in range(6):
        want, got = next(host), next(device)
        assert got.batch["image"].dtype == np.uint8 and got.batch["image"].shape == (8, *SIZE, 3)
        np.testing.assert_array_equal(got.batch["label"], want.batch["label"])
        np.testing.assert_array_equal(np.asarray(augment(got.batch["image"],
                                                         got.batch["augment"])),
                                      want.batch["image"])
        flips += int(got.batch["augment"]["flip"].sum())
        erased += int((got.batch["augment"]["erase_h"] > 0).sum())
    assert flips > 0 and erased > 0  # every transform was exercised


def test_resume_and_host_slices_reproduce_the_stream(synthetic_root, data_config):
    records = get_dataset("market1501", synthetic_root).train
    stream = make_train_iterator(records, data_config, seed=1)
    items = [next(stream) for _ in range(6)]
    resumed = make_train_iterator(records, data_config, seed=1,
                                  sampler_state=items[2].sampler_state)
    for want in items[3:]:
        got = next(resumed)
        assert (got.epoch, got.step) == (want.epoch, want.step)
        for key in ("image", "label", "camid"):
            np.testing.assert_array_equal(got.batch[key], want.batch[key])
    hosts = [make_train_iterator(records, data_config, seed=1, host_index=h, host_count=2)
             for h in range(2)]
    parts = [next(h) for h in hosts]
    assert parts[0].batch["image"].shape[0] == 4
    for key in ("image", "label", "camid"):
        np.testing.assert_allclose(np.concatenate([p.batch[key] for p in parts]),
                                   items[0].batch[key], rtol=0, atol=2e-6)


@pytest.fixture()
def corrupt_root(tmp_path) -> tuple[Path, Path, Path]:
    root = write_synthetic_market(tmp_path, num_train_ids=3, num_test_ids=2, num_cameras=2,
                                  images_per_id_per_camera=2, image_size=SIZE, seed=0)
    bad = sorted((root / "bounding_box_train").iterdir())[5]
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    gallery_bad = sorted((root / "bounding_box_test").iterdir())[2]
    gallery_bad.write_bytes(gallery_bad.read_bytes()[:40])  # truncated
    return root, bad, gallery_bad


def test_corrupt_images_are_named(corrupt_root, data_config):
    root, bad, gallery_bad = corrupt_root
    dataset = get_dataset("market1501", root)
    data_config.ids_per_batch = 3
    with pytest.raises(ValueError, match=f"cannot read or decode image {bad}"):
        make_train_iterator(dataset.train, data_config, seed=0)
    data_config.cache = False
    stream = make_train_iterator(dataset.train, data_config, seed=0)
    with pytest.raises(ValueError, match=f"cannot read or decode image {bad}"):
        for _ in range(stream.steps_in_epoch(1) * 3):
            next(stream)
    with pytest.raises(ValueError, match=f"cannot read or decode image {gallery_bad}"):
        list(make_eval_iterator(dataset.gallery, data_config))


def test_tfds_build_round_trips_the_folder(tmp_path, synthetic_root, data_config):
    from data_pipelines import tfds_builders

    tfds_builders.build("market1501", str(synthetic_root), str(tmp_path))
    folder = get_dataset("market1501", synthetic_root)
    built = get_dataset("tfds:market1501", tmp_path)
    assert (built.num_train_ids, built.num_cameras) == (folder.num_train_ids, folder.num_cameras)
    for split in ("train", "query", "gallery"):
        ours, theirs = getattr(built, split), getattr(folder, split)
        by_path = {Path(p).name: (pid, cam) for p, pid, cam in theirs}
        assert sorted(Path(p).name for p in ours.paths) == sorted(by_path)
        assert all(by_path[Path(p).name] == (pid, cam) for p, pid, cam in ours)
        assert all(ours.encoded[i] == (synthetic_root / ours.paths[i]).read_bytes()
                   for i in range(len(ours)))
    first = next(iter(make_eval_iterator(built.query, data_config)))
    count = int(first["mask"].sum())
    expected = decoded([synthetic_root / p for p in built.query.paths[:count]])
    mean, std = np.float32(data_config.mean), np.float32(data_config.std)
    np.testing.assert_allclose(first["image"][:count],
                               (expected / np.float32(255) - mean) / std, rtol=0, atol=2e-6)
    with pytest.raises(FileNotFoundError, match="python -m data_pipelines.build_tfds"):
        get_dataset("tfds:dukemtmcreid", tmp_path)
