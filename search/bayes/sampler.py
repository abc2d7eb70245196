"""``BayesianSampler``: the Optuna shell of ``bo`` (maths in ``model.py`` / ``acquisition.py``).

Only what must be learnt is modelled. Every objective or constraint whose metric the
evaluator's exact ``cost(policy)`` returns (``size_bits``, ``size_kb``,
``compression_ratio``, ``bops``, ``sparsity``) is computed, never fitted; the others
(accuracy, ...) get one GP each. Proposal ``t`` (counting finished and running trials
of the space) is

* ``t < n_startup``: the first unused (not finished, running or failed), cost-feasible
  point of the initial design --
  the uniform anchors (every dimension at the same relative position: most
  compressed, middle, uncompressed) if enabled, then a scrambled Sobol sequence over
  the choice indices;
* afterwards: the maximizer of qLogNEHVI over (GP metrics, exact costs) among the
  cost-feasible policies not yet observed, pending or failed (``acquisition.py``); running
  trials are fantasized as ``X_pending``.

The sampler keeps no learnt state: everything is rebuilt from the study's trials at
each proposal, and with a seed the proposal's randomness is a function of
``(seed, finished, running)``, so a resumed study continues exactly.

botorch/gpytorch are imported only when the first model is fitted.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.study import StudyDirection

from compsearch.errors import ConfigError, check_int_at_least
from compsearch.metrics import pareto_indices, parse_constraints
from compsearch.search.common import CompressionSampler, Observation, params_key
from compsearch.search.registry import DEFAULT_OBJECTIVES, SearchContext
from compsearch.spaces.policy import Policy

if TYPE_CHECKING:
    from optuna.study import Study

    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.spaces.base import Space

CostFn = Callable[[Policy], Mapping[str, float]]


@dataclass(frozen=True)
class BayesConfig:
    """Settings of :class:`BayesianSampler`.

    Attributes:
        n_startup: proposals from the initial design before the first GP fit.
        include_uniform_anchors: start the design with ``n_anchors`` uniform policies.
        n_anchors: uniform anchors (relative positions ``linspace(0, 1, n_anchors)``).
        encoding: GP inputs, ``"features"`` (space features, one-hot categoricals)
            or ``"mixed"`` (categorical index columns, ``MixedSingleTaskGP``).
        max_gp_dims: above this many ``features`` columns the GP sees block-tied
            features (parameter-weighted block means, ``model.block_projection``).
        n_random: uniform candidates in the acquisition pool.
        n_mutate: mutated Pareto-optimal observations in the pool.
        local_search_starts: pool candidates refined by local search.
        local_search_steps: best-improvement moves per local search.
        mc_samples: quasi-MC posterior samples of qLogNEHVI.
        gp_maxiter: L-BFGS iterations of a GP fit, at most (each fit starts from the
            previous fit's hyperparameters in this process).
        batch: candidates per acquisition call (memory only).
    """

    n_startup: int = 10
    include_uniform_anchors: bool = True
    n_anchors: int = 3
    encoding: str = "features"
    max_gp_dims: int = 40
    n_random: int = 256
    n_mutate: int = 384
    local_search_starts: int = 2
    local_search_steps: int = 2
    mc_samples: int = 64
    gp_maxiter: int = 80
    batch: int = 256

    def __post_init__(self) -> None:
        check_int_at_least("BayesConfig", self, {
            "n_startup": 1, "n_anchors": 1, "max_gp_dims": 1, "mc_samples": 1, "batch": 1, "gp_maxiter": 1,
            "n_random": 0, "n_mutate": 0, "local_search_starts": 0, "local_search_steps": 0,
        })
        if self.n_random + self.n_mutate < 1:
            raise ConfigError("BayesConfig: n_random + n_mutate must be >= 1 (the candidate pool is empty)")
        if self.encoding not in ("features", "mixed"):
            raise ConfigError(f"BayesConfig.encoding={self.encoding!r} is unknown; allowed: ['features', 'mixed']")


def unit_cost_estimate(space: Space) -> CostFn:
    """Cost of a policy from the space's units alone (used when there is no evaluator).

    The same definitions as :mod:`compsearch.evaluators.cost` with ``total_params`` =
    unit weights + biases: exact for every unit weight, bias, scale, zero point and
    mask, but parameters outside the units (norms, embeddings) are unknown and left
    out, so ``size_bits`` is low by ``32 x`` their count and ``compression_ratio`` is
    relative to the units only.
    """
    from compsearch.evaluators.cost import CostModel

    units = space.all_units
    return CostModel(units=units, total_params=sum(u.params + u.bias_params for u in units))


@dataclass(frozen=True)
class _Roles:
    """Which output of the model list is which metric (built per proposal)."""

    modelled: tuple[str, ...]  # GP outputs first, in this order
    exact: tuple[str, ...]  # then the exact outputs
    signs: dict[str, float]  # +1 maximize, -1 minimize, per output metric
    objectives: tuple[str, ...]  # objective metric names, study order


def _parse_constraints(constraints: Mapping[str, float]) -> list[tuple[str, bool, float]]:
    """``(metric, upper, bound)`` per constraint, by the one parser (:func:`compsearch.metrics.parse_constraints`)."""
    return [(c.metric, c.upper, c.bound) for c in parse_constraints(constraints)]


class BayesianSampler(CompressionSampler):
    """Multi-objective Bayesian optimization that models only the measured metrics.

    Args:
        space: the compression space.
        evaluator: gives exact ``cost(policy)``; without it costs come from
            :func:`unit_cost_estimate`.
        seed: fixes the design, the pools and the quasi-MC samples.
        config: the method's settings.
        objectives: ``(metric, direction)`` in the order of the study's values.
        constraints: ``{"max_<metric>": bound, "min_<metric>": bound}``.
        reference_point: metric -> hypervolume reference value; a missing exact metric
            uses the uncompressed model's cost, a missing modelled one the worst
            observed value minus 10% of the observed range.
    """

    def __init__(
        self,
        space: Space,
        *,
        evaluator: CompressionEvaluator | None = None,
        seed: int | None = None,
        config: BayesConfig | None = None,
        objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
        constraints: Mapping[str, float] | None = None,
        reference_point: Mapping[str, float] | None = None,
    ) -> None:
        ctx = SearchContext(
            space=space, seed=seed, evaluator=evaluator, objectives=tuple((m, d) for m, d in objectives),
            constraints=dict(constraints or {}), reference_point=dict(reference_point or {}),
        )
        super().__init__(ctx)
        config = BayesConfig() if config is None else config
        if not isinstance(config, BayesConfig):
            raise ConfigError(f"config={config!r} must be a BayesConfig")
        self.config = config
        self._constraints = _parse_constraints(ctx.constraints)
        self._cost_fn: CostFn = evaluator.cost if evaluator is not None else unit_cost_estimate(space)
        self._exact_metrics = frozenset(self._cost_fn(Policy({})))
        self._dims = space.dimensions()
        self._sizes = [d.size for d in self._dims]
        self.last_info: dict[str, Any] = {}
        self._warm: dict[tuple[Any, ...], dict[str, Any]] = {}

    @classmethod
    def from_context(cls, ctx: SearchContext, config: BayesConfig | None = None) -> BayesianSampler:
        """The sampler of a registry :class:`SearchContext`."""
        return cls(
            ctx.space, evaluator=ctx.evaluator, seed=ctx.seed, config=config, objectives=ctx.objectives,
            constraints=ctx.constraints, reference_point=ctx.reference_point,
        )

    # ---- exact costs ------------------------------------------------------------------
    def cost(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Exact (or, without an evaluator, estimated) cost metrics of ``params``."""
        return {k: float(v) for k, v in self._cost_fn(self.space.decode(params)).items()}

    def feasible(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` satisfies every constraint on an exact metric."""
        exact = [(m, up, b) for m, up, b in self._constraints if m in self._exact_metrics]
        if not exact:
            return True
        c = self.cost(params)
        return all((c[m] <= b) if up else (c[m] >= b) for m, up, b in exact)

    # ---- proposal -----------------------------------------------------------------------
    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        rng = self._proposal_rng(len(history), len(pending))
        # a failed candidate (diverged, out of memory) is spent too: without it the design
        # would propose it again, and again after every failure
        used = {params_key(p) for p in self.spent(study, history, pending)}
        usable = [o for o in history if np.all(np.isfinite(o.values))]
        if len(history) + len(pending) < self.config.n_startup or len(usable) < 2:
            params = self._startup(used, rng)
            self.last_info = {"phase": "startup"}
        else:
            params = self._propose_bayes_seeded(study, usable, pending, used, rng)
        if params is None:
            warnings.warn(
                "bo: no unused policy satisfies the exact cost constraints; proposing the least violating one",
                stacklevel=2,
            )
            params = self._least_violating(rng)
        return params

    def _proposal_rng(self, n_done: int, n_pending: int) -> np.random.Generator:
        if self.ctx.seed is None:
            return self._rng
        return np.random.default_rng([self.ctx.seed, n_done, n_pending])

    def anchors(self) -> list[dict[str, Any]]:
        """Uniform policies: every ordinal dimension at relative position ``t`` in
        ``linspace(0, 1, n_anchors)`` (categorical ones at their first choice)."""
        out = []
        for t in np.linspace(0.0, 1.0, self.config.n_anchors):
            acts = [int(round(t * (d.size - 1))) if d.ordinal else 0 for d in self._dims]
            out.append(self.space.params_from_actions(acts))
        return out

    def design(self, n: int) -> list[dict[str, Any]]:
        """The initial design: anchors (if enabled), then ``n`` scrambled-Sobol points."""
        import torch

        first = self.anchors() if self.config.include_uniform_anchors else []
        seed = self.ctx.seed if self.ctx.seed is not None else int(self._rng.integers(2**31))
        u = torch.quasirandom.SobolEngine(len(self._dims), scramble=True, seed=seed).draw(n).double().numpy()
        acts = np.minimum((u * np.asarray(self._sizes)).astype(np.int64), np.asarray(self._sizes) - 1)
        return first + [self.space.params_from_actions(a.tolist()) for a in acts]

    def _startup(self, used: set[Any], rng: np.random.Generator) -> dict[str, Any] | None:
        n = 4 * self.config.n_startup + len(used) + 16
        for params in self.design(n):
            if params_key(params) not in used and self.feasible(params):
                return params
        for _ in range(256):
            params = self.space.params_from_actions([int(rng.integers(s)) for s in self._sizes])
            if params_key(params) not in used and self.feasible(params):
                return params
        return None

    def _least_violating(self, rng: np.random.Generator) -> dict[str, Any]:
        exact = [(m, up, b) for m, up, b in self._constraints if m in self._exact_metrics]

        def violation(p: dict[str, Any]) -> float:
            c = self.cost(p)
            return sum(max(0.0, (c[m] - b) if up else (b - c[m])) / max(abs(b), 1e-12) for m, up, b in exact)

        cands = self.anchors() + [
            self.space.params_from_actions([int(rng.integers(s)) for s in self._sizes]) for _ in range(256)
        ]
        return min(cands, key=violation)

    # ---- roles of the metrics --------------------------------------------------------
    def roles(self, study: Study) -> _Roles:
        """Objective names/signs from the study; which metrics are exact and which modelled.

        If the study's number of objectives differs from ``objectives``, its values are
        black boxes ``value0, value1, ...`` (all modelled).
        """
        dirs = ["maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions]
        names = [m for m, _ in self.ctx.objectives]
        if len(names) != len(dirs):
            names = [f"value{i}" for i in range(len(dirs))]
        signs = {m: (1.0 if d == "maximize" else -1.0) for m, d in zip(names, dirs, strict=True)}
        exact = tuple(m for m in names if m in self._exact_metrics)
        modelled = [m for m in names if m not in self._exact_metrics]
        for metric, upper, _ in self._constraints:
            if metric not in self._exact_metrics and metric not in signs:
                modelled.append(metric)
                signs[metric] = -1.0 if upper else 1.0
        return _Roles(modelled=tuple(modelled), exact=exact, signs=signs, objectives=tuple(names))

    def metric_value(self, obs: Observation, metric: str, roles: _Roles) -> float | None:
        """Unsigned value of ``metric`` in ``obs`` (an objective value or a stored metric)."""
        if metric in roles.objectives:
            return float(obs.values[roles.objectives.index(metric)])
        value = obs.metrics.get(metric)
        return float(value) if isinstance(value, (int, float)) else None

    def scale(self, metric: str) -> float:
        """Unit of an exact metric inside the model: its uncompressed value (1 if that is 0),
        so every exact output is of order 1 (qLogNEHVI's smoothing temperatures are absolute)."""
        if metric not in self._exact_metrics:
            return 1.0
        value = abs(float(self._cost_fn(Policy({}))[metric]))
        return value if value > 0 else 1.0

    def reference(self, metric: str, roles: _Roles, observed: np.ndarray) -> float:
        """Signed, scaled reference value of objective ``metric`` (``observed``: its signed,
        scaled values)."""
        sign = roles.signs[metric] / self.scale(metric)
        if metric in self.ctx.reference_point:
            return sign * float(self.ctx.reference_point[metric])
        if metric in self._exact_metrics:
            return sign * float(self._cost_fn(Policy({}))[metric])
        lo, hi = float(observed.min()), float(observed.max())
        return lo - 0.1 * (hi - lo) - 1e-9 * max(1.0, abs(lo))

    # ---- the Bayesian step (imports botorch) --------------------------------------------
    def _propose_bayes_seeded(self, study: Study, history: list[Observation], pending: list[dict[str, Any]],
                              used: set[Any], rng: np.random.Generator) -> dict[str, Any] | None:
        """:meth:`_propose_bayes` with torch's global random numbers seeded from the strategy's
        seed and the numbers of finished and pending trials (in a forked state; the caller's is
        untouched; unseeded strategies keep the global state): BoTorch draws some of its own (pruning the
        baseline of qLogNEHVI, refitting after a failed L-BFGS), which otherwise made a seeded
        run depend on what else the process had drawn."""
        import torch

        seeded = self.ctx.seed is not None
        with torch.random.fork_rng(devices=[], enabled=seeded):
            if seeded:
                torch.manual_seed(int(np.random.SeedSequence([self.ctx.seed, len(history), len(pending)]).generate_state(1)[0]))
            return self._propose_bayes(study, history, pending, used, rng)

    def _propose_bayes(
        self,
        study: Study,
        history: list[Observation],
        pending: list[dict[str, Any]],
        used: set[Any],
        rng: np.random.Generator,
    ) -> dict[str, Any] | None:
        import torch

        from compsearch.search.bayes import acquisition as aq
        from compsearch.search.bayes import model as bm

        roles = self.roles(study)
        memo: dict[Any, dict[str, float]] = {}

        def cost(params: Mapping[str, Any]) -> dict[str, float]:
            key = params_key(params)
            if key not in memo:
                memo[key] = self.cost(params)
            return memo[key]

        enc = bm.Encoder(self.space, kind=self.config.encoding)
        tied = enc.kind == "features" and enc.d > self.config.max_gp_dims
        projection = bm.block_projection(self.space) if tied else None
        X = enc.rows([o.params for o in history])
        gps, signed = [], {}
        t0 = time.perf_counter()
        for metric in roles.modelled:
            raw = [self.metric_value(o, metric, roles) for o in history]
            vals = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
            ok = np.flatnonzero(np.isfinite(vals))
            if len(ok) < 2:
                return self._startup(used, rng)
            signed[metric] = roles.signs[metric] * vals
            y = torch.as_tensor(signed[metric][ok], dtype=bm.DTYPE).unsqueeze(-1)
            warm_key = (metric, enc.kind, enc.d, projection is not None)
            gp = bm.fit_gp(
                X[ok], y, cat_dims=enc.cat_dims, projection=projection,
                warm_start=self._warm.get(warm_key), maxiter=self.config.gp_maxiter,
            )
            self._warm[warm_key] = bm.hyperparameters(gp)
            gps.append(gp)
        lookup = None
        if roles.exact:
            signs = [roles.signs[m] / self.scale(m) for m in roles.exact]
            lookup = bm.CostLookup(enc, cost, metrics=roles.exact, signs=signs)
            table = np.stack([lookup.register(o.params) for o in history])
            signed.update({m: table[:, i] for i, m in enumerate(roles.exact)})
            for p in pending:
                lookup.register(p)
        t1 = time.perf_counter()
        outputs = list(roles.modelled) + list(roles.exact)
        spec = aq.AcquisitionSpec(
            objectives=tuple(outputs.index(m) for m in roles.objectives),
            ref_point=tuple(self.reference(m, roles, signed[m]) for m in roles.objectives),
            constraints=tuple(
                aq.OutcomeConstraint(output=outputs.index(m), sign=roles.signs[m], bound=b, upper=up)
                for m, up, b in self._constraints
                if m not in self._exact_metrics
            ),
            mc_samples=self.config.mc_samples,
        )
        acq = aq.build_acquisition(
            bm.model_list(gps, lookup), spec, X_baseline=X, X_pending=enc.rows(pending),
            seed=int(rng.integers(2**31)),
        )

        def encode(A: np.ndarray) -> torch.Tensor:
            rows = []
            for a in A:
                params = self.space.params_from_actions(a.tolist())
                rows.append(enc.row(params))
                if lookup is not None:
                    lookup.register(params, rows[-1])
            return torch.as_tensor(np.stack(rows), dtype=bm.DTYPE)

        exact_cons = [(m, up, b) for m, up, b in self._constraints if m in self._exact_metrics]

        def allowed(A: np.ndarray) -> np.ndarray:
            mask = np.zeros(len(A), dtype=bool)
            for i, a in enumerate(A):
                params = self.space.params_from_actions(a.tolist())
                if params_key(params) in used:
                    continue
                c = cost(params) if exact_cons else {}
                mask[i] = all((c[m] <= b) if up else (c[m] >= b) for m, up, b in exact_cons)
            return mask

        Y = np.stack([signed[m] for m in roles.objectives], axis=1)
        parents = np.array([self.space.actions_from_params(history[i].params) for i in _pareto(Y)], dtype=np.int64)
        search = aq.DiscreteSearch(
            n_random=self.config.n_random, n_mutate=self.config.n_mutate,
            local_search_starts=self.config.local_search_starts,
            local_search_steps=self.config.local_search_steps, batch=self.config.batch,
        )
        found = aq.maximize_discrete(
            acq, sizes=self._sizes, ordinal=[d.ordinal for d in self._dims], parents=parents,
            encode=encode, allowed=allowed, rng=rng, search=search,
        )
        self.last_info = {
            "phase": "bayes",
            "gp_inputs": "mixed" if enc.kind == "mixed" else ("block-tied" if projection is not None else "features"),
            "gp_dims": int(projection.shape[1]) if projection is not None else enc.d,
            "modelled": list(roles.modelled),
            "exact": list(roles.exact),
            "acq_value": None if found is None else found[1],
            "fit_s": t1 - t0,
            "acq_s": time.perf_counter() - t1,
        }
        return None if found is None else self.space.params_from_actions(found[0].tolist())


def _pareto(Y: np.ndarray) -> list[int]:
    """Indices of the non-dominated rows of ``Y`` (``n x m``, larger is better), by the one
    Pareto filter (:func:`compsearch.metrics.pareto_indices`)."""
    return pareto_indices(Y, ["maximize"] * Y.shape[1])


__all__ = ["BayesConfig", "BayesianSampler", "unit_cost_estimate"]
