"""Progress off a terminal: plain lines at a steady interval and a final line; silence when asked; tqdm on a terminal."""

import io
import os
import re
import subprocess
import sys
import time

import pytest
from tqdm.auto import tqdm

import scoregen as sg
from scoregen._progress import INTERVAL_ENV, progress, track

LINE = re.compile(r"^job: (\d+)/10 steps \((\d+)%\), \d+:\d\d:\d\d elapsed(, ~\d+:\d\d:\d\d left)?(, loss=[0-9.]+)?$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Captured:
    """What the code under test wrote to stderr (pytest's capture: not a terminal)."""

    def __init__(self, capsys):
        self.capsys, self.text = capsys, ""

    def getvalue(self) -> str:
        self.text += self.capsys.readouterr().err
        return self.text

    def truncate(self, _size: int = 0) -> None:
        self.getvalue()
        self.text = ""


@pytest.fixture
def stderr(monkeypatch, capsys):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    return Captured(capsys)


def test_off_a_terminal_lines_come_at_the_interval_then_a_final_line(stderr):
    t0 = time.monotonic()
    with progress(10, None, "job", interval=0.2) as bar:
        for _ in range(10):
            time.sleep(0.05)
            bar.update()
            bar.set_postfix(loss="0.1234")
    took = time.monotonic() - t0
    lines = stderr.getvalue().splitlines()
    # >= 0.5 s of work at one line per 0.2 s: two lines (more on a busy machine), then the final one
    assert 2 <= len(lines) - 1 <= took / 0.2, (took, lines)
    for line in lines[:-1]:
        assert LINE.match(line), line
    assert "~" in lines[0] and "left" in lines[0] and "loss=0.1234" in lines[0]
    assert re.match(r"^job: done, 10/10 steps \(100%\) in 0:00:0\d, [0-9.]+ steps/s, loss=0.1234$", lines[-1]), lines[-1]


def test_interval_from_the_environment_and_resumed_counts(stderr, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with progress(10, None, "job", initial=4) as bar:
        for _ in range(6):
            bar.update()
    lines = stderr.getvalue().splitlines()
    assert [LINE.match(line).group(1) for line in lines[:-1]] == ["5", "6", "7", "8", "9", "10"]
    assert lines[-1].startswith("job: done, 10/10 steps (100%) in ")


def test_a_bad_interval_variable_falls_back_to_the_default(stderr, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with progress(10, None, "job") as bar:
        bar.update(10)
    assert stderr.getvalue() == ""  # 30 s default: a quick job says nothing


def test_a_job_shorter_than_the_interval_prints_nothing(stderr):
    with progress(10, None, "job", interval=60) as bar:
        bar.update(10)
    assert stderr.getvalue() == ""


def test_progress_false_is_silent(stderr, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with progress(10, False, "job") as bar:
        bar.update(5)
        bar.set_postfix(loss=1.0)
    assert stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress(10, False, "job") as bar:
        bar.update(5)
    assert sys.stderr.getvalue() == ""


def test_an_interrupted_job_says_where_it_stopped(stderr):
    with pytest.raises(KeyboardInterrupt):
        with progress(10, None, "job", interval=0) as bar:
            bar.update(3)
            raise KeyboardInterrupt
    assert stderr.getvalue().splitlines()[-1].startswith("job: stopped at 3/10 steps (30%) after 0:00:00")


def test_on_a_terminal_and_with_progress_true_a_tqdm_bar(monkeypatch, stderr):
    with progress(10, True, "job", leave=True) as bar:  # off a terminal, but asked for
        assert isinstance(bar, tqdm)
        bar.update(10)
    assert "10/10" in stderr.getvalue() and "\n" not in stderr.getvalue().strip()  # a bar, not lines
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(10, None, "job") as bar:
        assert isinstance(bar, tqdm)
        bar.update(10)
    assert "10/10" in terminal.getvalue()


def test_track_counts_items_and_an_unknown_total(stderr):
    assert list(track(range(4), None, "job", interval=0)) == [0, 1, 2, 3]
    lines = stderr.getvalue().splitlines()
    assert lines[0].startswith("job: 1/4 steps (25%), ") and lines[-1].startswith("job: done, 4/4 steps (100%) in ")
    with progress(None, None, "stream", "batch", interval=0) as bar:
        bar.update(2)
    lines = stderr.getvalue().splitlines()
    assert re.match(r"^stream: 2 batches, 0:00:00 elapsed$", lines[-2]), lines[-2]
    assert re.match(r"^stream: done, 2 batches in 0:00:00", lines[-1]), lines[-1]


def test_an_update_costs_well_under_a_microsecond_between_lines(stderr):
    with progress(100_000, None, "job", interval=60) as bar:
        t0 = time.perf_counter()
        for _ in range(100_000):
            bar.update()
        took = time.perf_counter() - t0
    assert took < 0.5, f"{took:.3f} s for 1e5 updates"  # about 0.03 s here; a sampler step costs >= 20 us
    assert stderr.getvalue() == ""


def test_samplers_report_off_a_terminal(stderr, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    sg.sample(sg.load_target("ring2d"), "ddim", n=4, seed=0, steps=5)
    lines = stderr.getvalue().splitlines()
    assert lines[0].startswith("ddim: 1/5 steps (20%), ") and lines[-1].startswith("ddim: done, 5/5 steps (100%)")
    stderr.truncate(0)
    sg.sample(sg.load_target("ring2d"), "ddim", n=4, seed=0, steps=5, progress=False)
    assert stderr.getvalue() == ""


def test_cli_train_with_stderr_piped_prints_progress_lines(tmp_path):
    env = {**os.environ, INTERVAL_ENV: "0", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "scoregen.cli", "train", "--data", "ring2d", "--objective", "ddpm",
                          "--steps", "4", "--batch-size", "16", "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("train ddpm: ")]
    assert len(lines) == 5, run.stderr
    assert re.match(r"^train ddpm: 1/4 steps \(25%\), 0:00:0\d elapsed, ~0:00:\d\d left, loss=[0-9.]+$", lines[0]), lines
    assert re.match(r"^train ddpm: done, 4/4 steps \(100%\) in 0:00:\d\d, [0-9.]+ steps/s, loss=[0-9.]+$", lines[-1]), lines


def test_cli_no_progress_prints_nothing(tmp_path, stderr, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    from scoregen.cli import main

    assert main(["train", "--data", "ring2d", "--objective", "ddpm", "--steps", "4", "--batch-size", "16",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["sample", "--target", "ring2d", "--sampler", "ddim", "--steps", "5", "-n", "4",
                 "--out", str(tmp_path / "x.npy"), "--no-progress"]) == 0
    assert stderr.getvalue() == ""
    assert main(["sample", "--target", "ring2d", "--sampler", "ddim", "--steps", "5", "-n", "4",
                 "--out", str(tmp_path / "x.npy")]) == 0
    assert stderr.getvalue().splitlines()[-1].startswith("ddim: done, 5/5 steps (100%) in ")
