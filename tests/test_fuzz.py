"""Fuzzing the command line: every malformed target file, edited checkpoint and random argument list ends in
success or a clear error (see tests/fuzz_cli.py for the generator and the invariants; docs/reliability.md)."""

import json
import pathlib
import subprocess
import sys

import pytest

DRIVER = pathlib.Path(__file__).with_name("fuzz_cli.py")


@pytest.mark.parametrize("seed", [0])
def test_fuzzed_cli_cases_end_in_success_or_a_clear_error(seed):
    # 450 cases take ~10 s here. Per case: 20 s before it counts as a hang; 4 GiB of address space over what the
    # process uses after importing torch before it counts as a memory blow-up. The outer timeout only guards
    # against a driver that hangs outside a case.
    run = subprocess.run([sys.executable, str(DRIVER), "--seed", str(seed), "--cases", "450", "--case-limit", "20",
                          "--memory-gb", "4"], capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    outcomes = report["outcomes"]
    # the generator must reach both ends: valid inputs that run, and each kind of malformed input refused
    for kind in ("target", "checkpoint", "argv"):
        assert outcomes.get(f"{kind}:error", 0) >= 20, outcomes
    assert sum(v for k, v in outcomes.items() if k.endswith(":ok")) >= 20, outcomes
    findings = "\n\n".join(f"case {f['case']} ({f['kind']}): {f['outcome']}\n  argv: {' '.join(f['argv'])}\n{f['detail']}"
                           for f in report["findings"])
    assert not report["findings"], f"{len(report['findings'])} of {report['cases']} cases failed:\n{findings}"
