"""Equivalent policies: every canonical-form rule by hand, checked against the cost model and
the evaluator, and the spaces' canonical keys and representative params."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from compsearch.evaluators.cost import CostModel
from compsearch.evaluators.masks import keep_count
from compsearch.spaces import IDENTITY, Policy, UnitPolicy, get_space
from compsearch.spaces.policy import canonical_bits, kept_count
from compsearch.testing import toy_model, toy_units

UNITS = {u.name: u for u in toy_units()}
CONV1 = UNITS["layer1.0.conv1"]  # 8 output channels x 36 = 288 weights
HEAD = UNITS["head"]  # 3 output channels x 16 = 48 weights


class _Shape:
    """A unit shape for the rules that need one: ``out`` channels, ``params`` weights."""

    def __init__(self, name: str, out: int, params: int) -> None:
        self.name, self.out_channels, self.params = name, out, params


FOUR = _Shape("four", 4, 36)  # a 4-channel unit of 36 weights (9 per channel)
ONE = _Shape("one", 1, 10)  # a single-output unit


def test_rule_1_weight_bits_16_to_31_are_one_class_32_is_another() -> None:
    assert UnitPolicy(w_bits=24).canonical() == UnitPolicy(w_bits=16)
    assert UnitPolicy(w_bits=31).canonical() == UnitPolicy(w_bits=16).canonical()
    assert UnitPolicy(w_bits=32).canonical() == IDENTITY  # 32 bits cost 32, not 16
    assert UnitPolicy(w_bits=16).canonical() != UnitPolicy(w_bits=32).canonical()
    assert [canonical_bits(b) for b in (1, 8, 15, 16, 20, 31, 32)] == [1, 8, 15, 16, 16, 16, 32]


def test_rule_2_input_bits_16_to_31_are_one_class_16_and_32_are_not_equivalent() -> None:
    assert UnitPolicy(a_bits=20).canonical() == UnitPolicy(a_bits=16)
    assert UnitPolicy(a_bits=16).canonical() != UnitPolicy(a_bits=32).canonical()  # bops count 16 vs 32
    assert UnitPolicy(a_bits=8).canonical().a_bits == 8


def test_rule_3_float_weights_make_scheme_and_granularity_irrelevant() -> None:
    odd = UnitPolicy(w_bits=32, scheme="asymmetric", granularity="tensor")
    assert odd.canonical() == IDENTITY
    assert UnitPolicy(w_bits=16, scheme="asymmetric", granularity="tensor").canonical() == UnitPolicy(w_bits=16)
    quantized = UnitPolicy(w_bits=4, scheme="asymmetric", granularity="tensor")
    assert quantized.canonical() == quantized  # a 4-bit grid keeps both


def test_rule_4_keep_one_makes_structure_irrelevant() -> None:
    assert UnitPolicy(w_bits=4, structure="unstructured").canonical() == UnitPolicy(w_bits=4)
    pruned = UnitPolicy(keep=0.5, structure="unstructured")
    assert pruned.canonical() == pruned  # pruned: structure matters


def test_rule_5_identity_units_leave_the_canonical_policy() -> None:
    p = Policy({"a": UnitPolicy(w_bits=32, structure="unstructured", scheme="asymmetric"), "b": UnitPolicy(w_bits=4)})
    assert p.canonical() == Policy({"b": UnitPolicy(w_bits=4)})
    assert Policy({"a": IDENTITY}).canonical() == Policy()


def test_rule_6_keeps_rounding_to_one_count_are_one_class() -> None:
    # 4 channels: keep_count = floor(4 keep + 0.5): 0.25 -> 1, 0.375 -> 2, 0.5 -> 2, 0.625 -> 3, 0.75 -> 3
    assert [kept_count(k, 4) for k in (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)] == [1, 2, 2, 3, 3, 4]
    assert UnitPolicy(keep=0.375).canonical(FOUR) == UnitPolicy(keep=0.5)
    assert UnitPolicy(keep=0.625).canonical(FOUR) == UnitPolicy(keep=0.75)
    assert UnitPolicy(keep=0.25).canonical(FOUR) == UnitPolicy(keep=0.25)
    # unstructured over 36 weights: 0.51 -> floor(18.86) = 18 -> 18/36 = 0.5
    assert UnitPolicy(keep=0.51, structure="unstructured").canonical(FOUR) == UnitPolicy(keep=0.5, structure="unstructured")
    # the same keep under the two structures stays apart: 2 of 4 channels vs 18 of 36 weights
    assert UnitPolicy(keep=0.5).canonical(FOUR) != UnitPolicy(keep=0.5, structure="unstructured").canonical(FOUR)


def test_rule_7_a_keep_that_keeps_everything_is_keep_one() -> None:
    # 0.875 of 4 channels: floor(3.5 + 0.5) = 4 = all of them
    assert UnitPolicy(w_bits=4, keep=0.875).canonical(FOUR) == UnitPolicy(w_bits=4)
    assert UnitPolicy(keep=0.875, structure="unstructured").canonical(FOUR).keep == pytest.approx(32 / 36)
    assert Policy({"four": UnitPolicy(keep=0.875)}).canonical({"four": FOUR}) == Policy()


def test_rule_8_one_output_channel_makes_granularity_irrelevant() -> None:
    assert UnitPolicy(w_bits=4, granularity="tensor").canonical(ONE) == UnitPolicy(w_bits=4)
    assert UnitPolicy(w_bits=4, granularity="tensor").canonical(FOUR).granularity == "tensor"


def test_kept_count_is_the_masks_rounding() -> None:
    for n in (1, 3, 4, 7, 36, 288):
        for keep in (0.01, 0.1, 0.125, 0.25, 1 / 3, 0.375, 0.5, 0.51, 0.625, 0.75, 0.875, 0.99, 1.0):
            assert kept_count(keep, n) == keep_count(keep, n)


def _variants() -> list[tuple[UnitPolicy, UnitPolicy]]:
    """(policy, an equivalent one) for every rule, on CONV1 (8 channels, 288 weights) or HEAD."""
    return [
        (UnitPolicy(w_bits=24, keep=0.5), UnitPolicy(w_bits=16, keep=0.5)),  # 1
        (UnitPolicy(w_bits=4, a_bits=20), UnitPolicy(w_bits=4, a_bits=16)),  # 2
        (UnitPolicy(w_bits=32, scheme="asymmetric", granularity="tensor", keep=0.5), UnitPolicy(keep=0.5)),  # 3
        (UnitPolicy(w_bits=4, structure="unstructured"), UnitPolicy(w_bits=4)),  # 4
        (UnitPolicy(w_bits=4, keep=0.3), UnitPolicy(w_bits=4, keep=0.25)),  # 6: floor(2.4 + .5) = 2 = floor(2 + .5)
        (UnitPolicy(w_bits=4, keep=0.95), UnitPolicy(w_bits=4)),  # 7: floor(7.6 + .5) = 8 channels
    ]


def test_equivalent_policies_cost_the_same() -> None:
    cost = CostModel(units=list(UNITS.values()), total_params=sum(u.params for u in UNITS.values()) + 100)
    for a, b in _variants():
        pa, pb = Policy({CONV1.name: a}), Policy({CONV1.name: b})
        assert pa != pb and pa.equivalent(pb, UNITS)
        assert cost(pa) == cost(pb)


def test_equivalent_policies_evaluate_to_the_same_metrics() -> None:
    """The real evaluator, 3 fine-tune steps: each pair gives identical accuracy and loss."""
    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.evaluators.types import DataSplits, FineTuneConfig

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 1, 4, 4, generator=gen), torch.arange(90) % 3
    data = DataSplits(x_train=x[:60], y_train=y[:60], x_val=x[60:75], y_val=y[60:75], x_test=x[75:], y_test=y[75:],
                      num_classes=3, name="toy")
    ev = CompressionEvaluator(toy_model(), data, finetune=FineTuneConfig(steps=3, batch_size=16), device="cpu")
    for a, b in _variants():
        ra, rb = (ev.evaluate(Policy({CONV1.name: p})) for p in (a, b))
        assert (ra.accuracy, ra.loss) == (rb.accuracy, rb.loss)


def _all_params(space: Any) -> list[dict[str, Any]]:
    dims = space.dimensions()
    return [dict(zip((d.name for d in dims), combo, strict=True)) for combo in itertools.product(*(d.choices for d in dims))]


def test_space_canonical_keys_and_one_representative_per_class_exhaustively() -> None:
    """Every params of a uniform space (4 x 3 x 4 x 2 x 2 x 2 = 384 points) over the toy units'
    searched convs (8, 8 channels; 288, 576 weights) and fc (16 channels, 2048 weights):
    equivalent params share a canonical key and one representative, itself in the class."""
    space = get_space("uniform", toy_units(), w_bits=[4, 16, 24, 32], a_bits=[8, 16, 32], keep=[0.5, 0.52, 0.97, 1.0])
    everything = _all_params(space)
    assert len(everything) == 384
    classes: dict[str, set[tuple[tuple[str, Any], ...]]] = {}
    for params in everything:
        rep = space.canonical_params(params)
        assert space.canonical_key(rep) == space.canonical_key(params)
        classes.setdefault(space.canonical_key(params), set()).add(tuple(sorted(rep.items())))
    assert all(len(reps) == 1 for reps in classes.values())
    # By hand. keep x structure: channels kept floor(8k + .5) / floor(16k + .5): 0.5 -> 4/8, 0.52 -> 4/8
    # (one class), 0.97 -> 8/16 = everything (the class of 1.0); unstructured 0.5, 0.52, 0.97 keep
    # 144, 150, 279 of 288 (three classes), 1.0 unstructured = 1.0 channel: 2 + 3 = 5 classes.
    # w_bits: 4 (x 2 schemes x 2 granularities), {16, 24}, 32 -> 4 + 1 + 1 = 6; a_bits 8, 16, 32 -> 3.
    assert len(classes) == 5 * 6 * 3


def test_joint_space_representative_of_a_hand_case() -> None:
    space = get_space("joint", toy_units(), w_bits=[4, 32], a_bits=[32], keep=[0.5, 1.0])
    params = {d.name: d.choices[-1] for d in space.dimensions()}  # w 32, keep 1.0, 'asymmetric', 'channel', 'unstructured'
    rep = space.canonical_params(params)
    assert {k.split(".")[-1]: v for k, v in rep.items()} == {"w_bits": 32, "keep": 1.0, "scheme": "symmetric",
                                                              "granularity": "tensor", "structure": "channel"}
    assert space.canonical(space.decode(params)) == Policy()
