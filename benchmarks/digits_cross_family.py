"""Cross-family sampling on 8x8 digits: every sampler, unguided and classifier-guided, on the built-in
DDPM-trained U-Net (digits-ddpm) and the NCSN-trained NCSNv2 (digits-ncsn), plus classifier-free guidance
on the conditional U-Net (digits-cond). Every row is judged by the independent clean-digit CNN
``digits-judge`` through :class:`scoregen.bench.scorers.DigitsScorer`; the noisy classifier
``digits-classifier`` only guides (it never judges, so a guided row is not scored by the network that
steered it).

Columns: NFE (network evaluations), wall time, judge FD (Fréchet distance between the judge's 64-d
features of the samples and of the real digits' half B), class TV (the judge's class histogram against the
data's class frequencies), requested (guided rows: the fraction the judge assigns to the class asked for,
0..9 in turn; on the real rows: the fraction judged their true class), and the judge's mean top-class
probability (confidence). Two reference rows: "real digits", n digits of half A scored like a sample, and
"floor", the mean +- std of the same over fresh draws of n from half A: what a perfect sampler scores at
this n. Saves one image grid per row (first 100 samples; guided grids have one class per column).

    python benchmarks/digits_cross_family.py [-n 500] [--grids docs/digits] [--markdown] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import scoregen as sg
from scoregen.bench.scorers import FLOOR_DRAWS, DigitsScorer
from scoregen.data import load_data
from scoregen.io import save_image_grid

# (model, sampler, options); ddpm and ddim on the NCSN network run on its own 24 trained levels.
RUNS = [
    ("digits-ddpm", "ddpm", {}),
    ("digits-ddpm", "ddim", {"steps": 50}),
    ("digits-ddpm", "langevin", {"sigma_max": 10.0, "levels": 24, "steps_per_level": 20}),
    ("digits-ncsn", "ddpm", {}),
    ("digits-ncsn", "ddim", {}),
    ("digits-ncsn", "langevin", {"steps_per_level": 20}),
]
CFG_RUNS = [("digits-cond", s, o) for s, o in [("ddpm", {}), ("ddim", {"steps": 50}),
                                                ("langevin", {"sigma_max": 10.0, "levels": 24, "steps_per_level": 20})]]
FAMILY = {"digits-ddpm": "DDPM", "digits-ncsn": "NCSN", "digits-cond": "DDPM, conditional"}


@torch.no_grad()
def judge_confidence(judge, x: torch.Tensor) -> float:
    """The judge's mean top-class probability on ``x`` (clamped to [-1, 1], as the scorer sees it)."""
    x = x.detach().to("cpu", torch.float32).clamp(-1, 1)
    probs = torch.cat([judge(c) for c in x.split(1024)]).softmax(-1)
    return float(probs.max(-1).values.mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=500, help="samples per row (default 500; at most 896, half A's size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier-scale", type=float, default=2.0, help="classifier guidance gamma (default 2)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance w (default 1)")
    p.add_argument("--grids", default=None, help="folder for the image grids (default: none)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    data = load_data("digits", seed=args.seed)
    clf_net, _ = sg.load_checkpoint("digits-classifier")
    classifier = clf_net.classifier()  # guides only
    judge, judge_config = sg.load_checkpoint("digits-judge")
    judge.meta = judge_config["meta"]
    judge.eval()
    scorer = DigitsScorer(judge, args.n, seed=args.seed, guided=True)
    labels = torch.arange(args.n) % data.num_classes
    hook = sg.clip_x0(-1.0, 1.0)

    def score(x, y=None) -> dict:
        return {**scorer.score(x, y), "confidence": judge_confidence(judge, x)}

    rows = []  # (model, sampler, guidance, nfe, wall, {metric: value or (mean, std)})
    real, real_y = scorer.reference_samples(0), scorer.reference_labels(0)
    rows.append(("real digits (half A)", "-", "-", "0", "-", score(real, real_y)))
    floor = scorer.floor()
    confs = torch.tensor([judge_confidence(judge, scorer.reference_samples(i)) for i in range(1, FLOOR_DRAWS + 1)],
                         dtype=torch.float64)
    floor["confidence"] = (float(confs.mean()), float(confs.std()))
    rows.append((f"floor: real digits, {FLOOR_DRAWS} draws", "-", "-", "0", "-", floor))
    if args.grids:
        save_image_grid(real[:100], os.path.join(args.grids, "real.png"), data.value_range, nrow=10)

    def run(name, sampler, options, guidance):
        net, _ = sg.load_checkpoint(name)
        model, y = net.score_model(), None
        if guidance == "classifier":
            model, y = sg.ClassifierGuidance(model, classifier, args.classifier_scale), labels
        elif guidance == "cfg":
            model, y = sg.ClassifierFreeGuidance(model, net.null_label, args.cfg_scale), labels
        res = sg.sample(model, sampler, args.n, seed=args.seed, y=y, x0_hook=hook, progress=False, **options)
        report = score(res.samples, y)
        opts = " ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        g = {"none": "-", "classifier": f"classifier {args.classifier_scale:g}", "cfg": f"CFG w={args.cfg_scale:g}"}[guidance]
        rows.append((f"{name} ({FAMILY[name]})", f"{sampler} {opts}", g, str(res.nfe), f"{res.wall_time:.1f}", report))
        if args.grids:
            file = f"{name}-{sampler}" + ("" if guidance == "none" else f"-{guidance}") + ".png"
            # guided labels run 0..9 along each row, so each grid column is one class
            save_image_grid(res.samples[:100], os.path.join(args.grids, file), data.value_range, nrow=10)
        print(f"  {rows[-1][0]:28s} {sampler:8s} {g:14s} done in {res.wall_time:.1f} s: judge FD {report['fd']:.3f}",
              flush=True)

    for name, sampler, options in RUNS:
        for guidance in ("none", "classifier"):
            run(name, sampler, options, guidance)
    for name, sampler, options in CFG_RUNS:
        run(name, sampler, options, "cfg")

    def cell(rep, key, fmt="{:.3f}"):
        v = rep.get(key)
        if v is None:
            return "-"
        return f"{fmt.format(v[0])} ± {fmt.format(v[1])}" if isinstance(v, tuple) else fmt.format(v)

    head = ["model (trained as)", "sampler", "guidance", "NFE", "wall s", "judge FD", "class TV", "requested",
            "confidence"]
    table = [[model, sampler, g, nfe, wall, cell(rep, "fd"), cell(rep, "class_tv"), cell(rep, "requested"),
              cell(rep, "confidence")] for model, sampler, g, nfe, wall, rep in rows]
    print(f"\ndigits, n={args.n} per row, seed {args.seed}; torch {torch.__version__} on {platform.machine()}, "
          f"{torch.get_num_threads()} threads; total {time.perf_counter() - start:.0f} s")
    print(scorer.description + " Confidence: the judge's mean top-class probability. Guidance: "
          f"digits-classifier at gamma = {args.classifier_scale:g}; classifier-free on digits-cond at w = {args.cfg_scale:g}.")
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for r in table:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
        for r in [head, *table]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
