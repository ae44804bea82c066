import json
import subprocess
import sys

import numpy as np
import pytest

from scoregen.cli import main


def test_sample_writes_float32_array_and_reports_nfe(tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", "--target", "ring2d", "--sampler", "ddim", "--steps", "20", "-n", "64",
                 "--seed", "3", "--out", str(out), "--no-progress"]) == 0
    arr = np.load(out)
    assert arr.shape == (64, 2) and arr.dtype == np.float32
    # ring2d samples sit near the circle of radius 2
    assert np.abs(np.linalg.norm(arr, axis=1) - 2.0).max() < 0.8
    text = capsys.readouterr().out
    assert "NFE 20" in text and "wall time" in text


def test_same_seed_same_file(tmp_path):
    paths = [tmp_path / f"{i}.npy" for i in range(2)]
    for p in paths:
        main(["sample", "--sampler", "ddpm", "--steps", "30", "-n", "16", "--seed", "7", "--out", str(p), "--no-progress"])
    np.testing.assert_array_equal(np.load(paths[0]), np.load(paths[1]))


def test_guided_sampling_lands_in_the_requested_class(tmp_path):
    out = tmp_path / "g.npy"
    main(["sample", "--sampler", "ddpm", "--steps", "100", "--label", "2", "--guidance-scale", "1", "-n", "200",
          "--out", str(out), "--no-progress"])
    arr = np.load(out)
    angle = np.arctan2(arr[:, 1], arr[:, 0])
    # class 2 of ring2d is the component at angle 2 * 2pi/8 = pi/2
    assert np.mean(np.abs(angle - np.pi / 2) < np.pi / 8) > 0.97


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sampler", "ddpm", "--eta", "0.5"], "--eta do(es) not apply to --sampler ddpm"),
        (["--sampler", "langevin", "--steps", "10"], "--steps do(es) not apply to --sampler langevin"),
        (["--guidance-scale", "2"], "--guidance-scale needs --label"),
        (["--label", "99"], "--label must be a class of ring2d"),
        (["--target", "nope"], "expected one of"),
        (["--steps", "0"], "expected a positive integer"),
    ],
)
def test_bad_sample_arguments_are_explained(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["sample", *argv, "--out", str(tmp_path / "x.npy"), "-n", "4"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_malformed_target_file_is_an_error_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"weights": [1, 1], "means": [[0.0], [1.0]], "stds": [0.1, -0.2]}))
    assert main(["sample", "--target", str(bad), "--out", str(tmp_path / "x.npy"), "-n", "4"]) == 2
    err = capsys.readouterr().err
    assert "std must be positive" in err and "bad.json" in err
    assert not (tmp_path / "x.npy").exists()


def test_user_target_file_is_sampled(tmp_path):
    spec = tmp_path / "two.json"
    spec.write_text(json.dumps({"weights": [0.25, 0.75], "means": [[-4.0], [4.0]], "stds": [0.5, 0.5]}))
    out = tmp_path / "two.npy"
    main(["sample", "--target", str(spec), "--sampler", "ddim", "--steps", "50", "-n", "2000", "--out", str(out), "--no-progress"])
    x = np.load(out)[:, 0]
    # fraction on the right mode ~ 0.75 +- 5 standard errors sqrt(0.75 * 0.25 / 2000) ~ 0.0097
    assert abs(np.mean(x > 0) - 0.75) < 5 * np.sqrt(0.75 * 0.25 / 2000)


def test_bench_prints_a_ranked_row_per_sampler_and_budget_and_writes_the_report(tmp_path, capsys):
    csv, out_dir = tmp_path / "b.csv", tmp_path / "report"
    assert main(["bench", "--model", "ring2d", "--budgets", "10,20", "-n", "300", "--csv", str(csv), "--out", str(out_dir),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in ("exact", "floor", "ddpm", "ddim", "langevin", "dpmpp_2m", "deis", "MMD^2", "comp. FD", "sliced W2",
                 "mode TV"):
        assert name in out
    lines = csv.read_text().strip().splitlines()
    assert len(lines) == 1 + 1 + 5 * 2  # header, exact, 5 samplers x 2 budgets
    assert lines[0].startswith("model,source,sampler,options,budget,nfe,")
    assert sorted(p.name for p in out_dir.iterdir()) == ["quality_vs_nfe.png", "quality_vs_time.png", "results.json",
                                                         "results.md"]
    report = json.loads((out_dir / "results.json").read_text())
    rows = report["results"][0]["rows"]
    assert [r["nfe"] for r in rows] == [0] + [10, 20] * 5  # every sampler spends its budget exactly
    assert report["versions"]["torch"] and report["machine"]


def test_bench_rejects_unknown_sampler(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--samplers", "ddpm,rk4"])
    assert "unknown ['rk4']" in capsys.readouterr().err


def test_module_entry_point_shows_help():
    out = subprocess.run([sys.executable, "-m", "scoregen.cli", "sample", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--steps-per-level" in out.stdout


def test_destinations_are_checked_before_any_work_and_errors_name_the_subcommand(tmp_path, capsys, monkeypatch):
    import scoregen.cli as cli

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr("scoregen.samplers.sample", no_sampling)
    (tmp_path / "a-file").write_text("x")
    for out, message in [(tmp_path, "is a folder, not a file"), (tmp_path / "a-file" / "x.npy", "is a file, not a folder"),
                         (tmp_path / ("x" * 300 + ".npy"), "bytes long"), (tmp_path / "x.txt", "must name a .npy file")]:
        with pytest.raises(SystemExit) as exc:
            cli.main(["sample", "--sampler", "ddim", "--steps", "3", "-n", "4", "--out", str(out), "--no-progress"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "scoregen sample: error: --out: " in err and message in err, err


def _subcommands(parser, path=()):
    """(path, parser) of every subcommand, nested ones (``pretrained build``) included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def test_help_says_what_every_option_does_and_its_default(capsys):
    """``scoregen CMD --help`` explains every option and shows the default of each one that takes a value ("default"
    in its help: argparse's "(default: X)", or the help's own words for a default decided elsewhere), or that it is
    required. Flags (store_true) need no default."""
    from scoregen.cli import HELP_FORMATTER, build_parser

    def flat(text: str) -> str:  # --help wraps lines, and may break them after a hyphen
        return " ".join(text.split()).replace("- ", "-")

    checked = 0
    for path, parser in _subcommands(build_parser()):
        assert parser.formatter_class is HELP_FORMATTER, path
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0
        shown = flat(capsys.readouterr().out)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:  # positionals, flags, --help
                continue
            text = formatter._expand_help(action)
            name = f"scoregen {' '.join(path)} {action.option_strings[-1]}"
            assert action.help and len(action.help) > 10, f"{name} has no help text"
            assert "(required)" in text if action.required else "default" in text, f"{name}'s help shows no default: {text!r}"
            assert flat(text) in shown, f"{name}: {text!r} is not what --help prints"
            checked += 1
    assert checked >= 40  # sample, train, pretrained build and bench


def test_tune_grid_writes_a_grid_that_sample_reads(tmp_path, capsys):
    """`scoregen tune-grid` fits a grid and writes it; `scoregen sample --sigmas FILE.json` runs exactly those levels,
    and gives the same samples as the levels passed by hand."""
    out = tmp_path / "grid.json"
    assert main(["tune-grid", "--target", "ring2d", "--sampler", "euler", "--steps", "3", "--max-evals", "20",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "endpoint error on fresh noise" in text
    sigmas = json.loads(out.read_text())["sigmas"]
    assert len(sigmas) == 4 and sigmas[-1] == 0.0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert main(["sample", "--target", "ring2d", "--sampler", "euler", "--sigmas", str(out), "-n", "50",
                 "--out", str(a), "--no-progress"]) == 0
    assert "NFE 3" in capsys.readouterr().out
    assert main(["sample", "--target", "ring2d", "--sampler", "euler", "--sigmas", ",".join(map(repr, sigmas)),
                 "-n", "50", "--out", str(b), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(a), np.load(b), rtol=1e-6, atol=1e-6)
    with pytest.raises(SystemExit):
        main(["sample", "--target", "ring2d", "--sampler", "euler", "--sigmas", str(tmp_path / "missing.json"),
              "-n", "5", "--out", str(b)])
    assert "no grid file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # stochastic samplers have no grid to fit
        main(["tune-grid", "--sampler", "ddpm", "--steps", "3", "--out", str(out)])
