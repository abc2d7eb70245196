"""The hierarchy's state (kernel/block features, layer statistics, Fisher prior), the
reconstruction-error model and the saved-state format, on the contract's toy model with a fake
evaluator (hand-computable numbers)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compsearch.errors import ConfigError
from compsearch.search.registry import SearchContext
from compsearch.search.rl.allocation import EnsembleAllocation
from compsearch.search.rl.hierarchy import build_hierarchy
from compsearch.search.rl.layout import block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.ppo import PPOConfig, SharedLowLevel
from compsearch.search.rl.reward import RewardWeights, unit_cost_oracle
from compsearch.search.rl.state import (
    FisherPrior,
    NoPrior,
    block_statistics,
    kernel_statistics,
    layer_statistics,
)
from compsearch.spaces import discover_units, get_space
from compsearch.testing import TOY_CHOICES, toy_model, toy_space

SEARCHED = ("layer1.0.conv1", "layer1.0.conv2", "fc")  # 288, 576, 2048 weights; MACs 4608, 9216, 2048


class FakeEvaluator:
    """``cost``: the exact unit-size oracle; ``sensitivity``: given; ``unit_stats``: given;
    ``reconstruction_error``: ``e_u = 0.1 (32 - w_bits) / 32 + 0.5 (1 - keep)`` for every unit
    (0 for an uncompressed one), counting its calls."""

    def __init__(self, space, *, sensitivity=None, stats=None) -> None:
        self.space, self._sens, self._stats = space, sensitivity, stats
        self._cost = unit_cost_oracle(space)
        self.queries = 0

    def cost(self, policy):
        return self._cost(policy)

    def sensitivity(self):
        return dict(self._sens or {})

    def unit_stats(self):
        return self._stats or {}

    def reconstruction_error(self, policy):
        self.queries += 1
        out = {}
        for u in self.space.all_units:
            up = policy.get_or_identity(u.name)
            out[u.name] = 0.1 * (32 - up.w_bits) / 32 + 0.5 * (1 - up.keep)
        return out


def _stats(w_mean: float, w_var: float, a_zero: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(
        weight_mean=w_mean, weight_var=w_var, weight_entropy=0.7, act_mean=1.0, act_var=4.0, act_zero_fraction=a_zero,
        grad_mean=0.0, grad_var=1e-4,
    )


def test_kernel_statistics_by_hand() -> None:
    f = kernel_statistics(block_layout(toy_space()))
    # param_share 288/2912 ..., mac_share 4608/15872 ..., depth 1/3, 2/3, 1, conv2d/conv1d/linear/depthwise, in_block
    np.testing.assert_allclose(f[:, 0], np.array([288, 576, 2048]) / 2912)
    np.testing.assert_allclose(f[:, 1], np.array([4608, 9216, 2048]) / 15872)
    np.testing.assert_allclose(f[:, 2], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(f[:, 3:8], [[1, 0, 0, 0, 0], [1, 0, 0, 0, 1], [0, 0, 1, 0, 0]])


def test_layer_statistics_from_unit_stats() -> None:
    layout = block_layout(toy_space())
    stats = {"layer1.0.conv1": _stats(0.1, 0.04, 0.5), "layer1.0.conv2": _stats(-0.3, 0.01), "fc": _stats(0.0, 1.0)}
    f = layer_statistics(layout, FakeEvaluator(toy_space(), stats=stats))
    # w_mean = mean / std: 0.1 / 0.2 = 0.5; -0.3 / 0.1 = -3 -> clipped -1; 0
    np.testing.assert_allclose(f[:, 0], [0.5, -1.0, 0.0], atol=1e-6)
    # w_logvar min-max over kernels: log .04 = -3.219, log .01 = -4.605, log 1 = 0 -> 0.301, 0, 1
    np.testing.assert_allclose(f[:, 1], [(math.log(0.04) - math.log(0.01)) / -math.log(0.01), 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(f[:, 2], 0.7)  # entropy as given
    np.testing.assert_allclose(f[:, 3], 0.5)  # act mean / std = 1 / 2
    np.testing.assert_allclose(f[:, 4], 0.0)  # equal activation variances: no spread
    np.testing.assert_allclose(f[:, 5], [0.5, 0.0, 0.0])  # zero fraction as given


def test_layer_statistics_fall_back_to_the_models_weights() -> None:
    model = toy_model()
    f = layer_statistics(block_layout(toy_space()), SimpleNamespace(model=model))
    w = model.fc.weight.detach().numpy()
    assert f[2, 0] == pytest.approx(np.clip(w.mean() / w.std(), -1, 1), rel=1e-4)
    assert np.all(f[:, 3:] == 0)  # no activation or gradient statistics without unit_stats
    assert np.all(layer_statistics(block_layout(toy_space()), None) == 0)


def test_fisher_prior_columns_and_block_sensitivity() -> None:
    layout = block_layout(toy_space())
    state = FisherPrior(strength=1.0).build(layout, {"layer1.0.conv1": 1.0, "layer1.0.conv2": 3.0, "fc": math.exp(2.0)})
    # log s = (0, 1.0986, 2): min-max (0, 0.549, 1); ranks (0, 0.5, 1); blocks 1 + 3 and e^2
    np.testing.assert_allclose(state.kernel_columns, [[0, 0], [math.log(3) / 2, 0.5], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(state.block_sensitivity, [4.0, math.exp(2.0)])
    assert state.logits(np.array([0.1, 1.0])).shape == (2, 2)
    none = NoPrior().build(layout, {"fc": 1.0})
    assert np.all(none.kernel_columns == 0) and none.logits(np.array([0.1, 1.0])) is None


def test_block_features_aggregate_kernels() -> None:
    layout = block_layout(toy_space())
    kf = np.concatenate([np.zeros((3, 2)), kernel_statistics(layout), np.zeros((3, 8))], axis=1)
    bf = block_statistics(layout, kf)
    np.testing.assert_allclose(bf[:, -3], [864 / 2912, 2048 / 2912], rtol=1e-6)  # block_param_share
    np.testing.assert_allclose(bf[:, -1], [2 / 3, 1 / 3], rtol=1e-6)  # kernel_share
    np.testing.assert_allclose(bf[1, :-3], kf[2], rtol=1e-6)  # one-kernel block = its kernel
    np.testing.assert_allclose(bf[0, 4], (288 * 1 / 3 + 576 * 2 / 3) / 864, rtol=1e-6)  # param-weighted depth


def _objective(space, evaluator, recon: float = 0.0) -> StrategyObjective:
    ctx = SearchContext(space=space, evaluator=evaluator)
    return StrategyObjective(ctx, ["maximize", "minimize"], layout=block_layout(space), weights=RewardWeights(recon=recon))


def _hierarchy(space, evaluator, seed: int = 0, obj=None):
    obj = obj or _objective(space, evaluator)
    return build_hierarchy(
        obj, evaluator, allocation=EnsembleAllocation(), low_level=SharedLowLevel(), prior=FisherPrior(), sensitivity=None,
        ppo=PPOConfig(), weights=obj.default_weights, seed=seed,
    )


def test_reconstruction_errors_memoized_and_the_probe_by_hand() -> None:
    space = toy_space()
    ev = FakeEvaluator(space)
    h = _hierarchy(space, ev)
    recon = h.recon
    assert recon is not None
    # conv1 at (w_bits 4, keep 0.5): 0.1 * 28/32 + 0.25 = 0.3375; conv2 at (8, 0.75): 0.075 + 0.125 = 0.2; fc at 32/1.0: 0
    actions = np.array([[1, 0, 0, 0, 0, 2, 0, 1, 0, 0, 3, 1, 2, 0, 0]])
    np.testing.assert_allclose(recon.errors(actions), [[0.3375, 0.2, 0.0]])
    before = ev.queries
    recon.errors(np.repeat(actions, 5, axis=0))
    assert ev.queries == before  # memoized per kernel setting
    # probe: budget 1 -> the identity (error 0, rho 0); a budget below every setting -> the cheapest
    # (2 bits, keep 0.5): 0.1 * 30/32 + 0.25 = 0.34375, rho = log10(1 + 34.375) = 1.5487
    rho = recon.at(np.array([[1.0, 1.0, 1e-6]]))
    np.testing.assert_allclose(rho, [[0.0, 0.0, math.log10(1 + 34.375)]], atol=1e-9)


def test_recon_term_of_the_reward_by_hand() -> None:
    space = toy_space()
    obj = _objective(space, FakeEvaluator(space), recon=2.0)
    _hierarchy(space, obj.ctx.evaluator, obj=obj)  # attaches the reconstruction model to obj
    actions = np.array([[1, 0, 0, 0, 0, 2, 0, 1, 0, 0, 3, 1, 2, 0, 0]])
    r_with = obj.score(actions, np.array([0.5]), [RewardWeights(recon=2.0)])[0][0, 0]
    r_without = obj.score(actions, np.array([0.5]), [RewardWeights()])[0][0, 0]
    # weighted mean of rho = log10(1 + 100 e) over kernels with weights 288, 576, 2048
    rho = np.log10(1 + 100 * np.array([0.3375, 0.2, 0.0]))
    assert r_without - r_with == pytest.approx(2.0 * (rho * [288, 576, 2048]).sum() / 2912)


def test_saved_state_transfers_feature_parts_to_another_model() -> None:
    space = toy_space()
    h = _hierarchy(space, FakeEvaluator(space), seed=0)
    with torch.no_grad():
        for p in h.low.policy.parameters():
            p.add_(1.0)  # "learned"
    state = h.state_dict()
    # the same toy model with every unit its own block: 3 blocks instead of 2, same heads
    units = discover_units(toy_model(), torch.zeros(1, 1, 4, 4), blocks=lambda name: name)
    other = get_space("joint", units, **TOY_CHOICES)
    h2 = _hierarchy(other, FakeEvaluator(other), seed=5)
    copied = h2.load_state_dict(state)
    assert "trunk.0.weight" in copied["low"] and "owner_bias" not in copied["low"]
    assert torch.equal(h2.low.policy.state_dict()["trunk.0.weight"], state["low"]["params"]["trunk.0.weight"])
    assert torch.all(h2.low.policy.state_dict()["owner_bias"] == 0)  # block-indexed: fresh
    same = _hierarchy(space, FakeEvaluator(space), seed=9)
    assert "owner_bias" in same.load_state_dict(state)["low"]  # same blocks: everything
    with pytest.raises(ConfigError, match="format"):
        h2.load_state_dict({"format": "other"})


def test_saved_state_round_trips_through_torch_save(tmp_path) -> None:
    space = toy_space()
    h = _hierarchy(space, FakeEvaluator(space))
    torch.save(h.state_dict(), tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)  # plain tensors and lists: no code unpickled
    assert loaded["format"] == "compsearch.rl.hierarchy/1" and loaded["blocks"] == ["layer1.0", "fc"]
    assert len(loaded["high"]["agents"]) == 3


def test_hierarchy_rollout_shapes_and_budgets() -> None:
    space = toy_space()
    h = _hierarchy(space, FakeEvaluator(space))
    ro = h.rollout(np.array([0.2, 0.5, 0.9]))
    assert ro.actions.shape == (3, 15) and ro.budgets.shape == (3, 2) and ro.obs_lo.shape[:2] == (3, 3)
    assert all(space.contains(space.params_from_actions(a.tolist())) for a in ro.actions)
    assert set(np.unique(ro.budgets)) <= set(h.allocator.levels.tolist())
