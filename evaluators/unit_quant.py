"""What export needs of one compressed unit: its effective weight, integer grid and masks.

A :class:`UnitQuant` mirrors the evaluator's per-unit record
(``CompressionEvaluator.compressed_units()``, read with :meth:`UnitQuant.from_compressed`)
and can also be derived from a plain model and a policy without fine-tuning
(:func:`quantize_units`, the evaluator's own mask and grid functions). Packing
(:mod:`compsearch.evaluators.packing`) and ONNX export
(:mod:`compsearch.evaluators.onnx_export`) read only this.

Integer codes. For a quantized weight (``w_bits < 16``, grid in
:mod:`compsearch.evaluators.quant`) the stored code of an element is ``c = q - qmin`` in
``[0, qmax - qmin]`` with ``q = round(w / scale) + zero_point``; the binary grid
(``bits=1``, symmetric) stores ``c = [w > 0]``. :func:`dequantize` maps codes back with
the evaluator's own float operations, so ``dequantize(codes(w)) == w`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.masks import compute_mask
from compsearch.evaluators.quant import act_grid, fake_quantize_weight, weight_qparams
from compsearch.evaluators.speedup import clone_model, unit_weight
from compsearch.spaces.policy import Policy


@dataclass(frozen=True)
class UnitQuant:
    """One unit as the compressed forward computes it.

    Attributes:
        weight: the effective float weight the forward uses, ``out x ...`` (masked, on its grid).
        w_bits: 1..15 quantized; 16..31 stored as fp16; 32 fp32.
        scheme: ``"symmetric"``/``"asymmetric"`` (None when float).
        per_channel: one scale (and zero point) per output channel.
        scale: ``out`` (per channel) or ``1`` float32 scales (None when float).
        zero_point: like ``scale``; integral, 0 on symmetric grids, 0.5 on the binary grid (None when float).
        qmin, qmax: the integer range (None when float).
        mask: None, ``out`` booleans (channel pruning; True = kept) or the weight's shape (unstructured).
        a_bits: input-activation bits (>= 16: not quantized).
        act_scale, act_zero_point: the input's per-tensor asymmetric grid (None when not quantized).
        functional: the weight is read outside its module's forward (exported as float).
    """

    weight: torch.Tensor
    w_bits: int = 32
    scheme: str | None = None
    per_channel: bool = False
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    qmin: int | None = None
    qmax: int | None = None
    mask: torch.Tensor | None = None
    a_bits: int = 32
    act_scale: float | None = None
    act_zero_point: int | None = None
    functional: bool = False

    @property
    def quantized(self) -> bool:
        return self.w_bits < 16

    @property
    def act_quantized(self) -> bool:
        return self.a_bits < 16 and self.act_scale is not None

    @property
    def channel_mask(self) -> bool:
        """The mask keeps whole output channels (``out`` booleans)."""
        return self.mask is not None and self.mask.dim() == 1

    @staticmethod
    def from_compressed(cu: Any, *, float_bits: int = 32) -> UnitQuant:
        """From the evaluator's per-unit record (``CompressedUnit``, INTERFACES §7).

        Args:
            cu: the record; ``w_bits``/``a_bits`` None mean float.
            float_bits: the policy's ``w_bits`` of a float unit (16..31 are stored as fp16).
        """
        weight = cu.weight.detach().float()
        mask = getattr(cu, "mask", None)
        if mask is not None:
            mask = mask.detach()
            mask = (mask.reshape(-1) != 0) if mask.shape != weight.shape else mask != 0
        scale, zp = getattr(cu, "scale", None), getattr(cu, "zero_point", None)
        a_scale, a_zp = getattr(cu, "act_scale", None), getattr(cu, "act_zero_point", None)
        return UnitQuant(
            weight=weight, w_bits=int(cu.w_bits) if cu.w_bits is not None else float_bits, scheme=cu.scheme,
            per_channel=bool(cu.per_channel),
            scale=None if scale is None else torch.as_tensor(scale, dtype=torch.float32).reshape(-1),
            zero_point=None if zp is None else torch.as_tensor(zp, dtype=torch.float32).reshape(-1),
            qmin=cu.qmin, qmax=cu.qmax, mask=mask, a_bits=int(cu.a_bits) if getattr(cu, "a_bits", None) else 32,
            act_scale=None if a_scale is None else float(a_scale),
            act_zero_point=None if a_zp is None else int(a_zp), functional=bool(getattr(cu, "functional", False)))


def from_compressed_units(records: Mapping[str, Any], policy: Policy) -> dict[str, UnitQuant]:
    """``evaluator.compressed_units()`` as :class:`UnitQuant` records (float units take the policy's ``w_bits``)."""
    return {name: UnitQuant.from_compressed(cu, float_bits=policy.get_or_identity(name).w_bits) for name, cu in records.items()}


def pruned_rows(units: Mapping[str, UnitQuant]) -> dict[str, list[int]]:
    """Unit -> pruned output channels of every unit with a channel mask (``channels=`` of ``physically_prune``)."""
    return {name: torch.nonzero(~uq.mask).flatten().tolist() for name, uq in units.items()
            if uq.mask is not None and uq.channel_mask and not bool(uq.mask.all())}


def _per_element(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out`` or ``1`` values broadcast to the weight's shape."""
    if t.numel() == 1:
        return t.reshape(()).expand_as(weight)
    return t.reshape((-1,) + (1,) * (weight.dim() - 1)).expand_as(weight)


def codes(uq: UnitQuant) -> torch.Tensor:
    """Integer codes ``c = q - qmin`` of every weight element (int64, the weight's shape).

    Raises:
        ConfigError: the unit is not quantized, or a weight is off its grid (not an effective weight).
    """
    if not uq.quantized or uq.scale is None or uq.zero_point is None or uq.qmin is None or uq.qmax is None:
        raise ConfigError(f"codes() needs a quantized unit (w_bits < 16 with scale/zero_point), got w_bits={uq.w_bits}")
    w = uq.weight
    if uq.scheme == "symmetric" and uq.w_bits == 1:
        return (w > 0).to(torch.int64)
    scale, zp = _per_element(uq.scale, w), _per_element(uq.zero_point, w)
    q = torch.round(w / scale) + zp
    if q.numel() and (float(q.min()) < uq.qmin or float(q.max()) > uq.qmax):
        raise ConfigError(f"weight values fall off the {uq.w_bits}-bit grid [{uq.qmin}, {uq.qmax}]; "
                          f"pass the effective (fake-quantized) weight")
    return (q - uq.qmin).to(torch.int64)


def dequantize(c: torch.Tensor, uq: UnitQuant) -> torch.Tensor:
    """Float weight of codes ``c`` (the weight's shape): ``(c + qmin - zero_point) * scale``.

    Computed as the evaluator does (integer-valued float times the scale), so it equals
    the effective weight exactly; the binary grid gives ``(c - 0.5) * scale``.
    """
    if uq.scale is None or uq.zero_point is None or uq.qmin is None:
        raise ConfigError(f"dequantize() needs a quantized unit (w_bits < 16 with scale/zero_point), got w_bits={uq.w_bits}")
    like = c.to(torch.float32)
    scale, zp = _per_element(uq.scale, like), _per_element(uq.zero_point, like)
    if uq.scheme == "symmetric" and uq.w_bits == 1:
        return torch.where(c > 0, scale * 0.5, -(scale * 0.5))
    return (like + uq.qmin - zp) * scale


def _keep(t: torch.Tensor | None, dim: int, removed: Sequence[int] | None) -> torch.Tensor | None:
    if t is None or not removed or t.dim() <= dim or t.numel() == 1:
        return t
    kept = [i for i in range(t.shape[dim]) if i not in set(removed)]
    return t.index_select(dim, torch.tensor(kept, dtype=torch.long))


def restrict(units: Mapping[str, UnitQuant], plan: Any) -> dict[str, UnitQuant]:
    """The units as they are after :func:`~compsearch.evaluators.speedup.apply_plan`.

    Removed output channels drop their weight rows, per-channel scales/zero points and
    mask rows; removed input channels drop weight (and mask) columns. Scales are kept,
    not recomputed, so the codes of the remaining weights do not change.
    """
    outs, ins = plan.merged()
    out: dict[str, UnitQuant] = {}
    for name, uq in units.items():
        rows, cols = sorted(outs.get(name, ())), sorted(ins.get(name, ()))
        weight = _keep(_keep(uq.weight, 0, rows), 1, cols)
        mask = _keep(uq.mask, 0, rows)
        if mask is not None and mask.dim() > 1:
            mask = _keep(mask, 1, cols)
        out[name] = replace(uq, weight=uq.weight if weight is None else weight, mask=mask, scale=_keep(uq.scale, 0, rows) if uq.per_channel else uq.scale,
                            zero_point=_keep(uq.zero_point, 0, rows) if uq.per_channel else uq.zero_point)
    return out


def observe_act_ranges(model: nn.Module, names: Sequence[str], inputs: Sequence[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Min and max of each named module's input over ``inputs`` (eval mode, no gradients)."""
    ranges = {n: (float("inf"), float("-inf")) for n in names}

    def hook(name: str) -> Any:
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            lo, hi = ranges[name]
            ranges[name] = (min(lo, float(args[0].min())), max(hi, float(args[0].max())))
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return ranges


def float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (how scales are stored)."""
    return float(torch.tensor(value, dtype=torch.float32))


def _weight_part(weight: torch.Tensor, up: Any, criterion: str) -> UnitQuant:
    """Mask, grid and effective weight of one unit (the evaluator's operations)."""
    w = weight.detach().float()
    mask = compute_mask(w, keep=up.keep, structure=up.structure, criterion=criterion) if up.pruned else None
    masked = w * mask if mask is not None else w
    uq = UnitQuant(weight=masked, w_bits=up.w_bits, a_bits=up.a_bits)
    if up.quantized:
        per_channel = up.granularity == "channel"
        scale, zp, qmin, qmax = weight_qparams(masked, bits=up.w_bits, scheme=up.scheme, per_channel=per_channel)
        eff = fake_quantize_weight(masked, bits=up.w_bits, scheme=up.scheme, per_channel=per_channel).detach()
        if mask is not None and up.w_bits == 1 and up.scheme == "symmetric":
            eff = eff * mask
        uq = replace(uq, weight=eff, scheme=up.scheme, per_channel=per_channel, scale=scale.reshape(-1).float(),
                     zero_point=zp.reshape(-1).float(), qmin=qmin, qmax=qmax)
    if mask is not None:
        uq = replace(uq, mask=(mask.reshape(-1) != 0) if up.structure == "channel" else mask != 0)
    return uq


def quantize_units(model: nn.Module, policy: Policy, *, criterion: str = "l1",
                   calib: Sequence[torch.Tensor] | None = None, units: Sequence[Any] | None = None) -> dict[str, UnitQuant]:
    """Per-unit records of ``policy`` applied to ``model`` without fine-tuning.

    The same operations as the evaluator's compressed forward: the mask from the
    criterion on the weights (pruned weights zeroed), the grid of
    :func:`~compsearch.evaluators.quant.weight_qparams` on the masked weight, the
    fake-quantized weight (times the mask on the binary grid). Input grids
    (:func:`~compsearch.evaluators.quant.act_grid`) come from the min/max of each
    unit's input over the ``calib`` batches, observed on the model with effective weights
    and float activations (as the evaluator calibrates); the input scale is rounded to
    float32 as the evaluator rounds it (and as the packed file and ONNX's ``QuantizeLinear``
    store it).

    ``units`` (:func:`~compsearch.spaces.discover_units`) marks the functional ones
    (``use != "module"``), which export keeps in float.

    Raises:
        ConfigError: a unit quantizes its input and ``calib`` is None.
    """
    functional = {u.name for u in units or () if getattr(u, "use", "module") != "module"}
    records = {name: replace(_weight_part(unit_weight(model, name), up, criterion), functional=name in functional)
               for name, up in policy.items() if not up.is_identity}
    act = [name for name, up in policy.items() if up.act_quantized]
    if act and calib is None:
        raise ConfigError(f"units {act[:3]} quantize their input; pass calib=[batch, ...] (calibration inputs)")
    if act and calib is not None:
        ranges = observe_act_ranges(effective_model(model, records), act, calib)
        for name in act:
            a_scale, a_zp = act_grid(*ranges[name], policy[name].a_bits)
            records[name] = replace(records[name], act_scale=a_scale, act_zero_point=a_zp)
    return records


class _InputQuant:
    """Forward pre-hook: the evaluator's frozen input quantizer on a stored grid.

    ``x -> round(clamp(x, lo, hi) * (1 / scale)) * scale`` with ``lo = -zero_point * scale``,
    ``hi = (2**a_bits - 1 - zero_point) * scale`` (the same float operations as
    :class:`~compsearch.evaluators.quant.ActQuantizer`).
    """

    def __init__(self, *, bits: int, scale: float, zero_point: int) -> None:
        self.scale, self.inv = scale, 1.0 / scale
        self.lo, self.hi = -zero_point * scale, (2**bits - 1 - zero_point) * scale

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (torch.mul(args[0].clamp(self.lo, self.hi), self.inv).round_().mul_(self.scale), *args[1:])


def attach_input_quant(model: nn.Module, units: Mapping[str, UnitQuant]) -> list[Any]:
    """Quantize the input of every unit with an input grid, in place (forward pre-hooks).

    Returns:
        The hook handles (``handle.remove()`` detaches one).
    """
    return [model.get_submodule(name).register_forward_pre_hook(
                _InputQuant(bits=uq.a_bits, scale=float(uq.act_scale), zero_point=int(uq.act_zero_point or 0)))
            for name, uq in units.items() if uq.act_quantized and uq.act_scale is not None]


def effective_model(model: nn.Module, units: Mapping[str, UnitQuant]) -> nn.Module:
    """A copy of ``model`` whose unit weights are the effective weights (activations not quantized)."""
    copy_ = clone_model(model).eval()
    with torch.no_grad():
        for name, uq in units.items():
            unit_weight(copy_, name).copy_(uq.weight)
    return copy_


__all__ = ["UnitQuant", "attach_input_quant", "codes", "float32", "from_compressed_units", "dequantize", "effective_model", "observe_act_ranges", "pruned_rows", "quantize_units", "restrict"]
