"""A real run read through Optuna's own tools: optuna-dashboard 0.21's HTTP API (its bottle app,
called as a WSGI application) and ``optuna.visualization.plot_pareto_front``."""

from __future__ import annotations

import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from compsearch import record
from compsearch.studies.results import study_name

pytest.importorskip("optuna_dashboard")


def _api(app: Any, path: str, query: str = "") -> Any:
    """GET ``path`` from the dashboard's WSGI app; its JSON body."""
    env: dict[str, Any] = {}
    setup_testing_defaults(env)
    env.update(PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD="GET")
    status: list[str] = []
    body = b"".join(app(env, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_shows_metric_names_constraints_and_metrics(tiny_run) -> None:
    from optuna_dashboard import wsgi

    out, run = tiny_run
    app = wsgi(run.storage)
    summaries = {s["study_name"]: s for s in _api(app, "/api/studies")["study_summaries"]}
    assert set(summaries) >= {study_name("random", 0), study_name("nsga2", 0)}
    for name in (study_name("random", 0), study_name("nsga2", 0)):
        detail = _api(app, f"/api/studies/{summaries[name]['study_id']}", "after=0")
        assert detail["objective_names"] == ["accuracy", "size_kb"]  # not "Objective 0/1"
        trials = {t["number"]: t for t in detail["trials"]}
        study = optuna.load_study(study_name=name, storage=run.storage)
        for frozen in study.get_trials():
            shown = trials[frozen.number]
            attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
            metrics = record.read_metrics(frozen)
            # one user attr per metric, as the dashboard lists them (values as text)
            assert {k for k in attrs if k.startswith("metric:")} == {f"metric:{m}" for m in metrics}
            assert float(attrs["metric:size_kb"]) == pytest.approx(metrics["size_kb"])
            if frozen.state == optuna.trial.TrialState.COMPLETE:
                # the one constraint max_size_kb = 12: value = size_kb - 12 (<= 0 feasible)
                assert shown["constraints"] == [pytest.approx(metrics["size_kb"] - 12.0)]
                dashboard_feasible = all(v <= 0 for v in shown["constraints"])  # what its Pareto plot uses
                assert dashboard_feasible == record.is_feasible(frozen)
                assert json.loads(attrs["policy"]) == record.read_policy(frozen)


def test_plot_pareto_front_of_a_run_study_names_axes_and_greys_the_infeasible(tiny_run) -> None:
    out, run = tiny_run
    study = optuna.load_study(study_name=study_name("random", 0), storage=run.storage)
    figure = optuna.visualization.plot_pareto_front(study)
    assert (figure.layout.xaxis.title.text, figure.layout.yaxis.title.text) == ("accuracy", "size_kb")
    traces = {t.hovertemplate.split("<extra>")[1].split("</extra>")[0]: t for t in figure.data}
    complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    infeasible = sorted(t.values[0] for t in complete if not record.is_feasible(t))
    feasible = [t for t in complete if record.is_feasible(t)]
    assert sorted(traces["Infeasible Trial"].x) == pytest.approx(infeasible)  # drawn grey, apart (may be none)
    plotted = sorted([*traces["Best Trial"].x, *traces["Feasible Trial"].x])
    assert plotted == pytest.approx(sorted(t.values[0] for t in feasible))  # every feasible trial, apart from the rest
