"""Fake quantization: grids by hand, level counts, equality with torch's ops, STE gradients."""

from __future__ import annotations

import pytest
import torch

from compsearch.errors import ConfigError
from compsearch.evaluators.quant import (
    ActQuantizer,
    WeightQuant,
    act_qparams,
    fake_quantize_weight,
    grid,
    grid_values,
    weight_qparams,
)


def test_grid_ranges() -> None:
    assert grid(4, "symmetric") == (-7, 7)  # narrow range: 15 levels
    assert grid(2, "symmetric") == (-1, 1)
    assert grid(1, "symmetric") == (0, 1)  # binary
    assert grid(3, "asymmetric") == (0, 7)
    with pytest.raises(ConfigError, match="bits=16 cannot be fake-quantized"):
        grid(16, "symmetric")


def test_symmetric_values_by_hand() -> None:
    w = torch.tensor([[-1.0, -0.3, 0.2, 0.7]])
    # 2 bits: qmax = 1, scale = max|w| / 1 = 1 -> round(w) = [-1, 0, 0, 1]
    assert fake_quantize_weight(w, bits=2, scheme="symmetric", per_channel=True).tolist() == [[-1.0, 0.0, 0.0, 1.0]]
    # 3 bits: qmax = 3, scale = 1/3 -> w/s = [-3, -0.9, 0.6, 2.1] -> [-3, -1, 1, 2] / 3
    q = fake_quantize_weight(w, bits=3, scheme="symmetric", per_channel=True)
    torch.testing.assert_close(q, torch.tensor([[-1.0, -1 / 3, 1 / 3, 2 / 3]]))


def test_asymmetric_values_by_hand() -> None:
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    # 2 bits: [lo, hi] = [-1, 2], scale = 3 / 3 = 1, zero_point = round(1 / 1) = 1
    scale, zp, qmin, qmax = weight_qparams(w, bits=2, scheme="asymmetric", per_channel=True)
    assert (scale.item(), zp.item(), qmin, qmax) == (1.0, 1.0, 0, 3)
    # codes round(w / 1) + 1 = [0, 1, 1, 3] (0.5 rounds half to even -> 0) -> values [-1, 0, 0, 2]
    q = fake_quantize_weight(w, bits=2, scheme="asymmetric", per_channel=True)
    assert q.tolist() == [[-1.0, 0.0, 0.0, 2.0]]


def test_binary_levels_are_plus_minus_mean_abs() -> None:
    w = torch.tensor([[-2.0, -1.0, 1.0, 4.0], [0.5, -0.5, 0.5, 0.5]])
    q = fake_quantize_weight(w, bits=1, scheme="symmetric", per_channel=True)
    # channel 0: mean|w| = 2 -> sign(w) * 2; channel 1: mean|w| = 0.5
    assert q.tolist() == [[-2.0, -2.0, 2.0, 2.0], [0.5, -0.5, 0.5, 0.5]]


def test_per_tensor_uses_one_scale() -> None:
    w = torch.tensor([[1.0, -0.5], [0.1, 0.2]])
    # symmetric 2 bits per tensor: scale = 1 -> row 1 rounds to 0 entirely
    q = fake_quantize_weight(w, bits=2, scheme="symmetric", per_channel=False)
    assert q.tolist() == [[1.0, -0.0], [0.0, 0.0]]
    qc = fake_quantize_weight(w, bits=2, scheme="symmetric", per_channel=True)
    # per channel, row 1 has scale 0.2: 0.1 / 0.2 = 0.5 rounds half to even -> 0
    torch.testing.assert_close(qc, torch.tensor([[1.0, 0.0], [0.0, 0.2]]))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_distinct_levels_at_most_two_to_the_bits(bits: int, scheme: str, per_channel: bool) -> None:
    w = torch.randn(6, 16, 3, 3, generator=torch.Generator().manual_seed(bits))
    q = fake_quantize_weight(w, bits=bits, scheme=scheme, per_channel=per_channel)
    for row in q:
        assert row.unique().numel() <= 2**bits
    if per_channel:  # each channel's extremes land on the outermost levels
        assert all(row.unique().numel() >= min(2**bits - 1, 2) for row in q)
    else:
        assert q.unique().numel() <= 2**bits


@pytest.mark.parametrize(
    ("bits", "scheme", "shape"),
    [(4, "symmetric", (5, 7)), (3, "asymmetric", (5, 7)), (8, "asymmetric", (5, 7)), (4, "symmetric", (300, 30, 9))],
    ids=["sym4", "asym3", "asym8", "sym4-large"],  # large: > 2**16 elements take the min/max path
)
def test_weight_grid_equals_torch_fake_quantize(bits: int, scheme: str, shape: tuple[int, ...]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    scale, zp, qmin, qmax = weight_qparams(w, bits=bits, scheme=scheme, per_channel=True)
    ref = torch.fake_quantize_per_channel_affine(w, scale.flatten(), zp.flatten().int(), 0, qmin, qmax)
    scale_t, zp_t, _, _ = weight_qparams(w, bits=bits, scheme=scheme, per_channel=False)
    ref_tensor = torch.fake_quantize_per_tensor_affine(w, scale_t, zp_t.int(), qmin, qmax)
    torch.testing.assert_close(fake_quantize_weight(w, bits=bits, scheme=scheme, per_channel=False), ref_tensor)
    torch.testing.assert_close(fake_quantize_weight(w, bits=bits, scheme=scheme, per_channel=True), ref)


def test_weight_quantization_is_idempotent() -> None:
    w = torch.randn(4, 9, generator=torch.Generator().manual_seed(2))
    q = fake_quantize_weight(w, bits=4, scheme="asymmetric", per_channel=True)
    torch.testing.assert_close(fake_quantize_weight(q, bits=4, scheme="asymmetric", per_channel=True), q)


def test_weight_ste_gradient_is_identity() -> None:
    w = torch.randn(3, 5, requires_grad=True, generator=torch.Generator().manual_seed(3))
    c = torch.arange(15.0).reshape(3, 5)
    (fake_quantize_weight(w, bits=2, scheme="symmetric", per_channel=True) * c).sum().backward()
    assert torch.equal(w.grad, c)


def test_act_qparams_by_hand() -> None:
    # range [-1, 2] at 8 bits: scale = 3 / 255, zero point = round(1 / scale) = 85
    scale, zp = act_qparams(-1.0, 2.0, 8)
    assert scale == pytest.approx(3 / 255) and zp == 85
    assert act_qparams(0.5, 2.0, 8)[1] == 0  # the range is widened to hold 0


def test_activation_quantizer_matches_torch_and_clamps_gradient() -> None:
    q = ActQuantizer(bits=4, mode="frozen")
    q(torch.tensor([-1.0, 2.0]), True)  # observe the range [-1, 2]
    q.freeze()
    scale, zp = q._qparams  # 4 bits: scale = 3 / 15 = 0.2, zero point = 5
    assert scale == pytest.approx(0.2) and zp == 5
    x = torch.tensor([-3.0, -1.0, -0.33, 0.0, 0.49, 1.75, 2.0, 2.5], requires_grad=True)
    y = q(x, True)
    torch.testing.assert_close(y, torch.fake_quantize_per_tensor_affine(x.detach(), scale, zp, 0, 15))
    assert y.tolist() == pytest.approx([-1.0, -1.0, -0.4, 0.0, 0.4, 1.8, 2.0, 2.0])
    y.sum().backward()
    # identity strictly inside (lo, hi) = (-1, 2); zero for the clamped -3 and 2.5 and,
    # as torch.clamp's gradient does, at the bounds themselves
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_the_frozen_input_scale_is_a_float32() -> None:
    q = ActQuantizer(bits=8)
    q(torch.tensor([-1.0, 2.0]), False)  # range [-1, 2]: scale 3 / 255 (not a float32), zero point 85
    q.freeze()
    scale, zp = q.qparams
    as_f32 = torch.tensor(3 / 255, dtype=torch.float32)
    assert scale != 3 / 255 and scale == float(as_f32) and zp == 85  # round(1 / scale) is still 85
    # the forward uses exactly that scale: every output is (integer code) x (the float32 scale)
    y = q(torch.linspace(-1, 2, 101), False)
    assert torch.equal(y, (y / as_f32).round() * as_f32)


def test_activation_ema_moves_only_in_training() -> None:
    q = ActQuantizer(bits=8, mode="ema", momentum=0.5)
    q(torch.tensor([0.0, 1.0]), True)
    q.freeze()
    q(torch.tensor([0.0, 3.0]), False)
    assert q.hi == 1.0
    q(torch.tensor([0.0, 3.0]), True)
    assert q.hi == pytest.approx(0.5 * 1.0 + 0.5 * 3.0)


def test_activation_quantizer_errors() -> None:
    with pytest.raises(ConfigError, match="act_range='median' is unknown"):
        ActQuantizer(bits=8, mode="median")
    with pytest.raises(ConfigError, match="never calibrated"):
        ActQuantizer(bits=8).freeze()


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 15])
def test_step_to_the_grid_is_exact(scheme: str, bits: int) -> None:
    # the training forward uses w + (Q - w): equal to Q bit for bit (Sterbenz: |Q - w| <= one
    # step and Q is 0 or at least one step), on weights with outliers and offsets
    gen = torch.Generator().manual_seed(bits)
    for trial in range(20):
        w = torch.randn((16, 37), generator=gen) * (0.1 + trial) + (trial % 3) * torch.randn(1, generator=gen)
        w[0, 0] = 50.0 * (trial + 1)
        for per_channel in (True, False):
            q = fake_quantize_weight(w, bits=bits, scheme=scheme, per_channel=per_channel)
            assert torch.equal(w + (q - w), q)


def test_fused_grid_values_match_the_per_unit_path() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 1, 3, 3), (32, 16, 3, 3), (10, 64), (300, 300), (8, 5)]  # (300, 300): the large-tensor branch
    weights = [torch.randn(s, generator=gen) for s in shapes]
    quants = [WeightQuant(4, "symmetric", True), WeightQuant(3, "symmetric", False), WeightQuant(8, "symmetric", True),
              WeightQuant(5, "symmetric", True), WeightQuant(2, "symmetric", False)]
    for w, q, got in zip(weights, quants, grid_values(weights, quants), strict=True):
        assert torch.equal(got, fake_quantize_weight(w, bits=q.bits, scheme=q.scheme, per_channel=q.per_channel))
        assert torch.equal(got, q.values(w))
    with pytest.raises(ConfigError, match="fuses only symmetric grids"):
        grid_values(weights[:1], [WeightQuant(4, "asymmetric", True)])


def test_activation_gradient_is_the_clamps() -> None:
    # values: round(clamp(x, lo, hi) / s) * s; gradient: 1 strictly inside (lo, hi), 0 elsewhere
    q = ActQuantizer(bits=2)
    q(torch.tensor([0.0, 3.0]), training=False)
    q.freeze()  # range [0, 3]: scale 1, zero point 0
    x = torch.tensor([-1.0, 0.0, 0.4, 1.5, 2.6, 3.0, 7.0], requires_grad=True)
    y = q(x, training=True)
    assert y.tolist() == [0.0, 0.0, 0.0, 2.0, 3.0, 3.0, 3.0]  # 1.5 -> 2 (half to even)
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    with torch.no_grad():
        assert q(x, training=False).tolist() == y.tolist()
