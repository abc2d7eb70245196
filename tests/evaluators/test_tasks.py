"""The Task API: registry, ClassificationTask, a third-party task driving the evaluator, EvalResult."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError, DataError, DuplicateNameError, UnknownNameError
from compsearch.evaluators import CompressionEvaluator, EvaluatorConfig, FineTuneConfig
from compsearch.evaluators.finetune import FineTuneResult
from compsearch.evaluators.tasks import (
    TASKS,
    ClassificationTask,
    Task,
    as_task,
    get_task,
    list_tasks,
    register_task,
)
from compsearch.evaluators.types import DataSplits, EvalResult, GradientBatch, Reporter
from compsearch.evaluators.types import FineTuneConfig as FTConfig
from compsearch.spaces import Policy, UnitPolicy

# four 2-d inputs; calibration and gradient statistics below are computed by hand from them
X = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])


class SumTask(Task):
    """A regression-like third-party task: loss = sum of the outputs (gradients by hand)."""

    name = "sum-test"
    quality = "score"

    def __init__(self, x: torch.Tensor = X) -> None:
        self.x = x
        self.fine_tune_calls = 0

    def to(self, device: torch.device) -> SumTask:
        return SumTask(self.x.to(device))

    def example_input(self) -> torch.Tensor:
        return self.x[:2]

    def calibration_inputs(self, *, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        return [self.x]

    def proxy_inputs(self, n: int) -> torch.Tensor:
        return self.x[:n]

    def gradient_batches(self, *, batches: int, batch_size: int, seed: int) -> list[GradientBatch]:
        return [GradientBatch(inputs=self.x[:2], loss=lambda out: out.sum()), GradientBatch(inputs=self.x[2:], loss=lambda out: out.sum())]

    def fine_tune(self, model: nn.Module, *, config: FTConfig, steps: int | None, reporter: Reporter | None,
                  validate: Callable[[], float], after_step: Callable[[], None]) -> FineTuneResult:
        total = config.steps if steps is None else steps
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        model.train()
        for _ in range(total):
            opt.zero_grad()
            model(self.x).square().mean().backward()
            opt.step()
            after_step()
        return FineTuneResult(steps=total, train_loss=0.0)

    def measure(self, model: nn.Module, split: str) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            loss = float(model(self.x).square().mean())
        return {"score": -loss, "loss": loss, "extra": 1.5}


def test_registry() -> None:
    assert "classification" in list_tasks()
    assert get_task("classification") is ClassificationTask
    with pytest.raises(UnknownNameError, match=r"unknown task 'atari'; registered: \[.*'classification'"):
        get_task("atari")
    with pytest.raises(DuplicateNameError, match="task 'classification' is already registered"):
        register_task("classification")(ClassificationTask)
    with pytest.raises(TypeError, match="expects a Task subclass"):
        register_task("x")(int)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"must set name = 'other'"):
        register_task("other")(SumTask)
    register_task("sum-test")(SumTask)
    try:
        assert get_task("sum-test") is SumTask
    finally:
        TASKS.unregister("sum-test")


def test_classification_task(tiny_data: DataSplits) -> None:
    task = ClassificationTask(tiny_data, eval_batch_size=7)
    assert task.quality == "accuracy" and torch.equal(task.example_input(), tiny_data.x_train[:2])
    assert task.loss_floor() == pytest.approx(torch.log(torch.tensor(4.0)).item())  # ln(num_classes)
    calib = task.calibration_inputs(batches=2, batch_size=50, seed=0)
    assert [len(b) for b in calib] == [50, 50]
    assert [len(b.inputs) for b in task.gradient_batches(batches=9, batch_size=64, seed=0)] == [64, 64, 16]  # 144 samples
    with pytest.raises(ConfigError, match=r"split='train' is unknown; allowed: \['val', 'test'\]"):
        task.measure(nn.Linear(36, 4), "train")
    assert as_task(tiny_data).quality == "accuracy" and as_task(task) is task
    with pytest.raises(DataError, match="task_or_data must be a Task"):
        as_task([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eval_batch_size=0 must be an integer >= 1"):
        ClassificationTask(tiny_data, eval_batch_size=0)


def test_third_party_task_drives_the_evaluator() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    ev = CompressionEvaluator(model, SumTask(), finetune=FineTuneConfig(steps=4), device="cpu")
    policy = Policy({"0": UnitPolicy(w_bits=4, a_bits=8, keep=0.5), "2": UnitPolicy(w_bits=3)})
    result = ev.evaluate(policy, test=True)
    assert result.quality == "score" and result.score == -result.loss and result["extra"] == 1.5
    assert result.steps == 4
    assert int((ev.effective_weights()["0"].abs().sum(1) == 0).sum()) == 4  # masks survived the task's own loop
    metrics = result.metrics()
    assert {"score", "loss", "extra", "test_score", "test_loss", "test_extra", "size_bits"} <= set(metrics)
    json.dumps(metrics)
    with pytest.raises(KeyError, match=r"'accuracy' was not measured; this task measured \['extra', 'loss', 'score'\]"):
        _ = result.accuracy
    assert ev.base_metrics().quality == "score"
    assert repr(ev).endswith("task='sum-test', device=cpu)")


def test_eval_result_flat_metrics() -> None:
    costs = {"size_bits": 64.0, "compression_ratio": 2.0, "bops": 10.0, "sparsity": 0.5}
    policy_like = EvalResult(values={"return": 200.0, "return_se": 3.0, "loss": 0.1}, quality="return", steps=5,
                             seconds={"total": 1.0}, **costs)
    assert policy_like.metrics() == {"return": 200.0, "return_se": 3.0, "loss": 0.1, **costs, "test_return": None,
                                     "steps": 5, "seconds_total": 1.0}
    classic = EvalResult(accuracy=0.5, loss=1.0, test_accuracy=0.25, **costs)
    assert (classic.accuracy, classic.loss, classic.test_accuracy) == (0.5, 1.0, 0.25)
    assert classic.metrics()["test_accuracy"] == 0.25 and classic.test_values == {"accuracy": 0.25}
    with pytest.raises(ConfigError, match=r"lack the quality metric 'return'"):
        EvalResult(values={"loss": 1.0}, quality="return", **costs)
    with pytest.raises(TypeError, match=r"\['accuracy'\] both as keyword and in values"):
        EvalResult(values={"accuracy": 0.5}, accuracy=0.5, **costs)


def test_unit_stats_by_hand() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -2.0]]))
        model[0].bias.zero_()
    ev = CompressionEvaluator(model, SumTask(), config=EvaluatorConfig(sensitivity_batches=2), device="cpu")
    stats = ev.unit_stats()["0"]
    # weights 1, 2, 3, -2: mean 1, variance (0 + 1 + 4 + 9) / 4 = 3.5; 64 bins over [-2, 3] put the four
    # weights in four different bins (0, 38, 51, 63): H = ln 4, normalised ln 4 / ln 64 = 1/3
    assert stats.weight_mean == 1.0 and stats.weight_var == 3.5
    assert stats.weight_entropy == pytest.approx(1 / 3, abs=1e-12)
    # inputs 0,1,2,0,0,3,1,1: mean 1, E[x^2] = 16 / 8 = 2 -> variance 1, three zeros of eight
    assert (stats.act_mean, stats.act_var, stats.act_zero_fraction) == (1.0, 1.0, 3 / 8)
    # loss = sum of outputs: dL/dW[j, :] = sum of the batch's inputs = [2, 1] and [1, 4] (both rows)
    # E[g] = [1.5, 2.5] -> grad_mean 2; E[g^2] = [2.5, 8.5] -> variances [0.25, 2.25] -> grad_var 1.25
    assert stats.grad_mean == pytest.approx(2.0) and stats.grad_var == pytest.approx(1.25)
    assert ev.sensitivity()["0"] == pytest.approx(2 * (2.5 + 8.5))  # trace of E[g^2]
    assert ev.unit_stats() is ev.unit_stats()


def test_reconstruction_error_by_hand() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.3], [0.2, -1.0]]))
        model[1].weight.copy_(torch.eye(2))
    ev = CompressionEvaluator(model, SumTask(torch.tensor([[1.0, 1.0], [1.0, 1.0]])), device="cpu")
    assert ev.reconstruction_error(Policy()) == {"0": 0.0, "1": 0.0}
    # 2-bit symmetric per tensor: scale = max|w| / 1 = 1, round(W) = [[1, 0], [0, -1]]
    # y = W x = [1.3, -0.8], y_c = [1, -1]: sum (y_c - y)^2 / sum y^2 = (0.09 + 0.04) / (1.69 + 0.64)
    errors = ev.reconstruction_error(Policy({"0": UnitPolicy(w_bits=2, granularity="tensor")}))
    assert errors["0"] == pytest.approx(0.13 / 2.33, rel=1e-6)
    assert errors["1"] == pytest.approx(0.13 / 2.33, rel=1e-6)  # identity layer: the error flows on
