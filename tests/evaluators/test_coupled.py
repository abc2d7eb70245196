"""Channel pruning holds the pruned channels' bias and BatchNorm entries at 0, so export removes them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="Torch-Pruning is not installed (pip install torch-pruning)")

from tiny_nets import make_data  # noqa: E402

from compsearch.evaluators import CompressionEvaluator, FineTuneConfig, build_model, load_dataset  # noqa: E402
from compsearch.evaluators.speedup import clone_model, physically_prune  # noqa: E402
from compsearch.evaluators.unit_quant import effective_model, from_compressed_units, pruned_rows  # noqa: E402
from compsearch.spaces import Policy, UnitPolicy  # noqa: E402

FT = FineTuneConfig(steps=4, batch_size=32, optimizer="sgd", lr=0.05, seed=1)


def conv_bn_net() -> nn.Sequential:
    """conv(1->4, bias) - BatchNorm(4) - ReLU - pool - linear(4->4); BN shift 0.5 (so a pruned channel outputs 0.5 today)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    with torch.no_grad():
        net[1].bias.fill_(0.5)
        net[1].running_mean.fill_(0.1)
    return net


class ResidualNet(nn.Module):
    """relu(conv0(x)) = h; relu(h + bn1(conv1(h))); pool; fc: conv1's channels meet h's in a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv0, self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.bn1.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv0(x))
        h = torch.relu(h + self.bn1(self.conv1(h)))
        return self.fc(h.mean(dim=(2, 3)))


def _pruned(ev: CompressionEvaluator, unit: str) -> list[int]:
    mask = ev.compressed_units()[unit].mask
    assert mask is not None
    return torch.nonzero(mask.flatten() == 0).flatten().tolist()


def test_pruned_channels_lose_bias_and_batchnorm_entries_and_export_removes_them() -> None:
    data = make_data()
    ev = CompressionEvaluator(conv_bn_net(), data, finetune=FT, device="cpu")
    policy = Policy({"0": UnitPolicy(keep=0.5, structure="channel")})  # 2 of 4 channels (round(0.5 * 4))
    ev.evaluate(policy)
    pruned = _pruned(ev, "0")
    assert len(pruned) == 2
    conv, bn = ev.model[0], ev.model[1]
    kept = [c for c in range(4) if c not in pruned]
    for p in (conv.bias, bn.weight, bn.bias):  # exactly 0 after 4 SGD steps at the pruned channels
        assert p[pruned].eq(0).all() and p[kept].ne(0).all()
    assert conv.weight[pruned].eq(0).all()
    # the channel's output: conv 0 * x + 0 = 0; BN (0 - running_mean) / sqrt(var + eps) * 0 + 0 = 0; relu(0) = 0
    seen: list[torch.Tensor] = []
    handle = ev.model[2].register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        ev.model.eval()
        with torch.no_grad():
            ev.model(data.x_val)
            clone_model(ev.model).train()(data.x_val)  # training mode (batch statistics): 0 as well
    finally:
        handle.remove()
    assert all(bool(out[:, pruned].eq(0).all()) and bool(out[:, kept].ne(0).any()) for out in seen)
    # export's physical pruning equals the evaluated model itself: the two channels go
    x = data.x_val[:2]
    result = physically_prune(ev.model, policy, list(ev.units), x, channels={"0": pruned}, reference="model")
    assert result.plan.removed == ("0",) and result.plan.masked == {}
    assert result.model[0].out_channels == 2 and result.model[1].num_features == 2 and result.model[5].in_features == 2
    assert result.max_error <= 1e-4
    with torch.no_grad():
        assert float((result.model(data.x_val) - ev.model(data.x_val)).abs().max()) <= 1e-4


def test_the_next_candidate_starts_from_the_base_weights_again() -> None:
    base = conv_bn_net()
    ev = CompressionEvaluator(base, make_data(), finetune=FT, device="cpu")
    ev.evaluate(Policy({"0": UnitPolicy(keep=0.5, structure="channel")}))
    ev.evaluate(Policy({"0": UnitPolicy(w_bits=8)}), steps=0)  # quantization only: storage untouched
    for name, want in base.state_dict().items():
        assert torch.equal(ev.model.state_dict()[name], want), name


@pytest.mark.parametrize("policy", [
    Policy({"conv1": UnitPolicy(keep=0.5, structure="channel")}),  # its channels meet conv0's in a residual sum
    Policy({"conv0": UnitPolicy(keep=0.5, structure="unstructured")}),  # no channel leaves
])
def test_groups_that_cannot_be_removed_keep_their_bias_and_batchnorm(policy: Policy) -> None:
    base = ResidualNet()
    ev = CompressionEvaluator(base, make_data(), finetune=FT, device="cpu")
    ev.evaluate(policy, steps=0)
    for name in ("conv0.bias", "conv1.bias", "bn1.weight", "bn1.bias"):  # as before: only weights are masked
        assert torch.equal(ev.model.get_parameter(name), base.get_parameter(name)), name
    assert ev.model.bn1.bias.eq(0.5).all()


def _exported_prune(model: nn.Module, data, policy_for, steps: int):
    """Evaluate, then prune what ``compsearch export`` prunes: the plain model with the evaluated weights."""
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=steps, batch_size=16, lr=0.01), device="cpu")
    policy = Policy.uniform([u.name for u in ev.units], policy_for)
    ev.evaluate(policy)
    units = from_compressed_units(ev.compressed_units(), policy)
    plain = clone_model(model)
    plain.load_state_dict({k: v.detach() for k, v in ev.model.state_dict().items()})
    x = ev.task.example_input()[:4]
    return physically_prune(effective_model(plain, units), None, None, x, channels=pruned_rows(units), reference="model")


def test_the_digits_cnn_evaluated_at_half_its_channels_exports_without_them() -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1)
    result = _exported_prune(model, load_dataset("digits", seed=0), UnitPolicy(keep=0.5, w_bits=8), steps=2)
    # every unit but the head (its channels are the logits) loses half its channels: 16->8, 32->16, 32->16, 64->32
    assert set(result.plan.removed) == {"features.0", "features.3", "features.5", "classifier.1"}
    assert set(result.plan.masked) == {"classifier.3"}
    assert [m.out_channels for m in result.model.features if isinstance(m, nn.Conv2d)] == [8, 16, 16]
    assert result.model.classifier[1].out_features == 32 and result.max_error <= 1e-4


def test_timm_resnet18_at_32px_exports_without_the_pruned_channels_of_its_inner_convs() -> None:
    timm = pytest.importorskip("timm")
    from compsearch.evaluators.types import DataSplits

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 3, 32, 32, generator=gen), torch.randint(0, 10, (48,), generator=gen)
    data = DataSplits(x_train=x, y_train=y, x_val=x[:16], y_val=y[:16], x_test=x[:16], y_test=y[:16], num_classes=10, name="r32")
    torch.manual_seed(0)
    result = _exported_prune(timm.create_model("resnet18", num_classes=10), data, UnitPolicy(keep=0.5, w_bits=8), steps=1)
    # the first conv of each of the 8 basic blocks goes; the stem, the second convs and the downsamples feed the
    # residual stream (and fc is the head), so they stay masked
    inner = {f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)}
    assert set(result.plan.removed) == inner and len(result.plan.masked) == 13
    assert result.model.layer1[0].conv1.out_channels == 32 and result.max_error <= 1e-4
