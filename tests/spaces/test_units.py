"""Unit discovery: functional weight uses, MACs, roles (stem, heads), coverage, blocks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import ConfigError, ModelError
from compsearch.spaces import check_grouping, coverage, discover, discover_units, group_blocks


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
    assert [u.use for u in units] == ["module"] * 3
    assert conv.is_first and not conv.is_head
    assert fc.is_head and not fc.is_first
    assert [u.depth for u in units] == [0, 1, 2]
    assert fc.fan_in == 128 and conv.out_axis == 0
    assert [u.block for u in units] == ["0", "2", "4"]  # a plain Sequential: one block per layer


def test_coverage_counts_unit_weights_over_all_parameters() -> None:
    model = toy()
    found = discover(model, torch.randn(1, 3, 4, 4))
    # parameters: 216 + 8 (bias) + 72 + 640 + 5 (bias) = 941; unit weights 216 + 72 + 640 = 928
    assert found.total_params == 941
    assert found.coverage == pytest.approx(928 / 941) == coverage(model, found.units)
    assert found.uncovered == {}  # biases are vectors: uncompressed by design, not listed
    assert coverage(model, found.units[:1]) == pytest.approx(216 / 941)
    with pytest.raises(ModelError, match="'nope' names neither a parameter nor a module"):
        coverage(model, [replace(found.units[0], name="nope")])


def test_conv1d_units() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8, 3))
    units = discover_units(model, torch.randn(1, 2, 10))
    assert units[0].kind == "conv1d" and units[0].macs == 4 * 8 * 6  # 8 outputs, 2x3 weights each


# ---- functional uses --------------------------------------------------------------------------


class FusedAttention(nn.Module):
    """EVA-style: the qkv Linear's forward never runs; its weight goes to F.linear with a bias
    built from two other parameters."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        return self.proj(F.scaled_dot_product_attention(q, k, v))


class CustomConv(nn.Module):
    """Not a Conv2d subclass: its own weight parameter through F.conv2d (grouped)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1, groups=2)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = CustomConv()  # 4 x 2 x 3 x 3 = 72 weights
        self.attn = FusedAttention()  # qkv 24 x 8 = 192, proj 8 x 8 = 64
        self.unused = nn.Linear(8, 8)  # never used: 72 uncovered parameters
        self.fc = nn.Linear(8, 3)
        self.register_buffer("blur", torch.ones(4, 1, 3, 3) / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: b x 4 x 2 x 4
        x = F.conv2d(x, self.blur, padding=1, groups=4)  # a buffer: not compressible
        x = self.conv(x).flatten(2).transpose(1, 2)  # b x 8 tokens x 4 ... -> pad to 8 features
        x = torch.cat([x, x], dim=-1)  # b x 8 x 8
        x = self.attn(x)
        return self.fc(x.mean(1)) + F.linear(x.mean(1), self.fc.weight) * 0  # fc used twice: once functionally


def test_functional_uses_are_units_with_their_macs() -> None:
    model = Functional()
    found = discover(model, torch.randn(2, 4, 2, 4))
    units = {u.name: u for u in found.units}
    assert list(units) == ["conv.weight", "attn.qkv", "attn.proj", "fc"]
    conv, qkv, proj, fc = units.values()
    # custom conv: output 4 x 2 x 4 = 32 elements per sample, 2 x 3 x 3 = 18 weights each
    assert (conv.kind, conv.use, conv.groups, conv.params, conv.macs) == ("conv2d", "functional", 2, 72, 32 * 18)
    # qkv through F.linear: 8 tokens x 24 outputs x 8 inputs; bias from q_bias/v_bias is not one parameter
    assert (qkv.kind, qkv.use, qkv.weight_shape, qkv.macs, qkv.bias_params) == ("linear", "functional", (24, 8), 8 * 24 * 8, 0)
    assert (proj.use, proj.macs, proj.bias_params) == ("module", 8 * 8 * 8, 8)
    # fc runs as a module and once more through F.linear: functional, MACs of both (2 x 3 x 8)
    assert (fc.use, fc.macs, fc.is_head) == ("functional", 2 * 3 * 8, True)
    assert "unused" not in units and found.uncovered == {"unused.weight": 64}
    assert found.unattributed == ("conv2d with a (4, 1, 3, 3) weight that is a buffer 'blur', not one parameter",)
    assert conv.is_first  # the blur conv before it is no unit


def test_multihead_attention_projections() -> None:
    model = nn.Sequential(nn.Linear(4, 8))
    model.add_module("attn", nn.MultiheadAttention(8, 2, batch_first=True))
    mha = model.attn
    model.forward = lambda x: mha(model[0](x), model[0](x), model[0](x))[0]  # type: ignore[method-assign]
    found = discover(model, torch.randn(2, 5, 4))
    units = {u.name: u for u in found.units}
    assert list(units) == ["0", "attn.in_proj_weight", "attn.out_proj"]
    in_proj, out_proj = units["attn.in_proj_weight"], units["attn.out_proj"]
    # packed q/k/v projection: (5 + 5 + 5 tokens) x 8 outputs x 8 inputs; out_proj 5 x 8 x 8
    assert (in_proj.weight_shape, in_proj.macs, in_proj.bias_params, in_proj.use) == ((24, 8), 15 * 64, 24, "functional")
    assert (out_proj.macs, out_proj.use, out_proj.bias_params) == (5 * 64, "functional", 8)
    assert units["0"].macs == 3 * 5 * 8 * 4  # the Linear ran three times
    assert [u.block for u in found.units] == ["0", "attn", "attn"]  # the attention module is one block
    assert out_proj.is_head and found.head_reason == "'attn.out_proj' feeds the model output with no other unit in between"
    assert found.coverage == pytest.approx((32 + 192 + 64) / (40 + 216 + 72))


def test_weight_standardised_and_same_padding_convs_are_module_units() -> None:
    from timm.layers import Conv2dSame, StdConv2d

    model = nn.Sequential(StdConv2d(3, 4, 3, padding=1), Conv2dSame(4, 4, 3, stride=2), nn.Flatten(), nn.Linear(16, 2))
    units = discover_units(model, torch.randn(1, 3, 4, 4))
    assert [(u.name, u.use, u.weight_shape) for u in units] == [
        ("0", "module", (4, 3, 3, 3)), ("1", "module", (4, 4, 3, 3)), ("3", "module", (2, 16))]
    assert units[1].macs == 4 * 2 * 2 * 36  # "same" padding at stride 2: a 2 x 2 output


# ---- roles --------------------------------------------------------------------------------------


class Distilled(nn.Module):
    """DeiT-style: two heads averaged in eval; optionally without get_classifier."""

    def __init__(self, declare: bool, tuple_out: bool = False) -> None:
        super().__init__()
        self.declare, self.tuple_out = declare, tuple_out
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)
        self.head_dist = nn.Linear(6, 3)

    def get_classifier(self):  # noqa: ANN201 - timm's convention, optionally absent
        if not self.declare:
            raise TypeError("no classifier")
        return self.head, self.head_dist

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        h = torch.relu(self.body(x))
        if self.tuple_out:
            return {"logits": self.head(h), "dist": self.head_dist(h)}
        return (self.head(h) + self.head_dist(h)) / 2


@pytest.mark.parametrize(("declare", "tuple_out", "reason"), [
    (True, False, "get_classifier() returns 'head', 'head_dist'"),
    (False, False, "'head' and 'head_dist' feed the model output with no other unit in between"),
    (False, True, "'head' and 'head_dist' feed the model output with no other unit in between"),
])
def test_distillation_heads_are_both_heads(declare: bool, tuple_out: bool, reason: str) -> None:
    found = discover(Distilled(declare, tuple_out), torch.randn(2, 4))
    assert [u.name for u in found.units if u.is_head] == ["head", "head_dist"] and found.heads == ("head", "head_dist")
    assert found.head_reason == reason
    assert [u.name for u in found.units if u.is_first] == ["body"]


class Residual(nn.Module):
    """No classifier: the output is the input plus two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Linear(2, 4)  # runs first, on a constant table, not on the input
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.register_buffer("table", torch.randn(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.pos(self.table).mean(0)
        return x + self.a(x) + self.b(x) + bias


def test_stem_reads_the_input_and_a_residual_output_has_no_head() -> None:
    found = discover(Residual(), torch.randn(2, 4))
    assert [u.name for u in found.units] == ["pos", "a", "b"]
    assert found.stem == "a" and "'a' is the first unit executed on the model input" in found.stem_reason
    assert found.heads == () and "depends on its input through no unit" in found.head_reason


# ---- blocks -------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, c: int, down: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.downsample = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return y + (self.downsample(x) if self.downsample is not None else x)


class Stage(nn.Module):
    """A downsampling conv, then an indexed sequence of blocks."""

    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(c, c, 1)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class Named(nn.Module):
    """Blocks as attributes b1, b2, b3 (RegNet style)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b1, self.b2, self.b3 = Block(c), Block(c), Block(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b3(self.b2(self.b1(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(4, down=True), Block(4))
        self.stage = Stage(4, 2)
        self.named = Named(4)
        self.pair = nn.Sequential(Block(4))  # a wrapper of one block
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pair(self.named(self.stage(self.layer1(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def test_structural_blocks() -> None:
    units = discover_units(Net(), torch.randn(1, 1, 4, 4))
    blocks = {b: [u.name for u in us] for b, us in group_blocks(units).items()}
    assert blocks == {
        "stem": ["stem"],
        "layer1.0": ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.downsample.0"],
        "layer1.1": ["layer1.1.conv1", "layer1.1.conv2"],
        "stage.blocks.0": ["stage.down", "stage.blocks.0.conv1", "stage.blocks.0.conv2"],  # the lone conv joins
        "stage.blocks.1": ["stage.blocks.1.conv1", "stage.blocks.1.conv2"],
        "named.b1": ["named.b1.conv1", "named.b1.conv2"],
        "named.b2": ["named.b2.conv1", "named.b2.conv2"],
        "named.b3": ["named.b3.conv1", "named.b3.conv2"],
        "pair.0": ["pair.0.conv1", "pair.0.conv2"],
        "fc": ["fc"],
    }
    order = [u.name for u in units]
    block_of = {u.name: u.block for u in units}
    # 20 units; largest block 3 units; 2 single-unit blocks (stem, fc) of 10; all contiguous
    assert check_grouping(order, block_of) == {"largest_share": 3 / 20, "singleton_share": 2 / 10, "fragments": 0.0}
    # without the stem's and the head's blocks: no single-unit block among the other 8
    assert check_grouping(order, block_of, protected=["stem", "fc"])["singleton_share"] == 0.0
    assert check_grouping(["a", "b", "c"], {"a": "x", "b": "y", "c": "x"})["fragments"] == 1.0


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Mixer(nn.Module):
    """Two Mlp attributes without an index: one block, not a stage."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.channels = Mlp(), Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channels(self.tokens(x.transpose(1, 2)).transpose(1, 2))


def test_unindexed_pairs_stay_one_block() -> None:
    model = nn.Sequential(nn.Linear(4, 4), Mixer(), Mixer(), nn.Linear(4, 2))
    units = discover_units(model, torch.randn(1, 4, 4))
    assert [u.block for u in units] == ["0"] + ["1"] * 4 + ["2"] * 4 + ["3"]


def test_include_exclude_and_block_override() -> None:
    model = toy()
    x = torch.randn(1, 3, 4, 4)
    assert [u.name for u in discover_units(model, x, exclude=["4"])] == ["0", "2"]
    assert [u.name for u in discover_units(model, x, include=[r"[02]"])] == ["0", "2"]
    units = discover_units(model, x, blocks={r"[02]": "features"})
    assert [u.block for u in units] == ["features", "features", "4"]
    units = discover_units(model, x, blocks=lambda n: "all")
    assert {u.block for u in units} == {"all"}
    with pytest.raises(ConfigError, match=r"blocks: pattern '\[0' is not a valid regular expression"):
        discover_units(model, x, blocks={"[0": "a"})
    with pytest.raises(ConfigError, match="unit '0' got block ''"):
        discover_units(model, x, blocks=lambda n: "")


def test_no_compressible_layer_and_a_failing_forward_raise() -> None:
    with pytest.raises(ModelError, match="no compressible layer"):
        discover_units(nn.Sequential(nn.ReLU()), torch.randn(1, 3))
    with pytest.raises(ModelError, match="leave no compressible layer"):
        discover_units(toy(), torch.randn(1, 3, 4, 4), include=["nothing"])
    with pytest.raises(ModelError, match=r"fails on an example input of shape \(1, 5\) \(RuntimeError: "):
        discover_units(toy(), torch.randn(1, 5))
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        discover_units("resnet18", torch.randn(1, 3))  # type: ignore[arg-type]


def test_discovery_leaves_the_model_as_found() -> None:
    model = toy().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discover(model, torch.randn(2, 3, 4, 4))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_cli_spaces_shows_the_roles_and_the_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    from compsearch import cli

    assert cli.main(["spaces", "deit_tiny_distilled_patch16_224", "--input-shape", "3,32,32"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "stem: 'patch_embed.proj' is the first unit executed on the model input" in out
    assert "head: get_classifier() returns 'head', 'head_dist'" in out
    # 5,491,796 parameters; pos_embed 1 x 6 x 192 = 1,152 (4 patches of 16 px + class + distillation token)
    assert "of 5,491,796 parameters are unit weights" in out and "pos_embed (1,152)" in out


def test_transformer_encoder_layer_linears_are_functional() -> None:
    # in eval mode without gradients PyTorch's fused encoder kernel reads linear1/linear2 weights
    # directly, so their module forward does not run: they count as functional uses
    model = nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1),
                          nn.Flatten(), nn.Linear(3 * 8, 2))
    units = {u.name: u for u in discover_units(model.eval(), torch.randn(2, 3, 8))}
    layer = "0.layers.0"
    assert {n: u.use for n, u in units.items()} == {
        f"{layer}.self_attn.in_proj_weight": "functional", f"{layer}.self_attn.out_proj": "functional",
        f"{layer}.linear1": "functional", f"{layer}.linear2": "functional", "2": "module"}
    # per sample: in_proj (3 + 3 + 3 tokens) x 8 x 8, out_proj 3 x 8 x 8, linear1 3 x 16 x 8, linear2 3 x 8 x 16
    assert [u.macs for u in units.values()] == [576, 192, 384, 384, 48]
    assert {u.block for n, u in units.items() if n != "2"} == {layer}
