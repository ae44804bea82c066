"""How well the built-in digits classifier's recipe generalises: train the same network with the same
settings (scoregen/pretrained/recipes.json, digits-classifier) on a random 80% of the digits and report
its accuracy and mean confidence on the held-out 20% at the clean level. The shipped classifier saw all
of the digits, so this is the figure that tells how far to trust it as a judge of generated samples.

    python benchmarks/classifier_holdout.py [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import scoregen as sg
from scoregen.data import load_data
from scoregen.pretrained import pretrained_recipe
from scoregen.training import TrainConfig, train
from scoregen.training.recipes import default_network


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    recipe = pretrained_recipe("digits-classifier")["train"]
    data = load_data("digits", seed=args.seed)
    perm = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(args.seed))
    cut = int(0.8 * len(perm))
    fit, held = perm[:cut], perm[cut:]
    torch.manual_seed(recipe["seed"])
    net = default_network(data.x, "classifier", data.num_classes)
    config = TrainConfig("classifier", steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                         seed=recipe["seed"], checkpoint_every=recipe["steps"])
    with tempfile.TemporaryDirectory() as out:
        train(net, data.x[fit], data.y[fit], config, out)
        ema, _ = sg.load_checkpoint(out)
    with torch.no_grad():
        report = sg.class_report(ema.classifier()(data.x[held], 0.0), torch.full((10,), 0.1), data.y[held])
    print(f"digits-classifier recipe trained on {cut} digits: held-out accuracy {report['requested_rate']:.3f}, "
          f"mean confidence {report['confidence']:.3f} on {len(held)} digits (seed {args.seed})")


if __name__ == "__main__":
    main()
