"""The Ray Tune host: every job as one Tune experiment whose searcher writes the job's study.

The driver holds the study and the strategy's sampler
(:func:`~compsearch.studies.hosts.tune.StudySearcher`, slots taken with
:func:`~compsearch.studies.hosts.slots.pop_budget_trial`); Tune runs the evaluations
(:func:`~compsearch.studies.hosts.tune.tune_trainable`) ``workers`` at a time, each with
one CPU. Only the driver touches the storage, so cluster nodes need no access to it.
Ray is imported only when this host runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError
from compsearch.studies.hosts.base import (
    Job,
    check_workers,
    open_study,
    prepare_jobs,
    save_learned_state,
)
from compsearch.studies.hosts.slots import pop_budget_trial
from compsearch.studies.results import quiet_optuna, study_name
from compsearch.studies.runfile import record_counts

if TYPE_CHECKING:
    from compsearch.studies.run import Run


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


class RayHost:
    """Runs every job as a Ray Tune experiment, ``workers`` trials at a time.

    Args:
        workers: concurrent Tune trials.
        address: Ray cluster address (None = start Ray locally; ``"auto"`` joins a running one).
        scheduler: a Tune trial scheduler (e.g. ``ASHAScheduler(metric="accuracy", mode="max")``);
            stopped trials become PRUNED.
    """

    name = "ray"
    processes = 2  # only the driver writes the storage, but from Tune's threads too: a journal file, not SQLite

    def __init__(self, workers: int = 1, *, address: str | None = None, scheduler: Any = None) -> None:
        self.workers = check_workers(workers)
        self.address = address
        self.scheduler = scheduler

    def run(self, run: Run, jobs: Sequence[Job], *, quiet: bool = True, recover: bool = True) -> None:
        from ray import tune

        from compsearch.studies.hosts.tune import StudySearcher, tune_trainable

        with quiet_optuna():
            self.enqueued = prepare_jobs(run, jobs, recover=recover)
            init_ray(self.address, num_cpus=None if self.address else self.workers)
            for strategy, seed in jobs:
                study = open_study(run, strategy, seed)
                searcher = StudySearcher(study, space=run.space, objectives=run.objectives,
                                         constraints=run.spec.constraints,
                                         next_trial=lambda s=study: pop_budget_trial(s, run.spec.trials))
                trainable = tune.with_resources(tune_trainable((run.space, run.evaluator(seed))), {"cpu": 1})
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=searcher, scheduler=self.scheduler, num_samples=-1,
                                                max_concurrent_trials=self.workers, reuse_actors=True),
                    run_config=tune.RunConfig(name=study.study_name, storage_path=str(run.out_dir / "ray"),
                                              verbose=0 if quiet else 1, log_to_file=True),
                )
                try:
                    tuner.fit()
                finally:
                    record_counts(run.out_dir, run.storage, [study_name(strategy, seed)])
                save_learned_state(run, study)


__all__ = ["RayHost", "init_ray", "join_failure"]
