"""Agents: training and caching, loading SB3 files without unpickling, the acting network, bad input."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from agent_fixtures import CARTPOLE_DQN, agent_folder, cartpole_dqn, small_ppo_file

from compsearch.errors import ConfigError, ModelError
from compsearch.evaluators.agents import (
    AgentRecipe,
    SmallCNN,
    load_agent,
    policy_network,
    train_agent,
)
from compsearch.spaces.units import discover_units

PPO_RECIPE = AgentRecipe(algo="ppo", env="CartPole-v1", net_arch=(32,))


def test_trained_dqn_network_is_the_q_network_and_cached() -> None:
    agent = cartpole_dqn()
    net = agent.network()
    obs = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(net(obs), agent.policy.q_net(obs), atol=1e-6)
    assert torch.equal(net.act(obs), agent.policy.q_net(obs).argmax(dim=1))
    assert agent.meta["key"] == CARTPOLE_DQN.key() and agent.path.name == f"{CARTPOLE_DQN.key()}.zip"
    again = train_agent(CARTPOLE_DQN, agent.path.parent)  # cached: loaded, not retrained
    assert again.meta["seconds"] == agent.meta["seconds"]
    assert torch.equal(again.network()(obs), net(obs))
    # the network holds copies: changing it leaves the agent alone
    with torch.no_grad():
        net.head.weight.zero_()
    assert not torch.equal(agent.network()(obs), net(obs))


def test_units_of_the_acting_network_and_head() -> None:
    net = cartpole_dqn().network()
    units = discover_units(net, torch.zeros(2, 4))
    # DQN MlpPolicy, net_arch [64, 64]: 4 -> 64 -> 64 -> 2 Q-values
    assert [(u.name, u.weight_shape, u.is_head) for u in units] == [
        ("body.0", (64, 4), False), ("body.2", (64, 64), False), ("head", (2, 64), True)]
    assert [u.macs for u in units] == [256, 4096, 128]


def test_user_ppo_file_loads_with_weights_only() -> None:
    from stable_baselines3 import PPO

    path = small_ppo_file()
    agent = load_agent(path, PPO_RECIPE)
    reference = PPO.load(path, device="cpu")  # SB3's own loader (unpickles; fine for our own test file)
    obs = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    logits = reference.policy.get_distribution(obs).distribution.logits
    assert torch.allclose(torch.log_softmax(agent.network()(obs), dim=1), logits, atol=1e-6)
    units = discover_units(agent.network(), obs[:2])
    assert [(u.name, u.weight_shape, u.is_head) for u in units] == [("body.0", (32, 4), False), ("head", (2, 32), True)]


def _rewrite(src: Path, dst: Path, **members: bytes) -> Path:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for name in a.namelist():
            if name not in members:
                b.writestr(name, a.read(name))
        for name, content in members.items():
            b.writestr(name, content)
    return dst


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_files_that_are_not_agents(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="agent.path=.*not a stable-baselines3 agent file.*not a zip"):
        load_agent(junk, PPO_RECIPE)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match="lack 'data' and 'policy.pth'"):
        load_agent(empty, PPO_RECIPE)
    with pytest.raises(ModelError, match="does not exist"):
        load_agent(tmp_path / "missing.zip", PPO_RECIPE)
    buf = io.BytesIO()
    torch.save({"w": _Evil()}, buf)
    evil = _rewrite(small_ppo_file(), tmp_path / "evil.zip", **{"policy.pth": buf.getvalue()})
    with pytest.raises(ModelError, match="holds more than tensors"):
        load_agent(evil, PPO_RECIPE)


def test_agent_that_does_not_fit_the_recipe(tmp_path: Path) -> None:
    path = small_ppo_file()
    with pytest.raises(ConfigError, match="agent.algo='dqn' does not match.*algo 'ppo'"):
        load_agent(path, AgentRecipe(algo="dqn", env="CartPole-v1"))
    with pytest.raises(ConfigError, match="agent.env='Acrobot-v1' does not fit.*action_space is Discrete 2.*Discrete 3"):
        load_agent(path, AgentRecipe(algo="ppo", env="Acrobot-v1", net_arch=(32,)))
    with pytest.raises(ModelError, match="do not fit a ppo policy with agent.net_arch=\\[64, 64\\]"):
        load_agent(path, AgentRecipe(algo="ppo", env="CartPole-v1"))
    # the JSON may lie about the spaces; the weights still have to fit exactly
    with zipfile.ZipFile(path) as z:
        data = json.loads(z.read("data"))
    del data["action_space"], data["observation_space"]
    edited = _rewrite(path, tmp_path / "edited.zip", data=json.dumps(data).encode())
    with pytest.raises(ModelError, match="do not fit"):
        load_agent(edited, AgentRecipe(algo="ppo", env="Acrobot-v1", net_arch=(32,)))


def test_bad_recipes() -> None:
    with pytest.raises(ConfigError, match="agent.algo='a2c' is unknown"):
        AgentRecipe(algo="a2c", env="CartPole-v1")
    with pytest.raises(ConfigError, match="agent.steps=0 must be an integer >= 1"):
        AgentRecipe(algo="dqn", env="CartPole-v1", steps=0)
    with pytest.raises(ConfigError, match="agent.net_arch"):
        AgentRecipe(algo="dqn", env="CartPole-v1", net_arch=(64, 0))
    with pytest.raises(ConfigError, match="agent.hyper sets \\['seed'\\]"):
        AgentRecipe(algo="dqn", env="CartPole-v1", hyper={"seed": 3})
    folder = agent_folder() / "bad"
    with pytest.raises(ConfigError, match="agent.env='NoSuchEnv-v0' is not a registered gymnasium environment"):
        train_agent(AgentRecipe(algo="dqn", env="NoSuchEnv-v0"), folder)
    with pytest.raises(ConfigError, match="Box action space; agent.algo='dqn' needs Discrete"):
        train_agent(AgentRecipe(algo="dqn", env="Pendulum-v1"), folder)
    with pytest.raises(ConfigError, match="agent.algo='sac' needs continuous"):
        train_agent(AgentRecipe(algo="sac", env="CartPole-v1"), folder)
    with pytest.raises(ConfigError, match="agent.hyper has key\\(s\\) \\['learning_rat'\\]"):
        train_agent(AgentRecipe(algo="dqn", env="CartPole-v1", hyper={"learning_rat": 1e-3}), folder)
    assert not folder.exists() or not any(folder.iterdir())


def test_sac_network_is_the_squashed_rescaled_mean_and_small_cnn() -> None:
    import gymnasium as gym
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    net = policy_network(model.policy, algo="sac")
    obs = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    mean = model.policy.actor(obs, deterministic=True)  # tanh-squashed, in [-1, 1]
    assert torch.allclose(net(obs), 2.0 * mean, atol=1e-6)  # Pendulum torque bounds are [-2, 2]
    assert [u.is_head for u in discover_units(net, obs[:2])] == [False, True]
    space = gym.spaces.Box(0, 1, (10, 10, 4), dtype=bool)
    cnn = SmallCNN(space, features_dim=32)
    # conv3x3 on 10x10 -> 16 x 8 x 8 = 1024 features -> 32
    assert cnn(torch.zeros(3, 10, 10, 4)).shape == (3, 32) and cnn.linear[0].in_features == 1024


def test_training_progress_lines_at_every_quarter_of_the_steps() -> None:
    from compsearch.evaluators.agents import DEFAULT_HYPER, policy_kwargs
    from compsearch.evaluators.sb3_train import learn, progress_callback

    recipe = AgentRecipe(algo="ppo", env="CartPole-v1", steps=256, net_arch=(8,), hyper={"n_steps": 64, "batch_size": 32})
    out = io.StringIO()
    learn(recipe, policy_kwargs(recipe), DEFAULT_HYPER["ppo"], callback=progress_callback("agent", 256, every=0.25, stream=out))
    lines = out.getvalue().splitlines()
    # PPO steps one environment at a time: a line at 64, 128, 192 and 256 of 256 steps
    assert [line.split(" steps")[0] for line in lines] == [f"agent: {n}/256" for n in (64, 128, 192, 256)]
    assert lines[-1].split("(")[1].startswith("100%)") and lines[-1].endswith("~0.0 min left")
