"""Loading checkpoints of the original NCSNv2 code (ermongroup/ncsnv2) through scoregen.interop.ncsnv2.

Each test writes a YAML config and a checkpoint in the original layout itself: ``torch.save`` of
``[model state_dict with DataParallel's "module." prefix, optimizer state, epoch, step, EMA shadow]``
(runners/ncsn_runner.py; the shadow is models/ema.py's ``EMAHelper.state_dict()``, the inner module's
parameter names without prefix and without the ``sigmas`` buffer). The shadow holds weights different
from the model's, so picking the wrong one is caught.
"""

import argparse
import copy

import numpy as np
import pytest
import torch

yaml = pytest.importorskip("yaml")

import scoregen as sg  # noqa: E402
from scoregen.interop.ncsnv2 import load_ncsnv2, ncsnv2_config, ncsnv2_initial_state, ncsnv2_network  # noqa: E402
from scoregen.networks.ncsnv2 import NCSNv2  # noqa: E402

SIGMA_BEGIN, SIGMA_END, LEVELS = 8.0, 0.01, 10


def _config(dataset="CIFAR10", image_size=8, channels=3, ngf=4, **model):
    """A tiny config with every key of the published configs (configs/cifar10.yml)."""
    return {
        "training": {"batch_size": 4, "n_iters": 10, "snapshot_freq": 5, "anneal_power": 2},
        "sampling": {"batch_size": 4, "step_lr": 0.0000062, "n_steps_each": 5, "denoise": True},
        "data": {"dataset": dataset, "image_size": image_size, "channels": channels, "logit_transform": False,
                 "uniform_dequantization": False, "gaussian_dequantization": False, "random_flip": True,
                 "rescaled": False, "num_workers": 4},
        "model": {"sigma_begin": SIGMA_BEGIN, "num_classes": LEVELS, "ema": True, "ema_rate": 0.999,
                  "spec_norm": False, "sigma_dist": "geometric", "sigma_end": SIGMA_END,
                  "normalization": "InstanceNorm++", "nonlinearity": "elu", "ngf": ngf, **model},
        "optim": {"weight_decay": 0.0, "optimizer": "Adam", "lr": 0.0001, "beta1": 0.9, "amsgrad": False, "eps": 1e-8},
    }


def _reference_sigmas(begin=SIGMA_BEGIN, end=SIGMA_END, levels=LEVELS, dist="geometric"):
    """models/__init__.py get_sigmas: 'geometric' exp(linspace(log begin, log end, L)), 'uniform'
    linspace(begin, end, L); then float32."""
    if dist == "uniform":
        return np.linspace(begin, end, levels)
    return np.exp(np.linspace(np.log(begin), np.log(end), levels))


def _net(seed, variant="ncsnv2", image_size=8, channels=3, ngf=4, levels=LEVELS, dist="geometric", centered=False):
    torch.manual_seed(seed)
    schedule = sg.DiscreteVE(_reference_sigmas(levels=levels, dist=dist))
    return NCSNv2(image_size, channels, schedule, ngf=ngf, variant=variant, centered=centered).eval()


def _states(model, shadow_net, with_ema=True):
    """The list runners/ncsn_runner.py saves: DataParallel state dict, Adam state, epoch, step (, EMA shadow)."""
    wrapped = torch.nn.DataParallel(copy.deepcopy(model))  # real DataParallel keys: "module." + name
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-4)
    x = torch.rand(2, *model.shape)
    wrapped(x, torch.zeros(2, dtype=torch.long)).pow(2).mean().backward()
    optimizer.step()
    wrapped.load_state_dict({f"module.{k}": v for k, v in model.state_dict().items()})  # undo the step
    states = [wrapped.state_dict(), optimizer.state_dict(), 3, 1234]
    if with_ema:
        states.append({name: p.detach().clone() for name, p in shadow_net.named_parameters() if p.requires_grad})
    return states


def _write(tmp_path, states, config, legacy=False, name="checkpoint.pth"):
    ckpt, cfg = tmp_path / name, tmp_path / "config.yml"
    torch.save(states, ckpt, _use_new_zipfile_serialization=not legacy)
    cfg.write_text(yaml.safe_dump(config) if isinstance(config, dict) else config)
    return ckpt, cfg


def _x(channels=3, size=8, n=2, seed=5):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def saved(tmp_path):
    model, shadow = _net(1), _net(2)
    ckpt, cfg = _write(tmp_path, _states(model, shadow), _config())
    return model, shadow, ckpt, cfg


# ---------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-torch1.5-format"])
def test_ema_and_raw_weights_are_picked_and_reproduce_the_outputs(tmp_path, legacy):
    model, shadow = _net(1), _net(2)
    ckpt, cfg = _write(tmp_path, _states(model, shadow), _config(), legacy=legacy)
    x, t = _x(), torch.tensor([0, 6])
    with torch.no_grad():
        want_raw, want_ema = model(x, t), shadow(x, t)
        assert not torch.allclose(want_raw, want_ema)  # the two weight sets really differ
        got_ema = load_ncsnv2(ckpt, cfg)(x, t)
        got_raw = load_ncsnv2(ckpt, cfg, ema=False)(x, t)
    assert torch.equal(got_ema, want_ema)
    assert torch.equal(got_raw, want_raw)
    loaded = load_ncsnv2(ckpt, cfg, ema=True)
    assert not loaded.training and loaded.variant == "ncsnv2" and loaded.shape == (3, 8, 8) and loaded.centered is False
    for k, v in shadow.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_sigmas_are_the_original_get_sigmas(saved):
    *_, ckpt, cfg = saved
    net = load_ncsnv2(ckpt, cfg)
    expected = _reference_sigmas()
    np.testing.assert_array_equal(net.schedule.sigmas, expected)
    assert torch.equal(net.sigmas, torch.tensor(expected).float())  # the buffer the original registers
    np.testing.assert_allclose(net.schedule.sigmas, sg.DiscreteVE.geometric(SIGMA_BEGIN, SIGMA_END, LEVELS).sigmas,
                               rtol=1e-12)
    assert len(net.schedule) == LEVELS and net.schedule.sigmas[0] == pytest.approx(SIGMA_BEGIN)


def test_loaded_network_is_a_score_model(saved):
    _, shadow, ckpt, cfg = saved
    model = load_ncsnv2(ckpt, cfg).score_model()
    x, sigma = _x(), float(_reference_sigmas()[4])
    with torch.no_grad():
        eps = model.eps(x, sigma)
        expected = -sigma * shadow(x, torch.full((2,), 4))
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    torch.testing.assert_close(eps, expected)
    assert model.parameterization == "score" and model.shape == (3, 8, 8)


@pytest.mark.parametrize("dataset, variant, size", [("CIFAR10", "ncsnv2", 8), ("CELEBA", "ncsnv2", 8),
                                                    ("LSUN", "deeper", 8), ("FFHQ", "deepest", 16)])
def test_the_dataset_selects_the_network_as_the_original_get_model(tmp_path, dataset, variant, size):
    model, shadow = _net(1, variant, size), _net(2, variant, size)
    ckpt, cfg = _write(tmp_path, _states(model, shadow), _config(dataset, image_size=size))
    net = load_ncsnv2(ckpt, cfg)
    assert net.variant == variant
    x, t = _x(size=size), torch.tensor([1, 9])
    with torch.no_grad():
        assert torch.equal(net(x, t), shadow(x, t))


def test_variant_override_for_an_unknown_dataset(tmp_path):
    model, shadow = _net(1, "deeper"), _net(2, "deeper")
    ckpt, cfg = _write(tmp_path, _states(model, shadow), _config("MNIST"))
    with pytest.raises(ValueError, match="unknown data.dataset 'MNIST'.*variant="):
        load_ncsnv2(ckpt, cfg)
    net = load_ncsnv2(ckpt, cfg, variant="deeper")
    with torch.no_grad():
        assert torch.equal(net(_x(), torch.zeros(2)), shadow(_x(), torch.zeros(2)))


def test_rescaled_data_give_a_centered_network(tmp_path):
    model, shadow = _net(1), _net(2)
    config = _config()
    config["data"]["rescaled"] = True  # the original network then uses its input as it is (no 2x - 1)
    ckpt, cfg = _write(tmp_path, _states(model, shadow), config)
    net = load_ncsnv2(ckpt, cfg)
    assert net.centered is True
    x, t = _x(), torch.tensor([2, 3])
    with torch.no_grad():
        torch.testing.assert_close(net(2 * x - 1, t), shadow(x, t))
        assert not torch.allclose(net(x, t), shadow(x, t))


def test_a_checkpoint_without_ema_gives_the_raw_weights(tmp_path):
    model, shadow = _net(1), _net(2)
    ckpt, cfg = _write(tmp_path, _states(model, shadow, with_ema=False), _config(ema=False))
    x, t = _x(), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(load_ncsnv2(ckpt, cfg)(x, t), model(x, t))
        assert torch.equal(load_ncsnv2(ckpt, cfg, ema=False)(x, t), model(x, t))


@pytest.mark.parametrize("prefix, with_sigmas", [("module.", True), ("", True), ("", False)])
def test_a_bare_state_dict_loads(tmp_path, prefix, with_sigmas):
    model = _net(1)
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items() if with_sigmas or k != "sigmas"}
    ckpt, cfg = _write(tmp_path, state, _config())
    net = load_ncsnv2(ckpt, cfg)
    with torch.no_grad():
        assert torch.equal(net(_x(), torch.tensor([3, 8])), model(_x(), torch.tensor([3, 8])))
    assert torch.equal(net.sigmas, model.sigmas)


def test_the_config_copy_main_py_writes_next_to_checkpoints(tmp_path, saved):
    """main.py dumps its argparse.Namespace config with yaml.dump: mappings tagged !!python/object:argparse.Namespace."""
    _, shadow, ckpt, _ = saved

    def namespace(d):
        return argparse.Namespace(**{k: namespace(v) if isinstance(v, dict) else v for k, v in d.items()})

    text = yaml.dump(namespace(_config()), default_flow_style=False)
    assert "!!python/object:argparse.Namespace" in text
    path = tmp_path / "logs_config.yml"
    path.write_text(text)
    config = ncsnv2_config(path)
    assert config["data"]["dataset"] == "CIFAR10" and config["model"]["ngf"] == 4
    net = load_ncsnv2(ckpt, path)
    with torch.no_grad():
        assert torch.equal(net(_x(), torch.zeros(2)), shadow(_x(), torch.zeros(2)))
    assert torch.equal(load_ncsnv2(ckpt, config).sigmas, net.sigmas)  # a dict config works too


def test_yaml_with_other_python_tags_is_refused(tmp_path):
    path = tmp_path / "evil.yml"
    path.write_text("data: !!python/object/apply:os.getcwd []\nmodel: {}\n")
    with pytest.raises(ValueError, match="safe loader"):
        ncsnv2_config(path)


def test_exponent_notation_from_pyyaml_is_accepted(tmp_path, saved):
    *_, ckpt, _ = saved
    text = yaml.safe_dump(_config()).replace("sigma_end: 0.01", "sigma_end: 1e-2")
    assert "1e-2" in text and isinstance(yaml.safe_load(text)["model"]["sigma_end"], str)  # PyYAML's YAML 1.1 reading
    path = tmp_path / "c.yml"
    path.write_text(text)
    assert load_ncsnv2(ckpt, path).schedule.sigmas[-1] == pytest.approx(0.01)


def test_the_published_cifar10_config_builds_the_reference_network():
    config = _config(image_size=32, ngf=128)
    config["model"].update(sigma_begin=50, num_classes=232)
    net = ncsnv2_network(config)
    assert net.variant == "ncsnv2" and net.shape == (3, 32, 32) and len(net.sigmas) == 232
    assert sum(p.numel() for p in net.parameters()) == 29_694_083  # as NCSNv2.cifar10()


def test_spec_norm_in_the_config_is_ignored_as_by_the_original_ncsnv2(tmp_path):
    """models/ncsnv2.py never reads model.spec_norm (only models/ncsn.py does): the weights are plain."""
    model, shadow = _net(1), _net(2)
    ckpt, cfg = _write(tmp_path, _states(model, shadow), _config(spec_norm=True))
    with torch.no_grad():
        assert torch.equal(load_ncsnv2(ckpt, cfg)(_x(), torch.zeros(2)), shadow(_x(), torch.zeros(2)))


# ------------------------------------------------------------------------------------------ security
CALLS = []


def _payload(tag):
    CALLS.append(tag)
    return {}


class _Evil:
    def __reduce__(self):
        return (_payload, ("executed",))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_refused_and_never_run(tmp_path, legacy):
    model = _net(1)
    states = _states(model, _net(2))
    states[1] = _Evil()  # e.g. a tampered optimizer entry
    ckpt, cfg = _write(tmp_path, states, _config(), legacy=legacy)
    CALLS.clear()
    with pytest.raises(ValueError, match=r"weights_only=True.*_payload"):
        load_ncsnv2(ckpt, cfg)
    assert CALLS == []
    torch.load(ckpt, weights_only=False)  # what plain unpickling would have done: run the payload
    assert CALLS == ["executed"]


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    ckpt, cfg = _write(tmp_path, [], _config())
    ckpt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="could not be read with torch.load"):
        load_ncsnv2(ckpt, cfg)
    with pytest.raises(FileNotFoundError):
        load_ncsnv2(tmp_path / "missing.pth", cfg)


# ------------------------------------------------------------------------------------------- layouts
def _layout_cases():
    model, shadow = _net(1), _net(2)
    states = _states(model, shadow)
    return [
        ({"model": states[0], "optimizer": states[1]}, r"a dict with keys \['model', 'optimizer'\] that is not a state_dict"),
        ({}, "a dict with keys"),
        (states[:3], "a list of 3 entries"),
        (states + [0], "a list of 6 entries"),
        ([{"weight": 1.0}] + states[1:], "entry 0 must be the model's state_dict"),
        (states[:4] + ["ema"], "entry 4 must be the EMA shadow"),
        (torch.zeros(3), "got a Tensor"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_wrong_layouts_are_clear_errors(tmp_path, case):
    obj, message = _layout_cases()[case]
    ckpt, cfg = _write(tmp_path, obj, _config())
    with pytest.raises(ValueError, match=message):
        load_ncsnv2(ckpt, cfg)


# ------------------------------------------------------------------------------------ key mismatches
def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    model, shadow = _net(1), _net(2)
    states = _states(model, shadow)
    del states[0]["module.res1.0.conv1.weight"]
    states[0]["module.extra.weight"] = torch.zeros(1)
    ckpt, cfg = _write(tmp_path, states, _config())
    with pytest.raises(ValueError, match=r"model state_dict.*missing keys \['res1.0.conv1.weight'\].*"
                                         r"unexpected keys \['extra.weight'\]"):
        load_ncsnv2(ckpt, cfg, ema=False)
    load_ncsnv2(ckpt, cfg, ema=True)  # the EMA shadow is complete: it loads

    states = _states(model, shadow)
    del states[4]["refine4.output_convs.3_2_conv.weight"]
    states[4]["sigmas"] = model.sigmas.clone()  # the shadow holds parameters only
    ckpt, cfg = _write(tmp_path, states, _config())
    with pytest.raises(ValueError, match=r"EMA shadow.*missing keys \['refine4.output_convs.3_2_conv.weight'\]"
                                         r".*unexpected keys \['sigmas'\]"):
        load_ncsnv2(ckpt, cfg)
    load_ncsnv2(ckpt, cfg, ema=False)


def test_a_config_with_another_width_names_the_shape_mismatch(saved):
    *_, ckpt, cfg = saved
    config = _config(ngf=8)
    with pytest.raises(ValueError, match=r"shape mismatch begin_conv.weight: checkpoint \(4, 3, 3, 3\), "
                                         r"network \(8, 3, 3, 3\).*own config"):
        load_ncsnv2(ckpt, config)
    with pytest.raises(ValueError, match=r"begin_conv.weight: checkpoint \(4, 3, 3, 3\), network \(4, 1, 3, 3\)"):
        load_ncsnv2(ckpt, _config(channels=1), ema=False)


def test_a_config_of_another_dataset_names_the_extra_stages(tmp_path):
    model, shadow = _net(1, "deeper"), _net(2, "deeper")
    ckpt, cfg = _write(tmp_path, _states(model, shadow), _config("CIFAR10"))  # LSUN checkpoint, CIFAR10 config
    with pytest.raises(ValueError, match=r"variant 'ncsnv2'.*unexpected keys "
                                         r"\['res3.0.conv2.conv.weight'.*'res5.0.conv1.weight'\] and 41 more"):
        load_ncsnv2(ckpt, cfg)


@pytest.mark.parametrize("model_cfg, message", [
    (dict(sigma_begin=9.0), r"sigmas \(10 levels from 8 to 0.01\) disagree with the config's \(10 levels from 9 "),
    (dict(num_classes=12), r"sigmas \(10 levels .*\(12 levels"),
])
@pytest.mark.parametrize("ema", [True, False])
def test_checkpoint_sigmas_must_agree_with_the_config(saved, model_cfg, message, ema):
    *_, ckpt, _ = saved
    with pytest.raises(ValueError, match=message):
        load_ncsnv2(ckpt, _config(**model_cfg), ema=ema)


def test_spectrally_normalised_weights_are_refused(tmp_path):
    model, shadow = _net(1), _net(2)
    states = _states(model, shadow)
    states[0]["module.begin_conv.weight_orig"] = states[0].pop("module.begin_conv.weight")
    ckpt, cfg = _write(tmp_path, states, _config())
    with pytest.raises(ValueError, match=r"spectrally normalised weights \(begin_conv.weight_orig"):
        load_ncsnv2(ckpt, cfg)


# --------------------------------------------------------------------------------------- config errors
def _without(section, key):
    config = _config()
    del config[section][key]
    return config


def _with(section, **kw):
    config = _config()
    config[section].update(kw)
    return config


@pytest.mark.parametrize("config, kw, message", [
    (_without("data", "image_size"), {}, "missing data.image_size"),
    (_without("data", "channels"), {}, "missing data.channels"),
    (_without("data", "dataset"), {}, "missing data.dataset"),
    (_without("data", "rescaled"), {}, "missing data.rescaled"),
    (_without("model", "ngf"), {}, "missing model.ngf"),
    (_without("model", "sigma_begin"), {}, "missing model.sigma_begin"),
    (_without("model", "num_classes"), {}, "missing model.num_classes"),
    ({"data": _config()["data"]}, {}, "no 'model' section"),
    (_with("data", dataset="MNIST"), {}, "unknown data.dataset 'MNIST'"),
    (_config(), dict(variant="huge"), "unknown variant 'huge'"),
    (_with("data", logit_transform=True), {}, "logit_transform: true is not supported"),
    (_with("model", sigma_dist="cosine"), {}, r"sigma_dist 'cosine' is not supported.*\['geometric', 'uniform'\]"),
    (_with("model", normalization="BatchNorm"), {}, "normalization 'BatchNorm' is not supported"),
    (_with("model", nonlinearity="relu"), {}, "nonlinearity 'relu' is not supported"),
    (_with("data", image_size="8"), {}, r"data.image_size must be an integer in \[1, 4096\], got '8'"),
    (_with("model", ngf=True), {}, r"model.ngf must be an integer in \[1, 2048\], got True"),
    (_with("model", sigma_begin=0.001), {}, "sigma_begin .* must be larger than model.sigma_end"),
    (_with("model", sigma_end="small"), {}, "model.sigma_end must be a finite number > 0, got 'small'"),
    (_with("model", sigma_end="nan"), {}, "model.sigma_end must be a finite number > 0, got nan"),
    (_with("model", sigma_begin=True), {}, "model.sigma_begin must be a finite number > 0, got True"),
    (_with("data", rescaled="no"), {}, "data.rescaled must be true or false"),
    (_with("data", image_size=10, dataset="LSUN"), {}, "divisible by 4"),
])
def test_config_errors_are_clear(saved, config, kw, message):
    *_, ckpt, _ = saved
    with pytest.raises(ValueError, match=message):
        load_ncsnv2(ckpt, config, **kw)


def test_a_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping with 'data' and 'model'"):
        ncsnv2_config(path)


def test_missing_pyyaml_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "yaml", None)
    path = tmp_path / "c.yml"
    path.write_text("data: {}\n")
    with pytest.raises(ImportError, match=r"pip install 'scoregen\[ncsnv2\]'"):
        ncsnv2_config(path)


# ------------------------------------------------------------------------------- uniform sigmas, uniform start
@pytest.fixture
def uniform(tmp_path):
    """A checkpoint trained with model.sigma_dist: uniform (and its config)."""
    model, shadow = _net(1, dist="uniform"), _net(2, dist="uniform")
    ckpt, cfg = _write(tmp_path, _states(model, shadow), _config(sigma_dist="uniform"))
    return model, shadow, ckpt, cfg


def test_uniform_sigma_dist_gives_the_original_evenly_spaced_sigmas(uniform, tmp_path):
    model, shadow, ckpt, cfg = uniform
    net = load_ncsnv2(ckpt, cfg)
    expected = _reference_sigmas(dist="uniform")
    np.testing.assert_array_equal(net.schedule.sigmas, expected)
    assert torch.equal(net.sigmas, torch.tensor(expected).float())  # the buffer the original registers
    assert np.allclose(np.diff(net.schedule.sigmas), (SIGMA_END - SIGMA_BEGIN) / (LEVELS - 1), rtol=1e-12, atol=0)
    x, t = _x(), torch.tensor([0, 7])
    with torch.no_grad():
        assert torch.equal(net(x, t), shadow(x, t))
        sigma = float(expected[7])  # the score model answers at the uniform level itself
        torch.testing.assert_close(net.score_model().eps(x, sigma), -sigma * shadow(x, torch.full((2,), 7)))
    # a checkpoint of one sigma_dist with the config of the other: the sigmas disagree
    with pytest.raises(ValueError, match=r"sigmas \(10 levels from 8 to 0.01\) disagree"):
        load_ncsnv2(ckpt, _config(sigma_dist="geometric"), ema=False)
    (tmp_path / "other").mkdir()
    geometric, _ = _write(tmp_path / "other", _states(_net(1), _net(2)), _config())
    with pytest.raises(ValueError, match=r"sigmas \(10 levels from 8 to 0.01\) disagree"):
        load_ncsnv2(geometric, cfg)


@pytest.mark.parametrize("rescaled", [False, True])
def test_initial_state_is_the_original_uniform_start(tmp_path, rescaled):
    """runners/ncsn_runner.py: init_samples = torch.rand(n, C, H, W), then data_transform (2x - 1 when rescaled)."""
    config = _config()
    config["data"]["rescaled"] = rescaled
    ckpt, cfg = _write(tmp_path, _states(_net(1), _net(2, centered=rescaled)), config)
    net = load_ncsnv2(ckpt, cfg)
    want = torch.rand((5, 3, 8, 8), generator=torch.Generator().manual_seed(7))
    want = 2 * want - 1 if rescaled else want
    for source in (net, net.score_model(), sg.X0Hook(net.score_model(), sg.clip_x0(-1, 1))):
        got = ncsnv2_initial_state(source, 5, seed=7)
        assert got.shape == (5, 3, 8, 8) and got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(ncsnv2_initial_state(net, 5, generator=torch.Generator().manual_seed(7)), want)
    assert (want.min() < 0) == rescaled


def test_initial_state_errors():
    net = _net(1)
    with pytest.raises(ValueError, match="NCSNv2 network or its score model"):
        ncsnv2_initial_state(sg.DiscreteVE.geometric(), 2)
    with pytest.raises(ValueError, match="seed or generator, not both"):
        ncsnv2_initial_state(net, 2, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="n must be"):
        ncsnv2_initial_state(net, 0)


def _original_annealed_langevin(net, x_mod, sigmas, n_steps_each, step_lr, generator, denoise=True):
    """models/__init__.py anneal_Langevin_dynamics, written out: float32 sigmas (``sigmas.cpu().numpy()``), the
    level index as the label, step_size = step_lr (sigma / sigma_L)^2, one standard normal draw per step, and the
    final denoising step x + sigma_L^2 s(x, L - 1)."""
    n = x_mod.shape[0]
    for c, sigma in enumerate(sigmas):
        labels = torch.full((n,), c, dtype=torch.long)
        step_size = step_lr * (sigma / sigmas[-1]) ** 2
        for _ in range(n_steps_each):
            grad = net(x_mod, labels)
            noise = torch.randn(x_mod.shape, generator=generator)
            x_mod = x_mod + step_size * grad + noise * np.sqrt(step_size * 2)
    if denoise:
        x_mod = x_mod + sigmas[-1] ** 2 * net(x_mod, torch.full((n,), len(sigmas) - 1, dtype=torch.long))
    return x_mod


@pytest.mark.parametrize("dist, rescaled", [("uniform", False), ("geometric", True)])
def test_langevin_from_the_uniform_start_is_the_original_sampler(tmp_path, dist, rescaled):
    """scoregen.sample(model, "langevin", x_start=ncsnv2_initial_state(...)) runs the original's loop: the same
    levels, step sizes, noise draws and final denoising step. sample() draws its prior noise (n, C, H, W) from the
    generator first and x_start replaces it, so the reference's generator skips that one draw."""
    config = _config(sigma_dist=dist)
    config["data"]["rescaled"] = rescaled
    shadow = _net(2, dist=dist, centered=rescaled)
    ckpt, cfg = _write(tmp_path, _states(_net(1, dist=dist), shadow), config)
    net = load_ncsnv2(ckpt, cfg)
    n, steps, step_lr = 3, 2, 6.2e-6  # configs/cifar10.yml's step_lr

    start = ncsnv2_initial_state(net, n, seed=11)
    g = torch.Generator().manual_seed(5)
    torch.randn((n, 3, 8, 8), generator=g)  # sample()'s prior draw, unused with x_start
    sigmas = net.sigmas.numpy()  # float32, as the original hands them to its loop
    with torch.no_grad():
        want = _original_annealed_langevin(shadow, start.clone(), sigmas, steps, step_lr, g)

    res = sg.sample(net.score_model(), "langevin", n=n, generator=torch.Generator().manual_seed(5), x_start=start,
                    steps_per_level=steps, step_lr=step_lr, final_denoise=True, progress=False)
    assert res.nfe == LEVELS * steps + 1
    torch.testing.assert_close(res.samples, want, rtol=1e-4, atol=1e-4)
    assert float((res.samples - start).abs().max()) > 0.1  # the chain moved
    other = sg.sample(net.score_model(), "langevin", n=n, seed=6, x_start=start, steps_per_level=steps,
                      step_lr=step_lr, final_denoise=True, progress=False).samples
    assert not torch.allclose(other, want, atol=1e-2)  # the noise draws matter: the match is not by accident


def test_every_sampler_runs_on_a_loaded_uniform_sigma_model(uniform):
    *_, ckpt, cfg = uniform
    model = load_ncsnv2(ckpt, cfg).score_model()
    options = {"langevin": dict(levels=2, steps_per_level=2), "ddim": dict(steps=3, eta=0.5)}
    for name in sg.SAMPLERS:
        res = sg.sample(model, name, n=2, seed=0, progress=False, **options.get(name, dict(steps=3)))
        assert res.samples.shape == (2, 3, 8, 8) and torch.isfinite(res.samples).all(), name
