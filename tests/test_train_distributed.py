"""`scoregen train` under torchrun: DistributedDataParallel on 2 CPU processes (gloo), the global batch cut into
per-(seed, step, chunk) chunks, checkpoints by rank 0 only, and resume across world sizes (1 <-> 2 processes).

The strongest check: two ranks take exactly the steps one process takes when it draws the same chunks
(``train(..., chunks=2)``), so the 2-process gradient is the 1-process gradient of the same global batch, and a
2-rank checkpoint resumed by one process continues the same run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scoregen as sg
from scoregen.cli import main
from scoregen.distributed import Context
from scoregen.io import load_checkpoint, load_trainer_state, read_checkpoint_config
from scoregen.training import TrainConfig, ddpm_loss, train
from scoregen.training.distributed import chunk_seeds, rank_chunks, resolve_chunks

dist = torch.distributed
pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with the gloo backend is not available"),
]

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, LR, SEED = 40, 16, 3e-3, 0
COMMON = ["--data", "ring2d", "--objective", "ddpm", "--batch-size", str(BATCH), "--lr", str(LR), "--seed", str(SEED),
          "--device", "cpu", "--no-progress"]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID")


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc -m scoregen train ARGS`` from the repository, one thread each."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "scoregen", "train", *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _data_and_net():
    """What `scoregen train --data ring2d --objective ddpm --seed 0` trains: its data and its initial network."""
    from scoregen.data import load_data
    from scoregen.training.recipes import default_network

    data = load_data("ring2d", seed=SEED)
    torch.manual_seed(SEED)
    return data.x, default_network(data.x, "ddpm", data.num_classes, False)


def _config(steps: int) -> TrainConfig:
    return TrainConfig("ddpm", steps=steps, batch_size=BATCH, lr=LR, seed=SEED, checkpoint_every=20)


def _assert_same_run(a: Path, b: Path, chunks: int = 2) -> None:
    """The checkpoints in a and b hold the same weights, EMA and optimizer state (to float rounding)."""
    for ema in (False, True):
        net_a, config_a = load_checkpoint(a, ema=ema)
        net_b, config_b = load_checkpoint(b, ema=ema)
        assert config_a["step"] == config_b["step"]
        for (name, pa), pb in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} (ema={ema}): {m}")
    state_a = load_trainer_state(a, read_checkpoint_config(a))
    state_b = load_trainer_state(b, read_checkpoint_config(b))
    assert state_a["chunks"] == state_b["chunks"] == chunks
    assert state_a["running_loss"] == pytest.approx(state_b["running_loss"], rel=1e-6)
    for sa, sb in zip(state_a["optimizer"]["state"].values(), state_b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-4, atol=1e-10)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A checkpoint trained for STEPS steps by 2 processes (about 10 s, most of it starting torchrun)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, torchrun(*COMMON, "--steps", str(STEPS), "--checkpoint-every", "20", "--out", str(out))


@pytest.fixture(scope="module")
def one_process_chunks(tmp_path_factory) -> Path:
    """The same run in one process drawing the same two chunks per step."""
    out = tmp_path_factory.mktemp("chunks") / "run"
    x, net = _data_and_net()
    train(net, x, None, _config(STEPS), out, progress=False, chunks=2)
    return out


def _two_ranks_train_and_rank_0_alone_writes_the_checkpoint(two_ranks):
    out, done = two_ranks
    config = read_checkpoint_config(out)
    assert config["step"] == STEPS and config["network"]["class"] == "MLPScoreNet"
    assert config["meta"]["distributed"] == {"world_size": 2, "chunks": 2, "backend": "gloo", "device_type": "cpu"}
    assert config["meta"]["train"]["batch_size"] == BATCH  # the global batch: 8 per rank
    assert load_trainer_state(out, config)["chunks"] == 2
    # one checkpoint, written atomically: no temporaries, no second writer's files
    names = sorted(n for n in os.listdir(out) if n != ".scoregen.lock")
    assert names == sorted(["config.json", f"weights-{STEPS}.safetensors", f"ema-{STEPS}.safetensors",
                            f"trainer-{STEPS}.pt"])
    assert done.stdout.count("with 2 processes from step 0 to 40") == 1  # rank 0 reports for the job


def _the_loss_falls_and_the_checkpoint_samples_in_one_process(two_ranks):
    out, _ = two_ranks
    x, initial = _data_and_net()
    trained, _ = load_checkpoint(out)  # the EMA weights, in this single process

    def loss(net) -> float:  # fixed data, fixed noise
        with torch.no_grad():
            return sum(ddpm_loss(net.eval(), x[:2048], generator=torch.Generator().manual_seed(k)).item()
                       for k in range(4)) / 4

    before, after = loss(initial), loss(trained)
    assert after < 0.8 * before, (before, after)
    samples = sg.sample(trained.score_model(), "ddim", 500, seed=0, steps=20, progress=False).samples
    assert samples.shape == (500, 2) and torch.isfinite(samples).all()


def _two_ranks_take_the_steps_of_one_process_drawing_the_same_chunks(two_ranks, one_process_chunks):
    """DDP's averaged gradient is the one-process gradient of the same global batch, step after step."""
    _assert_same_run(two_ranks[0], one_process_chunks)


def _a_two_rank_checkpoint_resumed_by_one_process_continues_the_same_run(two_ranks, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(two_ranks[0], resumed)
    assert main(["train", *COMMON, "--steps", "60", "--checkpoint-every", "20", "--resume", "--out", str(resumed)]) == 0
    assert read_checkpoint_config(resumed)["step"] == 60
    uninterrupted = tmp_path / "uninterrupted"
    x, net = _data_and_net()
    train(net, x, None, _config(60), uninterrupted, progress=False, chunks=2)
    _assert_same_run(resumed, uninterrupted)


def test_a_two_rank_run(two_ranks, one_process_chunks, tmp_path):
    """One torchrun start, checked four ways (in one test: under pytest-xdist a module fixture runs again on every
    worker that needs it, and each start costs about 10 s)."""
    _two_ranks_train_and_rank_0_alone_writes_the_checkpoint(two_ranks)
    _the_loss_falls_and_the_checkpoint_samples_in_one_process(two_ranks)
    _two_ranks_take_the_steps_of_one_process_drawing_the_same_chunks(two_ranks, one_process_chunks)
    _a_two_rank_checkpoint_resumed_by_one_process_continues_the_same_run(two_ranks, tmp_path)


@pytest.mark.slow  # a second torchrun start: about 10-15 s on 2 cores
def test_a_one_process_checkpoint_resumes_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "20", "--out", str(out)]) == 0
    config = read_checkpoint_config(out)
    assert "distributed" not in config["meta"] and "chunks" not in load_trainer_state(out, config)  # as before
    done = torchrun(*COMMON, "--steps", "30", "--resume", "--out", str(out))
    assert done.stderr.count("trained by one process") == 1, done.stderr  # rank 0 says the draws change from here
    config = read_checkpoint_config(out)
    assert config["step"] == 30 and config["meta"]["distributed"]["chunks"] == 2
    net, _ = load_checkpoint(out)
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.slow  # another torchrun start
def test_two_ranks_resuming_four_chunks_compute_two_each_and_continue_the_same_run(tmp_path):
    """A rank with several chunks accumulates them without syncing (DDP no_sync), then averages once."""
    x, net = _data_and_net()
    train(net, x, None, _config(20), tmp_path / "resumed", progress=False, chunks=4)
    torchrun(*COMMON, "--steps", "30", "--resume", "--out", str(tmp_path / "resumed"))
    assert read_checkpoint_config(tmp_path / "resumed")["meta"]["distributed"] == \
        {"world_size": 2, "chunks": 4, "backend": "gloo", "device_type": "cpu"}
    x, net = _data_and_net()
    train(net, x, None, _config(30), tmp_path / "uninterrupted", progress=False, chunks=4)
    _assert_same_run(tmp_path / "resumed", tmp_path / "uninterrupted", chunks=4)


def test_the_global_batch_must_split_evenly_over_the_ranks(tmp_path):
    x, net = _data_and_net()
    three = Context(rank=0, world_size=3)  # refused before any collective: no process group is needed
    with pytest.raises(ValueError, match=r"16 is the global batch, split evenly over the 3 processes: it must be a "
                                         r"multiple of 3 \(e.g. 15 or 18\)"):
        train(net, x, None, _config(2), tmp_path / "run", progress=False, context=three)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="chunks=3 must be a multiple of the 1 processes and divide the global batch"):
        train(net, x, None, _config(2), tmp_path / "run", progress=False, chunks=3)


def test_the_chunks_a_run_draws_across_world_sizes():
    assert resolve_chunks(None, None, 1, 16, False) == (None, None)  # one process: the scheme of old
    assert resolve_chunks(None, None, 2, 16, False) == (2, None)
    assert resolve_chunks(2, None, 1, 16, True) == (2, None)  # 2 ranks -> 1 process: the same trajectory
    assert resolve_chunks(4, None, 2, 16, True) == (4, None)
    k, note = resolve_chunks(None, None, 2, 16, True)  # one process -> 2 ranks: chunks from here on
    assert k == 2 and "trained by one process" in note
    k, note = resolve_chunks(2, None, 4, 16, True)
    assert k == 4 and "cannot share evenly" in note
    assert [list(rank_chunks(4, r, 2)) for r in range(2)] == [[0, 1], [2, 3]]
    assert chunk_seeds(0, 5, 1) == chunk_seeds(0, 5, 1) != chunk_seeds(0, 5, 0)


def test_a_chunked_step_gradient_is_the_mean_over_the_global_batch():
    """One process, two chunks: the gradient the trainer steps with is that of the mean loss over both chunks, each
    drawn from its (seed, step, chunk) generator, which is what each of two ranks computes for its own chunk."""
    from scoregen.training.trainer import _chunked_step

    x, net = _data_and_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    config = _config(1)
    step_fn = _chunked_step(Context(), 2, config, lambda x0, y, g: ddpm_loss(net, x0, generator=g), None, opt, x, None)
    value = step_fn(7)
    got = [p.grad.clone() for p in net.parameters()]
    losses = []
    for j in range(2):
        g = torch.Generator().manual_seed(chunk_seeds(SEED, 7, j)[0])
        idx = torch.randint(0, x.shape[0], (BATCH // 2,), generator=g)
        losses.append(ddpm_loss(net, x[idx], generator=g))
    mean = (losses[0] + losses[1]) / 2
    want = torch.autograd.grad(mean, list(net.parameters()))
    assert value == pytest.approx(mean.item(), rel=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
