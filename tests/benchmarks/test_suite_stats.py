"""The benchmark suite's statistics (compsearch.studies.significance), each against a hand computation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import wilcoxon as scipy_wilcoxon

from compsearch.errors import CompsearchError
from compsearch.studies.significance import (
    best_known_front,
    bootstrap_ci,
    paired_comparison,
    rank_table,
    wilcoxon,
)


def test_bootstrap_constant_data_has_zero_width() -> None:
    # Every resample of [0.3, 0.3, 0.3] has mean 0.3.
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert bootstrap_ci([2.0]) == (2.0, 2.0)


def test_bootstrap_two_values_by_hand() -> None:
    # Values {0, 1}, n = 2: a resample's mean is 0 (prob 1/4), 0.5 (1/2) or 1 (1/4).
    # The 2.5% quantile of the means is 0 and the 97.5% quantile is 1.
    low, high = bootstrap_ci([0.0, 1.0], resamples=4000)
    assert (low, high) == (0.0, 1.0)
    # An 40% interval lies inside the middle mass: both ends are 0.5 (quantiles 0.3 and 0.7).
    assert bootstrap_ci([0.0, 1.0], level=0.4, resamples=4000) == (0.5, 0.5)


def test_bootstrap_is_seeded_and_reproducible_in_another_process() -> None:
    values = [0.11, 0.12, 0.10, 0.13, 0.125]
    first = bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) == first
    assert bootstrap_ci(values, seed=4) != first
    code = ("from compsearch.studies.significance import bootstrap_ci;"
            "print(repr(bootstrap_ci([0.11, 0.12, 0.10, 0.13, 0.125], seed=3)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == repr(first)
    # The interval of a mean lies within [min, max] and contains the sample mean here.
    assert 0.10 <= first[0] < np.mean(values) < first[1] <= 0.13


def test_bootstrap_bad_input_names_the_parameter() -> None:
    with pytest.raises(CompsearchError, match="values is empty"):
        bootstrap_ci([])
    with pytest.raises(CompsearchError, match=r"level=1\.5"):
        bootstrap_ci([1.0, 2.0], level=1.5)
    with pytest.raises(CompsearchError, match="resamples=10 must be an integer >= 100"):
        bootstrap_ci([1.0, 2.0], resamples=10)
    with pytest.raises(CompsearchError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_wilcoxon_by_hand_matches_scipy() -> None:
    # d = a - b = [1, -2, 3, 4, 5]; ranks of |d| are 1..5; W+ = 1+3+4+5 = 13, W- = 2.
    # Exact null: 2^5 = 32 equally likely sign patterns; rank sums <= 2 come from {}, {1}, {2}
    # (3 patterns), so P(W <= 2) = 3/32 and the two-sided p = 6/32 = 0.1875.
    a = [1.0, 0.0, 3.0, 4.0, 5.0]
    b = [0.0, 2.0, 0.0, 0.0, 0.0]
    result = wilcoxon(a, b)
    assert result == {"statistic": 2.0, "p_value": pytest.approx(6 / 32), "n": 5}
    ref = scipy_wilcoxon(a, b)
    assert result["statistic"] == ref.statistic and result["p_value"] == pytest.approx(ref.pvalue)
    # All five differences positive: W- = 0, p = 2/32 = 0.0625, the smallest 5 seeds allow.
    assert wilcoxon([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])["p_value"] == pytest.approx(2 / 32)
    assert wilcoxon([1, 2], [1, 2]) == {"statistic": 0.0, "p_value": 1.0, "n": 0}
    with pytest.raises(CompsearchError, match="pair up"):
        wilcoxon([1, 2, 3], [1, 2])


def test_paired_comparison_uses_common_seeds() -> None:
    a = {0: 0.5, 1: 0.6, 2: 0.7, 7: 1.0}
    b = {0: 0.4, 1: 0.4, 2: 0.4, 3: 0.0}
    out = paired_comparison(a, b)
    # Common seeds 0, 1, 2: differences 0.1, 0.2, 0.3 (mean 0.2), all wins.
    assert out["seeds"] == [0, 1, 2]
    assert out["differences"] == pytest.approx([0.1, 0.2, 0.3])
    assert out["mean_difference"] == pytest.approx(0.2)
    assert (out["wins"], out["losses"], out["ties"]) == (3, 0, 0)
    low, high = out["ci"]
    assert 0.1 - 1e-12 <= low <= 0.2 <= high <= 0.3 + 1e-12 and out["ci_above_zero"]
    assert out["wilcoxon"]["p_value"] == pytest.approx(2 / 8)  # 3 positive differences: 2 / 2^3
    assert paired_comparison({0: 1.0}, {1: 1.0})["mean_difference"] is None


def test_best_known_front_union_by_hand() -> None:
    # (accuracy max, size min). Strategy A: (0.9, 10), (0.8, 5); B: (0.95, 12), (0.85, 5), (0.7, 20).
    # Union front: (0.85, 5) dominates (0.8, 5); (0.7, 20) is dominated by everything;
    # (0.9, 10) and (0.95, 12) stay. Sorted by accuracy: (0.85, 5), (0.9, 10), (0.95, 12).
    front = best_known_front([[[0.9, 10], [0.8, 5]], [[0.95, 12], [0.85, 5], [0.7, 20]], []],
                             ["maximize", "minimize"])
    assert front.tolist() == [[0.85, 5.0], [0.9, 10.0], [0.95, 12.0]]
    assert best_known_front([[], []], ["maximize", "minimize"]).shape == (0, 2)


def test_rank_table_by_hand() -> None:
    scores = {
        "p1": {"hirl": 0.3, "tpe": 0.2, "random": 0.2, "sls": 0.1},  # ranks 1, 2.5, 2.5, 4
        "p2": {"hirl": 0.1, "tpe": 0.4, "random": 0.3},              # ranks 3, 1, 2 (sls absent)
    }
    table = rank_table(scores)
    assert table["ranks"]["p1"] == {"hirl": 1.0, "tpe": 2.5, "random": 2.5, "sls": 4.0}
    assert table["ranks"]["p2"] == {"tpe": 1.0, "random": 2.0, "hirl": 3.0}
    # Means: hirl (1 + 3) / 2 = 2, tpe (2.5 + 1) / 2 = 1.75, random (2.5 + 2) / 2 = 2.25, sls 4 (one problem).
    assert table["mean_rank"] == {"hirl": 2.0, "tpe": 1.75, "random": 2.25, "sls": 4.0}
    assert table["problems"] == {"hirl": 2, "tpe": 2, "random": 2, "sls": 1}
    assert table["order"] == ["tpe", "hirl", "random", "sls"]
