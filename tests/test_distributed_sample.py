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


def test_every_sampler_on_two_ranks_equals_one_process(tmp_path):
    """Each rank samples its share of the indices (scoregen.distributed.shard) with sample(index_offset=...): the
    ranks' rows together are the one-process samples, bit for bit (the adaptive ode: within its tolerance)."""
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
        if name == "ode":
            np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)
        else:
            assert np.array_equal(two, one), name


def test_torchrun_sample_writes_the_one_process_output(tmp_path):
    """pc: the sampler that couples samples (its corrector's group norms), on 64-d data, in shards of 64 samples."""
    common = ["sample", "--target", "gmm64", "--sampler", "pc", "--steps", "5", "-n", "300", "--seed", "4", "--no-progress"]
    run = torchrun(["-m", "scoregen", *common, "--out", "two.npy", "--batch-size", "64"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes (gloo, cpu)" in run.stdout and run.stdout.count("wrote 300 x 64") == 1  # rank 0 speaks
    assert main([*common, "--out", str(tmp_path / "one.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))
    assert not (tmp_path / "two.npy.shards").exists()  # merged, then removed


def test_a_failed_rank_leaves_no_output_and_the_rerun_resumes(tmp_path):
    """A shard rank 1 cannot write (a folder squats its file name) fails that rank: torchrun ends the job, the error
    names the rank, OUT.npy is not written and rank 0's shards stay; the rerun computes only the missing shard."""
    args = ["-m", "scoregen", "sample", "--target", "ring2d", "--sampler", "ddim", "--steps", "10", "-n", "200",
            "--seed", "1", "--batch-size", "100", "--out", "x.npy", "--no-progress"]
    shards = tmp_path / "x.npy.shards"
    shards.mkdir()
    (shards / "shard-000000000100-000000000200.npy").mkdir()  # rank 1's chunk [100, 200)
    run = torchrun(args, tmp_path)
    assert run.returncode != 0
    assert "scoregen sample (rank 1 of 2): error" in run.stderr
    assert not (tmp_path / "x.npy").exists()
    assert (shards / "shard-000000000000-000000000100.npy").is_file()  # rank 0's part is kept
    (shards / "shard-000000000100-000000000200.npy").rmdir()
    run = torchrun(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "1 of them already written by an earlier run" in run.stdout
    assert main(["sample", "--target", "ring2d", "--sampler", "ddim", "--steps", "10", "-n", "200", "--seed", "1",
                 "--out", str(tmp_path / "one.npy"), "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "x.npy"), np.load(tmp_path / "one.npy"))


def test_shards_of_another_run_are_refused_and_a_merge_needs_every_shard(tmp_path):
    from scoregen.io.shards import ShardSet, chunks

    run = {"command": ["sample", "--target", "ring2d"], "n": 10, "seed": 1, "shape": [2], "dtype": "float32"}
    shards = ShardSet(str(tmp_path / "x.npy"), run)
    assert shards.open() == 0
    shards.write(0, 5, np.zeros((5, 2), np.float32))
    assert ShardSet(str(tmp_path / "x.npy"), run).open() == 1  # the same run: resumed
    with pytest.raises(ValueError, match="holds the shards of another run .*seed"):
        ShardSet(str(tmp_path / "x.npy"), dict(run, seed=2)).open()
    with pytest.raises(ValueError, match=r"1 of 2 shards are missing or damaged \(\[5, 10\)\)"):
        shards.merge(chunks(10, 5), (2,), "float32")
    assert not (tmp_path / "x.npy").exists()
    (tmp_path / "x.npy.shards" / "shard-000000000005-000000000010.npy").write_bytes(b"not npy")  # damaged
    assert not shards.has(5, 10, (2,), "float32")
    shards.write(5, 10, np.ones((5, 2), np.float32))
    merged = shards.merge(chunks(10, 5), (2,), "float32")
    assert np.array_equal(np.load(tmp_path / "x.npy"), merged) and not (tmp_path / "x.npy.shards").exists()
