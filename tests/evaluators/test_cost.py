"""Cost metrics of a two-layer toy model, computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError, PolicyError
from compsearch.evaluators.cost import CostModel, kept_weights, stored_bits, unit_cost
from compsearch.spaces import Policy, UnitPolicy, discover_units


@pytest.fixture
def toy() -> CostModel:
    # Linear(4 -> 3): weight 3x4 = 12, bias 3, 12 MACs; Linear(3 -> 2): weight 2x3 = 6, bias 2, 6 MACs
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    units = discover_units(model, torch.zeros(1, 4))
    assert [(u.name, u.params, u.macs) for u in units] == [("0", 12, 12), ("2", 6, 6)]
    return CostModel(units=units, total_params=23)


POLICY = Policy({
    # 2 of 3 channels kept (floor(2/3 * 3 + 0.5) = 2) -> 8 weights x 4 bits = 32
    # + 2 per-channel scales (kept channels only) x 32 = 64, symmetric: no zero point
    # + 8-bit input: scale + zero point = 64                          -> 160 bits
    "0": UnitPolicy(w_bits=4, a_bits=8, keep=2 / 3, scheme="symmetric", granularity="channel", structure="channel"),
    # floor(0.5 * 6 + 0.5) = 3 weights x 2 bits = 6
    # + one tensor scale + one zero point = 64
    # + mask min(bitmap 6, index 3 x ceil(log2 6) = 9) = 6; a_bits 32: nothing  -> 76 bits
    "2": UnitPolicy(w_bits=2, a_bits=32, keep=0.5, scheme="asymmetric", granularity="tensor", structure="unstructured"),
})


def test_size_bits_by_hand(toy: CostModel) -> None:
    cost = toy(POLICY)
    # 160 + 76 + biases (3 + 2) x 32 = 160 + 76 + 160 = 396
    assert cost["size_bits"] == 396
    assert cost["size_kb"] == pytest.approx(396 / 8192)
    assert cost["compression_ratio"] == pytest.approx(23 * 32 / 396)


def test_bops_and_sparsity_by_hand(toy: CostModel) -> None:
    cost = toy(POLICY)
    # 12 MACs x 8/12 kept x 4 x 8 = 256; 6 MACs x 3/6 kept x 2 x 32 = 192
    assert cost["bops"] == 448
    assert cost["sparsity"] == pytest.approx(1 - (8 + 3) / 18)


def test_identity_and_missing_units(toy: CostModel) -> None:
    identity = toy(Policy())
    assert identity["size_bits"] == 23 * 32
    assert identity["compression_ratio"] == 1.0
    assert identity["bops"] == (12 + 6) * 32 * 32
    assert identity["sparsity"] == 0.0
    only_first = toy(Policy({"0": POLICY["0"]}))  # unit "2" stays 32-bit: 6 x 32 = 192
    assert only_first["size_bits"] == 160 + 192 + 160


def test_half_precision_and_index_coding(toy: CostModel) -> None:
    # 16-bit weights count 16 bits, no scales; keep 1/6 unstructured -> 1 weight,
    # mask min(bitmap 6, 1 x 3 index bits) = 3
    up = UnitPolicy(w_bits=16, keep=1 / 6, structure="unstructured")
    assert unit_cost(toy.units["2"], up).bits == 1 * 16 + 3
    assert stored_bits(24) == 16 and stored_bits(32) == 32 and stored_bits(5) == 5


def test_unstructured_per_channel_scales_count_all_channels(toy: CostModel) -> None:
    up = UnitPolicy(w_bits=3, keep=0.5, granularity="channel", structure="unstructured")
    # 6 kept x 3 bits + 3 channels x 32 (symmetric) + mask min(12, 6 x 4) = 18 + 96 + 12
    assert unit_cost(toy.units["0"], up).bits == 126
    assert kept_weights(toy.units["0"], up) == 6


def test_policy_naming_missing_unit(toy: CostModel) -> None:
    with pytest.raises(PolicyError, match=r"policy names unit\(s\) \['fc9'\] that the model does not have"):
        toy(Policy({"fc9": UnitPolicy(w_bits=4)}))


def test_bad_total_params() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    units = discover_units(model, torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="total_params=5 is smaller than the unit weights"):
        CostModel(units=units, total_params=5)
