"""The trial record: the one module that writes and reads what a compsearch trial stores.

Every host (``optuna_objective``, the runner, worker processes, Ray Tune, NNI), every
reader (summary, report, progress) and the strategies use only these functions, so a
study written by any of them reads the same everywhere, and Optuna's own tools show it.

What a study stores (record version 2):

=========================================  =====================================================
where                                      what
=========================================  =====================================================
study metric names                         ``study.set_metric_names`` = the objective metrics
                                           (optuna-dashboard and ``plot_pareto_front`` label
                                           their axes with them)
study user attr ``constraint_names``       the constraint keys, in the order of the values
study user attr ``compsearch:record``      the record version (2)
trial user attr ``policy``                 ``Policy.to_dict()``, set before the evaluation
trial user attr ``canonical_policy``       a digest of the policy's canonical form (16 hex
                                           digits of SHA-256 of ``Space.canonical(policy).key``):
                                           equal exactly for equivalent policies, so readers
                                           merge them and the objective reuses a result
                                           without the model
trial user attr ``metric:<name>``          one attr per metric (``metric:accuracy``,
                                           ``metric:size_kb``, ...); :func:`read_metrics`
                                           reads them all back in one call
trial system attr ``constraints``          Optuna's own list of constraint values (``<= 0`` =
                                           satisfied), in ``constraint_names`` order: read by
                                           ``FrozenTrial.constraints``, the constrained samplers
                                           (NSGA-II/III, TPE, GP, BoTorch), ``plot_pareto_front``
                                           and optuna-dashboard 0.21 (which reads only this form)
trial user attr ``fail_reason``            why a FAILED trial failed (``"diverged: ..."``,
                                           ``"out of memory: ..."``, ``"interrupted ..."``)
trial user attr ``reused_from``            the number of the trial whose evaluation this trial
                                           reused (an equivalent policy), when it did: its
                                           metrics are the source's, nothing was evaluated
trial user attrs ``intermediate``,         the fine-tune reports ``{step: value}`` /
``intermediate_metrics``                   ``{step: metrics}`` of a multi-objective trial
trial system attr ``compsearch:proposal``  the params a strategy proposed, stored as it
                                           proposes (so other workers see them as pending)
trial system attrs ``compsearch:slot``,    the budget slot a trial holds and the worker
``compsearch:worker``                      (``host:pid/index``) that runs it (shared budgets)
trial user attr ``nni_parameter_id``       NNI's id of the trial (NNI host)
study user attrs ``strategy``, ``seed``,   which job a study is (hosts set them)
``budget``
=========================================  =====================================================

Why the list form of constraints and not ``trial.set_constraint``: Optuna 5's
``set_constraint`` writes one ``constraints:<key>`` system attr per constraint, which
optuna-dashboard 0.21 does not read (it shows no feasibility); writing both forms would
give every sampler each constraint twice (``GPSampler`` fits one GP per constraint). The
list form is what Optuna itself writes for a ``constraints_func``, and every reader above
understands it; the names live once in the study.

Reading old runs: a trial of record version 1 (one ``metrics`` dict attr, constraints
through ``set_constraint``) reads the same through these functions.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from compsearch import optuna_compat as compat
from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.metrics import Constraint, parse_constraints

if TYPE_CHECKING:
    from compsearch.spaces.policy import Policy

RECORD_VERSION = 2
VERSION_ATTR = "compsearch:record"
CONSTRAINT_NAMES_ATTR = "constraint_names"
POLICY_ATTR = "policy"
CANONICAL_ATTR = "canonical_policy"
METRIC_PREFIX = "metric:"
LEGACY_METRICS_ATTR = "metrics"
FAIL_REASON_ATTR = "fail_reason"
REUSED_ATTR = "reused_from"
INTERMEDIATE_ATTR = "intermediate"
INTERMEDIATE_METRICS_ATTR = "intermediate_metrics"
PROPOSAL_ATTR = "compsearch:proposal"
SLOT_ATTR = "compsearch:slot"
WORKER_ATTR = "compsearch:worker"
NNI_ID_ATTR = "nni_parameter_id"
CONSTRAINTS_ATTR = compat.CONSTRAINTS_KEY
#: Prefix of every fail reason that does not count toward the budget (the trial is re-run).
INTERRUPTED = "interrupted"

Objectives = Sequence[tuple[str, str]]
Constraints = Sequence[Constraint] | Mapping[str, float] | None


def _bounds(constraints: Constraints) -> tuple[Constraint, ...]:
    if constraints is None or isinstance(constraints, Mapping):
        return parse_constraints(constraints)
    return tuple(constraints)


def _plain(value: Any) -> Any:
    """A JSON-storable value: numpy scalars become Python numbers."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


# ---- the study ------------------------------------------------------------------------------


def setup_study(study: optuna.Study, objectives: Objectives, constraints: Constraints = None,
                attrs: Mapping[str, Any] | None = None) -> None:
    """Record the objective metric names (``study.set_metric_names``), the constraint names,
    the record version and the study user attrs ``attrs`` (e.g. ``strategy``, ``seed``,
    ``budget``), each written only when it changes; idempotent on resume.

    Raises:
        ConfigError: the study already holds other metric names (another spec's study).
    """
    names = [m for m, _ in objectives]
    existing = study.metric_names
    if existing is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still so in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    elif list(existing) != names:
        raise ConfigError(f"study {study.study_name!r} records objectives {list(existing)}, not {names}; "
                          f"use another study name or storage")
    keys = [c.key for c in _bounds(constraints)]
    stored = study.user_attrs
    wanted = {**(attrs or {}), CONSTRAINT_NAMES_ATTR: keys, VERSION_ATTR: RECORD_VERSION}
    for key, value in wanted.items():
        if stored.get(key) != value:
            study.set_user_attr(key, value)


def constraint_names(study: optuna.Study) -> list[str]:
    """The constraint keys of ``study`` in the order of every trial's constraint values."""
    return list(study.user_attrs.get(CONSTRAINT_NAMES_ATTR, []))


# ---- writing a running trial -------------------------------------------------------------------


def canonical_digest(canonical: Policy | str) -> str:
    """16 hex digits of SHA-256 of a canonical policy's key (``Space.canonical(policy)``, or
    its ``.key``): the ``canonical_policy`` attr."""
    key = canonical if isinstance(canonical, str) else canonical.key
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def record_policy(trial: optuna.Trial, policy: Policy | Mapping[str, Any], *,
                  canonical: Policy | str | None = None) -> None:
    """Store the policy (``Policy.to_dict()``) before the evaluation, so a failed trial keeps
    it, and with ``canonical`` (``Space.canonical(policy)``) its canonical digest."""
    to_dict = getattr(policy, "to_dict", None)
    trial.set_user_attr(POLICY_ATTR, to_dict() if callable(to_dict) else dict(policy))
    if canonical is not None:
        trial.set_user_attr(CANONICAL_ATTR, canonical_digest(canonical))


def record_proposal(study: optuna.Study, trial: optuna.Trial | FrozenTrial, params: Mapping[str, Any]) -> None:
    """Store a strategy's proposed params as the trial's ``compsearch:proposal`` (other
    workers read it as pending before the objective suggests the params)."""
    compat.set_trial_system_attr(study, trial, PROPOSAL_ATTR, {k: _plain(v) for k, v in params.items()})


def slot_attrs(slot: int) -> dict[str, Any]:
    """System attrs of an empty WAITING trial holding budget slot ``slot`` (``create_trial``)."""
    return {"fixed_params": {}, SLOT_ATTR: int(slot)}


def read_slot(trial: FrozenTrial) -> int | None:
    """The budget slot ``trial`` holds, or None."""
    slot = trial.system_attrs.get(SLOT_ATTR)
    return None if slot is None else int(slot)


def record_worker(study: optuna.Study, trial: optuna.Trial | FrozenTrial | int, worker: str) -> None:
    """Store which worker (``host:pid/index``) runs ``trial``."""
    compat.set_trial_system_attr(study, trial, WORKER_ATTR, str(worker))


def read_worker(trial: FrozenTrial) -> str | None:
    """The worker (``host:pid/index``) that ran ``trial``, or None."""
    worker = trial.system_attrs.get(WORKER_ATTR)
    return None if worker is None else str(worker)


def record_nni_id(trial: optuna.Trial, parameter_id: int) -> None:
    """Store NNI's parameter id of ``trial``."""
    trial.set_user_attr(NNI_ID_ATTR, int(parameter_id))


def record_metrics(trial: optuna.Trial, metrics: Mapping[str, Any]) -> None:
    """Store every metric as its own user attr ``metric:<name>``."""
    for name, value in metrics.items():
        trial.set_user_attr(METRIC_PREFIX + str(name), _plain(value))


def constraint_values(constraints: Constraints, metrics: Mapping[str, Any]) -> list[float]:
    """Optuna constraint values (``<= 0`` = satisfied) of ``metrics``.

    Raises:
        ConfigError: a constrained metric is missing (the evaluation does not produce it).
        FineTuneDiverged: a constrained metric is not finite (the trial fails ``"diverged"``:
            the samplers cannot model an infinite violation).
    """
    out = []
    for c in _bounds(constraints):
        v = metrics.get(c.metric)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"constraint {c.key!r}: the evaluation's metrics lack {c.metric!r}; it gave {sorted(metrics)}")
        if not math.isfinite(v):
            raise FineTuneDiverged(f"constraint {c.key!r}: {c.metric} = {v} is not finite")
        out.append(c.value(metrics))
    return out


def record_constraints(study: optuna.Study, trial: optuna.Trial, constraints: Constraints,
                       metrics: Mapping[str, Any]) -> list[float]:
    """Store the constraint values in Optuna's list form (see the module docstring); returns them."""
    values = constraint_values(constraints, metrics)
    if values:
        compat.set_trial_system_attr(study, trial, CONSTRAINTS_ATTR, values)
    return values


def objective_values(metrics: Mapping[str, Any], objectives: Objectives) -> list[float]:
    """The objective values of ``metrics`` in study order.

    Raises:
        ConfigError: an objective metric is missing or not a number.
    """
    missing = [m for m, _ in objectives if not isinstance(metrics.get(m), (int, float)) or isinstance(metrics.get(m), bool)]
    if missing:
        raise ConfigError(f"the evaluation's metrics lack objective(s) {missing}; it gave {sorted(metrics)}")
    return [float(metrics[m]) for m, _ in objectives]


def record_success(study: optuna.Study, trial: optuna.Trial, metrics: Mapping[str, Any], *,
                   objectives: Objectives, constraints: Constraints = None) -> list[float]:
    """Store the metrics and constraint values of a finished evaluation; returns the objective
    values to tell (``study.tell(trial, values)``, or return them from an objective)."""
    values = objective_values(metrics, objectives)
    record_metrics(trial, metrics)
    record_constraints(study, trial, constraints, metrics)
    return values


def record_reused(study: optuna.Study, trial: optuna.Trial, source: FrozenTrial, *,
                  objectives: Objectives, constraints: Constraints = None) -> list[float]:
    """Record that ``trial`` reuses the evaluation of ``source`` (an equivalent policy): its
    metrics and constraint values are copied and ``reused_from`` = ``source.number``.
    Returns the objective values to tell."""
    trial.set_user_attr(REUSED_ATTR, int(source.number))
    return record_success(study, trial, read_metrics(source), objectives=objectives, constraints=constraints)


def find_equivalent(study: optuna.Study, digest: str, *, exclude: int | None = None) -> FrozenTrial | None:
    """The first COMPLETE trial (by number, ``exclude`` left out) whose ``canonical_policy``
    is ``digest``: an evaluation of an equivalent policy, or None."""
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        if t.number != exclude and t.user_attrs.get(CANONICAL_ATTR) == digest and t.values is not None:
            return t
    return None


def reuse_equivalent(study: optuna.Study, trial: optuna.Trial, *, objectives: Objectives,
                     constraints: Constraints = None) -> list[float] | None:
    """When a COMPLETE trial of ``study`` holds a policy equivalent to ``trial``'s (the same
    ``canonical_policy``, recorded by :func:`record_policy`), record ``trial`` as reusing it
    (:func:`record_reused`) and return the objective values to tell; else None (evaluate)."""
    digest = trial.user_attrs.get(CANONICAL_ATTR)
    source = None if digest is None else find_equivalent(study, str(digest), exclude=trial.number)
    if source is None:
        return None
    return record_reused(study, trial, source, objectives=objectives, constraints=constraints)


def record_failure(trial: optuna.Trial, reason: str) -> None:
    """Store why the trial failed (``fail_reason``); the caller then tells FAIL."""
    trial.set_user_attr(FAIL_REASON_ATTR, str(reason))


def tell_failure(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Store ``reason`` and tell the trial FAILED."""
    record_failure(trial, reason)
    study.tell(trial, state=TrialState.FAIL)


def record_interrupted(study: optuna.Study, trial: FrozenTrial | int, why: str) -> bool:
    """Mark a trial this process holds only as frozen or id FAILED ``"interrupted<why>"``
    (not counted, re-run); False when it had finished meanwhile."""
    try:
        compat.set_trial_user_attr(study, trial, FAIL_REASON_ATTR, f"{INTERRUPTED}{why}")
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return compat.finish_trial(study, trial, TrialState.FAIL)


def record_intermediate(trial: optuna.Trial, step: int, value: float, metrics: Mapping[str, float] | None = None) -> None:
    """Add ``value`` (and ``metrics``) at ``step`` to the trial's intermediate attrs (for
    multi-objective studies, where Optuna forbids ``trial.report``)."""
    values = dict(trial.user_attrs.get(INTERMEDIATE_ATTR, {}))
    values[str(step)] = float(value)
    trial.set_user_attr(INTERMEDIATE_ATTR, values)
    if metrics:
        per_step = dict(trial.user_attrs.get(INTERMEDIATE_METRICS_ATTR, {}))
        per_step[str(step)] = dict(metrics)
        trial.set_user_attr(INTERMEDIATE_METRICS_ATTR, per_step)


def frozen_attrs(*, policy: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 constraints: Constraints = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(user_attrs, system_attrs)`` of a finished trial built with
    ``optuna.trial.create_trial`` (imported results), in this record's layout."""
    user: dict[str, Any] = {}
    if policy is not None:
        user[POLICY_ATTR] = dict(policy)
    user.update({METRIC_PREFIX + k: _plain(v) for k, v in (metrics or {}).items()})
    values = constraint_values(constraints, metrics or {})
    return user, ({CONSTRAINTS_ATTR: values} if values else {})


# ---- reading ----------------------------------------------------------------------------------


def read_policy(trial: optuna.Trial | FrozenTrial) -> dict[str, Any] | None:
    """The stored policy dict (``Policy.from_dict`` reads it), or None."""
    policy = trial.user_attrs.get(POLICY_ATTR)
    return dict(policy) if isinstance(policy, Mapping) else None


def read_metrics(trial: optuna.Trial | FrozenTrial) -> dict[str, Any]:
    """Every stored metric, ``name -> value`` (record version 1's ``metrics`` dict too)."""
    attrs = trial.user_attrs
    legacy = attrs.get(LEGACY_METRICS_ATTR)
    out: dict[str, Any] = dict(legacy) if isinstance(legacy, Mapping) else {}
    out.update({k[len(METRIC_PREFIX):]: v for k, v in attrs.items() if k.startswith(METRIC_PREFIX)})
    return out


def read_fail_reason(trial: optuna.Trial | FrozenTrial) -> str | None:
    """Why the trial failed, or None."""
    reason = trial.user_attrs.get(FAIL_REASON_ATTR)
    return None if reason is None else str(reason)


def read_proposal(trial: FrozenTrial) -> dict[str, Any] | None:
    """The params a strategy proposed for this trial, or None."""
    proposal = trial.system_attrs.get(PROPOSAL_ATTR)
    return dict(proposal) if isinstance(proposal, Mapping) else None


def read_canonical(trial: optuna.Trial | FrozenTrial) -> str | None:
    """The trial's canonical policy digest (``canonical_policy``), or None (not recorded)."""
    digest = trial.user_attrs.get(CANONICAL_ATTR)
    return None if digest is None else str(digest)


def read_reused(trial: optuna.Trial | FrozenTrial) -> int | None:
    """The number of the trial whose evaluation this one reused, or None."""
    source = trial.user_attrs.get(REUSED_ATTR)
    return None if source is None else int(source)


def read_constraints(trial: FrozenTrial) -> list[float]:
    """The trial's constraint values (``<= 0`` = satisfied), in the study's ``constraint_names`` order."""
    return [float(v) for v in trial.constraints.values()]


def is_feasible(trial: FrozenTrial) -> bool:
    """COMPLETE with values, and every stored constraint value ``<= 0``."""
    if trial.state != TrialState.COMPLETE or trial.values is None:
        return False
    return all(v <= 0.0 for v in read_constraints(trial))


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether ``trial`` uses budget: COMPLETE, PRUNED, or FAILED with a reason that does not
    start with ``"interrupted"`` (a diverged fine-tune, out of memory)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        reason = read_fail_reason(trial)
        return reason is not None and not reason.startswith(INTERRUPTED)
    return False


__all__ = [
    "CANONICAL_ATTR",
    "CONSTRAINTS_ATTR",
    "CONSTRAINT_NAMES_ATTR",
    "FAIL_REASON_ATTR",
    "INTERMEDIATE_ATTR",
    "INTERMEDIATE_METRICS_ATTR",
    "INTERRUPTED",
    "LEGACY_METRICS_ATTR",
    "METRIC_PREFIX",
    "NNI_ID_ATTR",
    "SLOT_ATTR",
    "WORKER_ATTR",
    "POLICY_ATTR",
    "PROPOSAL_ATTR",
    "RECORD_VERSION",
    "REUSED_ATTR",
    "VERSION_ATTR",
    "canonical_digest",
    "constraint_names",
    "constraint_values",
    "counts_toward_budget",
    "find_equivalent",
    "frozen_attrs",
    "is_feasible",
    "objective_values",
    "read_canonical",
    "read_constraints",
    "read_fail_reason",
    "read_metrics",
    "read_policy",
    "read_proposal",
    "read_reused",
    "read_slot",
    "read_worker",
    "record_constraints",
    "record_failure",
    "record_intermediate",
    "record_interrupted",
    "record_metrics",
    "record_nni_id",
    "record_policy",
    "record_proposal",
    "record_reused",
    "record_success",
    "record_worker",
    "reuse_equivalent",
    "slot_attrs",
    "setup_study",
    "tell_failure",
]
