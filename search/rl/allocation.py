"""The high level of the hierarchy: how the compression budget is split across model blocks.

An *allocation part* is a frozen spec whose ``build`` returns the live allocator:

* :class:`EnsembleAllocation` -> :class:`AllocationEnsemble`: ``K`` PPO agents
  (:class:`~compsearch.search.rl.ppo.SharedPolicy` over blocks, with a block embedding), each
  choosing one of ``L`` budget levels per block (a fraction of the block's uncompressed weight
  bits) from the block state and the global target ``T``; a prior (Fisher guidance) adds logit
  offsets; the agents differ in seed and in reward weights (:class:`~compsearch.search.rl.reward.RewardWeights`) and are
  combined by ensemble vote (``mean`` of level values, or ``majority`` per block). The low level
  pays ``penalty * max(0, c_g / b_g - 1)`` when its block ``g`` overshoots its budget ``b_g``.
* :class:`FixedAllocation` -> :class:`FixedAllocator`: no high level; every block's budget is
  the global target ``T`` and nothing is penalised per block (the flat ablation).

Shapes: ``E`` episodes, ``G`` blocks, ``F`` block features, ``L`` levels, ``K`` agents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from compsearch.errors import ConfigError, check_int_at_least
from compsearch.search.rl.ppo import PPOAgent, PPOConfig, SharedPolicy, load_transferable
from compsearch.search.rl.reward import RewardWeights

VOTING = ("mean", "majority")


#: The three default agents: balanced, lenient and strict about the budget.
DEFAULT_AGENT_WEIGHTS = (RewardWeights(), RewardWeights(1.0, 1.0, 0.0), RewardWeights(1.0, 4.0, 0.15))


def fisher_prior(sensitivity: np.ndarray, levels: np.ndarray, strength: float) -> torch.Tensor:
    """Logit offsets ``G x L``: ``strength * z_g * (v_l - mean v) / std v`` with ``z_g`` the
    standardized log sensitivity of block ``g`` and ``v_l`` the level values, so sensitive blocks
    prefer larger budgets a priori (zero for a single block)."""
    z = np.log(np.asarray(sensitivity, float) + 1e-12)
    z = (z - z.mean()) / (z.std() + 1e-8) if len(z) > 1 else z * 0.0
    v = np.asarray(levels, float)
    v = (v - v.mean()) / (v.std() + 1e-8) if len(v) > 1 else v * 0.0
    return torch.as_tensor(strength * np.outer(z, v), dtype=torch.float32)


class Allocator(Protocol):
    """What the hierarchy needs of a high level."""

    levels: np.ndarray
    weights: tuple[RewardWeights, ...]

    @property
    def n_agents(self) -> int: ...

    def allocate(
        self, obs: torch.Tensor, targets: np.ndarray, generator: torch.Generator, *, agent: int | None, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Level indices ``E x G``, their ``logp`` ``E x G`` and the budgets ``E x G``."""
        ...

    def infer(self, block_ratio: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Levels and budgets that explain realized block ratios ``E x G`` (hindsight)."""
        ...

    def penalty(self, block_ratio: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        """Per-block budget violation charged to the low level, ``E x G``."""
        ...

    def logp(self, agent: int, obs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor: ...

    def update(self, agent: int, obs: torch.Tensor, levels: torch.Tensor, old_logp: torch.Tensor, returns: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class AllocationEnsemble:
    """``K`` high-level PPO agents allocating budget levels to ``G`` blocks (module docstring).

    Args:
        in_dim: block feature size ``F`` (including the global target).
        n_blocks: ``G``.
        levels: ``L`` level values, ascending (fractions of a block's full weight bits).
        k: ensemble size ``K``.
        voting: ``mean`` or ``majority``.
        weights: one :class:`RewardWeights` per agent (cycled when shorter than ``K``).
        prior: logit offsets ``G x L`` (Fisher guidance) or None.
        penalty_weight: weight of the low level's per-block overshoot penalty.
        embed: width of the learned block embedding of every agent.
        bias: a learned per-block logit offset in every agent.
        config: PPO settings.
        seed: base seed (agent ``i`` uses ``seed + 1000 i``).
    """

    def __init__(
        self, *, in_dim: int, n_blocks: int, levels: Sequence[float] | np.ndarray, k: int = 3, voting: str = "mean",
        weights: Sequence[RewardWeights] = DEFAULT_AGENT_WEIGHTS, prior: torch.Tensor | None = None,
        penalty_weight: float = 0.5, embed: int = 0, bias: bool = True, config: PPOConfig | None = None, seed: int = 0,
    ) -> None:
        if voting not in VOTING:
            raise ConfigError(f"voting={voting!r} is unknown; allowed: {list(VOTING)}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"ensemble size k={k!r} must be an integer >= 1")
        if not weights:
            raise ConfigError("weights is empty: give at least one RewardWeights")
        self.levels = np.asarray(sorted(levels), dtype=float)
        self.voting, self.prior, self.penalty_weight = voting, prior, float(penalty_weight)
        self.config = config or PPOConfig()
        mask, owner = np.ones((n_blocks, 1), dtype=bool), np.arange(n_blocks)
        self.agents = [
            PPOAgent(
                policy=SharedPolicy(
                    in_dim=in_dim, head_sizes=(len(self.levels),), hidden=self.config.hidden,
                    generator=torch.Generator().manual_seed(seed + 1000 * i), owners=n_blocks, embed=embed, bias=bias,
                ),
                owner=owner, head_mask=mask, config=self.config,
            )
            for i in range(k)
        ]
        self.weights = tuple(weights[i % len(weights)] for i in range(k))

    @property
    def n_agents(self) -> int:
        return len(self.agents)

    def _prior(self) -> list[torch.Tensor | None] | None:
        return None if self.prior is None else [self.prior]

    def sample(self, i: int, obs: torch.Tensor, generator: torch.Generator, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Agent ``i``'s level indices ``E x G`` and their ``logp`` ``E x G``."""
        actions, logp = self.agents[i].act(obs, generator, self._prior(), greedy)
        return actions[..., 0], logp

    def vote(self, obs: torch.Tensor, generator: torch.Generator, *, mode: str | None = None, greedy: bool = False) -> torch.Tensor:
        """Combined level indices ``E x G``.

        ``mean``: the level nearest to the average of the agents' level values.
        ``majority``: per block the level most agents chose; without a strict majority the
        ``mean`` vote decides.

        Raises:
            ConfigError: unknown ``mode``.
        """
        mode = mode or self.voting
        if mode not in VOTING:
            raise ConfigError(f"voting={mode!r} is unknown; allowed: {list(VOTING)}")
        picks = torch.stack([self.sample(i, obs, generator, greedy)[0] for i in range(len(self.agents))])  # K x E x G
        lv = torch.as_tensor(self.levels, dtype=torch.float32)
        mean_idx = (lv[picks].mean(0).unsqueeze(-1) - lv).abs().argmin(-1)
        if mode == "mean":
            return mean_idx
        counts = torch.nn.functional.one_hot(picks, len(self.levels)).sum(0)  # E x G x L
        top, idx = counts.max(-1)
        return torch.where(top * 2 > len(self.agents), idx, mean_idx)

    def allocate(
        self, obs: torch.Tensor, targets: np.ndarray, generator: torch.Generator, *, agent: int | None, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """``agent`` acts alone (training) or, when None, the ensemble votes (proposals)."""
        if agent is None:
            idx, logp = self.vote(obs, generator, greedy=greedy), torch.zeros(obs.shape[:2])
        else:
            idx, logp = self.sample(agent, obs, generator, greedy)
        return idx, logp, self.levels[idx.numpy()]

    def infer(self, block_ratio: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The smallest level covering each block's realized ratio (the largest when none does)."""
        idx = np.searchsorted(self.levels, np.minimum(block_ratio, self.levels[-1]) - 1e-9)
        return torch.as_tensor(idx, dtype=torch.long), self.levels[idx]

    def penalty(self, block_ratio: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        return self.penalty_weight * np.maximum(0.0, block_ratio / budgets - 1.0)

    def logp(self, agent: int, obs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return self.agents[agent].logp(obs, levels.unsqueeze(-1), self._prior())

    def update(self, agent: int, obs: torch.Tensor, levels: torch.Tensor, old_logp: torch.Tensor, returns: torch.Tensor) -> None:
        """PPO update of agent ``agent`` (``levels``, ``old_logp``, ``returns``: ``E x G``)."""
        self.agents[agent].update(obs, levels.unsqueeze(-1), old_logp, returns, self._prior())

    def state_dict(self) -> dict[str, Any]:
        return {"levels": self.levels.tolist(), "agents": [a.policy.state_dict() for a in self.agents]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for agent, saved in zip(self.agents, state["agents"], strict=False):
            load_transferable(agent.policy, saved)


class FixedAllocator:
    """No high level: every block's budget is the target ``T`` (module docstring)."""

    def __init__(self) -> None:
        self.levels = np.ones(1)
        self.weights: tuple[RewardWeights, ...] = ()

    @property
    def n_agents(self) -> int:
        return 0

    def allocate(
        self, obs: torch.Tensor, targets: np.ndarray, generator: torch.Generator, *, agent: int | None, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        e, g = obs.shape[:2]
        return torch.zeros(e, g, dtype=torch.long), torch.zeros(e, g), np.repeat(np.asarray(targets, float).reshape(-1, 1), g, 1)

    def infer(self, block_ratio: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        return torch.zeros(block_ratio.shape, dtype=torch.long), np.repeat(np.asarray(targets, float).reshape(-1, 1), block_ratio.shape[1], 1)

    def penalty(self, block_ratio: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        return np.zeros_like(block_ratio)

    def logp(self, agent: int, obs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return torch.zeros(levels.shape)

    def update(self, agent: int, obs: torch.Tensor, levels: torch.Tensor, old_logp: torch.Tensor, returns: torch.Tensor) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class EnsembleAllocation:
    """The high level as HiReLC describes it (builds :class:`AllocationEnsemble`).

    Attributes:
        k: number of agents.
        voting: ``mean`` or ``majority``.
        levels: number of budget levels ``L`` (log-spaced from the cheapest block ratio to 1).
        agent_weights: reward weights of the agents (cycled over ``k``).
        block_penalty: weight of the low level's per-block overshoot penalty.
        embed: width of each agent's learned block embedding (0 = none).
        bias: a learned per-block logit offset in each agent (measured: with it the agents of the
            hand-computable allocation test find the optimum in 150 updates, without it they do not).
    """

    k: int = 3
    voting: str = "mean"
    levels: int = 8
    agent_weights: tuple[RewardWeights, ...] = DEFAULT_AGENT_WEIGHTS
    block_penalty: float = 0.5
    embed: int = 0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.voting not in VOTING:
            raise ConfigError(f"EnsembleAllocation voting={self.voting!r} is unknown; allowed: {list(VOTING)}")
        check_int_at_least("EnsembleAllocation", self, {"k": 1, "levels": 2, "embed": 0})
        if not self.agent_weights:
            raise ConfigError("EnsembleAllocation agent_weights is empty: give at least one RewardWeights")

    hierarchical: ClassVar[bool] = True

    def build(self, *, in_dim: int, n_blocks: int, levels: np.ndarray, prior: torch.Tensor | None, config: PPOConfig, seed: int) -> AllocationEnsemble:
        return AllocationEnsemble(
            in_dim=in_dim, n_blocks=n_blocks, levels=levels, k=self.k, voting=self.voting, weights=self.agent_weights,
            prior=prior, penalty_weight=self.block_penalty, embed=self.embed, bias=self.bias, config=config, seed=seed,
        )


@dataclass(frozen=True)
class FixedAllocation:
    """No high level (builds :class:`FixedAllocator`): the ``hirl-flat`` ablation."""

    levels: ClassVar[int] = 1
    hierarchical: ClassVar[bool] = False

    def build(self, *, in_dim: int, n_blocks: int, levels: np.ndarray, prior: torch.Tensor | None, config: PPOConfig, seed: int) -> FixedAllocator:
        return FixedAllocator()
