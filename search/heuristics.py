"""Heuristic baselines as real strategies: fixed-policy anchors and a HAWQ-like greedy sweep.

Both are :class:`~compsearch.search.common.CompressionSampler` subclasses, so they
fall back to independent sampling outside their space and rebuild their state
from the study's trials (they keep none: every proposal is a function of the
space, the evaluator and the set of policies already tried).

* :class:`AnchorSampler` (``uniform8`` / ``uniform4``): proposes one fixed policy
  first, then its nearest neighbours (one dimension changed at a time).
* :class:`GreedySensitivitySampler` (``greedy-sensitivity``): walks a greedy
  trajectory from the mildest to the most aggressive policy, spending bits and
  kept weights on the units with the highest Fisher sensitivity per parameter,
  and proposes the point of that trajectory that meets a budget swept from mild
  to aggressive over the trials.

The maths (choice targets, neighbour order, damage model, greedy trajectory) are
plain functions; the sampler classes are thin shells.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError
from compsearch.search.common import (
    CompressionSampler,
    Observation,
    space_params,
    tried_keys,
)
from compsearch.search.registry import SearchContext
from compsearch.spaces.base import Choice, Dimension, Space
from compsearch.spaces.policy import Policy, UnitPolicy
from compsearch.spaces.units import Unit

if TYPE_CHECKING:
    from optuna.study import Study

FIELDS = ("w_bits", "a_bits", "keep", "scheme", "granularity", "structure")
PREFERRED = {"scheme": "symmetric", "granularity": "channel", "structure": "channel"}
"""Categorical settings every heuristic prefers (per-channel symmetric, channel pruning)."""
FLOAT_BITS = 32
"""Bits per weight of a unit left in floating point (``w_bits >= 16``)."""
Key = str
"""A canonical policy key (``Space.canonical_key``): equivalent policies share one."""


# ---- choice targets and neighbourhoods ---------------------------------------------------
def dimension_field(dim: Dimension) -> str | None:
    """The :class:`UnitPolicy` field a dimension sets (``dim.field``); ``None`` for a
    space-specific field that is no UnitPolicy field."""
    return dim.field if dim.field in FIELDS else None


def nearest_index(dim: Dimension, target: Choice | None) -> int:
    """Index of the choice of ``dim`` nearest to ``target``.

    Ordinal dimensions take the numerically nearest choice, ties to the larger (milder)
    value; categorical ones take ``target`` if offered, else their first choice. Without a
    target, ordinal dimensions take their largest choice (the mildest, for bits and keep)
    and categorical ones their first.
    """
    if dim.ordinal:
        if target is None:
            return dim.size - 1
        t = float(target)  # type: ignore[arg-type]
        return min(range(dim.size), key=lambda i: (abs(float(dim.choices[i]) - t), -float(dim.choices[i])))  # type: ignore[arg-type]
    return dim.choices.index(target) if target in dim.choices else 0


def searched_unit_names(space: Space) -> list[str]:
    """Names of the units a space compresses (``space.units`` when it has it, else all)."""
    return [u.name for u in getattr(space, "units", space.all_units)]


def target_params(space: Space, unit_policy: UnitPolicy) -> dict[str, Any]:
    """Params of the policy giving ``unit_policy`` to every searched unit.

    If the space can express it exactly (``space.encode`` succeeds), those params;
    otherwise, per dimension, the choice nearest to the field's target value
    (:func:`nearest_index`); a field the space fixes keeps its fixed value.
    """
    try:
        return space.encode(Policy.uniform(searched_unit_names(space), unit_policy))
    except ValueError:  # PolicyError / ConfigError: the space cannot express it exactly
        pass
    out = {}
    for dim in space.dimensions():
        field = dimension_field(dim)
        out[dim.name] = dim.choices[nearest_index(dim, None if field is None else getattr(unit_policy, field))]
    return out


def _ring(node: tuple[int, ...], dims: Sequence[Dimension]) -> Iterator[tuple[int, ...]]:
    """Every point differing from ``node`` in one dimension, ordered by index distance,
    then dimension order, then lower index first (categorical choices are at distance 1)."""
    for dist in range(1, max(d.size for d in dims)):
        for i, dim in enumerate(dims):
            if dim.ordinal:
                candidates = [node[i] - dist, node[i] + dist]
            else:
                candidates = [j for j in range(dim.size) if j != node[i]] if dist == 1 else []
            for j in candidates:
                if 0 <= j < dim.size:
                    yield node[:i] + (j,) + node[i + 1 :]


def neighbour_order(start: tuple[int, ...], dims: Sequence[Dimension]) -> Iterator[tuple[int, ...]]:
    """Breadth-first walk of the space from ``start`` (choice indices, shape ``d``).

    Yields ``start``, then all points with one dimension changed (in :func:`_ring`
    order), then two, and so on; every point once. Deterministic.
    """
    seen = {start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        yield node
        for nb in _ring(node, dims):
            if nb not in seen:
                seen.add(nb)
                queue.append(nb)


def first_untried(
    starts: Sequence[tuple[int, ...]], dims: Sequence[Dimension], space: Space, tried: set[Key]
) -> dict[str, Any] | None:
    """Params of the first untried point (no equivalent policy in ``tried``, canonical keys
    from :func:`~compsearch.search.common.tried_keys`): ``starts`` in order, then the
    neighbour walk (:func:`neighbour_order`) of the first start. ``None`` if the space is
    exhausted."""
    walk: Iterator[tuple[int, ...]] = iter(starts)
    if starts:
        walk = _chain(walk, neighbour_order(starts[0], dims))
    for idx in walk:
        params = space.params_from_actions(idx)
        if space.canonical_key(params) not in tried:
            return params
    return None


def _chain(*its: Iterator[tuple[int, ...]]) -> Iterator[tuple[int, ...]]:
    for it in its:
        yield from it


# ---- fixed-policy anchors -----------------------------------------------------------------
class AnchorSampler(CompressionSampler):
    """One fixed policy first, then its nearest neighbours.

    The anchor gives every searched unit ``anchor`` (for ``uniform8``: 8-bit weights,
    8-bit activations, keep 1.0, per-channel symmetric). If the space cannot express it,
    each dimension takes its nearest choice (:func:`target_params`: numerically nearest
    for bits and keep, ties to the milder value; a fixed field keeps its fixed value, so a
    space without searched ``a_bits`` keeps its fixed activation bits).

    A budget has more trials than one policy, so later trials walk the anchor's
    neighbourhood breadth-first (:func:`neighbour_order`): every policy with one
    dimension changed (nearest index first, then dimension order, the more compressed
    side first), then two dimensions, ...; a policy already finished (any state) or
    pending is never proposed again. Only once the whole space is exhausted does it
    propose uniformly random (possibly repeated) policies.

    Args:
        ctx: search context (space, seed).
        anchor: the unit policy given to every searched unit.
    """

    def __init__(self, ctx: SearchContext, *, anchor: UnitPolicy) -> None:
        super().__init__(ctx)
        self.anchor = anchor
        self._dims = self.space.dimensions()
        self.anchor_params = target_params(self.space, anchor)
        self._start = tuple(self.space.actions_from_params(self.anchor_params))

    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        tried = tried_keys(study, self.space, pending)
        found = first_untried([self._start], self._dims, self.space, tried)
        return found if found is not None else self.random_params()


# ---- HAWQ-like greedy sensitivity allocation -----------------------------------------------
def perturbation(bits: int) -> float:
    """Relative perturbation energy of ``bits``-bit uniform quantization,
    ``eps(b) = 3 / (2^b - 1)^2`` (rounding noise ``step^2 / 12`` with ``step = 6 sigma / (2^b - 1)``,
    over the weight variance ``sigma^2``); 0 for floating point (``b >= 16``)."""
    return 0.0 if bits >= 16 else 3.0 / (2.0**bits - 1.0) ** 2


def unit_damage(sens: float, up: UnitPolicy) -> float:
    """Second-order loss-increase estimate of one unit, ``F_u * (eps(w_bits) + eps(a_bits) + (1 - keep))``,
    with ``F_u`` the unit's Fisher sensitivity (sum of squared gradients) and
    ``1 - keep`` the energy fraction removed by pruning (an upper bound for magnitude pruning)."""
    return sens * (perturbation(up.w_bits) + perturbation(up.a_bits) + (1.0 - up.keep))


def unit_size_bits(u: Unit, up: UnitPolicy) -> float:
    """Estimated bits of one unit: ``params * keep * w_bits`` (32 bits when not quantized)
    plus 32 bits per bias element. Ignores quantization scales and pruning masks."""
    bits = up.w_bits if up.quantized else FLOAT_BITS
    return u.params * up.keep * bits + FLOAT_BITS * u.bias_params


def unit_bops(u: Unit, up: UnitPolicy) -> float:
    """Estimated bit-operations of one unit: ``macs * keep * w_bits * a_bits`` (32 when not quantized)."""
    wb = up.w_bits if up.quantized else FLOAT_BITS
    ab = up.a_bits if up.act_quantized else FLOAT_BITS
    return u.macs * up.keep * wb * ab


ESTIMATES = {"size_bits": unit_size_bits, "bops": unit_bops}


@dataclass(frozen=True)
class Step:
    """One point of the greedy trajectory.

    Attributes:
        actions: choice index per dimension, shape ``d``.
        cost: the budget metric of its policy (exact with an evaluator, else the estimate).
    """

    actions: tuple[int, ...]
    cost: float


class GreedyAllocator:
    """The greedy trajectory of HAWQ-like allocation over a space.

    Starting from the mildest point (every ordinal dimension at its largest choice,
    categorical ones at :data:`PREFERRED`), each step lowers one ordinal dimension by one
    choice: the move with the smallest damage increase per unit of estimated cost saved,
    ``(D(new) - D(old)) / (C(old) - C(new))`` with ``D`` the sum of :func:`unit_damage` and
    ``C`` the estimated metric (:func:`unit_size_bits` or :func:`unit_bops`). As damage is
    ``F_u * eps`` and cost saved is proportional to the unit's parameters, units with the
    lowest Fisher sensitivity per parameter lose bits and kept weights first. Moves that
    save nothing (e.g. ``a_bits`` when the metric is size) are never taken.

    Args:
        space: the space to walk.
        sensitivity: unit name -> Fisher sensitivity (units missing from it count 0).
        metric: ``"size_bits"`` or ``"bops"``.
    """

    def __init__(self, space: Space, *, sensitivity: Mapping[str, float], metric: str) -> None:
        if metric not in ESTIMATES:
            raise ConfigError(f"metric={metric!r} is not supported by greedy-sensitivity; allowed: {sorted(ESTIMATES)}")
        self.space = space
        self.dims = space.dimensions()
        self.sensitivity = dict(sensitivity)
        self.estimate = ESTIMATES[metric]
        self.units = {u.name: u for u in space.all_units}
        start = []
        for d in self.dims:
            field = dimension_field(d)
            start.append(nearest_index(d, PREFERRED.get(field) if field else None))
        self.start = tuple(start)
        self._members = self._dimension_units()

    def _policy(self, actions: Sequence[int]) -> Policy:
        return self.space.decode(self.space.params_from_actions(actions))

    def _dimension_units(self) -> list[list[str]]:
        """Per dimension, the units whose policy it changes (found by decoding a change)."""
        base = self._policy(self.start)
        out = []
        for i, d in enumerate(self.dims):
            other = self.start[:i] + ((self.start[i] + 1) % d.size,) + self.start[i + 1 :]
            changed = self._policy(other)
            out.append([n for n in self.units if base.get_or_identity(n) != changed.get_or_identity(n)])
        return out

    def _terms(self, policy: Policy, names: Sequence[str]) -> tuple[float, float]:
        damage = sum(unit_damage(self.sensitivity.get(n, 0.0), policy.get_or_identity(n)) for n in names)
        cost = sum(self.estimate(self.units[n], policy.get_or_identity(n)) for n in names)
        return damage, cost

    def _ratio(self, actions: tuple[int, ...], i: int, policy: Policy) -> float | None:
        """Damage added per estimated cost saved by lowering dimension ``i`` one choice;
        None if it cannot be lowered or saves nothing."""
        if not self.dims[i].ordinal or actions[i] == 0:
            return None
        names = self._members[i]
        d0, c0 = self._terms(policy, names)
        d1, c1 = self._terms(self._policy(_lowered(actions, i)), names)
        return (d1 - d0) / (c0 - c1) if c0 - c1 > 0 else None

    def trajectory(self) -> list[tuple[int, ...]]:
        """Points from the mildest to the most aggressive, one greedy move apart.

        A move's ratio only depends on the units it touches, so after each move only the
        dimensions sharing a unit with the moved one are re-scored.
        """
        actions = self.start
        path = [actions]
        policy = self._policy(actions)
        ratios = {i: self._ratio(actions, i, policy) for i in range(len(self.dims))}
        while True:
            live = [(r, i) for i, r in ratios.items() if r is not None]
            if not live:
                return path
            i = min(live)[1]  # ties: the first dimension
            actions = _lowered(actions, i)
            path.append(actions)
            policy = self._policy(actions)
            touched = set(self._members[i])
            for j in range(len(self.dims)):
                if j == i or touched.intersection(self._members[j]):
                    ratios[j] = self._ratio(actions, j, policy)


def _lowered(actions: tuple[int, ...], i: int) -> tuple[int, ...]:
    return actions[:i] + (actions[i] - 1,) + actions[i + 1 :]


def sweep_budget(high: float, low: float, i: int, n: int) -> float:
    """Budget of trial ``i`` of ``n``: geometric interpolation from ``high`` (mild) to ``low``
    (aggressive), ``high^(1-f) * low^f`` with ``f = (i mod n + 1) / n``; trial ``n - 1`` gets ``low``."""
    f = (i % n + 1) / n
    if high <= 0 or low <= 0:
        return high + f * (low - high)
    return math.exp((1 - f) * math.log(high) + f * math.log(low))


def budget_cap(constraints: Mapping[str, float], metric: str) -> float | None:
    """The bound a study constraint puts on ``metric`` (``max_size_bits``, ``max_size_kb`` with
    1 KiB = 8192 bits, ``max_bops``), or None."""
    if metric == "size_bits":
        caps = [constraints[k] * s for k, s in (("max_size_bits", 1.0), ("max_size_kb", 8192.0)) if k in constraints]
    else:
        caps = [constraints[k] for k in ("max_bops",) if k in constraints]
    return min(caps) if caps else None


class GreedySensitivitySampler(CompressionSampler):
    """HAWQ-like allocation swept over budgets (``greedy-sensitivity``).

    Sensitivity is ``ctx.evaluator.sensitivity()`` (per-unit Fisher information). Without
    an evaluator every unit counts as equally sensitive in total (1.0), i.e. sensitivity per
    parameter is ``1 / params``: the largest units are compressed first.

    The greedy trajectory (:class:`GreedyAllocator`) is computed once. Trial ``i`` (counting
    the space's finished and pending trials) gets the budget :func:`sweep_budget` between
    the mild end ``C(first point)`` (capped by a ``max_*`` constraint of the study) and the
    aggressive end ``C(last point)``, and proposes the first trajectory point whose cost
    ``C`` meets it: ``ctx.evaluator.cost(policy)[metric]`` (exact) with an evaluator, else
    the estimate. A point already tried is skipped for the next more aggressive untried one,
    then the next milder one, then the neighbour walk of :func:`first_untried`; a proposal
    is never repeated until the whole space is exhausted (then random policies).

    Args:
        ctx: search context (space, evaluator, constraints, n_trials, seed).
        metric: budget metric, ``"size_bits"`` or ``"bops"``.
        n_budgets: length of the sweep (default ``ctx.n_trials``, or 20 when unknown).
    """

    def __init__(self, ctx: SearchContext, *, metric: str = "size_bits", n_budgets: int | None = None) -> None:
        super().__init__(ctx)
        n = n_budgets if n_budgets is not None else (ctx.n_trials or 20)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n_budgets={n!r} is invalid: give a positive integer (the number of sweep steps)")
        self.metric = metric
        self.n_budgets = n
        evaluator = ctx.evaluator
        sens = evaluator.sensitivity() if evaluator is not None else {u.name: 1.0 for u in self.space.all_units}
        self.allocator = GreedyAllocator(self.space, sensitivity=sens, metric=metric)
        self._steps: list[Step] | None = None

    def cost(self, actions: Sequence[int]) -> float:
        """The budget metric of a point: exact (evaluator) or estimated."""
        policy = self.space.decode(self.space.params_from_actions(actions))
        if self.ctx.evaluator is not None:
            return float(self.ctx.evaluator.cost(policy)[self.metric])
        return float(sum(self.allocator.estimate(u, policy.get_or_identity(u.name)) for u in self.space.all_units))

    @property
    def steps(self) -> list[Step]:
        """The greedy trajectory with its costs (computed on first use)."""
        if self._steps is None:
            self._steps = [Step(a, self.cost(a)) for a in self.allocator.trajectory()]
        return self._steps

    def budget(self, i: int) -> float:
        """Budget of the ``i``-th trial of the sweep."""
        steps = self.steps
        high, low = steps[0].cost, steps[-1].cost
        cap = budget_cap(self.ctx.constraints, self.metric)
        if cap is not None:
            high = max(min(high, cap), low)
        return sweep_budget(high, low, i, self.n_budgets)

    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        tried = tried_keys(study, self.space, pending)
        i = self._position(study)
        steps = self.steps
        b = self.budget(i)
        k = next((j for j, s in enumerate(steps) if s.cost <= b), len(steps) - 1)
        order = [s.actions for s in steps[k:]] + [s.actions for s in reversed(steps[:k])]
        found = first_untried(order, self.allocator.dims, self.space, tried)
        return found if found is not None else self.random_params()

    def _position(self, study: Study) -> int:
        """Trials given a policy before this one (finished, running or proposed to), counted in
        one read: a trial that finishes between two reads would be counted twice."""
        return sum(
            1
            for t in study.get_trials(deepcopy=False)
            if space_params(t.params, self.space) is not None or "compsearch:proposal" in t.system_attrs
        )


__all__ = [
    "AnchorSampler",
    "GreedyAllocator",
    "GreedySensitivitySampler",
    "neighbour_order",
    "perturbation",
    "sweep_budget",
    "target_params",
]
