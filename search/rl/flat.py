"""The layer-by-layer MDP of the flat RL baselines ``amc`` and ``haq`` (plain numpy around the
DDPG agent of :mod:`~compsearch.search.rl.ddpg`); the Optuna shell is
:mod:`compsearch.search.hirl.flat`.

An episode steps through the space's kernels (:mod:`~compsearch.search.rl.layout`) in execution
order. At kernel ``t`` the state is ``[kernel features (rl.state), t / K, goal T, size spent by
kernels < t, size still ahead (both as fractions of the searched weights at 32 bits), previous
action]`` and the action is one number in ``[0, 1]`` per *controlled* dimension of the kernel,
mapped to the nearest choice (ordinal: ``round(a (n - 1))``; categorical: ``floor(a n)``); every
other dimension stays at its default. In budget mode the controlled ordinal choice whose one-step
decrease saves the most is then decreased until the primary cost ratio is within ``T`` (HAQ's
rule). The reward (at the last step) is the scalarized real objective values of the finished
trial minus their mean over finished trials (AMC's baseline); each finished trial's transitions
are recomputed from its params with the goal relabelled to its own achieved cost ratio.
Shapes: ``D`` dimensions, ``K`` kernels, ``A`` action width (most controlled dims of a kernel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compsearch.search.common import Observation
from compsearch.search.rl.ddpg import DDPGAgent, Transitions
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.reward import scalarize


class FlatEpisodes:
    """The MDP of one study (module docstring).

    Args:
        obj: the study's objective (layout, exact cost, scalarization).
        features: kernel features ``K x F``.
        controlled: ``D`` bool, the dimensions the agent sets.
        default: ``D`` choice index of every dimension the agent does not set.
        seed: seed of the hindsight goals.
    """

    def __init__(self, obj: StrategyObjective, features: np.ndarray, controlled: np.ndarray, default: np.ndarray, seed: int) -> None:
        self.obj, self.features, self.controlled, self.default, self.seed = obj, features, controlled, default, seed
        lay = obj.layout
        self.dims = obj.space.dimensions()
        self.step_dims = [lay.kernel_dims(k)[controlled[lay.kernel_dims(k)]] for k in range(lay.n_kernels)]
        self.adim = max(1, max(len(d) for d in self.step_dims))
        self.state_dim = features.shape[1] + 4 + self.adim

    def state(self, t: int, goal: float, spent: float, ahead: float, prev: np.ndarray) -> np.ndarray:
        return np.concatenate([self.features[t], [t / self.obj.layout.n_kernels, goal, spent, ahead], prev]).astype(np.float32)

    def to_index(self, dims: np.ndarray, a: np.ndarray) -> list[int]:
        sp = self.dims
        return [round(float(x) * (sp[d].size - 1)) if sp[d].ordinal else min(int(x * sp[d].size), sp[d].size - 1) for d, x in zip(dims, a, strict=False)]

    def to_action(self, dims: np.ndarray, idx: Sequence[int]) -> np.ndarray:
        sp = self.dims
        a = np.zeros(self.adim)
        for j, (d, i) in enumerate(zip(dims, idx, strict=True)):
            a[j] = i / max(sp[d].size - 1, 1) if sp[d].ordinal else (i + 0.5) / sp[d].size
        return a

    def episode_states(self, actions: np.ndarray, goal: float) -> list[np.ndarray]:
        """States of every step of the episode that produced ``actions`` (``D``)."""
        cost = self.obj.cost
        full = cost.kernel_full_bits
        ratios = cost.kernel_ratio(cost.deltas(actions[None]))[0]
        states, spent, prev = [], 0.0, np.zeros(self.adim)
        for t, dims in enumerate(self.step_dims):
            states.append(self.state(t, goal, spent, float(full[t:].sum() / full.sum()), prev))
            spent += float(ratios[t] * full[t] / full.sum())
            prev = self.to_action(dims, actions[dims].tolist())
        return states

    def enforce(self, actions: np.ndarray, goal: float) -> np.ndarray:
        """Decrease controlled ordinal choices until the primary cost ratio is within ``goal``."""
        obj, sp = self.obj, self.dims
        cand = [d for d in np.flatnonzero(self.controlled) if sp[d].ordinal]
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

    def rollout(self, agent: DDPGAgent, goal: float, noise: float, random: np.random.Generator | None) -> np.ndarray:
        """One episode ``D`` for ``goal``: the actor plus Gaussian ``noise``, or uniform actions from ``random``."""
        cost = self.obj.cost
        actions = self.default.copy()
        full = cost.kernel_full_bits
        spent, prev = 0.0, np.zeros(self.adim)
        for t, dims in enumerate(self.step_dims):
            s = self.state(t, goal, spent, float(full[t:].sum() / full.sum()), prev)
            a = random.random(self.adim) if random is not None else agent.act(s[None], noise)[0]
            actions[dims] = self.to_index(dims, a)
            spent += float(cost.kernel_ratio(cost.deltas(actions[None]))[0, t] * full[t] / full.sum())
            prev = self.to_action(dims, actions[dims].tolist())
        return self.enforce(actions, goal) if self.obj.mode == "budget" else actions

    def transitions(self, history: list[Observation]) -> Transitions:
        """Every finished trial's transitions (module docstring)."""
        acts, goals, rewards = self.real(history)
        s, a, r, s2, d = [], [], [], [], []
        base = float(rewards.mean()) if len(rewards) else 0.0
        for act, goal, rew in zip(acts, goals, rewards, strict=True):
            states = self.episode_states(act, goal)
            for t, dims in enumerate(self.step_dims):
                last = t == len(states) - 1
                s.append(states[t])
                a.append(self.to_action(dims, act[dims].tolist()))
                r.append(rew - base if last else 0.0)
                s2.append(states[t] if last else states[t + 1])
                d.append(1.0 if last else 0.0)
        return Transitions(np.array(s), np.array(a), np.array(r), np.array(s2), np.array(d))

    def real(self, history: list[Observation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions ``n x D``, hindsight goals ``n`` and scalarized real rewards ``n`` of the finished trials."""
        obj = self.obj
        acts, goals, _, _ = obj.real_episodes(history, np.random.default_rng(self.seed), obj.ratio_min)
        _, y = obj.real_data(history)
        learned = obj.normalizer(y) if len(y) else np.zeros((len(acts), len(obj.learned)))
        metrics = obj.cost.metrics(acts)
        ratio = obj._ratio(acts, metrics)
        cheb = obj._chebyshev(goals) if obj.mode == "chebyshev" else None
        r = scalarize(obj.mode, learned=learned, ratio=ratio, exact_signed=obj._exact_signed(metrics, ratio), target=np.maximum(goals, ratio), weights=obj.default_weights, chebyshev=cheb)
        return acts, goals, r


__all__ = ["FlatEpisodes"]
