"""Per-step sampler overhead: every sampler on a model whose network returns zeros (D = 64).

What is left is the sampler's own cost per step: level lookup, coefficient arithmetic, the update
and (for stochastic samplers) the noise draw. Prints a table of median microseconds per step at
batch 1 and batch 8192, next to the cost of one ``torch.randn`` of the batch (the floor of any
sampler that injects fresh noise each step). Each cell is "median / best" over the repeats: on CPU,
glibc's allocator occasionally returns the network's 2 MB output buffers to the OS and page-faults
them back, which makes single runs spiky (setting MALLOC_MMAP_THRESHOLD_=67108864 removes that).

    python benchmarks/sampler_overhead.py [--repeats 15] [--device cpu|cuda]
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


def per_step_us(model, sampler: str, batch: int, options: dict, repeats: int, device: str) -> tuple[float, float]:
    sg.sample(model, sampler, batch, seed=0, progress=False, device=device, **options)  # warm-up
    times = []
    for r in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        res = sg.sample(model, sampler, batch, seed=r, progress=False, device=device, **options)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(res.wall_time / res.nfe * 1e6)
    return statistics.median(times), min(times)


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
    args = p.parse_args()
    model = zero_model()
    print(f"scoregen {sg.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}; microseconds per step, median / best of {args.repeats} runs")
    print(f"| {'sampler':<20} | {'batch 1':>13} | {'batch 8192':>15} |")
    print(f"| {'-' * 20} | {'-' * 12}: | {'-' * 14}: |")
    rows = [(label, per_step_us(model, name, 1, o1, args.repeats, args.device),
             per_step_us(model, name, 8192, o2, args.repeats, args.device)) for label, name, o1, o2 in CASES]
    rows.append(("(one randn draw)", randn_us(1, args.repeats, args.device), randn_us(8192, args.repeats, args.device)))
    for label, (s_med, s_min), (b_med, b_min) in rows:
        print(f"| {label:<20} | {s_med:>6.1f} / {s_min:>4.1f} | {b_med:>7.0f} / {b_min:>5.0f} |")


if __name__ == "__main__":
    main()
