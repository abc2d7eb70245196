"""Packed weights: exact round trips at every bit width, honest sizes, loadable with weights_only=True."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError, DataError
from compsearch.evaluators.cost import CostModel
from compsearch.evaluators.packing import (
    load_packed,
    pack_bits,
    pack_model,
    payload_bytes,
    save_packed,
    unpack_bits,
    unpack_model,
)
from compsearch.evaluators.unit_quant import (
    UnitQuant,
    attach_input_quant,
    codes,
    dequantize,
    effective_model,
    observe_act_ranges,
    quantize_units,
    restrict,
)
from compsearch.spaces import Policy, UnitPolicy, discover_units


def test_bits_pack_lsb_first_by_hand() -> None:
    # values 1, 0, 3 at 2 bits: stream bits 1,0 | 0,0 | 1,1 -> byte 0b00110001 = 49
    assert pack_bits(torch.tensor([1, 0, 3]), 2).tolist() == [49]
    # 3 values at 3 bits = 9 bits -> 2 bytes: 5 = 101, 7 = 111, 1 = 100 (LSB first) -> 1,0,1,1,1,1,1,0 | 0 -> 125, 0
    assert pack_bits(torch.tensor([5, 7, 1]), 3).tolist() == [125, 0]
    assert unpack_bits(torch.tensor([125, 0], dtype=torch.uint8), 3, 3).tolist() == [5, 7, 1]


@pytest.mark.parametrize("bits", range(1, 33))
def test_bits_round_trip_at_every_width(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2**bits, (1001,), generator=gen, dtype=torch.int64)
    v[:2] = torch.tensor([0, 2**bits - 1])  # both ends of the range
    data = pack_bits(v, bits)
    assert data.dtype == torch.uint8 and data.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_bits(data, bits, 1001), v)


def test_values_off_the_width_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"do not fit 3 unsigned bits"):
        pack_bits(torch.tensor([8]), 3)
    with pytest.raises(ConfigError, match=r"bits=0 cannot be packed; allowed: 1..32"):
        pack_bits(torch.tensor([0]), 0)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", range(1, 16))
def test_quantized_weights_round_trip_exactly(bits: int, scheme: str, granularity: str) -> None:
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(24, 12))
    up = UnitPolicy(w_bits=bits, scheme=scheme, granularity=granularity, keep=0.5, structure="unstructured")
    uq = quantize_units(model, Policy({"0": up}))["0"]
    c = codes(uq)
    assert int(c.min()) >= 0 and int(c.max()) <= uq.qmax - uq.qmin
    assert torch.equal(dequantize(c, uq).masked_fill(~uq.mask, 0), uq.weight)  # bit-exact grid values
    back = unpack_model(nn.Sequential(nn.Linear(24, 12)), pack_model(model, {"0": uq}))["0"]
    assert torch.equal(back.weight, uq.weight) and torch.equal(back.mask, uq.mask)
    assert torch.equal(codes(back)[back.mask], c[uq.mask])


class _Toy(nn.Module):
    """conv3x3(1->4, no padding) - BN - ReLU - flatten (4 x 2 x 2 = 16) - linear(16->3), on 1 x 4 x 4 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _toy() -> tuple[_Toy, torch.Tensor]:
    torch.manual_seed(0)
    model = _Toy().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 1.5)
    return model, torch.randn(16, 1, 4, 4)


def test_a_toy_model_packs_to_the_bytes_computed_by_hand(tmp_path) -> None:
    model, x = _toy()
    policy = Policy({
        "conv": UnitPolicy(w_bits=3, a_bits=8, scheme="symmetric", granularity="channel"),
        "fc": UnitPolicy(w_bits=5, scheme="asymmetric", granularity="tensor", keep=0.5, structure="unstructured"),
    })
    units = quantize_units(model, policy, calib=[x])
    eff = effective_model(model, units)
    lo, hi = observe_act_ranges(eff, ["conv"], [x])["conv"]  # the conv's input is the raw x
    assert (lo, hi) == (float(x.min()), float(x.max()))
    # asymmetric 8 bits over [lo, hi]: scale = (hi - lo) / 255, zero point = round(-lo / scale)
    assert units["conv"].act_scale == pytest.approx((hi - lo) / 255) and units["conv"].act_zero_point == round(-lo / ((hi - lo) / 255))
    packed = pack_model(eff, units)
    sizes = payload_bytes(packed)
    # conv: 36 weights x 3 bits = 108 bits -> 14 bytes; 4 fp32 scales = 16; input scale + zero point = 8
    # fc: 48 weights keep 0.5 -> 24 x 5 bits = 120 bits -> 15 bytes; mask min(bitmap 48 bits = 6 bytes,
    #     index 24 x 6 bits = 18 bytes) -> 6; scale + zero point = 8
    # other: conv bias 4 + folded BN 2 x 4 + fc bias 3 = 15 floats = 60 bytes (BN running stats folded away)
    assert sizes == {"weights": 14 + 15, "qparams": 16 + 8, "masks": 6, "act": 8, "params": 60, "buffers": 0, "total": 127}
    # the cost model: conv 108 + 4 x 32 + 64 = 300; fc 120 + 64 + min(48, 144) = 232; 15 x 32 = 480
    units_ = discover_units(model, x)
    size_bits = CostModel(units=units_, total_params=sum(p.numel() for p in model.parameters()))(policy)["size_bits"]
    assert size_bits == 300 + 232 + 480 == 1012
    assert sizes["total"] <= 1.05 * size_bits / 8  # 127 bytes against 126.5 (segments round up to bytes)
    nbytes = save_packed(packed, tmp_path / "toy.pt")
    assert nbytes - sizes["total"] < 4096  # the header: torch.save's zip container and the entry table
    # the file loads with weights_only=True into a fresh model that computes what the compressed one does
    fresh = _Toy()
    loaded = unpack_model(fresh, load_packed(tmp_path / "toy.pt"))
    assert loaded["conv"].act_scale == units["conv"].act_scale and loaded["conv"].act_zero_point == units["conv"].act_zero_point
    for name in ("conv", "fc"):
        assert torch.equal(loaded[name].weight, units[name].weight)
    attach_input_quant(fresh.eval(), loaded)
    attach_input_quant(eff, units)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), eff(x), atol=1e-5, rtol=0)  # BatchNorm folding: float rounding only
    assert fresh.bn.eps == 0.0 and torch.equal(fresh.bn.running_var, torch.ones(4))


def test_float_units_take_half_precision_from_16_bits_and_masked_rows_are_left_out() -> None:
    model, x = _toy()
    policy = Policy({"conv": UnitPolicy(w_bits=16, keep=0.5, structure="channel"), "fc": UnitPolicy(w_bits=32, keep=0.5)})
    units = quantize_units(model, policy)
    packed = pack_model(effective_model(model, units), units)
    conv, fc = packed["entries"]["conv.weight"], packed["entries"]["fc.weight"]
    # conv: 2 of 4 rows kept -> 18 fp16 values = 36 bytes, plus a 4-bit row bitmap = 1 byte
    assert conv["kind"] == "float" and conv["dtype"] == "float16" and conv["values"][1] == 36 and conv["rows"][1] == 1
    # fc: keep 0.5 of 3 rows -> floor(1.5 + 0.5) = 2 rows x 16 inputs x 4 bytes = 128
    assert fc["dtype"] == "float32" and fc["values"][1] == 2 * 16 * 4 and fc["rows"][1] == 1
    back = unpack_model(_Toy(), packed)
    assert torch.equal(back["conv"].weight, units["conv"].weight.half().float())
    assert torch.equal(back["fc"].weight, units["fc"].weight) and back["conv"].mask.tolist() == units["conv"].mask.tolist()


def test_a_physically_pruned_model_packs_smaller_than_the_cost_model_says() -> None:
    from compsearch.evaluators.models import build_model
    from compsearch.evaluators.speedup import apply_plan, physically_prune

    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(8, 1, 8, 8)
    units_ = discover_units(model, x)
    policy = Policy({u.name: UnitPolicy(w_bits=4, keep=0.5) for u in units_ if not u.is_head and not u.is_first})
    units = quantize_units(model, policy)
    result = physically_prune(effective_model(model, units), policy, units_, x)
    pruned_units = restrict(units, result.plan)
    packed = pack_model(result.model, pruned_units)
    size_bits = CostModel(units=units_, total_params=sum(p.numel() for p in model.parameters()))(policy)["size_bits"]
    # the consumers' input columns leave too (the cost model keeps them): features.5 and classifier.1 take
    # half their inputs, so the payload is well below size_bits / 8
    assert payload_bytes(packed)["total"] < 0.8 * size_bits / 8
    rebuilt = apply_plan(build_model("digits_cnn", num_classes=10, in_chans=1), result.plan)
    unpack_model(rebuilt, packed)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), result.model(x), atol=1e-5, rtol=0)


def test_mismatched_shapes_and_foreign_files_are_refused(tmp_path) -> None:
    model, _ = _toy()
    with pytest.raises(ConfigError, match=r"unit 'conv': weight shape \(2, 1, 3, 3\) does not match the model's \(4, 1, 3, 3\)"):
        pack_model(model, {"conv": UnitQuant(weight=torch.zeros(2, 1, 3, 3))})
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a compsearch packed-weights dict"):
        load_packed(tmp_path / "other.pt")
    packed = pack_model(model, {})
    with pytest.raises(DataError, match="version=2 is not supported"):
        unpack_model(_Toy(), {**packed, "version": 2})
