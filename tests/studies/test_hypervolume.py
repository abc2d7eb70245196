"""Hypervolume and Pareto fronts against hand computations and Optuna's independent WFG."""

from __future__ import annotations

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from compsearch.errors import ConfigError
from compsearch.studies.hypervolume import (
    hypervolume,
    hypervolume_curve,
    metric_scales,
    pareto_front,
    pareto_indices,
)

DIRS = ["maximize", "minimize"]  # accuracy, size_kb
REF = [0.5, 10.0]  # accuracy floor 0.5, uncompressed size 10 kB
POINTS = [
    [0.9, 8.0],  # A
    [0.8, 4.0],  # B
    [0.6, 2.0],  # C
    [0.7, 6.0],  # D: dominated by B (more accurate and smaller)
    [0.4, 1.0],  # E: below the accuracy floor, adds nothing
]


def test_2d_hand_computed() -> None:
    # Scales: accuracy is a fraction -> 1; size -> |ref| = 10 (gain = fraction of size saved).
    # Gains g = (acc - 0.5, (10 - size) / 10):
    #   A = (0.4, 0.2), B = (0.3, 0.6), C = (0.1, 0.8), D = (0.2, 0.4) (inside B's box), E dropped.
    # Union of boxes [0, g]:
    #   A: 0.4 * 0.2                     = 0.08
    #   B: 0.3 * 0.6 - overlap 0.3 * 0.2 = 0.12
    #   C: 0.1 * 0.8 - overlap 0.1 * 0.6 = 0.02
    #   total                            = 0.22
    scale = metric_scales(["accuracy", "size_kb"], REF)
    assert scale == [1.0, 10.0]
    assert hypervolume(POINTS, DIRS, REF, scale) == pytest.approx(0.22)
    # Dominated and infeasible points do not change it.
    assert hypervolume(POINTS[:3], DIRS, REF, scale) == pytest.approx(0.22)
    # Default scale |ref| divides the accuracy gain by 0.5 as well: 0.22 / 0.5.
    assert hypervolume(POINTS, DIRS, REF) == pytest.approx(0.44)


def test_3d_inclusion_exclusion() -> None:
    # All minimised, reference (4, 4, 4), scale 1: gains P = (3, 2, 1), Q = (1, 3, 2).
    # |P| = 6, |Q| = 6, |P and Q| = min(3,1) * min(2,3) * min(1,2) = 2  ->  6 + 6 - 2 = 10.
    pts = [[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]]
    assert hypervolume(pts, ["minimize"] * 3, [4.0, 4.0, 4.0], [1.0, 1.0, 1.0]) == pytest.approx(10.0)


@pytest.mark.parametrize("m", [3, 4])
def test_nd_matches_optuna(m: int) -> None:
    rng = np.random.default_rng(m)
    pts = rng.uniform(0.0, 1.0, size=(25, m))
    ours = hypervolume(pts, ["minimize"] * m, [1.1] * m, [1.0] * m)
    assert ours == pytest.approx(compute_hypervolume(pts, np.full(m, 1.1)), rel=1e-9)


def test_pareto_front_and_indices() -> None:
    assert pareto_indices(POINTS, DIRS) == [0, 1, 2, 4]
    front = pareto_front(POINTS, DIRS)
    np.testing.assert_allclose(front, [[0.4, 1.0], [0.6, 2.0], [0.8, 4.0], [0.9, 8.0]])


def test_curve_counts_failed_evaluations() -> None:
    # B first (0.3 * 0.6 = 0.18), then a failure, then A (+0.04 over B's box): 0.22 - 0.02 = 0.20.
    curve = hypervolume_curve([POINTS[1], None, POINTS[0]], DIRS, REF, [1.0, 10.0])
    assert curve == pytest.approx([0.18, 0.18, 0.20])


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ConfigError, match="directions"):
        hypervolume(POINTS, ["up", "minimize"], REF)
    with pytest.raises(ConfigError, match="2 direction"):
        hypervolume([[1.0, 2.0, 3.0]], DIRS, REF)
    assert hypervolume([], DIRS, REF) == 0.0
