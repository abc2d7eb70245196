"""Composed spaces: ``a+b`` searches the choices of registered spaces ``a`` and ``b`` together.

``get_space("depth+joint", units, model=model, example_input=x, w_bits=[4, 8], depth={...})``
builds a :class:`ComposedSpace` whose dimensions are those of ``depth`` followed by those of
``joint``; every view (Optuna distributions, Ray Tune ``param_space``, NNI search space,
``MultiDiscrete`` sizes, features, canonical form) follows from the dimensions as for any space.

**Options.** A keyword named after a part (``depth={...}``, in a spec
``[space.options.depth]``) is a mapping given to that part only. Every other keyword
(``[space.choices]``, ``skip_first``, ``skip_head``, ``[space.options]`` keys) goes to every
part whose constructor takes it; one that no part takes raises ``TypeError`` naming it.

**Disjoint choices.** Which unit fields (or removed blocks) a dimension sets is found by
decoding: a dimension *owns* what changes when it alone changes. Two parts may not own one
unit's field (or one block's removal), and one part may not fix a field another part owns at
a value other than the identity's (e.g. ``joint`` with ``w_bits = [4]`` beside ``quant``):
both raise :class:`~compsearch.errors.ConfigError` naming the parts. ``quant+prune`` (bits
and keep ratios owned by different parts), ``depth+joint``, ``depth+block`` are disjoint;
``joint+quant`` is not.

**Decoding** gives every unit field its owner's value; a field no dimension owns takes the
value the parts fix for it (they must agree, identity values aside), else the identity's; the
removed blocks are the union of the parts'. **Encoding** gives each part the policy's values
of the fields it owns and its own fixed values elsewhere, and checks that the result decodes
back to the policy (else :class:`~compsearch.errors.PolicyError`).

**Groups** (``space.groups``, what strategies map onto model blocks): the union of the parts'
groups, the unit lists of a group both parts name (``depth+block``'s blocks) merged.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from compsearch.errors import ConfigError, PolicyError
from compsearch.spaces.base import SPACES, Dimension, Space
from compsearch.spaces.depth import RemovableBlock
from compsearch.spaces.policy import IDENTITY, Policy, UnitPolicy
from compsearch.spaces.units import Unit

FIELDS = ("w_bits", "a_bits", "keep", "scheme", "granularity", "structure")
Key = tuple[str, str]
"""What a dimension owns: ``(unit name, field)``, or ``("removed", block)``."""


def _accepted(factory: Any) -> set[str] | None:
    """Keyword names ``factory`` takes besides ``units`` (None: it takes any)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"units", "self"}


def _stripped(policy: Policy) -> Policy:
    """``policy`` without explicit identity entries (a unit left out is left uncompressed)."""
    return Policy({n: up for n, up in policy.items() if up != IDENTITY}, removed=policy.removed)


def _changes(a: Policy, b: Policy) -> set[Key]:
    """What differs between two decoded policies: unit fields and removed blocks."""
    out: set[Key] = set()
    for name in set(a) | set(b):
        ua, ub = a.get_or_identity(name), b.get_or_identity(name)
        out |= {(name, f) for f in FIELDS if getattr(ua, f) != getattr(ub, f)}
    ra, rb = a.removed, b.removed
    out |= {("removed", blk) for blk in set(ra) | set(rb) if ra.get(blk, "-") != rb.get(blk, "-")}
    return out


class ComposedSpace(Space):
    """The choices of several registered spaces searched together (module docstring).

    Args:
        units: the model's units.
        parts: registered space names, at least two, distinct (``["depth", "joint"]``).
        model, example_input: passed to the parts that need them (``depth``).
        **options: part-named mappings (that part only) and common keywords (every part that takes them).

    Raises:
        UnknownNameError: a part that is not registered.
        ConfigError: fewer than two or repeated parts, a part option that is not a mapping,
            or parts whose choices overlap.
        TypeError: an option no part takes.
    """

    needs_model = True

    def __init__(self, units: Sequence[Unit], *, parts: Sequence[str], model: Any = None, example_input: Any = None,
                 **options: Any) -> None:
        super().__init__(units)
        names = list(parts)
        label = "+".join(names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"space {label!r}: compose at least two distinct spaces, e.g. 'depth+joint'")
        self.__dict__["name"] = label  # the instance's name; registered spaces have it as a class attribute
        self.parts: tuple[Space, ...] = tuple(self._build(names, options, model, example_input))
        self.part_names = tuple(names)
        self._names = [[d.name for d in p.dimensions()] for p in self.parts]
        self._refs = [p.decode({d.name: d.choices[0] for d in p.dimensions()}) for p in self.parts]
        self._owner = self._ownership()
        self._check_fixed()
        self.groups: dict[str, list[Unit]] = self._groups()
        searched = {u for p in self.parts for u in getattr(p, "units", p.all_units)}
        self.units: tuple[Unit, ...] = tuple(sorted(searched, key=lambda u: u.depth))

    @property
    def label(self) -> str:
        return "+".join(self.part_names)

    @property
    def removable(self) -> tuple[RemovableBlock, ...]:
        return tuple(b for p in self.parts for b in p.removable)

    def _build(self, names: list[str], options: dict[str, Any], model: Any, example_input: Any) -> list[Space]:
        routed = {}
        for n in names:
            if n in options:
                given = options.pop(n)
                if not isinstance(given, Mapping):
                    raise ConfigError(f"space {'+'.join(names)!r}: options.{n} must be a table of {n!r}'s options, got {given!r}")
                routed[n] = dict(given)
        built, used = [], set()
        for n in names:
            factory = SPACES.get(n)
            accepted = _accepted(factory)
            kw = {k: v for k, v in options.items() if accepted is None or k in accepted}
            used |= set(kw)
            kw.update(routed.get(n, {}))
            if getattr(factory, "needs_model", False):
                kw.update(model=model, example_input=example_input)
            try:
                built.append(factory(self.all_units, **kw))
            except TypeError as e:
                raise TypeError(f"space {'+'.join(names)!r}, part {n!r}: {e}") from None
        unused = sorted(set(options) - used)
        if unused:
            raise TypeError(f"space {'+'.join(names)!r}: no part takes option(s) {unused}; give a part's own option "
                            f"under its name, e.g. {names[0]}={{...}} ([space.options.{names[0]}] in a spec)")
        return built

    def _ownership(self) -> dict[Key, int]:
        owner: dict[Key, int] = {}
        seen: dict[str, int] = {}
        for i, part in enumerate(self.parts):
            ref_params = {d.name: d.choices[0] for d in part.dimensions()}
            for d in part.dimensions():
                if d.name in seen:
                    raise ConfigError(f"space {self.label!r}: parts {self.part_names[seen[d.name]]!r} and "
                                      f"{self.part_names[i]!r} both have parameter {d.name!r}")
                seen[d.name] = i
                keys: set[Key] = set()
                for c in d.choices[1:]:
                    keys |= _changes(self._refs[i], part.decode({**ref_params, d.name: c}))
                for key in keys:
                    if owner.get(key, i) != i:
                        what = f"removal of block {key[1]!r}" if key[0] == "removed" else f"{key[1]} of unit {key[0]!r}"
                        raise ConfigError(f"space {self.label!r}: parts {self.part_names[owner[key]]!r} and "
                                          f"{self.part_names[i]!r} both search the {what}; compose spaces over disjoint "
                                          f"choices (e.g. 'quant+prune', 'depth+joint')")
                    owner[key] = i
        return owner

    def _check_fixed(self) -> None:
        """No part fixes a non-identity value that another part searches or fixes differently."""
        for name in {n for ref in self._refs for n in ref}:
            for f in FIELDS:
                default = getattr(IDENTITY, f)
                fixed = {i: getattr(ref.get_or_identity(name), f) for i, ref in enumerate(self._refs)
                         if self._owner.get((name, f)) != i and getattr(ref.get_or_identity(name), f) != default}
                owner = self._owner.get((name, f))
                if fixed and (owner is not None or len(set(fixed.values())) > 1):
                    i, value = next(iter(fixed.items()))
                    other = self.part_names[owner] if owner is not None else "another part"
                    raise ConfigError(f"space {self.label!r}: part {self.part_names[i]!r} fixes {f}={value!r} of unit "
                                      f"{name!r}, which {other!r} also sets; give that field one choice in one part only")

    def _groups(self) -> dict[str, list[Unit]]:
        out: dict[str, dict[str, Unit]] = {}
        for part in self.parts:
            for g, members in getattr(part, "groups", {}).items():
                out.setdefault(g, {}).update({u.name: u for u in members})
        return {g: sorted(m.values(), key=lambda u: u.depth) for g, m in out.items()}

    # ---- the space contract ----------------------------------------------------------------
    def dimensions(self) -> list[Dimension]:
        return [d for p in self.parts for d in p.dimensions()]

    def decode(self, params: Mapping[str, Any]) -> Policy:
        self._check_params(params)
        subs = [p.decode({n: params[n] for n in names}) for p, names in zip(self.parts, self._names, strict=True)]
        merged: dict[str, UnitPolicy] = {}
        for name in sorted({n for s in subs for n in s}):
            fields: dict[str, Any] = {}
            for f in FIELDS:
                owner = self._owner.get((name, f))
                if owner is not None:
                    fields[f] = getattr(subs[owner].get_or_identity(name), f)
                    continue
                values = {getattr(s.get_or_identity(name), f) for s in subs} - {getattr(IDENTITY, f)}
                if len(values) > 1:
                    raise PolicyError(f"space {self.label!r}: its parts give unit {name!r} different {f} {sorted(map(str, values))}")
                fields[f] = values.pop() if values else getattr(IDENTITY, f)
            merged[name] = UnitPolicy(**fields)
        removed: dict[str, str | None] = {}
        for s in subs:
            removed.update(s.removed)
        return Policy(merged, removed=removed)

    def encode(self, policy: Policy) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for i, (part, ref) in enumerate(zip(self.parts, self._refs, strict=True)):
            units = {}
            for name, base in ref.items():
                current = policy.get_or_identity(name)
                units[name] = UnitPolicy(**{f: getattr(current if self._owner.get((name, f)) == i else base, f) for f in FIELDS})
            removed = {b: s for b, s in policy.removed.items() if self._owner.get(("removed", b)) == i}
            params.update(part.encode(Policy(units, removed=removed)))
        back = _stripped(self.decode(params))
        if back != _stripped(policy):
            raise PolicyError(f"space {self.label!r} cannot express this policy: {self._difference(back, _stripped(policy))}")
        return params

    @staticmethod
    def _difference(got: Policy, want: Policy) -> str:
        for b in sorted(set(got.removed) ^ set(want.removed)):
            return f"block {b!r} cannot be removed by any part" if b in want.removed else f"block {b!r} must be removed"
        for name in sorted(set(got) | set(want)):
            if got.get_or_identity(name) != want.get_or_identity(name):
                return f"unit {name!r} gets {want.get_or_identity(name)}, the nearest the parts express is {got.get_or_identity(name)}"
        return "the removed blocks' shortcuts differ"


__all__ = ["ComposedSpace"]
