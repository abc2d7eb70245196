"""Ray Tune adapters: a trainable that evaluates a policy, and a searcher backed by an Optuna study.

Ray is imported inside the functions, so ``import compsearch`` never needs it.

Why our own :class:`StudySearcher` rather than ``ray.tune.search.optuna.OptunaSearch``:
OptunaSearch accepts ``sampler=``, ``storage=`` and list-valued ``metric``/``mode``,
but it only tells objective values, so a study it writes lacks what the rest of
compsearch reads -- the policy and every metric, the constraint
values for the constrained samplers, a FAILED state with ``fail_reason`` for a
diverged fine-tune, PRUNED for a trial that ASHA stopped -- and it cannot take a trial
from a shared budget. The searcher below is about 100 lines of ask/tell around the
same sampler, so a Tune run leaves the same study layout as ``compsearch run`` and
``compsearch report`` works unchanged. It runs on the driver: only the driver needs
the storage; Tune workers just evaluate.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from compsearch import record
from compsearch.errors import ConfigError, FineTuneDiverged

if TYPE_CHECKING:
    import optuna

    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.spaces.base import Space

STATE_FILE = "compsearch_state.json"
FINAL_KEY = "final"
FAIL_KEY = "fail_reason"


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class CheckpointTuneReporter:
    """Reporter for a Tune function trainable: every intermediate value goes to
    ``ray.tune.report`` with a small checkpoint, so a stopped trial can resume.

    Intermediate reports are ``{"step": s, metric: value, **metrics}``; ``final`` reports
    the final metrics with ``"final": 1.0``. The checkpoint is a directory holding
    ``compsearch_state.json`` = ``{"step": s, "history": [[step, value], ...], "final": metrics|None}``.

    Resume is by deterministic replay: the fine-tune is seeded, so a restarted trial
    recomputes the same values; reports up to the checkpoint's step are not sent again
    (Tune's ``training_iteration`` continues without repeats), and a trial whose checkpoint
    holds final metrics reports them at once without evaluating.

    Args:
        metric: key of the reported value (ASHA stops on it).
        resume: the state read from ``ray.tune.get_checkpoint()`` (None = fresh trial).
        constant: values added to every intermediate report (the candidate's exact costs).
    """

    def __init__(self, *, metric: str = "accuracy", resume: Mapping[str, Any] | None = None,
                 constant: Mapping[str, float] | None = None) -> None:
        from ray import tune

        self._tune = tune
        self.metric = metric
        self.constant = _numeric(constant or {})
        state = dict(resume or {})
        self.resume_step = int(state.get("step", 0))
        self.history: list[list[float]] = [list(h) for h in state.get("history", [])]
        self.final_metrics: dict[str, float] | None = state.get("final")

    def _checkpoint(self, state: dict[str, Any]) -> Any:
        folder = tempfile.mkdtemp(prefix="compsearch-ckpt-")
        with open(os.path.join(folder, STATE_FILE), "w") as f:
            json.dump(state, f)
        return self._tune.Checkpoint.from_directory(folder)

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
        if step <= self.resume_step:
            return
        self.history.append([step, float(value)])
        state = {"step": step, "history": self.history, "final": None}
        payload = {"step": step, **self.constant, **_numeric(metrics or {}), self.metric: float(value)}
        self._tune.report(payload, checkpoint=self._checkpoint(state))

    def final(self, metrics: dict[str, Any]) -> None:
        numeric = _numeric(metrics)
        state = {"step": self.history[-1][0] if self.history else 0, "history": self.history, "final": numeric}
        self._tune.report({**numeric, FINAL_KEY: 1.0}, checkpoint=self._checkpoint(state))


def read_checkpoint_state(checkpoint: Any) -> dict[str, Any] | None:
    """The state dict a :class:`CheckpointTuneReporter` checkpoint holds (None for None)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return dict(json.load(f))


def _resolve_target(target: Any) -> tuple[Space, CompressionEvaluator]:
    """``(space, evaluator)`` from a pair or a prepared Run (its first seed)."""
    if isinstance(target, tuple) and len(target) == 2:
        return target[0], target[1]
    if hasattr(target, "space") and hasattr(target, "evaluator") and hasattr(target, "spec"):
        return target.space, target.evaluator(target.spec.seeds[0])
    raise ConfigError(
        f"tune_trainable got {type(target).__name__}; pass (space, evaluator), or a Run from "
        f"compsearch.studies.run.prepare(spec, out_dir)"
    )


def tune_trainable(target: Any, *, steps: int | None = None, metric: str = "accuracy") -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable that evaluates one compression policy per trial.

    The trial's ``config`` holds the space's params, flat (``space.tune_param_space()``
    as ``param_space``) or under ``"params"`` (what :class:`StudySearcher` suggests). The
    trainable decodes them into a policy, fine-tunes and measures it with the evaluator,
    reports validation accuracy after every fine-tune report (``FineTuneConfig.report_every``;
    0 = once per epoch) with a checkpoint and the candidate's exact costs (``size_kb``, ``bops``, ...), then the final metrics (``"final": 1.0``, all
    of :func:`~compsearch.evaluators.objective.collect_metrics`). A diverged fine-tune
    reports ``{"fail_reason": "diverged: ...", "final": 1.0}`` and ends normally (a
    result, not an error).

    Args:
        target: ``(space, evaluator)``, or a prepared ``Run`` (its space and first seed's evaluator).
            The evaluator travels with the function (cloudpickle) to every Tune worker.
        steps: fine-tune steps per trial (None = the evaluator's configuration).
        metric: key of the intermediate value (for ASHA: ``metric="accuracy", mode="max"``).

    Returns:
        ``trainable(config)`` for ``ray.tune.Tuner``.
    """
    space, evaluator = _resolve_target(target)
    names = space.param_names()

    def trainable(config: dict[str, Any]) -> None:
        from ray import tune

        from compsearch.evaluators.objective import collect_metrics

        params = config.get("params", config)
        policy = space.decode({n: params[n] for n in names})
        reporter = CheckpointTuneReporter(metric=metric, resume=read_checkpoint_state(tune.get_checkpoint()),
                                          constant=evaluator.cost(policy))
        if reporter.final_metrics is not None:
            tune.report({**reporter.final_metrics, FINAL_KEY: 1.0})
            return
        try:
            result = evaluator.evaluate(policy, steps=steps, reporter=reporter)
        except FineTuneDiverged as e:
            tune.report({FAIL_KEY: f"diverged: {type(e).__name__}: {e}", FINAL_KEY: 1.0})
            return
        reporter.final(collect_metrics(evaluator, policy, result))

    return trainable


def _searcher_base() -> type:
    from ray.tune.search import Searcher

    return Searcher


def StudySearcher(  # noqa: N802 - a class factory, so that ray stays a lazy import
    study: optuna.Study,
    *,
    space: Space,
    objectives: Sequence[tuple[str, str]],
    constraints: Mapping[str, float] | None = None,
    next_trial: Callable[[], optuna.Trial | None] | None = None,
    max_trials: int | None = None,
) -> Any:
    """A Ray Tune ``Searcher`` that asks ``study`` (and so its sampler) for every trial.

    ``suggest`` takes a trial (``next_trial()``, default ``study.ask()`` up to
    ``max_trials``), lets the study's sampler propose the space's params
    (``space.suggest(trial)``), records the policy and returns
    ``{"params": params, "optuna_trial": number}``; no trial left -> ``Searcher.FINISHED``.
    A policy equivalent to a COMPLETE trial's is not sent to Tune: the trial reuses that
    result (``record.reuse_equivalent``), is told at once, and the next trial is taken.
    ``on_trial_complete`` tells the study, through :mod:`compsearch.record`: the final
    report's objective values (COMPLETE, with every metric and the constraint values); a
    ``fail_reason`` -> FAILED with that reason; a trial stopped before its final report
    (ASHA) -> PRUNED, its last intermediate values kept in the record's intermediate attrs;
    a Tune error -> FAILED ``"interrupted by internal error: ..."`` (not counted, re-run on resume).

    Args:
        study: the Optuna study (any storage); its directions follow ``objectives``.
        space: the compression space.
        objectives: ``(metric, direction)`` pairs in the study's value order.
        constraints: e.g. ``{"max_size_kb": 4.0}`` (as in the study spec).
        next_trial: where trials come from (e.g. a shared budget); overrides ``max_trials``.
        max_trials: ask at most this many trials (None = until Tune stops asking).
    """
    from compsearch.metrics import parse_constraints

    base = _searcher_base()
    bounds = parse_constraints(constraints)
    metrics = [m for m, _ in objectives]
    modes = ["max" if d == "maximize" else "min" for _, d in objectives]
    if list(study.directions) and len(study.directions) != len(metrics):
        raise ConfigError(f"study has {len(study.directions)} directions but objectives={list(objectives)}")
    record.setup_study(study, list(objectives), bounds)

    class _StudySearcher(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            # No metric/mode for Tune: it would then demand every objective in every intermediate
            # result; the objectives are read from the final report in on_trial_complete.
            super().__init__()
            self.objectives = list(zip(metrics, modes, strict=True))
            self.study = study
            self.asked = 0
            self.live: dict[str, optuna.Trial] = {}

        def set_search_properties(self, metric: Any, mode: Any, config: dict[str, Any], **spec: Any) -> bool:
            return True  # the space and objectives are fixed by the study

        def _take(self) -> optuna.Trial | None:
            if next_trial is not None:
                return next_trial()
            if max_trials is not None and self.asked >= max_trials:
                return None
            return self.study.ask()

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            from compsearch.evaluators.objective import suggest_policy

            while True:  # a policy equivalent to a COMPLETE trial's reuses it and is told at once
                trial = self._take()
                if trial is None:
                    return str(base.FINISHED)  # type: ignore[attr-defined]
                self.asked += 1
                suggest_policy(space, trial)
                reused = record.reuse_equivalent(self.study, trial, objectives=list(objectives), constraints=bounds)
                if reused is None:
                    break
                self.study.tell(trial, reused)
            self.live[trial_id] = trial
            return {"params": dict(trial.params), "optuna_trial": trial.number}

        def save(self, checkpoint_path: str) -> None:
            # The state is the Optuna study itself; Tune's experiment checkpoint only records where.
            with open(checkpoint_path, "w") as f:
                json.dump({"study_name": self.study.study_name, "asked": self.asked}, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path) as f:
                self.asked = int(json.load(f).get("asked", 0))

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            trial = self.live.pop(trial_id, None)
            if trial is not None:
                _tell(self.study, trial, result, error=error, objectives=list(objectives), bounds=bounds)

    return _StudySearcher()


def _tell(study: optuna.Study, trial: optuna.Trial, result: Mapping[str, Any] | None, *, error: bool,
          objectives: Sequence[tuple[str, str]], bounds: Sequence[Any]) -> None:
    """Record one finished Tune trial in the study (see :func:`StudySearcher`)."""
    from optuna.trial import TrialState

    metrics = [m for m, _ in objectives]
    result = dict(result or {})
    if error:
        record.tell_failure(study, trial, f"{record.INTERRUPTED} by internal error: the Ray Tune trial raised (see its error.txt)")
    elif result.get(FAIL_KEY):
        record.tell_failure(study, trial, str(result[FAIL_KEY]))
    elif result.get(FINAL_KEY) and all(m in result for m in metrics):
        numeric = {k: v for k, v in _numeric(result).items() if k not in (FINAL_KEY,) and not _tune_key(k)}
        study.tell(trial, record.record_success(study, trial, numeric, objectives=objectives, constraints=bounds))
    else:
        step = result.get("step")
        if step is not None and math.isfinite(float(step)):
            numeric = {k: v for k, v in _numeric(result).items() if not _tune_key(k)}
            record.record_intermediate(trial, int(step), numeric.get(metrics[0], math.nan), numeric)
        study.tell(trial, state=TrialState.PRUNED)


_TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
              "iterations_since_restore", "done", "optuna_trial", "step"}


def _tune_key(key: str) -> bool:
    """Bookkeeping keys Tune adds to every result (kept out of the trial's ``metrics``)."""
    return key in _TUNE_KEYS or key.startswith("config/")


def tune_searcher(
    strategy: str | optuna.samplers.BaseSampler,
    space: Space,
    objectives: Sequence[str | tuple[str, str]] = ("accuracy", "size_bits"),
    *,
    seed: int | None = None,
    evaluator: CompressionEvaluator | None = None,
    constraints: Mapping[str, float] | None = None,
    n_trials: int | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    **options: Any,
) -> Any:
    """A multi-objective Ray Tune searcher driven by a registered strategy (or any sampler).

    Use with ``tune.Tuner(tune_trainable((space, ev)), tune_config=tune.TuneConfig(
    search_alg=tune_searcher("nsga2", space, ...), scheduler=ASHAScheduler(metric="accuracy",
    mode="max"), num_samples=-1))``; give the scheduler its own metric, not ``TuneConfig``.

    Args:
        strategy: a registered strategy name (``list_strategies()``) or an Optuna sampler.
        space: the compression space.
        objectives: metric names or ``(metric, direction)`` pairs (directions are the metrics' own).
        seed: the strategy's seed.
        evaluator: given to compression-aware strategies (costs, proxy, sensitivity).
        constraints: e.g. ``{"max_size_kb": 4.0, "min_accuracy": 0.9}``.
        n_trials: stop after this many trials (None = ``num_samples`` decides).
        storage, study_name: where the study lives (default: in memory).
        **options: the strategy's options (unknown ones raise ``TypeError``).

    Returns:
        A ``ray.tune.search.Searcher``; its ``.study`` is the Optuna study.
    """
    import optuna

    from compsearch.metrics import objective_pairs
    from compsearch.search.registry import get_strategy

    pairs = objective_pairs(objectives)
    if isinstance(strategy, str):
        sampler = get_strategy(strategy, space=space, seed=seed, evaluator=evaluator, objectives=pairs,
                               constraints=constraints, n_trials=n_trials, **options)
    elif isinstance(strategy, optuna.samplers.BaseSampler):
        if options:
            raise TypeError(f"tune_searcher got options {sorted(options)} with a sampler instance; options "
                            f"are for a strategy name")
        sampler = strategy
    else:
        raise ConfigError(f"strategy={strategy!r} must be a registered strategy name or an optuna sampler")
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                directions=[d for _, d in pairs], load_if_exists=study_name is not None)  # type: ignore[misc]
    return StudySearcher(study, space=space, objectives=pairs, constraints=constraints, max_trials=n_trials)


__all__ = [
    "CheckpointTuneReporter",
    "StudySearcher",
    "read_checkpoint_state",
    "tune_searcher",
    "tune_trainable",
]
