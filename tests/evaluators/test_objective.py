"""optuna_objective: directions, constraints, failures, and a real 5-trial study on digits."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import torch

from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.evaluators.datasets import load_dataset
from compsearch.evaluators.models import build_model, train_base_model
from compsearch.evaluators.objective import directions, optuna_objective
from compsearch.evaluators.types import EvalResult, FineTuneConfig
from compsearch.metrics import metric_names, parse_constraints
from compsearch.record import constraint_names, read_metrics, read_policy
from compsearch.spaces import Policy, discover_units, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_directions_follow_metric_definitions() -> None:
    assert directions(("accuracy", "size_bits")) == ["maximize", "minimize"]
    assert directions(["compression_ratio", "bops", "sparsity", "loss"]) == [
        "maximize", "minimize", "maximize", "minimize",
    ]
    assert directions([("accuracy", "maximize")]) == ["maximize"]
    assert set(metric_names()) == {
        "accuracy", "compression_ratio", "sparsity", "size_bits", "size_kb", "bops", "loss", "proxy", "return",
        "latency_ms",
    }
    with pytest.raises(ConfigError, match=r"'latency' is not produced by the evaluator; allowed: \['accuracy'"):
        directions(("accuracy", "latency"))
    with pytest.raises(ConfigError, match="test_accuracy is never an objective"):
        directions(("test_accuracy",))
    with pytest.raises(ConfigError, match=r"size_bits is always 'minimize'd"):
        directions([("size_bits", "maximize")])
    with pytest.raises(ConfigError, match="repeats a metric"):
        directions(("accuracy", "accuracy"))


def test_constraint_values_by_hand() -> None:
    size, acc = parse_constraints({"max_size_kb": 4.0, "min_accuracy": 0.9})
    assert size.value({"size_kb": 5.5}) == pytest.approx(1.5)  # 5.5 - 4.0 > 0: infeasible
    assert acc.value({"accuracy": 0.95}) == pytest.approx(-0.05)  # 0.9 - 0.95 <= 0: feasible
    with pytest.raises(ConfigError, match=r"constraint 'max_latency' is unknown; allowed: 'max_<metric>'"):
        parse_constraints({"max_latency": 3.0})
    with pytest.raises(ConfigError, match=r"constraint 'min_accuracy' = nan must be a finite number"):
        parse_constraints({"min_accuracy": float("nan")})


# ---- with a stand-in evaluator (no fine-tuning) ------------------------------------------


class FakeEvaluator:
    """Accuracy = 1 - (32 - mean w_bits) / 100; size_bits = sum of w_bits; reports 2 steps."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail

    def cost(self, policy: Policy) -> dict[str, float]:
        bits = float(sum(up.w_bits for up in policy.values()))
        return {"size_bits": bits, "size_kb": bits / 8192, "compression_ratio": 1.0, "bops": 0.0, "sparsity": 0.0}

    def proxy(self, policy: Policy) -> float:
        return 0.125

    def evaluate(self, policy: Policy, *, steps: Any, reporter: Any, test: bool) -> EvalResult:
        if self.fail:
            raise FineTuneDiverged("fine-tuning diverged at step 3: loss=nan")
        c = self.cost(policy)
        acc = 1 - (32 - c["size_bits"] / len(policy)) / 100
        reporter.report(1, acc / 2)
        reporter.report(2, acc)
        return EvalResult(accuracy=acc, loss=1 - acc, **{k: v for k, v in c.items() if k != "size_kb"})


@pytest.fixture(scope="module")
def mlp_space():
    units = discover_units(build_model("digits_mlp", num_classes=10), torch.zeros(2, 1, 8, 8))
    return get_space("uniform", units)


def test_single_objective_returns_float_and_reports(mlp_space) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(optuna_objective(mlp_space, FakeEvaluator(), ("accuracy",)), n_trials=2)
    for t in study.trials:
        bits = Policy.from_dict(t.user_attrs["policy"]).values()
        w = next(iter(bits)).w_bits
        assert t.value == pytest.approx(1 - (32 - w) / 100)
        assert t.intermediate_values == {1: pytest.approx(t.value / 2), 2: pytest.approx(t.value)}


def test_failure_is_a_failed_trial_with_its_reason(mlp_space) -> None:
    study = optuna.create_study(directions=directions(("accuracy", "size_bits")))
    study.optimize(optuna_objective(mlp_space, FakeEvaluator(fail=True)), n_trials=2, catch=(FineTuneDiverged,))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    t = study.trials[0]
    assert t.user_attrs["fail_reason"] == "FineTuneDiverged: fine-tuning diverged at step 3: loss=nan"
    assert read_policy(t) is not None and read_metrics(t) == {}


def test_constraints_and_proxy_are_stored(mlp_space) -> None:
    study = optuna.create_study(directions=directions(("accuracy", "proxy")))
    objective = optuna_objective(
        mlp_space, FakeEvaluator(), ("accuracy", "proxy"), constraints={"max_size_bits": 40, "min_accuracy": 0.5}
    )
    study.optimize(objective, n_trials=3)
    assert study.metric_names == ["accuracy", "proxy"] and constraint_names(study) == ["max_size_bits", "min_accuracy"]
    for t in study.trials:
        m = read_metrics(t)
        assert t.user_attrs["metric:proxy"] == 0.125  # one user attr per metric
        assert t.values == [pytest.approx(m["accuracy"]), 0.125]
        # Optuna's list form, in constraint_names order: size_bits - 40, 0.5 - accuracy
        assert list(t.constraints.values()) == [pytest.approx(m["size_bits"] - 40), pytest.approx(0.5 - m["accuracy"])]


def test_unknown_objective_rejected_at_construction(mlp_space) -> None:
    with pytest.raises(ConfigError, match=r"objective metric 'acc' is not produced by the evaluator"):
        optuna_objective(mlp_space, FakeEvaluator(), ("acc", "size_bits"))


# ---- the real pipeline --------------------------------------------------------------------


def test_five_trial_multi_objective_study_on_digits_cnn() -> None:
    from compsearch.evaluators.evaluator import CompressionEvaluator

    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10)
    base = train_base_model(model, data, steps=150, seed=0)
    assert base["val_accuracy"] > 0.85
    evaluator = CompressionEvaluator(
        model, data, finetune=FineTuneConfig(steps=20, report_every=10), device="cpu"
    )
    space = get_space("block", evaluator.units)
    objectives = ("accuracy", "size_bits")
    study = optuna.create_study(directions=directions(objectives), sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(optuna_objective(space, evaluator, objectives), n_trials=5)

    assert len(study.trials) == 5
    full_bits = 32 * sum(p.numel() for p in model.parameters())
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        policy = Policy.from_dict(t.user_attrs["policy"])
        assert policy == space.decode(t.params)
        m = read_metrics(t)
        assert t.values == [m["accuracy"], m["size_bits"]]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0 < m["size_bits"] <= full_bits
        assert m["size_kb"] == pytest.approx(m["size_bits"] / 8192)
        assert m["steps"] == 20 and set(t.user_attrs["intermediate"]) == {"10", "20"}
        assert m["size_bits"] == evaluator.cost(policy)["size_bits"]
