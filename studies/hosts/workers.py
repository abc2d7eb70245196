"""Worker processes on one storage: several spawned processes share each job's budget exactly.

Each worker builds its own :class:`~compsearch.studies.run.Run` (the base model comes from
the run folder's cache) and works through the jobs in order, taking budget slots
(:mod:`~compsearch.studies.hosts.slots`) and proposing under the storage lock
(:mod:`~compsearch.studies.hosts.lock`); an idle worker moves on to the next job. The
storage must be reachable from every worker: a journal file (the default for several
workers), PostgreSQL/MySQL, or SQLite on one machine (slow under contention).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna

from compsearch.errors import CompsearchError
from compsearch.studies.hosts.base import (
    Job,
    OnTrial,
    check_workers,
    make_objective,
    open_study,
    prepare_jobs,
    run_trial,
    save_learned_state,
    worker_seed,
)
from compsearch.studies.hosts.lock import this_process
from compsearch.studies.hosts.slots import BudgetedStudy, BudgetSpent
from compsearch.studies.results import quiet_optuna, study_name
from compsearch.studies.runfile import record_counts

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from compsearch.studies.run import Run


def run_job_worker(run: Run, strategy: str, seed: int, *, worker: int = 0, on_trial: OnTrial | None = None) -> int:
    """Run trials of one job until no budget slot is left; returns how many this worker ran."""
    study = open_study(run, strategy, seed, sampler_seed=worker_seed(seed, worker))
    budgeted = BudgetedStudy(study, budget=run.spec.trials, space=run.space, worker=f"{this_process()}/{worker}")
    objective = make_objective(run, seed)
    done = 0
    while True:
        try:
            trial = run_trial(budgeted, objective)  # type: ignore[arg-type]
        except BudgetSpent:
            if worker == 0:  # worker 0 samples with the study seed, as a single process would
                wait_running(study)  # the other workers' last trials, so that the state learns from them
                save_learned_state(run, study)
            return done
        done += 1
        if on_trial is not None:
            on_trial(study, trial)


def wait_running(study: optuna.Study, *, timeout: float = 600.0, poll: float = 1.0,
                 clock: Any = time.monotonic, sleep: Any = time.sleep) -> bool:
    """Wait until ``study`` holds no RUNNING trial, at most ``timeout`` seconds (a worker that
    died leaves its trial RUNNING until the next run recovers it); True when none is left."""
    end = clock() + timeout
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if clock() >= end:
            return False
        sleep(poll)
    return True


def _worker_main(spec: dict[str, Any], out_dir: str, storage: str, jobs: list[Job], worker: int, threads: int) -> None:
    """Entry of one worker process (spawned): its own run and evaluators, the shared storage."""
    import torch

    from compsearch.studies.run import prepare

    torch.set_num_threads(threads)
    with quiet_optuna():
        run = prepare(spec, out_dir, storage=storage)
        for strategy, seed in jobs:
            run_job_worker(run, strategy, seed, worker=worker)


class WorkerHost:
    """Runs the jobs with ``workers`` spawned processes sharing the run's storage.

    Args:
        workers: processes (>= 1).
        threads: torch threads per worker (default ``max(1, cpus // workers)``).
    """

    name = "workers"

    def __init__(self, workers: int, *, threads: int | None = None) -> None:
        self.processes = check_workers(workers)
        self.threads = threads

    def run(self, run: Run, jobs: Sequence[Job], *, quiet: bool = True, recover: bool = True) -> None:
        """Run ``jobs``; ``recover=False`` when other machines run workers on this storage now.

        Raises:
            CompsearchError: a worker ended with an error (its trial is recorded as interrupted).
        """
        with quiet_optuna():
            self.enqueued = prepare_jobs(run, jobs, recover=recover)
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.processes)
        spec = run.spec.model_dump(mode="json")
        spawn = mp.get_context("spawn")
        procs = [spawn.Process(target=_worker_main, name=f"compsearch-worker-{i}",
                               args=(spec, str(run.out_dir), run.storage_url, list(jobs), i, threads))
                 for i in range(self.processes)]
        for p in procs:
            p.start()
        try:
            _wait(run, procs, jobs, quiet=quiet)
        except KeyboardInterrupt:
            for p in procs:  # the workers got SIGINT too and record their trial as interrupted
                p.join(timeout=30)
            raise
        finally:
            record_counts(run.out_dir, run.storage, [study_name(s, seed) for s, seed in jobs])
        failed = [p.name for p in procs if p.exitcode != 0]
        if failed:
            raise CompsearchError(f"worker(s) {failed} ended with an error (see their traceback above); "
                                  f"re-run the same command to resume")


def _wait(run: Run, procs: list[Any], jobs: Sequence[Job], *, quiet: bool) -> None:
    """Join the workers, advancing a progress display from the storage when not quiet."""
    if quiet:
        for p in procs:
            p.join()
        return
    from compsearch.studies.progress import RunProgress

    strategies = list(dict.fromkeys(s for s, _ in jobs))
    seeds = list(dict.fromkeys(seed for _, seed in jobs))
    seen = _finished(run, jobs)
    with RunProgress(run, strategies, seeds, run.spec.trials) as progress:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            _advance(run, jobs, progress, seen)
        _advance(run, jobs, progress, seen)


def _studies(run: Run, jobs: Sequence[Job]) -> list[optuna.Study]:
    return [optuna.load_study(study_name=study_name(s, seed), storage=run.storage) for s, seed in jobs]


def _finished(run: Run, jobs: Sequence[Job]) -> set[tuple[str, int]]:
    return {(st.study_name, t.number) for st in _studies(run, jobs) for t in st.get_trials(deepcopy=False)
            if t.state.is_finished()}


def _advance(run: Run, jobs: Sequence[Job], progress: Any, seen: set[tuple[str, int]]) -> None:
    for study in _studies(run, jobs):
        trials: list[FrozenTrial] = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and (study.study_name, t.number) not in seen:
                seen.add((study.study_name, t.number))
                progress.on_trial(study, t)


__all__ = ["WorkerHost", "run_job_worker", "wait_running"]
