"""Fine-tuning loop: schedules, step counts, determinism, divergence, reporting, distillation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.evaluators.finetune import (
    batch_indices,
    distillation_loss,
    fine_tune,
    learning_rate,
    resolve_steps,
)
from compsearch.evaluators.types import DataSplits, FineTuneConfig


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
        self.calls.append((step, value))

    def final(self, metrics: dict[str, object]) -> None:
        pass


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(36, 4))


def test_learning_rate_schedules() -> None:
    cos = FineTuneConfig(lr=0.1, schedule="cosine")
    assert learning_rate(cos, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cos, 5, 10) == pytest.approx(0.05)  # 0.1 * 0.5 * (1 + cos(pi / 2))
    step = FineTuneConfig(lr=0.1, schedule="step")
    assert [learning_rate(step, t, 9) for t in (5, 6)] == pytest.approx([0.1, 0.01])  # drop at floor(18 / 3) = 6
    assert learning_rate(FineTuneConfig(lr=0.1, schedule="constant"), 7, 9) == 0.1


def test_resolve_steps() -> None:
    # 100 samples / batch 32 -> 4 batches per epoch; 1.5 epochs -> 6 steps
    assert resolve_steps(FineTuneConfig(epochs=1.5, batch_size=32), 100) == 6
    assert resolve_steps(FineTuneConfig(steps=7), 100) == 7
    assert resolve_steps(FineTuneConfig(steps=7), 100, steps=0) == 0
    with pytest.raises(ConfigError, match="steps=-1 must be an integer >= 0"):
        resolve_steps(FineTuneConfig(), 100, steps=-1)


def test_batches_are_seeded_permutations() -> None:
    it = batch_indices(10, 4, seed=3, device=torch.device("cpu"))
    epoch = torch.cat([next(it) for _ in range(3)])  # sizes 4, 4, 2
    assert sorted(epoch.tolist()) == list(range(10))
    again = batch_indices(10, 4, seed=3, device=torch.device("cpu"))
    assert torch.equal(next(again), epoch[:4])


def test_training_lowers_loss_and_is_deterministic(tiny_data: DataSplits) -> None:
    data = tiny_data
    config = FineTuneConfig(steps=30, batch_size=16, optimizer="adam", lr=0.02, seed=5)
    runs = []
    for _ in range(2):
        model = linear_model()
        result = fine_tune(model, x=data.x_train, y=data.y_train, config=config)
        runs.append((result, model[2].weight.detach().clone()))
    assert runs[0][0].steps == 30
    assert runs[0][0].train_loss < math.log(4)  # below chance-level cross-entropy
    assert torch.equal(runs[0][1], runs[1][1])
    other = linear_model()
    fine_tune(other, x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=30, batch_size=16, optimizer="adam", lr=0.02, seed=6))
    assert not torch.equal(other[2].weight, runs[0][1])


def test_global_rng_untouched(tiny_data: DataSplits) -> None:
    data = tiny_data
    model = linear_model()
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    fine_tune(model, x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=3))
    assert torch.equal(torch.rand(1), expected)


def test_huge_learning_rate_diverges(tiny_data: DataSplits) -> None:
    data = tiny_data
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    config = FineTuneConfig(steps=50, optimizer="sgd", lr=1e15, momentum=0.9, schedule="constant")
    with pytest.raises(FineTuneDiverged, match=r"fine-tuning diverged at step \d+/50: loss=(nan|inf)"):
        fine_tune(mlp, x=data.x_train, y=data.y_train, config=config)


def test_nan_input_diverges_at_step_one(tiny_data: DataSplits) -> None:
    data = tiny_data
    x = data.x_train.clone()
    x[:] = float("nan")
    with pytest.raises(FineTuneDiverged, match=r"at step 1/5: loss=nan .*lower finetune.lr"):
        fine_tune(linear_model(), x=x, y=data.y_train, config=FineTuneConfig(steps=5))


def test_reports_every_n_steps_and_per_epoch(tiny_data: DataSplits) -> None:
    data = tiny_data  # 144 train samples
    rec = Recorder()
    values = iter(range(100))
    fine_tune(
        linear_model(), x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=10, report_every=4),
        reporter=rec, validate=lambda: float(next(values)),
    )
    assert rec.calls == [(4, 0.0), (8, 1.0)]
    rec = Recorder()
    # report_every=0: once per epoch = ceil(144 / 64) = 3 steps
    fine_tune(
        linear_model(), x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=7, batch_size=64),
        reporter=rec, validate=lambda: 0.5,
    )
    assert [s for s, _ in rec.calls] == [3, 6]
    with pytest.raises(ConfigError, match="reporter but no validate"):
        fine_tune(linear_model(), x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=1), reporter=rec)


def test_distillation(tiny_data: DataSplits) -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert distillation_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, -logits, 2.0).item() > 0
    data = tiny_data
    with pytest.raises(ConfigError, match="distill > 0 needs teacher_logits"):
        fine_tune(linear_model(), x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=1, distill=0.5))
    teacher = torch.zeros(data.x_train.shape[0], 4)
    result = fine_tune(
        linear_model(), x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=3, distill=1.0), teacher_logits=teacher
    )
    assert result.steps == 3 and math.isfinite(result.train_loss)


def test_zero_steps_is_a_no_op(tiny_data: DataSplits) -> None:
    model = linear_model()
    before = model[2].weight.detach().clone()
    data = tiny_data
    assert fine_tune(model, x=data.x_train, y=data.y_train, config=FineTuneConfig(steps=0)).steps == 0
    assert torch.equal(model[2].weight, before)
