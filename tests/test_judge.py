"""The built-in digits judge: a clean-image CNN classifier trained on a held-out split, independent of the
networks that sample and guide; its split, its objective, its recipe, and its refusal to sample or guide."""

import json

import pytest
import torch

import scoregen as sg
from scoregen import pretrained
from scoregen.cli import build_parser, main
from scoregen.data import HELDOUT_SEED, digits_split, load_data, stratified_split
from scoregen.networks import NETWORKS, CNNClassifier, MLPClassifier
from scoregen.schedules import DiscreteVP
from scoregen.training import TrainConfig, judge_loss, shift_images, train
from scoregen.training.recipes import default_network


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def judge():
    return sg.load_checkpoint("digits-judge")


def test_the_shipped_judge_scores_its_held_out_digits_as_its_meta_says(judge, digits):
    net, config = judge
    assert isinstance(net, CNNClassifier) and not net.training and config["network"]["class"] == "CNNClassifier"
    assert set(config["files"]) == {"weights"} and config["meta"]["builtin"] == "digits-judge"
    assert config["meta"]["train"]["objective"] == "judge"
    held = config["meta"]["heldout"]
    assert held["split_seed"] == HELDOUT_SEED == 0 and held["n"] == 359 and held["train_n"] == 1438
    fit, heldout = digits_split(held["split_seed"])
    assert config["meta"]["data_fingerprint"]["x_shape"] == [len(fit), 1, 8, 8]  # trained on the 80% alone
    with torch.no_grad():
        logits = net(digits.x[heldout])
    accuracy = (logits.argmax(1) == digits.y[heldout]).double().mean().item()
    assert accuracy == held["accuracy"] >= 0.95
    assert logits.double().softmax(1).max(1).values.mean().item() == pytest.approx(held["confidence"], abs=1e-6)
    assert 5e4 < sum(p.numel() for p in net.parameters()) < 2e5


def test_features_have_the_documented_shape_and_are_deterministic(judge, digits):
    net, _ = judge
    x = digits.x[:50]
    with torch.no_grad():
        f1, f2 = net.features(x), net.features(x.clone())
        logits = net(x)
        alone = net.features(x[7:8])
    assert f1.shape == (50, 64) == (50, net.feature_dim) and logits.shape == (50, 10)
    assert torch.equal(f1, f2) and torch.isfinite(f1).all()
    torch.testing.assert_close(alone, f1[7:8])  # no batch statistics: each image's features are its own
    torch.testing.assert_close(net.head(f1), logits)
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 8, 8\)"):
        net(x.reshape(50, 64))


def test_the_split_is_disjoint_stratified_seeded_and_covers_every_digit(digits):
    fit, held = digits_split()
    assert (len(fit), len(held)) == (1438, 359)
    assert torch.equal(torch.sort(torch.cat([fit, held])).values, torch.arange(1797))
    assert torch.equal(fit, fit.sort().values) and torch.equal(held, held.sort().values)
    counts = torch.bincount(digits.y, minlength=10)
    expected = torch.floor(0.2 * counts.double() + 0.5).long()
    assert torch.equal(torch.bincount(digits.y[held], minlength=10), expected)
    again, other = digits_split(0), digits_split(1)
    assert torch.equal(again[1], held) and not torch.equal(other[1], held)
    assert torch.equal(stratified_split(digits.y)[1], held)
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(digits.y, 1.0)
    with pytest.raises(ValueError, match="integer labels"):
        stratified_split(torch.rand(5))


def test_shift_images_moves_each_image_by_at_most_one_pixel():
    x = torch.rand(64, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    out = shift_images(x, 1, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    seen = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(3) for dx in range(3) if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 5])]
        assert len(hits) == 1, i
        seen.add(hits[0])
    assert len(seen) == 9  # every offset occurs
    again = shift_images(x, 1, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and shift_images(x, 0) is x


def test_judge_objective_trains_on_the_split_and_records_the_held_out_score(tmp_path, capsys):
    out = tmp_path / "judge"
    assert main(["train", "--data", "digits", "--objective", "judge", "--steps", "3", "--batch-size", "16",
                 "--out", str(out), "--no-progress"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    net, config = sg.load_checkpoint(out)
    held = config["meta"]["heldout"]
    assert isinstance(net, CNNClassifier) and held["n"] == 359 and held["split_seed"] == 0
    assert 0.0 <= held["accuracy"] <= 1.0 and config["meta"]["data_fingerprint"]["x_shape"][0] == 1438
    # a resume continues on the same 80% (the data fingerprint matches) and scores the held-out part again
    assert main(["train", "--data", "digits", "--objective", "judge", "--steps", "4", "--batch-size", "16",
                 "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["step"] == 4


def test_the_recipe_parses_as_scoregen_train_options():
    argv = pretrained.train_argv("digits-judge")
    args = build_parser().parse_args(["train", *argv, "--out", "somewhere"])
    recipe = pretrained.pretrained_recipe("digits-judge")
    assert args.data == "digits" and args.objective == "judge" and not args.conditional
    assert (args.steps, args.batch_size, args.lr, args.seed) == (recipe["train"]["steps"], recipe["train"]["batch_size"],
                                                                 recipe["train"]["lr"], recipe["train"]["seed"])
    assert recipe["threads"] == 1 and "digits-judge" in sg.pretrained_names()


@pytest.mark.filterwarnings("ignore:could not measure the network activations")  # the memory probe meets the refusal first
def test_the_judge_neither_samples_nor_guides(tmp_path, capsys, judge):
    net, _ = judge
    out = str(tmp_path / "x.npy")
    with pytest.raises(SystemExit) as exit_:  # a usage error, before anything is sampled
        main(["sample", "--checkpoint", "digits-judge", "-n", "4", "--out", out, "--no-progress"])
    assert exit_.value.code == 2 and "clean-image classifier" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", "digits-ncsn", "--classifier", "digits-judge", "--label", "3",
                 "--sampler", "ddim", "-n", "4", "--out", out, "--no-progress"]) == 2
    assert "no noise-level input" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no noise-level input"):
        net.classifier()
    ncsn, _ = sg.load_checkpoint("digits-ncsn")
    guided = sg.ClassifierGuidance(ncsn.score_model(), net, scale=1.0)  # the network itself, by mistake
    with pytest.raises(TypeError, match="cannot guide sampling"):
        sg.sample(guided, "ddim", 2, seed=0, y=3, steps=2, progress=False)


def test_networks_and_objectives_do_not_mix(digits):
    with pytest.raises(ValueError, match="square images"):
        default_network(torch.zeros(10, 2), "judge", 2)
    with pytest.raises(ValueError, match="labelled"):
        default_network(digits.x, "judge", None)
    judge = default_network(digits.x, "judge", 10)
    assert isinstance(judge, CNNClassifier) and NETWORKS["CNNClassifier"] is CNNClassifier
    noisy = MLPClassifier(64, 10, DiscreteVP.linear())
    for objective, net in (("judge", noisy), ("classifier", judge)):
        with pytest.raises(ValueError, match=f"objective '{objective}' needs"):
            train(net, digits.x[:32], digits.y[:32], TrainConfig(objective, steps=1), "unused")
    loss = judge_loss(judge, digits.x[:8], digits.y[:8], torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_config_round_trips_and_bad_configs_are_refused():
    net = CNNClassifier(in_channels=3, image_size=6, num_classes=4, channels=8, feature_dim=16, groups=4)
    again = CNNClassifier.from_config(json.loads(json.dumps(net.config())))
    assert again.config() == net.config() and again(torch.zeros(2, 3, 6, 6)).shape == (2, 4)
    assert again.features(torch.zeros(2, 3, 6, 6)).shape == (2, 16)
    with pytest.raises(ValueError, match="does not fit"):
        CNNClassifier.from_config({"widht": 3})
    with pytest.raises(ValueError, match="multiple of groups"):
        CNNClassifier(channels=12, groups=8)
    with pytest.raises(ValueError, match="num_classes"):
        CNNClassifier(num_classes=1)
