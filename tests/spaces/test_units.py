from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from compsearch.errors import ModelError
from compsearch.spaces import default_block_name, discover_units, group_blocks


def toy() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 0: 8 x 3 x 3 x 3 = 216 weights, out 8 x 4 x 4
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # 2: depthwise, 8 x 1 x 3 x 3 = 72
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),  # 4: 640 weights
    )


def test_toy_units_params_macs_and_roles() -> None:
    units = discover_units(toy(), torch.randn(2, 3, 4, 4))
    assert [u.name for u in units] == ["0", "2", "4"]
    conv, dw, fc = units
    # MACs per sample = output elements x weights per output element
    assert conv.params == 216 and conv.macs == 8 * 4 * 4 * 27  # 3456
    assert dw.params == 72 and dw.groups == 8 and dw.macs == 8 * 4 * 4 * 9  # 1152
    assert fc.params == 640 and fc.macs == 640
    assert conv.bias_params == 8 and dw.bias_params == 0
    assert [u.kind for u in units] == ["conv2d", "conv2d", "linear"]
    assert conv.is_first and not conv.is_head
    assert fc.is_head and not fc.is_first
    assert [u.depth for u in units] == [0, 1, 2]
    assert fc.fan_in == 128 and conv.out_axis == 0


def test_conv1d_units() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8, 3))
    units = discover_units(model, torch.randn(1, 2, 10))
    assert units[0].kind == "conv1d" and units[0].macs == 4 * 8 * 6  # 8 outputs, 2x3 weights each


def test_include_exclude_and_block_override() -> None:
    model = toy()
    x = torch.randn(1, 3, 4, 4)
    assert [u.name for u in discover_units(model, x, exclude=["4"])] == ["0", "2"]
    assert [u.name for u in discover_units(model, x, include=[r"[02]"])] == ["0", "2"]
    units = discover_units(model, x, blocks={r"[02]": "features"})
    assert [u.block for u in units] == ["features", "features", "4"]
    units = discover_units(model, x, blocks=lambda n: "all")
    assert {u.block for u in units} == {"all"}


def test_no_compressible_layer_raises() -> None:
    with pytest.raises(ModelError, match="no compressible layer"):
        discover_units(nn.Sequential(nn.ReLU()), torch.randn(1, 3))
    with pytest.raises(ModelError, match="leave no compressible layer"):
        discover_units(toy(), torch.randn(1, 3, 4, 4), include=["nothing"])


def test_default_block_rule() -> None:
    counts = {"layer1": 4, "layer1.0": 3, "layer1.0.downsample": 1, "layer1.0.downsample.0": 1,
              "stages.1": 7, "stages.1.blocks.0": 3}
    assert default_block_name("layer1.0.conv1", counts) == "layer1.0"
    assert default_block_name("layer1.0.downsample.0", counts) == "layer1.0"
    assert default_block_name("stages.1.blocks.0.mlp.fc1", counts) == "stages.1.blocks.0"
    assert default_block_name("features.4", {"features": 3}) == "features.4"
    assert default_block_name("head.fc", counts) == "head"
    assert default_block_name("fc", counts) == "fc"


TIMM = [
    # name, kwargs, expected example blocks, expected head
    ("resnet18", {}, {"conv1", "layer1.0", "layer4.1", "fc"}, "fc"),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}, {"patch_embed", "blocks.0", "blocks.1", "head"}, "head"),
    ("mobilenetv3_small_050", {}, {"conv_stem", "blocks.0.0", "blocks.1.0"}, "classifier"),
    ("efficientnet_b0", {}, {"conv_stem", "blocks.0.0", "blocks.6.0"}, "classifier"),
    ("convnext_atto", {}, {"stages.0.blocks.0", "stages.3.blocks.1"}, "head.fc"),
]


@pytest.mark.parametrize(("name", "kwargs", "blocks", "head"), TIMM, ids=[t[0] for t in TIMM])
def test_timm_families(name: str, kwargs: dict, blocks: set[str], head: str) -> None:
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    units = discover_units(model, torch.randn(1, 3, 32, 32))
    got = group_blocks(units)
    assert blocks <= set(got), sorted(got)
    assert [u.name for u in units if u.is_head] == [head]
    assert units[0].is_first and sum(u.is_first for u in units) == 1
    assert all(u.macs > 0 for u in units)
    total = sum(p.numel() for p in model.parameters())
    assert sum(u.params + u.bias_params for u in units) <= total
    # every block but the stem/head ones has more than one unit, or is a single-layer stage
    assert len(got) < len(units)


def test_plain_sequential_blocks() -> None:
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(4 * 4 * 4, 2))
    units = discover_units(model, torch.randn(1, 1, 8, 8))
    assert [u.block for u in units] == ["features.0", "features.2", "classifier"]
