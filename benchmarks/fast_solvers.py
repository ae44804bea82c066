"""Fast sampling at 5, 10 and 20 NFE: scoregen's solvers and step grids beside diffusers' and k-diffusion's, same run.

The target is issue 10's: a 64-dimensional mixture of 10 Gaussians under DDPM's linear schedule (T = 1000, betas
1e-4..0.02) with its exact eps as the model, so every sampler's error is its own discretisation error alone.
Weights proportional to 1..10; means ``(torch.rand(10, 64, generator=manual_seed(0), float64) * 2 - 1) * 0.8``; stds
``linspace(0.1, 0.2, 10)``. Quality: sliced W2 (512 random projections, seed 0) between N = 8192 samples and a fresh
exact sample set of the same size, averaged over seeds 0, 1, 2 (the exact set of seed k is drawn from seed 1000 + k);
the noise floor is the same statistic for exact samples.

Every scoregen sampler runs at each budget with every spacing (``optimized`` is searched once per sampler and
budget, for the deterministic samplers, and cached in ``$SCOREGEN_CACHE``); every peer (diffusers' 8 schedulers, k-diffusion's samplers on the wrapper's grid and on the
Karras grid) runs through ``scoregen.bench.peers``. Results: a table of the best of each library per budget, and
every run in ``--out`` (JSON).

    python benchmarks/fast_solvers.py [--budgets 5 10 20] [--seeds 0 1 2] [--n 8192] [--no-optimized] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
import warnings

import torch

import scoregen as sg
from scoregen.bench.peers import peers_for
from scoregen.bench.run import budget_options
from scoregen.samplers import SAMPLERS, SPACINGS

#: Stochastic samplers: ``spacing="optimized"`` fits deterministic endpoints only.
STOCHASTIC = ("ddpm", "dpmpp_2m_sde", "euler_maruyama", "pc")
#: Variants run beside the defaults: (label, sampler, options).
VARIANTS = [("dpmpp_3m[taylor]", "dpmpp_3m", {"coefficient": "taylor"}),
            ("ipndm[variable]", "ipndm", {"variable_step": True})]


def issue_target() -> sg.GaussianMixture:
    means = (torch.rand(10, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1) * 0.8
    weights = torch.arange(1, 11, dtype=torch.float64)
    return sg.GaussianMixture(weights / weights.sum(), means, torch.linspace(0.1, 0.2, 10, dtype=torch.float64),
                              name="issue10-gmm64")


def quality(samples: torch.Tensor, target: sg.GaussianMixture, seed: int) -> float:
    exact = target.sample(len(samples), torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    return sg.sliced_w2(samples.double(), exact, projections=512, seed=0)


def scoregen_runs(target, budgets, spacings, n):
    runs = [(name, name, {}) for name in SAMPLERS if name not in ("langevin", "ode")] + VARIANTS
    for label, name, extra in runs:
        for nfe in budgets:
            base = budget_options(name, nfe, target)
            for spacing in spacings:
                if name in STOCHASTIC and spacing == "optimized":
                    continue
                opts = {**base, **extra, "spacing": spacing}
                yield "scoregen", f"{label} {spacing}", nfe, (lambda s, o=opts, nm=name: sg.sample(
                    target, nm, n, seed=s, dtype=torch.float64, progress=False, **o))


def peer_runs(target, budgets, n):
    peers, skipped = peers_for(target)
    for reason in skipped:
        print("skipped peer:", reason, file=sys.stderr)
    for peer in peers:
        for nfe in budgets:
            if nfe < peer.min_nfe:
                continue
            yield peer.library, peer.name, nfe, (lambda s, p=peer, b=nfe: p.run(b, n, s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--no-optimized", action="store_true", help="skip spacing='optimized' (its search)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--samplers", nargs="*", help="only these scoregen samplers")
    ap.add_argument("--spacings", nargs="*", help="only these spacings")
    ap.add_argument("--out", default="fast_solvers.json")
    args = ap.parse_args()

    target = issue_target()
    spacings = [s for s in (args.spacings or SPACINGS) if not (args.no_optimized and s == "optimized")]
    floor = statistics.mean(quality(target.sample(args.n, torch.Generator().manual_seed(2000 + s), dtype=torch.float64),
                                    target, s) for s in args.seeds)
    print(f"noise floor (exact samples): {floor:.4f}")
    jobs = list(scoregen_runs(target, args.budgets, spacings, args.n))
    if args.samplers:
        jobs = [j for j in jobs if j[1].split(" ")[0] in args.samplers]
    if not args.no_peers:
        jobs += list(peer_runs(target, args.budgets, args.n))
    rows = []
    for library, name, nfe, run in jobs:
        values, spent, wall, error = [], 0, 0.0, None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for s in args.seeds:
                    res = run(s)
                    spent, wall = res.nfe, wall + res.wall_time
                    values.append(quality(res.samples, target, s))
        except (ValueError, FloatingPointError, RuntimeError) as e:
            error = f"{type(e).__name__}: {e}"[:200]
        value = statistics.mean(values) if values and all(math.isfinite(v) for v in values) else math.inf
        rows.append({"library": library, "name": name, "budget": nfe, "nfe": spent, "sw2": value,
                     "seeds": values, "wall_time": wall, "error": error})
        print(f"{library:12s} {name:32s} NFE {nfe:3d} ({spent:3d})  sliced W2 {value:.4f}" + (f"  [{error}]" if error else ""),
              flush=True)

    print("\n| NFE | " + " | ".join(f"best {lib}" for lib in ("diffusers", "k-diffusion", "scoregen")) + " |")
    print("|---|---|---|---|")
    for nfe in args.budgets:
        cells = []
        for lib in ("diffusers", "k-diffusion", "scoregen"):
            mine = [r for r in rows if r["library"] == lib and r["budget"] == nfe and r["nfe"] <= nfe and math.isfinite(r["sw2"])]
            best = min(mine, key=lambda r: r["sw2"]) if mine else None
            cells.append(f"{best['sw2']:.4f} ({best['name']})" if best else "-")
        print(f"| {nfe} | " + " | ".join(cells) + " |")
    with open(args.out, "w") as f:
        json.dump({"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                   "torch": torch.__version__, "n": args.n, "seeds": args.seeds, "floor": floor, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
