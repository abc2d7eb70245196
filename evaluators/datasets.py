"""Datasets as in-memory tensors: bundled digits, a synthetic task, and CIFAR-10.

Every loader returns a :class:`DataSplits` with fixed train/val/test splits that a
``seed`` determines, so one seed gives the same tensors in any process. Loaders
are registered by name (:func:`register_dataset`) and looked up loudly:
:func:`load_dataset` with an unknown name raises listing the registered ones.

Built in:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10
  classes, no download). Inputs ``n x C x S x S`` (``C`` = ``channels``, ``S`` =
  ``size``, default ``1 x 8 x 8``).
- ``synthetic``: class prototypes plus Gaussian noise, any input shape.
- ``cifar10``: the python-version CIFAR-10 batches from a local folder
  (downloaded only when ``download=True``).
- ``imagefolder``: images in class folders under a user-given ``root`` (torchvision's
  ``ImageFolder``), read a batch at a time (:mod:`compsearch.evaluators.streaming`).
"""

from __future__ import annotations

import inspect
import pickle
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compsearch.errors import ConfigError, DataError, check_keywords
from compsearch.evaluators.types import DataSplits
from compsearch.registry import Registry

DatasetLoader = Callable[..., DataSplits]

DATASETS: Registry[DatasetLoader] = Registry("dataset")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
#: Per-channel mean and standard deviation of the CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator registering ``loader(*, seed, **options) -> DataSplits`` as ``name``.

    Registering a name twice raises :class:`DuplicateNameError`.
    """
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return DATASETS.names()


def load_dataset(name: str, *, seed: int = 0, **options: Any) -> DataSplits:
    """Load the dataset registered as ``name``.

    Args:
        name: a registered dataset (see :func:`list_datasets`).
        seed: fixes the splits (and, for ``synthetic``, the data itself).
        **options: loader-specific options; unknown ones raise ``TypeError``.

    Returns:
        The train/val/test tensors.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the registered names).
        TypeError: an option the loader does not take.
        ConfigError, DataError: a bad option value or unreadable files.
    """
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        check_keywords(f"load_dataset({name!r})", options, set(params) - {"seed"})
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed={seed!r} must be an integer")
    return loader(seed=int(seed), **options)


# ---- shared helpers ------------------------------------------------------------------


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for pname, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ConfigError(f"{pname}={v!r} must be a number in (0, 1); e.g. 0.2")
    if val_fraction + test_fraction >= 0.9:
        raise ConfigError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves under 10% "
            f"for training; allowed: a sum < 0.9 (e.g. 0.2 + 0.2)"
        )


def stratified_split(
    y: np.ndarray, *, sizes: Sequence[int], seed: int
) -> list[np.ndarray]:
    """Split indices ``0..n-1`` into parts of the given sizes, each stratified by label.

    Uses scikit-learn's ``train_test_split(stratify=...)`` successively, so each part's
    class proportions match the whole to within one sample per class.

    Args:
        y: ``n`` integer labels.
        sizes: sizes of the parts carved off first (e.g. ``[n_test, n_val]``); the rest
            (``n - sum(sizes)``) is returned as the first element.
        seed: random state of every split.

    Returns:
        ``[rest, part_0, part_1, ...]`` sorted index arrays.
    """
    from sklearn.model_selection import train_test_split

    rest = np.arange(len(y))
    parts: list[np.ndarray] = []
    for size in sizes:
        rest, part = train_test_split(rest, test_size=int(size), stratify=y[rest], random_state=seed)
        parts.append(np.sort(part))
    return [np.sort(rest), *parts]


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """``(n_test, n_val)`` = rounded fractions of ``n`` (round half to even)."""
    return int(round(n * test_fraction)), int(round(n * val_fraction))


def _to_splits(
    x: torch.Tensor, y: np.ndarray, parts: Sequence[np.ndarray], *, num_classes: int, name: str
) -> DataSplits:
    train, test, val = parts
    yt = torch.as_tensor(y, dtype=torch.int64)
    return DataSplits(
        x_train=x[train].contiguous(), y_train=yt[train].contiguous(),
        x_val=x[val].contiguous(), y_val=yt[val].contiguous(),
        x_test=x[test].contiguous(), y_test=yt[test].contiguous(),
        num_classes=num_classes, name=name,
    )


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"channels={channels!r} is not supported; allowed: 1 or 3 (grey repeated)")


def _resize(x: torch.Tensor, size: int | None, *, native: int) -> torch.Tensor:
    """Bilinear resize of ``n x C x H x W`` to ``n x C x size x size`` (``None`` = keep)."""
    if size is None or size == native:
        return x
    if isinstance(size, bool) or not isinstance(size, int) or not 4 <= size <= 512:
        raise ConfigError(f"size={size!r} must be an integer in [4, 512] (e.g. 16 or 32) or None")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ---- digits --------------------------------------------------------------------------


@register_dataset("digits")
def load_digits(
    *,
    seed: int = 0,
    size: int | None = None,
    channels: int = 1,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), no download.

    Preprocessing: pixel values (0..16) are divided by 16, optionally resized
    bilinearly to ``size x size``, then standardized with the mean and standard
    deviation of the *train* split (one scalar each over all train pixels), and
    repeated to ``channels``. The split is stratified by class and fixed by ``seed``;
    with the defaults it is 1079 / 359 / 359 (60/20/20, sizes rounded).

    Args:
        seed: fixes the split.
        size: output side length (``None`` = 8).
        channels: 1, or 3 (the grey image repeated, for models expecting RGB).
        val_fraction, test_fraction: fractions of all images in val and test.

    Returns:
        Splits with ``x`` of shape ``n x channels x size x size`` (float32) and 10 classes.
    """
    from sklearn.datasets import load_digits as sk_digits

    _check_fractions(val_fraction, test_fraction)
    _check_channels(channels)
    bunch = sk_digits()
    y = np.asarray(bunch.target, dtype=np.int64)
    x = torch.as_tensor(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    x = _resize(x, size, native=8)
    parts = stratified_split(y, sizes=_split_sizes(len(y), val_fraction, test_fraction), seed=seed)
    train = x[parts[0]]
    x = (x - train.mean()) / train.std().clamp_min(1e-8)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    return _to_splits(x, y, parts, num_classes=10, name="digits")


# ---- synthetic -----------------------------------------------------------------------


def _check_synthetic(n: int, num_classes: int, shape: Sequence[int], noise: float) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} must be an integer >= 2")
    if isinstance(n, bool) or not isinstance(n, int) or n < 5 * num_classes:
        raise ConfigError(
            f"n={n!r} is too small for num_classes={num_classes}; allowed: an integer "
            f">= 5 * num_classes = {5 * num_classes} (each split needs every class)"
        )
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) not in (1, 2, 3)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise ConfigError(
            f"shape={shape!r} must be a tuple of 1-3 positive integers: (d,), (C, L) or (C, H, W)"
        )
    if not isinstance(noise, (int, float)) or not noise >= 0:
        raise ConfigError(f"noise={noise!r} must be a number >= 0")


@register_dataset("synthetic")
def load_synthetic(
    *,
    seed: int = 0,
    n: int = 1000,
    num_classes: int = 10,
    shape: Sequence[int] = (1, 8, 8),
    noise: float = 3.0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> DataSplits:
    """A learnable synthetic classification task: class prototypes plus Gaussian noise.

    Each class ``k`` has a prototype ``p_k ~ N(0, I)`` of the given ``shape``; a
    sample of class ``k`` is ``p_k + noise * eps`` with ``eps ~ N(0, I)``. Labels are
    balanced (``i mod num_classes``, shuffled). With ``d`` input elements, two
    prototypes are about ``sqrt(2 d)`` apart and ``noise`` sets the difficulty: with the
    defaults (``d = 64``, 10 classes, ``noise = 3``) a nearest-class-mean classifier
    gets about 0.87 validation accuracy (chance 0.1) and a small MLP trained for 150
    steps about 0.8, so compression visibly costs accuracy.

    Args:
        seed: fixes prototypes, samples and split.
        n: total number of samples (>= 5 x ``num_classes``).
        num_classes: number of classes (>= 2).
        shape: shape of one sample: ``(d,)``, ``(C, L)`` or ``(C, H, W)``.
        noise: standard deviation of the per-element noise.
        val_fraction, test_fraction: fractions of ``n`` in val and test.

    Returns:
        Splits with ``x`` of shape ``n x *shape`` (float32).
    """
    shape = tuple(shape) if isinstance(shape, list) else shape
    _check_synthetic(n, num_classes, shape, noise)
    _check_fractions(val_fraction, test_fraction)
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((num_classes, *shape), generator=gen)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=gen)]
    x = prototypes[y] + noise * torch.randn((n, *shape), generator=gen)
    y_np = y.numpy().astype(np.int64)
    parts = stratified_split(y_np, sizes=_split_sizes(n, val_fraction, test_fraction), seed=seed)
    return _to_splits(x, y_np, parts, num_classes=num_classes, name="synthetic")


# ---- CIFAR-10 ------------------------------------------------------------------------


#: The only globals a CIFAR batch may name: numpy's array reconstruction (pickle protocols 2-5), the bytes
#: encoding of pickle protocols <= 2 written by Python 3 (no code runs).
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, str, bytes, numbers and numpy arrays
    of plain dtypes: any other global (``os.system``, ``builtins.eval``, a class whose
    ``__reduce__`` runs code) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch holds only arrays, "
                                     f"bytes, strings, numbers, lists and dicts")


def _plain_arrays(obj: Any) -> bool:
    """Whether ``obj`` holds no numpy array of dtype object (which could smuggle other objects)."""
    if isinstance(obj, np.ndarray):
        return obj.dtype != object
    if isinstance(obj, dict):
        return all(_plain_arrays(k) and _plain_arrays(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain_arrays(v) for v in obj)
    return isinstance(obj, (str, bytes, int, float, bool, type(None), np.dtype))


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-version CIFAR batch file, with an unpickler that admits only data.

    The file is a pickled dict with ``b"data"`` (``N x 3072`` uint8, channel-major:
    1024 red, 1024 green, 1024 blue values of a 32x32 image, row by row) and
    ``b"labels"`` (``N`` ints in 0..9). It is read by a restricted unpickler
    (:class:`_ArraysOnly`): a file naming any other global -- a crafted batch whose
    ``__reduce__`` would run code -- is refused with :class:`DataError` and nothing runs.

    Returns:
        ``images`` of shape ``N x 3 x 32 x 32`` (uint8) and ``labels`` of shape ``N`` (int64).
    """
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        if not isinstance(batch, dict) or not _plain_arrays(batch):
            raise TypeError(f"the file holds a {type(batch).__name__} with non-data content")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, AttributeError) as e:
        raise DataError(
            f"cannot read CIFAR-10 batch {str(path)!r} ({type(e).__name__}: {e}); expected a pickled "
            f"dict with b'data' (N x 3072 uint8) and b'labels'; delete the folder and pass download=True"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"CIFAR-10 batch {str(path)!r} has data of shape {data.shape} and {len(labels)} labels; "
            f"expected N x 3072 and N labels; delete the folder and pass download=True"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {str(path)!r} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def download_cifar10(root: Path) -> None:
    """Download and extract the official CIFAR-10 python tarball into ``root``.

    Uses torchvision's checked download (MD5 ``CIFAR10_MD5``) when available,
    otherwise ``urllib`` and ``tarfile``.
    """
    root.mkdir(parents=True, exist_ok=True)
    try:
        from torchvision.datasets.utils import download_and_extract_archive
    except ImportError:
        import urllib.request

        archive = root / "cifar-10-python.tar.gz"
        urllib.request.urlretrieve(CIFAR10_URL, archive)  # noqa: S310 (fixed https URL)
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
                tar.extractall(root, filter="data")
            else:
                tar.extractall(root)  # noqa: S202 (official archive, fixed URL)
        return
    download_and_extract_archive(CIFAR10_URL, download_root=str(root), md5=CIFAR10_MD5)


def _cifar_folder(root: str | Path, download: bool) -> Path:
    root = Path(root).expanduser()
    folder = root / CIFAR10_FOLDER
    needed = [*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download:
        download_cifar10(root)
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 batches not found in {str(folder)!r} (missing {missing}); pass download=True "
            f"to fetch {CIFAR10_URL} into root={str(root)!r}, or extract that tarball there yourself"
        )
    return folder


def _seeded_subset(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a stratified subset of at most ``limit`` samples (all when ``None``)."""
    if limit is None or limit >= len(y):
        return np.arange(len(y))
    return stratified_split(y, sizes=[limit], seed=seed)[1]


def _normalize_cifar(images: np.ndarray) -> torch.Tensor:
    """uint8 ``N x 3 x 32 x 32`` -> float32, ``(pixel / 255 - mean_c) / std_c`` per channel."""
    x = torch.as_tensor(images).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@register_dataset("cifar10")
def load_cifar10(
    *,
    seed: int = 0,
    root: str | Path = "~/.cache/compsearch",
    download: bool = False,
    val_size: int = 5000,
    limit: int | None = None,
) -> DataSplits:
    """CIFAR-10 from the python-version batches under ``root/cifar-10-batches-py``.

    Pixels are scaled to [0, 1] and normalized per channel with the standard
    CIFAR-10 statistics ``CIFAR10_MEAN`` / ``CIFAR10_STD``. The validation split is
    carved from the training batches (stratified, fixed by ``seed``); the test split
    is ``test_batch``.

    Args:
        seed: fixes the validation split and the ``limit`` subsets.
        root: folder holding (or to receive) ``cifar-10-batches-py``.
        download: fetch the official tarball when the batches are missing (never by default).
        val_size: number of training images moved to the validation split.
        limit: keep a stratified subset of at most ``limit`` images of the training
            batches (before carving ``val_size`` from it) and of the test batch.

    Returns:
        Splits with ``x`` of shape ``n x 3 x 32 x 32`` (float32), 10 classes;
        ``50000 - val_size`` / ``val_size`` / 10000 images without ``limit``.

    Raises:
        DataError: batches missing (and ``download=False``) or malformed.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 20):
        raise ConfigError(f"limit={limit!r} must be an integer >= 20 or None (all images)")
    folder = _cifar_folder(root, download)
    batches = [read_cifar_batch(folder / f) for f in CIFAR10_TRAIN_FILES]
    pool_x = np.concatenate([b[0] for b in batches])
    pool_y = np.concatenate([b[1] for b in batches])
    test_x, test_y = read_cifar_batch(folder / CIFAR10_TEST_FILE)
    keep = _seeded_subset(pool_y, limit, seed)
    pool_x, pool_y = pool_x[keep], pool_y[keep]
    keep = _seeded_subset(test_y, limit, seed)
    test_x, test_y = test_x[keep], test_y[keep]
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 10 <= val_size <= len(pool_y) // 2:
        raise ConfigError(
            f"val_size={val_size!r} must be an integer in [10, {len(pool_y) // 2}] "
            f"(half of the {len(pool_y)} training images); e.g. 5000, or lower it with limit="
        )
    train, val = stratified_split(pool_y, sizes=[val_size], seed=seed)
    x_pool = _normalize_cifar(pool_x)
    return DataSplits(
        x_train=x_pool[train], y_train=torch.as_tensor(pool_y[train]),
        x_val=x_pool[val], y_val=torch.as_tensor(pool_y[val]),
        x_test=_normalize_cifar(test_x), y_test=torch.as_tensor(test_y),
        num_classes=10, name="cifar10",
    )


# ---- image folders -------------------------------------------------------------------------


@register_dataset("imagefolder")
def load_imagefolder(
    *,
    root: str | Path,
    seed: int = 0,
    size: int | None = None,
    channels: int = 3,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> DataSplits:
    """Images in class folders, ``root/<class>/<image>`` (torchvision ``ImageFolder``: the
    classes are the sub-folders in sorted order), read a batch at a time: the inputs are
    :class:`~compsearch.evaluators.streaming.DatasetInputs`, only the labels are in memory.

    Split as ``digits``: stratified by class, fixed by ``seed``, ``test_fraction`` and
    ``val_fraction`` of all images (rounded) carved off in that order, the rest trains.
    Preprocessing: RGB (``channels=3``) or grey (``1``), resized bilinearly to
    ``size x size`` when given, scaled to [0, 1], then standardised per channel with the
    mean and standard deviation of up to 512 train images drawn by ``seed``.

    Args:
        root: the folder (a spec's ``data.options.root``).
        seed: fixes the split, the ``limit`` subset and the statistics sample.
        size: output side length (None = the images' own, which must then agree).
        channels: 3 (RGB) or 1 (grey).
        val_fraction, test_fraction: fractions of all images in val and test.
        limit: keep a stratified subset of at most ``limit`` images first.

    Returns:
        Splits with inputs of shape ``channels x size x size`` and one class per sub-folder.

    Raises:
        DataError: not a folder, no images, too few images of a class to stratify, or
            images of different sizes without ``size``.
    """
    from compsearch.evaluators.streaming import image_folder, standardized_splits

    _check_fractions(val_fraction, test_fraction)
    _check_channels(channels)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 4 <= size <= 4096):
        raise ConfigError(f"size={size!r} must be an integer in [4, 4096] (e.g. 32 or 224) or None")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 10):
        raise ConfigError(f"limit={limit!r} must be an integer >= 10 or None (all images)")
    folder = image_folder(root, size=size, channels=channels)
    y = np.asarray(folder.targets, dtype=np.int64)
    keep = _seeded_subset(y, limit, seed)
    try:
        train, test, val = stratified_split(y[keep], sizes=_split_sizes(len(keep), val_fraction, test_fraction), seed=seed)
    except ValueError as e:
        raise DataError(f"data.options.root={str(root)!r}: {len(keep)} images in {len(folder.classes)} classes cannot "
                        f"be split stratified ({e}); give every class more images or lower val/test_fraction") from None
    parts = {"train": keep[train], "val": keep[val], "test": keep[test]}
    return standardized_splits(DataSplits, folder, parts=parts, seed=seed, num_classes=len(folder.classes),
                               name=f"imagefolder:{Path(root).expanduser().name}")
