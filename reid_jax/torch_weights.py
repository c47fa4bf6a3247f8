"""PyTorch `.pth` -> Flax variables, without torch installed.

Reading: `torch.save` files in the zip format (`<prefix>/data.pkl` + `<prefix>/data/<key>` raw
storages) and the legacy pickle format, through a restricted unpickler that only rebuilds
tensors, parameters and `collections.OrderedDict`; any other pickled global is refused.

Mapping: reid_jax's parameter names mirror torchvision's, so each Flax leaf has one torch key:
  ('backbone', 'layer1_0', 'downsample_conv', 'kernel') <-> base.layer1.0.downsample.0.weight
  ('backbone', 'bn1', 'var') [batch_stats]             <-> base.bn1.running_var
  ('neck', 'bottleneck', 'scale')                      <-> bottleneck.weight
  ('neck', 'classifier', 'kernel')                     <-> classifier.weight
Two checkpoint layouts: BoT (`base.*`, `bottleneck.*`, `classifier.*`: the whole model) and
torchvision ImageNet (`conv1.weight`, `layer1.0...`, `fc.*` skipped: the backbone only, the neck
keeps the target's initial values). Conv kernels OIHW -> HWIO, Linear weights [out, in] ->
Dense kernels [in, out].
"""

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np
from flax import traverse_util

STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LAYOUTS = ("bot", "torchvision")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}


@dataclass
class _Storage:
    """A torch storage: `numel` elements of `dtype`, filled once its bytes are read."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _Tensor:
    """A strided view of a storage (sizes and strides in elements), materialised later."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        if 0 in self.size:
            return np.zeros(self.size, self.storage.dtype)
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if extent >= self.storage.data.size:
            raise ValueError(f"tensor of size {self.size} stride {self.stride} offset "
                             f"{self.offset} overruns its storage of {self.storage.data.size}")
        itemsize = self.storage.data.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset:], self.size, [s * itemsize for s in self.stride])
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _Tensor:
    del requires_grad, backward_hooks, metadata
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None) -> _Tensor:
    del requires_grad, backward_hooks, state
    return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Rebuilds tensors as `_Tensor`s; refuses every global outside `_SAFE_GLOBALS`."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return np.dtype(STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name} (only "
                                     "tensors, parameters and OrderedDict are allowed)")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], np.dtype)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, int(numel))
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    """Replaces every `_Tensor` in nested dicts / lists / tuples with a numpy array."""
    if isinstance(obj, _Tensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {key: _materialise(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(value) for value in obj)
    return obj


def _storage_array(raw: bytes, storage: _Storage, big_endian: bool, key: str) -> np.ndarray:
    dtype = storage.dtype.newbyteorder(">") if big_endian else storage.dtype
    if len(raw) < storage.numel * dtype.itemsize:
        raise ValueError(f"storage {key} holds {len(raw)} bytes, expected "
                         f"{storage.numel} x {dtype.itemsize}")
    return np.frombuffer(raw, dtype, storage.numel).astype(storage.dtype)


def _read_zip(archive: zipfile.ZipFile) -> Any:
    pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
    if len(pickles) != 1:
        raise ValueError(f"expected one data.pkl in the archive, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    names = set(archive.namelist())
    big_endian = (f"{prefix}byteorder" in names
                  and archive.read(f"{prefix}byteorder").strip() == b"big")
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
    for key, storage in storages.items():
        raw = archive.read(f"{prefix}data/{key}")
        storage.data = _storage_array(raw, storage, big_endian, key)
    return obj


def _read_legacy(file: BinaryIO) -> Any:
    """torch.save(..., _use_new_zipfile_serialization=False): magic, protocol, sys info, the
    object, the list of storage keys, then each storage as int64 numel + raw bytes."""
    storages: dict[str, _Storage] = {}
    unpickler = _Unpickler(file, storages)
    if unpickler.load() != LEGACY_MAGIC:
        raise ValueError("no zip archive and no legacy torch magic number")
    unpickler.load()  # protocol version
    sys_info = unpickler.load()
    big_endian = isinstance(sys_info, dict) and not sys_info.get("little_endian", True)
    obj = unpickler.load()
    for key in unpickler.load():
        storage = storages[key]
        (numel,) = struct.unpack("<q", file.read(8))
        raw = file.read(numel * storage.dtype.itemsize)
        storage.data = _storage_array(raw, storage, big_endian, key)
    return obj


def read_torch_file(path: str | os.PathLike) -> Any:
    """Unpickles a `torch.save` file; tensors come back as numpy arrays (their own dtype,
    bfloat16 as `ml_dtypes.bfloat16`), OrderedDicts as dicts. Raises ValueError naming `path`
    for anything that is not a readable PyTorch file or holds a non-tensor object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch checkpoint {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _materialise(_read_zip(archive))
        with open(path, "rb") as file:
            return _materialise(_read_legacy(file))
    except Exception as error:  # any parse failure of an untrusted file: one clear message
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict in a `.pth`: unwraps `{'state_dict': ...}` / `{'model': ...}` and strips
    the `module.` prefix of (Distributed)DataParallel. Values are numpy arrays."""
    state = read_torch_file(path)
    while isinstance(state, dict) and any(isinstance(state.get(k), dict)
                                          for k in ("state_dict", "model")):
        state = state["state_dict"] if isinstance(state.get("state_dict"), dict) else state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, np.ndarray)]
    if not_tensors:
        raise ValueError(f"{path}: not a state dict, non-tensor entries {not_tensors}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def torch_key(path: tuple[str, ...], layout: str = "bot") -> str:
    """The torch state-dict key of a flattened Flax variable path (collection first), e.g.
    ('batch_stats', 'backbone', 'layer2_0', 'downsample_bn', 'mean') ->
    'base.layer2.0.downsample.1.running_mean' ('layer2.0...' in the torchvision layout)."""
    renames = {"backbone": "base", "neck": None, "downsample_conv": "downsample.0",
               "downsample_bn": "downsample.1"}
    modules = []
    for name in path[1:-1]:
        name = renames.get(name, name)
        if name is not None:
            modules.append(name.replace("_", ".") if name.startswith("layer") else name)
    if layout == "torchvision":
        modules = modules[1:]
    return ".".join([*modules, _LEAF_NAMES[path[-1]]])


def detect_layout(state_dict: dict[str, np.ndarray]) -> str:
    """The checkpoint layout: "bot" when keys start with `base.` (the whole BoT model), else
    "torchvision" (an ImageNet backbone)."""
    return "bot" if any(k.startswith("base.") for k in state_dict) else "torchvision"


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:
        return tuple(flax_shape[i] for i in (3, 2, 0, 1))
    return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else tuple(flax_shape)


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def torch_to_flax(state_dict: dict[str, np.ndarray], target_variables: dict,
                  source: str = "state dict") -> dict:
    """Maps a torch state dict onto `target_variables` (the model's {'params', 'batch_stats'},
    which give names, shapes and dtypes).

    BoT layout: every target leaf comes from the checkpoint, so the target may be abstract
    (`jax.eval_shape` of the init). torchvision layout: the backbone comes from the checkpoint
    (`fc.*` skipped), the neck keeps the target's values (which must then be real arrays).
    `num_batches_tracked` is ignored. Any missing, unexpected or wrongly shaped key raises ONE
    ValueError (naming `source`) listing all of them. Returns a new nested dict of numpy arrays.
    """
    layout = detect_layout(state_dict)
    flat_target = traverse_util.flatten_dict(dict(target_variables))
    expected = {torch_key(path, layout): path for path in flat_target
                if layout == "bot" or path[1] == "backbone"}
    ignored = {k for k in state_dict if k.endswith("num_batches_tracked")
               or (layout == "torchvision" and k.startswith("fc."))}
    unexpected = sorted(set(state_dict) - set(expected) - ignored)
    missing = sorted(set(expected) - set(state_dict))
    mismatched = []
    loaded = {}
    for key, path in expected.items():
        if key not in state_dict:
            continue
        value, target = state_dict[key], flat_target[path]
        if tuple(value.shape) != _torch_shape(target.shape):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, "
                              f"model {_torch_shape(target.shape)}")
        else:
            loaded[path] = np.ascontiguousarray(_to_flax(value), dtype=target.dtype)
    if missing or unexpected or mismatched:
        lines = [f"{source} ({layout} layout) does not fit the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", sorted(mismatched))):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ValueError("\n".join(lines))
    return traverse_util.unflatten_dict(
        {path: loaded[path] if path in loaded else np.asarray(value)
         for path, value in flat_target.items()})


def load_torch_weights(path: str | os.PathLike, target_variables: dict) -> dict:
    """`torch_to_flax(load_pth(path), target_variables)`, errors naming `path`."""
    return torch_to_flax(load_pth(path), target_variables, source=str(path))
