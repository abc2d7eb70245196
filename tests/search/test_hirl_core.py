"""RL core of the hirl/amc/haq strategies (compsearch.search.rl) on problems with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from compsearch.errors import ConfigError
from compsearch.search.rl.allocation import AllocationEnsemble, fisher_prior
from compsearch.search.rl.ddpg import DDPGAgent, DDPGConfig, Transitions
from compsearch.search.rl.ppo import PerBlockPolicy, PPOAgent, PPOConfig, SharedPolicy
from compsearch.search.rl.reward import RewardWeights
from compsearch.search.rl.surrogate import SurrogateEnsemble, r_squared


def _agent(policy_cls, *, in_dim: int, heads: tuple[int, ...], owners: np.ndarray, lr: float = 3e-2, **kw) -> PPOAgent:
    policy = policy_cls(in_dim=in_dim, head_sizes=heads, hidden=32, generator=torch.Generator().manual_seed(0), owners=int(owners.max()) + 1, **kw)
    return PPOAgent(policy=policy, owner=owners, head_mask=np.ones((len(owners), len(heads)), dtype=bool), config=PPOConfig(lr=lr))


def test_ppo_bandit_picks_best_arm_within_40_updates() -> None:
    # 5 arms with mean rewards 0.1..0.9 (arm 2 best) and noise 0.1; 40 PPO updates of 32 pulls.
    means = np.array([0.1, 0.3, 0.9, 0.5, 0.4])
    agent = _agent(SharedPolicy, in_dim=1, heads=(5,), owners=np.zeros(1, dtype=int))
    obs, gen = torch.ones(32, 1, 1), torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    assert agent.probs(obs[:1])[0][0, 0, 2] < 0.3  # starts near uniform (1/5)
    for _ in range(40):
        actions, logp = agent.act(obs, gen)
        r = means[actions[:, 0, 0].numpy()] + rng.normal(0, 0.1, 32)
        agent.update(obs, actions, logp, torch.as_tensor(r, dtype=torch.float32).view(32, 1))
    assert agent.probs(obs[:1])[0][0, 0, 2] > 0.9


# Two blocks whose kernels have IDENTICAL features but opposite best arms (block 0: arm 0,
# block 1: arm 2 of 3; reward 1 for the best arm, 0 otherwise). Features cannot tell the kernels
# apart, so only owner-specific parameters can solve it: the block bias or embedding of the shared
# policy, or the per-block networks. Without them a shared policy gets at best 1/2 per kernel.
@pytest.mark.parametrize(("policy_cls", "kw"), [(SharedPolicy, {"bias": True}), (SharedPolicy, {"embed": 4}), (PerBlockPolicy, {})])
def test_owner_specific_parameters_separate_identical_kernels(policy_cls, kw) -> None:
    owners = np.array([0, 0, 1, 1])
    agent = _agent(policy_cls, in_dim=2, heads=(3,), owners=owners, **kw)
    obs, gen = torch.ones(64, 4, 2), torch.Generator().manual_seed(0)
    best = torch.as_tensor([0, 0, 2, 2])
    for _ in range(60):
        actions, logp = agent.act(obs, gen)
        agent.update(obs, actions, logp, (actions[..., 0] == best).float())
    greedy, _ = agent.act(obs[:1], gen, greedy=True)
    assert greedy[0, :, 0].tolist() == [0, 0, 2, 2]


# Budget allocation with a computable optimum: bits b_i in {2, 4, 8} for 3 blocks with
# sensitivities s = (1, 8, 64) and weights p = (4, 2, 1); quantization error
# 4 * sum_i s_i 4^(-b_i); size sum_i p_i b_i should stay <= 24 (penalty per relative excess).
# The optimum over the 27 allocations is (2, 4, 8) bits (size 8 + 8 + 8 = 24, reward -0.379),
# checked by enumeration below; the runner-up (4, 4, 8) scores -0.81 (size 32).
SENS, PARAMS, BITS, BUDGET = np.array([1.0, 8.0, 64.0]), np.array([4.0, 2.0, 1.0]), np.array([2.0, 4.0, 8.0]), 24.0


def _alloc_reward(levels: np.ndarray, w: RewardWeights) -> np.ndarray:
    b = BITS[levels]
    err = (SENS * 4.0 ** (-b)).sum(-1)
    over = np.maximum(0.0, (PARAMS * b).sum(-1) / BUDGET - 1)
    return -w.quality * 4 * err - w.penalty * over


def test_allocation_optimum_is_unique() -> None:
    combos = np.array(list(itertools.product(range(3), repeat=3)))
    r = _alloc_reward(combos, RewardWeights())
    order = np.argsort(-r)
    assert tuple(combos[order[0]]) == (0, 1, 2)
    assert r[order[0]] == pytest.approx(-4 * (1 / 16 + 8 / 256 + 64 / 65536))
    assert r[order[0]] - r[order[1]] > 0.1


@pytest.fixture(scope="module")
def trained_ensemble() -> tuple[AllocationEnsemble, torch.Tensor]:
    # 150 PPO updates of 64 episodes (50 per agent; the acting agent cycles).
    feats = np.stack([np.log(SENS) / np.log(64), PARAMS / PARAMS.sum()], 1)
    obs = torch.as_tensor(np.repeat(feats[None], 64, 0), dtype=torch.float32)
    ens = AllocationEnsemble(in_dim=2, n_blocks=3, levels=BITS, k=3, seed=0, config=PPOConfig(lr=1e-2, entropy=0.3))
    gen = torch.Generator().manual_seed(0)
    for it in range(150):
        i = it % 3
        levels, logp = ens.sample(i, obs, gen)
        r = torch.as_tensor(_alloc_reward(levels.numpy(), ens.weights[i]), dtype=torch.float32)
        ens.update(i, obs, levels, logp, r.view(-1, 1).expand(-1, 3).contiguous())
    return ens, obs[:1]


@pytest.mark.parametrize("voting", ["mean", "majority"])
def test_allocation_ensemble_finds_optimum_within_150_updates(trained_ensemble, voting: str) -> None:
    ens, obs = trained_ensemble
    assert ens.vote(obs, torch.Generator(), mode=voting, greedy=True)[0].tolist() == [0, 1, 2]


def test_vote_rejects_unknown_mode() -> None:
    ens = AllocationEnsemble(in_dim=1, n_blocks=2, levels=(1.0, 2.0), k=3, seed=0)
    with pytest.raises(ConfigError, match="voting='median' is unknown"):
        ens.vote(torch.ones(1, 2, 1), torch.Generator(), mode="median")


def test_majority_vote_falls_back_to_mean_without_majority() -> None:
    ens = AllocationEnsemble(in_dim=1, n_blocks=1, levels=(0.0, 1.0, 2.0, 3.0), k=3, seed=0)
    picks = iter([torch.tensor([[0]]), torch.tensor([[1]]), torch.tensor([[3]])])  # mean 4/3 -> level 1
    ens.sample = lambda i, obs, gen, greedy=False: (next(picks), None)  # type: ignore[method-assign]
    assert ens.vote(torch.ones(1, 1, 1), torch.Generator(), mode="majority").item() == 1
    picks = iter([torch.tensor([[3]]), torch.tensor([[0]]), torch.tensor([[3]])])  # 2 of 3 say 3
    assert ens.vote(torch.ones(1, 1, 1), torch.Generator(), mode="majority").item() == 3


def test_fisher_prior_by_hand() -> None:
    # sensitivities (1, e^2): log = (0, 2), standardized z = (-1, 1); levels (1, 2, 3) standardized
    # v = (-1.2247, 0, 1.2247); offsets = strength * z_g * v_l, so the sensitive block prefers level 3.
    prior = fisher_prior(np.array([1.0, np.exp(2.0)]), np.array([1.0, 2.0, 3.0]), 2.0).numpy()
    v = np.sqrt(1.5)
    np.testing.assert_allclose(prior, [[2 * v, 0.0, -2 * v], [-2 * v, 0.0, 2 * v]], atol=1e-5)
    assert np.all(fisher_prior(np.array([3.0]), np.array([1.0, 2.0]), 1.0).numpy() == 0)  # one block: no prior


def test_surrogate_fits_known_function() -> None:
    # f(x) = sin(3 x0) + x1^2 - x2 on [0, 1]^3; held-out R^2 >= 0.9 from 200 points.
    rng = np.random.default_rng(0)
    f = lambda x: np.sin(3 * x[:, 0]) + x[:, 1] ** 2 - x[:, 2]  # noqa: E731
    x, xt = rng.random((200, 3)), rng.random((200, 3))
    model = SurrogateEnsemble(in_dim=3, seed=0).fit(x, f(x))
    mean, std = model.predict(xt)
    assert r_squared(f(xt), mean[:, 0]) >= 0.9
    assert mean.shape == std.shape == (200, 1) and np.all(std >= 0)


def test_surrogate_disagreement_grows_away_from_data() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((40, 2)) * 0.3  # data only in [0, 0.3]^2
    model = SurrogateEnsemble(in_dim=2, seed=0).fit(x, x.sum(1))
    _, near = model.predict(np.full((1, 2), 0.15))
    _, far = model.predict(np.full((1, 2), 3.0))
    assert far[0, 0] > 3 * near[0, 0]


def test_surrogate_errors() -> None:
    model = SurrogateEnsemble(in_dim=2)
    with pytest.raises(ConfigError, match="before fit"):
        model.predict(np.zeros((1, 2)))
    with pytest.raises(ConfigError, match="expected n x 2"):
        model.fit(np.zeros((3, 4)), np.zeros(3))


def test_ddpg_finds_1d_optimum() -> None:
    # one-step episodes, reward -(a - 0.3)^2: the actor must output 0.3 +- 0.05 after 600 updates.
    agent = DDPGAgent(state_dim=1, action_dim=1, config=DDPGConfig(gamma=0.0, hidden=32), seed=0)
    rng = np.random.default_rng(0)
    a = rng.random((256, 1))
    data = Transitions(np.ones((256, 1)), a, -((a[:, 0] - 0.3) ** 2), np.ones((256, 1)), np.ones(256))
    agent.update(data, steps=600)
    assert abs(agent.act(np.ones((1, 1)))[0, 0] - 0.3) < 0.05


def test_ddpg_two_step_credit_assignment() -> None:
    # two steps, reward only at the end: R = -(a0 - 0.8)^2, where the second state carries the
    # first action (as the AMC/HAQ states carry the previous action) and the second action is
    # irrelevant. With gamma = 1 the first action must move to 0.8 (+- 0.1) within 1200 updates.
    agent = DDPGAgent(state_dim=2, action_dim=1, config=DDPGConfig(gamma=1.0, hidden=32), seed=0)
    rng = np.random.default_rng(0)
    a0, a1 = rng.random(256), rng.random(256)
    s0 = np.zeros((256, 2))
    s1 = np.stack([np.ones(256), a0], 1)
    r = -((a0 - 0.8) ** 2)
    data = Transitions(
        np.concatenate([s0, s1]), np.concatenate([a0, a1])[:, None],
        np.concatenate([np.zeros(256), r]), np.concatenate([s1, s1]), np.concatenate([np.zeros(256), np.ones(256)]),
    )
    agent.update(data, steps=1200)
    assert abs(agent.act(np.zeros((1, 2)))[0, 0] - 0.8) < 0.1
