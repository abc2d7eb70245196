"""Budget slots: several workers on one study run exactly ``budget`` counted trials together.

A check-then-``ask()`` races (two workers both see one trial left), and Optuna's
``MaxTrialsCallback`` stops only after the overshoot. Instead the coordinator hands out
*budget slots*: for every slot ``k in [0, budget)`` not held by a live trial (counted,
RUNNING or WAITING) it enqueues one empty WAITING trial tagged with system attr
``compsearch:slot = k`` (no params: the sampler still chooses all of them). A worker takes
a slot with Optuna's atomic WAITING -> RUNNING transition (the call ``Study.ask`` makes),
which holds across processes and machines for RDB and journal storages alike. A popped
slot is given up (FAILED ``"interrupted: ..."``, which never counts) when it is a
duplicate (two coordinators enqueued slot ``k``: the lower trial number keeps it),
outside the budget, or the study is already full. No slot left = the worker moves on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from compsearch import optuna_compat as compat
from compsearch import record
from compsearch.studies.hosts.lock import StorageLock

SLOT_ATTR = record.SLOT_ATTR
WORKER_ATTR = record.WORKER_ATTR


def _is_live(trial: FrozenTrial) -> bool:
    return trial.state in (TrialState.RUNNING, TrialState.WAITING) or record.counts_toward_budget(trial)


def top_up_slots(study: optuna.Study, budget: int) -> int:
    """Enqueue one WAITING trial per budget slot no live trial holds; returns how many.

    Live trials without a slot (e.g. run by a single-process session) hold the lowest
    free slots, so ``live + enqueued == budget`` afterwards (unless already over it).
    """
    trials = study.get_trials(deepcopy=False)
    live = [t for t in trials if _is_live(t)]
    held = {record.read_slot(t) for t in live} & set(range(budget))
    unslotted = sum(record.read_slot(t) not in held for t in live)
    free = [k for k in range(budget) if k not in held][unslotted:]
    for k in free:
        study.add_trial(create_trial(state=TrialState.WAITING, system_attrs=record.slot_attrs(k)))
    return len(free)


def _slot_problem(trials: Sequence[FrozenTrial], mine: FrozenTrial, budget: int) -> str | None:
    """Why the popped trial ``mine`` must not run, or None."""
    slot = record.read_slot(mine)
    if slot is not None and not 0 <= slot < budget:
        return f"slot {slot} is outside the budget of {budget} trials"
    others = [t for t in trials if t.number != mine.number]
    if slot is not None and any(
        t.number < mine.number and record.read_slot(t) == slot and _is_live(t) for t in others
    ):
        return f"duplicate of budget slot {slot}"
    used = sum(t.state == TrialState.RUNNING or record.counts_toward_budget(t) for t in others)
    if used >= budget:
        return f"budget of {budget} trials already used or running"
    return None


def pop_budget_trial(study: optuna.Study, budget: int) -> optuna.Trial | None:
    """Take one budget slot and return it as a running ``optuna.Trial``; None when none is left.

    The sampler proposes the trial's params when the objective suggests them, as after
    ``study.ask()``.
    """
    while True:
        trial_id = compat.pop_waiting_trial_id(study)
        if trial_id is None:
            return None
        trials = study.get_trials(deepcopy=False)
        mine = next(t for t in trials if compat.trial_id(t) == trial_id)
        problem = _slot_problem(trials, mine, budget)
        if problem is None:
            compat.forget_cached_trials(study)
            return optuna.Trial(study, trial_id)
        record.record_interrupted(study, trial_id, f": {problem}")


class BudgetSpent(Exception):
    """No budget slot is left in the study (raised by :class:`BudgetedStudy.ask`)."""


class BudgetedStudy:
    """A study whose ``ask()`` takes a budget slot (:func:`pop_budget_trial`) or raises
    :class:`BudgetSpent`; every other attribute is the wrapped study's. Lets the host's
    ``run_trial`` (failure handling included) run unchanged on a shared budget.

    With ``space``, ``ask()`` also has the sampler propose every parameter of the space
    (``space.suggest(trial)``) while holding ``lock``: between reading the running trials
    and storing its proposal no other worker proposes, so a strategy that avoids pending
    proposals (the RL and BO samplers) never duplicates a running trial. The objective's
    own ``space.suggest`` then returns the stored values.

    Args:
        study: the shared study.
        budget: its budget of counted trials.
        space: the compression space (None = params are sampled lazily by the objective).
        lock: the proposal lock (default: a :class:`StorageLock` on the study's name when
            ``space`` is given).
        worker: stored as system attr ``compsearch:worker`` on every trial taken
            (``host:pid/index``: a resume recovers trials of ended local workers at once).
    """

    def __init__(self, study: optuna.Study, *, budget: int, space: Any = None, lock: StorageLock | None = None,
                 worker: str | None = None) -> None:
        self._study = study
        self._budget = budget
        self._worker = worker
        self._space = space
        self._lock = lock if lock is not None or space is None else StorageLock(compat.storage_of(study), study.study_name)

    def ask(self) -> optuna.Trial:
        with self._lock if self._lock is not None else contextlib.nullcontext():
            trial = pop_budget_trial(self._study, self._budget)
            if trial is None:
                raise BudgetSpent(self._study.study_name)
            if self._worker is not None:
                record.record_worker(self._study, trial, self._worker)
            if self._space is not None:
                self._space.suggest(trial)
        return trial

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


__all__ = ["SLOT_ATTR", "WORKER_ATTR", "BudgetSpent", "BudgetedStudy", "pop_budget_trial", "top_up_slots"]
