"""The registered ``hirl`` variants: the default strategy and one ablation per part.

=================== ======================================================================
name                what differs from ``hirl``
=================== ======================================================================
``hirl``            nothing (the parts of :func:`~compsearch.search.hirl.sampler.default_parts`)
``hirl-mutations``  the pool also holds 16 one-/two-choice mutations of the 4 best trials (as ``sls``)
``hirl-flat``       no high level: every block's budget is the global target
``hirl-real``       no surrogate: the agents learn from real trials only
``hirl-nofisher``   no Fisher prior (no sensitivity features, no allocation prior)
``hirl-curriculum`` a curriculum on the compression target (mild targets first)
``hirl-front``      the proposal is the candidate with the largest predicted hypervolume gain
                    (:class:`~compsearch.search.rl.critic.FrontRewards`), not the best for its goal
``hirl-lean``       the parts the single-part ablations did not credit swapped as they suggest:
                    mutations in the pool, no high level, no Fisher prior (one variant, measured
                    as a whole: the parts' effects need not add up)
=================== ======================================================================

The default ``hirl`` proposes only what its agents sample (plus their greedy rollout); ``sls``
(:mod:`compsearch.search.sls`) proposes only random points and mutations, scored by the same
surrogate: together with ``hirl-mutations`` they separate what the agents contribute.
"""

from __future__ import annotations

from typing import Any

from compsearch.errors import UnknownNameError
from compsearch.search.rl.allocation import FixedAllocation
from compsearch.search.rl.critic import BudgetCurriculum, FrontRewards, RealRewards
from compsearch.search.rl.proposals import AgentProposals, GreedyProposal, MutationProposals
from compsearch.search.rl.state import NoPrior

VARIANTS: dict[str, dict[str, Any]] = {
    "hirl": {},
    "hirl-mutations": {"sources": (AgentProposals(), GreedyProposal(), MutationProposals())},
    "hirl-flat": {"allocation": FixedAllocation()},
    "hirl-real": {"rewards": RealRewards()},
    "hirl-nofisher": {"prior": NoPrior()},
    "hirl-curriculum": {"curriculum": BudgetCurriculum()},
    "hirl-front": {"rewards": FrontRewards()},
}
VARIANTS["hirl-lean"] = {**VARIANTS["hirl-mutations"], **VARIANTS["hirl-flat"], **VARIANTS["hirl-nofisher"]}


def variant_parts(name: str) -> dict[str, Any]:
    """The parts variant ``name`` replaces (module docstring).

    Raises:
        UnknownNameError: ``name`` is not a variant.
    """
    if name not in VARIANTS:
        raise UnknownNameError(f"hirl variant {name!r} is unknown; known: {sorted(VARIANTS)}")
    return dict(VARIANTS[name])
