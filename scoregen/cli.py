"""The ``scoregen`` command: ``scoregen sample`` and ``scoregen bench`` on exact targets."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from typing import Optional, Sequence

import numpy as np

from .bench import DEFAULT_BUDGETS
from ._checks import check_real
from .errors import ScoregenError
from .samplers import SAMPLERS, sampler_options

# Which flags belong to which sampler, read off the samplers' own options: a flag given to a sampler
# that ignores it is an error, not a no-op.
SAMPLER_FLAGS = {name: sampler_options(name) for name in SAMPLERS}


def _target_arg(value: str) -> str:
    from .targets import BUILTIN_TARGETS

    if value in BUILTIN_TARGETS or value.endswith(".json"):
        return value
    raise argparse.ArgumentTypeError(f"expected one of {sorted(BUILTIN_TARGETS)} or a PATH.json mixture file, got {value!r}")


def _number(convert, what: str, ok):
    """An argparse type: ``convert(text)`` (int or float) that satisfies ``ok``, else "expected WHAT, got TEXT"."""
    def parse(value: str):
        try:
            v = convert(value)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return v

    return parse


_positive_int = _number(int, "a positive integer", lambda v: v >= 1)
_seed = _number(int, "an integer seed in 0 .. 2**63 - 1 (a torch.Generator seed)", lambda v: 0 <= v < 2**63)
_finite_float = _number(float, "a finite number", math.isfinite)


def _check_output(parser: argparse.ArgumentParser, flag: str, path: str, suffix: str) -> None:
    """An output file the command will write, checked before any work (usage error naming the flag)."""
    from .io import check_output_file

    try:
        check_output_file(path, suffix)
    except ValueError as e:
        parser.error(f"{flag}: {e}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scoregen", description="Train, sample and benchmark score-based / diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="draw samples from a target with one sampler and write them to .npy",
                       description="Draw samples with one sampler. Sampler options left out take the papers' defaults: "
                                   "ddpm all 1000 steps, variance beta_tilde; ddim 50 steps, eta 0; langevin NCSN's recipe: "
                                   "sigma from the target's largest data distance down to 0.01, L=10 levels (more in high "
                                   "dimension, NCSNv2 technique 2), T=100, step_lr 2e-5.")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--target", type=_target_arg, help="ring2d, gmm64 or PATH.json (default ring2d)")
    src.add_argument("--checkpoint", help="a trained model: a checkpoint folder written by `scoregen train`, or a "
                                           "built-in model's name (`scoregen pretrained list`), e.g. digits-ddpm")
    s.add_argument("--classifier", help="with --checkpoint and --label: a classifier checkpoint for classifier guidance "
                                        "(without it, a class-conditional model uses classifier-free guidance)")
    s.add_argument("--grid", help="also save the samples as an image grid PNG (image models)")
    s.add_argument("--no-clip", action="store_true", help="image models: do not clip x0_hat to the data range")
    s.add_argument("--sampler", choices=sorted(SAMPLER_FLAGS), default="ddpm")
    s.add_argument("--steps", type=_positive_int, help="ddpm/ddim: number of levels (evenly spaced trained steps)")
    s.add_argument("--variance", choices=["beta_tilde", "beta"], help="ddpm: posterior variance (default beta_tilde)")
    s.add_argument("--eta", type=_finite_float, help="ddim: 0 deterministic .. 1 ancestral (default 0)")
    s.add_argument("--levels", type=_positive_int,
                   help="langevin: number of noise levels L (default 10, more in high dimension)")
    s.add_argument("--steps-per-level", type=_positive_int, help="langevin: steps per level T (default 100)")
    s.add_argument("--step-lr", type=_finite_float, help="langevin: step size at the smallest sigma (reference-code convention)")
    s.add_argument("--sigma-max", type=_finite_float, help="langevin: largest noise level")
    s.add_argument("--sigma-min", type=_finite_float, help="langevin: smallest noise level")
    s.add_argument("--final-denoise", action="store_true", default=None, help="langevin: NCSNv2's final denoising step")
    s.add_argument("--label", type=int, help="sample the class LABEL under exact classifier guidance")
    s.add_argument("--guidance-scale", type=_finite_float, help="guidance scale: classifier gamma (default 1: the exact "
                                                           "conditional) or classifier-free w (default 0: the conditional model)")
    s.add_argument("-n", type=_positive_int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--batch-size", type=_positive_int,
                   help="sample in batches of at most this many (default: as many as fit in 2 GiB by the memory "
                        "estimate, which depends on the model alone; samples depend on the batch size)")
    s.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    s.add_argument("--out", required=True, help="output file OUT.npy: float32 array of shape (n, *sample shape)")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    t = sub.add_parser("train", help="train a network (DDPM, NCSN or a noisy classifier) and checkpoint it")
    t.add_argument("--data", required=True, help="ring2d, gmm64, digits, a mixture .json, an image folder or an (N, ...) .npy")
    t.add_argument("--objective", required=True, choices=["ddpm", "ncsn", "classifier"])
    t.add_argument("--conditional", action="store_true", help="class-conditional score network with label dropout "
                                                               "(classifier-free guidance)")
    t.add_argument("--steps", type=_positive_int, required=True)
    t.add_argument("--out", required=True, help="checkpoint folder")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="replace the checkpoint already in --out (its files only; "
                                                            "without --resume or --overwrite an existing checkpoint is refused)")
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=_finite_float, default=2e-4)
    t.add_argument("--checkpoint-every", type=_positive_int, default=1000)
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    pr = sub.add_parser("pretrained", help="list the built-in pretrained models, or rebuild one from its recipe",
                        description="Built-in models ship inside the package and load by name (--checkpoint NAME). "
                                    "`build` retrains one with the settings in scoregen/pretrained/recipes.json into "
                                    "OUT/NAME-train (resumable) and exports its EMA weights to OUT/NAME.")
    pr_sub = pr.add_subparsers(dest="action", required=True)
    pr_sub.add_parser("list", help="the built-in models, their size and how they were trained")
    pb = pr_sub.add_parser("build", help="retrain a built-in model from its recipe")
    pb.add_argument("name", help="a built-in model's name, e.g. digits-ddpm")
    pb.add_argument("--out", required=True, help="folder for the training checkpoint (OUT/NAME-train) and the export (OUT/NAME)")
    pb.add_argument("--resume", action="store_true", help="continue an interrupted build from OUT/NAME-train")
    pb.add_argument("--overwrite", action="store_true", help="start OUT/NAME-train afresh, replacing the checkpoint there")
    pb.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    b = sub.add_parser("bench", help="every sampler at several NFE budgets on an exact target: a comparison table")
    b.add_argument("--target", type=_target_arg, default="ring2d", help="ring2d, gmm64 or PATH.json (default ring2d)")
    b.add_argument("--samplers", default="ddpm,ddim,langevin", help="comma-separated (default ddpm,ddim,langevin)")
    budgets = ",".join(map(str, DEFAULT_BUDGETS))
    b.add_argument("--budgets", default=budgets, help=f"comma-separated NFE budgets (default {budgets})")
    b.add_argument("-n", type=_positive_int, default=10000, help="samples per run (default 10000)")
    b.add_argument("--seed", type=_seed, default=0)
    b.add_argument("--label", type=int, help="benchmark classifier-guided sampling of this class")
    b.add_argument("--guidance-scale", type=_finite_float, help="classifier guidance scale with --label (default 1)")
    b.add_argument("--csv", help="also write the table to this CSV file")
    b.add_argument("--plot", help="also save a plot of quality against NFE to this PNG (needs matplotlib)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    for command in (s, t, pr, pb, b):  # errors found after parsing name the subcommand: "scoregen sample: error: ..."
        command.set_defaults(_parser=command)
    return p


def _cmd_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from .io import atomic_write, save_image_grid
    from .samplers import sample

    if args.grid is not None and os.path.abspath(args.grid) == os.path.abspath(args.out):
        parser.error("--grid and --out name the same file")
    given = {k for k in set().union(*SAMPLER_FLAGS.values()) if getattr(args, k) is not None}
    stray = sorted(given - SAMPLER_FLAGS[args.sampler])
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") for k in stray)
        parser.error(f"{flags} do(es) not apply to --sampler {args.sampler}; its options are "
                      + ", ".join("--" + k.replace("_", "-") for k in sorted(SAMPLER_FLAGS[args.sampler])))
    if args.guidance_scale is not None and args.label is None:
        parser.error("--guidance-scale needs --label Y (the class to guide towards)")

    if args.checkpoint is None and (args.classifier or args.grid or args.no_clip):
        parser.error("--classifier, --grid and --no-clip apply to --checkpoint models")
    for flag, path, suffix in (("--out", args.out, ".npy"), ("--grid", args.grid, ".png")):
        if path is not None:  # before any work: a bad destination must not cost a sampling run
            _check_output(parser, flag, path, suffix)
    model, x0_hook, value_range, name = _sampling_model(args, parser)
    if args.grid and len(model.shape) != 3:
        parser.error(f"--grid needs an image model (samples of shape (C, H, W)); this one samples shape {tuple(model.shape)}")
    options = {k: getattr(args, k) for k in given}
    result = sample(model, args.sampler, args.n, seed=args.seed, y=args.label, x0_hook=x0_hook, batch_size=args.batch_size,
                    progress=False if args.no_progress else None, **options)
    arr = result.samples.to(torch.float32).cpu().numpy()
    with atomic_write(args.out, "wb") as f:
        np.save(f, arr)
    if args.grid:
        save_image_grid(result.samples, args.grid, value_range)
    opts = " ".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"
    shape = " x ".join(map(str, arr.shape))
    print(f"{args.sampler} ({opts}) on {name}: wrote {shape} samples to {args.out}" + (f" and {args.grid}" if args.grid else ""))
    batches = f"  in batches of {result.batch_size}" if result.batch_size and result.batch_size < args.n else ""
    print(f"NFE {result.nfe}  wall time {result.wall_time:.3f} s  seed {args.seed}{batches}")
    return 0


def _sampling_model(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """(score model, x0 hook, data value range, name) for `scoregen sample`, guidance applied."""
    from .guidance import ClassifierFreeGuidance, ClassifierGuidance
    from .io import load_checkpoint
    from .models import clip_x0
    from .targets import load_target

    if args.checkpoint is None:
        target = load_target(args.target or "ring2d")
        model = target
        if args.label is not None:
            if not 0 <= args.label < target.num_classes:
                parser.error(f"--label must be a class of {target.name}: 0..{target.num_classes - 1}, got {args.label}")
            model = ClassifierGuidance(target, target.classifier, 1.0 if args.guidance_scale is None else args.guidance_scale)
        return model, None, None, target.name
    net, config = load_checkpoint(args.checkpoint)
    if getattr(net, "parameterization", None) is None:
        parser.error(f"{args.checkpoint} holds a classifier, not a score model; pass it as --classifier")
    value_range = _value_range(config, args.checkpoint)
    model = net.score_model()
    if args.label is not None:
        classes = getattr(net, "num_classes", None)
        if args.classifier:
            clf, _ = load_checkpoint(args.classifier)
            if getattr(clf, "parameterization", None) is not None:
                parser.error(f"--classifier {args.classifier} holds a score model, not a classifier")
            classes = clf.num_classes
            model = ClassifierGuidance(model, clf.classifier(), 1.0 if args.guidance_scale is None else args.guidance_scale)
        elif classes is not None:
            model = ClassifierFreeGuidance(model, net.null_label, 0.0 if args.guidance_scale is None else args.guidance_scale)
        else:
            parser.error("--label with an unconditional model needs --classifier DIR (a noisy classifier checkpoint)")
        if not 0 <= args.label < classes:
            parser.error(f"--label must be in 0..{classes - 1}, got {args.label}")
    elif args.classifier:
        parser.error("--classifier needs --label Y (the class to guide towards)")
    images = len(net.shape) == 3
    hook = clip_x0(*value_range) if images and value_range and not args.no_clip else None
    name = f"{config['network']['class']} from {args.checkpoint}"
    if args.label is not None:
        kind = f"classifier guidance ({args.classifier})" if args.classifier else "classifier-free guidance"
        name += f", {kind} to class {args.label} with scale {model.scale:g}"
    return model, hook, value_range, name


def _value_range(config: dict, checkpoint: str) -> Optional[tuple[float, float]]:
    """The data range ``(lo, hi)`` a checkpoint records (``meta.data.value_range``, written by `scoregen train`), or None."""
    data = config["meta"].get("data")
    value_range = data.get("value_range") if isinstance(data, dict) else None
    if data is None or value_range is None:
        return None
    try:
        lo, hi = (check_real(f"value_range[{i}]", v) for i, v in enumerate(value_range))
        if not lo < hi:
            raise ValueError(f"value_range must have lo < hi, got {value_range}")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{checkpoint}: config.json's meta.data.value_range (the data range x0 is clipped to) must be "
                         f"two finite numbers lo < hi: {e}") from None
    return lo, hi


def _cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from .data import load_data
    from .io import check_output_dir
    from .training import TrainConfig, train
    from .training.recipes import default_network

    if args.resume and args.overwrite:
        parser.error("--resume continues the checkpoint in --out and --overwrite replaces it: give one of them")
    check_output_dir(args.out)  # before loading data or building the network
    data = load_data(args.data, seed=args.seed)
    torch.manual_seed(args.seed)  # network initialisation
    net = default_network(data.x, args.objective, data.num_classes, args.conditional)
    config = TrainConfig(args.objective, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         checkpoint_every=args.checkpoint_every, seed=args.seed,
                         label_dropout=0.1 if args.conditional else 0.0)
    meta = {"data": {"spec": args.data, "name": data.name, "shape": list(data.shape),
                     "value_range": list(data.value_range) if data.value_range else None, "num_classes": data.num_classes}}
    summary = train(net, data.x, data.y if (args.conditional or args.objective == "classifier") else None, config,
                    args.out, resume=args.resume, overwrite=args.overwrite, meta=meta,
                    progress=False if args.no_progress else None)
    start, end = summary["start_step"], summary["end_step"]
    if start == end:
        print(f"the checkpoint in {args.out} is already at step {end} (--steps {args.steps}): nothing to train")
    else:
        print(f"trained {type(net).__name__} ({args.objective}) on {data.name} from step {start} to {end}: "
              f"running loss {summary['running_loss']:.4f}; checkpoint in {args.out}")
    return 0


def _cmd_pretrained(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .io import export_checkpoint
    from .pretrained import build_environment, pretrained_names, pretrained_path, pretrained_recipe, train_argv

    if args.action == "list":
        for name in pretrained_names():
            try:
                path = pretrained_path(name)
                size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6
                where = f"{size:.1f} MB"
            except FileNotFoundError:
                where = "not installed"
            print(f"{name:18s} {where:>14s}  {pretrained_recipe(name)['description']}")
            print(f"{'':18s} {'':>14s}  scoregen train {' '.join(train_argv(name))}")
        return 0
    import torch

    argv = train_argv(args.name)
    train_dir, export_dir = os.path.join(args.out, f"{args.name}-train"), os.path.join(args.out, args.name)
    extra = ["--resume"] * args.resume + ["--overwrite"] * args.overwrite + ["--no-progress"] * args.no_progress
    threads, before = pretrained_recipe(args.name).get("threads"), torch.get_num_threads()
    print(f"building {args.name}: scoregen train {' '.join(argv)} --out {train_dir}" + (f" ({threads} thread(s))" if threads else ""))
    try:  # the thread count fixes the order of floating-point sums: the recipe's count reproduces the shipped bits
        torch.set_num_threads(threads or before)
        train_args = build_parser().parse_args(["train", *argv, "--out", train_dir, *extra])
        code = _cmd_train(train_args, train_args._parser)
    finally:
        torch.set_num_threads(before)
    if code:
        return code
    export_checkpoint(train_dir, export_dir, meta={"builtin": args.name, "recipe": pretrained_recipe(args.name),
                                                   "built_on": build_environment()})
    print(f"exported the EMA weights to {export_dir}; to ship them, replace scoregen/pretrained/{args.name} with it")
    return 0


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import format_table, plot_bench, rows_to_csv, run_bench
    from .targets import load_target

    if args.guidance_scale is not None and args.label is None:
        parser.error("--guidance-scale needs --label Y (the class to guide towards)")
    scale = 1.0 if args.guidance_scale is None else args.guidance_scale
    for flag, path, suffix in (("--csv", args.csv, ".csv"), ("--plot", args.plot, ".png")):
        if path is not None:
            _check_output(parser, flag, path, suffix)

    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown or not samplers:
        parser.error(f"--samplers: unknown {unknown}; choose from {sorted(SAMPLERS)}")
    try:
        budgets = [int(v) for v in args.budgets.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    if not budgets or min(budgets) < 1:
        parser.error(f"--budgets must be positive integers, got {args.budgets!r}")
    target = load_target(args.target)
    if args.label is not None and not 0 <= args.label < target.num_classes:
        parser.error(f"--label must be a class of {target.name}: 0..{target.num_classes - 1}, got {args.label}")
    rows = run_bench(target, samplers, budgets, n=args.n, seed=args.seed, label=args.label,
                     guidance_scale=scale, progress=False if args.no_progress else None)
    what = f"{target.name} (d={target.dim}, K={len(target.weights)})"
    if args.label is not None:
        what += f", classifier guidance to class {args.label} with scale {scale:g}"
    print(format_table(rows, f"scoregen bench: {what}, n={args.n}, seed={args.seed}"))
    print("sliced W2: 256 fixed random projections against fresh exact samples; floor: the same between two exact sets;\n"
          "mode TV: total variation between component weights and the samples' nearest-component histogram.")
    if args.csv:
        rows_to_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        plot_bench(rows, args.plot, what)
        print(f"wrote {args.plot}")
    return 0


#: What a command may fail with, each with a message that names the problem; anything else is a bug in scoregen.
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError, ImportError, MemoryError, ScoregenError)


#: How torch's allocators say they ran out (CPU: DefaultCPUAllocator; CUDA: torch.OutOfMemoryError).
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "Cannot allocate memory")


def _describe(e: BaseException) -> str:
    """The message of an expected error; an OSError from the system gets its file name and reason in plain words."""
    if isinstance(e, OSError) and not isinstance(e, ScoregenError) and e.strerror:
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else ""
        return f"{where}: {e.strerror}" if where else e.strerror
    return str(e) or type(e).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"sample": _cmd_sample, "train": _cmd_train, "pretrained": _cmd_pretrained, "bench": _cmd_bench}[args.command]

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"scoregen {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():  # warnings in the command's own words, not Python's file:line form
            warnings.showwarning = show_warning
            return command(args, args._parser)
    except EXPECTED_ERRORS as e:
        print(f"scoregen {args.command}: error: {_describe(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the allocator's own failure, past every estimate: not a bug, a limit of this machine
        text = str(e)
        if not any(sign in text for sign in _OUT_OF_MEMORY):
            raise
        print(f"scoregen {args.command}: error: out of memory ({text.strip().splitlines()[-1][:300]}); use a smaller "
              "-n or --batch-size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scoregen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
