"""The compressed forward is the module's own forward with the effective weight substituted:
plain layers bit-identical to the direct computation, subclasses (timm same-padding and
weight-standardised convs) keep their behaviour, functional weight uses are compressed, and
what cannot be handled is refused with a ModelError."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, ScaledStdConv2d, StdConv2d
from torch import nn

from compsearch.errors import ModelError
from compsearch.evaluators import CompressionEvaluator, FineTuneConfig
from compsearch.evaluators.compressed import (
    FUNCTIONAL,
    MODULE,
    UnitCompression,
    probe_weight_uses,
    resolve_weight,
)
from compsearch.evaluators.quant import ActQuantizer, WeightQuant, fake_quantize_weight
from compsearch.evaluators.types import DataSplits
from compsearch.spaces import Policy, Unit, UnitPolicy

W3 = WeightQuant(3, "symmetric", True)


def _input(module: nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    if isinstance(module, nn.Conv2d):
        return torch.randn(2, 4, 7, 7)
    return torch.randn(2, 4, 5) if isinstance(module, nn.Conv1d) else torch.randn(2, 4)


def _install(module: nn.Module, *, wq: WeightQuant | None = W3, aq: ActQuantizer | None = None) -> UnitCompression:
    owner = resolve_weight(nn.Sequential(module), "0")
    probe_weight_uses(nn.Sequential(module), {"0": owner}, _input(module))
    return UnitCompression(owner, name="0", weight_quant=wq, act_quant=aq).install()


@pytest.mark.parametrize(
    "module",
    [nn.Conv1d(4, 6, 3, padding=1), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 6, 1, stride=2), nn.Linear(4, 3)],
    ids=["conv1d", "depthwise", "conv2d", "linear"],
)
def test_plain_layers_bit_identical_to_direct_computation(module: nn.Module) -> None:
    x = _input(module)
    reference = module(x)
    params_before = list(module._parameters.items())
    compression = _install(module)
    wq = fake_quantize_weight(module.weight, bits=3, scheme="symmetric", per_channel=True)
    expected = F.linear(x, wq, module.bias) if isinstance(module, nn.Linear) else module._conv_forward(x, wq, module.bias)
    assert torch.equal(module(x), expected)
    compression.remove()
    assert "forward" not in module.__dict__ and list(module._parameters.items()) == params_before
    assert torch.equal(module(x), reference)


@pytest.mark.parametrize("cls", [Conv2dSame, StdConv2d, ScaledStdConv2d], ids=lambda c: c.__name__)
def test_subclass_forward_is_kept(cls: type[nn.Conv2d]) -> None:
    torch.manual_seed(0)
    module = cls(4, 6, 3, stride=2) if cls is Conv2dSame else cls(4, 6, 3, stride=2, padding=1)
    x = _input(module)
    reference = module(x)
    compression = _install(module)
    assert compression.owner.use == MODULE
    # the subclass's own computation on the quantized weight: same padding / standardisation
    stored = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.copy_(fake_quantize_weight(stored, bits=3, scheme="symmetric", per_channel=True))
        compression.remove()
        expected = module(x)
        module.weight.copy_(stored)
    compression.install()
    assert torch.equal(module(x), expected)
    compression.remove()
    assert torch.equal(module(x), reference)


class _TfStyleNet(nn.Module):
    """Same-padding stem, weight-standardised convs, a linear head (a TF-port / NF-net sketch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(1, 8, 3, stride=2)
        self.conv = StdConv2d(8, 8, 3, padding=1)
        self.conv2 = ScaledStdConv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv(torch.relu(self.stem(x))))))
        return self.head(h.mean(dim=(2, 3)))


def test_nearly_lossless_policy_reproduces_subclass_logits(tiny_data: DataSplits) -> None:
    # 15-bit weights, keep 1.0: the compressed forward must stay within rounding of the base
    # model (the old _conv_forward path lost the same padding and the standardisation: 0.33 / 1.99)
    ev = CompressionEvaluator(_TfStyleNet(), tiny_data, device="cpu")
    names = [u.name for u in ev.units]
    assert names == ["stem", "conv", "conv2", "head"]
    x = tiny_data.x_val[:64]
    ev.model.eval()
    with torch.no_grad():
        base = ev.model(x)
    ratio = ev.proxy(Policy.uniform(names, UnitPolicy(w_bits=15))) / float(base.square().mean())
    assert ratio < 1e-6


class _FunctionalAttention(nn.Module):
    """``F.linear(x, self.qkv.weight, bias)`` (EVA style: the Linear's forward never runs) and
    a raw parameter ``proj_weight`` used with ``F.linear``."""

    def __init__(self, d: int = 36) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(3 * d))
        self.proj_weight = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.head = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x.flatten(1), self.qkv.weight, self.q_bias).chunk(3, dim=1)
        h = torch.tanh(F.linear(q * torch.sigmoid(k) + v, self.proj_weight))
        return self.head(h)


def _unit(name: str, shape: tuple[int, int], depth: int) -> Unit:
    return Unit(name=name, kind="linear", weight_shape=shape, params=shape[0] * shape[1], bias_params=0,
                macs=shape[0] * shape[1], out_channels=shape[0], groups=1, block=name, depth=depth)


@pytest.fixture
def functional_ev(tiny_data: DataSplits) -> CompressionEvaluator:
    torch.manual_seed(0)
    units = [_unit("qkv", (108, 36), 0), _unit("proj_weight", (36, 36), 1), _unit("head", (4, 36), 2)]
    return CompressionEvaluator(_FunctionalAttention(), tiny_data, units=units, finetune=FineTuneConfig(steps=3), device="cpu")


def test_functional_weight_uses_are_compressed(functional_ev: CompressionEvaluator) -> None:
    ev = functional_ev
    assert {n: o.use for n, o in ev._owners.items()} == {"qkv": FUNCTIONAL, "proj_weight": FUNCTIONAL, "head": MODULE}
    policy = Policy({"qkv": UnitPolicy(w_bits=4), "proj_weight": UnitPolicy(w_bits=3, keep=0.5)})
    assert ev.proxy(policy) > 0
    x = ev.task.proxy_inputs(8)
    with torch.no_grad():
        got = ev.model(x)
        eff = ev.effective_weights()
        q, k, v = F.linear(x.flatten(1), eff["qkv"], ev.model.q_bias).chunk(3, dim=1)
        want = ev.model.head(torch.tanh(F.linear(q * torch.sigmoid(k) + v, eff["proj_weight"])))
    assert torch.equal(got, want)
    assert (eff["qkv"].unique().numel() <= 2**4 * 108) and int((eff["proj_weight"].abs().sum(1) == 0).sum()) == 18
    result = ev.evaluate(policy)  # fine-tunes through the parametrization
    assert result.steps == 3
    ev.evaluate(Policy())  # removal leaves plain parameters behind
    assert type(ev.model.qkv) is nn.Linear and isinstance(ev.model.qkv._parameters["weight"], nn.Parameter)
    assert list(ev.model._parameters) == ["q_bias", "proj_weight"]


class _MetadataRead(nn.Module):
    """Reads ``self.fc.weight.dtype`` and ``.shape`` outside ``fc``'s forward (as timm XCiT's
    positional encoding reads a conv's dtype) and computes with ``self.mix.weight`` outside."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1).to(self.fc.weight.dtype)
        assert self.fc.weight.shape[1] == h.shape[1]
        return h.new_ones(1) * self.fc(h) @ self.mix.weight.t()


def test_metadata_reads_outside_the_forward_keep_a_unit_module() -> None:
    model = _MetadataRead()
    owners = {n: resolve_weight(model, n) for n in ("fc", "mix")}
    probe_weight_uses(model, owners, torch.randn(2, 4, 3, 3))
    # fc: read by its own forward + dtype/shape reads outside (metadata only) -> module;
    # mix: its forward never runs, the weight is multiplied outside -> functional
    assert {n: o.use for n, o in owners.items()} == {"fc": MODULE, "mix": FUNCTIONAL}
    assert type(model.fc.weight) is nn.Parameter and list(model.fc._parameters) == ["weight", "bias"]


def test_functional_unit_refuses_input_quantization(functional_ev: CompressionEvaluator) -> None:
    with pytest.raises(ModelError, match=r"unit 'qkv': its weight is used functionally .* give this unit a_bits >= 16"):
        functional_ev.evaluate(Policy({"qkv": UnitPolicy(w_bits=8, a_bits=8)}))


class _Unread(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(36, 4)
        self.unused = nn.Linear(36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x.flatten(1))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(36, 36)
        self.b = nn.Linear(36, 36)
        self.b.weight = self.a.weight
        self.head = nn.Linear(36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x.flatten(1))))


def test_refusals(tiny_data: DataSplits) -> None:
    with pytest.raises(ModelError, match=r"unit 'unused': the model's forward never reads its weight"):
        CompressionEvaluator(_Unread(), tiny_data, units=[_unit("used", (4, 36), 0), _unit("unused", (4, 36), 1)])
    with pytest.raises(ModelError, match=r"units 'a' and 'b' share one weight tensor"):
        CompressionEvaluator(_Tied(), tiny_data, units=[_unit("a", (36, 36), 0), _unit("b", (36, 36), 1)])
    normed = nn.Sequential(nn.Flatten(), nn.utils.parametrizations.weight_norm(nn.Linear(36, 4)))
    with pytest.raises(ModelError, match=r"unit '1': its weight is computed by a torch parametrization"):
        CompressionEvaluator(normed, tiny_data, units=[_unit("1", (4, 36), 0)])
    with pytest.raises(ModelError, match=r"unit '0' is a Flatten; only Conv1d, Conv2d, Linear"):
        CompressionEvaluator(nn.Sequential(nn.Flatten(), nn.Linear(36, 4)), tiny_data, units=[_unit("0", (4, 36), 0)])
    with pytest.raises(ModelError, match=r"unit 'nope' names neither a parameter nor a module of Sequential"):
        CompressionEvaluator(nn.Sequential(nn.Flatten(), nn.Linear(36, 4)), tiny_data, units=[_unit("nope", (4, 36), 0)])


@pytest.mark.parametrize("features", [12, 300], ids=["small-fused", "large-function"])
def test_training_and_eval_forwards_agree_and_gradient_passes_straight(features: int) -> None:
    # small weights: w + (Q - w) from the shared cache; large ones (> 65536 elements): the STE function
    torch.manual_seed(0)
    module = nn.Linear(features, features)  # 144 or 90000 weights
    x = torch.randn(5, features)
    compression = _install_linear(module, x)
    assert compression._fused == (features == 12)
    q = fake_quantize_weight(module.weight.detach(), bits=3, scheme="symmetric", per_channel=True)
    out = module(x)  # training forward (gradient recorded)
    out.square().sum().backward()
    with torch.no_grad():
        assert torch.equal(out, F.linear(x, q, module.bias)) and torch.equal(module(x), out)
    expected = (2 * F.linear(x, q, module.bias)).t() @ x  # d/dQ of sum((xQ^T + b)^2), passed to w unchanged
    torch.testing.assert_close(module.weight.grad, expected)
    with torch.no_grad():
        module.weight.mul_(0.5)  # a new version: both paths requantize
    q2 = fake_quantize_weight(module.weight.detach(), bits=3, scheme="symmetric", per_channel=True)
    assert torch.equal(module(x), F.linear(x, q2, module.bias))


def _install_linear(module: nn.Linear, x: torch.Tensor) -> UnitCompression:
    owner = resolve_weight(nn.Sequential(module), "0")
    probe_weight_uses(nn.Sequential(module), {"0": owner}, x)
    return UnitCompression(owner, name="0", weight_quant=W3, act_quant=None).install()


class _Encoder(nn.Module):
    """nn.TransformerEncoderLayer: MultiheadAttention passes in_proj_weight and out_proj.weight to
    F.multi_head_attention_forward, and the fused eval kernel reads linear1/linear2 directly."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.embed(x.reshape(x.shape[0], 6, 6))).mean(1))


def test_discovered_functional_units_of_a_transformer_layer(tiny_data: DataSplits) -> None:
    torch.manual_seed(0)
    ev = CompressionEvaluator(_Encoder(), tiny_data, finetune=FineTuneConfig(steps=2), device="cpu")
    uses = {n: o.use for n, o in ev._owners.items()}
    assert uses == {"embed": MODULE, "enc.self_attn.in_proj_weight": FUNCTIONAL, "enc.self_attn.out_proj": FUNCTIONAL,
                    "enc.linear1": FUNCTIONAL, "enc.linear2": FUNCTIONAL, "head": MODULE}
    names = list(uses)
    ev.model.eval()
    with torch.no_grad():
        base = ev.model(tiny_data.x_val[:64])
    assert ev.proxy(Policy.uniform(names, UnitPolicy(w_bits=15))) / float(base.square().mean()) < 1e-6
    assert ev.proxy(Policy.uniform(names, UnitPolicy(w_bits=3))) > 1e-4  # the 3-bit weights are in force
    assert ev.evaluate(Policy.uniform(names, UnitPolicy(w_bits=4, keep=0.5))).steps == 2
    with pytest.raises(ModelError, match=r"unit 'enc\.[a-z0-9_.]+': its weight is used functionally"):
        ev.evaluate(Policy.uniform(names, UnitPolicy(w_bits=8, a_bits=8)))
    assert ev.compressed_units() == {}  # refused before anything was attached
