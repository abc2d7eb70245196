"""Policy distillation: the loss by hand, zero loss for an identical student, the loop and DAgger."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.evaluators.distill import (
    DistillHooks,
    DistillSettings,
    StateBuffer,
    distill,
    greedy_cross_entropy,
    policy_distillation_loss,
)
from compsearch.evaluators.types import FineTuneConfig


def test_loss_by_hand() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # softmax: (0.25, 0.75)
    student = torch.zeros(1, 2)                     # softmax: (0.5, 0.5)
    # T = 1: KL = 0.25 ln(0.25 / 0.5) + 0.75 ln(0.75 / 0.5) = -0.173287 + 0.304099 = 0.130812
    assert float(policy_distillation_loss(student, teacher, kind="logits")) == pytest.approx(0.130812, abs=1e-6)
    # T = 2: teacher softmax(0, ln(3) / 2) = (1 / (1 + sqrt 3), sqrt 3 / (1 + sqrt 3)) = (0.366025, 0.633975);
    # logits: T**2 * (0.366025 ln 0.732051 + 0.633975 ln 1.267949) = 4 * 0.036341 = 0.145363; Q-values: no T**2
    assert float(policy_distillation_loss(student, teacher, kind="logits", temperature=2.0)) == pytest.approx(0.145363, abs=1e-6)
    assert float(policy_distillation_loss(student, teacher, kind="q", temperature=2.0)) == pytest.approx(0.036341, abs=1e-6)
    # actions: ((1 - 0) / half range 2)**2 = 0.25 and ((0.5 - 0.5) / 1)**2 = 0, mean 0.125
    loss = policy_distillation_loss(torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 0.5]]), kind="action",
                                    half_range=torch.tensor([2.0, 1.0]))
    assert float(loss) == pytest.approx(0.125)
    # greedy CE: -ln softmax(student)[argmax teacher] = -ln 0.5
    assert float(greedy_cross_entropy(student, teacher)) == pytest.approx(math.log(2.0))
    with pytest.raises(ConfigError, match="kind='probs' is unknown"):
        policy_distillation_loss(student, teacher, kind="probs")


@pytest.mark.parametrize("kind", ["logits", "q", "action"])
def test_identical_student_has_zero_loss_and_stays_unchanged(kind: str) -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    states = torch.randn(50, 3)
    out = teacher(states).detach()
    temperature = DistillSettings().temperature_for(kind)
    assert float(policy_distillation_loss(out.clone(), out, kind=kind, temperature=temperature)) == 0.0
    student = copy.deepcopy(teacher)
    calls: list[int] = []
    result = distill(student, teacher, StateBuffer(states, capacity=100), kind=kind,
                     config=FineTuneConfig(steps=5, optimizer="sgd", lr=1e-2, batch_size=16), settings=DistillSettings(),
                     hooks=DistillHooks(after_step=lambda: calls.append(1)))
    # the gradient is 0 up to float rounding of sum(softmax) = 1, so SGD barely moves
    assert result.steps == 5 and result.train_loss == pytest.approx(0.0, abs=1e-9) and len(calls) == 5
    for a, b in zip(student.parameters(), teacher.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)


def test_distillation_moves_a_student_to_its_teacher_and_dagger_adds_states() -> None:
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    student = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    states = torch.randn(200, 4)
    buffer = StateBuffer(states, capacity=260)
    rounds: list[int] = []

    def collect(net: nn.Module, round_: int) -> torch.Tensor:
        rounds.append(round_)
        return torch.randn(40, 4)

    with torch.no_grad():
        before = float(policy_distillation_loss(student(states), teacher(states), kind="logits"))
    config = FineTuneConfig(steps=250, optimizer="adam", lr=1e-2, batch_size=32, seed=3)
    distill(student, teacher, buffer, kind="logits", config=config, settings=DistillSettings(dagger_every=100),
            hooks=DistillHooks(after_step=lambda: None, collect=collect))
    with torch.no_grad():
        after = float(policy_distillation_loss(student(states), teacher(states), kind="logits"))
    assert after < 0.2 * before
    assert rounds == [1, 2]                 # DAgger at steps 100 and 200
    assert len(buffer) == 260               # 200 + 2 x 40 = 280 states, the newest 260 kept
    assert torch.equal(buffer.states[:180], states[20:])


def test_seeded_and_diverged() -> None:
    torch.manual_seed(2)
    teacher = nn.Linear(3, 2)
    states = torch.randn(30, 3)

    def run() -> list[torch.Tensor]:
        torch.manual_seed(7)
        student = nn.Linear(3, 2)
        with torch.no_grad():
            student.weight.zero_()
        distill(student, teacher, StateBuffer(states, capacity=30), kind="q", config=FineTuneConfig(steps=20, seed=5),
                settings=DistillSettings(temperature=0.5), hooks=DistillHooks(after_step=lambda: None))
        return [p.detach().clone() for p in student.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(), run(), strict=True))
    with pytest.raises(FineTuneDiverged, match="policy distillation diverged at step 1/3"):
        distill(nn.Linear(3, 2), teacher, StateBuffer(states, capacity=30), kind="logits", config=FineTuneConfig(steps=3),
                settings=DistillSettings(), hooks=DistillHooks(after_step=lambda: None, extra_loss=lambda: torch.tensor(float("nan"))))
    with pytest.raises(ConfigError, match="task.temperature=0"):
        DistillSettings(temperature=0)
    with pytest.raises(ConfigError, match="task.dagger_episodes=0"):
        DistillSettings(dagger_episodes=0)
