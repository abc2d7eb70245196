"""Run a study's strategy x seed studies with several workers: processes or Ray Tune.

Both hosts write to the same Optuna storage layout as the single-process runner (one
study ``<strategy>-s<seed>`` per job, user attrs ``policy``/``metrics``/``fail_reason``,
constraints), so ``compsearch report`` works unchanged.

**Exact shared budget.** Several workers on one study must together run exactly
``budget`` counted trials (budget rule in :mod:`compsearch.studies.results`): none
lost, none run twice. A check-then-``ask()`` races (two workers both see one trial
left), and Optuna's ``MaxTrialsCallback`` stops only after the overshoot. Instead the
coordinator hands out *budget slots*: for every slot ``k in [0, budget)`` not held by a
live trial (counted, RUNNING or WAITING) it enqueues one empty WAITING trial tagged with
system attr ``compsearch:slot = k`` (no params: the sampler still chooses all of them).
A worker takes a slot with Optuna's atomic WAITING -> RUNNING transition
(``Study._pop_waiting_trial_id``, the same call ``Study.ask`` makes), which holds across
processes and machines for RDB and journal storages alike. A popped slot is given up
(FAILED ``"interrupted: ..."``, which never counts) when it is a duplicate (two
coordinators enqueued slot ``k``: the lower trial number keeps it), outside the budget,
or the study is already full. No slot left = the worker moves to the next job.

Resume: the coordinator first marks trials left RUNNING by a killed run as
``"interrupted"`` (only with ``recover=True``, i.e. when it is the only process on the
storage), then tops the slots up again, so interrupted trials are re-run.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState, create_trial

from compsearch.errors import CompsearchError, ConfigError
from compsearch.studies.results import (
    FAIL_REASON_ATTR,
    INTERRUPTED,
    counts_toward_budget,
    quiet_optuna,
    study_name,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from compsearch.studies.runner import RunContext

SLOT_ATTR = "compsearch:slot"
WORKER_ATTR = "compsearch:worker"
JOURNAL_FILE = "journal.log"
Job = tuple[str, int]


def default_journal_storage(out_dir: str | Path) -> str:
    """``journal:///<out_dir>/journal.log``: the storage of multi-worker runs on one machine."""
    return f"journal://{(Path(out_dir) / JOURNAL_FILE).resolve()}"


# ---- budget slots -------------------------------------------------------------------


def _is_live(trial: FrozenTrial) -> bool:
    return trial.state in (TrialState.RUNNING, TrialState.WAITING) or counts_toward_budget(trial)


def top_up_slots(study: optuna.Study, budget: int) -> int:
    """Enqueue one WAITING trial per budget slot no live trial holds; returns how many.

    Live trials without a slot (e.g. run by a single-process session) hold the lowest
    free slots, so ``live + enqueued == budget`` afterwards (unless already over it).
    """
    trials = study.get_trials(deepcopy=False)
    live = [t for t in trials if _is_live(t)]
    held = {t.system_attrs.get(SLOT_ATTR) for t in live} & set(range(budget))
    unslotted = sum(t.system_attrs.get(SLOT_ATTR) not in held for t in live)
    free = [k for k in range(budget) if k not in held][unslotted:]
    for k in free:
        study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {}, SLOT_ATTR: k}))
    return len(free)


def _give_up(study: optuna.Study, trial_id: int, why: str) -> None:
    storage = study._storage
    storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, f"{INTERRUPTED}: {why}")
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _slot_problem(trials: Sequence[FrozenTrial], mine: FrozenTrial, budget: int) -> str | None:
    """Why the popped trial ``mine`` must not run, or None."""
    slot = mine.system_attrs.get(SLOT_ATTR)
    if slot is not None and not 0 <= int(slot) < budget:
        return f"slot {slot} is outside the budget of {budget} trials"
    others = [t for t in trials if t.number != mine.number]
    if slot is not None and any(
        t.number < mine.number and t.system_attrs.get(SLOT_ATTR) == slot and _is_live(t) for t in others
    ):
        return f"duplicate of budget slot {slot}"
    used = sum(t.state == TrialState.RUNNING or counts_toward_budget(t) for t in others)
    if used >= budget:
        return f"budget of {budget} trials already used or running"
    return None


def pop_budget_trial(study: optuna.Study, budget: int) -> optuna.Trial | None:
    """Take one budget slot and return it as a running ``optuna.Trial``; None when none is left.

    The sampler proposes the trial's params when the objective suggests them, as after
    ``study.ask()``.
    """
    while True:
        trial_id = study._pop_waiting_trial_id()
        if trial_id is None:
            return None
        trials = study.get_trials(deepcopy=False)
        mine = next(t for t in trials if t._trial_id == trial_id)
        problem = _slot_problem(trials, mine, budget)
        if problem is None:
            study._thread_local.cached_all_trials = None
            return optuna.Trial(study, trial_id)
        _give_up(study, trial_id, problem)


class StorageLock:
    """A mutex shared by every process that reaches one Optuna storage, across machines.

    It lives in a companion study ``<name>:lock`` that holds one WAITING trial, the
    token: acquiring pops it (the atomic WAITING -> RUNNING transition), releasing
    finishes the held trial and enqueues a new token. A token held longer than
    ``stale_after`` seconds (its holder died) is broken: the one process whose FAIL of
    the stale trial succeeds enqueues the replacement. The report ignores the
    companion study (its name is not ``<strategy>-s<seed>``). Create the lock once before
    the workers start (:func:`prepare_jobs` does): the first token is enqueued only when
    the companion study is new.

    Used to make "read pending trials, propose, store the proposal" atomic, so a
    strategy that avoids the proposals of running trials sees every one of them.

    Args:
        storage: the shared storage.
        name: what is locked (a study name).
        stale_after: seconds after which a held token counts as abandoned.
        poll: seconds between tries (with up to 100% random jitter).
    """

    def __init__(self, storage: optuna.storages.BaseStorage, name: str, *, stale_after: float = 300.0,
                 poll: float = 0.02) -> None:
        self.study = optuna.create_study(study_name=f"{name}:lock", storage=storage, load_if_exists=True)
        self.stale_after = stale_after
        self.poll = poll
        self._held: int | None = None
        if not self.study.get_trials(deepcopy=False):  # a new lock: its first token
            self.study.enqueue_trial({})

    def acquire(self) -> None:
        import random

        while True:
            trial_id = self.study._pop_waiting_trial_id()
            if trial_id is not None:
                self._held = trial_id
                return
            self._break_stale()
            time.sleep(self.poll * (1.0 + random.random()))

    def _break_stale(self) -> None:
        from datetime import datetime, timezone

        now = datetime.now(timezone.utc)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            start = t.datetime_start  # RDB storages return naive local time, journal files aware UTC
            if start is None or (now - (start if start.tzinfo else start.astimezone())).total_seconds() < self.stale_after:
                continue
            try:
                self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            self.study.enqueue_trial({})

    def release(self) -> None:
        if self._held is None:
            return
        held, self._held = self._held, None
        self.study.enqueue_trial({})  # the next token first: a live token always exists
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # unless broken as stale
            self.study._storage.set_trial_state_values(held, TrialState.COMPLETE, [0.0])

    def __enter__(self) -> StorageLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class BudgetSpent(Exception):
    """No budget slot is left in the study (raised by :class:`BudgetedStudy.ask`)."""


class BudgetedStudy:
    """A study whose ``ask()`` takes a budget slot (:func:`pop_budget_trial`) or raises
    :class:`BudgetSpent`; every other attribute is the wrapped study's. Lets the runner's
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
        worker: stored as system attr ``compsearch:worker`` on every trial taken (host:pid/index).
    """

    def __init__(self, study: optuna.Study, *, budget: int, space: Any = None, lock: StorageLock | None = None,
                 worker: str | None = None) -> None:
        self._study = study
        self._budget = budget
        self._worker = worker
        self._space = space
        self._lock = lock if lock is not None or space is None else StorageLock(study._storage, study.study_name)

    def ask(self) -> optuna.Trial:
        with self._lock if self._lock is not None else contextlib.nullcontext():
            trial = pop_budget_trial(self._study, self._budget)
            if trial is None:
                raise BudgetSpent(self._study.study_name)
            if self._worker is not None:
                self._study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, self._worker)
            if self._space is not None:
                self._space.suggest(trial)
        return trial

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


# ---- studies of one job ----------------------------------------------------------------


def worker_seed(seed: int, worker: int) -> int:
    """Sampler seed of worker ``worker`` on study seed ``seed``: worker 0 keeps ``seed`` (one
    worker reproduces the single-process run); the others get distinct derived seeds, so
    two workers never replay one proposal sequence. The evaluator keeps ``seed``."""
    if worker == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0] % (2**31 - 1))


def open_job_study(ctx: RunContext, strategy: str, seed: int, n_trials: int, *, sampler_seed: int) -> optuna.Study:
    """Create or load study ``<strategy>-s<seed>`` with the strategy's sampler seeded ``sampler_seed``."""
    from compsearch.search.registry import get_strategy

    sampler = get_strategy(
        strategy, space=ctx.space, seed=sampler_seed, evaluator=ctx.evaluator(seed), objectives=ctx.objectives,
        constraints=ctx.spec.constraints, reference_point=ctx.reference_point, n_trials=n_trials,
        **ctx.spec.strategy_options.get(strategy, {}),
    )
    study = optuna.create_study(study_name=study_name(strategy, seed), storage=ctx.storage,
                                directions=ctx.directions, sampler=sampler, load_if_exists=True)
    for key, value in (("strategy", strategy), ("seed", seed), ("budget", n_trials)):
        study.set_user_attr(key, value)
    return study


def prepare_jobs(ctx: RunContext, jobs: Sequence[Job], n_trials: int, *, recover: bool) -> int:
    """Create every job's study, mark stale trials interrupted (``recover``), top up the slots.

    Returns:
        Slots enqueued over all jobs (the evaluations still to run).
    """
    from compsearch.studies.runner import mark_interrupted

    total = 0
    for strategy, seed in jobs:
        study = optuna.create_study(study_name=study_name(strategy, seed), storage=ctx.storage,
                                    directions=ctx.directions, load_if_exists=True)
        if recover:
            mark_interrupted(study)
        total += top_up_slots(study, n_trials)
        StorageLock(ctx.storage, study.study_name)  # create the proposal lock before any worker starts
    return total


def run_job_worker(ctx: RunContext, strategy: str, seed: int, n_trials: int, *, worker: int = 0,
                   on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
    """Run trials of one job until no budget slot is left; returns how many this worker ran."""
    from compsearch.studies.runner import make_objective, run_trial

    study = open_job_study(ctx, strategy, seed, n_trials, sampler_seed=worker_seed(seed, worker))
    budgeted = BudgetedStudy(study, budget=n_trials, space=ctx.space, worker=f"{socket.gethostname()}:{os.getpid()}/{worker}")
    objective = make_objective(ctx, seed)
    done = 0
    while True:
        try:
            trial = run_trial(budgeted, objective)  # type: ignore[arg-type]
        except BudgetSpent:
            return done
        done += 1
        if on_trial is not None:
            on_trial(study, trial)


# ---- worker processes ----------------------------------------------------------------


def _worker_main(spec: dict[str, Any], out_dir: str, storage: str, jobs: list[Job], n_trials: int,
                 worker: int, threads: int) -> None:
    """Entry of one worker process (spawned): its own evaluator, the shared storage."""
    import torch

    from compsearch.studies.runner import prepare

    torch.set_num_threads(threads)
    with quiet_optuna():
        ctx = prepare(spec, out_dir, storage=storage)
        for strategy, seed in jobs:
            run_job_worker(ctx, strategy, seed, n_trials, worker=worker)


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be an integer >= 1 (worker processes on one storage)")


def run_workers(ctx: RunContext, *, jobs: Sequence[Job], n_trials: int, workers: int, quiet: bool = True,
                recover: bool = True, threads: int | None = None) -> dict[str, int]:
    """Run ``jobs`` with ``workers`` processes sharing ``ctx.storage_url`` and each job's budget.

    Each worker builds its own evaluator with :func:`~compsearch.studies.runner.prepare`
    (the base model comes from the run folder's cache) and works through the jobs in
    order; an idle worker moves on to the next job. The storage must be reachable from
    every worker: a journal file (``journal:///path``, the default for several workers),
    PostgreSQL/MySQL, or SQLite on one machine (slow under contention).

    Args:
        ctx: from :func:`~compsearch.studies.runner.prepare`.
        jobs: ``(strategy, seed)`` pairs.
        n_trials: the budget of counted trials per job.
        workers: processes (>= 1).
        quiet: no progress display.
        recover: mark trials left RUNNING by a killed run as interrupted first. Pass False
            when other machines are running workers on the same storage right now.
        threads: torch threads per worker (default ``max(1, cpus // workers)``).

    Returns:
        ``{"enqueued": slots handed out, "workers": workers}``.

    Raises:
        CompsearchError: a worker ended with an error (its trial is recorded as interrupted).
    """
    _check_workers(workers)
    with quiet_optuna():
        enqueued = prepare_jobs(ctx, jobs, n_trials, recover=recover)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    spec = ctx.spec.model_dump(mode="json")
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_worker_main, name=f"compsearch-worker-{i}",
                           args=(spec, str(ctx.out_dir), ctx.storage_url, list(jobs), n_trials, i, threads))
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        _wait(ctx, procs, jobs, n_trials, quiet=quiet)
    except KeyboardInterrupt:
        for p in procs:  # the workers got SIGINT too and record their trial as interrupted
            p.join(timeout=30)
        raise
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise CompsearchError(f"worker(s) {failed} ended with an error (see their traceback above); "
                              f"re-run the same command to resume")
    return {"enqueued": enqueued, "workers": workers}


def _wait(ctx: RunContext, procs: list[Any], jobs: Sequence[Job], n_trials: int, *, quiet: bool) -> None:
    """Join the workers, advancing a progress display from the storage when not quiet."""
    if quiet:
        for p in procs:
            p.join()
        return
    from compsearch.studies.progress import RunProgress

    strategies = list(dict.fromkeys(s for s, _ in jobs))
    seeds = list(dict.fromkeys(seed for _, seed in jobs))
    seen: set[tuple[str, int]] = set()
    with RunProgress(ctx, strategies, seeds, n_trials) as progress:
        seen |= _finished_keys(ctx, jobs)
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            _advance(ctx, jobs, progress, seen)
        _advance(ctx, jobs, progress, seen)


def _finished_keys(ctx: RunContext, jobs: Sequence[Job]) -> set[tuple[str, int]]:
    out = set()
    for strategy, seed in jobs:
        study = optuna.load_study(study_name=study_name(strategy, seed), storage=ctx.storage)
        out |= {(study.study_name, t.number) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    return out


def _advance(ctx: RunContext, jobs: Sequence[Job], progress: Any, seen: set[tuple[str, int]]) -> None:
    for strategy, seed in jobs:
        study = optuna.load_study(study_name=study_name(strategy, seed), storage=ctx.storage)
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and (study.study_name, t.number) not in seen:
                seen.add((study.study_name, t.number))
                progress.on_trial(study, t)


# ---- Ray Tune -------------------------------------------------------------------------


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Start Ray quietly on this machine (no dashboard, no usage stats, workers' logs not
    forwarded), or join the cluster at ``address`` (``"auto"`` = the running one).
    Nothing happens when Ray is already initialized."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints no status table
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                              "logging_level": "ERROR"}
    if address is None:
        ray.init(num_cpus=num_cpus, **kwargs)
        return
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as e:
        raise ConfigError(join_failure(address, e)) from e


def join_failure(address: str, error: BaseException) -> str:
    """What to do when ``ray.init(address=...)`` could not join a cluster."""
    chain: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(chain) < 5:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " ".join(chain)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "authentication" in text.lower() or "authtoken" in text.lower():
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return (f"address={address!r}: the Ray cluster there refused this machine's token; copy the head's "
                    f"(`ray get-auth-token` on the head node prints it) into ~/.ray/auth_token or RAY_AUTH_TOKEN")
        return (f"address={address!r}: the Ray cluster there requires token authentication (Ray enables it on "
                f"`ray start --head`), which Ray turns on for this process only with --address auto. Set "
                f"RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN "
                f"(`ray get-auth-token` on the head node prints it), or run on the head node with --address auto")
    return (f"address={address!r}: could not join a Ray cluster there ({first}); start one with `ray start --head` "
            f"(and `ray start --address=HEAD:6379` on the other nodes), or leave out --address to start Ray on "
            f"this machine")


def run_ray(ctx: RunContext, *, jobs: Sequence[Job], n_trials: int, workers: int = 1, address: str | None = None,
            quiet: bool = True, recover: bool = True, scheduler: Any = None) -> dict[str, int]:
    """Run every job as one Ray Tune experiment whose searcher writes into the job's Optuna study.

    The driver holds the study and the strategy's sampler
    (:class:`compsearch.search.tune.StudySearcher`, slots taken with
    :func:`pop_budget_trial`); Tune runs the evaluations
    (:func:`compsearch.search.tune.tune_trainable`) ``workers`` at a time, each with one
    CPU. Only the driver touches the storage, so cluster nodes need no access to it.

    Args:
        ctx: from :func:`~compsearch.studies.runner.prepare`.
        jobs: ``(strategy, seed)`` pairs, run one after another.
        n_trials: the budget of counted trials per job.
        workers: concurrent Tune trials.
        address: Ray cluster address (None = start Ray locally; ``"auto"`` joins a running one).
        quiet: Tune prints nothing (else its status table).
        recover: mark trials left RUNNING by a killed driver as interrupted first.
        scheduler: a Tune trial scheduler (e.g. ``ASHAScheduler(metric="accuracy", mode="max")``);
            stopped trials become PRUNED.

    Returns:
        ``{"enqueued": slots handed out, "workers": workers}``.
    """
    _check_workers(workers)
    from ray import tune

    from compsearch.search.tune import StudySearcher, tune_trainable

    with quiet_optuna():
        enqueued = prepare_jobs(ctx, jobs, n_trials, recover=recover)
        init_ray(address, num_cpus=None if address else workers)
        for strategy, seed in jobs:
            study = open_job_study(ctx, strategy, seed, n_trials, sampler_seed=seed)
            searcher = StudySearcher(study, space=ctx.space, objectives=ctx.objectives,
                                     constraints=ctx.spec.constraints, next_trial=lambda s=study: pop_budget_trial(s, n_trials))
            trainable = tune.with_resources(tune_trainable((ctx.space, ctx.evaluator(seed))), {"cpu": 1})
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                            max_concurrent_trials=workers, reuse_actors=True),
                run_config=tune.RunConfig(name=study.study_name, storage_path=str(ctx.out_dir / "ray"),
                                          verbose=0 if quiet else 1, log_to_file=True),
            )
            tuner.fit()
    return {"enqueued": enqueued, "workers": workers}


__all__ = [
    "SLOT_ATTR",
    "BudgetSpent",
    "BudgetedStudy",
    "StorageLock",
    "default_journal_storage",
    "init_ray",
    "join_failure",
    "open_job_study",
    "pop_budget_trial",
    "prepare_jobs",
    "run_job_worker",
    "run_ray",
    "run_workers",
    "top_up_slots",
    "worker_seed",
]

