"""`scoregen nll` and `scoregen bench` under torchrun: the statistics of K processes equal one process's.

* the likelihoods with ``index_offset``: ``vlb(x[a:b], index_offset=a)`` and ``ode_nll(x[a:b], index_offset=a)`` are
  rows [a, b) of the whole run bit for bit, whatever the batch size (the per-sample noise draws and probes depend on
  the sample's index in the whole data; the adaptive solver steps each sample on its own);
* :func:`~scoregen.likelihood.concat_results` of the pieces is the whole run's result;
* end to end, two processes (``python -m torch.distributed.run --standalone --nproc_per_node 2``, gloo on the CPU)
  against one: ``scoregen nll`` JSON numbers (mean, standard error, terms, NFE) equal to 1e-12 relative (they are
  in fact identical: rank 0 gathers the same per-sample values and reduces them in the same order), and ``scoregen
  bench`` metrics identical (rank 0 scores the gathered samples, which are the one-process samples bit for bit).
  Only rank 0 prints and writes. Each torchrun start costs about 5 s.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from scoregen.cli import main
from scoregen.likelihood import concat_results, ode_nll, vlb
from scoregen.targets import load_target

#: nll's summary statistics, two processes against one (float64 on the CPU; they come out identical).
NLL_RTOL = 1e-12


def _ring(n: int = 200) -> tuple:
    target = load_target("ring2d")
    return target, target.sample(n, generator=torch.Generator().manual_seed(0)).double()


# ------------------------------------------------------------------------------------------ index_offset
@pytest.mark.parametrize("bins", [None, 17])
def test_vlb_on_a_slice_with_its_index_offset_is_the_rows_of_the_whole_run(bins):
    target, x = _ring()
    if bins:  # on the grid of 17 values in [-2, 2]
        x = torch.round((x.clamp(-2, 2) + 2) * 4) / 4 - 2
    kw = dict(steps=40, seed=3, batch_size=64, bins=bins, data_range=(-2.0, 2.0), progress=False, details=True)
    whole = vlb(target, x, **kw)
    for a, b in [(0, 70), (70, 143), (143, 200)]:  # not on the 64-sample blocks of the noise draws
        part = vlb(target, x[a:b], index_offset=a, **kw)
        assert torch.equal(part.nats, whole.nats[a:b])
        for k, v in whole.terms.items():
            assert torch.equal(part.terms[k], v[a:b])
    assert not torch.equal(vlb(target, x[70:143], **kw).nats, whole.nats[70:143])  # without it: other draws


@pytest.mark.parametrize("kw", [dict(), dict(divergence="hutchinson", probes=2), dict(bins=17, data_range=(-2.0, 2.0))],
                         ids=["exact", "hutchinson", "dequantized"])
def test_ode_nll_on_a_slice_with_its_index_offset_is_the_rows_of_the_whole_run(kw):
    kw = dict(kw, rtol=1e-3, atol=1e-3)  # any tolerance: the rows are the same bits
    target, x = _ring(30)
    if "bins" in kw:  # on the grid of 17 values in [-2, 2]
        x = torch.round((x.clamp(-2, 2) + 2) * 4) / 4 - 2
    whole = ode_nll(target, x, seed=3, progress=False, **kw)
    a, b = 9, 21
    assert torch.equal(ode_nll(target, x[a:b], seed=3, index_offset=a, progress=False, **kw), whole[a:b])
    assert torch.equal(ode_nll(target, x, seed=3, batch_size=7, progress=False, **kw), whole)
    if "bins" in kw or "probes" in kw:  # without the offset: other draws
        assert not torch.equal(ode_nll(target, x[a:b], seed=3, progress=False, **kw), whole[a:b])


def test_index_offset_is_checked():
    target, x = _ring(8)
    with pytest.raises(ValueError, match="index_offset"):
        vlb(target, x, steps=5, index_offset=-1)


def test_concatenated_pieces_are_the_whole_result():
    target, x = _ring(130)
    kw = dict(steps=20, seed=1, progress=False, details=True)
    whole = vlb(target, x, **kw)
    pieces = [None] + [vlb(target, x[a:b], index_offset=a, **kw) for a, b in [(0, 65), (65, 130)]]  # None: an idle rank
    joined = concat_results(pieces)
    assert torch.equal(joined.nats, whole.nats) and joined.nfe == whole.nfe
    assert joined.to_dict() == whole.to_dict()
    with pytest.raises(ValueError, match="no results"):
        concat_results([None, None])


# ------------------------------------------------------------------------------------------ end to end
def _torchrun(args: list, cwd, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "scoregen", *args]
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def _close(a, b, rtol: float) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(u, v, rtol) for u, v in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-300)
    return a == b


def test_nll_on_two_processes_reports_the_one_process_numbers(tmp_path, capsys):
    argv = ["nll", "--target", "ring2d", "--method", "vlb", "-n", "200", "--steps", "100", "--batch-size", "64",
            "--no-progress"]  # 4 batches: ranks 0 and 1 take 2 each
    assert main([*argv, "--out", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    run = _torchrun([*argv, "--out", "two.json", "--plot", "two.png"], tmp_path)
    two = json.loads((tmp_path / "two.json").read_text())
    assert (tmp_path / "two.png").is_file()
    assert run.stdout.count("wrote two.json") == 1 and run.stdout.count("bits/dim   (") == 1  # rank 0 alone prints
    assert two.pop("processes") == 2
    for key in ("command", "wall_time"):
        one.pop(key), two.pop(key)
    assert _close(one, two, NLL_RTOL), (one, two)
    assert one["samples"] == 200 and one["nfe"] == 100


def test_bench_on_two_processes_scores_the_one_process_samples(tmp_path, capsys):
    argv = ["bench", "--target", "ring2d", "--samplers", "ddim,ddpm,pc", "--budgets", "6", "-n", "301", "--no-peers",
            "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    run = _torchrun([*argv, "--out", "two", "--batch-size", "70"], tmp_path)  # 5 batches (pc: of 128), shared
    assert run.stdout.count("scoregen bench: ring2d") == 1 and "samples/s" in run.stdout
    one, two = (json.loads((tmp_path / d / "results.json").read_text())["results"][0] for d in ("one", "two"))
    assert two.pop("ranks") == 2
    assert one["floors"] == two["floors"]
    assert len(one["rows"]) == len(two["rows"]) == 4
    for r1, r2 in zip(one["rows"], two["rows"]):
        assert (r1["source"], r1["sampler"], r1["budget"], r1["nfe"], r1["failed"]) == \
            (r2["source"], r2["sampler"], r2["budget"], r2["nfe"], r2["failed"])
        assert r1["metrics"] == r2["metrics"]  # exactly: the same samples, scored by the same code
        if r1["source"] == "scoregen":
            assert r2["samples_per_s"] == pytest.approx(301 / r2["wall_time"])
