"""The shared evaluator: turns a compression policy into quality and cost numbers, for any task.

One :class:`CompressionEvaluator` owns one working copy of the model and one
:class:`~compsearch.evaluators.tasks.Task` (moved to its device once). The task says what
fine-tuning minimises and what quality means; everything else here -- masks, fake
quantization, cost, proxy, sensitivity, the hooks below -- never knows which task it serves.

Every call first restores the base weights and buffers with ``copy_`` from a cached state,
then attaches the candidate's compression to the units:

* pruning masks (importance criterion from :mod:`compsearch.evaluators.masks`, computed on
  the base weights) zero the pruned weights in storage; they are re-applied after every
  optimizer step, so pruned weights stay exactly 0. Channel pruning also holds at 0 the
  pruned channels' own bias and the coupled per-channel parameters (BatchNorm scale and
  shift, PReLU, depthwise convs; :mod:`compsearch.evaluators.coupled`) where the channels
  could be removed physically, so a pruned channel outputs exactly 0 and export removes it;
  where they could not (a residual stream, a LayerNorm, ...), only the weight rows are zeroed;
* weight and input fake quantization (:mod:`compsearch.evaluators.quant`): the module's own
  forward runs with the effective weight substituted; the weight is re-quantized in every
  forward, so the weights a forward uses always sit on the grid;
* input-activation ranges are calibrated on the task's calibration batches (eval mode),
  then frozen or tracked by EMA;
* removed blocks (:attr:`~compsearch.spaces.Policy.removed`) are replaced by the identity or
  their shortcut (:mod:`compsearch.evaluators.removal`); the units of a removed block are
  not masked, quantized or fine-tuned (the forward never reaches them) and cost 0. Which
  blocks may be removed is checked once, on first use (:meth:`CompressionEvaluator.removable_blocks`).

The compression stays attached after :meth:`CompressionEvaluator.evaluate` (and
:meth:`~CompressionEvaluator.proxy`), so ``evaluator.model`` is the last evaluated
candidate until the next call; :meth:`~CompressionEvaluator.compressed_units` describes it.

Hooks for strategies and export (computed on demand, cached):

* ``unit_stats()`` -> ``{unit: UnitStats}``: weight, input-activation and gradient statistics
  of the uncompressed model (definitions in :class:`~compsearch.evaluators.types.UnitStats`).
* ``reconstruction_error(policy)`` -> ``{unit: float}``: relative MSE of each unit's output
  under the policy (no fine-tuning) against the uncompressed model on the proxy inputs.
* ``compressed_units()`` -> ``{unit: CompressedUnit}``: the effective weight, mask and
  quantization parameters of every unit the last candidate compresses (export reads this).
* model-level criteria (``register_criterion(name, model_level=True)``): scores computed once
  from the uncompressed model and the task's calibration inputs.

Divergence: ``evaluate`` raises :class:`~compsearch.errors.FineTuneDiverged` ("diverged", a
failed trial) on a non-finite training loss, a non-finite validation loss, or a final
validation loss above ``EvaluatorConfig.divergence_ratio x max(uncompressed validation loss,
task.loss_floor())``.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import (
    ConfigError,
    ModelError,
    PolicyError,
)
from compsearch.evaluators.checks import resolve_device
from compsearch.evaluators.compressed import (
    UnitCompression,
    WeightCache,
    check_input_quantizable,
    probe_weight_uses,
    resolve_weight,
)
from compsearch.evaluators.cost import CostModel
from compsearch.evaluators.coupled import CoupledChannels
from compsearch.evaluators.finetune import check_diverged, divergence_bound
from compsearch.evaluators.masks import (
    GradientStats,
    ModelContext,
    channel_mask,
    compute_mask,
    get_criterion,
)
from compsearch.evaluators.quant import ActQuantizer, WeightQuant
from compsearch.evaluators.removal import BlockRemoval, check_removed
from compsearch.evaluators.stats import (
    activation_stats,
    gradient_stats,
    gradient_unit_stats,
    relative_errors,
    weight_unit_stats,
)
from compsearch.evaluators.tasks import Task, as_task
from compsearch.evaluators.types import (
    CompressedUnit,
    DataSplits,
    EvalResult,
    EvaluatorConfig,
    FineTuneConfig,
    Reporter,
    UnitStats,
)
from compsearch.spaces.blocks import BlockOverride
from compsearch.spaces.depth import BlockCheck, RemovableBlock, check_blocks
from compsearch.spaces.policy import Policy, UnitPolicy
from compsearch.spaces.units import FUNCTIONAL, MODULE, Unit, coverage, discover_units

_CACHE = 4096


def _fields(costs: Mapping[str, float]) -> dict[str, float]:
    """The cost metrics :class:`EvalResult` stores (``size_kb`` is ``size_bits / 8192``)."""
    return {k: costs[k] for k in ("size_bits", "compression_ratio", "bops", "sparsity")}


def _remember(cache: OrderedDict[str, object], key: str, value: object) -> None:
    cache[key] = value
    if len(cache) > _CACHE:
        cache.popitem(last=False)


class CompressionEvaluator:
    """Cost, proxy, sensitivity, hooks and full evaluation of compression policies on one model.

    Args:
        model: the trained model; copied once (the caller's model is not changed). It maps
            one input tensor to one output tensor.
        task_or_data: a :class:`~compsearch.evaluators.tasks.Task`, or train/val/test
            :class:`DataSplits` (wrapped in ``ClassificationTask``).
        config: evaluator settings (default :class:`EvaluatorConfig`).
        finetune: overrides ``config.finetune``.
        criterion: overrides ``config.criterion``.
        units: the units to compress (default: :func:`discover_units` on the task's example input).
        blocks: block grouping override for the discovered units (regex -> block name, or a
            function of the unit name; see :func:`~compsearch.spaces.discover_units`); not with ``units``.
        device: ``"auto"`` (cuda if available, else cpu), or a torch device.

    Attributes:
        units: the units it compresses, in execution order.
        coverage: unit weight elements / all parameter elements of the model
            (:func:`~compsearch.spaces.coverage`); the rest stays uncompressed and counts at
            32 bits in ``size_bits``.
        model: the working copy (the last evaluated candidate attached, see the module docstring).
        task: the task (moved to ``device``).

    Raises:
        DataError: the data does not fit the model.
        ModelError: the model has no compressible layer, a unit cannot be compressed
            faithfully (the message says why and what to do).
        UnknownNameError: unknown criterion.
    """

    def __init__(
        self,
        model: nn.Module,
        task_or_data: Task | DataSplits,
        *,
        config: EvaluatorConfig | None = None,
        finetune: FineTuneConfig | None = None,
        criterion: str | None = None,
        units: Sequence[Unit] | None = None,
        blocks: BlockOverride | None = None,
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
        self.task = as_task(task_or_data, eval_batch_size=cfg.eval_batch_size).to(self.device)
        self.task.check_model(self.model)
        self._example = self.task.example_input()  # read once (a streamed dataset counts its reads)
        found = units if units is not None else discover_units(self.model, self._example, blocks=blocks)
        self.units: tuple[Unit, ...] = tuple(found)
        self.coverage = coverage(self.model, self.units)
        self._owners = {u.name: resolve_weight(self.model, u.name) for u in self.units}
        probe_weight_uses(self.model, self._owners, self._example)
        for u in self.units:  # discovery may know more (e.g. a fused kernel reading the weight directly)
            if getattr(u, "use", MODULE) == FUNCTIONAL:
                self._owners[u.name].use = FUNCTIONAL
        self._unit = {u.name: u for u in self.units}
        self._modules = {name: owner.module for name, owner in self._owners.items()}
        self._weights = {name: owner.weight for name, owner in self._owners.items()}
        self._live = list(self.model.state_dict().values())
        self._base = [t.detach().clone() for t in self._live]
        total = sum(p.numel() for p in self.model.parameters())
        self._cost = CostModel(units=self.units, total_params=total)
        self._attached: dict[str, UnitCompression] = {}
        self._removals: list[BlockRemoval] = []
        self._block_checks: dict[str, BlockCheck] | None = None
        self._policy: Policy | None = None
        self._masked: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._zeroed: list[tuple[torch.Tensor, torch.Tensor]] = []  # coupled entries held at 0: (parameter, rows)
        self._coupled: CoupledChannels | None = None
        self._channel_masks: dict[tuple[str, float], torch.Tensor | None] = {}
        self._grads: dict[str, GradientStats] | None = None
        self._model_scores: dict[str, torch.Tensor] | None = None
        self._unit_stats: dict[str, UnitStats] | None = None
        self._proxy_ref: torch.Tensor | None = None
        self._reference: nn.Module | None = None
        self._proxy_cache: OrderedDict[str, object] = OrderedDict()
        self._recon_cache: OrderedDict[str, object] = OrderedDict()
        self._base_metrics: dict[bool, EvalResult] = {}

    # ------------------------------------------------------------------ public API
    def cost(self, policy: Policy | Mapping[str, UnitPolicy]) -> dict[str, float]:
        """Exact ``size_bits``, ``size_kb``, ``compression_ratio``, ``bops``, ``sparsity``.

        Definitions in :mod:`compsearch.evaluators.cost`; no torch work (microseconds).
        """
        policy = self._check(policy)  # first: it may give the cost model the removable blocks
        return self._cost(policy)

    def proxy(self, policy: Policy | Mapping[str, UnitPolicy]) -> float:
        """Output MSE, ``mean((f_c(x) - f(x))**2)`` over the task's first ``proxy_samples``
        proxy inputs and all outputs (logits for a classifier), of the compressed model
        ``f_c`` (masks, quantization, calibrated activations; no fine-tuning) against the
        uncompressed ``f``. Cached per policy; leaves the candidate attached."""
        policy = self._check(policy)
        if policy.key in self._proxy_cache:
            self._proxy_cache.move_to_end(policy.key)
            return float(self._proxy_cache[policy.key])  # type: ignore[arg-type]
        reference = self._reference_outputs()
        self._attach(policy)
        value = float(F.mse_loss(self._outputs(self._proxy_inputs()), reference))
        _remember(self._proxy_cache, policy.key, value)
        return value

    def sensitivity(self) -> dict[str, float]:
        """Per-unit Fisher information: ``sum_i E_batches[g_i**2]`` over the unit's weights.

        ``g`` is the gradient of the task's loss on one of its gradient batches (of
        ``finetune.batch_size``, ``sensitivity_batches`` batches, eval mode): the trace of
        the unit's diagonal empirical Fisher. Cached.
        """
        return {name: float(stats.sq_mean.sum()) for name, stats in self._gradient_stats().items()}

    def unit_stats(self) -> dict[str, UnitStats]:
        """Statistics of every unit of the uncompressed model (definitions in
        :class:`~compsearch.evaluators.types.UnitStats`): weights, input activations over
        the calibration batches (NaN where the unit's module forward never runs, i.e. its
        weight is used functionally), gradients from the gradient statistics. Cached."""
        if self._unit_stats is None:
            grads = self._gradient_stats()
            self._reset()
            acts = activation_stats(self.model, self._modules, self._calibration_inputs())
            self._unit_stats = {
                name: UnitStats(**weight_unit_stats(self._weights[name]), **acts[name], **gradient_unit_stats(grads[name]))
                for name in self._modules
            }
        return self._unit_stats

    def reconstruction_error(self, policy: Policy | Mapping[str, UnitPolicy]) -> dict[str, float]:
        """Per unit, ``sum((y_c - y)**2) / sum(y**2)`` of the unit's output ``y_c`` in the
        compressed model (masks + quantization, calibrated, no fine-tuning; errors of earlier
        units included) against ``y`` in the uncompressed model, over the proxy inputs (one
        forward each, through forward hooks). NaN for a unit whose module forward never
        runs (weight used functionally). Cached per policy; leaves the candidate attached."""
        policy = self._check(policy)
        if policy.key in self._recon_cache:
            self._recon_cache.move_to_end(policy.key)
            return dict(self._recon_cache[policy.key])  # type: ignore[call-overload]
        reference = self._reference_model()
        self._attach(policy)
        errors = relative_errors(self.model, reference, list(self._modules), self._proxy_inputs(), self.config.eval_batch_size)
        _remember(self._recon_cache, policy.key, errors)
        return dict(errors)

    def compressed_units(self) -> dict[str, CompressedUnit]:
        """What the forward of the last evaluated / proxied candidate uses, per unit it
        compresses (see :class:`~compsearch.evaluators.types.CompressedUnit`); empty before
        any ``evaluate``/``proxy``/``reconstruction_error``."""
        with torch.no_grad():
            return {name: c.describe() for name, c in self._attached.items()}

    def removable_blocks(self) -> dict[str, RemovableBlock]:
        """The blocks a policy may remove (:func:`~compsearch.spaces.depth.check_blocks` on the
        uncompressed model and the task's example input), by name, in execution order. Cached."""
        return {n: c.block for n, c in self._checks().items() if c.block is not None}

    def removed_blocks(self) -> dict[str, str | None]:
        """The blocks removed in the last evaluated / proxied candidate: block -> shortcut path
        (None = identity); export replaces them (:func:`~compsearch.evaluators.removal.remove_blocks`)."""
        return {r.name: r.shortcut_path for r in self._removals}

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
            reporter: receives the intermediate quality metric (may raise ``optuna.TrialPruned``).
            test: also measure the test split (for final reporting only).

        ``reporter.final`` is not called here: the caller (the Optuna objective, a Ray
        Tune or NNI trial) reports the final metrics it assembles.

        Raises:
            PolicyError: the policy names a unit the model does not have.
            FineTuneDiverged: a non-finite loss, or a final validation loss above the
                divergence bound (see :class:`EvaluatorConfig`).
        """
        start = time.perf_counter()
        policy = self._check(policy)
        costs = self._cost(policy)
        ft_config = self.config.finetune
        bound = self._divergence_bound()
        self._prepare_criteria(policy)
        self._reset()
        self.task.prepare(self.model, ft_config)
        self._attach(policy, reset=False)
        prepared = time.perf_counter()
        quality = self.task.quality
        result = self.task.fine_tune(
            self.model, config=ft_config, steps=steps, reporter=reporter,
            validate=lambda: self.task.measure(self.model, "val")[quality], after_step=self._apply_masks,
        )
        tuned = time.perf_counter()
        values = self.task.measure(self.model, "val")
        if result.steps > 0:
            check_diverged(values["loss"], bound, steps=result.steps, ratio=self.config.divergence_ratio, lr=ft_config.lr)
        tests = self.task.measure(self.model, "test") if test else None
        end = time.perf_counter()
        seconds = {"prepare": prepared - start, "finetune": tuned - prepared, "validate": end - tuned, "total": end - start}
        return EvalResult(values=values, quality=quality, test_values=tests, steps=result.steps, seconds=seconds, **_fields(costs))

    def base_metrics(self, *, test: bool = False) -> EvalResult:
        """Metrics of the uncompressed model without fine-tuning (cached)."""
        if test not in self._base_metrics:
            start = time.perf_counter()
            self._reset()
            values = self.task.measure(self.model, "val")
            tests = self.task.measure(self.model, "test") if test else None
            seconds = {"validate": time.perf_counter() - start, "total": time.perf_counter() - start}
            self._base_metrics[test] = EvalResult(
                values=values, quality=self.task.quality, test_values=tests, seconds=seconds, **_fields(self._cost(Policy()))
            )
        return self._base_metrics[test]

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """Weights the current forward uses per unit (after masks and quantization), detached."""
        with torch.no_grad():
            out = {name: w.detach().clone() for name, w in self._weights.items()}
            for name, c in self._attached.items():
                out[name] = c.effective_weight().detach().clone()
        return out

    # ------------------------------------------------------------------ internals
    def _check(self, policy: Policy | Mapping[str, UnitPolicy]) -> Policy:
        if not isinstance(policy, Policy):
            if not isinstance(policy, Mapping):
                raise PolicyError(f"policy must be a Policy or a mapping unit -> UnitPolicy, got {type(policy).__name__}")
            policy = Policy(policy)
        policy = policy.validate_for(self._modules)
        if policy.removed:
            check_removed(policy, self._checks())
        return policy

    def _checks(self) -> dict[str, BlockCheck]:
        """Removability of every block (cached; the cost model learns the removable ones)."""
        if self._block_checks is None:
            self._reset()
            self._block_checks = check_blocks(self.model, self.task.example_input(), self.units)
            blocks = [c.block for c in self._block_checks.values() if c.block is not None]
            self._cost = CostModel(units=self.units, total_params=self._cost.total_params, blocks=blocks)
        return self._block_checks

    def _reset(self) -> None:
        """Detach all compression and restore base weights and buffers in place."""
        for c in self._attached.values():
            c.remove()
        for r in self._removals:
            r.remove()
        self._attached, self._masked, self._zeroed, self._policy, self._removals = {}, [], [], None, []
        with torch.no_grad():
            torch._foreach_copy_(self._live, self._base)
        for p in self.model.parameters():
            p.grad = None

    def _attach(self, policy: Policy, *, reset: bool = True) -> None:
        """Restore the base model (unless ``reset=False``: already restored), then attach
        masks and quantizers of ``policy``, replace its removed blocks, and calibrate (a policy it
        cannot apply raises first). Units of removed blocks are left untouched."""
        for name, up in policy.items():
            if up.act_quantized and not policy.removes(name):
                check_input_quantizable(self._owners[name], name)
        self._prepare_criteria(policy)
        if reset:
            self._reset()
        act: list[ActQuantizer] = []
        cache = WeightCache()
        active = {name: up for name, up in policy.items() if not up.is_identity and not policy.removes(name)}
        masks = {name: self._mask(name, up) for name, up in active.items()}  # all on the base weights
        self._zero_coupled(policy, masks)
        for name, up in active.items():
            weight = self._weights[name]
            mask = masks[name]
            if mask is not None:
                with torch.no_grad():
                    weight.mul_(mask)
                rows = torch.nonzero(mask.flatten() == 0).flatten() if up.structure == "channel" else None
                self._masked.append((weight, mask, rows))
            wq = WeightQuant(up.w_bits, up.scheme, up.granularity == "channel") if up.quantized else None
            aq = ActQuantizer(bits=up.a_bits, mode=self.config.act_range, momentum=self.config.ema_momentum) if up.act_quantized else None
            compression = UnitCompression(self._owners[name], name=name, weight_quant=wq, act_quant=aq, mask=mask, cache=cache)
            self._attached[name] = compression.install()
            if aq is not None:
                act.append(aq)
        modules = dict(self.model.named_modules())
        self._removals = [BlockRemoval(modules[b], name=b, shortcut=s).install() for b, s in policy.outer_removed().items()]
        self._policy = policy
        if act:
            self._calibrate(act)

    def _zero_coupled(self, policy: Policy, masks: Mapping[str, torch.Tensor | None]) -> None:
        """Zero, and remember for :meth:`_apply_masks`, the coupled entries of every channel-pruned
        unit whose channels could be removed (see :mod:`compsearch.evaluators.coupled`)."""
        removed = tuple(policy.removed)
        for name, mask in masks.items():
            if mask is None or policy[name].structure != "channel" or self._unit[name].is_head:
                continue  # the head's channels are the outputs: never removed
            pruned = torch.nonzero(mask.flatten() == 0).flatten().tolist()
            if not pruned:
                continue
            if self._coupled is None:
                self._coupled = CoupledChannels(self.model, self._example)
            self._zeroed += self._coupled.rows(name, pruned, removed=removed)
        if self._zeroed:
            with torch.no_grad():
                for param, rows in self._zeroed:
                    param.index_fill_(0, rows, 0.0)

    def _prepare_criteria(self, policy: Policy) -> None:
        """Compute what the criterion needs (gradient statistics, model-level scores) before
        any compression is attached."""
        if not any(up.pruned and not policy.removes(n) for n, up in policy.items()):
            return
        criterion = get_criterion(self.config.criterion)
        if criterion.needs_gradients:
            self._gradient_stats()
        if criterion.model_level:
            self._channel_scores()

    def _mask(self, name: str, up: UnitPolicy) -> torch.Tensor | None:
        if not up.pruned:
            return None
        criterion = get_criterion(self.config.criterion)
        if up.structure == "channel" and (name, up.keep) in self._channel_masks:
            return self._channel_masks[(name, up.keep)]
        weight = self._weights[name]
        if criterion.model_level:
            if up.structure != "channel":
                raise ConfigError(f"criterion {criterion.name!r} scores whole channels only, but unit {name!r} has "
                                  f"structure={up.structure!r}; use structure 'channel' or a criterion such as 'l1'")
            mask = channel_mask(self._channel_scores()[name], keep=up.keep, weight=weight)
        else:
            grads = self._gradient_stats()[name] if criterion.needs_gradients else None
            mask = compute_mask(weight, keep=up.keep, structure=up.structure, criterion=criterion, grads=grads)
        if up.structure == "channel":
            self._channel_masks[(name, up.keep)] = mask
        return mask

    def _apply_masks(self) -> None:
        """Zero the pruned weights and the coupled entries again (after an optimizer step); rows by index."""
        if self._masked or self._zeroed:
            with torch.no_grad():
                for weight, mask, rows in self._masked:
                    if rows is not None:
                        weight.index_fill_(0, rows, 0.0)
                    else:
                        weight.mul_(mask)
                for param, rows in self._zeroed:
                    param.index_fill_(0, rows, 0.0)

    def _calibration_inputs(self) -> list[torch.Tensor]:
        cfg = self.config
        return self.task.calibration_inputs(batches=cfg.calib_batches, batch_size=cfg.calib_batch_size, seed=cfg.seed)

    def _calibrate(self, quantizers: list[ActQuantizer]) -> None:
        self.model.eval()
        with torch.no_grad():
            for x in self._calibration_inputs():
                self.model(x)
        for c in self._attached.values():
            c.check_calibrated()
        for q in quantizers:
            q.freeze()

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return torch.cat([self.model(b) for b in x.split(self.config.eval_batch_size)])

    def _proxy_inputs(self) -> torch.Tensor:
        return self.task.proxy_inputs(self.config.proxy_samples)

    def _reference_outputs(self) -> torch.Tensor:
        if self._proxy_ref is None:
            self._reset()
            self._proxy_ref = self._outputs(self._proxy_inputs())
        return self._proxy_ref

    def _reference_model(self) -> nn.Module:
        """A frozen copy of the uncompressed model (for per-unit reference outputs)."""
        if self._reference is None:
            self._reset()
            self._reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        return self._reference

    def _divergence_bound(self) -> float | None:
        ratio = self.config.divergence_ratio
        return None if ratio is None else divergence_bound(ratio, self.base_metrics().loss, self.task.loss_floor())

    def _gradient_stats(self) -> dict[str, GradientStats]:
        """``E[g]`` and ``E[g**2]`` per unit weight over ``sensitivity_batches`` task gradient batches (cached)."""
        if self._grads is None:
            self._grads = self._compute_gradient_stats()
        return self._grads

    def _compute_gradient_stats(self) -> dict[str, GradientStats]:
        cfg = self.config
        self._reset()
        batches = self.task.gradient_batches(batches=cfg.sensitivity_batches, batch_size=cfg.finetune.batch_size, seed=cfg.seed)
        return gradient_stats(self.model, self._weights, batches)

    def _channel_scores(self) -> dict[str, torch.Tensor]:
        """Scores of the model-level criterion, once per evaluator (base model, calibration inputs)."""
        if self._model_scores is None:
            criterion = get_criterion(self.config.criterion)
            cfg = self.config
            self._reset()
            self.model.eval()
            context = ModelContext(
                model=self.model, modules=dict(self._modules), weights=dict(self._weights),
                inputs=self._calibration_inputs(),
                loss_batches=self.task.gradient_batches(batches=cfg.sensitivity_batches, batch_size=cfg.finetune.batch_size, seed=cfg.seed),
                seed=cfg.seed,
            )
            scores = criterion.score(context)
            self._reset()
            missing = sorted(set(self._modules) - set(scores))
            if missing:
                raise ConfigError(f"model-level criterion {criterion.name!r} gave no scores for unit(s) {missing}; "
                                  f"it must score every unit of context.modules")
            self._model_scores = {n: scores[n].detach().float().to(self.device) for n in self._modules}
        return self._model_scores

    def __repr__(self) -> str:
        return (f"CompressionEvaluator({type(self.model).__name__}, {len(self.units)} units covering "
                f"{self.coverage:.1%} of the parameters, task={self.task.describe()!r}, device={self.device})")
