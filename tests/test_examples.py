"""The scripts in examples/ run and print what they promise."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("target", ["ring2d", str(EXAMPLES / "two_classes.json")])
def test_swap_samplers_example_runs(target):
    out = subprocess.run([sys.executable, str(EXAMPLES / "swap_samplers.py"), "--target", target, "-n", "400"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for word in ("ddpm", "ddim", "langevin", "guided to class"):
        assert word in out.stdout
    purities = [float(line.split("class purity ")[1].split(",")[0]) for line in out.stdout.splitlines() if "class purity" in line]
    assert len(purities) == 2 and min(purities) > 0.9
