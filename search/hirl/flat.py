"""Flat RL baselines as Optuna samplers: ``amc`` (AMC, He et al. 2018) and ``haq`` (HAQ,
Wang et al. 2019): thin shells over :mod:`compsearch.search.rl.flat` (the layer-by-layer MDP)
and :mod:`compsearch.search.rl.ddpg` (the agent).

One shared single-agent design serves both (cleaner than two copies): a DDPG agent steps
through the space's kernels in execution order and sets the *controlled* fields. AMC controls
``keep`` (pruning ratio), HAQ controls ``w_bits`` and ``a_bits``; every other field stays at its
identity/default choice (32 bits, keep 1.0, symmetric, per-channel, channel structure), as in
the original methods. If the space has none of the controlled fields, every ordinal field is
controlled. Learnt state is rebuilt from the trials (each finished trial's transitions are
recomputed from its params).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from compsearch.errors import ConfigError, check_keywords
from compsearch.search.common import CompressionSampler, Observation
from compsearch.search.registry import DEFAULT_OBJECTIVES, SearchContext
from compsearch.search.rl.ddpg import DDPGAgent, DDPGConfig
from compsearch.search.rl.flat import FlatEpisodes
from compsearch.search.rl.layout import block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.state import FisherPrior, kernel_features
from compsearch.spaces.policy import UnitPolicy

if TYPE_CHECKING:
    from optuna.study import Study

    from compsearch.spaces.base import Space

METHODS = {"amc": ("keep",), "haq": ("w_bits", "a_bits")}


@dataclass(frozen=True)
class FlatRLConfig:
    """Settings of :class:`FlatRLSampler`.

    Attributes:
        startup_trials: random-action episodes before the actor acts (AMC's warm-up).
        updates_per_trial: DDPG gradient steps per new finished trial.
        max_replay_updates: cap of the gradient steps when replaying a study on first use.
        ddpg: DDPG settings.
    """

    startup_trials: int = 4
    updates_per_trial: int = 30
    max_replay_updates: int = 600
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)

    def __post_init__(self) -> None:
        for name in ("startup_trials", "updates_per_trial", "max_replay_updates"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"FlatRLConfig {name}={value!r} must be an integer >= 0")


class FlatRLSampler(CompressionSampler):
    """AMC/HAQ-style layer-by-layer DDPG sampler (see the module docstring).

    Args:
        space: the compression space.
        method: ``amc`` (keep ratios) or ``haq`` (bit-widths).
        evaluator: optional evaluator (exact cost, sensitivities, weights).
        seed: seed.
        config: :class:`FlatRLConfig`.
        objectives: ``(metric, direction)`` in the study's value order.
        constraints: ``max_<metric>`` / ``min_<metric>`` bounds.
        context: a full :class:`SearchContext` (overrides the arguments above it).
    """

    def __init__(
        self, space: Space, *, method: str = "amc", evaluator: Any = None, seed: int | None = None,
        config: FlatRLConfig | None = None, objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
        constraints: Mapping[str, float] | None = None, context: SearchContext | None = None,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"method={method!r} is unknown; allowed: {sorted(METHODS)}")
        ctx = context or SearchContext(space=space, seed=seed, evaluator=evaluator, objectives=tuple(objectives), constraints=dict(constraints or {}))
        super().__init__(ctx)
        self.method = method
        self.config = config or FlatRLConfig()
        self.seed = int(np.random.default_rng(ctx.seed).integers(2**31 - 1)) if ctx.seed is None else int(ctx.seed)
        self._episodes: FlatEpisodes | None = None
        self._agent: DDPGAgent | None = None
        self._trained_n = 0
        dims = space.dimensions()
        fields_ = [d.field for d in dims]
        wanted = METHODS[method]
        self._controlled = np.array([f in wanted for f in fields_]) if any(f in wanted for f in fields_) else np.array([d.ordinal for d in dims])
        self._default = np.array([self._default_index(d, f) for d, f in zip(dims, fields_, strict=True)], dtype=np.int64)

    @classmethod
    def from_context(cls, ctx: SearchContext, *, method: str, config: FlatRLConfig | None = None, **options: Any) -> FlatRLSampler:
        """Registry factory: ``options`` are :class:`FlatRLConfig` fields."""
        check_keywords(f"strategy {method!r}", options, {f.name for f in fields(FlatRLConfig)})
        return cls(ctx.space, method=method, context=ctx, config=replace(config or FlatRLConfig(), **options))

    @staticmethod
    def _default_index(dim: Any, field_name: str) -> int:
        if dim.ordinal:
            return dim.size - 1  # 32 bits / keep 1.0: the largest choice
        default = getattr(UnitPolicy(), field_name, None)
        return dim.choices.index(default) if default in dim.choices else 0

    def _setup(self, study: Study) -> tuple[FlatEpisodes, DDPGAgent]:
        if self._episodes is None:
            lay = block_layout(self.space, merge=True)
            obj = StrategyObjective(self.ctx, study.directions, layout=lay)
            ev = self.ctx.evaluator
            sens = ev.sensitivity() if ev is not None and hasattr(ev, "sensitivity") else None
            features = kernel_features(lay, FisherPrior().build(lay, sens), ev)
            self._episodes = FlatEpisodes(obj, features, self._controlled, self._default, self.seed)
            self._agent = DDPGAgent(state_dim=self._episodes.state_dim, action_dim=self._episodes.adim, config=self.config.ddpg, seed=self.seed)
        assert self._agent is not None
        return self._episodes, self._agent

    # ---- Optuna shell ------------------------------------------------------------------------
    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            episodes, agent = self._setup(study)
            avoid = {tuple(self.space.actions_from_params(p)) for p in self.spent(study, history, pending)}
            n = len(history)
            if n > self._trained_n and n >= 2:
                steps = self.config.updates_per_trial * (n - self._trained_n)
                agent.update(episodes.transitions(history), steps=min(steps, self.config.max_replay_updates))
                self._trained_n = n
            goal = episodes.obj.proposal_goal(n + len(pending))
            warm = n < self.config.startup_trials
            noise = self.config.ddpg.noise * self.config.ddpg.noise_decay ** max(0, n - self.config.startup_trials)
            for attempt in range(20):
                actions = episodes.rollout(agent, goal, noise + 0.05 * attempt, self._rng if warm or attempt >= 10 else None)
                if tuple(actions.tolist()) not in avoid:
                    return self.space.params_from_actions(actions.tolist())
            return self._random_controlled(avoid)

    def _random_controlled(self, avoid: set[tuple[int, ...]]) -> dict[str, Any]:
        """Random controlled choices (others at their defaults) not in ``avoid``; when the
        controlled sub-space is exhausted, a random point of the whole space."""
        from compsearch.search.common import params_key

        sizes = np.array(self.space.action_sizes())
        for _ in range(100):
            a = np.where(self._controlled, (self._rng.random(len(sizes)) * sizes).astype(np.int64), self._default)
            if tuple(a.tolist()) not in avoid:
                return self.space.params_from_actions(a.tolist())
        return self.random_params({params_key(self.space.params_from_actions(list(a))) for a in avoid})
