"""Masks: exact keep counts (rounding by hand), criteria by hand, deterministic ties, registry."""

from __future__ import annotations

import pytest
import torch

from compsearch.errors import ConfigError, DuplicateNameError, UnknownNameError
from compsearch.evaluators.masks import (
    CRITERIA,
    GradientStats,
    compute_mask,
    keep_count,
    list_criteria,
    register_criterion,
    top_k_mask,
)


@pytest.mark.parametrize(
    ("keep", "n", "expected"),
    [(0.5, 5, 3), (0.5, 4, 2), (0.25, 6, 2), (0.3, 10, 3), (0.35, 10, 4), (0.01, 7, 1), (1.0, 9, 9), (0.375, 8, 3)],
)
def test_keep_count_rounds_half_up_and_keeps_one(keep: float, n: int, expected: int) -> None:
    # floor(keep * n + 0.5): 2.5 -> 3, 1.5 -> 2, 3.5 -> 4, 0.07 -> max(1, 0) = 1
    assert keep_count(keep, n) == expected


def test_structured_mask_keeps_channels_with_largest_l1() -> None:
    # channel L1 norms: 4, 1, 9, 2, 5 -> keep=0.5 of 5 keeps 3: channels 2, 4, 0
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5], [-4.0, 5.0], [2.0, 0.0], [2.5, -2.5]])
    mask = compute_mask(w, keep=0.5, structure="channel", criterion="l1")
    assert mask.shape == (5, 1)
    assert mask.flatten().tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_l2_criterion_can_differ_from_l1() -> None:
    # L1: [4, 3] keeps channel 0; squared L2: [8, 9] keeps channel 1
    w = torch.tensor([[2.0, 2.0], [3.0, 0.0]])
    assert compute_mask(w, keep=0.5, structure="channel", criterion="l1").flatten().tolist() == [1.0, 0.0]
    assert compute_mask(w, keep=0.5, structure="channel", criterion="l2").flatten().tolist() == [0.0, 1.0]


def test_conv_structured_mask_broadcasts_over_weight() -> None:
    w = torch.randn(6, 1, 3, 3, generator=torch.Generator().manual_seed(0))  # depthwise weight
    mask = compute_mask(w, keep=0.5, structure="channel", criterion="l1")
    assert mask.shape == (6, 1, 1, 1)
    assert int(mask.sum()) == 3
    assert int((w * mask).flatten(1).any(dim=1).sum()) == 3


def test_unstructured_mask_exact_count() -> None:
    w = torch.arange(1.0, 11.0).reshape(2, 5)  # |w| = 1..10
    mask = compute_mask(w, keep=0.3, structure="unstructured", criterion="l1")  # floor(3.5) = 3
    assert mask.shape == (2, 5)
    assert mask.flatten().tolist() == [0.0] * 7 + [1.0] * 3


def test_ties_broken_by_lower_index() -> None:
    assert top_k_mask(torch.ones(6), 2).tolist() == [True, True, False, False, False, False]
    # 5 > ties at 3 (indices 1, 2, 4) -> k=3 keeps index 0 and the two lowest tied indices
    assert top_k_mask(torch.tensor([5.0, 3.0, 3.0, 1.0, 3.0]), 3).tolist() == [True, True, True, False, False]
    w = torch.ones(4, 3)
    assert compute_mask(w, keep=0.5, structure="channel").flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


def test_taylor_and_fisher_by_hand() -> None:
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    grads = GradientStats(mean=torch.tensor([[4.0, 1.0], [-0.1, 2.0]]), sq_mean=torch.tensor([[1.0, 1.0], [4.0, 0.0]]))
    taylor = CRITERIA.get("taylor").score(w, grads)  # |w g| = [[4, 2], [0.3, 1]]
    torch.testing.assert_close(taylor, torch.tensor([[4.0, 2.0], [0.3, 1.0]]))
    fisher = CRITERIA.get("fisher").score(w, grads)  # 0.5 F w^2 = [[0.5, 2], [18, 0]]
    torch.testing.assert_close(fisher, torch.tensor([[0.5, 2.0], [18.0, 0.0]]))
    # channel sums: taylor [6, 1.3] keeps row 0; fisher [2.5, 18] keeps row 1
    assert compute_mask(w, keep=0.5, structure="channel", criterion="taylor", grads=grads).flatten().tolist() == [1.0, 0.0]
    assert compute_mask(w, keep=0.5, structure="channel", criterion="fisher", grads=grads).flatten().tolist() == [0.0, 1.0]


def test_keep_one_gives_no_mask() -> None:
    assert compute_mask(torch.ones(3, 3), keep=1.0, structure="unstructured") is None


def test_registry_is_loud() -> None:
    assert {"l1", "l2", "taylor", "fisher", "lrp", "gates"} <= set(list_criteria())
    with pytest.raises(UnknownNameError, match=r"unknown criterion 'magnitude'; registered: \[.*'fisher', .*'l1'"):
        compute_mask(torch.ones(2, 2), keep=0.5, structure="channel", criterion="magnitude")
    with pytest.raises(DuplicateNameError, match="criterion 'l1' is already registered"):
        register_criterion("l1")(lambda w, g: w)


def test_third_party_criterion() -> None:
    @register_criterion("test_reverse_l1")
    def reverse(weight: torch.Tensor, grads: GradientStats | None) -> torch.Tensor:
        return -weight.abs()

    try:
        w = torch.tensor([[1.0], [5.0], [3.0]])
        assert compute_mask(w, keep=0.34, structure="channel", criterion="test_reverse_l1").flatten().tolist() == [1.0, 0.0, 0.0]
    finally:
        CRITERIA.unregister("test_reverse_l1")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="criterion 'taylor' needs gradient statistics"):
        compute_mask(torch.ones(2, 2), keep=0.5, structure="channel", criterion="taylor")
    with pytest.raises(ConfigError, match="structure='rows' is unknown"):
        compute_mask(torch.ones(2, 2), keep=0.5, structure="rows")
    with pytest.raises(ConfigError, match=r"keep=1.5 must be in \(0, 1\]"):
        keep_count(1.5, 4)


def test_optional_builtins_register_on_first_use() -> None:
    """``lrp``/``gates`` and the ``policy`` task are listed and found without importing their
    modules first (a fresh interpreter: nothing imported them before)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from compsearch.evaluators.masks import get_criterion, list_criteria\n"
        "from compsearch.evaluators.tasks import get_task, list_tasks\n"
        "mods = ('compsearch.evaluators.lrp', 'compsearch.evaluators.gates', 'compsearch.evaluators.policy_task')\n"
        "assert not any(m in sys.modules for m in mods)\n"
        "assert {'lrp', 'gates'} <= set(list_criteria()) and 'policy' in list_tasks()\n"
        "assert not any(m in sys.modules for m in mods)\n"
        "assert get_criterion('lrp').model_level and get_criterion('gates').model_level\n"
        "assert get_task('policy').quality == 'return'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
