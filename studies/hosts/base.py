"""What every host shares: the host protocol, opening a job's study, one trial with its failures.

A **host** runs a run's jobs (``(strategy, seed)`` pairs, one Optuna study
``<strategy>-s<seed>`` each) until every study holds ``spec.trials`` counted trials (budget
rule in :mod:`compsearch.studies.results`). Hosts: in-process
(:mod:`~compsearch.studies.hosts.inprocess`), worker processes on one storage
(:mod:`~compsearch.studies.hosts.workers`), Ray Tune (:mod:`~compsearch.studies.hosts.ray`),
NNI (:mod:`~compsearch.studies.hosts.nni`). Every host records trials only through
:mod:`compsearch.record`, so ``compsearch report`` reads them all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from compsearch import optuna_compat as compat
from compsearch import record
from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.studies.hosts.lock import StorageLock, owner_ended
from compsearch.studies.hosts.slots import top_up_slots
from compsearch.studies.results import study_name
from compsearch.studies.runfile import stamp_study

if TYPE_CHECKING:
    from compsearch.studies.run import Run

Job = tuple[str, int]
OnTrial = Callable[[optuna.Study, FrozenTrial], None]


class Host(Protocol):
    """Where trials run.

    ``run(run, jobs, quiet=..., recover=...)`` runs every job until its study holds the
    spec's budget of counted trials; ``recover`` marks trials left RUNNING by a killed run as
    interrupted first (only safe when no other process works on the storage). ``processes``
    says whether several processes write the storage (a journal file, not SQLite, then).
    """

    name: str
    processes: int

    def run(self, run: Run, jobs: Sequence[Job], *, quiet: bool = True, recover: bool = True) -> None: ...


def check_workers(workers: Any) -> int:
    """``workers`` as an integer >= 1, else :class:`ConfigError`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be an integer >= 1 (worker processes on one storage)")
    return workers


def worker_seed(seed: int, worker: int) -> int:
    """Sampler seed of worker ``worker`` on study seed ``seed``: worker 0 keeps ``seed`` (one
    worker reproduces the single-process run); the others get distinct derived seeds, so
    two workers never replay one proposal sequence. The evaluator keeps ``seed``."""
    if worker == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0] % (2**31 - 1))


def open_study(run: Run, strategy: str, seed: int, *, sampler_seed: int | None = None) -> optuna.Study:
    """Create or load study ``<strategy>-s<seed>`` with the strategy's sampler (seeded
    ``sampler_seed``, default the study seed), its objectives and constraints recorded."""
    from compsearch.search.registry import get_strategy

    n_trials = run.spec.trials
    sampler = get_strategy(
        strategy, space=run.space, seed=seed if sampler_seed is None else sampler_seed, evaluator=run.evaluator(seed),
        objectives=run.objectives, constraints=run.spec.constraints, reference_point=run.reference_point,
        n_trials=n_trials, **run.spec.strategy_options.get(strategy, {}),
    )
    study = optuna.create_study(study_name=study_name(strategy, seed), storage=run.storage,
                                directions=run.directions, sampler=sampler, load_if_exists=True)
    _set_study_attrs(study, run, strategy, seed)
    return study


def save_learned_state(run: Run, study: optuna.Study) -> None:
    """Save the learned state of a learning strategy's sampler (``hirl``, ``n2n``) to
    ``<run>/strategy_state/<study>.pt``, the file a ``warm_start`` on another model reads."""
    from compsearch.search.rl.persist import save_study_state

    save_study_state(study, run.out_dir)


def _set_study_attrs(study: optuna.Study, run: Run, strategy: str, seed: int) -> None:
    record.setup_study(study, run.objectives, run.constraints,
                       attrs={"strategy": strategy, "seed": seed, "budget": run.spec.trials})
    stamp_study(study, run.run_id)


def make_objective(run: Run, seed: int | None = None) -> Callable[[optuna.Trial], Any]:
    """The Optuna objective of study seed ``seed`` (default: the first seed): decode the
    params into a policy, fine-tune and measure it with the seed's evaluator, record it."""
    from compsearch.evaluators.objective import optuna_objective

    seed = run.spec.seeds[0] if seed is None else seed
    return optuna_objective(run.space, run.evaluator(seed), run.objectives, constraints=run.spec.constraints)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def run_trial(study: optuna.Study, objective: Callable[[optuna.Trial], Any]) -> FrozenTrial:
    """Ask, evaluate and tell one trial; failures become FAILED trials with a reason.

    Diverged fine-tuning and out-of-memory errors are results (the study goes on);
    Ctrl-C is recorded as ``"interrupted"`` and re-raised; any other exception is an
    internal error, recorded as ``"interrupted by internal error: ..."`` and re-raised.
    """
    trial = study.ask()
    try:
        values = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except KeyboardInterrupt:
        record.tell_failure(study, trial, f"{record.INTERRUPTED} (KeyboardInterrupt)")
        raise
    except (FineTuneDiverged, RuntimeError, MemoryError) as e:
        if not isinstance(e, FineTuneDiverged) and not _is_oom(e):
            record.tell_failure(study, trial, f"{record.INTERRUPTED} by internal error: {type(e).__name__}: {e}")
            raise
        record.tell_failure(study, trial, f"{'out of memory' if _is_oom(e) else 'diverged'}: {type(e).__name__}: {e}")
    except Exception as e:
        record.tell_failure(study, trial, f"{record.INTERRUPTED} by internal error: {type(e).__name__}: {e}")
        raise
    else:
        study.tell(trial, values)
    return compat.frozen(study, trial)


def mark_interrupted(study: optuna.Study, *, all_running: bool = True) -> int:
    """Mark trials left RUNNING/WAITING by ended processes FAILED ``"interrupted"``; returns how many.

    Args:
        all_running: every RUNNING/WAITING trial (only when no other process works on the
            study). False: only RUNNING trials whose worker (``compsearch:worker``) is a
            process of this machine that no longer runs -- safe while other machines work.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if not all_running:
        stale = [t for t in stale if t.state == TrialState.RUNNING and owner_ended(record.read_worker(t))]
    return sum(record.record_interrupted(study, t, " (process ended while the trial ran)") for t in stale)


def prepare_jobs(run: Run, jobs: Sequence[Job], *, recover: bool) -> int:
    """Create every job's study, mark stale trials interrupted, top up the budget slots,
    create the proposal locks (before any worker starts).

    Returns:
        Slots enqueued over all jobs (the evaluations still to run).
    """
    total = 0
    for strategy, seed in jobs:
        study = optuna.create_study(study_name=study_name(strategy, seed), storage=run.storage,
                                    directions=run.directions, load_if_exists=True)
        _set_study_attrs(study, run, strategy, seed)
        mark_interrupted(study, all_running=recover)
        total += top_up_slots(study, run.spec.trials)
        StorageLock(run.storage, study.study_name)
    return total


__all__ = [
    "Host",
    "Job",
    "OnTrial",
    "check_workers",
    "make_objective",
    "mark_interrupted",
    "open_study",
    "prepare_jobs",
    "run_trial",
    "worker_seed",
]
