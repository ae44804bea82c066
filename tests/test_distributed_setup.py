"""How a torchrun process picks its rank, device and backend (scoregen.distributed.setup), without a GPU: CUDA and the
process group are stood in for, so the choices a GPU machine would make are checked here; the collectives themselves
run in the torchrun tests (gloo)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from scoregen import distributed
from scoregen.distributed import default_device, setup, shard

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def gpus(monkeypatch):
    """A machine with 2 CUDA devices, as far as setup() asks; the devices set and the process groups started are
    recorded instead of done."""
    calls = {"set_device": [], "init": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(torch.device(d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls["init"].append(backend))
    return calls


def _torchrun_env(monkeypatch, rank: int, world: int, local: int) -> None:
    for name, value in zip(TORCHRUN_ENV, (rank, world, local)):
        monkeypatch.setenv(name, str(value))


def test_each_rank_takes_the_gpu_of_its_local_rank_and_nccl(gpus, monkeypatch):
    _torchrun_env(monkeypatch, rank=3, world=4, local=1)  # the second process on the second machine
    ctx = setup()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend) == (3, 4, 1, "nccl")
    assert ctx.device == torch.device("cuda", 1) and gpus["set_device"] == [torch.device("cuda", 1)]
    assert gpus["init"] == ["nccl"] and ctx.distributed and not ctx.is_main
    assert default_device(5) == torch.device("cuda", 1)  # more processes than GPUs: they share, round-robin


def test_device_overrides_the_gpu_and_then_the_backend_is_gloo(gpus, monkeypatch):
    _torchrun_env(monkeypatch, rank=0, world=2, local=0)
    ctx = setup("cpu")
    assert ctx.device == torch.device("cpu") and ctx.backend == "gloo" and gpus["init"] == ["gloo"]
    assert gpus["set_device"] == [] and ctx.is_main


def test_without_torchrun_there_is_no_process_group(gpus, monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    ctx = setup()
    assert ctx.device == torch.device("cuda", 0) and not ctx.distributed and ctx.backend is None
    assert gpus["init"] == []
    _torchrun_env(monkeypatch, rank=0, world=1, local=0)  # torchrun with one process: no group either
    assert setup("cpu").backend is None and gpus["init"] == []


@pytest.mark.parametrize("env, match", [((2, 2, 0), "RANK 2 is outside"), (("x", 2, 0), "RANK must be an integer")])
def test_a_broken_torchrun_environment_is_a_clear_error(monkeypatch, env, match):
    _torchrun_env(monkeypatch, *env)
    with pytest.raises(RuntimeError, match=match):
        setup("cpu")


def test_shards_cover_the_indices_in_rank_order():
    for n in (0, 1, 3, 10, 101):
        for world in (1, 2, 3, 7):
            parts = [shard(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    assert distributed.Context().is_main
