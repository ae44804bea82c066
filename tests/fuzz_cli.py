"""A seeded fuzzer for the command line: malformed target files, edited checkpoints and random argument lists.

Run as a script (``python tests/fuzz_cli.py --seed 0 --cases 300``; ``tests/test_fuzz.py`` does it in a
child process under a memory limit). Every case runs ``scoregen.cli.main(argv)`` in this process and must end
in one of two ways:

* success: exit status 0, and every .npy file the case asked for holds only finite numbers;
* a clear error: exit status 2 with ``error:`` on stderr (``scoregen CMD: error: ...`` or argparse's usage error).

Anything else is a finding: an exception escaping ``main`` (a traceback), another exit status, a case running
past its time limit (a hang), a MemoryError (the process runs under RLIMIT_AS), or exit 0 with non-finite
output. Prints one JSON object: the number of cases, their outcomes, and the findings with their argv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

import numpy as np

JUNK = [None, True, False, 0, -1, 1, 2.5, -0.0, 1e308, -1e308, 1e-320, 10**30, "", "abc", "NaN", "1e3", [], {}, [[]],
        [1], [[1, 2], [3]], {"a": 1}, [None], ["x"], [1e9], [True, False], [[float("nan")]]]
BAD_NUMBERS = ["0", "-1", "nan", "inf", "-inf", "1e309", "", "abc", "2.5", "1e3", "99999999999999999999999", "0x10",
               "True", "-0", " 3", "1_000"]


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


# ------------------------------------------------------------------------------------------ target files
def _valid_mixture(rng: random.Random) -> dict:
    k, d = rng.randint(1, 4), rng.randint(1, 3)
    spec = {"weights": [rng.uniform(0.1, 1) for _ in range(k)],
            "means": [[rng.uniform(-3, 3) for _ in range(d)] for _ in range(k)],
            "stds": [rng.uniform(0.1, 1) for _ in range(k)]}
    if rng.random() < 0.5:
        spec["labels"] = [i % rng.randint(1, k) for i in range(k)]
    return spec


def _mutate(rng: random.Random, obj, depth: int = 0):
    """A copy of a JSON value with one random change somewhere inside it."""
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        key = rng.choice(sorted(obj))
        out = dict(obj)
        r = rng.random()
        if r < 0.15:
            del out[key]
        elif r < 0.25:
            out[rng.choice(["extra", "name", "labels", "version", "files", "../x"])] = rng.choice(JUNK)
        else:
            out[key] = _mutate(rng, obj[key], depth + 1)
        return out
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        out = list(obj)
        r = rng.random()
        if r < 0.15:
            out.pop(rng.randrange(len(out)))
        elif r < 0.25:
            out.append(rng.choice(JUNK) if rng.random() < 0.5 else out[0])
        else:
            i = rng.randrange(len(out))
            out[i] = _mutate(rng, out[i], depth + 1)
        return out
    r = rng.random()
    if isinstance(obj, (int, float)) and not isinstance(obj, bool) and r < 0.6:
        return rng.choice([obj * 1e300, -obj, 0, obj + 0.5, 10**9, 2**64, 1e-300, float("inf"), float("nan"), 1e9])
    if isinstance(obj, str) and r < 0.6:
        return rng.choice(["", "/etc/passwd", "../config.json", "a/b", ".", "..", "x" * 300, "\u00e9\u0000", obj + "x"])
    return rng.choice(JUNK)


def target_text(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.06:
        return rng.choice([b"", b"{", b"[1, 2", b"\xff\xfe\x00", b"null", b"42", b'"weights"', b"\xef\xbb\xbf{}",
                           b"[" * 100000 + b"]" * 100000, b'{"weights": ' + b"[" * 50000])
    spec = _valid_mixture(rng)
    if r < 0.1:
        return json.dumps(spec).encode()  # valid: must succeed
    for _ in range(rng.randint(1, 3)):
        spec = _mutate(rng, spec)
    return json.dumps(spec, allow_nan=True).encode()


def target_case(rng: random.Random, folder: str) -> list[str]:
    path = os.path.join(folder, "t.json")
    with open(path, "wb") as f:
        f.write(target_text(rng))
    cmd = rng.choice(["sample", "sample", "bench", "train"])
    if cmd == "sample":
        argv = ["sample", "--target", path, "-n", str(rng.choice([1, 5, 64])), "--out", os.path.join(folder, "o.npy")]
        argv += rng.choice([["--sampler", "ddim", "--steps", "5"], ["--sampler", "ddpm", "--steps", "8"],
                            ["--sampler", "langevin", "--levels", "3", "--steps-per-level", "2"]])
        if rng.random() < 0.4:
            argv += ["--label", str(rng.choice([0, 1, 3, -1, 1000000000]))]
        return argv
    if cmd == "bench":
        return ["bench", "--target", path, "-n", str(rng.choice([2, 20])), "--budgets", "5", "--samplers", "ddim"]
    return ["train", "--data", path, "--objective", rng.choice(["ddpm", "ncsn", "classifier"]), "--steps", "2",
            "--batch-size", "8", "--out", os.path.join(folder, "run")]


# ------------------------------------------------------------------------------------ edited checkpoints
def make_checkpoint(folder: str) -> str:
    from scoregen.cli import main

    spec = os.path.join(folder, "two.json")
    with open(spec, "w") as f:
        json.dump({"weights": [0.5, 0.5], "means": [[-1.0, 0.0], [1.0, 0.0]], "stds": [0.3, 0.3]}, f)
    out = os.path.join(folder, "ck")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--data", spec, "--objective", "ddpm", "--steps", "3", "--batch-size", "16",
                     "--out", out, "--no-progress"]) == 0
    return out


def _rehash(config: dict) -> dict:
    """Recompute config.json's own content hash, when the format has one, so an edit reaches the deeper checks."""
    import hashlib

    if "config_sha256" in config:
        body = {k: v for k, v in config.items() if k != "config_sha256"}
        config["config_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return config


def checkpoint_case(rng: random.Random, folder: str, original: str) -> list[str]:
    import hashlib

    ck = os.path.join(folder, "ck")
    shutil.copytree(original, ck)
    cfg_path = os.path.join(ck, "config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    r = rng.random()
    if r < 0.25:  # damage a weights file, then make config.json vouch for it, so the reader itself is tested
        kind = rng.choice(sorted(config["files"]))
        path = os.path.join(ck, config["files"][kind]["name"])
        data = bytearray(open(path, "rb").read())
        how = rng.random()
        if how < 0.3:
            data = data[: rng.randrange(len(data))]
        elif how < 0.6:
            data[:8] = rng.choice([b"\xff" * 8, (2**40).to_bytes(8, "little"), (5).to_bytes(8, "little")])
        else:
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        with open(path, "wb") as f:
            f.write(bytes(data))
        config["files"][kind]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    else:
        for _ in range(rng.randint(1, 3)):
            config = _mutate(rng, config)
    if isinstance(config, dict) and rng.random() < 0.8:
        config = _rehash(config)
    with open(cfg_path, "w") as f:
        json.dump(config, f, allow_nan=True)
    if rng.random() < 0.7:
        return ["sample", "--checkpoint", ck, "--sampler", rng.choice(["ddim", "ddpm"]), "--steps", "3", "-n", "4",
                "--out", os.path.join(folder, "o.npy")]
    return ["train", "--data", os.path.join(os.path.dirname(original), "two.json"), "--objective", "ddpm",
            "--steps", "5", "--batch-size", "16", "--resume", "--out", ck]


# ------------------------------------------------------------------------------------- argument lists
def argv_case(rng: random.Random, folder: str, checkpoint: str) -> list[str]:
    fifo = os.path.join(os.path.dirname(checkpoint), "fifo.json")  # a named pipe: reading it must not block
    paths = [os.path.join(folder, "o.npy"), folder, os.path.join(folder, "x" * 300 + ".npy"), "/dev/null",
             os.path.join(folder, "missing", "deep", "o.npy"), os.path.join(checkpoint, "config.json", "o.npy"), ""]
    pool = {
        "sample": {"--target": ["ring2d", "gmm64", "nope", os.path.join(folder, "none.json"), folder + ".json", fifo],
                   "--checkpoint": [checkpoint, folder, "digits-nope", checkpoint + "/config.json"],
                   "--sampler": ["ddpm", "ddim", "langevin", "heun"], "--steps": ["1", "3", "1001"],
                   "--variance": ["beta", "beta_tilde", "x"], "--eta": ["0", "1", "0.5", "2"],
                   "--levels": ["1", "2", "4"], "--steps-per-level": ["1", "3"], "--step-lr": ["1e-5", "1e10", "0"],
                   "--sigma-max": ["5", "0.001", "1e30"], "--sigma-min": ["0.01", "1e-30", "10"],
                   "--label": ["0", "3", "-1", "7", "1000000000"], "--guidance-scale": ["1", "0", "1e6", "-2", "1e30"],
                   "-n": ["1", "3", "10", "400000000", "1000000000000000"], "--batch-size": ["1", "2", "100000000000"],
                   "--seed": ["0", "7", "-5", "18446744073709551617"], "--out": paths,
                   "--grid": [os.path.join(folder, "g.png"), folder, os.path.join(folder, "g.txt")],
                   "--classifier": [checkpoint, folder], "--final-denoise": None, "--no-clip": None, "--no-progress": None},
        "bench": {"--target": ["ring2d", "nope"], "--samplers": ["ddim", "ddpm,langevin", ",", "heun", ""],
                  "--budgets": ["5", "3,4", "0", "x", "", "1e3"], "-n": ["2", "10", "1"], "--seed": ["0", "-1"],
                  "--label": ["0", "99", "-3"], "--guidance-scale": ["1", "nan", "1e6"],
                  "--csv": [os.path.join(folder, "b.csv"), folder, os.path.join(folder, "b.txt")],
                  "--plot": [os.path.join(folder, "b.png"), folder], "--no-progress": None},
        "train": {"--data": ["ring2d", "nope", os.path.join(folder, "none.npy"), folder, fifo], "--objective": ["ddpm", "ncsn", "classifier", "x"],
                  "--steps": ["1", "2", "0"], "--out": [os.path.join(folder, "run"), checkpoint, paths[3], folder + "/o.npy"],
                  "--batch-size": ["4", "16", "1000000000000"], "--lr": ["1e-3", "nan", "-1", "1e10"],
                  "--checkpoint-every": ["1", "0"], "--seed": ["0", "99999999999999999999999"],
                  "--resume": None, "--overwrite": None, "--conditional": None, "--no-progress": None},
        "pretrained": {},
    }
    cmd = rng.choice(["sample", "sample", "bench", "train", "pretrained"])
    if cmd == "pretrained":
        return rng.choice([["pretrained", "list"], ["pretrained", "build", "nope", "--out", folder], ["pretrained"],
                           ["pretrained", "build", "digits-ddpm"]])
    flags = pool[cmd]
    argv = [cmd]
    required = {"sample": ["--out", "-n"], "bench": ["-n", "--budgets", "--samplers"],
                "train": ["--data", "--objective", "--steps", "--out", "--batch-size"]}[cmd]
    chosen = [f for f in required if rng.random() < 0.95] + rng.sample(sorted(flags), rng.randint(0, 4))
    for flag in dict.fromkeys(chosen):
        values = flags[flag]
        if values is None:
            argv.append(flag)
        else:
            argv += [flag, rng.choice(values + (BAD_NUMBERS if rng.random() < 0.15 else []))]
    if cmd in ("sample", "bench") and not any(a in argv for a in ("--steps", "--levels", "--budgets")):
        argv += ["--sampler", "ddim", "--steps", "3"] if cmd == "sample" else []  # keep valid runs short
    return argv


# ------------------------------------------------------------------------------------------------ driver
def run_case(argv: list[str], limit_s: float) -> tuple[str, str]:
    """(outcome, detail): outcome is 'ok', 'error' or a finding ('traceback', 'hang', 'memory', 'exit N', 'nonfinite')."""
    from scoregen.cli import main

    out, err = io.StringIO(), io.StringIO()
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    except Timeout:
        return "hang", f"still running after {limit_s} s"
    except MemoryError:
        return "memory", traceback.format_exc(limit=-3)
    except BaseException:  # noqa: B902 - every escaping exception is the finding
        return "traceback", traceback.format_exc(limit=-4)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if code == 2:
        return ("error", "") if "error:" in err.getvalue() else ("exit 2 without a message", err.getvalue()[-500:])
    if code not in (0, None):
        return f"exit {code}", err.getvalue()[-500:]
    for flag in ("--out",):
        if flag in argv and argv[-1] != flag:
            path = argv[argv.index(flag) + 1]
            if path.endswith(".npy") and os.path.isfile(path):
                arr = np.load(path)
                if not np.isfinite(arr).all():
                    return "nonfinite", f"{path} holds non-finite values"
    return "ok", ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--case-limit", type=float, default=20.0, help="seconds before a case counts as a hang")
    p.add_argument("--memory-gb", type=float, default=0.0, help="RLIMIT_AS headroom over the size after import (0: none)")
    args = p.parse_args(argv)

    import torch  # noqa: F401  (imported before the memory limit is set: its own address space is not a finding)
    import scoregen.cli  # noqa: F401

    torch.set_num_threads(1)
    if args.memory_gb:
        import resource

        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vsz + int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="scoregen-fuzz-")
    outcomes: dict[str, int] = {}
    findings = []
    start = time.perf_counter()
    try:
        checkpoint = make_checkpoint(root)
        os.mkfifo(os.path.join(root, "fifo.json"))
        for i in range(args.cases):
            folder = os.path.join(root, f"case{i}")
            os.makedirs(folder)
            kind = ("target", "checkpoint", "argv")[i % 3]
            case_rng = random.Random(f"{args.seed}-{i}")
            if kind == "target":
                argv = target_case(case_rng, folder)
            elif kind == "checkpoint":
                argv = checkpoint_case(case_rng, folder, checkpoint)
            else:
                argv = argv_case(case_rng, folder, checkpoint)
            argv = argv + ["--no-progress"] if argv[0] in ("sample", "bench", "train") and "--no-progress" not in argv else argv
            outcome, detail = run_case(argv, args.case_limit)
            outcomes[f"{kind}:{outcome}"] = outcomes.get(f"{kind}:{outcome}", 0) + 1
            if outcome not in ("ok", "error"):
                findings.append({"case": i, "kind": kind, "outcome": outcome, "argv": argv, "detail": detail})
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"cases": args.cases, "seconds": round(time.perf_counter() - start, 1), "outcomes": outcomes,
                      "findings": findings}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
