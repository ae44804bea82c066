"""The ``scoregen`` command: ``scoregen sample`` and ``scoregen bench`` on exact targets."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from typing import Optional, Sequence

import numpy as np

from ._checks import check_real
from .errors import ScoregenError
from .interop.formats import FORMATS
from .samplers import SAMPLERS, SPACINGS, sampler_options

# Which flags belong to which sampler, read off the samplers' own options: a flag given to a sampler
# that ignores it is an error, not a no-op.
SAMPLER_FLAGS = {name: sampler_options(name) for name in SAMPLERS}
#: The samplers a grid can be fitted to (`scoregen tune-grid`): the deterministic ones with a step grid.
DETERMINISTIC_SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm")

#: What `scoregen bench` with no --model benchmarks: an exact target and the built-in DDPM digits network.
DEFAULT_BENCH_MODELS = ("ring2d", "digits-ddpm")
#: The guidance scales of the default run's sweep on digits.
DEFAULT_GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0)


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


def _sigmas_arg(value: str):
    """--sigmas: comma-separated VE sigmas, noisiest first, or a grid JSON file (``scoregen tune-grid --out``)."""
    if value.endswith(".json"):
        if not os.path.isfile(value):
            raise argparse.ArgumentTypeError(f"no grid file {value!r} (write one with `scoregen tune-grid --out FILE.json`)")
        return value  # read against the model (its coordinates) once the model is known
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or not all(math.isfinite(v) for v in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated VE sigmas (e.g. 80,10,1,0.1,0) or a grid FILE.json, got {value!r}")
    return out


def _timesteps_arg(value: str):
    """--timesteps: comma-separated time labels (noisiest first), or a respacing like ddim25 or 10,15,20 with 'respace:'."""
    if value.startswith("respace:"):
        return value[len("respace:"):]
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or not all(math.isfinite(v) for v in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated time labels (e.g. 999,750,500,250,1) or "
                                         f"respace:ddim25 / respace:10,15,20, got {value!r}")
    return out


def _check_output(parser: argparse.ArgumentParser, flag: str, path: str, suffix: str) -> None:
    """An output file the command will write, checked before any work (usage error naming the flag)."""
    from .io import check_output_file

    try:
        check_output_file(path, suffix)
    except ValueError as e:
        parser.error(f"{flag}: {e}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that gives every option's default: argparse's ArgumentDefaultsHelpFormatter ("(default: X)" after
    the help text), except for flags (store_true / store_false / store_const: no value, no default), options whose
    help already states its default (the word "default" in it), and None defaults, which mean "decided elsewhere":
    their help says what happens instead, e.g. "(default: the sampler's own)". Required options get "(required)".

    Every subcommand takes it: ``sub.add_parser(NAME, formatter_class=HELP_FORMATTER, ...)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or text is argparse.SUPPRESS:
            return text
        if action.required:
            return text if "required" in text else f"{text} (required)"
        if action.nargs == 0 or "default" in text or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


#: The formatter class of every subcommand's parser (reuse it for new subcommands).
HELP_FORMATTER = HelpFormatter


def _add_model_source(parser: argparse.ArgumentParser):
    """--target or --checkpoint: the model `scoregen sample`, `tune-grid` and `nll` work on (the group, for more)."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--target", type=_target_arg, help="an exact target: ring2d, gmm64 or a mixture PATH.json "
                                                        "(default: ring2d, unless --checkpoint is given)")
    src.add_argument("--checkpoint", help="a trained model instead of a target: a checkpoint folder written by "
                                           "`scoregen train`, a built-in model's name (`scoregen pretrained list`, e.g. "
                                           "digits-ddpm), or a model trained elsewhere: a diffusers folder, an improved/"
                                           "guided-diffusion .pt, a score_sde or NCSNv2 checkpoint .pth, an EDM snapshot "
                                           ".pkl (format detected; see --format) (default: none, --target)")
    parser.add_argument("--format", choices=sorted(FORMATS),
                        help="the --checkpoint's format: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items())
                             + " (default: detected from the file)")
    parser.add_argument("--model-config", metavar="CONFIG",
                        help="what an openai, score_sde or ncsnv2 --checkpoint does not hold: openai's flags (a flags "
                             "string such as '--image_size 64 --num_channels 192 ...', a preset name or a FILE.json), a "
                             "score_sde preset name or FILE.json, an NCSNv2 config.yml (default: openai and score_sde "
                             "need it; NCSNv2 reads config.yml beside the checkpoint)")
    return src


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scoregen", description="Train, sample and benchmark score-based / diffusion models.",
                                formatter_class=HELP_FORMATTER)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="draw samples from a target with one sampler and write them to .npy",
                       formatter_class=HELP_FORMATTER,
                       description="Draw samples with one sampler. Sampler options left out take the papers' defaults: "
                                   "ddpm all trained levels, variance beta_tilde; ddim 50 steps, eta 0; langevin NCSN's "
                                   "recipe: sigma from the data's largest distance down to 0.01, L=10 levels (more in high "
                                   "dimension, NCSNv2 technique 2), T=100, step_lr 0.2 sigma_min^2 (2e-5); the ODE/SDE "
                                   "solvers their papers' (docs/samplers.md lists every default).")
    _add_model_source(s)
    s.add_argument("--classifier", help="with --checkpoint and --label: a classifier checkpoint for classifier guidance "
                                        "(default: none; a class-conditional model then uses classifier-free guidance)")
    s.add_argument("--classifier-config", metavar="CONFIG",
                   help="a guided-diffusion --classifier's flags: a flags string, a preset name or a FILE.json "
                        "(default: none; a scoregen classifier checkpoint holds its own)")
    s.add_argument("--grid", help="also save the samples as an image grid to this PNG, for image models (default: no grid)")
    s.add_argument("--no-clip", action="store_true", help="image models: do not clip x0_hat to the data range")
    s.add_argument("--sampler", choices=sorted(SAMPLER_FLAGS), default="ddpm",
                   help="ddpm: ancestral sampling; ddim: DDIM (eta 0: deterministic); langevin: annealed Langevin dynamics; "
                        "the ODE solvers euler, heun, dpmpp_2m, dpmpp_3m, unipc, deis, ipndm, ode (adaptive); the SDE "
                        "solvers edm, dpmpp_2m_sde, euler_maruyama, pc (docs/samplers.md)")
    s.add_argument("--steps", type=_positive_int, help="number of steps of the step grid (default: the sampler's own: "
                                                      "ddpm all trained levels; ddim and euler 50; see docs/samplers.md)")
    s.add_argument("--spacing", choices=SPACINGS, help="how the step grid is spaced: trained levels, diffusers' leading / "
                                                       "trailing / linspace, EDM's karras, uniform logsnr or time, or "
                                                       "optimized for this model (default: the sampler's own)")
    s.add_argument("--sigmas", type=_sigmas_arg, help="an explicit step grid: comma-separated VE sigmas, noisiest first, "
                                                      "or a FILE.json from `scoregen tune-grid` (default: --spacing)")
    s.add_argument("--timesteps", type=_timesteps_arg, help="an explicit step grid in the model's own time labels, "
                                                            "noisiest first, or respace:ddim25 (improved-diffusion's "
                                                            "respacing; default: --spacing)")
    s.add_argument("--variance", choices=["beta_tilde", "beta", "learned", "analytic"],
                   help="ddpm: the reverse variance: beta_tilde, beta, learned (a network trained with objective hybrid) "
                        "or analytic (Analytic-DPM, estimated on the model's training data; default: learned for a model "
                        "with a learned variance, else beta_tilde)")
    s.add_argument("--eta", type=_finite_float, help="ddim: noise, 0 deterministic .. 1 ancestral (default: 0); "
                                                    "dpmpp_2m_sde: the SDE's noise, 0 = dpmpp_2m (default: 1)")
    s.add_argument("--order", type=_positive_int, help="unipc, deis, ipndm: the multistep order (default: unipc 2, deis 3, "
                                                       "ipndm 4)")
    s.add_argument("--coefficient", choices=["reference", "taylor"],
                   help="dpmpp_3m: the D2 weight, reference (diffusers' and k-diffusion's, second order) or taylor "
                        "(third order; default: reference)")
    s.add_argument("--variable-step", action="store_true", default=None,
                   help="ipndm: Adams-Bashforth weights of the grid's actual steps, fourth order on any grid "
                        "(default: iPNDM's published fixed weights)")
    s.add_argument("--s-churn", type=_finite_float, help="edm: stochasticity S_churn (default: 0, deterministic Heun)")
    s.add_argument("--s-tmin", type=_finite_float, help="edm: churn only at VE levels >= S_tmin (default: 0)")
    s.add_argument("--s-tmax", type=float, help="edm: churn only at VE levels <= S_tmax (default: inf)")
    s.add_argument("--s-noise", type=_finite_float, help="edm: noise inflation S_noise (default: 1)")
    s.add_argument("--snr", type=_finite_float, help="pc: the Langevin corrector's signal-to-noise ratio (default: 0.16)")
    s.add_argument("--corrector-steps", type=int, help="pc: Langevin corrector steps per level (default: 1)")
    s.add_argument("--method", choices=["RK45", "RK23", "DOP853"], help="ode: scipy's adaptive solver (default: RK45)")
    s.add_argument("--rtol", type=_finite_float, help="ode: relative tolerance (default: 1e-5)")
    s.add_argument("--atol", type=_finite_float, help="ode: absolute tolerance (default: 1e-5)")
    s.add_argument("--levels", type=_positive_int,
                   help="langevin: number of noise levels L (default: a model trained on NCSN levels: its own; "
                        "else 10, more in high dimension by NCSNv2's technique 2)")
    s.add_argument("--steps-per-level", type=_positive_int, help="langevin: steps per level T (default: 100)")
    s.add_argument("--step-lr", type=_finite_float, help="langevin: step size at the smallest sigma, reference-code "
                                                        "convention (default: 0.2 * sigma_min^2, NCSN's ratio; 2e-5 at 0.01)")
    s.add_argument("--sigma-max", type=_finite_float,
                   help="langevin: largest noise level (default: the data's largest pairwise distance where the model "
                        "knows it, else its largest trained VE level)")
    s.add_argument("--sigma-min", type=_finite_float,
                   help="langevin: smallest noise level (default: 0.01 on a target, a network's smallest trained level); "
                        "ode: where the integration stops before its final x0_hat step (default: the grid's smallest)")
    s.add_argument("--final-denoise", action="store_true", default=None, help="langevin: NCSNv2's final denoising step")
    s.add_argument("--label", type=int, help="sample class LABEL: exact classifier guidance on a target; with --checkpoint, "
                                             "classifier-free guidance or --classifier (default: none, unconditional)")
    s.add_argument("--guidance-scale", type=_finite_float, help="guidance scale: classifier gamma (default 1: the exact "
                                                           "conditional) or classifier-free w (default 0: the conditional model)")
    s.add_argument("-n", type=_positive_int, default=1000, help="number of samples")
    s.add_argument("--batch-size", type=_positive_int,
                   help="sample in batches of at most this many (default: as many as fit in 2 GiB by the memory "
                        "estimate; the samples do not depend on it); under torchrun also the size of each shard")
    s.add_argument("--seed", type=_seed, default=0, help="random seed: same seed, same samples (sample i depends on the "
                                                        "seed and i alone: any --batch-size, any number of processes)")
    s.add_argument("--device", help="where to sample: cpu, cuda, cuda:1, ... (default: cuda:LOCAL_RANK where CUDA is "
                                    "available, one GPU per torchrun process, else cpu)")
    s.add_argument("--out", required=True, help="output file OUT.npy: float32 array of shape (n, *sample shape)")
    s.add_argument("--no-progress", action="store_true",
                   help="report no progress (otherwise: a bar on a terminal, a line every 30 s elsewhere)")

    t = sub.add_parser("train", help="train a network (DDPM, NCSN or a noisy classifier) and checkpoint it",
                       formatter_class=HELP_FORMATTER)
    t.add_argument("--data", required=True, help="ring2d, gmm64, digits, a mixture .json, an image folder or an (N, ...) .npy")
    t.add_argument("--objective", required=True, choices=["ddpm", "hybrid", "ncsn", "classifier", "judge"],
                   help="what to train: ddpm (an eps network, L_simple), hybrid (an eps network with learned variance "
                        "channels, L_simple + 0.001 L_vlb: sample it with --variance learned), ncsn (a score network on NCSN levels, denoising "
                        "score matching), classifier (a noise-conditional classifier, for guidance); judge: a clean-image CNN classifier, fit on a stratified 80%% of the labelled data and scored "
                        "on the other 20%% (meta.heldout)")
    t.add_argument("--conditional", action="store_true", help="class-conditional score network with label dropout "
                                                               "(classifier-free guidance)")
    t.add_argument("--steps", type=_positive_int, required=True, help="train up to this step (a resumed run: in total)")
    t.add_argument("--out", required=True, help="checkpoint folder")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--overwrite", action="store_true", help="replace the checkpoint already in --out (its files only; "
                                                            "without --resume or --overwrite an existing checkpoint is refused)")
    t.add_argument("--seed", type=_seed, default=0,
                   help="random seed of the network's initialisation, the batches and the noise (and of data drawn from a target)")
    t.add_argument("--batch-size", type=_positive_int, default=128,
                   help="training examples per step (under torchrun: the global batch, split evenly over the "
                        "processes, so it must be a multiple of their number)")
    t.add_argument("--device", help="where to train, e.g. cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK where CUDA is "
                                    "available, else cpu; under torchrun each process takes its LOCAL_RANK's GPU)")
    t.add_argument("--lr", type=_finite_float, default=2e-4, help="AdamW learning rate, after a linear warmup of 100 steps")
    t.add_argument("--checkpoint-every", type=_positive_int, default=1000,
                   help="save a checkpoint every this many steps (and at the end)")
    t.add_argument("--no-progress", action="store_true",
                   help="report no progress (otherwise: a bar on a terminal, a line every 30 s elsewhere)")

    pr = sub.add_parser("pretrained", help="list the built-in pretrained models, or rebuild one from its recipe",
                        formatter_class=HELP_FORMATTER,
                        description="Built-in models ship inside the package and load by name (--checkpoint NAME). "
                                    "`build` retrains one with the settings in scoregen/pretrained/recipes.json into "
                                    "OUT/NAME-train (resumable) and exports its EMA weights to OUT/NAME.")
    pr_sub = pr.add_subparsers(dest="action", required=True)
    pr_sub.add_parser("list", help="the built-in models, their size and how they were trained", formatter_class=HELP_FORMATTER)
    pb = pr_sub.add_parser("build", help="retrain a built-in model from its recipe", formatter_class=HELP_FORMATTER)
    pb.add_argument("name", help="a built-in model's name, e.g. digits-ddpm")
    pb.add_argument("--out", required=True, help="folder for the training checkpoint (OUT/NAME-train) and the export (OUT/NAME)")
    pb.add_argument("--resume", action="store_true", help="continue an interrupted build from OUT/NAME-train")
    pb.add_argument("--overwrite", action="store_true", help="start OUT/NAME-train afresh, replacing the checkpoint there")
    pb.add_argument("--no-progress", action="store_true",
                    help="report no progress (otherwise: a bar on a terminal, a line every 30 s elsewhere)")

    b = sub.add_parser("bench", formatter_class=HELP_FORMATTER,
                       help="rank samplers (scoregen's and, with --peers, diffusers' and k-diffusion's) on one model",
                       description="Sample each model with every sampler at several NFE budgets and score every run the "
                                   "same way: exact targets against the exact mixture (MMD^2 with its standard error, "
                                   "per-component Fréchet distance, sliced W2, mode TV), digits networks through the "
                                   "independent digits-judge (Fréchet distance in its feature space, class TV), each "
                                   "beside its floor, what a perfect sampler scores at the same n. With no --model: "
                                   f"{', '.join(DEFAULT_BENCH_MODELS)}, a guidance sweep on digits, and the peers when "
                                   "installed.")
    b.add_argument("--model", "--target", dest="models", action="append", metavar="NAME_OR_PATH",
                   help="what to benchmark, repeatable: a built-in target (ring2d, gmm64), a mixture .json, a built-in "
                        "model (digits-ddpm, digits-ncsn, digits-cond), a checkpoint folder or a diffusers folder "
                        f"(default: {' and '.join(DEFAULT_BENCH_MODELS)})")
    b.add_argument("--reference", help="for a network whose checkpoint does not record its training data (a diffusers "
                                       "folder): the data to score against, digits or a target name (default: read "
                                       "off the checkpoint)")
    b.add_argument("--samplers", default="ddpm,ddim,langevin,dpmpp_2m,deis",
                   help="comma-separated scoregen samplers (any of: " + ", ".join(SAMPLER_FLAGS) + ")")
    b.add_argument("--budgets", help="comma-separated NFE budgets (default: 10,20,50,100 on exact targets, 10,20,50 "
                                     "on digits)")
    b.add_argument("-n", type=_positive_int, help="samples per run (default: 10000 on exact targets, 500 on digits)")
    b.add_argument("--seed", type=_seed, default=0, help="seed of every sampler's noise and of the reference draws")
    b.add_argument("--batch-size", type=_positive_int,
                   help="samples per batch of each scoregen run (default: as many as fit in 2 GiB; under torchrun, n / "
                        "the number of processes, or less to fit). The same --batch-size gives the same samples and "
                        "scores on any number of processes, networks included")
    peers = b.add_mutually_exclusive_group()
    peers.add_argument("--peers", nargs="?", const="all", metavar="NAMES",
                       help="also run diffusers' schedulers and k-diffusion's samplers on the same model at the same "
                            "budgets: all, or comma-separated names (default: on the exact target of the "
                            "no-argument run when installed, else off)")
    peers.add_argument("--no-peers", action="store_true", help="never run the peers")
    b.add_argument("--label", type=int, help="exact targets: benchmark classifier-guided sampling of this class "
                                             "(default: none, unguided sampling)")
    b.add_argument("--guidance-scale", type=_finite_float, help="guidance scale with --label (default: 1)")
    b.add_argument("--guidance-scales", metavar="LIST",
                   help="also sweep guidance: class accuracy and quality against these scales, e.g. 0,1,2,3,5,10 "
                        "(default: that list on digits in the no-argument run, else none)")
    b.add_argument("--sweep-sampler", default="ddim", choices=sorted(SAMPLER_FLAGS), help="the sampler of the sweep")
    b.add_argument("--sweep-budget", type=_positive_int, default=20, help="the NFE budget of the sweep")
    b.add_argument("--out", metavar="DIR", help="write results.json, results.md, quality_vs_nfe.png, "
                                                "quality_vs_time.png (and sample grids for image models) into DIR "
                                                "(default: print the tables only)")
    b.add_argument("--csv", help="also write every row to this CSV file (default: none)")
    b.add_argument("--plot", help="also save the quality-against-NFE plot to this PNG (default: none)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    b.add_argument("--device", help="where to sample: cpu, cuda, cuda:1, ... (default: cuda:LOCAL_RANK where CUDA is "
                                    "available, one GPU per torchrun process, else cpu); under torchrun the processes "
                                    "share the batches of every run and rank 0 scores them together")
    tg = sub.add_parser("tune-grid", formatter_class=HELP_FORMATTER,
                        help="fit a step grid to one model, sampler and number of steps, and write it to JSON",
                        description="Search the step grid (the noise levels a deterministic sampler visits) that brings "
                                    "the sampler's endpoints closest to a high-accuracy solve from the same initial noise, "
                                    "training-free, for this model, sampler and number of steps; `scoregen sample --sigmas "
                                    "FILE.json` reads it. spacing='optimized' runs the same search and caches it.")
    _add_model_source(tg)
    tg.add_argument("--sampler", required=True, choices=sorted(DETERMINISTIC_SAMPLERS), help="the sampler the grid is for")
    tg.add_argument("--steps", type=_positive_int, required=True, help="the number of steps of the grid")
    tg.add_argument("--out", required=True, help="output file FILE.json (for --sigmas FILE.json)")
    tg.add_argument("-n", type=_positive_int, help="initial noises the grid is fitted on (as many again check it; "
                                                   "default: 128 on a target, 64 on a network)")
    tg.add_argument("--seed", type=_seed, default=0, help="seed of the fitting and checking noises")
    tg.add_argument("--max-evals", type=_positive_int, help="the most sampler runs the search makes "
                                                           "(default: 60 + 25 (steps - 1), at most 600)")
    tg.add_argument("--time-limit", type=_finite_float, help="stop the search after this many seconds and keep the best "
                                                             "grid so far (default: none; the result then depends on the "
                                                             "machine's speed)")
    tg.add_argument("--no-progress", action="store_true",
                    help="report no progress (otherwise: a bar on a terminal, a line every 30 s elsewhere)")

    nl = sub.add_parser("nll", formatter_class=HELP_FORMATTER,
                        help="negative log-likelihood of data under a model, in bits/dim with its standard error",
                        description="Per-sample negative log-likelihood of data under a model: the variational bound "
                                    "(--method vlb: one evaluation per level and sample) or the probability-flow ODE "
                                    "(--method ode: an adaptive solve with the divergence). Prints the mean in bits/dim "
                                    "with its standard error over the samples; on an exact target also the closed-form "
                                    "value. docs/likelihood.md explains the estimators.")
    _add_model_source(nl).add_argument(
        "--model", help="the model, whatever it is: a built-in target or mixture .json (as --target), a built-in model "
                        "or checkpoint folder (as --checkpoint), or a diffusers pipeline folder (then give --data) (default: none, --target or --checkpoint)")
    nl.add_argument("--data", help="the data: a spec as `scoregen train --data` takes (digits, an image folder, "
                                   "FILE.npy, a mixture) (default: a checkpoint's training data; samples of the target)")
    nl.add_argument("--method", choices=["vlb", "ode"], default="vlb", help="the estimator")
    nl.add_argument("-n", type=_positive_int, help="evaluate this many data points, a seeded random subset (default: "
                                                   "512 of a data set, 1000 samples of a target)")
    nl.add_argument("--bins", type=int, help="the number of evenly spaced values the data takes in its range (0: "
                                             "continuous; default: 17 for digits, 256 for an image folder, else 0)")
    nl.add_argument("--variance", choices=["beta_tilde", "beta", "learned", "analytic"], default="beta_tilde",
                    help="vlb: the reverse steps' variance (analytic: Analytic-DPM, estimated on the data)")
    nl.add_argument("--steps", type=_positive_int, help="vlb: the number of levels of the chain (default: every "
                                                        "trained level)")
    nl.add_argument("--spacing", choices=[sp for sp in SPACINGS if sp != "optimized"],
                    help="vlb: how a --steps chain is spaced (default: trained)")
    nl.add_argument("--timesteps", type=_timesteps_arg, help="vlb: the chain's levels in the model's time labels, or "
                                                             "respace:ddim25 (default: --steps and --spacing)")
    nl.add_argument("--rtol", type=_finite_float, help="ode: relative tolerance (default: 1e-5)")
    nl.add_argument("--atol", type=_finite_float, help="ode: absolute tolerance (default: 1e-5)")
    nl.add_argument("--divergence", choices=["auto", "exact", "hutchinson"],
                    help="ode: the divergence, exact (a backward pass per dimension) or Hutchinson's estimate (default: "
                         "auto, exact up to 32 dimensions)")
    nl.add_argument("--probe", choices=["rademacher", "gaussian"], help="ode: Hutchinson's probes (default: rademacher)")
    nl.add_argument("--probes", type=_positive_int, help="ode: Hutchinson probes per sample (default: 1)")
    nl.add_argument("--data-range", type=_data_range_arg, help="LO,HI: the range the --bins values span (default: the "
                                                               "data's: [-1, 1] for images and digits, else observed)")
    nl.add_argument("--seed", type=_seed, default=0, help="seeds the subset, the noise draws and the probes")
    nl.add_argument("--batch-size", type=_positive_int, default=256, help="samples evaluated together")
    nl.add_argument("--device", help="where to evaluate: cpu, cuda, cuda:1, ... (default: cuda:LOCAL_RANK where CUDA is "
                                     "available, one GPU per torchrun process, else cpu); under torchrun each process "
                                     "evaluates its share of the data points and rank 0 reports them together")
    nl.add_argument("--plot", help="vlb: write a plot of the bound's terms L_t against t to this PNG (default: no plot)")
    nl.add_argument("--out", help="write the result (mean, standard error, terms, settings) to this JSON file "
                                  "(default: print only)")
    nl.add_argument("--no-progress", action="store_true",
                    help="report no progress (otherwise: a bar on a terminal, a line every 30 s elsewhere)")

    for command in (s, t, pr, pb, b, tg, nl):  # errors found after parsing name the subcommand: "scoregen sample: error: ..."
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

    if args.checkpoint is None and (args.classifier or args.grid or args.no_clip or args.format or args.model_config):
        parser.error("--classifier, --grid, --no-clip, --format and --model-config apply to --checkpoint models")
    if args.classifier_config is not None and args.classifier is None:
        parser.error("--classifier-config describes a --classifier: give one")
    for flag, path, suffix in (("--out", args.out, ".npy"), ("--grid", args.grid, ".png")):
        if path is not None:  # before any work: a bad destination must not cost a sampling run
            _check_output(parser, flag, path, suffix)
    from .distributed import setup

    context = setup(args.device)  # under torchrun: joins the job; each rank samples its share of the indices
    args._device = context.device
    model, x0_hook, value_range, name, x_start = _sampling_model(args, parser)
    if args.grid and len(model.shape) != 3:
        parser.error(f"--grid needs an image model (samples of shape (C, H, W)); this one samples shape {tuple(model.shape)}")
    options = {k: getattr(args, k) for k in given}
    shown = dict(options)  # as given: a grid file by its name
    if isinstance(options.get("sigmas"), str):  # a grid file from `scoregen tune-grid`
        from .samplers.tune import load_grid

        try:
            options["sigmas"] = load_grid(options["sigmas"], model)
        except (OSError, ValueError) as e:
            parser.error(f"--sigmas: cannot read the grid file {options['sigmas']!r}: {e}")
    if args.sampler == "ddpm" and args.variance is None and getattr(model, "learned_variance", False):
        options["variance"] = shown["variance"] = "learned"  # as improved-diffusion samples its learn_sigma models
    if x_start is not None:  # the original code's initial state (NCSNv2: uniform images), drawn from the seed
        options["x_start"] = x_start(args.n, torch.Generator().manual_seed(args.seed)).to(context.device)
        name += ", started from the original code's initial state"
    if context.distributed or os.path.isdir(args.out + ".shards"):  # torchrun, or a rerun of one (any process count)
        return _sample_sharded(args, context, model, x0_hook, value_range, name, options, shown)
    result = sample(model, args.sampler, args.n, seed=args.seed, y=args.label, x0_hook=x0_hook, batch_size=args.batch_size,
                    progress=False if args.no_progress else None, device=context.device, **options)
    arr = result.samples.to(torch.float32).cpu().numpy()
    with atomic_write(args.out, "wb") as f:
        np.save(f, arr)
    if args.grid:
        save_image_grid(result.samples, args.grid, value_range)
    opts = " ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "defaults"
    shape = " x ".join(map(str, arr.shape))
    print(f"{args.sampler} ({opts}) on {name}: wrote {shape} samples to {args.out}" + (f" and {args.grid}" if args.grid else ""))
    batches = f"  in batches of {result.batch_size}" if result.batch_size and result.batch_size < args.n else ""
    print(f"NFE {result.nfe}  wall time {result.wall_time:.3f} s  seed {args.seed}{batches}")
    if args.sampler == "langevin":  # which grid the defaults chose, and where its sigma_max came from
        from .samplers import langevin_grid

        with warnings.catch_warnings():  # the run itself already warned about a coarse grid
            warnings.simplefilter("ignore")
            grid = langevin_grid(model, model.shape, args.levels, args.sigma_max, args.sigma_min, spacing=args.spacing,
                                 sigmas=options.get("sigmas"), timesteps=args.timesteps)
        print(f"langevin grid: {grid.describe()}")
    return 0


#: Flags that do not change what a sampling run computes: a rerun that differs only in these resumes its shards.
_UNRECORDED = {"--out": 1, "--grid": 1, "--no-progress": 0, "--batch-size": 1, "--device": 1}


def _file_state(path: str) -> list:
    """Size and modification time of a file, or of every file in a folder (two levels): enough to tell that a model,
    target or config file changed between two runs of the same command."""
    if os.path.isfile(path):
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    found = []
    for root, dirs, files in os.walk(path):
        if os.path.relpath(root, path).count(os.sep) >= 1:
            dirs.clear()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            found.append([os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns])
    return sorted(found)


def _run_record(args: argparse.Namespace, shape: tuple, device) -> dict:
    """What a sharded sampling run computes, for its shards' run.json: its command line without the output and speed
    flags, the state of every file it names (a model edited in place must not be mixed with its old shards), the
    device type (CPU and CUDA generators differ), torch's version and scoregen's build. A rerun of the same command
    resumes the shards, anything else is refused."""
    import torch

    from .io.shards import code_fingerprint

    argv, i = [], 0
    while i < len(args._argv):
        flag = args._argv[i].split("=", 1)[0]
        if flag in _UNRECORDED:
            i += 1 + (_UNRECORDED[flag] if "=" not in args._argv[i] else 0)
            continue
        argv.append(args._argv[i])
        i += 1
    files = {a: _file_state(a) for a in argv if not a.startswith("-") and os.path.exists(a)}
    return {"command": argv, "files": files, "n": args.n, "seed": args.seed, "shape": list(shape), "dtype": "float32",
            "device_type": torch.device(device).type, "torch": torch.__version__, "scoregen": code_fingerprint()}


def _sample_sharded(args, context, model, x0_hook, value_range, name: str, options: dict, shown: dict) -> int:
    """`scoregen sample` under torchrun, or rerun after one: the indices in chunks (the one-process batches), each rank
    sampling every world_size-th chunk into its shard (:mod:`scoregen.io.shards`), rank 0 merging them in index order;
    each chunk is rows [a, b) of the one-process run (per-sample streams), so the merged output equals it. A rerun,
    with any number of processes, skips the chunks already written."""
    import time

    import torch

    from .distributed import all_reduce_max, barrier, on_main
    from .io import save_image_grid
    from .io.shards import ShardSet
    from .samplers import batch_ranges, sample

    start = time.perf_counter()
    n, shape = args.n, tuple(model.shape)
    # chunks: one process's batches (--batch-size, or the memory estimate's default), never the number of ranks, so
    # that a rerun with another number of processes finds the same chunks, and each chunk is computed as the one-process
    # run computes that batch (a network's kernels can round differently in batches of other sizes)
    ranges = batch_ranges(model, args.sampler, n, y=args.label, x0_hook=x0_hook, device=context.device,
                          batch_size=args.batch_size)
    size = ranges[0][1] - ranges[0][0]
    shards = ShardSet(args.out, _run_record(args, shape, context.device))
    # the folder and its run.json exist before any rank writes a shard; a refusal there stops every rank
    on_main(context, shards.open, f"open the shard folder {shards.dir}")
    done = sum(1 for a, b in ranges if shards.has(a, b, shape, "float32")) if context.is_main else 0
    x_start = options.pop("x_start", None)
    nfe = 0
    for a, b in ranges[context.rank::context.world_size]:
        if shards.has(a, b, shape, "float32"):
            continue
        part = dict(options, x_start=x_start[a:b]) if x_start is not None else options
        res = sample(model, args.sampler, b - a, seed=args.seed, index_offset=a, y=args.label, x0_hook=x0_hook,
                     batch_size=size, progress=False if args.no_progress or not context.is_main else None,
                     device=context.device, **part)
        shards.write(a, b, res.samples.to(torch.float32).cpu().numpy())
        nfe = max(nfe, res.nfe)
    nfe = int(all_reduce_max(torch.tensor([nfe], dtype=torch.float64), context).item())  # ode's varies per batch
    barrier(context)  # every shard written (a rank that failed has ended the job: nothing is merged)
    merged = on_main(context, lambda: shards.merge(ranges, shape, "float32"), f"merge the shards into {args.out}")
    if context.is_main:
        if args.grid:
            save_image_grid(torch.from_numpy(merged), args.grid, value_range)
        wall = time.perf_counter() - start
        opts = " ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "defaults"
        print(f"{args.sampler} ({opts}) on {name}: wrote {' x '.join(map(str, merged.shape))} samples to {args.out}"
              + (f" and {args.grid}" if args.grid else ""))
        resumed = f", {done} of them already written by an earlier run" if done else ""
        ranks = f"{context.world_size} processes ({context.backend}, " if context.distributed else "1 process ("
        print(f"{ranks}{context.device.type}): {len(ranges)} shards of "
              f"{size} samples{resumed}; wall time {wall:.3f} s, {n / wall:.1f} samples/s; seed {args.seed}"
              + (f"; NFE {nfe}" if nfe else ""))
    barrier(context)
    return 0


def _cmd_tune_grid(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .samplers.tune import save_grid, tune_grid

    _check_output(parser, "--out", args.out, ".json")
    if args.time_limit is not None and not args.time_limit > 0:
        parser.error(f"--time-limit must be a positive number of seconds, got {args.time_limit:g}")
    # the model itself: no guidance, no clipping (spacing="optimized" fits the same way)
    args.label = args.classifier = args.guidance_scale = None
    args.no_clip = True
    model, _, _, name, _ = _sampling_model(args, parser)
    grid = tune_grid(model, args.sampler, args.steps, n=args.n, seed=args.seed, max_evals=args.max_evals,
                     time_limit=args.time_limit, progress=False if args.no_progress else None)
    save_grid(grid, args.out)
    info = grid.info
    print(f"{args.sampler}, {args.steps} steps on {name}: wrote {args.out}")
    print("VE sigmas: " + ", ".join(f"{v:.4g}" for v in grid.s))
    validation = info.get("validation")
    if isinstance(validation, dict):
        print("endpoint error on fresh noise (RMSE against the reference solve): "
              + ", ".join(f"{k} {v:.4g}" for k, v in validation.items() if isinstance(v, (int, float))))
    print(f"search: {info.get('runs', '?')} sampler runs, {info.get('nfe', '?')} model calls, "
          f"{info.get('wall_time', float('nan')):.1f} s")
    return 0


def _cmd_nll(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    import torch

    from .data import load_data
    from .io import atomic_write, load_checkpoint
    from .likelihood import ode_nll, plot_terms, vlb
    from .targets import load_target
    from .variance import analytic_variance

    vlb_only = [f for f, v in (("--variance", args.variance != "beta_tilde"), ("--steps", args.steps),
                               ("--spacing", args.spacing), ("--timesteps", args.timesteps), ("--plot", args.plot)) if v]
    if args.method == "ode" and vlb_only:
        parser.error(f"{', '.join(vlb_only)} apply to --method vlb")
    ode_options = {k: getattr(args, k) for k in ("rtol", "atol", "divergence", "probe", "probes")
                   if getattr(args, k) is not None}
    if args.method == "vlb" and ode_options:
        parser.error(f"{', '.join('--' + k for k in ode_options)} apply to --method ode")
    for flag, path, suffix in (("--plot", args.plot, ".png"), ("--out", args.out, ".json")):
        if path is not None:
            _check_output(parser, flag, path, suffix)
    if args.bins is not None and (args.bins == 1 or args.bins < 0):
        parser.error(f"--bins must be 0 (continuous data) or at least 2, got {args.bins}")
    from .distributed import all_reduce_max, setup, shard
    from .likelihood import gather_results

    context = setup(args.device)  # under torchrun: joins the job; each rank evaluates its share of the data points
    g = torch.Generator().manual_seed(args.seed)
    exact, labels, data_range = None, None, (-1.0, 1.0)
    from .interop.diffusers import is_diffusers_folder

    diffusers = args.model is not None and is_diffusers_folder(args.model)
    if args.model is not None and not diffusers:
        from .targets import BUILTIN_TARGETS

        is_target = args.model in BUILTIN_TARGETS or args.model.lower().endswith(".json")
        args.target, args.checkpoint = (args.model, None) if is_target else (None, args.model)
    if diffusers:
        from .interop.diffusers import from_diffusers, load_diffusers

        if args.data is None:
            parser.error("a diffusers model does not record its training data: give --data")
        model, name, spec = load_diffusers(args.model), f"diffusers model {args.model}", args.data
        if args.method == "ode" and not model.net.learned_labels:  # a smooth field for the adaptive solver
            model = from_diffusers(model.unet, {**model.scheduler_config, "_class_name": model.scheduler_class},
                                   time="fractional")
    elif args.checkpoint is None:
        target = load_target(args.target or "ring2d")
        model, name, spec = target, target.name, args.data
        if spec is None:
            n = args.n or 1000
            x = target.sample(n, generator=g).to(torch.float64)
            exact, source = -target.log_prob(x), f"{n} samples of the target (seed {args.seed})"
    elif _checkpoint_format(args, parser) != "scoregen":
        from .interop.formats import load_pretrained

        try:
            loaded = load_pretrained(args.checkpoint, args.format, _model_config(args.model_config))
        except (OSError, ValueError, ImportError) as e:
            parser.error(f"--checkpoint {args.checkpoint}: {e}")
        if args.data is None:
            parser.error(f"{loaded.name} does not record its training data: give --data")
        model, name, spec = loaded.model, loaded.name, args.data
    else:
        net, config = load_checkpoint(args.checkpoint)
        if getattr(net, "parameterization", None) is None:
            parser.error(f"{args.checkpoint} holds a classifier, not a score model")
        model, name = net.score_model(), f"{config['network']['class']} from {args.checkpoint}"
        meta = config["meta"].get("data")
        spec = args.data or (meta.get("spec") if isinstance(meta, dict) else None)
        if spec is None:
            parser.error(f"{args.checkpoint} does not record its training data: give --data")
    if spec is not None:
        data = load_data(spec, seed=args.seed)
        pick = torch.randperm(len(data), generator=g)[: args.n or 512]
        x, data_range = data.x[pick], args.data_range or tuple(data.value_range)
        if getattr(getattr(model, "net", None), "num_classes", None) is not None:  # p(x | y): the data's own labels
            if data.y is None:
                parser.error(f"{name} is class-conditional; the data {spec} has no labels")
            labels = data.y[pick]
        source = f"{len(pick)} of the {len(data)} points of {spec} (a random subset, seed {args.seed})" + \
            ("; conditional on each point's label: -log p(x | y)" if labels is not None else "")
        bins = args.bins if args.bins is not None else (_data_bins(spec) or 0)
    else:
        bins = args.bins or 0
    bins = bins or None
    if args.variance == "analytic":  # Gamma on the whole data set (--data), the labels too for a conditional model
        model = analytic_variance(model, data.x if spec is not None else target.sample(4096, generator=g),
                                  data_range=data_range if spec is not None else "auto", seed=args.seed,
                                  y=data.y if labels is not None else None, progress=False if args.no_progress else None)
    progress = False if args.no_progress or not context.is_main else None
    if context.device.type != "cpu":  # everything loads on the CPU
        from .bench.run import move_model

        move_model(model, context.device)
        x, labels = x.to(context.device), None if labels is None else labels.to(context.device)
    # the subset was drawn from the seed above, the same on every rank: each evaluates its shard [a, b) of it, whole
    # batches of the one-process run, with the noise draws of those indices (index_offset), so its per-sample values are
    # the one-process run's rows (a network's kernels can round differently in batches of other sizes)
    first, last = shard(-(-len(x) // args.batch_size), context.rank, context.world_size)
    a, b = first * args.batch_size, min(last * args.batch_size, len(x))
    common = dict(bins=bins, data_range=data_range, y=None if labels is None else labels[a:b], seed=args.seed,
                  batch_size=args.batch_size, progress=progress, details=True, index_offset=a)
    start, result = time.perf_counter(), None
    if b > a and args.method == "vlb":
        result = vlb(model, x[a:b], steps=args.steps, spacing=args.spacing, timesteps=args.timesteps,
                     variance=args.variance, **common)
    elif b > a:
        result = ode_nll(model, x[a:b], **common, **ode_options)
    wall = time.perf_counter() - start
    if context.distributed:  # rank 0 gets every rank's per-sample values in index order and the slowest rank's time
        wall = float(all_reduce_max(torch.tensor([wall], dtype=torch.float64), context))
        result = gather_results(result, context)
        if not context.is_main:
            return 0
    info = result.info
    if args.method == "vlb":
        how = f"variance {args.variance}, {info['grid']}"
    else:
        how = f"{info['method']} rtol {info['rtol']:g} atol {info['atol']:g}, {info['divergence']} divergence" + \
              (f" ({info['probes']} {info['probe']} probe(s))" if info["probe"] else "")
    quant = f"{bins} values per dimension in [{data_range[0]:g}, {data_range[1]:g}]" if bins else "continuous data"
    print(f"{args.method} ({how}) of {name}")
    print(f"data: {source}; {quant}")
    print(f"  {result.mean():.4f} +- {result.sem():.4f} bits/dim   ({result.mean('nats'):.3f} +- {result.sem('nats'):.3f} "
          f"nats per sample of {result.dims} dims)")
    terms = result.term_bpd()
    print("  terms (bits/dim): " + ", ".join(f"{k} {float(np.sum(v)):.4f}" for k, v in terms.items()))
    ranks = f" (the slowest of {context.world_size} processes)" if context.distributed else ""
    print(f"  NFE {result.nfe} per sample, wall time {wall:.1f} s{ranks}, seed {args.seed}")
    report = result.to_dict()
    if context.distributed:
        report["processes"] = context.world_size
    if exact is not None:
        bpd = exact / (result.dims * math.log(2.0))
        print(f"  exact -log p (the target's closed form): {float(bpd.mean()):.4f} +- "
              f"{float(bpd.std() / math.sqrt(bpd.numel())):.4f} bits/dim")
        report["exact_bits_per_dim"] = float(bpd.mean())
    if args.plot:
        plot_terms([result], args.plot, title=f"{name}: vlb terms")
        print(f"wrote {args.plot}")
    if args.out:
        report.update(command="scoregen " + " ".join(args._argv), wall_time=wall, model=name, data=source)
        with atomic_write(args.out) as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.out}")
    return 0


def _checkpoint_format(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The format of ``--checkpoint``: ``--format``, else detected from the file (:func:`~scoregen.interop.formats.detect_format`)."""
    from .interop.formats import detect_format

    if args.format is not None:
        return args.format
    try:
        return detect_format(args.checkpoint)
    except FileNotFoundError:
        return "scoregen"  # load_checkpoint says what is missing, and which built-in models there are
    except (OSError, ValueError) as e:
        parser.error(f"--checkpoint: {e}")


def _model_config(value: Optional[str]):
    """``--model-config``: a JSON file's dict, another file's path (an NCSNv2 YAML), or the string itself (a preset
    name, openai's flags string)."""
    if value is None or not os.path.isfile(value):
        return value
    if value.lower().endswith(".json"):
        from .io import MAX_CONFIG_BYTES, read_capped

        return json.loads(read_capped(value, MAX_CONFIG_BYTES, "--model-config"))
    return value


def _foreign_model(args: argparse.Namespace, parser: argparse.ArgumentParser, fmt: str):
    """`_sampling_model` for a model trained elsewhere (:func:`~scoregen.interop.formats.load_pretrained`)."""
    from .guidance import ClassifierFreeGuidance, ClassifierGuidance
    from .interop.formats import load_pretrained
    from .models import clip_x0

    try:
        loaded = load_pretrained(args.checkpoint, fmt, _model_config(args.model_config), device=_device(args))
    except (OSError, ValueError, ImportError) as e:
        parser.error(f"--checkpoint {args.checkpoint} ({fmt}): {e}")
    model, classes = loaded.model, loaded.num_classes
    if getattr(args, "variance", None) == "analytic":
        parser.error(f"--variance analytic estimates the model's mean squared eps on its training data, which a {fmt} "
                     "checkpoint does not record; use `scoregen nll --variance analytic --data ...` or the Python API")
    if args.label is not None:
        if args.classifier:
            clf = _foreign_classifier(args, parser)
            model = ClassifierGuidance(model, clf, 1.0 if args.guidance_scale is None else args.guidance_scale)
            classes = classes or getattr(clf, "num_classes", None)
        elif classes is None:
            parser.error("--label with an unconditional model needs --classifier (a noisy classifier)")
        elif loaded.null_label is None and args.guidance_scale:
            parser.error(f"{loaded.name} has no 'no class' label, so classifier-free guidance (--guidance-scale) does not "
                         "apply: --label alone samples the class-conditional model, --classifier adds classifier guidance")
        else:
            model = ClassifierFreeGuidance(model, loaded.null_label, args.guidance_scale or 0.0)
        if classes is not None and not 0 <= args.label < classes:
            parser.error(f"--label must be in 0..{classes - 1}, got {args.label}")
    elif args.classifier:
        parser.error("--classifier needs --label Y (the class to guide towards)")
    elif classes is not None and loaded.null_label is None:
        parser.error(f"{loaded.name} is class-conditional ({classes} classes): give --label Y")
    hook = loaded.x0_hook
    if hook is None and len(model.shape) == 3 and loaded.value_range and not args.no_clip:
        hook = clip_x0(*loaded.value_range)
    elif args.no_clip:
        hook = None
    name = loaded.name
    if args.label is not None:
        kind = f"classifier guidance ({args.classifier}) with scale {model.scale:g}" if args.classifier else "conditional"
        name += f", class {args.label} ({kind})"
    start = loaded.x_start if getattr(args, "sampler", None) == "langevin" and args.sigma_max is None else None
    return model, hook, loaded.value_range, name, start


def _foreign_classifier(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """``--classifier``: a scoregen classifier checkpoint, or guided-diffusion's noisy classifier .pt (its flags in
    ``--classifier-config``)."""
    from .io import load_checkpoint

    if os.path.isdir(args.classifier) or not os.path.exists(args.classifier):
        clf, _ = load_checkpoint(args.classifier, device=_device(args))
        if getattr(clf, "parameterization", None) is not None:
            parser.error(f"--classifier {args.classifier} holds a score model, not a classifier")
        return clf.classifier()
    from .interop.openai import PRESETS, load_openai_classifier

    if args.classifier_config is None:
        parser.error(f"--classifier {args.classifier}: a guided-diffusion classifier needs its flags (--classifier-config: "
                     f"a flags string, a FILE.json or a preset: {', '.join(sorted(PRESETS))})")
    try:
        return load_openai_classifier(args.classifier, _model_config(args.classifier_config), device=_device(args))
    except (OSError, ValueError) as e:
        parser.error(f"--classifier {args.classifier}: {e}")


def _device(args: argparse.Namespace):
    """Where this process computes: ``--device``, else (``args._device``, set by the command from
    :func:`scoregen.distributed.setup`) ``cuda:LOCAL_RANK`` where CUDA is available, else the CPU."""
    return getattr(args, "_device", None) or getattr(args, "device", None) or "cpu"


def _sampling_model(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """(score model, x0 hook, data value range, name) for `scoregen sample`, guidance applied."""
    from .guidance import ClassifierFreeGuidance, ClassifierGuidance
    from .io import load_checkpoint
    from .models import clip_x0
    from .targets import load_target

    import torch

    if args.checkpoint is None:
        target = load_target(args.target or "ring2d")
        model = _analytic(args, target, lambda: (target.sample(4096, generator=torch.Generator().manual_seed(args.seed)),
                                                 "auto", None))
        if args.label is not None:
            if not 0 <= args.label < target.num_classes:
                parser.error(f"--label must be a class of {target.name}: 0..{target.num_classes - 1}, got {args.label}")
            model = ClassifierGuidance(target, target.classifier, 1.0 if args.guidance_scale is None else args.guidance_scale)
        return model, None, None, target.name, None
    fmt = _checkpoint_format(args, parser)
    if fmt != "scoregen":
        return _foreign_model(args, parser, fmt)
    net, config = load_checkpoint(args.checkpoint, device=_device(args))
    if getattr(net, "parameterization", None) is None:
        if getattr(net, "schedule", None) is None:  # a judge: no noise levels, so no guidance either
            parser.error(f"{args.checkpoint} holds a clean-image classifier ({config['network']['class']}), not a score "
                         "model: it judges samples, and can neither sample nor guide")
        parser.error(f"{args.checkpoint} holds a classifier, not a score model; pass it as --classifier")
    value_range = _value_range(config, args.checkpoint)
    model = _analytic(args, net.score_model(), lambda: _training_data(config, args.checkpoint, parser,
                                                                        getattr(net, "num_classes", None) is not None))
    if args.label is not None:
        classes = getattr(net, "num_classes", None)
        if args.classifier:
            clf, _ = load_checkpoint(args.classifier, device=_device(args))
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
    if args.model_config is not None:
        parser.error("--model-config applies to openai, score_sde and ncsnv2 checkpoints; a scoregen checkpoint holds its own")
    return model, hook, value_range, name, None


def _data_range_arg(value: str) -> tuple[float, float]:
    """``LO,HI`` with LO < HI, both finite."""
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"expected finite LO < HI, got {value!r}")
    return lo, hi


def _data_bins(spec: str) -> Optional[int]:
    """How many evenly spaced values a data source takes per dimension: the digits' 17 grey levels, an image folder's
    256; None (continuous) for mixtures and arrays."""
    return 17 if spec == "digits" else 256 if os.path.isdir(spec) else None


def _analytic(args: argparse.Namespace, model, data):
    """``model`` wrapped for ``--variance analytic`` (its mean squared eps estimated on ``data()``: (x, data range,
    labels or None)), else ``model`` itself."""
    if getattr(args, "variance", None) != "analytic":
        return model
    from .variance import analytic_variance

    x, data_range, y = data()
    return analytic_variance(model, x, data_range=data_range, y=y, seed=args.seed,
                             progress=False if args.no_progress else None)


def _training_data(config: dict, checkpoint: str, parser: argparse.ArgumentParser, conditional: bool):
    """(x, value range, labels for a ``conditional`` model or None) of the data a checkpoint was trained on
    (``meta.data.spec``), for Analytic-DPM's estimate."""
    from .data import load_data

    meta = config["meta"].get("data")
    spec = meta.get("spec") if isinstance(meta, dict) else None
    if spec is None:
        parser.error(f"--variance analytic estimates the model's mean squared eps on its training data, but {checkpoint} "
                     "does not record it (meta.data.spec)")
    data = load_data(spec)
    if conditional and data.y is None:
        parser.error(f"{checkpoint} is class-conditional, but its training data {spec} has no labels")
    return data.x, tuple(data.value_range), data.y if conditional else None


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
    import copy

    import torch

    from .data import load_data
    from .distributed import setup
    from .io import check_output_dir, read_checkpoint_config
    from .training import TrainConfig, train
    from .training.distributed import check_global_batch
    from .training.recipes import default_network, heldout_training

    if args.resume and args.overwrite:
        parser.error("--resume continues the checkpoint in --out and --overwrite replaces it: give one of them")
    # Under torchrun: join the job; every rank trains a DistributedDataParallel replica on its share of each global
    # batch of --batch-size, and rank 0 writes the checkpoints (scoregen.training.distributed).
    context = setup(args.device)
    args._device = context.device
    try:
        check_global_batch(args.batch_size, context.world_size)  # before loading data or building the network
    except ValueError as e:
        parser.error(str(e))
    check_output_dir(args.out)  # before loading data or building the network
    data = load_data(args.data, seed=args.seed)
    torch.manual_seed(args.seed)  # network initialisation
    net = default_network(data.x, args.objective, data.num_classes, args.conditional).to(context.device)
    x, y, evaluate = data.x, data.y if (args.conditional or args.objective == "classifier") else None, None
    if args.objective == "judge":  # fit a stratified 80%; each checkpoint's meta.heldout scores the other 20%
        x, y, evaluate = heldout_training(data)
        if context.device.type != "cpu":  # the held-out images stay on the CPU: score a CPU copy of the EMA network
            evaluate = (lambda score: lambda ema: score(copy.deepcopy(ema).cpu()))(evaluate)
    x, y = x.to(context.device), None if y is None else y.to(context.device)
    config = TrainConfig(args.objective, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         checkpoint_every=args.checkpoint_every, seed=args.seed,
                         label_dropout=0.1 if args.conditional else 0.0,
                         bins=_data_bins(args.data) if args.objective == "hybrid" else None)
    meta = {"data": {"spec": args.data, "name": data.name, "shape": list(data.shape),
                     "value_range": list(data.value_range) if data.value_range else None, "num_classes": data.num_classes}}
    summary = train(net, x, y, config, args.out, resume=args.resume, overwrite=args.overwrite, meta=meta,
                    progress=False if args.no_progress else None, evaluate=evaluate, context=context)
    if not context.is_main:  # rank 0 reports for the job
        return 0
    start, end = summary["start_step"], summary["end_step"]
    if start == end:
        print(f"the checkpoint in {args.out} is already at step {end} (--steps {args.steps}): nothing to train")
    else:
        ranks = f" with {context.world_size} processes" if context.distributed else ""
        print(f"trained {type(net).__name__} ({args.objective}) on {data.name}{ranks} from step {start} to {end}: "
              f"running loss {summary['running_loss']:.4f}; checkpoint in {args.out}")
    if evaluate is not None:
        held = read_checkpoint_config(args.out)["meta"]["heldout"]  # scored at the last checkpoint, by the EMA weights
        if held["n"]:
            print(f"held-out accuracy {held['accuracy']:.4f} (mean confidence {held['confidence']:.3f}) on {held['n']} "
                  f"held-out images of {data.name} (stratified split, seed {held['split_seed']}; not trained on)")
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
        # on the CPU whatever the machine: the recipes are bit-reproducible there (CUDA kernels round otherwise)
        train_args = build_parser().parse_args(["train", *argv, "--out", train_dir, "--device", "cpu", *extra])
        code = _cmd_train(train_args, train_args._parser)
    finally:
        torch.set_num_threads(before)
    if code:
        return code
    export_checkpoint(train_dir, export_dir, meta={"builtin": args.name, "recipe": pretrained_recipe(args.name),
                                                   "built_on": build_environment()})
    print(f"exported the EMA weights to {export_dir}; to ship them, replace scoregen/pretrained/{args.name} with it")
    return 0


def _csv_list(parser: argparse.ArgumentParser, flag: str, text: Optional[str], convert, what: str) -> Optional[list]:
    if text is None:
        return None
    try:
        values = [convert(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        parser.error(f"{flag} must be comma-separated {what}, got {text!r}")
    return values


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import format_table, guidance_sweep, plot_quality, resolve_subject, run_bench, write_csv, write_report
    from .io import check_output_dir

    if args.guidance_scale is not None and args.label is None:
        parser.error("--guidance-scale needs --label Y (the class to guide towards)")
    for flag, path, suffix in (("--csv", args.csv, ".csv"), ("--plot", args.plot, ".png")):
        if path is not None:
            _check_output(parser, flag, path, suffix)
    if args.out is not None:
        check_output_dir(args.out, "benchmark results")
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown or not samplers:
        parser.error(f"--samplers: unknown {unknown}; choose from {sorted(SAMPLERS)}")
    if "ode" in samplers:
        parser.error("--samplers: ode is adaptive (it chooses its own steps), so it has no NFE budget to rank it at; "
                     "time it with `scoregen sample --sampler ode`")
    budgets = _csv_list(parser, "--budgets", args.budgets, int, "positive integers")
    if budgets is not None and min(budgets) < 1:
        parser.error(f"--budgets must be positive integers, got {args.budgets!r}")
    scales = _csv_list(parser, "--guidance-scales", args.guidance_scales, float, "finite numbers")
    if scales is not None and not all(math.isfinite(v) and v >= 0 for v in scales):
        parser.error(f"--guidance-scales must be finite numbers >= 0, got {args.guidance_scales!r}")
    default_run = args.models is None
    specs = list(DEFAULT_BENCH_MODELS) if default_run else args.models
    peers = (args.peers is not None or default_run) and not args.no_peers
    peer_names = None if args.peers in (None, "all") else [p.strip() for p in args.peers.split(",") if p.strip()]
    from .distributed import setup

    # under torchrun: each rank samples its share of every run; rank 0 scores the gathered samples, prints and writes
    context = setup(args.device)
    is_main = context.is_main
    progress = False if args.no_progress or not is_main else None

    subjects = [resolve_subject(spec, args.reference) for spec in specs]  # every model loads before any sampling
    for subject in subjects:
        if args.label is not None:
            if subject.kind != "exact":
                parser.error(f"--label applies to exact targets; {subject.name} is swept over every class with "
                             "--guidance-scales instead")
            classes = subject.model.num_classes
            if not 0 <= args.label < classes:
                parser.error(f"--label must be a class of {subject.name}: 0..{classes - 1}, got {args.label}")
    results, sweeps = [], []
    for subject in subjects:
        # the no-argument run keeps to a few minutes: peers on the exact target (cheap evaluations), not on digits
        with_peers = peers and not (default_run and subject.kind != "exact")
        result = run_bench(subject, samplers, budgets, n=args.n, seed=args.seed, peers=with_peers, peer_names=peer_names,
                           label=args.label, guidance_scale=1.0 if args.guidance_scale is None else args.guidance_scale,
                           progress=progress, device=context.device, context=context, batch_size=args.batch_size)
        if peers and not with_peers:
            result.skipped_peers.append(f"on {subject.name} only when asked, as they take minutes here: scoregen bench "
                                        f"--model {subject.info.get('checkpoint', subject.name)} --peers")
        if is_main:
            print(format_table(result), end="\n\n", flush=True)
        results.append(result)
        sweep_scales = scales if scales is not None else (DEFAULT_GUIDANCE_SCALES if default_run and subject.kind == "digits" else None)
        if sweep_scales and subject.guided is not None:
            sweep = guidance_sweep(subject, sweep_scales, args.sweep_sampler, args.sweep_budget, n=args.n,
                                   seed=args.seed, label=args.label, progress=progress, device=context.device,
                                   context=context, batch_size=args.batch_size)
            if is_main:
                print(format_table(sweep), end="\n\n", flush=True)
            sweeps.append(sweep)
    if not is_main:  # rank 0 holds the scores: it alone reports
        return 0
    if args.csv:
        write_csv(results + sweeps, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        plot_quality(results, args.plot)
        print(f"wrote {args.plot}")
    if args.out:
        paths = write_report(results, args.out, sweeps, command="scoregen " + " ".join(sys.argv[1:]))
        grids = sum("grids" + os.sep in p for p in paths)
        print(f"wrote {', '.join(os.path.basename(p) for p in paths if 'grids' + os.sep not in p)}"
              + (f" and {grids} sample grids" if grids else "") + f" to {args.out}")
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


#: What torch.distributed's collectives say when another rank of the job has gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "DistBackendError",
              "NCCL communicator was aborted")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # recorded in result files as the command that made them
    command = {"sample": _cmd_sample, "train": _cmd_train, "pretrained": _cmd_pretrained, "bench": _cmd_bench,
               "tune-grid": _cmd_tune_grid, "nll": _cmd_nll}[args.command]

    from .distributed import launched, teardown

    who = f"scoregen {args.command}"
    if launched():  # under torchrun every rank speaks: say which
        who += f" (rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']})"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{who}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():  # warnings in the command's own words, not Python's file:line form
            warnings.showwarning = show_warning
            return command(args, args._parser)
    except EXPECTED_ERRORS as e:
        print(f"{who}: error: {_describe(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the allocator's own failure, past every estimate: not a bug, a limit of this machine
        text = str(e)
        if launched() and any(sign in text for sign in _PEER_GONE):  # another rank failed: its own error says why
            print(f"{who}: error: stopped: another process of the job failed or was killed (torchrun's report names "
                  f"it; {text.strip().splitlines()[-1][:200]})", file=sys.stderr)
            return 2
        if not any(sign in text for sign in _OUT_OF_MEMORY):
            raise
        print(f"{who}: error: out of memory ({text.strip().splitlines()[-1][:300]}); use a smaller "
              "-n or --batch-size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{who}: interrupted", file=sys.stderr)
        return 130
    finally:
        teardown()


if __name__ == "__main__":
    sys.exit(main())
