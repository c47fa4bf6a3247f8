"""Mistakes on the command line (`reid_jax.main.cli`, run in-process): each gets one line naming
the key / file / value and exit status 2, before any data is read or anything compiled; no
traceback unless --debug."""

import json
from pathlib import Path

import pytest

from reid_jax import main
from reid_jax.validate import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # config files are named relative to the repository


def run_cli(capsys, *args: str) -> tuple[int, list[str], str]:
    """(exit status, the `error:` lines, all of stderr) of `python -m reid_jax.main ARGS`."""
    status = main.cli(["reid_jax.main", *args])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("error:")], err


def assert_one_error(status: int, errors: list[str], err: str, *texts: str) -> None:
    assert status == 2, err
    assert len(errors) == 1, err
    for text in texts:
        assert text in errors[0], (text, errors[0])
    assert "Traceback" not in err


def test_overrides_are_applied_and_an_empty_dataset_root_is_named(tmp_path, capsys):
    status, errors, err = run_cli(capsys, "--config=configs/market.py:bnneck",
                                  f"--workdir={tmp_path}", "--config.model.depth=18",
                                  "--config.data.image_size=(128, 64)")
    assert_one_error(status, errors, err, "config.data.root is empty",
                     "--config.data.root=/path/to/market1501")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["depth"] == 18 and saved["data"]["image_size"] == [128, 64]
    assert saved["loss"]["center_weight"] == 0  # the bnneck ablation row


def test_unknown_config_key_suggests_the_nearest(tmp_path, capsys):
    workdir = tmp_path / "run"
    status, errors, err = run_cli(capsys, "--config=configs/market.py", f"--workdir={workdir}",
                                  "--config.train.epochz=3")
    assert_one_error(status, errors, err)
    assert errors[0] == ("error: --config.train.epochz is not a key of the config; did you "
                         "mean --config.train.epochs?")
    assert not workdir.exists()


@pytest.mark.parametrize("override,message", [
    ("--config.train.log_every_steps=0", "config.train.log_every_steps=0: expected an integer "
                                         ">= 1"),
    ("--config.data.image_size=(100, 50, 3)", "config.data.image_size=(100, 50, 3): expected "
                                              "(height, width)"),
    ("--config.data.ids_per_batch=1", "config.data.ids_per_batch=1: the triplet loss needs >= 2 "
                                      "identities per batch"),
    ("--config.model.depth=42", "config.model.depth=42: expected one of (18, 34, 50, 101, 152)"),
    ("--config.eval.distance=hamming", "config.eval.distance='hamming': expected one of"),
    ("--config.optim.milestones=(70, 40)", "config.optim.milestones=(70, 40): expected "
                                           "increasing epochs"),
    ("--config.loss.label_smoothing=1.5", "config.loss.label_smoothing=1.5"),
    ("--config.data.erase_prob=2.0", "config.data.erase_prob=2.0: expected a number in [0, 1]"),
    ("--config.train.keep_checkpoints=0", "config.train.keep_checkpoints=0"),
])
def test_bad_config_value_stops_before_any_work(tmp_path, capsys, override, message):
    """The dataset folder does not exist either: the config value is reported first."""
    status, errors, err = run_cli(capsys, "--config=configs/market.py",
                                  f"--workdir={tmp_path / 'run'}",
                                  f"--config.data.root={tmp_path / 'no_dataset'}", override)
    assert_one_error(status, errors, err, message)


def test_bad_value_type_and_config_files(tmp_path, capsys):
    workdir = f"--workdir={tmp_path}"
    status, errors, err = run_cli(capsys, "--config=configs/market.py", workdir,
                                  "--config.train.epochs=many")
    assert_one_error(status, errors, err, "config.train.epochs", "many")
    status, errors, err = run_cli(capsys, "--config=configs/no_such_config.py", workdir)
    assert_one_error(status, errors, err, "cannot load --config=configs/no_such_config.py")
    status, errors, err = run_cli(capsys, "--config=configs/market.py:no_such_row", workdir)
    assert_one_error(status, errors, err, "cannot load --config=configs/market.py:no_such_row",
                     "unknown ablation row 'no_such_row'")
    status, errors, err = run_cli(capsys, "--config=configs/market.py")
    assert_one_error(status, errors, err, "--workdir is required")


def test_missing_dataset_folder_names_it(tmp_path, capsys):
    root = tmp_path / "Market-1501"
    status, errors, err = run_cli(capsys, "--config=configs/market.py",
                                  f"--workdir={tmp_path / 'run'}", f"--config.data.root={root}")
    assert_one_error(status, errors, err, f"folder {root / 'bounding_box_train'} not found")


def test_bad_checkpoints_are_named(tmp_path, capsys):
    args = ("--config=configs/market.py", f"--workdir={tmp_path / 'run'}", "--mode=eval",
            f"--config.data.root={tmp_path / 'no_dataset'}")
    status, errors, err = run_cli(capsys, *args, f"--checkpoint={tmp_path / 'nothing'}")
    assert_one_error(status, errors, err, f"--checkpoint={tmp_path / 'nothing'}: not 'latest'")
    status, errors, err = run_cli(capsys, *args)
    assert_one_error(status, errors, err, "no run checkpoint in", "train first")
    empty = tmp_path / "converted"
    (empty / "variables").mkdir(parents=True)
    status, errors, err = run_cli(capsys, *args, f"--checkpoint={empty}")
    assert_one_error(status, errors, err, f"variables checkpoint {empty} is incomplete or corrupt")
    broken = tmp_path / "bot.pth"
    broken.write_bytes(b"PK\x03\x04" + bytes(100))
    status, errors, err = run_cli(capsys, *args, f"--checkpoint={broken}")
    assert_one_error(status, errors, err, f"{broken} is not a readable PyTorch checkpoint",
                     "truncated or corrupt zip")


def test_extract_output_in_a_missing_folder_fails_first(tmp_path, capsys):
    output = tmp_path / "no_folder" / "features.npz"
    status, errors, err = run_cli(capsys, "--config=configs/market.py",
                                  f"--workdir={tmp_path / 'run'}", "--mode=extract",
                                  f"--output={output}")
    assert_one_error(status, errors, err, f"folder {output.parent} does not exist")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="log_every_steps=0"):
        main.cli(["reid_jax.main", "--config=configs/market.py", f"--workdir={tmp_path}",
                  "--config.train.log_every_steps=0", "--debug"])


def test_custom_layout_from_the_command_line(tmp_path):
    """--config.data.dataset=pattern and the config.data.pattern.* keys read any folder: here
    names like 0001001.png (id 0001; images 1-2 camera A, 3-4 camera B)."""
    from reid_jax import run

    for folder in ("train", "test"):
        (tmp_path / folder).mkdir()
        for pid in (1, 2):
            for image in range(1, 5):
                (tmp_path / folder / f"{pid:04d}{image:03d}.png").write_bytes(b"")
    flag_values = main.parse_command_line([
        "reid_jax.main", "--config=configs/market.py", f"--workdir={tmp_path / 'run'}",
        "--config.data.dataset=pattern", f"--config.data.root={tmp_path}",
        r"--config.data.pattern.regex=(?P<pid>\d{4})(?P<index>\d{3})\.png",
        "--config.data.pattern.train_dir=train", "--config.data.pattern.query_dir=test",
        "--config.data.pattern.gallery_dir=test", "--config.data.pattern.images_per_camera=2",
        "--config.data.pattern.index_offset=1", "--config.data.pattern.query_cameras=(0,)",
        "--config.data.pattern.gallery_cameras=(1,)"], main.define_flags, ("config", "workdir"))
    config = flag_values.config
    dataset = run.load_dataset("pattern", config.data.root, config, tmp_path)
    assert list(dataset.train.camids) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert set(dataset.query.camids) == {0} and set(dataset.gallery.camids) == {1}
    assert dataset.num_train_ids == 2


def test_convert_destination_is_checked_before_the_pth_is_read(tmp_path, capsys):
    """The .pth does not even exist: the missing output folder (or an existing output) is the
    error, found before anything is read."""
    from reid_jax import convert

    source = tmp_path / "never_read.pth"
    for destination, text in ((tmp_path / "no_folder" / "out", "folder"),
                              (tmp_path, "already exists")):
        status = convert.cli(["reid_jax.convert", str(source), str(destination),
                              "--config=configs/market.py"])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert_one_error(status, errors, err, str(destination), text)
