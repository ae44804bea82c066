"""Read NVlabs/edm network snapshots (``network-snapshot-*.pkl``) as data, without running anything in them.

EDM's training loop saves ``pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...))``
(training/training_loop.py). Its networks are classes decorated with EDM's ``torch_utils.persistence``, which
pickles each instance as ``_reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src,
class_name, state}``: unpickling it normally *executes* ``module_src``, the Python source of the module that
defined the class, so a snapshot from anyone else can run anything. This module never does.

:func:`load_pickle` reads such a file with a restricted unpickler (a subclass of Python's pure-Python
``pickle._Unpickler``, so that every opcode that builds something goes through code here) that accepts only

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
Whatever goes wrong while unpickling, expected or not (an allocator's RuntimeError too), is a ValueError naming
the file; a file that cannot be opened raises OSError as usual. Work and memory are bounded:

* the file's size is capped (``max_bytes``) before reading, and no single read asks for more than the file
  still holds, so a length field cannot allocate more than the file's size;
* dict keys and set elements may only be ``str``, ``int`` (of at most 64 bits), ``float``, ``bool``, ``None``
  or tuples of those with at most :data:`MAX_KEY_ITEMS` items in all, so hashing a key costs at most that
  many steps beyond strings' own (cached) hashes (a key built of memo-shared tuples would hash exponentially);
* the containers' constructors take only a list, tuple or dict, and what calls in the pickle copy (container
  items, storage bytes) is charged to a budget of the file's size: data the memo names again and again cannot
  be copied into more than the file could hold;
* pickle's BUILD (setting an object's state) applies only to records and numpy dtypes (a tensor's state would
  run ``Tensor.set_``); NEWOBJ only creates records and EasyDicts, without arguments; REDUCE takes a tuple;
  SETITEM(S) / APPEND(S) / ADDITEMS add only to dicts / lists / sets; copyreg's extension registry is refused;
* a tensor is a strided view whose elements lie inside its storage and do not overlap (no stride-0 or
  overlapping views), and the tensors viewing one storage hold at most as many elements as it does: with the
  budget above, all the tensors of a file hold at most as many bytes as the file. Storages are not resizable;
* :func:`state_tensors` follows records at most :data:`MAX_DEPTH` deep, visits at most ``max_entries``
  parameters, buffers and submodules, and refuses a record, a ``_parameters`` / ``_buffers`` / ``_modules``
  mapping or a tensor met twice (EDM's networks share none; sharing would make the walk exponential or the
  network larger than the file).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import reprlib
import struct
from typing import Any, Callable, Iterator, Mapping, Union

import numpy as np
import torch

from .files import _open_regular

__all__ = ["PickledRecord", "load_pickle", "state_tensors", "MAX_PICKLE_BYTES", "CONVERT_COMMAND"]

PathLike = Union[str, "os.PathLike[str]"]

#: Largest snapshot read by default: EDM's largest published network (ImageNet-64 ADM, ~296M parameters) is
#: about 1.2 GB; pass ``max_bytes`` for a larger one.
MAX_PICKLE_BYTES = 8 * 2**30
#: Deepest nesting of records :func:`state_tensors` follows (EDM's networks nest 4 levels).
MAX_DEPTH = 64
#: Most parameters, buffers and submodules :func:`state_tensors` visits (EDM's largest network has a few thousand).
MAX_ENTRIES = 1_000_000
#: Most items (nested ones included) in a tuple used as a dict key or set element.
MAX_KEY_ITEMS = 64
#: Most dimensions of a tensor (torch's own limit).
MAX_DIMS = 64
#: The command that converts a snapshot the restricted reader refuses (run in EDM's environment).
CONVERT_COMMAND = "python -m scoregen.interop.edm_convert SNAPSHOT.pkl OUT_DIR"

_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001  # torch.save's legacy (non-zip) format
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}
_NUMPY_DTYPE = re.compile(r"[biufc]\d{1,2}")  # numeric dtype codes only ('f8', 'i4', 'b1'); never object dtypes
_NN_MODULE = re.compile(r"torch\.nn\.modules\.\w+")
_KEY_TYPES = (str, int, float, bool, type(None))  # exact types; ints of at most 64 bits (str hashes are cached)
_KNOWN_HEADERS: dict = {}  # the bytes of legacy storage headers already parsed and checked (a few torch builds')


class _BoundedRepr(reprlib.Repr):
    """reprlib's cut ``repr`` (3 levels, 6 items a level), also for what reprlib would print in full."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60

    def repr_int(self, x: int, level: int) -> str:  # printing a huge int is quadratic (or refused by Python)
        return repr(x) if x.bit_length() <= 128 else f"<an int of {x.bit_length()} bits>"

    def repr_bytes(self, x: Any, level: int) -> str:
        return f"<{len(x)} bytes>"

    repr_bytearray = repr_bytes
    repr_OrderedDict = reprlib.Repr.repr_dict  # else printed by builtins.repr, in full


_REPR = _BoundedRepr()


def bounded_repr(value: Any, limit: int = 120) -> str:
    """A short ``repr`` of untrusted unpickled data for an error message, in bounded time: nesting and items are
    cut (a plain ``repr`` of memo-shared nested lists is exponential), bytes only counted, long ints not printed."""
    try:
        text = _REPR.repr(value)
    except Exception:  # an int too long to print, say
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


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

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: keep the state (a dict), do nothing with it
        if type(state) is not dict:
            raise ValueError(f"the state of {self!r} is a {type(state).__name__}, not a dict: the file is damaged")
        self.state = state

    def __repr__(self) -> str:
        return f"PickledRecord({self.kind}, {self.name!r})"


class _ModuleRecord(PickledRecord):
    """Base of the record classes standing for torch.nn classes: created by NEWOBJ only, never called."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise _refused(f"a call of the class {self.name} (torch.nn modules are pickled with NEWOBJ, not called)")


class _Storage:
    """A storage read from ``_load_from_bytes``: a flat, non-resizable tensor of its ``numel`` elements, and how
    many of them the tensors viewing it have claimed so far."""

    __slots__ = ("flat", "numel", "claimed")

    def __init__(self, flat: torch.Tensor, numel: int):
        self.flat, self.numel, self.claimed = flat, numel, 0


def _charge(budget: list, units: int) -> None:
    """Spend ``units`` of a load's budget (the file's size): what calls in the pickle materialise (storage bytes,
    container items) comes from the file, unless the file names the same data again and again by memo."""
    budget[0] -= units
    if budget[0] < 0:
        raise ValueError(f"the pickle's calls rebuild more data than the file's {budget[1]} bytes hold (storages or "
                         "containers built again and again from memo-shared data): the file is damaged or hostile")


def _refused(what: str) -> ValueError:
    return ValueError(f"the pickle holds {what}, which the restricted reader refuses (it runs no code from the file). "
                      "If this is a network snapshot you trust, convert it in EDM's own environment with "
                      f"`{CONVERT_COMMAND}` and load OUT_DIR instead")


class _BoundedReader:
    """A file whose reads never ask for more than it holds: a hostile length field (a string claiming 2**60
    bytes) fails as truncated data instead of allocating the claim."""

    def __init__(self, f: Any, size: int):
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        want = self._left if n is None or n < 0 else n
        data = self._f.read(min(want, self._left))
        self._left -= len(data)
        if len(data) < want:
            raise EOFError(f"the data ends {want - len(data)} bytes short of an item: the file is truncated")
        return data

    def readline(self) -> bytes:
        data = self._f.readline(self._left)
        self._left -= len(data)
        return data


# ---------------------------------------------------------------------------------- safe rebuilders
def _reconstruct_persistent_obj(meta: Any) -> PickledRecord:
    """EDM's persistent object as a record; ``meta["module_src"]`` is never compiled."""
    if type(meta) is not dict or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
            or type(meta.get("state")) is not dict:
        raise ValueError(f"a persistent object with unexpected metadata {bounded_repr(meta)}; "
                         "expected EDM's {type: 'class', version, module_src, class_name, state}")
    return PickledRecord("persistent", meta["class_name"], meta["state"])


class _NumpyDtype:
    """A numeric numpy dtype named by the pickle. Its BUILD state (byteorder first) lands here, never in
    ``np.dtype.__setstate__``: the dtype numpy returns for a code is a shared singleton."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if not isinstance(code, str) or not _NUMPY_DTYPE.fullmatch(code):
            raise _refused(f"the numpy dtype {bounded_repr(code)} (only numeric dtypes are read)")
        self.code, self.byteorder = code, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]


def _numpy_scalar(dtype: Any, data: Any = None) -> Union[int, float, complex, bool]:
    """numpy's scalar reduce as a plain Python number."""
    itemsize = np.dtype(dtype.code).itemsize if isinstance(dtype, _NumpyDtype) else -1
    if not isinstance(data, bytes) or len(data) != itemsize:
        raise ValueError(f"a numpy scalar with {bounded_repr(dtype)} and {bounded_repr(data)} of data: the file is "
                         "damaged")
    return np.frombuffer(data, dtype=np.dtype(dtype.code).newbyteorder(dtype.byteorder))[0].item()


def _load_storage(data: Any, budget: list) -> _Storage:
    """``torch.storage._load_from_bytes``: a legacy-format ``torch.save`` of one storage, parsed without torch.load.

    Layout: pickles of the magic number, the protocol version and system info; a pickle of the root object
    whose persistent id is ``('storage', <Type>Storage, key, location, numel, None)``; a pickle of the list of
    keys; then, per key, an 8-byte little-endian element count and the raw elements. ``len(data)`` is charged
    to ``budget`` (see :func:`_charge`) before anything is parsed.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"a storage pickled as {type(data).__name__}, not bytes: the file is damaged")
    _charge(budget, len(data) + 1)
    f = io.BytesIO(data)  # its reads are bounded by len(data)
    try:
        known = next((h for h in _KNOWN_HEADERS if data.startswith(h)), None)
        if known is not None:  # the same bytes as a header already checked (every storage of a file has one)
            f.seek(len(known))
        else:
            magic, protocol, info = [_SafeUnpickler(f).load() for _ in range(3)]
            if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or type(info) is not dict \
                    or info.get("little_endian") is not True:
                raise ValueError("an unknown header (not little-endian torch legacy format)")
            if len(_KNOWN_HEADERS) < 16:
                _KNOWN_HEADERS[data[:f.tell()]] = None
        root = _StorageUnpickler(f).load()
        keys = _SafeUnpickler(f).load()
    except Exception as e:
        raise ValueError(f"a tensor storage that is not in torch's legacy format ({type(e).__name__}: "
                         f"{str(e)[:100]}): the file is damaged") from None
    if not isinstance(root, tuple) or type(keys) is not list or keys != [root[0]]:
        raise ValueError("a tensor storage entry that is not one storage: the file is damaged")
    key, dtype, numel = root
    raw = f.read(8)
    if len(raw) != 8 or int.from_bytes(raw, "little") != numel:
        raise ValueError(f"storage {key[:40]!r}: its size header disagrees with its description: the file is damaged")
    start, nbytes = f.tell(), numel * dtype.itemsize
    if len(data) - start < nbytes:
        raise ValueError(f"storage {key[:40]!r} claims {numel} elements but holds {len(data) - start} bytes: the file "
                         "is truncated")
    # torch.frombuffer's storage is not resizable: no later call can grow it (an empty one gets a 1-element buffer)
    flat = torch.frombuffer(bytearray(memoryview(data)[start:start + nbytes]) if numel else bytearray(dtype.itemsize),
                            dtype=dtype)
    return _Storage(flat, numel)


def _no_hooks(value: Any) -> bool:
    return value is None or (type(value) in (dict, collections.OrderedDict) and not value)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """A strided view of the storage whose elements lie inside it and do not overlap, while the tensors over
    the storage claim no more elements than it holds."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor over {type(storage).__name__}, not a storage: the file is damaged")
    ints = lambda xs: type(xs) is tuple and len(xs) <= MAX_DIMS and all(  # noqa: E731
        type(v) is int and 0 <= v < 2**62 for v in xs)
    if type(offset) is not int or not 0 <= offset < 2**62 or not ints(size) or not ints(stride) \
            or len(size) != len(stride):
        raise ValueError(f"a tensor with invalid layout (offset {bounded_repr(offset)}, size {bounded_repr(size)}, "
                         f"stride {bounded_repr(stride)}): the file is damaged")
    if not _no_hooks(backward_hooks) or not _no_hooks(metadata):
        raise _refused("a tensor with backward hooks or extra metadata")
    numel = math.prod(size)
    if numel:
        # non-overlapping: with the dimensions sorted by stride, each stride exceeds the span of the smaller ones
        span = 0
        for n, s in sorted(((n, s) for n, s in zip(size, stride) if n > 1), key=lambda ns: ns[1]):
            if s <= span:
                raise ValueError(f"a tensor of size {size} and stride {stride} whose elements overlap (a stride-0 or "
                                 "overlapping view): the file is damaged or hostile")
            span += (n - 1) * s
        if offset + span >= storage.numel:  # its last element
            raise ValueError(f"a tensor of size {size} reaches beyond its storage of {storage.numel} elements: the "
                             "file is damaged")
    elif offset > storage.numel:
        raise ValueError(f"an empty tensor at offset {offset} of a storage of {storage.numel} elements: the file is "
                         "damaged")
    storage.claimed += numel
    if storage.claimed > storage.numel:
        raise ValueError(f"tensors viewing one storage of {storage.numel} elements claim {storage.claimed} in all: "
                         "the file is damaged or hostile")
    return storage.flat.as_strided(size, stride, offset)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or not _no_hooks(backward_hooks):
        raise _refused("a parameter that is not a plain tensor")
    return data


def _check_key(key: Any) -> None:
    """A dict key or set element must be cheap to hash: a scalar (an int of at most 64 bits: a longer int, hashed
    again at each reference, would cost its length each time), or a tuple of at most MAX_KEY_ITEMS of them."""
    if type(key) in _KEY_TYPES:
        if type(key) is int and key.bit_length() > 64:
            raise _refused(f"a dict key or set element that is an int of {key.bit_length()} bits")
        return
    if type(key) is tuple:
        todo, count = [key], 0
        while todo:
            for item in todo.pop():
                count += 1
                if count > MAX_KEY_ITEMS:
                    raise _refused(f"a dict key or set element that is a tuple of more than {MAX_KEY_ITEMS} items "
                                   "(nested ones counted)")
                if type(item) is tuple:
                    todo.append(item)
                elif type(item) not in _KEY_TYPES or (type(item) is int and item.bit_length() > 64):
                    raise _refused(f"a dict key or set element holding a {type(item).__name__} "
                                   f"{'of more than 64 bits ' if type(item) is int else ''}")
        return
    raise _refused(f"a dict key or set element of type {type(key).__name__} (keys are strings, numbers, None or "
                   "tuples of them)")


def _container(kind: type, name: str, budget: list) -> Callable[..., Any]:
    """``kind(items)`` for a call in the pickle, ``items`` a plain list, tuple or dict (never a tensor or other
    object whose iteration the file would choose) of keys checked by :func:`_check_key`; ``len(items) + 1`` is
    charged to ``budget`` first (see :func:`_charge`)."""

    def build(items: Any = ()) -> Any:
        if type(items) not in (list, tuple) and not isinstance(items, dict):
            raise _refused(f"{name} called on a {type(items).__name__} (it takes a list, tuple or dict)")
        _charge(budget, len(items) + 1)
        if isinstance(items, dict):  # its keys were checked as it was built
            return kind(items)
        if kind in (set, frozenset):
            for item in items:
                _check_key(item)
        else:
            for pair in items:
                if type(pair) not in (list, tuple) or len(pair) != 2:
                    raise ValueError(f"{name} called on a {type(pair).__name__} that is not a (key, value) pair: the "
                                     "file is damaged")
                _check_key(pair[0])
        return kind(items)

    build.__qualname__ = build.__name__ = name
    return build


_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
#: Containers the pickle may call (dnnlib's EasyDict read as a dict), wrapped by :func:`_container` per load.
_CONTAINERS = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
               ("builtins", "frozenset"): frozenset, ("dnnlib.util", "EasyDict"): dict}
_EASY_DICT = ("dnnlib.util", "EasyDict")


class _SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's pure-Python unpickler with every opcode that hashes, calls or mutates something checked:
    dict keys and set elements (SETITEM(S), DICT, ADDITEMS, FROZENSET) by :func:`_check_key`, targets of
    SETITEM(S) / APPEND(S) / ADDITEMS by type, REDUCE's arguments, NEWOBJ's class and BUILD's object.
    Plain data only here (the legacy storage format's headers and key list): every global is refused."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    _easy_dict: Any = None  # the EasyDict NEWOBJ may create, if any

    def find_class(self, module: str, name: str) -> Any:
        raise _refused(f"the global {module}.{name} inside a tensor storage")

    def persistent_load(self, pid: Any) -> Any:
        raise _refused(f"a persistent id {bounded_repr(pid, 60)} inside a tensor storage")

    def _target(self, types: tuple, what: str) -> Any:
        target = self.stack[-1]
        if not isinstance(target, types):
            raise ValueError(f"{what} applied to a {type(target).__name__}: the file is damaged or hostile")
        return target

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        _check_key(key)
        self._target((dict,), "pickle's SETITEM")[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict,), "pickle's SETITEMS")
        if len(items) % 2:
            raise ValueError("pickle's SETITEMS with an odd number of items: the file is damaged")
        for i in range(0, len(items), 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise ValueError("pickle's DICT with an odd number of items: the file is damaged")
        for i in range(0, len(items), 2):
            _check_key(items[i])
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})
    dispatch[pickle.DICT[0]] = load_dict

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self._target((set,), "pickle's ADDITEMS")
        for item in items:
            _check_key(item)
        target.update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        for item in items:
            _check_key(item)
        self.append(frozenset(items))
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "pickle's APPEND").append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "pickle's APPENDS").extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_reduce(self) -> None:
        args = self.stack.pop()
        if type(args) is not tuple:
            raise ValueError(f"pickle's REDUCE with arguments of type {type(args).__name__}, not a tuple: the file is "
                             "damaged or hostile")
        self.stack[-1] = self.stack[-1](*args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if type(args) is not tuple or args or type(kwargs) is not dict or kwargs:
            raise _refused(f"an object of {bounded_repr(cls, 60)} created with arguments (NEWOBJ)")
        if isinstance(cls, type) and issubclass(cls, _ModuleRecord):
            return cls.__new__(cls)
        if cls is self._easy_dict:
            return {}
        raise _refused(f"an object of {bounded_repr(cls, 60)} created by NEWOBJ")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args, {})
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs, args = self.stack.pop(), self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args, kwargs)
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, (PickledRecord, _NumpyDtype)):
            target.__setstate__(state)
        elif not (state is None or (type(state) is dict and not state)):  # an empty state changes nothing
            raise _refused(f"the state of a {type(target).__name__} set by pickle's BUILD (only EDM's records and "
                           "numpy dtypes take one)")
    dispatch[pickle.BUILD[0]] = load_build

    def load_ext(self) -> None:  # copyreg's extension registry and cache are process-wide: nothing of the file's
        raise _refused("an object of copyreg's extension registry (opcodes EXT1, EXT2, EXT4)")
    dispatch[pickle.EXT1[0]] = dispatch[pickle.EXT2[0]] = dispatch[pickle.EXT4[0]] = load_ext

    def load_bytearray8(self) -> None:  # the base class allocates the claimed length before reading
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


class _StorageUnpickler(_SafeUnpickler):
    """The root pickle of a legacy storage: its persistent id names the storage class."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> tuple:
        if not (type(pid) is tuple and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and type(pid[2]) is str and type(pid[4]) is int and pid[4] >= 0 and pid[5] is None):
            raise ValueError(f"an unexpected storage description {bounded_repr(pid)}")
        return pid[2], pid[1], pid[4]


class _SnapshotUnpickler(_SafeUnpickler):
    """Rebuilds only what :data:`_GLOBALS` and :data:`_CONTAINERS` list, storages and torch.nn module records;
    refuses every other global. Storages and containers are charged to a budget of ``size``, the file's size."""

    def __init__(self, f: Any, size: int):
        super().__init__(f)
        self._classes: dict = {}
        budget = [size, size]
        self._calls = {key: _container(kind, ".".join(key), budget) for key, kind in _CONTAINERS.items()}
        self._calls[("torch.storage", "_load_from_bytes")] = lambda data: _load_storage(data, budget)
        self._easy_dict = self._calls[_EASY_DICT]

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name)) or self._calls.get((module, name))
        if found is not None:
            return found
        if _NN_MODULE.fullmatch(module) and name.isidentifier():
            # NEWOBJ needs a class: a record subclass named after the module class, never the class itself
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ModuleRecord,), {"kind": "module", "name": qualified})
            return self._classes[qualified]
        raise _refused(f"the global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _refused(f"a persistent id {bounded_repr(pid, 60)} (torch.save's zip format is read by "
                       "scoregen.io.safe_torch_load)")


def load_pickle(path: PathLike, *, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """The contents of an EDM snapshot ``path`` with every network as an inert :class:`PickledRecord`.

    Raises ValueError for a file larger than ``max_bytes``, a global outside the accepted set (naming it and
    :data:`CONVERT_COMMAND`), or damaged or hostile data (see the module docstring for what is bounded): any
    error while unpickling becomes a ValueError naming ``path``. Nothing in the file is executed.
    """
    path = os.fspath(path)
    with _open_regular(path, "an EDM snapshot", follow_symlinks=True) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{path}: {size} bytes, more than max_bytes={max_bytes}; pass a larger max_bytes if this "
                             "snapshot is really that large")
        try:
            return _SnapshotUnpickler(_BoundedReader(f, size), size).load()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except Exception as e:  # pickle's own errors, and anything torch or an allocator raises on hostile data
            raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {str(e)[:160]}); the file is "
                             "damaged or not an EDM snapshot") from None


def state_tensors(record: PickledRecord, *, depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> dict:
    """The state dict of a module record: ``{"model.enc.8x8_conv.weight": tensor, ...}``, as ``state_dict()``
    of the original module would give (None parameters / buffers left out, names joined with dots).

    Raises ValueError for records nested more than ``depth`` deep, more than ``max_entries`` parameters,
    buffers and submodules in all, or a record, mapping or tensor met twice (EDM's networks share none)."""
    return dict(_walk(record, "", depth, {}, [max_entries, max_entries]))


def _once(obj: Any, where: str, what: str, seen: dict) -> None:
    """Refuse ``obj`` met before: a record, mapping or tensor shared by two places of the network."""
    if id(obj) in seen:  # every object walked is alive in the record tree: ids are not reused meanwhile
        raise ValueError(f"{where}: the {what} is also {seen[id(obj)]}'s; EDM's networks share no modules or "
                         "tensors: the file is damaged or hostile")
    seen[id(obj)] = where


def _walk(record: Any, prefix: str, depth: int, seen: dict, budget: list) -> Iterator[tuple[str, torch.Tensor]]:
    where = prefix.rstrip(".") or "the network"
    if depth <= 0:
        raise ValueError(f"{where}: modules nested more than {MAX_DEPTH} deep; the file is damaged or hostile")
    state = record.state if isinstance(record, PickledRecord) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: a {type(record).__name__} where a module record was expected")
    _once(record, where, "module record", seen)
    _once(state, where, "state", seen)
    non_persistent = state.get("_non_persistent_buffers_set")
    if non_persistent is None:
        non_persistent = frozenset()
    elif type(non_persistent) not in (set, frozenset):
        raise ValueError(f"{where}: _non_persistent_buffers_set is a {type(non_persistent).__name__}, not a set")
    for field in ("_parameters", "_buffers", "_modules"):
        if field not in state:
            continue
        entries = state[field]
        if not isinstance(entries, Mapping):
            raise ValueError(f"{where}: {field} is a {type(entries).__name__}, not a mapping")
        _once(entries, f"{prefix}{field}", f"{field} mapping", seen)
        for name, value in entries.items():
            budget[0] -= 1
            if budget[0] < 0:
                raise ValueError(f"{where}: more than max_entries={budget[1]} parameters, buffers and submodules in "
                                 "all; the file is damaged or hostile")
            if not isinstance(name, str):
                raise ValueError(f"{where}: a {field} entry named {bounded_repr(name)}, not a string")
            if value is None or (field == "_buffers" and name in non_persistent):
                continue
            if field == "_modules":
                yield from _walk(value, f"{prefix}{name}.", depth - 1, seen, budget)
            elif isinstance(value, torch.Tensor):
                _once(value, f"{prefix}{name}", "tensor", seen)
                yield f"{prefix}{name}", value
            else:
                raise ValueError(f"{where}: {field}[{name[:60]!r}] is a {type(value).__name__}, not a tensor")
