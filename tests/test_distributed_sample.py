"""`scoregen sample` under torchrun (2 processes, gloo on the CPU): the merged output equals the one-process output bit
for bit; a failed rank ends the job with an error naming it and no output, and the rerun computes only the missing
shards. Each torchrun start costs a few seconds (two interpreters importing torch)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.cli import main

pytest.importorskip("torch.distributed")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))


def torchrun(args: list[str], cwd, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_process(argv: list[str]) -> int:
    """``scoregen ARGV`` in this process with one torch thread, as each torchrun worker here (OMP_NUM_THREADS=1): a
    network's kernels can split their reductions by the thread count, so bit-for-bit needs the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def test_every_sampler_on_two_ranks_equals_one_process(tmp_path):
    """Each rank samples its share of the indices (scoregen.distributed.shard) with sample(index_offset=...): the
    ranks' rows together are the one-process samples, bit for bit."""
    sys.path.insert(0, os.path.join(HERE, "distributed"))
    try:
        import sample_shards as driver
    finally:
        sys.path.pop(0)
    run = torchrun([os.path.join(HERE, "distributed", "sample_shards.py"), str(tmp_path)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ring = sg.load_target("ring2d")
    for name in sorted(sg.SAMPLERS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = sg.sample(ring, name, driver.N, seed=5, dtype=torch.float64, progress=False,
                            **driver.OPTIONS.get(name, dict(steps=4))).samples.numpy()
        two = np.concatenate([np.load(tmp_path / f"{name}-{r}.npy") for r in range(2)])
        assert np.array_equal(two, one), name


def test_torchrun_sample_writes_the_one_process_output(tmp_path):
    """A network (the digits U-Net) and pc, the sampler that couples samples (its corrector's group norms): the shards
    are the one-process run's batches, so the merged output is its output bit for bit."""
    common = ["sample", "--checkpoint", "digits-ddpm", "--sampler", "pc", "--steps", "4", "-n", "300", "--seed", "4",
              "--batch-size", "64", "--no-progress"]
    run = torchrun(["-m", "scoregen", *common, "--out", "two.npy"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes (gloo, cpu): 5 shards of 64 samples" in run.stdout
    assert run.stdout.count("wrote 300 x 1 x 8 x 8") == 1  # rank 0 alone speaks
    assert one_process([*common, "--out", str(tmp_path / "one.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))
    assert not (tmp_path / "two.npy.shards").exists()  # merged, then removed


def _rank_pid(agent: int, rank: int):
    """The pid of the torchrun worker with RANK=rank among the children of the torchrun agent ``agent`` (Linux /proc)."""
    try:
        children = open(f"/proc/{agent}/task/{agent}/children").read().split()
    except OSError:
        return None
    for pid in children:
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers in /proc")
def test_a_killed_or_failed_rank_leaves_no_output_and_the_rerun_resumes(tmp_path, capsys):
    """Rank 1 killed (SIGKILL) mid-run: torchrun ends the job with an error naming the rank, OUT.npy is not written
    and the shards already written stay; the rerun, by one process without torchrun, computes only the missing
    shards and writes the one-process output."""
    import signal
    import time

    common = ["sample", "--target", "ring2d", "--sampler", "ddpm", "--steps", "1000", "-n", "1200", "--seed", "1",
              "--batch-size", "100", "--no-progress"]
    args = ["-m", "scoregen", *common, "--out", "x.npy"]
    shards = tmp_path / "x.npy.shards"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, victim = time.monotonic() + 120, None
        while time.monotonic() < deadline and job.poll() is None:
            if shards.is_dir() and len(list(shards.glob("shard-*.npy"))) >= 2:
                victim = _rank_pid(job.pid, 1)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    break
            time.sleep(0.05)
        out, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert victim is not None, "the run ended before a rank could be killed: make it longer"
    assert job.returncode != 0 and "SIGKILL" in err and "rank      : 1" in err, err[-3000:]  # torchrun names it
    assert not (tmp_path / "x.npy").exists()
    kept = sorted(p.name for p in shards.glob("shard-*.npy"))
    assert 2 <= len(kept) < 12
    assert one_process([*common, "--out", str(tmp_path / "x.npy")]) == 0  # the rerun, on one process without torchrun
    out = capsys.readouterr().out
    assert "1 process (cpu): 12 shards of 100 samples" in out and "already written by an earlier run" in out, out
    assert not shards.exists()
    assert one_process([*common, "--out", str(tmp_path / "one.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "x.npy"), np.load(tmp_path / "one.npy"))


def test_shards_of_another_run_are_refused_and_a_merge_needs_every_shard(tmp_path):
    from scoregen.io.shards import ShardSet

    run = {"command": ["sample", "--target", "ring2d"], "n": 10, "seed": 1, "shape": [2], "dtype": "float32"}
    shards = ShardSet(str(tmp_path / "x.npy"), run)
    assert shards.open() == 0
    shards.write(0, 5, np.zeros((5, 2), np.float32))
    assert ShardSet(str(tmp_path / "x.npy"), run).open() == 1  # the same run: resumed
    with pytest.raises(ValueError, match="holds the shards of another run .*seed"):
        ShardSet(str(tmp_path / "x.npy"), dict(run, seed=2)).open()
    with pytest.raises(ValueError, match=r"1 of 2 shards are missing or damaged \(\[5, 10\)\)"):
        shards.merge([(0, 5), (5, 10)], (2,), "float32")
    assert not (tmp_path / "x.npy").exists()
    (tmp_path / "x.npy.shards" / "shard-000000000005-000000000010.npy").write_bytes(b"not npy")  # damaged
    assert not shards.has(5, 10, (2,), "float32")
    shards.write(5, 10, np.ones((5, 2), np.float32))
    merged = shards.merge([(0, 5), (5, 10)], (2,), "float32")
    assert np.array_equal(np.load(tmp_path / "x.npy"), merged) and not (tmp_path / "x.npy.shards").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_with_a_c10d_rendezvous_write_the_one_process_output(tmp_path):
    """The several-machines command of docs/distributed.md, its two "machines" on this one: two torchrun agents, one
    process each, meeting at a c10d rendezvous. Each is LOCAL_RANK 0 of its node, RANK 0 or 1 of the job; the merged
    output equals one process's bit for bit (a network, batches of 64)."""
    common = ["sample", "--checkpoint", "digits-ddpm", "--sampler", "ddim", "--steps", "4", "-n", "200", "--seed", "2",
              "--batch-size", "64", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend",
            "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "two-nodes", "-m", "scoregen", *common,
            "--out", "two.npy"]
    agents = [subprocess.Popen(node, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [agent.communicate(timeout=300) for agent in agents]
    for agent, (out, err) in zip(agents, outs):
        assert agent.returncode == 0, err[-3000:]
    printed = "".join(out for out, _ in outs)
    assert printed.count("wrote 200 x 1 x 8 x 8") == 1 and "2 processes (gloo, cpu): 4 shards of 64 samples" in printed
    assert one_process([*common, "--out", str(tmp_path / "one.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))
