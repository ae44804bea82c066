"""Loading improved-diffusion / guided-diffusion checkpoints (scoregen.interop.openai, scoregen.networks.adm).

The references come from the ORIGINAL openai/guided-diffusion code (tests/fixtures/openai/make_fixture.py, which
records the commit in manifest.json): tiny networks built by its ``create_model_and_diffusion`` and
``EncoderUNetModel``, their outputs, the original ``alphas_cumprod``, and respaced sampling runs of its
``SpacedDiffusion``. The weights are not committed (ADM's 32-group norms make even a tiny network ~1 MB): each
test writes them as the original layout (a plain state_dict with the original's keys, in its order, from the
manifest) with the fixture's own deterministic generator, exactly as the fixture script gave them to the original.
"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.guidance import ClassifierGuidance
from scoregen.interop.openai import (
    GUIDED_DEFAULTS,
    IMPROVED_DEFAULTS,
    PRESETS,
    load_openai,
    load_openai_classifier,
    openai_betas,
    openai_flags,
    openai_network,
    openai_sample_options,
    openai_schedule,
    openai_timesteps,
)
from scoregen.models import X0Hook, clip_x0
from scoregen.networks.adm import EncoderUNetModel, UNetModel, timestep_embedding
from scoregen.samplers.ddim import ddim
from scoregen.samplers.ddpm import ddpm

FIXTURE = Path(__file__).parent / "fixtures" / "openai"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
REF = torch.load(FIXTURE / "reference.pt", weights_only=True)


def _fixture_module():
    spec = importlib.util.spec_from_file_location("openai_make_fixture", FIXTURE / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixture_state_dict = _fixture_module().fixture_state_dict


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each case's checkpoint in the original layout: ``torch.save(model.state_dict())``."""
    folder = tmp_path_factory.mktemp("openai")
    paths = {}
    for name, case in MANIFEST["cases"].items():
        paths[name] = folder / f"{name}.pt"
        torch.save(fixture_state_dict(case["shapes"], case["seed"]), paths[name])
    return paths


def _flags(name, **changes):
    return {**MANIFEST["cases"][name]["flags"], **changes}


def test_the_fixture_comes_from_the_original_code():
    assert MANIFEST["repository"] == "openai/guided-diffusion" and len(MANIFEST["commit"]) == 40
    for case in MANIFEST["cases"].values():  # the original's keys in the original's order: our names must match them
        assert case["shapes"][0][0] == "time_embed.0.weight"


# ------------------------------------------------------------------------------------------ the networks
@pytest.mark.parametrize("name", ["guided", "improved"])
def test_unet_outputs_match_the_original(files, name):
    model = load_openai(files[name], _flags(name))
    flags = _flags(name)
    assert isinstance(model.net.net, UNetModel) and not model.net.net.training
    assert [k for k, _ in MANIFEST["cases"][name]["shapes"]] == list(model.net.net.state_dict())
    rest = (REF["y"],) if flags["class_cond"] else ()
    with torch.no_grad():
        torch.testing.assert_close(model.net.net(REF["x"], REF["t"], *rest), REF[f"{name}.out"])
        # as the diffusion calls it: t * 1000 / T with rescale_timesteps (the "improved" case), t itself otherwise
        torch.testing.assert_close(model.net(REF["x"], REF["t"], *rest), REF[f"{name}.wrapped"])
    assert not torch.equal(REF["improved.out"], REF["improved.wrapped"])  # the rescaling matters


@pytest.mark.parametrize("name", ["classifier", "classifier_adaptive"])
def test_classifier_outputs_match_the_original(files, name):
    classifier = load_openai_classifier(files[name], _flags(name))
    assert isinstance(classifier.net.net, EncoderUNetModel) and classifier.net.net.pool == _flags(name)["classifier_pool"]
    with torch.no_grad():
        torch.testing.assert_close(classifier.net(REF["x"], REF["t"]), REF[f"{name}.out"])


def test_score_model_answers_at_the_original_timesteps(files):
    """eps and the learned variance at the VP level of label t are the original network's output at t."""
    model = load_openai(files["guided"], _flags("guided"))
    assert model.learned_variance and model.parameterization == "eps" and model.shape == (3, 8, 8)
    schedule = model.schedule
    t = REF["t"].double().numpy()
    m, sigma = torch.tensor(schedule.m(t)), torch.tensor(schedule.sigma(t))
    with torch.no_grad():
        eps, v = model.eps_and_variance(REF["x"], sigma, m, REF["y"])
    torch.testing.assert_close(eps, REF["guided.out"][:, :3])
    torch.testing.assert_close(v, (REF["guided.out"][:, 3:] + 1) / 2)  # improved-diffusion's model_var_values


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 2.5])
    emb = timestep_embedding(t, 6)
    freqs = 10000.0 ** (-np.arange(3) / 3)
    want = np.concatenate([np.cos(2.5 * freqs), np.sin(2.5 * freqs)])
    np.testing.assert_allclose(emb[1].numpy(), want, rtol=1e-6)
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    assert timestep_embedding(t, 7)[:, -1].eq(0).all()


# ------------------------------------------------------------------------------------------------- flags
def test_flags_string_equals_dict():
    text = ("--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 "
            "--noise_schedule cosine --class_cond True --attention_resolutions=32,16,8 --dropout 0.1")
    as_dict = dict(image_size=64, num_channels=128, num_res_blocks=3, learn_sigma=True, diffusion_steps=4000,
                   noise_schedule="cosine", class_cond=True, attention_resolutions="32,16,8", dropout=0.1)
    flags = openai_flags(text)
    assert flags == openai_flags(as_dict) and set(flags) == set(GUIDED_DEFAULTS)
    assert flags["num_heads"] == 4 and flags["use_scale_shift_norm"] is True and flags["rescale_timesteps"] is False
    assert openai_flags(text, defaults="improved-diffusion")["rescale_timesteps"] is True
    assert openai_flags("--learn_sigma yes --class_cond f") == openai_flags({"learn_sigma": True, "class_cond": False})
    assert openai_flags("") == GUIDED_DEFAULTS and IMPROVED_DEFAULTS["rescale_learned_sigmas"] is True


def test_presets_are_the_readme_flags():
    assert PRESETS["cifar10_uncond_50M_500K"]["rescale_timesteps"] is True  # improved-diffusion's default
    assert PRESETS["imagenet64_cond_270M_250K"]["rescale_timesteps"] is False
    p = PRESETS["64x64_diffusion (class-cond)"]
    assert (p["num_channels"], p["num_head_channels"], p["noise_schedule"], p["use_new_attention_order"]) == \
        (192, 64, "cosine", True)
    assert openai_flags("256x256_diffusion_uncond")["class_cond"] is False
    for name, flags in PRESETS.items():  # every preset describes a network that builds (on the meta device)
        with torch.device("meta"):
            net = openai_network(flags)
        assert net.shape == (3, flags["image_size"], flags["image_size"]), name
    with torch.device("meta"):  # the published cifar10 model: 52.5M parameters ("50M")
        n = sum(p.numel() for p in openai_network("cifar10_uncond_50M_500K").parameters())
    assert 50e6 < n < 55e6


@pytest.mark.parametrize("flags, match", [
    ("--image_sise 64", r"unknown flag\(s\) \['image_sise'\]; the known flags are .*image_size"),
    ({"learn_sigma": "maybe"}, "flag learn_sigma must be True or False"),
    ("--num_channels -8", "flag num_channels must be"),
    ("--image_size 100000", "flag image_size must be"),
    ("--noise_schedule quadratic", "flag noise_schedule must be one of"),
    ("--attention_resolutions 16,x", "flag attention_resolutions must be comma-separated"),
    ("--timestep_respacing ddim7 --diffusion_steps 10", "no stride over 10 steps gives exactly 7"),
    ("--image_size", "flag --image_size has no value"),
    ("no-such-preset", "unknown preset"),
])
def test_bad_flags_are_named(flags, match):
    with pytest.raises(ValueError, match=match):
        openai_flags(flags)


# -------------------------------------------------------------------------------------------- schedules
def _paper_abar(kind, T):
    """Ho et al.'s linear betas (scaled by 1000 / T) and Nichol & Dhariwal's eq. 17 cosine (betas clipped at 0.999)."""
    if kind == "linear":
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    else:
        f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [40, 1000, 4000])
def test_schedule_is_the_original(kind, T):
    schedule = openai_schedule({"noise_schedule": kind, "diffusion_steps": T})
    assert isinstance(schedule, sg.DiscreteVP) and schedule.first_index == 0 and len(schedule.times) == T
    np.testing.assert_allclose(schedule.abar, _paper_abar(kind, T), rtol=1e-12)
    np.testing.assert_allclose(schedule.abar, REF[f"alphas_cumprod.{kind}.{T}"].numpy(), rtol=1e-13)
    np.testing.assert_array_equal(openai_betas(kind, T), schedule.beta)


def test_respacing_is_the_originals():
    for kind, spec in MANIFEST["respacing"].items():
        assert openai_timesteps(40, spec) == MANIFEST["timestep_map"][kind][::-1]
    assert openai_timesteps(40, "4,3") == [39, 30, 20, 19, 13, 6, 0]  # 9.5 rounds to 10 (to even)
    assert openai_timesteps(1000, "ddim50") == list(range(980, -1, -20))
    assert openai_timesteps(1000, "250")[:3] == [999, 995, 991] and len(openai_timesteps(1000, "250")) == 250
    # the original accumulates the stride 15/14: seven of them add up to just below 7.5 (kept: 7), where
    # 7 * 15/14 = 7.5 would round to even (8)
    assert 8 not in openai_timesteps(16, "15") and 7 in openai_timesteps(16, "15")
    assert openai_timesteps(10, [2, 0, 1]) == [7, 3, 0]  # sections of 4, 3, 3 steps
    with pytest.raises(ValueError, match="section 0 has 5 steps, fewer than the 6"):
        openai_timesteps(10, "6,1")


# --------------------------------------------------------------------------- sampling = the original's
@pytest.fixture(scope="module")
def guided(files):
    return load_openai(files["guided"], _flags("guided"))


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_on_respaced_timesteps_is_the_original_spaced_diffusion(guided, clip):
    """p_sample_loop of SpacedDiffusion("4,3") with learned sigmas = scoregen's ddpm on the full model with the
    respaced labels: the respaced betas 1 - abar_t / abar_prev are its Gaussian posterior between the two levels."""
    model = X0Hook(guided, clip_x0()) if clip else guided
    g = torch.Generator().manual_seed(MANIFEST["sampling_seed"])
    with torch.no_grad():
        out = ddpm(model, REF["sampling.z"], timesteps=openai_timesteps(40, MANIFEST["respacing"]["ddpm"]),
                   variance="learned", generator=g, y=REF["sampling.y"])
    torch.testing.assert_close(out, REF[f"sampling.ddpm.clip{int(clip)}"], rtol=1e-4, atol=1e-4)


def test_learned_variance_is_used_by_sample(guided):
    runs = {v: sg.sample(guided, "ddpm", n=2, seed=0, y=1, timesteps=openai_timesteps(40, "5"), variance=v,
                         progress=False).samples for v in ("learned", "beta", "beta_tilde")}
    assert not torch.allclose(runs["learned"], runs["beta"]) and not torch.allclose(runs["learned"], runs["beta_tilde"])


def test_ddim_and_classifier_guidance_are_the_originals(guided, files):
    timesteps = openai_timesteps(40, MANIFEST["respacing"]["ddim"])
    with torch.no_grad():
        out = ddim(guided, REF["sampling.z"], timesteps=timesteps, y=REF["sampling.y"])
    torch.testing.assert_close(out, REF["sampling.ddim"], rtol=1e-4, atol=1e-4)
    classifier = load_openai_classifier(files["classifier"], _flags("classifier"))
    model = ClassifierGuidance(guided, classifier, scale=MANIFEST["classifier_scale"])
    assert model.pass_label  # a class-conditional ADM gets the label too, as classifier_sample.py
    out = ddim(model, REF["sampling.z"], timesteps=timesteps, y=REF["sampling.y"])
    torch.testing.assert_close(out, REF["sampling.ddim_guided"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, REF["sampling.ddim"], atol=1e-3)  # the guidance did something
    res = sg.sample(model, "ddpm", n=2, seed=0, y=3, timesteps=timesteps, variance="learned", progress=False)
    assert torch.isfinite(res.samples).all()


def test_sample_options_follow_the_scripts():
    opts = openai_sample_options(_flags("guided", timestep_respacing="ddim8", use_ddim=True))
    assert opts["sampler"] == "ddim" and opts["eta"] == 0.0 and opts["timesteps"] == openai_timesteps(40, "ddim8")
    assert openai_sample_options(_flags("guided"))["variance"] == "learned"
    opts = openai_sample_options(_flags("improved", sigma_small=True, clip_denoised=False))
    assert opts["variance"] == "beta_tilde" and "x0_hook" not in opts and len(opts["timesteps"]) == 40
    assert openai_sample_options(_flags("improved"))["variance"] == "beta"


@pytest.mark.parametrize("name", sorted(sg.SAMPLERS))
def test_every_sampler_runs(guided, name):
    opts = dict(levels=6, steps_per_level=1) if name == "langevin" else dict(steps=2)
    res = sg.sample(guided, name, n=2, seed=0, y=1, progress=False, **opts)
    assert res.samples.shape == (2, 3, 8, 8) and torch.isfinite(res.samples).all()


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("change, match", [
    (dict(learn_sigma=False), r"out\.2\.weight.*learn_sigma"),
    (dict(class_cond=False), r"unexpected keys \['label_emb.weight'\].*class_cond"),
    (dict(num_res_blocks=2), r"missing keys.*num_res_blocks"),
    (dict(num_channels=64), r"time_embed.0.weight: checkpoint \(128, 32\), network \(256, 64\).*num_channels"),
])
def test_wrong_flags_name_the_keys_and_the_flag(files, change, match):
    with pytest.raises(ValueError, match=match):
        load_openai(files["guided"], _flags("guided", **change))


def test_a_huge_config_is_refused_before_allocating(files):
    with pytest.raises(ValueError, match="does not fit"):  # 2^20 channels: terabytes, were it built for real
        load_openai(files["guided"], _flags("guided", num_channels=2**20, channel_mult="1,2"))


def test_unsupported_options_are_refused(files):
    with pytest.raises(ValueError, match="classifier_pool 'spatial' is not implemented"):
        load_openai_classifier(files["classifier"], _flags("classifier", classifier_pool="spatial"))
    with pytest.raises(ValueError, match="image_size 48 has no default channel_mult"):
        openai_network({"image_size": 48})


def test_a_pickle_payload_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(ValueError, match="refused"):
        load_openai(path, _flags("guided"))
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="expected a plain state_dict"):
        load_openai(path, _flags("guided"))


def test_predict_xstart_and_fractional_time(files):
    model = load_openai(files["improved"], _flags("improved", predict_xstart=True), time="fractional")
    assert model.parameterization == "x0" and not model.learned_variance and model.time == "fractional"
    seen = []
    model.net.net.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    schedule = model.schedule
    m, s = float(schedule.m(np.array([17.5]))[0]), float(schedule.sigma(np.array([17.5]))[0])
    with torch.no_grad():
        model.eps(REF["x"], s, m)
    assert torch.allclose(seen[0], torch.full((3,), 17.5 * 1000 / 40), rtol=1e-5)
    assert math.isclose(1000 / 40, model.net.time_scale)
