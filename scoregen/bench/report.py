"""Benchmark results as a ranked table, markdown, JSON, CSV, plots and sample grids."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import time
from typing import Optional, Sequence

from ..io import atomic_write, save_image_grid
from .run import BenchResult, BenchRow

__all__ = ["format_table", "format_pivot", "format_markdown", "write_report", "write_csv", "plot_quality", "plot_guidance", "rank"]


def _value(row: BenchRow, key: str) -> float:
    return row.metrics.get(key, math.nan)


def _tie_width(result: BenchResult, a: BenchRow, b: BenchRow) -> float:
    """Two rows whose headline values differ by less than this are not told apart: 2 combined standard errors where
    the metric has them, else 2 x the floor's spread (the noise of a perfect sampler's score at this n)."""
    column = result.headline_column
    if column.se_key:
        return 2 * math.hypot(a.metrics.get(column.se_key, 0.0), b.metrics.get(column.se_key, 0.0))
    return 2 * result.floors.get(column.key, (0.0, 0.0))[1]


def rank(result: BenchResult, rows: Sequence[BenchRow]) -> list[tuple[str, BenchRow]]:
    """``rows`` best first by the headline metric, each with its rank; ``=`` marks a row within noise of the one
    above (see :func:`_tie_width`), so it shares that row's rank."""
    ordered = sorted(rows, key=lambda r: (math.isnan(_value(r, result.headline)), _value(r, result.headline)))
    out, place = [], 0
    for i, row in enumerate(ordered):
        if math.isnan(_value(row, result.headline)):  # a failed run has no place
            out.append(("-", row))
            continue
        tied = i > 0 and abs(_value(row, result.headline) - _value(ordered[i - 1], result.headline)) < _tie_width(result, row, ordered[i - 1])
        place = place if tied else i + 1
        out.append((f"{'=' if tied else ''}{place}", row))
    return out


def _cell(result: BenchResult, row: BenchRow, column) -> str:
    if row.failed:
        return "diverged" if column.key == result.headline else "-"
    v = row.metrics.get(column.key)
    if v is None:
        return "-"
    text = column.fmt.format(v * column.scale) if math.isfinite(v) else str(v)
    if column.se_key and column.se_key in row.metrics:
        text += " ± " + column.fmt.format(row.metrics[column.se_key] * column.scale)
    return text


def _floor_cell(result: BenchResult, column) -> str:
    if column.key not in result.floors:
        return "-"
    mean, std = result.floors[column.key]
    return f"{column.fmt.format(mean * column.scale)} ± {column.fmt.format(std * column.scale)}"


def _title(result: BenchResult) -> str:
    what = f"{result.subject}, n={result.n}, seed={result.seed}"
    return f"{what}, {result.guidance}" if result.guidance else what


def _samples_per_s(result: BenchResult, row: BenchRow) -> Optional[float]:
    """Samples per second of the whole job (n / the slowest rank's wall time): reported for torchrun runs."""
    return result.n / row.wall_time if row.wall_time > 0 and not row.failed else None


def _rate(result: BenchResult, row: BenchRow) -> str:
    rate = _samples_per_s(result, row)
    return "-" if rate is None else f"{rate:.0f}"


def _budgets(result: BenchResult) -> list:
    return sorted({r.budget for r in result.rows if r.source != "reference"})


def format_table(result: BenchResult) -> str:
    """The plain-text table: the reference row and the floor, then one block per NFE budget, ranked."""
    sweep = any(r.guidance_scale is not None for r in result.rows[1:]) and len({r.guidance_scale for r in result.rows[1:]}) > 1
    ranks = result.ranks > 1  # torchrun: the job's samples/s beside the slowest rank's time
    head = ["rank", "source", "sampler", "options", "NFE", *(c.label for c in result.columns), "wall s"] + (["samples/s"] if ranks else [])
    if sweep:
        head[0] = "scale"
    body = [["", "reference", result.rows[0].sampler, "-", "0", *(_cell(result, result.rows[0], c) for c in result.columns), "-"]
            + (["-"] if ranks else [])]
    body.append(["", "floor", "(perfect sampler)", "", "", *(_floor_cell(result, c) for c in result.columns), ""] + ([""] if ranks else []))
    groups = [[r for r in result.rows[1:]]] if sweep else [[r for r in result.rows[1:] if r.budget == b] for b in _budgets(result)]
    for group in groups:
        body.append(None)
        ranked = [(f"{r.guidance_scale:g}", r) for r in group] if sweep else rank(result, group)
        for place, r in ranked:
            body.append([place, r.source, r.sampler, r.options, str(r.nfe), *(_cell(result, r, c) for c in result.columns),
                         f"{r.wall_time:.3f}"] + ([_rate(result, r)] if ranks else []))
    widths = [max(len(head[i]), *(len(b[i]) for b in body if b)) for i in range(len(head))]
    right = {4, *range(5, len(head))}
    fmt = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [f"scoregen bench: {_title(result)}", fmt(head), "-" * len(fmt(head))]
    for b in body:
        lines.append("" if b is None else fmt(b))
    lines.append(_legend(result))
    return "\n".join(lines)


def _legend(result: BenchResult) -> str:
    text = ("ranked within each NFE budget by " + result.headline_column.label + " (lower is better); '=' within noise "
            "of the row above. " + result.description)
    for note in result.notes:
        text += f" {note[0].upper()}{note[1:]}."
    if result.skipped_peers:
        text += " Peers not run: " + "; ".join(result.skipped_peers) + "."
    failed = [r for r in result.rows if r.failed]
    if failed:
        text += " Diverged (NaN or inf, caught by scoregen's guard): " + "; ".join(
            f"{r.source} {r.sampler} at {r.budget} NFE ({r.failed[:160]})" for r in failed) + "."
    return _wrap(text)


def _wrap(text: str, width: int = 118) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def format_markdown(results: Sequence[BenchResult]) -> str:
    """All results as markdown tables (one per subject), with floors and how each metric is computed."""
    parts = ["# scoregen bench", "", f"{time.strftime('%Y-%m-%d %H:%M')}, {_machine()}", ""]
    for result in results:
        ranks = result.ranks > 1
        extra = " - |" if ranks else ""
        parts += [f"## {_title(result)}", "", "| NFE | rank | source | sampler | options | NFE spent | "
                  + " | ".join(c.label for c in result.columns) + " | wall s |" + (" samples/s |" if ranks else ""),
                  "|" + "---|" * (7 + len(result.columns) + ranks)]
        ref = result.rows[0]
        parts.append(f"| - | - | reference | {ref.sampler} | - | 0 | " + " | ".join(_cell(result, ref, c) for c in result.columns) + " | - |" + extra)
        parts.append("| - | - | floor | perfect sampler | - | - | " + " | ".join(_floor_cell(result, c) for c in result.columns) + " | - |" + extra)
        for budget in _budgets(result):
            group = [r for r in result.rows[1:] if r.budget == budget]
            for place, r in rank(result, group):
                scale = f" (scale {r.guidance_scale:g})" if r.guidance_scale is not None else ""
                parts.append(f"| {budget} | {place} | {r.source} | {r.sampler}{scale} | {r.options} | {r.nfe} | "
                             + " | ".join(_cell(result, r, c) for c in result.columns) + f" | {r.wall_time:.3f} |"
                             + (f" {_rate(result, r)} |" if ranks else ""))
        if len(_budgets(result)) > 1:
            parts += ["", format_pivot(result)]
        parts += ["", result.description, *(f"\n{note[0].upper()}{note[1:]}." for note in result.notes), ""]
        if result.skipped_peers:
            parts += ["Peers not run: " + "; ".join(result.skipped_peers) + ".", ""]
        for peer in result.peers:
            parts.append(f"* {peer['library']} {peer['name']}: `{json.dumps({k: v for k, v in peer.items() if k not in ('library', 'name')}, default=str)}`")
        parts.append("")
    return "\n".join(parts)


def format_pivot(result: BenchResult) -> str:
    """The headline metric as a markdown table, one row per sampler and one column per NFE budget (best first by
    the mean rank over budgets): the comparison at a glance."""
    column, budgets = result.headline_column, _budgets(result)
    cells: dict = {}
    for budget in budgets:
        for place, row in rank(result, [r for r in result.rows[1:] if r.budget == budget]):
            cells.setdefault((row.source, row.sampler), {})[budget] = (place, row)
    def mean_rank(item) -> float:  # over the budgets where the sampler ran; a sampler that failed everywhere goes last
        places = [int(p.lstrip("=")) for p, _ in item[1].values() if p != "-"]
        return sum(places) / len(places) if places else math.inf
    head = "| sampler | " + " | ".join(f"{b} NFE" for b in budgets) + " |"
    lines = [f"{column.label}, {_title(result)}; floor {_floor_cell(result, column)}", "", head,
             "|---|" + "---:|" * len(budgets)]
    for (source, sampler), by_budget in sorted(cells.items(), key=mean_rank):
        who = sampler if source == "scoregen" else f"{sampler} ({source})"
        lines.append(f"| {'**' + who + '**' if source == 'scoregen' else who} | " + " | ".join(
            _cell(result, by_budget[b][1], column) if b in by_budget else "-" for b in budgets) + " |")
    return "\n".join(lines)


def _machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads), Python {platform.python_version()}")


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("scoregen", "torch", "numpy", "scipy", "diffusers", "k-diffusion", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def to_json(results: Sequence[BenchResult], command: Optional[str] = None) -> dict:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "machine": _machine(),
        "versions": _versions(),
        "results": [{
            "subject": r.subject, "kind": r.kind, "n": r.n, "seed": r.seed, "headline": r.headline,
            "guidance": r.guidance, "description": r.description,
            "columns": [{"key": c.key, "label": c.label, "se_key": c.se_key, "scale": c.scale} for c in r.columns],
            "floors": {k: {"mean": m, "std": s} for k, (m, s) in r.floors.items()},
            "rows": [{**{k: v for k, v in vars(row).items() if k != "samples"},
                      **({"samples_per_s": _samples_per_s(r, row)} if r.ranks > 1 else {})} for row in r.rows],
            "peers": r.peers, "skipped_peers": r.skipped_peers,
            **({"ranks": r.ranks} if r.ranks > 1 else {}),  # torchrun: wall_time is the slowest rank's
        } for r in results],
    }


def write_csv(results: Sequence[BenchResult], path: str) -> None:
    keys = sorted({k for r in results for row in r.rows for k in row.metrics})
    with atomic_write(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["model", "source", "sampler", "options", "budget", "nfe", "guidance_scale", "wall_time", *keys])
        for r in results:
            for row in r.rows:
                w.writerow([r.subject, row.source, row.sampler, row.options, row.budget, row.nfe, row.guidance_scale,
                            row.wall_time, *(row.metrics.get(k, "") for k in keys)])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80]


def write_report(results: Sequence[BenchResult], out_dir: str, sweeps: Sequence[BenchResult] = (),
                 command: Optional[str] = None) -> list[str]:
    """Write ``results.json``, ``results.md``, ``quality_vs_nfe.png``, ``quality_vs_time.png`` (and
    ``quality_vs_guidance.png`` for guidance sweeps) into ``out_dir``, plus ``grids/`` with one sample grid per row
    of an image model. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    every = [*results, *sweeps]
    paths = []
    path = os.path.join(out_dir, "results.json")
    with atomic_write(path, "w") as f:
        json.dump(to_json(every, command), f, indent=1, default=str)
    paths.append(path)
    path = os.path.join(out_dir, "results.md")
    with atomic_write(path, "w") as f:
        f.write(format_markdown(every))
    paths.append(path)
    if results:
        for x_axis in ("nfe", "time"):
            path = os.path.join(out_dir, f"quality_vs_{x_axis}.png")
            plot_quality(results, path, x_axis)
            paths.append(path)
    if sweeps:
        path = os.path.join(out_dir, "quality_vs_guidance.png")
        plot_guidance(sweeps, path)
        paths.append(path)
    for r in every:
        for row in r.rows:
            if row.samples is None:
                continue
            os.makedirs(os.path.join(out_dir, "grids"), exist_ok=True)
            what = row.sampler if row.source == "reference" else f"{row.source}-{row.sampler}-{row.budget}"
            if row.guidance_scale is not None:
                what += f"-scale{row.guidance_scale:g}"
            path = os.path.join(out_dir, "grids", _slug(f"{r.subject.split(' ')[0]}-{what}") + ".png")
            save_image_grid(row.samples, path, (-1.0, 1.0), nrow=8)
            paths.append(path)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(result: BenchResult) -> dict:
    lines: dict = {}
    for row in result.rows[1:]:
        lines.setdefault((row.source, row.sampler), []).append(row)
    return lines


def _colours(plt, lines: dict) -> dict:
    """scoregen's samplers in tab10's strong colours; diffusers' and k-diffusion's in two other palettes."""
    palettes = {"scoregen": plt.get_cmap("tab10"), "diffusers": plt.get_cmap("tab20b"), "k-diffusion": plt.get_cmap("tab20c")}
    counts: dict = {}
    out = {}
    for source, sampler in lines:
        i = counts[source] = counts.get(source, -1) + 1
        out[source, sampler] = palettes.get(source, palettes["diffusers"])(i % 20 if source != "scoregen" else i % 10)
    return out


def plot_quality(results: Sequence[BenchResult], path: str, x_axis: str = "nfe") -> None:
    """For each subject, its headline metric (left) and second metric (right) against NFE or wall time, log axes,
    one line per sampler (peers dashed), the floor as a grey band (mean +- std, or 0..2 SE for MMD^2)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(13, 4.6 * len(results)), squeeze=False)
    for (ax_main, ax_second), result in zip(axes, results):
        second = next((c for c in result.columns if c.key != result.headline), None)
        lines = _lines(result)
        colours = _colours(plt, lines)
        for ax, column in ((ax_main, result.headline_column), (ax_second, second)):
            if column is None:
                ax.axis("off")
                continue
            mean, std = result.floors.get(column.key, (math.nan, math.nan))
            lo_band, hi_band = (max(mean - std, 0), mean + std) if not column.se_key else (0.0, 2 * std)
            floor_value = max(hi_band, 1e-12) / 2 if column.se_key else max(lo_band, 1e-12)
            for (source, sampler), rows in lines.items():
                xs = [r.nfe if x_axis == "nfe" else max(r.wall_time, 1e-4) for r in rows]
                # values at or below the floor (MMD^2 estimates can be negative) are drawn inside the band
                ys = [max(r.metrics.get(column.key, math.nan), floor_value) * column.scale for r in rows]
                ours = source == "scoregen"
                ax.plot(xs, ys, "-" if ours else ("--" if source == "diffusers" else "-."), marker="o" if ours else ".",
                        color=colours[source, sampler], lw=2.4 if ours else 1.1, zorder=3 if ours else 2,
                        label=f"{sampler} (scoregen)" if ours else f"{sampler} ({source})")
            if math.isfinite(hi_band):
                ax.axhspan(max(lo_band, floor_value / 2) * column.scale, hi_band * column.scale, color="0.85",
                           label="floor (perfect sampler at this n)", zorder=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            if x_axis == "nfe":  # the budgets themselves as ticks, not 2 x 10^1
                budgets = sorted({r.budget for r in result.rows[1:]})
                ax.xaxis.set_minor_locator(plt.NullLocator())
                ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.set_xlabel("NFE (model evaluations per sample)" if x_axis == "nfe" else "wall time (s)")
            ax.set_ylabel(column.label)
            ax.grid(True, which="both", alpha=0.3)
        ax_main.set_title(_title(result), fontsize=10)
        ax_second.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def plot_guidance(results: Sequence[BenchResult], path: str) -> None:
    """For each sweep: class accuracy and the headline metric against the guidance scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
    for (ax_acc, ax_q), result in zip(axes, results):
        rows = result.rows[1:]
        scales = [r.guidance_scale for r in rows]
        acc_key = "requested" if any("requested" in r.metrics for r in rows) else "class_accuracy"
        ax_acc.plot(scales, [r.metrics.get(acc_key, math.nan) for r in rows], "o-")
        ax_acc.set_xlabel("guidance scale")
        ax_acc.set_ylabel("fraction judged the class asked for")
        ax_acc.set_ylim(0, 1.02)
        column = result.headline_column
        ax_q.plot(scales, [r.metrics.get(column.key, math.nan) * column.scale for r in rows], "o-")
        mean, std = result.floors.get(column.key, (math.nan, math.nan))
        if math.isfinite(mean):
            lo, hi = ((0.0, 2 * std) if column.se_key else (mean - std, mean + std))
            ax_q.axhspan(lo * column.scale, hi * column.scale, color="0.85", label="floor")
            ax_q.legend(fontsize=8)
        ax_q.set_xlabel("guidance scale")
        ax_q.set_ylabel(column.label)
        for ax in (ax_acc, ax_q):
            ax.grid(True, alpha=0.3)
        ax_acc.set_title(f"{_title(result)}, {rows[0].sampler} {rows[0].options}" if rows else _title(result), fontsize=9)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
