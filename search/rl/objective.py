"""What the RL strategies and ``sls`` optimize for one study: goals, exact costs, surrogate rewards.

:class:`StrategyObjective` ties together the space's block layout
(:mod:`~compsearch.search.rl.layout`), the exact :class:`~compsearch.search.rl.reward.KernelCost`,
the objective roles and scalarization (:mod:`~compsearch.search.rl.reward`), and the
surrogate. One *goal* ``g`` in ``(0, 1]`` conditions each episode and proposal:

* ``budget`` mode: ``g = T``, the target of the primary cost ratio. Proposal ``n``
  uses ``T = sweep_target(vdc(n + 1), r_min, r_max)`` (``vdc`` = base-2 van der Corput),
  so successive proposals spread log-evenly along the cost axis of the front (the default
  ``goals`` part of ``hirl``, :mod:`~compsearch.search.rl.goals`, replaces some of these by
  :meth:`StrategyObjective.gap_goal` when quality saturates); training
  episodes draw ``T`` log-uniformly from the same range (goal-conditioned agents).
  ``r_min`` is the ratio of the cheapest choices, ``r_max`` = 1 or the constraint's ratio.
* ``chebyshev`` mode: ``g = w_0``, the weight of the first objective; the others share
  ``1 - w_0`` equally.
* ``single`` mode: ``g`` = the constraint's ratio (1 without one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from compsearch.search.common import Observation
from compsearch.search.registry import SearchContext
from compsearch.search.rl.layout import BlockLayout
from compsearch.search.rl.recon import Reconstruction
from compsearch.search.rl.reward import (
    PRIMARY,
    KernelCost,
    Normalizer,
    RewardWeights,
    constraint_penalty,
    objective_roles,
    scalar_mode,
    scalarize,
    sweep_target,
    unit_cost_oracle,
    van_der_corput,
)
from compsearch.search.rl.surrogate import SurrogateEnsemble

MINIMIZE_COST = ("size_bits", "size_kb", "bops")


def _constraint_ratio(constraints: Mapping[str, float], identity: Mapping[str, float], primary: str) -> float:
    """Tightest primary-cost ratio a ``max_<cost>`` / ``min_compression_ratio`` bound allows (1 if none)."""
    ratio = 1.0
    for key, bound in constraints.items():
        kind, _, metric = key.partition("_")
        if kind == "max" and metric in MINIMIZE_COST and PRIMARY[metric] == primary:
            ratio = min(ratio, float(bound) / identity[metric])
        elif kind == "min" and metric == "compression_ratio" and primary == "size_bits":
            ratio = min(ratio, 1.0 / float(bound))
    return max(ratio, 1e-6)


class StrategyObjective:
    """Rewards for RL strategies on one study (see the module docstring).

    Args:
        ctx: the search context.
        directions: the study's directions.
        layout: the space's :class:`~compsearch.search.rl.layout.BlockLayout`.
        weights: the reward weights of the proposals (and of the low level).
    """

    def __init__(self, ctx: SearchContext, directions: Sequence[Any], *, layout: BlockLayout, weights: RewardWeights | None = None) -> None:
        self.ctx, self.space = ctx, ctx.space
        dirs = [d if isinstance(d, str) else ("maximize" if int(d) == 2 else "minimize") for d in directions]
        self.objectives = objective_roles(ctx.objectives, dirs)
        self.mode = scalar_mode(self.objectives)
        self.learned = [o for o in self.objectives if not o.exact]
        self.exact = [o for o in self.objectives if o.exact]
        ev = ctx.evaluator
        self.layout = layout
        self.cost = KernelCost(self.space, layout, ev.cost if ev is not None and hasattr(ev, "cost") else unit_cost_oracle(self.space))
        self.primary = PRIMARY[self.exact[0].metric] if self.exact else "size_bits"
        zeros = np.zeros((1, len(self.space.dimensions())), dtype=np.int64)
        self.ratio_min = float(self._ratio(zeros)[0])
        self._zero_block_ratio = self.cost.block_ratio(self.cost.deltas(zeros))[0]
        self.ratio_max = _constraint_ratio(ctx.constraints, self.cost.identity, self.primary)
        self.ratio_min = min(self.ratio_min, self.ratio_max)
        self.has_proxy = ev is not None and hasattr(ev, "proxy") and bool(self.learned) and self.learned[0].metric != "value_0"
        self.default_weights = weights or RewardWeights()
        self._tables = [self._table(d) for d in self.space.dimensions()]
        self.normalizer = Normalizer.fit(np.zeros((0, len(self.learned))))
        self.surrogate: SurrogateEnsemble | None = None
        self.kappa = 0.0
        self.proxy_mode = False
        self.recon: Reconstruction | None = None

    # ---- features and cost --------------------------------------------------------------
    @staticmethod
    def _table(dim: Any) -> np.ndarray:
        if dim.ordinal:
            return (np.arange(dim.size) / max(dim.size - 1, 1)).reshape(-1, 1)
        return np.eye(dim.size)

    def featurize(self, actions: np.ndarray) -> np.ndarray:
        """``E x D`` actions -> ``E x d`` features, equal to ``space.features_from_params``."""
        actions = np.asarray(actions, dtype=np.int64)
        return np.concatenate([t[actions[:, i]] for i, t in enumerate(self._tables)], axis=1).astype(np.float32)

    def _ratio(self, actions: np.ndarray, metrics: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        m = metrics if metrics is not None else self.cost.metrics(actions)
        return m[self.primary] / self.cost.identity[self.primary]

    def budget_levels(self, n: int) -> np.ndarray:
        """``n`` log-spaced block budget levels from the cheapest block ratio to 1."""
        lo = float(np.clip(np.min(self._zero_block_ratio), 1.0 / 64, 0.5))
        return np.geomspace(lo, 1.0, n) if n > 1 else np.ones(1)

    # ---- goals --------------------------------------------------------------------------
    def _goal(self, u: np.ndarray, lo: float) -> np.ndarray:
        if self.mode == "budget":
            return np.array([sweep_target(float(x), lo, self.ratio_max) for x in u])
        if self.mode == "chebyshev":
            return 0.02 + 0.96 * u
        return np.full(len(u), self.ratio_max)

    def sample_goals(self, rng: np.random.Generator, n: int, lo: float | None = None) -> np.ndarray:
        """``n`` random training goals (see the module docstring)."""
        return self._goal(rng.random(n), self.ratio_min if lo is None else lo)

    def proposal_goal(self, index: int) -> float:
        """Goal of proposal number ``index`` (low-discrepancy sweep)."""
        return float(self._goal(np.array([van_der_corput(index + 1)]), self.ratio_min)[0])

    def saturation(self, history: Sequence[Observation]) -> float:
        """Fraction of the finished trials (finite learned values) whose first learned objective
        ties its best value (within ``1e-9`` relative); 0 with none."""
        _, y = self._finished(history)
        if not len(y):
            return 0.0
        top = float(y[:, 0].max())
        return float(np.mean(y[:, 0] >= top - 1e-9 * max(1.0, abs(top))))

    def gap_goal(self, history: Sequence[Observation]) -> float | None:
        """Budget target aimed at the largest gap of the feasible front of the finished trials.

        The front (cost ratio up, first learned objective up, constraint-feasible, ratio at most
        ``ratio_max``) splits the cost axis at its points, from ``ratio_min``: each gap is the
        rectangle between two consecutive points (the first from ``ratio_min`` and the worst
        quality seen), sized in log cost ratio over ``log(ratio_max / ratio_min)`` times quality
        over the seen range. Returns the geometric midpoint of the largest gap's cost interval,
        or None with no feasible trial or no gap of positive size.
        """
        from compsearch.metrics import pareto_mask

        actions, y = self._finished(history)
        if not len(y):
            return None
        metrics = self.cost.metrics(actions)
        ratio, q = self._ratio(actions, metrics), y[:, 0]
        ok = (self._violation(y, metrics) <= 0) & (ratio <= self.ratio_max * (1 + 1e-9))
        if not ok.any():
            return None
        points = np.stack([ratio[ok], q[ok]], axis=1)
        front = points[pareto_mask(points, ("minimize", "maximize"))]
        front = front[np.argsort(front[:, 0], kind="stable")]
        r = np.concatenate([[max(self.ratio_min, 1e-12)], front[:, 0]])
        qq = np.concatenate([[float(q.min())], front[:, 1]])
        width = np.log(np.maximum(r[1:], r[:-1]) / r[:-1]) / max(np.log(self.ratio_max / r[0]), 1e-12)
        area = width * (qq[1:] - qq[:-1]) / max(float(np.ptp(q)), 1e-12)
        k = int(np.argmax(area))
        return float(np.sqrt(r[k] * r[k + 1])) if area[k] > 0 else None

    def _chebyshev(self, goals: np.ndarray) -> np.ndarray:
        m = len(self.objectives)
        rest = (1.0 - goals) / max(m - 1, 1)
        return np.concatenate([goals.reshape(-1, 1), np.repeat(rest.reshape(-1, 1), m - 1, axis=1)], axis=1)

    # ---- surrogate data -------------------------------------------------------------------
    def _signed(self, obs: Observation) -> np.ndarray:
        return np.array([obs.values[o.index] * (1 if o.direction == "maximize" else -1) for o in self.learned], dtype=float)

    def _finished(self, history: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray]:
        """Actions ``n x D`` and signed learned values ``n x j`` of the finished trials whose
        learned values are all finite, in history order."""
        rows = [(self.space.actions_from_params(o.params), self._signed(o)) for o in history]
        rows = [(a, y) for a, y in rows if np.all(np.isfinite(y))]
        actions = np.array([a for a, _ in rows], dtype=np.int64).reshape(len(rows), len(self.space.dimensions()))
        return actions, np.array([y for _, y in rows], dtype=float).reshape(len(rows), len(self.learned))

    def real_data(self, history: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray]:
        """Features ``n x d`` and signed learned values ``n x j`` of the finished trials (finite only)."""
        self.proxy_mode = False
        actions, y = self._finished(history)
        if not len(actions):
            return np.zeros((0, 1)), np.zeros((0, len(self.learned)))
        return self.featurize(actions), y

    def proxy_data(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Cold start: features of ``n`` random policies and ``-log(proxy + eps)`` (larger =
        closer to the uncompressed logits) repeated for every learned objective."""
        self.proxy_mode = True
        sizes = self.space.action_sizes()
        actions = np.array([[int(rng.integers(s)) for s in sizes] for _ in range(max(n, 2))], dtype=np.int64)
        proxy = np.array([float(self.ctx.evaluator.proxy(self.space.decode(self.space.params_from_actions(a.tolist())))) for a in actions])
        proxy = np.where(np.isfinite(proxy), proxy, np.nanmax(np.where(np.isfinite(proxy), proxy, 0.0)) * 10 + 1.0)
        eps = max(1e-3 * float(np.median(proxy)), 1e-12)
        y = -np.log(proxy + eps)
        return self.featurize(actions), np.repeat(y.reshape(-1, 1), len(self.learned), axis=1)

    def set_normalizer(self, y: np.ndarray) -> None:
        self.normalizer = Normalizer.fit(np.asarray(y, float).reshape(len(y), -1))

    def attach(self, surrogate: SurrogateEnsemble | None, kappa: float) -> None:
        """Use ``surrogate`` (signed learned objectives) with disagreement bonus weight ``kappa``."""
        self.surrogate, self.kappa = surrogate, float(kappa)

    # ---- rewards ------------------------------------------------------------------------------
    def _exact_signed(self, metrics: Mapping[str, np.ndarray], ratio: np.ndarray) -> np.ndarray:
        cols = []
        for o in self.exact:
            if o.metric in MINIMIZE_COST:
                cols.append(1.0 - metrics[o.metric] / self.cost.identity[o.metric])
            elif o.metric == "compression_ratio":
                cols.append(1.0 - ratio)
            else:
                cols.append(metrics[o.metric])
        return np.stack(cols, axis=1) if cols else np.zeros((len(ratio), 0))

    def _learned(self, actions: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.surrogate is None or not self.learned:
            return np.zeros((len(actions), len(self.learned))), {}
        mean, std = self.surrogate.predict(self.featurize(actions))
        z = self.normalizer(mean) + self.kappa * self.normalizer.scale(std)
        raw = {} if self.proxy_mode else {o.metric: mean[:, i] * (1 if o.direction == "maximize" else -1) for i, o in enumerate(self.learned)}
        return z, raw

    def score(self, actions: np.ndarray, goals: np.ndarray, weights: Sequence[RewardWeights]) -> tuple[np.ndarray, np.ndarray]:
        """Rewards ``E x len(weights)`` (surrogate-predicted quality, exact cost) and the per-kernel
        cost deltas ``E x K x 3`` (:meth:`KernelCost.deltas`) of ``E x D`` actions."""
        deltas = self.cost.deltas(actions)
        metrics = self.cost.metrics(actions, deltas)
        ratio = self._ratio(actions, metrics)
        learned, raw = self._learned(actions)
        exact = self._exact_signed(metrics, ratio)
        cons = constraint_penalty({**metrics, **raw}, self.ctx.constraints)
        cheb = self._chebyshev(goals) if self.mode == "chebyshev" else None
        rec = self.recon_term(actions) if any(w.recon > 0 for w in weights) else 0.0
        out = np.stack(
            [
                scalarize(self.mode, learned=learned, ratio=ratio, exact_signed=exact, target=goals, weights=w, chebyshev=cheb)
                - w.penalty * cons - w.recon * rec
                for w in weights
            ],
            axis=1,
        )
        return out, deltas

    def recon_term(self, actions: np.ndarray) -> np.ndarray:
        """``sum_k p_k rho(e_k) / sum_k p_k`` over kernels (``p_k``: weights, ``rho(e) = log10(1 + 100 e)``,
        ``e_k``: :meth:`Reconstruction.errors <compsearch.search.rl.recon.Reconstruction.errors>`), ``E``;
        0 without a reconstruction model."""
        if self.recon is None or not self.recon.available:
            return np.zeros(len(actions))
        rho = np.log10(1.0 + 100.0 * self.recon.errors(actions))
        p = self.cost.kernel_full_bits
        return (rho * p).sum(1) / p.sum()

    def cost_score(self, actions: np.ndarray, goal: float) -> np.ndarray:
        """Exact-cost part of the reward only (no surrogate): ``-violation`` (budget and
        constraints) plus ``0.01 * min(r / T, 1)`` in budget mode (use the budget)."""
        metrics = self.cost.metrics(actions)
        ratio = self._ratio(actions, metrics)
        s = -constraint_penalty(dict(metrics), self.ctx.constraints)
        if self.mode == "budget":
            s = s - np.maximum(0.0, ratio / goal - 1.0) + 0.01 * np.minimum(ratio / goal, 1.0)
        return s

    # ---- predicted hypervolume gain (FrontRewards) ------------------------------------------
    def _gain_space(self, actions: np.ndarray, learned_signed: np.ndarray, metrics: Mapping[str, np.ndarray]) -> np.ndarray:
        """Every objective as a signed value (larger is better), learned ones first: the learned
        signed values as given, the exact ones as :meth:`_exact_signed` (0 at the uncompressed cost);
        ``metrics``: the actions' exact costs."""
        return np.concatenate([learned_signed, self._exact_signed(metrics, self._ratio(actions, metrics))], axis=1)

    def _gain_reference(self, seen: np.ndarray) -> np.ndarray:
        """Signed reference point of :meth:`_gain_space`: the study's ``reference_point`` where it
        names the metric; else a cost's uncompressed value (0); else the bound of a ``min_`` /
        ``max_`` constraint on the metric; else the worst value ``seen`` minus a tenth of its range
        (-inf with nothing seen)."""
        given, bounds = self.ctx.reference_point, self.ctx.constraints
        ref = []
        for j, o in enumerate(self.learned + self.exact):
            sign = 1.0 if o.direction == "maximize" else -1.0
            bound = bounds.get(f"{'min' if sign > 0 else 'max'}_{o.metric}")
            if o.exact and o.metric in MINIMIZE_COST:
                ref.append(1.0 - float(given.get(o.metric, self.cost.identity[o.metric])) / self.cost.identity[o.metric])
            elif o.exact and o.metric == "compression_ratio":
                ref.append(1.0 - 1.0 / float(given.get(o.metric, 1.0)))
            elif o.metric in given:
                ref.append(sign * float(given[o.metric]))
            elif bound is not None:
                ref.append(sign * float(bound))
            elif len(seen):
                lo, hi = float(seen[:, j].min()), float(seen[:, j].max())
                ref.append(lo - 0.1 * (hi - lo) - 1e-9 * max(1.0, abs(lo)))
            else:
                ref.append(-np.inf)
        return np.array(ref)

    def front_scores(self, actions: np.ndarray, history: Sequence[Observation]) -> np.ndarray:
        """Predicted hypervolume gain of each of ``E x D`` candidate actions over the feasible
        finished trials, ``E`` (larger is better).

        A candidate's learned objectives are the surrogate's optimistic prediction (mean plus
        ``kappa`` standard deviations), its exact ones the exact cost. Objectives are measured
        from :meth:`_gain_reference` and scaled by the range the finished trials span (1 where
        it is 0). A candidate that adds volume scores its added volume (> 0);
        one that adds none scores ``-d``, ``d`` the smallest shift that would make it add some
        (the distance to beat the reference, or the point of the front it is nearest to escape);
        a predicted constraint violation costs ``penalty * violation`` on top. Trials that
        violate a constraint are not on the front but count for the scales and the reference.
        """
        from compsearch.metrics import dominated_volume

        actions = np.asarray(actions, dtype=np.int64)
        mean, std = self.surrogate.predict(self.featurize(actions)) if self.surrogate is not None and self.learned else (
            np.zeros((len(actions), 0)), np.zeros((len(actions), 0)))
        optimistic = mean + self.kappa * std
        cand_metrics = self.cost.metrics(actions)
        cand = self._gain_space(actions, optimistic, cand_metrics)
        seen_actions, seen_signed = self._finished(history)
        if len(seen_actions):
            seen_metrics = self.cost.metrics(seen_actions)
            seen = self._gain_space(seen_actions, seen_signed, seen_metrics)
            front = seen[self._violation(seen_signed, seen_metrics) <= 0]
        else:
            seen = front = np.zeros((0, cand.shape[1]))
        ref = self._gain_reference(seen)
        ref = np.where(np.isfinite(ref), ref, cand.min(0) - 1.0)
        span = np.ptp(seen, axis=0) if len(seen) > 1 else np.ones(cand.shape[1])
        span = np.where(span > 1e-12, span, 1.0)
        g_front = (front - ref) / span
        g_front = g_front[np.all(g_front > 0, axis=1)]
        g_cand = (cand - ref) / span
        base = dominated_volume(g_front)
        gain = np.array([dominated_volume(np.vstack([g_front, c])) - base for c in g_cand])
        below = np.maximum(0.0, -g_cand).sum(1)
        escape = (np.max(np.min(g_front[None, :, :] - g_cand[:, None, :], axis=2), axis=1).clip(min=0.0)
                  if len(g_front) else np.zeros(len(g_cand)))
        score = np.where(gain > 1e-15, gain, -(below + escape) - 1e-9)
        return score - self.default_weights.penalty * self._violation(optimistic, cand_metrics)

    def _violation(self, learned_signed: np.ndarray, metrics: Mapping[str, np.ndarray]) -> np.ndarray:
        """Constraint violation (:func:`constraint_penalty`) of policies with the given signed learned
        values and exact costs."""
        raw = {o.metric: learned_signed[:, i] * (1 if o.direction == "maximize" else -1) for i, o in enumerate(self.learned)}
        return constraint_penalty({**metrics, **raw}, self.ctx.constraints)

    def real_episodes(self, history: Sequence[Observation], rng: np.random.Generator, lo: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Finished trials as episodes for the real-rewards-only ablation: actions ``n x D``,
        goals ``n`` (budget mode: hindsight, the trial's own cost ratio), rewards ``n``, kernel cost deltas ``n x K x 3``."""
        x, y = self.real_data(history)
        actions = np.array([self.space.actions_from_params(o.params) for o in history], dtype=np.int64)
        finite = np.array([np.all(np.isfinite(self._signed(o))) for o in history], dtype=bool)
        actions = actions[finite]
        deltas = self.cost.deltas(actions)
        metrics = self.cost.metrics(actions, deltas)
        ratio = self._ratio(actions, metrics)
        goals = np.clip(ratio, lo, self.ratio_max) if self.mode == "budget" else self.sample_goals(rng, len(actions), lo)
        self.set_normalizer(y)
        learned = self.normalizer(y) if len(y) else np.zeros((len(actions), len(self.learned)))
        cheb = self._chebyshev(goals) if self.mode == "chebyshev" else None
        r = scalarize(self.mode, learned=learned, ratio=ratio, exact_signed=self._exact_signed(metrics, ratio), target=goals, weights=self.default_weights, chebyshev=cheb)
        r = r - self.default_weights.penalty * constraint_penalty(dict(metrics), self.ctx.constraints)
        return actions, goals, r, deltas

    def incumbents(self, history: Sequence[Observation], goal: float, m: int) -> np.ndarray:
        """Actions ``m x D`` of the ``m`` finished trials with the best real reward for ``goal``."""
        self.proxy_mode = False  # as real_data: the mutation sources' measured sequences rely on it
        actions, y = self._finished(history)
        if len(y) == 0:
            return np.zeros((0, len(self.space.dimensions())), dtype=np.int64)
        metrics = self.cost.metrics(actions)
        ratio = self._ratio(actions, metrics)
        goals = np.full(len(actions), goal)
        cheb = self._chebyshev(goals) if self.mode == "chebyshev" else None
        r = scalarize(self.mode, learned=Normalizer.fit(y)(y), ratio=ratio, exact_signed=self._exact_signed(metrics, ratio), target=goals, weights=self.default_weights, chebyshev=cheb)
        return actions[np.argsort(-r, kind="stable")[:m]]
