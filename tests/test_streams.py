"""Sample i depends on (seed, i) alone: per-sample random streams (scoregen.streams), so that n = 100 once, 2 x 50,
3 x 33 + 1, or any batch size give the same samples, bit for bit, for every sampler (pc, which couples the samples of
fixed groups of indices, and the adaptive ode, which steps each sample on its own, too)."""

from __future__ import annotations

import warnings

import pytest
import torch

import scoregen as sg
from scoregen.streams import MAX_BLOCK, SampleStreams, block_seed, block_size, normal_

RING = sg.load_target("ring2d")
COND = sg.ClassifierGuidance(RING, RING.classifier, scale=2.0)

#: Short runs of each sampler: a few steps are enough to draw noise at every step.
OPTIONS = {"langevin": dict(levels=3, steps_per_level=2), "ddim": dict(steps=4, eta=0.7),
           "ode": dict(rtol=1e-5, atol=1e-5), "pc": dict(steps=4, corrector_steps=2),
           "edm": dict(steps=4, s_churn=10.0), "dpmpp_2m_sde": dict(steps=4, eta=1.0)}
#: The splits of 100 samples the issue names: one call, 2 x 50, 3 x 33 + 1 (index_offset places each part).
SPLITS = {"once": [100], "2x50": [50, 50], "3x33+1": [33, 33, 33, 1]}


def _run(sampler, n, offset, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # langevin's few levels are on purpose
        return sg.sample(RING, sampler, n, seed=11, index_offset=offset, progress=False, dtype=torch.float64,
                         **OPTIONS.get(sampler, dict(steps=4)), **kw).samples


@pytest.mark.parametrize("sampler", sorted(sg.SAMPLERS))
def test_every_sampler_gives_the_same_samples_however_the_indices_are_split(sampler):
    whole = _run(sampler, 100, 0)
    for name, parts in SPLITS.items():
        offsets = [sum(parts[:i]) for i in range(len(parts))]
        split = torch.cat([_run(sampler, k, o) for k, o in zip(parts, offsets)])
        assert torch.equal(split, whole), f"{sampler}, split {name}: not bit-identical"
    for batch_size in (7, 64):
        batched = _run(sampler, 100, 0, batch_size=batch_size)
        assert torch.equal(batched, whole), f"{sampler}, batch_size {batch_size}"


@pytest.mark.parametrize("sampler", ["ddpm", "pc", "langevin"])
def test_an_offset_run_is_the_same_rows_of_the_whole_run(sampler):
    """Rows [a, b) of a run equal a run of b - a samples at index_offset a, across the stream block boundary (1024
    for 2-d samples) too; another offset gives other samples."""
    assert block_size((2,)) == 1024
    whole = _run(sampler, 1100, 0)
    for a, b in ((30, 70), (1000, 1100), (1023, 1025), (1, 1100)):
        assert torch.equal(_run(sampler, b - a, a), whole[a:b]), (sampler, a, b)
    assert not torch.allclose(_run(sampler, 99, 1), whole[:99])


def test_pc_with_per_sample_labels_splits_at_its_groups():
    """pc couples the samples of a group (64 indices for 2-d data): with per-sample labels a split at multiples of 64
    gives the whole run's samples, whatever the batch size, and a split elsewhere is refused, not silently different."""
    from scoregen.samplers._common import sample_group

    G = sample_group((2,))
    assert sg.SAMPLERS["pc"].sample_group is sample_group and G == 64
    y = torch.arange(200) % 8
    kw = dict(seed=3, y=y, steps=4, progress=False, dtype=torch.float64)
    whole = sg.sample(COND, "pc", 200, **kw).samples
    parts = [sg.sample(COND, "pc", b - a, **dict(kw, y=y[a:b]), index_offset=a).samples
             for a, b in ((0, G), (G, 3 * G), (3 * G, 200))]
    assert torch.equal(torch.cat(parts), whole)
    batched = sg.sample(COND, "pc", 200, batch_size=70, **kw)  # cut at multiples of 128: 128 + 72 samples
    assert torch.equal(batched.samples, whole) and batched.batch_size == 128
    assert sg.sample(COND, "pc", 10, **dict(kw, y=y[:10]), batch_size=1000).batch_size == 10  # the samples drawn at once
    with pytest.raises(ValueError, match=f"groups of {G} indices.*multiple of {G}"):
        sg.sample(COND, "pc", 50, **dict(kw, y=y[50:100]), index_offset=50)


@pytest.mark.parametrize("sampler, options", [("ddim", dict(steps=5)), ("ode", dict(rtol=1e-6, atol=1e-6))])
def test_labels_and_guidance_follow_their_indices(sampler, options):
    """Per-sample labels split anywhere; ode too (its samples finish at their own steps, so the last rows' labels are
    looked up by row)."""
    y = torch.arange(60) % 8
    whole = sg.sample(COND, sampler, 60, seed=2, y=y, progress=False, **options).samples
    part = sg.sample(COND, sampler, 25, seed=2, y=y[35:], index_offset=35, progress=False, **options).samples
    assert torch.equal(part, whole[35:])


class Batches(sg.ScoreModel):
    """``model``, recording the batch size of every evaluation but the memory estimate's probe on one sample."""

    def __init__(self, model):
        self.model, self.shape, self.schedule, self.sizes = model, model.shape, model.schedule, []

    def eps(self, x, sigma, m=1.0, y=None):
        if x.shape[0] > 1:
            self.sizes.append(x.shape[0])
        return self.model.eps(x, sigma, m, y)


@pytest.mark.parametrize("sampler, n, batch_size, ranges", [
    ("ddim", 100, 30, [(0, 30), (30, 60), (60, 90), (90, 100)]),
    ("pc", 100, 30, [(0, 64), (64, 100)]),  # whole groups of 64
    ("pc", 257, 192, [(0, 192), (192, 257)]),  # the last range, 65 samples, is one padded batch of 128 as in the run
])
def test_batch_ranges_run_apart_give_a_networks_one_call_samples(sampler, n, batch_size, ranges):
    """A network's kernels may round differently in batches of other sizes, so a split must follow the batches:
    batch_ranges names them, and each run on its own (in any order, with the run's batch size) evaluates exactly
    that batch of the one call, and gives its samples bit for bit."""
    net, _ = sg.load_checkpoint("digits-ddpm")
    model = net.score_model()
    kw = dict(seed=7, steps=3, progress=False, batch_size=batch_size)
    assert sg.batch_ranges(model, sampler, n, batch_size=batch_size) == ranges
    one = Batches(net.score_model())
    whole = sg.sample(one, sampler, n, **kw).samples
    parts, apart = {}, Batches(net.score_model())
    for a, b in reversed(ranges):
        parts[a, b] = sg.sample(apart, sampler, b - a, index_offset=a, **kw).samples
    assert torch.equal(torch.cat([parts[r] for r in ranges]), whole)
    assert sorted(apart.sizes) == sorted(one.sizes)
    assert sg.batch_ranges(model, sampler, 10) == [(0, 10)]  # the default: the memory estimate's batch, here all
    with pytest.raises(ValueError, match="batch_size"):
        sg.batch_ranges(model, sampler, 10, batch_size=0)


def test_streams_draw_whole_blocks_and_keep_their_rows():
    shape = (3,)
    B = block_size(shape)
    a = SampleStreams(5, 0, 3 * B, shape)  # aligned: each block straight into the output
    b = SampleStreams(5, B - 2, 2 * B + 7, shape)  # straddling three blocks
    x, y = a.normal(), b.normal()
    assert torch.equal(y, x[B - 2:2 * B + 7])
    x2, y2 = a.normal(), b.normal()  # the second draw: each sample's own next draw
    assert torch.equal(y2, x2[B - 2:2 * B + 7]) and not torch.equal(x2, x)
    # block k's draw is its own generator's, seeded from (seed, k)
    g = torch.Generator().manual_seed(block_seed(5, 1))
    assert torch.equal(x[B:2 * B], torch.randn((B, *shape), generator=g))


def test_block_size_is_a_power_of_two_of_the_shape_alone():
    assert block_size((2,)) == block_size((64,)) == MAX_BLOCK
    assert block_size((3, 32, 32)) == 256 and block_size((3, 256, 256)) == 4 and block_size((3, 1024, 1024)) == 1
    for shape in [(1,), (5,), (3, 7, 7), (17, 3)]:
        b = block_size(shape)
        assert b & (b - 1) == 0 and 1 <= b <= MAX_BLOCK


def test_streams_check_their_arguments():
    with pytest.raises(ValueError, match="start < stop"):
        SampleStreams(0, 5, 5, (2,))
    with pytest.raises(ValueError, match="draw for 3 samples"):
        SampleStreams(0, 0, 3, (2,)).normal_(torch.empty(4, 2))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(normal_(torch.empty(3), g), torch.randn(3, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="pass seed, not generator"):
        sg.sample(RING, "ddim", 4, generator=torch.Generator(), index_offset=3, steps=2, progress=False)
    with pytest.raises(ValueError, match="index_offset"):
        sg.sample(RING, "ddim", 4, seed=0, index_offset=-1, steps=2, progress=False)


def _initial(model, z, **kw):
    """A "sampler" that returns its initial noise."""
    return z.clone()


def test_initial_noise_is_each_samples_first_draw_and_a_generator_still_draws_in_order():
    z = sg.sample(RING, _initial, 70, seed=9, progress=False).samples
    assert torch.equal(z, SampleStreams(9, 0, 70, (2,)).normal())
    g = torch.Generator().manual_seed(4)  # a caller's own generator: its first (n, *shape) draw, as before
    res = sg.sample(RING, _initial, 8, generator=g, progress=False)
    assert res.seed is None and torch.equal(res.samples, torch.randn((8, 2), generator=torch.Generator().manual_seed(4)))
