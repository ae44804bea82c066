"""Cross-family sampling on 8x8 digits: every sampler, unguided and classifier-guided, on the built-in
DDPM-trained U-Net (digits-ddpm) and the NCSN-trained NCSNv2 (digits-ncsn), plus classifier-free guidance
on the conditional U-Net (digits-cond). The built-in noisy classifier (digits-classifier) judges the
samples at its clean level.

Columns: NFE (network evaluations), wall time, the classifier's mean confidence, the total variation
between the samples' class histogram and the reference (the data's class frequencies; for guided rows,
the requested labels, 0..9 in turn), and for guided rows the fraction classified as the requested class.
The "real digits" row scores n data images the same way: what a perfect sampler would get.
Saves one image grid per row (first 100 samples; guided grids have one class per column).

    python benchmarks/digits_cross_family.py [-n 500] [--grids docs/digits] [--markdown] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

import scoregen as sg
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


def score_samples(classifier, x: torch.Tensor, reference: torch.Tensor, requested=None) -> dict:
    with torch.no_grad():
        logits = classifier(x, 0.0)  # sigma = 0: the classifier's least noisy trained level
    return sg.class_report(logits, reference, requested)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=500, help="samples per row (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier-scale", type=float, default=2.0, help="classifier guidance gamma (default 2)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance w (default 1)")
    p.add_argument("--grids", default=None, help="folder for the image grids (default: none)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    data = load_data("digits", seed=args.seed)
    counts = torch.bincount(data.y, minlength=data.num_classes).double()
    data_freq = counts / counts.sum()
    clf_net, _ = sg.load_checkpoint("digits-classifier")
    classifier = clf_net.classifier()
    labels = torch.arange(args.n) % data.num_classes
    uniform = torch.bincount(labels, minlength=data.num_classes).double() / args.n
    hook = sg.clip_x0(-1.0, 1.0)

    rows = []
    real = data.x[torch.randperm(len(data.x), generator=torch.Generator().manual_seed(args.seed))[:args.n]]
    rows.append(("real digits", "-", "-", 0, 0.0, score_samples(classifier, real, data_freq)))
    if args.grids:
        save_image_grid(real[:100], os.path.join(args.grids, "real.png"), data.value_range, nrow=10)

    def run(name, sampler, options, guidance):
        net, _ = sg.load_checkpoint(name)
        model, y, reference = net.score_model(), None, data_freq
        if guidance == "classifier":
            model, y, reference = sg.ClassifierGuidance(model, classifier, args.classifier_scale), labels, uniform
        elif guidance == "cfg":
            model, y, reference = sg.ClassifierFreeGuidance(model, net.null_label, args.cfg_scale), labels, uniform
        res = sg.sample(model, sampler, args.n, seed=args.seed, y=y, x0_hook=hook, progress=False, **options)
        report = score_samples(classifier, res.samples, reference, y)
        opts = " ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        g = {"none": "-", "classifier": f"classifier {args.classifier_scale:g}", "cfg": f"CFG w={args.cfg_scale:g}"}[guidance]
        rows.append((f"{name} ({FAMILY[name]})", f"{sampler} {opts}", g, res.nfe, res.wall_time, report))
        if args.grids:
            file = f"{name}-{sampler}" + ("" if guidance == "none" else f"-{guidance}") + ".png"
            # guided labels run 0..9 along each row, so each grid column is one class
            save_image_grid(res.samples[:100], os.path.join(args.grids, file), data.value_range, nrow=10)
        print(f"  {rows[-1][0]:28s} {sampler:8s} {g:14s} done in {res.wall_time:.1f} s", flush=True)

    for name, sampler, options in RUNS:
        for guidance in ("none", "classifier"):
            run(name, sampler, options, guidance)
    for name, sampler, options in CFG_RUNS:
        run(name, sampler, options, "cfg")

    head = ["model (trained as)", "sampler", "guidance", "NFE", "wall s", "confidence", "class TV", "requested"]
    table = [[model, sampler, g, str(nfe), f"{wall:.1f}", f"{rep['confidence']:.3f}", f"{rep['tv']:.3f}",
              f"{rep['requested_rate']:.3f}" if "requested_rate" in rep else "-"] for model, sampler, g, nfe, wall, rep in rows]
    print(f"\ndigits, n={args.n} per row, seed {args.seed}; torch {torch.__version__} on {platform.machine()}, "
          f"{torch.get_num_threads()} threads")
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
