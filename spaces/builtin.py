"""Built-in spaces: ``joint`` (per unit), ``block`` (tied per block), ``uniform`` (one
global choice), ``quant`` (bits only) and ``prune`` (keep ratio only).

They differ in what is tied (unit, block, or everything) and in their default
choices, so one class, :class:`TiedSpace`, implements them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from compsearch.errors import ConfigError, PolicyError
from compsearch.spaces.base import Choice, Dimension, Space, register_space
from compsearch.spaces.policy import (
    GRANULARITIES,
    IDENTITY,
    SCHEMES,
    STRUCTURES,
    Policy,
    UnitPolicy,
)
from compsearch.spaces.units import FUNCTIONAL, Unit, group_blocks

DEFAULT_W_BITS = (2, 3, 4, 5, 6, 8, 32)
DEFAULT_A_BITS = (8, 32)
DEFAULT_KEEP = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
FIELDS = ("w_bits", "a_bits", "keep", "scheme", "granularity", "structure")
ORDINAL = frozenset({"w_bits", "a_bits", "keep"})


def _normalize(field: str, values: Sequence[Choice] | Choice) -> tuple[Choice, ...]:
    seq = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not seq:
        raise ConfigError(f"choices for {field} are empty; give at least one value")
    if len(set(seq)) != len(seq):
        raise ConfigError(f"choices for {field}={list(seq)} contain duplicates")
    for v in seq:  # validate every value through UnitPolicy's own checks
        UnitPolicy(**{field: v})
    if field in ORDINAL:
        seq = tuple(sorted(float(v) if field == "keep" else int(v) for v in seq))
    return seq


class TiedSpace(Space):
    """Per-unit choices of bits, keep ratio, scheme, granularity and structure, tied
    within a group (a unit, a block, or the whole model).

    A field with a single choice is fixed (no parameter is emitted for it).

    Args:
        units: the model's units.
        w_bits: weight bit-width choices (32 = not quantized).
        a_bits: input-activation bit-width choices (a group holding a functional unit,
            ``Unit.use == "functional"``, keeps its inputs at 32 bits: no ``a_bits`` dimension).
        keep: kept-fraction choices in (0, 1].
        scheme: ``symmetric`` / ``asymmetric``.
        granularity: ``tensor`` / ``channel``.
        structure: ``channel`` / ``unstructured`` pruning.
        skip_first: leave the first executed unit (the stem) uncompressed.
        skip_head: leave the classifier head uncompressed.
    """

    tie: ClassVar[str] = "unit"
    defaults: ClassVar[dict[str, tuple[Choice, ...]]] = {
        "w_bits": DEFAULT_W_BITS,
        "a_bits": DEFAULT_A_BITS,
        "keep": DEFAULT_KEEP,
        "scheme": SCHEMES,
        "granularity": GRANULARITIES,
        "structure": STRUCTURES,
    }

    def __init__(
        self,
        units: Sequence[Unit],
        *,
        w_bits: Sequence[int] | int | None = None,
        a_bits: Sequence[int] | int | None = None,
        keep: Sequence[float] | float | None = None,
        scheme: Sequence[str] | str | None = None,
        granularity: Sequence[str] | str | None = None,
        structure: Sequence[str] | str | None = None,
        skip_first: bool = True,
        skip_head: bool = True,
    ) -> None:
        super().__init__(units)
        given = dict(w_bits=w_bits, a_bits=a_bits, keep=keep, scheme=scheme, granularity=granularity, structure=structure)
        self.choices: dict[str, tuple[Choice, ...]] = {
            f: _normalize(f, v if v is not None else self.defaults[f]) for f, v in given.items()
        }
        self.units: tuple[Unit, ...] = tuple(
            u for u in self.all_units if not (skip_first and u.is_first) and not (skip_head and u.is_head)
        )
        if not self.units:
            raise ConfigError(
                f"space {self.name!r}: skip_first={skip_first}/skip_head={skip_head} leave no unit to search; "
                f"pass skip_first=False or skip_head=False"
            )
        self.groups: dict[str, list[Unit]] = self._groups()
        self._dims = [
            self._dim(g, f)
            for g in self.groups
            for f in FIELDS
            if len(self._group_choices(g, f)) > 1
        ]

    def _groups(self) -> dict[str, list[Unit]]:
        if self.tie == "unit":
            return {u.name: [u] for u in self.units}
        if self.tie == "block":
            return group_blocks(self.units)
        return {"": list(self.units)}

    @staticmethod
    def _param(group: str, field: str) -> str:
        return f"{group}.{field}" if group else field

    def _dim(self, group: str, field: str) -> Dimension:
        return Dimension(self._param(group, field), self._group_choices(group, field), field in ORDINAL, group=group,
                         field=field)

    def _group_choices(self, group: str, field: str) -> tuple[Choice, ...]:
        """The field's choices for ``group``: input quantization is not offered (32 bits) to a
        group holding a functional unit, whose input the evaluator cannot quantize."""
        if field == "a_bits" and any(u.use == FUNCTIONAL for u in self.groups[group]):
            return (32,)
        return self.choices[field]

    def dimensions(self) -> list[Dimension]:
        return list(self._dims)

    def decode(self, params: Mapping[str, Any]) -> Policy:
        self._check_params(params)
        units: dict[str, UnitPolicy] = {}
        for g, members in self.groups.items():
            fields = {}
            for f in FIELDS:
                dim = self._dim(g, f)
                value = dim.choices[0] if dim.size == 1 else params[dim.name]
                fields[f] = dim.choices[dim.index(value)]
            up = UnitPolicy(**fields)  # type: ignore[arg-type]
            units.update({u.name: up for u in members})
        return Policy(units)

    def encode(self, policy: Policy) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for g, members in self.groups.items():
            ups = {policy.get_or_identity(u.name) for u in members}
            if len(ups) > 1:
                raise PolicyError(f"space {self.name!r} ties group {g or 'all units'!r}, but the policy gives its units different settings")
            up = ups.pop()
            for f in FIELDS:
                dim = self._dim(g, f)
                value = dim.choices[dim.index(getattr(up, f))]
                if dim.size > 1:
                    params[dim.name] = value
        outside = [n for n, up in policy.items() if n not in {u.name for u in self.units} and up != IDENTITY]
        if outside:
            raise PolicyError(f"space {self.name!r} does not search unit(s) {outside[:3]}, but the policy compresses them")
        return params


@register_space("joint")
class JointSpace(TiedSpace):
    """Every field searched independently for every unit."""


@register_space("block")
class BlockSpace(TiedSpace):
    """Every field searched per block; the units of a block share one setting."""

    tie = "block"


@register_space("uniform")
class UniformSpace(TiedSpace):
    """One setting for all searched units."""

    tie = "global"


@register_space("quant")
class QuantSpace(TiedSpace):
    """Per-unit quantization only: keep fixed at 1.0."""

    defaults = {**TiedSpace.defaults, "keep": (1.0,), "structure": ("channel",)}


@register_space("prune")
class PruneSpace(TiedSpace):
    """Per-unit pruning only: bits fixed at 32."""

    defaults = {**TiedSpace.defaults, "w_bits": (32,), "a_bits": (32,), "scheme": ("symmetric",), "granularity": ("channel",)}
