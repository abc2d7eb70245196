"""The report's pieces by hand: confidence intervals, constraint lines, per-unit heatmap arrays,
hover text, and equivalent (reused) trials merged and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from compsearch import record
from compsearch.studies.figures import (
    constraint_lines,
    heatmap_arrays,
    pareto_figure,
    policy_text,
    unit_order,
)
from compsearch.studies.spec import load_spec
from compsearch.studies.storage import default_storage, open_storage
from compsearch.studies.summary import spread, stored_constraints, summarize, t_halfwidth

OBJECTIVES = (("accuracy", "maximize"), ("size_kb", "minimize"))


def test_t_interval_by_hand() -> None:
    # t(0.975, 1) = 12.7062, t(0.975, 4) = 2.7764
    two = spread([0.18, 0.08])  # std = 0.1 / sqrt(2); h = 12.7062 * 0.0707107 / sqrt(2) = 0.63531
    assert two["ci"] == pytest.approx(0.63531, abs=1e-5)
    five = spread([1.0, 2.0, 3.0, 4.0, 5.0])  # std = sqrt(2.5) = 1.5811; h = 2.7764 * 1.5811 / sqrt(5) = 1.9632
    assert five["ci"] == pytest.approx(1.9632, abs=1e-4)
    assert spread([0.5])["ci"] is None and t_halfwidth(1.0, 1) is None  # one seed: no interval


def test_stored_constraints_need_no_registry() -> None:
    (c,) = stored_constraints({"max_my_latency": 3.5})  # a plugin's metric, not registered here
    assert (c.metric, c.bound, c.upper, c.label) == ("my_latency", 3.5, True, "max_my_latency<=3.5")


def test_constraint_lines_widen_the_view_and_label_each_bound() -> None:
    from compsearch.studies.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.scatter([2.0, 4.0], [0.7, 0.9])
    labels = constraint_lines(ax, {"max_size_kb": 6.0, "min_accuracy": 0.8, "max_bops": 1.0}, "size_kb", "accuracy")
    assert labels == ["max_size_kb<=6", "min_accuracy>=0.8"]  # bops is not plotted
    assert ax.get_xlim()[1] > 6.0  # the bound is inside the view
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["max_size_kb<=6"].get_xdata()) == [6.0, 6.0]
    assert list(lines["min_accuracy>=0.8"].get_ydata()) == [0.8, 0.8]
    plt.close(fig)


def _summary() -> dict[str, Any]:
    p1 = {"version": 1, "units": {"b": {"w_bits": 4, "a_bits": 8, "keep": 0.5, "scheme": "asymmetric",
                                          "granularity": "tensor", "structure": "channel"}}}
    p2 = {"version": 1, "units": {"a": {"w_bits": 32, "a_bits": 32, "keep": 0.75, "scheme": "symmetric",
                                          "granularity": "channel", "structure": "unstructured"}}}
    return {
        "name": "hand", "objectives": [["accuracy", "maximize"], ["size_kb", "minimize"]],
        "reference_point": {"accuracy": 0.5, "size_kb": 10.0}, "constraints": {"max_size_kb": 8.0},
        "units": [{"name": "stem", "searched": False}, {"name": "b", "searched": True}, {"name": "a", "searched": True}],
        "strategies": {"tpe": {"points": [[0.9, 4.0], [0.8, 2.0]], "pareto": [
            {"seed": 0, "trial": 3, "policy": p1, "values": [0.9, 4.0], "equivalent": [[1, 7]]},
            {"seed": 1, "trial": 5, "policy": p2, "values": [0.8, 2.0], "equivalent": []}]}},
    }


def test_heatmap_columns_follow_network_order_and_cells_the_policies() -> None:
    summary = _summary()
    assert unit_order(summary, []) == ["b", "a"]  # run.json's order, searched units only
    labels, units, arrays = heatmap_arrays(summary)
    assert labels == ["tpe s0 #3", "tpe s1 #5"] and units == ["b", "a"]
    assert arrays["w_bits"].tolist() == [[4, 32], [32, 32]]  # a unit a policy leaves out is float
    assert arrays["a_bits"].tolist() == [[8, 32], [32, 32]]
    assert np.allclose(arrays["keep"], [[0.5, 1.0], [1.0, 0.75]])


def test_hover_text_lists_every_compressed_unit() -> None:
    summary = _summary()
    p1, p2 = (r["policy"] for r in summary["strategies"]["tpe"]["pareto"])
    assert policy_text(p1, ["b", "a"]) == "b: w4 a8 keep 0.5 channel (asymmetric/tensor)<br>1 unit uncompressed"
    assert policy_text(p2, ["b", "a"]) == "a: w-float keep 0.75 unstructured<br>1 unit uncompressed"
    fig = pareto_figure(summary)
    front = next(t for t in fig.data if t.name == "tpe: Pareto (2)")
    assert [list(c) for c in front.customdata] == [["tpe", 5], ["tpe", 3]]  # sorted by size_kb
    assert "+1 equivalent" in front.text[1] and "b: w4 a8 keep 0.5" in front.text[1]
    shapes = [(s.type, s.x0, s.line.dash) for s in fig.layout.shapes]
    assert ("line", 8.0, "dashdot") in shapes and ("line", 10.0, "dash") in shapes  # constraint, reference


def test_equivalent_and_reused_trials_are_one_row_and_counted(tmp_path: Path, make_spec: Any) -> None:
    """Trials 0 and 1 hold equivalent policies (1 reused 0's evaluation); trial 2 another one.
    Budget 3: counted 3, reused 1; one Pareto row for 0 and 1."""
    spec = load_spec(make_spec(strategies=["random"], trials=3, seeds=[0], constraints={"max_size_kb": 9.0},
                               reference_point={"accuracy": 0.5, "size_kb": 10.0}))
    storage = open_storage(default_storage(tmp_path))
    study = optuna.create_study(study_name="random-s0", storage=storage, directions=["maximize", "minimize"])
    record.setup_study(study, OBJECTIVES, {"max_size_kb": 9.0})
    digests = ["a" * 16, "a" * 16, "b" * 16]
    policies = [{"version": 1, "units": {"x": {"w_bits": 32, "structure": s}}} for s in ("channel", "unstructured")]
    policies.append({"version": 1, "units": {"x": {"w_bits": 4}}})
    for i, (digest, policy) in enumerate(zip(digests, policies, strict=True)):
        trial = study.ask()
        record.record_policy(trial, policy)
        trial.set_user_attr(record.CANONICAL_ATTR, digest)  # as record_policy(..., canonical=...) stores it
        if i == 1:
            values = record.reuse_equivalent(study, trial, objectives=OBJECTIVES, constraints={"max_size_kb": 9.0})
            assert values is not None
        else:
            metrics = {"accuracy": 0.9, "size_kb": 8.0} if i == 0 else {"accuracy": 0.7, "size_kb": 3.0}
            values = record.record_success(study, trial, metrics, objectives=OBJECTIVES, constraints={"max_size_kb": 9.0})
        study.tell(trial, values)
    run = {"spec": spec.model_dump(mode="json"), "storage": default_storage(tmp_path),
           "objectives": [list(o) for o in OBJECTIVES], "reference_point": {"accuracy": 0.5, "size_kb": 10.0},
           "scales": [1.0, 10.0]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    s = summarize(tmp_path)["strategies"]["random"]
    assert s["states"]["reused"] == 1 and s["counted"] == {"0": 3}
    assert [(r["trial"], r["equivalent"]) for r in s["pareto"]] == [(2, []), (0, [[0, 1]])]
