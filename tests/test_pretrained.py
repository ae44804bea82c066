"""The built-in digits models: shipped, loadable by name, reproducible from their recipes, and sampled
by every sampler across the two families (a DDPM-trained U-Net, an NCSN-trained NCSNv2), judged by the
built-in noisy classifier."""

import os

import pytest
import torch

import scoregen as sg
from scoregen import pretrained
from scoregen.cli import main
from scoregen.io import read_checkpoint_config

NAMES = ["digits-classifier", "digits-cond", "digits-ddpm", "digits-judge", "digits-ncsn"]
CLIP = sg.clip_x0(-1.0, 1.0)


@pytest.fixture(scope="module")
def classifier():
    net, _ = sg.load_checkpoint("digits-classifier")
    return net.classifier()


@pytest.fixture(scope="module")
def data_freq():
    from scoregen.data import load_data

    y = load_data("digits", seed=0).y
    return torch.bincount(y, minlength=10).double() / len(y)


def judge(classifier, x, reference, requested=None):
    with torch.no_grad():
        return sg.class_report(classifier(x, 0.0), reference, requested)


def test_every_builtin_is_shipped_small_and_made_by_its_recipe():
    assert sg.pretrained_names() == NAMES
    for name in NAMES:
        path = pretrained.pretrained_path(name)
        config = read_checkpoint_config(path)  # sha256 of every file checked
        assert set(config["files"]) == {"weights"}, "a shipped model holds its EMA weights only"
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        assert size < 5e6, f"{name} is {size / 1e6:.1f} MB"
        # the shipped weights came from exactly the settings in recipes.json
        recipe = pretrained.pretrained_recipe(name)
        assert config["meta"]["builtin"] == name and config["meta"]["recipe"] == recipe
        train = config["meta"]["train"]
        for key in ("steps", "batch_size", "lr", "seed"):
            assert train[key] == recipe["train"][key], (name, key)
        assert train["objective"] == recipe["train"]["objective"]
        assert (train["label_dropout"] > 0) == bool(recipe["train"].get("conditional"))


def test_loading_every_builtin_draws_no_random_numbers_on_the_meta_device():
    """A load builds the network on the meta device first (to check the config against the weights). Random
    initialisation there imports torch._dynamo (and sympy): 1.3 to 1.8 s on the first load of digits-ncsn or
    digits-cond, against 0.05 s without."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(sg.__file__)))
    code = ("import sys, scoregen as sg; [sg.load_checkpoint(n) for n in sg.pretrained_names()]; "
            "print([m for m in ('torch._dynamo', 'sympy') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120)  # about 3 s
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_recipes_translate_to_scoregen_train_options():
    argv = pretrained.train_argv("digits-cond")
    assert argv[:4] == ["--data", "digits", "--objective", "ddpm"] and "--conditional" in argv
    assert argv[argv.index("--steps") + 1] == str(pretrained.pretrained_recipe("digits-cond")["train"]["steps"])
    with pytest.raises(ValueError, match="no built-in model 'digits-gan'.*digits-ddpm"):
        pretrained.pretrained_recipe("digits-gan")
    with pytest.raises(FileNotFoundError, match="not the name of a built-in model"):
        sg.load_checkpoint("digits-gan")


def test_pretrained_build_trains_from_the_recipe_and_exports_the_ema_weights(tmp_path, monkeypatch, capsys):
    recipe = {"description": "test", "train": {"data": "digits", "objective": "classifier", "steps": 3,
                                               "batch_size": 16, "lr": 0.001, "seed": 0}}
    monkeypatch.setattr(pretrained, "_recipes", lambda: {"digits-test": recipe})
    assert main(["pretrained", "build", "digits-test", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "scoregen train --data digits --objective classifier --steps 3" in capsys.readouterr().out
    exported = read_checkpoint_config(tmp_path / "digits-test")
    assert set(exported["files"]) == {"weights"} and exported["meta"]["recipe"] == recipe
    ema, _ = sg.load_checkpoint(tmp_path / "digits-test-train")  # the EMA weights of the training checkpoint
    net, _ = sg.load_checkpoint(tmp_path / "digits-test")
    for (k, a), (_, b) in zip(ema.state_dict().items(), net.state_dict().items()):
        assert torch.equal(a, b), k
    # resuming a finished build is a no-op that exports the same weights again
    assert main(["pretrained", "build", "digits-test", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0
    assert read_checkpoint_config(tmp_path / "digits-test")["files"] == exported["files"]


def test_pretrained_list_names_every_model_with_its_command(capsys):
    assert main(["pretrained", "list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out and "not installed" not in out
        assert "scoregen train " + " ".join(pretrained.train_argv(name)) in out


def test_classifier_is_accurate_on_the_data(classifier, data_freq):
    from scoregen.data import load_data

    data = load_data("digits", seed=0)
    report = judge(classifier, data.x, data_freq, data.y)
    assert report["requested_rate"] > 0.97 and report["tv"] < 0.02


# Every sampler on both families, unguided and classifier-guided (few steps: this checks that each
# pairing runs through the shared interface and returns finite images in range; quality is tested below).
FAST = {"ddpm": {"steps": 10}, "ddim": {"steps": 10}, "langevin": {"levels": 5, "steps_per_level": 2}}


@pytest.mark.parametrize("name", ["digits-ddpm", "digits-ncsn"])
@pytest.mark.parametrize("sampler", sorted(FAST))  # the fast solvers on every family: tests/test_solver_families.py
@pytest.mark.parametrize("guided", [False, True])
def test_both_families_run_under_every_sampler(name, sampler, guided, classifier):
    net, _ = sg.load_checkpoint(name)
    model = net.score_model()
    if guided:
        model = sg.ClassifierGuidance(model, classifier, scale=2.0)
    options = dict(FAST[sampler])
    if sampler == "langevin":
        options["sigma_max"] = 10.0
    res = sg.sample(model, sampler, 8, seed=0, y=3 if guided else None, x0_hook=CLIP, progress=False, **options)
    assert res.samples.shape == (8, 1, 8, 8) and torch.isfinite(res.samples).all()
    assert res.nfe == {"ddpm": 10, "ddim": 10, "langevin": 10}[sampler]


# Quality: each family sampled by the other family's sampler (through the command line, as the README
# shows it) gives digits the classifier recognises, spread over the classes like the data. Noise scores
# a confidence ~0.3 and a class histogram far from the data's; the real digits score ~1.0, and the TV of
# n = 200 labels drawn from the data's own frequencies is ~0.08 on average.
N = 200


@pytest.mark.parametrize("name,sampler,options", [
    ("digits-ddpm", "ddim", {"steps": 20}),
    # 7.5 s; Langevin on a built-in network stays in the default run (digits-ddpm's CLI case below)
    pytest.param("digits-ncsn", "langevin", {"steps_per_level": 5}, marks=pytest.mark.slow),
    ("digits-ncsn", "ddim", {}),
])
def test_classifier_guided_digits_are_mostly_the_requested_class(name, sampler, options, classifier):
    net, _ = sg.load_checkpoint(name)
    labels = torch.arange(N // 2) % 10
    guided = sg.ClassifierGuidance(net.score_model(), classifier, scale=2.0)
    res = sg.sample(guided, sampler, N // 2, seed=0, y=labels, x0_hook=CLIP, progress=False, **options)
    report = judge(classifier, res.samples, torch.full((10,), 0.1), labels)
    # unguided samples hit the requested class ~10% of the time
    assert report["requested_rate"] > 0.8, report


def test_classifier_free_guidance_on_the_conditional_unet(classifier):
    net, _ = sg.load_checkpoint("digits-cond")
    labels = torch.arange(N) % 10
    guided = sg.ClassifierFreeGuidance(net.score_model(), net.null_label, scale=1.0)
    res = sg.sample(guided, "ddim", N, seed=0, y=labels, steps=20, x0_hook=CLIP, progress=False)
    report = judge(classifier, res.samples, torch.full((10,), 0.1), labels)
    assert report["requested_rate"] > 0.8, report


@pytest.mark.parametrize("name,sampler,extra", [
    ("digits-ddpm", "langevin", ["--sigma-max", "10", "--levels", "24", "--steps-per-level", "5"]),
    ("digits-ncsn", "ddpm", []),
])
def test_cli_samples_builtin_models_by_name(name, sampler, extra, tmp_path, classifier, data_freq):
    import numpy as np

    out, grid = tmp_path / "x.npy", tmp_path / "x.png"
    assert main(["sample", "--checkpoint", name, "--sampler", sampler, *extra, "-n", str(N), "--out", str(out),
                 "--grid", str(grid), "--no-progress"]) == 0
    x = torch.from_numpy(np.load(out))
    assert x.shape == (N, 1, 8, 8) and grid.exists()
    report = judge(classifier, x, data_freq)
    assert report["confidence"] > 0.8 and report["tv"] < 0.2, report


def _noisy_accuracy(net, x, y, t, generator):
    """Accuracy of a classifier network on digits x noised to DDPM level t (same noise for every network)."""
    schedule = net.schedule
    m, sigma = float(schedule.m(t)), float(schedule.sigma(t))
    x_t = m * x + sigma * torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        pred = net.classifier()(x_t, sigma, m).argmax(1)
    return pred, (pred == y).double().mean().item()


@pytest.mark.slow
def test_rebuilding_the_classifier_reproduces_the_shipped_model(tmp_path):
    """A rebuild is always an equally good classifier; it has the shipped weights bit for bit only on the build
    environment the shipped checkpoint records (torch build, its CPU kernel level, architecture): another CPU or
    library build sums in another order, and 20000 steps turn that rounding into different weights."""
    from scoregen.data import load_data
    from scoregen.pretrained import build_environment

    assert main(["pretrained", "build", "digits-classifier", "--out", str(tmp_path), "--no-progress"]) == 0
    shipped, config = sg.load_checkpoint("digits-classifier")
    rebuilt, _ = sg.load_checkpoint(tmp_path / "digits-classifier")
    data = load_data("digits")
    for t in (1, 200, 400):  # clean, moderately and heavily noised; 1797 digits, the same noise for both
        pred_a, acc_a = _noisy_accuracy(shipped, data.x, data.y, t, torch.Generator().manual_seed(t))
        pred_b, acc_b = _noisy_accuracy(rebuilt, data.x, data.y, t, torch.Generator().manual_seed(t))
        assert acc_b > acc_a - 0.02, (t, acc_a, acc_b)
        assert (pred_a == pred_b).double().mean() > 0.95, t
    if config["meta"].get("built_on") == build_environment():
        for (k, u), (_, v) in zip(shipped.state_dict().items(), rebuilt.state_dict().items()):
            assert torch.equal(u, v), k


def test_an_empty_local_folder_named_like_a_builtin_is_explained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits-ddpm").mkdir()
    with pytest.raises(FileNotFoundError, match="hides the built-in model"):
        sg.load_checkpoint("digits-ddpm")


def test_cli_guides_a_builtin_model_with_the_builtin_classifier(tmp_path, capsys, classifier):
    import numpy as np

    out = tmp_path / "three.npy"
    assert main(["sample", "--checkpoint", "digits-ncsn", "--classifier", "digits-classifier", "--label", "3",
                 "--guidance-scale", "2", "--sampler", "ddim", "-n", "50", "--out", str(out), "--no-progress"]) == 0
    assert "classifier guidance (digits-classifier) to class 3 with scale 2" in capsys.readouterr().out
    report = judge(classifier, torch.from_numpy(np.load(out)), torch.full((10,), 0.1), torch.full((50,), 3))
    assert report["requested_rate"] > 0.8, report
