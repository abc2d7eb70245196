"""An Optuna objective that evaluates compression policies with the shared evaluator.

``study.optimize(optuna_objective(space, evaluator), n_trials=...)`` makes every
trial: propose a policy (``space.suggest(trial)``), fine-tune and measure it
(``evaluator.evaluate``), store the policy and all metrics in the trial's user
attrs, and return the objective values in order. A failed evaluation (e.g.
:class:`FineTuneDiverged`) stores its reason as user attr ``"fail_reason"`` and is
re-raised, so ``study.optimize(..., catch=(FineTuneDiverged,))`` records a FAILED
trial with its reason and goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError
from compsearch.evaluators.reporters import METRICS_ATTR, OptunaReporter

if TYPE_CHECKING:
    import optuna

    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.evaluators.types import EvalResult
    from compsearch.spaces.base import Space
    from compsearch.spaces.policy import Policy

#: Direction of every metric that can be an objective or a constraint.
METRIC_DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "compression_ratio": "maximize",
    "sparsity": "maximize",
    "size_bits": "minimize",
    "size_kb": "minimize",
    "bops": "minimize",
    "loss": "minimize",
    "proxy": "minimize",
}

POLICY_ATTR = "policy"
FAIL_REASON_ATTR = "fail_reason"

Objective = Callable[["optuna.Trial"], "tuple[float, ...] | float"]


def _metric_name(objective: str | Sequence[str]) -> str:
    """``"accuracy"`` or ``("accuracy", "maximize")`` -> ``"accuracy"`` (direction checked)."""
    if isinstance(objective, str):
        name, direction = objective, None
    elif isinstance(objective, (tuple, list)) and len(objective) == 2:
        name, direction = objective
    else:
        raise ConfigError(f"objective {objective!r} must be a metric name or a (metric, direction) pair")
    if name not in METRIC_DIRECTIONS:
        raise ConfigError(
            f"objective metric {name!r} is not produced by the evaluator; allowed: "
            f"{sorted(METRIC_DIRECTIONS)} (test_accuracy is never an objective: select on val)"
        )
    if direction is not None and direction != METRIC_DIRECTIONS[name]:
        raise ConfigError(
            f"objective {name!r} has direction={direction!r}; {name} is always "
            f"{METRIC_DIRECTIONS[name]!r}d"
        )
    return name


def objective_names(objectives: Sequence[str | Sequence[str]]) -> tuple[str, ...]:
    """Validated metric names of ``objectives`` (names or ``(metric, direction)`` pairs).

    Raises:
        ConfigError: empty, duplicated, or a metric the evaluator does not produce.
    """
    if isinstance(objectives, str):
        objectives = (objectives,)
    names = tuple(_metric_name(o) for o in objectives)
    if not names:
        raise ConfigError(f"objectives={objectives!r} is empty; give at least one of {sorted(METRIC_DIRECTIONS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives={list(names)} repeats a metric; each metric at most once")
    return names


def directions(objectives: Sequence[str | Sequence[str]]) -> list[str]:
    """Optuna study directions of ``objectives``, e.g. ``["maximize", "minimize"]``.

    Use as ``optuna.create_study(directions=directions(objectives))``.
    """
    return [METRIC_DIRECTIONS[n] for n in objective_names(objectives)]


@dataclass(frozen=True)
class Constraint:
    """A bound on one metric; its Optuna constraint value is ``<= 0`` when satisfied.

    Attributes:
        key: the spec key, ``"max_<metric>"`` or ``"min_<metric>"`` (the Optuna constraint name).
        metric: the bounded metric.
        bound: the bound, in the metric's units.
        upper: ``True`` for ``max_`` (value = metric - bound), ``False`` for ``min_``
            (value = bound - metric).
    """

    key: str
    metric: str
    bound: float
    upper: bool

    def value(self, metrics: Mapping[str, Any]) -> float:
        """Violation (> 0) or slack (<= 0) of ``metrics``, in the metric's units."""
        v = float(metrics[self.metric])
        return v - self.bound if self.upper else self.bound - v


def parse_constraints(constraints: Mapping[str, float] | None) -> tuple[Constraint, ...]:
    """Parse ``{"max_size_kb": 4.0, "min_accuracy": 0.9}`` into :class:`Constraint` objects.

    Raises:
        ConfigError: a key not of the form ``max_<metric>`` / ``min_<metric>`` with a known
            metric, or a bound that is not a finite number.
    """
    out = []
    for key, bound in (constraints or {}).items():
        kind, _, metric = str(key).partition("_")
        if kind not in ("max", "min") or metric not in METRIC_DIRECTIONS:
            raise ConfigError(
                f"constraint {key!r} is unknown; allowed: 'max_<metric>' or 'min_<metric>' with "
                f"<metric> in {sorted(METRIC_DIRECTIONS)}, e.g. 'max_size_kb' or 'min_accuracy'"
            )
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise ConfigError(f"constraint {key!r} = {bound!r} must be a finite number")
        out.append(Constraint(key=key, metric=metric, bound=float(bound), upper=kind == "max"))
    return tuple(out)


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


def optuna_objective(
    space: Space,
    evaluator: CompressionEvaluator,
    objectives: Sequence[str | Sequence[str]] = ("accuracy", "size_bits"),
    *,
    steps: int | None = None,
    test: bool = False,
    constraints: Mapping[str, float] | None = None,
) -> Objective:
    """An objective for ``study.optimize`` that evaluates one policy per trial.

    Each trial stores user attrs ``"policy"`` (``Policy.to_dict()``, set before the
    evaluation, so failed trials keep it too), ``"metrics"`` (all metrics, see
    :func:`collect_metrics`), the reporter's ``"intermediate"`` values, and on failure
    ``"fail_reason"`` (``"<ExceptionType>: <message>"``). With ``constraints``, it calls
    ``trial.set_constraint(key, value)`` for each (``<= 0`` = feasible), which Optuna's
    constrained samplers (NSGA-II/III, TPE, GP) read.

    Args:
        space: proposes the policy (``space.suggest(trial)``).
        evaluator: fine-tunes and measures it.
        objectives: metric names (or ``(metric, direction)`` pairs) in the order of the
            study's directions; create the study with ``directions=directions(objectives)``.
        steps: fine-tune steps per trial (None = the evaluator's configuration).
        test: also measure test accuracy (for final reporting only, never for selection).
        constraints: e.g. ``{"max_size_kb": 4.0, "min_accuracy": 0.9}``.

    Returns:
        ``objective(trial)``: a float for one objective, else a tuple in ``objectives`` order.
        For one objective, intermediate values go to ``trial.report`` and may prune the
        trial (``optuna.TrialPruned``).

    Raises:
        ConfigError: an unknown objective or constraint metric (at construction).
    """
    names = objective_names(objectives)
    bounds = parse_constraints(constraints)
    need_proxy = "proxy" in names or any(c.metric == "proxy" for c in bounds)

    def objective(trial: optuna.Trial) -> tuple[float, ...] | float:
        policy = space.suggest(trial)
        trial.set_user_attr(POLICY_ATTR, policy.to_dict())
        reporter = OptunaReporter(trial, metric=names[0])
        result = _evaluate(trial, evaluator, policy, reporter=reporter, steps=steps, test=test)
        metrics = collect_metrics(evaluator, policy, result, proxy=need_proxy)
        trial.set_user_attr(METRICS_ATTR, metrics)
        for c in bounds:
            trial.set_constraint(c.key, c.value(metrics))
        values = tuple(float(metrics[n]) for n in names)
        return values[0] if len(values) == 1 else values

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
        trial.set_user_attr(FAIL_REASON_ATTR, f"{type(e).__name__}: {e}")
        raise
