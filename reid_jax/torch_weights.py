"""PyTorch `.pth` -> Flax variables, without torch installed.

Reading: `torch.save` files in the zip format (`<prefix>/data.pkl` + `<prefix>/data/<key>` raw
storages) and the legacy pickle format, through a restricted unpickler that only rebuilds
tensors, parameters and `collections.OrderedDict`; any other pickled global is refused.

Files are untrusted input, checked before any tensor byte is read: a pickle of at most
MAX_PICKLE_BYTES; every size, stride and storage offset an int of magnitude <= 2**48, at most 8
dims; both ends of every view (negative strides counted) inside its storage; each used storage's
element count x itemsize equal to its zip member's declared size (stored or deflated members
only), or, in the legacy format, to its record's int64 length header, which must fit in the
bytes left in the file. Tensors come back lazy (`TorchTensor`: shape and dtype known, elements
read on demand), and reading one reads only the elements its view spans, in bounded chunks when
the view is sparse: memory follows the tensors used, never the sizes a file declares.
`torch_to_flax` checks names and shapes against the model before it reads any tensor.

Mapping: reid_jax's parameter names mirror the torch modules', so each Flax leaf has one key:
  ('backbone', 'layer1_0', 'downsample_conv', 'kernel') <-> base.layer1.0.downsample.0.weight
  ('backbone', 'bn1', 'var') [batch_stats]             <-> base.bn1.running_var
  ('backbone', 'layer1_0', 'bn1', 'IN', 'scale')       <-> base.layer1.0.bn1.IN.weight (IBN-a)
  ('backbone', 'layer1_0', 'bn1', 'BN', 'mean')        <-> base.layer1.0.bn1.BN.running_mean
  ('backbone', 'layer0', 'conv1', 'kernel')            <-> base.layer0.conv1.weight (SENet)
  ('backbone', 'layer1_0', 'se_module', 'fc1', 'bias') <-> base.layer1.0.se_module.fc1.bias
  ('neck', 'bottleneck', 'scale')                      <-> bottleneck.weight
  ('neck', 'classifier', 'kernel')                     <-> classifier.weight
Two checkpoint layouts: BoT (`base.*`, `bottleneck.*`, `classifier.*`: the whole model; the
unused ImageNet classifier `base.fc.*` that BoT's IBN-a backbone keeps is skipped) and ImageNet
backbones (torchvision, IBN-Net or Cadene's SENet: `conv1.weight` / `layer0.conv1.weight`,
`layer1.0...`; the classifier `fc.*` / `last_linear.*` skipped; the neck keeps the target's
initial values). Conv kernels OIHW (grouped: [O, I / groups, kh, kw]) -> HWIO (I / groups, as
`feature_group_count` convs hold them), Linear weights [out, in] -> Dense kernels [in, out].
"""

import functools
import io
import math
import os
import pickle
import reprlib
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
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
ZIP_MAGIC = b"PK\x03\x04"  # a zip's local file header; torch.load's test for the zip format
MAX_PICKLE_BYTES = 16 << 20  # a state dict pickles to ~150 bytes a tensor
LAYOUTS = ("bot", "torchvision")
_MAX_INDEX = 1 << 48  # bound on every size, stride, storage offset and element count
_MAX_DIMS = 8
_CHUNK = 1 << 20  # elements: the slack of a one-piece read, the most a sparse view reads at once
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}


@dataclass
class _Storage:
    """A torch storage: `numel` elements of `dtype` (as pickled: `TorchTensor` checks it), used by
    the tensors named in `users`. Its bytes are in the stream `opener()` returns, element 0 at
    byte `base`, in byte order `order` ("<" or ">")."""

    key: str
    dtype: np.dtype
    numel: Any
    users: list[str] = field(default_factory=list)
    opener: Callable[[], AbstractContextManager[BinaryIO]] | None = None
    base: int = 0
    order: str = "<"

    def __str__(self) -> str:
        more = f" and {len(self.users) - 3} more" if len(self.users) > 3 else ""
        users = ", ".join(map(repr, self.users[:3])) + more
        return f"storage {self.key!r} (of tensor {users or 'none'})"

    def read(self, stream: BinaryIO, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) of the storage, from `stream` (an `opener()` stream)."""
        nbytes = (stop - start) * self.dtype.itemsize
        stream.seek(self.base + start * self.dtype.itemsize)
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"{self} ends {nbytes - len(raw)} bytes early")
        return np.frombuffer(raw, self.dtype.newbyteorder(self.order)).astype(self.dtype,
                                                                              copy=False)


@dataclass
class _View:
    """`_rebuild_tensor_v2`'s arguments as pickled; `TorchTensor` checks them."""

    storage: Any
    offset: Any
    size: Any
    stride: Any


def _index(value: Any, what: str, signed: bool = False) -> int:
    """`value` if it is an int in [0 (-2**48 if `signed`), 2**48], else a ValueError about
    `what`."""
    if type(value) is not int or not (-_MAX_INDEX if signed else 0) <= value <= _MAX_INDEX:
        raise ValueError(f"{what} {reprlib.repr(value)} is not an int in "
                         f"[{'-2**48' if signed else 0}, 2**48]")
    return value


class TorchTensor:
    """A tensor of a torch file, checked but not read: `shape`, `dtype`, `size` (element count),
    `strides` (in elements) and storage `offset`. `numpy()`, or `np.asarray(tensor)`, reads the
    elements from the file, anew on every call."""

    def __init__(self, view: _View, name: str, source: str):
        self.name, self.source = name, source
        where = f"tensor {name!r}"
        storage = self._storage = view.storage
        if not isinstance(storage, _Storage):
            raise ValueError(f"{where}: its storage is a {type(storage).__name__}")
        if not (isinstance(view.size, (tuple, list)) and isinstance(view.stride, (tuple, list))
                and len(view.size) == len(view.stride) <= _MAX_DIMS):
            raise ValueError(f"{where}: size {reprlib.repr(view.size)} and stride "
                             f"{reprlib.repr(view.stride)} are not two sequences of one length "
                             f"<= {_MAX_DIMS}")
        self.shape = tuple(_index(n, f"{where}: size") for n in view.size)
        self.strides = tuple(_index(s, f"{where}: stride", signed=True) for s in view.stride)
        self.offset = _index(view.offset, f"{where}: storage offset")
        self.size = _index(math.prod(self.shape), f"{where}: element count")
        numel = _index(storage.numel, f"{where}: element count of storage {storage.key!r}")
        reach = [(n - 1) * s for n, s in zip(self.shape, self.strides, strict=True)]
        self._first = self.offset + sum(r for r in reach if r < 0)
        self._last = self.offset + sum(r for r in reach if r > 0)
        if self.size and not 0 <= self._first <= self._last < numel:
            raise ValueError(f"{where} (size {self.shape}, stride {self.strides}, offset "
                             f"{self.offset}) reads elements {self._first}..{self._last} of "
                             f"storage {storage.key!r}, which holds {numel}")
        # A view with more elements than its storage repeats elements (stride 0 or
        # overlapping): never in a state dict, and a cheap way to make a model (its classifier
        # width is read from the file) and its memory grow without bound.
        if self.size > numel:
            raise ValueError(f"{where} (size {self.shape}, stride {self.strides}) has "
                             f"{self.size} elements, more than its storage {storage.key!r} "
                             f"holds ({numel}): repeated elements are not accepted")
        storage.users.append(name)

    @property
    def dtype(self) -> np.dtype:
        return self._storage.dtype

    def __repr__(self) -> str:
        return f"TorchTensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        del copy  # every call returns a new array
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def numpy(self) -> np.ndarray:
        """The elements, a new array of `shape` and `dtype`. Reads storage[first:last + 1] (the
        elements between the view's lowest and highest address) in one piece when that span is
        at most 2 x size + _CHUNK elements; else gathers the view's distinct elements, reading at
        most _CHUNK elements at a time. Either way memory is a few times the tensor's own."""
        if not self.size:
            return np.zeros(self.shape, self.dtype)
        try:
            with self._storage.opener() as stream:
                return self._read(stream)
        except Exception as error:  # a damaged (or since changed) file: one clear message
            raise ValueError(f"{self.source}: cannot read tensor {self.name!r}: {error}") from error

    def _read(self, stream: BinaryIO) -> np.ndarray:
        storage, first, stop = self._storage, self._first, self._last + 1
        if stop - first <= 2 * self.size + _CHUNK:
            span = storage.read(stream, first, stop)
            return np.array(np.lib.stride_tricks.as_strided(
                span[self.offset - first:], self.shape, [s * span.itemsize for s in self.strides],
                writeable=False))
        index = np.full(self.shape, self.offset, np.int64)
        for axis, (n, stride) in enumerate(zip(self.shape, self.strides, strict=True)):
            index += stride * np.arange(n).reshape((n,) + (1,) * (len(self.shape) - axis - 1))
        wanted, inverse = np.unique(index.ravel(), return_inverse=True)
        values = np.empty(wanted.size, self.dtype)
        done = 0
        while done < wanted.size:
            end = int(np.searchsorted(wanted, wanted[done] + _CHUNK))
            chunk = storage.read(stream, int(wanted[done]), int(wanted[end - 1]) + 1)
            values[done:end] = chunk[wanted[done:end] - wanted[done]]
            done = end
        return values[inverse].reshape(self.shape)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _View:
    del requires_grad, backward_hooks, metadata
    return _View(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None) -> Any:
    del requires_grad, backward_hooks, state
    return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Rebuilds tensors as `_View`s of `_Storage`s; refuses every global outside `_SAFE_GLOBALS`."""

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
        """('storage', dtype, key, location, numel) in the zip format, + view metadata in the
        legacy format (None unless an old torch saved a view of a storage: refused)."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], np.dtype) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unsupported persistent id {reprlib.repr(pid)}")
        _, dtype, key, _location, numel = pid[:5]
        if pid[5:] not in ((), (None,)):
            raise pickle.UnpicklingError(f"storage {key!r} is a view of another storage "
                                         "(an old torch's format), not supported")
        storage = self.storages.setdefault(key, _Storage(key, dtype, numel))
        if (storage.dtype, storage.numel) != (dtype, numel):
            raise pickle.UnpicklingError(
                f"storage {key!r} is declared as {storage.dtype} x {reprlib.repr(storage.numel)} "
                f"and as {dtype} x {reprlib.repr(numel)}")
        return storage


def _tensor_tree(obj: Any, source: str, name: str = "") -> Any:
    """`obj` with each tensor view made a `TorchTensor` named by its path of keys and indices
    ("state_dict/conv1.weight"), OrderedDicts made dicts; a cyclic `obj` raises RecursionError."""
    if isinstance(obj, _View):
        return TorchTensor(obj, name, source)
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return obj
    tree = {key: _tensor_tree(value, source, f"{name}/{key}" if name else str(key))
            for key, value in items}
    return tree if isinstance(obj, dict) else type(obj)(tree.values())


def _read_zip(path: Path) -> Any:
    try:
        archive = zipfile.ZipFile(path)  # stays open: the tensors read their storages from it
    except Exception as error:  # whatever zipfile raises on a damaged archive
        raise ValueError(f"a truncated or corrupt zip archive ({error})") from error
    names = archive.namelist()
    pickles = [name for name in names if name.endswith("data.pkl")]
    if len(pickles) != 1:
        raise ValueError(f"expected one data.pkl in the archive, found {reprlib.repr(pickles)}")
    prefix = pickles[0][:-len("data.pkl")]
    info = archive.getinfo(pickles[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise ValueError(f"{pickles[0]} holds {info.file_size} bytes, more than the "
                         f"{MAX_PICKLE_BYTES} a state dict's pickle may take")
    order = "<"
    if f"{prefix}byteorder" in names:
        with archive.open(f"{prefix}byteorder") as file:
            order = ">" if file.read(16).strip() == b"big" else "<"
    storages: dict[str, _Storage] = {}
    with archive.open(info) as file:
        tree = _tensor_tree(_Unpickler(file, storages).load(), str(path))
    for storage in storages.values():
        if not storage.users:
            continue
        member = f"{prefix}data/{storage.key}"
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ValueError(f"{storage} has no member {member} in the archive") from None
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"{storage}: member {member} has compression method "
                             f"{info.compress_type}, not stored (0) or deflated (8)")
        if info.file_size != storage.numel * storage.dtype.itemsize:
            raise ValueError(f"{storage}: member {member} holds {info.file_size} bytes, not "
                             f"{storage.numel} elements x {storage.dtype.itemsize}")
        storage.opener, storage.order = functools.partial(archive.open, info), order
    return tree


def _read_legacy(path: Path) -> Any:
    """torch.save(..., _use_new_zipfile_serialization=False): magic, protocol, sys info, the
    object and the list of storage keys (pickles, together <= MAX_PICKLE_BYTES), then each
    storage as an int64 element count + raw bytes."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as file:
        head = io.BytesIO(file.read(MAX_PICKLE_BYTES))
        unpickler = _Unpickler(head, storages)
        try:
            if unpickler.load() != LEGACY_MAGIC:
                raise ValueError("no zip archive and no legacy torch magic number")
            unpickler.load()  # protocol version
            sys_info = unpickler.load()
            tree = _tensor_tree(unpickler.load(), str(path))
            keys = unpickler.load()
        except (EOFError, pickle.UnpicklingError) as error:
            if len(head.getbuffer()) < MAX_PICKLE_BYTES:
                raise
            raise ValueError(f"its pickles run past {MAX_PICKLE_BYTES} bytes") from error
        big_endian = isinstance(sys_info, dict) and not sys_info.get("little_endian", True)
        order = ">" if big_endian else "<"
        left, position = os.fstat(file.fileno()).st_size - head.tell(), head.tell()
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise ValueError(f"the file holds storage {reprlib.repr(key)}, no tensor's")
            file.seek(position)
            header = file.read(8)
            if len(header) < 8:
                raise ValueError(f"{storage}: the file ends before its record")
            (numel,) = struct.unpack("<q", header)
            nbytes = numel * storage.dtype.itemsize
            if numel != storage.numel:
                raise ValueError(f"{storage}: its record's header says {numel} elements, the "
                                 f"pickle {reprlib.repr(storage.numel)}")
            if not 0 <= nbytes <= left - 8:
                raise ValueError(f"{storage}: its record holds {numel} elements x "
                                 f"{storage.dtype.itemsize} bytes, the file has {left - 8} left")
            storage.opener = functools.partial(open, path, "rb")
            storage.base, storage.order = position + 8, order
            position, left = position + 8 + nbytes, left - 8 - nbytes
    unread = [str(storage) for storage in storages.values() if storage.users and not storage.opener]
    if unread:
        raise ValueError(f"the file has no record of {', '.join(unread)}")
    return tree


def read_torch_file(path: str | os.PathLike) -> Any:
    """Unpickles and checks a `torch.save` file (see the module docstring); tensors come back as
    lazy `TorchTensor`s (their own dtype, bfloat16 as `ml_dtypes.bfloat16`; `np.asarray(t)` reads
    one), OrderedDicts as dicts. Raises ValueError naming `path` (and the tensor, where there is
    one) for anything that is not a readable PyTorch file or holds a non-tensor object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch checkpoint {path} does not exist")
    try:
        with open(path, "rb") as file:
            is_zip = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        return _read_zip(path) if is_zip else _read_legacy(path)
    except Exception as error:  # any parse failure of an untrusted file: one clear message
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error


def load_pth(path: str | os.PathLike) -> dict[str, TorchTensor]:
    """The state dict in a `.pth`: unwraps `{'state_dict': ...}` / `{'model': ...}` and strips
    the `module.` prefix of (Distributed)DataParallel. Values are lazy `TorchTensor`s."""
    state = read_torch_file(path)
    while isinstance(state, dict) and any(isinstance(state.get(k), dict)
                                          for k in ("state_dict", "model")):
        state = state["state_dict"] if isinstance(state.get("state_dict"), dict) else state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    not_tensors = [str(k) for k, v in state.items()
                   if not (isinstance(k, str) and isinstance(v, TorchTensor))]
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


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """The checkpoint layout: "bot" when keys start with `base.` (the whole BoT model), else
    "torchvision" (an ImageNet backbone: torchvision's, IBN-Net's or Cadene's SENet)."""
    return "bot" if any(k.startswith("base.") for k in state_dict) else "torchvision"


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:
        return tuple(flax_shape[i] for i in (3, 2, 0, 1))
    return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else tuple(flax_shape)


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def torch_to_flax(state_dict: Mapping[str, np.ndarray | TorchTensor], target_variables: dict,
                  source: str = "state dict") -> dict:
    """Maps a torch state dict (numpy arrays or `TorchTensor`s) onto `target_variables` (the
    model's {'params', 'batch_stats'}, which give names, shapes and dtypes).

    BoT layout: every target leaf comes from the checkpoint (`base.fc.*` skipped), so the target
    may be abstract (`jax.eval_shape` of the init). torchvision layout: the backbone comes from
    the checkpoint (`fc.*`, `last_linear.*` skipped), the neck keeps the target's values (which
    must then be real arrays).
    `num_batches_tracked` is ignored. Any missing, unexpected or wrongly shaped key raises ONE
    ValueError (naming `source`) listing all of them, before any tensor is read. Returns a new
    nested dict of numpy arrays.
    """
    layout = detect_layout(state_dict)
    flat_target = traverse_util.flatten_dict(dict(target_variables))
    expected = {torch_key(path, layout): path for path in flat_target
                if layout == "bot" or path[1] == "backbone"}
    unused = ("fc.", "last_linear.") if layout == "torchvision" else ("base.fc.",)
    ignored = {k for k in state_dict if k.endswith("num_batches_tracked") or k.startswith(unused)}
    unexpected = sorted(set(state_dict) - set(expected) - ignored)
    missing = sorted(set(expected) - set(state_dict))
    shapes = {key: (tuple(state_dict[key].shape), _torch_shape(flat_target[path].shape))
              for key, path in expected.items() if key in state_dict}
    mismatched = sorted(f"{key}: checkpoint {got}, model {want}"
                        for key, (got, want) in shapes.items() if got != want)
    if missing or unexpected or mismatched:
        lines = [f"{source} ({layout} layout) does not fit the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ValueError("\n".join(lines))
    loaded = {path: np.ascontiguousarray(_to_flax(np.asarray(state_dict[key])),
                                         dtype=flat_target[path].dtype)
              for key, path in expected.items()}
    return traverse_util.unflatten_dict(
        {path: loaded[path] if path in loaded else np.asarray(value)
         for path, value in flat_target.items()})


def load_torch_weights(path: str | os.PathLike, target_variables: dict) -> dict:
    """`torch_to_flax(load_pth(path), target_variables)`, errors naming `path`."""
    return torch_to_flax(load_pth(path), target_variables, source=str(path))
