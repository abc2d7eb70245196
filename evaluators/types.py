"""Plain data types shared by the evaluator, the strategies and the studies."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from compsearch.errors import ConfigError, check_int_at_least
from compsearch.evaluators.masks import get_criterion
from compsearch.evaluators.quant import ACT_RANGES

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
class EvaluatorConfig:
    """How the evaluator compresses, calibrates, fine-tunes and measures.

    Attributes:
        criterion: registered importance criterion (``l1``, ``l2``, ``taylor``, ``fisher``,
            ``nni-l1``, ``nni-l2``, ``nni-fpgm``, and model-level ones such as ``lrp``).
        finetune: fine-tuning of every candidate.
        calib_batches: task calibration batches that calibrate input-activation ranges.
        calib_batch_size: samples per calibration batch.
        act_range: ``"frozen"`` (calibrated range kept) or ``"ema"`` (EMA in training mode).
        ema_momentum: EMA momentum of ``act_range="ema"``.
        eval_batch_size: batch size of validation/test/proxy forwards (memory only).
        proxy_samples: proxy inputs used by ``proxy`` and ``reconstruction_error``.
        sensitivity_batches: task gradient batches (of ``finetune.batch_size``) behind
            ``sensitivity``, ``taylor``, ``fisher`` and ``unit_stats``.
        divergence_ratio: a fine-tuned candidate whose validation loss exceeds this multiple
            of ``max(uncompressed validation loss, task.loss_floor())`` fails as diverged
            (default 10: for classification the floor is ``ln(classes)``, the loss of a
            uniform guess, so only a model far worse than guessing fails); None = only
            non-finite losses fail.
        seed: seed of the calibration and gradient-statistics batches.
    """

    criterion: str = "l1"
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    calib_batches: int = 4
    calib_batch_size: int = 256
    act_range: str = "frozen"
    ema_momentum: float = 0.9
    eval_batch_size: int = 1024
    proxy_samples: int = 256
    sensitivity_batches: int = 8
    divergence_ratio: float | None = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        get_criterion(self.criterion)
        if not isinstance(self.finetune, FineTuneConfig):
            raise ConfigError(f"finetune={self.finetune!r} must be a FineTuneConfig")
        if self.act_range not in ACT_RANGES:
            raise ConfigError(f"act_range={self.act_range!r} is unknown; allowed: {list(ACT_RANGES)}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"ema_momentum={self.ema_momentum!r} must be in [0, 1)")
        ratio = self.divergence_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 1):
            raise ConfigError(f"divergence_ratio={ratio!r} must be a number > 1 (or None to check only non-finite losses)")
        check_int_at_least("EvaluatorConfig", self, dict.fromkeys(
            ("calib_batches", "calib_batch_size", "eval_batch_size", "proxy_samples", "sensitivity_batches"), 1))


@dataclass(frozen=True)
class DataSplits:
    """A classification dataset: tensors in memory, or datasets read a batch at a time
    (:meth:`from_datasets`: the inputs are then :class:`~compsearch.evaluators.streaming.DatasetInputs`,
    which index, slice and split like tensors).

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

    @classmethod
    def from_datasets(cls, train: Any, val: Any, test: Any, *, num_classes: int | None = None,
                      name: str = "datasets") -> DataSplits:
        """Splits over three map-style torch Datasets (or DataLoaders) of ``(input, label)``
        items, read a batch at a time: a dataset larger than memory works (see
        :mod:`compsearch.evaluators.streaming`; ``num_classes`` defaults to the train set's
        ``classes``, else 1 + the largest label)."""
        from compsearch.evaluators.streaming import splits_from_datasets

        return splits_from_datasets(cls, train, val, test, num_classes=num_classes, name=name)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GradientBatch:
    """One mini-batch of a task's loss, for gradient statistics.

    Attributes:
        inputs: ``b x ...`` model inputs.
        loss: maps the model's outputs for ``inputs`` to a scalar loss (e.g. the
            cross-entropy against the batch's labels).
    """

    inputs: torch.Tensor
    loss: Callable[[torch.Tensor], torch.Tensor]


_COSTS = ("size_bits", "compression_ratio", "bops", "sparsity")


@dataclass(frozen=True, init=False)
class EvalResult:
    """Everything one full evaluation measured.

    Attributes:
        values: the task's metrics on the validation split after fine-tuning: its quality
            metric (``accuracy`` for classification, ``return`` for a policy), ``loss``
            and any extras (e.g. ``return_se``).
        quality: the name of the task's quality metric (a key of ``values``).
        size_bits, compression_ratio, bops, sparsity: exact costs (see ``cost``).
        test_values: the task's metrics on the test split, only when asked for (final
            reporting), else None.
        steps: fine-tuning steps actually run.
        seconds: wall time per phase (``prepare``, ``finetune``, ``validate``, ``total``).

    ``EvalResult(accuracy=..., loss=..., size_bits=..., ...)`` (classification shorthand)
    is the same as ``EvalResult(values={"accuracy": ..., "loss": ...}, ...)``;
    ``test_accuracy=`` likewise fills ``test_values``.
    """

    values: Mapping[str, float]
    quality: str
    size_bits: float
    compression_ratio: float
    bops: float
    sparsity: float
    test_values: Mapping[str, float] | None = None
    steps: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def __init__(
        self,
        *,
        size_bits: float,
        compression_ratio: float,
        bops: float,
        sparsity: float,
        values: Mapping[str, float] | None = None,
        quality: str = "accuracy",
        test_values: Mapping[str, float] | None = None,
        steps: int = 0,
        seconds: Mapping[str, float] | None = None,
        accuracy: float | None = None,
        loss: float | None = None,
        test_accuracy: float | None = None,
    ) -> None:
        vals = dict(values or {})
        shorthand = {k: v for k, v in (("accuracy", accuracy), ("loss", loss)) if v is not None}
        clash = sorted(set(shorthand) & set(vals))
        if clash:
            raise TypeError(f"EvalResult got {clash} both as keyword and in values; give each once")
        vals.update(shorthand)
        if quality not in vals:
            raise ConfigError(f"EvalResult values {sorted(vals)} lack the quality metric {quality!r}")
        tests = None if test_values is None else dict(test_values)
        if test_accuracy is not None:
            tests = {**(tests or {}), "accuracy": test_accuracy}
        for name, value in (("values", vals), ("quality", quality), ("size_bits", size_bits),
                            ("compression_ratio", compression_ratio), ("bops", bops), ("sparsity", sparsity),
                            ("test_values", tests), ("steps", steps), ("seconds", dict(seconds or {}))):
            object.__setattr__(self, name, value)

    def __getitem__(self, name: str) -> float:
        """The task metric ``name`` on the validation split (e.g. ``result["return"]``)."""
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"{name!r} was not measured; this task measured {sorted(self.values)}") from None

    @property
    def score(self) -> float:
        """The value of the task's quality metric (``values[quality]``)."""
        return self.values[self.quality]

    @property
    def accuracy(self) -> float:
        """Validation top-1 accuracy (classification tasks)."""
        return self["accuracy"]

    @property
    def loss(self) -> float:
        """The task's loss on the validation split."""
        return self["loss"]

    @property
    def test_accuracy(self) -> float | None:
        """Test top-1 accuracy when the test split was measured, else None."""
        return None if self.test_values is None else self.test_values.get("accuracy")

    def metrics(self) -> dict[str, Any]:
        """Flat JSON-ready dict of every metric: the task's values (``accuracy``, ``loss``, ...),
        the costs, ``test_<name>`` of every test value (``test_<quality>: None`` when the test
        split was not measured), ``steps`` and timings as ``seconds_<phase>``."""
        out: dict[str, Any] = {k: float(v) for k, v in self.values.items()}
        out.update({k: getattr(self, k) for k in _COSTS})
        if self.test_values is None:
            out[f"test_{self.quality}"] = None
        else:
            out.update({f"test_{k}": float(v) for k, v in self.test_values.items()})
        out["steps"] = self.steps
        out.update({f"seconds_{k}": v for k, v in self.seconds.items()})
        return out


@dataclass(frozen=True)
class UnitStats:
    """Statistics of one unit of the uncompressed model (``evaluator.unit_stats()``).

    Attributes:
        weight_mean, weight_var: mean and population variance of the weight's elements.
        weight_entropy: normalised histogram entropy of the weights, ``H / ln(B)`` in [0, 1]:
            ``B = 64`` equal-width bins over ``[min w, max w]``, ``p_b`` = share of weights in
            bin ``b``, ``H = -sum_b p_b ln p_b`` (0 when all weights are equal).
        act_mean, act_var, act_zero_fraction: mean, population variance and share of exact
            zeros of the unit's input activation over all elements of the calibration
            batches; NaN when the unit's module forward never runs (weight used functionally).
        grad_mean: ``mean_i E_b[g_i]``, the mean over weights of the mean gradient of the
            task's loss over the gradient batches.
        grad_var: ``mean_i (E_b[g_i**2] - E_b[g_i]**2)``, the mean over weights of the
            gradient's variance across the gradient batches.
    """

    weight_mean: float
    weight_var: float
    weight_entropy: float
    act_mean: float
    act_var: float
    act_zero_fraction: float
    grad_mean: float
    grad_var: float


@dataclass(frozen=True)
class CompressedUnit:
    """One compressed unit as the forward uses it (``evaluator.compressed_units()``).

    The integer codes of the weight are ``q = round(weight / scale + zero_point)``, in
    ``[qmin, qmax]``, and ``(q - zero_point) * scale == weight`` exactly where the mask keeps
    the weight (:meth:`codes`, :meth:`dequantize`); for integral zero points this is
    ``round(weight / scale) + zero_point``. Pruned weights are 0 in ``weight``: on the integer
    grids 0 is a level (code ``zero_point``); on the binary grid (``w_bits=1``, codes {0, 1},
    levels ``-scale/2``, ``+scale/2``, ``zero_point = 0.5``) it is not, and
    ``weight = dequantize(codes) * mask``.

    Attributes:
        name: unit name.
        weight: the effective float weight the forward uses (``out x ...``), after masks
            and quantization (the module's own forward may transform it further, e.g.
            weight standardisation).
        mask: 0/1 pruning mask (``out x 1 x ... x 1`` for channels, else the weight's shape),
            or None.
        functional: the weight is read outside its module's forward.
        w_bits, scheme, per_channel: the weight grid, or None when the weight is float.
        scale, zero_point: ``out x 1 x ... x 1`` per channel or 0-d per tensor (None when float).
        qmin, qmax: integer code range (None when float).
        a_bits, act_scale, act_zero_point: the input grid (per tensor, asymmetric), or None
            when the input is float.
    """

    name: str
    weight: torch.Tensor
    mask: torch.Tensor | None
    functional: bool
    w_bits: int | None
    scheme: str | None
    per_channel: bool | None
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    qmin: int | None
    qmax: int | None
    a_bits: int | None
    act_scale: float | None
    act_zero_point: int | None

    def codes(self) -> torch.Tensor:
        """``round(weight / scale + zero_point)`` as int32 (``out x ...``), in ``[qmin, qmax]``."""
        if self.scale is None or self.zero_point is None:
            raise ConfigError(f"unit {self.name!r} has float weights (w_bits >= 16); there are no integer codes")
        return torch.round(self.weight / self.scale + self.zero_point).clamp_(self.qmin, self.qmax).to(torch.int32)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """``(codes - zero_point) * scale`` (times the mask on the binary grid)."""
        if self.scale is None or self.zero_point is None:
            raise ConfigError(f"unit {self.name!r} has float weights (w_bits >= 16); nothing to dequantize")
        w = (codes.to(self.scale.dtype) - self.zero_point) * self.scale
        return w * self.mask if self.mask is not None and self.w_bits == 1 else w


@runtime_checkable
class Reporter(Protocol):
    """Where intermediate and final values of an evaluation go.

    ``report`` may raise ``optuna.TrialPruned`` to stop a hopeless candidate.
    """

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None: ...

    def final(self, metrics: dict[str, Any]) -> None: ...
