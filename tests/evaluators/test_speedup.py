"""Physical channel removal with Torch-Pruning: smaller models, same outputs as the masked reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_pruning", reason="Torch-Pruning is not installed (pip install torch-pruning)")

from compsearch.evaluators.models import build_model  # noqa: E402
from compsearch.evaluators.speedup import (  # noqa: E402
    masked_reference,
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
    pruned = physically_prune(model, policy, units, x)
    plan = pruned.compsearch_plan
    assert plan.removable == ("features.3", "features.5", "classifier.1") and plan.masked == {}
    # the 16 channels of features.3 with the smallest L1 norms are the ones removed
    norms = model.features[3].weight.abs().sum(dim=(1, 2, 3))
    assert plan.channels["features.3"] == sorted(norms.argsort()[:16].tolist())
    # 16 -> 32 -> 32 -> 64 -> 10 becomes 16 -> 16 -> 16 -> 32 -> 10; flatten 16 x 2 x 2 = 64 inputs:
    # 160 + (16*16*9+16) + (16*16*9+16) + (32*64+32) + (10*32+10) = 7210 (was 22954)
    assert parameter_count(model) == 22954 and parameter_count(pruned) == 7210
    assert pruned.classifier[1].in_features == 64 and pruned.classifier[3].in_features == 32
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked_reference(model, plan, x)(x), atol=1e-5, rtol=1e-5)


def test_the_reference_zeroes_the_removed_channels_only() -> None:
    torch.manual_seed(1)
    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(4, 1, 8, 8)
    units = discover_units(model, x)
    plan = plan_pruning(model, Policy({"features.3": UnitPolicy(keep=0.25)}), units, x)
    ref = masked_reference(model, plan, x)
    gone = plan.channels["features.3"]
    assert len(gone) == 24  # keep round(0.25 * 32) = 8
    w, b = ref.features[3].weight, ref.features[3].bias
    assert float(w[gone].detach().abs().sum()) == 0.0 and float(b[gone].detach().abs().sum()) == 0.0
    kept = [c for c in range(32) if c not in gone]
    torch.testing.assert_close(w[kept], model.features[3].weight[kept])


def test_resnet18_removes_the_private_conv1_groups_and_masks_the_residual_stream() -> None:
    from compsearch.evaluators.models import build_model as build

    torch.manual_seed(0)
    model = build("resnet18", num_classes=10, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 32)
    units = discover_units(model, x)
    pruned = physically_prune(model, _half(units), units, x)
    plan = pruned.compsearch_plan
    assert sorted(plan.removable) == sorted(f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2))
    assert "coupled group" in plan.masked["layer1.0.conv2"]
    assert pruned.layer1[0].conv1.out_channels == 32 and pruned.layer1[0].bn1.num_features == 32
    assert pruned.layer1[0].conv2.in_channels == 32 and pruned.layer1[0].conv2.out_channels == 64
    assert parameter_count(pruned) < 0.55 * parameter_count(model)
    with torch.no_grad():
        ref = masked_reference(model, plan, x)(x)
        torch.testing.assert_close(pruned(x), ref, atol=1e-4 * max(1.0, float(ref.abs().max())), rtol=0)


def test_a_policy_without_channel_pruning_changes_nothing() -> None:
    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 8, 8)
    units = discover_units(model, x)
    policy = Policy({u.name: UnitPolicy(w_bits=4, keep=0.5, structure="unstructured") for u in units if not u.is_head})
    pruned = physically_prune(model, policy, units, x)
    assert pruned.compsearch_plan.channels == {} and parameter_count(pruned) == parameter_count(model)
