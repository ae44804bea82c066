"""`scoregen nll`: bits/dim with a standard error, on exact targets (against the closed form) and built-in models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scoregen.cli import main
from scoregen.likelihood import ode_nll, vlb
from scoregen.targets import load_target


def test_nll_ode_on_a_target_matches_the_closed_form_and_the_api(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["nll", "--target", "ring2d", "--method", "ode", "-n", "64", "--seed", "2", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "bits/dim" in text and "+-" in text and "exact -log p" in text
    r = json.loads(out.read_text())
    assert r["method"] == "ode" and r["samples"] == 64 and r["command"].startswith("scoregen nll")
    assert abs(r["bits_per_dim"] - r["exact_bits_per_dim"]) < 0.01 / math.log(2)
    target = load_target("ring2d")
    x = target.sample(64, generator=torch.Generator().manual_seed(2)).double()
    assert r["bits_per_dim"] == pytest.approx(float(ode_nll(target, x, seed=2, progress=False).mean()) / (2 * math.log(2)))


def test_nll_vlb_with_plot_and_analytic_variance(tmp_path, capsys):
    png, out = tmp_path / "terms.png", tmp_path / "r.json"
    assert main(["nll", "--target", "ring2d", "-n", "128", "--steps", "20", "--spacing", "linspace", "--plot", str(png),
                 "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(r["terms_bits_per_dim"]["steps"]) == 19 and r["info"]["variance"] == "beta_tilde"
    target = load_target("ring2d")
    x = target.sample(128, generator=torch.Generator().manual_seed(0)).double()
    want = vlb(target, x, steps=20, spacing="linspace", progress=False).mean() / (2 * math.log(2))
    assert r["bits_per_dim"] == pytest.approx(float(want))
    assert r["bits_per_dim"] > r["exact_bits_per_dim"]  # a bound
    capsys.readouterr()
    assert main(["nll", "--target", "ring2d", "-n", "128", "--steps", "20", "--spacing", "linspace", "--variance",
                 "analytic", "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["bits_per_dim"] < r["bits_per_dim"]


def test_nll_on_the_builtin_digits_model_uses_17_grey_levels(capsys):
    assert main(["nll", "--checkpoint", "digits-ddpm", "-n", "8", "--steps", "10", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "17 values per dimension in [-1, 1]" in text and "8 of the 1797 points of digits" in text


@pytest.mark.parametrize("argv, message", [
    (["--method", "ode", "--variance", "beta"], "--variance apply to --method vlb"),
    (["--method", "ode", "--plot", "x.png"], "--plot apply to --method vlb"),
    (["--bins", "1"], "--bins must be 0"),
])
def test_nll_refuses_options_that_do_not_apply(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["nll", "--target", "ring2d", "-n", "8", *argv])
    assert message in capsys.readouterr().err


def test_nll_model_flag_takes_targets_checkpoints_and_diffusers_folders(tmp_path, capsys):
    pytest.importorskip("diffusers")
    import numpy as np
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    assert main(["nll", "--model", "ring2d", "-n", "16", "--steps", "10", "--no-progress"]) == 0
    assert "exact -log p" in capsys.readouterr().out
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(tmp_path / "pipe")
    data = tmp_path / "x.npy"
    np.save(data, (np.random.default_rng(0).integers(0, 17, (6, 1, 8, 8)) / 8.0 - 1.0).astype(np.float32))
    with pytest.raises(SystemExit):
        main(["nll", "--model", str(tmp_path / "pipe"), "-n", "4"])
    assert "give --data" in capsys.readouterr().err
    assert main(["nll", "--model", str(tmp_path / "pipe"), "--data", str(data), "--bins", "17", "-n", "4", "--steps", "5",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "diffusers model" in text and "17 values per dimension" in text and "4 of the 6 points" in text
