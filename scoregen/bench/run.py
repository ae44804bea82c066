"""Run a benchmark: every sampler (scoregen's and, optionally, its peers') at every NFE budget on one subject.

Under torchrun (``context=``, :func:`scoregen.distributed.setup`), the ranks share each run's batches
(:func:`scoregen.batch_ranges` of ``batch_size``, default at most n / the number of ranks;
``sample(..., index_offset=a)``: each is that batch of the one-process run with that batch size, bit for bit on the same device type), the batches
are gathered to rank 0 in index order and rank 0 scores them, so every metric equals the one-process value exactly
(on exact targets whatever the batch size). Rank 0 also scores the reference row and the floors and runs the
peers (their step noise comes from one generator over the whole batch, so they cannot be split) on all n samples.
A row's ``wall_time`` is the slowest rank's sampling time; ``nfe`` the largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch

from .._checks import check_int
from ..distributed import Context
from ..samplers import SAMPLERS, SampleResult, batch_ranges, sample
from ..samplers.langevin import langevin_budget, langevin_grid
from .scorers import Column
from .subjects import DEFAULT_N, Subject

__all__ = ["BenchRow", "BenchResult", "budget_options", "run_bench", "guidance_sweep", "move_model", "DEFAULT_BUDGETS"]

#: NFE budgets: the fast regime, where samplers differ most (by 100 evaluations the first-order samplers reach the
#: floor on the built-in targets; ``budgets=`` adds 1000 and beyond).
DEFAULT_BUDGETS = {"exact": (10, 20, 50, 100), "digits": (10, 20, 50)}

#: Samples kept per row of an image model, for its grid.
GRID_SAMPLES = 64


@dataclass
class BenchRow:
    """One run: ``source`` is ``scoregen``, ``diffusers``, ``k-diffusion``, or ``reference`` (exact or real samples);
    ``budget`` the NFE asked for and ``nfe`` the evaluations spent per trajectory, counted by scoregen."""

    source: str
    sampler: str
    options: str
    budget: int
    nfe: int
    wall_time: float
    metrics: dict
    guidance_scale: Optional[float] = None
    samples: Optional[torch.Tensor] = field(default=None, repr=False)  # the first GRID_SAMPLES, image models only
    failed: Optional[str] = None  # why the run produced no samples (a sampler that diverged), or None


@dataclass
class BenchResult:
    subject: str
    kind: str
    n: int
    seed: int
    rows: list
    floors: dict
    columns: list
    headline: str
    description: str
    guidance: str = ""
    peers: list = field(default_factory=list)          # each peer's recorded configuration
    skipped_peers: list = field(default_factory=list)  # why a peer did not run
    notes: list = field(default_factory=list)
    ranks: int = 1  # processes that sampled each run (torchrun): wall times are the slowest rank's

    @property
    def headline_column(self) -> Column:
        return next(c for c in self.columns if c.key == self.headline)


#: Samplers spending two evaluations per step except the last (EDM's Heun and its stochastic version).
TWO_PER_STEP = ("heun", "edm")


def budget_options(sampler: str, nfe: int, model) -> dict:
    """Sampler options that spend ``nfe`` model evaluations as exactly as the sampler's structure allows.

    ddpm / ddim: ``steps = nfe`` (at most the model's trained levels); heun / edm: ``steps = (nfe + 1) // 2``; pc:
    ``nfe // 2`` steps of one predictor and one corrector evaluation; the other solvers ``steps = nfe``; langevin: its default grid's number of levels
    (:func:`~scoregen.samplers.langevin.langevin_grid`: the model's NCSN levels, or NCSNv2's technique 2; fewer when
    ``nfe`` is smaller) with the budget spread over them exactly (:func:`~scoregen.samplers.langevin.langevin_budget`).
    """
    nfe = check_int("nfe", nfe)
    if sampler in ("ddpm", "ddim"):
        times = model.schedule.times
        return {"steps": min(nfe, len(times)) if times is not None else nfe}
    if sampler == "langevin":
        return langevin_budget(nfe, len(langevin_grid(model, model.shape)))
    if sampler in TWO_PER_STEP:  # Heun's last step, to sigma = 0, is a single evaluation
        return {"steps": (nfe + 1) // 2}
    if sampler == "pc":  # one predictor and one corrector evaluation per step
        if nfe < 2:
            raise ValueError("pc spends 2 evaluations per step: give a budget of at least 2")
        return {"steps": nfe // 2, "corrector_steps": 1}
    if sampler in SAMPLERS and sampler != "ode":
        return {"steps": nfe}
    raise ValueError(f"no NFE budget rule for sampler {sampler!r} (ode chooses its own steps); choose from "
                     f"{sorted(set(SAMPLERS) - {'ode'})}")


def _options_text(options: dict) -> str:
    def show(v):
        if isinstance(v, (list, tuple)):
            return f"{min(v)}..{max(v)}" if len(set(v)) > 1 else str(v[0])
        return f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(v)}" for k, v in options.items())


def _progress(total: int, progress: Optional[bool], desc: str):
    from .._progress import progress as bar

    return bar(total, progress, desc, unit="run")


def run_bench(
    subject: Subject,
    samplers: Sequence[str] = ("ddpm", "ddim", "langevin"),
    budgets: Optional[Iterable[int]] = None,
    n: Optional[int] = None,
    seed: int = 0,
    *,
    peers: bool = False,
    peer_names: Optional[Sequence[str]] = None,
    label: Optional[int] = None,
    guidance_scale: float = 1.0,
    progress: Optional[bool] = None,
    device=None,
    context: Optional[Context] = None,
    batch_size: Optional[int] = None,
) -> BenchResult:
    """Sample ``subject`` with every sampler at every NFE budget and score each run the same way.

    The first row is the reference (exact samples, or real digits), scored like a sampler; ``floors`` holds what a
    perfect sampler scores at this n (mean, std over fresh reference draws). With ``peers``, diffusers' schedulers
    and k-diffusion's samplers run on the same model at the same budgets (:mod:`scoregen.bench.peers`), their NFE
    counted by scoregen around the model. With ``label`` (exact targets), the samplers run under guidance to that
    class at ``guidance_scale`` and are scored against the exact conditional.

    ``device``: where the samplers run (default the CPU). ``batch_size``: scoregen's runs sample in batches of this
    many (default: :func:`scoregen.sample`'s). ``context``: under torchrun, the ranks share each run's batches (of
    ``batch_size``, default at most n / the number of ranks) and rank 0 scores the gathered samples (see the module
    docstring); every rank must call this with the same arguments. Rank 0 returns the whole result, the other ranks
    one without rows or floors. The samples, and so the scores, equal one process's with the same ``batch_size``
    bit for bit; on exact targets whatever the batches.
    """
    n = DEFAULT_N[subject.kind] if n is None else check_int("n (samples per run; the metrics need two)", n, 2)
    batch_size = None if batch_size is None else check_int("batch_size", batch_size)
    budgets = sorted(set(DEFAULT_BUDGETS[subject.kind] if budgets is None else (check_int("budget", b) for b in budgets)))
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown or not samplers:
        raise ValueError(f"unknown sampler(s) {unknown}; choose from {sorted(SAMPLERS)}")
    ctx = context or Context()
    model, y = subject.model, None
    if label is not None:
        if subject.guided is None:
            raise ValueError(f"{subject.name} has no guidance to benchmark")
        model, y = subject.guided(guidance_scale, label, n)
    move_model(model, device)
    scorer = subject.make_scorer(n, seed, label, guided=label is not None)
    peer_list, skipped = [], []
    if peers and label is None and ctx.is_main:
        from .peers import peers_for

        peer_list, skipped = peers_for(subject.model, data_range=subject.data_range, names=peer_names)
    elif peers and label is not None:
        skipped = ["peers run on unguided models only: without --label"]
    result = BenchResult(subject.name, subject.kind, n, seed, [], {}, scorer.columns, scorer.headline,
                         scorer.description, subject.guidance if label is not None else "",
                         [{"library": p.library, "name": p.name, **p.config} for p in peer_list], skipped)
    changed = sorted({k for p in peer_list for k in p.config.get("changed", {}) if k != "trained_betas"})
    if peer_list:
        result.notes.append("peers: diffusers' schedulers with their shipped defaults on the model's own betas"
                            + (f", except {', '.join(changed)} off (the data are not within [-1, 1])" if changed else "")
                            + "; k-diffusion's samplers on their wrapper's grid and on the Karras grid (rho 7); every "
                              "configuration is in results.json")
    if "langevin" in samplers:
        result.notes.append(f"langevin's grid: {langevin_grid(model, model.shape).describe()}; a budget below its number "
                            "of levels runs a geometric grid of that many levels over the same range")
    _note_ranks(result, ctx)
    labels = None if y is None else (torch.full((n,), y) if isinstance(y, int) else y)
    if ctx.is_main:
        result.rows.append(_reference_row(subject, scorer, guidance_scale if label is not None else None))
    jobs = [("scoregen", s, b) for s in samplers for b in budgets] + [(p, p.name, b) for p in peer_list for b in budgets]
    with _progress(len(jobs) + 1, progress if ctx.is_main else False, f"bench {subject.name}") as bar:
        if ctx.is_main:
            result.floors = scorer.floor()
        bar.update(1)
        for source, name, budget in jobs:
            row = _run_one(source, name, budget, model, subject, scorer, n, seed, labels,
                           guidance_scale if label is not None else None, device, ctx, batch_size)
            if ctx.is_main:
                result.rows.append(row)
            bar.update(1)
    return result


def _note_ranks(result: BenchResult, ctx: Context) -> None:
    if ctx.distributed:
        result.ranks = ctx.world_size
        result.notes.append(f"{ctx.world_size} processes (torchrun) sampled each scoregen run, sharing its one-process "
                            "batches, scored together; wall s is the slowest process's sampling time and samples/s "
                            "n / wall s" + ("; the peers ran on rank 0 alone" if result.peers else ""))


def _reference_row(subject: Subject, scorer, scale: Optional[float]) -> BenchRow:
    """The reference (exact samples, or real digits with their own labels), scored like a sampler."""
    reference = scorer.reference_samples(0)
    return BenchRow("reference", "exact" if subject.kind == "exact" else "real digits", "-", 0, 0, 0.0,
                    scorer.score(reference, scorer.reference_labels(0)), scale, _keep(reference, subject))


def _run_one(source, name: str, budget: int, model, subject: Subject, scorer, n: int, seed: int, labels,
             scale: Optional[float], device=None, ctx: Optional[Context] = None,
             batch_size: Optional[int] = None) -> BenchRow:
    """One run, scored; a run whose samples diverge (NaN or inf, caught by scoregen's guard for peers too) is
    recorded as failed, with the reason, instead of ending the benchmark. Under torchrun a scoregen run's batches
    (those of one process, :func:`~scoregen.samplers.batch_ranges`) are shared among the ranks and scored on rank 0
    (the other ranks get the row unscored); a peer runs on rank 0 alone."""
    ctx = ctx or Context()
    if source == "scoregen":
        options = budget_options(name, budget, model)
        row = BenchRow("scoregen", name, _options_text(options), budget, 0, 0.0, {}, scale)
        def run(a: int = 0, b: int = n, size: Optional[int] = batch_size) -> SampleResult:  # rows [a, b) of the run
            return sample(model, name, b - a, seed=seed, y=None if labels is None else labels[a:b], progress=False,
                          x0_hook=subject.x0_hook, device=device, index_offset=a, batch_size=size, **options)

        if ctx.distributed:  # the batches of batch_size (those of one process), or at most n / the number of ranks
            where = dict(y=labels, x0_hook=subject.x0_hook, device=device)
            default = None if batch_size else batch_ranges(model, name, n, **where)[0][1]  # the memory estimate's
            ranges = batch_ranges(model, name, n, batch_size=batch_size or min(default, -(-n // ctx.world_size)),
                                  **where)
            size = ranges[0][1] - ranges[0][0]
            return _run_sharded(row, lambda a, b: run(a, b, size), ranges[ctx.rank::ctx.world_size], subject, scorer,
                                labels, ctx)
    else:
        row = BenchRow(source.library, name, "", budget, 0, 0.0, {}, scale)
        run = lambda: source.run(budget, n, seed)  # noqa: E731
    try:
        r = run()
    except FloatingPointError as e:
        row.failed = str(e)
        return row
    row.nfe, row.wall_time = r.nfe, r.wall_time
    row.options = row.options or r.options
    row.metrics, row.samples = scorer.score(r.samples, labels), _keep(r.samples, subject)
    return row


def _run_sharded(row: BenchRow, run, ranges: list, subject: Subject, scorer, labels, ctx: Context) -> BenchRow:
    """This rank's batches ``ranges`` of a scoregen run; every rank's samples, NFE, sampling time and failure gathered
    to rank 0, which puts the batches in index order and scores the whole set as one process does."""
    import torch.distributed as dist

    mine: dict = {"samples": [], "nfe": 0, "wall": 0.0, "failed": None}
    try:
        for a, b in ranges:  # none on a rank beyond the number of batches
            r = run(a, b)
            mine["samples"].append((a, r.samples.detach().cpu()))
            mine.update(nfe=max(mine["nfe"], r.nfe), wall=mine["wall"] + r.wall_time)
    except FloatingPointError as e:
        mine["failed"] = str(e)
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, mine)  # every rank's, pickled: one collective per run, on every rank
    if not ctx.is_main:
        return row
    failed = [p["failed"] for p in parts if p["failed"] is not None]
    if failed:
        row.failed = failed[0]
        return row
    samples = torch.cat([x for _, x in sorted((item for p in parts for item in p["samples"]), key=lambda item: item[0])])
    row.nfe, row.wall_time = max(p["nfe"] for p in parts), max(p["wall"] for p in parts)
    row.metrics, row.samples = scorer.score(samples, labels), _keep(samples, subject)
    return row


def guidance_sweep(
    subject: Subject,
    scales: Sequence[float] = (0, 1, 2, 3, 5, 10),
    sampler: str = "ddim",
    budget: int = 50,
    n: Optional[int] = None,
    seed: int = 0,
    label: Optional[int] = None,
    progress: Optional[bool] = None,
    device=None,
    context: Optional[Context] = None,
    batch_size: Optional[int] = None,
) -> BenchResult:
    """Quality and class accuracy as functions of the guidance scale: one run of ``sampler`` at ``budget`` NFE per
    scale, under the subject's guidance (exact targets: class ``label``, default 0; digits: every class in turn).
    ``device``, ``batch_size`` and ``context``: as :func:`run_bench`'s."""
    if subject.guided is None:
        raise ValueError(f"{subject.name} has no guidance to sweep")
    n = DEFAULT_N[subject.kind] if n is None else check_int("n (samples per run; the metrics need two)", n, 2)
    batch_size = None if batch_size is None else check_int("batch_size", batch_size)
    label = (0 if label is None else label) if subject.kind == "exact" else label
    scorer = subject.make_scorer(n, seed, label, guided=True)
    ctx = context or Context()
    result = BenchResult(subject.name, subject.kind, n, seed, [], {}, scorer.columns, scorer.headline,
                         scorer.description, subject.guidance)
    _note_ranks(result, ctx)
    if ctx.is_main:
        result.rows.append(_reference_row(subject, scorer, None))
    with _progress(len(scales) + 1, progress if ctx.is_main else False, f"guidance {subject.name}") as bar:
        if ctx.is_main:
            result.floors = scorer.floor()
        bar.update(1)
        for scale in scales:
            model, y = subject.guided(float(scale), label, n)
            move_model(model, device)
            labels = torch.full((n,), y) if isinstance(y, int) else y
            row = _run_one("scoregen", sampler, budget, model, subject, scorer, n, seed, labels, float(scale), device, ctx,
                           batch_size)
            if ctx.is_main:
                result.rows.append(row)
            bar.update(1)
    return result


def _keep(samples: torch.Tensor, subject: Subject) -> Optional[torch.Tensor]:
    return samples[:GRID_SAMPLES].detach().cpu().float().clone() if subject.image else None


def move_model(model, device) -> None:
    """Move the networks inside ``model`` (and inside the scoregen wrappers around it: guidance, analytic variance,
    hooks) to ``device``, in place; nothing for the CPU or None, where everything is loaded. Exact targets need
    nothing: they follow their input's device."""
    if device is None or torch.device(device).type == "cpu":
        return
    seen: set = set()

    def visit(obj, depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            obj.to(device)
            return
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, torch.nn.Module) or type(value).__module__.startswith("scoregen."):
                visit(value, depth + 1)

    visit(model, 0)
