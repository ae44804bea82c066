"""Every ```python block of the README and of docs/*.md runs as written, on its own, in a fresh interpreter.

A reader copies one block, not the page: each block runs alone (its own Python process, in its own empty working
folder, which is also its TMPDIR), so a block that leans on an import or a variable of an earlier block fails
here. The blocks run in parallel, as many at a time as there are cores, at most 4 (``SCOREGEN_DOC_JOBS``
overrides), and each test waits for its own block; under pytest-xdist a block starts when its test does, on that
test's worker. Some blocks promise a result: ``CHECKS`` appends assertions on their variables.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A guard against hangs only: the slowest block takes about 15 s here.
HANG_LIMIT_S = 1800

# (page, a line the block contains) -> assertions appended to that block, run in its namespace.
CHECKS = {
    ("samplers.md", "grid = sg.tune_grid("): (
        # the search beats every fixed spacing on fresh noise, and the run spends exactly its 10 evaluations
        'assert grid.info["chosen"] == "optimized" and len(grid) == 10 and res.nfe == 10, grid.info\n'
    ),
    ("README.md", "guided_digits = "): (
        # classifier-guided samples of the NCSN network are the classes asked for
        'assert report["requested_rate"] > 0.8, report\n'
    ),
    ("README.md", "guided_res = "): (
        # the guided example samples class 3 of ring2d: the component at angle 3 * 2pi/8
        "import math\n"
        "angle = guided_res.samples[:, 1].atan2(guided_res.samples[:, 0])\n"
        "assert ((angle - 3 * math.pi / 4).abs() < math.pi / 8).float().mean() > 0.97\n"
    ),
    ("README.md", "train(net, x, None, TrainConfig("): (
        "assert res.samples.shape == (500, 2) and bool(res.samples.isfinite().all())\n"
    ),
    ("README.md", "res = sg.sample(target, \"ddim\""): (
        "assert sg.mode_tv(res.samples, target) < 0.1\n"
    ),
}
# Imports that only the test extra provides: a block needing a missing one is skipped, not failed.
OPTIONAL = {"diffusers", "yaml"}


def python_blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


BLOCKS = [(page, i, block) for page in PAGES for i, block in enumerate(python_blocks(page))]
IDS = [f"{page.name}-block{i + 1}" for page, i, _ in BLOCKS]


def test_the_pages_keep_their_examples_and_every_check_finds_its_block():
    counts = {page.name: len(python_blocks(page)) for page in PAGES}
    assert counts["README.md"] >= 5 and counts["interop.md"] >= 5, counts
    for (name, marker) in CHECKS:
        found = [i for page, i, block in BLOCKS if page.name == name and marker in block]
        assert len(found) == 1, f"the check for {name}'s block with {marker!r} matches {len(found)} blocks"


def test_the_readme_mixture_file_is_saved_as_the_command_line_examples_name_it(tmp_path, monkeypatch):
    """The README's JSON mixture is the my_mixture.json its command-line examples sample: it says so, and it samples."""
    from scoregen.cli import main

    text = (ROOT / "README.md").read_text()
    (mixture,) = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    before = text[:text.index("```json")].rstrip().rsplit("\n\n", 1)[-1]  # the paragraph before it
    assert "my_mixture.json" in before, before
    commands = [line for line in text.splitlines() if line.startswith("scoregen ") and "my_mixture.json" in line]
    assert commands and text.index(commands[0]) > text.index("```json")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_mixture.json").write_text(mixture)
    for command in commands:  # as written, but 200 samples
        argv = command.split()[1:]
        argv[argv.index("-n") + 1] = "200"
        assert main([*argv, "--no-progress"]) == 0
    assert (tmp_path / "x.npy").exists()


def _missing(block: str) -> list[str]:
    imported = set(re.findall(r"^\s*(?:import|from)\s+(\w+)", block, flags=re.M))
    return sorted(m for m in imported & OPTIONAL if importlib.util.find_spec(m) is None)


def _run(source: str, folder: pathlib.Path) -> subprocess.CompletedProcess:
    (folder / "block.py").write_text(source)  # a file, so that a traceback quotes the failing line
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(folder), "MPLBACKEND": "Agg",
           "SCOREGEN_CACHE": str(folder / "cache")}  # optimised grids: searched afresh, never in ~/.cache
    return subprocess.run([sys.executable, "block.py"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=HANG_LIMIT_S)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Futures(dict):
    """{index in BLOCKS: future of its result}; a block not started yet is started when its test asks for it."""

    def __init__(self, start):
        super().__init__()
        self._start = start

    def __missing__(self, k):
        self[k] = self._start(k)
        return self[k]


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Every selected runnable block started at once on a small pool; {index in BLOCKS: future of its result}.

    Under pytest-xdist a worker runs only some of these tests, and which ones is not known here (session.items lists
    them all): there each block starts when its test asks for it, and the workers are the parallelism."""
    jobs = int(os.environ.get("SCOREGEN_DOC_JOBS", "0")) or min(4, _cores())
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)

    def start(k):
        page, i, block = BLOCKS[k]
        checks = "".join(check for (name, marker), check in CHECKS.items() if name == page.name and marker in block)
        source = block + ("\n# the test's checks\n" + checks if checks else "")
        return pool.submit(_run, source, tmp_path_factory.mktemp(f"{page.stem}-{i + 1}"))

    futures = _Futures(start)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        selected = {item.callspec.params["k"] for item in request.session.items
                    if getattr(item, "originalname", None) == "test_block_runs_on_its_own"
                    and item.module is sys.modules[__name__]}
        for k, (page, i, block) in enumerate(BLOCKS):
            if k in selected and not _missing(block):
                futures[k] = start(k)
    yield futures
    for future in futures.values():
        future.cancel()
    pool.shutdown(wait=True)


@pytest.mark.parametrize("k", range(len(BLOCKS)), ids=IDS)
def test_block_runs_on_its_own(runs, k):
    page, i, block = BLOCKS[k]
    missing = _missing(block)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install 'scoregen[test]')")
    run = runs[k].result()
    first = block.strip().splitlines()[0]
    assert run.returncode == 0, (f"{page.name}, python block {i + 1} (starting {first!r}) failed on its own:\n"
                                 f"{run.stderr[-4000:]}")
