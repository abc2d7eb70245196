"""The registered ``hirl`` variants: the default, the full hierarchy and its single-part ablations.

=================== ======================================================================
name                parts
=================== ======================================================================
``hirl``            :func:`default_parts`: agents, greedy rollout and mutations of the best
                    trials scored by the surrogate; no high level, no Fisher prior; budget
                    targets at the front's gaps as often as quality saturates
                    (:class:`~compsearch.search.rl.goals.SaturationGaps`)
``hirl-sweep``      ``hirl`` with every budget target from the sweep (the default before
                    saturation gaps; :class:`~compsearch.search.rl.goals.SweepGoals`)
``hirl-full``       :func:`full_parts`: the hierarchy as HiReLC describes it (high level of
                    K=3 voting agents, Fisher prior), proposals from the agents and their
                    greedy rollout only
``hirl-mutations``  ``hirl-full``, and the pool also holds 16 one-/two-choice mutations of the
                    4 best trials (as ``sls``)
``hirl-flat``       ``hirl-full`` without the high level: every block's budget is the global target
``hirl-real``       ``hirl-full`` without the surrogate: the agents learn from real trials only
``hirl-nofisher``   ``hirl-full`` without the Fisher prior (no sensitivity features, no allocation prior)
``hirl-curriculum`` ``hirl-full`` with a curriculum on the compression target (mild targets first)
``hirl-front``      ``hirl-full`` proposing the candidate with the largest predicted hypervolume
                    gain (:class:`~compsearch.search.rl.critic.FrontRewards`), not the best for its goal
=================== ======================================================================

The ablations change one part of ``hirl-full`` each; ``hirl-sweep`` is ``hirl-full`` with the
three parts they did not credit swapped at once (``hirl-mutations`` + ``hirl-flat`` +
``hirl-nofisher``), measured as a whole since the parts' effects need not add up, and ``hirl``
is ``hirl-sweep`` with saturation gaps (measured against it on fresh seeds). ``sls``
(:mod:`compsearch.search.sls`) proposes only random points and mutations, scored by the same
surrogate: beside ``hirl-full`` and ``hirl-mutations`` it separates what the agents contribute.
"""

from __future__ import annotations

from typing import Any

from compsearch.errors import UnknownNameError
from compsearch.search.rl.allocation import EnsembleAllocation, FixedAllocation
from compsearch.search.rl.critic import (
    BudgetCurriculum,
    FrontRewards,
    NoCurriculum,
    RealRewards,
    SurrogateRewards,
)
from compsearch.search.rl.goals import SaturationGaps, SweepGoals
from compsearch.search.rl.ppo import SharedLowLevel
from compsearch.search.rl.proposals import AgentProposals, GreedyProposal, MutationProposals
from compsearch.search.rl.state import FisherPrior, NoPrior


def default_parts() -> dict[str, Any]:
    """The parts of the default ``hirl`` (see the module docstring)."""
    return {
        "allocation": FixedAllocation(), "low_level": SharedLowLevel(), "rewards": SurrogateRewards(), "prior": NoPrior(),
        "sources": (AgentProposals(), GreedyProposal(), MutationProposals()), "curriculum": NoCurriculum(),
        "goals": SaturationGaps(),
    }


def full_parts() -> dict[str, Any]:
    """The parts of ``hirl-full``, the hierarchy as HiReLC describes it (module docstring)."""
    return {
        **default_parts(), "allocation": EnsembleAllocation(), "prior": FisherPrior(), "sources": (AgentProposals(), GreedyProposal()),
        "goals": SweepGoals(),
    }


FULL = full_parts()
VARIANTS: dict[str, dict[str, Any]] = {
    "hirl": default_parts(),
    "hirl-full": FULL,
    "hirl-mutations": {**FULL, "sources": (AgentProposals(), GreedyProposal(), MutationProposals())},
    "hirl-flat": {**FULL, "allocation": FixedAllocation()},
    "hirl-real": {**FULL, "rewards": RealRewards()},
    "hirl-nofisher": {**FULL, "prior": NoPrior()},
    "hirl-curriculum": {**FULL, "curriculum": BudgetCurriculum()},
    "hirl-front": {**FULL, "rewards": FrontRewards()},
    "hirl-sweep": {**default_parts(), "goals": SweepGoals()},
}


def variant_parts(name: str) -> dict[str, Any]:
    """Every part of variant ``name`` (module docstring).

    Raises:
        UnknownNameError: ``name`` is not a variant.
    """
    if name not in VARIANTS:
        raise UnknownNameError(f"hirl variant {name!r} is unknown; known: {sorted(VARIANTS)}")
    return dict(VARIANTS[name])
