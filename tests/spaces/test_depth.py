"""The depth space, removed blocks in policies, and composed spaces (hand-checkable numbers on
compsearch.testing.ToyResNet; see its docstring for the sizes)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError, PolicyError
from compsearch.spaces import (
    DEPTH_FIELD,
    Policy,
    UnitPolicy,
    check_blocks,
    discover_units,
    get_space,
    removable_blocks,
)
from compsearch.testing import toy_depth_units, toy_resnet, toy_space

X = torch.zeros(1, 1, 4, 4)


def test_toy_resnet_offers_its_residual_blocks_with_identity_or_shortcut() -> None:
    blocks = {b.name: b for b in removable_blocks(toy_resnet(), X, toy_depth_units())}
    assert list(blocks) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert {n: b.shortcut for n, b in blocks.items()} == {"layer1.0": None, "layer1.1": None,
                                                          "layer2.0": "layer2.0.shortcut", "layer2.1": None}
    # params removed with a block: its conv's weights + biases, not the shortcut's
    assert {n: b.params for n, b in blocks.items()} == {"layer1.0": 148, "layer1.1": 148, "layer2.0": 296, "layer2.1": 584}
    assert blocks["layer2.0"].units == ("layer2.0.conv",) and blocks["layer2.0"].macs == 1152
    assert (blocks["layer2.0"].in_shape, blocks["layer2.0"].out_shape) == ((4, 4, 4), (8, 2, 2))
    checks = check_blocks(toy_resnet(), X, toy_depth_units())
    assert checks["stem"].reason == "it holds the stem" and checks["head"].reason == "it holds the classifier head"


def test_a_block_that_changes_shape_without_a_shortcut_is_not_offered() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 16, 2))
    units = discover_units(model, X)
    checks = check_blocks(model, X, units)
    assert checks["1"].block is not None and checks["1"].block.shortcut is None  # 4 -> 4 channels: the identity
    assert checks["2"].block is None
    assert checks["2"].reason == ("its output shape (8, 4, 4) differs from its input shape (4, 4, 4) and no child "
                                  "computes a shortcut of that shape from its input")
    space = get_space("depth", units, model=model, example_input=X)
    assert space.param_names() == [f"1.{DEPTH_FIELD}"]
    with pytest.raises(PolicyError, match=r"blocks: block '2' cannot be removed: its output shape \(8, 4, 4\) differs"):
        get_space("depth", units, model=model, example_input=X, blocks=["2"])
    with pytest.raises(PolicyError, match="space 'depth' cannot remove block '2': its output shape"):
        space.encode(Policy({}, removed={"2": None}))
    with pytest.raises(ConfigError, match="needs the model"):
        get_space("depth", units)


def test_depth_space_decodes_to_removed_blocks() -> None:
    space = toy_space("depth")
    params = {f"{b}.{DEPTH_FIELD}": True for b in ("layer1.0", "layer1.1", "layer2.0", "layer2.1")}
    params["layer2.0.keep_block"] = False
    policy = space.decode(params)
    assert policy.removed == {"layer2.0": "layer2.0.shortcut"} and len(policy) == 0
    assert space.encode(policy) == params
    assert policy.removes("layer2.0.conv") and not policy.removes("layer2.0.shortcut") and not policy.removes("layer2.1.conv")
    only = toy_space("depth", blocks=["layer1.1"])
    assert only.param_names() == ["layer1.1.keep_block"] and [u.name for u in only.units] == ["layer1.1.conv"]


def test_removed_blocks_in_json_and_canonical_form() -> None:
    p = Policy({"layer1.1.conv": UnitPolicy(w_bits=4), "layer2.1.conv": UnitPolicy(w_bits=8)},
               removed={"layer1.1": None, "layer1.1.inner": None, "layer2.0": "layer2.0.shortcut"})
    data = json.loads(p.to_json())
    assert data["version"] == 2 and data["removed"] == {"layer1.1": None, "layer1.1.inner": None, "layer2.0": "layer2.0.shortcut"}
    assert Policy.from_json(p.to_json()) == p
    canon = p.canonical()
    # rule 9: the removed unit's setting goes; rule 10: the block inside a removed block goes
    assert canon.removed == {"layer1.1": None, "layer2.0": "layer2.0.shortcut"}
    assert list(canon) == ["layer2.1.conv"]
    assert Policy({"layer2.1.conv": UnitPolicy(w_bits=8)}).key != canon.key
    with pytest.raises(PolicyError, match="version=1 has no 'removed' blocks"):
        Policy.from_dict({"version": 1, "units": {}, "removed": {"a": None}})
    with pytest.raises(PolicyError, match="a shortcut is None .* or the path of a module inside the block"):
        Policy({}, removed={"layer2.0": "layer2.1.conv"})


def test_composed_space_routes_options_and_refuses_overlaps() -> None:
    space = toy_space("depth+joint", depth={"blocks": ["layer1.1", "layer2.0"]}, w_bits=[4, 8])
    assert space.param_names()[:2] == ["layer1.1.keep_block", "layer2.0.keep_block"]
    assert space.name == "depth+joint" and [b.name for b in space.removable] == ["layer1.1", "layer2.0"]
    params = {d.name: d.choices[-1] for d in space.dimensions()}
    params["layer2.0.keep_block"] = False
    policy = space.decode(params)
    assert policy.removed == {"layer2.0": "layer2.0.shortcut"} and policy["layer2.1.conv"].w_bits == 8
    assert space.decode(space.encode(policy)) == policy
    units = toy_depth_units()
    with pytest.raises(ConfigError, match="parts 'joint' and 'quant' both have parameter 'layer1.0.conv.w_bits'"):
        get_space("joint+quant", units)
    with pytest.raises(ConfigError, match="parts 'block' and 'joint' both search the w_bits of unit 'layer1.0.conv'"):
        get_space("block+joint", units)
    with pytest.raises(TypeError, match=r"no part takes option\(s\) \['bogus'\]"):
        get_space("quant+prune", units, bogus=1)
    with pytest.raises(ConfigError, match="names a part twice"):
        from compsearch.spaces import check_space_name

        check_space_name("joint+joint")


@pytest.mark.slow  # ~7 s on 2 cores (timm import, two resnet18 forwards and an evaluator)
def test_timm_resnet18_offers_basic_blocks_with_downsample_shortcuts() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    blocks = {b.name: b for b in removable_blocks(model, x, discover_units(model, x))}
    assert list(blocks) == [f"layer{s}.{i}" for s in (1, 2, 3, 4) for i in (0, 1)]
    assert {n: b.shortcut for n, b in blocks.items() if b.shortcut} == {f"layer{s}.0": f"layer{s}.0.downsample" for s in (2, 3, 4)}
    # layer1.0: two 3x3 64->64 convs (2 x 36864) and two BatchNorms (2 x 128)
    assert blocks["layer1.0"].params == 2 * 64 * 64 * 9 + 2 * 128
    # layer2.0 without its downsample: 64->128 and 128->128 3x3 convs and two BatchNorms
    assert blocks["layer2.0"].params == 64 * 128 * 9 + 128 * 128 * 9 + 2 * 256
    assert all(b.in_shape == b.out_shape for n, b in blocks.items() if b.shortcut is None)
    # the evaluator's resnet18 without layer2.0 is the model whose layer2.0 is its downsample
    from compsearch.evaluators import CompressionEvaluator
    from compsearch.evaluators.types import DataSplits

    y = torch.arange(8) % 10
    xs = torch.randn(8, 3, 32, 32)
    ev = CompressionEvaluator(model, DataSplits(xs, y, xs, y, xs, y, num_classes=10), device="cpu")
    policy = Policy({}, removed={"layer2.0": "layer2.0.downsample"})
    assert ev.cost(Policy())["size_bits"] - ev.cost(policy)["size_bits"] == 32 * blocks["layer2.0"].params
    ev.proxy(policy)
    model.layer2[0] = model.layer2[0].downsample
    with torch.no_grad():
        assert torch.allclose(ev.model.eval()(xs), model(xs), atol=1e-5)
