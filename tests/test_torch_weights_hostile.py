"""Hostile `.pth` files, every one built here (a small pickle-opcode writer + zipfile): each is
refused with one ValueError naming the file and the tensor, or read correctly, in bounded memory
(peak RSS of a subprocess doing the load). Torch is used only to check the writer itself."""

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reid_jax import torch_weights

REPO = Path(__file__).resolve().parents[1]
MEMORY_BOUND_MB = 200  # what a load may add to a subprocess's peak RSS
BIG_BYTES = 1 << 30  # a deflated storage member of 1 GiB zeros: a 4.7 MB file
GOOD = np.arange(4, dtype=np.float32).tobytes()


# --- writing pickles and .pth files -----------------------------------------------------------

@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Call:
    """`func(*args)`: the REDUCE opcode."""

    func: _Global
    args: tuple


@dataclass(frozen=True)
class _PersistentId:
    value: tuple


def _ops(value: Any) -> bytes:
    """Protocol-2 pickle opcodes building `value` (no memo), any global named freely."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):  # LONG1: length byte + little-endian two's complement
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    if isinstance(value, tuple):
        return b"(" + b"".join(map(_ops, value)) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(map(_ops, value)) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(_ops(k) + _ops(v) for k, v in value.items()) + b"u"
    if isinstance(value, _Global):
        return f"c{value.module}\n{value.name}\n".encode()
    if isinstance(value, _Call):
        return _ops(value.func) + _ops(value.args) + b"R"
    if isinstance(value, _PersistentId):
        return _ops(value.value) + b"Q"
    raise TypeError(value)


def _dumps(value: Any) -> bytes:
    return b"\x80\x02" + _ops(value) + b"."


REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")


def _tensor(key: str, numel: Any, offset: Any = 0, size: Any = None, stride: Any = None,
            storage: str = "FloatStorage", legacy: bool = False) -> _Call:
    """What torch pickles for a tensor: `_rebuild_tensor_v2(storage pid, offset, size, stride,
    requires_grad, hooks)`; size / stride default to the whole storage, contiguous."""
    pid = ("storage", _Global("torch", storage), key, "cpu", numel) + ((None,) if legacy else ())
    return _Call(REBUILD, (_PersistentId(pid), offset, (numel,) if size is None else size,
                           (1,) if stride is None else stride, False,
                           _Call(_Global("collections", "OrderedDict"), ())))


def _write_zip(path: Path, obj: Any, storages: dict[str, bytes], mode: str = "w",
               compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip-format .pth (`mode="a"` adds to an archive holding storages already)."""
    with zipfile.ZipFile(path, mode) as archive:
        archive.writestr("archive/data.pkl", _dumps(obj))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data, compress_type=compression)
    return path


def _write_legacy(path: Path, obj: Any, storages: dict[str, tuple[int, bytes]],
                  keys: list[str] | None = None) -> Path:
    """A legacy-format .pth; `storages` maps key -> (length header, bytes), `keys` the listed
    keys (default: those of `storages`)."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    keys = list(storages) if keys is None else keys
    pickles = [torch_weights.LEGACY_MAGIC, 1001, sys_info, obj, keys]
    records = [struct.pack("<q", numel) + data for numel, data in storages.values()]
    path.write_bytes(b"".join(map(_dumps, pickles)) + b"".join(records))
    return path


def _refused(path: Path, *texts: str, load=torch_weights.load_pth) -> str:
    """`load(path)`'s ValueError message, which names the file and each of `texts`."""
    with pytest.raises(ValueError) as error:
        load(path)
    message = str(error.value)
    for text in (path.name, *texts):
        assert text in message, (text, message)
    return message


# --- the writer, and views that are valid --------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_written_files_read_as_torch_reads_them(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    data = {"0": (12, np.arange(12, dtype=np.float32).tobytes()), "1": (3, np.arange(3).tobytes())}
    obj = {"whole": _tensor("0", 12, legacy=legacy),
           "window": _tensor("0", 12, 5, (2, 2), (4, 1), legacy=legacy),
           "transposed": _tensor("0", 12, 0, (4, 3), (1, 4), legacy=legacy),
           "empty_at_end": _tensor("0", 12, 12, (0,), (1,), legacy=legacy),
           "long": _tensor("1", 3, storage="LongStorage", legacy=legacy)}
    path = tmp_path / "w.pth"
    if legacy:
        _write_legacy(path, obj, data)
    else:
        _write_zip(path, obj, {key: raw for key, (_, raw) in data.items()})
    expected = torch.load(path, weights_only=True)
    read = torch_weights.read_torch_file(path)
    assert set(read) == set(expected)
    for key, tensor in expected.items():
        assert read[key].shape == tuple(tensor.shape), key
        np.testing.assert_array_equal(np.asarray(read[key]), tensor.numpy(), err_msg=key)


@pytest.mark.parametrize("chunk", [4, torch_weights._CHUNK], ids=["gathered", "one_piece"])
def test_negative_stride_and_sparse_views_in_bounds(tmp_path, monkeypatch, chunk):
    """Views torch never writes but that stay inside their storage read the right elements, in
    one piece or (a small _CHUNK makes these views sparse) gathered a few elements at a time."""
    monkeypatch.setattr(torch_weights, "_CHUNK", chunk)
    data = np.arange(200, dtype=np.float32)
    views = {"reversed": (199, (200,), (-1,)), "negative_2d": (150, (3, 4), (-40, 7)),
             "sparse": (3, (2, 3), (90, 30)), "repeats": (9, (3, 5), (0, 40))}
    path = _write_zip(tmp_path / "views.pth",
                      {key: _tensor("0", 200, *view) for key, view in views.items()},
                      {"0": data.tobytes()})
    state = torch_weights.load_pth(path)
    for key, (offset, size, stride) in views.items():
        index = offset + np.tensordot(stride, np.indices(size), axes=1)
        np.testing.assert_array_equal(np.asarray(state[key]), data[index], err_msg=key)


# --- refused: globals, views, storages ----------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_call_of_a_global_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    obj = {"w": _tensor("0", 4, legacy=legacy),
           "x": _Call(_Global("os", "system"), (f"touch {marker}",))}
    path = tmp_path / "evil.pth"
    if legacy:
        _write_legacy(path, obj, {"0": (4, GOOD)})
    else:
        _write_zip(path, obj, {"0": GOOD})
    _refused(path, "refusing to unpickle global os.system")
    assert not marker.exists()


VIEW_ATTACKS = {  # id: (offset, size, stride, expected text); storage '0' holds 4 float32
    "negative_stride": (0, (4,), (-1,), "reads elements -3..0 of storage '0', which holds 4"),
    "negative_offset": (-1, (4,), (1,), "storage offset -1 is not an int in [0, 2**48]"),
    "huge_offset": (10 ** 30, (1,), (1,), "storage offset 1000000000000000000000000000000 is not"),
    "offset_past_end": (2 ** 40, (1,), (1,), "reads elements 1099511627776..1099511627776"),
    "extent_past_end": (2, (3,), (1,), "reads elements 2..4 of storage '0', which holds 4"),
    "stride_past_end": (0, (2, 2), (3, 1), "reads elements 0..4 of storage '0'"),
    "huge_stride": (0, (2,), (10 ** 20,), "stride 100000000000000000000 is not an int in [-2**48,"),
    "negative_size": (0, (-1,), (1,), "size -1 is not an int in [0, 2**48]"),
    "float_size": (0, (2.0,), (1,), "size 2.0 is not an int"),
    "str_stride": (0, (2,), ("1",), "stride '1' is not an int"),
    "bool_offset": (True, (1,), (1,), "storage offset True is not an int"),
    "size_not_a_sequence": (0, 3, (1,), "size 3 and stride (1,) are not two sequences"),
    "rank_9": (0, (1,) * 9, (1,) * 9, "are not two sequences of one length <= 8"),
    "rank_mismatch": (0, (2, 2), (1,), "are not two sequences of one length"),
    "huge_element_count": (0, (2 ** 30, 2 ** 30), (0, 0), "element count 1152921504606846976"),
}


@pytest.mark.parametrize("attack", VIEW_ATTACKS)
def test_views_outside_their_storage_or_malformed_are_refused(tmp_path, attack):
    offset, size, stride, text = VIEW_ATTACKS[attack]
    path = _write_zip(tmp_path / f"{attack}.pth", {"w": _tensor("0", 4, offset, size, stride)},
                      {"0": GOOD})
    _refused(path, "tensor 'w'", text)


STORAGE_ATTACKS = {  # id: (pickled object, members, expected texts)
    "member_size_mismatch": ({"w": _tensor("0", 5)}, {"0": GOOD},
                             ["storage '0' (of tensor 'w'): member archive/data/0 holds 16 bytes, "
                              "not 5 elements x 4"]),
    "itemsize_mismatch": ({"w": _tensor("0", 4, storage="DoubleStorage")}, {"0": GOOD},
                          ["holds 16 bytes, not 4 elements x 8"]),
    "missing_member": ({"w": _tensor("7", 4)}, {"0": GOOD},
                       ["storage '7' (of tensor 'w') has no member archive/data/7 in the archive"]),
    "huge_numel": ({"w": _tensor("0", 10 ** 20, 0, (4,), (1,))}, {"0": GOOD},
                   ["tensor 'w': element count of storage '0' 100000000000000000000 is not"]),
    "negative_numel": ({"w": _tensor("0", -1, 0, (4,), (1,))}, {"0": GOOD},
                       ["tensor 'w': element count of storage '0' -1 is not"]),
    "two_dtypes_one_storage": ({"w": _tensor("0", 4), "v": _tensor("0", 4, storage="IntStorage")},
                               {"0": GOOD},
                               ["storage '0' is declared as float32 x 4 and as int32 x 4"]),
    "not_a_storage": ({"w": _Call(REBUILD, (5, 0, (1,), (1,)))}, {},
                      ["tensor 'w': its storage is a int"]),
    "unknown_storage_type": ({"w": _tensor("0", 4, storage="ComplexFloatStorage")}, {"0": GOOD},
                             ["refusing to unpickle global torch.ComplexFloatStorage"]),
    "bad_persistent_id": ({"w": _Call(REBUILD, (_PersistentId(("module", "os")), 0, (1,), (1,)))},
                          {}, ["unsupported persistent id ('module', 'os')"]),
    "non_str_key": ({1: _tensor("0", 4)}, {"0": GOOD}, ["non-tensor entries ['1']"]),
}


@pytest.mark.parametrize("attack", STORAGE_ATTACKS)
def test_storage_attacks_are_refused(tmp_path, attack):
    obj, members, texts = STORAGE_ATTACKS[attack]
    _refused(_write_zip(tmp_path / f"{attack}.pth", obj, members), *texts)


def test_archive_attacks_are_refused(tmp_path):
    bzip2 = _write_zip(tmp_path / "bzip2.pth", {"w": _tensor("0", 4)}, {"0": GOOD},
                       compression=zipfile.ZIP_BZIP2)
    _refused(bzip2, "storage '0' (of tensor 'w')", "compression method 12")

    two_pickles = _write_zip(tmp_path / "two_pickles.pth", {}, {})
    with zipfile.ZipFile(two_pickles, "a") as archive:
        archive.writestr("other/data.pkl", _dumps({}))
    _refused(two_pickles, "expected one data.pkl in the archive")

    big_pickle = tmp_path / "big_pickle.pth"  # 17 MiB of pickle deflated to 17 KB
    with zipfile.ZipFile(big_pickle, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", _dumps({"w": "x" * (17 << 20)}))
    _refused(big_pickle, "archive/data.pkl holds 17825809 bytes, more than the 16777216")

    cycle = tmp_path / "cycle.pth"  # d = {}; d["state_dict"] = d
    with zipfile.ZipFile(cycle, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00X\x0a\x00\x00\x00state_dicth\x00s.")
    _refused(cycle, "maximum recursion depth exceeded")


def test_corrupt_deflate_stream_is_reported_when_the_tensor_is_read(tmp_path):
    """Sizes all agree, the compressed bytes are garbage: reading (not loading) raises."""
    path = _write_zip(tmp_path / "corrupt.pth", {"w": _tensor("0", 4096)},
                      {"0": np.arange(4096, dtype=np.float32).tobytes()},
                      compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("archive/data/0")
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:][:4])
    start = info.header_offset + 30 + name_length + extra_length
    raw[start:start + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    state = torch_weights.load_pth(path)
    assert state["w"].shape == (4096,)
    _refused(path, "cannot read tensor 'w'", "invalid", load=lambda p: np.asarray(state["w"]))


# --- memory and crashes: measured in one subprocess --------------------------------------------

_PROBE = """
import json, resource, sys
import numpy as np
from reid_jax import torch_weights
TARGET = {"params": {"backbone": {"conv1": {"kernel": np.zeros((2, 2, 3, 4), np.float32)}}}}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for case, (path, expression) in json.loads(sys.argv[1]).items():
    try:
        result, error = repr(eval(expression)), None
    except ValueError as e:
        result, error = None, str(e)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"case": case, "result": result, "error": error, "grown_mb": grown}))
"""


def _probe_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    """case -> (file, expression evaluated with `path`, `np`, `torch_weights` and TARGET, a
    4x3x2x2 conv `base.conv1.weight`); the refusals first, the big reads last."""
    big = folder / "big.zip"  # only archive/data/0: BIG_BYTES of zeros, deflated (~2 s)
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            chunk = bytes(1 << 24)
            for _ in range(BIG_BYTES // len(chunk)):
                member.write(chunk)

    def big_storage(name: str, obj: Any) -> Path:
        shutil.copy(big, folder / name)
        return _write_zip(folder / name, obj, {}, mode="a")

    numel = BIG_BYTES // 4
    load_model = "torch_weights.load_torch_weights(path, TARGET)"
    return {
        "far_stride": (_write_zip(folder / "far.pth", {"base.conv1.weight": _tensor(
            "0", 4, 3, (4,), (-10 ** 9,))}, {"0": GOOD}), load_model),
        "broadcast": (_write_zip(folder / "broadcast.pth", {"base.conv1.weight": _tensor(
            "0", 1, 0, (100_000, 5_000), (0, 0))}, {"0": bytes(4)}), load_model),
        "bomb": (big_storage("bomb.pth", {"w": _tensor("0", 4)}), "torch_weights.load_pth(path)"),
        "tail": (big_storage("tail.pth", {"tail": _tensor("0", numel, numel - 4, (4,), (1,))}),
                 "np.asarray(torch_weights.load_pth(path)['tail']).tolist()"),
        "sparse": (big_storage("sparse.pth", {"base.conv1.weight": _tensor(
            "0", numel, 7, (4, 3, 2, 2), (6 * 10 ** 7, 2 * 10 ** 7, 5 * 10 ** 6, 10 ** 6))}),
            f"{load_model}['params']['backbone']['conv1']['kernel'].shape"),
    }


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict[str, dict]:
    """case -> its outcome in ONE fresh process (imports paid once): the expression's repr or
    ValueError message, the file, and how much the process's peak RSS had grown by then (MB,
    cumulative, so an upper bound for each case). A crash fails these tests, not pytest."""
    cases = _probe_cases(tmp_path_factory.mktemp("probe"))
    argument = json.dumps({case: (str(path), expression)
                           for case, (path, expression) in cases.items()})
    run = subprocess.run([sys.executable, "-c", _PROBE, argument], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, f"a load killed the process ({run.returncode}): {run.stderr}"
    outcomes = {}
    for line in run.stdout.splitlines():
        outcome = json.loads(line)
        outcomes[outcome["case"]] = {**outcome, "path": cases[outcome["case"]][0]}
    return outcomes


def _measured(probed: dict[str, dict], case: str, *texts: str) -> dict:
    """`case`'s outcome, which grew the peak RSS by < MEMORY_BOUND_MB and whose error (if
    `texts`) names the file and each of `texts`."""
    outcome = probed[case]
    assert outcome["grown_mb"] < MEMORY_BOUND_MB, outcome
    if texts:
        assert outcome["error"] is not None, outcome
        for text in (outcome["path"].name, *texts):
            assert text in outcome["error"], (text, outcome["error"])
    return outcome


def test_huge_negative_stride_is_refused_without_crashing(probed):
    """Stride -1e9 segfaulted the old reader (numpy read far outside the storage)."""
    _measured(probed, "far_stride", "tensor 'base.conv1.weight'",
              "reads elements -2999999997..3 of storage '0'")


def test_broadcast_view_is_refused_unread(probed):
    """5e8 elements from one float (stride 0), in a key the model has: refused when the file is
    opened, before anything is read (the old reader materialised 2 GB first)."""
    _measured(probed, "broadcast", "tensor 'base.conv1.weight' (size (100000, 5000), stride "
              "(0, 0)) has 500000000 elements, more than its storage '0' holds (1)")


def test_big_member_behind_a_small_tensor_is_refused_unread(probed):
    """A 4.7 MB file whose 4-element tensor's storage member inflates to 1 GiB."""
    assert probed["bomb"]["path"].stat().st_size < 10 << 20
    _measured(probed, "bomb", f"storage '0' (of tensor 'w'): member archive/data/0 holds "
                              f"{BIG_BYTES} bytes, not 4 elements x 4")


def test_big_storage_reads_only_what_views_need(probed):
    """A 1 GiB deflated storage: a 4-element tensor at its very end, and a model-shaped view
    strided over all of it (gathered element by element), each read in bounded memory."""
    assert _measured(probed, "tail")["result"] == "[0.0, 0.0, 0.0, 0.0]"
    assert _measured(probed, "sparse")["result"] == "(2, 2, 3, 4)"


def test_view_repeating_elements_is_refused(tmp_path):
    """1e12 float32 from a 4-byte storage: a stride-0 view would size the model from the file
    (convert reads the classifier width from it), so repeated elements are refused on load."""
    path = _write_zip(tmp_path / "broadcast.pth", {"w": _tensor("0", 1, 0, (10 ** 6,) * 2,
                                                                (0, 0))}, {"0": bytes(4)})
    _refused(path, "tensor 'w' (size (1000000, 1000000), stride (0, 0)) has 1000000000000 "
                   "elements, more than its storage '0' holds (1)")


# --- truncation and the legacy format's length headers ---------------------------------------

def _three_tensors_zip(path: Path) -> Path:
    data = {str(i): np.full(256, i, np.float32).tobytes() for i in range(3)}
    return _write_zip(path, {f"w{i}": _tensor(str(i), 256) for i in range(3)}, data)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.9, 0.999])
def test_truncated_zip_is_reported_as_such(tmp_path, fraction):
    good = _three_tensors_zip(tmp_path / "good.pth")
    raw = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(raw[:int(len(raw) * fraction)])
    _refused(cut, "a truncated or corrupt zip archive")


LEGACY = {"w": _tensor("0", 4, legacy=True), "v": _tensor("1", 4, legacy=True)}


def _legacy_good(path: Path) -> tuple[Path, int]:
    """A legacy file with storages '0' (tensor w) and '1' (tensor v), and where its records
    start."""
    _write_legacy(path, LEGACY, {"0": (4, GOOD), "1": (4, GOOD)})
    return path, path.stat().st_size - 2 * (8 + len(GOOD))


@pytest.mark.parametrize("where", ["pickles", "first_header", "first_data", "second_data"])
def test_truncated_legacy_file(tmp_path, where):
    good, records = _legacy_good(tmp_path / "good.pth")
    cut_at, texts = {
        "pickles": (records // 2, ["pickle data was truncated"]),
        "first_header": (records + 3, ["storage '0' (of tensor 'w'): the file ends before its "
                                       "record"]),
        "first_data": (records + 8 + 5, ["storage '0' (of tensor 'w'): its record holds 4 "
                                         "elements x 4 bytes, the file has 5 left"]),
        "second_data": (records + 24 + 8 + 15, ["storage '1' (of tensor 'v')", "has 15 left"]),
    }[where]
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:cut_at])
    _refused(cut, *texts)


LEGACY_LIES = {  # id: (object, records, listed keys or None, expected texts)
    "header_disagrees": (LEGACY, {"0": (5, GOOD + bytes(4)), "1": (4, GOOD)}, None,
                         ["storage '0' (of tensor 'w'): its record's header says 5 elements, the "
                          "pickle 4"]),
    "huge_header_and_numel": ({"w": _tensor("0", 2 ** 40, 0, (4,), (1,), legacy=True)},
                              {"0": (2 ** 40, GOOD)}, None,
                              ["storage '0' (of tensor 'w'): its record holds 1099511627776 "
                               "elements x 4 bytes, the file has 16 left"]),
    "negative_header": ({"x": _tensor("0", 0, 0, (0,), (1,), legacy=True)}, {"0": (-1, b"")},
                        None, ["its record's header says -1 elements"]),
    "unlisted_storage": (LEGACY, {"0": (4, GOOD)}, None,
                         ["the file has no record of storage '1' (of tensor 'v')"]),
    "listed_unknown_key": (LEGACY, {"0": (4, GOOD), "1": (4, GOOD)}, ["0", "9"],
                           ["the file holds storage '9', no tensor's"]),
    "storage_view": ({"w": _Call(REBUILD, (_PersistentId(
        ("storage", _Global("torch", "FloatStorage"), "0", "cpu", 4, ("1", 0, 4))), 0, (4,),
        (1,)))}, {"0": (4, GOOD)}, None, ["storage '0' is a view of another storage"]),
}


@pytest.mark.parametrize("lie", LEGACY_LIES)
def test_legacy_length_headers_and_keys_are_checked(tmp_path, lie):
    obj, records, keys, texts = LEGACY_LIES[lie]
    _refused(_write_legacy(tmp_path / f"{lie}.pth", obj, records, keys), *texts)


# --- the CLI ---------------------------------------------------------------------------------

def test_convert_cli_refuses_a_hostile_file(tmp_path):
    src = _write_zip(tmp_path / "hostile.pth",
                     {"classifier.weight": _tensor("0", 4, 0, (2, 2), (-1, 1))}, {"0": GOOD})
    result = subprocess.run(
        [sys.executable, "-m", "reid_jax.convert", str(src), str(tmp_path / "out"),
         f"--config={REPO / 'configs' / 'market.py'}"],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        f"error: {src} is not a readable PyTorch checkpoint: tensor 'classifier.weight' "
        "(size (2, 2), stride (-1, 1), offset 0) reads elements -1..1"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
