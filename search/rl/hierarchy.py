"""Hierarchical rollouts and training: the high level allocates budgets across model blocks,
the low level chooses every kernel's settings within its block.

One *episode* is one whole policy of the space:

1. the allocator (:mod:`~compsearch.search.rl.allocation`) gives each block ``g`` a budget
   ``b_g`` (a fraction of the block's uncompressed weight bits) from the block state
   ``[block features, T]`` and the global target ``T``;
2. the low-level policy (:mod:`~compsearch.search.rl.ppo`) picks, for every kernel ``k`` of
   every block, one choice per searched field (a multi-discrete action per kernel) from the
   kernel state ``[kernel features, its block's features, T, b_g, rho_k(b_g)]``, where
   ``rho_k(b) = log10(1 + 100 e_k(b))`` is the kernel's reconstruction error under the
   reference compression of budget ``b`` (:mod:`~compsearch.search.rl.recon`; 0 when unknown);
3. a score function returns the episode reward (one column per reward weighting: column 0
   the low level's, column ``1 + i`` high-level agent ``i``'s) and the per-kernel cost deltas.

The high-level agent that acted is updated with the episode reward under its own weights; the
low level with the column-0 reward minus the allocator's per-block overshoot penalty for its
kernel's block (it must respect its allocation).

Shapes: ``E`` episodes, ``G`` blocks, ``K`` kernels, ``H`` heads, ``D`` dimensions,
``Fh``/``Fl`` high/low observation widths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from compsearch.search.rl.allocation import Allocator
from compsearch.search.rl.layout import BlockLayout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.ppo import PPOAgent, PPOConfig
from compsearch.search.rl.recon import Reconstruction
from compsearch.search.rl.reward import KernelCost, RewardWeights

#: score(actions E x D, targets E, weights) -> (rewards E x len(weights), kernel cost deltas E x K x 3)
ScoreFn = Callable[[np.ndarray, np.ndarray, Sequence[RewardWeights]], tuple[np.ndarray, np.ndarray]]


@dataclass
class Rollout:
    """One batch of episodes, as the agents consume them."""

    obs_hi: torch.Tensor  # E x G x Fh
    levels: torch.Tensor  # E x G level indices
    logp_hi: torch.Tensor  # E x G
    budgets: np.ndarray  # E x G
    obs_lo: torch.Tensor  # E x K x Fl
    slots: torch.Tensor  # E x K x H
    logp_lo: torch.Tensor  # E x K
    actions: np.ndarray  # E x D
    agent: int | None


class Hierarchy:
    """The hierarchical agent over one space's block layout.

    Args:
        layout: the space's :class:`~compsearch.search.rl.layout.BlockLayout`.
        kernel_features: static kernel features ``K x Fk``.
        block_features: static block features ``G x Fb``.
        allocator: the high level (:class:`~compsearch.search.rl.allocation.Allocator`).
        low: the low-level agent over the ``K`` kernels (owners = their blocks); its input
            width must be ``Fk + Fb + 3``.
        cost: the exact kernel cost (block ratios for the per-block penalty).
        recon: the reconstruction errors for the kernel state (None = zeros).
        weights: the low level's reward weights.
        seed: seed of every sample.
    """

    def __init__(
        self, *, layout: BlockLayout, kernel_features: np.ndarray, block_features: np.ndarray, allocator: Allocator,
        low: PPOAgent, cost: KernelCost, recon: Reconstruction | None, weights: RewardWeights, seed: int,
    ) -> None:
        self.layout, self.allocator, self.low, self.cost, self.recon = layout, allocator, low, cost, recon
        self.kernel_features = torch.as_tensor(kernel_features, dtype=torch.float32)
        self.block_features = torch.as_tensor(block_features, dtype=torch.float32)
        self.kernel_block = torch.as_tensor(layout.kernel_block, dtype=torch.long)
        self.weights = [weights, *allocator.weights]
        self.gen = torch.Generator().manual_seed(seed)

    # ---- observations --------------------------------------------------------------------
    def obs_hi(self, targets: np.ndarray) -> torch.Tensor:
        """``E x G x (Fb + 1)``: block features and the target."""
        e, g = len(targets), self.layout.n_blocks
        t = torch.as_tensor(np.asarray(targets, dtype=np.float32)).view(e, 1, 1).expand(e, g, 1)
        return torch.cat([self.block_features.expand(e, -1, -1), t], dim=-1)

    def obs_lo(self, targets: np.ndarray, budgets: np.ndarray) -> torch.Tensor:
        """``E x K x (Fk + Fb + 3)``: kernel and block features, target, block budget, ``rho_k(budget)``."""
        e, k = len(targets), self.layout.n_kernels
        kb = np.asarray(budgets, dtype=float)[:, self.layout.kernel_block]  # E x K
        rho = self.recon.at(kb) if self.recon is not None else np.zeros_like(kb)
        dyn = np.stack([np.repeat(np.asarray(targets, float).reshape(-1, 1), k, 1), kb, rho], axis=-1)
        return torch.cat(
            [self.kernel_features.expand(e, -1, -1), self.block_features[self.kernel_block].expand(e, -1, -1), torch.as_tensor(dyn, dtype=torch.float32)],
            dim=-1,
        )

    # ---- rollouts ------------------------------------------------------------------------
    def rollout(self, targets: np.ndarray, *, agent: int | None = None, greedy: bool = False) -> Rollout:
        """Episodes for ``targets`` (``E``); ``agent`` = acting high-level agent (None = the vote)."""
        obs_hi = self.obs_hi(targets)
        levels, logp_hi, budgets = self.allocator.allocate(obs_hi, targets, self.gen, agent=agent, greedy=greedy)
        obs_lo = self.obs_lo(targets, budgets)
        slots, logp_lo = self.low.act(obs_lo, self.gen, greedy=greedy)
        actions = self.layout.from_slots(slots.numpy())
        return Rollout(obs_hi, levels, logp_hi, budgets, obs_lo, slots, logp_lo, actions, agent)

    # ---- training ------------------------------------------------------------------------
    def update(self, ro: Rollout, rewards: np.ndarray, deltas: np.ndarray) -> None:
        """PPO updates from one batch (``rewards``: ``E x (1 + n_agents)`` as in the module
        docstring; ``deltas``: ``E x K x 3`` kernel cost deltas)."""
        g = self.layout.n_blocks
        if ro.agent is not None:
            r_hi = torch.as_tensor(rewards[:, 1 + ro.agent], dtype=torch.float32).unsqueeze(1).expand(-1, g)
            self.allocator.update(ro.agent, ro.obs_hi, ro.levels, ro.logp_hi, r_hi.contiguous())
        pen = self.allocator.penalty(self.cost.block_ratio(deltas), ro.budgets)[:, self.layout.kernel_block]
        r_lo = rewards[:, :1] - pen
        self.low.update(ro.obs_lo, ro.slots, ro.logp_lo, torch.as_tensor(r_lo, dtype=torch.float32))

    def train(self, score: ScoreFn, targets: Callable[[int], np.ndarray], *, iterations: int, episodes: int) -> None:
        """``iterations`` PPO rounds of ``episodes`` episodes each against ``score``; the acting
        high-level agent cycles through the ensemble; ``targets(E)`` draws the ``T``s."""
        n = self.allocator.n_agents
        for it in range(iterations):
            t = targets(episodes)
            ro = self.rollout(t, agent=it % n if n else None)
            rewards, deltas = score(ro.actions, t, self.weights)
            self.update(ro, rewards, deltas)

    def learn_from(self, actions: np.ndarray, targets: np.ndarray, rewards: np.ndarray, deltas: np.ndarray) -> None:
        """One policy-gradient step on given (real, already evaluated) episodes ``E x D``:
        allocations are inferred from the realized block ratios (hindsight), the stored
        log-probabilities are the current policy's, and agent 0 learns for the high level."""
        obs_hi = self.obs_hi(targets)
        levels, budgets = self.allocator.infer(self.cost.block_ratio(deltas), targets)
        obs_lo = self.obs_lo(targets, budgets)
        slots = torch.as_tensor(self.layout.to_slots(actions))
        agent = 0 if self.allocator.n_agents else None
        logp_hi = self.allocator.logp(0, obs_hi, levels) if agent is not None else torch.zeros(levels.shape)
        ro = Rollout(obs_hi, levels, logp_hi, budgets, obs_lo, slots, self.low.logp(obs_lo, slots), actions, agent)
        self.update(ro, np.repeat(np.asarray(rewards, float).reshape(-1, 1), len(self.weights), axis=1), deltas)

    # ---- saved state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The learned state (format: :mod:`~compsearch.search.rl.persist`)."""
        from compsearch.search.rl.persist import hierarchy_state

        return hierarchy_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, list[str]]:
        """Load a saved state, possibly of another model (see :mod:`~compsearch.search.rl.persist`);
        returns the parameter names copied per part (``low``, ``high``)."""
        from compsearch.search.rl.persist import load_hierarchy_state

        return load_hierarchy_state(self, state)


def build_hierarchy(
    obj: StrategyObjective, evaluator: Any, *, allocation: Any, low_level: Any, prior: Any, sensitivity: Mapping[str, float] | None,
    ppo: PPOConfig, weights: RewardWeights, seed: int,
) -> Hierarchy:
    """A :class:`Hierarchy` for ``obj``'s layout from the parts (allocation, low level, prior).

    The kernel and block features come from :mod:`~compsearch.search.rl.state` (layer statistics
    from ``evaluator.unit_stats()`` when it has them); the reconstruction model
    (:mod:`~compsearch.search.rl.recon`) is attached to ``obj`` so the reward's ``recon`` term
    and the kernel state use the same memo. The high-level agents' reward weights take the
    ``recon`` weight of ``weights``.
    """
    from compsearch.search.rl.state import (
        BLOCK_FEATURES,
        KERNEL_FEATURES,
        block_statistics,
        kernel_features,
    )

    layout = obj.layout
    state = prior.build(layout, sensitivity)
    kf = kernel_features(layout, state, evaluator)
    bf = block_statistics(layout, kf)
    levels = obj.budget_levels(allocation.levels)
    recon = Reconstruction(obj.space, layout, evaluator, obj.cost, obj.budget_levels(8))
    obj.recon = recon
    allocator = allocation.build(
        in_dim=len(BLOCK_FEATURES) + 1, n_blocks=layout.n_blocks, levels=levels, prior=state.logits(levels), config=ppo, seed=seed + 13,
    )
    if allocator.weights:
        allocator.weights = tuple(replace(w, recon=weights.recon) for w in allocator.weights)
    policy = low_level.build(
        in_dim=len(KERNEL_FEATURES) + len(BLOCK_FEATURES) + 3, head_sizes=[n for _, n in layout.heads], owners=layout.n_blocks,
        hidden=ppo.hidden, seed=seed + 7,
    )
    low = PPOAgent(policy=policy, owner=layout.kernel_block, head_mask=layout.head_mask, config=ppo)
    return Hierarchy(
        layout=layout, kernel_features=kf, block_features=bf, allocator=allocator, low=low, cost=obj.cost,
        recon=recon if recon.available else None, weights=weights, seed=seed,
    )
