"""diffusers interop: pipelines saved by diffusers load as scoregen score models that answer exactly what the
UNet computes at the corresponding timestep (or sigma), every sampler runs on them, and scoregen's DDPM
sampler reproduces diffusers' DDPMScheduler loop step for step from the same noise."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
    UNet2DModel,
)

import scoregen as sg  # noqa: E402
from scoregen.interop.diffusers import (  # noqa: E402
    DiffusersScoreModel,
    from_diffusers,
    load_diffusers,
    schedule_from_scheduler,
    x0_hook_from_scheduler,
)

F64 = torch.float64


def _unet(seed=0, **kw):
    """A tiny DDPM-style UNet2DModel (1 x 8 x 8) with random weights."""
    torch.manual_seed(seed)
    cfg = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
               norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
               up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    cfg.update(kw)
    return UNet2DModel(**cfg).eval()


def _ncsnpp(seed=0):
    """A tiny NCSN++-like UNet2DModel: Fourier (log-sigma) time embedding and skip blocks (they need 3 channels)."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=8, time_embedding_type="fourier",
                       down_block_types=("SkipDownBlock2D", "SkipDownBlock2D"),
                       up_block_types=("SkipUpBlock2D", "SkipUpBlock2D")).eval()


VP_CASES = {
    "eps": lambda: (_unet(1), DDPMScheduler(num_train_timesteps=1000)),
    "v": lambda: (_unet(2), DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")),
    "x0": lambda: (_unet(3), DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                           beta_end=0.012, prediction_type="sample")),
    "cond": lambda: (_unet(4, num_class_embeds=3),
                     DDPMScheduler(num_train_timesteps=200, trained_betas=np.linspace(1e-3, 0.05, 200).tolist())),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case saved by diffusers as a pipeline folder; name -> (folder, unet, scheduler)."""
    out = {}
    for name, make in VP_CASES.items():
        unet, scheduler = make()
        folder = tmp_path_factory.mktemp(name)
        pipe = DDIMPipeline if isinstance(scheduler, DDIMScheduler) else DDPMPipeline
        pipe(unet=unet, scheduler=scheduler).save_pretrained(folder)
        out[name] = (folder, unet, scheduler)
    unet, scheduler = _ncsnpp(5), ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, sampling_eps=1e-5)
    folder = tmp_path_factory.mktemp("ve")
    ScoreSdeVePipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    out["ve"] = (folder, unet, scheduler)
    return out


def _x(shape, n=3, seed=0, dtype=torch.float32):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- layout and schedules


def test_saved_layout_is_a_diffusers_pipeline(saved):
    folder = saved["eps"][0]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert (folder / "unet" / "config.json").is_file()
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "scheduler" / "scheduler_config.json").is_file()


@pytest.mark.parametrize("name,param", [("eps", "eps"), ("v", "v"), ("x0", "x0"), ("cond", "eps")])
def test_vp_schedule_and_parameterization(saved, name, param):
    _, _, scheduler = saved[name]
    model = load_diffusers(saved[name][0])
    assert isinstance(model, DiffusersScoreModel) and model.parameterization == param
    assert isinstance(model.schedule, sg.DiscreteVP) and model.schedule.first_index == 0
    T = scheduler.config.num_train_timesteps
    assert len(model.schedule) == T and model.shape == (1, 8, 8)
    # the schedule is diffusers' own alphas_cumprod, labelled 0..T-1 like diffusers' timesteps
    np.testing.assert_allclose(model.schedule.abar, scheduler.alphas_cumprod.double().numpy(), rtol=1e-12)
    np.testing.assert_allclose(model.schedule.beta, scheduler.betas.double().numpy(), rtol=2e-3)
    for k in (0, T - 1):
        assert model.schedule.m(k) == pytest.approx(math.sqrt(float(scheduler.alphas_cumprod[k])), rel=1e-12)


def test_diffusers_timestep_k_is_ddpm_paper_t_plus_one():
    """diffusers' k = 0..T-1 and the DDPM paper's t = 1..T name the same levels (same abar)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    model = from_diffusers(_unet(), scheduler)
    paper = sg.DiscreteVP.linear(1000, 1e-4, 0.02, first_index=1)
    for k in (0, 1, 499, 999):
        assert model.schedule.m(k) == pytest.approx(paper.m(k + 1), rel=1e-5)
        assert model.schedule.sigma(k) == pytest.approx(paper.sigma(k + 1), rel=1e-3)  # float32 betas near t=1
    relabelled = sg.DiscreteVP(model.schedule.beta, first_index=1)
    assert relabelled.m(1) == model.schedule.m(0) and relabelled.m(1000) == model.schedule.m(999)


# ----------------------------------------------------------------------------- eps against the UNet


def _reference_eps(out, x, abar, prediction_type):
    """eps from the UNet's output at diffusers' timestep, by diffusers' own conversion formulas (float64)."""
    a, b = math.sqrt(abar), math.sqrt(1.0 - abar)
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return a * out + b * x
    return (x - a * out) / b  # "sample"


@pytest.mark.parametrize("name", ["eps", "v", "x0", "cond"])
def test_vp_eps_matches_unet_at_timestep(saved, name):
    folder, unet, scheduler = saved[name]
    model = load_diffusers(folder)
    T = scheduler.config.num_train_timesteps
    y = torch.tensor([0, 2, 1]) if name == "cond" else None
    x = _x(model.shape, dtype=F64)
    for k in (0, 1, T // 2, T - 1):
        abar = float(scheduler.alphas_cumprod[k])
        m, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        _, label, _, _ = model.levels(x, sigma, m)
        assert label.tolist() == [k] * 3  # diffusers' timestep reaches the UNet unchanged
        with torch.no_grad():
            out = unet(x.float(), torch.full((3,), k), class_labels=y).sample.double()
            ref = _reference_eps(out, x, abar, scheduler.config.prediction_type)
            got = model.eps(x, sigma, m, y)
            # the same level in VE coordinates (m = 1): x / m at noise sigma / m
            got_ve = model.eps(x / m, sigma / m, 1.0, y)
            # per-sample levels
            got_batch = model.eps(x, torch.full((3,), sigma, dtype=F64), torch.full((3,), m, dtype=F64), y)
        assert (got - ref).abs().max() < 1e-5, (k, (got - ref).abs().max())
        assert (got_ve - ref).abs().max() < 1e-5 and (got_batch - ref).abs().max() < 1e-5
    if name == "eps":  # and in float32, the samplers' dtype
        x32 = x.float()
        with torch.no_grad():
            for k in (0, T - 1):
                abar = float(scheduler.alphas_cumprod[k])
                got = model.eps(x32, math.sqrt(1 - abar), math.sqrt(abar))
                assert got.dtype == torch.float32
                assert (got - unet(x32, k).sample).abs().max() < 1e-5


def test_fractional_time_passes_fractional_timesteps():
    unet, scheduler = _unet(), DDPMScheduler(num_train_timesteps=100)
    nearest, frac = from_diffusers(unet, scheduler), from_diffusers(unet, scheduler, time="fractional")
    lam = 0.5 * (nearest.schedule.log_snr(40) + nearest.schedule.log_snr(41))
    m, sigma = sg.schedules.m_sigma_from_log_snr(lam, True)
    x = _x(frac.shape)
    t = frac.levels(x, sigma, m)[1]
    assert 40 < float(t[0]) < 41 and nearest.levels(x, sigma, m)[1][0].item() in (40.0, 41.0)
    with torch.no_grad():
        m_t = frac.schedule.m(float(t[0]))
        ref = unet(x * (m_t / m), t).sample
        assert (frac.eps(x, sigma, m) - ref).abs().max() < 1e-5


def test_learned_variance_unet_keeps_the_eps_half():
    unet = _unet(out_channels=2)
    scheduler = DDPMScheduler(num_train_timesteps=100, variance_type="learned_range")
    model = from_diffusers(unet, scheduler)
    x = _x(model.shape)
    abar = float(scheduler.alphas_cumprod[30])
    with torch.no_grad():
        got = model.eps(x, math.sqrt(1 - abar), math.sqrt(abar))
        assert (got - unet(x, 30).sample[:, :1]).abs().max() < 1e-6


def test_ve_ncsnpp_score_matches_unet_at_sigma(saved):
    folder, unet, scheduler = saved["ve"]
    model = load_diffusers(folder)
    assert model.parameterization == "score" and model.shape == (3, 8, 8)
    assert isinstance(model.schedule, sg.ContinuousVE)
    assert (model.schedule.sigma_min, model.schedule.sigma_max, model.schedule.t_min) == (0.01, 50.0, 1e-5)
    x = _x(model.shape) * 2.0
    # the pipeline's own sigmas (both ends of its grid) and fractional sigmas in between
    scheduler.set_timesteps(10)
    scheduler.set_sigmas(10)
    sigmas = [float(scheduler.sigmas[0]), float(scheduler.sigmas[-1]), 0.3, 1.2345, 17.0]
    for sigma in sigmas:
        s = torch.full((3,), sigma, dtype=torch.float32)
        with torch.no_grad():
            score = unet(x, s).sample  # the UNet divides by sigma: this is the score
            got = model.score(x, sigma)
            eps = model.eps(x, sigma)
        assert (got - score).abs().max() < 1e-5 * max(1.0, float(score.abs().max())), sigma
        assert (eps + sigma * score).abs().max() < 1e-5
    # a VP-coordinate query at the same log-SNR is the same eps
    sigma = 1.2345
    m = 1.0 / math.sqrt(1.0 + sigma**2)
    with torch.no_grad():
        assert (model.eps(x * m, sigma * m, m) - model.eps(x, sigma)).abs().max() < 1e-5
        # beyond sigma_max the model answers at sigma_max (the schedule's range), never extrapolates
        assert (model.eps(x, 80.0) + 50.0 * unet(x, torch.full((3,), 50.0)).sample).abs().max() < 1e-4


# ----------------------------------------------------------------------------- every sampler


@pytest.mark.parametrize("name", ["eps", "v", "x0", "cond", "ve"])
def test_every_sampler_runs(saved, name):
    model = load_diffusers(saved[name][0])
    y = 1 if name == "cond" else None
    options = {"ddpm": dict(steps=4), "ddim": dict(steps=4, eta=0.5), "langevin": dict(levels=2, steps_per_level=2)}
    for sampler, opts in options.items():
        res = sg.sample(model, sampler, n=2, seed=0, y=y, progress=False, **opts)
        assert res.samples.shape == (2, *model.shape) and torch.isfinite(res.samples).all()
        assert res.nfe == {"ddpm": 4, "ddim": 4, "langevin": 4}[sampler]
    if model.x0_hook is not None:  # the scheduler's clip_sample, as scoregen's x0 hook
        res = sg.sample(model, "ddim", n=2, seed=0, y=y, steps=3, x0_hook=model.x0_hook, progress=False)
        assert res.samples.abs().max() <= 1.0 + 1e-5


# ----------------------------------------------------------------------------- DDPM loop, step for step


def _diffusers_loop(unet, scheduler, n, seed, timesteps=None, dtype=torch.float32):
    """diffusers' DDPM sampling loop (as DDPMPipeline runs it, without its output post-processing)."""
    if timesteps is None:
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    else:
        scheduler.set_timesteps(timesteps=timesteps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, unet.config.in_channels, 8, 8), generator=g, dtype=dtype)
    states = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t).sample
            x = scheduler.step(out, t, x, generator=g).prev_sample
            states.append(x.clone())
    return states


DDPM_CASES = [
    (100, None, "fixed_small", False, "epsilon"),   # every trained step, beta_tilde
    (100, None, "fixed_large", False, "epsilon"),   # every trained step, beta
    (1000, 10, "fixed_small", True, "epsilon"),     # a respaced subsequence, x0 clipped to [-1, 1]
    (200, 20, "fixed_large", True, "v_prediction"),
]


@pytest.mark.parametrize("precision,rtol", [("float32", 1e-5), ("float64", 1e-10), ("as_shipped", 1e-3)])
@pytest.mark.parametrize("T,steps,variance_type,clip,prediction_type", DDPM_CASES)
def test_ddpm_sampler_matches_diffusers_ddpm_scheduler(T, steps, variance_type, clip, prediction_type, precision, rtol):
    """Same generator, same order of draws (the prior, then one draw per step but the last): scoregen's
    ``ddpm`` sampler with variance="beta_tilde" is diffusers' variance_type="fixed_small", "beta" is
    "fixed_large", and clip_sample is the x0 hook clip_x0(-1, 1) (``model.x0_hook``).

    diffusers computes its step coefficients in float32 from float32 ``alphas_cumprod`` (e.g.
    ``beta_t = 1 - abar_t / abar_{t-1}``, whose relative rounding error is ~1e-3 where beta ~ 1e-4); with
    those promoted to float64 the two loops agree to 1e-5 in float32 and 1e-10 in float64 at every step.
    As shipped, that rounding alone moves the end of a 100-step chain by ~5e-5 (relative)."""
    dtype = F64 if precision == "float64" else torch.float32
    unet = _unet(7).to(dtype)
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type=variance_type, clip_sample=clip,
                              prediction_type=prediction_type)
    model = from_diffusers(unet, scheduler)
    if precision != "as_shipped":
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    grid = None if steps is None else [int(t) for t in model.schedule.grid(steps)]
    ref = _diffusers_loop(unet, scheduler, n=4, seed=11, timesteps=grid, dtype=dtype)

    states = []
    res = sg.sample(model, "ddpm", n=4, generator=torch.Generator().manual_seed(11), steps=steps, dtype=dtype,
                    variance={"fixed_small": "beta_tilde", "fixed_large": "beta"}[variance_type],
                    x0_hook=model.x0_hook, callback=lambda info: states.append(info["x"].clone()), progress=False)
    assert (model.x0_hook is not None) == clip
    assert len(states) == len(ref) == (T if steps is None else steps)
    for i, (a, b) in enumerate(zip(states, ref)):
        assert (a - b).abs().max() <= rtol * max(1.0, float(b.abs().max())), (i, float((a - b).abs().max()))
    assert (res.samples - ref[-1]).abs().max() <= rtol * max(1.0, float(ref[-1].abs().max()))
    assert float(res.samples.std()) > 0.1  # a real chain, not a collapse to a constant


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_sampler_matches_diffusers_ddim_scheduler(clip):
    """eta = 0 on every trained step (DDIMScheduler's grid t - T // steps coincides with scoregen's only
    when steps = T). With clip_sample the x0 hook re-derives eps from the clipped x0, which is
    DDIMScheduler's ``use_clipped_model_output=True`` (its default, False, keeps the unclipped eps)."""
    T = 50
    unet = _unet(7)
    scheduler = DDIMScheduler(num_train_timesteps=T, clip_sample=clip)  # set_alpha_to_one: ends at abar = 1
    model = from_diffusers(unet, scheduler)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # as above: no float32 coefficient rounding
    scheduler.set_timesteps(T)
    g = torch.Generator().manual_seed(3)
    x = torch.randn((4, 1, 8, 8), generator=g)
    ref = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=clip).prev_sample
            ref.append(x.clone())
    states = []
    sg.sample(model, "ddim", n=4, generator=torch.Generator().manual_seed(3), steps=T, eta=0.0, x0_hook=model.x0_hook,
              callback=lambda info: states.append(info["x"].clone()), progress=False)
    assert len(states) == len(ref) == T
    for i, (a, b) in enumerate(zip(states, ref)):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max())), (i, float((a - b).abs().max()))


def test_thresholding_hook_is_diffusers_thresholding():
    scheduler = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)
    hook = x0_hook_from_scheduler(scheduler)
    x0 = _x((1, 8, 8), n=4) * torch.tensor([0.5, 1.5, 3.0, 6.0]).reshape(-1, 1, 1, 1)
    assert torch.allclose(hook(x0), scheduler._threshold_sample(x0), atol=1e-6)
    assert x0_hook_from_scheduler(DDPMScheduler(clip_sample=False)) is None
    assert x0_hook_from_scheduler(ScoreSdeVeScheduler()) is None


# ----------------------------------------------------------------------------- folders


def test_unet_folder_plus_scheduler(saved, tmp_path):
    folder, unet, scheduler = saved["x0"]
    unet.save_pretrained(tmp_path / "net")
    x = _x((1, 8, 8), dtype=F64)
    want = load_diffusers(folder).eps(x, 0.6, 0.8).detach()
    for sched in (scheduler, folder / "scheduler", folder / "scheduler" / "scheduler_config.json", dict(scheduler.config) | {"_class_name": "DDPMScheduler"}):
        model = load_diffusers(tmp_path / "net", scheduler=sched)
        assert model.parameterization == "x0"
        assert torch.equal(model.eps(x, 0.6, 0.8).detach(), want)
    # subfolder inside a pipeline, and a scheduler_config.json beside the UNet's config
    assert torch.equal(load_diffusers(folder, subfolder="unet").eps(x, 0.6, 0.8).detach(), want)
    scheduler.save_pretrained(tmp_path / "net")
    assert torch.equal(load_diffusers(tmp_path / "net").eps(x, 0.6, 0.8).detach(), want)
    schedule, param = schedule_from_scheduler(tmp_path / "net")
    assert isinstance(schedule, sg.DiscreteVP) and param == "x0"


def test_dtype_and_repr(saved):
    model = load_diffusers(saved["eps"][0], dtype=F64)
    assert model.unet.dtype == F64
    x = _x(model.shape, dtype=F64)
    assert model.eps(x, 0.6, 0.8).dtype == F64
    assert "DDPMScheduler" in repr(model) and "first_index=0" in repr(model)


# ----------------------------------------------------------------------------- errors


def test_unsupported_scheduler_and_configs_are_named():
    unet = _unet()
    with pytest.raises(ValueError, match=r"unsupported scheduler 'MyScheduler'.*DDPMScheduler"):
        from_diffusers(unet, {"_class_name": "MyScheduler"})
    with pytest.raises(ValueError, match=r"unsupported beta_schedule 'cosine'.*squaredcos_cap_v2"):
        from_diffusers(unet, {"_class_name": "DDPMScheduler", "beta_schedule": "cosine"})
    with pytest.raises(ValueError, match=r"unsupported prediction_type 'flow'.*v_prediction"):
        from_diffusers(unet, {"_class_name": "DDIMScheduler", "prediction_type": "flow"})
    zero_snr = from_diffusers(unet, DDIMScheduler(rescale_betas_zero_snr=True, beta_schedule="scaled_linear",
                                                  beta_start=0.00085, beta_end=0.012))  # clamped as diffusers' Euler
    assert zero_snr.schedule.abar[-1] == pytest.approx(2.0**-24, rel=1e-9) and "rescale_betas_zero_snr" in zero_snr.scheduler_note
    with pytest.raises(ValueError, match="no '_class_name'"):
        from_diffusers(unet, {"beta_schedule": "linear"})
    with pytest.raises(ValueError, match="ScoreSdeVeScheduler needs an NCSN\\+\\+ UNet"):
        from_diffusers(unet, ScoreSdeVeScheduler())
    with pytest.raises(ValueError, match="time_embedding_type='fourier'.*DDPMScheduler"):
        from_diffusers(_ncsnpp(), DDPMScheduler())
    with pytest.raises(ValueError, match="learned"):
        from_diffusers(_unet(time_embedding_type="learned", num_train_timesteps=100), DDPMScheduler(num_train_timesteps=100), time="fractional")
    with pytest.raises(ValueError, match="unsupported network 'Linear'"):
        from_diffusers(torch.nn.Linear(2, 2), DDPMScheduler())


def test_class_labels_errors():
    x = _x((1, 8, 8))
    cond = from_diffusers(_unet(num_class_embeds=3), DDPMScheduler())
    with pytest.raises(ValueError, match=r"class-conditional \(num_class_embeds=3\): pass class labels y"):
        cond.eps(x, 0.6, 0.8)
    with pytest.raises(ValueError, match=r"class labels must be in 0..2 \(num_class_embeds=3\), got \[0, 5\]"):
        cond.eps(x[:2], 0.6, 0.8, torch.tensor([0, 5]))
    plain = from_diffusers(_unet(), DDPMScheduler())
    with pytest.raises(ValueError, match="not class-conditional"):
        plain.eps(x, 0.6, 0.8, torch.tensor([0, 1, 2]))


def test_load_errors(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        load_diffusers(tmp_path / "google" / "ddpm-cifar10-32")
    folder, unet, _ = saved["eps"]
    unet.save_pretrained(tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="no scheduler config found.*pass scheduler="):
        load_diffusers(tmp_path / "net")
    (tmp_path / "cond").mkdir()
    (tmp_path / "cond" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="unsupported network 'UNet2DConditionModel'"):
        load_diffusers(tmp_path / "cond", scheduler=DDPMScheduler())
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "X", "vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(ValueError, match=r"no 'unet' component \(components: \['vqvae'\]\)"):
        load_diffusers(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError, match="no scheduler config at"):
        load_diffusers(folder, scheduler=tmp_path / "nowhere")


def test_bench_takes_a_diffusers_folder_with_a_reference(saved, capsys):
    """`scoregen bench --model FOLDER` benchmarks a diffusers pipeline: without a record of its data it asks for
    --reference; with --reference digits its (random-weight) samples are judged against real digits, far above the
    floor, and the diffusers peers run on it too."""
    from scoregen.bench import resolve_subject, run_bench
    from scoregen.cli import main

    folder = str(saved["eps"][0])
    with pytest.raises(ValueError, match="pass reference="):
        resolve_subject(folder)
    subject = resolve_subject(folder, reference="digits")
    result = run_bench(subject, ["ddim"], [3], n=40, peers=True, peer_names=["diffusers:DDIM"], progress=False)
    assert [r.source for r in result.rows] == ["reference", "scoregen", "diffusers"]
    floor_mean, floor_std = result.floors["fd"]
    assert all(r.metrics["fd"] > floor_mean + 5 * floor_std for r in result.rows[1:])  # random weights: not digits
    assert main(["bench", "--model", folder, "--reference", "digits", "--budgets", "2", "-n", "30", "--samplers",
                 "ddim", "--no-progress"]) == 0
    assert "judge FD" in capsys.readouterr().out
