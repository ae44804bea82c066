"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # the guided example samples class 3 of ring2d: the component at angle 3 * 2pi/8
    import math

    import torch

    x = namespace["guided_res"].samples
    angle = torch.atan2(x[:, 1], x[:, 0])
    assert ((angle - 3 * math.pi / 4).abs() < math.pi / 8).float().mean() > 0.97
