"""Training data: every source scoregen trains on, loaded into one small in-memory :class:`Dataset`.

``load_data(spec)`` accepts

* ``ring2d`` / ``gmm64`` / a mixture ``.json`` path: ``n`` exact samples (default 50000) of the target
  mixture (see :mod:`scoregen.targets`), drawn with a ``torch.Generator`` seeded by ``seed``; the label of a
  sample is the class of the component it was drawn from. Shape (n, d).
* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images; needs the optional ``scikit-learn``),
  pixel values 0..16 scaled linearly to [-1, 1], shape (N, 1, 8, 8), labels 0..9.
* a folder of PNG/JPEG images (needs Pillow), all of the same size, 8 bits per channel, 0..255 scaled
  linearly to [-1, 1] (``v / 127.5 - 1``), shape (N, C, H, W). Either all images lie directly in the folder
  (labels ``None``) or the folder holds one subfolder per class with the images directly inside it (labels =
  index of the subfolder in sorted order; :attr:`Dataset.class_names` keeps the names). Files are read in
  sorted name order; hidden entries (names starting with ``.``), files with other extensions and (in the
  unlabelled layout) subfolders without images are ignored; images both at the top and in subfolders is an error.
  Colour rules: grayscale (``L``, bilevel ``1``) -> 1 channel; ``RGB`` (and ``CMYK``/``YCbCr`` JPEGs, palette
  ``P`` images, converted by Pillow) -> 3 channels. An alpha channel (``LA``, ``RGBA``, palette transparency)
  is dropped when every pixel is fully opaque and refused otherwise: scoregen does not guess a background.
  All images must end up with the same number of channels. 16-bit and float images are refused.
* a ``.npy`` file holding a floating-point array of shape (N, ...) with N >= 1 and at least 2 dims, loaded
  as float32 and otherwise used as is (no rescaling); labels ``None``.

Named sources (``digits``, ``ring2d``, ``gmm64``) win over a file or folder of the same name: write
``./digits`` for a folder called ``digits``.

Held-out splits: :func:`stratified_split` splits labelled data into a training and a held-out part with the
same class proportions; :func:`digits_split` is that split of the digits (80% / 20%, seed 0 by default), the one
the built-in ``digits-judge`` was trained and scored on (``scoregen train --objective judge`` uses it on any
labelled data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .targets import BUILTIN_TARGETS, load_target

__all__ = ["Dataset", "load_data", "stratified_split", "digits_split", "DEFAULT_MIXTURE_SAMPLES", "IMAGE_EXTENSIONS",
           "HELDOUT_FRACTION", "HELDOUT_SEED"]

DEFAULT_MIXTURE_SAMPLES = 50000
#: The share of each class a held-out split keeps out of training, and the seed of the split that
#: ``scoregen train --objective judge`` (and so the built-in ``digits-judge``) uses.
HELDOUT_FRACTION = 0.2
HELDOUT_SEED = 0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_ACCEPTED = (
    "accepted forms: 'ring2d' or 'gmm64' (built-in mixtures), the path of a mixture '.json' file, "
    "'digits' (scikit-learn's 8x8 digits), a folder of PNG/JPEG images (optionally one subfolder per class), "
    "or the path of a '.npy' file holding a float array of shape (N, ...)"
)


@dataclass(eq=False)
class Dataset:
    """An in-memory data set.

    Attributes:
        x: (N, *shape) float32 samples, on the CPU.
        y: (N,) int64 class labels in ``0..num_classes-1``, or ``None`` for unlabelled data.
        shape: the shape of one sample, ``tuple(x.shape[1:])``: (d,) for mixtures, (C, H, W) for images.
        value_range: (low, high). For images and digits the nominal range (-1.0, 1.0) that the pixel
            scaling maps onto (the range to clip x0_hat to); for mixtures and ``.npy`` data the observed
            (min, max) of ``x``, which is no bound on the distribution (do not clip to it).
        name: a short name for tables and file names.
        num_classes: the number of classes when labelled, else ``None``.
        class_names: for an image folder with class subfolders, the subfolder names in label order; else ``None``.
    """

    x: Tensor
    y: Optional[Tensor]
    shape: tuple
    value_range: tuple
    name: str
    num_classes: Optional[int]
    class_names: Optional[tuple] = None

    def __post_init__(self):
        if not isinstance(self.x, Tensor) or self.x.dtype != torch.float32 or self.x.ndim < 2 or len(self.x) == 0:
            raise ValueError(f"Dataset.x must be a non-empty float32 tensor of shape (N, ...), got "
                             f"{getattr(self.x, 'dtype', type(self.x).__name__)} of shape {tuple(getattr(self.x, 'shape', ()))}")
        if tuple(self.shape) != tuple(self.x.shape[1:]):
            raise ValueError(f"Dataset.shape {tuple(self.shape)} does not match x of shape {tuple(self.x.shape)}")
        if (self.y is None) != (self.num_classes is None):
            raise ValueError("Dataset: give both y and num_classes, or neither")
        if self.y is not None:
            if self.y.dtype != torch.int64 or self.y.shape != (len(self.x),):
                raise ValueError(f"Dataset.y must be an int64 tensor of shape ({len(self.x)},), got {self.y.dtype} "
                                 f"of shape {tuple(self.y.shape)}")
            if bool(((self.y < 0) | (self.y >= self.num_classes)).any()):
                raise ValueError(f"Dataset.y must lie in 0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        lo, hi = self.value_range
        return (f"Dataset(name={self.name!r}, N={len(self)}, shape={tuple(self.shape)}, "
                f"value_range=({lo:.4g}, {hi:.4g}), num_classes={self.num_classes})")

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Iterator[tuple]:
        """Random minibatches ``(x, y)`` forever: x of shape (batch_size, *shape), y of shape (batch_size,) or None.

        The indices are a stream of independent random permutations of 0..N-1 cut into consecutive batches, so
        every batch is full, each sample is seen once per pass of N indices, and a batch may straddle two passes
        (a batch larger than N holds repeats). The stream is a pure function of ``generator``'s state (a CPU
        ``torch.Generator``; ``None`` uses torch's global RNG): the same seed gives the same batches. The batches
        are copies, safe to modify. The iterator never ends; take what you need (``itertools.islice``, ``zip``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        return self._batches(int(batch_size), generator)

    def _batches(self, batch_size: int, generator: Optional[torch.Generator]) -> Iterator[tuple]:
        n = len(self)
        perm, pos = torch.empty(0, dtype=torch.int64), 0
        while True:
            parts, need = [], batch_size
            while need > 0:
                if pos == len(perm):
                    perm, pos = torch.randperm(n, generator=generator), 0
                take = min(need, n - pos)
                parts.append(perm[pos:pos + take])
                pos, need = pos + take, need - take
            idx = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield self.x[idx], (None if self.y is None else self.y[idx])


def load_data(spec: str | os.PathLike, *, seed: int = 0, n: Optional[int] = None) -> Dataset:
    """Load a data set by name or path (the accepted forms are listed in the module docstring).

    Args:
        spec: ``ring2d``, ``gmm64``, a mixture ``.json`` path, ``digits``, an image folder, or a ``.npy`` path.
        seed: seeds the ``torch.Generator`` that draws mixture samples, and the choice of the subset when ``n``
            is given for a finite source.
        n: mixtures: the number of samples to draw (default 50000). Finite sources (digits, images, ``.npy``):
            keep a random subset of ``n`` items, chosen with ``seed`` and kept in their original order
            (default: all; more than there are is an error). Only the chosen images are read.

    Raises:
        ValueError: unknown spec, or bad data (the message names the problem and the file).
        FileNotFoundError: a ``.json`` / ``.npy`` path that does not exist.
        ImportError: ``digits`` without scikit-learn, an image folder without Pillow.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a string or path, got {type(spec).__name__}; {_ACCEPTED}")
    spec = os.fspath(spec)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    n = None if n is None else int(n)
    if spec == "digits":
        return _load_digits(seed, n)
    if spec in BUILTIN_TARGETS or spec.lower().endswith(".json"):
        return _load_mixture(spec, seed, n)
    if spec.lower().endswith(".npy"):
        return _load_npy(spec, seed, n)
    if os.path.isdir(spec):
        return _load_image_folder(spec, seed, n)
    if os.path.exists(spec):
        raise ValueError(f"{spec}: not a data source scoregen can read (a file of an unsupported type); {_ACCEPTED}")
    raise ValueError(f"unknown data spec {spec!r} (no built-in of that name, and no file or folder at that path); {_ACCEPTED}")


# ---------------------------------------------------------------------------------------------- held-out splits
def stratified_split(y, heldout: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> tuple[Tensor, Tensor]:
    """Split labelled data into ``(train_idx, heldout_idx)``: sorted int64 index tensors, disjoint, together
    covering ``0..N-1``. Each class gives ``floor(heldout * n_c + 1/2)`` of its ``n_c`` items to the held-out part,
    chosen by a ``torch.Generator`` seeded with ``seed`` (one permutation per class, in class order), so the two
    parts keep the data's class proportions. The split depends only on the labels and the seed."""
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.numel() == 0 or y.dtype.is_floating_point or y.dtype == torch.bool or bool((y < 0).any()):
        raise ValueError(f"stratified_split needs a non-empty 1-d tensor of non-negative integer labels, got "
                         f"{y.dtype} of shape {tuple(y.shape)}")
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float, np.floating)) or not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout must be a fraction in [0, 1), got {heldout!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in 0 .. 2**63 - 1, got {seed!r}")
    g = torch.Generator().manual_seed(int(seed))
    held = []
    for c in torch.unique(y).tolist():  # sorted classes
        members = torch.nonzero(y == c).reshape(-1)
        k = int(np.floor(float(heldout) * len(members) + 0.5))
        held.append(members[torch.randperm(len(members), generator=g)[:k]])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return torch.nonzero(~mask).reshape(-1), torch.nonzero(mask).reshape(-1)


def digits_split(seed: int = HELDOUT_SEED) -> tuple[Tensor, Tensor]:
    """``(train_idx, heldout_idx)`` into ``load_data("digits")``: the stratified 80% / 20% split
    (:func:`stratified_split`) of the 1797 digits, 1438 / 359 at seed 0. The built-in ``digits-judge`` was
    trained on the first part alone and its ``meta["heldout"]`` scores it on the second."""
    return stratified_split(_load_digits(0, None).y, HELDOUT_FRACTION, seed)


# ---------------------------------------------------------------------------------------------------- sources
def _subset(total: int, n: Optional[int], seed: int, what: str) -> Optional[np.ndarray]:
    """Sorted indices of a seeded random subset of n of ``total`` items, or None for all of them."""
    if n is None or n == total:
        return None
    if n > total:
        raise ValueError(f"{what} holds {total} items, fewer than the n={n} asked for")
    g = torch.Generator().manual_seed(int(seed))
    return np.sort(torch.randperm(total, generator=g)[:n].numpy())


def _load_mixture(spec: str, seed: int, n: Optional[int]) -> Dataset:
    target = load_target(spec)
    g = torch.Generator().manual_seed(int(seed))
    x, k = target.sample(DEFAULT_MIXTURE_SAMPLES if n is None else n, g, return_components=True)
    y = torch.as_tensor(target.labels, dtype=torch.int64)[k]
    return Dataset(x.contiguous(), y, tuple(x.shape[1:]), (float(x.min()), float(x.max())), target.name,
                   int(target.num_classes))


def _load_digits(seed: int, n: Optional[int]) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the 'digits' data set needs scikit-learn, an optional extra: "
                          "pip install 'scoregen[digits]'") from e
    bunch = load_digits()
    pixels, labels = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    keep = _subset(len(pixels), n, seed, "'digits'")
    if keep is not None:
        pixels, labels = pixels[keep], labels[keep]
    x = torch.from_numpy((pixels / 8.0 - 1.0).reshape(-1, 1, 8, 8)).float()  # 0..16 -> [-1, 1], exact in float32
    return Dataset(x, torch.from_numpy(labels), (1, 8, 8), (-1.0, 1.0), "digits", 10)


def _load_npy(path: str, seed: int, n: Optional[int]) -> Dataset:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays, corrupt headers, not an .npy at all
        raise ValueError(f"{path}: not a readable .npy array file ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected a single array in .npy format, got {type(arr).__name__}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: expected a floating-point array, got dtype {arr.dtype}; "
                         f"convert it (e.g. arr.astype(np.float32)) and scale it as you intend to train on it")
    if arr.ndim < 2:
        raise ValueError(f"{path}: expected an array of shape (N, ...) with at least 2 dimensions "
                         f"(N samples of shape ...), got shape {arr.shape}; a set of scalars is shape (N, 1)")
    if arr.shape[0] == 0:
        raise ValueError(f"{path}: the array holds no samples (shape {arr.shape})")
    _check_finite(arr, path)
    keep = _subset(len(arr), n, seed, path)
    if keep is not None:
        arr = arr[keep]
    big = np.abs(arr) > np.finfo(np.float32).max
    if big.any():
        first = tuple(int(i) for i in np.argwhere(big)[0])
        raise ValueError(f"{path}: {int(big.sum())} value(s) overflow float32, the first at index {first} "
                         f"(value {arr[first]}); rescale the data")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    name = os.path.splitext(os.path.basename(path))[0]
    return Dataset(x, None, tuple(x.shape[1:]), (float(x.min()), float(x.max())), name, None)


def _check_finite(arr: np.ndarray, path: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{path}: contains {int(bad.sum())} NaN/inf value(s), the first at index {first} "
                         f"(value {arr[first]})")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


def _scan(folder: str) -> tuple:
    """(image paths, subfolder entries, other file names) directly inside ``folder``, sorted by name."""
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not _is_hidden(e.name)), key=lambda e: e.name)
    images = [e.path for e in entries if _is_image(e)]
    dirs = [e for e in entries if e.is_dir()]
    others = [e.name for e in entries if not e.is_dir() and not _is_image(e)]
    return images, dirs, others


def _load_image_folder(folder: str, seed: int, n: Optional[int]) -> Dataset:
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("loading an image folder needs Pillow: pip install pillow") from e
    exts = "/".join(IMAGE_EXTENSIONS)
    images, dirs, others = _scan(folder)
    if not images and not dirs and not others:
        raise ValueError(f"image folder {folder!r} is empty")
    class_names = None
    if images:
        nested = [d.name for d in dirs if _scan(d.path)[0]]
        if nested:
            raise ValueError(f"image folder {folder!r} has images both at its top level and in subfolders "
                             f"({', '.join(nested[:3])}); put all images at the top level (unlabelled) "
                             f"or all in one subfolder per class (labelled)")
        paths, labels = images, None
    else:
        per_class = [(d.name, _scan(d.path)[0]) for d in dirs]
        if not any(files for _, files in per_class):
            where = f" or its {len(dirs)} subfolder(s)" if dirs else ""
            also = f"; it holds {len(others)} other file(s), e.g. {others[0]!r}" if others else ""
            raise ValueError(f"no images found in {folder!r}{where} (looking for {exts} files){also}")
        empty = [name for name, files in per_class if not files]
        if empty:
            raise ValueError(f"image folder {folder!r} has one subfolder per class, but class folder(s) "
                             f"{', '.join(repr(e) for e in empty[:3])} hold no {exts} images")
        class_names = tuple(name for name, _ in per_class)
        paths = [p for _, files in per_class for p in files]
        labels = [c for c, (_, files) in enumerate(per_class) for _ in files]

    keep = _subset(len(paths), n, seed, f"image folder {folder!r}")
    if keep is not None:
        paths = [paths[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]

    first = None  # (path, (width, height), channels) of the first image, to compare the others with
    out = None
    for i, path in enumerate(paths):
        arr = _read_image(Image, path)  # (H, W, C) uint8
        h, w, c = arr.shape
        if first is None:
            first = (path, (w, h), c)
            out = np.empty((len(paths), c, h, w), dtype=np.uint8)
        elif (w, h) != first[1]:
            raise ValueError(f"images differ in size: {first[0]} is {first[1][0]}x{first[1][1]} (width x height) "
                             f"but {path} is {w}x{h}; all images must have the same size")
        elif c != first[2]:
            kinds = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}
            raise ValueError(f"images differ in colour: {first[0]} is {kinds[first[2]]} but {path} is {kinds[c]}; "
                             f"convert them all to grayscale or all to RGB")
        out[i] = arr.transpose(2, 0, 1)
    x = torch.from_numpy(out).float().div_(127.5).sub_(1.0)  # 0..255 -> [-1, 1]
    y = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    name = os.path.basename(os.path.normpath(os.path.abspath(folder)))
    return Dataset(x, y, tuple(x.shape[1:]), (-1.0, 1.0), name,
                   None if class_names is None else len(class_names), class_names)


def _read_image(Image, path: str) -> np.ndarray:
    """One image as an (H, W, C) uint8 array with C = 1 (grayscale) or 3 (RGB), by the module's colour rules."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode == "1":
                im = im.convert("L")
            elif mode in ("CMYK", "YCbCr"):
                im = im.convert("RGB")
            arr = np.asarray(im)
            converted = im.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if converted in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise ValueError(f"{path}: a 16-bit or float image (Pillow mode {mode!r}, values {arr.min()}..{arr.max()}); "
                         f"only 8-bit images are accepted, whose values 0..255 are scaled to [-1, 1]: convert it to 8 bit")
    if converted in ("LA", "RGBA"):
        alpha = arr[..., -1]
        if (alpha != 255).any():
            raise ValueError(f"{path}: has transparency (mode {mode!r}, {int((alpha != 255).sum())} pixel(s) with "
                             f"alpha < 255); an alpha channel is dropped only when every pixel is opaque; "
                             f"flatten the image onto a background first")
        arr = arr[..., :-1]
    elif converted not in ("L", "RGB"):
        raise ValueError(f"{path}: unsupported image mode {mode!r}; use 8-bit grayscale (L) or RGB")
    return arr[..., None] if arr.ndim == 2 else arr
