"""Flat RL baselines as Optuna samplers: ``amc`` (AMC, He et al. 2018) and ``haq`` (HAQ,
Wang et al. 2019).

One shared single-agent design serves both (cleaner than two copies): a DDPG agent
(:mod:`~compsearch.search.rl.ddpg`) steps through the space's kernels (layers, or whatever one
space group sets; :mod:`~compsearch.search.rl.layout`) in execution order and, at each, outputs one continuous action in ``[0, 1]`` per *controlled* field,
mapped to the nearest choice (ordinal: ``round(a (n - 1))``; categorical: ``floor(a n)``).
AMC controls ``keep`` (pruning ratio), HAQ controls ``w_bits`` and ``a_bits``; every other
field stays at its identity/default choice (32 bits, keep 1.0, symmetric, per-channel,
channel structure), as in the original methods. If the space has none of the controlled
fields, every ordinal field is controlled.

State at kernel ``t``: the kernel features of :mod:`~compsearch.search.rl.state`, ``t / K``,
the goal ``T``, the size already spent by blocks ``< t`` and the size still ahead (both as
fractions of the searched weights at 32 bits), and the previous action.
Budget: after the episode, while the exact primary cost ratio exceeds ``T`` the controlled
ordinal choice whose one-step decrease saves the most is decreased (HAQ's rule; AMC's
per-layer action clipping has the same effect). Reward: the scalarized real objective
values of the finished trial (:mod:`~compsearch.search.rl.reward`), given at the last
step, minus the mean over finished trials (AMC's baseline). Learnt state is rebuilt from
the trials: each finished trial's transitions are recomputed from its params, with the
goal relabelled to its own achieved cost ratio (which its actions satisfy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from compsearch.errors import ConfigError, check_keywords
from compsearch.search.common import CompressionSampler, Observation
from compsearch.search.registry import DEFAULT_OBJECTIVES, SearchContext
from compsearch.search.rl.ddpg import DDPGAgent, DDPGConfig, Transitions
from compsearch.search.rl.layout import block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.reward import scalarize
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
        self._obj: StrategyObjective | None = None
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

    # ---- episode maths -------------------------------------------------------------------
    def _setup(self, study: Study) -> tuple[StrategyObjective, DDPGAgent]:
        if self._obj is None:
            lay = block_layout(self.space, merge=True)
            self._obj = StrategyObjective(self.ctx, study.directions, layout=lay)
            ev = self.ctx.evaluator
            sens = ev.sensitivity() if ev is not None and hasattr(ev, "sensitivity") else None
            self._features = kernel_features(lay, FisherPrior().build(lay, sens), ev)
            self._step_dims = [lay.kernel_dims(k)[self._controlled[lay.kernel_dims(k)]] for k in range(lay.n_kernels)]
            self._adim = max(1, max(len(d) for d in self._step_dims))
            self._agent = DDPGAgent(state_dim=self._features.shape[1] + 4 + self._adim, action_dim=self._adim, config=self.config.ddpg, seed=self.seed)
        assert self._agent is not None
        return self._obj, self._agent

    def _state(self, t: int, goal: float, spent: float, ahead: float, prev: np.ndarray) -> np.ndarray:
        obj = self._obj
        assert obj is not None
        return np.concatenate([self._features[t], [t / obj.layout.n_kernels, goal, spent, ahead], prev]).astype(np.float32)

    def _to_index(self, dims: np.ndarray, a: np.ndarray) -> list[int]:
        sp = self.space.dimensions()
        return [round(float(x) * (sp[d].size - 1)) if sp[d].ordinal else min(int(x * sp[d].size), sp[d].size - 1) for d, x in zip(dims, a, strict=False)]

    def _to_action(self, dims: np.ndarray, idx: Sequence[int]) -> np.ndarray:
        sp = self.space.dimensions()
        a = np.zeros(self._adim)
        for j, (d, i) in enumerate(zip(dims, idx, strict=True)):
            a[j] = i / max(sp[d].size - 1, 1) if sp[d].ordinal else (i + 0.5) / sp[d].size
        return a

    def _episode_states(self, actions: np.ndarray, goal: float) -> list[np.ndarray]:
        """States of every step of the episode that produced ``actions`` (``D``)."""
        obj = self._obj
        assert obj is not None
        full = obj.cost.kernel_full_bits
        ratios = obj.cost.kernel_ratio(obj.cost.deltas(actions[None]))[0]
        states, spent, prev = [], 0.0, np.zeros(self._adim)
        for t, dims in enumerate(self._step_dims):
            ahead = float(full[t:].sum() / full.sum())
            states.append(self._state(t, goal, spent, ahead, prev))
            spent += float(ratios[t] * full[t] / full.sum())
            prev = self._to_action(dims, actions[dims].tolist())
        return states

    def _enforce(self, actions: np.ndarray, goal: float) -> np.ndarray:
        """Decrease controlled ordinal choices until the primary cost ratio is within ``goal``."""
        obj = self._obj
        assert obj is not None
        sp = self.space.dimensions()
        cand = [d for d in np.flatnonzero(self._controlled) if sp[d].ordinal]
        a = actions.copy()
        for _ in range(sum(sp[d].size for d in cand)):
            if obj._ratio(a[None])[0] <= goal * (1 + 1e-9):
                break
            trials = []
            for d in cand:
                if a[d] > 0:
                    b = a.copy()
                    b[d] -= 1
                    trials.append(b)
            if not trials:
                break
            trials_arr = np.array(trials)
            a = trials_arr[int(np.argmin(obj._ratio(trials_arr)))]
        return a

    def _rollout(self, goal: float, noise: float, random: bool) -> np.ndarray:
        obj, agent = self._obj, self._agent
        assert obj is not None and agent is not None
        actions = self._default.copy()
        full = obj.cost.kernel_full_bits
        spent, prev = 0.0, np.zeros(self._adim)
        for t, dims in enumerate(self._step_dims):
            s = self._state(t, goal, spent, float(full[t:].sum() / full.sum()), prev)
            a = self._rng.random(self._adim) if random else agent.act(s[None], noise)[0]
            actions[dims] = self._to_index(dims, a)
            spent += float(obj.cost.kernel_ratio(obj.cost.deltas(actions[None]))[0, t] * full[t] / full.sum())
            prev = self._to_action(dims, actions[dims].tolist())
        return self._enforce(actions, goal) if obj.mode == "budget" else actions

    def _transitions(self, history: list[Observation]) -> Transitions:
        obj = self._obj
        assert obj is not None
        acts, goals, rewards = self._real(history)
        s, a, r, s2, d = [], [], [], [], []
        base = float(rewards.mean()) if len(rewards) else 0.0
        for act, goal, rew in zip(acts, goals, rewards, strict=True):
            states = self._episode_states(act, goal)
            for t, dims in enumerate(self._step_dims):
                last = t == len(states) - 1
                s.append(states[t])
                a.append(self._to_action(dims, act[dims].tolist()))
                r.append(rew - base if last else 0.0)
                s2.append(states[t] if last else states[t + 1])
                d.append(1.0 if last else 0.0)
        return Transitions(np.array(s), np.array(a), np.array(r), np.array(s2), np.array(d))

    def _real(self, history: list[Observation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obj = self._obj
        assert obj is not None
        acts, goals, _, _ = obj.real_episodes(history, np.random.default_rng(self.seed), obj.ratio_min)
        x, y = obj.real_data(history)
        learned = obj.normalizer(y) if len(y) else np.zeros((len(acts), len(obj.learned)))
        metrics = obj.cost.metrics(acts)
        ratio = obj._ratio(acts, metrics)
        cheb = obj._chebyshev(goals) if obj.mode == "chebyshev" else None
        r = scalarize(obj.mode, learned=learned, ratio=ratio, exact_signed=obj._exact_signed(metrics, ratio), target=np.maximum(goals, ratio), weights=obj.default_weights, chebyshev=cheb)
        return acts, goals, r

    # ---- Optuna shell ------------------------------------------------------------------------
    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            obj, agent = self._setup(study)
            avoid = {tuple(self.space.actions_from_params(p)) for p in [o.params for o in history] + pending}
            n = len(history)
            if n > self._trained_n and n >= 2:
                steps = self.config.updates_per_trial * (n - self._trained_n)
                agent.update(self._transitions(history), steps=min(steps, self.config.max_replay_updates))
                self._trained_n = n
            goal = obj.proposal_goal(n + len(pending))
            warm = n < self.config.startup_trials
            noise = self.config.ddpg.noise * self.config.ddpg.noise_decay ** max(0, n - self.config.startup_trials)
            for attempt in range(20):
                actions = self._rollout(goal, noise + 0.05 * attempt, random=warm or attempt >= 10)
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
