"""The RL maths of the hierarchical strategy: plain torch modules and functions.

Low level: **one shared policy network for every block**, conditioned on the block's
features (:mod:`compsearch.search.hirl.state`), the global budget target and the
budget the high level allocated to the block. It outputs one categorical head per
searched field (``w_bits``, ``keep``, ``scheme``, ``granularity``, ``structure``,
``a_bits``): a factorized policy over the block's multi-discrete choices. Why shared
rather than one agent per block: every episode then gives ``G`` (blocks) training
samples to one network instead of one sample to each of ``G`` networks, which matters
when the whole budget is tens of real evaluations; what it learns about "a sensitive,
parameter-heavy block with a tight budget" transfers between blocks and between models;
the parameter count does not grow with depth, and the same code serves the ``joint``
(per-unit), ``block`` and ``uniform`` spaces. Per-block specialization is still
possible through the block features (depth, sensitivity, type, size shares).

Training is PPO (clipped surrogate objective, entropy bonus, value baseline); one
episode is one whole policy, with per-slot returns (the low level gets the episode
reward minus its own block's budget violation, the high level the episode reward).

High level: an ensemble of ``K`` allocation agents (:class:`AllocationEnsemble`),
each a :class:`SlotPolicy` with one head over ``L`` budget levels per block, with an
optional prior on the logits (Fisher guidance: sensitive blocks get larger budgets).
The agents differ in seed and in reward weights; their allocations are combined by
voting (``mean`` of level values, or ``majority`` per block).

Shapes: ``E`` episodes, ``S`` slots (blocks), ``F`` slot features, ``H`` heads,
``n_h`` choices of head ``h``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compsearch.errors import ConfigError

VOTING = ("mean", "majority")


@dataclass(frozen=True)
class PPOConfig:
    """PPO settings shared by the low- and high-level agents.

    Attributes:
        hidden: width of the two hidden layers.
        lr: Adam learning rate.
        clip: clip range ``eps`` of the probability ratio.
        epochs: optimization passes over one batch of episodes.
        entropy: weight of the entropy bonus.
        value_coef: weight of the value-baseline regression loss.
        max_grad_norm: gradient clipping norm.
    """

    hidden: int = 32
    lr: float = 1e-2
    clip: float = 0.2
    epochs: int = 3
    entropy: float = 0.05
    value_coef: float = 0.5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ConfigError(f"PPOConfig hidden={self.hidden!r} must be an integer >= 1")
        if not self.lr > 0 or not 0 < self.clip < 1:
            raise ConfigError(f"PPOConfig lr={self.lr!r} must be > 0 and clip={self.clip!r} in (0, 1)")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"PPOConfig epochs={self.epochs!r} must be an integer >= 1")


class SlotPolicy(nn.Module):
    """Shared actor-critic over slots: ``E x S x F`` features -> per-head logits and a value.

    Args:
        in_dim: ``F``.
        head_sizes: ``n_h`` for each head.
        hidden: hidden width.
        generator: torch generator for the initial weights.
        slots: when given (``S``), a learnable per-slot logit bias ``S x sum(n_h)`` (zero at
            start) is added to the shared network's logits, so slots whose features barely
            differ can still specialize quickly (the shared part carries what transfers).
    """

    def __init__(
        self, *, in_dim: int, head_sizes: Sequence[int], hidden: int, generator: torch.Generator, slots: int | None = None
    ) -> None:
        super().__init__()
        self.head_sizes = tuple(int(n) for n in head_sizes)
        self.slot_bias = nn.Parameter(torch.zeros(slots, sum(self.head_sizes))) if slots else None
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.heads = nn.Linear(hidden, sum(self.head_sizes))
        self.value = nn.Linear(hidden, 1)
        with torch.no_grad():
            for p in [*self.trunk.parameters(), *self.heads.parameters(), *self.value.parameters()]:
                bound = 1.0 / np.sqrt(p.shape[-1]) if p.dim() > 1 else 0.0
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            self.heads.weight.mul_(0.1)  # near-uniform initial policy

    def forward(self, obs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Logits per head (each ``E x S x n_h``) and value ``E x S``."""
        h = self.trunk(obs)
        logits = self.heads(h) if self.slot_bias is None else self.heads(h) + self.slot_bias
        return list(torch.split(logits, list(self.head_sizes), dim=-1)), self.value(h).squeeze(-1)


def _masked_logits(logits: list[torch.Tensor], prior: Sequence[torch.Tensor | None] | None) -> list[torch.Tensor]:
    if prior is None:
        return logits
    return [lg if p is None else lg + p for lg, p in zip(logits, prior, strict=True)]


def evaluate_actions(
    policy: SlotPolicy,
    obs: torch.Tensor,
    actions: torch.Tensor,
    head_mask: torch.Tensor,
    prior: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probability, entropy and value of ``actions``.

    Args:
        policy: the network.
        obs: ``E x S x F``.
        actions: ``E x S x H`` choice indices (entries of inapplicable heads ignored).
        head_mask: ``S x H`` bool, which heads a slot uses.
        prior: per head ``S x n_h`` logit offsets (or None).

    Returns:
        ``logp``, ``entropy``, ``value``, each ``E x S`` (summed over the slot's heads).
    """
    logits, value = policy(obs)
    logits = _masked_logits(logits, prior)
    logp = torch.zeros(obs.shape[:2])
    ent = torch.zeros(obs.shape[:2])
    for h, lg in enumerate(logits):
        lsm = torch.log_softmax(lg, dim=-1)
        m = head_mask[:, h].float()
        logp = logp + lsm.gather(-1, actions[..., h : h + 1]).squeeze(-1) * m
        ent = ent - (lsm.exp() * lsm).sum(-1) * m
    return logp, ent, value


@torch.no_grad()
def sample_actions(
    policy: SlotPolicy,
    obs: torch.Tensor,
    head_mask: torch.Tensor,
    generator: torch.Generator,
    prior: Sequence[torch.Tensor | None] | None = None,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or take the mode of) every head: actions ``E x S x H`` (long), ``logp`` ``E x S``."""
    logits, _ = policy(obs)
    logits = _masked_logits(logits, prior)
    cols = []
    for lg in logits:
        if greedy:
            cols.append(lg.argmax(-1))
        else:
            probs = torch.softmax(lg, dim=-1).reshape(-1, lg.shape[-1])
            cols.append(torch.multinomial(probs, 1, generator=generator).reshape(lg.shape[:-1]))
    actions = torch.stack(cols, dim=-1) * head_mask.long()
    logp, _, _ = evaluate_actions(policy, obs, actions, head_mask, prior)
    return actions, logp


def ppo_update(
    policy: SlotPolicy,
    optimizer: torch.optim.Optimizer,
    *,
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_logp: torch.Tensor,
    returns: torch.Tensor,
    head_mask: torch.Tensor,
    config: PPOConfig,
    prior: Sequence[torch.Tensor | None] | None = None,
) -> float:
    """PPO-clip update on one batch of episodes; returns the last loss.

    Loss = ``-min(rho A, clip(rho, 1-eps, 1+eps) A) - c_ent H + c_v (V - R)^2`` averaged over
    ``E x S``, with ``rho = exp(logp - old_logp)`` and advantage ``A = R - V`` (batch-normalized).

    Args:
        obs: ``E x S x F``; actions: ``E x S x H``; old_logp, returns: ``E x S``.
    """
    loss_value = 0.0
    for _ in range(config.epochs):
        logp, ent, value = evaluate_actions(policy, obs, actions, head_mask, prior)
        adv = returns - value.detach()
        adv = (adv - adv.mean()) / adv.std().clamp_min(1e-3) if adv.numel() > 1 else adv
        ratio = torch.exp(logp - old_logp)
        pg = -torch.min(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv).mean()
        loss = pg - config.entropy * ent.mean() + config.value_coef * ((value - returns) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        optimizer.step()
        loss_value = float(loss.detach())
    return loss_value


class PPOAgent:
    """A :class:`SlotPolicy` with its optimizer: ``act`` and ``update``.

    Args:
        in_dim: slot feature size ``F``.
        head_sizes: choices per head.
        config: PPO settings.
        seed: seed of the initial weights.
        slots: number of slots for a per-slot logit bias (see :class:`SlotPolicy`), or None.
    """

    def __init__(self, *, in_dim: int, head_sizes: Sequence[int], config: PPOConfig, seed: int, slots: int | None = None) -> None:
        self.config = config
        self.policy = SlotPolicy(
            in_dim=in_dim, head_sizes=head_sizes, hidden=config.hidden, generator=torch.Generator().manual_seed(seed), slots=slots
        )
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)

    def act(self, obs: torch.Tensor, head_mask: torch.Tensor, generator: torch.Generator, prior=None, greedy=False):
        """See :func:`sample_actions`."""
        return sample_actions(self.policy, obs, head_mask, generator, prior, greedy)

    def update(self, obs, actions, old_logp, returns, head_mask, prior=None) -> float:
        """See :func:`ppo_update`."""
        return ppo_update(
            self.policy, self.optimizer, obs=obs, actions=actions, old_logp=old_logp, returns=returns,
            head_mask=head_mask, config=self.config, prior=prior,
        )

    @torch.no_grad()
    def probs(self, obs: torch.Tensor, prior=None) -> list[torch.Tensor]:
        """Choice probabilities per head, each ``E x S x n_h``."""
        logits, _ = self.policy(obs)
        return [torch.softmax(lg, -1) for lg in _masked_logits(logits, prior)]


@dataclass(frozen=True)
class AgentWeights:
    """Reward weights of one high-level agent.

    Attributes:
        accuracy: weight of the predicted (learned) objective term.
        penalty: weight of the budget/constraint violation penalty.
        thrift: weight of the small bonus for cost below the target.
    """

    accuracy: float = 1.0
    penalty: float = 2.0
    thrift: float = 0.05


DEFAULT_AGENT_WEIGHTS = (AgentWeights(), AgentWeights(1.0, 1.0, 0.0), AgentWeights(1.0, 4.0, 0.15))


def fisher_prior(sensitivity: np.ndarray, levels: np.ndarray, strength: float) -> torch.Tensor:
    """Logit offsets ``S x L``: ``strength * z_s * (v_l - mean v)`` with ``z_s`` the
    standardized log sensitivity of slot ``s`` and ``v_l`` the budget level values, so
    sensitive blocks prefer larger budgets a priori."""
    z = np.log(np.asarray(sensitivity, float) + 1e-12)
    z = (z - z.mean()) / (z.std() + 1e-8) if len(z) > 1 else z * 0.0
    v = np.asarray(levels, float)
    v = (v - v.mean()) / (v.std() + 1e-8)
    return torch.as_tensor(strength * np.outer(z, v), dtype=torch.float32)


class AllocationEnsemble:
    """``K`` high-level agents allocating a global budget over ``S`` blocks.

    Each agent picks, per block, one of ``L`` budget levels (fractions of the block's
    uncompressed cost). The agents differ in seed and :class:`AgentWeights`.

    Args:
        in_dim: block feature size (including the global target).
        levels: ``L`` level values, ascending.
        k: ensemble size ``K``.
        seed: base seed (agent ``i`` uses ``seed + 1000 i``).
        weights: one :class:`AgentWeights` per agent (cycled when shorter than ``K``).
        config: PPO settings.
        slots: number of blocks ``S`` for per-block logit biases (None: shared network only).
    """

    def __init__(
        self, *, in_dim: int, levels: Sequence[float], k: int = 3, seed: int = 0,
        weights: Sequence[AgentWeights] = DEFAULT_AGENT_WEIGHTS, config: PPOConfig | None = None, slots: int | None = None,
    ) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"ensemble size k={k!r} must be an integer >= 1")
        if not weights:
            raise ConfigError("weights is empty: give at least one AgentWeights")
        self.levels = np.asarray(sorted(levels), dtype=float)
        self.config = config or PPOConfig()
        self.agents = [PPOAgent(in_dim=in_dim, head_sizes=(len(self.levels),), config=self.config, seed=seed + 1000 * i, slots=slots) for i in range(k)]
        self.weights = tuple(weights[i % len(weights)] for i in range(k))
        self.mask_cache: dict[int, torch.Tensor] = {}

    def _mask(self, slots: int) -> torch.Tensor:
        if slots not in self.mask_cache:
            self.mask_cache[slots] = torch.ones(slots, 1, dtype=torch.bool)
        return self.mask_cache[slots]

    def sample(self, i: int, obs: torch.Tensor, generator: torch.Generator, prior: torch.Tensor | None = None, greedy: bool = False):
        """Agent ``i``'s level indices ``E x S`` and their ``logp`` ``E x S``."""
        actions, logp = self.agents[i].act(obs, self._mask(obs.shape[1]), generator, None if prior is None else [prior], greedy)
        return actions[..., 0], logp

    def update(self, i: int, obs: torch.Tensor, levels: torch.Tensor, old_logp: torch.Tensor, returns: torch.Tensor, prior: torch.Tensor | None = None) -> float:
        """PPO update of agent ``i`` (``levels``, ``old_logp``, ``returns``: ``E x S``)."""
        return self.agents[i].update(obs, levels.unsqueeze(-1), old_logp, returns, self._mask(obs.shape[1]), None if prior is None else [prior])

    def vote(self, obs: torch.Tensor, generator: torch.Generator, *, mode: str = "mean", prior: torch.Tensor | None = None, greedy: bool = False) -> torch.Tensor:
        """Combined level indices ``E x S``.

        ``mean``: the level nearest to the average of the agents' level values.
        ``majority``: per block the level most agents chose; without a strict majority
        (all different) the ``mean`` vote decides.

        Raises:
            ConfigError: unknown ``mode``.
        """
        if mode not in VOTING:
            raise ConfigError(f"voting={mode!r} is unknown; allowed: {list(VOTING)}")
        picks = torch.stack([self.sample(i, obs, generator, prior, greedy)[0] for i in range(len(self.agents))])  # K x E x S
        lv = torch.as_tensor(self.levels, dtype=torch.float32)
        mean_idx = (lv[picks].mean(0).unsqueeze(-1) - lv).abs().argmin(-1)
        if mode == "mean":
            return mean_idx
        counts = torch.nn.functional.one_hot(picks, len(self.levels)).sum(0)  # E x S x L
        top, idx = counts.max(-1)
        return torch.where(top * 2 > len(self.agents), idx, mean_idx)
