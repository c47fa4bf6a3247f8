"""Dataset readers against the real file-name conventions (../shared/data) and tmp layouts; the
expected ids and cameras are recomputed in each test from the file names with plain string ops."""

import os
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.datasets import get_dataset, msmt17

MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")


def names(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))


def touch_layout(root: Path, files: dict[str, list[str]]) -> Path:
    """Empty files `root/folder/name` (readers only parse names)."""
    for folder, entries in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in entries:
            (root / folder / name).write_bytes(b"")
    return root


def test_market_mini_splits_junk_and_distractors(shared_data):
    root = shared_data / "market1501-mini"
    dataset = get_dataset("market1501", root)
    gallery_names = [n for n in names(root / "bounding_box_test") if not n.startswith("-1")]
    assert len(dataset.query) == 3
    assert [Path(p).name for p in dataset.gallery.paths] == gallery_names
    assert len(dataset.gallery) == len(names(root / "bounding_box_test")) - 6
    assert (dataset.gallery.pids == 0).sum() == sum(n.startswith("0000_") for n in gallery_names)
    assert list(dataset.gallery.pids) == [int(n[:4]) for n in gallery_names]
    assert list(dataset.gallery.camids) == [int(n.split("_c")[1][0]) - 1 for n in gallery_names]
    train_names = names(root / "bounding_box_train")
    train_ids = sorted({int(n[:4]) for n in train_names})
    assert dataset.num_train_ids == len(train_ids)
    assert list(dataset.train.pids) == [train_ids.index(int(n[:4])) for n in train_names]
    assert dataset.num_cameras == 6


def test_cuhk03_labeled_through_the_pattern_reader(shared_data):
    root = shared_data / "cuhk03-labeled"
    dataset = get_dataset("cuhk03_pairs", root)
    train_names = names(root / "train")
    assert dataset.num_train_ids == len({n[:4] for n in train_names}) == 743
    assert len(dataset.train) == len(train_names)
    assert sorted(set(dataset.train.camids.tolist())) == [0, 1]
    assert list(dataset.train.camids) == [int(n[5:7]) // 5 for n in train_names]
    val = names(root / "val")
    assert [Path(p).name for p in dataset.query.paths] == [n for n in val if int(n[5:7]) < 5]
    assert [Path(p).name for p in dataset.gallery.paths] == [n for n in val if int(n[5:7]) >= 5]
    assert set(dataset.query.camids.tolist()) == {0} and set(dataset.gallery.camids.tolist()) == {1}
    assert list(dataset.query.pids) == [int(Path(p).name[:4]) for p in dataset.query.paths]


def test_duke_sample_names(shared_data, tmp_path):
    samples = names(shared_data / "duke-samples")
    # Spread the real names over a Market layout of links (nothing copied).
    for i, folder in enumerate(MARKET_FOLDERS):
        (tmp_path / folder).mkdir()
        for name in samples[i::3]:
            os.symlink(shared_data / "duke-samples" / name, tmp_path / folder / name)
    with pytest.warns(UserWarning, match="queries"):  # The samples hold one image per id.
        dataset = get_dataset("dukemtmcreid", tmp_path)
    for records, folder in ((dataset.query, "query"), (dataset.gallery, "bounding_box_test")):
        expected = names(tmp_path / folder)
        assert list(records.pids) == [int(n.split("_")[0]) for n in expected]
        assert list(records.camids) == [int(n.split("_")[1][1:]) - 1 for n in expected]
    assert dataset.num_cameras == 1 + max(int(n.split("_")[1][1:]) - 1 for n in samples)


def test_msmt17_sample_names_and_list_files(shared_data, tmp_path):
    samples = names(shared_data / "msmt17-samples")
    for folder in ("train", "test"):
        os.symlink(shared_data / "msmt17-samples", tmp_path / folder)
    lists = {"list_train.txt": samples[:6], "list_val.txt": samples[6:8],
             "list_query.txt": samples[8:11], "list_gallery.txt": samples[8:]}
    for list_name, entries in lists.items():
        (tmp_path / list_name).write_text("".join(f"{n} {int(n[:4])}\n" for n in entries))
    with pytest.warns(UserWarning, match="queries"):  # Queries are gallery images here.
        dataset = get_dataset("msmt17", tmp_path)
    # torchreid's rule: camid = int(name.split('_')[2]) - 1.
    for records, entries in ((dataset.train, samples[:8]), (dataset.query, samples[8:11]),
                             (dataset.gallery, samples[8:])):
        assert list(records.camids) == [int(n.split("_")[2]) - 1 for n in entries]
        assert [Path(p).name for p in records.paths] == entries
    assert list(dataset.gallery.pids) == [int(n[:4]) for n in samples[8:]]
    assert dataset.num_train_ids == len({n[:4] for n in samples[:8]})
    assert max(dataset.train.camids.max(), dataset.gallery.camids.max()) < 15


@pytest.mark.parametrize("boxes", ["labeled", "detected"])
def test_cuhk03_np_boxes_hold_the_market_layout(tmp_path, boxes):
    touch_layout(tmp_path / boxes, {"bounding_box_train": ["0003_c1_1.png", "0007_c2_4.png"],
                                    "bounding_box_test": ["0012_c2_2.png"],
                                    "query": ["0012_c1_1.png"]})
    dataset = get_dataset(f"cuhk03_{boxes}", tmp_path)
    assert list(dataset.train.pids) == [0, 1] and list(dataset.train.camids) == [0, 1]
    assert (dataset.query.pids[0], dataset.query.camids[0]) == (12, 0)
    assert (dataset.gallery.pids[0], dataset.gallery.camids[0]) == (12, 1)


def test_msmt17_bad_list_line(tmp_path):
    for folder in ("train", "test"):
        (tmp_path / folder).mkdir()
    (tmp_path / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg\n")
    with pytest.raises(ValueError, match="list_train.txt:1"):
        msmt17.read(tmp_path)


def test_pattern_reader_with_a_camera_group(tmp_path):
    files = {"a": ["p7_cam1_0.jpg", "p7_cam2_0.jpg", "p9_cam2_1.jpg"],
             "q": ["p3_cam1_0.jpg"], "g": ["p3_cam3_5.jpg", "p4_cam1_0.jpg"]}
    touch_layout(tmp_path, files)
    dataset = get_dataset("pattern", tmp_path, regex=r"p(?P<pid>\d+)_cam(?P<camid>\d)_\d+\.jpg",
                          train_dir="a", query_dir="q", gallery_dir="g")
    assert list(dataset.train.pids) == [0, 0, 1] and list(dataset.train.camids) == [0, 1, 1]
    assert list(dataset.gallery.pids) == [3, 4] and list(dataset.gallery.camids) == [2, 0]
    assert dataset.num_cameras == 3


def test_pattern_reader_maps_an_index_counted_from_one_to_cameras(tmp_path):
    """Names like 0001001.png: id 0001, images 001-002 from camera A, 003-004 from camera B;
    queries are camera A, the gallery camera B (one folder)."""
    names = [f"{pid:04d}{image:03d}.png" for pid in (1, 2, 5) for image in (1, 2, 3, 4)]
    touch_layout(tmp_path, {"train": names, "test": names})
    layout = {"regex": r"(?P<pid>\d{4})(?P<index>\d{3})\.png", "train_dir": "train",
              "query_dir": "test", "gallery_dir": "test", "images_per_camera": 2,
              "index_offset": 1, "query_cameras": (0,), "gallery_cameras": (1,)}
    dataset = get_dataset("pattern", tmp_path, **layout)
    assert list(dataset.train.camids) == [0, 0, 1, 1] * 3
    assert list(dataset.query.pids) == [1, 1, 2, 2, 5, 5]
    assert set(dataset.query.camids) == {0} and set(dataset.gallery.camids) == {1}
    assert [Path(p).name for p in dataset.gallery.paths][:2] == ["0001003.png", "0001004.png"]
    with pytest.raises(ValueError, match=r"regex='.*jpg' matches no file in .*train \(e\.g\. "
                                         r"not '0001001.png'\)"):
        get_dataset("pattern", tmp_path, **dict(layout, regex=r"(?P<pid>\d{4})(?P<index>\d{3})"
                                                              r"\.jpg"))
    with pytest.raises(ValueError, match="index 001 in .* is below "
                                         "config.data.pattern.index_offset=2"):
        get_dataset("pattern", tmp_path, **dict(layout, index_offset=2))
    with pytest.raises(ValueError, match="set config.data.pattern.images_per_camera"):
        get_dataset("pattern", tmp_path, **dict(layout, images_per_camera=0))


def test_missing_folder_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="bounding_box_train not found; expected layout"):
        get_dataset("market1501", tmp_path)
    with pytest.raises(FileNotFoundError, match="labeled"):
        get_dataset("cuhk03_labeled", tmp_path)
    with pytest.raises(FileNotFoundError, match="list_train.txt"):
        (tmp_path / "train").mkdir()
        (tmp_path / "test").mkdir()
        get_dataset("msmt17", tmp_path)


def market_files(query: list[str]) -> dict[str, list[str]]:
    return {"bounding_box_train": ["0001_c1s1_000001_00.jpg"],
            "bounding_box_test": ["0002_c2s1_000001_00.jpg", "-1_c1s1_000001_00.jpg"],
            "query": query}


def test_bad_file_name_is_named(tmp_path):
    touch_layout(tmp_path, market_files(["0002_c1s1_000001_00.jpg", "holiday.jpg"]))
    with pytest.raises(ValueError, match="holiday.jpg.*0002_c1s1_000451_03.jpg"):
        get_dataset("market1501", tmp_path)


def test_empty_split_is_refused(tmp_path):
    touch_layout(tmp_path, market_files([]))
    with pytest.raises(ValueError, match="query split"):
        get_dataset("market1501", tmp_path)


def test_queries_without_a_gallery_match_warn_with_counts(tmp_path):
    # Query 0002 cam 2 only meets gallery 0002 cam 2 (same camera); 0003 has no gallery image.
    touch_layout(tmp_path, market_files(["0002_c2s1_000009_00.jpg", "0003_c1s1_000001_00.jpg",
                                         "0002_c1s1_000001_00.jpg"]))
    with pytest.warns(UserWarning, match="2 of 3 queries \\(2 ids\\)"):
        dataset = get_dataset("market1501", tmp_path)
    assert list(dataset.gallery.pids) == [2]  # the junk image left


def test_unknown_dataset_and_stray_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        get_dataset("market", tmp_path)
    with pytest.raises(ValueError, match="takes no options"):
        get_dataset("market1501", tmp_path, regex="x")
    with pytest.raises(ValueError, match="config.data.root is empty"):
        get_dataset("market1501", "")


def test_synthetic_dataset_is_deterministic_and_market_like(tmp_path):
    spec = dict(num_train_ids=4, num_test_ids=3, num_cameras=3, images_per_id_per_camera=3,
                image_size=(32, 16), seed=5)
    first = get_dataset("synthetic", tmp_path / "a", **spec)
    second = get_dataset("synthetic", tmp_path / "b", **spec)
    other = get_dataset("synthetic", tmp_path / "c", **dict(spec, seed=6))
    read = [Path(p).read_bytes() for p in first.gallery.paths]
    assert read == [Path(p).read_bytes() for p in second.gallery.paths]
    assert read != [Path(p).read_bytes() for p in other.gallery.paths]
    assert (len(first.train), len(first.query), len(first.gallery)) == (4 * 9, 3 * 3, 3 * 6)
    test_ids = set(first.query.pids.tolist())
    assert test_ids == set(first.gallery.pids.tolist()) == {5, 6, 7}
    train_ids = {int(Path(p).name[:4]) for p in first.train.paths}
    assert train_ids == {1, 2, 3, 4} and not train_ids & test_ids
    assert first.num_cameras == 3 and first.num_train_ids == 4
    # A second call with the same spec reuses the folder; another spec rewrites it.
    stamp = os.path.getmtime(first.gallery.paths[0])
    get_dataset("synthetic", tmp_path / "a", **spec)
    assert os.path.getmtime(first.gallery.paths[0]) == stamp
    assert len(get_dataset("synthetic", tmp_path / "a", **dict(spec, num_test_ids=2)).query) == 6


def test_synthetic_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        get_dataset("synthetic", tmp_path, num_train_ids=2, num_test_ids=2, num_cameras=2,
                    images_per_id_per_camera=2, image_size=(16, 8), seed=0)


def test_synthetic_identities_are_recognisable_across_cameras(tmp_path):
    """Raw-pixel nearest neighbour (other cameras only) finds the right id far above chance."""
    import tensorflow as tf

    dataset = get_dataset("synthetic", tmp_path, num_train_ids=1, num_test_ids=20, num_cameras=3,
                          images_per_id_per_camera=2, image_size=(32, 16), seed=0)

    def pixels(records):
        return np.stack([tf.io.decode_jpeg(Path(p).read_bytes()).numpy().astype(np.float32)
                         .reshape(-1) for p in records.paths])

    query, gallery = pixels(dataset.query), pixels(dataset.gallery)
    distance = ((query[:, None] - gallery[None]) ** 2).sum(-1)
    same_camera = dataset.query.camids[:, None] == dataset.gallery.camids[None]
    distance[same_camera] = np.inf
    nearest = dataset.gallery.pids[distance.argmin(1)]
    assert (nearest == dataset.query.pids).mean() > 0.3  # chance: 1 / 20
