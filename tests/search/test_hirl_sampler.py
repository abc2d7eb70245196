"""HiRLSampler (and its registered variants), SLS and the flat RL samplers as Optuna samplers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)
from torch import nn

from compsearch.errors import ConfigError
from compsearch.search.hirl import VARIANTS, FlatRLSampler, HiRLConfig, HiRLSampler
from compsearch.search.hirl.variants import variant_parts
from compsearch.search.registry import get_strategy
from compsearch.search.rl.allocation import EnsembleAllocation, FixedAllocation
from compsearch.search.rl.critic import RealRewards, SurrogateRewards
from compsearch.search.rl.goals import SaturationGaps, SweepGoals
from compsearch.search.rl.ppo import PerBlockLowLevel
from compsearch.search.rl.proposals import AgentProposals, GreedyProposal, MutationProposals
from compsearch.search.rl.reward import unit_cost_oracle
from compsearch.search.rl.state import FisherPrior, NoPrior
from compsearch.search.rl.surrogate import SurrogateConfig
from compsearch.search.sls import ORIGIN_ATTR
from compsearch.spaces import discover_units, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = dict(episodes=16, iterations=3, replay_iterations=4, pool=16, startup_trials=2, surrogate=SurrogateConfig(members=3, epochs=60))


def toy_units():
    """5 units: stem, 3 searched convs/linear (2, 4, 7), head 9."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.ReLU(), nn.Linear(8 * 16, 16), nn.ReLU(), nn.Linear(16, 3),
    )
    return discover_units(model, torch.randn(1, 1, 4, 4))


SPACE = get_space("joint", toy_units(), w_bits=(2, 4, 8, 32), keep=(0.5, 0.75, 1.0), a_bits=32, scheme="symmetric")
ORACLE = unit_cost_oracle(SPACE)
SENS = {u.name: float(i + 1) for i, u in enumerate(SPACE.all_units)}


def toy_objective(trial: optuna.Trial) -> tuple[float, float]:
    """Analytic "accuracy" (1 - sensitivity-weighted quantization and pruning error) and exact size."""
    policy = SPACE.suggest(trial)
    acc = 1.0 - sum(SENS[u.name] * (0.05 * 2.0 ** (-min(policy[u.name].w_bits, 16)) * 4 + 0.1 * (1 - policy[u.name].keep) ** 2) for u in SPACE.units)
    return acc, ORACLE(policy)["size_bits"]


def hirl(seed: int | None = 0, name: str = "hirl", **options) -> HiRLSampler:
    fast = {k: v for k, v in FAST.items() if not (name == "hirl-real" and k == "surrogate")}  # no surrogate to set
    return get_strategy(name, space=SPACE, seed=seed, **{**fast, **options})


class TestHiRLOptunaContract(BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: hirl(0)


def _run(sampler: optuna.samplers.BaseSampler, n: int = 8) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(toy_objective, n_trials=n)
    return study


def _keys(study: optuna.Study) -> list[str]:
    return [json.dumps(t.params, sort_keys=True) for t in study.trials]


@pytest.fixture(scope="module")
def long_study() -> optuna.Study:
    return _run(hirl(0), 14)


def test_study_completes_with_distinct_in_space_proposals(long_study) -> None:
    assert len(long_study.trials) == 14 and all(SPACE.contains(t.params) for t in long_study.trials)
    assert len(set(_keys(long_study))) == 14  # never a repeated proposal
    origins = {p for t in long_study.trials for p in t.system_attrs[ORIGIN_ATTR].split("+")}
    assert "agents" in origins and origins <= {"startup", "agents", "greedy", "mutation", "fallback", "distinct"}
    # a proposal equivalent to a tried policy is changed by one choice, and says so
    assert all(t.system_attrs[ORIGIN_ATTR] for t in long_study.trials)


@pytest.fixture(scope="module")
def seeded_keys() -> list[str]:
    return _keys(_run(hirl(3), 6))


def test_reproducible_in_process(seeded_keys) -> None:
    assert _keys(_run(hirl(3), 6)) == seeded_keys
    assert _keys(_run(hirl(4), 6)) != seeded_keys


def test_reproducible_in_fresh_process(seeded_keys) -> None:
    code = (
        "import json, sys; sys.path.insert(0, 'tests/search');"
        "import torch; torch.set_num_threads(1);"
        "import test_hirl_sampler as t; print(json.dumps(t._keys(t._run(t.hirl(3), 6))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == seeded_keys


def test_resumed_study_continues_without_repeats() -> None:
    study = _run(hirl(1), 6)
    study.sampler = hirl(1)  # a fresh sampler replays the finished trials on first use
    study.optimize(toy_objective, n_trials=5)
    assert len(set(_keys(study))) == 11
    assert study.sampler._trained_n is not None  # it trained from the replayed history


def test_pending_batch_gets_distinct_proposals() -> None:
    study = _run(hirl(2), 4)
    trials = [study.ask() for _ in range(5)]
    params = [json.dumps({d.name: t.suggest_categorical(d.name, list(d.choices)) for d in SPACE.dimensions()}, sort_keys=True) for t in trials]
    assert len(set(params) | set(_keys(study)[:4])) == 9


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - {"hirl"}))
def test_variants_run_and_record_where_proposals_came_from(name: str) -> None:
    study = _run(hirl(0, name=name), 7)
    assert len(set(_keys(study))) == 7
    origins = [t.system_attrs[ORIGIN_ATTR] for t in study.trials]
    assert origins[:2] == ["startup", "startup"] and all(o != "startup" for o in origins[3:])
    allowed = {"startup", "fallback"} | {n for o in origins for n in o.split("+")}
    if name not in ("hirl-mutations", "hirl-sweep"):  # the agents' proposals only
        allowed &= {"startup", "fallback", "agents", "greedy", "distinct"}
    assert {n for o in origins for n in o.split("+")} <= allowed


def test_majority_vote_and_per_block_low_level_run() -> None:
    study = _run(hirl(0, name="hirl-full", voting="majority", k=2, low_level=PerBlockLowLevel()), 7)
    assert len(set(_keys(study))) == 7


def test_the_parts_are_objects_passed_in() -> None:
    default = hirl(0)
    assert [type(s) for s in default.sources] == [AgentProposals, GreedyProposal, MutationProposals]
    assert isinstance(default.allocation, FixedAllocation) and isinstance(default.prior, NoPrior)
    assert isinstance(default.rewards, SurrogateRewards)
    full = hirl(0, name="hirl-full")
    assert [type(s) for s in full.sources] == [AgentProposals, GreedyProposal]
    assert isinstance(full.allocation, EnsembleAllocation) and isinstance(full.prior, FisherPrior)
    assert isinstance(hirl(0, name="hirl-flat").allocation, FixedAllocation)
    assert isinstance(hirl(0, name="hirl-real").rewards, RealRewards)
    assert [type(s) for s in hirl(0, name="hirl-mutations").sources] == [AgentProposals, GreedyProposal, MutationProposals]
    assert isinstance(default.goals, SaturationGaps) and isinstance(full.goals, SweepGoals)
    assert isinstance(hirl(0, name="hirl-sweep").goals, SweepGoals)
    # each ablation swaps one part of hirl-full; hirl-sweep swaps three (sources, allocation,
    # prior) and hirl those three and the goals
    full_parts = variant_parts("hirl-full")
    swapped = {"sources", "allocation", "prior"}
    for name in set(VARIANTS) - {"hirl-full", "hirl", "hirl-sweep"}:
        assert len({k for k, v in variant_parts(name).items() if v != full_parts[k]}) == 1, name
    assert {k for k, v in variant_parts("hirl-sweep").items() if v != full_parts[k]} == swapped
    assert {k for k, v in variant_parts("hirl").items() if v != full_parts[k]} == swapped | {"goals"}
    custom = HiRLSampler(SPACE, seed=0, allocation=EnsembleAllocation(k=5), sources=(MutationProposals(n=4),))
    assert custom.allocation.k == 5 and custom.sources == (MutationProposals(n=4),)


def test_options_route_onto_parts_and_errors_name_the_option() -> None:
    s = hirl(0, name="hirl-mutations", k=5, voting="majority", pool=8, mutations=0, min_real=2, prior_strength=0.5)
    assert (s.allocation.k, s.allocation.voting, s.rewards.min_real, s.prior.strength) == (5, "majority", 2, 0.5)
    assert [type(x).__name__ for x in s.sources] == ["AgentProposals", "GreedyProposal"] and s.sources[0].n == 8
    with pytest.raises(ConfigError, match=r"MutationProposals.n=3 has no effect"):
        hirl(0, name="hirl-full", mutations=3)
    with pytest.raises(ConfigError, match="voting='median' is unknown"):
        hirl(0, name="hirl-full", voting="median")
    with pytest.raises(ConfigError, match=r"option k=3 sets 'k', which FixedAllocation does not have.*hirl-full"):
        hirl(0, k=3)  # the default has no high level
    with pytest.raises(TypeError, match="sls.*pool"):
        get_strategy("sls", space=SPACE, seed=0, pool=3)
    # nested settings as plain mappings (what a TOML spec gives)
    s = hirl(0, weights={"recon": 0.2}, ppo={"lr": 0.003}, surrogate={"members": 2})
    assert (s.config.weights.recon, s.config.ppo.lr, s.rewards.surrogate.members) == (0.2, 0.003, 2)
    with pytest.raises(TypeError, match=r"HiRLConfig.weights got unexpected keyword argument\(s\) \['recn'\]"):
        hirl(0, weights={"recn": 0.2})


@pytest.mark.parametrize("method", ["amc", "haq"])
def test_flat_rl_samplers_complete(method: str) -> None:
    study = _run(FlatRLSampler(SPACE, method=method, seed=0), 8)
    assert len(set(_keys(study))) == 8
    field = "keep" if method == "amc" else "w_bits"
    other = "w_bits" if method == "amc" else "keep"
    # the uncontrolled field stays at its identity choice; the controlled one varies
    assert {t.params[f"{SPACE.units[0].name}.{other}"] for t in study.trials} == {32 if other == "w_bits" else 1.0}
    assert len({t.params[f"{SPACE.units[0].name}.{field}"] for t in study.trials}) > 1


def test_registry_builds_every_rl_strategy_and_rejects_unknown_option() -> None:
    for name in (*VARIANTS, "sls", "amc", "haq"):
        assert isinstance(get_strategy(name, space=SPACE, seed=0), optuna.samplers.BaseSampler)
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_strategy("hirl", space=SPACE, seed=0, episodez=3)
    with pytest.raises(ValueError, match="episodes=0 must be an integer >= 1"):
        HiRLConfig(episodes=0)


def test_budget_sweep_spreads_proposals_along_the_size_axis(long_study) -> None:
    # targets sweep log-evenly over the cost ratio: the agents' proposals do not cluster at one
    # size but span the front's cost range. The toy accuracy saturates at 8 bits (ratio 0.25), so
    # no policy above that ratio is on the front; the agents aim below it (the random start-up
    # trials 0-1 are left out).
    sizes = np.array([t.values[1] for t in long_study.trials[2:]])
    full = ORACLE(SPACE.decode(SPACE.params_from_actions([n - 1 for n in SPACE.action_sizes()])))["size_bits"]
    assert sizes.max() > 2 * sizes.min()
    assert sizes.min() < 0.1 * full and sizes.max() > 0.15 * full
