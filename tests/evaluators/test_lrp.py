"""LRP relevance: a two-layer example by hand, conservation as eps -> 0, the ``lrp`` criterion."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compsearch.evaluators import lrp as lrp_module  # registers the "lrp" criterion
from compsearch.evaluators.agents import PolicyNet
from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.evaluators.lrp import lrp_scores, relevance
from compsearch.evaluators.masks import get_criterion
from compsearch.spaces.policy import UnitPolicy


def two_layer() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -0.25]]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
    return model


def test_two_layer_example_by_hand() -> None:
    # x = (1, 2): h = (1 + 2, 1 - 0.5) = (3, 0.5) > 0 (ReLU passes), y = 3 + 2 * 0.5 = 4 = R_y.
    # epsilon rule, eps -> 0: R_h = (3 * 1 / 4 * 4, 0.5 * 2 / 4 * 4) = (3, 1);
    # R_x = (1 * 1 / 3 * 3 + 1 * 1 / 0.5 * 1, 2 * 1 / 3 * 3 + 2 * (-0.25) / 0.5 * 1) = (1 + 2, 2 - 1) = (3, 1).
    model = two_layer()
    units = {"0": model[0], "2": model[2]}
    per_unit, rel_in = relevance(model, torch.tensor([[1.0, 2.0]]), units, epsilon=1e-9)
    assert torch.allclose(per_unit["0"][0], torch.tensor([[3.0, 1.0]]), atol=1e-6)
    assert torch.allclose(per_unit["2"][0], torch.tensor([[4.0]]), atol=1e-6)
    assert torch.allclose(rel_in, torch.tensor([[3.0, 1.0]]), atol=1e-6)
    scores = lrp_scores(model, units, [torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]])], epsilon=1e-9)
    assert torch.allclose(scores["0"], torch.tensor([3.0, 1.0]), atol=1e-6)


def test_conservation_on_a_bias_free_relu_mlp() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 12, bias=False), nn.ReLU(),
                          nn.Linear(12, 4, bias=False))
    units = {"0": model[0], "2": model[2], "4": model[4]}
    x = torch.randn(8, 6)
    out = model(x).detach().max(dim=1).values  # R_out: the predicted logit
    errors = []
    for eps in (1e-1, 1e-3, 1e-9):
        per_unit, rel_in = relevance(model, x, units, epsilon=eps)
        errors.append(float((rel_in.sum(dim=1) - out).abs().max()))
    assert errors[-1] < 1e-4 and errors[0] > errors[-1]
    for name in units:  # every layer's channels share exactly the output relevance
        assert torch.allclose(per_unit[name][0].sum(dim=1), out, atol=1e-4)


def test_zplus_conservation_on_a_bias_free_relu_cnn() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 3, 3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 5, bias=False))
    units = {"0": model[0], "2": model[2], "5": model[5]}
    x = torch.rand(4, 2, 6, 6)  # non-negative inputs: z+ conserves
    out = model(x).detach().max(dim=1).values
    per_unit, rel_in = relevance(model, x, units, epsilon=1e-9)
    assert torch.allclose(rel_in.flatten(1).sum(dim=1), out, rtol=1e-4, atol=1e-5)
    assert per_unit["0"][0].shape == (4, 4) and per_unit["2"][0].shape == (4, 3)
    assert torch.allclose(per_unit["0"][0].sum(dim=1), out, rtol=1e-4, atol=1e-5)


def test_continuous_actions_explain_each_dimension_from_the_head() -> None:
    torch.manual_seed(2)
    head = nn.Linear(8, 2, bias=False)
    net = PolicyNet(features=nn.Flatten(), body=nn.Sequential(nn.Linear(3, 8, bias=False), nn.ReLU()), head=head,
                    kind="action", low=torch.tensor([-1.0, -2.0]), high=torch.tensor([1.0, 2.0]))
    units = {"body.0": net.body[0], "head": head}
    x = torch.randn(5, 3)
    per_unit, rel_in = relevance(net, x, units, epsilon=1e-9)
    mu = head(net.body(x)).detach()  # relevance starts at the pre-tanh mean, one pass per dimension
    assert len(per_unit["body.0"]) == 2
    for d in range(2):
        assert torch.allclose(per_unit["body.0"][d].sum(dim=1), mu[:, d], atol=1e-5)
    assert torch.allclose(rel_in.sum(dim=1), mu.sum(dim=1), atol=1e-5)


def test_lrp_criterion_in_the_evaluator(tiny_cnn: nn.Sequential, tiny_data) -> None:
    assert get_criterion("lrp").model_level and lrp_module.lrp_scores is lrp_scores
    before = copy.deepcopy(tiny_cnn.state_dict())
    ev = CompressionEvaluator(tiny_cnn, tiny_data, criterion="lrp", device="cpu")
    result = ev.evaluate({"4": UnitPolicy(keep=0.5, structure="channel")}, steps=0)
    assert 0 <= result.accuracy <= 1
    weight = ev.effective_weights()["4"]
    kept = (weight.flatten(1).abs().sum(dim=1) > 0).sum()
    assert int(kept) == 4  # keep 0.5 of 8 channels
    assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())
    assert not any(m._forward_hooks for m in ev.model.modules())  # every hook removed


def test_no_batches() -> None:
    with pytest.raises(ValueError, match="lrp needs at least one calibration input batch"):
        lrp_scores(two_layer(), {"0": two_layer()[0]}, [])
