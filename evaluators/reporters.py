"""Where intermediate and final values of an evaluation go.

Every reporter implements the :class:`~compsearch.evaluators.types.Reporter`
protocol: ``report(step, value, metrics=None)`` during fine-tuning (``value`` is
the validation accuracy at that step unless the caller says otherwise) and
``final(metrics)`` once at the end.

- :class:`NullReporter`: drops everything.
- :class:`CallbackReporter`: calls your functions.
- :class:`OptunaReporter`: ``trial.report`` + ``should_prune`` for single-objective
  studies (raises ``optuna.TrialPruned``); user attrs for multi-objective ones,
  where Optuna forbids ``report``.
- :class:`TuneReporter`: ``ray.tune.report`` inside a Ray Tune trial.
- :class:`NNIReporter`: ``nni.report_intermediate_result`` / ``report_final_result``.

Ray and NNI are imported when such a reporter is created, never at import time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna



def _numeric(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite-or-not numeric entries of ``metrics`` as floats (``None`` and strings dropped)."""
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


class NullReporter:
    """A reporter that ignores every value (the default when none is given)."""

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
        """Ignore an intermediate value."""

    def final(self, metrics: dict[str, Any]) -> None:
        """Ignore the final metrics."""


class CallbackReporter:
    """Calls ``on_report(step, value, metrics)`` and ``on_final(metrics)``.

    Args:
        on_report: called for every intermediate value (``metrics`` is a dict, maybe empty).
        on_final: called once with the final metrics; optional.
    """

    def __init__(
        self,
        on_report: Callable[[int, float, dict[str, float]], None],
        *,
        on_final: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not callable(on_report):
            raise TypeError(f"on_report={on_report!r} must be callable as on_report(step, value, metrics)")
        if on_final is not None and not callable(on_final):
            raise TypeError(f"on_final={on_final!r} must be callable as on_final(metrics) or None")
        self._on_report = on_report
        self._on_final = on_final

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
        self._on_report(step, value, dict(metrics or {}))

    def final(self, metrics: dict[str, Any]) -> None:
        if self._on_final is not None:
            self._on_final(dict(metrics))


class OptunaReporter:
    """Reports to an Optuna trial.

    Single-objective study: ``trial.report(v, step)`` and, when ``trial.should_prune()``,
    raise ``optuna.TrialPruned``. Multi-objective study (``len(study.directions) > 1``,
    where Optuna forbids ``report``): the values go to the trial record's intermediate
    attrs (``{str(step): v}`` and ``{str(step): metrics}``, see
    :func:`compsearch.record.record_intermediate`); nothing is pruned. In both cases
    ``final`` stores the numeric final metrics in the trial record.

    ``v`` is the reported ``value`` when ``metric == "accuracy"`` (the evaluator reports
    validation accuracy), else ``metrics[metric]``; when that is missing, the step is
    recorded in the user attrs but not given to the pruner (so a minimized objective is
    never pruned on accuracy).

    Args:
        trial: the running ``optuna.Trial``.
        metric: the name of the single objective the study optimizes.
    """

    def __init__(self, trial: optuna.Trial, *, metric: str = "accuracy") -> None:
        self.trial = trial
        self.metric = metric
        study = getattr(trial, "study", None)
        self.multi_objective = study is not None and len(study.directions) > 1

    def _record(self, step: int, value: float, metrics: dict[str, float]) -> None:
        from compsearch import record

        record.record_intermediate(self.trial, step, value, metrics)

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
        """Record ``value`` at ``step``; raise ``optuna.TrialPruned`` when the pruner says so."""
        numeric = _numeric(metrics)
        if self.multi_objective:
            self._record(step, value, numeric)
            return
        v = float(value) if self.metric == "accuracy" else numeric.get(self.metric)
        if v is None or not math.isfinite(v):
            self._record(step, value, numeric)
            return
        self.trial.report(v, step)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned at step {step}: {self.metric}={v:.6g}")

    def final(self, metrics: dict[str, Any]) -> None:
        """Store the numeric final metrics in the trial record (``record.read_metrics``)."""
        from compsearch import record

        record.record_metrics(self.trial, _numeric(metrics))


class TuneReporter:
    """Reports to Ray Tune from inside a trainable (``ray.tune.report(metrics)``).

    Every intermediate report is ``{"step": step, metric: value, **metrics}``, so
    Tune schedulers (ASHA, median stopping) can stop a candidate on ``metric``;
    ``final`` reports the final metrics with ``"final": 1.0``.

    Args:
        metric: the key under which ``value`` is reported.

    Raises:
        ImportError: Ray Tune is not installed (``pip install "compsearch[ray]"``).
    """

    def __init__(self, *, metric: str = "accuracy") -> None:
        try:
            from ray import tune
        except ImportError as e:
            raise ImportError(
                f"TuneReporter needs Ray Tune ({e}); install it with: pip install \"compsearch[ray]\""
            ) from None
        self._tune = tune
        self.metric = metric
        self.last_step = -1

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
        self.last_step = step
        self._tune.report({"step": step, **_numeric(metrics), self.metric: float(value)})

    def final(self, metrics: dict[str, Any]) -> None:
        self._tune.report({"step": self.last_step, **_numeric(metrics), "final": 1.0})


class NNIReporter:
    """Reports to the running NNI trial.

    Intermediate: ``nni.report_intermediate_result({"default": value, **metrics})``;
    final: ``nni.report_final_result({"default": metrics[metric], **metrics})`` (NNI's
    tuners optimize ``"default"``). Non-numeric metrics (e.g. ``test_accuracy=None``)
    are left out, since NNI needs JSON numbers.

    Args:
        metric: the final metric the NNI tuner optimizes (its ``"default"`` value).

    Raises:
        ImportError: NNI is not installed (``pip install nni``).
    """

    def __init__(self, *, metric: str = "accuracy") -> None:
        try:
            import nni
        except ImportError as e:
            raise ImportError(
                f"NNIReporter needs NNI ({e}); install it with: pip install nni "
                f"(the optional NNI extra of compsearch)"
            ) from None
        self._nni = nni
        self.metric = metric

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
        self._nni.report_intermediate_result({**_numeric(metrics), "default": float(value), "step": step})

    def final(self, metrics: dict[str, Any]) -> None:
        numeric = _numeric(metrics)
        if self.metric not in numeric:
            raise ConfigError(
                f"NNIReporter metric={self.metric!r} is not among the final metrics "
                f"{sorted(numeric)}; pass one of them as metric="
            )
        self._nni.report_final_result({**numeric, "default": numeric[self.metric]})
