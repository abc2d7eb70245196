"""Hierarchical rollouts and training: high-level budget allocation, low-level choices.

One *episode* is one whole policy of the space:

1. the high-level ensemble (or, in the ``high_level=False`` ablation, nobody) gives each
   block ``g`` a budget level ``b_g`` (a fraction of the block's uncompressed weight
   bits) from the block features and the global target ``T``;
2. the shared low-level policy picks every searched field of every block from the block
   features, ``T`` and ``b_g``;
3. a caller-supplied score function returns the episode reward (one column per reward
   weighting) and each block's realized cost ratio ``c_g``.

The high-level agent that acted is updated with the episode reward under its own
weights; the low level with the default-weight reward minus
``LOW_PENALTY * max(0, c_g / b_g - 1)`` for its block (it must respect its allocation).

Shapes: ``E`` episodes, ``G`` blocks, ``F`` static block features, ``H`` heads, ``D`` dims.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from compsearch.search.hirl.agents import (
    AgentWeights,
    AllocationEnsemble,
    PPOAgent,
    PPOConfig,
    fisher_prior,
)
from compsearch.search.hirl.state import GroupLayout

LOW_PENALTY = 0.5

#: score(actions E x D, targets E, weights) -> (rewards E x len(weights), block cost ratios E x G)
ScoreFn = Callable[[np.ndarray, np.ndarray, Sequence[AgentWeights]], tuple[np.ndarray, np.ndarray]]


@dataclass
class Rollout:
    """One batch of episodes (tensors as the agents consume them)."""

    obs_hi: torch.Tensor  # E x G x (F + 1)
    levels: torch.Tensor  # E x G level indices
    logp_hi: torch.Tensor  # E x G
    obs_lo: torch.Tensor  # E x G x (F + 2)
    slots: torch.Tensor  # E x G x H
    logp_lo: torch.Tensor  # E x G
    actions: np.ndarray  # E x D
    agent: int | None


class Hierarchy:
    """The hierarchical agent over one space's block layout.

    Args:
        layout: the space's :class:`GroupLayout`.
        features: static block features ``G x F``.
        sensitivity: summed Fisher sensitivity per block ``G`` (for the prior), or None.
        levels: ascending budget levels ``L`` (fractions of a block's full weight bits).
        high_level: use the allocation ensemble (else every block's budget is ``T``).
        k: ensemble size.
        voting: ``mean`` or ``majority``.
        weights: per-agent reward weights.
        prior_strength: scale of the Fisher prior on allocation logits (0 = none).
        config: PPO settings.
        seed: seed of all weights and samples.
    """

    def __init__(
        self, *, layout: GroupLayout, features: np.ndarray, sensitivity: np.ndarray | None, levels: Sequence[float],
        high_level: bool, k: int, voting: str, weights: Sequence[AgentWeights], prior_strength: float,
        config: PPOConfig, seed: int,
    ) -> None:
        self.layout = layout
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.levels = np.asarray(sorted(levels), dtype=float)
        self.high_level, self.voting = high_level, voting
        self.head_mask = torch.as_tensor(layout.head_mask)
        self.gen = torch.Generator().manual_seed(seed)
        nf = self.features.shape[1]
        self.low = PPOAgent(in_dim=nf + 2, head_sizes=[n for _, n in layout.heads], config=config, seed=seed + 7, slots=layout.n_groups)
        self.ensemble = AllocationEnsemble(in_dim=nf + 1, levels=self.levels, k=k, seed=seed + 13, weights=weights, config=config, slots=layout.n_groups)
        self.prior = None
        if sensitivity is not None and prior_strength > 0 and layout.n_groups > 1:
            self.prior = fisher_prior(sensitivity, self.levels, prior_strength)
        self.default_weights = weights[0]

    # ---- rollouts ---------------------------------------------------------------------
    def _obs_hi(self, targets: np.ndarray) -> torch.Tensor:
        e, g = len(targets), self.layout.n_groups
        t = torch.as_tensor(targets, dtype=torch.float32).view(e, 1, 1).expand(e, g, 1)
        return torch.cat([self.features.expand(e, -1, -1), t], dim=-1)

    def rollout(self, targets: np.ndarray, *, agent: int | None = None, greedy: bool = False) -> Rollout:
        """Episodes for ``targets`` (``E``); ``agent`` = acting high-level agent (None = vote)."""
        obs_hi = self._obs_hi(targets)
        e, g = obs_hi.shape[:2]
        if not self.high_level:
            levels_idx = torch.zeros(e, g, dtype=torch.long)
            logp_hi = torch.zeros(e, g)
            budget = obs_hi[..., -1:]
        else:
            if agent is None:
                levels_idx = self.ensemble.vote(obs_hi, self.gen, mode=self.voting, prior=self.prior, greedy=greedy)
                logp_hi = torch.zeros(e, g)
            else:
                levels_idx, logp_hi = self.ensemble.sample(agent, obs_hi, self.gen, self.prior, greedy)
            budget = torch.as_tensor(self.levels, dtype=torch.float32)[levels_idx].unsqueeze(-1)
        obs_lo = torch.cat([obs_hi, budget], dim=-1)
        slots, logp_lo = self.low.act(obs_lo, self.head_mask, self.gen, greedy=greedy)
        actions = self.layout.from_slots(slots.numpy())
        return Rollout(obs_hi, levels_idx, logp_hi, obs_lo, slots, logp_lo, actions, agent)

    def block_budgets(self, ro: Rollout) -> np.ndarray:
        """Allocated budget per block ``E x G`` (the target ``T`` without a high level)."""
        return ro.obs_lo[..., -1].numpy().astype(float)

    # ---- training ---------------------------------------------------------------------
    def update(self, ro: Rollout, rewards: np.ndarray, block_ratio: np.ndarray) -> None:
        """PPO updates from one batch (``rewards``: ``E x W``, column ``i`` = agent ``i``'s weights,
        column 0 also the low level's; ``block_ratio``: ``E x G``)."""
        g = self.layout.n_groups
        if self.high_level and ro.agent is not None:
            r_hi = torch.as_tensor(rewards[:, ro.agent], dtype=torch.float32).unsqueeze(1).expand(-1, g)
            self.ensemble.update(ro.agent, ro.obs_hi, ro.levels, ro.logp_hi, r_hi.contiguous(), self.prior)
        r_lo = np.repeat(rewards[:, :1], g, axis=1)
        if self.high_level:
            r_lo = r_lo - LOW_PENALTY * np.maximum(0.0, block_ratio / self.block_budgets(ro) - 1.0)
        self.low.update(ro.obs_lo, ro.slots, ro.logp_lo, torch.as_tensor(r_lo, dtype=torch.float32), self.head_mask)

    def train(self, score: ScoreFn, targets: Callable[[int], np.ndarray], *, iterations: int, episodes: int) -> None:
        """``iterations`` PPO rounds of ``episodes`` episodes each against ``score``; the
        acting high-level agent cycles through the ensemble; ``targets(E)`` draws ``T``s."""
        k = len(self.ensemble.agents)
        weights = list(self.ensemble.weights)
        for it in range(iterations):
            t = targets(episodes)
            ro = self.rollout(t, agent=it % k if self.high_level else None)
            rewards, ratio = score(ro.actions, t, weights)
            self.update(ro, rewards, ratio)

    def learn_from(self, actions: np.ndarray, targets: np.ndarray, rewards: np.ndarray, block_ratio: np.ndarray) -> None:
        """Policy-gradient step on given (e.g. real, already evaluated) episodes ``E x D``:
        allocations are inferred as the smallest level covering each block's ratio; the
        stored log-probabilities are the current policy's (one on-policy-style step)."""
        obs_hi = self._obs_hi(targets)
        lv = torch.as_tensor(np.searchsorted(self.levels, np.minimum(block_ratio, self.levels[-1]) - 1e-9), dtype=torch.long)
        budget = torch.as_tensor(self.levels, dtype=torch.float32)[lv].unsqueeze(-1) if self.high_level else obs_hi[..., -1:]
        obs_lo = torch.cat([obs_hi, budget], dim=-1)
        slots = torch.as_tensor(self.layout.to_slots(actions))
        from compsearch.search.hirl.agents import evaluate_actions

        with torch.no_grad():
            logp_lo = evaluate_actions(self.low.policy, obs_lo, slots, self.head_mask)[0]
            logp_hi = torch.zeros_like(logp_lo)
            if self.high_level:
                logp_hi = evaluate_actions(self.ensemble.agents[0].policy, obs_hi, lv.unsqueeze(-1), self.ensemble._mask(obs_hi.shape[1]), None if self.prior is None else [self.prior])[0]
        ro = Rollout(obs_hi, lv, logp_hi, obs_lo, slots, logp_lo, actions, 0 if self.high_level else None)
        w = np.repeat(rewards.reshape(-1, 1), len(self.ensemble.agents), axis=1)
        self.update(ro, w, block_ratio)
