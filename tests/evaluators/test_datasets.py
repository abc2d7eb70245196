"""Datasets: bundled digits, the synthetic task, CIFAR-10 parsing on tiny fake batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from compsearch.errors import ConfigError, DataError, DuplicateNameError, UnknownNameError
from compsearch.evaluators.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    list_datasets,
    load_dataset,
    register_dataset,
)
from compsearch.evaluators.models import build_model, train_base_model

# ---- registry --------------------------------------------------------------------------


def test_registry_lists_builtins_and_is_loud() -> None:
    assert {"digits", "synthetic", "cifar10"} <= set(list_datasets())
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'mnist'.*'digits'"):
        load_dataset("mnist")
    with pytest.raises(DuplicateNameError, match="'digits' is already registered"):
        register_dataset("digits")(lambda *, seed: None)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['sise'\]"):
        load_dataset("digits", sise=16)


# ---- digits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_shapes_and_split_sizes(digits) -> None:
    # 1797 images; test = round(0.2 * 1797) = 359, val = 359, train = 1797 - 718 = 1079.
    assert digits.x_train.shape == (1079, 1, 8, 8)
    assert digits.x_val.shape == (359, 1, 8, 8)
    assert digits.x_test.shape == (359, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)


def test_digits_split_is_stratified(digits) -> None:
    from sklearn.datasets import load_digits

    all_counts = np.bincount(load_digits().target, minlength=10)  # 174..183 per class
    for y, n in ((digits.y_train, 1079), (digits.y_val, 359), (digits.y_test, 359)):
        counts = np.bincount(y.numpy(), minlength=10)
        expected = all_counts * n / 1797
        assert np.all(np.abs(counts - expected) <= 1.0), (counts, expected)
    total = sum(np.bincount(y.numpy(), minlength=10) for y in (digits.y_train, digits.y_val, digits.y_test))
    assert np.array_equal(total, all_counts)


def test_digits_standardized_with_train_statistics(digits) -> None:
    # Train pixels have mean 0 and std 1; the 17 raw levels k/16 stay evenly spaced,
    # and val/test pixels sit on the same grid (same affine map from train statistics).
    assert abs(digits.x_train.mean().item()) < 1e-5
    assert abs(digits.x_train.std().item() - 1.0) < 1e-5
    levels = torch.unique(digits.x_train)
    assert len(levels) == 17
    steps = levels[1:] - levels[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-5)
    for x in (digits.x_val, digits.x_test):
        k = (x - levels[0]) / steps[0]
        assert torch.allclose(k, k.round(), atol=1e-4)
        assert k.min() >= -1e-4 and k.max() <= 16 + 1e-4


def test_digits_deterministic_by_seed(digits) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_val, digits.y_val)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.y_train, digits.y_train)
    assert other.x_train.shape == digits.x_train.shape


def test_digits_resize_and_channels() -> None:
    d = load_dataset("digits", size=16, channels=3)
    assert d.x_train.shape == (1079, 3, 16, 16) and d.x_test.shape == (359, 3, 16, 16)
    assert torch.equal(d.x_train[:, 0], d.x_train[:, 2])  # grey repeated
    assert abs(d.x_train.mean().item()) < 1e-5


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"size": 3}, r"size=3 must be an integer in \[4, 512\]"),
        ({"channels": 2}, r"channels=2 is not supported; allowed: 1 or 3"),
        ({"val_fraction": 0.0}, r"val_fraction=0.0 must be a number in \(0, 1\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, r"leaves under 10% for training"),
    ],
)
def test_digits_bad_options(options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        load_dataset("digits", **options)


# ---- synthetic -------------------------------------------------------------------------


def test_synthetic_shapes_balance_and_determinism() -> None:
    d = load_dataset("synthetic", n=500, num_classes=5, shape=(16,), seed=3)
    assert d.x_train.shape == (300, 16) and d.x_val.shape == (100, 16) and d.x_test.shape == (100, 16)
    assert d.num_classes == 5
    assert np.bincount(d.y_test.numpy()).tolist() == [20] * 5  # 100 balanced labels, stratified
    again = load_dataset("synthetic", n=500, num_classes=5, shape=(16,), seed=3)
    assert torch.equal(again.x_train, d.x_train)
    images = load_dataset("synthetic", n=200, num_classes=4, shape=(3, 8, 8))
    assert images.input_shape == (3, 8, 8)


def test_synthetic_noise_zero_gives_prototypes() -> None:
    # With noise=0 every sample equals its class prototype: one distinct input per class.
    d = load_dataset("synthetic", n=100, num_classes=4, shape=(6,), noise=0.0)
    for k in range(4):
        rows = d.x_train[d.y_train == k]
        assert torch.equal(rows, rows[:1].expand_as(rows))


def test_synthetic_is_learnable() -> None:
    # 10 classes (chance 0.1); the nearest class mean of the train split and a small MLP
    # trained for 150 steps are both far above chance (about 0.87 and 0.78 at seed 0).
    d = load_dataset("synthetic", n=1000, num_classes=10, shape=(1, 8, 8), noise=3.0, seed=0)
    means = torch.stack([d.x_train[d.y_train == k].mean(0) for k in range(10)]).flatten(1)
    nearest = torch.cdist(d.x_val.flatten(1), means).argmin(1)
    assert (nearest == d.y_val).float().mean().item() > 0.7
    model = build_model("digits_mlp", num_classes=10)
    result = train_base_model(model, d, steps=150, seed=0)
    assert result["val_accuracy"] > 0.5


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"n": 10, "num_classes": 4}, r"n=10 is too small.*>= 5 \* num_classes = 20"),
        ({"num_classes": 1}, r"num_classes=1 must be an integer >= 2"),
        ({"shape": (2, 0)}, r"shape=\(2, 0\) must be a tuple of 1-3 positive integers"),
        ({"noise": -1.0}, r"noise=-1.0 must be a number >= 0"),
    ],
)
def test_synthetic_bad_options(options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        load_dataset("synthetic", **options)


# ---- CIFAR-10 on tiny fake batches -----------------------------------------------------


def _fake_batch(path: Path, labels: list[int]) -> None:
    """Pickled dict in the CIFAR python format; red plane = 10 * label, green 100, blue 200,
    and pixel (row 0, col 5) of the red plane = 255 as an orientation marker."""
    n = len(labels)
    data = np.empty((n, 3072), dtype=np.uint8)
    data[:, :1024] = (10 * np.asarray(labels))[:, None]
    data[:, 1024:2048] = 100
    data[:, 2048:] = 200
    data[:, 5] = 255
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"fake"}, f)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _fake_batch(folder / f"data_batch_{i}", [k % 10 for k in range(20)])  # 2 per class
    _fake_batch(folder / "test_batch", [k % 10 for k in range(30)])
    return tmp_path


def _denormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x * std + mean) * 255.0


def test_cifar_parses_fake_batches(cifar_root: Path) -> None:
    d = load_dataset("cifar10", root=cifar_root, val_size=20, seed=0)
    # 5 x 20 = 100 training images -> 80 train + 20 val; test_batch has 30.
    assert d.x_train.shape == (80, 3, 32, 32) and d.x_val.shape == (20, 3, 32, 32)
    assert d.x_test.shape == (30, 3, 32, 32) and d.num_classes == 10
    assert np.bincount(d.y_val.numpy(), minlength=10).tolist() == [2] * 10  # stratified
    for x, y in d.split("train"), d.split("val"), d.split("test"):
        pixels = _denormalize(x).round()
        assert torch.equal(pixels[:, 0, 1, 0], 10.0 * y)  # red plane carries the label
        assert torch.all(pixels[:, 1] == 100) and torch.all(pixels[:, 2] == 200)
        assert torch.all(pixels[:, 0, 0, 5] == 255)  # channel-major, row-major layout
    # Hand check of the normalization: green 100 -> (100 / 255 - 0.4822) / 0.2435.
    assert d.x_train[0, 1, 0, 0].item() == pytest.approx((100 / 255 - 0.4822) / 0.2435, abs=1e-6)


def test_cifar_limit_takes_stratified_subsets(cifar_root: Path) -> None:
    d = load_dataset("cifar10", root=cifar_root, val_size=10, limit=50, seed=1)
    assert len(d.y_train) == 40 and len(d.y_val) == 10 and len(d.y_test) == 30
    assert np.bincount(d.y_train.numpy(), minlength=10).tolist() == [4] * 10


def test_cifar_missing_files_name_folder_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*missing \['data_batch_1'.*download=True"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_cifar_malformed_batch(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"cannot read CIFAR-10 batch .*data_batch_3"):
        load_dataset("cifar10", root=cifar_root, val_size=20)


def test_cifar_bad_val_size(cifar_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"val_size=5000 must be an integer in \[10, 50\]"):
        load_dataset("cifar10", root=cifar_root)
