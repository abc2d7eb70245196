"""Removed blocks in the evaluator, the cost model and export, on compsearch.testing.ToyResNet.

ToyResNet (its docstring): stem conv 1->4 (36 weights + 4 biases), layer1.0 and layer1.1
(``x + relu(conv(x))``, conv 4->4: 144 weights + 4 biases each), layer2.0
(``relu(conv(x)) + shortcut(x)``: conv 4->8 stride 2, 288 + 8; shortcut 1x1 4->8 stride 2,
32 + 8), layer2.1 (conv 8->8, 576 + 8), head 32->3 (96 + 3): 1355 parameters, 43360 bits.
MACs per sample on 1 x 4 x 4: layer1.x conv 16 positions x 4 x 36 = 2304; layer2.0.conv
4 positions x 8 x 36 = 1152.
"""

from __future__ import annotations

import pytest
import torch
from tiny_nets import make_data
from torch import nn

from compsearch.errors import PolicyError
from compsearch.evaluators import CompressionEvaluator
from compsearch.evaluators.bundle import load_bundle, write_bundle
from compsearch.evaluators.removal import RemovedBlock, remove_blocks
from compsearch.evaluators.speedup import clone_model, physically_prune
from compsearch.evaluators.unit_quant import from_compressed_units
from compsearch.search.rl.reward import unit_cost_oracle
from compsearch.spaces import Policy, UnitPolicy
from compsearch.testing import toy_resnet, toy_space

IDENTITY_BITS = 1355 * 32  # 43360


@pytest.fixture(scope="module")
def data():
    return make_data(shape=(1, 4, 4), num_classes=3, n=120)


@pytest.fixture(scope="module")
def ev(data) -> CompressionEvaluator:
    return CompressionEvaluator(toy_resnet(), data, device="cpu")


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_removing_a_block_costs_exactly_its_parameters(ev) -> None:
    base = ev.cost(Policy())
    assert base["size_bits"] == IDENTITY_BITS
    gone = ev.cost(Policy({}, removed={"layer1.1": None}))
    assert base["size_bits"] - gone["size_bits"] == 144 * 32 + 4 * 32  # 4736: the weights and the biases
    assert base["bops"] - gone["bops"] == 2304 * 32 * 32  # its conv's MACs x 32 x 32
    assert gone["sparsity"] == pytest.approx(144 / 1316)  # unit weights: 36+144+144+288+32+576+96
    # with layer1.1.conv at 4 bits (per-channel symmetric: 144 x 4 + 4 scales x 32 = 704 bits), removal saves 704 + 128
    four = Policy({"layer1.1.conv": UnitPolicy(w_bits=4)})
    assert ev.cost(four)["size_bits"] - ev.cost(Policy(four, removed={"layer1.1": None}))["size_bits"] == 704 + 128
    # a removed unit's setting is irrelevant: the cost of the removal alone
    assert ev.cost(Policy(four, removed={"layer1.1": None})) == gone
    # the shortcut block: its conv (288 + 8) goes, the shortcut (32 + 8) still costs
    short = ev.cost(Policy({}, removed={"layer2.0": "layer2.0.shortcut"}))
    assert base["size_bits"] - short["size_bits"] == (288 + 8) * 32
    assert base["bops"] - short["bops"] == 1152 * 32 * 32
    # the strategies' evaluator-free oracle (non-unit parameters = biases; ToyResNet has no norms) agrees
    oracle = unit_cost_oracle(toy_space("depth+joint"))
    for p in (Policy(four, removed={"layer1.1": None}), Policy({}, removed={"layer2.0": "layer2.0.shortcut"})):
        assert oracle(p) == ev.cost(p)


def test_a_block_that_cannot_be_replaced_is_a_clear_error(ev) -> None:
    with pytest.raises(PolicyError, match="removes block 'stem', which cannot be removed: it holds the stem"):
        ev.cost(Policy({}, removed={"stem": None}))
    with pytest.raises(PolicyError, match="replaces removed block 'layer2.0' by None; this model replaces it by 'layer2.0.shortcut'"):
        ev.evaluate(Policy({}, removed={"layer2.0": None}), steps=0)
    with pytest.raises(PolicyError, match="removes block 'layer9', which is not a block of the model"):
        ev.proxy(Policy({}, removed={"layer9": None}))


def test_removed_identity_block_equals_the_model_without_it(ev, data) -> None:
    x = data.x_val[:16]
    ev.proxy(Policy({"layer1.1.conv": UnitPolicy(w_bits=2, keep=0.5)}, removed={"layer1.1": None}))
    deleted = toy_resnet()
    deleted.layer1[1] = nn.Identity()
    assert torch.equal(_out(ev.model, x), _out(deleted, x))
    assert ev.removed_blocks() == {"layer1.1": None}
    assert "layer1.1.conv" not in ev.compressed_units()  # not quantized, not masked
    assert torch.equal(ev.model.layer1[1].conv.weight, toy_resnet().layer1[1].conv.weight)
    ev.proxy(Policy())  # restored exactly
    assert torch.equal(_out(ev.model, x), _out(toy_resnet(), x)) and ev.removed_blocks() == {}


def test_removed_block_with_shortcut_computes_the_shortcut(ev, data) -> None:
    x = data.x_val[:16]
    ev.proxy(Policy({}, removed={"layer2.0": "layer2.0.shortcut"}))
    m = toy_resnet().eval()
    with torch.no_grad():
        want = m.head(m.layer2[1](m.layer2[0].shortcut(m.layer1(torch.relu(m.stem(x))))).flatten(1))
    assert torch.allclose(_out(ev.model, x), want, atol=1e-6)


def test_fine_tuning_leaves_removed_units_alone_and_export_reproduces(ev, data, tmp_path) -> None:
    policy = Policy({"layer1.0.conv": UnitPolicy(w_bits=8), "layer1.1.conv": UnitPolicy(w_bits=2),
                     "layer2.1.conv": UnitPolicy(w_bits=4, keep=0.5)},
                    removed={"layer1.1": None, "layer2.0": "layer2.0.shortcut"})
    ev.evaluate(policy, steps=3)
    base = toy_resnet()
    assert torch.equal(ev.model.layer1[1].conv.weight, base.layer1[1].conv.weight)  # removed: no gradient
    assert torch.equal(ev.model.layer2[0].conv.weight, base.layer2[0].conv.weight)
    assert not torch.equal(ev.model.layer2[0].shortcut.weight, base.layer2[0].shortcut.weight)  # the shortcut trains
    x = data.x_test[:16]
    reference = _out(ev.model, x)
    plain = clone_model(toy_resnet())
    plain.load_state_dict(ev.model.state_dict())
    units = from_compressed_units(ev.compressed_units(), policy)
    assert sorted(units) == ["layer1.0.conv", "layer2.1.conv"]
    manifest = write_bundle(plain, units, x[:2], tmp_path, removed=ev.removed_blocks(), dynamo=False)
    assert manifest["removed_blocks"] == {"layer1.1": None, "layer2.0": "layer2.0.shortcut"}
    loaded = load_bundle(tmp_path, toy_resnet())
    assert isinstance(loaded.layer1[1], RemovedBlock) and isinstance(loaded.layer2[0], RemovedBlock)
    assert (_out(loaded, x) - reference).abs().max() <= 1e-4
    # the bundle holds no parameter of a removed block: 1355 - (144 + 4) - (288 + 8) = 911
    assert sum(p.numel() for p in loaded.parameters()) == 911
    from compsearch.evaluators.onnx_export import ort_session, run_onnx

    onnx_out = run_onnx(ort_session(tmp_path / "model.onnx"), x[:1])
    assert (onnx_out - reference[:1]).abs().max() <= 1e-4


def test_physically_prune_replaces_removed_blocks(data) -> None:
    x = data.x_val[:8]
    policy = Policy({"layer1.0.conv": UnitPolicy(keep=0.5)}, removed={"layer2.1": None})
    result = physically_prune(toy_resnet(), policy, list(CompressionEvaluator(toy_resnet(), data, device="cpu").units), x)
    assert result.params_before == 1355
    # layer2.1 (576 + 8) gone; layer1.0.conv's 2 pruned channels: 2 x 36 weights + 2 biases -- it feeds a residual
    # stream, so it stays masked and keeps them
    assert result.params_after == 1355 - 584
    reference = remove_blocks(toy_resnet(), {"layer2.1": None})
    assert isinstance(reference.layer2[1], RemovedBlock)
    with pytest.raises(PolicyError, match="shortcut 'layer2.0.conv.x' must be a direct child"):
        remove_blocks(toy_resnet(), {"layer2.0": "layer2.0.conv.x"})
