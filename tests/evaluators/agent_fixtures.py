"""Agents shared by the RL tests, trained once per test process into a temporary folder.

``cartpole_dqn()``: DQN on CartPole-v1, 4000 steps, seed 0 (a few seconds on an idle
core; mean validation return about 200 of 500). ``small_ppo_file()``: a PPO agent of 256
steps saved with SB3's own ``model.save`` (an agent file as a user would hand it over).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from compsearch.evaluators.agents import Agent, AgentRecipe, train_agent

CARTPOLE_DQN = AgentRecipe(algo="dqn", env="CartPole-v1", steps=4000, seed=0)


@functools.cache
def agent_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="compsearch-agents-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def cartpole_dqn() -> Agent:
    return train_agent(CARTPOLE_DQN, agent_folder() / "cache")


@functools.cache
def small_ppo_file() -> Path:
    """A PPO CartPole agent (256 steps, net_arch [32], tanh) saved by SB3 itself."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32]})
    model.learn(256)
    path = agent_folder() / "user_ppo.zip"
    model.save(path)
    return path
