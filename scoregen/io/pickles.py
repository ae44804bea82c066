"""Read NVlabs/edm network snapshots (``network-snapshot-*.pkl``) as data, without running anything in them.

EDM's training loop saves ``pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...))``
(training/training_loop.py). Its networks are classes decorated with EDM's ``torch_utils.persistence``, which
pickles each instance as ``_reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src,
class_name, state}``: unpickling it normally *executes* ``module_src``, the Python source of the module that
defined the class, so a snapshot from anyone else can run anything. This module never does.

:func:`load_pickle` reads such a file with a restricted unpickler that accepts only

* EDM's persistent objects, kept as inert :class:`PickledRecord` s (``kind="persistent"``, the class name and
  ``state``, the object's ``__dict__``); ``module_src`` is dropped unread;
* ``torch.nn`` modules inside them (EDM's ``torch.nn.ModuleDict``), also inert records (``kind="module"``,
  the class's qualified name, ``state`` with its ``_parameters``, ``_buffers`` and ``_modules``);
* tensors and parameters: ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over storages pickled
  by ``torch.storage._load_from_bytes`` (a legacy-format ``torch.save`` of one storage, parsed here: a size
  header is checked against the bytes that follow before anything is allocated);
* plain containers (``collections.OrderedDict``, sets), numpy scalars of numeric dtypes (EDM keeps
  ``np.sqrt(0.5)`` in its blocks) and ``dnnlib.util.EasyDict`` (read as a dict).

Any other global is refused with a ValueError naming it and the conversion command
(:mod:`scoregen.interop.edm_convert`), which unpickles the file with EDM's own code in EDM's environment.
Work is bounded: the file's size is capped before reading, no single read asks for more than the file holds,
and walking the records (:func:`state_tensors`) has a depth limit.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
from typing import Any, Iterator, Mapping, Union

import numpy as np
import torch

from .._checks import short
from .files import _open_regular

__all__ = ["PickledRecord", "load_pickle", "state_tensors", "MAX_PICKLE_BYTES", "CONVERT_COMMAND"]

PathLike = Union[str, "os.PathLike[str]"]

#: Largest snapshot read by default: EDM's largest published network (ImageNet-64 ADM, ~296M parameters) is
#: about 1.2 GB; pass ``max_bytes`` for a larger one.
MAX_PICKLE_BYTES = 8 * 2**30
#: Deepest nesting of records :func:`state_tensors` follows (EDM's networks nest 4 levels).
MAX_DEPTH = 64
#: The command that converts a snapshot the restricted reader refuses (run in EDM's environment).
CONVERT_COMMAND = "python -m scoregen.interop.edm_convert SNAPSHOT.pkl OUT_DIR"

_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch.save's legacy (non-zip) format
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}
_NUMPY_DTYPE = re.compile(r"[biufc]\d{1,2}")  # numeric dtype codes only ('f8', 'i4', 'b1'); never object dtypes
_NN_MODULE = re.compile(r"torch\.nn\.modules\.\w+")


class PickledRecord:
    """An object the pickle describes, kept as data: nothing was constructed and no code was run.

    ``kind`` is ``"persistent"`` for an EDM persistent object (``name``: its class name, e.g. ``"EDMPrecond"``)
    or ``"module"`` for a plain torch.nn module (``name``: e.g. ``"torch.nn.modules.container.ModuleDict"``);
    ``state`` is the object's pickled ``__dict__`` (a dict; for a module it holds ``_parameters``,
    ``_buffers``, ``_modules``, and EDM's ``_init_args`` / ``_init_kwargs`` for persistent ones).
    """

    kind = "module"
    name = ""
    state: Any = None  # a record that pickle's BUILD never reached keeps no state

    def __init__(self, kind: str, name: str, state: Any = None):
        self.kind, self.name, self.state = kind, name, state

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: keep the state, do nothing with it
        self.state = state

    def __repr__(self) -> str:
        return f"PickledRecord({self.kind}, {self.name!r})"


class _Storage:
    """A storage read from ``_load_from_bytes``: a flat tensor of its elements."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _refused(what: str) -> ValueError:
    return ValueError(f"the pickle holds {what}, which the restricted reader refuses (it runs no code from the file). "
                      "If this is a network snapshot you trust, convert it in EDM's own environment with "
                      f"`{CONVERT_COMMAND}` and load OUT_DIR instead")


class _BoundedReader:
    """A file whose reads never ask for more than it holds: a hostile length field (a string claiming 2**60
    bytes) then fails as truncated data instead of allocating the claim."""

    def __init__(self, f: Any, size: int):
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(self._left if n is None or n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[:self._left]
        n = self._f.readinto(view)
        self._left -= n
        return n

    def readline(self) -> bytes:
        data = self._f.readline(self._left)
        self._left -= len(data)
        return data


# ---------------------------------------------------------------------------------- safe rebuilders
def _reconstruct_persistent_obj(meta: Any) -> PickledRecord:
    """EDM's persistent object as a record; ``meta["module_src"]`` is never compiled."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
            or not isinstance(meta.get("state"), dict):
        raise ValueError(f"a persistent object with unexpected metadata {short(sorted(meta) if isinstance(meta, dict) else meta)}; "
                         "expected EDM's {type: 'class', version, module_src, class_name, state}")
    return PickledRecord("persistent", meta["class_name"], meta["state"])


class _NumpyDtype:
    """A numeric numpy dtype named by the pickle. Its BUILD state (byteorder first) lands here, never in
    ``np.dtype.__setstate__``: the dtype numpy returns for a code is a shared singleton."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if not isinstance(code, str) or not _NUMPY_DTYPE.fullmatch(code):
            raise _refused(f"the numpy dtype {short(code)} (only numeric dtypes are read)")
        self.code, self.byteorder = code, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]


def _numpy_scalar(dtype: Any, data: Any = None) -> Union[int, float, complex, bool]:
    """numpy's scalar reduce as a plain Python number."""
    itemsize = np.dtype(dtype.code).itemsize if isinstance(dtype, _NumpyDtype) else -1
    if not isinstance(data, bytes) or len(data) != itemsize:
        raise ValueError(f"a numpy scalar with {short(dtype)} and {len(data) if isinstance(data, bytes) else short(data)} "
                         "bytes of data: the file is damaged")
    return np.frombuffer(data, dtype=np.dtype(dtype.code).newbyteorder(dtype.byteorder))[0].item()


def _load_storage(data: Any) -> _Storage:
    """``torch.storage._load_from_bytes``: a legacy-format ``torch.save`` of one storage, parsed without torch.load.

    Layout: pickles of the magic number, the protocol version and system info; a pickle of the root object
    whose persistent id is ``('storage', <Type>Storage, key, location, numel, None)``; a pickle of the list of
    keys; then, per key, an 8-byte little-endian element count and the raw elements.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"a storage pickled as {type(data).__name__}, not bytes: the file is damaged")
    f = io.BytesIO(data)
    try:
        header = [_PlainUnpickler(f).load() for _ in range(3)]
        root = _StorageUnpickler(f).load()
        keys = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"a tensor storage that is not in torch's legacy format ({short(str(e), 100)}): the file is "
                         "damaged") from None
    magic, protocol, info = header
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(info, dict) \
            or info.get("little_endian") is not True:
        raise ValueError("a tensor storage with an unknown header (not little-endian torch legacy format)")
    if not isinstance(root, tuple) or keys != [root[0]]:
        raise ValueError("a tensor storage entry that is not one storage: the file is damaged")
    key, dtype, numel = root
    raw = f.read(8)
    if len(raw) != 8 or int.from_bytes(raw, "little") != numel:
        raise ValueError(f"storage {key!r}: its size header disagrees with its description: the file is damaged")
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    payload = f.read(nbytes)
    if len(payload) != nbytes:
        raise ValueError(f"storage {key!r} claims {numel} elements but holds {len(payload)} bytes: the file is truncated")
    return _Storage(torch.frombuffer(bytearray(payload), dtype=dtype) if nbytes else torch.empty(0, dtype=dtype))


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """A strided view of the storage, every index checked to lie inside it."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor over {type(storage).__name__}, not a storage: the file is damaged")
    ints = lambda xs: isinstance(xs, tuple) and all(type(v) is int and v >= 0 for v in xs)  # noqa: E731
    if type(offset) is not int or offset < 0 or not ints(size) or not ints(stride) or len(size) != len(stride):
        raise ValueError(f"a tensor with invalid layout (offset {short(offset)}, size {short(size)}, stride "
                         f"{short(stride)}): the file is damaged")
    if backward_hooks or metadata:
        raise _refused("a tensor with backward hooks or extra metadata")
    numel = storage.flat.numel()
    if all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= numel:  # its last element
        raise ValueError(f"a tensor of size {size} reaches beyond its storage of {numel} elements: the file is damaged")
    return storage.flat.as_strided(size, stride, offset)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise _refused("a parameter that is not a plain tensor")
    return data


_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): dict,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only (the legacy storage format's headers and key list)."""

    def find_class(self, module: str, name: str) -> Any:
        raise _refused(f"the global {module}.{name} inside a tensor storage")


class _StorageUnpickler(_PlainUnpickler):
    """The root pickle of a legacy storage: its persistent id names the storage class."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> tuple:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0 and pid[5] is None):
            raise ValueError(f"an unexpected storage description {short(pid)}")
        return pid[2], pid[1], pid[4]


class _SnapshotUnpickler(pickle.Unpickler):
    """Rebuilds only what :data:`_GLOBALS` lists and torch.nn module records; refuses every other global."""

    def __init__(self, f: Any):
        super().__init__(f)
        self._classes: dict = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is not None:
            return found
        if _NN_MODULE.fullmatch(module) and name.isidentifier():
            # NEWOBJ needs a real class: a record subclass named after the module class, never the class itself
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (PickledRecord,), {"kind": "module", "name": qualified})
            return self._classes[qualified]
        raise _refused(f"the global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _refused(f"a persistent id {short(pid, 60)} (torch.save's zip format is read by scoregen.io.safe_torch_load)")


def load_pickle(path: PathLike, *, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """The contents of an EDM snapshot ``path`` with every network as an inert :class:`PickledRecord`.

    Raises ValueError for a file larger than ``max_bytes``, a global outside the accepted set (naming it and
    :data:`CONVERT_COMMAND`), or damaged data; nothing in the file is executed.
    """
    path = os.fspath(path)
    with _open_regular(path, "an EDM snapshot", follow_symlinks=True) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{path}: {size} bytes, more than max_bytes={max_bytes}; pass a larger max_bytes if this "
                             "snapshot is really that large")
        try:
            return _SnapshotUnpickler(_BoundedReader(f, size)).load()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError, RecursionError,
                MemoryError, OverflowError) as e:
            raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {short(str(e), 160)}); the file is "
                             "damaged or not an EDM snapshot") from None


def state_tensors(record: PickledRecord, *, depth: int = MAX_DEPTH) -> dict:
    """The state dict of a module record: ``{"model.enc.8x8_conv.weight": tensor, ...}``, as ``state_dict()``
    of the original module would give (None parameters / buffers left out, names joined with dots)."""
    return dict(_walk(record, "", depth))


def _walk(record: Any, prefix: str, depth: int) -> Iterator[tuple[str, torch.Tensor]]:
    where = prefix.rstrip(".") or "the network"
    if depth <= 0:
        raise ValueError(f"{where}: modules nested more than {MAX_DEPTH} deep; the file is damaged or hostile")
    state = record.state if isinstance(record, PickledRecord) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: a {type(record).__name__} where a module record was expected")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for field in ("_parameters", "_buffers", "_modules"):
        entries = state.get(field, {})
        if not isinstance(entries, Mapping):
            raise ValueError(f"{where}: {field} is a {type(entries).__name__}, not a mapping")
        for name, value in entries.items():
            if not isinstance(name, str):
                raise ValueError(f"{where}: a {field} entry named {short(name)}, not a string")
            if value is None or (field == "_buffers" and name in non_persistent):
                continue
            if field == "_modules":
                yield from _walk(value, f"{prefix}{name}.", depth - 1)
            elif isinstance(value, torch.Tensor):
                yield f"{prefix}{name}", value
            else:
                raise ValueError(f"{where}: {field}[{name!r}] is a {type(value).__name__}, not a tensor")
