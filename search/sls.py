"""``sls``: surrogate-guided local search, and the proposal shell ``hirl`` builds on.

Per trial (``propose``), after ``startup_trials`` random ones:

1. every ``retrain_every`` new finished trials (and on first use in a process: the replay
   that rebuilds the learnt state from the study), the reward part is refitted
   (:mod:`~compsearch.search.rl.critic`: a surrogate ensemble on the finished trials, or on
   the proxy of random policies before ``min_real`` real evaluations) and :meth:`SLSSampler._train`
   runs (nothing here; the agents' training in ``hirl``);
2. the proposal sources (:mod:`~compsearch.search.rl.proposals`) give candidates for this
   proposal's goal (from the ``goals`` part, :mod:`~compsearch.search.rl.goals`: a budget
   target swept log-evenly over the cost range, or Chebyshev weights; ``hirl``'s default also
   aims targets at the front's gaps when quality saturates), the reward part scores them
   (surrogate-predicted quality + exact cost), and the best candidate that no finished or
   running trial has is proposed.

``sls`` uses two sources: ``random`` points and ``mutation``s of the best finished trials
(the same surrogate and mutations as ``hirl``, no agents). Where each proposal came from
(``startup``, ``random``, ``mutation``, ``agents``, ``greedy``, ``fallback``; ``+``-joined when
several sources produced it; ``<origin>+distinct`` when the proposal was equivalent to a policy
already tried and the shared ``distinct`` step changed one choice of it) is stored in the trial's
system attr :data:`ORIGIN_ATTR` and in :attr:`SLSSampler.origins`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from compsearch.errors import check_int_at_least, check_keywords
from compsearch.search.common import CompressionSampler, Observation, params_key
from compsearch.search.registry import DEFAULT_OBJECTIVES, SearchContext, register_strategy
from compsearch.search.rl.critic import SurrogateRewards
from compsearch.search.rl.goals import SweepGoals
from compsearch.search.rl.layout import BlockLayout, block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.options import route_options
from compsearch.search.rl.proposals import MutationProposals, PoolContext, RandomProposals, pick
from compsearch.search.rl.reward import RewardWeights

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from compsearch.spaces.base import Space

#: Trial system attr holding the proposal's origin (module docstring).
ORIGIN_ATTR = "compsearch:proposal_origin"
SLS_ALIASES = {
    "random": ("sources", "RandomProposals.n"), "mutations": ("sources", "MutationProposals.n"),
    "incumbents": ("sources", "MutationProposals.incumbents"),
    **{f: ("rewards", f) for f in ("min_real", "proxy_samples", "kappa", "kappa_min", "kappa_decay", "surrogate")},
}


@dataclass(frozen=True)
class SLSConfig:
    """Plain settings of :class:`SLSSampler`.

    Attributes:
        startup_trials: random trials before the sources propose.
        retrain_every: new finished trials between refits.
        weights: reward weights of the proposals' score (a :class:`RewardWeights`, or a mapping
            of its fields, e.g. ``{recon = 0.2}`` in a TOML spec).
    """

    startup_trials: int = 3
    retrain_every: int = 2
    weights: RewardWeights = field(default_factory=RewardWeights)

    def __post_init__(self) -> None:
        check_int_at_least(type(self).__name__, self, {"startup_trials": 0, "retrain_every": 1})
        as_config(self, "weights", RewardWeights)


def as_config(obj: Any, name: str, cls: type) -> None:
    """Turn a mapping given for the frozen dataclass field ``name`` of ``obj`` into ``cls(**mapping)``
    (so a TOML spec can set nested settings); anything else but a ``cls`` raises ``TypeError``."""
    value = getattr(obj, name)
    if isinstance(value, Mapping):
        check_keywords(f"{type(obj).__name__}.{name}", dict(value), {f.name for f in fields(cls)})
        object.__setattr__(obj, name, cls(**value))
    elif not isinstance(value, cls):
        raise TypeError(f"{type(obj).__name__}.{name} must be a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


def resolve_seed(seed: int | None) -> int:
    """``seed``, or a fresh random one when None (then the run is not reproducible)."""
    return int(np.random.default_rng(seed).integers(2**31 - 1)) if seed is None else int(seed)


def sls_parts() -> dict[str, Any]:
    """``sls``'s default parts: surrogate rewards, 64 random points and 16 mutations, the sweep."""
    return {"rewards": SurrogateRewards(), "sources": (RandomProposals(), MutationProposals()), "goals": SweepGoals()}


class SLSSampler(CompressionSampler):
    """Surrogate-guided local search (module docstring).

    Args:
        space: the compression space.
        evaluator: the shared evaluator (exact ``cost``, ``proxy``); optional.
        seed: fixes every random choice (None = nondeterministic).
        config: :class:`SLSConfig`.
        rewards: the reward part (:class:`~compsearch.search.rl.critic.SurrogateRewards`).
        sources: the proposal sources (default: 64 random points and 16 mutations).
        goals: where each proposal's goal comes from (:mod:`~compsearch.search.rl.goals`; default the sweep).
        objectives: ``(metric, direction)`` in the study's value order.
        constraints: ``max_<metric>`` / ``min_<metric>`` bounds.
        context: a full :class:`SearchContext` (overrides the arguments above it).
    """

    def __init__(
        self, space: Space, *, evaluator: Any = None, seed: int | None = None, config: SLSConfig | None = None,
        rewards: Any = None, sources: Sequence[Any] | None = None, goals: Any = None, objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
        constraints: Mapping[str, float] | None = None, context: SearchContext | None = None,
    ) -> None:
        ctx = context or SearchContext(space=space, seed=seed, evaluator=evaluator, objectives=tuple(objectives), constraints=dict(constraints or {}))
        super().__init__(ctx)
        self.config = config or SLSConfig()
        self.seed = resolve_seed(ctx.seed)
        d = sls_parts()
        self.rewards = rewards if rewards is not None else d["rewards"]
        self.sources = tuple(sources if sources is not None else d["sources"])
        self.goals = goals if goals is not None else d["goals"]
        self._check_sources()
        self._objective: StrategyObjective | None = None
        self._critic: Any = None
        self._ready = False
        self._trained_n: int | None = None
        self._rounds = 0
        self._last: tuple[tuple[tuple[str, Any], ...], str] | None = None  # this call's proposal: key, origin
        self.origins: dict[int, str] = {}
        self.retrain_seconds: list[float] = []

    def _check_sources(self) -> None:
        if not self.sources:
            raise TypeError(f"{type(self).__name__} needs at least one proposal source")
        agents = [s.name for s in self.sources if s.needs_agents]
        if agents:
            raise TypeError(f"{type(self).__name__} has no agents; sources {agents} need them (use 'hirl')")

    @classmethod
    def from_context(cls, ctx: SearchContext, **options: Any) -> SLSSampler:
        """Registry factory: ``options`` are :class:`SLSConfig` fields, the parts ``rewards`` /
        ``sources`` / ``goals``, or the aliases of :data:`SLS_ALIASES` (see :mod:`~compsearch.search.rl.options`)."""
        config, parts = route_options("sls", SLSConfig(), sls_parts(), {k: v for k, v in options.items() if k != "config"}, SLS_ALIASES)
        if "config" in options:
            config = options["config"]
        return cls(ctx.space, context=ctx, config=config, **parts)

    # ---- set-up (the hirl subclass adds its hierarchy) ---------------------------------------
    def _layout(self) -> BlockLayout:
        return block_layout(self.space, merge=True)

    def _setup(self, study: Study) -> StrategyObjective:
        if self._objective is None:
            self._objective = StrategyObjective(self.ctx, study.directions, layout=self._layout(), weights=self.config.weights)
            self._critic = self.rewards.build(self.seed)
            self._build(self._objective)
        return self._objective

    def _build(self, obj: StrategyObjective) -> None:
        """Hook: build learnt parts once the objective exists (nothing in ``sls``)."""

    def _train(self, obj: StrategyObjective, history: list[Observation], *, first: bool) -> None:
        """Hook: train on the refitted rewards (nothing in ``sls``)."""

    def _hierarchy(self) -> Any:
        return None

    # ---- the strategy -----------------------------------------------------------------------
    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            avoid = {tuple(self.space.actions_from_params(p)) for p in self.spent(study, history, pending)}
            if len(history) < max(self.config.startup_trials, 1):
                return self._random(avoid, "startup")
            obj = self._setup(study)
            if self._trained_n is None or len(history) - self._trained_n >= self.config.retrain_every:
                self._retrain(obj, history)
            if not self._ready:
                return self._random(avoid, "startup")
            index = len(history) + len(pending)
            goal = self.goals.goal(obj, history, index, self.seed)
            ctx = PoolContext(obj, history, goal, np.random.default_rng([self.seed, index, 5]), self._hierarchy())
            self._before_pick(index)
            got = pick(self.sources, ctx, avoid, lambda c, n: self._critic.scores(obj, c, n, goal, history))
            if got is None:
                return self._random(avoid, "fallback")
            return self._tag(self.space.params_from_actions(got[0].tolist()), got[1])

    def _before_pick(self, index: int) -> None:
        """Hook: re-seed per-proposal generators (``hirl``'s agents)."""

    def _retrain(self, obj: StrategyObjective, history: list[Observation]) -> None:
        import time

        start = time.perf_counter()
        first = self._trained_n is None
        self._trained_n = len(history)
        self._rounds += 1
        self._ready = bool(self._critic.refit(obj, history))
        if self._ready:
            self._train(obj, history, first=first)
        self.retrain_seconds.append(time.perf_counter() - start)

    def _random(self, avoid: set[tuple[int, ...]], origin: str) -> dict[str, Any]:
        return self._tag(self.random_params({params_key(self.space.params_from_actions(list(a))) for a in avoid}), origin)

    def _tag(self, params: dict[str, Any], origin: str) -> dict[str, Any]:
        self._last = (params_key(params), origin)
        return params

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        self._last = None
        params = super().sample_relative(study, trial, search_space)  # proposes (and tags) at most once
        origin = None
        if params and self._last is not None:
            key, origin = self._last
            if key != params_key(params):  # distinct() changed the proposal
                origin = f"{origin}+distinct"
        if origin is not None:
            from compsearch import optuna_compat

            optuna_compat.set_trial_system_attr(study, trial, ORIGIN_ATTR, origin)
            self.origins[trial.number] = origin
        return params


@register_strategy("sls")
def _sls(ctx: SearchContext, **options: Any) -> SLSSampler:
    """Surrogate-guided local search: random points and mutations of the best trials scored by
    the surrogate ensemble and the exact cost (``hirl`` without its agents)."""
    return SLSSampler.from_context(ctx, **options)
