"""Tasks: what fine-tuning minimises and what quality means, for the shared evaluator.

The evaluator (:class:`~compsearch.evaluators.evaluator.CompressionEvaluator`) compresses
a model -- masks, fake quantization, cost, proxy, sensitivity -- without knowing what the
model is for. A :class:`Task` supplies everything that depends on it:

==========================  =======================================================  ==============================
method / attribute          what it gives the evaluator                               classification
==========================  =======================================================  ==============================
``name`` (class attribute)  the registered name                                      ``"classification"``
``quality`` (class attr.)   the quality metric (a row of :mod:`compsearch.metrics`)  ``"accuracy"``
``to(device)``              the task with its tensors on ``device``                  data moved once
``check_model(model)``      raise :class:`~compsearch.errors.DataError` unless the   ``b x ...`` -> ``b x classes``
                            model fits the task
``example_input()``         a ``b x ...`` batch (unit discovery, MACs)               2 train samples
``calibration_inputs(...)`` input batches calibrating activation ranges             seeded train batches
``proxy_inputs(n)``         ``n x ...`` inputs of ``proxy`` / ``reconstruction``     first ``n`` val samples
``gradient_batches(...)``   ``GradientBatch(inputs, loss)`` for Fisher, ``taylor``,  seeded train batches, CE
                            ``fisher``, ``sensitivity`` and ``unit_stats``
``loss_floor()``            a loss every working model stays below (divergence)      ``ln(num_classes)``
``prepare(model, config)``  called with the uncompressed model before a candidate    caches teacher logits
                            is compressed (cache what fine-tuning needs)              (``distill > 0``)
``fine_tune(model, ...)``   fine-tunes the compressed model in place                 CE + optional KD
``measure(model, split)``   ``{quality, "loss", extras...}`` on ``"val"``/``"test"``   top-1 and mean CE
==========================  =======================================================  ==============================

The model maps one input tensor to one output tensor (logits, Q-values, actions); the
proxy is the MSE between the compressed and uncompressed outputs on ``proxy_inputs``.
``measure`` must return the quality metric and ``"loss"``; any other numbers it returns
(e.g. ``return_se`` of the policy task) travel in :class:`~compsearch.evaluators.types.EvalResult`
and the trial's metrics. ``split="test"`` is asked for only when reporting final points.

Tasks are registered by name (:func:`register_task`; a name registered twice raises,
an unknown one raises listing the known ones), so a study spec can name one; a third
party subclasses :class:`Task` and registers it::

    @register_task("regression")
    class RegressionTask(Task):
        name = "regression"
        quality = "neg_mse"     # register the metric with compsearch.metrics.register_metric
        ...

``CompressionEvaluator(model, data)`` with a :class:`~compsearch.evaluators.types.DataSplits`
wraps it in :class:`ClassificationTask`; its numbers are exactly those of the evaluator
before tasks existed (tested against recorded values).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.checks import check_data_fits
from compsearch.evaluators.finetune import FineTuneResult, fine_tune
from compsearch.evaluators.types import DataSplits, FineTuneConfig, GradientBatch, Reporter
from compsearch.registry import Registry

SPLITS = ("val", "test")


class Task(ABC):
    """What the compressed model is for: its quality metric, inputs, fine-tuning and measurement.

    Subclasses set the class attributes ``name`` and ``quality`` and implement the
    abstract methods; the defaults of the others fit a task without tensors to move.
    A task may cache (teacher outputs, environments) but must give the same numbers for
    the same seed. Methods that run the model leave it in eval mode or the mode they say.
    """

    name: ClassVar[str] = ""
    quality: ClassVar[str] = ""

    def to(self, device: torch.device) -> Task:
        """This task with its tensors on ``device`` (default: ``self``)."""
        return self

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`~compsearch.errors.DataError` unless ``model`` fits this task (default: no check)."""
        return None

    @abstractmethod
    def example_input(self) -> torch.Tensor:
        """A ``b x ...`` input batch (``b >= 1``) for unit discovery and MACs per sample."""

    @abstractmethod
    def calibration_inputs(self, *, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        """Up to ``batches`` input batches of ``batch_size`` that calibrate activation ranges
        and give ``unit_stats``' activation statistics; the same for the same ``seed``."""

    @abstractmethod
    def proxy_inputs(self, n: int) -> torch.Tensor:
        """``n x ...`` (or fewer) fixed inputs of ``proxy`` and ``reconstruction_error``."""

    @abstractmethod
    def gradient_batches(self, *, batches: int, batch_size: int, seed: int) -> list[GradientBatch]:
        """Up to ``batches`` ``(inputs, loss)`` pairs whose loss gradients give the gradient
        statistics (Fisher, ``taylor``, ``sensitivity``, model-level criteria)."""

    def loss_floor(self) -> float:
        """A loss a working (not diverged) model stays below, e.g. the loss of a uniform
        prediction; the divergence rule uses ``max(uncompressed loss, loss_floor())``
        (default 0: the uncompressed model's loss alone)."""
        return 0.0

    def prepare(self, model: nn.Module, config: FineTuneConfig) -> None:
        """Called with the uncompressed model (base weights, no compression attached) before
        each candidate is compressed; cache what :meth:`fine_tune` needs from the teacher
        (default: nothing). The model is the same every call, so cache across calls."""
        return None

    @abstractmethod
    def fine_tune(
        self,
        model: nn.Module,
        *,
        config: FineTuneConfig,
        steps: int | None,
        reporter: Reporter | None,
        validate: Callable[[], float],
        after_step: Callable[[], None],
    ) -> FineTuneResult:
        """Fine-tune the compressed ``model`` in place (compression stays in force).

        Args:
            model: the compressed model (train mode is the task's business).
            config: the evaluator's fine-tuning settings.
            steps: overrides the step count of ``config`` (None = config; 0 = none).
            reporter: gets ``report(step, validate(), {...})`` at the task's reporting
                points; may raise ``optuna.TrialPruned``.
            validate: the quality metric on the validation split now.
            after_step: must be called after every optimizer step (re-applies pruning masks).

        Raises:
            FineTuneDiverged: a non-finite training loss.
        """

    @abstractmethod
    def measure(self, model: nn.Module, split: str) -> dict[str, float]:
        """``{quality: ..., "loss": ..., extras...}`` of ``model`` on ``split`` (``"val"`` or ``"test"``)."""

    def describe(self) -> str:
        """A short description for ``repr`` (default: the registered name)."""
        return self.name


#: Built-in tasks of optional modules, registered when first asked for.
LAZY_TASKS = {"policy": "compsearch.evaluators.policy_task"}
TASKS: Registry[type[Task]] = Registry("task", lazy=LAZY_TASKS)


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator registering a :class:`Task` subclass as ``name`` (twice raises)."""

    def add(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) expects a Task subclass, got {cls!r}")
        if cls.name != name or not cls.quality:
            raise ConfigError(f"task class {cls.__name__} must set name = {name!r} and quality = '<metric>'; "
                              f"got name={cls.name!r}, quality={cls.quality!r}")
        return TASKS.register(name, cls)

    return add


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name`` (``policy`` imports its module on first use; an
    unknown name raises listing the known ones)."""
    return TASKS.get(name)


def list_tasks() -> list[str]:
    """Registered task names (``policy`` without importing its module), sorted."""
    return TASKS.names()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is unknown; allowed: {list(SPLITS)} (train is never measured)")


@register_task("classification")
class ClassificationTask(Task):
    """Classification of labelled tensors: quality ``accuracy`` (top-1), loss cross-entropy.

    * example input: the first 2 train samples;
    * calibration: ``batches`` batches of ``batch_size`` samples of a seeded permutation of
      the train split (``torch.Generator().manual_seed(seed)``);
    * proxy inputs: the first ``n`` validation samples;
    * gradient batches: the first ``batches`` slices of ``batch_size`` of a seeded train
      permutation, loss ``CE(logits, y)``;
    * fine-tuning: :func:`~compsearch.evaluators.finetune.fine_tune` on the train split with
      ``(1 - d) * CE + d * T**2 * KL(teacher || student)``, the teacher logits of the train
      split cached once from the uncompressed model when ``distill = d > 0``;
    * ``measure``: ``accuracy`` = top-1 on the split, ``loss`` = mean cross-entropy;
    * ``loss_floor`` = ``ln(num_classes)``, the cross-entropy of a uniform prediction.

    Args:
        data: train/val/test splits.
        eval_batch_size: batch size of measuring and teacher forwards (memory only).
    """

    name = "classification"
    quality = "accuracy"

    def __init__(self, data: DataSplits, *, eval_batch_size: int = 1024) -> None:
        if not isinstance(data, DataSplits):
            raise TypeError(f"ClassificationTask(data=...) needs a DataSplits, got {type(data).__name__}")
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size={eval_batch_size!r} must be an integer >= 1")
        self.data = data
        self.eval_batch_size = eval_batch_size
        self._teacher: torch.Tensor | None = None

    def to(self, device: torch.device) -> ClassificationTask:
        d = self.data
        moved = {f"{k}_{s}": getattr(d, f"{k}_{s}").to(device) for s in ("train", "val", "test") for k in ("x", "y")}
        return ClassificationTask(DataSplits(**moved, num_classes=d.num_classes, name=d.name), eval_batch_size=self.eval_batch_size)

    def check_model(self, model: nn.Module) -> None:
        check_data_fits(model, self.data)

    def example_input(self) -> torch.Tensor:
        return self.data.x_train[:2]

    def _permutation(self, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(self.data.x_train.shape[0], generator=gen).to(self.data.x_train.device)

    def calibration_inputs(self, *, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        idx = self._permutation(seed)[: batches * batch_size]
        return [self.data.x_train[b] for b in idx.split(batch_size)]

    def proxy_inputs(self, n: int) -> torch.Tensor:
        return self.data.x_val[:n]

    def gradient_batches(self, *, batches: int, batch_size: int, seed: int) -> list[GradientBatch]:
        x, y = self.data.x_train, self.data.y_train
        return [GradientBatch(inputs=x[b], loss=_cross_entropy_to(y[b])) for b in self._permutation(seed).split(batch_size)[:batches]]

    def loss_floor(self) -> float:
        return math.log(self.data.num_classes)

    def prepare(self, model: nn.Module, config: FineTuneConfig) -> None:
        if config.distill > 0 and self._teacher is None:
            self._teacher = self._logits(model, self.data.x_train)

    def fine_tune(
        self,
        model: nn.Module,
        *,
        config: FineTuneConfig,
        steps: int | None,
        reporter: Reporter | None,
        validate: Callable[[], float],
        after_step: Callable[[], None],
    ) -> FineTuneResult:
        return fine_tune(
            model, x=self.data.x_train, y=self.data.y_train, config=config, steps=steps,
            teacher_logits=self._teacher if config.distill > 0 else None,
            reporter=reporter, validate=validate, after_step=after_step,
        )

    def measure(self, model: nn.Module, split: str) -> dict[str, float]:
        _check_split(split)
        x, y = self.data.split(split)
        logits = self._logits(model, x)
        return {"accuracy": float((logits.argmax(dim=1) == y).float().mean()), "loss": float(F.cross_entropy(logits, y))}

    def _logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return torch.cat([model(b) for b in x.split(self.eval_batch_size)])

    def describe(self) -> str:
        return f"classification of {self.data.name!r}"


def _cross_entropy_to(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    return loss


def as_task(task_or_data: Task | DataSplits, *, eval_batch_size: int = 1024) -> Task:
    """``task_or_data`` itself, or a :class:`DataSplits` wrapped in :class:`ClassificationTask`."""
    if isinstance(task_or_data, Task):
        return task_or_data
    if isinstance(task_or_data, DataSplits):
        return ClassificationTask(task_or_data, eval_batch_size=eval_batch_size)
    from compsearch.errors import DataError

    raise DataError(f"task_or_data must be a Task (registered: {list_tasks()}) or a DataSplits, got "
                    f"{type(task_or_data).__name__}; build data with load_dataset(...)")
