"""``n2n``: N2N learning (Ashok et al., ICLR 2018) as an Optuna sampler, a thin shell over
:mod:`compsearch.search.rl.n2n` (policies, reward, REINFORCE), :mod:`~compsearch.search.rl.n2n_problem`
(what the policies see) and :mod:`~compsearch.search.rl.n2n_agent` (training, saved state).

Every proposal is one episode of both stages: stage 1 (a bidirectional LSTM) keeps or removes
every removable block, stage 2 (an LSTM) chooses the remaining kernels' bits / keep ratios
given what stage 1 removed. On a space without depth choices (``joint``, ``quant``, ...)
there is no stage 1 and every block is kept: ``n2n`` is then the paper's shrinkage stage
alone; on ``depth+joint`` both stages search. Deviation from the paper, which trains stage 1
to the end and then shrinks its best network: with one budget of full evaluations both stages
learn together, from the same reward.

**Reward** of a finished trial (:func:`~compsearch.search.rl.n2n.n2n_reward`):
``R = C (2 - C) * A / A_ref``, ``C = 1 - r``, ``r`` = the policy's exact primary cost (the study's
first cost objective: ``size_bits`` for size metrics, ``bops``; ``size_bits`` when the study has
none) over the uncompressed model's (``evaluator.cost``); ``A`` the study's quality objective
(``accuracy``, ``return``, ...; ``A_ref / A`` for a minimized one such as ``loss``; 1 when the
study has no quality objective); ``A_ref`` the uncompressed model's value
(``evaluator.base_metrics()``), or without it the best value of the trials so far. A negative
quality (a ``return`` below 0) enters as ``(A - A_worst) / (A_best - A_worst)`` over the trials
so far. A trial violating a constraint, a non-finite quality, or a FAILED trial of the
candidate (diverged, out of memory) gets ``infeasible`` (default -1).

**Learning** is REINFORCE with a moving-average baseline, one update per finished trial in
trial-number order, so the state is a function of the study's trials: a resumed study (or
another process) replays them and continues with the same policies. Trials the policies did
not sample (start-up, a replaced duplicate) are learned from like the others.

**Transfer**: ``warm_start`` (a finished run's folder or a state file) loads a state saved by
an ``n2n`` run on another model (:mod:`~compsearch.search.rl.n2n_agent` says what carries over).
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from optuna.trial import TrialState

from compsearch import record
from compsearch.errors import check_keywords
from compsearch.metrics import parse_constraints
from compsearch.search.common import CompressionSampler, Observation, params_key, space_params
from compsearch.search.registry import SearchContext, register_strategy
from compsearch.search.rl.n2n import N2NConfig, n2n_reward
from compsearch.search.rl.n2n_agent import N2NAgent, check_format
from compsearch.search.rl.n2n_problem import N2NProblem
from compsearch.search.rl.persist import load_warm_start
from compsearch.search.rl.reward import PRIMARY, unit_cost_oracle
from compsearch.search.sls import resolve_seed
from compsearch.spaces.policy import Policy

if TYPE_CHECKING:
    from optuna.study import Study

COSTS = (*PRIMARY, "latency_ms")


class N2NSampler(CompressionSampler):
    """N2N learning as a sampler (module docstring).

    Args:
        ctx: the search context.
        config: :class:`~compsearch.search.rl.n2n.N2NConfig`.
        fisher: use the evaluator's Fisher sensitivities in the features.
        warm_start: a run folder or state file to warm-start from (module docstring).
        name: the registered name (finds ``<name>-s<seed>.pt`` in a run folder).
    """

    def __init__(self, ctx: SearchContext, *, config: N2NConfig | None = None, fisher: bool = True,
                 warm_start: str | None = None, name: str = "n2n") -> None:
        super().__init__(ctx)
        self.config = config or N2NConfig()
        self.seed = resolve_seed(ctx.seed)
        self.fisher = bool(fisher)
        self._warm = load_warm_start(warm_start, strategy=name, seed=ctx.seed, check=check_format)
        self.warm_copied: dict[str, list[str]] = {}
        self.agent: N2NAgent | None = None
        self._done: set[int] = set()
        self._best: tuple[float, float] | None = None  # (worst, best) signed quality seen
        self._teacher: float | None = None
        self._cost: Any = None
        self._identity: dict[str, float] = {}
        self._constraints = parse_constraints(dict(ctx.constraints)) if ctx.constraints else ()
        self.rewards: dict[int, float] = {}

    @classmethod
    def from_context(cls, ctx: SearchContext, *, name: str = "n2n", **options: Any) -> N2NSampler:
        """Registry factory: ``options`` are :class:`N2NConfig` fields, ``fisher`` and ``warm_start``."""
        check_keywords(f"strategy {name!r}", options, {f.name for f in fields(N2NConfig)} | {"fisher", "warm_start", "config"})
        base = options.pop("config", None) or N2NConfig()
        extra = {k: options.pop(k) for k in ("fisher", "warm_start") if k in options}
        return cls(ctx, config=replace(base, **options), name=name, **extra)

    # ---- set-up --------------------------------------------------------------------------------
    def _setup(self) -> N2NAgent:
        if self.agent is None:
            ev = self.ctx.evaluator
            self.agent = N2NAgent(N2NProblem(self.space, evaluator=ev, fisher=self.fisher), self.config, self.seed)
            if self._warm is not None:
                self.warm_copied = self.agent.load_state_dict(self._warm)
            self._cost = ev.cost if ev is not None and hasattr(ev, "cost") else unit_cost_oracle(self.space)
            self._identity = dict(self._cost(Policy()))
            self._teacher = self._teacher_quality()
        return self.agent

    def _quality(self) -> tuple[str, str] | None:
        return next(((m, d) for m, d in self.ctx.objectives if m not in COSTS), None)

    def _primary(self) -> str:
        return next((PRIMARY[m] for m, _ in self.ctx.objectives if m in PRIMARY), "size_bits")

    def _teacher_quality(self) -> float | None:
        q, ev = self._quality(), self.ctx.evaluator
        if q is None or ev is None or not hasattr(ev, "base_metrics"):
            return None
        value = ev.base_metrics().values.get(q[0])
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None

    # ---- rewards and learning ---------------------------------------------------------------------
    def _metrics(self, obs: Observation, costs: dict[str, float]) -> dict[str, Any]:
        out = {**obs.metrics, **costs}
        if len(obs.values) == len(self.ctx.objectives):
            out.update({m: v for (m, _), v in zip(self.ctx.objectives, obs.values, strict=True)})
        return out

    def reward(self, obs: Observation) -> float:
        """The reward of one finished trial (module docstring); updates the running quality range."""
        costs = dict(self._cost(self.space.decode(obs.params)))
        metrics = self._metrics(obs, costs)
        primary = self._primary()
        ratio = min(max(costs[primary] / self._identity[primary], 0.0), 1.0)
        if any(c.metric in metrics and not c.satisfied(metrics) for c in self._constraints):
            return self.config.infeasible
        q = self._quality()
        if q is None:
            return n2n_reward(ratio, 1.0, 1.0)
        value = metrics.get(q[0])
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return self.config.infeasible
        signed = float(value) if q[1] == "maximize" else -float(value)
        worst, best = (signed, signed) if self._best is None else (min(self._best[0], signed), max(self._best[1], signed))
        self._best = (worst, best)
        if q[1] == "maximize" and value >= 0 and self._teacher is not None:
            return n2n_reward(ratio, value, self._teacher)
        if q[1] == "maximize" and value >= 0 and best > 0:
            return n2n_reward(ratio, value, best)
        if q[1] == "minimize" and value > 0:
            return n2n_reward(ratio, self._teacher or -best, value)
        return n2n_reward(ratio, signed - worst, best - worst) if best > worst else n2n_reward(ratio, 1.0, 1.0)

    def _events(self, study: Study, history: list[Observation]) -> list[tuple[int, dict[str, Any], Observation | None]]:
        """Finished trials not learned from yet, in trial-number order (FAILED candidates carry None)."""
        out: list[tuple[int, dict[str, Any], Observation | None]] = [(o.number, o.params, o) for o in history if o.number not in self._done]
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in self._done or not record.counts_toward_budget(t):
                continue
            proposal = record.read_proposal(t)
            params = space_params(t.params, self.space) or (space_params(proposal, self.space) if proposal else None)
            if params is not None:
                out.append((t.number, params, None))
        return sorted(out, key=lambda e: e[0])

    def _learn(self, study: Study, history: list[Observation]) -> None:
        agent = self._setup()
        for number, params, obs in self._events(study, history):
            r = self.reward(obs) if obs is not None else self.config.infeasible
            agent.update(np.array(self.space.actions_from_params(params)), r)
            self.rewards[number] = r
            self._done.add(number)

    # ---- the strategy ------------------------------------------------------------------------------
    def propose(self, study: Study, history: list[Observation], pending: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            agent = self._setup()
            self._learn(study, history)
            spent = self.spent(study, history, pending)
            avoid = {self.space.canonical_key(p) for p in spent}
            index = len(history) + len(pending)
            if len(history) < self.config.startup_trials:
                return self.random_params({params_key(p) for p in spent})
            gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, index, 3]).integers(2**62)))
            for _ in range(20):
                params = self.space.params_from_actions(agent.sample(gen).tolist())
                if self.space.canonical_key(params) not in avoid:
                    return params
            # the policy keeps drawing spent points (a nearly exhausted space): an unspent one at random
            return self.random_params({params_key(p) for p in spent})

    # ---- learned state -------------------------------------------------------------------------
    def learned_state(self, study: Study | None = None) -> dict[str, Any]:
        """Both policies' state (format: :mod:`~compsearch.search.rl.n2n_agent`), after learning
        from every finished trial of ``study`` when given; empty before the first proposal."""
        with self._lock:
            if study is not None:
                from compsearch.search.common import observations

                self._learn(study, observations(study, self.space))
            return self.agent.state_dict() if self.agent is not None else {}


@register_strategy("n2n")
def _n2n(ctx: SearchContext, **options: Any) -> N2NSampler:
    """N2N learning: a bidirectional LSTM removes blocks, an LSTM shrinks the rest (REINFORCE)."""
    return N2NSampler.from_context(ctx, **options)


__all__ = ["N2NSampler"]
