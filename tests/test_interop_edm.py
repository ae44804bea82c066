"""EDM networks (NVlabs/edm) through scoregen.interop.edm, against outputs of EDM's original code.

The fixtures (tests/fixtures/edm, written by make_fixture.py from EDM's own ``training.networks``; the EDM
commit is in reference.safetensors' metadata): two snapshots pickled exactly as EDM's training loop pickles
them, module source included (``vp_ddpmpp``: VPPrecond + DDPM++ SongUNet; ``edm_adm``: EDMPrecond + a
4-class DhariwalUNet), three more networks as float16-exact state dicts with EDM's ``init_kwargs``
(``ve_ncsnpp``: VEPrecond + a 3-class NCSN++ with a skip decoder and augmentation labels; ``edm_songunet_skip``:
SongUNet's skip encoder; ``iddpm_adm``: iDDPMPrecond + ADM), EDM's outputs D for each, and one two-head
attention block. Nothing here imports EDM's code (torch_utils, dnnlib): the last test checks that.
"""

import collections
import io
import json
import math
import os
import pickle
import sys

import pytest
import torch

import scoregen as sg
from scoregen.interop import edm as edm_interop
from scoregen.interop.edm import edm_network, load_edm, load_edm_network
from scoregen.interop.edm_convert import main as convert_main
from scoregen.interop.edm_convert import write_edm_folder
from scoregen.interop.kdiffusion import edm_preconditioned, from_denoiser, one_hot
from scoregen.io import pickles
from scoregen.io.pickles import MAX_DEPTH, MAX_KEY_ITEMS, PickledRecord, bounded_repr, load_pickle, state_tensors
from scoregen.networks import edm as edm_nets
from scoregen.samplers import sampler_options

safetensors_torch = pytest.importorskip("safetensors.torch")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "edm")
PICKLED = ["vp_ddpmpp", "edm_adm"]
STATE_ONLY = ["ve_ncsnpp", "edm_songunet_skip", "iddpm_adm"]


@pytest.fixture(scope="module")
def ref():
    from safetensors import safe_open

    path = os.path.join(FIXTURES, "reference.safetensors")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    return safetensors_torch.load_file(path), json.loads(meta["configs"]), meta["edm_commit"]


def _pkl(name):
    return os.path.join(FIXTURES, f"{name}.pkl")


def _state(tensors, name):
    prefix = f"{name}.state."
    return {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}


def _check_D(net, tensors, name):
    """D of the loaded network equals EDM's, with and (for conditional nets) without labels."""
    x, sigma, labels = tensors[f"{name}.x"], tensors[f"{name}.sigma"], tensors.get(f"{name}.labels")
    with torch.no_grad():
        torch.testing.assert_close(net(x, sigma, labels), tensors[f"{name}.D"], rtol=1e-5, atol=1e-5)
        if labels is not None:
            torch.testing.assert_close(net(x, sigma), tensors[f"{name}.D_nolabel"], rtol=1e-5, atol=1e-5)
        # D is not the identity's: the network's output matters at these levels
        assert (tensors[f"{name}.D"] - x).abs().max() > 0.1


# ------------------------------------------------------------------------------ outputs against EDM's
@pytest.mark.parametrize("name", PICKLED)
def test_pickled_snapshot_gives_edms_denoiser(ref, name):
    tensors, _, commit = ref
    assert len(commit) == 40
    net = load_edm_network(_pkl(name))
    assert type(net).__name__ == {"vp_ddpmpp": "VPPrecond", "edm_adm": "EDMPrecond"}[name]
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    _check_D(net, tensors, name)


@pytest.mark.parametrize("name", STATE_ONLY)
def test_converted_folder_gives_edms_denoiser(ref, tmp_path, name):
    tensors, configs, _ = ref
    folder = tmp_path / name
    write_edm_folder(folder, configs[name]["class_name"], configs[name]["init_kwargs"], _state(tensors, name))
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary left behind
    _check_D(load_edm_network(folder), tensors, name)


def test_snapshot_through_the_converter_writer(ref, tmp_path):
    """The restricted reader's record, written as a folder by the converter's writer, loads to the same network."""
    record = load_pickle(_pkl("edm_adm"))["ema"]
    folder = tmp_path / "adm"
    write_edm_folder(folder, record.name, record.state["_init_kwargs"], state_tensors(record))
    _check_D(load_edm_network(folder), ref[0], "edm_adm")
    with pytest.raises(ValueError, match="exists"):
        write_edm_folder(folder, record.name, record.state["_init_kwargs"], state_tensors(record))


class EDMPrecond(edm_nets.EDMPrecond):
    """A stand-in for EDM's persistent class (same name, ``init_args`` / ``init_kwargs``) for the converter's CLI."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.init_args, self.init_kwargs = (), dict(kwargs)


def test_converter_command_line(ref, tmp_path):
    record = load_pickle(_pkl("edm_adm"))["ema"]
    net = EDMPrecond(**record.state["_init_kwargs"])
    net.load_state_dict(state_tensors(record))
    snapshot = tmp_path / "snapshot.pkl"
    snapshot.write_bytes(pickle.dumps(dict(ema=net.eval(), loss_fn=None, augment_pipe=None, dataset_kwargs={})))
    assert convert_main([str(snapshot), str(tmp_path / "out")]) == 0
    _check_D(load_edm_network(tmp_path / "out"), ref[0], "edm_adm")
    assert convert_main([str(snapshot), str(tmp_path / "out")]) == 1  # refuses an existing folder


def test_multi_head_attention_block(ref):
    tensors = ref[0]
    block = edm_nets.UNetBlock(8, 8, 16, attention=True, num_heads=2, adaptive_scale=True).eval()
    block.load_state_dict(_state(tensors, "block"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(block(tensors["block.x"], tensors["block.emb"]), tensors["block.out"],
                                   rtol=1e-5, atol=1e-5)


def test_state_dict_keys_are_edms(ref):
    """EDM's own parameter names, None buffers left out (Conv2d without resampling), buffers u and freqs kept."""
    record = load_pickle(_pkl("vp_ddpmpp"))["ema"]
    names = set(state_tensors(record))
    assert {"model.map_layer0.weight", "model.enc.8x8_conv.weight", "model.enc.4x4_down.conv0.resample_filter",
            "model.dec.8x8_aux_conv.weight", "model.dec.4x4_in0.qkv.weight"} <= names
    assert not any(k.endswith("conv1.resample_filter") for k in names)
    assert set(edm_network(record.name, record.state["_init_kwargs"]).state_dict()) == names
    configs = ref[1]
    iddpm = edm_network("iDDPMPrecond", configs["iddpm_adm"]["init_kwargs"])
    assert iddpm.u.shape == (1001,) and iddpm.sigma_max == float(iddpm.u[0]) and iddpm.sigma_min == float(iddpm.u[999])
    ve = edm_network("VEPrecond", configs["ve_ncsnpp"]["init_kwargs"])
    assert "model.map_noise.freqs" in ve.state_dict() and "model.map_augment.weight" in ve.state_dict()


# ------------------------------------------------------------------------------------- the score model
def test_load_edm_score_model_and_one_hot_labels(ref):
    tensors = ref[0]
    net = load_edm_network(_pkl("edm_adm"))
    model = load_edm(_pkl("edm_adm"))
    assert model.shape == (3, 8, 8)
    assert (model.sigma_min, model.sigma_max) == (0.002, 80.0)  # EDMPrecond's open range [0, inf]: EDM's sampler's
    x, sigma = tensors["edm_adm.x"], 0.7
    y = torch.tensor([3, 0])
    labels = torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 0]])
    with torch.no_grad():
        want = (x - net(x, torch.full((2,), sigma), labels)) / sigma
        torch.testing.assert_close(model.eps(x, sigma, y=y), want)
        # without y: EDM's all-zero labels
        torch.testing.assert_close(model.eps(x, sigma), (x - net(x, torch.full((2,), sigma))) / sigma)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\]"):
        model.eps(x, sigma, y=torch.tensor([4, 0]))
    narrowed = load_edm(_pkl("edm_adm"), sigma_min=0.01, sigma_max=10.0)
    assert (narrowed.sigma_min, narrowed.sigma_max) == (0.01, 10.0)


def test_default_sigma_range_is_edms_generate(ref, tmp_path):
    """load_edm's default range is EDM's generate.py's: [max(0.002, net.sigma_min), min(80, net.sigma_max)]."""
    vp_net, vp = load_edm_network(_pkl("vp_ddpmpp")), load_edm(_pkl("vp_ddpmpp"))
    # VP's own range as EDM computed it (in float32: sigma(1e-5) rounds to 2**-10) and stored it in the snapshot
    edm_state = load_pickle(_pkl("vp_ddpmpp"))["ema"].state
    assert (vp_net.sigma_min, vp_net.sigma_max) == (edm_state["sigma_min"], edm_state["sigma_max"])
    assert vp_net.sigma_min == 2**-10
    assert vp_net.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-5)  # ~152
    assert (vp.sigma_min, vp.sigma_max) == (0.002, 80.0)  # both ends clamped, as generate.py does
    explicit = load_edm(_pkl("vp_ddpmpp"), sigma_min=2**-10, sigma_max=100.0)  # given values are used as given
    assert (explicit.sigma_min, explicit.sigma_max) == (2**-10, 100.0)
    # a network whose own range lies inside [0.002, 80] (this VEPrecond's [0.02, 50]) keeps it
    tensors, configs, _ = ref
    write_edm_folder(tmp_path / "ve", "VEPrecond", configs["ve_ncsnpp"]["init_kwargs"], _state(tensors, "ve_ncsnpp"))
    ve_net, ve = load_edm_network(tmp_path / "ve"), load_edm(tmp_path / "ve")
    assert (ve.sigma_min, ve.sigma_max) == (ve_net.sigma_min, ve_net.sigma_max) == (0.02, 50.0)


def test_one_hot():
    f = one_hot(3)
    assert torch.equal(f(torch.tensor([2, 0, 1])), torch.eye(3)[[2, 0, 1]])
    assert f(torch.tensor([1])).dtype == torch.float32
    with pytest.raises(ValueError, match=r"integer class labels of shape \(B,\)"):
        f(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="num_classes"):
        one_hot(0)


def test_every_sampler_runs_on_a_loaded_model():
    model = load_edm(_pkl("edm_adm"))
    y = torch.tensor([1, 2])
    for name in sg.SAMPLERS:
        options = sampler_options(name)
        kw = {"levels": 6, "steps_per_level": 1} if name == "langevin" else {"steps": 2} if "steps" in options else {}
        res = sg.sample(model, name, n=2, seed=0, y=y, progress=False, **kw)
        assert res.samples.shape == (2, 3, 8, 8) and torch.isfinite(res.samples).all(), name


# ------------------------------------------------------------------------- from_denoiser: EDM's formulas
def test_from_denoiser_sigma_data_applies_edms_preconditioning():
    calls = []

    def raw(x_in, c_noise, label=None):
        calls.append((x_in, c_noise, label))
        return torch.tanh(x_in) * (1 + c_noise.reshape(-1, 1, 1, 1)) + (0 if label is None else label.sum(1).reshape(-1, 1, 1, 1))

    sd, x = 0.3, torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 20.0], dtype=torch.float64)
    model = from_denoiser(raw, (1, 2, 2), 0.002, 80.0, sigma_data=sd, label_map=one_hot(2))
    s = sigma.reshape(-1, 1, 1, 1)
    for y in (None, torch.tensor([0, 1, 1])):
        calls.clear()
        eps = model.eps(x, sigma, y=y)
        # Karras et al. 2022, Table 1, written out here
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / torch.sqrt(s ** 2 + sd ** 2)
        c_in = 1 / torch.sqrt(sd ** 2 + s ** 2)
        c_noise = torch.log(sigma) / 4
        label = None if y is None else torch.nn.functional.one_hot(y, 2).float()
        D = c_skip * x + c_out * raw(c_in * x, c_noise, label)
        torch.testing.assert_close(eps, (x - D) / s)
        torch.testing.assert_close(calls[0][1], c_noise)
        torch.testing.assert_close(calls[0][0], c_in * x)
    # and in EDM's own EDMPrecond (float32): the same D around the same network
    net = edm_network("EDMPrecond", dict(img_resolution=8, img_channels=3, label_dim=2, sigma_data=0.5,
                                         model_type="SongUNet", model_channels=4, channel_mult=[1, 1],
                                         channel_mult_emb=1, num_blocks=1, attn_resolutions=[4], dropout=0.0)).eval()
    x32 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sig32, labels = torch.tensor([0.1, 3.0]), torch.eye(2)
    D_edm = edm_preconditioned(lambda xi, cn, lab: net.model(xi, cn, class_labels=lab), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(D_edm(x32, sig32, labels), net(x32, sig32, labels), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="sigma_data"):
        from_denoiser(raw, (1, 2, 2), 0.002, 80.0, sigma_data=0.0)
    with pytest.raises(TypeError, match="label_map"):
        from_denoiser(raw, (1, 2, 2), 0.002, 80.0, label_map=3)


# ------------------------------------------------------------------------------ refusals and hostility
def _payload_pickles(marker):
    class OsSystem:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Exec:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    class Eval:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w')",)

    return {"os.system": pickle.dumps(dict(ema=OsSystem())), "builtins.exec": pickle.dumps(dict(ema=Exec())),
            "builtins.eval": pickle.dumps([Eval()], protocol=2)}


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "builtins.eval"])
def test_payloads_are_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / "marker"
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(_payload_pickles(marker)[kind])
    global_name = {"os.system": "(posix|os|nt).system", "builtins.exec": "builtins.exec",
                   "builtins.eval": "(__builtin__|builtins).eval"}  # protocol 2 writes Python 2's module names
    with pytest.raises(ValueError, match=f"global {global_name[kind]}.*python -m scoregen.interop.edm_convert"):
        load_edm(path)
    assert not marker.exists()


def test_persistent_object_source_is_never_run(tmp_path):
    """EDM's own payload channel: module_src is executed by EDM's unpickler, never by scoregen's."""
    marker = tmp_path / "marker"
    src = f"open({str(marker)!r}, 'w').close()"
    # protocol 0, written by hand: {'ema': torch_utils.persistence._reconstruct_persistent_obj(meta)}
    meta = (b"(dVtype\nVclass\nsVversion\nI6\nsVmodule_src\nV" + src.encode() + b"\nsVclass_name\nVEDMPrecond\n"
            b"sVstate\n(dVnot_a_network\nI1\nss")
    data = b"(dVema\nctorch_utils.persistence\n_reconstruct_persistent_obj\n(" + meta + b"tRs."
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(data)
    record = load_pickle(path)["ema"]
    assert isinstance(record, PickledRecord) and record.name == "EDMPrecond" and record.state == {"not_a_network": 1}
    with pytest.raises(ValueError, match="no constructor arguments"):
        load_edm(path)
    assert not marker.exists() and "torch_utils" not in sys.modules


def test_plain_data(tmp_path):
    """dnnlib's EasyDict (NEWOBJ of a dict subclass, hand-written here) as a dict; numpy scalars as numbers."""
    path = tmp_path / "plain.pkl"
    path.write_bytes(b"\x80\x02cdnnlib.util\nEasyDict\n)\x81X\x01\x00\x00\x00aK\x01s.")
    assert load_pickle(path) == {"a": 1}
    np = pytest.importorskip("numpy")
    path.write_bytes(pickle.dumps([np.float64(0.5), np.float32(2.0), np.int64(-3), np.bool_(True)]))
    values = load_pickle(path)
    assert values == [0.5, 2.0, -3, True] and [type(v) for v in values] == [float, float, int, bool]
    path.write_bytes(pickle.dumps(np.array([1.0])))  # arrays are not part of a snapshot
    with pytest.raises(ValueError, match="global numpy"):
        load_pickle(path)


def test_hostile_sizes_and_nesting(tmp_path):
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(list(range(1000))))
    with pytest.raises(ValueError, match="more than max_bytes=100"):
        load_pickle(path, max_bytes=100)
    # a string claiming 2**40 bytes: refused as truncated, nothing of that size allocated
    path.write_bytes(b"\x80\x04\x8d" + (2**40).to_bytes(8, "little") + b"abc")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_pickle(path)
    # a storage whose size header claims more elements than it holds
    with pytest.warns(UserWarning, match="TypedStorage is deprecated"):
        fn, (storage_bytes,) = torch.arange(4.0).storage().__reduce__()  # _load_from_bytes, as EDM's pickles hold
    bad = bytearray(storage_bytes)
    bad[-16 - 8:-16] = (10**9).to_bytes(8, "little")  # the element count before the 16 bytes of data
    path.write_bytes(_reduce_call(fn, bytes(bad)))
    with pytest.raises(ValueError, match="size header|claims"):
        load_pickle(path)
    # modules nested deeper than MAX_DEPTH
    record = PickledRecord("module", "x", {"_parameters": {}, "_buffers": {}, "_modules": {}})
    for _ in range(MAX_DEPTH + 1):
        record = PickledRecord("module", "x", {"_modules": {"m": record}})
    with pytest.raises(ValueError, match="nested more than"):
        state_tensors(record)


def _reduce_call(fn, arg):
    class Call:
        def __reduce__(self):
            return fn, (arg,)

    return pickle.dumps(Call())


def test_clear_errors(tmp_path, ref):
    record = load_pickle(_pkl("vp_ddpmpp"))["ema"]
    with pytest.raises(ValueError, match="unknown EDM network class 'StyleGAN'"):
        edm_network("StyleGAN", {})
    kwargs = dict(record.state["_init_kwargs"], model_channels=8)
    with pytest.raises(ValueError, match="do not fit the VPPrecond.*shape mismatch .*model.map_layer0.weight"):
        write_edm_folder(tmp_path / "wrong", "VPPrecond", kwargs, state_tensors(record))
        load_edm(tmp_path / "wrong")
    with pytest.raises(ValueError, match="model_type 'UNet' is not one of EDM's networks"):
        edm_network("EDMPrecond", dict(img_resolution=8, img_channels=3, model_type="UNet"))
    with pytest.raises(ValueError, match="do not fit EDMPrecond"):
        edm_network("EDMPrecond", dict(img_channels=3))
    not_snapshot = tmp_path / "other.pkl"
    not_snapshot.write_bytes(pickle.dumps({"G_ema": 1}))
    with pytest.raises(ValueError, match=r"\['G_ema'\] is not an EDM snapshot"):
        load_edm(not_snapshot)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a converted EDM network"):
        load_edm(tmp_path / "folder")


# ------------------------------------------------------------------ crafted hostile snapshots (review findings)
class _EDMGlobal:
    """A global of EDM's code, written under its name by _Pickler: EDM's modules are never imported here."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise AssertionError("never called")


_RECONSTRUCT = _EDMGlobal("torch_utils.persistence", "_reconstruct_persistent_obj")


class _Pickler(pickle._Pickler):
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _EDMGlobal):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        else:
            super().save(obj, save_persistent_id)


class _Reduce:
    """Pickled as ``fn(*args)``, then pickle's BUILD with ``state`` if given."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _persistent(class_name, state, build=None):
    """An EDM persistent object as torch_utils.persistence pickles it (with an empty module source)."""
    meta = dict(type="class", version=6, module_src="", class_name=class_name, state=state)
    return _Reduce(_RECONSTRUCT, (meta,), build)


def _write(tmp_path, obj):
    buf = io.BytesIO()
    _Pickler(buf, protocol=4).dump(obj)
    path = tmp_path / "hostile.pkl"
    path.write_bytes(buf.getvalue())
    return path


def _view(storage, offset, size, stride):
    return _Reduce(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict()))


def _pushes(obj):
    """Protocol-3 pickle opcodes that push ``obj`` (no PROTO, no STOP), to splice into hand-written pickles."""
    return pickle.dumps(obj, protocol=3)[2:-1]


def _deep_tuple(levels):
    """Opcodes pushing t_levels with t_0 = (0,), t_i = (t_i-1, t_i-1): 2**levels leaves, 5 bytes a level (memo)."""
    out = bytearray(b"K\x00\x85q\x00")
    for i in range(1, levels):
        out += b"0h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return bytes(out)


def test_shared_records_are_refused_not_walked(tmp_path):
    """A module referenced twice at each of n levels is 2**n paths: refused at the first repeat, and the number
    of entries walked is capped."""
    leaf = PickledRecord("module", "leaf", {"_parameters": {"w": torch.zeros(1)}})
    node = leaf
    for _ in range(12):  # 4096 paths: a walk that followed them all would still finish, and be caught here
        node = PickledRecord("module", "x", {"_modules": {"a": node, "b": node}})
    with pytest.raises(ValueError, match=r"a\.a\.a.*\.b: the module record is also a\.a.*EDM's networks share no"):
        state_tensors(node)
    shared_params = {"w": torch.zeros(1)}
    a, b = (PickledRecord("module", "y", {"_parameters": shared_params}) for _ in range(2))
    twins = PickledRecord("module", "x", {"_modules": {"a": a, "b": b}})
    with pytest.raises(ValueError, match="b._parameters: the _parameters mapping is also a._parameters's"):
        state_tensors(twins)
    tied = torch.zeros(3)  # one tensor under two names: the network would hold it twice
    with pytest.raises(ValueError, match="the tensor is also w's"):
        state_tensors(PickledRecord("module", "x", {"_parameters": {"w": tied, "v": tied}}))
    record = load_pickle(_pkl("vp_ddpmpp"))["ema"]
    assert len(state_tensors(record)) > 100
    with pytest.raises(ValueError, match="more than max_entries=100 parameters"):
        state_tensors(record, max_entries=100)
    # through load_edm, as the reviewer's file: a DAG under a preconditioner
    node = _persistent("Leaf", {"_parameters": {"w": torch.zeros(1)}})
    for _ in range(16):  # 65536 paths
        node = _persistent("X", {"_modules": {"a": node, "b": node}})
    ema = _persistent("EDMPrecond", {"_init_args": (), "_init_kwargs": {"img_resolution": 8, "img_channels": 3},
                                     "_modules": {"model": _persistent("DhariwalUNet", {"_modules": {"a": node}})}})
    with pytest.raises(ValueError, match=r"hostile\.pkl: model\.a\.a.*: the module record is also"):
        load_edm(_write(tmp_path, dict(ema=ema)))


def test_tensor_views_must_be_honest(tmp_path):
    """Strided views lie inside their storage without overlapping, and the views of one storage claim no more
    elements than it holds: a file's tensors hold no more bytes than the file."""
    st = torch.arange(6.0).__reduce_ex__(2)[1][0]  # the tensor's own (typed) storage, as torch pickles it
    other = torch.arange(6.0).__reduce_ex__(2)[1][0]
    path = _write(tmp_path, {"t": _view(st, 0, (3, 2), (1, 3)), "empty": _view(st, 6, (0, 5), (5, 1)),
                             "one": _view(other, 5, (1, 1), (0, 0))})
    loaded = load_pickle(path)
    assert torch.equal(loaded["t"], torch.arange(6.0).reshape(2, 3).t()) and loaded["empty"].shape == (0, 5)
    assert loaded["one"].item() == 5.0
    assert not loaded["t"].untyped_storage().resizable()  # no later set_ can grow it
    halves = load_pickle(_write(tmp_path, [_view(st, 0, (3,), (1,)), _view(st, 3, (3,), (1,))]))
    assert torch.equal(torch.cat(halves), torch.arange(6.0))
    for size, stride, offset, message in [((10**12,), (0,), 0, "overlap"),  # one element claiming 10**12
                                          ((2, 2), (1, 1), 0, "overlap"), ((3, 2), (1, 2), 0, "overlap"),
                                          ((7,), (1,), 0, "beyond its storage"), ((2,), (1,), 5, "beyond"),
                                          ((0,), (1,), 7, "empty tensor at offset 7")]:
        with pytest.raises(ValueError, match=message):
            load_pickle(_write(tmp_path, {"x": _view(st, offset, size, stride)}))
    with pytest.raises(ValueError, match="tensors viewing one storage of 6 elements claim 8 in all"):
        load_pickle(_write(tmp_path, [_view(st, 0, (4,), (1,)), _view(st, 2, (4,), (1,))]))
    # one storage's bytes, memo-shared, loaded as 100 storages: 100 times the bytes the file holds
    load_from_bytes, (data,) = torch.arange(1000.0).__reduce_ex__(2)[1][0].__reduce__()
    assert load_from_bytes is torch.storage._load_from_bytes
    with pytest.raises(ValueError, match="rebuild more data than the file's .* bytes hold"):
        load_pickle(_write(tmp_path, [_view(_Reduce(load_from_bytes, (data,)), 0, (1000,), (1,)) for _ in range(100)]))
    # the reviewer's network bomb: stride-0 tensors whose shapes fit a large network are refused while reading
    ema = _persistent("EDMPrecond", {"_init_args": (), "_init_kwargs": {"img_resolution": 8, "img_channels": 3},
                                     "_modules": {"model": _persistent("DhariwalUNet", {
                                         "_parameters": {"w": torch.zeros(1).expand(4096, 4096)}})}})
    with pytest.raises(ValueError, match=r"size \(4096, 4096\) and stride \(0, 0\) whose elements overlap"):
        load_edm(_write(tmp_path, dict(ema=ema)))


def test_network_arguments_cannot_outgrow_the_file(tmp_path):
    """The meta-device skeleton stops once it registers far more tensors than the file holds; the arguments must
    be plain data of bounded size."""
    kwargs = dict(img_resolution=8, img_channels=3, model_type="DhariwalUNet", model_channels=8, channel_mult=[1],
                  channel_mult_emb=1, num_blocks=256, attn_resolutions=[], dropout=0.0)
    ema = _persistent("EDMPrecond", {"_init_args": (), "_init_kwargs": kwargs, "_modules": {
        "model": _persistent("DhariwalUNet", {"_parameters": {"w": torch.zeros(2)}})}})
    with pytest.raises(ValueError, match=r"hostile\.pkl: the 'ema' network's tensors do not fit the EDMPrecond .* the "
                                         r"file holds 1 tensors, and the network registered more than 66 tensors"):
        load_edm(_write(tmp_path, dict(ema=ema)))
    deep = [1]
    for _ in range(14):  # 2**14 values, memo-shared (small enough for a regression that printed them to finish)
        deep = [deep, deep]
    for bad, message in [(deep, "hold more than 10000 values"), (torch.zeros(2), "hold a Tensor")]:
        ema = _persistent("EDMPrecond", {"_init_args": (), "_init_kwargs": dict(kwargs, channel_mult=bad), "_modules": {
            "model": _persistent("DhariwalUNet", {})}})
        with pytest.raises(ValueError, match=f"constructor arguments {message}"):
            load_edm(_write(tmp_path, dict(ema=ema)))
    for _ in range(26):
        deep = [deep, deep]
    assert len(bounded_repr(deep)) < 130  # error messages print 2**40 memo-shared values in bounded time
    assert bounded_repr([b"x" * 10**6, 2**10**6, collections.OrderedDict(a=deep)]).startswith(
        "[<1000000 bytes>, <an int of 1000001 bits>, {'a': [[...], [...]]}]")


def test_containers_take_only_plain_lists_tuples_and_dicts(tmp_path):
    """set / frozenset / OrderedDict / EasyDict called on a tensor (iterating whatever it holds) are refused."""
    for fn, name in [(set, "set"), (frozenset, "frozenset"), (collections.OrderedDict, "collections.OrderedDict"),
                     (_EDMGlobal("dnnlib.util", "EasyDict"), "dnnlib.util.EasyDict")]:
        with pytest.raises(ValueError, match=f"{name} called on a Tensor"):
            load_pickle(_write(tmp_path, [_Reduce(fn, (torch.zeros(4, 2),))]))
    ok = load_pickle(_write(tmp_path, [_Reduce(set, (["a", 1],)), _Reduce(frozenset, ((2.5, None),)),
                                       _Reduce(collections.OrderedDict, ([("a", 1), ((1, "b"), 2)],))]))
    assert ok == [{"a", 1}, frozenset({2.5, None}), collections.OrderedDict([("a", 1), ((1, "b"), 2)])]
    with pytest.raises(ValueError, match="key or set element of type Tensor"):
        load_pickle(_write(tmp_path, [_Reduce(set, ([torch.zeros(1)],))]))
    # one list of 2000 items, memo-shared, copied by 2000 calls: 4 million items from a file of about 30 kB
    items = list(range(2000))
    with pytest.raises(ValueError, match="rebuild more data than the file's .* bytes hold"):
        load_pickle(_write(tmp_path, [_Reduce(frozenset, (items,)) for _ in range(2000)]))
    assert load_pickle(_write(tmp_path, [_Reduce(frozenset, (items,)) for _ in range(2)])) == [frozenset(items)] * 2
    path = tmp_path / "hand.pkl"
    tensor = _pushes(torch.zeros(3))
    for data, message in [(b"\x80\x03cbuiltins\nset\n" + tensor + b"R.", "REDUCE with arguments of type Tensor"),
                          (b"\x80\x03cbuiltins\nfrozenset\n" + tensor + b"\x85\x81.", "created with arguments"),
                          (b"\x80\x03ctorch._utils\n_rebuild_parameter\n)\x81.", "created by NEWOBJ")]:
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            load_pickle(path)


def test_build_sets_the_state_of_records_only(tmp_path, monkeypatch):
    """pickle's BUILD on a tensor would run Tensor.__setstate__ (set_: resize a storage to any size); on one of
    the reader's own functions it would set attributes of it. Both are refused; unexpected errors are ValueErrors."""
    fn, args = torch.zeros(1).__reduce_ex__(2)
    path = _write(tmp_path, {"x": _Reduce(fn, args, (torch.zeros(0), 0, (2**20,), (1,)))})  # any size would do
    with pytest.raises(ValueError, match="the state of a Tensor set by pickle's BUILD"):
        load_pickle(path)
    path.write_bytes(b"ctorch._utils\n_rebuild_tensor_v2\n(dS'x'\nI1\nsb.")
    with pytest.raises(ValueError, match="the state of a function set by pickle's BUILD"):
        load_pickle(path)
    assert not hasattr(pickles._rebuild_tensor_v2, "x")
    path.write_bytes(b"ctorch._utils\n_rebuild_tensor_v2\n(db.")  # an empty state changes nothing: harmless
    assert load_pickle(path) is pickles._rebuild_tensor_v2

    def allocator_fails(*args):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setitem(pickles._GLOBALS, ("torch._utils", "_rebuild_tensor_v2"), allocator_fails)
    with pytest.raises(ValueError, match=r"vp_ddpmpp\.pkl: not a readable pickle \(RuntimeError: DefaultCPUAllocator"):
        load_pickle(_pkl("vp_ddpmpp"))


@pytest.mark.parametrize("opcodes", ["SETITEM", "SETITEMS", "DICT", "ADDITEMS", "FROZENSET"])
def test_keys_are_cheap_to_hash(tmp_path, opcodes):
    """A key made of memo-shared nested tuples (t_i = (t_i-1, t_i-1)) costs 2**levels to hash: refused by
    every opcode that hashes keys, before hashing. 10 levels (1024 leaves) exceed MAX_KEY_ITEMS, quickly either way."""
    key = _deep_tuple(10)
    data = {"SETITEM": b"\x80\x02}" + key + b"K\x01s.", "SETITEMS": b"\x80\x02}(" + key + b"K\x01u.",
            "DICT": b"\x80\x02(" + key + b"K\x01d.", "ADDITEMS": b"\x80\x04\x8f(" + key + b"\x90.",
            "FROZENSET": b"\x80\x04(" + key + b"\x91."}[opcodes]
    path = tmp_path / "keys.pkl"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"a tuple of more than {MAX_KEY_ITEMS} items"):
        load_pickle(path)
    path.write_bytes(data.replace(key, _deep_tuple(3)))  # 8 leaves: a fine key
    assert len(load_pickle(path)) == 1


def test_plain_keys_load(tmp_path):
    path = tmp_path / "keys.pkl"
    value = {(1, ("a", None)): 2, 1.5: 3, True: 4, None: 5, "s": [{1, "x"}, frozenset({(2, 3)})]}
    path.write_bytes(pickle.dumps(value))
    assert load_pickle(path) == value
    path.write_bytes(pickle.dumps({b"bytes": 1}))
    with pytest.raises(ValueError, match="key or set element of type bytes"):
        load_pickle(path)
    path.write_bytes(pickle.dumps({2**64: 1}))  # hashing a long int costs its length, at every reference
    with pytest.raises(ValueError, match="key or set element that is an int of 65 bits"):
        load_pickle(path)
    path.write_bytes(pickle.dumps({2**63: 1, -(2**63): 2}))
    assert load_pickle(path) == {2**63: 1, -(2**63): 2}


def test_record_state_must_be_a_dict(tmp_path):
    """BUILD replacing a record's state by a list (the reviewer's file) is refused while reading; a record with
    such a state, however made, is refused by load_edm's reader with a ValueError, never an AttributeError."""
    with pytest.raises(ValueError, match=r"state of PickledRecord\(persistent, 'EDMPrecond'\) is a list, not a dict"):
        load_pickle(_write(tmp_path, dict(ema=_persistent("EDMPrecond", {}, build=[1, 2]))))
    with pytest.raises(ValueError, match="x.pkl: the EDMPrecond record's state is a list, not a dict"):
        edm_interop._from_record(PickledRecord("persistent", "EDMPrecond", [1, 2]), "x.pkl")


def test_no_edm_code_was_imported():
    load_edm(_pkl("edm_adm"))
    assert not any(m == "torch_utils" or m.startswith(("torch_utils.", "dnnlib", "_imported_module_"))
                   for m in sys.modules)
