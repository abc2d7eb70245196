"""Trial-number seeding: a strategy's randomness depends on (seed, trial number), not on history.

A sampler seeded once draws one sequence from its start; a study killed and resumed
with a new sampler object would restart it (a resumed ``random`` proposed its first
policies again). Seeding every trial from ``(seed, trial number)`` makes trial ``k`` draw
the same numbers whether or not the process was restarted before it, and gives two
workers (different seeds) different numbers. compsearch's own strategies re-seed in
:class:`~compsearch.search.common.CompressionSampler`; Optuna's samplers are wrapped in
:class:`TrialSeededSampler` by the strategy registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from compsearch import optuna_compat

if TYPE_CHECKING:
    from optuna.study import Study


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` of a sampler seeded ``seed``: a 32-bit value of
    ``numpy.random.SeedSequence([seed, number])`` (distinct per trial, the same in any process)."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Wraps one of Optuna's seeded samplers so its randomness depends on the trial number.

    Optuna's samplers draw from one generator seeded once: a study resumed with a new
    sampler object restarts the sequence (a resumed ``random`` proposes its first policies
    again; every seeded start-up phase does the same). Before every trial this wrapper
    re-seeds the inner sampler's generators from ``(seed, trial number)``
    (:func:`compsearch.optuna_compat.reseed_sampler`), so trial ``k`` draws the same numbers
    whether or not the process was restarted before it. Every other call is delegated.

    Args:
        sampler: the Optuna sampler (``RandomSampler``, ``TPESampler``, ``NSGAIISampler``,
            ``NSGAIIISampler``, ``GPSampler``, ``BoTorchSampler``, ...).
        seed: the strategy seed.
    """

    def __init__(self, sampler: BaseSampler, seed: int) -> None:
        self.sampler = sampler
        self.seed = int(seed)

    def __getattr__(self, name: str) -> Any:  # the inner sampler's attributes (population_size, ...)
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        optuna_compat.reseed_sampler(self.sampler, trial_seed(self.seed, trial.number))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


__all__ = ["TrialSeededSampler", "trial_seed"]
