"""Reading a run's Optuna studies: storage, budget accounting, feasible points, curves.

Shared by the runner (resume, progress), the report and ``compsearch show``.

**Budget rule.** A study's budget counts the trials whose outcome is a property of the
candidate: COMPLETE, PRUNED, and FAILED with a ``fail_reason`` user attr that does not
start with ``"interrupted"`` (a diverged fine-tune, out of memory). Trials that stopped
for an outside reason -- Ctrl-C, a killed process (left RUNNING, marked FAILED
``"interrupted"`` on resume), an internal error, or a FAILED trial without a reason (e.g.
Optuna's heartbeat) -- do not count and their candidates are re-run. Counted trials are
ordered by trial number; only the first ``budget`` of them enter the report.

A trial that reused the evaluation of an equivalent policy (``reused_from``, see
:mod:`compsearch.evaluators.objective`) is COMPLETE and counts like any other: the budget
is the number of proposals a strategy gets, and a strategy that repeats itself spends
budget without a new evaluation (the report shows how many per strategy).

**Feasibility.** A COMPLETE trial is feasible when every constraint value it stored with
the trial record (:mod:`compsearch.record`) is ``<= 0``; only feasible trials add points to fronts and
hypervolumes (an infeasible or failed evaluation still uses budget).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from compsearch import record

FAIL_REASON_ATTR = record.FAIL_REASON_ATTR
INTERRUPTED = record.INTERRUPTED
_STUDY_RE = re.compile(r"^(?P<strategy>.+)-s(?P<seed>\d+)$")


def study_name(strategy: str, seed: int) -> str:
    """``"<strategy>-s<seed>"``, the name of one strategy x seed study."""
    return f"{strategy}-s{seed}"


def parse_study_name(name: str) -> tuple[str, int] | None:
    """Inverse of :func:`study_name`; None for names of another form."""
    m = _STUDY_RE.match(name)
    return (m["strategy"], int(m["seed"])) if m else None


fail_reason = record.read_fail_reason
counts_toward_budget = record.counts_toward_budget
is_feasible = record.is_feasible
trial_metrics = record.read_metrics


def counted_trials(trials: Sequence[FrozenTrial], budget: int | None = None) -> list[FrozenTrial]:
    """The trials that count toward the budget, by trial number; the first ``budget`` of them."""
    out = sorted((t for t in trials if counts_toward_budget(t)), key=lambda t: t.number)
    return out if budget is None else out[:budget]


def trial_point(trial: FrozenTrial) -> list[float] | None:
    """The objective values of a feasible trial; None for any other trial."""
    return [float(v) for v in trial.values] if is_feasible(trial) else None


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Counted trials per outcome: ``complete``, ``feasible``, ``pruned``, ``failed``, and
    ``reused``: COMPLETE trials that reused an equivalent policy's evaluation (``reused_from``)."""
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "feasible": sum(is_feasible(t) for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "reused": sum(t.state == TrialState.COMPLETE and record.read_reused(t) is not None for t in trials),
    }


def load_studies(storage: optuna.storages.BaseStorage) -> dict[tuple[str, int], list[FrozenTrial]]:
    """``(strategy, seed) -> all trials`` of every ``<strategy>-s<seed>`` study in ``storage``."""
    out: dict[tuple[str, int], list[FrozenTrial]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        key = parse_study_name(summary.study_name)
        if key is None:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        out[key] = study.get_trials(deepcopy=False)
    return out


__all__ = [
    "FAIL_REASON_ATTR",
    "INTERRUPTED",
    "counted_trials",
    "counts_toward_budget",
    "fail_reason",
    "is_feasible",
    "load_studies",
    "parse_study_name",
    "state_counts",
    "study_name",
    "trial_metrics",
    "trial_point",
]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs at WARNING inside the block (no per-trial INFO lines), restored after."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
