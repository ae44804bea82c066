"""Step grids (scoregen.samplers.grids): every spacing against an independent computation or a reference library.

* diffusers' ``timestep_spacing`` (leading / trailing / linspace) against ``DDIMScheduler.set_timesteps`` itself;
  diffusers counts t = 0..T-1, scoregen's DiscreteVP labels are 1-indexed, so diffusers' timestep k is label k + 1
  and its level is ``sqrt(abar_k), sqrt(1 - abar_k)`` with ``abar_k = prod_{j<=k} (1 - beta_j)`` (0-indexed here).
* ``karras`` against k-diffusion's ``get_sigmas_karras``; ``logsnr`` and ``time`` against their definitions;
  ``trained`` against the evenly spaced trained levels it always was.
* explicit ``sigmas`` / ``timesteps`` (improved-diffusion's ``space_timesteps``, written out below) and their errors;
* through the samplers: NFE, euler == ddim (eta = 0) on every grid, SDEdit (``x_start`` / ``start_level``) and the
  explicit initial state, seen by a model that records its queries;
* snapping: what a nearest-level network does with a grid between its trained levels (LevelMap).

The levels are computed here from the schedules' definitions (betas, sigmas, beta_min / beta_max), never from
scoregen's own schedule objects, except where a test says it pins the old behaviour.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import scoregen as sg
from scoregen.streams import SampleStreams
from scoregen.models import LevelMap
from scoregen.samplers import SAMPLERS
from scoregen.samplers.grids import SPACINGS, step_grid
from scoregen.schedules import ContinuousVE, ContinuousVP, DiscreteVE, DiscreteVP

T = 1000
BETAS = np.linspace(1e-4, 0.02, T, dtype=np.float64)  # DDPM's linear schedule, as diffusers builds it (in float64)
ABAR = np.cumprod(1.0 - BETAS)  # ABAR[k]: diffusers' timestep k = scoregen label k + 1
VE_SIGMAS = np.geomspace(50.0, 0.01, 100)  # an NCSN-style discrete VE model: label i (0 = sigma_max) has VE_SIGMAS[i]
CVP = dict(beta_min=0.1, beta_max=20.0, t_min=1e-3)
CVE = dict(sigma_min=0.01, sigma_max=50.0, t_min=1e-5)

TRI = sg.GaussianMixture([0.5, 0.3, 0.2], [[-2.5, -1.0], [2.5, -0.5], [0.0, 3.5]], [0.3, 0.4, 0.5], name="tri")


def mixture(schedule=None) -> sg.GaussianMixture:
    return sg.GaussianMixture([0.5, 0.3, 0.2], [[-2.5, -1.0], [2.5, -0.5], [0.0, 3.5]], [0.3, 0.4, 0.5],
                              schedule=schedule)


MODELS = {
    "DiscreteVP": lambda: mixture(DiscreteVP.linear(T)),
    "DiscreteVE": lambda: mixture(DiscreteVE(VE_SIGMAS)),
    "ContinuousVP": lambda: mixture(ContinuousVP(**CVP)),
    "ContinuousVE": lambda: mixture(ContinuousVE(**CVE)),
}
VP = {"DiscreteVP": True, "DiscreteVE": False, "ContinuousVP": True, "ContinuousVE": False}
DISCRETE = {"DiscreteVP": True, "DiscreteVE": True, "ContinuousVP": False, "ContinuousVE": False}
ALL_SPACINGS = ["trained", "leading", "trailing", "linspace", "karras", "logsnr", "time"]  # "optimized" runs a search


# ------------------------------------------------------------------ independent definitions


def ve_of_abar(abar):
    """VE noise level s = sigma / m of a VP level: sqrt((1 - abar) / abar)."""
    abar = np.asarray(abar, dtype=np.float64)
    return np.sqrt((1.0 - abar) / abar)


def cvp_ve(t):
    """Score-SDE VP: -log abar(t) = beta_min t + (beta_max - beta_min) t^2 / 2, so s^2 = 1/abar - 1."""
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(np.expm1(CVP["beta_min"] * t + 0.5 * (CVP["beta_max"] - CVP["beta_min"]) * t * t))


def cve_ve(t):
    t = np.asarray(t, dtype=np.float64)
    return CVE["sigma_min"] * (CVE["sigma_max"] / CVE["sigma_min"]) ** t


def trained_ve_range(name: str) -> tuple[float, float]:
    """(largest, smallest) VE level the model was trained on (continuous: over [t_min, 1])."""
    if name == "DiscreteVP":
        s = ve_of_abar(ABAR)
    elif name == "DiscreteVE":
        s = VE_SIGMAS
    elif name == "ContinuousVP":
        s = cvp_ve([1.0, CVP["t_min"]])
    else:
        s = cve_ve([1.0, CVE["t_min"]])
    return float(np.max(s)), float(np.min(s))


def log_snr_of_label(name: str, t):
    """The log-SNR of (possibly fractional) time labels: discrete schedules interpolate log-SNR linearly between
    their integer labels (scoregen's documented convention for fractional labels)."""
    t = np.asarray(t, dtype=np.float64)
    if name == "DiscreteVP":
        return np.interp(t, np.arange(1, T + 1), np.log(ABAR / (1.0 - ABAR)))
    if name == "DiscreteVE":
        return np.interp(t, np.arange(len(VE_SIGMAS)), -2.0 * np.log(VE_SIGMAS))
    return -2.0 * np.log(cvp_ve(t) if name == "ContinuousVP" else cve_ve(t))


def ve_of_label(name: str, t):
    return np.exp(-0.5 * log_snr_of_label(name, t))


def assert_grid_at_ve(grid, s_expected, variance_preserving: bool, rtol=1e-12, what=""):
    """The grid's noisy levels are the VE levels ``s_expected`` (noisiest first), in the model's coordinates
    (VP: m = 1/sqrt(1 + s^2), sigma = s m; VE: m = 1, sigma = s), then the clean level (1, 0)."""
    s_expected = np.asarray(s_expected, dtype=np.float64)
    m, sigma = np.asarray(grid.m), np.asarray(grid.sigma)
    assert len(grid) == len(s_expected) and m.shape == (len(s_expected) + 1,), (what, len(grid), len(s_expected))
    assert m[-1] == 1.0 and sigma[-1] == 0.0, what
    m_want = 1.0 / np.sqrt(1.0 + s_expected**2) if variance_preserving else np.ones_like(s_expected)
    np.testing.assert_allclose(m[:-1], m_want, rtol=rtol, atol=0, err_msg=f"m {what}")
    np.testing.assert_allclose(sigma[:-1], s_expected * m_want, rtol=rtol, atol=0, err_msg=f"sigma {what}")
    np.testing.assert_allclose(np.asarray(grid.s[:-1]), s_expected, rtol=rtol, atol=0, err_msg=f"s {what}")


def assert_grid_at_abar(grid, abar, rtol=1e-12, what=""):
    """The grid's noisy levels are the DDPM levels (sqrt(abar), sqrt(1 - abar)), noisiest first, then (1, 0)."""
    abar = np.asarray(abar, dtype=np.float64)
    assert len(grid) == len(abar), (what, len(grid), len(abar))
    assert grid.m[-1] == 1.0 and grid.sigma[-1] == 0.0, what
    np.testing.assert_allclose(np.asarray(grid.m[:-1]), np.sqrt(abar), rtol=rtol, atol=0, err_msg=f"m {what}")
    np.testing.assert_allclose(np.asarray(grid.sigma[:-1]), np.sqrt(1.0 - abar), rtol=rtol, atol=0, err_msg=f"sigma {what}")


# ------------------------------------------------------------------ diffusers' timestep_spacing

# N not dividing 1000 (7, 30, 48, 61, 96, 103, 333, 999); trailing at N = 48, 96 and linspace at N = 27, 103 hit
# rounding ties, where only diffusers' own float arithmetic decides; at N = 61 and 103 diffusers' trailing
# np.arange overshoots (see test_diffusers_spacings_have_steps_levels_for_every_n).
DIFFUSERS_N = [1, 2, 7, 10, 27, 30, 48, 50, 61, 96, 103, 250, 333, 999, 1000]


def diffusers_timesteps(spacing: str, n: int) -> np.ndarray:
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    scheduler.set_timesteps(n)
    ts = scheduler.timesteps.numpy().astype(np.int64)
    # at some N, diffusers' trailing `np.arange(T, 0, -T / N)` yields an (N+1)-th value ~1e-13 that rounds to
    # timestep -1 (it then indexes alphas_cumprod[-1], the noisiest level, as its last step): not a level
    ts = ts[ts >= 0]
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy()[ts], ABAR[ts], rtol=1e-5)  # the same schedule
    return ts


@pytest.mark.parametrize("n", DIFFUSERS_N)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_diffusers_spacings_match_ddimscheduler(spacing, n):
    ts = diffusers_timesteps(spacing, n)
    assert len(ts) == n and len(set(ts.tolist())) == n and np.all(np.diff(ts) < 0), ts  # the reference itself
    grid = step_grid(TRI, n, spacing)
    assert_grid_at_abar(grid, ABAR[ts], what=f"{spacing} N={n}")
    # the same levels as asking for diffusers' timesteps as scoregen labels (k + 1)
    explicit = step_grid(TRI, timesteps=(ts + 1).tolist())
    assert grid.m == explicit.m and grid.sigma == explicit.sigma


def test_diffusers_spacing_labels_follow_the_model_convention():
    """Positions count from the clean end whatever the labels: a 0-indexed DDPM model gives the same levels."""
    zero_indexed = mixture(DiscreteVP.linear(T, first_index=0))
    for spacing in ("leading", "trailing", "linspace"):
        a, b = step_grid(TRI, 30, spacing), step_grid(zero_indexed, 30, spacing)
        np.testing.assert_allclose(a.m, b.m, rtol=1e-14)
        np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-14)


def exact_positions(spacing: str, n: int) -> list[int]:
    """The spacings' defining formulas in exact rational arithmetic (positions 0..T-1 from the clean end, noisiest
    first); ties (x.5) are the only place float arithmetic may round the other way."""
    if spacing == "leading":
        return [k * (T // n) for k in range(n)][::-1]
    if spacing == "trailing":
        return [round(Fraction(T * (n - k), n)) - 1 for k in range(n)]
    return [round(Fraction((T - 1) * k, n - 1)) if n > 1 else 0 for k in range(n)][::-1]


@pytest.mark.slow  # 3 s; test_diffusers_spacings_match_ddimscheduler keeps the step counts it found wrong (61, 103)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_diffusers_spacings_have_steps_levels_for_every_n(spacing):
    """Every N from 1 to T: exactly N strictly decreasing levels, each within one position of the exact formula
    (float rounding at x.5 ties may pick the neighbour, as diffusers' own arithmetic does)."""
    s_all = ve_of_abar(ABAR)
    failures = []
    for n in range(1, T + 1):
        grid = step_grid(TRI, n, spacing)
        s = np.asarray(grid.s[:-1])
        if len(grid) != n or not np.all(np.diff(s) < 0):
            failures.append((n, len(grid), "not decreasing" if np.any(np.diff(s) >= 0) else ""))
            continue
        pos = np.clip(np.searchsorted(s_all, s), 1, T - 1)  # s_all is increasing: each level's position
        pos = np.where(np.abs(s_all[pos - 1] - s) < np.abs(s_all[pos] - s), pos - 1, pos)
        if not np.allclose(s, s_all[pos], rtol=1e-12, atol=0) or np.any(np.abs(pos - np.asarray(exact_positions(spacing, n))) > 1):
            failures.append((n, "levels"))
    assert not failures, f"{spacing}: {len(failures)} step counts give a wrong grid, e.g. {failures[:5]}"


# ------------------------------------------------------------------ karras / logsnr / time / trained


def get_sigmas_karras():
    from scoregen.bench.peers import load_kdiffusion

    try:
        return load_kdiffusion().sampling.get_sigmas_karras
    except ImportError as e:
        pytest.skip(f"k-diffusion not available: {e}")


@pytest.mark.parametrize("n", [2, 10, 18, 75])
@pytest.mark.parametrize("name", list(MODELS))
def test_karras_matches_k_diffusion(name, n):
    karras = get_sigmas_karras()
    hi, lo = trained_ve_range(name)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # k-diffusion's ramp is torch.linspace in the default dtype
    try:
        want = karras(n, lo, hi, rho=7.0).numpy()
    finally:
        torch.set_default_dtype(default)
    assert want[-1] == 0.0
    grid = step_grid(MODELS[name](), n, "karras")
    assert_grid_at_ve(grid, want[:-1], VP[name], rtol=1e-12, what=f"karras {name} N={n}")


def test_karras_options_match_k_diffusion():
    karras = get_sigmas_karras()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        want = karras(12, 0.05, 20.0, rho=3.0).numpy()
    finally:
        torch.set_default_dtype(default)
    grid = step_grid(TRI, 12, "karras", rho=3.0, sigma_min=0.05, sigma_max=20.0)
    assert_grid_at_ve(grid, want[:-1], True, rtol=1e-12)


@pytest.mark.parametrize("n", [2, 9, 64])
@pytest.mark.parametrize("name", list(MODELS))
def test_logsnr_is_uniform_in_log_snr_over_the_trained_range(name, n):
    hi, lo = trained_ve_range(name)
    grid = step_grid(MODELS[name](), n, "logsnr")
    lam = -2.0 * np.log(np.asarray(grid.s[:-1]))  # log-SNR = log(m^2 / sigma^2) = -2 log s
    np.testing.assert_allclose(lam, np.linspace(-2 * math.log(hi), -2 * math.log(lo), n), rtol=0, atol=1e-11)
    assert_grid_at_ve(grid, np.geomspace(hi, lo, n), VP[name], rtol=1e-12)


@pytest.mark.parametrize("n", [2, 13, 250])
@pytest.mark.parametrize("name", list(MODELS))
def test_time_is_uniform_in_the_schedules_own_time(name, n):
    """Discrete: fractional labels, evenly spaced from the noisiest label to the cleanest (DDPM 1000 -> 1, NCSN
    0 -> L-1); continuous: t from 1 down to t_min."""
    if name == "DiscreteVP":
        t = np.linspace(T, 1, n)
    elif name == "DiscreteVE":
        t = np.linspace(0, len(VE_SIGMAS) - 1, n)
    else:
        t = np.linspace(1.0, (CVP if name == "ContinuousVP" else CVE)["t_min"], n)
    grid = step_grid(MODELS[name](), n, "time")
    assert_grid_at_ve(grid, ve_of_label(name, t), VP[name], rtol=1e-11, what=f"time {name} N={n}")
    if DISCRETE[name] and n == 13:  # a precondition: the labels really are fractional
        assert np.sum(np.abs(t - np.round(t)) > 1e-3) >= 5


@pytest.mark.parametrize("n", [1, 2, 10, 50, 100])
@pytest.mark.parametrize("name", list(MODELS))
def test_trained_is_the_evenly_spaced_trained_levels(name, n):
    """The old default of ddpm / ddim: ``n`` evenly spaced trained levels, the noisiest and the cleanest included
    (positions round(linspace(0, L - 1, n)) counted from the noisiest), then the clean level; continuous: n uniform
    times from 1 to t_min. Pinned also against the schedule's ``levels(n)`` (the pre-grid code path)."""
    model = MODELS[name]()
    grid = step_grid(model, n, "trained")
    if DISCRETE[name]:
        L = T if name == "DiscreteVP" else len(VE_SIGMAS)
        idx = np.unique(np.round(np.linspace(0, L - 1, n)).astype(np.int64))  # from the noisiest level
        t = (T - idx) if name == "DiscreteVP" else idx  # DDPM labels L..1; NCSN indices 0..L-1
        want = ve_of_label(name, t)
    else:
        want = ve_of_label(name, np.linspace(1.0, (CVP if name == "ContinuousVP" else CVE)["t_min"], n))
    assert_grid_at_ve(grid, want, VP[name], rtol=1e-11, what=f"trained {name} N={n}")
    m, sigma = model.schedule.levels(n)
    assert grid.m == (*[float(v) for v in m], 1.0) and grid.sigma == (*[float(v) for v in sigma], 0.0)


def spacings_for(name: str) -> list[str]:
    return ALL_SPACINGS if DISCRETE[name] else [s for s in ALL_SPACINGS if s not in ("leading", "trailing", "linspace")]


def test_the_spacing_list_is_complete():
    assert set(SPACINGS) == set(ALL_SPACINGS) | {"optimized"}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_grid_is_strictly_decreasing_and_ends_clean(name):
    model = MODELS[name]()
    hi, lo = trained_ve_range(name)
    L = {"DiscreteVP": T, "DiscreteVE": len(VE_SIGMAS)}.get(name)
    for spacing in spacings_for(name):
        for n in (1, 2, 3, 7, 30, 61, 100, 103, 999):
            if L is not None and n > L and spacing in ("trained", "leading", "trailing", "linspace"):
                continue
            grid = step_grid(model, n, spacing)
            what = f"{spacing} N={n} on {name}"
            s = np.asarray(grid.s)
            assert len(grid) == n and len(grid.m) == len(grid.sigma) == n + 1, what
            assert grid.m[-1] == 1.0 and grid.sigma[-1] == 0.0, what
            assert np.all(np.diff(s) < 0), what
            m, sigma = np.asarray(grid.m), np.asarray(grid.sigma)
            if VP[name]:
                np.testing.assert_allclose(m**2 + sigma**2, 1.0, rtol=0, atol=1e-12, err_msg=what)
            else:
                assert np.all(m == 1.0), what
            # inside the trained range (the trained spacings touch both ends; the others are bounded by them)
            assert s[0] <= hi * (1 + 1e-12) and s[-2] >= lo * (1 - 1e-12), what


# ------------------------------------------------------------------ explicit grids


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """improved-diffusion's respace.space_timesteps (Nichol & Dhariwal 2021), written out: the 0-indexed steps kept."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        assert size >= count
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += stride
        start += size
    return set(kept)


def test_space_timesteps_as_written_here():
    """The helper above reproduces the published examples: ddim25 is every 40th step; '10,15,20' keeps 45."""
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    assert len(space_timesteps(1000, "10,15,20")) == 45 and {0, 333, 334, 666, 667, 999} <= space_timesteps(1000, "10,15,20")


@pytest.mark.parametrize("spec", ["ddim25", "ddim50", "10,15,20", "250"])
def test_explicit_timesteps_openai_respacing(spec):
    kept = sorted(space_timesteps(T, spec), reverse=True)  # 0-indexed steps, noisiest first
    want_abar = ABAR[kept]
    as_list = step_grid(TRI, timesteps=[k + 1 for k in kept])  # scoregen's DDPM labels are 1-indexed
    assert_grid_at_abar(as_list, want_abar, what=f"timesteps list {spec}")
    as_string = step_grid(TRI, timesteps=spec)  # the respacing string itself
    assert_grid_at_abar(as_string, want_abar, what=f"timesteps={spec!r}")


def test_explicit_timesteps_on_other_schedules():
    """The model's own labels: NCSN indices (fractional allowed), continuous t."""
    grid = step_grid(MODELS["DiscreteVE"](), timesteps=[0, 10.5, 50, 99])
    assert_grid_at_ve(grid, ve_of_label("DiscreteVE", [0, 10.5, 50, 99]), False, rtol=1e-12)
    grid = step_grid(MODELS["ContinuousVP"](), timesteps=[1.0, 0.5, 0.01])
    assert_grid_at_ve(grid, cvp_ve([1.0, 0.5, 0.01]), True, rtol=1e-12)
    grid = step_grid(MODELS["ContinuousVE"](), timesteps=[0.9, 0.2])
    assert_grid_at_ve(grid, cve_ve([0.9, 0.2]), False, rtol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("trailing_zero", [False, True])
def test_explicit_sigmas(name, trailing_zero):
    sig = [80.0, 20.0, 3.0, 1.0, 0.3, 0.002]  # VE levels, also outside the trained range: they are the user's
    grid = step_grid(MODELS[name](), sigmas=sig + [0.0] * trailing_zero)
    assert_grid_at_ve(grid, sig, VP[name], rtol=1e-14)
    assert step_grid(MODELS[name](), 6, sigmas=sig).s == grid.s  # steps may be given when it agrees


def test_explicit_sigmas_accept_tensors_and_grids():
    sig = torch.tensor([10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    grid = step_grid(TRI, sigmas=sig)
    assert_grid_at_ve(grid, [10.0, 1.0, 0.1], True, rtol=1e-14)
    assert step_grid(TRI, sigmas=grid) == grid


ERRORS = {
    "increasing sigmas": (dict(sigmas=[1.0, 2.0, 0.5]), r"strictly decreasing"),
    "repeated sigma": (dict(sigmas=[2.0, 1.0, 1.0]), r"strictly decreasing"),
    "negative sigma": (dict(sigmas=[2.0, 1.0, -0.5]), r"positive"),
    "zero inside sigmas": (dict(sigmas=[2.0, 0.0, 0.5]), r"positive|decreasing"),
    "only zero": (dict(sigmas=[0.0]), r"positive"),
    "NaN sigma": (dict(sigmas=[2.0, float("nan"), 0.5]), r"finite"),
    "inf sigma": (dict(sigmas=[float("inf"), 0.5]), r"finite"),
    "empty sigmas": (dict(sigmas=[]), r"non-empty"),
    "NaN timestep": (dict(timesteps=[500, float("nan")]), r"finite"),
    "timestep above the trained range": (dict(timesteps=[1001, 500]), r"outside"),
    "timestep below the trained range": (dict(timesteps=[500, 0]), r"outside"),  # DDPM labels are 1..1000
    "increasing timesteps": (dict(timesteps=[10, 500]), r"decreasing"),
    "both sigmas and timesteps": (dict(sigmas=[1.0, 0.5], timesteps=[500, 10]), r"not both"),
    "spacing and sigmas": (dict(spacing="karras", sigmas=[1.0, 0.5]), r"spacing='karras'.*both"),
    "spacing and timesteps": (dict(spacing="leading", timesteps=[500, 10]), r"spacing='leading'.*both"),
    "steps mismatch": (dict(steps=5, sigmas=[3.0, 1.0, 0.5]), r"steps=5 .* 3 steps"),
    "steps mismatch timesteps": (dict(steps=2, timesteps=[900, 500, 10]), r"steps=2 .* 3 steps"),
    "steps > T trained": (dict(steps=1001, spacing="trained"), r"1000 trained levels"),
    "steps > T leading": (dict(steps=1001, spacing="leading"), r"1000 trained levels"),
    "steps > T trailing": (dict(steps=1001, spacing="trailing"), r"1000 trained levels"),
    "steps > T linspace": (dict(steps=1001, spacing="linspace"), r"1000 trained levels"),
    "zero steps": (dict(steps=0, spacing="karras"), r"steps"),
    "bad respacing": (dict(timesteps="ddim999"), r"ddim999"),  # no integer stride gives exactly 999 of 1000
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_grid_errors(case):
    kwargs, match = ERRORS[case]
    with pytest.raises(ValueError, match=match):
        step_grid(TRI, **kwargs)


def test_unknown_spacing_lists_the_choices():
    with pytest.raises(ValueError, match="unknown spacing 'uniform'") as info:
        step_grid(TRI, 10, "uniform")
    for choice in ALL_SPACINGS + ["optimized", "sigmas", "timesteps"]:
        assert choice in str(info.value), (choice, str(info.value))
    with pytest.raises(ValueError, match="unknown spacing"):  # the same through a sampler
        sg.sample(TRI, "ddim", 4, seed=0, steps=10, spacing="uniform", progress=False)


@pytest.mark.parametrize("name", ["ContinuousVP", "ContinuousVE"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_trained_step_spacings_refuse_continuous_models(name, spacing):
    with pytest.raises(ValueError, match="continuous-time"):
        step_grid(MODELS[name](), 10, spacing)
    with pytest.raises(ValueError, match="continuous-time"):
        step_grid(MODELS[name](), timesteps="ddim25")


def test_steps_beyond_the_trained_levels_are_fine_for_the_other_spacings():
    for spacing in ("karras", "logsnr", "time"):
        assert len(step_grid(TRI, 1500, spacing)) == 1500


# ------------------------------------------------------------------ through the samplers


class Recorder(sg.ScoreModel):
    """Wraps a model; records every query's level and a copy of its input."""

    def __init__(self, inner):
        self.inner, self.shape, self.schedule = inner, inner.shape, inner.schedule
        self.queries: list[tuple[float, float, torch.Tensor]] = []

    def eps(self, x, sigma, m=1.0, y=None):
        self.queries.append((float(sigma), float(m), x.clone()))
        return self.inner.eps(x, sigma, m, y)

    def ve_levels(self) -> list[float]:
        return [sigma / m for sigma, m, _ in self.queries]


@pytest.mark.parametrize("spacing", ALL_SPACINGS)
def test_ddim_runs_on_every_spacing_with_one_evaluation_per_step(spacing):
    model = Recorder(TRI)
    result = sg.sample(model, "ddim", 16, seed=3, steps=10, spacing=spacing, progress=False)
    assert result.nfe == 10 and len(model.queries) == 10
    assert bool(torch.isfinite(result.samples).all())
    # it walks exactly the grid's levels, in the model's (VP) coordinates
    grid = step_grid(TRI, 10, spacing)
    assert [(sg_, m) for sg_, m, _ in model.queries] == list(zip(grid.sigma[:-1], grid.m[:-1]))


@pytest.mark.parametrize("grid", ["trained", "leading", "trailing", "linspace", "karras", "logsnr", "time", "sigmas"])
def test_euler_is_ddim_eta0_on_every_grid(grid):
    """DDIM (eta = 0) is Euler's method on the PF-ODE written in the model's coordinates: on the same grid, from
    the same noise, the two agree to float64 rounding (exact mixture: no model error)."""
    kw = dict(seed=11, dtype=torch.float64, progress=False)
    kw.update(dict(sigmas=[60.0, 9.0, 2.0, 0.7, 0.2, 0.03]) if grid == "sigmas" else dict(steps=12, spacing=grid))
    ddim = sg.sample(TRI, "ddim", 512, eta=0.0, **kw).samples
    euler = sg.sample(TRI, "euler", 512, **kw).samples
    assert torch.allclose(euler, ddim, rtol=0, atol=1e-12), (euler - ddim).abs().max()


def test_euler_differs_from_ddim_on_a_different_grid():
    """The identity above is not vacuous: a different grid gives different samples."""
    kw = dict(seed=11, dtype=torch.float64, progress=False)
    a = sg.sample(TRI, "ddim", 64, steps=12, spacing="karras", **kw).samples
    b = sg.sample(TRI, "euler", 64, steps=12, spacing="logsnr", **kw).samples
    assert (a - b).abs().max() > 1e-3


def trained_default_ve(steps: int = 50) -> np.ndarray:
    """ddim's default grid on a DDPM model: ``steps`` evenly spaced trained levels (VE), noisiest first."""
    idx = np.unique(np.round(np.linspace(0, T - 1, steps)).astype(np.int64))
    return ve_of_abar(ABAR[T - 1 - idx])


def run_noise(n: int, seed: int, shape=(2,)) -> torch.Tensor:
    """The initial noise sample() draws in float64 for samples 0..n-1 of a run with ``seed`` (per-sample streams)."""
    return SampleStreams(seed, 0, n, shape, dtype=torch.float64).normal()


@pytest.mark.parametrize("level", [3.0, 0.5, 60.0])
@pytest.mark.parametrize("grid", ["default", "sigmas"])
def test_sdedit_starts_at_its_level_and_walks_the_grid_below(level, grid):
    n, seed = 64, 7
    sigmas = [80.0, 40.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05]
    full = trained_default_ve() if grid == "default" else np.asarray(sigmas)
    x_start = TRI.sample(n, torch.Generator().manual_seed(1), dtype=torch.float64)
    model = Recorder(TRI)
    kw = {} if grid == "default" else dict(sigmas=sigmas)
    result = sg.sample(model, "ddim", n, seed=seed, x_start=x_start, start_level=level, dtype=torch.float64,
                       progress=False, **kw)
    below = [s for s in full.tolist() if s < level]
    if len(below) > 1 and math.log(level / below[0]) < 0.25 * math.log(below[0] / below[1]):
        below = below[1:]  # a level within a quarter step below the start: the start replaces it
    want = [level] + below
    got = model.ve_levels()
    assert len(got) == len(want) == result.nfe, (got, want)
    assert got[0] == pytest.approx(level, rel=1e-14)  # the first query is at the start level itself
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # its state there: x_start noised with the run's own initial noise, in VP coordinates
    m_l = 1.0 / math.sqrt(1.0 + level * level)
    sigma0, m0, x0 = model.queries[0]
    assert m0 == pytest.approx(m_l, rel=1e-14) and sigma0 == pytest.approx(level * m_l, rel=1e-14)
    expected = m_l * x_start + level * m_l * run_noise(n, seed)
    assert torch.allclose(x0, expected, rtol=0, atol=1e-14), (x0 - expected).abs().max()


def test_sdedit_in_ve_coordinates_for_the_ode_solvers():
    """euler steps in VE coordinates: its first query is x_start + L z at (sigma = L, m = 1)."""
    n, seed, level = 32, 5, 2.5
    x_start = TRI.sample(n, torch.Generator().manual_seed(2), dtype=torch.float64)
    model = Recorder(TRI)
    sg.sample(model, "euler", n, seed=seed, x_start=x_start, start_level=level, steps=20, dtype=torch.float64,
              progress=False)
    sigma0, m0, x0 = model.queries[0]
    assert m0 == 1.0 and sigma0 == pytest.approx(level, rel=1e-14)
    assert torch.allclose(x0, x_start + level * run_noise(n, seed), rtol=0, atol=1e-13)
    assert all(s < level for s in model.ve_levels()[1:])


def test_sdedit_from_a_tiny_level_returns_nearly_the_input():
    """From L = 1e-3 the run is one denoising step (every trained level lies above L): the output is x_start up to
    about L |z|. From L = 100 the input is forgotten: the output is a fresh sample, far from x_start."""
    n = 256
    x_start = TRI.sample(n, torch.Generator().manual_seed(4), dtype=torch.float64)
    tiny = sg.sample(TRI, "ddim", n, seed=9, x_start=x_start, start_level=1e-3, dtype=torch.float64, progress=False)
    assert tiny.nfe == 1
    assert (tiny.samples - x_start).abs().max() < 6e-3, (tiny.samples - x_start).abs().max()
    big = sg.sample(TRI, "ddim", n, seed=9, x_start=x_start, start_level=100.0, dtype=torch.float64, progress=False)
    assert (big.samples - x_start).abs().mean() > 0.5


@pytest.mark.parametrize("name", ["DiscreteVP", "DiscreteVE"])
@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_explicit_initial_state_is_the_state_at_the_first_level(name, sampler):
    """x_start without start_level: the state itself at the grid's first level, in the model's coordinates; the
    ODE solvers step in VE coordinates, so they see x_start / m_0 (= x_start for a VE model)."""
    n = 16
    base = MODELS[name]()
    x_start = 3.0 * torch.randn((n, 2), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    model = Recorder(base)
    result = sg.sample(model, sampler, n, seed=1, x_start=x_start, steps=8, spacing="karras", dtype=torch.float64,
                       progress=False)
    grid = step_grid(base, 8, "karras")
    sigma0, m0, x0 = model.queries[0]
    if sampler == "ddim" or not VP[name]:
        assert torch.equal(x0, x_start)
    else:
        assert m0 == 1.0 and torch.allclose(x0 * grid.m[0], x_start, rtol=1e-15, atol=0)
    assert sigma0 / m0 == pytest.approx(grid.s[0], rel=1e-14) and result.nfe == 8
    # the prior draw is not used: another seed gives the same (deterministic) samples
    again = sg.sample(base, sampler, n, seed=2, x_start=x_start, steps=8, spacing="karras", dtype=torch.float64,
                      progress=False)
    assert torch.equal(again.samples, result.samples)


def test_one_x_start_for_the_whole_batch():
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    result = sg.sample(TRI, "ddim", 8, seed=0, x_start=x, start_level=1e-4, dtype=torch.float64, progress=False)
    assert (result.samples - x).abs().max() < 1e-3


def no_start_sampler(model, z, *, generator=None, y=None, callback=None, progress=None):
    return z


START_ERRORS = {
    "start_level without x_start": (dict(start_level=1.0), r"start_level needs x_start"),
    "wrong x_start shape": (dict(x_start=torch.zeros(4, 3)), r"x_start must have shape"),
    "wrong x_start batch": (dict(x_start=torch.zeros(3, 2)), r"x_start must have shape"),
    "integer x_start": (dict(x_start=torch.zeros(4, 2, dtype=torch.long)), r"floating-point"),
    "NaN x_start": (dict(x_start=torch.tensor([[0.0, float("nan")]] * 4)), r"NaN"),
    "inf x_start": (dict(x_start=torch.tensor([[0.0, float("inf")]] * 4)), r"NaN or inf"),
    "zero start_level": (dict(x_start=torch.zeros(4, 2), start_level=0.0), r"start_level"),
    "negative start_level": (dict(x_start=torch.zeros(4, 2), start_level=-1.0), r"start_level"),
    "NaN start_level": (dict(x_start=torch.zeros(4, 2), start_level=float("nan")), r"start_level"),
}


@pytest.mark.parametrize("case", list(START_ERRORS))
def test_start_errors(case):
    kwargs, match = START_ERRORS[case]
    with pytest.raises(ValueError, match=match):
        sg.sample(TRI, "ddim", 4, seed=0, steps=5, progress=False, **kwargs)


def test_a_sampler_without_start_refuses_x_start():
    assert sg.sample(TRI, no_start_sampler, 4, seed=0).samples.shape == (4, 2)  # it runs without x_start
    with pytest.raises(ValueError, match=r"does not take a starting state"):
        sg.sample(TRI, no_start_sampler, 4, seed=0, x_start=torch.zeros(4, 2), start_level=1.0)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_registered_sampler_takes_the_grid_and_a_start(sampler):
    """Every sampler that SAMPLERS names accepts x_start (shared signature); the grid samplers also sigmas=."""
    import inspect

    params = inspect.signature(SAMPLERS[sampler]).parameters
    assert "start" in params, sampler
    if sampler != "langevin":
        assert {"steps", "spacing", "sigmas", "timesteps"} <= set(params), sampler


# ------------------------------------------------------------------ snapping to trained levels


def nearest_labels(log_snr: np.ndarray) -> np.ndarray:
    """DDPM labels (1..T) whose log-SNR is nearest, by brute force."""
    lam = np.log(ABAR / (1.0 - ABAR))
    return np.argmin(np.abs(lam[None, :] - np.asarray(log_snr)[:, None]), axis=1) + 1


def test_level_map_snaps_a_karras_grid_to_the_nearest_trained_label():
    """A karras grid falls between DDPM's trained levels. A nearest-level map answers each at the nearest trained
    label (so at a slightly different level than the solver assumes); a fractional map at the exact label."""
    grid = step_grid(TRI, 20, "karras")
    schedule = DiscreteVP.linear(T)
    nearest, fractional = LevelMap(schedule, "nearest"), LevelMap(schedule, "fractional")
    x = torch.ones(3, 2, dtype=torch.float64)
    lam = np.array([2.0 * math.log(m / s) for m, s in zip(grid.m[:-1], grid.sigma[:-1])])
    want = nearest_labels(lam)
    off_level = 0
    lam_all = np.log(ABAR / (1.0 - ABAR))
    for i, (m, sigma) in enumerate(zip(grid.m[:-1], grid.sigma[:-1])):
        x_in, t, m_t, sigma_t = nearest(x, sigma, m)
        assert torch.all(t == float(want[i])), (i, t[0].item(), want[i])
        assert m_t == pytest.approx(math.sqrt(ABAR[want[i] - 1]), rel=1e-12)  # the trained level's own m
        assert torch.allclose(x_in, x * m_t / m, rtol=1e-14)  # input rescaled to the trained level's m
        off_level += abs(lam_all[want[i] - 1] - lam[i]) > 1e-6
        x_in, t, m_t, sigma_t = fractional(x, sigma, m)
        tf = float(t[0])
        assert log_snr_of_label("DiscreteVP", tf) == pytest.approx(lam[i], abs=1e-9)  # exactly the grid's level
        assert m_t == pytest.approx(m, rel=1e-10) and sigma_t == pytest.approx(sigma, rel=1e-9)
        assert abs(tf - want[i]) <= 1.0
    assert want[0] == T and want[-1] == 1  # karras spans the trained range
    assert off_level >= 15  # most karras levels are not trained levels: snapping changes the level


class LabelRecorder:
    """A stand-in network: the exact mixture's eps at the level its label t means; records the labels."""

    def __init__(self):
        self.labels: list[float] = []
        self.shape = (2,)

    def __call__(self, x, t):
        labels = t.detach().to(torch.float64).numpy()
        self.labels.append(float(labels[0]))
        lam = log_snr_of_label("DiscreteVP", labels)
        m = torch.as_tensor(np.sqrt(1 / (1 + np.exp(-lam))), dtype=x.dtype)
        sigma = torch.as_tensor(np.sqrt(1 / (1 + np.exp(lam))), dtype=x.dtype)
        return TRI.eps(x, sigma, m)


@pytest.mark.parametrize("spacing", ["karras", "leading"])
def test_network_models_snap_or_not(spacing):
    """Through a sampler: with time="nearest" a NetworkScoreModel queries its network at integer labels (the
    nearest trained ones), with time="fractional" at the exact fractional labels. On a grid of trained labels
    (leading) both are the same labels (diffusers' timesteps + 1) and the same samples; on karras they differ."""
    runs = {}
    for time in ("nearest", "fractional"):
        net = LabelRecorder()
        model = sg.NetworkScoreModel(net, DiscreteVP.linear(T), time=time, shape=(2,))
        runs[time] = (net.labels, sg.sample(model, "ddim", 64, seed=0, steps=15, spacing=spacing,
                                            dtype=torch.float64, progress=False).samples)
    grid = step_grid(TRI, 15, spacing)
    lam = np.array([2.0 * math.log(m / s) for m, s in zip(grid.m[:-1], grid.sigma[:-1])])
    near, frac = np.asarray(runs["nearest"][0]), np.asarray(runs["fractional"][0])
    np.testing.assert_array_equal(near, nearest_labels(lam))
    np.testing.assert_allclose(log_snr_of_label("DiscreteVP", frac), lam, rtol=0, atol=1e-9)
    if spacing == "leading":
        ts = diffusers_timesteps("leading", 15)
        np.testing.assert_array_equal(near, ts + 1)
        np.testing.assert_allclose(frac, ts + 1, rtol=0, atol=1e-6)
        assert torch.allclose(runs["nearest"][1], runs["fractional"][1], rtol=0, atol=1e-9)
    else:
        assert np.sum(np.abs(frac - np.round(frac)) > 1e-3) >= 10
        assert (runs["nearest"][1] - runs["fractional"][1]).abs().max() > 1e-6


# ----------------------------------------------------------------------------- review findings (edge cases)


def test_huge_ve_levels_stay_finite_in_vp_coordinates():
    """sqrt(1 + s^2) overflows for s above ~1e154: m = 1 / hypot(1, s) does not."""
    g = step_grid(sg.load_target("ring2d"), sigmas=[1e300, 1.0])
    assert all(math.isfinite(v) and v > 0 for v in g.m) and g.s[0] == pytest.approx(1e300)


def test_a_clean_last_timestep_of_a_continuous_model_is_the_final_level():
    model = sg.NetworkScoreModel(lambda x, t: torch.zeros_like(x), ContinuousVP(), shape=(2,))
    g = step_grid(model, timesteps=[1.0, 0.5, 0.0])
    assert len(g) == 2 and g.sigma[-1] == 0.0 and all(v > 0 for v in g.sigma[:-1])
    with pytest.raises(ValueError, match="no finite noise level"):
        step_grid(model, timesteps=[1.0, 0.0, 0.0])


def test_grid_shape_parameters_are_refused_where_they_do_not_apply():
    target = sg.load_target("ring2d")
    for spacing, kwargs in (("trained", {"sigma_max": 3.0}), ("time", {"rho": 5.0}), ("logsnr", {"rho": 5.0}),
                            (None, {"sigma_min": 0.1})):
        with pytest.raises(ValueError, match="karras"):
            step_grid(target, 5, spacing, **kwargs)
    with pytest.raises(ValueError, match="karras"):
        step_grid(target, sigmas=[3.0, 1.0], rho=5.0)
    assert step_grid(target, 5, "logsnr", sigma_max=3.0).s[0] == 3.0
    with pytest.raises(ValueError, match="karras"):  # langevin forwards its own bounds only to karras / logsnr
        sg.sample(target, "langevin", 4, seed=0, spacing="trained", levels=5, sigma_max=3.0, steps_per_level=1)


def test_an_explicit_step_grid_is_validated():
    from scoregen.samplers.grids import StepGrid

    target = sg.load_target("ring2d")
    with pytest.raises(ValueError, match="at least one positive"):
        sg.sample(target, "euler", 4, seed=0, sigmas=StepGrid((1.0,), (0.0,)))
    with pytest.raises(ValueError, match="decreasing"):
        sg.sample(target, "euler", 4, seed=0, sigmas=StepGrid((1.0, 1.0, 1.0), (1.0, 2.0, 0.0), "bad", False))
    with pytest.raises(ValueError, match="flat"):
        step_grid(target, sigmas=[[3.0, 1.0]])


def test_sdedit_start_just_above_a_grid_level_replaces_it():
    """A start a hair above a grid level would leave a first step ~1e-9 long, whose step ratio wrecks the multistep
    solvers (float32: max |x| 3-14 instead of ~2 on ring2d): the level is dropped, the start takes its place."""
    target = sg.load_target("ring2d")
    full = step_grid(target, 10, "logsnr")
    level = full.s[3] * (1 + 1e-9)
    cut = full.starting_at(level)
    assert cut.s[0] == pytest.approx(level, rel=1e-14) and cut.s[1:] == pytest.approx(full.s[4:], rel=1e-14)
    x0 = torch.zeros(2)
    for name in ("deis", "dpmpp_3m", "unipc"):
        x = sg.sample(target, name, 200, seed=0, steps=10, spacing="logsnr", x_start=x0, start_level=level).samples
        assert float(x.abs().max()) < 3.0, name
    with pytest.raises(ValueError, match="start_level"):  # above the grid's noisiest level
        full.starting_at(2 * full.s[0])
