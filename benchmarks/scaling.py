"""Samples per second against the number of torchrun processes, for `scoregen sample` on one machine.

    python benchmarks/scaling.py [--procs 1,2] [--repeats 2] [--out benchmarks/scaling]

For each model and each process count K, runs ``torchrun --standalone --nproc_per_node K -m scoregen sample ...``
(K = 1 runs plain ``scoregen sample``, the one-process baseline), times the whole command (start-up, sampling, the
merge) and reads the sampling wall time the command prints; each process gets ``cores / K`` torch threads. Checks
that every K wrote the same samples as K = 1, bit for bit. Writes OUT.json, OUT.md (a table) and OUT.png (samples/s
against K) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

JOBS = {
    "digits-ddpm UNet, ddim 50 steps, n = 2048": ["--checkpoint", "digits-ddpm", "--sampler", "ddim", "--steps", "50",
                                                  "-n", "2048", "--batch-size", "256"],
    "gmm64 (exact), ddpm 200 steps, n = 20000": ["--target", "gmm64", "--sampler", "ddpm", "--steps", "200",
                                                 "-n", "20000", "--batch-size", "2500"],
}


def _run(k: int, args: list[str], out: str, threads: int) -> tuple[float, float]:
    """(command wall time, the sampling wall time it reports) of one run with k processes."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "scoregen", "sample", *args, "--out", out, "--no-progress"]
    if k > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}", *cmd[1:]]
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    found = re.search(r"wall time ([0-9.]+) s", run.stdout)
    return total, float(found[1]) if found else total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="write OUT.json, OUT.md and OUT.png")
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, job in JOBS.items():
            n = int(job[job.index("-n") + 1])
            reference = None
            for k in procs:
                best_total = best_sampling = float("inf")
                for r in range(args.repeats):
                    out = os.path.join(tmp, f"k{k}-{r}.npy")
                    total, sampling = _run(k, job, out, max(1, cores // k))
                    best_total, best_sampling = min(best_total, total), min(best_sampling, sampling)
                    samples = np.load(out)
                    reference = samples if reference is None else reference
                    if not np.array_equal(samples, reference):
                        raise AssertionError(f"{name}: {k} processes wrote other samples than 1 process")
                rows.append({"job": name, "processes": k, "threads_per_process": max(1, cores // k),
                             "command_s": best_total, "sampling_s": best_sampling, "samples_per_s": n / best_sampling})
    for row in rows:
        base = next(r for r in rows if r["job"] == row["job"] and r["processes"] == procs[0])
        row["speedup"] = row["samples_per_s"] / base["samples_per_s"]
    lines = ["| job | processes | threads each | sampling wall time | samples/s | speed-up | whole command |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['job']} | {r['processes']} | {r['threads_per_process']} | {r['sampling_s']:.2f} s | "
              f"{r['samples_per_s']:.0f} | {r['speedup']:.2f}x | {r['command_s']:.1f} s |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        meta = {"command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]), "machine": platform.platform(),
                "cores": cores, "rows": rows}
        with open(args.out + ".json", "w") as f:
            json.dump(meta, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(table + "\n")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for name in JOBS:
            pts = [(r["processes"], r["samples_per_s"]) for r in rows if r["job"] == name]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("torchrun processes")
        ax.set_ylabel("samples / s")
        ax.set_xticks(procs)
        ax.set_title(f"scoregen sample on {cores} CPU cores", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out + ".png", dpi=120)


if __name__ == "__main__":
    main()
