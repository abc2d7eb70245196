"""Physically remove pruned output channels (built on Torch-Pruning), keeping the masked model's outputs.

**What is removed.** A unit with channel-structured pruning (``structure="channel"``,
``keep < 1``; the classifier output layer excluded) drops the output channels its
importance criterion ranks lowest (the evaluator's masks,
:func:`~compsearch.evaluators.masks.compute_mask`, or ``channels=`` given explicitly).
Its *group* is everything coupled to those channels (found on Torch-Pruning's traced
graph by :func:`~compsearch.evaluators.channel_groups.channel_group`): its weight rows
and bias, the BatchNorm channels after it, depthwise convs and squeeze-excite gates the
channels pass through, the input columns of its consumers. A unit whose group cannot be
removed exactly (a residual stream, a LayerNorm, a grouped conv, attention heads, a
split, ...) stays **masked**: its pruned weight rows are zeroed in place and
:attr:`PrunePlan.masked` says why (a :class:`~compsearch.errors.ModelError` message
naming the unit and the coupling; ``strict=True`` raises it).

**The masked model it equals** (:func:`masked_reference`, :func:`zero_pruned`): the model
with, for every removed unit, every output-channel parameter of its group zeroed at the
pruned channels (weight rows, biases, BatchNorm scale and shift, gate rows; so those
channels are exactly 0 wherever the group reaches), and for every masked unit its pruned
weight rows zeroed. The pruned model's outputs are checked against it on the example
input and a second random batch (``max |f_pruned - f_masked| <= atol * max(1, max
|f_masked|)``); a removal that breaks this (an op Torch-Pruning's graph does not model)
is found by bisection and that unit is masked instead, so the result is always exact.

**Removed blocks.** A policy's removed blocks (:attr:`~compsearch.spaces.Policy.removed`)
are replaced first (:func:`~compsearch.evaluators.removal.remove_blocks`: the identity or the
block's shortcut); the reference is then the model with those blocks replaced.

**Side-effect free.** The caller's model is never modified: every step works on
:func:`clone_model` copies, which also deep-copy models that cache non-leaf tensors
(LeViT's attention-bias cache after a forward with gradients).

Why Torch-Pruning and not NNI's ``ModelSpeedup``: see ``benchmarks/speedup.py``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError, ModelError
from compsearch.evaluators.channel_groups import (
    PLAN_VERSION,
    ChannelGroup,
    Graph,
    PrunePlan,
    build_graph,
    channel_group,
    torch_pruning,
    true_depthwise,
)
from compsearch.evaluators.masks import compute_mask
from compsearch.spaces.policy import Policy
from compsearch.spaces.units import Unit


@dataclass(frozen=True)
class PruneResult:
    """A physically pruned copy of a model.

    Attributes:
        model: the pruned model (eval mode); the caller's model is untouched.
        plan: what was removed and what stays masked.
        max_error: ``max |f_pruned(x) - f_masked(x)| / max(1, max |f_masked(x)|)`` over the check inputs.
        params_before, params_after: parameter counts.
        seconds: wall time of planning, pruning and checking.
    """

    model: nn.Module
    plan: PrunePlan
    max_error: float
    params_before: int
    params_after: int
    seconds: float


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)


def clone_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` that also works when a module caches a non-leaf tensor.

    ``deepcopy`` refuses tensors that carry an autograd history (e.g. timm LeViT's
    ``attention_bias_cache`` filled by a forward with gradients); those are copied as
    detached clones (same values). Parameters and buffers are copied as usual.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for key, value in vars(module).items():
            if key in ("_parameters", "_buffers", "_modules"):
                continue
            for t in _tensors(value):
                if t.grad_fn is not None:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def unit_weight(model: nn.Module, unit: str) -> torch.Tensor:
    """The unit's weight: ``<unit>.weight`` of a layer, or the parameter named ``unit`` (a functional weight)."""
    try:
        weight = getattr(model.get_submodule(unit), "weight", None)
    except AttributeError:
        weight = None
    if weight is None:
        try:
            weight = model.get_parameter(unit)
        except AttributeError:
            raise ModelError(f"unit {unit!r} is neither a layer with a weight nor a parameter of {type(model).__name__}") from None
    return weight


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pruned_channels(model: nn.Module, policy: Policy, units: Sequence[Unit], *, criterion: str = "l1") -> dict[str, list[int]]:
    """Pruned output channels of every channel-pruned unit (head excluded), from the model's weights.

    Criteria needing gradients (``taylor``, ``fisher``) are not supported here: pass the
    evaluator's masks as ``channels=`` to :func:`plan_pruning` instead.
    """
    out: dict[str, list[int]] = {}
    for unit in units:
        up = policy.get_or_identity(unit.name)
        if unit.is_head or not up.pruned or up.structure != "channel":
            continue
        mask = compute_mask(unit_weight(model, unit.name), keep=up.keep, structure="channel", criterion=criterion)
        if mask is not None:
            out[unit.name] = torch.nonzero(mask.flatten() == 0).flatten().tolist()
    return out


class PruneAnalyzer:
    """Traces a copy of ``model`` once and plans any number of channel sets on it.

    Groups are cached per ``(unit, channels)``, so an evaluator can ask for the plan of
    every candidate cheaply (the walk of one unit takes milliseconds).

    Args:
        model: the plain model (no compression forwards attached); not changed.
        example_input: a batch, ``n x ...``.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        torch_pruning()
        self._graph: Graph = build_graph(clone_model(model), example_input)
        self._cache: dict[tuple[str, tuple[int, ...]], ChannelGroup | str] = {}

    def group(self, unit: str, channels: Sequence[int]) -> ChannelGroup | str:
        """The unit's group, or the sentence completing "its channels ..." saying why it cannot go."""
        key = (unit, tuple(sorted(channels)))
        if key not in self._cache:
            self._cache[key] = channel_group(self._graph, unit, key[1])
        return self._cache[key]

    def plan(self, channels: Mapping[str, Sequence[int]]) -> PrunePlan:
        """The :class:`PrunePlan` for unit -> pruned output channels (empty lists are ignored)."""
        chans = {u: tuple(sorted(c)) for u, c in channels.items() if len(c)}
        groups, masked = {}, {}
        for unit, idxs in chans.items():
            found = self.group(unit, idxs)
            if isinstance(found, ChannelGroup):
                groups[unit] = found
            else:
                masked[unit] = f"unit {unit!r} stays masked: its channels {found}"
        return PrunePlan(channels=chans, groups=groups, masked=masked)


REFERENCES = ("masked", "model")


def _live_channels(model: nn.Module, unit: str, group: ChannelGroup) -> str | None:
    """Where ``group``'s channels are not already 0 in ``model`` (None: removing them changes nothing)."""
    for name, idxs in group.out.items():
        module = model.get_submodule(name)
        if name != unit and isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear) and not true_depthwise(module):
            continue  # a gate: it only multiplies channels that are 0
        for attr in ("weight", "bias"):
            p = getattr(module, attr, None)
            if isinstance(p, torch.Tensor) and p.dim() >= 1 and bool(p.detach()[list(idxs)].ne(0).any()):
                return f"{name}.{attr}"
    return None


def plan_pruning(model: nn.Module, policy: Policy | None, units: Sequence[Unit] | None, example_input: torch.Tensor,
                 *, criterion: str = "l1", channels: Mapping[str, Sequence[int]] | None = None,
                 reference: str = "masked") -> PrunePlan:
    """Decide which pruned units can lose their channels physically (see the module docstring).

    Args:
        channels: unit -> pruned output channels (e.g. the evaluator's masks); replaces the
            channels computed from ``policy`` with ``criterion``.
        reference: ``"masked"`` (the pruned model equals :func:`masked_reference`) or
            ``"model"`` (it equals ``model`` itself: a unit is removed only where its group's
            channels are already 0 in ``model`` -- weight rows, bias, BatchNorm scale and
            shift; otherwise it stays masked, and the reason names the live parameter).
    """
    if reference not in REFERENCES:
        raise ConfigError(f"reference={reference!r}; allowed: {list(REFERENCES)}")
    if channels is None and (policy is None or units is None):
        raise ConfigError("plan_pruning needs channels= (unit -> pruned output channels) or a policy and the units")
    chans = channels if channels is not None else pruned_channels(model, policy, units, criterion=criterion)  # type: ignore[arg-type]
    if not any(len(c) for c in chans.values()):
        return PrunePlan(channels={})
    plan = PruneAnalyzer(model, example_input).plan(chans)
    if reference == "model":
        live = {u: _live_channels(model, u, g) for u, g in plan.groups.items()}
        plan = plan.mask({u: f"unit {u!r} stays masked: its pruned channels are not 0 in this model ({where} is "
                             f"nonzero there), so removing them would change its outputs; zero them while fine-tuning "
                             f"(speedup.zero_pruned) to remove them" for u, where in live.items() if where is not None})
    return plan


def zero_pruned(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Zero, in place, what the plan prunes: group output channels of removed units, weight rows of masked ones.

    This is the masked model the pruned one equals; an evaluator that applies it after
    every optimizer step trains exactly the model that export removes.
    """
    outs, _ = plan.merged()
    with torch.no_grad():
        for unit in plan.masked:
            if unit in plan.channels:
                unit_weight(model, unit)[list(plan.channels[unit])] = 0
        for name, idxs in outs.items():
            module = model.get_submodule(name)
            for attr in ("weight", "bias"):
                p = getattr(module, attr, None)
                if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] > max(idxs):
                    p[sorted(idxs)] = 0
    return model


def masked_reference(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """A copy of ``model`` (eval mode) with the plan's channels zeroed (:func:`zero_pruned`)."""
    return zero_pruned(clone_model(model).eval(), plan)


def _out_fn(tp: Any, m: nn.Module) -> Any:
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        return tp.prune_depthwise_conv_out_channels if true_depthwise(m) else tp.prune_conv_out_channels
    if isinstance(m, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return tp.prune_batchnorm_out_channels
    if isinstance(m, nn.PReLU):
        return tp.prune_prelu_out_channels
    raise ModelError(f"cannot remove output channels of a {type(m).__name__}")


def _in_fn(tp: Any, m: nn.Module) -> Any:
    if isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups == 1:
        return tp.prune_conv_in_channels
    if isinstance(m, nn.Linear):
        return tp.prune_linear_in_channels
    raise ModelError(f"cannot remove input channels of a {type(m).__name__} (groups={getattr(m, 'groups', 1)})")


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """A copy of ``model`` (eval mode) with the plan applied: zeroed (:func:`zero_pruned`), then the groups removed.

    Needs no tracing, so it also rebuilds the pruned architecture of a saved plan on a
    freshly built model before its weights are loaded. Indices are the original ones:
    every module is pruned once with the union of its groups' channels.
    """
    tp = torch_pruning()
    pruned = zero_pruned(clone_model(model).eval(), plan)
    outs, ins = plan.merged()
    for name, idxs in outs.items():
        module = pruned.get_submodule(name)
        _out_fn(tp, module)(module, sorted(idxs))
    for name, idxs in ins.items():
        module = pruned.get_submodule(name)
        _in_fn(tp, module)(module, sorted(idxs))
    return pruned


def _flat(out: Any) -> list[torch.Tensor]:
    return [t for t in _tensors(out if not isinstance(out, dict) else list(out.values()))]


def check_inputs(example_input: torch.Tensor) -> list[torch.Tensor]:
    """The example input and, for float inputs, a second batch drawn from ``N(mean, std)`` of it (seed 0)."""
    inputs = [example_input]
    if example_input.is_floating_point():
        gen = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(example_input.shape, generator=gen).to(example_input)
        inputs.append(noise * example_input.std().clamp_min(1e-3) + example_input.mean())
    return inputs


def output_error(model: nn.Module, reference: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """``max |f(x) - f_ref(x)| / max(1, max |f_ref(x)|)`` over the inputs and every output tensor."""
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            for got, want in zip(_flat(model(x)), _flat(reference(x)), strict=True):
                if got.shape != want.shape:
                    return float("inf")
                scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
                worst = max(worst, float((got - want).abs().max()) / scale if got.numel() else 0.0)
    return worst


def _attempt(model: nn.Module, plan: PrunePlan, inputs: Sequence[torch.Tensor],
             fixed: nn.Module | None = None) -> tuple[float, nn.Module | None, str]:
    """Prune, and compare with the masked reference (or with ``fixed``)."""
    try:
        pruned = apply_plan(model, plan)
        err = output_error(pruned, masked_reference(model, plan) if fixed is None else fixed, inputs)
    except Exception as e:  # noqa: BLE001 - a removal that breaks the forward is masked, not raised
        return float("inf"), None, f"{type(e).__name__}: {str(e)[:160]}"
    return err, pruned, f"the outputs differ from the masked model by {err:.3g}"


def _culprits(model: nn.Module, plan: PrunePlan, units: Sequence[str], inputs: Sequence[torch.Tensor],
              atol: float, fixed: nn.Module | None) -> dict[str, str]:
    """Removed units whose removal alone breaks the outputs (bisection)."""
    err, _, why = _attempt(model, plan.only(units), inputs, fixed)
    if err <= atol:
        return {}
    if len(units) == 1:
        return {units[0]: f"unit {units[0]!r} stays masked: removing its channels failed ({why}); "
                          f"Torch-Pruning's graph misses a coupling of this model"}
    mid = len(units) // 2
    return {**_culprits(model, plan, units[:mid], inputs, atol, fixed),
            **_culprits(model, plan, units[mid:], inputs, atol, fixed)}


def physically_prune(model: nn.Module, policy: Policy | None, units: Sequence[Unit] | None, example_input: torch.Tensor,
                     *, criterion: str = "l1", channels: Mapping[str, Sequence[int]] | None = None,
                     atol: float = 1e-4, strict: bool = False, reference: str = "masked") -> PruneResult:
    """A smaller copy of ``model`` whose outputs equal :func:`masked_reference`'s.

    Args:
        model: the (fine-tuned or base) model; never changed.
        policy: its compression policy (only channel pruning matters here); None with ``channels``.
        units: the model's units (:func:`~compsearch.spaces.discover_units`); None with ``channels``.
        example_input: a batch, ``n x ...`` (traced, and used to check the outputs).
        criterion: ``l1`` or ``l2`` (how channels were ranked) when ``channels`` is None.
        channels: unit -> pruned output channels (e.g. the evaluator's masks); overrides the policy's.
        atol: allowed relative output error (see :attr:`PruneResult.max_error`).
        strict: raise instead of masking a unit that cannot be removed.
        reference: what the pruned model equals: ``"masked"`` (:func:`masked_reference`) or
            ``"model"`` (``model`` itself, e.g. the evaluator's fine-tuned compressed model,
            whose masks zero only weight rows; see :func:`plan_pruning`).

    Returns:
        A :class:`PruneResult`; units that could not be removed are in ``plan.masked``.

    Raises:
        ModelError: ``strict`` and a pruned unit stays masked (the message names the unit and the coupling).
    """
    start = time.perf_counter()
    before = parameter_count(model)
    if policy is not None and policy.removed:
        from compsearch.evaluators.removal import remove_blocks

        model = remove_blocks(model, policy.removed)
        units = None if units is None else [u for u in units if not policy.removes(u.name)]
        policy = Policy({n: up for n, up in policy.items() if not policy.removes(n)})
    plan = plan_pruning(model, policy, units, example_input, criterion=criterion, channels=channels, reference=reference)
    inputs = check_inputs(example_input)
    fixed = clone_model(model).eval() if reference == "model" else None
    while True:
        err, pruned, why = _attempt(model, plan, inputs, fixed)
        if err <= atol and pruned is not None:
            break
        bad = _culprits(model, plan, plan.removed, inputs, atol, fixed) if plan.removed else {}
        if not bad:  # only the removals together fail (or nothing is removed and the forward fails)
            if not plan.removed:
                raise ModelError(f"the masked model cannot run: {why}")
            bad = {u: f"unit {u!r} stays masked: removing all groups together failed ({why})" for u in plan.removed}
        plan = plan.mask(bad)
    if strict and plan.masked:
        raise ModelError(next(iter(plan.masked.values())) + "; pass strict=False to keep such units masked")
    return PruneResult(model=pruned, plan=plan, max_error=err, params_before=before,
                       params_after=parameter_count(pruned), seconds=time.perf_counter() - start)


__all__ = ["PLAN_VERSION", "PruneAnalyzer", "PrunePlan", "PruneResult", "apply_plan", "check_inputs", "clone_model",
           "masked_reference", "output_error", "parameter_count", "physically_prune", "plan_pruning", "pruned_channels",
           "unit_weight", "zero_pruned"]
