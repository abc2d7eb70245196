"""An NNI tuner that runs any registered compsearch strategy.

NNI asks a tuner for parameters and tells it the final result of each trial; an Optuna
sampler is driven by ask/tell on a study. :class:`StrategyTuner` maps one onto the
other with an (in-memory, by default) Optuna study:

* ``generate_parameters(id)`` -> ``study.ask()``, the strategy proposes every dimension
  of the space (``space.suggest(trial)``) -> the params dict (JSON numbers/strings);
* ``receive_trial_result(id, params, value)`` -> ``value`` is the trial's whole final
  metric dict (``NNIReporter`` reports all metrics with ``"default"`` = the first
  objective), so a multi-objective study is told every objective; the metrics and the
  constraint values are recorded through :mod:`compsearch.record`;
* ``trial_end(id, success=False)`` -> FAILED with ``fail_reason``; ``trial_end(id, success=True)``
  before the final result (NNI's manager may send a trial's metrics after its end event) waits
  for the result: the trial is FAILED ("ended without a final result") only if none arrived
  ``result_grace`` seconds after the end, checked whenever NNI next calls the tuner;
* the budget: after ``n_trials`` asks, ``nni.NoMoreTrialError``.

This module imports ``nni`` (needed to subclass its ``Tuner``); import it only where
NNI is installed (``pip install nni``). :mod:`compsearch.studies.hosts.nni` holds the trial
entry (``python -m compsearch.nni_trial``), the spec-driven ``SpecTuner`` that NNI
instantiates from JSON ``class_args``, and the NNI host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import nni
    from nni.tuner import Tuner
except ImportError as e:  # pragma: no cover - exercised only without nni
    raise ImportError(f"compsearch.nni_tuner needs NNI ({e}); install it with: pip install nni") from None

from compsearch import record
from compsearch.errors import CompsearchError, ConfigError

if TYPE_CHECKING:
    import optuna

    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.spaces.base import Space


def metrics_of(value: Any, first: str) -> dict[str, float]:
    """The numeric metrics of an NNI final result: a dict (``"default"`` dropped unless it is
    the only entry, then it is ``first``) or a bare number (the ``first`` objective)."""
    if isinstance(value, Mapping):
        out = {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if set(out) == {"default"}:
            return {first: out["default"]}
        out.pop("default", None)
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {first: float(value)}
    raise ConfigError(f"NNI final result {value!r} is neither a number nor a metric dict")


class StrategyTuner(Tuner):
    """An ``nni.tuner.Tuner`` backed by a compsearch strategy (any Optuna sampler).

    Args:
        space: the compression space (NNI's search space must be ``space.nni_search_space()``).
        objectives: ``(metric, direction)`` pairs; the study's values in this order.
        strategy: a registered strategy name or an Optuna sampler.
        seed: the strategy's seed.
        evaluator: given to compression-aware strategies (costs, proxy, sensitivity).
        constraints: e.g. ``{"max_size_kb": 4.0}`` (recorded through :mod:`compsearch.record`).
        n_trials: ask at most this many trials, then ``NoMoreTrialError`` (None = unlimited).
        storage, study_name: where the study lives (default: in memory).
        study: use this study (with its sampler) instead of creating one; ``strategy``,
            ``seed``, ``storage``, ``study_name`` and ``options`` are then unused.
        state_dir: a run folder: after every told trial, a learning strategy's state (``hirl``,
            ``n2n``) is saved to ``<state_dir>/strategy_state/<study>.pt`` (the sampler lives in
            this tuner's process, so only the tuner can save it), for a later ``warm_start``.
        result_grace: seconds a trial that NNI reported SUCCEEDED may wait for its final result
            before it is told FAILED.
        **options: the strategy's options (unknown ones raise ``TypeError``).
    """

    def __init__(
        self,
        *,
        space: Space,
        objectives: Sequence[tuple[str, str]],
        strategy: str | optuna.samplers.BaseSampler = "random",
        seed: int | None = None,
        evaluator: CompressionEvaluator | None = None,
        constraints: Mapping[str, float] | None = None,
        n_trials: int | None = None,
        storage: str | optuna.storages.BaseStorage | None = None,
        study_name: str | None = None,
        study: optuna.Study | None = None,
        state_dir: str | Path | None = None,
        result_grace: float = 60.0,
        **options: Any,
    ) -> None:
        import optuna

        from compsearch.metrics import parse_constraints
        from compsearch.search.registry import get_strategy

        self.space = space
        self.objectives = tuple((str(m), str(d)) for m, d in objectives)
        self.bounds = parse_constraints(constraints)
        self.n_trials = n_trials
        if study is not None:
            self.study = study
        else:
            if isinstance(strategy, str):
                sampler = get_strategy(strategy, space=space, seed=seed, evaluator=evaluator,
                                       objectives=self.objectives, constraints=constraints, n_trials=n_trials, **options)
            else:
                sampler = strategy
            self.study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                             directions=[d for _, d in self.objectives],  # type: ignore[misc]
                                             load_if_exists=study_name is not None)
        record.setup_study(self.study, self.objectives, self.bounds)
        self.running: dict[int, optuna.Trial] = {}
        self.ended: dict[int, float] = {}  # parameter id -> when NNI said it SUCCEEDED, its result not yet here
        self.result_grace = float(result_grace)
        self.asked = 0
        self.state_dir = state_dir

    def _save_state(self) -> None:
        if self.state_dir is not None:
            from compsearch.search.rl.persist import save_study_state

            save_study_state(self.study, self.state_dir)

    # ---- nni.tuner.Tuner ---------------------------------------------------------------
    def update_search_space(self, search_space: dict[str, Any]) -> None:
        """Check that NNI's search space is this space's (it is fixed by the space)."""
        expected = self.space.nni_search_space()
        if search_space and dict(search_space) != expected:
            extra = sorted(set(search_space) ^ set(expected))[:5]
            raise ConfigError(f"NNI search space differs from the compression space's (e.g. {extra}); "
                              f"set experiment.config.search_space = space.nni_search_space()")

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        """Ask the study for a trial; the strategy proposes every dimension. A policy
        equivalent to a COMPLETE trial's reuses that result (``record.reuse_equivalent``),
        is told at once, and the next trial is asked."""
        from compsearch.evaluators.objective import suggest_policy

        self._fail_overdue()
        while True:
            if self.n_trials is not None and self.asked >= self.n_trials:
                raise nni.NoMoreTrialError(f"budget of {self.n_trials} trials used")
            trial = self.study.ask()
            self.asked += 1
            suggest_policy(self.space, trial)
            reused = record.reuse_equivalent(self.study, trial, objectives=self.objectives, constraints=self.bounds)
            if reused is None:
                break
            self.study.tell(trial, reused)
        record.record_nni_id(trial, parameter_id)
        self.running[int(parameter_id)] = trial
        return {k: _plain(v) for k, v in trial.params.items()}

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        """Tell the study the trial's objective values (from the full final metric dict)."""
        trial = self.running.pop(int(parameter_id), None)
        self.ended.pop(int(parameter_id), None)
        self._fail_overdue()
        if trial is None:
            return  # a customized trial NNI did not get from this tuner
        metrics = metrics_of(value, self.objectives[0][0])
        missing = [m for m, _ in self.objectives if m not in metrics or not math.isfinite(metrics[m])]
        if missing:
            record.record_metrics(trial, metrics)
            record.tell_failure(self.study, trial, f"final result lacks objective(s) {missing}: {sorted(metrics)}")
        else:
            self.study.tell(trial, record.record_success(self.study, trial, metrics, objectives=self.objectives,
                                                        constraints=self.bounds))
        self._save_state()

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A failed trial is FAILED (its reason: NNI's trial log). A succeeded one whose final
        result has not arrived waits ``result_grace`` seconds for it (NNI's manager may send a
        trial's metrics after its end event)."""
        pid = int(parameter_id)
        if pid in self.running:
            if success:
                self.ended[pid] = time.monotonic()
            else:
                self._fail(pid, "the NNI trial failed (see its trial.log)")
        self._fail_overdue()

    def _fail(self, parameter_id: int, reason: str) -> None:
        self.ended.pop(parameter_id, None)
        record.tell_failure(self.study, self.running.pop(parameter_id), reason)
        self._save_state()

    def _fail_overdue(self) -> None:
        """Tell FAILED every succeeded trial whose final result is ``result_grace`` s overdue."""
        now = time.monotonic()
        for pid in [p for p, at in self.ended.items() if now - at >= self.result_grace]:
            self._fail(pid, f"ended without a final result (none {self.result_grace:g} s after NNI's end event)")

    def import_data(self, data: list[dict[str, Any]]) -> None:
        """Add finished ``{"parameter": params, "value": result}`` entries to the study."""
        import optuna

        distributions = self.space.optuna_distributions()
        for entry in data:
            metrics = metrics_of(entry["value"], self.objectives[0][0])
            if not all(m in metrics for m, _ in self.objectives):
                continue
            try:
                user, system = record.frozen_attrs(metrics=metrics, constraints=self.bounds)
            except CompsearchError:  # a constrained metric is missing or not finite: not a usable result
                continue
            self.study.add_trial(optuna.trial.create_trial(
                params=dict(entry["parameter"]), distributions=distributions,
                values=[metrics[m] for m, _ in self.objectives], user_attrs=user, system_attrs=system,
            ))


class SpecTuner(StrategyTuner):
    """The NNI tuner of a study spec: its space, objectives, constraints and evaluator.

    Args:
        spec: a spec (mapping, TOML path, or the JSON file written by ``nni_experiment``).
        out_dir: the run folder (base-model cache, shared with the trials).
        strategy: a registered strategy.
        seed: the study seed (strategy and evaluator).
        n_trials: the budget of this tuner (default: the spec's ``trials``).
        storage: keep the study ``<strategy>-s<seed>`` in this storage (a URL, or a run.json
            storage record such as ``"journal:journal.log"``; a password comes from
            ``COMPSEARCH_STORAGE``) instead of in memory.
        **options: the strategy's options (default: the spec's ``strategy_options``).
    """

    def __init__(self, *, spec: Any, out_dir: str, strategy: str = "random", seed: int = 0,
                 n_trials: int | None = None, storage: str | None = None, **options: Any) -> None:
        from compsearch.studies.hosts.base import open_study
        from compsearch.studies.hosts.nni import load_spec_file
        from compsearch.studies.results import study_name
        from compsearch.studies.run import prepare
        from compsearch.studies.storage import url_from_record

        url = url_from_record(storage, out_dir) if storage else None
        self.run = run = prepare(load_spec_file(spec), out_dir, storage=url)
        study = open_study(run, strategy, seed) if url and not options else None
        super().__init__(
            space=run.space, objectives=run.objectives, strategy=strategy, seed=seed, evaluator=run.evaluator(seed),
            constraints=run.spec.constraints, n_trials=n_trials or run.spec.trials, study=study,
            storage=run.storage if url else None, study_name=study_name(strategy, seed) if url else None,
            state_dir=run.out_dir if url else None,
            **((options or run.spec.strategy_options.get(strategy, {})) if study is None else {}),
        )


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (NNI sends JSON)."""
    return value.item() if hasattr(value, "item") else value


__all__ = ["SpecTuner", "StrategyTuner", "metrics_of"]
