"""Loading score_sde_pytorch checkpoints, against reference outputs of the original code.

tests/fixtures/score_sde/ holds four tiny checkpoints written by the original code in its own container
({'optimizer', 'model', 'ema', 'step'}, xz-compressed), with inputs, labels, raw network outputs and the original
get_score_fn's scores (make_fixture.py, run on yang-song/score_sde_pytorch; meta.json records the commit):

* ncsnpp_ve: NCSN++ as cifar10_ncsnpp_continuous (VE, Fourier, FIR, BigGAN, residual input pyramid);
* ncsnpp_smld: NCSN++ on discrete VE levels (positional, DDPM blocks, output_skip / input_skip with 'cat');
* ddpmpp_vp: DDPM++ as cifar10_ddpmpp_continuous (VP; its scores also under the sub-VP SDE's convention);
* ddpm_vp: the DDPM U-Net as vp/ddpm/cifar10 (discrete VP).
"""

from __future__ import annotations

import copy
import hashlib
import json
import lzma
from pathlib import Path

import pytest
import torch

import scoregen as sg
from scoregen.interop.score_sde import PRESETS, load_score_sde, score_sde_config, score_sde_network, score_sde_schedule
from scoregen.networks.ncsnpp import fir_downsample, fir_upsample, upfirdn2d
from scoregen.schedules import ContinuousSubVP, ContinuousVE, ContinuousVP, DiscreteVE, DiscreteVP

FIXTURE = Path(__file__).parent / "fixtures" / "score_sde"
META = json.loads((FIXTURE / "meta.json").read_text())
NAMES = sorted(META["models"])


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The fixture checkpoints, decompressed to the .pth files the original writes."""
    folder = tmp_path_factory.mktemp("score_sde")
    out = {}
    for name in NAMES:
        out[name] = folder / f"checkpoint_{name}.pth"
        out[name].write_bytes(lzma.decompress((FIXTURE / f"{name}.pth.xz").read_bytes()))
    return out


def config(name: str, sde: str | None = None) -> dict:
    cfg = copy.deepcopy(META["models"][name]["config"])
    if sde is not None:
        cfg["training"]["sde"] = sde
    return cfg


def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 2e-6) -> None:
    """Equal to float32 rounding, relative to the tensor's scale (the two codes sum in different orders)."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


def test_fixture_records_the_original_commit():
    assert META["repository"] == "yang-song/score_sde_pytorch" and len(META["commit"]) == 40


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ema", [True, False])
def test_networks_match_the_original(checkpoints, reference, name, ema):
    model = load_score_sde(checkpoints[name], config(name), ema=ema)
    x, labels = reference[f"{name}/x"], reference[f"{name}/labels"]
    with torch.no_grad():
        out = model.net.net(x, labels)
    want = reference[f"{name}/{'ema' if ema else 'raw'}_output"]
    assert not torch.allclose(want, reference[f"{name}/{'raw' if ema else 'ema'}_output"], atol=1e-2)  # EMA differs
    close(out, want)


@pytest.mark.parametrize("name,sde", [(n, s) for n in NAMES for s in META["models"][n]["sdes"]])
def test_scores_follow_the_original_get_score_fn(checkpoints, reference, name, sde):
    """At SDE time t the loaded model, asked at the schedule's own level (m(t), sigma(t)) of t, answers the score the
    original get_score_fn gives: the label handed to the network and the output's meaning are the original's. The
    three samples are asked at once, one level each, as the reference was computed (same batch, same rounding)."""
    cfg = config(name, sde)
    model = load_score_sde(checkpoints[name], cfg)
    sch = model.schedule
    x, t, labels = reference[f"{name}/x"], reference[f"{name}/t"], reference[f"{name}/labels"]
    want = reference[f"{name}/score_{sde}"]
    # the schedule's own labels: SDE time (continuous) or the level index (discrete)
    own = t.numpy() if cfg["training"]["continuous"] else labels.double().numpy()
    m, sigma = torch.as_tensor(sch.m(own)), torch.as_tensor(sch.sigma(own))
    with torch.no_grad():
        if sde == "vesde":
            assert torch.equal(m, torch.ones(3, dtype=torch.float64))
            close(model.score(x, sigma, m), want, rtol=1e-5)
        else:  # the original divides eps by its own float32 std: compare eps, and the std to float32 accuracy
            std = reference[f"{name}/std_{sde}"]
            torch.testing.assert_close(sigma.float(), std, rtol=1e-3, atol=0)
            close(model.eps(x, sigma, m), -want * std[:, None, None, None], rtol=1e-5)
    _, label, _, _ = model.levels(x, sigma, m)
    torch.testing.assert_close(model.net.network_labels(label.double()).float(), labels.float(), rtol=1e-6, atol=0)


def test_schedules_and_parameterization(checkpoints):
    kinds = {"ncsnpp_ve": (ContinuousVE, "score", "fractional"), "ncsnpp_smld": (DiscreteVE, "score", "nearest"),
             "ddpmpp_vp": (ContinuousVP, "eps", "fractional"), "ddpm_vp": (DiscreteVP, "eps", "nearest")}
    for name, (cls, parameterization, time) in kinds.items():
        model = load_score_sde(checkpoints[name], config(name))
        assert type(model.schedule) is cls and model.parameterization == parameterization and model.time == time
        assert model.data_range == ((-1.0, 1.0) if config(name)["data"]["centered"] else (0.0, 1.0))
    sub = load_score_sde(checkpoints["ddpmpp_vp"], config("ddpmpp_vp", "subvpsde"))
    assert isinstance(sub.schedule, ContinuousSubVP) and sub.schedule.t_min == 1e-3
    ddpm = score_sde_schedule(config("ddpm_vp"))  # the original VPSDE's discretisation, labels 0 .. N - 1
    assert ddpm.first_index == 0 and len(ddpm) == 1000
    assert ddpm.beta[0] == pytest.approx(0.1 / 1000) and ddpm.beta[-1] == pytest.approx(20.0 / 1000)
    smld = score_sde_schedule(config("ncsnpp_smld"))
    assert smld.sigmas[0] == pytest.approx(50.0) and smld.sigmas[-1] == pytest.approx(0.01) and len(smld) == 10


def test_ema_is_mapped_onto_trainable_parameters_by_order(checkpoints):
    state = torch.load(checkpoints["ncsnpp_ve"], weights_only=True)
    model = load_score_sde(checkpoints["ncsnpp_ve"], config("ncsnpp_ve"))
    trainable = [p for p in model.net.net.parameters() if p.requires_grad]
    assert len(trainable) == len(state["ema"]["shadow_params"])
    for p, shadow in zip(trainable, state["ema"]["shadow_params"]):
        assert torch.equal(p, shadow)
    # the Fourier frequencies take no gradient: not in the EMA, loaded from the model state
    assert torch.equal(model.net.net.all_modules[0].W, state["model"]["module.all_modules.0.W"])
    raw = load_score_sde(checkpoints["ncsnpp_ve"], config("ncsnpp_ve"), ema=False)
    for (k, p), q in zip(raw.net.net.named_parameters(), model.net.net.parameters()):
        assert torch.equal(p, state["model"]["module." + k])
    assert any(not torch.equal(p, q) for p, q in zip(raw.net.net.parameters(), model.net.net.parameters()))


def _save(state, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_clear_errors(checkpoints, tmp_path):
    path = checkpoints["ncsnpp_ve"]
    state = torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match=r"does not fit the NCSNpp built from the config.*shape mismatch"):
        load_score_sde(path, score_sde_config(config("ncsnpp_ve"), {"model": {"nf": 16}}))
    with pytest.raises(ValueError, match="unexpected keys"):
        load_score_sde(path, score_sde_config(config("ncsnpp_ve"), {"model": {"progressive_input": "none"}}))
    short = copy.deepcopy(state)
    short["ema"]["shadow_params"] = short["ema"]["shadow_params"][:-1]
    with pytest.raises(ValueError, match="EMA has .* shadow_params, the network .* trainable parameters"):
        load_score_sde(_save(short, tmp_path / "short.pth"), config("ncsnpp_ve"))
    shuffled = copy.deepcopy(state)
    shuffled["ema"]["shadow_params"] = shuffled["ema"]["shadow_params"][::-1]
    with pytest.raises(ValueError, match="matched by order"):
        load_score_sde(_save(shuffled, tmp_path / "shuffled.pth"), config("ncsnpp_ve"))
    no_ema = {k: v for k, v in state.items() if k != "ema"}
    with pytest.raises(ValueError, match="no 'ema' entry.*ema=False"):
        load_score_sde(_save(no_ema, tmp_path / "no_ema.pth"), config("ncsnpp_ve"))
    bare = load_score_sde(_save(state["model"], tmp_path / "bare.pth"), config("ncsnpp_ve"), ema=False)
    assert bare.parameterization == "score"
    sigmas = copy.deepcopy(state)
    sigmas["model"]["module.sigmas"] = sigmas["model"]["module.sigmas"] * 2
    with pytest.raises(ValueError, match="sigmas buffer disagrees"):
        load_score_sde(_save(sigmas, tmp_path / "sigmas.pth"), config("ncsnpp_ve"), ema=False)
    with pytest.raises(ValueError, match="'model' must be a state_dict"):
        load_score_sde(_save({"model": [1, 2]}, tmp_path / "list.pth"), config("ncsnpp_ve"))


class Payload:
    """Anything that is not a tensor or a plain container: torch.load(weights_only=True) refuses to build it."""


def test_pickle_payload_is_refused(checkpoints, tmp_path):
    state = torch.load(checkpoints["ncsnpp_ve"], weights_only=True)
    state["step"] = Payload()
    with pytest.raises(ValueError, match="refused.*nothing in it was executed"):
        load_score_sde(_save(state, tmp_path / "evil.pth"), config("ncsnpp_ve"))


def test_config_presets_and_errors():
    cfg = score_sde_config("ve/cifar10_ncsnpp_continuous")
    assert cfg["training"] == {"sde": "vesde", "continuous": True} and cfg["model"]["embedding_type"] == "fourier"
    assert cfg["model"]["nf"] == 128 and cfg["model"]["ch_mult"] == [1, 2, 2, 2] and cfg["data"]["centered"] is False
    assert score_sde_config("cifar10_ddpm") == score_sde_config("ve/cifar10_ddpm")  # a unique bare name
    deep = score_sde_config("vp/cifar10_ddpmpp_deep_continuous")
    assert deep["model"]["num_res_blocks"] == 8 and deep["model"]["fir"] is False and deep["data"]["centered"] is True
    assert score_sde_config("subvp/cifar10_ncsnpp_continuous")["model"]["embedding_type"] == "positional"
    assert score_sde_config("vp/ddpm/cifar10", {"model": {"nf": 64}})["model"]["nf"] == 64
    with pytest.raises(ValueError, match="names .*give the full path"):
        score_sde_config("cifar10_ncsnpp_continuous")  # ve/, vp/ and subvp/ all have one
    with pytest.raises(ValueError, match="unknown score_sde preset"):
        score_sde_config("cifar100_ncsnpp")
    for override, match in [({"training": {"sde": "edm"}}, "training.sde"),
                            ({"model": {"name": "ncsnv2"}}, "model.name"),
                            ({"training": {"continuous": False}}, "fourier"),
                            ({"model": {"resblock_type": "ddpm"}}, "resblock_type 'ddpm'"),
                            ({"model": {"progressive": "residual"}}, "progressive 'residual'"),
                            ({"model": {"normalization": "InstanceNorm++"}}, "model.normalization"),
                            ({"model": {"progressive_combine": "max"}}, "progressive_combine")]:
        with pytest.raises(ValueError, match=match):
            score_sde_network(score_sde_config("ve/cifar10_ncsnpp_continuous", override))
    with pytest.raises(ValueError, match="subvpsde.*continuous"):
        score_sde_config("subvp/cifar10_ddpmpp_continuous", {"training": {"continuous": False}})
    with pytest.raises(ValueError, match=r"missing model\.scale_by_sigma .*start from a preset"):
        score_sde_config({"training": {"sde": "vesde", "continuous": True}, "data": {}, "model": {"name": "ddpm"}})
    with pytest.raises(ValueError, match="multiples of 32"):
        score_sde_network(score_sde_config("vp/ddpm/cifar10", {"model": {"nf": 8}}))
    with pytest.raises(ValueError, match="conditional"):
        score_sde_network(score_sde_config("vp/ddpm/cifar10", {"model": {"conditional": False}}))


def layout_hash(model: torch.nn.Module) -> str:
    """make_fixture.py's hash: the state_dict's names and shapes in order, then the trainable parameters' names."""
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    layout += [[k] for k, p in model.named_parameters() if p.requires_grad]
    return hashlib.sha1(json.dumps(layout).encode()).hexdigest()


def test_presets_and_networks_match_every_published_config():
    """For every ncsnpp / ddpm config file of the original (meta.json, run through the original code): the preset of
    that name holds its values, and the network built from the file's own values has the original network's layout
    (names, shapes and order: a real checkpoint of it loads strictly, its EMA list maps by order); the one config the
    original cannot build (an unconditional DDPM) is refused."""
    published = META["published"]
    assert set(PRESETS) == {k for k, v in published.items() if "layout" in v}  # no preset the original lacks
    for name, entry in published.items():
        original = entry["config"]
        if "error" in entry:
            with pytest.raises(ValueError):
                score_sde_network(original)
            continue
        for section, values in PRESETS[name].items():
            for key, value in values.items():
                assert original[section][key] == value, (name, section, key)
        with torch.device("meta"):
            net = score_sde_network(original)
        assert layout_hash(net) == entry["layout"], name


def test_fir_resampling_identities():
    """upfirdn2d with the box filter [1, 1] is nearest upsampling / 2x2 mean pooling, and FIR resampling preserves
    a constant image's interior (the filter is normalised; the zero padding only shows at the border)."""
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fir_upsample(x, [1, 1]), torch.nn.functional.interpolate(x, scale_factor=2.0))
    torch.testing.assert_close(fir_downsample(x, [1, 1]), torch.nn.functional.avg_pool2d(x, 2))
    ones = torch.ones(1, 1, 8, 8)
    torch.testing.assert_close(fir_upsample(ones, [1, 3, 3, 1])[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    torch.testing.assert_close(fir_downsample(ones, [1, 3, 3, 1])[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))
    delta = torch.zeros(1, 1, 5, 5)
    delta[..., 2, 2] = 1.0
    kernel = torch.arange(9.0).reshape(3, 3)
    # a true convolution (not a correlation): the impulse response is the kernel itself, not its flip
    assert torch.equal(upfirdn2d(delta, kernel, pad=(1, 1))[0, 0, 1:4, 1:4], kernel)


@pytest.mark.filterwarnings("ignore:langevin")  # two levels are few on purpose: this only checks that it runs
@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_runs_on_each_loaded_model(checkpoints, name):
    model = load_score_sde(checkpoints[name], config(name))
    options = {"langevin": dict(levels=2, steps_per_level=1), "ddim": dict(steps=2, eta=0.5),
               "ode": dict(steps=2, rtol=1e-2, atol=1e-2)}  # adaptive: loose tolerances keep it to a few evaluations
    for sampler in sg.SAMPLERS:
        res = sg.sample(model, sampler, n=2, seed=0, progress=False, **options.get(sampler, dict(steps=2)))
        assert res.samples.shape == (2, 3, 8, 8) and torch.isfinite(res.samples).all(), sampler


def test_discrete_vp_ncsnpp_takes_fewer_than_1000_scales():
    """Only the continuous VP / sub-VP NCSN++ indexes its sigmas with labels up to 999; a discrete one with N steps
    takes labels up to N - 1, so N = 500 is a valid original config."""
    cfg = score_sde_config("vp/cifar10_ddpmpp", {"model": {"num_scales": 500}})
    assert len(score_sde_schedule(cfg).times) == 500
    with pytest.raises(ValueError, match="at least 1000"):
        score_sde_config("vp/cifar10_ddpmpp_continuous", {"model": {"num_scales": 500}})
