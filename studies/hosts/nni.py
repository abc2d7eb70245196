"""The NNI host: a compsearch study as NNI experiments.

* ``python -m compsearch.nni_trial --spec SPEC --out DIR [--seed S]`` is the trial
  command (:func:`main`): it builds the run (:func:`~compsearch.studies.run.prepare`; the
  base model comes from the run folder's cache), decodes ``nni.get_next_parameter()`` into a
  policy, fine-tunes and measures it, reports validation accuracy per fine-tune report
  (``nni.report_intermediate_result``) and every final metric (``nni.report_final_result``,
  ``"default"`` = the first objective).
* :class:`~compsearch.studies.hosts.nni_tuner.SpecTuner` is the tuner NNI instantiates
  from JSON ``class_args`` (``spec``, ``out_dir``, ``strategy``, ``seed``, ...): a
  ``StrategyTuner`` over the spec's space.
* :func:`nni_experiment` puts both into a local ``nni.experiment.Experiment``.
* :class:`NNIHost` runs a run's jobs as such experiments, one after another, on the run's
  storage (``compsearch run --backend nni``).

The storage reaches NNI's tuner process as run.json records it (relative to the run folder,
or without its password; the password travels in the environment variable
``COMPSEARCH_STORAGE``), so nothing NNI writes to disk holds a credential. A diverged
fine-tune exits with status 3, so NNI marks the trial FAILED and the tuner records it as
such. NNI must be installed (``pip install nni``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compsearch.errors import CompsearchError, FineTuneDiverged
from compsearch.studies.hosts.base import Job, check_workers, mark_interrupted, open_study
from compsearch.studies.hosts.inprocess import budget_left
from compsearch.studies.results import quiet_optuna
from compsearch.studies.runfile import record_counts
from compsearch.studies.storage import ENV_STORAGE, has_secret, record_of

if TYPE_CHECKING:
    from compsearch.studies.run import Run

DIVERGED_EXIT = 3
SPEC_FILE = "nni_spec.json"


def load_spec_file(spec: Any) -> Any:
    """A spec from a ``.json`` file (what :func:`nni_experiment` writes), a TOML path or a mapping."""
    from compsearch.studies.spec import load_spec

    if isinstance(spec, (str, Path)) and str(spec).endswith(".json"):
        return load_spec(json.loads(Path(spec).read_text()))
    return load_spec(spec)


def run_trial(spec: Any, out_dir: str, *, seed: int = 0) -> dict[str, Any]:
    """Evaluate the policy NNI gives this trial and report to NNI; returns the final metrics.

    Raises:
        FineTuneDiverged: the fine-tune diverged (the trial fails).
    """
    import nni

    from compsearch.evaluators.objective import collect_metrics
    from compsearch.evaluators.reporters import NNIReporter
    from compsearch.studies.run import prepare

    run = prepare(load_spec_file(spec), out_dir)
    params = nni.get_next_parameter()
    policy = run.space.decode(params)
    evaluator = run.evaluator(seed)
    reporter = NNIReporter(metric=run.metrics[0])
    result = evaluator.evaluate(policy, reporter=reporter)
    metrics = collect_metrics(evaluator, policy, result)
    reporter.final(metrics)
    return metrics


def nni_experiment(spec: Any, out_dir: str | Path, *, strategy: str = "random", seed: int = 0,
                   trials: int | None = None, concurrency: int = 1, storage: str | None = None,
                   options: dict[str, Any] | None = None) -> Any:
    """A local ``nni.experiment.Experiment`` running ``strategy`` on the study ``spec``.

    Writes the effective spec to ``<out_dir>/nni_spec.json`` and prepares the run folder
    (the base model is trained once here, before any trial). Start it with
    ``exp.start(port)`` (or ``exp.run(port)``) and always ``exp.stop()``.

    Args:
        spec: a spec (mapping, TOML path or StudySpec).
        out_dir: the run folder; NNI's own files go to ``<out_dir>/nni``.
        strategy: a registered strategy (the tuner).
        seed: the study seed.
        trials: the budget (default: the spec's ``trials``).
        concurrency: trials at once.
        storage: where the tuner keeps its study (see ``SpecTuner``; default in memory).
            A password in it is passed to the tuner in ``COMPSEARCH_STORAGE``, never written.
        options: the strategy's options.
    """
    from nni.experiment import CustomAlgorithmConfig, Experiment

    from compsearch.studies.run import prepare

    out = Path(out_dir).expanduser().resolve()
    run = prepare(load_spec_file(spec), out)
    spec_path = out / SPEC_FILE
    spec_path.write_text(json.dumps(run.spec.model_dump(mode="json")))
    if storage and has_secret(storage):
        os.environ[ENV_STORAGE] = storage  # NNI's dispatcher inherits it; the class_args below hold no password
    budget = trials or run.spec.trials
    exp = Experiment("local")
    exp.config.experiment_name = f"compsearch-{run.spec.name}-{strategy}-s{seed}"
    exp.config.trial_command = f"{sys.executable} -m compsearch.nni_trial --spec {spec_path} --out {out} --seed {seed}"
    exp.config.trial_code_directory = str(out)
    exp.config.experiment_working_directory = str(out / "nni")
    exp.config.search_space = run.space.nni_search_space()
    exp.config.tuner = CustomAlgorithmConfig(
        class_name="compsearch.nni_trial.SpecTuner", code_directory=str(out),
        class_args={"spec": str(spec_path), "out_dir": str(out), "strategy": strategy, "seed": seed,
                    "n_trials": budget, "storage": record_of(storage, out) if storage else None, **(options or {})},
    )
    exp.config.max_trial_number = budget
    exp.config.trial_concurrency = concurrency
    exp.config.training_service.use_active_gpu = False
    return exp


_DONE = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


def wait_recorded(study: Any, *, timeout: float = 120.0, poll: float = 1.0) -> int:
    """Wait until NNI's tuner process has told ``study`` every trial it asked for.

    NNI marks a job SUCCEEDED when its process exits; the tuner (another process) receives the
    final result later and only then tells the study. Stopping the experiment in between would
    leave that trial RUNNING. Returns how many trials are still RUNNING after ``timeout``
    seconds (0 when all were recorded); those are reported on stderr, and a resume marks them
    interrupted (not counted) and runs as many again.
    """
    from optuna.trial import TrialState

    end = time.monotonic() + timeout
    while True:
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if running == 0:
            return 0
        if time.monotonic() >= end:
            print(f"{running} trial(s) of {study.study_name} were not recorded by NNI's tuner within "
                  f"{timeout:.0f} s; a resume marks them interrupted and runs as many again", file=sys.stderr)
            return running
        time.sleep(poll)


class NNIHost:
    """Runs every job as a local NNI experiment on the run's storage, ``workers`` trials at a
    time, until its study holds the budget (``compsearch run --backend nni``).

    Args:
        workers: NNI's trial concurrency.
        timeout: seconds one experiment may take before it is stopped.
    """

    name = "nni"
    processes = 2  # NNI's tuner process and this one open the storage

    def __init__(self, workers: int = 1, *, timeout: float = 24 * 3600, record_timeout: float = 120.0) -> None:
        self.workers = check_workers(workers)
        self.timeout = timeout
        self.record_timeout = record_timeout

    def run(self, run: Run, jobs: Sequence[Job], *, quiet: bool = True, recover: bool = True) -> None:
        from compsearch.studies.pgserver import free_port

        for strategy, seed in jobs:
            with quiet_optuna():
                study = open_study(run, strategy, seed)
                if recover:
                    mark_interrupted(study)
                left = budget_left(study, run.spec.trials)
            if left <= 0:
                continue
            exp = nni_experiment(run.spec, run.out_dir, strategy=strategy, seed=seed, trials=left,
                                 concurrency=self.workers, storage=run.storage_url)
            try:
                exp.start(free_port(), debug=False)
                self._wait(exp, left)
                wait_recorded(study, timeout=self.record_timeout)
            finally:
                exp.stop()
                record_counts(run.out_dir, run.storage, [study.study_name])

    def _wait(self, exp: Any, n: int) -> None:
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            jobs = exp.list_trial_jobs()
            if len(jobs) >= n and all(j.status in _DONE for j in jobs):
                return
            if exp.get_status() in ("ERROR", "STOPPED"):
                raise CompsearchError(f"the NNI experiment ended with status {exp.get_status()}; see its log under "
                                      f"the run folder's nni/ folder (NNI gives its tuner process 10 s to start, "
                                      f"which a loaded machine can miss); re-run the same command to resume")
            time.sleep(2)
        raise CompsearchError(f"the NNI experiment did not finish {n} trials in {self.timeout:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of ``python -m compsearch.nni_trial``."""
    parser = argparse.ArgumentParser(prog="python -m compsearch.nni_trial", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--spec", required=True, help="study spec (.toml, or the .json nni_experiment writes)")
    parser.add_argument("--out", required=True, help="run folder (base-model cache)")
    parser.add_argument("--seed", type=int, default=0, help="study seed (evaluator)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    try:
        run_trial(args.spec, args.out, seed=args.seed)
    except FineTuneDiverged as e:
        print(f"diverged: {e}", file=sys.stderr)
        return DIVERGED_EXIT
    return 0


__all__ = ["DIVERGED_EXIT", "NNIHost", "load_spec_file", "main", "nni_experiment", "run_trial"]
