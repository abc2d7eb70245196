"""The in-process host: every job's trials one after another in this process."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from compsearch import record
from compsearch.studies.hosts.base import (
    Job,
    OnTrial,
    make_objective,
    mark_interrupted,
    open_study,
    run_trial,
    save_learned_state,
)
from compsearch.studies.results import quiet_optuna
from compsearch.studies.runfile import record_counts

if TYPE_CHECKING:
    from compsearch.studies.run import Run


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Counted trials still to run: the budget minus counted and running trials."""
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return n_trials - sum(record.counts_toward_budget(t) for t in trials) - running


def run_job(run: Run, strategy: str, seed: int, *, on_trial: OnTrial | None = None, recover: bool = True) -> optuna.Study:
    """Run (or resume) study ``<strategy>-s<seed>`` until it holds the budget of counted trials.

    Args:
        run: from :func:`~compsearch.studies.run.prepare`.
        strategy: a registered strategy.
        seed: the study seed (sampler seed and evaluator seed).
        on_trial: called after every finished trial (progress display).
        recover: mark trials left RUNNING by a killed run as interrupted first.

    Returns:
        The study.
    """
    with quiet_optuna():
        study = open_study(run, strategy, seed)
        if recover:
            mark_interrupted(study)
        objective = make_objective(run, seed)
        while budget_left(study, run.spec.trials) > 0:
            trial = run_trial(study, objective)
            record_counts(run.out_dir, run.storage, [study.study_name])
            if on_trial is not None:
                on_trial(study, trial)
        save_learned_state(run, study)
    return study


class InProcessHost:
    """Runs every job in this process, one trial at a time (``--workers 1``, the default)."""

    name = "optuna"
    processes = 1

    def run(self, run: Run, jobs: Sequence[Job], *, quiet: bool = True, recover: bool = True) -> None:
        with contextlib.ExitStack() as stack:
            on_trial = None
            if not quiet:
                from compsearch.studies.progress import RunProgress

                strategies = list(dict.fromkeys(s for s, _ in jobs))
                seeds = list(dict.fromkeys(seed for _, seed in jobs))
                on_trial = stack.enter_context(RunProgress(run, strategies, seeds, run.spec.trials)).on_trial
            for strategy, seed in jobs:
                run_job(run, strategy, seed, on_trial=on_trial, recover=recover)


__all__ = ["InProcessHost", "budget_left", "run_job"]
