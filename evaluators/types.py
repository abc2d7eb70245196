"""Plain data types shared by the evaluator, the strategies and the studies."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from compsearch.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class FineTuneConfig:
    """How a compressed candidate is fine-tuned.

    Attributes:
        steps: optimizer steps (mini-batches); ``epochs`` overrides it when given.
        epochs: full passes over the train split (None = use ``steps``).
        batch_size: mini-batch size.
        optimizer: ``sgd`` (with ``momentum``), ``adam`` or ``adamw``.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        schedule: ``constant``, ``cosine`` (to 0 over the run) or ``step`` (x0.1 at 2/3).
        distill: weight in [0, 1] of the distillation loss (KL to the uncompressed
            model's cached logits at ``temperature``); 0 = plain cross-entropy.
        temperature: distillation temperature.
        report_every: report intermediate validation accuracy every this many steps
            (0 = once per epoch of the train split).
        seed: seed of batch order and any randomness in fine-tuning.
    """

    steps: int = 100
    epochs: float | None = None
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    distill: float = 0.0
    temperature: float = 2.0
    report_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"finetune steps={self.steps!r} must be an integer >= 0 (0 = no fine-tuning)")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"finetune epochs={self.epochs!r} must be > 0 or None")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"finetune batch_size={self.batch_size!r} must be an integer >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"finetune optimizer={self.optimizer!r} is unknown; allowed: {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"finetune schedule={self.schedule!r} is unknown; allowed: {list(SCHEDULES)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"finetune lr={self.lr!r} must be a finite number > 0")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"finetune distill={self.distill!r} must be in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"finetune temperature={self.temperature!r} must be > 0")
        if self.report_every < 0:
            raise ConfigError(f"finetune report_every={self.report_every!r} must be >= 0")


@dataclass(frozen=True)
class DataSplits:
    """A classification dataset held as tensors (small enough for memory).

    Attributes:
        x_train, y_train: ``n x C x H x W`` (or ``n x d``) float inputs, ``n`` int64 labels.
        x_val, y_val: validation split; the search sees its accuracy.
        x_test, y_test: test split; used only to report final Pareto points.
        num_classes: number of classes.
        name: dataset name.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str = "data"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch axis)."""
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split={name!r} is unknown; allowed: ['train', 'val', 'test']")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@dataclass(frozen=True)
class EvalResult:
    """Everything one full evaluation measured.

    Attributes:
        accuracy: top-1 accuracy on the validation split after fine-tuning.
        loss: cross-entropy on the validation split after fine-tuning.
        size_bits, compression_ratio, bops, sparsity: exact costs (see ``cost``).
        test_accuracy: top-1 on the test split, only when asked for (final reporting).
        steps: fine-tuning steps actually run.
        seconds: wall time per phase (``prepare``, ``finetune``, ``validate``, ``total``).
    """

    accuracy: float
    loss: float
    size_bits: float
    compression_ratio: float
    bops: float
    sparsity: float
    test_accuracy: float | None = None
    steps: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """Flat JSON-ready dict of every metric (timings as ``seconds_<phase>``)."""
        out = {k: v for k, v in asdict(self).items() if k != "seconds"}
        out.update({f"seconds_{k}": v for k, v in self.seconds.items()})
        return out


@runtime_checkable
class Reporter(Protocol):
    """Where intermediate and final values of an evaluation go.

    ``report`` may raise ``optuna.TrialPruned`` to stop a hopeless candidate.
    """

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None: ...

    def final(self, metrics: dict[str, Any]) -> None: ...
