"""Annealed Langevin's mode-weight bias on gmm64, and what NCSNv2's final denoising step does.

Part 1, mode weights (gmm64: 10 components of unequal weights 0.018-0.182 and stds 0.5-0.95, 64-d, exact score):
Langevin on NCSNv2's default grid (25 geometric levels from the largest data distance, 15.5, down to 0.01) at
three settings: NCSN's default step (``step_lr = 0.2 sigma_L^2``) with T = 100 steps per level; the same step
with T = 1000 (more steps: if the bias were slow mixing it would shrink); a 10x smaller step with T = 1000 (if it is
the step size's bias it shrinks). Each sample is assigned to its most likely component under the clean target (as
``scoregen.mode_tv`` does); per component, ``error_k = fraction_k - w_k``. Reported over seeds: mode TV (the exact
sampler's row is its sampling noise at this n), the correlation of error_k with the component's std s_k and with its
weight w_k, and the slope of error_k on (w_k - 1/K), which is negative if the weights are pulled towards equal.

Part 2, final denoising (``final_denoise=True``: ``x <- x + sigma_L^2 score(x, sigma_L)``, Tweedie's E[x0 | x]):
on ring2d, gmm64 and a 3-component 2-d mixture, Langevin's default settings with and without the last step (the
same chain, the same seed) at three smallest levels sigma_L (:data:`SIGMA_MINS`; the step is Tweedie's at sigma_L,
so it can only matter where sigma_L is not small against the components' stds), sliced W2 against fresh exact
samples (with the exact sampler's noise floor), and the per-component variance ratio
``mean ||x - mu_k||^2 / (d s_k^2)`` over the samples assigned to component k (about 1 for exact samples).

    python benchmarks/langevin_bias.py [--n 2000] [--seeds 0 1 2] [--long-seeds 2] [--part weights|denoise|both] [--threads 1]

Fixed seeds; the T = 1000 runs (25 000 evaluations each) use the first ``--long-seeds`` seeds. About 5 minutes
on one idle CPU thread at the defaults (n = 2000).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np
import torch

import scoregen as sg
from scoregen.samplers import langevin_grid

WEIGHT_CONFIGS = [  # (label, options on top of the default grid)
    ("default step, T=100", {"steps_per_level": 100}),
    ("default step, T=1000", {"steps_per_level": 1000}),
    ("step_lr / 10, T=1000", {"steps_per_level": 1000, "step_lr_factor": 0.1}),
]


#: Langevin's smallest level in part 2: NCSN's default 0.01, and two where Tweedie's step matters (comparable to the
#: components' stds: ring2d 0.1, gmm64 0.5-0.95, tri 0.3-0.5). The default step_lr (0.2 sigma_L^2) follows sigma_L.
SIGMA_MINS = (0.01, 0.1, 0.3)


def tri() -> sg.GaussianMixture:
    return sg.GaussianMixture([0.5, 0.3, 0.2], [[-2.5, -1.0], [2.5, -0.5], [0.0, 3.5]], [0.3, 0.4, 0.5], name="tri")


def assign(target: sg.GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Each sample's most likely component under the clean target (scoregen.mode_tv's rule)."""
    return target.component_posterior(x.detach().to("cpu", torch.float64)).argmax(-1)


def weight_errors(target: sg.GaussianMixture, x: torch.Tensor) -> np.ndarray:
    k = assign(target, x)
    return (torch.bincount(k, minlength=len(target.weights)).double() / len(k)).numpy() - target.weights


def variance_ratios(target: sg.GaussianMixture, x: torch.Tensor) -> np.ndarray:
    """Per component: mean squared distance to its mean over its samples, per dimension, over s_k^2 (NaN if none)."""
    x = x.detach().to("cpu", torch.float64)
    k = assign(target, x).numpy()
    out = np.full(len(target.weights), np.nan)
    for j in range(len(target.weights)):
        pts = x.numpy()[k == j]
        if len(pts) >= 10:
            out[j] = ((pts - target.means[j]) ** 2).sum(1).mean() / target.dim / target.stds[j] ** 2
    return out


def mean_sd(values) -> str:
    values = [float(v) for v in values]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def part_weights(n: int, seeds: list[int], long_seeds: int) -> list[str]:
    target = sg.load_target("gmm64")
    grid = langevin_grid(target, target.shape)
    default_lr = 0.2 * grid[-1] ** 2
    K = len(target.weights)
    lines = [f"gmm64: weights {np.round(target.weights, 3).tolist()}, stds {np.round(target.stds, 3).tolist()}",
             f"grid: {grid.describe()}; default step_lr = 0.2 sigma_L^2 = {default_lr:.2g}",
             "",
             "| sampler | NFE | runs | mode TV | corr(error, std) | corr(error, weight) | slope of error on (w - 1/K) | wall s per run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    exact_tv, exact_err = [], []
    for seed in seeds:
        x = target.sample(n, torch.Generator().manual_seed(seed))
        exact_tv.append(sg.mode_tv(x, target))
        exact_err.append(weight_errors(target, x))
    rows = {"exact": (exact_tv, exact_err, 0, 0.0)}
    for label, options in WEIGHT_CONFIGS:
        opts = dict(options)
        factor = opts.pop("step_lr_factor", 1.0)
        tvs, errs, wall, nfe = [], [], 0.0, 0
        run_seeds = seeds if opts["steps_per_level"] <= 100 else seeds[:long_seeds]
        for seed in run_seeds:
            res = sg.sample(target, "langevin", n, seed=seed, step_lr=default_lr * factor, progress=False, **opts)
            tvs.append(sg.mode_tv(res.samples, target))
            errs.append(weight_errors(target, res.samples))
            wall += res.wall_time
            nfe = res.nfe
        rows[label] = (tvs, errs, nfe, wall / len(run_seeds))
    centred = target.weights - 1.0 / K
    for label, (tvs, errs, nfe, wall) in rows.items():
        c_std = [np.corrcoef(e, target.stds)[0, 1] for e in errs]
        c_w = [np.corrcoef(e, target.weights)[0, 1] for e in errs]
        slope = [float(np.dot(e, centred) / np.dot(centred, centred)) for e in errs]
        lines.append(f"| {label} | {nfe} | {len(tvs)} | {mean_sd(tvs)} | {mean_sd(c_std)} | {mean_sd(c_w)} | {mean_sd(slope)} | "
                     f"{wall:.1f} |")
    lines.append("")
    lines.append("Per-component weight error (fraction - weight), mean over seeds, components sorted by std:")
    order = np.argsort(target.stds)
    lines.append("| component (std, weight) | " + " | ".join(rows) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in rows) + " |")
    for j in order:
        cells = " | ".join(f"{np.mean([e[j] for e in errs]):+.3f}" for _, errs, _, _ in rows.values())
        lines.append(f"| {j} ({target.stds[j]:.2f}, {target.weights[j]:.3f}) | {cells} |")
    return lines


def part_denoise(n: int, seeds: list[int]) -> list[str]:
    lines = ["| target | sigma_L | sampler | NFE | sliced W2 | change from the last step (paired) | floor | "
             "per-component variance ratio (min .. max) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for target in (sg.load_target("ring2d"), sg.load_target("gmm64"), tri()):
        floor = mean_sd([sg.sliced_w2_noise_floor(target, n, seed=1000 + s) for s in seeds])
        refs = [target.sample(n, torch.Generator().manual_seed(2000 + s)) for s in seeds]
        results = {("-", "exact", 0): [target.sample(n, torch.Generator().manual_seed(s)) for s in seeds]}
        for sigma_min in SIGMA_MINS:
            runs = [sg.sample(target, "langevin", n, seed=s, sigma_min=sigma_min, progress=False) for s in seeds]
            results[(f"{sigma_min:g}", "langevin", runs[0].nfe)] = [r.samples for r in runs]
            # final_denoise=True is this same chain plus langevin's last step, x + sigma_L^2 score(x, sigma_L)
            results[(f"{sigma_min:g}", "langevin + final denoise", runs[0].nfe + 1)] = \
                [r.samples + sigma_min**2 * target.score(r.samples, sigma_min) for r in runs]
        previous = None
        for (sigma_l, label, nfe), xs in results.items():
            w2 = [sg.sliced_w2(x, r) for x, r in zip(xs, refs)]
            change = mean_sd([a - b for a, b in zip(w2, previous)]) if label.endswith("final denoise") else ""
            previous = w2
            ratios = np.nanmean([variance_ratios(target, x) for x in xs], axis=0)
            lines.append(f"| {target.name} | {sigma_l} | {label} | {nfe} | {mean_sd(w2)} | {change} | {floor} | "
                         f"{np.nanmin(ratios):.2f} .. {np.nanmax(ratios):.2f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--long-seeds", type=int, default=2, help="how many of the seeds the T = 1000 runs use (default 2)")
    p.add_argument("--part", choices=["weights", "denoise", "both"], default="both")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"{datetime.date.today()}, scoregen {sg.__version__}, torch {torch.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} thread(s); n = {args.n} per run, seeds {args.seeds}; ± is the sd over seeds")
    if args.part in ("weights", "both"):
        print("\n".join(["", "### Mode weights on gmm64", ""] + part_weights(args.n, args.seeds, args.long_seeds)), flush=True)
    if args.part in ("denoise", "both"):
        print("\n".join(["", "### Final denoising (Langevin defaults)", ""] + part_denoise(args.n, args.seeds)))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
