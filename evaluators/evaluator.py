"""The shared evaluator: turns a compression policy into accuracy and cost numbers.

One :class:`CompressionEvaluator` owns one working copy of the model and the data
(moved to its device once). Every call first restores the base weights and
buffers with ``copy_`` from a cached state, then attaches the candidate's
compression to the units:

* pruning masks (importance criterion from :mod:`compsearch.evaluators.masks`,
  computed on the base weights) zero the pruned weights in storage; they are
  re-applied after every optimizer step, so pruned weights stay exactly 0;
* weight and input fake quantization (:mod:`compsearch.evaluators.quant`) replace
  the unit's ``forward``; the weight is re-quantized in every forward, so the
  weights a forward uses always sit on the grid;
* input-activation ranges are calibrated on ``calib_batches`` train batches (eval
  mode), then frozen or tracked by EMA.

The compression stays attached after :meth:`CompressionEvaluator.evaluate`, so
``evaluator.model`` is the last evaluated (fine-tuned, compressed) candidate
until the next call; :meth:`CompressionEvaluator.effective_weights` shows the weights
its forward uses.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import ConfigError, ModelError, PolicyError, check_int_at_least
from compsearch.evaluators.checks import check_data_fits, resolve_device
from compsearch.evaluators.cost import CostModel
from compsearch.evaluators.finetune import fine_tune
from compsearch.evaluators.masks import GradientStats, compute_mask, get_criterion
from compsearch.evaluators.quant import ACT_RANGES, ActQuantizer, CompressedForward, WeightQuant
from compsearch.evaluators.types import DataSplits, EvalResult, FineTuneConfig, Reporter
from compsearch.spaces.policy import Policy, UnitPolicy
from compsearch.spaces.units import COMPRESSIBLE, Unit, discover_units

_PROXY_CACHE = 4096


@dataclass(frozen=True)
class EvaluatorConfig:
    """How the evaluator compresses, calibrates, fine-tunes and measures.

    Attributes:
        criterion: registered importance criterion (``l1``, ``l2``, ``taylor``, ``fisher``, ``nni-l1``, ``nni-l2``, ``nni-fpgm``).
        finetune: fine-tuning of every candidate.
        calib_batches: train batches that calibrate input-activation ranges.
        calib_batch_size: samples per calibration batch.
        act_range: ``"frozen"`` (calibrated range kept) or ``"ema"`` (EMA in training mode).
        ema_momentum: EMA momentum of ``act_range="ema"``.
        eval_batch_size: batch size of validation/test/proxy forwards (memory only).
        proxy_samples: first validation samples used by ``proxy``.
        sensitivity_batches: train mini-batches (of ``finetune.batch_size``) of the
            gradient statistics behind ``sensitivity``, ``taylor`` and ``fisher``.
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
    seed: int = 0

    def __post_init__(self) -> None:
        get_criterion(self.criterion)
        if not isinstance(self.finetune, FineTuneConfig):
            raise ConfigError(f"finetune={self.finetune!r} must be a FineTuneConfig")
        if self.act_range not in ACT_RANGES:
            raise ConfigError(f"act_range={self.act_range!r} is unknown; allowed: {list(ACT_RANGES)}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"ema_momentum={self.ema_momentum!r} must be in [0, 1)")
        check_int_at_least("EvaluatorConfig", self, dict.fromkeys(
            ("calib_batches", "calib_batch_size", "eval_batch_size", "proxy_samples", "sensitivity_batches"), 1))


def _fields(costs: Mapping[str, float]) -> dict[str, float]:
    """The cost metrics :class:`EvalResult` stores (``size_kb`` is ``size_bits / 8192``)."""
    return {k: costs[k] for k in ("size_bits", "compression_ratio", "bops", "sparsity")}


def _data_on(data: DataSplits, device: torch.device) -> DataSplits:
    moved = {f"{k}_{s}": getattr(data, f"{k}_{s}").to(device) for s in ("train", "val", "test") for k in ("x", "y")}
    return DataSplits(**moved, num_classes=data.num_classes, name=data.name)


class CompressionEvaluator:
    """Cost, proxy, sensitivity and full evaluation of compression policies on one model.

    Args:
        model: a trained classifier; copied once (the caller's model is not changed).
        data: train/val/test splits; ``num_classes`` must match the model's outputs.
        config: evaluator settings (default :class:`EvaluatorConfig`).
        finetune: overrides ``config.finetune``.
        criterion: overrides ``config.criterion``.
        units: the units to compress (default: :func:`discover_units` on two train samples).
        device: ``"auto"`` (cuda if available, else cpu), or a torch device.

    Raises:
        DataError: the data does not fit the model.
        ModelError: the model has no compressible layer, or ``units`` names a non-layer.
        UnknownNameError: unknown criterion.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        *,
        config: EvaluatorConfig | None = None,
        finetune: FineTuneConfig | None = None,
        criterion: str | None = None,
        units: Sequence[Unit] | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        cfg = config if config is not None else EvaluatorConfig()
        if finetune is not None:
            cfg = replace(cfg, finetune=finetune)
        if criterion is not None:
            cfg = replace(cfg, criterion=criterion)
        self.config = cfg
        self.device = resolve_device(device)
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = copy.deepcopy(model).to(self.device)
        check_data_fits(self.model, data)
        self.data = _data_on(data, self.device)
        found = units if units is not None else discover_units(self.model, self.data.x_train[:2])
        self.units: tuple[Unit, ...] = tuple(found)
        self._modules = {u.name: self._module(u.name) for u in self.units}
        self._weights = {name: cast(torch.Tensor, m.weight) for name, m in self._modules.items()}
        self._live = list(self.model.state_dict().values())
        self._base = [t.detach().clone() for t in self._live]
        total = sum(p.numel() for p in self.model.parameters())
        self._cost = CostModel(units=self.units, total_params=total)
        self._attached: list[CompressedForward] = []
        self._masked: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._channel_masks: dict[tuple[str, float], torch.Tensor | None] = {}
        self._grads: dict[str, GradientStats] | None = None
        self._teacher: torch.Tensor | None = None
        self._proxy_ref: torch.Tensor | None = None
        self._proxy_cache: OrderedDict[str, float] = OrderedDict()
        self._base_metrics: dict[bool, EvalResult] = {}

    def _module(self, name: str) -> nn.Module:
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"unit {name!r} is not a submodule of {type(self.model).__name__}") from None
        if not isinstance(module, COMPRESSIBLE):
            raise ModelError(f"unit {name!r} is a {type(module).__name__}; only Conv1d, Conv2d and Linear compress")
        return module

    # ------------------------------------------------------------------ public API
    def cost(self, policy: Policy | Mapping[str, UnitPolicy]) -> dict[str, float]:
        """Exact ``size_bits``, ``size_kb``, ``compression_ratio``, ``bops``, ``sparsity``.

        Definitions in :mod:`compsearch.evaluators.cost`; no torch work (microseconds).
        """
        return self._cost(self._policy(policy))

    def proxy(self, policy: Policy | Mapping[str, UnitPolicy]) -> float:
        """Logit MSE, ``mean((f_c(x) - f(x))**2)`` over the first ``proxy_samples`` validation
        samples and all classes, of the compressed model ``f_c`` (masks, quantization,
        calibrated activations; no fine-tuning) against the uncompressed ``f``. Cached per policy.
        """
        policy = self._policy(policy)
        if policy.key in self._proxy_cache:
            self._proxy_cache.move_to_end(policy.key)
            return self._proxy_cache[policy.key]
        reference = self._reference_logits()
        self._attach(policy)
        x = self.data.x_val[: self.config.proxy_samples]
        value = float(F.mse_loss(self._logits(x), reference))
        self._proxy_cache[policy.key] = value
        if len(self._proxy_cache) > _PROXY_CACHE:
            self._proxy_cache.popitem(last=False)
        return value

    def sensitivity(self) -> dict[str, float]:
        """Per-unit Fisher information: ``sum_i E_batches[g_i**2]`` over the unit's weights.

        ``g`` is the cross-entropy gradient of one train mini-batch (of
        ``finetune.batch_size``, ``sensitivity_batches`` batches, eval mode): the trace of
        the unit's diagonal empirical Fisher. Cached.
        """
        return {name: float(stats.sq_mean.sum()) for name, stats in self._gradient_stats().items()}

    def evaluate(
        self,
        policy: Policy | Mapping[str, UnitPolicy],
        *,
        steps: int | None = None,
        reporter: Reporter | None = None,
        test: bool = False,
    ) -> EvalResult:
        """Compress, fine-tune and measure one candidate.

        Args:
            policy: unit name -> UnitPolicy; a unit left out stays uncompressed.
            steps: fine-tuning steps (None = ``config.finetune``; 0 = none).
            reporter: receives intermediate validation accuracy (may raise ``optuna.TrialPruned``).
            test: also measure test accuracy (for final reporting only).

        ``reporter.final`` is not called here: the caller (the Optuna objective, a Ray
        Tune or NNI trial) reports the final metrics it assembles.

        Raises:
            PolicyError: the policy names a unit the model does not have.
            FineTuneDiverged: the fine-tuning loss became nan/inf.
        """
        start = time.perf_counter()
        policy = self._policy(policy)
        costs = self._cost(policy)
        ft_config = self.config.finetune
        teacher = self._teacher_logits() if ft_config.distill > 0 else None
        self._attach(policy)
        prepared = time.perf_counter()
        result = fine_tune(
            self.model,
            x=self.data.x_train,
            y=self.data.y_train,
            config=ft_config,
            steps=steps,
            teacher_logits=teacher,
            reporter=reporter,
            validate=lambda: self._measure("val")[0],
            after_step=self._apply_masks,
        )
        tuned = time.perf_counter()
        accuracy, loss = self._measure("val")
        test_accuracy = self._measure("test")[0] if test else None
        end = time.perf_counter()
        seconds = {"prepare": prepared - start, "finetune": tuned - prepared, "validate": end - tuned, "total": end - start}
        return EvalResult(
            accuracy=accuracy, loss=loss, test_accuracy=test_accuracy, steps=result.steps, seconds=seconds, **_fields(costs)
        )

    def base_metrics(self, *, test: bool = False) -> EvalResult:
        """Metrics of the uncompressed model without fine-tuning (cached)."""
        if test not in self._base_metrics:
            start = time.perf_counter()
            self._reset()
            accuracy, loss = self._measure("val")
            test_accuracy = self._measure("test")[0] if test else None
            seconds = {"validate": time.perf_counter() - start, "total": time.perf_counter() - start}
            self._base_metrics[test] = EvalResult(
                accuracy=accuracy, loss=loss, test_accuracy=test_accuracy, seconds=seconds, **_fields(self._cost(Policy()))
            )
        return self._base_metrics[test]

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """Weights the current forward uses per unit (after masks and quantization), detached."""
        with torch.no_grad():
            out = {name: w.detach().clone() for name, w in self._weights.items()}
            for fwd in self._attached:
                out[self._name_of(fwd.module)] = fwd.effective_weight().detach().clone()
        return out

    # ------------------------------------------------------------------ internals
    def _name_of(self, module: nn.Module) -> str:
        return next(n for n, m in self._modules.items() if m is module)

    def _policy(self, policy: Policy | Mapping[str, UnitPolicy]) -> Policy:
        if not isinstance(policy, Policy):
            if not isinstance(policy, Mapping):
                raise PolicyError(f"policy must be a Policy or a mapping unit -> UnitPolicy, got {type(policy).__name__}")
            policy = Policy(policy)
        return policy.validate_for(self._modules)

    def _reset(self) -> None:
        """Detach all compression and restore base weights and buffers in place."""
        for fwd in self._attached:
            fwd.remove()
        self._attached, self._masked = [], []
        with torch.no_grad():
            torch._foreach_copy_(self._live, self._base)
        for p in self.model.parameters():
            p.grad = None

    def _attach(self, policy: Policy) -> None:
        """Restore the base model, then attach masks and quantizers of ``policy`` and calibrate."""
        self._reset()
        act: list[ActQuantizer] = []
        for name, up in policy.items():
            if up.is_identity:
                continue
            module, weight = self._modules[name], self._weights[name]
            mask = self._mask(name, up)
            if mask is not None:
                with torch.no_grad():
                    weight.mul_(mask)
                rows = torch.nonzero(mask.flatten() == 0).flatten() if up.structure == "channel" else None
                self._masked.append((weight, mask, rows))
            wq = WeightQuant(up.w_bits, up.scheme, up.granularity == "channel") if up.quantized else None
            aq = ActQuantizer(bits=up.a_bits, mode=self.config.act_range, momentum=self.config.ema_momentum) if up.act_quantized else None
            if wq is None and aq is None:
                continue
            binary = wq is not None and wq.bits == 1 and wq.scheme == "symmetric"
            fwd = CompressedForward(module, weight_quant=wq, act_quant=aq, mask=mask if binary else None)
            self._attached.append(fwd.install())
            if aq is not None:
                act.append(aq)
        if act:
            self._calibrate(act)

    def _mask(self, name: str, up: UnitPolicy) -> torch.Tensor | None:
        if not up.pruned:
            return None
        criterion = get_criterion(self.config.criterion)
        if up.structure == "channel" and (name, up.keep) in self._channel_masks:
            return self._channel_masks[(name, up.keep)]
        grads = self._gradient_stats()[name] if criterion.needs_gradients else None
        weight = self._weights[name]
        mask = compute_mask(weight, keep=up.keep, structure=up.structure, criterion=criterion, grads=grads)
        if up.structure == "channel":
            self._channel_masks[(name, up.keep)] = mask
        return mask

    def _apply_masks(self) -> None:
        """Zero the pruned weights again (after an optimizer step); pruned rows by index."""
        if self._masked:
            with torch.no_grad():
                for weight, mask, rows in self._masked:
                    if rows is not None:
                        weight.index_fill_(0, rows, 0.0)
                    else:
                        weight.mul_(mask)

    def _calibrate(self, quantizers: list[ActQuantizer]) -> None:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        n = self.data.x_train.shape[0]
        idx = torch.randperm(n, generator=gen)[: cfg.calib_batches * cfg.calib_batch_size].to(self.device)
        self.model.eval()
        with torch.no_grad():
            for batch in idx.split(cfg.calib_batch_size):
                self.model(self.data.x_train[batch])
        for q in quantizers:
            q.freeze()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return torch.cat([self.model(b) for b in x.split(self.config.eval_batch_size)])

    def _measure(self, split: str) -> tuple[float, float]:
        """Top-1 accuracy and mean cross-entropy on ``split``."""
        x, y = self.data.split(split)
        logits = self._logits(x)
        return float((logits.argmax(dim=1) == y).float().mean()), float(F.cross_entropy(logits, y))

    def _reference_logits(self) -> torch.Tensor:
        if self._proxy_ref is None:
            self._reset()
            self._proxy_ref = self._logits(self.data.x_val[: self.config.proxy_samples])
        return self._proxy_ref

    def _teacher_logits(self) -> torch.Tensor:
        if self._teacher is None:
            self._reset()
            self._teacher = self._logits(self.data.x_train)
        return self._teacher

    def _gradient_stats(self) -> dict[str, GradientStats]:
        """``E[g]`` and ``E[g**2]`` per unit weight over ``sensitivity_batches`` train mini-batches (cached)."""
        if self._grads is None:
            self._grads = self._compute_gradient_stats()
        return self._grads

    def _compute_gradient_stats(self) -> dict[str, GradientStats]:
        cfg = self.config
        self._reset()
        self.model.eval()
        gen = torch.Generator().manual_seed(cfg.seed)
        n = self.data.x_train.shape[0]
        idx = torch.randperm(n, generator=gen).to(self.device).split(cfg.finetune.batch_size)[: cfg.sensitivity_batches]
        sums = {n: torch.zeros_like(w) for n, w in self._weights.items()}
        squares = {n: torch.zeros_like(w) for n, w in self._weights.items()}
        for batch in idx:
            self.model.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(self.data.x_train[batch]), self.data.y_train[batch]).backward()
            for name, weight in self._weights.items():
                g = weight.grad
                if g is not None:
                    sums[name] += g
                    squares[name] += g.square()
        self.model.zero_grad(set_to_none=True)
        k = len(idx)
        return {name: GradientStats(mean=sums[name] / k, sq_mean=squares[name] / k) for name in self._modules}

    def __repr__(self) -> str:
        return f"CompressionEvaluator({type(self.model).__name__}, {len(self.units)} units, data={self.data.name!r}, device={self.device})"

