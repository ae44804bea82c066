"""`scoregen train` and `scoregen sample --checkpoint` end to end on small 2-D data."""

import numpy as np
import pytest

from scoregen.cli import main
from scoregen.io import read_checkpoint_config

TWO = '{"weights": [0.3, 0.7], "means": [[-2.0, 0.0], [2.0, 0.0]], "stds": [0.3, 0.3], "labels": [0, 1]}'

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    spec = root / "two.json"
    spec.write_text(TWO)
    common = ["--data", str(spec), "--steps", "800", "--batch-size", "128", "--lr", "3e-3", "--no-progress"]
    assert main(["train", "--objective", "ddpm", "--out", str(root / "ddpm"), *common]) == 0
    assert main(["train", "--objective", "classifier", "--out", str(root / "clf"), "--steps", "300",
                 "--data", str(spec), "--batch-size", "128", "--lr", "3e-3", "--no-progress"]) == 0
    return root


def test_train_writes_a_checkpoint_with_the_data_description(trained):
    config = read_checkpoint_config(trained / "ddpm")
    assert config["step"] == 800 and config["network"]["class"] == "MLPScoreNet"
    assert config["meta"]["data"]["num_classes"] == 2 and config["meta"]["train"]["objective"] == "ddpm"


@pytest.mark.parametrize("sampler", ["ddim", "langevin"])
def test_sample_from_checkpoint_lands_on_the_modes(trained, tmp_path, sampler):
    out = tmp_path / "s.npy"
    extra = ["--steps", "50"] if sampler == "ddim" else ["--steps-per-level", "30"]
    assert main(["sample", "--checkpoint", str(trained / "ddpm"), "--sampler", sampler, *extra, "-n", "2000",
                 "--out", str(out), "--no-progress"]) == 0
    x = np.load(out)
    assert x.shape == (2000, 2)
    assert abs((x[:, 0] > 0).mean() - 0.7) < 0.1
    near = np.minimum(np.abs(x[:, 0] - 2), np.abs(x[:, 0] + 2))
    assert np.median(near) < 0.4


def test_classifier_checkpoint_guides_the_ddpm_checkpoint(trained, tmp_path):
    out = tmp_path / "g.npy"
    assert main(["sample", "--checkpoint", str(trained / "ddpm"), "--classifier", str(trained / "clf"), "--label", "0",
                 "--sampler", "ddim", "--steps", "50", "-n", "500", "--out", str(out), "--no-progress"]) == 0
    assert (np.load(out)[:, 0] < 0).mean() > 0.9  # class 0 is the left mode (30% without guidance)


def test_checkpoint_misuse_is_explained(trained, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(trained / "ddpm"), "--label", "0", "--out", str(tmp_path / "x.npy")])
    assert "needs --classifier" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(trained / "clf"), "--out", str(tmp_path / "x.npy")])
    assert "holds a classifier" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npy")]) == 2
    assert "no checkpoint folder" in capsys.readouterr().err


def test_resume_trains_longer_but_refuses_other_settings(tmp_path, capsys):
    common = ["train", "--data", "ring2d", "--objective", "ddpm", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*common, "--steps", "4", "--batch-size", "8"]) == 0
    assert main([*common, "--steps", "8", "--batch-size", "8", "--resume"]) == 0
    assert read_checkpoint_config(tmp_path / "r")["step"] == 8
    assert main([*common, "--steps", "12", "--batch-size", "16", "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_digits_pipeline_writes_samples_and_a_grid(tmp_path):
    from PIL import Image

    common = ["--data", "digits", "--steps", "3", "--batch-size", "16", "--no-progress"]
    assert main(["train", "--objective", "ddpm", "--conditional", "--out", str(tmp_path / "u"), *common]) == 0
    assert main(["train", "--objective", "classifier", "--out", str(tmp_path / "c"), *common]) == 0
    config = read_checkpoint_config(tmp_path / "u")
    assert config["network"]["class"] == "UNet" and config["meta"]["data"]["value_range"] == [-1.0, 1.0]
    out, grid = tmp_path / "s.npy", tmp_path / "s.png"
    # classifier-free guidance on the conditional U-Net, x0 clipped to the data range by default
    assert main(["sample", "--checkpoint", str(tmp_path / "u"), "--label", "3", "--guidance-scale", "1",
                 "--sampler", "ddim", "--steps", "5", "-n", "9", "--out", str(out), "--grid", str(grid), "--no-progress"]) == 0
    x = np.load(out)
    assert x.shape == (9, 1, 8, 8) and np.abs(x).max() <= 1.0 + 1e-5
    assert Image.open(grid).size == (4 * (3 * 9 + 1),) * 2  # 3 x 3 tiles of 8 px with 1 px padding, enlarged 4x
    # an MLP classifier checkpoint on flattened digits guides the same model too
    assert main(["sample", "--checkpoint", str(tmp_path / "u"), "--classifier", str(tmp_path / "c"), "--label", "3",
                 "--sampler", "ddpm", "--steps", "5", "-n", "4", "--out", str(out), "--no-progress"]) == 0


def test_ncsn_on_digits_trains_an_ncsnv2_that_every_sampler_runs(tmp_path):
    assert main(["train", "--data", "digits", "--objective", "ncsn", "--steps", "2", "--batch-size", "8",
                 "--out", str(tmp_path / "n"), "--no-progress"]) == 0
    config = read_checkpoint_config(tmp_path / "n")
    assert config["network"]["class"] == "NCSNv2" and config["network"]["config"]["centered"] is True
    for sampler, extra in (("langevin", ["--steps-per-level", "1"]), ("ddpm", ["--steps", "4"]), ("ddim", ["--steps", "4"])):
        assert main(["sample", "--checkpoint", str(tmp_path / "n"), "--sampler", sampler, *extra, "-n", "2",
                     "--out", str(tmp_path / f"{sampler}.npy"), "--no-progress"]) == 0
        assert np.load(tmp_path / f"{sampler}.npy").shape == (2, 1, 8, 8)
