"""The trial record: what one evaluation stores, read back by compsearch and by Optuna's own tools."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from compsearch import optuna_compat, record
from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.metrics import parse_constraints

optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJECTIVES = (("accuracy", "maximize"), ("size_kb", "minimize"))
BOUNDS = parse_constraints({"max_size_kb": 4.0, "min_accuracy": 0.9})


def _study_with_three_trials() -> optuna.Study:
    """acc/size: (0.95, 3.0) feasible, (0.97, 5.0) too big, (0.80, 2.0) too inaccurate."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    record.setup_study(study, OBJECTIVES, BOUNDS)
    for acc, size in ((0.95, 3.0), (0.97, 5.0), (0.80, 2.0)):
        trial = study.ask()
        record.record_policy(trial, {"version": 1, "units": {}})
        values = record.record_success(study, trial, {"accuracy": acc, "size_kb": size, "steps": 5},
                                       objectives=OBJECTIVES, constraints=BOUNDS)
        study.tell(trial, values)
    return study


def test_success_is_recorded_optuna_natively() -> None:
    study = _study_with_three_trials()
    assert study.metric_names == ["accuracy", "size_kb"]
    assert record.constraint_names(study) == ["max_size_kb", "min_accuracy"]
    first, big, weak = study.get_trials()
    assert first.user_attrs["metric:accuracy"] == 0.95 and first.user_attrs["metric:steps"] == 5
    assert record.read_metrics(first) == {"accuracy": 0.95, "size_kb": 3.0, "steps": 5}
    # constraint values: size - 4 and 0.9 - acc
    assert record.read_constraints(first) == [pytest.approx(-1.0), pytest.approx(-0.05)]
    assert record.read_constraints(big) == [pytest.approx(1.0), pytest.approx(-0.07)]
    assert record.read_constraints(weak) == [pytest.approx(-2.0), pytest.approx(0.1)]
    assert [record.is_feasible(t) for t in (first, big, weak)] == [True, False, False]
    assert record.read_policy(first) == {"version": 1, "units": {}}


def test_plot_pareto_front_and_optuna_dashboard_see_the_feasibility() -> None:
    study = _study_with_three_trials()
    figure = optuna.visualization.plot_pareto_front(study)
    traces = {trace.hovertemplate.split("<extra>")[1].split("</extra>")[0]: trace for trace in figure.data}
    assert sorted(traces["Infeasible Trial"].x) == [0.80, 0.97]  # drawn grey, apart from the front
    assert list(traces["Best Trial"].x) == [0.95]
    assert figure.layout.xaxis.title.text == "accuracy"  # from study.set_metric_names
    serializer = pytest.importorskip("optuna_dashboard._serializer")
    rows = [serializer.serialize_frozen_trial(0, t, {}) for t in study.get_trials()]
    feasible = [all(v <= 0 for v in row["constraints"]) for row in rows]  # what the dashboard computes
    assert feasible == [True, False, False]


def test_failure_interruption_reuse_and_proposal() -> None:
    study = _study_with_three_trials()
    failed = study.ask()
    record.tell_failure(study, failed, "diverged: FineTuneDiverged: loss=nan")
    stale = study.ask()
    assert record.record_interrupted(study, optuna_compat.frozen(study, stale), " (process ended)")
    assert not record.record_interrupted(study, optuna_compat.frozen(study, stale), " again")  # already finished
    reused = study.ask()
    record.record_proposal(study, reused, {"x": 1})
    source = study.get_trials()[0]
    study.tell(reused, record.record_reused(study, reused, source, objectives=OBJECTIVES, constraints=BOUNDS))
    trials = study.get_trials()
    assert record.read_fail_reason(trials[3]) == "diverged: FineTuneDiverged: loss=nan"
    assert record.counts_toward_budget(trials[3])
    assert record.read_fail_reason(trials[4]).startswith("interrupted (process ended)")
    assert not record.counts_toward_budget(trials[4])
    assert record.read_reused(trials[5]) == 0 and trials[5].values == source.values
    assert record.read_proposal(trials[5]) == {"x": 1}


def test_missing_or_non_finite_metrics_are_errors() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    with pytest.raises(ConfigError, match=r"lack objective\(s\) \['size_kb'\]"):
        record.record_success(study, trial, {"accuracy": 0.5}, objectives=OBJECTIVES)
    with pytest.raises(FineTuneDiverged, match="size_kb = nan is not finite"):
        record.record_success(study, trial, {"accuracy": 0.5, "size_kb": math.nan}, objectives=(OBJECTIVES[0],),
                              constraints=BOUNDS)
    with pytest.raises(ConfigError, match=r"records objectives \['accuracy', 'size_kb'\]"):
        record.setup_study(_study_with_three_trials(), (("accuracy", "maximize"), ("bops", "minimize")))


def test_record_version_1_trials_read_the_same() -> None:
    old = optuna.trial.create_trial(
        values=[0.9, 3.0], params={}, distributions={}, state=TrialState.COMPLETE,
        user_attrs={"metrics": {"accuracy": 0.9, "size_kb": 3.0}, "policy": {"version": 1, "units": {}}},
        system_attrs={"constraints:max_size_kb": 2.5},
    )
    assert record.read_metrics(old) == {"accuracy": 0.9, "size_kb": 3.0}
    assert record.read_constraints(old) == [2.5] and not record.is_feasible(old)
