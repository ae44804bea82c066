"""diffusers pipelines saved with any scheduler class whose training schedule scoregen can express load as score
models: the schedule is the scheduler's own ``alphas_cumprod`` (or EDM's continuous sigma range), the model answers
exactly what the UNet computes at that timestep (with the scheduler's own input scaling and preconditioning), the
note names the nearest scoregen sampler, scoregen's euler / heun / dpmpp_2m reproduce EulerDiscreteScheduler /
HeunDiscreteScheduler / DPMSolverMultistepScheduler loops from the same noise, and refused classes say why."""

import logging
import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
# diffusers' own schedulers build their sigmas with numpy calls that NumPy 2 deprecates on tensors: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")

from diffusers import DDPMPipeline, UNet2DModel  # noqa: E402

import scoregen as sg  # noqa: E402
from test_interop_diffusers import _unet  # noqa: E402  the same tiny UNet2DModel (1 x 8 x 8) with random weights
from scoregen.interop.diffusers import (  # noqa: E402
    EDM_SCHEDULERS,
    REFUSED_SCHEDULERS,
    SUPPORTED_SCHEDULERS,
    VP_SCHEDULERS,
    from_diffusers,
    load_diffusers,
    nearest_sampler,
    schedule_from_scheduler,
    x0_hook_from_scheduler,
)

F64 = torch.float64
T = 20  # trained timesteps: a short schedule keeps every case cheap

#: Per class, the config beyond num_train_timesteps: every prediction type and beta schedule appears somewhere.
VP_CONFIGS = {
    "EulerDiscreteScheduler": dict(prediction_type="v_prediction"),
    "PNDMScheduler": dict(prediction_type="v_prediction", beta_schedule="scaled_linear"),
    "HeunDiscreteScheduler": dict(beta_schedule="exp"),
    "KDPM2DiscreteScheduler": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "LMSDiscreteScheduler": dict(beta_schedule="squaredcos_cap_v2"),
    "DPMSolverSinglestepScheduler": dict(prediction_type="sample"),
    "DPMSolverSDEScheduler": dict(trained_betas=np.linspace(1e-3, 0.05, T).tolist()),
    "DDPMScheduler": dict(beta_schedule="sigmoid"),
    "UniPCMultistepScheduler": dict(use_karras_sigmas=True, timestep_spacing="trailing", steps_offset=1),
    "DDIMInverseScheduler": dict(prediction_type="v_prediction"),
}
EDM_CONFIGS = {
    "EDMEulerScheduler": dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5),
    "EDMDPMSolverMultistepScheduler": dict(sigma_min=0.01, sigma_max=20.0, sigma_data=0.7, prediction_type="v_prediction"),
    "CosineDPMSolverMultistepScheduler": dict(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0),
    "CMStochasticIterativeScheduler": dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5),
}


def _scheduler(name):
    cls = getattr(diffusers, name)
    if name in EDM_SCHEDULERS:
        return cls(**EDM_CONFIGS[name])
    return cls(num_train_timesteps=T, **VP_CONFIGS.get(name, {}))


def _saved(tmp_path, name, seed=1):
    """A pipeline folder (model_index.json, unet/, scheduler/) saved by diffusers with this scheduler class."""
    unet, scheduler = _unet(seed), _scheduler(name)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / name)
    return tmp_path / name, unet, scheduler


def _x(n=3, seed=0, dtype=F64):
    return torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _close(a, b, tol, what):
    err, scale = float((a - b).abs().max()), max(1.0, float(b.abs().max()))
    assert err <= tol * scale, (what, err, scale)


def test_every_diffusers_scheduler_class_is_accepted_or_refused_with_a_reason():
    """Each scheduler class of the installed diffusers is accepted, or refused with a message naming it (a class newer
    than the lists, from a later diffusers release, is refused as unknown rather than guessed at)."""
    known = set(SUPPORTED_SCHEDULERS) | set(REFUSED_SCHEDULERS)
    classes = {n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Flax")
               and n not in ("SchedulerMixin", "KarrasDiffusionSchedulers")}
    assert len(classes & set(SUPPORTED_SCHEDULERS)) >= 20, sorted(classes)  # the lists name the installed classes
    for name in sorted(classes - known):
        with pytest.raises(ValueError, match=name):
            from_diffusers(_unet(), {"_class_name": name, "num_train_timesteps": 10})
    assert not set(SUPPORTED_SCHEDULERS) & set(REFUSED_SCHEDULERS)
    for name in SUPPORTED_SCHEDULERS:
        assert nearest_sampler({"_class_name": name}) in sg.SAMPLERS, name


# ----------------------------------------------------------------------------- discrete VP classes


def _reference_eps(out, x, abar, prediction_type):
    a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return a * out + s * x
    return (x - a * out) / s


@pytest.mark.parametrize("name", sorted(VP_SCHEDULERS))
def test_vp_class_loads_with_its_own_alphas_cumprod_and_answers_the_unet(tmp_path, name):
    folder, unet, scheduler = _saved(tmp_path, name)
    model = load_diffusers(folder)
    assert model.scheduler_class == name and isinstance(model.schedule, sg.DiscreteVP)
    assert model.schedule.first_index == 0 and len(model.schedule) == T
    np.testing.assert_allclose(model.schedule.abar, scheduler.alphas_cumprod.double().numpy(), rtol=1e-12)
    pred = scheduler.config.get("prediction_type") or "epsilon"  # RePaint has none: epsilon
    assert model.parameterization == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[pred]
    note = model.scheduler_note
    assert note.startswith(f"{name} was read for its training schedule only") and repr(nearest_sampler(scheduler)) in note
    x = _x()
    for k in (0, T // 2, T - 1):
        abar = float(scheduler.alphas_cumprod[k])
        with torch.no_grad():
            ref = _reference_eps(unet(x.float(), torch.full((3,), k)).sample.double(), x, abar, pred)
            got = model.eps(x, math.sqrt(1.0 - abar), math.sqrt(abar))
            got_ve = model.eps(x / math.sqrt(abar), math.sqrt(1.0 / abar - 1.0), 1.0)  # the same level, VE coordinates
        _close(got, ref, 1e-5, (name, k))
        _close(got_ve, ref, 1e-5, (name, k, "ve"))


def test_euler_type_schedulers_feed_the_unet_the_vp_state_at_fractional_timesteps():
    """EulerDiscreteScheduler samples VE states x and hands the UNet x / sqrt(1 + sigma^2) at the timestep whose log
    sigma it interpolates linearly (``_sigma_to_t``, used for karras sigmas): the model with time="fractional" at that
    VE level computes the same. (Its default linspace grid instead interpolates sigma itself linearly at fractional
    timesteps, a slightly different level for the same label.)"""
    unet = _unet(2)
    scheduler = diffusers.EulerDiscreteScheduler(num_train_timesteps=T, use_karras_sigmas=True)
    model = from_diffusers(unet, scheduler, time="fractional")
    scheduler.set_timesteps(4)
    x = _x(dtype=torch.float32) * 3.0
    fractional = 0
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1]):
        fractional += float(t) != round(float(t))
        with torch.no_grad():
            want = unet(x / (sigma**2 + 1) ** 0.5, t).sample  # scale_model_input at this step
            got = model.eps(x, float(sigma), 1.0)
        _close(got, want, 1e-5, float(t))
    assert fractional >= 2  # the grid really has fractional timesteps


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_zero_terminal_snr_is_clamped_as_diffusers_euler_does(name):
    """rescale_betas_zero_snr: DDIM trains the last level at abar = 0 (an infinite VE level), Euler clamps it to
    2**-24 itself; both load with the last level at 2**-24 and say so, and every other level is the scheduler's."""
    kw = dict(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
              prediction_type="v_prediction", rescale_betas_zero_snr=True)
    scheduler = getattr(diffusers, name)(**kw)
    model = from_diffusers(_unet(), scheduler)
    abar = model.schedule.abar
    assert abar[-1] == pytest.approx(2.0**-24, rel=1e-9) and np.all(np.diff(abar) < 0)
    np.testing.assert_allclose(abar[:-1], scheduler.alphas_cumprod[:-1].double().numpy(), rtol=1e-12)
    assert "rescale_betas_zero_snr" in model.scheduler_note and "VE sigma 4096" in model.scheduler_note


def test_zero_terminal_snr_below_the_clamp_keeps_the_levels_ordered():
    """A linear schedule of 1000 steps reaches abar < 2**-24 before its last level: the clamp would reorder the
    levels (diffusers' Euler then has a non-monotone sigma), so the last ratio is extrapolated instead."""
    scheduler = diffusers.DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    abar = from_diffusers(_unet(), scheduler).schedule.abar
    a = scheduler.alphas_cumprod.double().numpy()
    assert a[-2] < 2.0**-24 and abar[-1] == pytest.approx(a[-2] ** 2 / a[-3], rel=1e-9) and np.all(np.diff(abar) < 0)


# ----------------------------------------------------------------------------- EDM-preconditioned classes


def _edm_reference(name, scheduler, unet, x, sigma):
    """The denoiser as the diffusers scheduler computes it from the UNet: x0 at VE level sigma."""
    s = torch.tensor(sigma, dtype=torch.float32)
    if name == "CMStochasticIterativeScheduler":
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition(s)
        t = torch.as_tensor(scheduler.sigma_to_t(np.array([sigma])), dtype=torch.float32).expand(x.shape[0])
        out = unet(x / (s**2 + scheduler.config.sigma_data**2) ** 0.5, t).sample
        return c_out * out + c_skip * x
    out = unet(scheduler.precondition_inputs(x, s), scheduler.precondition_noise(s).expand(x.shape[0])).sample
    return scheduler.precondition_outputs(x, out, s)


@pytest.mark.parametrize("name", sorted(EDM_SCHEDULERS))
def test_edm_class_is_a_preconditioned_ve_denoiser(tmp_path, name):
    folder, unet, scheduler = _saved(tmp_path, name, seed=3)
    model = load_diffusers(folder)
    cfg = scheduler.config
    assert isinstance(model.schedule, sg.ContinuousVE) and model.parameterization == "x0"
    assert (model.schedule.sigma_min, model.schedule.sigma_max) == (cfg.sigma_min, cfg.sigma_max)
    x = _x(dtype=torch.float32)
    for sigma in (cfg.sigma_min * 1.5, 0.7, 3.3, cfg.sigma_max * 0.9):
        xs = x * math.sqrt(1.0 + sigma**2)
        with torch.no_grad():
            x0 = _edm_reference(name, scheduler, unet, xs, sigma)
            got = model.x0(xs, sigma, 1.0)
            got_vp = model.x0(xs / math.sqrt(1 + sigma**2), sigma / math.sqrt(1 + sigma**2), 1 / math.sqrt(1 + sigma**2))
        tol = 1e-5 * math.sqrt(1.0 + sigma**2)  # float32 rounding of inputs of that size
        _close(got, x0, tol, (name, sigma))
        _close(got_vp, x0, tol, (name, sigma, "vp"))
    hook = x0_hook_from_scheduler(scheduler)
    assert (hook is not None) == (name == "CMStochasticIterativeScheduler")  # clip_denoised defaults to True


# ----------------------------------------------------------------------------- step for step


def _diffusers_loop(scheduler, unet, grid, seed, n=2):
    """A diffusers pipeline's loop on custom timesteps: the final sample (x0 at sigma = 0)."""
    scheduler.set_timesteps(timesteps=grid)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 8, 8), generator=g) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("name,sampler", [("EulerDiscreteScheduler", "euler"), ("HeunDiscreteScheduler", "heun"),
                                          ("DPMSolverMultistepScheduler", "dpmpp_2m")])
def test_scoregen_sampler_matches_the_scheduler_loop(name, sampler):
    """Same noise, same trained timesteps, final sigma 0: scoregen's euler / heun / dpmpp_2m on the loaded model end
    where the diffusers loop does (float32 arithmetic on both sides: agreement to 1e-4)."""
    unet = _unet(4)
    cls = getattr(diffusers, name)
    extra = dict(algorithm_type="dpmsolver++", solver_order=2) if sampler == "dpmpp_2m" else {}
    scheduler = cls(num_train_timesteps=T, timestep_spacing="leading", prediction_type="v_prediction", **extra)
    model = from_diffusers(unet, scheduler)
    assert nearest_sampler(scheduler) == sampler
    grid = [int(t) for t in model.schedule.grid(5)]
    assert grid == [19, 14, 9, 5, 0]
    ref = _diffusers_loop(scheduler, unet, grid, seed=5)
    res = sg.sample(model, sampler, n=2, generator=torch.Generator().manual_seed(5), timesteps=grid, progress=False)
    assert res.nfe == (9 if sampler == "heun" else 5)
    _close(res.samples, ref, 1e-4, sampler)
    assert float(ref.std()) > 0.05  # a real chain


def test_every_sampler_runs_on_a_loaded_euler_pipeline(tmp_path):
    folder, *_ = _saved(tmp_path, "EulerDiscreteScheduler")
    model = load_diffusers(folder)
    options = {"langevin": dict(levels=2, steps_per_level=2), "ddim": dict(steps=3, eta=0.5)}
    for name in sg.SAMPLERS:
        res = sg.sample(model, name, n=2, seed=0, progress=False, **options.get(name, dict(steps=3)))
        assert res.samples.shape == (2, 1, 8, 8) and torch.isfinite(res.samples).all(), name


def test_every_sampler_runs_on_a_loaded_edm_pipeline(tmp_path):
    folder, *_ = _saved(tmp_path, "EDMEulerScheduler")
    model = load_diffusers(folder)
    options = {"langevin": dict(levels=2, steps_per_level=2), "ddim": dict(steps=3, eta=0.5)}
    for name in sg.SAMPLERS:
        res = sg.sample(model, name, n=2, seed=0, progress=False, **options.get(name, dict(steps=3)))
        assert res.samples.shape == (2, 1, 8, 8) and torch.isfinite(res.samples).all(), name


# ----------------------------------------------------------------------------- notes and refusals


def test_the_note_is_logged_once_per_class(caplog):
    import scoregen.interop.diffusers as module

    module._NOTED.discard("LMSDiscreteScheduler")
    with caplog.at_level(logging.WARNING, logger="scoregen.interop.diffusers"):
        for _ in range(3):
            model = from_diffusers(_unet(), diffusers.LMSDiscreteScheduler(num_train_timesteps=T))
    notes = [r for r in caplog.records if "LMSDiscreteScheduler was read" in r.getMessage()]
    assert len(notes) == 1 and notes[0].getMessage() == model.scheduler_note and "'ipndm'" in model.scheduler_note


@pytest.mark.parametrize("config,nearest", [
    (dict(_class_name="DPMSolverMultistepScheduler", solver_order=3), "dpmpp_3m"),
    (dict(_class_name="DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++"), "dpmpp_2m_sde"),
    (dict(_class_name="DPMSolverMultistepScheduler"), "dpmpp_2m"),
    (dict(_class_name="KDPM2AncestralDiscreteScheduler"), "heun"),
    (dict(_class_name="EDMEulerScheduler"), "euler"),
])
def test_nearest_sampler_reads_the_solver_options(config, nearest):
    assert nearest_sampler(config) == nearest


@pytest.mark.parametrize("config,message", [
    (dict(_class_name="FlowMatchEulerDiscreteScheduler"), r"'FlowMatchEulerDiscreteScheduler'.*rectified-flow"),
    (dict(_class_name="IPNDMScheduler"), r"'IPNDMScheduler'.*no training schedule.*'ipndm'"),
    (dict(_class_name="SCMScheduler"), "TrigFlow"),
    (dict(_class_name="AmusedScheduler"), "discrete-token"),
    (dict(_class_name="KarrasVeScheduler"), "no training schedule"),
    (dict(_class_name="DPMSolverMultistepScheduler", use_flow_sigmas=True), "use_flow_sigmas=True.*rectified-flow"),
    (dict(_class_name="UniPCMultistepScheduler", prediction_type="flow_prediction"), "prediction_type 'flow_prediction'"),
    (dict(_class_name="EulerDiscreteScheduler", timestep_type="continuous", prediction_type="v_prediction"),
     "timestep_type='continuous'"),
    (dict(_class_name="EulerDiscreteScheduler", beta_schedule="sigmoid"), "EulerDiscreteScheduler cannot be built.*sigmoid"),
    (dict(_class_name="EDMEulerScheduler", prediction_type="sample"), "prediction_type 'sample' for EDMEulerScheduler"),
])
def test_refused_configs_name_the_class_and_why(config, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_scheduler(config)


def test_edm_needs_a_positional_time_embedding():
    with pytest.raises(ValueError, match="learned .*table.* time embedding"):
        from_diffusers(_unet(time_embedding_type="learned", num_train_timesteps=T), diffusers.EDMEulerScheduler())
    fourier = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                          norm_num_groups=4, time_embedding_type="fourier",
                          down_block_types=("SkipDownBlock2D", "SkipDownBlock2D"),
                          up_block_types=("SkipUpBlock2D", "SkipUpBlock2D"))
    with pytest.raises(ValueError, match="fourier.*EDMEulerScheduler's timesteps c_noise"):
        from_diffusers(fourier, diffusers.EDMEulerScheduler())
