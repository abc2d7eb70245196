"""Physical channel removal: smaller models, the masked model's outputs, honest masking, no side effects."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="Torch-Pruning is not installed (pip install torch-pruning)")

from compsearch.errors import ModelError  # noqa: E402
from compsearch.evaluators.models import build_model  # noqa: E402
from compsearch.evaluators.speedup import (  # noqa: E402
    PrunePlan,
    apply_plan,
    masked_reference,
    output_error,
    parameter_count,
    physically_prune,
    plan_pruning,
)
from compsearch.spaces import Policy, UnitPolicy, discover_units  # noqa: E402


def _half(units, skip=()) -> Policy:
    return Policy({u.name: UnitPolicy(keep=0.5) for u in units if not u.is_head and u.name not in skip})


def test_digits_cnn_loses_half_its_channels_with_identical_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(8, 1, 8, 8)
    units = discover_units(model, x)
    policy = _half(units, skip=("features.0",))  # features.3 (32), features.5 (32), classifier.1 (64)
    result = physically_prune(model, policy, units, x)
    plan, pruned = result.plan, result.model
    assert plan.removed == ("features.3", "features.5", "classifier.1") and plan.masked == {}
    # the 16 channels of features.3 with the smallest L1 norms are the ones removed
    norms = model.features[3].weight.abs().sum(dim=(1, 2, 3))
    assert plan.channels["features.3"] == tuple(sorted(norms.argsort()[:16].tolist()))
    # 16 -> 32 -> 32 -> 64 -> 10 becomes 16 -> 16 -> 16 -> 32 -> 10; flatten 16 x 2 x 2 = 64 inputs:
    # 160 + (16*16*9+16) + (16*16*9+16) + (32*64+32) + (10*32+10) = 7210 (was 22954)
    assert result.params_before == 22954 and result.params_after == parameter_count(pruned) == 7210
    assert pruned.classifier[1].in_features == 64 and pruned.classifier[3].in_features == 32
    # the flatten maps channel c to columns 4c..4c+3 of classifier.1: the kept columns are the kept channels'
    kept = [c for c in range(32) if c not in plan.channels["features.5"]]
    cols = [4 * c + k for c in kept for k in range(4)]
    rows = [r for r in range(64) if r not in plan.channels["classifier.1"]]
    torch.testing.assert_close(pruned.classifier[1].weight, model.classifier[1].weight[rows][:, cols])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_reference(model, plan)(x), atol=1e-5, rtol=1e-5)


def test_the_reference_zeroes_the_removed_channels_only() -> None:
    torch.manual_seed(1)
    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(4, 1, 8, 8)
    units = discover_units(model, x)
    plan = plan_pruning(model, Policy({"features.3": UnitPolicy(keep=0.25)}), units, x)
    ref = masked_reference(model, plan)
    gone = list(plan.channels["features.3"])
    assert len(gone) == 24  # keep round(0.25 * 32) = 8
    w, b = ref.features[3].weight, ref.features[3].bias
    assert float(w[gone].detach().abs().sum()) == 0.0 and float(b[gone].detach().abs().sum()) == 0.0
    kept = [c for c in range(32) if c not in gone]
    torch.testing.assert_close(w[kept], model.features[3].weight[kept])
    # the consumer's input columns stay (the zero channel makes them irrelevant)
    torch.testing.assert_close(ref.features[5].weight, model.features[5].weight)


def test_a_policy_without_channel_pruning_changes_nothing() -> None:
    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 8, 8)
    units = discover_units(model, x)
    policy = Policy({u.name: UnitPolicy(w_bits=4, keep=0.5, structure="unstructured") for u in units if not u.is_head})
    result = physically_prune(model, policy, units, x)
    assert result.plan.channels == {} and result.params_after == parameter_count(model)


class _Grouped(nn.Module):
    """conv(3->8) - BN - ReLU - grouped conv(8->8, groups=2) - pool - linear(8->4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.head(y.mean(dim=(2, 3)))


class _Split(nn.Module):
    """conv(3->8) -> chunk into two halves -> their product -> linear(4->4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x).chunk(2, dim=1)
        return self.head((a * torch.sigmoid(b)).mean(dim=(2, 3)))


class _Flip(nn.Module):
    """conv(3->8) -> channel flip -> conv(8->8) -> linear: Torch-Pruning maps channel i to i, not 7-i."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.relu(self.conv1(x)).flip(1)).mean(dim=(2, 3)))


@pytest.mark.parametrize(("model_cls", "unit", "coupling"), [
    (_Grouped, "conv1", "reach the grouped conv 'conv2' (groups=2)"),
    (_Grouped, "conv2", "reach the grouped conv 'conv2' (groups=2)"),
    (_Split, "conv1", "pass through a torch.split/chunk"),
    (_Flip, "conv1", "removing its channels failed (the outputs differ from the masked model by"),
])
def test_a_group_that_cannot_go_stays_masked_and_says_why(model_cls, unit, coupling) -> None:
    torch.manual_seed(0)
    model = model_cls().eval()
    x = torch.randn(2, 3, 6, 6)
    units = discover_units(model, x)
    policy = Policy({unit: UnitPolicy(keep=0.5)})
    result = physically_prune(model, policy, units, x)
    assert result.plan.removed == () and list(result.plan.masked) == [unit]
    assert result.plan.masked[unit].startswith(f"unit {unit!r} stays masked: its channels " if "failed" not in coupling
                                                else f"unit {unit!r} stays masked: ")
    assert coupling in result.plan.masked[unit]
    # masked = the pruned weight rows zeroed in place, nothing else; outputs equal the reference's
    w = result.model.get_submodule(unit).weight
    assert w.shape == model.get_submodule(unit).weight.shape
    assert float(w.detach()[list(result.plan.channels[unit])].abs().sum()) == 0.0
    assert result.max_error <= 1e-6
    with pytest.raises(ModelError, match=f"unit '{unit}' stays masked"):
        physically_prune(model, policy, units, x, strict=True)


def test_a_saved_plan_rebuilds_the_pruned_architecture_on_a_fresh_model() -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(4, 1, 8, 8)
    units = discover_units(model, x)
    result = physically_prune(model, _half(units, skip=("features.0",)), units, x)
    plan = PrunePlan.from_dict(copy.deepcopy(result.plan.to_dict()))
    assert plan == result.plan
    torch.manual_seed(5)
    fresh = apply_plan(build_model("digits_cnn", num_classes=10, in_chans=1), plan)  # other weights, same shapes
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in result.model.state_dict().items()}
    fresh.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), result.model(x))
    with pytest.raises(ModelError, match="prune plan version=99"):
        PrunePlan.from_dict({**plan.to_dict(), "version": 99})


# --- timm families (random init, 32 px, no downloads) --------------------------------------------------

def _mixer() -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=4, embed_dim=64)


IMG = {"img_size": 32}
FAST = {  # name -> (timm kwargs, what the family exercises)
    "resnet18": ({}, "residual stream masked, conv1 groups removed"),
    "regnetx_002": ({}, "grouped convs"),
    "mobilenetv3_small_050": ({}, "squeeze-excite gates, depthwise convs"),
    "densenet121": ({}, "concat graph"),
    "vit_tiny_patch16_224": (IMG, "attention (unbind), LayerNorm, MLP removed"),
    "levit_128s": (IMG, "attention-bias cache, BatchNorm1d on tokens"),
}
SLOW = {
    "resnext26ts": (IMG, ""), "efficientnet_b0": ({}, ""), "tf_efficientnet_b0": ({}, ""), "dpn68": ({}, ""),
    "ghostnet_100": ({}, ""), "convnext_atto": ({}, ""), "deit_tiny_distilled_patch16_224": (IMG, ""),
    "mixer": ({}, ""), "resmlp_12_224": (IMG, ""), "coatnet_nano_rw_224": (IMG, ""), "maxvit_nano_rw_256": (IMG, ""),
    "mobilevit_xxs": (IMG, ""), "hrnet_w18_small": ({}, ""), "cspresnet50": ({}, ""), "dla34": ({}, ""),
    "res2net50_14w_8s": ({}, ""), "selecsls42b": ({}, ""), "rexnet_100": ({}, ""), "poolformer_s12": ({}, ""),
    "pvt_v2_b0": ({}, ""), "efficientvit_b0": ({}, ""), "mixnet_s": ({}, ""), "skresnet18": ({}, ""),
    "repvit_m0_9": (IMG, ""), "inception_next_tiny": ({}, ""),
}


def _timm(name: str, kwargs: dict) -> nn.Module:
    if name == "mixer":
        return _mixer()
    import timm

    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _check_family(name: str, kwargs: dict) -> PrunePlan:
    torch.manual_seed(0)
    model = _timm(name, kwargs).train()  # training mode: pruning must not switch the caller's model
    x = torch.randn(2, 3, 32, 32)
    units = discover_units(model, x)
    with torch.enable_grad():  # a forward with gradients (LeViT then caches a non-leaf tensor)
        model.eval()
        model(x)
        model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = physically_prune(model, _half(units), units, x)
    plan, pruned = result.plan, result.model
    # side-effect free: same weights, same mode; and the pruned model deep-copies
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    copy.deepcopy(pruned)
    # every pruned unit is either removed (smaller by its pruned channels) or masked with a reason
    assert set(plan.removed) | set(plan.masked) == set(plan.channels) and not set(plan.removed) & set(plan.masked)
    for unit in plan.removed:
        assert pruned.get_submodule(unit).weight.shape[0] == model.get_submodule(unit).weight.shape[0] - len(plan.channels[unit])
    assert all(why.startswith(f"unit {u!r} stays masked: ") for u, why in plan.masked.items())
    # exact on an input the check never saw
    gen = torch.Generator().manual_seed(123)
    fresh = [torch.randn(3, 3, 32, 32, generator=gen)]
    assert output_error(pruned, masked_reference(model, plan), fresh) <= 1e-4
    assert result.params_after <= result.params_before
    return plan


@pytest.mark.parametrize("name", list(FAST))
def test_timm_family_prunes_exactly_without_side_effects(name: str) -> None:
    plan = _check_family(name, FAST[name][0])
    if name == "resnet18":
        assert sorted(plan.removed) == sorted(f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2))
        assert "shared with the producer" in plan.masked["layer1.0.conv2"]
    elif name == "regnetx_002":
        assert "reach the grouped conv 's1.b1.conv2.conv'" in plan.masked["s1.b1.conv1.conv"]
    elif name == "mobilenetv3_small_050":  # the expansion conv goes with its depthwise conv and SE gate rows
        group = plan.groups["blocks.1.0.conv_pw"]
        assert {"blocks.1.0.conv_dw", "blocks.1.0.bn2"} <= set(group.out) and "blocks.1.0.conv_pwl" in group.inp
        assert any(".se.conv_expand" in m for u, g in plan.groups.items() for m in g.out if u.endswith("conv_pw"))
    elif name == "densenet121":  # every conv of a dense layer feeds a concat: all removable
        assert plan.masked == {} and len(plan.removed) == 120
    elif name == "vit_tiny_patch16_224":
        assert sorted(plan.removed) == sorted(f"blocks.{i}.mlp.fc1" for i in range(12))
        assert "unbind" in plan.masked["blocks.0.attn.qkv"] and "LayerNorm" in plan.masked["blocks.0.mlp.fc2"]
    else:
        assert plan.removed


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW))
def test_more_timm_families_prune_exactly_without_side_effects(name: str) -> None:
    _check_family(name, SLOW[name][0])


def test_pruning_the_evaluators_model_keeps_its_outputs_and_says_which_channels_are_live() -> None:
    from tiny_nets import make_cnn, make_data

    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.evaluators.speedup import clone_model, zero_pruned
    from compsearch.evaluators.types import FineTuneConfig
    from compsearch.evaluators.unit_quant import effective_model, from_compressed_units, pruned_rows

    data, model = make_data(), make_cnn()
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=3, batch_size=32), device="cpu")
    policy = Policy({"4": UnitPolicy(w_bits=8, keep=0.5, structure="channel")})  # conv(8->8) - BN - ReLU
    ev.evaluate(policy, steps=3)
    ev.model.eval()
    x = data.x_val
    with torch.no_grad():
        want = ev.model(x)
    units = from_compressed_units(ev.compressed_units(), policy)
    plain = clone_model(model)
    plain.load_state_dict(ev.model.state_dict())
    evaluated = effective_model(plain, units)  # the evaluator's compressed model (no input quantization here)
    units_ = discover_units(model, x[:2])
    # the evaluator holds the pruned channels' conv bias and BatchNorm entries at 0 too: the channels go
    result = physically_prune(evaluated, policy, units_, x[:2], channels=pruned_rows(units), reference="model")
    assert result.plan.removed == ("4",) and result.model[4].out_channels == 4 and result.model[5].num_features == 4
    with torch.no_grad():
        assert float((result.model(x) - want).abs().max()) <= 1e-4
    # with a live conv bias at the pruned channels (as the evaluator once left it) they stay masked, and the reason says so
    live = clone_model(evaluated)
    with torch.no_grad():
        live[4].bias.add_(1.0)
    plan = plan_pruning(live, policy, units_, x[:2], channels=pruned_rows(units), reference="model")
    assert plan.removed == () and "its pruned channels are not 0 in this model (4.bias is nonzero there)" in plan.masked["4"]
    # once the whole group is zeroed (what an evaluator applying zero_pruned would train), they go
    plan = plan_pruning(evaluated, policy, units_, x[:2], channels=pruned_rows(units))
    zeroed = zero_pruned(clone_model(evaluated), plan)
    result = physically_prune(zeroed, policy, units_, x[:2], channels=pruned_rows(units), reference="model")
    assert result.plan.removed == ("4",) and result.model[4].out_channels == 4 and result.model[5].num_features == 4
    with torch.no_grad():
        assert float((result.model(x) - zeroed(x)).abs().max()) <= 1e-5


class _Functional(nn.Module):
    """conv(3->8) - pool - F.linear with fc's weight (read outside fc.forward) - F.linear with a raw parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.nn.functional.linear(self.conv(x).mean(dim=(2, 3)), self.fc.weight, self.fc.bias))
        return torch.nn.functional.linear(h, self.w)


def test_functional_weights_stay_masked_with_a_reason() -> None:
    torch.manual_seed(0)
    model = _Functional().eval()
    x = torch.randn(2, 3, 6, 6)
    units = discover_units(model, x)
    names = {u.name for u in units}
    assert {"conv", "fc", "w"} <= names
    policy = Policy({n: UnitPolicy(keep=0.5) for n in ("fc", "w")})
    result = physically_prune(model, policy, units, x)  # "w" is the head (the last computation): not pruned
    assert result.plan.removed == () and "functional weight" in result.plan.masked["fc"]
    assert float(result.model.fc.weight.detach()[list(result.plan.channels["fc"])].abs().sum()) == 0.0
    assert result.max_error <= 1e-6
    assert set(result.plan.channels) == {"fc"}
    # a raw parameter's rows are zeroed in place too
    result = physically_prune(model, None, None, x, channels={"w": [0, 1]})
    assert "functional weight" in result.plan.masked["w"] and float(result.model.w.detach()[:2].abs().sum()) == 0.0
