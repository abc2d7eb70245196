"""Proposal goals: the sweep, the quality's saturation and the front's largest gap (by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compsearch.search.common import Observation
from compsearch.search.registry import SearchContext
from compsearch.search.rl.goals import SaturationGaps, SweepGoals
from compsearch.search.rl.layout import block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.testing import toy_space


def _objective(constraints: dict[str, float] | None = None) -> StrategyObjective:
    space = toy_space()
    return StrategyObjective(SearchContext(space=space, constraints=constraints or {}), ["maximize", "minimize"], layout=block_layout(space))


def _three(obj: StrategyObjective) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Three actions of the toy space with distinct increasing cost ratios, and those ratios."""
    rng = np.random.default_rng(3)
    acts = np.array([[rng.integers(n) for n in obj.space.action_sizes()] for _ in range(40)])
    ratio = obj.cost.metrics(acts)["size_bits"] / obj.cost.identity["size_bits"]
    idx = np.argsort(ratio)[[5, 20, 35]]
    assert ratio[idx[0]] < ratio[idx[1]] < ratio[idx[2]]
    return [tuple(int(v) for v in acts[i]) for i in idx], ratio[idx]


def _obs(obj: StrategyObjective, number: int, action: tuple[int, ...], acc: float) -> Observation:
    return Observation(number, obj.space.params_from_actions(list(action)), (acc, 0.0), {})


def test_saturation_is_the_fraction_of_finished_trials_tied_with_the_best_quality() -> None:
    obj = _objective()
    (a, b, c), _ = _three(obj)
    assert obj.saturation([]) == 0.0
    history = [_obs(obj, 0, a, 0.9), _obs(obj, 1, b, 0.9), _obs(obj, 2, c, 0.8), _obs(obj, 3, a, 0.7), _obs(obj, 4, b, math.nan)]
    assert obj.saturation(history) == pytest.approx(2 / 4)  # the nan trial is not finished
    assert obj.saturation(history[:2]) == 1.0


def test_gap_goal_aims_at_the_largest_rectangle_between_front_points_by_hand() -> None:
    obj = _objective()
    (a, b, c), (ra, rb, rc) = _three(obj)
    lo, hi = obj.ratio_min, obj.ratio_max
    assert lo < ra and hi == 1.0
    # front a (0.5) -> b (0.9) -> c (0.92); a dominated trial at c's cost (0.6) changes nothing
    history = [_obs(obj, 0, a, 0.5), _obs(obj, 1, b, 0.9), _obs(obj, 2, c, 0.92), _obs(obj, 3, c, 0.6)]
    span, scale = 0.92 - 0.5, math.log(hi / lo)
    areas = [math.log(ra / lo) / scale * 0.0 / span,  # cheap end: a is the worst quality seen
             math.log(rb / ra) / scale * 0.4 / span, math.log(rc / rb) / scale * 0.02 / span]
    assert int(np.argmax(areas)) == 1
    assert obj.gap_goal(history) == pytest.approx(math.sqrt(ra * rb))
    # the cheap end counts once its rectangle is the largest: a worse trial raises its height
    worse = [*history, _obs(obj, 4, c, 0.0)]
    span = 0.92
    cheap = math.log(ra / lo) / scale * 0.5 / span
    mid = math.log(rb / ra) / scale * 0.4 / span
    assert cheap > mid  # toy ratios 0.078 (lowest), 0.138, 0.223: 0.122 against 0.082
    assert obj.gap_goal(worse) == pytest.approx(math.sqrt(lo * ra))
    assert obj.gap_goal([]) is None
    assert obj.gap_goal([_obs(obj, 0, a, 0.5)]) is None  # one point at the worst quality: no gap


def test_gap_goal_skips_trials_that_break_a_constraint() -> None:
    obj = _objective({"min_accuracy": 0.7})
    (a, b, c), (ra, rb, rc) = _three(obj)
    # a breaks the accuracy bound, so the front is b -> c and the largest gap is the cheap end
    history = [_obs(obj, 0, a, 0.5), _obs(obj, 1, b, 0.8), _obs(obj, 2, c, 0.9)]
    lo, scale, span = obj.ratio_min, math.log(obj.ratio_max / obj.ratio_min), 0.4
    cheap, mid = math.log(rb / lo) / scale * 0.3 / span, math.log(rc / rb) / scale * 0.1 / span
    assert cheap > mid
    assert obj.gap_goal(history) == pytest.approx(math.sqrt(lo * rb))


def _share_at(goals: list[float], gap: float | None, obj: StrategyObjective) -> float:
    """Fraction of proposals whose goal is ``gap`` where the sweep's differs."""
    return float(np.mean([g == gap and g != obj.proposal_goal(i) for i, g in enumerate(goals)]))


def test_saturation_gaps_aim_at_the_gap_as_often_as_quality_ties() -> None:
    obj = _objective()
    (a, b, c), (ra, _, _) = _three(obj)
    varied = [_obs(obj, 0, a, 0.5), _obs(obj, 1, b, 0.9), _obs(obj, 2, c, 0.7)]  # saturation 1/3
    chosen = [SaturationGaps().goal(obj, varied, i, 0) for i in range(300)]
    assert all(g in (obj.gap_goal(varied), obj.proposal_goal(i)) for i, g in enumerate(chosen))
    assert 0.25 < _share_at(chosen, obj.gap_goal(varied), obj) < 0.42
    # three of four tied at 0.9: the cheap end (ratio_min to a, height 0.8) is the only gap
    tied = [_obs(obj, 0, a, 0.9), _obs(obj, 1, b, 0.9), _obs(obj, 2, c, 0.9), _obs(obj, 3, c, 0.1)]
    assert obj.saturation(tied) == pytest.approx(0.75)
    assert obj.gap_goal(tied) == pytest.approx(math.sqrt(obj.ratio_min * ra))
    chosen = [SaturationGaps().goal(obj, tied, i, 0) for i in range(300)]
    assert 0.67 < _share_at(chosen, obj.gap_goal(tied), obj) < 0.83
    assert SaturationGaps().goal(obj, tied, 7, 0) == SaturationGaps().goal(obj, tied, 7, 0)  # seeded by (seed, index)
    # all tied with the cheapest at the worst quality: no gap, so the sweep
    flat = [_obs(obj, 0, a, 0.9), _obs(obj, 1, b, 0.9)]
    assert obj.saturation(flat) == 1.0 and obj.gap_goal(flat) is None
    assert [SaturationGaps().goal(obj, flat, i, 0) for i in range(5)] == [obj.proposal_goal(i) for i in range(5)]
    assert [SweepGoals().goal(obj, tied, i, 0) for i in range(5)] == [obj.proposal_goal(i) for i in range(5)]


def test_saturation_gaps_keep_the_sweep_outside_budget_mode() -> None:
    space = toy_space()
    obj = StrategyObjective(SearchContext(space=space, objectives=(("accuracy", "maximize"), ("latency_ms", "minimize"))),
                            ["maximize", "minimize"], layout=block_layout(space))
    assert obj.mode != "budget"
    (a, b, _), _ = _three(obj)
    tied = [Observation(0, space.params_from_actions(list(a)), (0.9, 1.0), {}), Observation(1, space.params_from_actions(list(b)), (0.9, 2.0), {})]
    assert [SaturationGaps().goal(obj, tied, i, 0) for i in range(4)] == [obj.proposal_goal(i) for i in range(4)]
