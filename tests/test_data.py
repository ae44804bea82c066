"""scoregen.data: every source loads with the right shape, dtype, range and labels; bad data gets a clear error."""

import itertools
import json
import sys

import numpy as np
import pytest
import torch

from scoregen.data import Dataset, load_data
from scoregen.targets import load_target

Image = pytest.importorskip("PIL.Image")


def save(path, arr, **kwargs):
    """Write the uint8 (H, W) / (H, W, 3|4) or uint16 (H, W) array ``arr`` as an image file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr)).save(path, **kwargs)
    return path


def gray(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def scaled(arr):
    """The documented pixel rule v / 127.5 - 1, in float64, channels first."""
    a = np.asarray(arr, dtype=np.float64)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a / 127.5 - 1.0)


# ---------------------------------------------------------------------------------------------------- mixtures
def test_ring2d_labels_are_the_class_of_the_sampled_component():
    d = load_data("ring2d", seed=3, n=4000)
    target = load_target("ring2d")
    assert d.x.shape == (4000, 2) and d.shape == (2,) and d.x.dtype == torch.float32
    assert d.y.dtype == torch.int64 and d.y.shape == (4000,) and d.num_classes == 8 and d.name == "ring2d"
    # Components sit ~15 stds apart: the exact posterior class recovers the component a sample came from.
    assert torch.equal(d.y, target.classifier(d.x.double()).argmax(-1))
    assert set(d.y.tolist()) == set(range(8))
    assert d.value_range == (float(d.x.min()), float(d.x.max()))
    radius = d.x.norm(dim=1)
    assert abs(float(radius.mean()) - 2.0) < 0.01


def test_gmm64_default_size_and_class_map():
    d = load_data("gmm64")
    target = load_target("gmm64")
    assert d.x.shape == (50000, 64) and d.x.dtype == torch.float32 and d.num_classes == 5
    x, k = target.sample(50000, torch.Generator().manual_seed(0), return_components=True)
    assert torch.equal(d.x, x)
    assert torch.equal(d.y, k % 5)  # gmm64's documented class = component mod 5
    # class frequencies follow the weights of the components of each class
    expected = np.bincount(target.labels, weights=target.weights, minlength=5)
    freq = np.bincount(d.y.numpy(), minlength=5) / 50000
    assert np.abs(freq - expected).max() < 0.01


def test_mixture_json_with_its_own_labels(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"weights": [1, 3], "means": [[-5.0], [5.0]], "stds": [0.5, 0.5], "labels": [1, 0]}))
    d = load_data(str(path), seed=1, n=2000)
    assert d.x.shape == (2000, 1) and d.num_classes == 2 and d.name == "two"
    assert torch.equal(d.y, (d.x[:, 0] < 0).long())  # the component at -5 is class 1
    assert abs(float((d.y == 0).float().mean()) - 0.75) < 0.04


def test_mixture_seed_reproduces_and_another_seed_differs():
    a, b, c = (load_data("ring2d", seed=s, n=100) for s in (7, 7, 8))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_missing_mixture_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_data(str(tmp_path / "nope.json"))


# ---------------------------------------------------------------------------------------------------- digits
def test_digits():
    sk = pytest.importorskip("sklearn.datasets")
    d = load_data("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.shape == (1, 8, 8) and d.x.dtype == torch.float32
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0 and d.value_range == (-1.0, 1.0)
    assert d.num_classes == 10 and d.y.dtype == torch.int64 and sorted(set(d.y.tolist())) == list(range(10))
    raw = sk.load_digits()
    assert torch.equal(d.x.reshape(1797, 64).double(), torch.from_numpy(raw.data / 8.0 - 1.0))
    assert torch.equal(d.y, torch.from_numpy(raw.target).long())


def test_digits_subset_is_seeded():
    pytest.importorskip("sklearn")
    full = load_data("digits")
    a, b, c = load_data("digits", n=100, seed=1), load_data("digits", n=100, seed=1), load_data("digits", n=100, seed=2)
    assert a.x.shape == (100, 1, 8, 8) and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    # a subset of the rows, in their original order, labels kept with their images
    rows = {tuple(r.tolist()): int(y) for r, y in zip(full.x.reshape(1797, -1), full.y)}
    assert all(rows[tuple(r.tolist())] == int(y) for r, y in zip(a.x.reshape(100, -1), a.y))
    with pytest.raises(ValueError, match="1797.*n=5000"):
        load_data("digits", n=5000)


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'scoregen\[digits\]'"):
        load_data("digits")


# ---------------------------------------------------------------------------------------------------- image folders
def test_grayscale_folder_exact_scaling_and_sorted_order(tmp_path):
    known = np.array([[0, 255, 51, 128, 1], [254, 127, 200, 3, 100], [0, 0, 255, 255, 77], [9, 8, 7, 6, 5]], np.uint8)
    save(tmp_path / "b.png", known)
    save(tmp_path / "a.png", gray(4, 5, 0))
    save(tmp_path / "c.PNG", gray(4, 5, 1))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"not an image, but hidden")
    d = load_data(str(tmp_path))
    assert d.x.shape == (3, 1, 4, 5) and d.shape == (1, 4, 5) and d.x.dtype == torch.float32
    assert d.y is None and d.num_classes is None and d.value_range == (-1.0, 1.0) and d.name == tmp_path.name
    assert torch.allclose(d.x[1].double(), scaled(known), rtol=0, atol=1e-7)  # sorted: a, b, c
    assert torch.allclose(d.x[0].double(), scaled(gray(4, 5, 0)), rtol=0, atol=1e-7)
    assert d.x[1, 0, 0, 0] == -1.0 and d.x[1, 0, 0, 1] == 1.0


def test_rgb_folder_png_and_jpeg(tmp_path):
    save(tmp_path / "x.png", rgb(6, 3, 0))
    flat = np.zeros((6, 3, 3), np.uint8) + np.array([200, 40, 90], np.uint8)
    save(tmp_path / "y.JPG", flat, quality=100)
    d = load_data(str(tmp_path))
    assert d.x.shape == (2, 3, 6, 3) and d.x.dtype == torch.float32
    assert torch.allclose(d.x[0].double(), scaled(rgb(6, 3, 0)), rtol=0, atol=1e-7)
    assert torch.allclose(d.x[1].double(), scaled(flat), rtol=0, atol=3 / 127.5)  # JPEG is lossy
    assert float(d.x.min()) >= -1.0 and float(d.x.max()) <= 1.0


def test_class_subfolders_give_sorted_subfolder_labels(tmp_path):
    for cls, count in (("zebra", 2), ("cat", 3), ("dog", 1)):
        for i in range(count):
            save(tmp_path / cls / f"{i}.png", np.full((2, 2), 10 * i + len(cls), np.uint8))
    (tmp_path / ".git").mkdir()
    d = load_data(str(tmp_path))
    assert d.class_names == ("cat", "dog", "zebra") and d.num_classes == 3
    assert d.y.dtype == torch.int64 and d.y.tolist() == [0, 0, 0, 1, 2, 2]
    assert d.x.shape == (6, 1, 2, 2)
    assert torch.allclose(d.x[:, 0, 0, 0].double(), torch.tensor([3, 13, 23, 3, 5, 15], dtype=torch.float64) / 127.5 - 1, atol=1e-7)
    sub = load_data(str(tmp_path), n=4, seed=0)
    assert sub.x.shape == (4, 1, 2, 2) and sub.num_classes == 3
    # each chosen image keeps its own label: pixel value 10 i + len(class name) identifies it
    pix = torch.round((sub.x[:, 0, 0, 0].double() + 1) * 127.5).long()
    assert all((int(p) % 10) == len(d.class_names[int(y)]) for p, y in zip(pix, sub.y))


def test_alpha_dropped_when_opaque_palette_converted_to_rgb(tmp_path):
    opaque = np.concatenate([rgb(3, 3, 2), np.full((3, 3, 1), 255, np.uint8)], axis=-1)
    save(tmp_path / "a.png", opaque)
    pal = Image.fromarray(rgb(3, 3, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "b.png")
    d = load_data(str(tmp_path))
    assert d.x.shape == (2, 3, 3, 3)
    assert torch.allclose(d.x[0].double(), scaled(opaque[..., :3]), rtol=0, atol=1e-7)
    assert torch.allclose(d.x[1].double(), scaled(np.asarray(pal.convert("RGB"))), rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- image errors
def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path.name}.*is empty"):
        load_data(str(tmp_path))


def test_no_images_found(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match=f"no images found in .*{tmp_path.name}.*readme.txt"):
        load_data(str(tmp_path))


def test_mixed_sizes_name_two_files(tmp_path):
    save(tmp_path / "a.png", gray(4, 4, 0))
    save(tmp_path / "b.png", gray(4, 4, 1))
    save(tmp_path / "c.png", gray(5, 4, 2))
    with pytest.raises(ValueError, match=r"differ in size: .*a\.png is 4x4 .*c\.png is 4x5"):
        load_data(str(tmp_path))


def test_mixed_channels(tmp_path):
    save(tmp_path / "a.png", gray(4, 4, 0))
    save(tmp_path / "b.png", rgb(4, 4, 1))
    with pytest.raises(ValueError, match=r"a\.png is grayscale .*b\.png is RGB"):
        load_data(str(tmp_path))


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, kind):
    save(tmp_path / "a.png", gray(8, 8, 0))
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(b"this is not a png" if kind == "garbage" else good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"bad\.png: cannot read image"):
        load_data(str(tmp_path))


def test_transparent_image_refused(tmp_path):
    rgba = np.concatenate([rgb(3, 3, 2), np.full((3, 3, 1), 255, np.uint8)], axis=-1)
    rgba[1, 1, 3] = 0
    save(tmp_path / "t.png", rgba)
    with pytest.raises(ValueError, match=r"t\.png: has transparency .*1 pixel"):
        load_data(str(tmp_path))


def test_16_bit_image_outside_the_8_bit_range_refused(tmp_path):
    save(tmp_path / "deep.png", np.array([[0, 1000], [40000, 65535]], np.uint16))
    with pytest.raises(ValueError, match=r"deep\.png: a 16-bit .*65535.*8-bit"):
        load_data(str(tmp_path))


def test_empty_class_folder_and_mixed_layout(tmp_path):
    save(tmp_path / "one" / "a.png", gray(2, 2, 0))
    (tmp_path / "two").mkdir()
    with pytest.raises(ValueError, match="class folder.*'two'"):
        load_data(str(tmp_path))
    save(tmp_path / "top.png", gray(2, 2, 1))
    with pytest.raises(ValueError, match="both at its top level and in subfolders.*one"):
        load_data(str(tmp_path))


# ---------------------------------------------------------------------------------------------------- .npy
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_npy_round_trip(tmp_path, dtype):
    arr = np.random.default_rng(0).normal(size=(7, 3, 2)).astype(dtype) * 3
    np.save(tmp_path / "arr.npy", arr)
    d = load_data(str(tmp_path / "arr.npy"))
    assert d.x.dtype == torch.float32 and d.x.shape == (7, 3, 2) and d.shape == (3, 2)
    assert torch.equal(d.x, torch.from_numpy(arr.astype(np.float32)))
    assert d.y is None and d.num_classes is None and d.name == "arr"
    assert d.value_range == (float(arr.astype(np.float32).min()), float(arr.astype(np.float32).max()))
    sub = load_data(str(tmp_path / "arr.npy"), n=3, seed=5)
    assert sub.x.shape == (3, 3, 2) and all(any(torch.equal(r, s) for s in d.x) for r in sub.x)


@pytest.mark.parametrize("arr, match", [
    (np.arange(12).reshape(6, 2), "floating-point array, got dtype int64"),
    (np.ones((4, 2), dtype=bool), "floating-point array, got dtype bool"),
    (np.ones(5, np.float32), r"at least 2 dimensions.*shape \(5,\)"),
    (np.zeros((0, 3), np.float32), "no samples"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), r"1 NaN/inf value.*index \(0, 1\)"),
    (np.array([[0.0, 1.0], [np.inf, -np.inf]], np.float32), r"2 NaN/inf value.*index \(1, 0\)"),
    (np.array([[0.0, 1.0], [-1e300, 1e300]]), r"2 value\(s\) overflow float32.*index \(1, 0\)"),
])
def test_bad_npy(tmp_path, arr, match):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(ValueError, match=rf"bad\.npy: .*{match}"):
        load_data(str(tmp_path / "bad.npy"))


def test_npy_object_array_garbage_and_missing(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy: not a readable \.npy"):
        load_data(str(tmp_path / "obj.npy"))
    (tmp_path / "junk.npy").write_bytes(b"hello world, not numpy")
    with pytest.raises(ValueError, match=r"junk\.npy: not a readable \.npy"):
        load_data(str(tmp_path / "junk.npy"))
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        load_data(str(tmp_path / "missing.npy"))


# ---------------------------------------------------------------------------------------------------- spec / n
def test_unknown_spec_lists_accepted_forms(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data spec 'mnist'.*ring2d.*gmm64.*\.json.*digits.*folder.*\.npy"):
        load_data("mnist")
    (tmp_path / "table.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"table\.csv: not a data source.*accepted forms"):
        load_data(str(tmp_path / "table.csv"))


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        load_data("ring2d", n=n)


# ---------------------------------------------------------------------------------------------------- batches
def indexed(n, labelled=True):
    """A data set whose sample i is (i, -i): batches reveal which indices they drew."""
    x = torch.stack([torch.arange(n), -torch.arange(n)], 1).float()
    return Dataset(x, torch.arange(n) % 3 if labelled else None, (2,), (float(1 - n), float(n - 1)), "idx",
                   3 if labelled else None)


def take(dataset, batch_size, seed, count):
    return list(itertools.islice(dataset.batches(batch_size, torch.Generator().manual_seed(seed)), count))


def test_batches_reproducible_with_a_seed_and_different_with_another():
    d = load_data("ring2d", n=1000)
    a, b, c = take(d, 64, 0, 20), take(d, 64, 0, 20), take(d, 64, 1, 20)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not any(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_batch_shapes_and_labels_travel_with_their_samples(tmp_path):
    save(tmp_path / "k" / "a.png", gray(3, 4, 0))
    save(tmp_path / "k" / "b.png", gray(3, 4, 1))
    save(tmp_path / "m" / "c.png", gray(3, 4, 2))
    images = load_data(str(tmp_path))
    for x, y in take(images, 5, 0, 3):
        assert x.shape == (5, 1, 3, 4) and x.dtype == torch.float32 and y.shape == (5,) and y.dtype == torch.int64
        for xi, yi in zip(x, y):
            i = next(j for j in range(3) if torch.equal(images.x[j], xi))
            assert images.y[i] == yi
    for x, y in take(indexed(10, labelled=False), 4, 0, 2):
        assert x.shape == (4, 2) and y is None


def test_batches_are_passes_over_the_data():
    d = indexed(10)
    drawn = torch.cat([x[:, 0] for x, _ in take(d, 4, 3, 10)]).long()  # 40 indices = 4 passes, batches straddle
    for p in range(4):
        assert sorted(drawn[10 * p: 10 * p + 10].tolist()) == list(range(10))
    assert drawn[:10].tolist() != drawn[10:20].tolist()  # each pass a fresh permutation
    big = take(d, 25, 0, 1)[0][0]
    assert big.shape == (25, 2) and sorted(big[:10, 0].long().tolist()) == list(range(10))
    for x, y in take(d, 7, 1, 3):
        assert torch.equal(y, x[:, 0].long() % 3) and torch.equal(x[:, 1], -x[:, 0])


def test_batches_are_copies_and_bad_batch_size_refused():
    d = indexed(6)
    x, _ = take(d, 6, 0, 1)[0]
    x.zero_()
    assert torch.equal(d.x[:, 0], torch.arange(6).float())
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            d.batches(bad, torch.Generator())
    with pytest.raises(TypeError, match="torch.Generator"):
        d.batches(2, 0)


def test_dataset_checks_its_fields():
    with pytest.raises(ValueError, match="does not match"):
        Dataset(torch.zeros(3, 2), None, (3,), (0.0, 0.0), "bad", None)
    with pytest.raises(ValueError, match="float32"):
        Dataset(torch.zeros(3, 2, dtype=torch.float64), None, (2,), (0.0, 0.0), "bad", None)
    with pytest.raises(ValueError, match="0..1"):
        Dataset(torch.zeros(3, 2), torch.tensor([0, 1, 2]), (2,), (0.0, 0.0), "bad", 2)
