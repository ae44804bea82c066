"""What the `ode` sampler's per-sample step control costs: scoregen's `ode` (scipy's RK45 tableau and step-size control,
one error norm and one step size per sample, so sample i depends on (seed, i) alone) against score-SDE's way, scipy's
RK45 on the whole batch flattened into one state (one error norm over the batch), from the same start, in the same
run, interleaved.

    python benchmarks/ode_per_sample.py [--repeats 3] [--out benchmarks/ode_per_sample.json]

Prints, per model: NFE, wall seconds and their ratios, how far apart the two sets of samples are (both solve the same
ODE to rtol = atol = 1e-5), and on the exact targets each one's error against a solve at rtol = atol = 1e-10.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from scipy import integrate

import scoregen as sg
from scoregen.samplers.grids import step_grid
from scoregen.streams import SampleStreams

TOL = 1e-5


def _batch_solve(model, n: int, seed: int) -> tuple:
    """score-SDE's ode sampler in VE coordinates: RK45 on the flattened batch, then x0_hat at the last level."""
    shape = (n, *model.shape)
    grid = step_grid(model, 2, "karras")  # the ode sampler's default ends
    s0, s1 = grid.s[0], grid.s[-2]
    z = SampleStreams(seed, 0, n, model.shape).normal()
    x = z * float(np.sqrt(grid.m[0] ** 2 + grid.sigma[0] ** 2)) / grid.m[0]
    start = time.perf_counter()

    def f(s, flat):
        with torch.no_grad():
            return model.eps(torch.from_numpy(flat).view(shape).float(), float(s)).double().reshape(-1).numpy()

    sol = integrate.solve_ivp(f, (s0, s1), x.double().reshape(-1).numpy(), method="RK45", rtol=TOL, atol=TOL)
    x = torch.from_numpy(sol.y[:, -1]).view(shape).float()
    with torch.no_grad():
        x = x - s1 * model.eps(x, s1)
    return x, sol.nfev + 1, time.perf_counter() - start


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample, the largest absolute difference."""
    return (a - b).abs().flatten(1).amax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    net, _ = sg.load_checkpoint("digits-ddpm")
    models = {"gmm64 (64-d)": (sg.load_target("gmm64"), 4096), "ring2d (2-d)": (sg.load_target("ring2d"), 4096),
              "digits-ddpm UNet (1x8x8)": (net.score_model(), 128)}
    rows = []
    for name, (model, n) in models.items():
        ours, theirs = [], []
        for r in range(args.repeats):  # interleaved: the machine's load hits both alike
            res = sg.sample(model, "ode", n, seed=r, rtol=TOL, atol=TOL, batch_size=n, progress=False)
            ours.append((res.samples, res.nfe, res.wall_time))
            theirs.append(_batch_solve(model, n, r))
        gap = torch.cat([_max_abs(a[0], b[0]) for a, b in zip(ours, theirs)])
        wall, wall_b = min(o[2] for o in ours), min(t[2] for t in theirs)
        nfe, nfe_b = float(np.mean([o[1] for o in ours])), float(np.mean([t[1] for t in theirs]))
        row = {"model": name, "n": n, "per_sample_nfe": nfe, "batch_nfe": nfe_b, "nfe_ratio": nfe / nfe_b,
               "per_sample_s": wall, "batch_s": wall_b, "wall_ratio": wall / wall_b,
               "max_abs_gap": gap.max().item(), "median_abs_gap": gap.median().item()}
        if isinstance(model, sg.GaussianMixture):  # the error of seed 0's samples against a tight solve
            tight = sg.sample(model, "ode", n, seed=0, rtol=1e-10, atol=1e-10, batch_size=n, progress=False).samples
            for key, x in (("per_sample", ours[0][0]), ("batch", theirs[0][0])):
                err = _max_abs(x, tight)
                row.update({f"{key}_error_max": err.max().item(), f"{key}_error_median": err.median().item()})
        rows.append(row)
    print(f"ode, RK45, rtol = atol = {TOL:g}: per-sample steps (scoregen) against one batch norm (score-SDE's "
          f"solve_ivp), best of {args.repeats} (torch threads: {torch.get_num_threads()})")
    print(f"{'model':26s} {'n':>5s} {'NFE':>13s} {'ratio':>6s} {'wall s':>15s} {'ratio':>6s} {'gap max / median':>20s}")
    for row in rows:
        print(f"{row['model']:26s} {row['n']:5d} {row['per_sample_nfe']:6.0f} / {row['batch_nfe']:4.0f} "
              f"{row['nfe_ratio']:6.2f} {row['per_sample_s']:7.2f} / {row['batch_s']:5.2f} {row['wall_ratio']:6.2f} "
              f"{row['max_abs_gap']:9.2e} / {row['median_abs_gap']:8.2e}")
    print("error against rtol = atol = 1e-10, max / median per sample: per-sample steps | one batch norm")
    for row in rows:
        if "batch_error_max" in row:
            print(f"{row['model']:26s} {row['per_sample_error_max']:9.2e} / {row['per_sample_error_median']:8.2e} | "
                  f"{row['batch_error_max']:9.2e} / {row['batch_error_median']:8.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/ode_per_sample.py", "tolerance": TOL, "machine": platform.platform(),
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
