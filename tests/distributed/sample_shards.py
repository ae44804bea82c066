"""Run by tests/test_distributed_sample.py under torchrun: every rank samples its shard of N indices with every sampler
through the Python API (sample(..., index_offset=...)) and saves it as OUT/<sampler>-<rank>.npy."""

import os
import sys
import warnings

import numpy as np
import torch

import scoregen as sg
from scoregen.distributed import setup, shard

N = 37
OPTIONS = {"langevin": dict(levels=3, steps_per_level=2), "ode": dict(rtol=1e-5, atol=1e-5),
           "pc": dict(steps=4, corrector_steps=1), "edm": dict(steps=4, s_churn=10.0)}

if __name__ == "__main__":
    out = sys.argv[1]
    context = setup()
    a, b = shard(N, context.rank, context.world_size)
    ring = sg.load_target("ring2d")
    for name in sorted(sg.SAMPLERS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sg.sample(ring, name, b - a, seed=5, index_offset=a, dtype=torch.float64, progress=False,
                            **OPTIONS.get(name, dict(steps=4)))
        np.save(os.path.join(out, f"{name}-{context.rank}.npy"), res.samples.numpy())
