"""Checkpoints round-trip exactly, refuse damage, and training resumes bit for bit."""

import json
import os

import pytest
import torch

import scoregen as sg
from scoregen.io import load_checkpoint, read_checkpoint_config, save_checkpoint
from scoregen.io.checkpoints import _config_sha256
from scoregen.networks import MLPClassifier, MLPScoreNet
from scoregen.training import TrainConfig, train

TARGET = sg.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], [0.3, 0.3])


def _data(n=2000):
    x, k = TARGET.sample(n, torch.Generator().manual_seed(0), return_components=True)
    return x, k


def _net(**kw):
    torch.manual_seed(0)
    return MLPScoreNet(2, sg.DiscreteVP.linear(), "eps", hidden=32, **kw)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_exact_and_needs_only_the_path(tmp_path):
    net = _net()
    save_checkpoint(tmp_path / "ck", net, step=3)
    loaded, config = load_checkpoint(tmp_path / "ck")
    assert isinstance(loaded, MLPScoreNet) and _same_weights(net, loaded) and config["step"] == 3
    x, t = torch.randn(5, 2), torch.full((5,), 17.0)
    assert torch.equal(net(x, t), loaded(x, t))
    assert loaded.schedule.to_config() == net.schedule.to_config()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "config"])
def test_damaged_checkpoints_are_refused(tmp_path, damage):
    save_checkpoint(tmp_path / "ck", _net(), step=1, ema=_net())
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    weights = tmp_path / "ck" / config["files"]["weights"]["name"]
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        os.remove(weights)
    else:
        (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="truncated or was modified|missing|not valid JSON"):
        load_checkpoint(tmp_path / "ck")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", _net(), step=1)
    path = tmp_path / "ck" / "config.json"
    config = json.loads(path.read_text())
    config["network"]["config"]["hidden"] = 64  # the weights are for hidden=32
    config["config_sha256"] = _config_sha256(config)  # sealed again: a deliberate edit, not damage
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(tmp_path / "ck")
    assert not os.path.exists(tmp_path / "nothing" / "config.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder .*nothing.* not the name of a built-in model"):
        load_checkpoint(tmp_path / "nothing")


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    x, k = _data()
    config = TrainConfig("ddpm", steps=40, batch_size=64, lr=1e-3, warmup=5, checkpoint_every=10, seed=3)
    straight = _net()
    train(straight, x, None, config, tmp_path / "a", progress=False)

    def crash(step, loss):
        if step == 25:  # after the checkpoint at step 20, before the one at 30
            raise KeyboardInterrupt

    interrupted = _net()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, x, None, config, tmp_path / "b", progress=False, callback=crash)
    assert read_checkpoint_config(tmp_path / "b")["step"] == 20
    resumed = _net()
    train(resumed, x, None, config, tmp_path / "b", resume=True, progress=False)
    assert _same_weights(straight, resumed)
    ema_a, _ = load_checkpoint(tmp_path / "a")
    ema_b, _ = load_checkpoint(tmp_path / "b")
    assert _same_weights(ema_a, ema_b)
    assert sorted(n for n in os.listdir(tmp_path / "b") if n != ".scoregen.lock") == ["config.json", "ema-40.safetensors", "trainer-40.pt", "weights-40.safetensors"]


def test_resume_refuses_a_different_network_or_config(tmp_path):
    x, _ = _data(200)
    config = TrainConfig("ddpm", steps=4, batch_size=8, checkpoint_every=2)
    train(_net(), x, None, config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different network"):
        train(MLPScoreNet(2, sg.DiscreteVP.linear(), "eps", hidden=16), x, None, config, tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="trained with"):
        train(_net(), x, None, TrainConfig("ddpm", steps=8, batch_size=8, checkpoint_every=2, lr=1e-3), tmp_path, resume=True, progress=False)
    train(_net(), x, None, TrainConfig("ddpm", steps=8, batch_size=8, checkpoint_every=4), tmp_path, resume=True, progress=False)
    assert read_checkpoint_config(tmp_path)["step"] == 8  # training longer is allowed


def test_training_lowers_the_loss_and_ema_model_samples_the_target(tmp_path):
    x, _ = _data(5000)
    losses = []
    config = TrainConfig("ddpm", steps=1200, batch_size=256, lr=3e-3, warmup=50, ema_decay=0.99, checkpoint_every=600)
    train(_net(), x, None, config, tmp_path, progress=False, callback=lambda s, l: losses.append(l))
    assert sum(losses[-100:]) / 100 < 0.8 * sum(losses[:20]) / 20
    net, _ = load_checkpoint(tmp_path)  # EMA weights
    samples = sg.sample(net.score_model(), "ddim", 2000, seed=0, steps=50, progress=False).samples
    right = (samples[:, 0] > 0).float().mean().item()
    assert abs(right - 0.7) < 0.08


def test_classifier_and_cfg_objectives_train(tmp_path):
    x, k = _data(1000)
    clf = MLPClassifier(2, 2, sg.DiscreteVP.linear(), hidden=32)
    train(clf, x, k, TrainConfig("classifier", steps=30, batch_size=64, checkpoint_every=30), tmp_path / "c", progress=False)
    assert isinstance(load_checkpoint(tmp_path / "c")[0], MLPClassifier)
    cond = _net(num_classes=2)
    train(cond, x, k, TrainConfig("ddpm", steps=30, batch_size=64, checkpoint_every=30, label_dropout=0.2), tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        train(_net(), x, k, TrainConfig("ddpm", steps=2, label_dropout=0.2), tmp_path / "e", progress=False)
    with pytest.raises(ValueError, match="needs class labels"):
        train(clf, x, None, TrainConfig("classifier", steps=2), tmp_path / "f", progress=False)


def test_scoregen_train_killed_with_sigkill_resumes_bit_for_bit(tmp_path):
    """A real kill (SIGKILL, possibly in the middle of writing a checkpoint) of `scoregen train`, then
    `--resume`: the final weights equal those of a run that was never interrupted."""
    import signal
    import subprocess
    import sys
    import time

    def cmd(out, *extra):
        return [sys.executable, "-m", "scoregen.cli", "train", "--data", "ring2d", "--objective", "ddpm", "--steps", "600",
                "--batch-size", "64", "--checkpoint-every", "10", "--out", str(out), "--no-progress", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every run
    # the uninterrupted run goes alongside the one that is killed: one thread each
    straight = subprocess.Popen(cmd(tmp_path / "straight"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config, deadline = tmp_path / "killed" / "config.json", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(config.read_text())["step"] >= 100:
                break
        except (OSError, ValueError):  # not written yet
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed: give it more steps"
    step = read_checkpoint_config(tmp_path / "killed")["step"]
    assert 100 <= step < 600
    subprocess.run(cmd(tmp_path / "killed", "--resume"), env=env, check=True, capture_output=True)
    assert straight.wait() == 0, straight.stderr.read().decode()
    for ema in (True, False):
        a, _ = load_checkpoint(tmp_path / "straight", ema=ema)
        b, _ = load_checkpoint(tmp_path / "killed", ema=ema)
        assert _same_weights(a, b)


def test_image_grid_scale_must_be_a_positive_integer(tmp_path):
    from PIL import Image

    from scoregen.io import save_image_grid

    save_image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "g.png", nrow=2, scale=2)
    assert Image.open(tmp_path / "g.png").size == (2 * (2 * 9 + 1),) * 2
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="scale must be a positive integer"):
            save_image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "h.png", scale=bad)
    assert not (tmp_path / "h.png").exists()
