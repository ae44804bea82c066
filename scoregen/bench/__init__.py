"""Sampler comparison on exact targets: quality (sliced W2, mode TV) against cost (NFE, wall time)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..guidance import ClassifierGuidance
from ..io import atomic_write
from ..metrics import mode_tv, sliced_w2, sliced_w2_noise_floor
from ..samplers import SAMPLERS, sample
from ..schedules import ncsnv2_levels
from ..targets import GaussianMixture

__all__ = ["BenchRow", "budget_options", "run_bench", "format_table", "plot_bench"]

DEFAULT_BUDGETS = (10, 30, 100, 300, 1000)


@dataclass
class BenchRow:
    sampler: str
    options: str
    nfe: int
    sliced_w2: float
    noise_floor: float
    mode_tv: float
    wall_time: float


def budget_options(sampler: str, nfe: int, max_steps: int, langevin_levels: int = 10) -> dict:
    """Sampler options that spend about ``nfe`` model evaluations.

    ddpm / ddim: ``steps = nfe`` (at most the model's ``max_steps`` trained levels);
    langevin: its default number of levels L with ``nfe // L`` steps each (fewer levels below L evaluations).
    """
    if nfe < 1:
        raise ValueError(f"an NFE budget must be >= 1, got {nfe}")
    if sampler in ("ddpm", "ddim"):
        return {"steps": min(nfe, max_steps)}
    if sampler == "langevin":
        levels = min(langevin_levels, nfe)
        return {"levels": levels, "steps_per_level": max(1, nfe // levels)}
    raise ValueError(f"no NFE budget rule for sampler {sampler!r}; choose from {sorted(SAMPLERS)}")


def run_bench(
    target: GaussianMixture,
    samplers: Sequence[str] = ("ddpm", "ddim", "langevin"),
    budgets: Iterable[int] = DEFAULT_BUDGETS,
    n: int = 10000,
    seed: int = 0,
    label: Optional[int] = None,
    guidance_scale: float = 1.0,
    progress: Optional[bool] = None,
) -> list[BenchRow]:
    """Run every sampler at every NFE budget on ``target`` and score it against exact samples.

    With ``label``, the samplers run under exact classifier guidance and are scored against the exact
    conditional p(x | label). The first row is the exact sampler: its sliced W2 is the noise floor.
    """
    model, reference, weights = target, target, None
    if label is not None:
        model = ClassifierGuidance(target, target.classifier, guidance_scale)
        reference = target.conditional(label)
        # mode TV over all components: a sample in another class's mode counts against the sampler
        weights = torch.as_tensor(target.weights * (target.labels == label))
        weights = weights / weights.sum()
    g = torch.Generator().manual_seed(seed + 1)
    ref_samples = reference.sample(n, g)
    floor = sliced_w2_noise_floor(reference, n, seed=seed + 2)
    exact = reference.sample(n, torch.Generator().manual_seed(seed))
    rows = [BenchRow("exact", "-", 0, sliced_w2(exact, ref_samples), floor, mode_tv(exact, target, weights), 0.0)]
    max_steps = len(target.schedule.times) if target.schedule.times is not None else 1000
    langevin_levels = ncsnv2_levels(*target.sigma_range, target.dim)
    jobs = [(s, b) for s in samplers for b in sorted(set(budgets))]
    for name, budget in tqdm(jobs, disable=None if progress is None else not progress, desc="bench", leave=False):
        opts = budget_options(name, budget, max_steps, langevin_levels)
        r = sample(model, name, n, seed=seed, y=label, progress=False, **opts)
        rows.append(BenchRow(name, " ".join(f"{k}={v}" for k, v in opts.items()), r.nfe,
                             sliced_w2(r.samples, ref_samples), floor, mode_tv(r.samples, target, weights), r.wall_time))
    return rows


def format_table(rows: Sequence[BenchRow], title: str = "") -> str:
    head = f"{'sampler':<9} {'options':<30} {'NFE':>5} {'sliced W2':>10} {'floor':>8} {'mode TV':>8} {'wall s':>8}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.sampler:<9} {r.options:<30} {r.nfe:>5d} {r.sliced_w2:>10.4f} {r.noise_floor:>8.4f} {r.mode_tv:>8.4f} {r.wall_time:>8.3f}")
    return "\n".join(lines)


def rows_to_csv(rows: Sequence[BenchRow], path: str) -> None:
    import csv

    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])), lineterminator="\n")
        w.writeheader()
        w.writerows(asdict(r) for r in rows)


def plot_bench(rows: Sequence[BenchRow], path: str, title: str = "") -> None:
    """Sliced W2 and mode TV against NFE, one line per sampler, the noise floor dashed (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'scoregen[plot]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r.sampler for r in rows if r.sampler != "exact"):
        pts = [r for r in rows if r.sampler == name]
        axes[0].plot([r.nfe for r in pts], [r.sliced_w2 for r in pts], "o-", label=name)
        axes[1].plot([r.nfe for r in pts], [r.mode_tv for r in pts], "o-", label=name)
    axes[0].axhline(rows[0].noise_floor, ls="--", c="gray", label="noise floor")
    axes[1].axhline(rows[0].mode_tv, ls="--", c="gray", label="exact samples")
    for ax, ylabel in zip(axes, ("sliced W2", "mode-weight TV")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
