"""How far to trust the built-in digits classifiers as judges of generated digits, on digits they never saw.

The split is :func:`scoregen.data.digits_split` (stratified: 1438 digits to train on, 359 held out at seed 0),
the same one the built-in ``digits-judge`` was trained on.

* ``digits-classifier`` (noise-conditional MLP; it guides sampling): the shipped model saw all 1797 digits, so
  its recipe (scoregen/pretrained/recipes.json) is retrained here on the training part alone and scored on the
  held-out part at the clean level (20000 steps: about 3 minutes on one CPU thread; ``--skip-retrain`` leaves it out);
* ``digits-judge`` (clean-image CNN; it guides nothing): the shipped weights, which never saw the held-out part,
  scored on it; the accuracy must equal the one its ``meta["heldout"]`` records;
* agreement: the fraction of clean digits to which the judge and the classifier give the same class (the
  shipped classifier on all digits and on the held-out ones; the retrained one on the held-out ones).

    python benchmarks/classifier_holdout.py [--seed 0] [--skip-retrain]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import scoregen as sg
from scoregen.data import digits_split, load_data
from scoregen.pretrained import pretrained_recipe
from scoregen.training import TrainConfig, train
from scoregen.training.recipes import default_network


def retrained_classifier(data, fit) -> torch.nn.Module:
    """The digits-classifier recipe trained on ``data[fit]`` alone (EMA weights, as shipped)."""
    recipe = pretrained_recipe("digits-classifier")["train"]
    torch.manual_seed(recipe["seed"])
    net = default_network(data.x, "classifier", data.num_classes)
    config = TrainConfig("classifier", steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                         seed=recipe["seed"], checkpoint_every=recipe["steps"])
    with tempfile.TemporaryDirectory() as out:
        train(net, data.x[fit], data.y[fit], config, out)
        ema, _ = sg.load_checkpoint(out)
    return ema


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split (the judge's is 0)")
    p.add_argument("--skip-retrain", action="store_true", help="leave out retraining digits-classifier's recipe (3 min)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the recipes' thread count
    data = load_data("digits")
    fit, held = digits_split(args.seed)
    uniform = torch.full((10,), 0.1)
    results = {}

    judge, config = sg.load_checkpoint("digits-judge")
    recorded = config["meta"]["heldout"]
    clf, _ = sg.load_checkpoint("digits-classifier")
    with torch.no_grad():
        judge_all = judge(data.x).argmax(1)
        clf_all = clf.classifier()(data.x, 0.0).argmax(1)
        report = sg.class_report(judge(data.x[held]), uniform, data.y[held])
    results["judge"] = report
    note = "" if args.seed == recorded["split_seed"] else f" (it was trained on the split of seed {recorded['split_seed']}: " \
                                                          "some of these digits were in its training part)"
    print(f"digits-judge (shipped, trained on {recorded['train_n']} digits): held-out accuracy "
          f"{report['requested_rate']:.4f}, mean confidence {report['confidence']:.4f} on {len(held)} digits "
          f"(split seed {args.seed}; meta.heldout records {recorded['accuracy']:.4f} on {recorded['n']}){note}")
    results["agreement_all"] = float((judge_all == clf_all).double().mean())
    results["agreement_heldout"] = float((judge_all[held] == clf_all[held]).double().mean())
    print(f"judge vs shipped digits-classifier (clean level): same class for {results['agreement_all']:.4f} of all "
          f"{len(data.x)} digits, {results['agreement_heldout']:.4f} of the {len(held)} held-out ones (the classifier "
          f"saw those); accuracy on all digits: judge {float((judge_all == data.y).double().mean()):.4f}, "
          f"classifier {float((clf_all == data.y).double().mean()):.4f}")

    if not args.skip_retrain:
        retrained = retrained_classifier(data, fit)
        with torch.no_grad():
            logits = retrained.classifier()(data.x[held], 0.0)
        report = sg.class_report(logits, uniform, data.y[held])
        results["classifier"] = report
        results["agreement_retrained_heldout"] = float((logits.argmax(1) == judge_all[held]).double().mean())
        print(f"digits-classifier recipe trained on {len(fit)} digits: held-out accuracy {report['requested_rate']:.4f}, "
              f"mean confidence {report['confidence']:.4f} on {len(held)} digits (split seed {args.seed}); same class "
              f"as the judge for {results['agreement_retrained_heldout']:.4f} of them")
    return results


if __name__ == "__main__":
    main()
