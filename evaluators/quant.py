"""Fake quantization of weights and activations with a straight-through estimator (STE).

Weights (one ``out x ...`` tensor per unit, output channels on axis 0) and the
*input* activation of each unit are rounded onto a ``bits``-bit integer grid and
mapped back to float ("fake" quantization), so training and evaluation see the
exact values a real integer kernel would use.

The grid. A tensor ``x`` is quantized as::

    q   = clamp(round(x / scale) + zero_point, qmin, qmax)      # integers
    x_q = (q - zero_point) * scale                                # values used

(``round`` is half to even, as in ``torch.fake_quantize_per_channel_affine``)

with, for ``b = bits``:

* **symmetric**, ``b >= 2``: ``qmax = 2**(b-1) - 1``, ``qmin = -qmax`` (narrow range,
  ``2**b - 1`` levels, symmetric about an exact 0), ``zero_point = 0``,
  ``scale = max|x| / qmax``.
* **symmetric**, ``b = 1`` (binary, XNOR-Net style): levels ``{-a, +a}`` with
  ``a = mean|x|``, ``x_q = +a`` for ``x >= 0`` and ``-a`` otherwise; as an affine grid
  ``qmin = 0``, ``qmax = 1``, ``scale = 2a``, ``zero_point = 0.5`` (a constant, never
  stored), ``q = [x >= 0]``. Zero is not a level, so pruned weights are masked after
  quantization.
* **asymmetric**: ``qmin = 0``, ``qmax = 2**b - 1`` (``2**b`` levels); the range
  ``[lo, hi] = [min(min x, 0), max(max x, 0)]`` always holds 0,
  ``scale = (hi - lo) / qmax``, ``zero_point = clamp(round(-lo / scale), 0, qmax)``
  (an integer, so 0 is represented exactly).

``max``, ``mean``, ``min`` run over the whole tensor (``granularity="tensor"``) or over
each output channel (``granularity="channel"``: one scale, and zero point, per row of
axis 0). Scales are floored at ``1e-12`` so an all-zero (pruned) channel stays 0.
Weight qparams are recomputed from the current weights in every forward (min/max
QAT).

The STE. Weights: the forward uses the rounded weight, the backward passes the
gradient through unchanged (identity) -- a min/max range holds every weight, so no
weight is ever clamped (on the binary grid this is the plain, unclipped STE). In
fine-tuning the grid values of all small weights are computed together once per
optimizer step (:func:`grid_values`, ``torch._foreach_*``) and used as ``w + (Q - w)``
(see :class:`~compsearch.evaluators.compressed.WeightCache`).
Activations: ``x_q = round(clamp(x, lo, hi) / scale) * scale`` with ``lo = -zero_point *
scale``, ``hi = (qmax - zero_point) * scale`` (``/ scale`` computed as ``* (1 / scale)``;
``torch.fake_quantize_per_tensor_affine`` gives the same values up to the last bit of
``1 / scale``, about 1 element in 10^7) and the gradient of ``torch.clamp``: the identity
strictly inside ``(lo, hi)``, 0 for values clamped to the calibrated range and at ``lo``,
``hi`` themselves (computed as ``hardtanh(x, lo, hi) + (x_q - hardtanh(x, lo, hi))``, the
second term without gradient: exact, and no Python in the backward pass). The weight path
equals ``torch.fake_quantize_per_channel_affine`` on its integer-zero-point grids.

Activations are quantized per tensor, asymmetric, ``2**a_bits`` levels. Their range
is the min/max seen over a few calibration batches, then either frozen
(``"frozen"``) or tracked by an exponential moving average in training mode
(``"ema"``). The input scale is rounded to float32 (:func:`act_grid`), as exported files
store it, and the zero point follows from the rounded scale.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from compsearch.errors import ConfigError

ACT_RANGES = ("frozen", "ema")
_EPS = 1e-12


def is_quantized_bits(bits: int) -> bool:
    """``bits < 16`` is simulated; 16 and above mean "left in floating point"."""
    return bits < 16


def grid(bits: int, scheme: str) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-bit grid (see the module docstring)."""
    if not 1 <= bits < 16:
        raise ConfigError(f"bits={bits!r} cannot be fake-quantized; allowed: 1..15 (16/32 = float)")
    if scheme == "asymmetric":
        return 0, 2**bits - 1
    if scheme != "symmetric":
        raise ConfigError(f"scheme={scheme!r} is unknown; allowed: ['symmetric', 'asymmetric']")
    if bits == 1:
        return 0, 1
    qmax = 2 ** (bits - 1) - 1
    return -qmax, qmax


def _min_max(x: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each output channel (``out x 1 x ... x 1``) or of the tensor (scalars).

    (``amin`` + ``amax`` are ~5x faster than ``aminmax`` or ``abs().amax()`` on CPU.)
    """
    if per_channel and x.dim() > 1:
        flat = x.reshape(x.shape[0], -1)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return flat.amin(dim=1).reshape(shape), flat.amax(dim=1).reshape(shape)
    return x.amin(), x.amax()


def _abs_max(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``max|x|`` per output channel (``out x 1 x ... x 1``) or of the tensor (a scalar).

    Small tensors take ``abs().amax()`` (fewer ops); large ones ``max(-min, max)``
    (fewer passes over memory).
    """
    if x.numel() <= 1 << 16:
        a = x.abs()
        return a.amax(dim=tuple(range(1, x.dim())), keepdim=True) if per_channel and x.dim() > 1 else a.amax()
    lo, hi = _min_max(x, per_channel)
    return torch.maximum(lo.neg_(), hi)


def weight_qparams(
    w: torch.Tensor, *, bits: int, scheme: str, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale and zero point of a weight tensor (formulas in the module docstring).

    Args:
        w: ``out x ...`` weight (output channels on axis 0).
        bits: 1..15.
        scheme: ``"symmetric"`` or ``"asymmetric"``.
        per_channel: one scale per output channel (True) or one for the tensor.

    Returns:
        ``(scale, zero_point, qmin, qmax)``; ``scale`` and ``zero_point`` (float, integral
        except the binary grid's 0.5) are ``out x 1 x ... x 1`` per channel, scalars per tensor.
    """
    qmin, qmax = grid(bits, scheme)
    with torch.no_grad():
        w = w.detach()
        if scheme == "symmetric" and bits == 1:
            if per_channel and w.dim() > 1:
                mean_abs = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
            else:
                mean_abs = w.abs().mean()
            scale = mean_abs.mul_(2.0).clamp_min_(_EPS)
            return scale, torch.full_like(scale, 0.5), qmin, qmax
        if scheme == "symmetric":
            scale = _abs_max(w, per_channel).div_(qmax).clamp_min_(_EPS)
            return scale, torch.zeros_like(scale), qmin, qmax
        lo, hi = _min_max(w, per_channel)
        lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)
        scale = (hi - lo).div_(qmax).clamp_min_(_EPS)
        zero_point = torch.round(-lo / scale).clamp_(0, qmax)
        return scale, zero_point, qmin, qmax


def round_to_grid(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """``(clamp(round(w / scale) + zero_point, qmin, qmax) - zero_point) * scale`` (no gradient).

    ``scale`` and the integral ``zero_point`` broadcast against ``w`` (per channel) or
    are scalars. ``w / scale`` is computed as ``w * (1 / scale)``, as torch's fake-quant
    kernels do. On the symmetric grid (``qmin == -qmax``, ``zero_point == 0``) from
    :func:`weight_qparams` every code is already in range, so the clamp is skipped.
    """
    with torch.no_grad():
        q = torch.mul(w, scale.reciprocal()).round_()
        if qmin == -qmax:
            return q.mul_(scale)
        return q.add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)


def binarize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Binary grid: ``+scale / 2`` where ``w >= 0``, else ``-scale / 2`` (no gradient)."""
    with torch.no_grad():
        half = scale * 0.5
        return torch.where(w >= 0, half, -half).expand_as(w).clone()


class _WeightSTE(torch.autograd.Function):
    """Forward: the weight on its grid; backward: the identity (straight-through)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, bits: int, scheme: str, per_channel: bool) -> torch.Tensor:
        if scheme == "symmetric" and bits > 1:  # fast path: no zero point, no clamp needed
            qmax = 2 ** (bits - 1) - 1
            scale = _abs_max(w, per_channel).div_(qmax).clamp_min_(_EPS)
            return torch.mul(w, scale.reciprocal()).round_().mul_(scale)
        scale, zero_point, qmin, qmax = weight_qparams(w, bits=bits, scheme=scheme, per_channel=per_channel)
        if scheme == "symmetric":
            return binarize(w, scale)
        return round_to_grid(w, scale, zero_point, qmin, qmax)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad, None, None, None


def fake_quantize_weight(w: torch.Tensor, *, bits: int, scheme: str, per_channel: bool) -> torch.Tensor:
    """Weight rounded onto its grid, with the identity STE gradient (see the module docstring).

    Args:
        w: ``out x ...`` weight; returned tensor has the same shape and dtype.
        bits: 1..15 (use :func:`is_quantized_bits` to skip 16/32).
        scheme: ``"symmetric"`` or ``"asymmetric"``.
        per_channel: one scale per output channel (True) or per tensor.
    """
    grid(bits, scheme)
    return _WeightSTE.apply(w, bits, scheme, per_channel)


def act_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Per-tensor asymmetric ``(scale, zero_point)`` for the range ``[lo, hi]`` (0 is added to it)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (2**bits - 1), _EPS)
    return scale, act_zero_point(lo, scale, bits)


def act_zero_point(lo: float, scale: float, bits: int) -> int:
    """``clamp(round(-min(lo, 0) / scale), 0, 2**bits - 1)``: the integer that represents 0."""
    return int(min(max(round(-min(lo, 0.0) / scale), 0), 2**bits - 1))


def float32_scale(scale: float) -> float:
    """``scale`` rounded to the nearest float32 (the precision files store scales in)."""
    return float(struct.unpack("<f", struct.pack("<f", scale))[0])


def act_grid(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """The input grid an :class:`ActQuantizer` uses for the range ``[lo, hi]``: the scale of
    :func:`act_qparams` rounded to float32, and the zero point of that rounded scale."""
    scale = float32_scale(act_qparams(lo, hi, bits)[0])
    return scale, act_zero_point(lo, scale, bits)


class ActQuantizer:
    """Per-tensor asymmetric fake quantizer of one unit's input activation.

    States: *observing* (pass-through, records min/max; used during calibration) and
    *quantizing*. With ``mode="ema"`` the range keeps moving in training mode:
    ``lo <- momentum * lo + (1 - momentum) * batch_min`` (same for ``hi``).

    Args:
        bits: 1..15.
        mode: ``"frozen"`` or ``"ema"``.
        momentum: EMA momentum in [0, 1).
    """

    def __init__(self, *, bits: int, mode: str = "frozen", momentum: float = 0.9) -> None:
        if mode not in ACT_RANGES:
            raise ConfigError(f"act_range={mode!r} is unknown; allowed: {list(ACT_RANGES)}")
        grid(bits, "asymmetric")
        self.bits = bits
        self.mode = mode
        self.momentum = momentum
        self.observing = True
        self.lo = float("inf")
        self.hi = float("-inf")
        self._qparams: tuple[float, int] = (1.0, 0)
        self._device = torch.device("cpu")

    @property
    def calibrated(self) -> bool:
        """Whether a range has been observed (at least one tensor seen)."""
        return self.lo <= self.hi

    @property
    def qparams(self) -> tuple[float, int]:
        """The ``(scale, zero_point)`` in use (after :meth:`freeze`; moves with EMA)."""
        return self._qparams

    def freeze(self) -> None:
        """End calibration: quantize from now on with the observed range."""
        if self.lo > self.hi:
            raise ConfigError("activation quantizer was never calibrated; run at least one calibration batch")
        self.observing = False
        self._set_range()

    def _set_range(self) -> None:
        """Cache ``(scale, zero_point)``, the clamp range, and ``1 / scale`` and ``scale`` as 0-d
        float32 tensors (the values torch would convert the Python floats to, without a
        conversion per forward).

        The scale is rounded to float32 first (:func:`act_grid`), the precision every
        exported file stores it in (the packed weights, ONNX's ``QuantizeLinear``), so an
        exported grid is the evaluated one bit for bit; the zero point and the clamp range
        follow from the rounded scale.
        """
        self._qparams = scale, zero_point = act_grid(self.lo, self.hi, self.bits)
        device = self._device
        self._forward_args = (-zero_point * scale, (2**self.bits - 1 - zero_point) * scale,
                              torch.tensor(1.0 / scale, device=device), torch.tensor(scale, device=device))

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Quantize ``x`` (any shape) or, while observing, record its range and return it as is."""
        if self.observing:
            self.lo = min(self.lo, float(x.detach().min()))
            self.hi = max(self.hi, float(x.detach().max()))
            self._device = x.device
            return x
        if training and self.mode == "ema":
            m = self.momentum
            self.lo = m * self.lo + (1 - m) * float(x.detach().min())
            self.hi = m * self.hi + (1 - m) * float(x.detach().max())
            self._set_range()
        lo, hi, inv_scale, scale = self._forward_args
        if not (x.requires_grad and torch.is_grad_enabled()):
            return x.clamp(lo, hi).mul_(inv_scale).round_().mul_(scale)
        # hardtanh is the clamp with a one-kernel backward (grad strictly inside (lo, hi), as
        # torch.clamp's); h + (q - h) is exactly q (|q - h| <= scale / 2, Sterbenz), and its
        # gradient passes the rounding straight through -- no Python in the backward pass
        clamped = F.hardtanh(x, lo, hi)
        with torch.no_grad():
            step = torch.mul(clamped, inv_scale).round_().mul_(scale).sub_(clamped)
        return clamped + step


@dataclass(frozen=True)
class WeightQuant:
    """How one unit's weight is fake-quantized (``bits`` 1..15)."""

    bits: int
    scheme: str
    per_channel: bool

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(w, bits=self.bits, scheme=self.scheme, per_channel=self.per_channel)

    @property
    def narrow(self) -> bool:
        """The symmetric grid with ``bits >= 2`` (no zero point, nothing clamped; fused by :func:`grid_values`)."""
        return self.scheme == "symmetric" and self.bits > 1

    def values(self, w: torch.Tensor) -> torch.Tensor:
        """The weight on its grid, without gradient (the forward value of ``self(w)``)."""
        scale, zero_point, qmin, qmax = weight_qparams(w, bits=self.bits, scheme=self.scheme, per_channel=self.per_channel)
        if self.scheme == "symmetric" and self.bits == 1:
            return binarize(w, scale)
        return round_to_grid(w.detach(), scale, zero_point, qmin, qmax)


_QMAX: dict[tuple[int, torch.device], torch.Tensor] = {}


def _qmax_tensor(bits: int, device: torch.device) -> torch.Tensor:
    """``2**(bits-1) - 1`` as a cached 0-d float32 tensor (a divisor without per-call conversion)."""
    key = (bits, device)
    if key not in _QMAX:
        _QMAX[key] = torch.tensor(float(2 ** (bits - 1) - 1), device=device)
    return _QMAX[key]


def grid_values(weights: list[torch.Tensor], quants: list[WeightQuant]) -> list[torch.Tensor]:
    """``[q.values(w) for w, q in ...]`` for narrow symmetric grids, fused: one call per step of
    the computation for all weights (``torch._foreach_*``), so the cost does not grow with the
    number of units. Bit-identical to :func:`fake_quantize_weight`'s forward (tested)."""
    if not all(q.narrow for q in quants):
        raise ConfigError("grid_values fuses only symmetric grids with bits >= 2; use WeightQuant.values for the others")
    if not weights:
        return []
    with torch.no_grad():
        small = [i for i, w in enumerate(weights) if w.numel() <= 1 << 16]
        absolute = dict(zip(small, torch._foreach_abs([weights[i] for i in small]) if small else [], strict=True))
        scales = []
        for i, (w, q) in enumerate(zip(weights, quants, strict=True)):
            if i in absolute:
                a = absolute[i]
                scales.append(a.amax(dim=tuple(range(1, w.dim())), keepdim=True) if q.per_channel and w.dim() > 1 else a.amax())
            else:
                scales.append(_abs_max(w, q.per_channel))
        torch._foreach_div_(scales, [_qmax_tensor(q.bits, w.device) for q, w in zip(quants, weights, strict=True)])
        torch._foreach_clamp_min_(scales, _EPS)
        values = torch._foreach_mul(weights, torch._foreach_reciprocal(scales))
        torch._foreach_round_(values)
        torch._foreach_mul_(values, scales)
    return list(values)

