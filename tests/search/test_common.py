"""The sampler shell: what a strategy is shown when other workers change the study meanwhile."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from compsearch.search.common import CompressionSampler, params_key
from compsearch.search.registry import SearchContext
from compsearch.testing import toy_space


class _FinishesDuringRead(InMemoryStorage):
    """Another worker completes trial ``finish`` right after the next read of the trials."""

    def __init__(self) -> None:
        super().__init__()
        self.finish: tuple[int, list[float]] | None = None

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[optuna.trial.FrozenTrial]:
        out = super().get_all_trials(study_id, deepcopy, states)
        if self.finish is not None:
            trial_id, values = self.finish
            self.finish = None
            self.set_trial_state_values(trial_id, TrialState.COMPLETE, values)
        return out


class _Recorder(CompressionSampler):
    """Proposes distinct random points and records what it was shown."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        self.before_read: Any = None
        self.shown: list[tuple[list[int], list[dict[str, Any]]]] = []

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        if self.before_read is not None:
            self.before_read()
        return super().sample_relative(study, trial, search_space)

    def propose(self, study: Any, history: Any, pending: list[dict[str, Any]]) -> dict[str, Any]:
        self.shown.append(([o.number for o in history], pending))
        return self.random_params(avoid={params_key(p) for p in pending})


def test_a_trial_finishing_while_the_sampler_reads_is_seen_as_pending_not_lost() -> None:
    space = toy_space()
    storage = _FinishesDuringRead()
    sampler = _Recorder(SearchContext(space=space, seed=0))
    study = optuna.create_study(storage=storage, sampler=sampler, directions=["maximize", "minimize"])
    first = study.ask()
    space.suggest(first)
    proposed = {n: first.params[n] for n in space.param_names()}
    assert sampler.shown == [([], [])]

    # trial 0 completes (another worker) just after the sampler's read for trial 1 begins
    sampler.before_read = lambda: setattr(storage, "finish", (first._trial_id, [0.9, 100.0]))
    second = study.ask()
    space.suggest(second)
    history, pending = sampler.shown[1]
    # one snapshot: trial 0 was still running in it, so it is pending (two reads lost it: not
    # yet COMPLETE in the first, no longer RUNNING in the second)
    assert (history, pending) == ([], [proposed])
    assert study.trials[0].state == TrialState.COMPLETE
    assert {n: second.params[n] for n in space.param_names()} != proposed
