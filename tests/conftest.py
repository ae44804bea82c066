"""Settings every test module shares: CPU threads under pytest-xdist, and a private grid/estimate cache per test.

The default run is parallel (``-n auto --dist worksteal`` in pyproject.toml's addopts: one pytest-xdist worker
process per core). A module fixture runs once on each worker that needs it: a costly one (a training run, a torchrun
start) serves one test that checks everything it produces. Each worker then gets its share of the cores, max(1, cores // workers) torch intra-op threads
(1 on the 2-core development machine), and so do the Python subprocesses that tests start (OMP_NUM_THREADS and
MKL_NUM_THREADS are set in the worker's environment, which they inherit), so that the workers do not
oversubscribe the cores. A thread count set in the environment beforehand is kept. A serial run (``-n 0``) keeps
torch's defaults.

``-n 0`` or ``-p no:xdist`` runs the suite in this process (e.g. for a debugger; ``--pdb`` does so by itself with
``-n auto``), as does a virtual environment without pytest-xdist (the header says so).
"""

from __future__ import annotations

import hashlib
import os

import pytest

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CACHE_ENV = "SCOREGEN_CACHE"  # scoregen.samplers.tune.CACHE_ENV, not imported: conftest loads before scoregen


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pytest_addoption(parser, pluginmanager):
    """Without pytest-xdist (``-p no:xdist``, or not installed) the addopts' ``--numprocesses``/``--dist`` are
    accepted and ignored, and the suite runs serially, saying so in its header."""
    if not pluginmanager.has_plugin("xdist"):
        group = parser.getgroup("xdist", "pytest-xdist is not loaded: these options are ignored")
        group.addoption("--numprocesses", dest="numprocesses", default=None, help="ignored (pytest-xdist not loaded)")
        group.addoption("--dist", dest="dist", default="no", help="ignored (pytest-xdist not loaded)")


def pytest_report_header(config):
    if not config.pluginmanager.has_plugin("xdist"):
        return "pytest-xdist not loaded (-p no:xdist, or not installed): the tests run serially in this process"


def pytest_configure(config):
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not os.environ.get("PYTEST_XDIST_WORKER") or not workers:
        return  # not an xdist worker: a serial run keeps torch's defaults
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, _cores() // max(1, int(workers))))
    for var in THREAD_VARS:
        os.environ.setdefault(var, threads)  # the tests' subprocesses inherit them
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(autouse=True)
def _private_scoregen_cache(request, tmp_path_factory):
    """$SCOREGEN_CACHE (optimised grids, cached estimates) names a folder of this test's own, created only if
    something is written there: no test reads or writes ~/.cache, and none sees another's entries, whatever the order
    or the worker. A test that wants its own folder sets the variable itself (monkeypatch), as before."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_.[]" else "_" for c in request.node.name)[:60]
    folder = os.path.join(tmp_path_factory.getbasetemp(), "scoregen-cache", f"{name}-{digest}")
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = folder
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before
