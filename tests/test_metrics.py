"""The metrics table and the one constraint parser."""

from __future__ import annotations

import math

import pytest

from compsearch.errors import ConfigError, DuplicateNameError
from compsearch.metrics import (
    Metric,
    direction,
    get_metric,
    metric_names,
    objective_pairs,
    parse_constraints,
    register_metric,
)


def test_table_directions_domains_and_tasks() -> None:
    assert direction("accuracy") == "maximize" and direction("latency_ms") == "minimize"
    assert direction("return") == "maximize" and get_metric("return").domain == "(-inf, inf)"
    assert get_metric("accuracy").domain == "[0, 1]" and get_metric("size_kb").domain == "(0, inf)"
    assert "return" not in metric_names(task="classification") and "accuracy" in metric_names(task="classification")
    assert "accuracy" not in metric_names(task="policy") and "size_kb" in metric_names(task="policy")
    assert get_metric("sparsity").fraction and not get_metric("size_kb").fraction
    assert objective_pairs(["accuracy", ("size_kb", "minimize")]) == (("accuracy", "maximize"), ("size_kb", "minimize"))


def test_register_metric_is_loud() -> None:
    with pytest.raises(DuplicateNameError, match="metric 'accuracy' is already registered"):
        register_metric(Metric("accuracy", "maximize", "fraction", "again", 0.0, 1.0))
    with pytest.raises(ConfigError, match="direction='up'"):
        Metric("speed", "up", "x", "?")


def test_constraint_values_and_domains_by_hand() -> None:
    size, acc, ret = parse_constraints({"max_size_kb": 4.0, "min_accuracy": 0.9, "min_return": -120.0})
    assert size.value({"size_kb": 5.5}) == pytest.approx(1.5)  # 5.5 - 4.0 > 0: infeasible
    assert acc.value({"accuracy": 0.95}) == pytest.approx(-0.05)  # 0.9 - 0.95 <= 0: feasible
    assert ret.value({"return": -100.0}) == pytest.approx(-20.0)  # -120 - (-100): feasible
    assert size.label == "max_size_kb<=4" and acc.label == "min_accuracy>=0.9"
    assert not size.satisfied({"size_kb": math.nan}) and acc.satisfied({"accuracy": 0.9})
    for bad, pattern in [({"min_accuracy": 1.5}, r"min_accuracy=1\.5 is outside the domain of accuracy, \[0, 1\]"),
                         ({"min_accuracy": -1}, "outside the domain"), ({"max_size_kb": 0.0}, r"\(0, inf\)"),
                         ({"max_size_kb": -3.0}, "outside the domain"), ({"max_latency": 1.0}, "is unknown"),
                         ({"min_accuracy": math.inf}, "must be a finite number"), ({"max_bops": True}, "finite number")]:
        with pytest.raises(ConfigError, match=pattern):
            parse_constraints(bad)
