"""``HiRLSampler``: the hierarchical RL strategy as an Optuna sampler (a thin shell).

Per trial (``propose``), after ``startup_trials`` random ones:

1. every ``retrain_every`` new finished trials (and on first use in a process, with
   ``replay_iterations`` instead of ``iterations``: the *replay* that rebuilds the learnt
   state from the study), the surrogate ensemble is refitted on every finished trial
   (before ``min_real`` real evaluations exist and when the evaluator has a proxy, on
   the logit-MSE proxy of ``proxy_samples`` random policies instead: the cold start),
   and the hierarchy trains by PPO against it (:mod:`~compsearch.search.hirl.hierarchy`);
2. otherwise (cheap path) the current agents sample a pool of ``pool`` candidates for
   this proposal's goal (budget target ``T`` from a van der Corput sweep over proposals,
   or Chebyshev weights), each candidate is scored with the exact cost and the surrogate
   mean plus a decaying disagreement bonus, and the best candidate that no finished or
   running trial has is proposed.

The surrogate shapes rewards only: every value the study records is a real evaluation.
Rewards and multi-objective scalarization: :mod:`~compsearch.search.hirl.reward`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from compsearch.errors import ConfigError, check_int_at_least, check_keywords
from compsearch.search.common import CompressionSampler, Observation
from compsearch.search.hirl.agents import DEFAULT_AGENT_WEIGHTS, VOTING, AgentWeights, PPOConfig
from compsearch.search.hirl.hierarchy import Hierarchy
from compsearch.search.hirl.objective import StrategyObjective
from compsearch.search.hirl.surrogate import SurrogateConfig, SurrogateEnsemble
from compsearch.search.registry import DEFAULT_OBJECTIVES, SearchContext

if TYPE_CHECKING:
    from optuna.study import Study

    from compsearch.spaces.base import Space


@dataclass(frozen=True)
class HiRLConfig:
    """Settings and ablations of :class:`HiRLSampler`.

    Attributes:
        high_level: use the high-level budget-allocation ensemble (ablation: False).
        surrogate: train the agents against the surrogate (ablation False: real rewards only,
            one policy-gradient step per retraining on the finished trials).
        fisher: Fisher-sensitivity features and allocation prior (ablation: False).
        curriculum: tighten the budget range over retrainings, from mild to the full range.
        k: number of high-level agents.
        voting: ``mean`` or ``majority`` vote of the high-level agents.
        startup_trials: random trials before the agents propose.
        min_real: real evaluations before the surrogate replaces the proxy cold start.
        proxy_samples: random policies whose proxy trains the cold-start surrogate.
        retrain_every: new finished trials between retrainings.
        episodes: episodes per PPO iteration.
        iterations: PPO iterations per retraining.
        replay_iterations: PPO iterations of the first training in a process.
        pool: candidates sampled per proposal.
        mutations: extra candidates per proposal: one- or two-choice mutations of the 4 finished
            trials with the best real reward for this proposal's goal (local refinement of the front).
        kappa: initial weight of the ensemble-disagreement bonus.
        kappa_min: final weight of the bonus.
        kappa_decay: real evaluations over which the bonus falls linearly to ``kappa_min``.
        levels: number of budget levels of the high-level agents.
        prior_strength: scale of the Fisher prior on allocation logits.
        curriculum_rounds: retrainings until the curriculum reaches the full range.
        agent_weights: reward weights of the high-level agents (cycled over ``k``).
        ppo: PPO settings.
        surrogate_config: surrogate ensemble settings.
    """

    high_level: bool = True
    surrogate: bool = True
    fisher: bool = True
    curriculum: bool = False
    k: int = 3
    voting: str = "mean"
    startup_trials: int = 3
    min_real: int = 6
    proxy_samples: int = 32
    retrain_every: int = 2
    episodes: int = 32
    iterations: int = 8
    replay_iterations: int = 20
    pool: int = 64
    mutations: int = 16
    kappa: float = 1.0
    kappa_min: float = 0.1
    kappa_decay: int = 30
    levels: int = 8
    prior_strength: float = 1.0
    curriculum_rounds: int = 6
    agent_weights: tuple[AgentWeights, ...] = DEFAULT_AGENT_WEIGHTS
    ppo: PPOConfig = field(default_factory=PPOConfig)
    surrogate_config: SurrogateConfig = field(default_factory=SurrogateConfig)

    def __post_init__(self) -> None:
        if self.voting not in VOTING:
            raise ConfigError(f"HiRLConfig voting={self.voting!r} is unknown; allowed: {list(VOTING)}")
        check_int_at_least("HiRLConfig", self, {
            **dict.fromkeys(("k", "retrain_every", "episodes", "iterations", "pool", "levels", "curriculum_rounds"), 1),
            **dict.fromkeys(("startup_trials", "min_real", "proxy_samples", "replay_iterations", "kappa_decay"), 0),
        })
        if self.kappa < 0 or self.kappa_min < 0:
            raise ConfigError(f"HiRLConfig kappa={self.kappa!r} and kappa_min={self.kappa_min!r} must be >= 0")

    @classmethod
    def from_options(cls, base: HiRLConfig | None = None, **options: Any) -> HiRLConfig:
        """``base`` with ``options`` replaced; an unknown option raises ``TypeError``."""
        check_keywords("HiRLConfig", options, {f.name for f in fields(cls)})
        return replace(base or cls(), **options)


def _seed(seed: int | None) -> int:
    return int(np.random.default_rng(seed).integers(2**31 - 1)) if seed is None else int(seed)


class HiRLSampler(CompressionSampler):
    """Hierarchical RL (HiReLC-style) compression sampler.

    Args:
        space: the compression space.
        evaluator: the shared evaluator (exact ``cost``, ``proxy``, ``sensitivity``); optional.
        sensitivity: unit name -> Fisher sensitivity (overrides ``evaluator.sensitivity()``).
        seed: fixes every random choice (None = nondeterministic).
        config: :class:`HiRLConfig`.
        objectives: ``(metric, direction)`` in the study's value order.
        constraints: ``max_<metric>`` / ``min_<metric>`` bounds, e.g. ``{"max_size_kb": 4.0}``.
        context: a full :class:`SearchContext` (overrides the arguments above it).
    """

    def __init__(
        self,
        space: Space,
        *,
        evaluator: Any = None,
        sensitivity: Mapping[str, float] | None = None,
        seed: int | None = None,
        config: HiRLConfig | None = None,
        objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
        constraints: Mapping[str, float] | None = None,
        context: SearchContext | None = None,
    ) -> None:
        ctx = context or SearchContext(
            space=space, seed=seed, evaluator=evaluator, objectives=tuple(objectives), constraints=dict(constraints or {})
        )
        super().__init__(ctx)
        self.config = config or HiRLConfig()
        if not isinstance(self.config, HiRLConfig):
            raise TypeError(f"config must be a HiRLConfig, got {type(self.config).__name__}")
        self.seed = _seed(ctx.seed)
        self._sensitivity = dict(sensitivity) if sensitivity is not None else None
        self._objective: StrategyObjective | None = None
        self._hierarchy: Hierarchy | None = None
        self._surrogate: SurrogateEnsemble | None = None
        self._proxy_fit: tuple[np.ndarray, np.ndarray] | None = None
        self._trained_n: int | None = None
        self._rounds = 0
        self.retrain_seconds: list[float] = []

    @classmethod
    def from_context(cls, ctx: SearchContext, *, sensitivity: Mapping[str, float] | None = None, config: HiRLConfig | None = None, **options: Any) -> HiRLSampler:
        """Registry factory: ``options`` are :class:`HiRLConfig` fields."""
        return cls(ctx.space, context=ctx, sensitivity=sensitivity, config=HiRLConfig.from_options(config, **options))

    # ---- lazy set-up ----------------------------------------------------------------------
    def _setup(self, study: Study) -> StrategyObjective:
        if self._objective is None:
            self._objective = StrategyObjective(
                self.ctx, study.directions, sensitivity=self._sensitivity, fisher=self.config.fisher
            )
            o, cfg = self._objective, self.config
            self._hierarchy = Hierarchy(
                layout=o.layout, features=o.features, sensitivity=o.group_sensitivity if cfg.fisher else None,
                levels=o.budget_levels(cfg.levels), high_level=cfg.high_level, k=cfg.k, voting=cfg.voting,
                weights=cfg.agent_weights, prior_strength=cfg.prior_strength if cfg.fisher else 0.0,
                config=cfg.ppo, seed=self.seed,
            )
        return self._objective

    # ---- the strategy -----------------------------------------------------------------------
    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            avoid = {tuple(self.space.actions_from_params(p)) for p in [o.params for o in history] + pending}
            if len(history) < max(self.config.startup_trials, 1):
                return self.random_params({self._key(a) for a in avoid})
            obj = self._setup(study)
            if self._trained_n is None or len(history) - self._trained_n >= self.config.retrain_every:
                self._retrain(obj, history)
            if self._surrogate is None and self.config.surrogate:
                return self.random_params({self._key(a) for a in avoid})
            return self._pick(obj, history, avoid, index=len(history) + len(pending))

    def _key(self, actions: Sequence[int]) -> tuple[tuple[str, Any], ...]:
        from compsearch.search.common import params_key

        return params_key(self.space.params_from_actions(list(actions)))

    def _kappa(self, n_real: int) -> float:
        cfg = self.config
        frac = min(1.0, n_real / cfg.kappa_decay) if cfg.kappa_decay else 1.0
        return cfg.kappa + (cfg.kappa_min - cfg.kappa) * frac

    def _retrain(self, obj: StrategyObjective, history: list[Observation]) -> None:
        import time

        start = time.perf_counter()
        cfg, hier = self.config, self._hierarchy
        assert hier is not None  # set by _setup
        first = self._trained_n is None
        self._trained_n = len(history)
        self._rounds += 1
        lo = obj.curriculum_low(self._rounds, cfg.curriculum_rounds) if cfg.curriculum else obj.ratio_min
        if cfg.surrogate:
            self._surrogate = self._fit_surrogate(obj, history)
            if self._surrogate is not None:
                obj.attach(self._surrogate, self._kappa(len(history)))
                rng = np.random.default_rng([self.seed, len(history)])
                hier.train(obj.score, lambda e: obj.sample_goals(rng, e, lo), iterations=cfg.replay_iterations if first else cfg.iterations, episodes=cfg.episodes)
        else:
            actions, goals, rewards, ratios = obj.real_episodes(history, np.random.default_rng([self.seed, len(history)]), lo)
            for _ in range(max(1, (cfg.replay_iterations if first else cfg.iterations) // 4)):
                hier.learn_from(actions, goals, rewards, ratios)
        self.retrain_seconds.append(time.perf_counter() - start)

    def _fit_surrogate(self, obj: StrategyObjective, history: list[Observation]) -> SurrogateEnsemble | None:
        seed = self.seed + 31 * len(history)
        if obj.has_proxy and len(history) < self.config.min_real:
            if self._proxy_fit is None:
                self._proxy_fit = obj.proxy_data(np.random.default_rng([self.seed, 17]), self.config.proxy_samples)
            x, y = self._proxy_fit
            obj.set_normalizer(y)
        else:
            x, y = obj.real_data(history)
            obj.set_normalizer(y)
        if len(x) < 2 or y.shape[1] == 0:
            return None
        return SurrogateEnsemble(in_dim=x.shape[1], out_dim=y.shape[1], config=self.config.surrogate_config, seed=seed).fit(x, y)

    def _pick(self, obj: StrategyObjective, history: list[Observation], avoid: set[tuple[int, ...]], *, index: int) -> dict[str, Any]:
        hier = self._hierarchy
        assert hier is not None
        goal = obj.proposal_goal(index)
        ro = hier.rollout(np.full(self.config.pool, goal), agent=None)
        greedy = hier.rollout(np.full(1, goal), agent=None, greedy=True)
        pool = [greedy.actions, ro.actions, self._mutations(obj, history, goal, index)]
        cands, counts = np.unique(np.concatenate(pool), axis=0, return_counts=True)
        keep = np.array([tuple(a) not in avoid for a in cands.tolist()], dtype=bool)
        cands, counts = cands[keep], counts[keep]
        if len(cands) == 0:
            return self.random_params({self._key(a) for a in avoid})
        if self._surrogate is not None:
            scores = obj.score(cands, np.full(len(cands), goal), [obj.default_weights], goal_index=index)[0][:, 0]
        else:  # real-rewards-only ablation: exact cost terms only, the agents' sampling decides the rest
            scores = obj.cost_score(cands, goal) + 1e-3 * counts
        return self.space.params_from_actions(cands[int(np.argmax(scores))].tolist())

    def _mutations(self, obj: StrategyObjective, history: list[Observation], goal: float, index: int) -> np.ndarray:
        """``mutations`` candidates ``M x D`` near the best finished trials for ``goal``."""
        inc = obj.incumbents(history, goal, 4)
        n_dims = len(self.space.dimensions())
        if len(inc) == 0 or self.config.mutations == 0:
            return np.zeros((0, n_dims), dtype=np.int64)
        rng = np.random.default_rng([self.seed, index, 5])
        sizes = np.array(self.space.action_sizes())
        out = inc[rng.integers(len(inc), size=self.config.mutations)].copy()
        for row in out:
            for d in rng.choice(n_dims, size=min(int(rng.integers(1, 3)), n_dims), replace=False):
                row[d] = rng.integers(sizes[d])
        return out
