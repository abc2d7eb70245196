"""Compression policies: what each unit gets (bits, keep ratio, scheme, granularity, structure),
and their canonical form.

Equivalent policies. Two policies are *equivalent* when they give the same compressed model
and the same cost metrics (``size_bits``, ``bops``, ``sparsity``, ``latency_ms``): evaluating
one tells everything about the other. :meth:`UnitPolicy.canonical` and
:meth:`Policy.canonical` map every policy to one representative of its class, so two
policies are equivalent exactly when their canonical forms are equal. The rules, each
following from how the evaluator and the cost model read a :class:`UnitPolicy`:

1. ``w_bits`` in 16..31 becomes 16: weights of 16 or more bits are not quantized (the
   forward uses the float weight), and ``size_bits``/``bops`` count 16..31 bits as 16
   (half precision). 32 stays 32 (it costs 32 bits).
2. ``a_bits`` in 16..31 becomes 16, for the same reason (the input is not quantized;
   ``bops`` counts 16..31 as 16). 32 stays 32: ``bops`` counts it as 32, so ``a_bits``
   16 and 32 are *not* equivalent.
3. ``w_bits >= 16`` makes ``scheme`` and ``granularity`` irrelevant (they only shape the
   weight grid): they become ``"symmetric"`` and ``"channel"``.
4. ``keep == 1.0`` makes ``structure`` irrelevant (nothing is pruned): it becomes
   ``"channel"``.
5. A unit whose canonical policy is the identity (32-bit weights and inputs, keep 1.0) is
   left out of a canonical :class:`Policy` (a unit left out is left uncompressed).

With the unit known (``units=`` / ``unit=``, as every :class:`~compsearch.spaces.Space`
passes its units), three more rules use its shape:

6. ``keep`` becomes the fraction actually kept, ``k / n``, where ``k =``
   :func:`kept_count` ``(keep, n)`` and ``n`` is the unit's output channels
   (``structure="channel"``) or weight elements (``"unstructured"``): keeps that round to
   the same count prune the same weights (e.g. 0.5 and 0.375 of 4 channels both keep 2,
   canonical 0.5).
7. When every weight is kept (``k == n``, e.g. keep 0.875 of 4 channels) ``keep`` becomes
   1.0, and rule 4 applies.
8. A unit with one output channel makes ``granularity`` irrelevant (one per-channel scale
   is the per-tensor scale): it becomes ``"channel"``.

Nothing else is merged: ``scheme`` of a quantized weight (asymmetric grids have zero
points), ``granularity`` of a multi-channel quantized weight, ``structure`` of a pruned
unit, and ``w_bits``/``a_bits`` below 16 all change the model or its cost.

Removed blocks. A policy of a space that changes depth (``depth``, ``depth+joint``) also
removes whole blocks: :attr:`Policy.removed` maps a block (a module path) to what replaces
it, ``None`` for the identity or the path of the block's shortcut module (the block's output
becomes ``shortcut(input)``, e.g. a ResNet block's ``downsample``). A unit is *removed* when
its name lies under a removed block and not under that block's shortcut
(:meth:`Policy.removes`). Two more canonical rules follow:

9. A removed unit's policy is irrelevant (the block's output no longer depends on it): it
   is left out of the canonical policy.
10. A removed block inside another removed block (not inside that one's shortcut) is
    irrelevant too: it is left out of the canonical ``removed``.

JSON: a policy without removed blocks is written as version 1, ``{"version": 1, "units":
{...}}``, exactly as before; one with removed blocks as version 2, with ``"removed":
{block: shortcut or null}``. Both versions are read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from compsearch.errors import PolicyError

POLICY_VERSION = 2
"""The newest policy JSON version (2: removed blocks); policies without removed blocks are
written as version 1, which every compsearch reads."""
POLICY_VERSIONS = (1, 2)
SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel")
STRUCTURES = ("channel", "unstructured")
#: Bits at or above which weights / inputs are not quantized (kept in float).
FLOAT_BITS = 16


class UnitShape(Protocol):
    """What the canonical form needs of a unit (:class:`~compsearch.spaces.Unit` has it)."""

    name: str
    out_channels: int
    params: int


def kept_count(keep: float, n: int) -> int:
    """Candidates (channels or weights) kept of ``n``: ``max(1, floor(keep * n + 0.5))``, at most
    ``n`` -- the masks' rounding (``compsearch.evaluators.masks.keep_count``)."""
    return min(n, max(1, math.floor(keep * n + 0.5)))


def canonical_bits(bits: int) -> int:
    """16 for 16..31 (float, counted as half precision), else ``bits``."""
    return FLOAT_BITS if FLOAT_BITS <= bits < 32 else bits


@dataclass(frozen=True)
class UnitPolicy:
    """What one unit gets.

    Attributes:
        w_bits: weight bit-width, 1..32; 16 and 32 mean "not quantized" (kept in float).
        a_bits: bit-width of the unit's input activation, 1..32; 16 and 32 mean not quantized.
        keep: fraction of weights kept, in (0, 1]; 1.0 means not pruned.
        scheme: ``"symmetric"`` or ``"asymmetric"`` quantization.
        granularity: ``"tensor"`` (one scale) or ``"channel"`` (one scale per output channel).
        structure: ``"channel"`` (prune whole output channels) or ``"unstructured"``.
    """

    w_bits: int = 32
    a_bits: int = 32
    keep: float = 1.0
    scheme: str = "symmetric"
    granularity: str = "channel"
    structure: str = "channel"

    def __post_init__(self) -> None:
        for field in ("w_bits", "a_bits"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
                raise PolicyError(f"{field}={value!r} is invalid: bits must be an integer in 1..32 (e.g. 4 or 8)")
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) or not 0 < keep <= 1:
            raise PolicyError(f"keep={keep!r} is invalid: the kept fraction must be in (0, 1] (1.0 = no pruning)")
        object.__setattr__(self, "keep", float(keep))
        _check_choice("scheme", self.scheme, SCHEMES)
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_choice("structure", self.structure, STRUCTURES)

    @property
    def quantized(self) -> bool:
        """Weights are fake-quantized (w_bits below 16)."""
        return self.w_bits < 16

    @property
    def act_quantized(self) -> bool:
        """The input activation is fake-quantized (a_bits below 16)."""
        return self.a_bits < 16

    @property
    def pruned(self) -> bool:
        return self.keep < 1.0

    @property
    def is_identity(self) -> bool:
        """Leaves the unit exactly as it was."""
        return not (self.quantized or self.act_quantized or self.pruned)

    def canonical(self, unit: UnitShape | None = None) -> UnitPolicy:
        """The representative of this unit policy's equivalence class (rules 1-4 of the module
        docstring; with ``unit``, rules 6-8 too)."""
        w_bits, a_bits, keep = canonical_bits(self.w_bits), canonical_bits(self.a_bits), self.keep
        scheme, granularity, structure = self.scheme, self.granularity, self.structure
        if unit is not None and keep < 1.0:
            n = unit.out_channels if structure == "channel" else unit.params
            k = kept_count(keep, n)
            keep = 1.0 if k >= n else k / n
        if w_bits >= FLOAT_BITS:
            scheme, granularity = SCHEMES[0], GRANULARITIES[1]
        if unit is not None and unit.out_channels == 1:
            granularity = GRANULARITIES[1]
        if keep >= 1.0:
            structure = STRUCTURES[0]
        return replace(self, w_bits=w_bits, a_bits=a_bits, keep=keep, scheme=scheme, granularity=granularity,
                       structure=structure)


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PolicyError(f"{field}={value!r} is unknown; allowed: {list(allowed)}")


class Policy(Mapping[str, UnitPolicy]):
    """Immutable mapping unit name -> :class:`UnitPolicy`; a unit left out is left uncompressed.

    Args:
        units: mapping of unit name to ``UnitPolicy`` (or a dict of its fields). A ``Policy``
            passed here keeps its removed blocks unless ``removed`` is given.
        removed: removed blocks, block path -> ``None`` (replaced by the identity) or the
            path of its shortcut module (replaced by ``shortcut(input)``); see the module
            docstring. Which blocks a model can lose is checked by the evaluator and the
            ``depth`` space (:mod:`compsearch.spaces.depth`), not here.

    Raises:
        PolicyError: a bad unit policy, a block path that is not a non-empty string, or a
            shortcut that does not lie inside its block.
    """

    __slots__ = ("_items", "_key", "_removed")

    def __init__(self, units: Mapping[str, UnitPolicy | Mapping[str, Any]] | None = None, *,
                 removed: Mapping[str, str | None] | None = None) -> None:
        items: dict[str, UnitPolicy] = {}
        for name, up in (units or {}).items():
            if not isinstance(name, str):
                raise PolicyError(f"unit names must be strings, got {name!r}")
            items[name] = up if isinstance(up, UnitPolicy) else _unit_policy(name, up)
        if removed is None and isinstance(units, Policy):
            removed = units.removed
        self._items = dict(sorted(items.items()))
        self._removed = _check_removed(removed or {})
        units_json = {k: asdict(v) for k, v in self._items.items()}
        # the key of a policy without removed blocks is unchanged from version 1 (stored digests stay valid)
        payload: Any = {"removed": self._removed, "units": units_json} if self._removed else units_json
        self._key = json.dumps(payload, sort_keys=True)

    @classmethod
    def uniform(cls, names: Iterable[str], unit_policy: UnitPolicy) -> Policy:
        """The same ``unit_policy`` for every name in ``names``."""
        return cls({n: unit_policy for n in names})

    def __getitem__(self, name: str) -> UnitPolicy:
        return self._items[name]

    def get_or_identity(self, name: str) -> UnitPolicy:
        """The unit's policy, or the identity policy for a unit left out."""
        return self._items.get(name, IDENTITY)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        extra = f", {len(self._removed)} removed blocks" if self._removed else ""
        return f"Policy({len(self)} units{extra})"

    @property
    def removed(self) -> dict[str, str | None]:
        """Removed blocks: block path -> shortcut module path, or ``None`` for the identity
        (a copy, sorted by block)."""
        return dict(self._removed)

    def removes(self, unit: str) -> bool:
        """Whether unit ``unit`` lies in a removed block and not in that block's shortcut
        (its policy is then irrelevant)."""
        return any(_under(unit, block) and not (short is not None and _under(unit, short))
                   for block, short in self._removed.items())

    def outer_removed(self) -> dict[str, str | None]:
        """The removed blocks that lie in no other removed block (outside its shortcut): the
        ones whose replacement is in force (canonical rule 10)."""
        return {b: s for b, s in self._removed.items()
                if not any(o != b and _under(b, o) and not (so is not None and _under(b, so)) for o, so in self._removed.items())}

    @property
    def key(self) -> str:
        """Canonical string of the policy; equal policies have equal keys."""
        return self._key

    def canonical(self, units: Iterable[UnitShape] | Mapping[str, UnitShape] | None = None) -> Policy:
        """The representative of this policy's equivalence class: every unit policy canonical
        (:meth:`UnitPolicy.canonical`, with its unit when ``units`` names it), identity units
        and units of removed blocks left out, removed blocks inside removed blocks left out
        of ``removed``. Equivalent policies -- the same compressed model and costs -- have equal
        canonical forms (rules in the module docstring).

        Args:
            units: the model's units (``Space.all_units``), for the shape rules 6-8; units
                the policy names but ``units`` lacks get rules 1-5 only.
        """
        shapes = dict(units) if isinstance(units, Mapping) else {u.name: u for u in (units or ())}
        out = {name: up.canonical(shapes.get(name)) for name, up in self._items.items() if not self.removes(name)}
        return Policy({name: up for name, up in out.items() if up != IDENTITY}, removed=self.outer_removed())

    def equivalent(self, other: Policy, units: Iterable[UnitShape] | Mapping[str, UnitShape] | None = None) -> bool:
        """Whether ``self`` and ``other`` have the same canonical form."""
        return self.canonical(units) == other.canonical(units)

    def validate_for(self, unit_names: Iterable[str]) -> Policy:
        """Raise :class:`PolicyError` if the policy names a unit the model does not have."""
        known = set(unit_names)
        missing = sorted(set(self._items) - known)
        if missing:
            raise PolicyError(
                f"policy names unit(s) {missing[:5]} that the model does not have; "
                f"known units: {sorted(known)[:8]}{'...' if len(known) > 8 else ''}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"version": 1, "units": {name: {field: value}}}``, or with removed
        blocks ``{"version": 2, "units": {...}, "removed": {block: shortcut or None}}``."""
        units = {k: asdict(v) for k, v in self._items.items()}
        if not self._removed:
            return {"version": 1, "units": units}
        return {"version": 2, "units": units, "removed": dict(self._removed)}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Inverse of :meth:`to_dict` (versions 1 and 2); rejects unknown versions and fields."""
        if not isinstance(data, Mapping) or "units" not in data:
            raise PolicyError(f"policy data must be a mapping with 'version' and 'units', got {data!r:.80}")
        version = data.get("version")
        if version not in POLICY_VERSIONS or isinstance(version, bool):
            raise PolicyError(f"policy version={version!r} is not supported; this compsearch reads versions "
                              f"{list(POLICY_VERSIONS)}")
        removed = data.get("removed")
        if removed is not None and version < 2:
            raise PolicyError("policy version=1 has no 'removed' blocks; removed blocks need version 2")
        if removed is not None and not isinstance(removed, Mapping):
            raise PolicyError(f"policy 'removed' must map block paths to a shortcut path or null, got {removed!r:.80}")
        return cls(data["units"], removed=removed)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"policy JSON cannot be parsed: {e}") from None
        return cls.from_dict(data)


def _under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or lies inside it (``prefix.``...)."""
    return path == prefix or path.startswith(prefix + ".")


def _check_removed(removed: Mapping[str, str | None]) -> dict[str, str | None]:
    if not isinstance(removed, Mapping):
        raise PolicyError(f"removed={removed!r:.80} must map block paths to a shortcut path or None")
    for block, short in removed.items():
        if not isinstance(block, str) or not block:
            raise PolicyError(f"removed block {block!r} must be a non-empty module path, e.g. 'layer1.1'")
        if short is not None and (not isinstance(short, str) or not short.startswith(block + ".")):
            raise PolicyError(f"removed block {block!r} has shortcut={short!r}; a shortcut is None (the identity) or "
                              f"the path of a module inside the block, e.g. '{block}.downsample'")
    return dict(sorted(removed.items()))


def _unit_policy(name: str, fields: Mapping[str, Any]) -> UnitPolicy:
    if not isinstance(fields, Mapping):
        raise PolicyError(f"policy for unit {name!r} must be a UnitPolicy or a mapping, got {fields!r}")
    allowed = set(UnitPolicy.__dataclass_fields__)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise PolicyError(f"policy for unit {name!r} has unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return UnitPolicy(**fields)


IDENTITY = UnitPolicy()
