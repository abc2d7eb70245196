"""Reporters: Optuna (single- and multi-objective), callbacks, Ray Tune and NNI (faked)."""

from __future__ import annotations

import sys
import types

import optuna
import pytest

from compsearch.errors import ConfigError
from compsearch.evaluators.reporters import (
    CallbackReporter,
    NNIReporter,
    NullReporter,
    OptunaReporter,
    TuneReporter,
)
from compsearch.evaluators.types import Reporter

optuna.logging.set_verbosity(optuna.logging.WARNING)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_all_reporters_follow_the_protocol() -> None:
    study = optuna.create_study()
    reporters = [NullReporter(), CallbackReporter(lambda s, v, m: None), OptunaReporter(study.ask())]
    assert all(isinstance(r, Reporter) for r in reporters)
    NullReporter().report(1, 0.5, {"train_loss": 1.0})
    NullReporter().final({"accuracy": 0.5})


def test_callback_reporter_passes_values_through() -> None:
    seen: list[tuple[int, float, dict[str, float]]] = []
    finals: list[dict[str, float]] = []
    r = CallbackReporter(lambda s, v, m: seen.append((s, v, m)), on_final=finals.append)
    r.report(10, 0.25)
    r.report(20, 0.5, {"train_loss": 0.75})
    r.final({"accuracy": 0.5})
    assert seen == [(10, 0.25, {}), (20, 0.5, {"train_loss": 0.75})]
    assert finals == [{"accuracy": 0.5}]
    with pytest.raises(TypeError, match="on_report=3 must be callable"):
        CallbackReporter(3)  # type: ignore[arg-type]


def test_optuna_single_objective_prunes() -> None:
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    trial = study.ask()
    reporter = OptunaReporter(trial)
    assert not reporter.multi_objective
    with pytest.raises(optuna.TrialPruned, match="pruned at step 5: accuracy=0.4"):
        reporter.report(5, 0.4, {"train_loss": 1.2})
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].intermediate_values == {5: 0.4}


def test_optuna_single_objective_without_pruning_keeps_going() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    reporter = OptunaReporter(trial)
    for step, value in ((1, 0.25), (2, 0.5), (3, 0.75)):
        reporter.report(step, value)
    reporter.final({"accuracy": 0.75, "size_bits": 100, "test_accuracy": None})
    study.tell(trial, 0.75)
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: 0.25, 2: 0.5, 3: 0.75}
    from compsearch.record import read_metrics

    assert read_metrics(frozen) == {"accuracy": 0.75, "size_bits": 100.0}  # None dropped


def test_optuna_minimized_objective_is_never_pruned_on_accuracy() -> None:
    # metric="loss": the pruner sees metrics["loss"]; a step without it goes to the attrs only.
    study = optuna.create_study(direction="minimize", pruner=AlwaysPrune())
    trial = study.ask()
    reporter = OptunaReporter(trial, metric="loss")
    reporter.report(1, 0.9, {"train_loss": 0.3})
    assert trial.user_attrs["intermediate"] == {"1": 0.9}
    with pytest.raises(optuna.TrialPruned, match="loss=0.2"):
        reporter.report(2, 0.95, {"loss": 0.2})


def test_optuna_multi_objective_stores_attrs_instead_of_reporting() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"], pruner=AlwaysPrune())

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        reporter = OptunaReporter(trial)
        assert reporter.multi_objective
        reporter.report(10, 0.5, {"train_loss": 1.5})
        reporter.report(20, 0.75)  # never pruned: Optuna forbids report() here
        return 0.75, 100.0

    study.optimize(objective, n_trials=1)
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.COMPLETE
    assert frozen.user_attrs["intermediate"] == {"10": 0.5, "20": 0.75}
    assert frozen.user_attrs["intermediate_metrics"] == {"10": {"train_loss": 1.5}}
    assert frozen.intermediate_values == {}


def test_tune_reporter_with_fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, float]] = []
    tune = types.ModuleType("ray.tune")
    tune.report = lambda metrics, checkpoint=None: calls.append(metrics)  # type: ignore[attr-defined]
    ray = types.ModuleType("ray")
    ray.tune = tune  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.tune", tune)
    r = TuneReporter()
    r.report(3, 0.5, {"train_loss": 1.0})
    r.final({"accuracy": 0.75, "size_bits": 64, "test_accuracy": None})
    assert calls == [
        {"step": 3, "train_loss": 1.0, "accuracy": 0.5},
        {"step": 3, "accuracy": 0.75, "size_bits": 64.0, "final": 1.0},
    ]


def test_nni_reporter_with_fake_nni(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, float]]] = []
    nni = types.ModuleType("nni")
    nni.report_intermediate_result = lambda m: calls.append(("intermediate", m))  # type: ignore[attr-defined]
    nni.report_final_result = lambda m: calls.append(("final", m))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nni", nni)
    r = NNIReporter(metric="accuracy")
    r.report(2, 0.5)
    r.final({"accuracy": 0.875, "size_bits": 10})
    assert calls == [
        ("intermediate", {"default": 0.5, "step": 2}),
        ("final", {"accuracy": 0.875, "size_bits": 10.0, "default": 0.875}),
    ]
    with pytest.raises(ConfigError, match=r"metric='bops' is not among the final metrics \['accuracy'\]"):
        NNIReporter(metric="bops").final({"accuracy": 0.5})


def test_nni_reporter_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nni", None)  # makes `import nni` raise ImportError
    with pytest.raises(ImportError, match="NNIReporter needs NNI.*pip install nni"):
        NNIReporter()
