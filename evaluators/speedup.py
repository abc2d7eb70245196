"""Physically remove pruned output channels (Torch-Pruning), keeping the masked model's outputs.

Why Torch-Pruning and not NNI's ``ModelSpeedup``: measured with ``benchmarks/speedup.py``
on the supported timm families at 32x32 (resnet18, vit_tiny_patch16_224, mobilenetv3_small_050,
efficientnet_b0, convnext_atto; numbers in that script's output), Torch-Pruning's dependency
graph builds on all five and removes every private channel group exactly, while NNI 3.0's
``ModelSpeedup`` (given ``graph_module=torch.fx.symbolic_trace(model)``) fails on more of them
(fx tracing or its shape inference). Torch-Pruning is imported lazily (``pip install torch-pruning``).

**What is removed.** A unit with channel-structured pruning (``structure="channel"``,
``keep < 1``; the classifier output layer excluded) drops the output channels its
importance criterion ranks lowest (the same masks as the evaluator,
:func:`~compsearch.evaluators.masks.compute_mask`). Torch-Pruning's pruning *group* of
those channels is everything coupled to them: the unit's weight rows and bias, the
following normalization's channels, depthwise convs that pass them through, the input
columns of the consumers. A unit is *removable* when its group holds no other producer
(a conv/linear other than depthwise pass-throughs) and no LayerNorm/GroupNorm -- removing
a channel of a residual stream would change other units, a LayerNorm's statistics
change when a channel leaves, and a fused q/k/v projection is split into attention heads. Units that are not removable keep their pruned weight rows
zeroed in place (a masked, not smaller, layer).

**The reference it equals** (:func:`masked_reference`): the model with, for every
removable unit, every parameter of its group zeroed at the pruned channels (so those
channels are exactly 0 everywhere the group reaches: activations map 0 to 0, a
squeeze-excite gate multiplies a 0), and for every other pruned unit its weight rows
zeroed. (The evaluator zeroes the weight rows only; a bias or BatchNorm shift of a
pruned channel survives there, so its fine-tuned model is not exactly removable.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compsearch.errors import ModelError
from compsearch.evaluators.masks import compute_mask
from compsearch.spaces.policy import Policy
from compsearch.spaces.units import Unit

_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class PrunePlan:
    """Which channels leave which unit.

    Attributes:
        channels: unit name -> sorted pruned output-channel indices.
        removable: units whose channels are physically removed.
        masked: units whose pruned rows stay zeroed in place, with the reason.
    """

    channels: dict[str, list[int]]
    removable: tuple[str, ...]
    masked: dict[str, str] = field(default_factory=dict)


def pruned_channels(model: nn.Module, policy: Policy, units: Sequence[Unit], *, criterion: str = "l1") -> dict[str, list[int]]:
    """Pruned output channels of every channel-pruned unit (head excluded), from the base weights.

    Criteria needing gradients (``taylor``, ``fisher``) are not supported here; use ``l1``/``l2``.
    """
    out: dict[str, list[int]] = {}
    for unit in units:
        up = policy.get_or_identity(unit.name)
        if unit.is_head or not up.pruned or up.structure != "channel":
            continue
        weight = model.get_submodule(unit.name).weight
        mask = compute_mask(weight, keep=up.keep, structure="channel", criterion=criterion)
        if mask is not None:
            out[unit.name] = torch.nonzero(mask.flatten() == 0).flatten().tolist()
    return out


def _graph(model: nn.Module, example_input: torch.Tensor) -> Any:
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise ImportError(f"physical pruning needs Torch-Pruning ({e}); install it with: pip install torch-pruning") from None
    with torch.enable_grad():  # the dependency graph is traced through autograd
        return tp, tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def _group(tp: Any, graph: Any, module: nn.Module, idxs: list[int]) -> Any:
    fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    return graph.get_pruning_group(module, fn, idxs=idxs)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Conv1d) and module.groups > 1 and module.groups == module.in_channels


def _why_not_removable(group: Any, root: nn.Module) -> str | None:
    for dep, _ in group:
        target = dep.target.module
        out = dep.handler.__name__ == "prune_out_channels"
        if type(target).__name__ == "_UnbindOp" or "ScaledDotProduct" in str(dep.target.name):
            return "its channels are split into attention heads (q/k/v)"
        if isinstance(target, _CHANNEL_NORMS):
            return f"its channels reach a {type(target).__name__} ({dep.target.name.split(' ')[0]})"
        if out and target is not root and isinstance(target, nn.Linear | nn.Conv1d | nn.Conv2d) and not _is_depthwise(target):
            return f"its channels are shared with {dep.target.name.split(' ')[0]} (a coupled group, e.g. a residual stream)"
    return None


def plan_pruning(model: nn.Module, policy: Policy, units: Sequence[Unit], example_input: torch.Tensor,
                 *, criterion: str = "l1") -> PrunePlan:
    """Decide which pruned units can lose their channels physically (see the module docstring)."""
    channels = pruned_channels(model, policy, units, criterion=criterion)
    if not channels:
        return PrunePlan(channels={}, removable=())
    tp, graph = _graph(model, example_input)
    removable, masked = [], {}
    for name, idxs in channels.items():
        module = model.get_submodule(name)
        why = _why_not_removable(_group(tp, graph, module, idxs), module)
        if why is None:
            removable.append(name)
        else:
            masked[name] = why
    return PrunePlan(channels=channels, removable=tuple(removable), masked=masked)


def _zero_rows(module: nn.Module, idxs: list[int]) -> None:
    with torch.no_grad():
        for attr in ("weight", "bias"):
            p = getattr(module, attr, None)
            if isinstance(p, torch.Tensor) and p.dim() >= 1:
                p[idxs] = 0


def _zero_weight_rows(model: nn.Module, plan: PrunePlan) -> None:
    """Zero the pruned weight rows of the units that stay in place (masked, not removed)."""
    with torch.no_grad():
        for name in plan.masked:
            weight = model.get_submodule(name).weight
            if not isinstance(weight, torch.Tensor):
                raise ModelError(f"unit {name!r} has no weight tensor; only Conv and Linear layers prune")
            weight[plan.channels[name]] = 0


def masked_reference(model: nn.Module, plan: PrunePlan, example_input: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with the plan's channels zeroed (whole groups for removable units)."""
    ref = copy.deepcopy(model).eval()
    _zero_weight_rows(ref, plan)
    if plan.removable:
        tp, graph = _graph(ref, example_input)
        for name in plan.removable:
            for dep, idxs in _group(tp, graph, ref.get_submodule(name), plan.channels[name]):
                if dep.handler.__name__ == "prune_out_channels" and isinstance(dep.target.module, nn.Module):
                    _zero_rows(dep.target.module, list(idxs))
    return ref


def physically_prune(model: nn.Module, policy: Policy, units: Sequence[Unit], example_input: torch.Tensor,
                     *, criterion: str = "l1", atol: float = 1e-4) -> nn.Module:
    """A smaller copy of ``model`` whose outputs equal :func:`masked_reference`'s.

    Args:
        model: the (fine-tuned or base) model; not changed.
        policy: its compression policy (only channel pruning matters here).
        units: the model's units (:func:`~compsearch.spaces.discover_units`).
        example_input: a batch, ``n x ...`` (also used to check the outputs).
        criterion: ``l1`` or ``l2`` (how channels were ranked).
        atol: allowed ``max |f_pruned(x) - f_ref(x)|``, relative to ``max |f_ref(x)|`` (at least 1).

    Returns:
        The pruned model (eval mode), with attribute ``compsearch_plan`` (:class:`PrunePlan`).

    Raises:
        ModelError: the pruned model's outputs differ from the reference's.
    """
    plan = plan_pruning(model, policy, units, example_input, criterion=criterion)
    pruned = copy.deepcopy(model).eval()
    _zero_weight_rows(pruned, plan)
    if plan.removable:
        tp, graph = _graph(pruned, example_input)
        for name in plan.removable:  # private groups: removing one never shifts another's indices
            group = _group(tp, graph, pruned.get_submodule(name), plan.channels[name])
            group.prune()
    _check_equal(pruned, masked_reference(model, plan, example_input), example_input, atol=atol)
    pruned.compsearch_plan = plan  # type: ignore[assignment]
    return pruned


def _check_equal(pruned: nn.Module, reference: nn.Module, x: torch.Tensor, *, atol: float) -> None:
    with torch.no_grad():
        got, want = pruned(x), reference(x)
    scale = max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max())
    if diff > atol * scale:
        raise ModelError(f"physically pruned model differs from the masked reference by {diff:.3g} "
                         f"(allowed {atol * scale:.3g}); a channel group was not removed exactly")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["PrunePlan", "masked_reference", "parameter_count", "physically_prune", "plan_pruning", "pruned_channels"]
