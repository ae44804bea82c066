"""Format detection for pretrained files (scoregen.interop.formats) and `scoregen sample --checkpoint` on models trained
elsewhere: each format is told apart by its container and key names, without executing anything."""

from __future__ import annotations

import json
import os

import pytest
import torch

from scoregen.cli import main
from scoregen.interop.formats import FORMATS, detect_format, load_pretrained


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_detects_each_torch_layout(tmp_path):
    w = torch.zeros(2)
    ncsnv2 = _save([{"module.begin_conv.weight": w}, {}, 1, 10], tmp_path / "checkpoint_10.pth")
    ncsnv2_bare = _save({"begin_conv.weight": w, "normalizer.alpha": w}, tmp_path / "ncsnv2_bare.pth")
    score_sde = _save({"optimizer": {}, "model": {"module.all_modules.0.W": w}, "step": 3,
                       "ema": {"decay": 0.999, "num_updates": 3, "shadow_params": [w]}}, tmp_path / "checkpoint_3.pth")
    openai = _save({"time_embed.0.weight": w, "input_blocks.0.0.weight": w, "out.2.weight": w}, tmp_path / "model.pt")
    assert detect_format(ncsnv2) == "ncsnv2"
    assert detect_format(ncsnv2_bare) == "ncsnv2"
    assert detect_format(score_sde) == "score_sde"
    assert detect_format(openai) == "openai"


def test_detects_folders_and_names(tmp_path):
    assert detect_format("digits-ddpm") == "scoregen"
    (tmp_path / "edm").mkdir()
    (tmp_path / "edm" / "config.json").write_text(json.dumps({"format": "scoregen-edm-1"}))
    assert detect_format(tmp_path / "edm") == "edm"
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    assert detect_format(tmp_path / "pipe") == "diffusers"
    snapshot = tmp_path / "network-snapshot.pkl"
    snapshot.write_bytes(b"\x80\x04N.")  # never opened by detection
    assert detect_format(snapshot) == "edm"


def test_unknown_layouts_are_refused_clearly(tmp_path):
    odd = _save({"weight": torch.zeros(1)}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="matches no known format"):
        detect_format(odd)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="pass --format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a built-in model"):
        detect_format(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown format"):
        load_pretrained(odd, "caffe")
    assert set(FORMATS) == {"scoregen", "diffusers", "openai", "score_sde", "ncsnv2", "edm"}


def test_detection_executes_nothing(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = _save({"input_blocks.0.0.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="nothing in it was executed"):
        detect_format(path)
    assert not marker.exists()


def test_cli_refuses_format_flags_without_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--format", "openai", "-n", "2", "--out", str(tmp_path / "x.npy"), "--no-progress"])
    assert "apply to --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", "digits-ddpm", "--model-config", "x", "-n", "2", "--sampler", "ddim",
              "--steps", "2", "--out", str(tmp_path / "x.npy"), "--no-progress"])
    assert "holds its own" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.npy")


OPENAI_FLAGS = ("--rescale_timesteps False --image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 "
                "--num_head_channels 16 --learn_sigma True --class_cond True --num_classes 10 --diffusion_steps 100 "
                "--noise_schedule cosine --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
                "--classifier_attention_resolutions 4 --classifier_num_head_channels 16 --classifier_num_classes 10")


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory):
    from scoregen.interop.openai import openai_classifier_network, openai_network

    folder = tmp_path_factory.mktemp("openai")
    torch.manual_seed(0)
    torch.save(openai_network(OPENAI_FLAGS).state_dict(), folder / "model.pt")
    torch.save(openai_classifier_network(OPENAI_FLAGS).state_dict(), folder / "classifier.pt")
    return folder


def test_cli_samples_an_openai_checkpoint(openai_files, tmp_path, capsys):
    """Detected as openai; learned variance by default under ddpm; the class label reaches the network, and the
    classifier guides it; the samples equal the Python API's."""
    import numpy as np

    import scoregen as sg
    from scoregen.interop.openai import load_openai

    out = tmp_path / "a.npy"
    main(["sample", "--checkpoint", str(openai_files / "model.pt"), "--model-config", OPENAI_FLAGS, "--label", "3",
          "--sampler", "ddpm", "--steps", "4", "-n", "3", "--seed", "5", "--out", str(out), "--no-progress"])
    assert "variance=learned" in capsys.readouterr().out
    model = load_openai(openai_files / "model.pt", OPENAI_FLAGS)
    ref = sg.sample(model, "ddpm", n=3, seed=5, steps=4, y=3, variance="learned", x0_hook=sg.clip_x0(-1.0, 1.0),
                    progress=False).samples
    np.testing.assert_allclose(np.load(out), ref.numpy(), rtol=0, atol=1e-6)
    main(["sample", "--checkpoint", str(openai_files / "model.pt"), "--model-config", OPENAI_FLAGS, "--label", "3",
          "--classifier", str(openai_files / "classifier.pt"), "--classifier-config", OPENAI_FLAGS,
          "--guidance-scale", "4", "--sampler", "ddim", "--steps", "4", "-n", "3", "--seed", "5",
          "--out", str(tmp_path / "b.npy"), "--no-progress"])
    assert "classifier guidance" in capsys.readouterr().out
    plain = sg.sample(model, "ddim", n=3, seed=5, steps=4, y=3, x0_hook=sg.clip_x0(-1.0, 1.0), progress=False).samples
    assert not np.allclose(np.load(tmp_path / "b.npy"), plain.numpy(), atol=1e-4)  # the classifier moved them


@pytest.mark.parametrize("extra, message", [
    ([], "does not hold its architecture"),                           # no flags
    (["--model-config", OPENAI_FLAGS], "class-conditional"),          # no label
    (["--model-config", OPENAI_FLAGS, "--label", "3", "--guidance-scale", "2"], "no 'no class' label"),
    (["--model-config", OPENAI_FLAGS.replace("32", "64", 1)], "num_channels"),  # the wrong flags: named
    (["--model-config", OPENAI_FLAGS.replace("--rescale_timesteps False ", "")], "--rescale_timesteps True"),
])
def test_cli_openai_errors(openai_files, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(openai_files / "model.pt"), *extra, "--sampler", "ddim", "--steps", "2",
              "-n", "2", "--out", str(tmp_path / "x.npy"), "--no-progress"])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_cli_samples_an_edm_snapshot(tmp_path, capsys):
    """An EDM .pkl is detected and read without running it; the samples equal the Python API's, labels one-hot."""
    import numpy as np

    import scoregen as sg
    from scoregen.interop.edm import load_edm

    snapshot = os.path.join(FIXTURES, "edm", "edm_adm.pkl")
    main(["sample", "--checkpoint", snapshot, "--label", "1", "--sampler", "edm", "--steps", "4", "-n", "2",
          "--out", str(tmp_path / "e.npy"), "--no-progress"])
    assert "EDMPrecond" in capsys.readouterr().out
    ref = sg.sample(load_edm(snapshot), "edm", n=2, seed=0, steps=4, y=1, x0_hook=sg.clip_x0(-1.0, 1.0), progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), ref.samples.numpy(), rtol=0, atol=1e-6)
    with pytest.raises(SystemExit):  # 4 classes
        main(["sample", "--checkpoint", snapshot, "--label", "4", "--sampler", "edm", "--steps", "2", "-n", "2",
              "--out", str(tmp_path / "f.npy"), "--no-progress"])
    assert "--label must be in 0..3" in capsys.readouterr().err


def test_cli_refuses_an_edm_pickle_with_a_payload(tmp_path, capsys):
    import pickle

    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "network-snapshot.pkl"
    evil.write_bytes(pickle.dumps({"ema": Payload()}))
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(evil), "--sampler", "edm", "--steps", "2", "-n", "2",
              "--out", str(tmp_path / "x.npy"), "--no-progress"])
    err = capsys.readouterr().err
    assert "edm_convert" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "x.npy").exists()


def test_cli_samples_an_ncsnv2_checkpoint_from_the_originals_start(tmp_path, capsys):
    """An NCSNv2 checkpoint with config.yml beside it; langevin starts from the original's uniform images."""
    import numpy as np
    import yaml

    import scoregen as sg
    from scoregen.interop import load_ncsnv2, ncsnv2_initial_state
    from scoregen.interop.ncsnv2 import ncsnv2_network

    config = {"data": {"dataset": "CIFAR10", "image_size": 8, "channels": 3, "logit_transform": False, "rescaled": False},
              "model": {"ngf": 4, "sigma_begin": 2.0, "sigma_end": 0.01, "num_classes": 4, "sigma_dist": "geometric",
                        "normalization": "InstanceNorm++", "nonlinearity": "elu", "ema": False}}
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in ncsnv2_network(config).state_dict().items()}
    torch.save([state, {}, 1, 10], tmp_path / "checkpoint_10.pth")
    main(["sample", "--checkpoint", str(tmp_path / "checkpoint_10.pth"), "--sampler", "langevin", "--steps-per-level", "2",
          "-n", "3", "--seed", "4", "--out", str(tmp_path / "x.npy"), "--no-progress"])
    assert "initial state" in capsys.readouterr().out
    net = load_ncsnv2(tmp_path / "checkpoint_10.pth", tmp_path / "config.yml")
    start = ncsnv2_initial_state(net, 3, generator=torch.Generator().manual_seed(4))
    ref = sg.sample(net.score_model(), "langevin", n=3, seed=4, steps_per_level=2, x_start=start,
                    x0_hook=sg.clip_x0(0.0, 1.0), progress=False).samples
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), ref.numpy(), rtol=0, atol=1e-6)


def test_cli_samples_a_diffusers_folder(tmp_path, capsys):
    import numpy as np

    diffusers = pytest.importorskip("diffusers")
    import scoregen as sg
    from scoregen.interop import load_diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.EulerDiscreteScheduler()).save_pretrained(tmp_path / "pipe")
    main(["sample", "--checkpoint", str(tmp_path / "pipe"), "--sampler", "euler", "--steps", "3", "-n", "2",
          "--out", str(tmp_path / "x.npy"), "--no-progress"])
    assert "diffusers model" in capsys.readouterr().out
    model = load_diffusers(tmp_path / "pipe")
    ref = sg.sample(model, "euler", n=2, seed=0, steps=3, x0_hook=sg.clip_x0(-1.0, 1.0), progress=False).samples
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), ref.numpy(), rtol=0, atol=1e-6)


def test_cli_samples_a_score_sde_checkpoint(tmp_path, capsys):
    """A score_sde checkpoint (sub-VP DDPM++) with its config as a JSON file; the EMA weights, as the original samples."""
    import numpy as np

    import scoregen as sg
    from scoregen.interop import load_score_sde, score_sde_config
    from scoregen.interop.score_sde import score_sde_network

    cfg = score_sde_config("subvp/cifar10_ddpmpp_continuous",
                           {"data": {"image_size": 8},
                            "model": {"nf": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    net = score_sde_network(cfg)
    shadow = [p.detach() + 0.01 for p in net.parameters() if p.requires_grad]
    torch.save({"optimizer": {}, "step": 10, "model": {"module." + k: v for k, v in net.state_dict().items()},
                "ema": {"decay": 0.9999, "num_updates": 10, "shadow_params": shadow}}, tmp_path / "checkpoint_1.pth")
    main(["sample", "--checkpoint", str(tmp_path / "checkpoint_1.pth"), "--model-config", str(tmp_path / "config.json"),
          "--sampler", "dpmpp_2m", "--steps", "3", "-n", "2", "--out", str(tmp_path / "x.npy"), "--no-progress"])
    assert "score_sde" in capsys.readouterr().out
    model = load_score_sde(tmp_path / "checkpoint_1.pth", cfg)
    assert isinstance(model.schedule, sg.ContinuousSubVP) and tuple(model.data_range) == (-1.0, 1.0)
    ref = sg.sample(model, "dpmpp_2m", n=2, seed=0, steps=3, x0_hook=sg.clip_x0(-1.0, 1.0), progress=False).samples
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), ref.numpy(), rtol=0, atol=1e-6)
