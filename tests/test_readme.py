"""The README's and docs' Python examples run as written, in order, in one namespace per page."""

import math
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_blocks(page: pathlib.Path) -> dict:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 3, f"{page} lost its examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    return namespace


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace = run_blocks(ROOT / "README.md")
    # the guided example samples class 3 of ring2d: the component at angle 3 * 2pi/8
    x = namespace["guided_res"].samples
    angle = torch.atan2(x[:, 1], x[:, 0])
    assert ((angle - 3 * math.pi / 4).abs() < math.pi / 8).float().mean() > 0.97
    # the digits example: classifier-guided samples of the NCSN network are the classes asked for
    assert namespace["report"]["requested_rate"] > 0.8


def test_interop_page_python_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    run_blocks(ROOT / "docs" / "interop.md")
