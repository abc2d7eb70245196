"""The reward parts (what the agents train against and how a proposal is scored) and the
curriculum on the compression target.

Reward parts are frozen specs whose ``build(seed)`` returns the live critic:

* :class:`SurrogateRewards` -> :class:`SurrogateCritic`: an ensemble of small MLPs
  (:mod:`~compsearch.search.rl.surrogate`) predicts the learned objectives (the task's quality
  metric) from ``space.features``; before ``min_real`` real evaluations, and when the evaluator
  has a proxy, it is fitted to ``-log(proxy)`` of ``proxy_samples`` random policies (the cold
  start). Agents train by PPO against ``predicted quality + exact cost`` plus a disagreement
  bonus ``kappa`` that falls linearly from ``kappa`` to ``kappa_min`` over ``kappa_decay`` real
  evaluations; a proposal is the pool candidate with the best such score.
* :class:`RealRewards` -> :class:`RealCritic`: no surrogate (the ``hirl-real`` ablation). The
  agents learn only from the finished trials (one policy-gradient step per
  :meth:`~compsearch.search.rl.hierarchy.Hierarchy.learn_from`, hindsight goals), and a
  proposal is the candidate with the best exact-cost score (budget and constraint violation,
  ties broken by how many sources produced it); the quality metric is never guessed.
* :class:`FrontRewards` -> :class:`FrontCritic`: the surrogate rewards above for training, but
  a proposal is the candidate with the largest predicted hypervolume gain over the finished
  trials' feasible front (optimistic surrogate quality, exact cost), not the best reward for the
  proposal's goal; the goal still steers which candidates the sources produce.

Curricula (:class:`NoCurriculum`, :class:`BudgetCurriculum`) give the lower end of the training
targets' range after each retraining.

Every value the study records is a real evaluation; surrogate and proxy queries are counted
apart (``SurrogateCritic.proxy_queries``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from compsearch.errors import ConfigError, check_int_at_least, check_keywords
from compsearch.search.common import Observation
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.surrogate import SurrogateConfig, SurrogateEnsemble

if TYPE_CHECKING:
    from compsearch.search.rl.hierarchy import Hierarchy


@dataclass(frozen=True)
class SurrogateRewards:
    """Surrogate-predicted rewards (module docstring).

    Attributes:
        min_real: real evaluations before the surrogate replaces the proxy cold start.
        proxy_samples: random policies whose proxy trains the cold-start surrogate.
        kappa: initial weight of the ensemble-disagreement bonus.
        kappa_min: final weight of the bonus.
        kappa_decay: real evaluations over which the bonus falls linearly to ``kappa_min``.
        surrogate: surrogate ensemble settings (a :class:`SurrogateConfig` or a mapping of its fields).
    """

    min_real: int = 6
    proxy_samples: int = 32
    kappa: float = 1.0
    kappa_min: float = 0.1
    kappa_decay: int = 30
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)

    def __post_init__(self) -> None:
        check_int_at_least("SurrogateRewards", self, {"min_real": 0, "proxy_samples": 0, "kappa_decay": 0})
        if isinstance(self.surrogate, Mapping):
            check_keywords("SurrogateRewards.surrogate", dict(self.surrogate), {f.name for f in fields(SurrogateConfig)})
            object.__setattr__(self, "surrogate", SurrogateConfig(**self.surrogate))
        if self.kappa < 0 or self.kappa_min < 0:
            raise ConfigError(f"SurrogateRewards kappa={self.kappa!r} and kappa_min={self.kappa_min!r} must be >= 0")

    def build(self, seed: int) -> SurrogateCritic:
        return SurrogateCritic(self, seed)


class SurrogateCritic:
    """Live surrogate rewards (see :class:`SurrogateRewards`)."""

    def __init__(self, spec: SurrogateRewards, seed: int) -> None:
        self.spec, self.seed = spec, seed
        self.model: SurrogateEnsemble | None = None
        self._proxy_fit: tuple[np.ndarray, np.ndarray] | None = None
        self.proxy_queries = 0

    def kappa(self, n_real: int) -> float:
        s = self.spec
        frac = min(1.0, n_real / s.kappa_decay) if s.kappa_decay else 1.0
        return s.kappa + (s.kappa_min - s.kappa) * frac

    def refit(self, obj: StrategyObjective, history: list[Observation]) -> bool:
        """Fit on the finished trials (or the proxy cold start) and attach to ``obj``; False
        when there is not yet anything to fit (then the sampler proposes at random)."""
        if obj.has_proxy and len(history) < self.spec.min_real:
            if self._proxy_fit is None:
                self._proxy_fit = obj.proxy_data(np.random.default_rng([self.seed, 17]), self.spec.proxy_samples)
                self.proxy_queries += len(self._proxy_fit[0])
            x, y = self._proxy_fit
            obj.proxy_mode = True
        else:
            x, y = obj.real_data(history)
        obj.set_normalizer(y)
        if len(x) < 2 or y.shape[1] == 0:
            self.model = None
            return False
        self.model = SurrogateEnsemble(in_dim=x.shape[1], out_dim=y.shape[1], config=self.spec.surrogate, seed=self.seed + 31 * len(history)).fit(x, y)
        obj.attach(self.model, self.kappa(len(history)))
        return True

    def train(self, hier: Hierarchy, obj: StrategyObjective, history: list[Observation], *, low: float, iterations: int, episodes: int) -> None:
        """PPO against the surrogate rewards, training goals drawn from ``[low, r_max]``."""
        rng = np.random.default_rng([self.seed, len(history)])
        hier.train(obj.score, lambda e: obj.sample_goals(rng, e, low), iterations=iterations, episodes=episodes)

    def scores(self, obj: StrategyObjective, cands: np.ndarray, counts: np.ndarray, goal: float, history: Sequence[Observation]) -> np.ndarray:
        """Surrogate-predicted reward of each candidate for ``goal`` (``M``)."""
        return obj.score(cands, np.full(len(cands), goal), [obj.default_weights])[0][:, 0]


@dataclass(frozen=True)
class FrontRewards(SurrogateRewards):
    """:class:`SurrogateRewards` whose proposal is the candidate with the largest predicted
    hypervolume gain over the finished trials (module docstring); the agents train as before."""

    def build(self, seed: int) -> FrontCritic:
        return FrontCritic(self, seed)


class FrontCritic(SurrogateCritic):
    """Live :class:`FrontRewards`."""

    def scores(self, obj: StrategyObjective, cands: np.ndarray, counts: np.ndarray, goal: float, history: Sequence[Observation]) -> np.ndarray:
        """Predicted hypervolume gain (:meth:`StrategyObjective.front_scores`) of each candidate,
        ``M``; the goal's reward while the surrogate still models the proxy (cold start) or for a
        single objective."""
        if obj.proxy_mode or len(obj.objectives) < 2:
            return super().scores(obj, cands, counts, goal, history)
        return obj.front_scores(cands, history)


@dataclass(frozen=True)
class RealRewards:
    """Real rewards only (module docstring)."""

    def build(self, seed: int) -> RealCritic:
        return RealCritic(seed)


class RealCritic:
    """Live real-reward critic (see :class:`RealRewards`)."""

    proxy_queries = 0

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def refit(self, obj: StrategyObjective, history: list[Observation]) -> bool:
        return True

    def train(self, hier: Hierarchy, obj: StrategyObjective, history: list[Observation], *, low: float, iterations: int, episodes: int) -> None:
        """``max(1, iterations // 4)`` policy-gradient steps on the finished trials."""
        actions, goals, rewards, deltas = obj.real_episodes(history, np.random.default_rng([self.seed, len(history)]), low)
        if len(actions) == 0:
            return
        for _ in range(max(1, iterations // 4)):
            hier.learn_from(actions, goals, rewards, deltas)

    def scores(self, obj: StrategyObjective, cands: np.ndarray, counts: np.ndarray, goal: float, history: Sequence[Observation]) -> np.ndarray:
        """Exact-cost score plus ``1e-3`` per source that produced the candidate (``M``)."""
        return obj.cost_score(cands, goal) + 1e-3 * counts


@dataclass(frozen=True)
class NoCurriculum:
    """Training targets span the whole range from the first retraining."""

    def low(self, obj: StrategyObjective, round_: int) -> float:
        return obj.ratio_min


@dataclass(frozen=True)
class BudgetCurriculum:
    """Training targets start mild and tighten: the lower end of the range falls log-linearly
    from ``sqrt(r_min r_max)`` to ``r_min`` over ``rounds`` retrainings.

    Attributes:
        rounds: retrainings until the full range is reached.
    """

    rounds: int = 6

    def __post_init__(self) -> None:
        check_int_at_least("BudgetCurriculum", self, {"rounds": 1})

    def low(self, obj: StrategyObjective, round_: int) -> float:
        mild = np.sqrt(obj.ratio_min * obj.ratio_max)
        frac = min(1.0, (round_ - 1) / max(self.rounds - 1, 1))
        return float(np.exp(np.log(mild) + frac * (np.log(obj.ratio_min) - np.log(mild))))


Critic = SurrogateCritic | FrontCritic | RealCritic
Curriculum = NoCurriculum | BudgetCurriculum
__all__: Sequence[str] = (
    "BudgetCurriculum", "Critic", "Curriculum", "FrontCritic", "FrontRewards", "NoCurriculum", "RealCritic", "RealRewards", "SurrogateCritic", "SurrogateRewards",
)
