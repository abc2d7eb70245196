"""``n2n``: the reward, the moving-average baseline and the REINFORCE update by hand, the two
stages on a space with and without depth choices, and the sampler's rewards of finished,
constraint-violating and failed trials. (The strategy contract on ``joint`` and ``depth+joint``
runs for every registered strategy in test_baselines.py and test_composed_strategies.py.)"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from compsearch import record
from compsearch.errors import ConfigError
from compsearch.search.common import Observation
from compsearch.search.n2n import N2NSampler
from compsearch.search.registry import SearchContext, get_strategy
from compsearch.search.rl.n2n import (
    MovingBaseline,
    N2NConfig,
    RemovalPolicy,
    ShrinkPolicy,
    n2n_reward,
    reinforce_step,
)
from compsearch.search.rl.n2n_agent import N2NAgent
from compsearch.search.rl.n2n_problem import BLOCK_COLUMNS, N2NProblem
from compsearch.spaces.policy import Policy
from compsearch.testing import toy_objective, toy_space


def test_reward_by_hand() -> None:
    # r = 0.25 -> C = 0.75, C (2 - C) = 0.75 * 1.25 = 0.9375; A / A_ref = 0.76 / 0.95 = 0.8 -> R = 0.75
    assert n2n_reward(0.25, 0.76, 0.95) == pytest.approx(0.75)
    assert n2n_reward(1.0, 0.9, 0.9) == 0.0  # no compression: C = 0
    assert n2n_reward(0.0, 0.9, 0.9) == pytest.approx(1.0)  # everything gone at the teacher's accuracy: C(2-C) = 1


def test_moving_baseline_by_hand() -> None:
    b = MovingBaseline(0.8)
    assert b.advantage(1.0) == 0.0  # the first reward starts the baseline
    assert b.value == pytest.approx(1.0)
    assert b.advantage(0.5) == pytest.approx(-0.5)  # 0.5 - 1.0
    assert b.value == pytest.approx(0.9)  # 0.8 * 1.0 + 0.2 * 0.5
    assert b.advantage(1.0) == pytest.approx(0.1)  # 1.0 - 0.9
    assert b.value == pytest.approx(0.92)  # 0.8 * 0.9 + 0.2 * 1.0


def test_removal_reinforce_step_by_hand() -> None:
    torch.manual_seed(0)
    pol = RemovalPolicy(in_dim=len(BLOCK_COLUMNS), hidden=4, n_blocks=2, keep_prior=0.8)
    feats = torch.rand(1, 2, len(BLOCK_COLUMNS))
    z0 = pol(feats).detach()
    p0 = torch.sigmoid(z0)
    keep = torch.tensor([[1, 0]])
    opt = torch.optim.SGD([pol.block_bias], lr=0.5)
    logp, ent = pol.log_prob(feats, keep)
    # log pi = sum_b keep_b log p_b + (1 - keep_b) log(1 - p_b); d/d bias_b = keep_b - p_b
    assert float(logp.detach()) == pytest.approx(math.log(p0[0, 0]) + math.log(1 - p0[0, 1]), rel=1e-5)
    reinforce_step(opt, [pol.block_bias], logp, ent, torch.tensor([2.0]), entropy_weight=0.0, max_grad_norm=1e9)
    # loss = -A log pi, SGD: bias += lr * A * (keep - p)
    expected = z0 + 0.5 * 2.0 * (keep.float() - p0)
    assert torch.allclose(pol(feats).detach(), expected, atol=1e-6)
    p1 = torch.sigmoid(pol(feats).detach())
    assert p1[0, 0] > p0[0, 0] and p1[0, 1] < p0[0, 1]  # the rewarded choices (keep 0, remove 1) got likelier


def test_shrink_reinforce_step_by_hand() -> None:
    torch.manual_seed(0)
    pol = ShrinkPolicy(in_dim=3, hidden=4, heads=[("w_bits", 3)])
    feats, mask = torch.rand(1, 1, 3), torch.ones(1, 1, dtype=torch.bool)
    bias = pol.out["w_bits_3"].bias
    actions = torch.tensor([[[2]]])

    def probs() -> torch.Tensor:
        h, _ = pol.cell(torch.cat([feats[:, 0], torch.zeros(1, 1), torch.zeros(1, 6)], -1))
        return torch.softmax(pol.out["w_bits_3"](h), -1).detach()[0]

    p0 = probs()
    logp, ent = pol.log_prob(feats, torch.zeros(1, 1), mask, actions)
    assert float(logp.detach()) == pytest.approx(math.log(p0[2]), rel=1e-5)
    b0 = bias.detach().clone()
    reinforce_step(torch.optim.SGD([bias], lr=0.5), [bias], logp, ent, torch.tensor([1.0]), entropy_weight=0.0, max_grad_norm=1e9)
    # d log softmax_2 / d b = onehot(2) - p: b += 0.5 * 1.0 * (onehot - p)
    assert torch.allclose(bias.detach(), b0 + 0.5 * (torch.tensor([0.0, 0.0, 1.0]) - p0), atol=1e-6)
    assert probs()[2] > p0[2]
    # a kernel stage 1 removed adds nothing to log pi (its choices change nothing)
    logp_removed, _ = pol.log_prob(feats, torch.ones(1, 1), mask, actions)
    assert float(logp_removed.detach()) == 0.0


def test_stages_follow_the_space() -> None:
    joint = N2NProblem(toy_space("joint"))
    assert len(joint.blocks) == 0 and joint.layout is not None  # no depth choices: no stage 1
    depth = N2NProblem(toy_space("depth+joint"))
    assert depth.blocks == ("layer1.0", "layer1.1", "layer2.0", "layer2.1")
    assert depth.block_feats.shape == (4, len(BLOCK_COLUMNS))
    # layer2.0 is replaced by its shortcut (shortcut column 1), the others by the identity
    assert depth.block_feats[:, BLOCK_COLUMNS.index("shortcut")].tolist() == [0.0, 0.0, 1.0, 0.0]
    # removing layer1.1 removes layer1.1.conv's kernel entirely, nothing else
    kernels = [us[0].name for us in depth.layout.kernel_units]  # type: ignore[union-attr]
    col = depth.removal[:, 1]
    assert col[kernels.index("layer1.1.conv")] == 1.0 and col.sum() == 1.0
    # an episode's actions round-trip through the stages
    agent = N2NAgent(depth, N2NConfig(), seed=0)
    a = agent.sample(torch.Generator().manual_seed(0))
    keep, slots = depth.keep_from_actions(a), depth.slots_from_actions(a)
    assert np.array_equal(depth.to_actions(keep, slots)[0], a)


class _FakeEvaluator:
    """cost: 100 bits for the uncompressed model, 25 for any other policy; teacher accuracy 0.95."""

    def cost(self, policy: Policy) -> dict[str, float]:
        bits = 100.0 if not len(policy) and not policy.removed else 25.0
        return {"size_bits": bits, "size_kb": bits / 8192, "bops": bits, "compression_ratio": 100 / bits, "sparsity": 0.0}

    def base_metrics(self) -> Any:
        return SimpleNamespace(values={"accuracy": 0.95, "loss": 0.1})


def _sampler(**constraints: float) -> N2NSampler:
    space = toy_space("joint")
    ctx = SearchContext(space=space, seed=0, evaluator=_FakeEvaluator(), constraints=constraints)
    return N2NSampler(ctx, fisher=False)


def test_sampler_reward_by_hand() -> None:
    sampler = _sampler()
    sampler._setup()
    space = sampler.space
    params = space.params_from_actions([0] * len(space.dimensions()))
    # r = 25 / 100, A / A_teacher = 0.76 / 0.95 -> R = 0.9375 * 0.8 = 0.75
    assert sampler.reward(Observation(0, params, (0.76, 25.0), {})) == pytest.approx(0.75)
    tight = _sampler(max_size_kb=0.001)  # 25 bits = 0.00305 kB > 0.001: infeasible
    tight._setup()
    assert tight.reward(Observation(0, params, (0.76, 25.0), {})) == -1.0


def test_failed_trials_get_the_infeasible_reward() -> None:
    space = toy_space("joint")
    sampler = get_strategy("n2n", space=space, seed=3, fisher=False, infeasible=-0.5)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    objective = toy_objective(space)
    for i in range(4):
        trial = study.ask()
        if i == 1:
            space.suggest(trial)
            record.tell_failure(study, trial, "diverged: FineTuneDiverged: loss nan")
        else:
            study.tell(trial, objective(trial))
    state = sampler.learned_state(study)
    assert state["format"] == "compsearch.rl.n2n/1"
    assert sampler.rewards[1] == -0.5 and set(sampler.rewards) == {0, 1, 2, 3}
    assert all(-0.5 < r <= 1.0 for n, r in sampler.rewards.items() if n != 1)


def test_replay_rebuilds_the_same_policies() -> None:
    """A new sampler on the same study (a resumed run) learns the same parameters."""
    from compsearch.testing import run_toy_study

    study = run_toy_study("n2n", seed=5, n_trials=5, space_name="depth+joint")
    live = study.sampler.learned_state(study)
    fresh = get_strategy("n2n", space=toy_space("depth+joint"), seed=5)
    replayed = fresh.learned_state(study)
    for part in ("removal", "shrink"):
        assert live[part].keys() == replayed[part].keys()
        assert all(torch.allclose(live[part][k], replayed[part][k]) for k in live[part])


def test_bad_options_name_the_option() -> None:
    with pytest.raises(ConfigError, match="keep_prior"):
        get_strategy("n2n", space=toy_space("joint"), seed=0, keep_prior=1.5)
    with pytest.raises(TypeError, match="no_such"):
        get_strategy("n2n", space=toy_space("joint"), seed=0, no_such=1)
