"""Built-in baseline strategies: the strategy contract for every registered name, plus
checks with hand-computable numbers for the heuristic baselines."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from compsearch.search.heuristics import GreedySensitivitySampler, neighbour_order, sweep_budget
from compsearch.search.registry import get_strategy, list_strategies
from compsearch.spaces import Dimension, Policy, UnitPolicy
from compsearch.testing import (
    StrategyContract,
    run_toy_study,
    toy_objective,
    toy_size_bits,
    toy_space,
    toy_units,
)

ALL = list_strategies()
# Small start-up / population so that the 6-trial contract studies reach the model-based and
# evolutionary code paths, not only their random start-up. botorch-optuna keeps its default
# start-up here (~5 s per model-based proposal on 2 cores); its model path is the slow test below.
OPTIONS: dict[str, dict[str, Any]] = {
    "tpe": {"n_startup_trials": 3},
    "gp": {"n_startup_trials": 4},
    "nsga2": {"population_size": 4},
    "nsga3": {"population_size": 4},
}
SEARCHED = ["layer1.0.conv1", "layer1.0.conv2", "fc"]  # 288, 576, 2048 weights


@pytest.mark.parametrize("strategy_name", ALL)
class TestEveryStrategy(StrategyContract):
    @classmethod
    def options_for(cls, name: str) -> dict[str, Any]:
        return dict(OPTIONS.get(name, {}))

    @classmethod
    def fresh_process_names(cls, name: str) -> list[str]:
        return ALL


@pytest.mark.slow
def test_botorch_optuna_model_path_completes_in_space() -> None:
    study = run_toy_study("botorch-optuna", seed=0, n_trials=4, options={"n_startup_trials": 2})
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert all(toy_space().contains(t.params) for t in study.trials)


# ---- uniform8 / uniform4 ------------------------------------------------------------------
def _first_policy(name: str, **choices: Any) -> Policy:
    space = toy_space("joint", **choices) if choices else toy_space()
    sampler = get_strategy(name, space=space, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(toy_objective(space), n_trials=1)
    return space.decode(study.trials[0].params)


def test_uniform8_first_proposal_is_the_8bit_policy() -> None:
    up = UnitPolicy(w_bits=8, a_bits=8, keep=1.0, scheme="symmetric", granularity="channel")
    assert _first_policy("uniform8") == Policy.uniform(SEARCHED, up)


def test_uniform4_takes_nearest_choice_when_space_cannot_express_it() -> None:
    # w_bits (3, 5, 32): 4 is equidistant from 3 and 5 -> the milder 5; keep max 0.75; a_bits fixed 32
    policy = _first_policy("uniform4", w_bits=(3, 5, 32), a_bits=32, keep=(0.5, 0.75))
    assert policy == Policy.uniform(SEARCHED, UnitPolicy(w_bits=5, a_bits=32, keep=0.75))


def test_uniform8_then_explores_one_dimension_changes_without_repeats() -> None:
    space = toy_space()
    study = run_toy_study("uniform8", seed=0, n_trials=12)
    anchor = space.actions_from_params(study.trials[0].params)
    keys = set()
    for t in study.trials[1:]:
        idx = space.actions_from_params(t.params)
        assert sum(a != b for a, b in zip(idx, anchor, strict=True)) == 1
        keys.add(tuple(sorted(t.params.items())))
    assert len(keys) == 11
    # first neighbour: dimension 0 (layer1.0.conv1.w_bits) one choice down, 8 -> 4
    assert study.trials[1].params["layer1.0.conv1.w_bits"] == 4


def test_neighbour_order_visits_every_point_once_nearest_first() -> None:
    dims = [Dimension("a", (1, 2, 3), True, group="", field="a"), Dimension("b", ("x", "y"), False, group="", field="b")]
    walk = list(neighbour_order((1, 0), dims))
    assert walk == [(1, 0), (0, 0), (2, 0), (1, 1), (0, 1), (2, 1)]


# ---- greedy-sensitivity ---------------------------------------------------------------------
class StubEvaluator:
    """Hand-set sensitivities; cost = toy_size_bits (sum of params x keep x bits)."""

    def __init__(self, sensitivity: dict[str, float]) -> None:
        self._sens = sensitivity
        self.cost_calls = 0

    def sensitivity(self) -> dict[str, float]:
        return dict(self._sens)

    def cost(self, policy: Policy) -> dict[str, float]:
        self.cost_calls += 1
        bits = toy_size_bits(policy, toy_units())
        return {"size_bits": bits, "size_kb": bits / 8192, "bops": 0.0}


def _greedy(sens: dict[str, float], n_trials: int, **choices: Any) -> tuple[optuna.Study, GreedySensitivitySampler]:
    space = toy_space("joint", **choices)
    sampler = get_strategy("greedy-sensitivity", space=space, seed=0, evaluator=StubEvaluator(sens), n_trials=n_trials)
    assert isinstance(sampler, GreedySensitivitySampler)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(toy_objective(space), n_trials=n_trials)
    return study, sampler


def test_greedy_gives_fewest_bits_to_least_sensitive_unit() -> None:
    # Per-parameter sensitivity: conv1 1e3/288 = 3.5, conv2 1e-3/576 = 1.7e-6, fc 10/2048 = 4.9e-3.
    sens = {"layer1.0.conv1": 1e3, "layer1.0.conv2": 1e-3, "fc": 10.0}
    study, _ = _greedy(sens, 4, w_bits=(2, 4, 8, 32), a_bits=32, keep=1.0, scheme="symmetric", granularity="channel")
    for t in study.trials:
        bits = {u: t.params[f"{u}.w_bits"] for u in SEARCHED}
        assert bits["layer1.0.conv2"] <= bits["fc"] <= bits["layer1.0.conv1"]
    # The aggressive end (trial 4 of 4, budget = the trajectory's last cost) is 2 bits everywhere.
    assert [study.trials[-1].params[f"{u}.w_bits"] for u in SEARCHED] == [2, 2, 2]


def test_greedy_sizes_decrease_along_the_budget_sweep() -> None:
    sens = {"layer1.0.conv1": 5.0, "layer1.0.conv2": 1.0, "fc": 0.2}
    study, sampler = _greedy(sens, 8)
    sizes = [t.values[1] for t in study.trials]
    assert all(a > b for a, b in zip(sizes, sizes[1:], strict=False))
    # every proposal meets its budget: size(trial i) <= b_i
    for i, size in enumerate(sizes):
        assert size <= sampler.budget(i) + 1e-6
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 8


def test_sweep_budget_is_geometric_from_mild_to_aggressive() -> None:
    # high 1000, low 10, n 2: trial 0 -> 1000^(1/2) * 10^(1/2) = 100, trial 1 -> 10
    assert sweep_budget(1000.0, 10.0, 0, 2) == pytest.approx(100.0)
    assert sweep_budget(1000.0, 10.0, 1, 2) == pytest.approx(10.0)


def test_greedy_without_evaluator_compresses_largest_unit_first() -> None:
    space = toy_space("joint", w_bits=(4, 8), a_bits=32, keep=1.0, scheme="symmetric", granularity="channel")
    sampler = get_strategy("greedy-sensitivity", space=space, seed=0, n_trials=3)
    first_move = sampler.steps[1].actions  # one dimension lowered from the all-8-bit start
    assert space.params_from_actions(first_move)["fc.w_bits"] == 4  # fc: 2048 weights, the largest


def test_greedy_rejects_unknown_metric() -> None:
    with pytest.raises(ValueError, match="metric='latency'"):
        get_strategy("greedy-sensitivity", space=toy_space(), metric="latency")


# ---- constraints (trial.set_constraint) with nsga2 ------------------------------------------
def test_nsga2_elite_population_puts_feasible_trials_first() -> None:
    """Constrained domination: the parents of generation 2 are chosen from the 8 trials of
    generations 0-1; every feasible trial dominates every infeasible one, so the 4 parents
    are the feasible ones first (all of them if there are at most 4)."""
    space = toy_space()
    bound = 0.5 * toy_size_bits(Policy(), space.all_units)  # at most half the fp32 size
    sampler = get_strategy("nsga2", space=space, seed=3, population_size=4)
    objective = toy_objective(space)

    def constrained(trial: optuna.Trial) -> Any:
        acc, size = objective(trial)
        trial.set_constraint("max_size_bits", size - bound)
        return acc, size

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(constrained, n_trials=8)
    feasible = {t.number for t in study.trials if t.values[1] <= bound}
    assert all(t.constraints == {"max_size_bits": t.values[1] - bound} for t in study.trials)
    assert 0 < len(feasible) < 8  # the check below distinguishes feasible from infeasible
    parents = {t.number for t in sampler.select_parent(study, 2)}
    expected_feasible = min(4, len(feasible))
    assert len(parents & feasible) == expected_feasible
