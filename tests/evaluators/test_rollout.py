"""Episodic return: a constant policy on CartPole against the physics integrated by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.agents import PolicyNet
from compsearch.evaluators.rollout import episode_seeds, network_actor, rollout


def cartpole_steps_by_hand(seed: int, action: int) -> int:
    """Steps until CartPole-v1 terminates under a constant action, integrated independently.

    Gymnasium's CartPole draws the start state as ``default_rng(seed).uniform(-0.05, 0.05, 4)``
    and integrates with explicit Euler (tau 0.02 s): cart 1 kg, pole 0.1 kg, half-length
    0.5 m, force +-10 N, g = 9.8; it terminates once |x| > 2.4 or |theta| > 12 degrees. The
    reward is 1 per step, the terminating step included, so the return equals the step count.
    """
    x, x_dot, theta, theta_dot = np.random.default_rng(seed).uniform(-0.05, 0.05, 4)
    force = 10.0 if action == 1 else -10.0
    total_mass, pml, length = 1.1, 0.05, 0.5
    for step in range(1, 501):
        temp = (force + pml * theta_dot**2 * math.sin(theta)) / total_mass
        theta_acc = (9.8 * math.sin(theta) - math.cos(theta) * temp) / (length * (4 / 3 - 0.1 * math.cos(theta) ** 2 / total_mass))
        x_acc = temp - pml * theta_acc * math.cos(theta) / total_mass
        x, x_dot = x + 0.02 * x_dot, x_dot + 0.02 * x_acc
        theta, theta_dot = theta + 0.02 * theta_dot, theta_dot + 0.02 * theta_acc
        if abs(x) > 2.4 or abs(theta) > 12 * 2 * math.pi / 360:
            return step
    return 500


def constant_net(action: int) -> PolicyNet:
    """A PolicyNet whose logits are its head bias alone: argmax is always ``action``."""
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, 0.0] if action == 0 else [0.0, 1.0]))
    return PolicyNet(features=nn.Flatten(), body=nn.Sequential(), head=head, kind="logits")


@pytest.mark.parametrize("action", [0, 1])
def test_constant_policy_return_matches_hand_physics(action: int) -> None:
    seeds = episode_seeds(100, 5)
    expected = [cartpole_steps_by_hand(s, action) for s in seeds]
    assert all(5 <= e <= 20 for e in expected)  # a pushed cart drops its pole within a few dozen steps
    result = rollout(network_actor(constant_net(action)), "CartPole-v1", seeds)
    assert list(result.returns) == expected
    assert list(result.lengths) == expected
    assert result.mean == pytest.approx(sum(expected) / 5)
    # standard error: sample std (ddof 1) / sqrt(5)
    mean = sum(expected) / 5
    se = math.sqrt(sum((e - mean) ** 2 for e in expected) / 4) / math.sqrt(5)
    assert result.se == pytest.approx(se)


def test_same_seed_same_number_and_episodes_independent_of_batching() -> None:
    torch.manual_seed(0)
    net = PolicyNet(features=nn.Flatten(), body=nn.Sequential(nn.Linear(4, 8), nn.Tanh()), head=nn.Linear(8, 2), kind="logits")
    act = network_actor(net)
    together = rollout(act, "CartPole-v1", [3, 4, 5])
    again = rollout(act, "CartPole-v1", [3, 4, 5])
    alone = [rollout(act, "CartPole-v1", [s]).returns[0] for s in (3, 4, 5)]
    assert together == again
    assert list(together.returns) == alone
    assert rollout(act, "CartPole-v1", [3]).se == 0.0


def test_record_max_steps_and_epsilon() -> None:
    act = network_actor(constant_net(0))
    seeds = [7, 8]
    cut = rollout(act, "CartPole-v1", seeds, max_steps=3, record=True)
    assert cut.lengths == (3, 3)
    assert cut.observations is not None and cut.observations.shape == (6, 4)
    # the first recorded observation of seed 7 is the reset state (float32 of the uniform draw)
    start = np.random.default_rng(7).uniform(-0.05, 0.05, 4).astype(np.float32)
    assert torch.equal(cut.observations[0], torch.from_numpy(start))
    a = rollout(act, "CartPole-v1", seeds, epsilon=0.5, rng=np.random.default_rng(0))
    b = rollout(act, "CartPole-v1", seeds, epsilon=0.5, rng=np.random.default_rng(0))
    assert a == b
    with pytest.raises(ConfigError, match="rng="):
        rollout(act, "CartPole-v1", seeds, epsilon=0.5)


def test_continuous_actions_and_bad_input() -> None:
    head = nn.Linear(3, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(100.0)  # tanh(100) = 1: always the upper bound, torque +2
    net = PolicyNet(features=nn.Flatten(), body=nn.Sequential(), head=head, kind="action",
                    low=torch.tensor([-2.0]), high=torch.tensor([2.0]))
    assert net(torch.zeros(1, 3)).item() == pytest.approx(2.0)
    result = rollout(network_actor(net), "Pendulum-v1", [0], max_steps=5)
    assert result.lengths == (5,) and result.returns[0] < 0  # pendulum rewards are costs
    with pytest.raises(ConfigError, match="episodes"):
        episode_seeds(0, 0)
    with pytest.raises(ConfigError, match="agent.env='CartPol-v1'.*CartPole-v1"):
        rollout(network_actor(net), "CartPol-v1", [0])
