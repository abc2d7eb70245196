"""Every registered strategy searches depth and per-layer compression together, on the composed
toy space ``depth+joint`` (the toy ResNet's 4 removable blocks and its 5 searched units).

Default suite: one multi-objective study per strategy (the heaviest ablations slow) (complete, inside the space, exact toy
cost of removed blocks). The whole strategy contract on ``depth+joint`` is slow (~3 min on 2 cores).
"""

from __future__ import annotations

from typing import Any

import pytest
from optuna.trial import TrialState

from compsearch.search.registry import list_strategies
from compsearch.testing import StrategyContract, run_toy_study, toy_size_bits, toy_space

ALL = list_strategies()
OPTIONS: dict[str, dict[str, Any]] = {
    "tpe": {"n_startup_trials": 3},
    "gp": {"n_startup_trials": 4},
    "nsga2": {"population_size": 4},
    "nsga3": {"population_size": 4},
}


HEAVY = {"amc", "gp", "n2n", "hirl-nofisher", "hirl-mutations", "hirl-curriculum", "hirl-front", "hirl-sweep"}  # 3-7 s each on 2 cores: slow
DEFAULT = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ALL]


@pytest.mark.parametrize("strategy_name", DEFAULT)
def test_strategy_searches_depth_and_units(strategy_name: str) -> None:
    space = toy_space("depth+joint")
    study = run_toy_study(strategy_name, seed=3, n_trials=6, options=OPTIONS.get(strategy_name), space_name="depth+joint")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    for t in study.trials:
        assert space.contains(t.params)
        policy = space.decode(t.params)
        # the toy objective's size counts a removed block's units as 0 bits (toy_size_bits)
        assert t.values[1] == toy_size_bits(policy, space.all_units)
        assert set(policy.removed) <= {"layer1.0", "layer1.1", "layer2.0", "layer2.1"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy_name", ALL)
class TestEveryStrategyOnDepthJoint(StrategyContract):
    space_name = "depth+joint"

    @classmethod
    def options_for(cls, name: str) -> dict[str, Any]:
        return dict(OPTIONS.get(name, {}))

    @classmethod
    def fresh_process_names(cls, name: str) -> list[str]:
        return ALL
