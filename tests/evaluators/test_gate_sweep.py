"""The gates method: joint training per strength, the implied policy, folding, online SB3 training."""

from __future__ import annotations

import pytest
import torch
from agent_fixtures import cartpole_dqn
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.agents import AgentRecipe
from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.evaluators.gate_sweep import gate_criterion, gate_sweep, train_agent_gated
from compsearch.evaluators.gates import GateTraining
from compsearch.evaluators.masks import CRITERIA, register_criterion
from compsearch.evaluators.policy_task import PolicyTask, PolicyTaskConfig
from compsearch.evaluators.tasks import ClassificationTask
from compsearch.evaluators.types import FineTuneConfig
from compsearch.spaces.units import discover_units


def test_sweep_on_a_classifier_and_its_scores_as_a_criterion(tiny_cnn: nn.Sequential, tiny_data) -> None:
    task = ClassificationTask(tiny_data)
    units = [u for u in discover_units(tiny_cnn, task.example_input()) if not u.is_head and not u.is_first]
    config = FineTuneConfig(steps=40, optimizer="adam", lr=1e-3, batch_size=32, schedule="constant")
    # Adam moves a log-odds by about lr = 0.3 per step: from log(0.9 / 0.1) = 2.2 to the closing
    # point log((1/12) / (11/12)) = -2.4 in about 15 steps when the penalty dominates
    free, strong = gate_sweep(tiny_cnn, task, units=units, strengths=[0.0, 20.0], config=config,
                              training=GateTraining(lr=0.3))
    assert free.strength == 0.0 and strong.strength == 20.0
    assert sum(strong.keep.values()) < sum(free.keep.values())
    assert all(strong.keep[n] <= free.keep[n] for n in free.keep)
    assert {n: up.keep for n, up in strong.policy.items()} == {n: k for n, k in strong.keep.items() if k < 1}
    assert strong.network is not None and task.measure(strong.network, "val") == strong.values
    # the folded network has zero rows exactly where the gates closed
    for name, keep in strong.keep.items():
        rows = strong.network.get_submodule(name).weight.flatten(1).abs().sum(dim=1) > 0
        assert float(rows.float().mean()) == keep
    # the gate log-odds as a model-level criterion: the evaluator prunes the same channels
    register_criterion("test-gate-scores", model_level=True)(gate_criterion(strong))
    try:
        ev = CompressionEvaluator(tiny_cnn, tiny_data, criterion="test-gate-scores", device="cpu")
        ev.evaluate(strong.policy, steps=0)
        weights = ev.effective_weights()
        for name in strong.policy:
            kept = weights[name].flatten(1).abs().sum(dim=1) > 0
            closed = strong.network.get_submodule(name).weight.flatten(1).abs().sum(dim=1) == 0
            assert torch.equal(kept, ~closed)
    finally:
        CRITERIA.unregister("test-gate-scores")
    with pytest.raises(ConfigError, match="gates.strengths is empty"):
        gate_sweep(tiny_cnn, task, units=units, strengths=[], config=config)


def test_sweep_during_policy_distillation() -> None:
    agent = cartpole_dqn()
    net = agent.network()
    task = PolicyTask.from_agent(agent, config=PolicyTaskConfig(episodes=3, teacher_episodes=3))
    units = [u for u in discover_units(net, task.example_input()) if not u.is_head]
    (point,) = gate_sweep(net, task, units=units, strengths=[0.5], training=GateTraining(lr=0.1),
                          config=FineTuneConfig(steps=150, optimizer="adam", lr=1e-3, batch_size=64))
    assert set(point.keep) == {"body.0", "body.2"} and all(0 < k < 1 for k in point.keep.values())
    assert point.values["return"] > 0 and "return_se" in point.values
    assert torch.equal(next(net.parameters()), next(agent.network().parameters()))  # the teacher is untouched


def test_online_gates_during_sb3_training() -> None:
    recipe = AgentRecipe(algo="dqn", env="CartPole-v1", steps=700, seed=1,
                         hyper={"learning_starts": 100, "train_freq": 200, "gradient_steps": 50})
    net, gates = train_agent_gated(recipe, GateTraining(strength=50.0, lr=0.2))
    assert gates.names == ["body.0", "body.2"]  # the action layer is not gated
    keep = gates.keep_ratios()
    assert all(k < 1.0 for k in keep.values())  # a strong penalty closes channels while the agent learns
    for name, ratio in keep.items():
        rows = net.get_submodule(name).weight.flatten(1).abs().sum(dim=1) > 0
        assert float(rows.float().mean()) == ratio
