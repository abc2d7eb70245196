"""An Optuna objective that evaluates compression policies with the shared evaluator.

``study.optimize(optuna_objective(space, evaluator), n_trials=...)`` makes every
trial: propose a policy (``space.suggest(trial)``), fine-tune and measure it
(``evaluator.evaluate``), store the policy, every metric and the constraint values
through the trial record (:mod:`compsearch.record`), and return the objective values
in order. A failed evaluation (e.g. :class:`FineTuneDiverged`) stores its reason
(``record.read_fail_reason``) and is re-raised, so
``study.optimize(..., catch=(FineTuneDiverged,))`` records a FAILED trial with its
reason and goes on.

Equivalent policies are evaluated once: a trial whose policy has the same canonical form
(:mod:`compsearch.spaces.policy`) as a COMPLETE trial of the same study reuses that
trial's metrics (``record.reuse_equivalent``; marked ``reused_from``) without fine-tuning,
whichever sampler proposed it. The evaluation is a function of the canonical policy and the
study's seed, so the reused numbers are what a new evaluation would measure. A reused
trial is COMPLETE and counts toward a study's budget like any proposal (a strategy gains no
extra evaluations by repeating itself, and a sampler stuck on one policy still ends).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from compsearch import record
from compsearch.evaluators.reporters import OptunaReporter
from compsearch.metrics import Constraint, objective_pairs, parse_constraints

if TYPE_CHECKING:
    import optuna

    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.evaluators.types import EvalResult
    from compsearch.spaces.base import Space
    from compsearch.spaces.policy import Policy

Objective = Callable[["optuna.Trial"], "tuple[float, ...] | float"]


def objective_names(objectives: str | Sequence[str | Sequence[str]]) -> tuple[str, ...]:
    """Validated metric names of ``objectives`` (names or ``(metric, direction)`` pairs),
    checked against the metrics table (:mod:`compsearch.metrics`).

    Raises:
        ConfigError: empty, duplicated, or a metric the evaluator does not produce.
    """
    return tuple(m for m, _ in objective_pairs(objectives))


def directions(objectives: str | Sequence[str | Sequence[str]]) -> list[str]:
    """Optuna study directions of ``objectives``, e.g. ``["maximize", "minimize"]``.

    Use as ``optuna.create_study(directions=directions(objectives))``.
    """
    return [d for _, d in objective_pairs(objectives)]


def collect_metrics(
    evaluator: CompressionEvaluator, policy: Policy, result: EvalResult, *, proxy: bool = False
) -> dict[str, Any]:
    """Every metric of one evaluation: the exact costs (incl. ``size_kb``), the result's
    metrics (accuracy, loss, timings, ...), and ``proxy`` (logit-MSE before
    fine-tuning) when asked for."""
    metrics: dict[str, Any] = {**evaluator.cost(policy), **result.metrics()}
    if proxy:
        metrics["proxy"] = float(evaluator.proxy(policy))
    return metrics


def suggest_policy(space: Space, trial: optuna.Trial) -> Policy:
    """Ask ``trial`` for every dimension of ``space`` and record the policy with its canonical
    digest (:func:`compsearch.record.record_policy`); returns the policy."""
    policy = space.suggest(trial)
    record.record_policy(trial, policy, canonical=space.canonical(policy))
    return policy


def optuna_objective(
    space: Space,
    evaluator: CompressionEvaluator,
    objectives: Sequence[str | Sequence[str]] = ("accuracy", "size_bits"),
    *,
    steps: int | None = None,
    test: bool = False,
    constraints: Mapping[str, float] | None = None,
    reuse: bool = True,
) -> Objective:
    """An objective for ``study.optimize`` that evaluates one policy per trial.

    Each trial records (:mod:`compsearch.record`) its policy (before the evaluation, so
    failed trials keep it too), every metric (:func:`collect_metrics`; read back with
    ``record.read_metrics(trial)``), the reporter's intermediate values, and on failure its
    reason (``"<ExceptionType>: <message>"``). With ``constraints``, the constraint values
    (``<= 0`` = feasible) go to Optuna's own constraint record, which Optuna's constrained
    samplers (NSGA-II/III, TPE, GP), ``plot_pareto_front`` and optuna-dashboard read. The
    study gets the objective names (``study.set_metric_names``) on the first trial.

    Args:
        space: proposes the policy (``space.suggest(trial)``).
        evaluator: fine-tunes and measures it.
        objectives: metric names (or ``(metric, direction)`` pairs) in the order of the
            study's directions; create the study with ``directions=directions(objectives)``.
        steps: fine-tune steps per trial (None = the evaluator's configuration).
        test: also measure test accuracy (for final reporting only, never for selection).
        constraints: e.g. ``{"max_size_kb": 4.0, "min_accuracy": 0.9}``.
        reuse: a policy equivalent to a COMPLETE trial's reuses its metrics instead of
            being evaluated again (module docstring); False evaluates every trial.

    Returns:
        ``objective(trial)``: a float for one objective, else a tuple in ``objectives`` order.
        For one objective, intermediate values go to ``trial.report`` and may prune the
        trial (``optuna.TrialPruned``).

    Raises:
        ConfigError: an unknown objective or constraint metric (at construction).
    """
    pairs = objective_pairs(objectives)
    names = tuple(m for m, _ in pairs)
    bounds = parse_constraints(constraints)
    need_proxy = "proxy" in names or any(c.metric == "proxy" for c in bounds)
    set_up: set[str] = set()

    def objective(trial: optuna.Trial) -> tuple[float, ...] | float:
        if trial.study.study_name not in set_up:
            record.setup_study(trial.study, pairs, bounds)
            set_up.add(trial.study.study_name)
        policy = suggest_policy(space, trial)
        if reuse and not test:
            reused = record.reuse_equivalent(trial.study, trial, objectives=pairs, constraints=bounds)
            if reused is not None:
                return reused[0] if len(reused) == 1 else tuple(reused)
        reporter = OptunaReporter(trial, metric=names[0])
        result = _evaluate(trial, evaluator, policy, reporter=reporter, steps=steps, test=test)
        metrics = collect_metrics(evaluator, policy, result, proxy=need_proxy)
        values = record.record_success(trial.study, trial, metrics, objectives=pairs, constraints=bounds)
        return values[0] if len(values) == 1 else tuple(values)

    return objective


def _evaluate(
    trial: optuna.Trial,
    evaluator: CompressionEvaluator,
    policy: Policy,
    *,
    reporter: OptunaReporter,
    steps: int | None,
    test: bool,
) -> EvalResult:
    """``evaluator.evaluate``; a failure other than pruning stores ``fail_reason`` and re-raises."""
    import optuna

    try:
        return evaluator.evaluate(policy, steps=steps, reporter=reporter, test=test)
    except optuna.TrialPruned:
        raise
    except Exception as e:
        record.record_failure(trial, f"{type(e).__name__}: {e}")
        raise


__all__ = [
    "Constraint",
    "collect_metrics",
    "directions",
    "objective_names",
    "optuna_objective",
    "parse_constraints",
    "suggest_policy",
]
