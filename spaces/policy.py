"""Compression policies: what each unit gets (bits, keep ratio, scheme, granularity, structure)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from compsearch.errors import PolicyError

POLICY_VERSION = 1
SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel")
STRUCTURES = ("channel", "unstructured")


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


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PolicyError(f"{field}={value!r} is unknown; allowed: {list(allowed)}")


class Policy(Mapping[str, UnitPolicy]):
    """Immutable mapping unit name -> :class:`UnitPolicy`; a unit left out is left uncompressed.

    Args:
        units: mapping of unit name to ``UnitPolicy`` (or a dict of its fields).
    """

    __slots__ = ("_items", "_key")

    def __init__(self, units: Mapping[str, UnitPolicy | Mapping[str, Any]] | None = None) -> None:
        items: dict[str, UnitPolicy] = {}
        for name, up in (units or {}).items():
            if not isinstance(name, str):
                raise PolicyError(f"unit names must be strings, got {name!r}")
            items[name] = up if isinstance(up, UnitPolicy) else _unit_policy(name, up)
        self._items = dict(sorted(items.items()))
        self._key = json.dumps({k: asdict(v) for k, v in self._items.items()}, sort_keys=True)

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
        return f"Policy({len(self)} units)"

    @property
    def key(self) -> str:
        """Canonical string of the policy; equal policies have equal keys."""
        return self._key

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
        """JSON-ready dict: ``{"version": 1, "units": {name: {field: value}}}``."""
        return {"version": POLICY_VERSION, "units": {k: asdict(v) for k, v in self._items.items()}}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Inverse of :meth:`to_dict`; rejects unknown versions and fields."""
        if not isinstance(data, Mapping) or "units" not in data:
            raise PolicyError(f"policy data must be a mapping with 'version' and 'units', got {data!r:.80}")
        version = data.get("version")
        if version != POLICY_VERSION:
            raise PolicyError(f"policy version={version!r} is not supported; this compsearch reads version {POLICY_VERSION}")
        return cls(data["units"])

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"policy JSON cannot be parsed: {e}") from None
        return cls.from_dict(data)


def _unit_policy(name: str, fields: Mapping[str, Any]) -> UnitPolicy:
    if not isinstance(fields, Mapping):
        raise PolicyError(f"policy for unit {name!r} must be a UnitPolicy or a mapping, got {fields!r}")
    allowed = set(UnitPolicy.__dataclass_fields__)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise PolicyError(f"policy for unit {name!r} has unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return UnitPolicy(**fields)


IDENTITY = UnitPolicy()
