"""The proposal pool: where each trial's candidate policies come from, and how one is picked.

A *source* is a frozen part with a ``name`` and ``candidates(ctx) -> M x D`` actions:

* :class:`AgentProposals` (``agents``): ``n`` episodes sampled from the hierarchy (the
  ensemble votes on the allocation) for this proposal's goal;
* :class:`GreedyProposal` (``greedy``): the hierarchy's mode (greedy allocation and choices);
* :class:`MutationProposals` (``mutation``): one- or two-choice random changes of the
  ``incumbents`` finished trials with the best real reward for this goal (local refinement);
* :class:`RandomProposals` (``random``): uniform random points of the space.

:func:`pick` pools every source's candidates, drops those a finished or running trial already
has, scores the rest with the reward part (surrogate or exact cost only, see
:mod:`~compsearch.search.rl.critic`) and returns the best one with its *origin*: the names of
every source that produced it, joined by ``+`` in source order (e.g. ``agents+mutation``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from compsearch.errors import check_int_at_least
from compsearch.search.common import Observation
from compsearch.search.rl.objective import StrategyObjective

if TYPE_CHECKING:
    from compsearch.search.rl.hierarchy import Hierarchy


@dataclass
class PoolContext:
    """What a source may use for one proposal.

    Attributes:
        objective: the study's :class:`~compsearch.search.rl.objective.StrategyObjective`.
        history: finished trials, oldest first.
        goal: this proposal's goal (budget target ``T`` or Chebyshev weight).
        rng: this proposal's generator (seeded from the sampler seed and the proposal index).
        hierarchy: the trained hierarchy (None for strategies without agents).
    """

    objective: StrategyObjective
    history: list[Observation]
    goal: float
    rng: np.random.Generator
    hierarchy: Hierarchy | None = None


def _need_hierarchy(ctx: PoolContext, name: str) -> Hierarchy:
    if ctx.hierarchy is None:
        raise TypeError(f"proposal source {name!r} needs the hierarchy's agents; a strategy without agents cannot use it")
    return ctx.hierarchy


@dataclass(frozen=True)
class AgentProposals:
    """``n`` episodes of the hierarchy for the proposal's goal.

    Attributes:
        n: episodes sampled per proposal.
    """

    n: int = 64
    name: ClassVar[str] = "agents"
    needs_agents: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int_at_least("AgentProposals", self, {"n": 1})

    def candidates(self, ctx: PoolContext) -> np.ndarray:
        return _need_hierarchy(ctx, self.name).rollout(np.full(self.n, ctx.goal)).actions


@dataclass(frozen=True)
class GreedyProposal:
    """The hierarchy's most likely policy for the proposal's goal."""

    name: ClassVar[str] = "greedy"
    needs_agents: ClassVar[bool] = True

    def candidates(self, ctx: PoolContext) -> np.ndarray:
        return _need_hierarchy(ctx, self.name).rollout(np.full(1, ctx.goal), greedy=True).actions


@dataclass(frozen=True)
class MutationProposals:
    """``n`` one- or two-choice mutations of the best finished trials for the proposal's goal.

    Attributes:
        n: mutations per proposal.
        incumbents: how many of the best finished trials are mutated.
    """

    n: int = 16
    incumbents: int = 4
    name: ClassVar[str] = "mutation"
    needs_agents: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_int_at_least("MutationProposals", self, {"n": 1, "incumbents": 1})

    def candidates(self, ctx: PoolContext) -> np.ndarray:
        obj = ctx.objective
        inc = obj.incumbents(ctx.history, ctx.goal, self.incumbents)
        n_dims = len(obj.space.dimensions())
        if len(inc) == 0:
            return np.zeros((0, n_dims), dtype=np.int64)
        sizes = np.array(obj.space.action_sizes())
        out = inc[ctx.rng.integers(len(inc), size=self.n)].copy()
        for row in out:
            for d in ctx.rng.choice(n_dims, size=min(int(ctx.rng.integers(1, 3)), n_dims), replace=False):
                row[d] = ctx.rng.integers(sizes[d])
        return out


@dataclass(frozen=True)
class RandomProposals:
    """``n`` uniform random points of the space.

    Attributes:
        n: points per proposal.
    """

    n: int = 64
    name: ClassVar[str] = "random"
    needs_agents: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_int_at_least("RandomProposals", self, {"n": 1})

    def candidates(self, ctx: PoolContext) -> np.ndarray:
        sizes = np.array(ctx.objective.space.action_sizes())
        return (ctx.rng.random((self.n, len(sizes))) * sizes).astype(np.int64)


Source = AgentProposals | GreedyProposal | MutationProposals | RandomProposals
#: scores(candidates M x D, how many sources produced each M) -> M scores (larger is better)
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pick(
    sources: Sequence[Any], ctx: PoolContext, avoid: set[tuple[int, ...]], score: ScoreFn
) -> tuple[np.ndarray, str] | None:
    """The best-scoring candidate not in ``avoid`` and its origin (module docstring), or None
    when every candidate is avoided."""
    blocks = [(s.name, np.asarray(s.candidates(ctx), dtype=np.int64)) for s in sources]
    blocks = [(n, c) for n, c in blocks if len(c)]
    if not blocks:
        return None
    everything = np.concatenate([c for _, c in blocks])
    tags = np.concatenate([np.full(len(c), i) for i, (_, c) in enumerate(blocks)])
    cands, inverse = np.unique(everything, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    keep = np.array([tuple(a) not in avoid for a in cands.tolist()], dtype=bool)
    if not keep.any():
        return None
    counts = np.bincount(inverse, minlength=len(cands))
    idx = np.flatnonzero(keep)
    best = idx[int(np.argmax(score(cands[idx], counts[idx])))]
    origin = sorted({int(t) for t in tags[inverse == best]})
    return cands[best], "+".join(dict.fromkeys(blocks[i][0] for i in origin))
