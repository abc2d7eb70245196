"""Model introspection: find the compressible computations ("units"), their roles and blocks.

A *unit* is one weight used by a linear or convolution computation
(``F.linear``, ``F.conv1d``, ``F.conv2d``): the ``weight`` of an ``nn.Conv1d``,
``nn.Conv2d``, ``nn.Linear`` or any subclass (grouped, depthwise, "same"-padding and
weight-standardised convolutions; attention and MLP projections), whether the
module's own forward uses it or other code passes it functionally
(``F.linear(x, self.qkv.weight, bias)``), and a parameter of another module used
that way (``nn.MultiheadAttention.in_proj_weight``, a custom module's ``weight``).
:mod:`compsearch.spaces.trace` finds them in one traced forward of an example
input, so MACs are exact for that input size. Whatever no unit holds (embeddings,
position tables, norms, biases, weights computed by arbitrary code) is reported:
:func:`coverage` is the share of the model's parameters that are unit weights; the
rest keeps its 32 bits in ``size_bits``.

Roles: the **stem** (``is_first``) is the first unit whose input depends on the model
input through no other unit; the **head** (``is_head``, possibly two: a distillation
model's ``head`` and ``head_dist``) is what ``get_classifier()`` returns (timm's
convention; a tuple of modules is accepted), else the units that feed the model
output (a tensor, or every tensor of a tuple/dict output) with no other unit in
between, when there are one or two of them. Spaces skip both by default.
Blocks follow the module structure (:mod:`compsearch.spaces.blocks`) and can be overridden.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from compsearch.errors import ModelError
from compsearch.spaces.blocks import BlockOverride, override_blocks, structural_blocks
from compsearch.spaces.trace import (
    COMPRESSIBLE,
    FUNCTIONAL,
    MODULE,
    Trace,
    WeightUse,
    trace_weight_uses,
)

__all__ = ["COMPRESSIBLE", "FUNCTIONAL", "MODULE", "Discovery", "Unit", "coverage", "discover", "discover_units",
           "group_blocks", "uncovered_parameters"]


@dataclass(frozen=True)
class Unit:
    """One compressible weight and the computation that uses it.

    Attributes:
        name: the weight's name: the module name for the ``weight`` of a ``Conv1d``/
            ``Conv2d``/``Linear`` (or subclass) -- ``model.get_submodule(name).weight`` --,
            else the parameter path (``"blocks.0.attn.in_proj_weight"``).
        kind: ``"conv1d"``, ``"conv2d"`` or ``"linear"``: the computation that uses it.
        weight_shape: shape of the weight tensor, ``out x in/groups x k...`` or ``out x in``.
        params: number of weight elements (the bias is counted in ``bias_params``).
        bias_params: number of elements of the bias the computation adds (0 without bias).
        macs: multiply-accumulates per sample of all its computations, from one traced forward.
        out_channels: size of the output-channel axis (axis 0 of the weight).
        groups: convolution groups (1 for a linear computation).
        block: block name (see :mod:`compsearch.spaces.blocks`), or the override's.
        depth: position in execution order of the traced forward (0 = first executed).
        is_first: the stem: the first unit whose input depends on the model input through
            no other unit; spaces skip it by default.
        is_head: a classifier head; spaces skip it by default.
        use: how the weight is used. ``"module"``: only by its own ``Conv1d``/``Conv2d``/
            ``Linear`` module's forward, whose first argument is the computation's input
            (input-activation quantization can wrap that forward). ``"functional"``: also
            or only by other code (``F.linear(x, self.qkv.weight, ...)``, a Linear whose
            forward never runs, ``nn.MultiheadAttention``'s projections, a custom module's
            parameter): the weight can be replaced wherever it is read (a
            parametrization), but the computation's input is not a module input, so the
            evaluator cannot quantize it. ``nn.TransformerEncoderLayer``'s ``linear1``/
            ``linear2`` are functional: its fused eval kernel reads their weights directly.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int
    bias_params: int
    macs: int
    out_channels: int
    groups: int
    block: str
    depth: int
    is_first: bool = False
    is_head: bool = False
    use: str = MODULE

    @property
    def out_axis(self) -> int:
        """Axis of the weight that indexes output channels (always 0 for these layers)."""
        return 0

    @property
    def fan_in(self) -> int:
        """Weight elements per output channel."""
        return self.params // self.out_channels


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover` found, with the reasons behind the roles.

    Attributes:
        units: the units (after ``include``/``exclude``), in execution order.
        coverage: unit weight elements / all parameter elements of the model (see :func:`coverage`).
        total_params: all parameter elements of the model (shared parameters once).
        uncovered: :func:`uncovered_parameters`: matrices and tensors no unit holds -> their
            element counts, largest first.
        unattributed: linear/convolution computations whose weight is not a parameter
            (a buffer, or computed outside any Conv/Linear module): not compressible.
        stem: the stem unit (``is_first``), or None.
        stem_reason: why it was chosen.
        heads: the head units (``is_head``), possibly none.
        head_reason: why they were chosen (or why none was).
    """

    units: tuple[Unit, ...]
    coverage: float
    total_params: int
    uncovered: dict[str, int]
    unattributed: tuple[str, ...]
    stem: str | None
    stem_reason: str
    heads: tuple[str, ...]
    head_reason: str


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + ".")


def _stem(trace: Trace) -> tuple[str, str]:
    order = list(trace.uses)
    reading = [n for n in order if trace.uses[n].reads_input]
    if reading:
        return reading[0], f"{reading[0]!r} is the first unit executed on the model input (no other unit in between)"
    if not trace.input_traced:
        return order[0], f"{order[0]!r} is the first unit executed (the input is not differentiable, so its path is not traced)"
    return order[0], f"{order[0]!r} is the first unit executed (no unit reads the model input directly)"


def _classifier_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        return []
    try:
        found = get_classifier()
    except TypeError:  # a method of that name with other arguments: not timm's convention
        return []
    names = {id(m): n for n, m in model.named_modules()}
    mods = found if isinstance(found, (tuple, list)) else (found,)
    return [(names[id(m)], m) for m in mods if isinstance(m, nn.Module) and id(m) in names]


def _heads(model: nn.Module, trace: Trace) -> tuple[tuple[str, ...], str]:
    declared = _classifier_modules(model)
    heads: list[str] = []
    for path, _ in declared:
        inside = [n for n, use in trace.uses.items() if _under(use.owner, path) and path]
        heads += [n for n in inside if n in trace.terminal] or inside[-1:]
    if heads:
        named = ", ".join(repr(p) for p, _ in declared)
        return tuple(heads), f"get_classifier() returns {named}"
    prefix = "get_classifier() holds no unit; " if declared else ""
    if not trace.input_traced:
        last = list(trace.uses)[-1]
        if trace.uses[last].kind == "linear":
            return (last,), prefix + f"{last!r} is the last unit executed and a linear one (the input is not differentiable)"
        return (), prefix + "no head: the last unit executed is not linear (the input is not differentiable)"
    if trace.output_skips_units:
        return (), prefix + "no head: the model output depends on its input through no unit"
    if 1 <= len(trace.terminal) <= 2:
        named = " and ".join(repr(t) for t in trace.terminal)
        verb = "feeds" if len(trace.terminal) == 1 else "feed"
        return tuple(trace.terminal), prefix + f"{named} {verb} the model output with no other unit in between"
    return (), prefix + (f"no head: {len(trace.terminal)} units feed the model output directly (e.g. through residual "
                         f"connections), so none is taken for the classifier")


def _fused_reads(model: nn.Module) -> set[str]:
    """Linear layers whose weights a fused inference kernel reads directly, bypassing their
    forward: ``nn.TransformerEncoderLayer``'s ``linear1``/``linear2`` in eval mode without
    gradients (``torch._transformer_encoder_layer_fwd``). The traced forward cannot see it
    (any function mode disables the fused path), so these uses count as functional."""
    return {f"{n}.{child}" if n else child for n, m in model.named_modules()
            if isinstance(m, nn.TransformerEncoderLayer) for child in ("linear1", "linear2")}


def _unit(name: str, use: WeightUse, depth: int, batch: int) -> dict[str, object]:
    params = 1
    for s in use.weight_shape:
        params *= s
    return dict(name=name, kind=use.kind, weight_shape=use.weight_shape, params=params, bias_params=use.bias_params,
                macs=use.macs // batch, out_channels=use.weight_shape[0], groups=use.groups, depth=depth,
                use=FUNCTIONAL if FUNCTIONAL in use.uses else MODULE)


def _match(name: str, patterns: Sequence[str] | None) -> bool:
    return any(re.fullmatch(p, name) or p == name for p in patterns or ())


def discover(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    blocks: BlockOverride | None = None,
) -> Discovery:
    """Find the units of ``model``, their roles, blocks and what stays uncovered.

    Args:
        model: any ``nn.Module`` mapping ``example_input`` to a tensor (or a tuple/dict of
            tensors); it is run once in eval mode and left as found.
        example_input: an input batch (``b x ...``); MACs are per sample of this shape.
        include: regular expressions (full match) or exact names; only matching units are kept.
        exclude: regular expressions or exact names of units to leave out.
        blocks: block override, either a function unit name -> block name or a mapping
            regex -> block name (first full match wins; unmatched units keep the
            structural block of :mod:`compsearch.spaces.blocks`).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ModelError: no linear/convolution computation uses a parameter, or
            ``include``/``exclude`` leave no unit.
        ConfigError: a bad ``blocks`` override.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    trace = trace_weight_uses(model, example_input)
    if not trace.uses:
        raise ModelError(
            f"model {type(model).__name__} has no compressible layer: no Conv1d, Conv2d or Linear (or F.linear/"
            f"F.conv1d/F.conv2d on a parameter) runs in its forward pass; compsearch cannot compress it"
        )
    order = list(trace.uses)
    stem, stem_reason = _stem(trace)
    heads, head_reason = _heads(model, trace)
    for n in _fused_reads(model) & set(trace.uses):
        trace.uses[n].uses.add(FUNCTIONAL)
    paths = {n: u.owner for n, u in trace.uses.items()}
    block_of = structural_blocks(model, paths, order, protected=[stem, *heads])
    if blocks is not None:
        block_of = override_blocks(order, blocks, block_of)
    units = tuple(
        Unit(**_unit(n, trace.uses[n], depth, trace.batch), block=block_of[n],  # type: ignore[arg-type]
             is_first=n == stem, is_head=n in heads)
        for depth, n in enumerate(order)
        if (include is None or _match(n, include)) and not _match(n, exclude)
    )
    if not units:
        raise ModelError(
            f"include={include!r} / exclude={exclude!r} leave no compressible layer; "
            f"available: {order[:10]}{'...' if len(order) > 10 else ''}"
        )
    return Discovery(units=units, coverage=coverage(model, units), total_params=sum(p.numel() for p in model.parameters()),
                     uncovered=uncovered_parameters(model, units),
                     unattributed=tuple(trace.unattributed), stem=stem, stem_reason=stem_reason, heads=heads,
                     head_reason=head_reason)


def discover_units(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    blocks: BlockOverride | None = None,
) -> list[Unit]:
    """The units of ``model`` in execution order (:func:`discover` without the report).

    A Conv/Linear whose weight the forward never uses is omitted (its parameters count
    as uncovered).
    """
    return list(discover(model, example_input, include=include, exclude=exclude, blocks=blocks).units)


def _weight_names(model: nn.Module, units: Sequence[Unit]) -> set[str]:
    """Qualified parameter names of the unit weights."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    out = set()
    for u in units:
        if u.name in params or f"{u.name}.weight" in params:
            out.add(u.name if u.name in params else f"{u.name}.weight")
        elif u.name not in modules:  # a module whose weight is computed (weight norm) holds no such parameter
            raise ModelError(f"unit {u.name!r} names neither a parameter nor a module of {type(model).__name__}; "
                             f"discover the units on this model")
    return out


def uncovered_parameters(model: nn.Module, units: Sequence[Unit]) -> dict[str, int]:
    """Parameters with at least 2 dimensions longer than 1 that are not unit weights ->
    element counts, largest first: what discovery could not, or was told not to, compress
    (vectors -- biases, norm scales, ``C x 1 x 1 x 1`` gains, class tokens -- are left out:
    they are uncompressed by design).

    Raises:
        ModelError: a unit that is not a weight of ``model``.
    """
    weights = _weight_names(model, units)
    found = {n: p.numel() for n, p in model.named_parameters()
             if sum(s > 1 for s in p.shape) >= 2 and n not in weights}
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def coverage(model: nn.Module, units: Sequence[Unit]) -> float:
    """Share of the model's parameters held by units: ``sum_u params_u / sum_p numel(p)``
    over the unit weights ``u`` and every parameter ``p`` (shared parameters once).

    The rest (biases, norms, embeddings, position tables, anything no unit holds) is left
    uncompressed and counts at 32 bits in ``size_bits``. 1.0 only for a model whose every
    parameter is a unit weight.

    Raises:
        ModelError: a unit that is not a weight of ``model``.
    """
    _weight_names(model, units)
    total = sum(p.numel() for p in model.parameters())
    return sum(u.params for u in units) / total if total else 0.0


def group_blocks(units: Sequence[Unit]) -> dict[str, list[Unit]]:
    """Units grouped by block, blocks in execution order of their first unit."""
    out: dict[str, list[Unit]] = {}
    for u in sorted(units, key=lambda u: u.depth):
        out.setdefault(u.block, []).append(u)
    return out
