"""Data read a batch at a time: the same numbers as in memory, a dataset far larger than the
samples ever held at once, and image folders split like the built-in datasets."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from compsearch.errors import DataError
from compsearch.evaluators.datasets import load_dataset
from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.evaluators.streaming import DatasetInputs
from compsearch.evaluators.types import DataSplits, FineTuneConfig
from compsearch.spaces import Policy, UnitPolicy


def _model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))


def _tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.randn(3, 1, 6, 6, generator=g)[y] + 0.8 * torch.randn(n, 1, 6, 6, generator=g), y


POLICY = Policy({"2": UnitPolicy(w_bits=4, keep=0.5), "6": UnitPolicy(w_bits=6, a_bits=8)})


def test_streamed_splits_give_exactly_the_in_memory_numbers() -> None:
    """Same tensors, once in memory and once as TensorDatasets (one through a DataLoader): the
    evaluation (calibration, 6 fine-tune steps with distillation, val accuracy) is identical."""
    (xa, ya), (xb, yb), (xc, yc) = _tensors(120, 0), _tensors(45, 1), _tensors(45, 2)
    memory = DataSplits(x_train=xa, y_train=ya, x_val=xb, y_val=yb, x_test=xc, y_test=yc, num_classes=3)
    streamed = DataSplits.from_datasets(TensorDataset(xa, ya), DataLoader(TensorDataset(xb, yb), batch_size=7),
                                        TensorDataset(xc, yc))
    assert isinstance(streamed.x_train, DatasetInputs) and streamed.num_classes == 3
    assert streamed.input_shape == (1, 6, 6) and torch.equal(streamed.y_val, yb)
    config = FineTuneConfig(steps=6, batch_size=16, distill=0.5)
    results = [CompressionEvaluator(_model(), data, finetune=config, device="cpu").evaluate(POLICY, test=True)
               for data in (memory, streamed)]
    assert results[0].metrics()["accuracy"] == results[1].metrics()["accuracy"]
    assert results[0].loss == results[1].loss and results[0].test_accuracy == results[1].test_accuracy


class _Counting(Dataset):  # type: ignore[type-arg]
    """``n`` samples made on the fly from their index; counts reads and the samples alive."""

    def __init__(self, n: int) -> None:
        self.n, self.reads, self.alive, self.peak = n, 0, 0, 0
        self.targets = [i % 3 for i in range(n)]  # labels without reading the images

    def __len__(self) -> int:
        return self.n

    def _gone(self) -> None:
        self.alive -= 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        g = torch.Generator().manual_seed(int(i))
        x = torch.full((1, 6, 6), float(i % 3)) + 0.8 * torch.randn(1, 6, 6, generator=g)
        weakref.finalize(x, self._gone)
        return x, i % 3


def test_a_dataset_far_larger_than_what_is_held_at_once() -> None:
    """2,000,000 train samples (288 MB as float32, never materialised): an evaluation reads
    what it needs, and never holds more than one batch of samples alive."""
    train, val, test = _Counting(2_000_000), _Counting(90), _Counting(90)
    data = DataSplits.from_datasets(train, val, test)
    ev = CompressionEvaluator(_model(), data, finetune=FineTuneConfig(steps=5, batch_size=32), device="cpu")
    ev.evaluate(POLICY)
    # Reads (measured 1191): 5 steps x 32 = 160 for fine-tuning, the calibration batches (the
    # evaluator's calib_batches x calib_batch_size = 4 x 256), the shape probe and the model checks.
    cfg = ev.config
    assert train.reads <= 5 * 32 + cfg.calib_batches * cfg.calib_batch_size + 8
    assert train.peak <= max(32, cfg.calib_batch_size) + 2  # one batch alive at a time
    assert val.reads >= 90 and val.peak <= cfg.eval_batch_size + 2  # val accuracy over every sample, in batches
    assert test.reads <= 1  # the test split is not touched by a search evaluation


def test_bad_datasets_are_named() -> None:
    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            yield torch.zeros(1), 0

    ok = TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(DataError, match="train: an IterableDataset has no random access"):
        DataSplits.from_datasets(Stream(), ok, ok)
    with pytest.raises(DataError, match=r"val labels span \[0, 7\], outside \[0, 3\)"):
        DataSplits.from_datasets(ok, TensorDataset(torch.zeros(2, 2), torch.tensor([0, 7])), ok, num_classes=3)
    mixed = DataSplits.from_datasets(ok, TensorDataset(torch.zeros(2, 3), torch.tensor([0, 1])), ok)
    with pytest.raises(DataError, match=r"val\[0\] has input shape \(3,\), the first sample \(2,\)"):
        mixed.x_val[:2]


def _png_folder(root: Path, counts: dict[str, int]) -> None:
    """Tiny 5x7 RGB PNGs, one colour per class plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(60 * k + 40 + rng.normal(0, 20, size=(7, 5, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_imagefolder_splits_stratified_seeded_and_standardised(tmp_path: Path) -> None:
    _png_folder(tmp_path, {"ant": 10, "bee": 10, "cat": 10})
    data = load_dataset("imagefolder", root=str(tmp_path), size=8, seed=0)
    # 30 images: test round(6) and val round(6) carved off, 18 train; 2 of each class in val and test
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (18, 6, 6)
    assert [int((data.y_val == c).sum()) for c in range(3)] == [2, 2, 2]
    assert [int((data.y_test == c).sum()) for c in range(3)] == [2, 2, 2]
    assert data.num_classes == 3 and data.input_shape == (3, 8, 8)
    # every train image is in the statistics sample (18 < 512): per-channel train mean 0, std 1
    x = data.x_train[:]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    again, other = (load_dataset("imagefolder", root=str(tmp_path), size=8, seed=s) for s in (0, 1))
    assert torch.equal(again.x_val[:], data.x_val[:]) and torch.equal(again.y_test, data.y_test)
    assert not torch.equal(other.x_val[:], data.x_val[:])  # another seed, another split
    grey = load_dataset("imagefolder", root=str(tmp_path), size=6, channels=1)
    assert grey.input_shape == (1, 6, 6)


def test_imagefolder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("imagefolder", root=str(tmp_path / "nope"))
    _png_folder(tmp_path / "few", {"a": 1, "b": 8})
    with pytest.raises(DataError, match="cannot be split stratified"):
        load_dataset("imagefolder", root=str(tmp_path / "few"), size=8)


def test_a_spec_names_an_image_folder_relative_to_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compsearch.cli import main
    from compsearch.studies.spec import load_spec

    _png_folder(tmp_path / "project" / "imgs", {"ant": 10, "bee": 10, "cat": 10})
    spec = tmp_path / "project" / "spec.toml"
    spec.write_text('name = "folder"\nstrategies = ["random"]\ntrials = 2\n[model]\nname = "digits_cnn"\n'
                    '[data]\nname = "imagefolder"\noptions = { root = "imgs", size = 8 }\n[evaluator]\ndevice = "cpu"\n')
    monkeypatch.chdir(tmp_path)  # another folder: the root is found beside the spec
    assert load_spec(spec).data.options["root"] == str((tmp_path / "project" / "imgs").resolve())
    assert main(["check", str(spec), "--out", str(tmp_path / "run")]) == 0
