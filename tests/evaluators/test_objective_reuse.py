"""The objective evaluates equivalent policies once: any sampler's repeat reuses the stored result."""

from __future__ import annotations

from typing import Any

import optuna
import torch

from compsearch import record
from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.evaluators.objective import optuna_objective
from compsearch.evaluators.types import DataSplits, FineTuneConfig
from compsearch.spaces import get_space
from compsearch.testing import toy_model, toy_units

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _evaluator() -> CompressionEvaluator:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 1, 4, 4, generator=gen), torch.arange(90) % 3
    data = DataSplits(x_train=x[:60], y_train=y[:60], x_val=x[60:75], y_val=y[60:75], x_test=x[75:], y_test=y[75:],
                      num_classes=3, name="toy")
    return CompressionEvaluator(toy_model(), data, finetune=FineTuneConfig(steps=2, batch_size=16), device="cpu")


def test_a_grid_with_equivalent_points_is_evaluated_once_per_class(monkeypatch: Any) -> None:
    # w_bits {4, 32} x structure {channel, unstructured} at keep 1.0: structure is irrelevant (rule 4),
    # so 4 grid points are 2 classes -> 2 evaluations, 2 reused trials
    space = get_space("uniform", toy_units(), w_bits=[4, 32], a_bits=[32], keep=[1.0], scheme=["symmetric"],
                      granularity=["channel"])
    ev = _evaluator()
    calls: list[Any] = []
    real = CompressionEvaluator.evaluate
    monkeypatch.setattr(CompressionEvaluator, "evaluate", lambda self, p, **kw: calls.append(p) or real(self, p, **kw))
    grid = {d.name: list(d.choices) for d in space.dimensions()}
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(optuna_objective(space, ev, ("accuracy", "size_kb"), constraints={"max_size_kb": 100.0}), n_trials=4)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert len(calls) == 2
    reused = [t for t in trials if record.read_reused(t) is not None]
    assert len(reused) == 2
    for t in reused:
        source = trials[record.read_reused(t)]
        assert t.params["w_bits"] == source.params["w_bits"] and t.params["structure"] != source.params["structure"]
        assert t.values == source.values and record.read_metrics(t) == record.read_metrics(source)
        assert record.read_constraints(t) == record.read_constraints(source)
        assert record.read_canonical(t) == record.read_canonical(source)
        assert record.counts_toward_budget(t)  # a reused trial uses budget


def test_reuse_false_evaluates_every_trial(monkeypatch: Any) -> None:
    space = get_space("uniform", toy_units(), w_bits=[32], a_bits=[32], keep=[1.0], scheme=["symmetric"],
                      granularity=["channel"])
    ev = _evaluator()
    calls: list[Any] = []
    real = CompressionEvaluator.evaluate
    monkeypatch.setattr(CompressionEvaluator, "evaluate", lambda self, p, **kw: calls.append(p) or real(self, p, **kw))
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.optimize(optuna_objective(space, ev, ("accuracy", "size_kb"), reuse=False), n_trials=2)
    assert len(calls) == 2 and all(record.read_reused(t) is None for t in study.get_trials())
