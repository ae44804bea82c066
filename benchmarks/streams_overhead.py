"""What per-sample random streams cost: the per-step time of a stochastic sampler at batch 8192 with a seed
(scoregen.streams: one generator per block of indices, so sample i depends on (seed, i) alone) against a single
torch generator drawn in order (the draws then depend on the batch), in the same run, interleaved.

    python benchmarks/streams_overhead.py [--batch 8192] [--repeats 5] [--out benchmarks/streams_overhead.json]

Prints a table of per-step milliseconds and the ratio seed / generator per model (ddpm, every step draws noise).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import scoregen as sg


def _per_step(model, steps: int, batch: int, **source) -> float:
    start = time.perf_counter()
    sg.sample(model, "ddpm", batch, steps=steps, batch_size=batch, progress=False, **source)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    net, _ = sg.load_checkpoint("digits-ddpm")
    models = {"ring2d (2-d)": (sg.load_target("ring2d"), 50), "gmm64 (64-d)": (sg.load_target("gmm64"), 50),
              "digits-ddpm UNet (1x8x8)": (net.score_model(), 5)}
    rows = []
    for name, (model, steps) in models.items():
        _per_step(model, 2, args.batch, seed=0)  # warm-up: caches, level maps
        seeded, single = [], []
        for r in range(args.repeats):  # interleaved: the machine's load hits both alike
            seeded.append(_per_step(model, steps, args.batch, seed=r))
            single.append(_per_step(model, steps, args.batch, generator=torch.Generator().manual_seed(r)))
        s, g = min(seeded), min(single)
        rows.append({"model": name, "steps": steps, "seed_ms_per_step": 1e3 * s, "generator_ms_per_step": 1e3 * g,
                     "ratio": s / g})
    print(f"ddpm at batch {args.batch}, per step, best of {args.repeats} (torch threads: {torch.get_num_threads()})")
    print(f"{'model':28s} {'seed (streams)':>15s} {'one generator':>14s} {'ratio':>6s}")
    for row in rows:
        print(f"{row['model']:28s} {row['seed_ms_per_step']:12.3f} ms {row['generator_ms_per_step']:11.3f} ms "
              f"{row['ratio']:6.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/streams_overhead.py", "batch": args.batch,
                       "machine": platform.platform(), "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
