"""Convert an EDM network snapshot into a folder that scoregen reads without unpickling anything.

Run it **inside EDM's own environment** (NVlabs/edm's checkout on the Python path, e.g. from its folder)::

    cd /path/to/edm
    python -m scoregen.interop.edm_convert network-snapshot-200000.pkl converted/

or, where scoregen itself does not import there, as a plain script (this file needs only torch and
safetensors): ``PYTHONPATH=/path/to/edm python edm_convert.py SNAPSHOT.pkl OUT_DIR``.

It unpickles SNAPSHOT.pkl with EDM's code, as EDM's ``generate.py`` does: that **runs the module source stored
in the file**, so convert only a file you trust. From the snapshot's ``ema`` network it writes OUT_DIR with
``config.json`` (``{"format": "scoregen-edm-1", "class_name": "EDMPrecond", "init_kwargs": {...}}``, EDM's
recorded constructor arguments) and ``model.safetensors`` (its state dict, EDM's names). The folder is
written under a temporary name beside OUT_DIR and renamed into place once complete; an existing OUT_DIR is
refused. :func:`scoregen.interop.edm.load_edm` reads it (and can read most snapshots directly, with a
restricted unpickler; it names this command when it cannot).
"""

from __future__ import annotations

import argparse
import json
import numbers
import os
import pickle
import shutil
import sys
import uuid
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import torch

__all__ = ["write_edm_folder", "convert", "main", "CONFIG_FORMAT", "CONFIG_NAME", "WEIGHTS_NAME"]

#: The ``format`` entry of a converted folder's config.json, and the folder's two files.
CONFIG_FORMAT, CONFIG_NAME, WEIGHTS_NAME = "scoregen-edm-1", "config.json", "model.safetensors"


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data (numpy scalars as numbers, tuples as lists), or a ValueError naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where} is a {type(value).__name__}, which a JSON config cannot hold")


def write_edm_folder(out_dir: str | os.PathLike, class_name: str, init_kwargs: Mapping[str, Any],
                     state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write ``out_dir`` (which must not exist) with config.json and model.safetensors, atomically.

    Args:
        class_name: the preconditioner's EDM class name, e.g. ``"EDMPrecond"``.
        init_kwargs: its constructor arguments (EDM's ``net.init_kwargs``).
        state_dict: its tensors by EDM's names (``net.state_dict()``).
    """
    from safetensors.torch import save_file

    out_dir = os.fspath(out_dir)
    if os.path.lexists(out_dir):
        raise ValueError(f"{out_dir} exists; the converter writes a new folder: choose another name or remove it")
    config = {"format": CONFIG_FORMAT, "class_name": str(class_name), "init_kwargs": _plain(dict(init_kwargs), "init_kwargs")}
    tensors = {str(k): v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".sg-edm-{uuid.uuid4().hex}")
    os.mkdir(tmp)  # exclusive, with the umask's permissions (mkdtemp's 0o700 would hide it from the user's group)
    try:
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME))
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, allow_nan=True)  # EDMPrecond's default sigma_max is inf: JSON's Infinity
            f.write("\n")
        if os.path.lexists(out_dir):  # rename would replace an empty folder created meanwhile
            raise ValueError(f"{out_dir} appeared while converting; nothing was written")
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert(snapshot: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Unpickle ``snapshot`` with EDM's code (trusted files only: this runs code stored in it) and write its
    ``ema`` network to ``out_dir`` with :func:`write_edm_folder`."""
    if os.path.lexists(out_dir):  # before the (slow, code-running) unpickling
        raise ValueError(f"{os.fspath(out_dir)} exists; the converter writes a new folder: choose another name")
    with open(snapshot, "rb") as f:
        data = pickle.load(f)  # noqa: S301 (EDM's own format; the user trusts this file, see the module docstring)
    net = data.get("ema") if isinstance(data, dict) else None
    if net is None or not hasattr(net, "init_kwargs"):
        raise ValueError(f"{os.fspath(snapshot)} has no EDM network under 'ema' (training/training_loop.py's layout)")
    if net.init_args:
        raise ValueError(f"the network was built with positional arguments {net.init_args!r}; EDM's training loop passes "
                         "keywords only, and so does the converted config")
    write_edm_folder(out_dir, type(net).__name__, net.init_kwargs, net.state_dict())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scoregen.interop.edm_convert",
                                     description="Convert an EDM snapshot (.pkl) to config.json + model.safetensors. "
                                                 "Run in EDM's environment; the snapshot's code is executed.")
    parser.add_argument("snapshot", help="network-snapshot-*.pkl written by NVlabs/edm")
    parser.add_argument("out_dir", help="the folder to create (must not exist)")
    args = parser.parse_args(argv)
    try:
        convert(args.snapshot, args.out_dir)
    except (ValueError, OSError, ModuleNotFoundError) as e:
        hint = " (run it from EDM's checkout, or put it on PYTHONPATH)" if isinstance(e, ModuleNotFoundError) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
