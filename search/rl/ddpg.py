"""DDPG actor-critic (Lillicrap et al. 2016) for the flat RL baselines AMC and HAQ.

The actor maps a state ``B x S`` to a deterministic action in ``[0, 1]^A`` (sigmoid);
the critic maps ``(state, action)`` to ``Q``. Exploration adds Gaussian noise clipped
to ``[0, 1]`` (AMC's truncated normal, ``sigma`` decaying per episode). Targets are
``y = r + gamma (1 - done) Q'(s', mu'(s'))`` with soft-updated target networks
(``tau``). The AMC/HAQ episodes give reward only at the last layer (``gamma = 1``), so
``Q`` of an early layer's action is the final reward it leads to.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from compsearch.errors import ConfigError


@dataclass(frozen=True)
class DDPGConfig:
    """DDPG settings.

    Attributes:
        hidden: width of the two hidden layers of actor and critic.
        actor_lr: Adam learning rate of the actor.
        critic_lr: Adam learning rate of the critic.
        gamma: discount.
        tau: soft target-update rate.
        batch_size: transitions per gradient step.
        noise: initial exploration standard deviation.
        noise_decay: factor applied to ``noise`` per real episode.
        policy_delay: critic steps per actor step (TD3's delay; the critic leads the actor).
        saturation: weight of ``mean(pre^2)`` on the actor's pre-sigmoid output, which keeps
            it out of the flat tails of the sigmoid where its gradient vanishes.
    """

    hidden: int = 64
    actor_lr: float = 1e-3
    critic_lr: float = 3e-3
    gamma: float = 1.0
    tau: float = 0.05
    batch_size: int = 64
    noise: float = 0.5
    noise_decay: float = 0.95
    policy_delay: int = 2
    saturation: float = 1e-2

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ConfigError(f"DDPGConfig hidden={self.hidden!r} must be an integer >= 1")
        if not (0 <= self.gamma <= 1 and 0 < self.tau <= 1):
            raise ConfigError(f"DDPGConfig gamma={self.gamma!r} must be in [0, 1] and tau={self.tau!r} in (0, 1]")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"DDPGConfig batch_size={self.batch_size!r} must be an integer >= 1")


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class Actor(nn.Module):
    """``B x S`` states -> ``B x A`` actions in ``[0, 1]``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = _mlp(state_dim, hidden, action_dim)
        with torch.no_grad():  # DDPG paper: small final layer, so actions start near 0.5
            last = cast(nn.Linear, self.net[-1])
            last.weight.uniform_(-3e-3, 3e-3)
            last.bias.zero_()

    def pre(self, s: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid activations ``B x A``."""
        return self.net(s)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(s))


class Critic(nn.Module):
    """``(B x S, B x A)`` -> ``Q``, ``B``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = _mlp(state_dim + action_dim, hidden, 1)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s, a], dim=-1)).squeeze(-1)


@dataclass
class Transitions:
    """A batch of transitions: ``state`` and ``next_state`` ``N x S``, ``action`` ``N x A``,
    ``reward`` and ``done`` ``N``."""

    state: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_state: np.ndarray
    done: np.ndarray


class DDPGAgent:
    """Actor, critic, their targets and optimizers.

    Args:
        state_dim: ``S``.
        action_dim: ``A``.
        config: settings.
        seed: seed of initial weights, minibatches and exploration noise.
    """

    def __init__(self, *, state_dim: int, action_dim: int, config: DDPGConfig | None = None, seed: int = 0) -> None:
        self.config = config or DDPGConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(state_dim, action_dim, self.config.hidden)
            self.critic = Critic(state_dim, action_dim, self.config.hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.rng = np.random.default_rng(seed + 2)

    @torch.no_grad()
    def act(self, state: np.ndarray, noise: float = 0.0) -> np.ndarray:
        """Actions ``B x A`` for states ``B x S``, plus clipped Gaussian noise of std ``noise``."""
        a = self.actor(torch.as_tensor(np.asarray(state, dtype=np.float32))).numpy().astype(float)
        if noise > 0:
            a = a + self.rng.normal(0.0, noise, size=a.shape)
        return np.clip(a, 0.0, 1.0)

    def update(self, data: Transitions, steps: int = 1) -> float:
        """``steps`` gradient steps on minibatches drawn from ``data``; returns the last critic loss."""
        n = len(data.reward)
        if n == 0:
            return 0.0
        t = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in vars(data).items()}
        loss = 0.0
        for step in range(steps):
            idx = torch.randint(n, (min(self.config.batch_size, n),), generator=self.gen)
            s, a, r, s2, d = (t[k][idx] for k in ("state", "action", "reward", "next_state", "done"))
            with torch.no_grad():
                y = r + self.config.gamma * (1 - d) * self.critic_target(s2, self.actor_target(s2))
            critic_loss = ((self.critic(s, a) - y) ** 2).mean()
            self.critic_opt.zero_grad()
            critic_loss.backward()
            self.critic_opt.step()
            if step % self.config.policy_delay == self.config.policy_delay - 1:
                pre = self.actor.pre(s)
                actor_loss = -self.critic(s, torch.sigmoid(pre)).mean() + self.config.saturation * (pre**2).mean()
                self.actor_opt.zero_grad()
                actor_loss.backward()
                self.actor_opt.step()
                self._soft_update()
            loss = float(critic_loss.detach())
        return loss

    @torch.no_grad()
    def _soft_update(self) -> None:
        tau = self.config.tau
        for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            for p, q in zip(net.parameters(), target.parameters(), strict=True):
                q.mul_(1 - tau).add_(tau * p)
