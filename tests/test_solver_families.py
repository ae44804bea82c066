"""Every registered sampler on every model family, with its documented cost, x0 hooks and guidance honoured.

The issue's acceptance: ``sg.sample(model, NAME, spacing=S, ...)`` (and ``scoregen sample --sampler NAME --spacing
S``) works for every solver on an exact target, both built-in digits networks (DDPM: VP, NCSN: VE) and a diffusers
model; one signature; NFE counted; guidance and x0 hooks honoured. Everything here is parametrized over
``scoregen.samplers.SAMPLERS``, so a new sampler is covered as soon as it is registered; what a test needs to know
about it (its NFE rule, read from docs/samplers.md's table; whether it draws noise; how its last step lands) must
be filled in below, and :func:`test_every_registered_sampler_is_described` fails until it is.

Budgets are tiny (n = 4, 4 steps; the guidance check n = 200, 20 steps): these are checks of behaviour, not of
accuracy (tests/test_solver_order.py, tests/test_samplers.py measure that).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.cli import DETERMINISTIC_SAMPLERS, main
from scoregen.models import ModelTransform
from scoregen.samplers import SAMPLERS, SPACINGS, langevin_grid, sampler_options, step_grid

DOCS = Path(__file__).resolve().parents[1] / "docs" / "samplers.md"
NAMES = list(SAMPLERS)
N = 4
STEPS = 4
SEED = 0
#: langevin's budget instead of ``steps``: 6 levels keep every family's default geometric grid within langevin's
#: factor-10 ratio between levels (the diffusers model's range is 157 -> 0.01), 2 steps per level make the rule
#: "levels x T" distinguishable from "levels".
LANGEVIN_LEVELS, LANGEVIN_T = 6, 2
#: ode's method and tolerances: cheap (RK23 takes 39 evaluations on digits-ddpm with the clip hook where RK45 takes
#: 129); the adaptive solver's NFE is checked against its own count, not its accuracy. The guidance check runs
#: the default method, RK45.
ODE_CHEAP = {"method": "RK23", "rtol": 0.1, "atol": 0.1}

#: Samplers that draw noise after the initial draw (docs/samplers.md: order "(SDE)", and langevin); the others are
#: deterministic given their starting state, at their default options (ddim eta = 0, edm s_churn = 0).
STOCHASTIC = {"ddpm", "langevin", "dpmpp_2m_sde", "euler_maruyama", "pc"}
DETERMINISTIC = {"ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm", "edm", "ode"}

#: The options under which a sampler's last update is exactly x0_hat at the cleanest level (docs/samplers.md,
#: "lands on sigma = 0"): none needed for most; ipndm's default variable-step weights integrate the polynomial to
#: 0 (not x0_hat), its fixed weights take an Euler last step; langevin ends at its last level unless final_denoise.
LANDS_ON_X0 = {"ddpm": {}, "ddim": {}, "euler": {}, "heun": {}, "edm": {}, "dpmpp_2m": {}, "dpmpp_3m": {},
               "dpmpp_2m_sde": {}, "unipc": {}, "deis": {}, "ipndm": {"variable_step": False}, "ode": {},
               "euler_maruyama": {}, "pc": {}, "langevin": {"final_denoise": True}}

#: docs/samplers.md's NFE column -> the count for a run of k steps (levels) with these options; None: adaptive.
NFE_RULES = {
    "steps": lambda k, o: k,
    "2 steps - 1": lambda k, o: 2 * k - 1,
    "steps (1 + corrector_steps)": lambda k, o: k * (1 + o.get("corrector_steps", 1)),
    "levels x T (+1)": lambda k, o: k * o["steps_per_level"] + bool(o.get("final_denoise", False)),
    "adaptive: the slowest sample's evaluations + 1": None,
}


@functools.cache
def documented_nfe() -> dict[str, str]:
    """name -> the NFE cell of docs/samplers.md's sampler table."""
    out = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        # | name | update rule | paper | order | NFE | options | default grid | lands on sigma = 0 |
        if len(cells) == 10 and cells[1].startswith("`") and cells[1] != "`name`":
            out[cells[1].strip("`")] = cells[5]
    return out


def nfe_rule(name: str):
    cell = documented_nfe().get(name)
    assert cell in NFE_RULES, f"{name}: docs/samplers.md gives NFE {cell!r}, not one of {list(NFE_RULES)}"
    return NFE_RULES[cell]


def adaptive(name: str) -> bool:
    return nfe_rule(name) is None


def budget(name: str, steps: int = STEPS, **extra) -> dict:
    """The sampler's options for a small run of ``steps`` steps: langevin takes levels and steps per level, ode its
    tolerances (the grid then only gives its ends)."""
    options = sampler_options(name)
    if "steps" in options:
        out = {"steps": steps}
    else:
        assert {"levels", "steps_per_level"} <= options, f"{name}: neither steps nor levels"
        out = {"levels": max(steps, LANGEVIN_LEVELS), "steps_per_level": LANGEVIN_T}
    if "rtol" in options:
        out.update(ODE_CHEAP)
    out.update(extra)
    return out


def steps_of(options: dict) -> int:
    return options["steps"] if "steps" in options else options["levels"]


def expected_nfe(name: str, options: dict, k=None):
    """The documented NFE of a run with these options over k steps (default: all of them); None when adaptive."""
    rule = nfe_rule(name)
    return None if rule is None else rule(steps_of(options) if k is None else k, options)


class Counting(ModelTransform):
    """Counts the evaluations of ``model`` on batches of at least ``batch`` samples, or at per-sample levels: every
    sampler query reaches ``eps`` (ScoreModel.score and .x0 go through it). Other smaller batches are not counted:
    :func:`scoregen.sample` probes a network stack once on a single sample to size its batches (pc runs whole groups
    of samples: more than ``batch``; ode asks for the samples still on their way, at their own levels)."""

    reads_input_only = True

    def __init__(self, model, batch: int):
        super().__init__(model)
        self.batch, self.calls = batch, 0

    def eps(self, x, sigma, m=1.0, y=None):
        if x.shape[0] >= self.batch or isinstance(sigma, torch.Tensor):
            self.calls += 1
        return self.model.eps(x, sigma, m, y)


def ring2d():
    return sg.load_target("ring2d")


# ----------------------------------------------------------------------------- the model families


@functools.cache
def _digits(name: str):
    net, config = sg.load_checkpoint(name)
    return net.score_model(), config


def tiny_diffusers_model():
    """A tiny randomly initialised diffusers UNet2DModel (1 x 8 x 8) with a DDPMScheduler, through scoregen's
    interop (as tests/test_interop_diffusers.py builds them)."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler, UNet2DModel

    from scoregen.interop.diffusers import from_diffusers

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    return from_diffusers(unet, DDPMScheduler(num_train_timesteps=1000))


@functools.cache
def family(name: str):
    """(model, x0 hook or None, the range the hook clips x0 to or None, sample shape, VP?)."""
    if name == "ring2d":
        return ring2d(), None, None, (2,), True
    if name == "digits-ddpm":
        model, config = _digits(name)
        value_range = tuple(config["meta"]["data"]["value_range"])  # what `scoregen sample` clips to (cli._value_range)
        assert value_range == (-1.0, 1.0)
        return model, sg.clip_x0(*value_range), value_range, (1, 8, 8), True
    if name == "digits-ncsn":
        return _digits(name)[0], None, None, (1, 8, 8), False
    model = tiny_diffusers_model()
    assert model.x0_hook is not None  # DDPMScheduler's clip_sample=True (default), as a scoregen x0 hook
    return model, model.x0_hook, (-1.0, 1.0), (1, 8, 8), True


FAMILIES = ["ring2d", "digits-ddpm", "digits-ncsn", "diffusers"]


# ----------------------------------------------------------------------------- the registry is described


def test_every_registered_sampler_is_described():
    names = set(SAMPLERS)
    assert names == set(documented_nfe()), "docs/samplers.md's sampler table must list exactly the registered samplers"
    assert names == STOCHASTIC | DETERMINISTIC and not STOCHASTIC & DETERMINISTIC, \
        "classify every registered sampler as STOCHASTIC or DETERMINISTIC in this file"
    assert set(DETERMINISTIC_SAMPLERS) <= DETERMINISTIC  # those `scoregen tune-grid` fits grids to
    assert names == set(LANDS_ON_X0), "say in LANDS_ON_X0 under which options each sampler's last step is x0_hat"
    for name in names:
        nfe_rule(name)  # a documented NFE this file knows how to count
        assert set(LANDS_ON_X0[name]) <= sampler_options(name)


# ----------------------------------------------------------------------------- 1. every model family


#: On the exact target and the DDPM digits U-Net every sampler runs by default; on the NCSN digits network and the
#: diffusers model one sampler of each kind does (every one with -m slow): the sampler code is the same, the model
#: family is what these two add.
FAMILY_DEFAULT = {"ddpm", "ddim", "langevin", "dpmpp_2m", "ode", "pc"}


@pytest.mark.parametrize("name,fam", [
    (name, fam) if fam in ("ring2d", "digits-ddpm") or name in FAMILY_DEFAULT else
    pytest.param(name, fam, marks=pytest.mark.slow) for name in NAMES for fam in FAMILIES])
def test_sampler_runs_on_every_family(name, fam):
    model, hook, value_range, shape, vp = family(fam)
    assert tuple(model.shape) == shape and model.schedule.variance_preserving == vp
    options = budget(name)
    counted = Counting(model, N)
    states = []  # the callback's info per step, its live state copied

    def record(info):
        states.append({**info, "x": None if info["x"] is None else info["x"].clone()})

    res = sg.sample(counted, name, N, seed=SEED, x0_hook=hook, progress=False, callback=record, **options)
    x = res.samples
    assert x.shape == (N, *shape) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    assert res.sampler == name and res.nfe == counted.calls > 0
    want = expected_nfe(name, options)
    if want is None:  # ode: its solve's evaluations (its callback reports them) + the final x0_hat step
        assert res.nfe == states[-1]["nfev"] + 1
    else:
        assert res.nfe == want
    if fam == "ring2d":  # same seed, same samples (determinism is the sampler's: one family shows it)
        again = sg.sample(Counting(model, N), name, N, seed=SEED, x0_hook=hook, progress=False, **options)
        assert torch.equal(again.samples, x)
    if value_range is not None and not LANDS_ON_X0[name]:
        # the last update is the hooked x0_hat, in the data range up to the rounding of ``x - s eps`` in float32 at
        # the state it starts from (euler_maruyama's 4 steps leave |x| ~ 800 there: 3.6e-5 on digits-ddpm)
        lo, hi = value_range
        tol = 16 * torch.finfo(x.dtype).eps * (1.0 + float(states[-2]["x"].abs().max()))
        assert float(x.min()) >= lo - tol and float(x.max()) <= hi + tol, (float(x.min()), float(x.max()), tol)


# ----------------------------------------------------------------------------- 2. x0 hooks and guidance


BOX = 0.01


@pytest.mark.parametrize("name", NAMES)
def test_x0_hook_is_honoured(name):
    """With x0_hat clipped to a tiny box around 0, a sampler whose last update is x0_hat ends in the box (float64:
    the landing update ``x - s eps`` of a state far outside the box rounds at |x| * eps, 3e-6 in float32 for
    euler_maruyama's 6 steps). Without the hook the samples lie far outside it."""
    target = ring2d()
    n, hook = 16, sg.clip_x0(-BOX, BOX)
    landing = budget(name, 6, **LANDS_ON_X0[name])
    counted = Counting(target, n)
    res = sg.sample(counted, name, n, seed=SEED, x0_hook=hook, dtype=torch.float64, progress=False, **landing)
    assert res.samples.dtype == torch.float64
    assert float(res.samples.abs().max()) <= BOX + 1e-6
    assert res.nfe == counted.calls
    if not adaptive(name):
        assert res.nfe == expected_nfe(name, landing)
    plain = sg.sample(target, name, n, seed=SEED, dtype=torch.float64, progress=False, **landing)
    assert float(plain.samples.abs().max()) > 0.5  # the box is not where it lands anyway
    if LANDS_ON_X0[name]:  # at the default options the last update is not x0_hat: the hook still changes the run
        default = budget(name, 6)
        hooked = sg.sample(target, name, n, seed=SEED, x0_hook=hook, dtype=torch.float64, progress=False, **default)
        free = sg.sample(target, name, n, seed=SEED, dtype=torch.float64, progress=False, **default)
        assert hooked.nfe == free.nfe
        assert float((hooked.samples - free.samples).abs().max()) > 0.1


@pytest.mark.parametrize("name", NAMES)
def test_classifier_guidance_is_honoured(name):
    """Classifier guidance (exact noisy classifier, scale 5) towards a label per sample: at 20 steps the samples
    land in their label's component; the NFE is the unguided run's. Unguided, about 1/8 of them would."""
    target, n = ring2d(), 200
    labels = torch.arange(n) % target.num_classes
    options = budget(name, 20, **({"method": "RK45", "rtol": 1e-3, "atol": 1e-3} if adaptive(name) else {}))
    counted = Counting(target, n)
    guided = sg.ClassifierGuidance(counted, target.classifier, 5.0)
    res = sg.sample(guided, name, n, seed=1, y=labels, progress=False, **options)
    plain = sg.sample(target, name, n, seed=1, progress=False, **options)
    assert bool(torch.isfinite(res.samples).all()) and res.nfe == counted.calls
    if not adaptive(name):
        assert res.nfe == plain.nfe == expected_nfe(name, options)
    hit = (target.classifier(res.samples).argmax(-1) == labels).float().mean().item()
    chance = (target.classifier(plain.samples).argmax(-1) == labels).float().mean().item()
    assert hit > 0.9 and chance < 0.4, (hit, chance)


# ----------------------------------------------------------------------------- 3. every spacing


@pytest.mark.parametrize("spacing", [s for s in SPACINGS if s != "optimized"])
@pytest.mark.parametrize("name", NAMES)
def test_every_spacing(name, spacing):
    """Every sampler takes every spacing (ring2d is discrete-time: leading / trailing / linspace apply), costs the
    documented NFE and visits that spacing's levels (its callback reports the level each step reaches)."""
    target = ring2d()
    assert target.schedule.times is not None
    options = budget(name, STEPS, spacing=spacing)
    counted, seen = Counting(target, N), []
    res = sg.sample(counted, name, N, seed=SEED, progress=False, callback=lambda info: seen.append(info), **options)
    assert bool(torch.isfinite(res.samples).all()) and res.nfe == counted.calls > 0
    if not adaptive(name):
        assert res.nfe == expected_nfe(name, options)
    visited = [info["sigma"] / info["m"] for info in seen]
    if "levels" in options:  # langevin: the callback after each level, at that level
        grid = list(langevin_grid(target, target.shape, options["levels"], spacing=spacing))
        assert visited == pytest.approx(grid, rel=1e-9)
    elif adaptive(name):  # ode: the grid's two ends only; it ends at 0 from the last nonzero level
        assert visited[-1] == 0.0
    else:
        grid = step_grid(target, STEPS, spacing).s
        assert visited == pytest.approx(grid[1:], rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- 4. SDEdit, and where noise is drawn


@pytest.mark.parametrize("name", NAMES)
def test_sdedit_start(name):
    """``x_start`` + ``start_level`` solves down from that level only: fewer steps than the full grid, the
    documented NFE for them, and from a low level the samples stay by their starting points."""
    target = ring2d()
    x_start = target.sample(N, torch.Generator().manual_seed(5))
    extra = {} if "levels" in budget(name) else {"spacing": "logsnr"}
    options = budget(name, 6, **extra)
    full = sg.sample(target, name, N, seed=SEED, progress=False, **options)
    counted = Counting(target, N)
    part = sg.sample(counted, name, N, seed=SEED, x_start=x_start, start_level=1.0, progress=False, **options)
    assert bool(torch.isfinite(part.samples).all()) and part.nfe == counted.calls
    if "levels" in options:
        k = 1 + sum(level < 1.0 for level in langevin_grid(target, target.shape, options["levels"]))
    else:
        k = len(step_grid(target, steps_of(options), options["spacing"]).starting_at(1.0))
    assert 1 < k < steps_of(options)
    assert part.nfe < full.nfe
    if not adaptive(name):
        assert part.nfe == expected_nfe(name, options, k)
    near = sg.sample(target, name, N, seed=SEED, x_start=x_start, start_level=0.05, progress=False, **options)
    assert float((near.samples - x_start).norm(dim=1).max()) < 0.3
    assert float((full.samples - x_start).norm(dim=1).mean()) > 0.5


@pytest.mark.parametrize("name", NAMES)
def test_noise_is_drawn_only_by_stochastic_samplers(name):
    """From the same starting state (``x_start`` alone: the state at the grid's first level), a deterministic
    sampler gives the same samples whatever the seed, a stochastic one different ones; the same seed always gives
    the same samples."""
    target = ring2d()
    x_start = torch.randn(N, 2, generator=torch.Generator().manual_seed(9))
    options = budget(name)
    a, b, c = (sg.sample(target, name, N, seed=s, x_start=x_start, progress=False, **options).samples
               for s in (0, 1, 0))
    assert torch.equal(a, c)
    assert torch.equal(a, b) == (name in DETERMINISTIC)


# ----------------------------------------------------------------------------- the command line


#: The command line of one sampler of each kind runs by default (the CLI passes options through one path for all of
#: them); `pytest -m slow` runs every sampler.
CLI_DEFAULT = {"ddpm", "langevin", "euler", "unipc", "ipndm", "ode", "pc"}


@pytest.mark.parametrize("name", [n if n in CLI_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_cli_every_sampler_and_spacing(name, tmp_path, capsys):
    """`scoregen sample --sampler NAME --spacing S` on an exact target (a discrete-only spacing) and on the DDPM
    digits checkpoint (x0_hat clipped to its data range, as the CLI does for image checkpoints): the same samples as
    ``sg.sample`` with those options."""
    options = budget(name)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    runs = [("trailing", ["--target", "ring2d"], ring2d(), None),
            ("karras", ["--checkpoint", "digits-ddpm"], _digits("digits-ddpm")[0], sg.clip_x0(-1, 1))]
    for spacing, source, model, hook in runs:
        out = tmp_path / f"{spacing}.npy"
        argv = ["sample", *source, "--sampler", name, "--spacing", spacing, *flags, "-n", "2", "--seed", "2",
                "--out", str(out), "--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
        x = np.load(out)
        want = sg.sample(model, name, 2, seed=2, spacing=spacing, x0_hook=hook, progress=False, **options).samples
        assert x.shape == tuple(want.shape) and np.isfinite(x).all()
        np.testing.assert_array_equal(x, want.numpy())
