"""Per-step sampler overhead: every sampler on a model whose network returns zeros (D = 64).

What is left is the sampler's own cost per step: level lookup, coefficient arithmetic, the update
and (for stochastic samplers) the noise draw. Prints a table of median microseconds per step at
batch 1 and batch 8192, next to the cost of one ``torch.randn`` of the batch (the floor of any
sampler that injects fresh noise each step). Each cell is "median / best" over the repeats: on CPU,
glibc's allocator occasionally returns the network's 2 MB output buffers to the OS and page-faults
them back, which makes single runs spiky (setting MALLOC_MMAP_THRESHOLD_=67108864 removes that).

    python benchmarks/sampler_overhead.py [--repeats 15] [--device cpu|cuda] [--baseline OTHER/scoregen]

``--baseline`` compares with another scoregen source tree (e.g. a ``git worktree`` of an older commit) in the
same process, the two alternating run by run, so that both see the same machine load: the table then shows
both and their difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

import torch

import scoregen as sg

D = 64
CASES = [  # (label, sampler, options at batch 1, options at batch 8192)
    ("ddpm", "ddpm", {}, {"steps": 100}),
    ("ddpm variance=beta", "ddpm", {"variance": "beta"}, {"steps": 100, "variance": "beta"}),
    ("ddim eta=0", "ddim", {"steps": 1000}, {"steps": 100}),
    ("ddim eta=1", "ddim", {"steps": 1000, "eta": 1.0}, {"steps": 100, "eta": 1.0}),
    ("langevin", "langevin", {"levels": 10, "steps_per_level": 100}, {"levels": 10, "steps_per_level": 10}),
]


def zero_model(package=sg) -> sg.NetworkScoreModel:
    return package.NetworkScoreModel(lambda x, t: torch.zeros_like(x), package.DiscreteVP.linear(), shape=(D,))


def load_baseline(path: str):
    """Another scoregen source tree (the folder holding its ``__init__.py``), imported as ``scoregen_baseline``."""
    spec = importlib.util.spec_from_file_location("scoregen_baseline", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    package = importlib.util.module_from_spec(spec)
    sys.modules["scoregen_baseline"] = package
    spec.loader.exec_module(package)
    return package


def per_step_us(runs, sampler: str, batch: int, options: dict, repeats: int, device: str) -> list[tuple[float, float]]:
    """(median, best) microseconds per step for each ``(package, model)`` in ``runs``, alternating run by run."""
    times = [[] for _ in runs]
    for package, model in runs:  # warm-up
        package.sample(model, sampler, batch, seed=0, progress=False, device=device, **options)
    for r in range(repeats):
        order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
        for k in order:
            package, model = runs[k]
            if device == "cuda":
                torch.cuda.synchronize()
            res = package.sample(model, sampler, batch, seed=r, progress=False, device=device, **options)
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(res.wall_time / res.nfe * 1e6)
    return [(statistics.median(t), min(t)) for t in times]


def randn_us(batch: int, repeats: int, device: str) -> float:
    g = torch.Generator(device).manual_seed(0)
    buf = torch.empty(batch, D, device=device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(20):
            buf.normal_(generator=g)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 20 * 1e6)
    return statistics.median(times), min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--baseline", help="another scoregen source tree to compare with, run alternately in this process")
    args = p.parse_args()
    runs = [(sg, zero_model())]
    if args.baseline:
        baseline = load_baseline(args.baseline)
        runs.insert(0, (baseline, zero_model(baseline)))
    print(f"scoregen {sg.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}; microseconds per step, median / best of {args.repeats} runs"
          + (f"; baseline {args.baseline} then this tree, alternating" if args.baseline else ""))
    cell = lambda med, best, wide: f"{med:>{wide}.1f} / {best:>{wide - 2}.1f}" if wide < 7 else f"{med:>{wide}.0f} / {best:>{wide - 2}.0f}"  # noqa: E731
    if not args.baseline:
        print(f"| {'sampler':<20} | {'batch 1':>13} | {'batch 8192':>15} |")
        print(f"| {'-' * 20} | {'-' * 12}: | {'-' * 14}: |")
    else:
        print(f"| {'sampler':<20} | {'batch':>5} | {'baseline':>15} | {'this tree':>15} | {'difference (median)':>20} |")
        print(f"| {'-' * 20} | ----: | {'-' * 14}: | {'-' * 14}: | {'-' * 19}: |")
    for label, name, o1, o2 in CASES:
        small = per_step_us(runs, name, 1, o1, args.repeats, args.device)
        large = per_step_us(runs, name, 8192, o2, args.repeats, args.device)
        if not args.baseline:
            print(f"| {label:<20} | {cell(*small[0], 6)} | {cell(*large[0], 7)} |")
            continue
        for batch, ((b_med, b_best), (t_med, t_best)) in ((1, small), (8192, large)):
            wide = 6 if batch == 1 else 7
            print(f"| {label:<20} | {batch:>5} | {cell(b_med, b_best, wide):>15} | {cell(t_med, t_best, wide):>15} | "
                  f"{t_med - b_med:>+10.1f} ({(t_med / b_med - 1) * 100:+.0f}%) |")
    if not args.baseline:
        (s_med, s_min), (b_med, b_min) = randn_us(1, args.repeats, args.device), randn_us(8192, args.repeats, args.device)
        print(f"| {'(one randn draw)':<20} | {s_med:>6.1f} / {s_min:>4.1f} | {b_med:>7.0f} / {b_min:>5.0f} |")


if __name__ == "__main__":
    main()
