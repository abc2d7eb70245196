"""Where each proposal's goal comes from (a part of ``sls`` and ``hirl``).

* :class:`SweepGoals` (``sls``'s and ``hirl-full``'s): proposal ``n`` uses
  :meth:`~compsearch.search.rl.objective.StrategyObjective.proposal_goal`, the low-discrepancy
  sweep over the cost range.
* :class:`SaturationGaps` (``hirl``'s): in budget mode with one learned objective, proposal ``n`` aims at the
  largest gap of the feasible front (:meth:`~compsearch.search.rl.objective.StrategyObjective.gap_goal`)
  with probability ``s``, the fraction of finished trials whose quality ties the best one
  (:meth:`~compsearch.search.rl.objective.StrategyObjective.saturation`); otherwise the sweep.
  When quality saturates (an RL policy whose return hits the episode cap), the front is a shelf
  that grows only along cost and the sweep wastes proposals where it cannot grow; when quality
  keeps varying (a classifier's accuracy), ``s`` stays small and the sweep is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compsearch.search.common import Observation
from compsearch.search.rl.objective import StrategyObjective


@dataclass(frozen=True)
class SweepGoals:
    """The sweep: proposal ``index``'s goal is ``obj.proposal_goal(index)``."""

    name = "sweep"

    def goal(self, obj: StrategyObjective, history: Sequence[Observation], index: int, seed: int) -> float:
        """Goal of proposal ``index``."""
        return obj.proposal_goal(index)


@dataclass(frozen=True)
class SaturationGaps:
    """The front's largest gap with probability = the quality's saturation (module docstring)."""

    name = "saturation-gaps"

    def goal(self, obj: StrategyObjective, history: Sequence[Observation], index: int, seed: int) -> float:
        """Goal of proposal ``index``: a gap target or the sweep's, chosen by a coin seeded by ``(seed, index)``."""
        if obj.mode == "budget" and len(obj.learned) == 1:
            if np.random.default_rng([seed, index, 13]).random() < obj.saturation(history):
                target = obj.gap_goal(history)
                if target is not None:
                    return target
        return obj.proposal_goal(index)
