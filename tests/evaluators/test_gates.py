"""Hard-concrete channel gates: the cost-aware penalty by hand, folding, the ``gates`` criterion."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.evaluators.gates import (
    BETA,
    GAMMA,
    ZETA,
    GateTraining,
    HardConcreteGates,
    channel_costs,
    make_gates,
    train_gates_alone,
)
from compsearch.evaluators.masks import get_criterion
from compsearch.evaluators.types import GradientBatch
from compsearch.spaces.policy import UnitPolicy
from compsearch.spaces.units import discover_units


def two_units() -> tuple[nn.Sequential, list]:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4))
    return model, discover_units(model, torch.zeros(2, 3))


def log_odds_for(prob: list[float]) -> torch.Tensor:
    """``a`` with ``P(z > 0) = sigmoid(a - beta log(-gamma / zeta)) = prob``."""
    c = BETA * math.log(-GAMMA / ZETA)  # (2/3) ln(0.1 / 1.1) = -1.598597
    return torch.tensor([math.log(q / (1 - q)) + c for q in prob])


def test_penalty_equals_the_hand_computed_expected_cost() -> None:
    _, units = two_units()
    # unit "0": Linear(3 -> 2): 6 weights + 2 biases, 6 MACs; unit "2": Linear(2 -> 4): 8 + 4, 8 MACs.
    # P = 8 + 12 = 20 parameters, M = 6 + 8 = 14 MACs.
    # channel of "0": 0.5 * (8 / 2) / 20 + 0.5 * (6 / 2) / 14 = 0.1 + 0.107143 = 0.207143
    # channel of "2": 0.5 * (12 / 4) / 20 + 0.5 * (8 / 4) / 14 = 0.075 + 0.071429 = 0.146429
    costs = channel_costs(units)
    assert costs["0"] == pytest.approx(0.207143, abs=1e-6) and costs["2"] == pytest.approx(0.146429, abs=1e-6)
    assert 2 * costs["0"] + 4 * costs["2"] == pytest.approx(1.0)  # all channels open: the whole cost
    gates = HardConcreteGates({"0": 2, "2": 4}, costs)
    with torch.no_grad():
        gates.alpha("0").copy_(log_odds_for([0.5, 0.8]))
        gates.alpha("2").copy_(log_odds_for([0.1, 0.2, 0.3, 0.4]))
    assert torch.allclose(gates.open_probability("0"), torch.tensor([0.5, 0.8]), atol=1e-6)
    # expected kept cost: 0.207143 * (0.5 + 0.8) + 0.146429 * (0.1 + 0.2 + 0.3 + 0.4) = 0.269286 + 0.146429 = 0.415714
    assert float(gates.penalty().detach()) == pytest.approx(0.415714, abs=1e-5)
    # parameters only: 0.2 * 1.3 + 0.15 * 1.0 = 0.41
    only_params = HardConcreteGates({"0": 2, "2": 4}, channel_costs(units, params_weight=1.0))
    with torch.no_grad():
        only_params.alpha("0").copy_(log_odds_for([0.5, 0.8]))
        only_params.alpha("2").copy_(log_odds_for([0.1, 0.2, 0.3, 0.4]))
    assert float(only_params.penalty().detach()) == pytest.approx(0.41, abs=1e-5)


def test_gate_values_fold_and_policy() -> None:
    torch.manual_seed(0)
    model, units = two_units()
    gates = make_gates(units, GateTraining())
    with torch.no_grad():
        gates.alpha("0").copy_(torch.tensor([5.0, -5.0]))        # sigmoid(5) * 1.2 - 0.1 > 1: open (1); closed (0)
        gates.alpha("2").copy_(torch.tensor([0.0, 5.0, 5.0, 5.0]))  # sigmoid(0) * 1.2 - 0.1 = 0.5: open at half
    assert torch.allclose(gates.gate("2", sample=False), torch.tensor([0.5, 1.0, 1.0, 1.0]))
    assert gates.keep_ratios() == {"0": 0.5, "2": 1.0}
    assert gates.policy() == {"0": UnitPolicy(keep=0.5, structure="channel")}
    x = torch.randn(5, 3)
    model.eval()
    modules = {"0": model[0], "2": model[2]}
    with gates.attached(modules):
        gated = model(x)
        model.train()
        sampled = [model(x) for _ in range(2)]
        model.eval()
    assert not torch.equal(sampled[0], sampled[1])  # training mode draws a sample per forward
    assert torch.equal(model(x), model(x))           # hooks gone
    gates.fold(modules)
    assert torch.allclose(model(x), gated, atol=1e-6)
    assert torch.equal(model[0].weight[1], torch.zeros(3)) and float(model[0].bias[1].detach()) == 0.0


def test_training_gates_alone_closes_the_channels_the_loss_does_not_need() -> None:
    torch.manual_seed(1)
    # hidden channel k copies x_k; the output adds 0.3 * (x1 + x2 + x3) to x0, the target is x0 alone,
    # so the loss and the penalty both want channels 1-3 closed and channel 0 open
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 0.3, 0.3, 0.3]]))
        model[2].bias.zero_()
    x = torch.rand(256, 4)
    y = x[:, :1]
    batches = [GradientBatch(inputs=x[i::4], loss=lambda out, t=y[i::4]: ((out - t) ** 2).mean()) for i in range(4)]
    units = discover_units(model, x[:2])
    gates = make_gates([u for u in units if u.name == "0"], GateTraining(strength=0.05, steps=300, lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_gates_alone(model, {"0": model[0]}, batches, gates, GateTraining(strength=0.05, steps=300, lr=0.1))
    assert losses[-1] < losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # weights frozen
    alpha = gates.alpha("0").detach()
    assert int(alpha.argmax()) == 0 and bool((alpha[1:] < alpha[0]).all())
    assert gates.keep_ratios()["0"] == 0.25


def test_gates_criterion_in_the_evaluator(tiny_cnn: nn.Sequential, tiny_data) -> None:
    assert get_criterion("gates").model_level
    ev = CompressionEvaluator(tiny_cnn, tiny_data, criterion="gates", device="cpu")
    result = ev.evaluate({"4": UnitPolicy(keep=0.25, structure="channel")}, steps=0)
    assert 0 <= result.accuracy <= 1
    kept = ev.effective_weights()["4"].flatten(1).abs().sum(dim=1) > 0
    assert int(kept.sum()) == 2  # keep 0.25 of 8 channels


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="gates.strength=-1"):
        GateTraining(strength=-1.0)
    with pytest.raises(ConfigError, match="gates.steps=0"):
        GateTraining(steps=0)
    with pytest.raises(ConfigError, match="gates.init_open=1.0"):
        HardConcreteGates({"a": 2}, {"a": 0.5}, init_open=1.0)
    with pytest.raises(ConfigError, match="at least one unit"):
        HardConcreteGates({}, {})
    with pytest.raises(ConfigError, match="params_weight"):
        channel_costs([], params_weight=2.0)
