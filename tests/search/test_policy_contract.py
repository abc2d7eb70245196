"""Every registered strategy on the policy task: a study of a tiny agent network (CartPole,
``return`` x ``size_kb``, a ``min_return`` constraint) through the shared evaluator completes
inside the space, records the task's metrics and repeats itself under the same seed.

The problem is kept tiny so the whole registry runs in seconds: an 4 -> 8 -> 8 -> 2 Q-network
(random weights, seed 0), one validation episode cut at 10 steps, 2 distillation steps per
candidate. That tests the glue (the task's metrics reach every strategy, strategies that ask
the evaluator for sensitivity, unit statistics or reconstruction errors get them on a
policy task), not whether a strategy finds good policies.
"""

from __future__ import annotations

import functools
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from test_baselines import OPTIONS
from torch import nn

from compsearch import record
from compsearch.evaluators.evaluator import CompressionEvaluator, EvaluatorConfig
from compsearch.evaluators.objective import optuna_objective
from compsearch.evaluators.policy_net import PolicyNet
from compsearch.evaluators.policy_task import PolicyTask, PolicyTaskConfig
from compsearch.evaluators.types import FineTuneConfig
from compsearch.search.registry import get_strategy, list_strategies
from compsearch.spaces import get_space

#: strategies whose 5-trial study takes seconds here (learning agents, GP fits): run by `make test-all`
HEAVY = {"amc", "haq", "gp", "botorch-optuna", "hirl-flat", "hirl-nofisher", "hirl-mutations", "hirl-curriculum", "hirl-front", "hirl-sweep"}
STRATEGIES = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_strategies()]
OBJECTIVES = (("return", "maximize"), ("size_kb", "minimize"))
CONSTRAINTS = {"min_return": 5.0}
N_TRIALS = 5
SEED = 3


def tiny_q_network() -> PolicyNet:
    """``b x 4`` CartPole observations -> ``b x 2`` Q-values through 8 and 8 hidden units."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return PolicyNet(features=nn.Flatten(), body=nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU()),
                         head=nn.Linear(8, 2), kind="q").eval()


@functools.cache
def problem() -> tuple[Any, CompressionEvaluator]:
    """The joint space over the searched units (stem and head kept) and the evaluator."""
    config = PolicyTaskConfig(episodes=1, test_episodes=1, teacher_episodes=2, max_steps=10)
    task = PolicyTask(env="CartPole-v1", teacher=tiny_q_network(), config=config)
    finetune = FineTuneConfig(steps=2, optimizer="adam", lr=1e-3, batch_size=8)
    ev = CompressionEvaluator(tiny_q_network(), task, config=EvaluatorConfig(finetune=finetune, calib_batches=1,
                                                                              calib_batch_size=8, sensitivity_batches=1),
                              device="cpu")
    space = get_space("joint", ev.units, w_bits=(2, 4, 8, 32), keep=(0.5, 1.0), skip_first=False)
    return space, ev


def run_policy_study(name: str) -> optuna.Study:
    space, ev = problem()
    sampler = get_strategy(name, space=space, seed=SEED, evaluator=ev, objectives=OBJECTIVES, constraints=CONSTRAINTS,
                           n_trials=N_TRIALS, **OPTIONS.get(name, {}))
    study = optuna.create_study(directions=[d for _, d in OBJECTIVES], sampler=sampler)
    study.optimize(optuna_objective(space, ev, OBJECTIVES, constraints=CONSTRAINTS), n_trials=N_TRIALS)
    return study


@pytest.mark.parametrize("strategy_name", STRATEGIES)
def test_strategy_on_the_policy_task(strategy_name: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, ev = problem()
    study = run_policy_study(strategy_name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * N_TRIALS
    for t in study.trials:
        assert space.contains(t.params)
        metrics = record.read_metrics(t)
        # the objective values are the task's `return` and the exact size; constraint 5 - return <= 0 when met
        assert list(t.values) == [metrics["return"], metrics["size_kb"]]
        assert metrics["size_kb"] == ev.cost(space.decode(t.params))["size_kb"]
        assert {"return_se", "episode_length", "loss"} <= set(metrics) and 1 <= metrics["episode_length"] <= 10
        assert record.read_constraints(t) == [pytest.approx(5.0 - metrics["return"])]


@pytest.mark.parametrize("strategy_name", ["random", "greedy-sensitivity"])
def test_same_seed_same_study_on_the_policy_task(strategy_name: str) -> None:
    study = run_policy_study(strategy_name)
    again = run_policy_study(strategy_name)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert [t.values for t in again.trials] == [t.values for t in study.trials]  # same seeds, same returns
