"""Data that does not fit in memory: torch Datasets read a batch at a time.

:meth:`DataSplits.from_datasets(train, val, test) <compsearch.evaluators.types.DataSplits.from_datasets>`
wraps three map-style ``torch.utils.data.Dataset`` objects (or ``DataLoader`` objects: their
``dataset`` is used) whose items are ``(input, label)`` pairs. Each split's inputs become a
:class:`DatasetInputs`: it looks like an ``n x ...`` tensor to the evaluator (``shape``,
``len``, ``x[index_tensor]``, ``x[a:b]``, ``x.split(b)``, ``x.to(device)``) but reads only the
samples asked for, when asked. So calibration, gradient statistics, fine-tuning (seeded
random mini-batches), the teacher forwards and accuracy all iterate over batches, and at most
one batch of inputs is held at a time. Labels are held in memory (``n`` int64): from the
dataset's ``targets`` (``ImageFolder``, ``Subset`` of one) when it has them, else from one
pass over the dataset.

What stays in memory per split: the labels; while fine-tuning with distillation
(``finetune.distill > 0``) also the uncompressed model's train logits (``n_train x classes``).
Random access is needed (seeded mini-batches), so an ``IterableDataset`` is refused.

In-memory :class:`~compsearch.evaluators.types.DataSplits` of tensors are unchanged: the
evaluator's numbers for them do not depend on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compsearch.errors import DataError

SPLITS = ("train", "val", "test")


def _dataset(source: Any, split: str) -> Any:
    """The map-style dataset of ``source`` (a Dataset, or a DataLoader's ``dataset``)."""
    from torch.utils.data import DataLoader, IterableDataset

    dataset: Any = source.dataset if isinstance(source, DataLoader) else source
    if isinstance(dataset, IterableDataset):
        raise DataError(f"{split}: an IterableDataset has no random access, which seeded mini-batches need; "
                        f"give a map-style Dataset (__getitem__ and __len__)")
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DataError(f"{split}: expected a torch Dataset or DataLoader, got {type(source).__name__}")
    if len(dataset) == 0:
        raise DataError(f"{split}: the dataset is empty")
    return dataset


def _split_item(item: Any, split: str, index: int) -> tuple[torch.Tensor, Any]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{split}[{index}] is a {type(item).__name__}; each item must be an (input, label) pair")
    x = item[0]
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{split}[{index}][0] is a {type(x).__name__}, not a tensor; give the dataset a transform "
                        f"that returns tensors (e.g. torchvision.transforms.ToTensor())")
    return x, item[1]


class DatasetInputs:
    """The inputs of one split of a map-style dataset, read on demand (see the module docstring).

    Indexing with an int returns one sample (``...``); with a slice, a list, an array or an
    index tensor, a stacked float batch ``b x ...`` on :attr:`device`. Iterating
    ``split(b)`` reads consecutive batches of ``b``.

    Args:
        dataset: map-style dataset of ``(input, label)`` items.
        sample_shape: the shape every input has.
        device: where returned batches go (``to`` makes a copy of this view, not of the data).
        name: the split's name, for messages.
    """

    def __init__(self, dataset: Any, *, sample_shape: Sequence[int], device: torch.device | str = "cpu",
                 name: str = "train") -> None:
        self.dataset = dataset
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.device = torch.device(device)
        self.name = name
        self.dtype = torch.float32

    @property
    def shape(self) -> torch.Size:
        """``n x sample_shape``, as a tensor's."""
        return torch.Size([len(self.dataset), *self.sample_shape])

    def __len__(self) -> int:
        return len(self.dataset)

    def dim(self) -> int:
        return 1 + len(self.sample_shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def to(self, device: torch.device | str | None = None, *args: Any, **kwargs: Any) -> DatasetInputs:
        """This view with batches delivered to ``device`` (the dataset itself is not copied)."""
        return DatasetInputs(self.dataset, sample_shape=self.sample_shape, device=device or self.device, name=self.name)

    def sample(self, i: int) -> torch.Tensor:
        """Input ``i`` (``sample_shape``, float32)."""
        x, _ = _split_item(self.dataset[i], self.name, i)
        if tuple(x.shape) != self.sample_shape:
            raise DataError(f"{self.name}[{i}] has input shape {tuple(x.shape)}, the first sample {self.sample_shape}; "
                            f"every input must have one shape (resize them, e.g. data.options.size)")
        return x.to(torch.float32)

    def _indices(self, key: Any) -> list[int]:
        n = len(self.dataset)
        if isinstance(key, slice):
            return list(range(*key.indices(n)))
        if isinstance(key, torch.Tensor):
            key = key.detach().cpu()
            if key.dtype == torch.bool:
                key = key.nonzero().flatten()
            return [int(i) for i in key.flatten().tolist()]
        if isinstance(key, (list, tuple, np.ndarray)):
            return [int(i) for i in np.asarray(key).flatten().tolist()]
        raise TypeError(f"DatasetInputs[{key!r}]: index with an int, a slice, a list or an index tensor")

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key)
            return self.sample(i if i >= 0 else len(self.dataset) + i).to(self.device)
        idx = self._indices(key)
        if not idx:
            return torch.empty((0, *self.sample_shape), dtype=self.dtype, device=self.device)
        return torch.stack([self.sample(i) for i in idx]).to(self.device)

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches of ``size`` samples (the last may be smaller), read one at a time."""
        for start in range(0, len(self.dataset), size):
            yield self[start:start + size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self.dataset)):
            yield self[i]

    def __repr__(self) -> str:
        return f"DatasetInputs({self.name}: {len(self)} x {self.sample_shape} from {type(self.dataset).__name__})"


def dataset_labels(dataset: Any, split: str) -> torch.Tensor:
    """The ``n`` labels of ``dataset`` as int64: its ``targets`` (a ``Subset`` of a dataset
    with ``targets`` too) when present and of the right length, else one pass over it."""
    from torch.utils.data import Subset

    targets = getattr(dataset, "targets", None)
    base = getattr(dataset.dataset, "targets", None) if isinstance(dataset, Subset) else None
    if targets is None and base is not None:
        targets = [base[int(i)] for i in dataset.indices]
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(np.asarray(targets), dtype=torch.int64).flatten()
    labels = []
    for i in range(len(dataset)):
        _, y = _split_item(dataset[i], split, i)
        labels.append(int(y))
    return torch.as_tensor(labels, dtype=torch.int64)


def splits_from_datasets(cls: Callable[..., Any], train: Any, val: Any, test: Any, *, num_classes: int | None = None,
                         name: str = "datasets") -> Any:
    """``cls`` (:class:`~compsearch.evaluators.types.DataSplits`) over three datasets or loaders.

    Args:
        train, val, test: map-style Datasets (or DataLoaders) of ``(input tensor, label)``.
        num_classes: the number of classes (default: ``len(train.classes)`` when the dataset
            has ``classes``, else ``1 + the largest label`` of the three splits).
        name: the data's name in messages and reports.

    Raises:
        DataError: an IterableDataset, an empty split, items that are not ``(tensor, label)``
            pairs, inputs of different shapes, or labels outside ``[0, num_classes)``.
    """
    sets = {s: _dataset(src, s) for s, src in zip(SPLITS, (train, val, test), strict=True)}
    first, _ = _split_item(sets["train"][0], "train", 0)
    shape = tuple(first.shape)
    labels = {s: dataset_labels(d, s) for s, d in sets.items()}
    if num_classes is None:
        classes = getattr(sets["train"], "classes", None)
        num_classes = len(classes) if classes is not None else 1 + max(int(y.max()) for y in labels.values())
    for s, y in labels.items():
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise DataError(f"{s} labels span [{int(y.min())}, {int(y.max())}], outside [0, {num_classes}); "
                            f"give num_classes= or fix the labels")
    inputs = {s: DatasetInputs(d, sample_shape=shape, name=s) for s, d in sets.items()}
    return cls(x_train=inputs["train"], y_train=labels["train"], x_val=inputs["val"], y_val=labels["val"],
               x_test=inputs["test"], y_test=labels["test"], num_classes=int(num_classes), name=name)


# ---- image folders -------------------------------------------------------------------------


class _Grey:
    """PIL image -> single-channel ``"L"`` image (picklable, unlike a lambda)."""

    def __call__(self, image: Any) -> Any:
        return image.convert("L")


def image_folder(root: str | Path, *, size: int | None, channels: int) -> Any:
    """``torchvision.datasets.ImageFolder(root)`` (``root/<class>/<image>``, classes in sorted
    folder order) returning ``channels x size x size`` float tensors in [0, 1]: RGB or grey,
    resized (bilinear) to ``size x size`` when ``size`` is given.

    Raises:
        DataError: ``root`` is not a folder, or holds no class folder with an image.
    """
    from torchvision import datasets, transforms

    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.options.root={str(root)!r} is not a folder; give a folder holding one sub-folder of "
                        f"images per class (root/<class>/<image>.png, torchvision's ImageFolder layout)")
    steps: list[Any] = [_Grey()] if channels == 1 else []
    if size is not None:
        steps.append(transforms.Resize((size, size)))
    steps.append(transforms.ToTensor())
    try:
        return datasets.ImageFolder(str(path), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"data.options.root={str(root)!r}: {e}; give one sub-folder of images per class") from None


class Standardized(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A dataset of ``(x, y)`` with ``x`` standardised per channel: ``(x - mean_c) / std_c``.

    Args:
        dataset: the images (``C x H x W`` tensors).
        mean, std: ``C`` values.
    """

    def __init__(self, dataset: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.dataset = dataset
        self.mean = mean.view(-1, 1, 1)
        self.std = std.view(-1, 1, 1)
        self.targets = getattr(dataset, "targets", None)
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.dataset[i]
        return (x - self.mean) / self.std, y


def standardized_splits(cls: Callable[..., Any], dataset: Any, *, parts: dict[str, np.ndarray], seed: int,
                        num_classes: int, name: str, stats_samples: int = 512) -> Any:
    """``cls`` over ``Subset``s of ``dataset`` (``parts``: ``train``/``val``/``test`` index
    arrays), standardised per channel with the mean and standard deviation of up to
    ``stats_samples`` train images drawn by ``seed`` (all of them when fewer): the only images
    read here.

    Raises:
        DataError: the sampled images differ in size (give ``size``).
    """
    from torch.utils.data import Subset

    train = parts["train"]
    pick = np.sort(np.random.default_rng(seed).choice(train, size=min(stats_samples, len(train)), replace=False))
    try:
        xs = torch.stack([dataset[int(i)][0] for i in pick])
    except RuntimeError as e:
        raise DataError(f"{name}: images of different sizes ({e}); give data.options.size to resize them") from None
    mean, std = xs.mean(dim=(0, 2, 3)), xs.std(dim=(0, 2, 3)).clamp_min(1e-8)
    st = Standardized(dataset, mean, std)
    subsets: list[Any] = [Subset(st, [int(i) for i in parts[s]]) for s in SPLITS]
    return splits_from_datasets(cls, *subsets, num_classes=num_classes, name=name)


__all__ = ["DatasetInputs", "Standardized", "dataset_labels", "image_folder", "splits_from_datasets",
           "standardized_splits"]
