"""Exact, training-free cost of a policy: size, compression ratio, BOPs, sparsity.

Definitions (``u`` runs over the model's units, ``n_u`` = weight elements of ``u``,
``c_u`` = its output channels, ``p`` = its :class:`~compsearch.spaces.UnitPolicy`;
a unit the policy leaves out gets the identity policy, 32-bit weights and inputs):

* kept weights ``kept_u``: ``n_u`` when ``keep == 1``; with ``structure="channel"``
  ``k_u * n_u / c_u`` where ``k_u = max(1, floor(keep * c_u + 0.5))`` channels are
  kept; with ``"unstructured"`` ``max(1, floor(keep * n_u + 0.5))`` (the same rounding
  as :mod:`compsearch.evaluators.masks`).
* stored bits per weight ``b_w``: ``w_bits`` when ``w_bits < 16`` (quantized); 16 for
  ``16 <= w_bits < 32`` (half precision); 32 for ``w_bits == 32``. The same rule
  gives ``b_a`` from ``a_bits``.
* ``size_bits`` = sum over units of

  - ``kept_u * b_w``;
  - quantization parameters (quantized weights only): 32 bits per scale, one per
    tensor (``granularity="tensor"``) or one per output channel (``"channel"``:
    per *kept* channel under channel pruning, all ``c_u`` channels under
    unstructured pruning), plus as many 32-bit zero points for ``"asymmetric"``
    (symmetric grids have none; the binary grid's 0.5 is a constant);
  - 64 bits (a per-tensor scale and zero point) when the input is quantized
    (``a_bits < 16``);
  - the mask of unstructured pruning (``keep < 1``): ``min(n_u, kept_u *
    ceil(log2(n_u)))`` bits, the cheaper of a bitmap and index coding; channel
    pruning removes rows physically and needs no mask;

  plus 32 bits per parameter that is not a unit weight (biases -- also those of
  pruned channels --, norms, embeddings, layers outside the units).
  Channel pruning of ``u`` does not shrink the consumer of its output (no
  dependency propagation), so only ``u``'s own weights are removed.
* ``size_kb`` = ``size_bits / 8 / 1024`` (KiB).
* ``compression_ratio`` = ``32 * total_params / size_bits`` (1.0 for the identity policy).
* ``bops`` = sum over units of ``macs_u * (kept_u / n_u) * b_w * b_a`` (bit operations
  per sample; ``macs_u`` from the traced forward in :func:`~compsearch.spaces.discover_units`).
* ``sparsity`` = ``1 - sum_u kept_u / sum_u n_u`` (over unit weights only).

Removed blocks (:attr:`~compsearch.spaces.Policy.removed`, spaces that change depth) cost 0:
a unit of a removed block (:meth:`~compsearch.spaces.Policy.removes`) adds no bits and no
BOPs whatever its unit policy, and counts as ``kept_u = 0`` in ``sparsity``; the block's other
parameters (biases, norms: :attr:`~compsearch.spaces.depth.RemovableBlock.params` minus its
units' weights) leave the 32-bit term. A shortcut that replaces a block is not removed: its
units and parameters cost as usual. Removing ``layer1.1`` of
:class:`~compsearch.testing.ToyResNet` (one 4->4 3x3 conv, 144 weights, 4 biases) from the
uncompressed model lowers ``size_bits`` by ``144 x 32 + 4 x 32 = 4736``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from compsearch.errors import ConfigError, PolicyError
from compsearch.evaluators.masks import keep_count
from compsearch.spaces.depth import RemovableBlock
from compsearch.spaces.policy import IDENTITY, Policy, UnitPolicy
from compsearch.spaces.units import Unit

COST_METRICS = ("size_bits", "size_kb", "compression_ratio", "bops", "sparsity")


def stored_bits(bits: int) -> int:
    """Bits a value occupies: ``bits`` below 16, 16 for 16..31, 32 for 32."""
    return bits if bits < 16 else (16 if bits < 32 else 32)


@dataclass(frozen=True)
class UnitCost:
    """The cost of one unit under one unit policy (see the module docstring).

    Attributes:
        kept: kept weight elements.
        bits: weight, quantization-parameter, activation-parameter and mask bits.
        bops: bit operations per sample.
    """

    kept: int
    bits: int
    bops: float


def kept_weights(unit: Unit, up: UnitPolicy) -> int:
    """Weight elements of ``unit`` kept by ``up`` (exact, with the masks' rounding)."""
    if up.keep >= 1.0:
        return unit.params
    if up.structure == "channel":
        return keep_count(up.keep, unit.out_channels) * unit.fan_in
    return keep_count(up.keep, unit.params)


def unit_cost(unit: Unit, up: UnitPolicy) -> UnitCost:
    """Size bits, BOPs and kept weights of ``unit`` under ``up``."""
    kept = kept_weights(unit, up)
    bits = kept * stored_bits(up.w_bits)
    if up.quantized:
        if up.granularity == "tensor":
            n_scales = 1
        elif up.pruned and up.structure == "channel":
            n_scales = kept // unit.fan_in
        else:
            n_scales = unit.out_channels
        bits += 32 * n_scales * (2 if up.scheme == "asymmetric" else 1)
    if up.act_quantized:
        bits += 64
    if up.pruned and up.structure == "unstructured" and kept < unit.params:
        bits += min(unit.params, kept * math.ceil(math.log2(unit.params)))
    bops = unit.macs * (kept / unit.params) * stored_bits(up.w_bits) * stored_bits(up.a_bits)
    return UnitCost(kept=kept, bits=bits, bops=float(bops))


class CostModel:
    """Precomputed per-unit numbers; :meth:`__call__` costs a policy without torch work.

    Per-unit costs are memoized by ``(unit, UnitPolicy)``, so a call is a dictionary
    walk over the policy's units (microseconds).

    Args:
        units: the model's units.
        total_params: every parameter of the model (unit weights, biases, norms, ...).
        blocks: the blocks a policy may remove (:func:`~compsearch.spaces.depth.removable_blocks`);
            a policy removing any other block raises :class:`PolicyError`.
    """

    def __init__(self, *, units: Sequence[Unit], total_params: int, blocks: Sequence[RemovableBlock] = ()) -> None:
        self.units = {u.name: u for u in units}
        self.blocks = {b.name: b for b in blocks}
        self.total_params = int(total_params)
        self.unit_params = sum(u.params for u in units)
        if self.total_params < self.unit_params:
            raise ConfigError(
                f"total_params={total_params} is smaller than the unit weights ({self.unit_params}); "
                f"pass the parameter count of the whole model"
            )
        identity = {n: unit_cost(u, IDENTITY) for n, u in self.units.items()}
        self._identity_bits = sum(c.bits for c in identity.values())
        self._identity_bops = sum(c.bops for c in identity.values())
        self._identity = identity
        self._memo: dict[tuple[str, UnitPolicy], UnitCost] = {}

    def _unit(self, name: str, up: UnitPolicy) -> UnitCost:
        key = (name, up)
        cost = self._memo.get(key)
        if cost is None:
            cost = self._memo[key] = unit_cost(self.units[name], up)
        return cost

    def __call__(self, policy: Mapping[str, UnitPolicy]) -> dict[str, float]:
        """``size_bits``, ``size_kb``, ``compression_ratio``, ``bops``, ``sparsity`` of ``policy``.

        Raises:
            PolicyError: the policy names a unit this model does not have.
        """
        if isinstance(policy, Policy):
            policy.validate_for(self.units)
        else:
            Policy(policy).validate_for(self.units)
        bits, bops, removed = self._identity_bits, self._identity_bops, 0
        blocks = self._removed_blocks(policy)
        for name, up in policy.items():
            if blocks and isinstance(policy, Policy) and policy.removes(name):
                continue
            base, cost = self._identity[name], self._unit(name, up)
            bits += cost.bits - base.bits
            bops += cost.bops - base.bops
            removed += base.kept - cost.kept
        other = self.total_params - self.unit_params
        for block in blocks:
            gone = [self._identity[n] for n in block.units if n in self._identity]
            bits -= sum(c.bits for c in gone)
            bops -= sum(c.bops for c in gone)
            removed += sum(c.kept for c in gone)
            other -= max(0, block.params - sum(self.units[n].params for n in block.units if n in self.units))
        size_bits = float(bits + 32 * other)
        return {
            "size_bits": size_bits,
            "size_kb": size_bits / 8192.0,
            "compression_ratio": 32.0 * self.total_params / size_bits,
            "bops": float(bops),
            "sparsity": removed / self.unit_params,
        }

    def _removed_blocks(self, policy: Mapping[str, UnitPolicy]) -> list[RemovableBlock]:
        """The blocks ``policy`` removes whose replacement is in force (outermost ones)."""
        if not isinstance(policy, Policy) or not policy.removed:
            return []
        out = []
        for name, shortcut in policy.outer_removed().items():
            block = self.blocks.get(name)
            if block is None:
                raise PolicyError(f"policy removes block {name!r}, which this cost model cannot remove; removable "
                                  f"blocks: {list(self.blocks)[:12] or 'none (the model has none, or none were given)'}")
            if shortcut != block.shortcut:
                raise PolicyError(f"policy replaces removed block {name!r} by {shortcut!r}; the model replaces it by "
                                  f"{block.shortcut!r}")
            out.append(block)
        return out
