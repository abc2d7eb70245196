"""The policy task in the shared evaluator: return over fixed seeds, distillation recovers a pruned agent."""

from __future__ import annotations

import functools

import pytest
import torch
from agent_fixtures import cartpole_dqn

from compsearch.errors import ConfigError, DataError
from compsearch.evaluators.agents import policy_network
from compsearch.evaluators.evaluator import CompressionEvaluator, EvaluatorConfig
from compsearch.evaluators.policy_task import PolicyTask, PolicyTaskConfig
from compsearch.evaluators.rollout import episode_seeds, network_actor, rollout
from compsearch.evaluators.tasks import get_task
from compsearch.evaluators.types import FineTuneConfig
from compsearch.spaces.policy import UnitPolicy

CONFIG = PolicyTaskConfig(episodes=5, test_episodes=5, teacher_episodes=4)


@functools.cache
def evaluator() -> CompressionEvaluator:
    agent = cartpole_dqn()
    finetune = FineTuneConfig(steps=300, optimizer="adam", lr=1e-3, batch_size=64)
    return CompressionEvaluator(agent.network(), PolicyTask.from_agent(agent, config=CONFIG),
                                config=EvaluatorConfig(finetune=finetune), device="cpu")


def test_registered_and_measures_the_return_over_fixed_seeds() -> None:
    assert get_task("policy") is PolicyTask
    ev = evaluator()
    net = cartpole_dqn().network()
    val = rollout(network_actor(net), "CartPole-v1", episode_seeds(1_000_000, 5))
    base = ev.base_metrics(test=True)
    assert base.quality == "return"
    assert base["return"] == val.mean and base["return_se"] == val.se
    assert base.test_values is not None
    assert base.test_values["return"] == rollout(network_actor(net), "CartPole-v1", episode_seeds(2_000_000, 5)).mean
    assert ev.task.measure(net, "val") == ev.task.measure(net, "val")  # same seeds, same numbers
    assert [u.name for u in ev.units if u.is_head] == ["head"]
    # inputs are teacher states: the first observation is CartPole's reset state of train seed 0
    states = ev.task.states()
    assert states.shape[1:] == (4,) and len(states) >= 4 * 8
    assert torch.equal(ev.task.example_input(), states[:2])
    calib = ev.task.calibration_inputs(batches=2, batch_size=16, seed=0)
    assert [len(b) for b in calib] == [16, 16]
    assert torch.equal(calib[0], ev.task.calibration_inputs(batches=2, batch_size=16, seed=0)[0])


def test_distillation_recovers_a_pruned_agent() -> None:
    ev = evaluator()
    policy = {name: UnitPolicy(keep=0.125, structure="channel", w_bits=4) for name in ("body.0", "body.2")}
    untuned = ev.evaluate(policy, steps=0)
    tuned = ev.evaluate(policy)
    base = ev.base_metrics()["return"]
    # 8 of 64 channels per hidden layer at 4 bits: the pole falls at once without fine-tuning;
    # 300 distillation steps bring most of the return back
    assert untuned["return"] < 0.3 * base
    assert tuned["return"] > 3 * untuned["return"] and tuned["return"] > 0.5 * base
    assert tuned.steps == 300 and tuned["loss"] < untuned["loss"]
    assert tuned.size_bits == untuned.size_bits < ev.base_metrics().size_bits


def test_gradient_statistics_and_loss_floor() -> None:
    ev = evaluator()
    sensitivity = ev.sensitivity()  # CE against the teacher's greedy actions: nonzero gradients
    assert set(sensitivity) == {"body.0", "body.2", "head"} and all(v > 0 for v in sensitivity.values())
    assert ev.task.loss_floor() == pytest.approx(0.693147, abs=1e-6)  # ln 2 actions


def test_continuous_task_on_pendulum() -> None:
    import gymnasium as gym
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    net = policy_network(model.policy, algo="sac")
    task = PolicyTask(env="Pendulum-v1", teacher=net, config=PolicyTaskConfig(episodes=2, test_episodes=2, teacher_episodes=1,
                                                                              max_steps=20))
    values = task.measure(net, "val")
    assert values["loss"] == 0.0 and values["episode_length"] == 20.0 and values["return"] < 0
    assert task.loss_floor() == 1.0
    batch = task.gradient_batches(batches=1, batch_size=8, seed=0)[0]
    with torch.no_grad():
        assert float(batch.loss(net(batch.inputs))) > 0  # sampled Gaussian targets: a nonzero Fisher


def test_bad_input() -> None:
    ev = evaluator()
    with pytest.raises(ConfigError, match="split='train' is unknown"):
        ev.task.measure(cartpole_dqn().network(), "train")
    with pytest.raises(ConfigError, match="task seeds overlap"):
        PolicyTaskConfig(val_seed=0, test_seed=5)
    with pytest.raises(ConfigError, match="task.episodes=0"):
        PolicyTaskConfig(episodes=0)
    task = PolicyTask.from_agent(cartpole_dqn(), config=CONFIG)
    with pytest.raises(DataError, match="maps observations to \\(2, 3\\), the agent's network to \\(2, 2\\)"):
        task.check_model(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    with pytest.raises(DataError, match="cannot take the observations of env 'CartPole-v1' \\(\\(2, 4\\)\\)"):
        task.check_model(torch.nn.Sequential(torch.nn.Linear(6, 2)))
