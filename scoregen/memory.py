"""Memory accounting before work: what can still be allocated on a device, and how much memory a network's
activations take.

Generic pieces, for any code that sizes its work before allocating it (:mod:`scoregen.samplers` sizes its batches
with them; training is to use them too), so that a request too large for the machine is refused with a message
instead of ending in an out-of-memory kill.
"""

from __future__ import annotations

import os
import weakref
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

__all__ = ["available_memory", "activation_bytes", "format_bytes"]

_CGROUP_ROOT = "/sys/fs/cgroup"
_PROC_CGROUP = "/proc/self/cgroup"  # this process's cgroup in each hierarchy


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes that can still be allocated on ``device``, or None where that is unknown (callers then skip their checks).

    CPU: the smallest of what is known among the machine's available memory (``MemAvailable`` in /proc/meminfo,
    else the available physical pages from ``os.sysconf``), the headroom under the address-space limit
    (``RLIMIT_AS`` minus this process's virtual size) and the headroom under the memory limits of this process's
    cgroup and its ancestors (v2 ``memory.max - memory.current``, v1 ``memory.limit_in_bytes - memory.usage_in_bytes``):
    in a container or under ``ulimit -v`` the machine's free memory is not what this process may take.
    CUDA: the driver's free memory plus what PyTorch's caching allocator holds but does not use.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    known = [v for v in (_machine_available(), _address_space_headroom(), *_cgroup_headrooms()) if v is not None]
    return max(0, min(known)) if known else None


def _read_int(path: str) -> Optional[int]:
    """The integer a one-value file holds, or None (missing, unreadable, or "max": no limit)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _machine_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_headroom() -> Optional[int]:
    """RLIMIT_AS minus the current virtual size (/proc/self/statm, in pages); None without a limit."""
    try:
        import resource  # not on Windows
    except ImportError:
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    size = _read_int("/proc/self/statm")
    if limit == resource.RLIM_INFINITY or size is None:
        return None
    return limit - size * os.sysconf("SC_PAGE_SIZE")


def _cgroup_headrooms() -> list[int]:
    """Limit minus usage of this process's memory cgroup and of each ancestor that sets a limit (a parent's limit
    binds its children). Paths come from /proc/self/cgroup: the v2 line ``0::PATH`` and the v1 ``memory`` line."""
    try:
        with open(_PROC_CGROUP) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return []
    found = []
    for entry in lines:
        if len(entry) != 3:
            continue
        hierarchy, controllers, path = entry
        if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
            root, limit_file, usage_file = _CGROUP_ROOT, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            root, limit_file, usage_file = os.path.join(_CGROUP_ROOT, "memory"), "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # this cgroup, then each ancestor up to the root
            folder = os.path.join(root, *parts[:depth])
            limit, usage = _read_int(os.path.join(folder, limit_file)), _read_int(os.path.join(folder, usage_file))
            if limit is not None and usage is not None:
                found.append(limit - usage)
    return found


def activation_bytes(modules: Iterable[torch.nn.Module], run: Callable[[], object]) -> int:
    """Bytes of the outputs of every submodule of ``modules`` while ``run()`` executes (once): the memory a
    forward pass through them holds at most, each tensor counted once.

    Forward hooks sum each output tensor's size; an output that requires grad counts twice (autograd keeps it
    for the backward pass, which makes a gradient of the same size). An output at an address and size already
    counted and still alive (a module returning its child's output, or a view of it) is not new memory and is
    not counted again; a later tensor at an address the allocator reused is. Exceptions from ``run`` propagate;
    the hooks are removed in every case.
    """
    alive: dict[tuple[int, int], weakref.ref] = {}  # (address, numel) -> the tensor counted there, weakly
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if not isinstance(t, Tensor):
                continue
            key = (t.data_ptr(), t.numel())
            if key in alive and alive[key]() is not None:
                continue
            alive[key] = weakref.ref(t)
            total += t.numel() * t.element_size() * (2 if t.requires_grad else 1)

    hooks = [sub.register_forward_hook(count) for module in modules for sub in module.modules()]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return total


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in decimal units for a message: "3.2 GB", "512.0 kB", "12 B"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"
