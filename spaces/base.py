"""The search-space contract and its registry.

A space turns a flat dict of named discrete choices ("params", what Optuna, Ray
Tune and NNI see) into a :class:`Policy` and back. Every space is described by a
list of :class:`Dimension` objects; all the host-specific views (Optuna
distributions, Ray Tune ``param_space``, NNI search space, RL action sizes,
surrogate features) derive from it, so a new space only writes
``dimensions``, ``decode`` and ``encode``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from compsearch.errors import ConfigError, PolicyError
from compsearch.registry import Registry
from compsearch.spaces.policy import Policy
from compsearch.spaces.units import Unit

if TYPE_CHECKING:
    from compsearch.spaces.depth import RemovableBlock

Choice = int | float | str


@dataclass(frozen=True)
class Dimension:
    """One discrete choice of a space.

    Attributes:
        name: parameter name (``"layer1.0.conv1.w_bits"``, ``"layer1.0.keep"``, ...), what
            Optuna, Ray Tune and NNI see. Never parsed: ``group`` and ``field`` say what it sets.
        choices: allowed values, in order.
        ordinal: the choices are ordered numbers (featurized as ``index / (n - 1)`` in [0, 1]);
            otherwise categorical (featurized one-hot).
        group: the unit group the choice applies to (a unit name, a block name, or ``""`` for
            every searched unit); ``space.groups[group]`` lists its units when the space has groups.
        field: what the choice sets: a :class:`UnitPolicy` field (``w_bits``, ``keep``, ...) or a
            space-specific name (e.g. ``remove`` for a block's keep/remove choice).
    """

    name: str
    choices: tuple[Choice, ...]
    ordinal: bool
    group: str
    field: str

    @property
    def size(self) -> int:
        return len(self.choices)

    def index(self, value: Choice) -> int:
        for i, c in enumerate(self.choices):
            if c == value or (isinstance(c, float) and isinstance(value, (int, float)) and abs(c - value) < 1e-9):
                return i
        raise PolicyError(f"parameter {self.name!r} = {value!r} is not one of its choices {list(self.choices)}")


class Space(ABC):
    """A pluggable set of discrete compression choices over units.

    Args:
        units: the model's units (from :func:`discover_units`).
    """

    name: ClassVar[str] = ""
    #: the constructor takes ``model=`` and ``example_input=`` (:func:`get_space` passes them)
    needs_model: ClassVar[bool] = False

    def __init__(self, units: Sequence[Unit]) -> None:
        if not units:
            raise ConfigError("units is empty: a space needs at least one unit from discover_units()")
        self.all_units: tuple[Unit, ...] = tuple(units)

    @abstractmethod
    def dimensions(self) -> list[Dimension]:
        """The searched choices, in a fixed order (also the RL action order)."""

    @abstractmethod
    def decode(self, params: Mapping[str, Any]) -> Policy:
        """Policy from a full params dict (one value per dimension)."""

    @abstractmethod
    def encode(self, policy: Policy) -> dict[str, Any]:
        """Params dict from a policy this space can express; ``decode(encode(p)) == p``."""

    @property
    def removable(self) -> tuple[RemovableBlock, ...]:
        """The blocks this space may remove (``depth`` and compositions with it); empty for a
        space that keeps the architecture. Cost oracles without an evaluator read it."""
        return ()

    # ---- derived views -------------------------------------------------------------
    def param_names(self) -> list[str]:
        return [d.name for d in self.dimensions()]

    def optuna_distributions(self) -> dict[str, Any]:
        """``{param: optuna.distributions.CategoricalDistribution}``."""
        from optuna.distributions import CategoricalDistribution

        return {d.name: CategoricalDistribution(list(d.choices)) for d in self.dimensions()}

    def suggest(self, trial: Any) -> Policy:
        """Ask an Optuna trial for every dimension and decode the answer."""
        params = {d.name: trial.suggest_categorical(d.name, list(d.choices)) for d in self.dimensions()}
        return self.decode(params)

    def tune_param_space(self) -> dict[str, Any]:
        """Ray Tune ``param_space`` (``tune.choice`` per dimension); imports ray lazily."""
        from ray import tune

        return {d.name: tune.choice(list(d.choices)) for d in self.dimensions()}

    def nni_search_space(self) -> dict[str, dict[str, Any]]:
        """NNI search space: ``{param: {"_type": "choice", "_value": [...]}}``."""
        return {d.name: {"_type": "choice", "_value": list(d.choices)} for d in self.dimensions()}

    def action_sizes(self) -> list[int]:
        """``MultiDiscrete`` sizes, one per dimension."""
        return [d.size for d in self.dimensions()]

    def params_from_actions(self, actions: Sequence[int]) -> dict[str, Any]:
        """Params from one choice index per dimension."""
        dims = self.dimensions()
        if len(actions) != len(dims):
            raise ConfigError(f"actions has {len(actions)} entries; this space has {len(dims)} dimensions")
        return {d.name: d.choices[int(a)] for d, a in zip(dims, actions, strict=True)}

    def actions_from_params(self, params: Mapping[str, Any]) -> list[int]:
        """Choice index per dimension (inverse of :meth:`params_from_actions`)."""
        return [d.index(params[d.name]) for d in self.dimensions()]

    def feature_names(self) -> list[str]:
        names: list[str] = []
        for d in self.dimensions():
            names += [d.name] if d.ordinal else [f"{d.name}={c}" for c in d.choices]
        return names

    def features(self, policy: Policy) -> np.ndarray:
        """Numeric vector for surrogates, shape ``d``: ordinal choices as ``index / (n-1)``
        in [0, 1] (0 for a single choice), categorical ones one-hot."""
        return self.features_from_params(self.encode(policy))

    def features_from_params(self, params: Mapping[str, Any]) -> np.ndarray:
        out: list[float] = []
        for d in self.dimensions():
            i = d.index(params[d.name])
            if d.ordinal:
                out.append(i / (d.size - 1) if d.size > 1 else 0.0)
            else:
                out += [1.0 if j == i else 0.0 for j in range(d.size)]
        return np.asarray(out, dtype=np.float64)

    def sample(self, rng: np.random.Generator) -> Policy:
        """A uniformly random policy of this space."""
        return self.decode(self.params_from_actions([int(rng.integers(n)) for n in self.action_sizes()]))

    # ---- equivalent policies (rules in :mod:`compsearch.spaces.policy`) ------------------
    def canonical(self, policy: Policy) -> Policy:
        """``policy``'s canonical form over this space's units (shape rules included)."""
        return policy.canonical(self.all_units)

    def canonical_key(self, params: Mapping[str, Any]) -> str:
        """The canonical policy key of ``params``: equal exactly for equivalent params.
        Memoized per params (a strategy asks it for every finished trial at every proposal)."""
        cache: dict[tuple[tuple[str, Any], ...], str] = self.__dict__.setdefault("_canonical_keys", {})
        key = tuple(sorted(params.items()))
        if key not in cache:
            if len(cache) >= 100_000:
                cache.clear()
            cache[key] = self.canonical(self.decode(params)).key
        return cache[key]

    def canonical_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The representative params of ``params``' equivalence class: each dimension in turn
        takes the first choice (in choice order) that leaves the canonical policy unchanged,
        repeated until nothing changes (every change moves to an earlier choice, so it ends).
        E.g. the ``structure`` of a unit with keep 1.0 becomes the first structure choice.
        Equivalent params give one representative in the built-in spaces (tested
        exhaustively); a pass costs one decode per choice of every dimension."""
        out = dict(params)
        target = self.canonical_key(out)
        changed = True
        while changed:
            changed = False
            for dim in self.dimensions():
                for choice in dim.choices:
                    if choice == out[dim.name]:
                        break
                    trial = {**out, dim.name: choice}
                    if self.canonical_key(trial) == target:
                        out, changed = trial, True
                        break
        return out

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` holds exactly this space's parameters, each with a valid choice."""
        dims = self.dimensions()
        if set(params) != {d.name for d in dims}:
            return False
        try:
            self.actions_from_params(params)
        except PolicyError:
            return False
        return True

    def _check_params(self, params: Mapping[str, Any]) -> None:
        missing = [d.name for d in self.dimensions() if d.name not in params]
        if missing:
            raise PolicyError(f"params lack {len(missing)} parameter(s) of space {self.name!r}, e.g. {missing[:3]}")


SPACES: Registry[Callable[..., Space]] = Registry("space")


def register_space(name: str) -> Callable[[type[Space]], type[Space]]:
    """Class decorator registering a :class:`Space` subclass under ``name``.

    Example::

        @register_space("my-space")
        class MySpace(Space): ...
    """

    def deco(cls: type[Space]) -> type[Space]:
        SPACES.register(name, cls)
        cls.name = name
        return cls

    return deco


def get_space(name: str, units: Sequence[Unit], *, model: Any = None, example_input: Any = None, **choices: Any) -> Space:
    """Build the space registered as ``name`` over ``units``; ``choices`` go to its constructor.

    ``"a+b"`` composes registered spaces over disjoint choices
    (:class:`~compsearch.spaces.compose.ComposedSpace`: ``depth+joint``, ``quant+prune``, ...).
    ``model`` and ``example_input`` are the context a space may need (the ``depth`` space finds
    removable blocks with them); spaces that do not need them never see them.
    """
    if "+" in name:
        from compsearch.spaces.compose import ComposedSpace

        return ComposedSpace(units, parts=name.split("+"), model=model, example_input=example_input, **choices)
    factory = SPACES.get(name)
    if getattr(factory, "needs_model", False):
        return factory(units, model=model, example_input=example_input, **choices)
    return factory(units, **choices)


def list_spaces() -> list[str]:
    """Registered space names (compositions ``a+b`` of them are not listed)."""
    return SPACES.names()


def check_space_name(name: str) -> str:
    """``name`` if it is a registered space or a composition ``a+b`` of distinct registered
    spaces, else :class:`~compsearch.errors.UnknownNameError` / :class:`ConfigError`."""
    parts = name.split("+")
    for part in parts:
        SPACES.get(part)
    if len(set(parts)) != len(parts):
        raise ConfigError(f"space {name!r} names a part twice; compose distinct spaces, e.g. 'depth+joint'")
    return name
