"""Tensor files read without executing anything: ``torch.load(weights_only=True)`` in scoregen's words, the
header of a safetensors file checked before anything is loaded, and what keeps tensors from fitting a model."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import zipfile
from typing import Any, BinaryIO, Mapping, Sequence

import torch

from .._checks import short

__all__ = ["safe_torch_load", "tensor_mismatch"]

#: safetensors' own limit on the JSON header of a weights file.
MAX_HEADER_BYTES = 100 * 2**20
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how the weights-only unpickler names the object it refused


def safe_torch_load(source: str | os.PathLike | BinaryIO, what: str, *, mmap: bool = False) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU, with its refusals in scoregen's own words.

    ``what`` names the file in messages (e.g. "the trainer state /run/trainer-300.pt"). A file holding
    anything other than tensors and plain containers (pickled code, say) raises a ValueError saying so, and
    nothing in it is executed; a damaged or foreign file raises a ValueError too; OSErrors pass through.
    ``mmap=True`` maps a zip-format file (``torch.save``'s default since 1.6) instead of reading it, so
    tensors cost no memory until used; older files are read normally.
    """
    try:
        if mmap and not hasattr(source, "read") and zipfile.is_zipfile(source):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(source, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):
        raise
    except Exception as e:  # the unpickler's refusal, or a damaged / foreign file
        # Only the name of a refused global is taken from torch's message: the rest advises weights_only=False.
        found = _GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise ValueError(f"{what} is refused: read with torch.load(weights_only=True), which executes nothing, it "
                             f"holds objects other than tensors and plain containers, such as pickled code ({found[1]}); "
                             "nothing in it was executed") from None
        raise ValueError(f"{what} could not be read with torch.load(weights_only=True), which accepts only tensors and "
                         f"plain containers and executes nothing ({type(e).__name__}); the file is damaged or holds "
                         "other objects") from None


def _safetensors_shapes(data: bytes, path: str) -> dict:
    """``{tensor name: shape}`` from the header of the safetensors file ``data`` (read from ``path``), every
    entry checked against the data's size: an 8-byte little-endian header length, then JSON
    ``{name: {dtype, shape, data_offsets}}``."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file ({why}); the checkpoint is damaged")

    size = len(data)
    if size < 8:
        raise bad("shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise bad(f"its header claims {n} bytes of a {size}-byte file")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_size, shapes = size - 8 - n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) \
                or info.get("dtype") not in _ITEMSIZE or not isinstance(offsets, list) or len(offsets) != 2 \
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_size \
                or offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[info["dtype"]]:
            raise bad(f"tensor {name!r} has an invalid entry {short(info)}")
        shapes[name] = tuple(shape)
    return shapes


def tensor_mismatch(expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]]) -> list:
    """What keeps tensors of shapes ``got`` from loading into a model whose state has shapes ``expected``:
    a list of readable problems (missing names, unexpected names, shape mismatches), empty when they fit."""
    def some(items: list) -> str:
        return f"{items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    problems = []
    missing, unexpected = [k for k in expected if k not in got], [k for k in got if k not in expected]
    if missing:
        problems.append(f"missing keys {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {some(unexpected)}")
    shapes = [f"{k}: checkpoint {tuple(got[k])}, network {tuple(expected[k])}"
              for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]) + (f" and {len(shapes) - 5} more" if len(shapes) > 5 else ""))
    return problems
