"""Per-step sampler overhead: every sampler on a model whose network returns zeros (D = 64).

What is left is the sampler's own cost per step: level lookup, coefficient arithmetic, the update
and (for stochastic samplers) the noise draw. Prints a table of median microseconds per step at
batch 1 and batch 8192, next to the cost of one ``torch.randn`` of the batch (the floor of any
sampler that injects fresh noise each step).

    python benchmarks/sampler_overhead.py [--repeats 7] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
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


def zero_model() -> sg.NetworkScoreModel:
    return sg.NetworkScoreModel(lambda x, t: torch.zeros_like(x), sg.DiscreteVP.linear(), shape=(D,))


def per_step_us(model, sampler: str, batch: int, options: dict, repeats: int, device: str) -> float:
    sg.sample(model, sampler, batch, seed=0, progress=False, device=device, **options)  # warm-up
    times = []
    for r in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        res = sg.sample(model, sampler, batch, seed=r, progress=False, device=device, **options)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(res.wall_time / res.nfe * 1e6)
    return statistics.median(times)


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
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    model = zero_model()
    print(f"scoregen {sg.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}; median of {args.repeats} runs, microseconds per step")
    print(f"{'sampler':<20} {'batch 1':>10} {'batch 8192':>12}")
    for label, name, opts1, opts_big in CASES:
        small = per_step_us(model, name, 1, opts1, args.repeats, args.device)
        big = per_step_us(model, name, 8192, opts_big, args.repeats, args.device)
        print(f"{label:<20} {small:>10.1f} {big:>12.1f}")
    print(f"{'(one randn draw)':<20} {randn_us(1, args.repeats, args.device):>10.1f} {randn_us(8192, args.repeats, args.device):>12.1f}")


if __name__ == "__main__":
    main()
