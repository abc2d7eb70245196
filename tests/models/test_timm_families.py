"""Contract over timm model families (random init, 32 px, no downloads).

For each family: discovery covers the weights (coverage >= COVERAGE, and every matrix left
uncovered is a position/bias table, never a layer weight); blocks satisfy the grouping
properties; the cost of an all-8-bit policy matches a hand formula; a 15-bit policy
reproduces the base logits; a 4-bit, keep-0.5 policy fine-tunes for 2 steps with the masks
and the quantization grid in force. ``FAST`` families run in the default suite, the rest
under ``@pytest.mark.slow`` (``make test-all``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import timm
import torch
from torch import nn

from compsearch.evaluators.cost import CostModel
from compsearch.evaluators.evaluator import CompressionEvaluator, EvaluatorConfig
from compsearch.evaluators.masks import keep_count
from compsearch.evaluators.types import DataSplits, FineTuneConfig
from compsearch.spaces import Policy, Unit, UnitPolicy, check_grouping, discover

COVERAGE = 0.95  # share of parameters in units, every family
# Matrices no Conv/Linear computation uses as a weight: position embeddings and tables.
TABLES = re.compile(r"(.*\.)?(pos_embed|cls_token|dist_token|relative_position_bias_table|attention_biases|"
                    r"relative_position_bias|pos_embed_\w+)")
SIDE = 32


@dataclass(frozen=True)
class Family:
    """A timm family at a tiny size: what it builds and what it exercises."""

    build: Callable[[], nn.Module]
    exercises: str


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return partial(timm.create_model, name, pretrained=False, num_classes=10, **kwargs)


def _regnet() -> nn.Module:
    from timm.models.regnet import RegNet, RegNetCfg

    return RegNet(RegNetCfg(depth=8, w0=16, wa=16.0, wm=2.0, group_size=8), num_classes=10)


def _resnetv2() -> nn.Module:
    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(layers=[1, 1, 1, 1], channels=(32, 64, 128, 256), stem_chs=16, num_classes=10,
                    conv_layer=StdConv2d, norm_layer=partial(GroupNormAct, num_groups=8))


def _nfnet() -> nn.Module:
    from dataclasses import replace

    from timm.models.nfnet import NormFreeNet, model_cfgs

    return NormFreeNet(replace(model_cfgs["nfnet_l0"], depths=(1, 1, 2, 1), channels=(64, 128, 192, 256), group_size=16), num_classes=10)


def _mixer(**kwargs: Any) -> Callable[[], nn.Module]:
    from timm.models.mlp_mixer import MlpMixer

    return partial(MlpMixer, num_classes=10, img_size=SIDE, patch_size=8, num_blocks=2, embed_dim=32, **kwargs)


def _gmlp() -> nn.Module:
    from timm.layers import GatedMlp
    from timm.models.mlp_mixer import SpatialGatingBlock

    return _mixer(mlp_ratio=4, block_layer=SpatialGatingBlock, mlp_layer=GatedMlp)()


def _resmlp() -> nn.Module:
    from timm.models.mlp_mixer import Affine, ResBlock

    return _mixer(mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine)()


VIT = {"img_size": SIDE, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
FAST = {
    "resnet": Family(_timm("resnet18", channels=(16, 32, 64, 128), stem_width=16), "residual BasicBlocks"),
    "regnet": Family(_regnet, "grouped convs, stages named s1.b1"),
    "mobilenetv3": Family(_timm("mobilenetv3_small_050"), "depthwise convs, squeeze-excite"),
    "tf_mobilenetv3": Family(_timm("tf_mobilenetv3_small_minimal_100"), "'same'-padding convs (Conv2dSame)"),
    "resnetv2": Family(_resnetv2, "weight-standardised convs (StdConv2d)"),
    "densenet": Family(_timm("densenet121", growth_rate=8, block_config=(2, 2, 2)), "dense blocks, transitions"),
    "dpn": Family(_timm("dpn68", k_sec=(1, 1, 1, 1), inc_sec=(8, 8, 8, 16), k_r=32, groups=8, num_init_features=16),
                  "dual-path blocks, 1x1-conv classifier"),
    "levit": Family(_timm("levit_128s", img_size=SIDE, embed_dim=(32, 48, 64), key_dim=8, depth=(2, 2, 2),
                          num_heads=(2, 2, 2)), "conv-attention hybrid, head + head_dist"),
    "vit": Family(_timm("vit_tiny_patch16_224", **VIT), "attention with a fused qkv Linear"),
    "deit_distilled": Family(_timm("deit_tiny_distilled_patch16_224", **VIT), "distillation heads averaged in eval"),
    "eva02": Family(_timm("eva02_tiny_patch14_224", **VIT), "functional attention: F.linear on qkv.weight"),
    "mixer": Family(_mixer(), "MLP-mixer blocks"),
}
SLOW = {
    "resnext": Family(_timm("resnext26ts"), "grouped bottlenecks, 3-conv stem"),
    "efficientnet": Family(_timm("efficientnet_b0"), "depthwise inverted residuals"),
    "tf_efficientnet": Family(_timm("tf_efficientnet_b0"), "'same'-padding depthwise convs"),
    "nf_resnet": Family(_timm("nf_resnet26"), "scaled weight-standardised convs (ScaledStdConv2d)"),
    "nfnet": Family(_nfnet, "normaliser-free net, ScaledStdConv2dSame + SE"),
    "ghostnet": Family(_timm("ghostnet_100"), "ghost modules"),
    "hrnet": Family(_timm("hrnet_w18_small"), "parallel branches and fuse layers"),
    "convnext": Family(_timm("convnext_atto"), "stages with a downsampling conv"),
    "coatnet": Family(_timm("coatnet_nano_rw_224", img_size=SIDE), "conv-attention hybrid"),
    "maxvit": Family(_timm("maxvit_nano_rw_256", img_size=SIDE), "block and grid attention"),
    "mobilevit": Family(_timm("mobilevit_xxs"), "transformer inside a conv block"),
    "efficientformerv2": Family(_timm("efficientformerv2_s0", img_size=SIDE), "hybrid, distillation head"),
    "beit": Family(_timm("beit_base_patch16_224", **VIT), "functional attention with q/v biases"),
    "swin": Family(_timm("swin_tiny_patch4_window7_224", img_size=SIDE, window_size=2, embed_dim=32,
                         depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)), "windowed attention"),
    "cait": Family(_timm("cait_xxs24_224", img_size=SIDE, patch_size=8, depth=2), "class-attention blocks"),
    "xcit": Family(_timm("xcit_nano_12_p16_224", img_size=SIDE, depth=2), "cross-covariance attention"),
    "pvt_v2": Family(_timm("pvt_v2_b0"), "spatial-reduction attention"),
    "poolformer": Family(_timm("poolformer_s12"), "pooling token mixer"),
    "resmlp": Family(_resmlp, "MLP-mixer with Affine norms"),
    "gmlp": Family(_gmlp, "gated MLPs (spatial gating unit)"),
}
PARAMS = [pytest.param(name, FAST[name], id=name) for name in FAST] + [
    pytest.param(name, SLOW[name], id=name, marks=pytest.mark.slow) for name in SLOW]


def _model(family: Family) -> nn.Module:
    """The family's model, seeded. Weights and scales that timm initialises to zero (a
    residual branch's last norm scale, a skip gain, a classifier) are randomised, so every
    unit changes the logits and the lossless check sees all of them; zero biases stay zero."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = family.build().eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.any() and not name.endswith("bias"):
                    p.uniform_(0.5, 1.5) if p.dim() < 2 else p.normal_(0.0, 0.05)
    return model


def _data(n: int = 16) -> DataSplits:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3 * n, 3, SIDE, SIDE, generator=gen)
    y = torch.randint(0, 10, (3 * n,), generator=gen)
    return DataSplits(x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:], num_classes=10)


@pytest.mark.parametrize(("name", "family"), PARAMS)
def test_discovery_grouping_and_cost(name: str, family: Family) -> None:
    model = _model(family)
    found = discover(model, _data().x_train[:2])
    units = found.units
    assert found.coverage >= COVERAGE, (found.coverage, list(found.uncovered.items())[:5])
    assert all(TABLES.fullmatch(p) for p in found.uncovered), list(found.uncovered)
    assert found.stem is not None and found.heads and all(u.macs > 0 for u in units)
    order = [u.name for u in units]
    props = check_grouping(order, {u.name: u.block for u in units}, protected=[found.stem, *found.heads])
    assert props["largest_share"] <= 0.5 and props["singleton_share"] <= 0.3 and props["fragments"] == 0, props
    # all units at 8 bits (per-channel symmetric), keep 1.0, float inputs:
    # size_bits = 8 x unit weights + 32 x every other parameter + one 32-bit scale per output channel
    total = sum(p.numel() for p in model.parameters())
    weights = sum(u.params for u in units)
    policy = Policy({u.name: UnitPolicy(w_bits=8) for u in units})
    cost = CostModel(units=units, total_params=total)(policy)
    size = 8 * weights + 32 * (total - weights) + 32 * sum(u.out_channels for u in units)
    assert cost["size_bits"] == size and cost["compression_ratio"] == pytest.approx(32 * total / size)
    assert cost["bops"] == pytest.approx(sum(u.macs * 8 * 32 for u in units))


def _relative_mse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``mean((out - ref)**2) / mean(ref**2)``: the evaluator's proxy over the mean squared base logit."""
    return float(((out - ref) ** 2).mean() / (ref**2).mean())


def _check_grid_and_masks(evaluator: CompressionEvaluator, units: tuple[Unit, ...], policy: Policy) -> None:
    """Effective weights sit on their 4-bit grid and the pruned rows are zero."""
    described = evaluator.compressed_units()
    assert set(described) == set(policy)
    for unit in units:
        if unit.name not in policy:
            continue
        c = described[unit.name]
        assert c.scale is not None and c.qmin is not None and c.qmax is not None and c.mask is not None
        codes = c.weight / c.scale  # symmetric: zero point 0
        assert torch.allclose(codes, codes.round(), atol=1e-3), unit.name
        assert codes.round().min() >= c.qmin and codes.round().max() <= c.qmax, unit.name
        rows = c.mask.reshape(unit.out_channels, -1)[:, 0]
        assert int(rows.sum()) == keep_count(0.5, unit.out_channels), unit.name
        assert torch.all(c.weight[rows == 0] == 0), unit.name


@pytest.mark.parametrize(("name", "family"), PARAMS)
def test_lossless_and_compressed_evaluation(name: str, family: Family) -> None:
    model = _model(family)
    data = _data()
    units = discover(model, data.x_train[:2]).units
    config = EvaluatorConfig(finetune=FineTuneConfig(steps=2, batch_size=8, lr=1e-3), calib_batches=1,
                             calib_batch_size=8, proxy_samples=8, sensitivity_batches=1, eval_batch_size=16)
    evaluator = CompressionEvaluator(model, data, config=config, units=units, device="cpu")
    x = data.x_val[:8]
    with torch.no_grad():
        reference = model(x)
    # 15-bit weights on every unit: a rounding error below 2**-15 of each row's range. Measured
    # at most 3e-7 over the 32 families; a forward that drops a subclass's own computation gives
    # 0.3 to 2, and 2-bit weights on any single unit at least 4e-6.
    evaluator.proxy(Policy({u.name: UnitPolicy(w_bits=15) for u in units}))
    with torch.no_grad():
        assert _relative_mse(evaluator.model.eval()(x), reference) <= 1e-5
    # 4-bit weights, half the channels, 8-bit inputs where the unit's own forward takes them
    policy = Policy({u.name: UnitPolicy(w_bits=4, keep=0.5, a_bits=8 if u.use == "module" else 32)
                     for u in units if not u.is_head})
    result = evaluator.evaluate(policy)
    assert result.steps == 2 and 0.0 <= result.values["accuracy"] <= 1.0
    _check_grid_and_masks(evaluator, units, policy)
