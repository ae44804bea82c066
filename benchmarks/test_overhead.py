"""pytest-benchmark: per-step overhead of each sampler on a zero network (D = 64).

    pytest benchmarks/ --benchmark-enable

One benchmark round is a whole sampling run; divide by the NFE in extra_info for a per-step figure.
"""

import pytest
import torch

import scoregen as sg

CASES = {
    "ddpm": ("ddpm", {"steps": 100}),
    "ddim-eta0": ("ddim", {"steps": 100}),
    "ddim-eta1": ("ddim", {"steps": 100, "eta": 1.0}),
    "langevin": ("langevin", {"levels": 10, "steps_per_level": 10}),
}


@pytest.mark.parametrize("batch", [1, 8192])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sampler_overhead(benchmark, case, batch):
    name, options = CASES[case]
    model = sg.NetworkScoreModel(lambda x, t: torch.zeros_like(x), sg.DiscreteVP.linear(), shape=(64,))
    result = benchmark(lambda: sg.sample(model, name, batch, seed=0, progress=False, **options))
    benchmark.extra_info["nfe"] = result.nfe
    assert result.nfe == 100 and result.samples.shape == (batch, 64)
