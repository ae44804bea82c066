"""pytest-benchmark: per-step overhead of each sampler on a zero network (D = 64).

    pytest benchmarks/ --benchmark-enable -n 0

(-n 0: the default run is parallel under pytest-xdist, which turns pytest-benchmark off.)

One benchmark round is a whole sampling run; divide by the NFE in extra_info for a per-step figure.
"""

import pytest

import scoregen as sg
from sampler_overhead import CASES, D, zero_model


@pytest.mark.parametrize("batch", [1, 8192])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sampler_overhead(benchmark, case, batch):
    _, name, small, large = case
    options = small if batch == 1 else large
    model = zero_model()
    result = benchmark(lambda: sg.sample(model, name, batch, seed=0, progress=False, **options))
    benchmark.extra_info["nfe"] = result.nfe
    assert result.samples.shape == (batch, D)
