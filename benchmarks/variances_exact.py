"""The reverse variances on exact mixtures: how tight the variational bound is (its gap to the closed-form -log p)
against the chain's length, and the sample quality of ddpm with each variance (sliced W2 to the exact mixture).

    python benchmarks/variances_exact.py

Prints two markdown tables (docs/likelihood.md and benchmarks/RESULTS.md quote them). A few minutes on one thread.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import scoregen as sg
from scoregen.metrics import sliced_w2_to_mixture
from scoregen.schedules import DiscreteVP
from scoregen.targets import GaussianMixture, load_target

VARIANCES = ("beta_tilde", "beta", "analytic")


def bound_gaps() -> None:
    """Bound minus exact -log p (nats per sample, mean +- SE over 512 samples) on a 2-D mixture, DDPM's linear schedule,
    `steps` levels spaced by diffusers' linspace."""
    target = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2], schedule=DiscreteVP.linear(1000))
    x = target.sample(512, generator=torch.Generator().manual_seed(1)).double()
    exact = -target.log_prob(x)
    model = sg.analytic_variance(target, target.sample(4096, generator=torch.Generator().manual_seed(2)), cache=False,
                                 progress=False)
    print("| levels (linspace) | " + " | ".join(f"gap, {v}" for v in VARIANCES) + " |")
    print("|---:|" + "---:|" * len(VARIANCES))
    for steps in (10, 30, 100, 300, 1000):
        cells = []
        for v in VARIANCES:
            gap = sg.vlb(model, x, steps=steps, spacing="linspace", variance=v, progress=False) - exact
            cells.append(f"{float(gap.mean()):.3g} +- {float(gap.std()) / math.sqrt(len(gap)):.2g}")
        print(f"| {steps} | " + " | ".join(cells) + " |", flush=True)


def sample_quality() -> None:
    """ddpm with each variance: sliced W2 to the exact mixture, mean +- SE over 3 seeds of 8192 samples."""
    print("\n| target, steps | " + " | ".join(VARIANCES) + " | floor |")
    print("|---|" + "---:|" * (len(VARIANCES) + 1))
    for name in ("gmm64", "ring2d"):
        target = load_target(name)
        model = sg.analytic_variance(target, target.sample(4096, generator=torch.Generator().manual_seed(6)),
                                     cache=False, progress=False)
        floor = np.mean([sliced_w2_to_mixture(target.sample(8192, generator=torch.Generator().manual_seed(s)), target)
                         for s in range(3)])
        for steps in (10, 20, 50, 100):
            cells = []
            for v in VARIANCES:
                w = [sliced_w2_to_mixture(sg.sample(model, "ddpm", n=8192, seed=s, steps=steps, variance=v,
                                                    progress=False).samples, target) for s in range(3)]
                cells.append(f"{np.mean(w):.3f} +- {np.std(w, ddof=1) / math.sqrt(3):.3f}")
            print(f"| {name}, {steps} | " + " | ".join(cells) + f" | {floor:.3f} |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    bound_gaps()
    sample_quality()
