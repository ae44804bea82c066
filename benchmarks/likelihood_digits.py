"""Bits/dim of the built-in digits models: the variational bound with each fixed and analytic variance, and the
probability-flow ODE, each by `scoregen nll` (the commands are printed with the table); a plot of the bound's terms.

    python benchmarks/likelihood_digits.py [--n 512] [--out benchmarks/likelihood_digits]

Writes OUT/<model>-<method>[-<variance>].json (one per command), OUT/table.md and docs/likelihood-terms.png.
Takes about an hour on one CPU thread (the bound: 1000 levels x n evaluations per variance; the ODE: ~600 solver
evaluations with a Hutchinson divergence per batch of 256).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from scoregen.cli import main
from scoregen.likelihood import plot_terms

RUNS = [  # (model, method, variance)
    ("digits-ddpm", "vlb", "beta_tilde"), ("digits-ddpm", "vlb", "beta"), ("digits-ddpm", "vlb", "analytic"),
    ("digits-ddpm", "ode", None),
    ("digits-ncsn", "vlb", "beta_tilde"), ("digits-ncsn", "vlb", "beta"), ("digits-ncsn", "vlb", "analytic"),
    ("digits-ncsn", "ode", None),
]


def command(model: str, method: str, variance, n: int, out: str) -> list[str]:
    argv = ["nll", "--checkpoint", model, "--method", method, "-n", str(n), "--out", out]
    return argv + (["--variance", variance] if variance else [])


def run(argv: list[str]) -> dict:
    print("scoregen " + " ".join(argv), flush=True)
    if main(argv) != 0:
        sys.exit(f"failed: scoregen {' '.join(argv)}")
    with open(argv[argv.index("--out") + 1]) as f:
        return json.load(f)


def main_(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for model, method, variance in RUNS:
        path = os.path.join(args.out, f"{model}-{method}" + (f"-{variance}" if variance else "") + ".json")
        argv = command(model, method, variance, args.n, path)
        r = json.load(open(path)) if os.path.exists(path) and not args.rerun else run(argv)
        rows.append((model, method, variance, r))
    lines = ["| model | estimator | bits/dim | +- SE | NFE per sample | wall time | command |", "|---|---|---:|---:|---:|---:|---|"]
    for model, method, variance, r in rows:
        what = f"VLB, {variance}" if method == "vlb" else f"PF-ODE, {r['info']['divergence']}"
        cmd = r["command"].replace(f" --out {args.out}/", " --out ")
        lines.append(f"| {model} | {what} | {r['bits_per_dim']:.3f} | {r['sem_bits_per_dim']:.3f} | {r['nfe']} | "
                     f"{r['wall_time']:.0f} s | `{cmd}` |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    ddpm = [r for model, method, _, r in rows if model == "digits-ddpm" and method == "vlb"]
    plot_terms(ddpm, args.figure, title="digits-ddpm: the bound's terms by step (512 digits)")
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--out", default="benchmarks/likelihood_digits")
    p.add_argument("--figure", default="docs/likelihood-terms.png")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rerun", action="store_true", help="run every command again (default: reuse existing results)")
    main_(p.parse_args())
