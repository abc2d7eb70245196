"""Our strategies never propose an equivalent of a finished or running policy (the shell's
``distinct``), and an exhausted space falls back to a repeat."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from compsearch.search.common import CompressionSampler, tried_keys
from compsearch.search.registry import SearchContext
from compsearch.spaces import get_space
from compsearch.testing import toy_objective, toy_units

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Stubborn(CompressionSampler):
    """Always proposes ``fixed`` (a strategy that keeps coming back to one policy)."""

    def __init__(self, ctx: SearchContext, fixed: dict[str, Any]) -> None:
        super().__init__(ctx)
        self.fixed = fixed

    def propose(self, study: Any, history: Any, pending: Any) -> dict[str, Any]:
        return dict(self.fixed)


def _space() -> Any:
    # uniform space: one choice per field for every searched unit; w_bits {4, 32}, keep 1.0 only
    return get_space("uniform", toy_units(), w_bits=[4, 32], a_bits=[32], keep=[1.0])


def test_an_equivalent_of_a_finished_policy_is_replaced_by_an_unseen_one() -> None:
    space = _space()
    # w 32 with asymmetric per-tensor and unstructured: equivalent to the identity (rules 3, 4)
    fixed = {"w_bits": 32, "scheme": "asymmetric", "granularity": "tensor", "structure": "unstructured"}
    sampler = _Stubborn(SearchContext(space=space, seed=0), fixed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(toy_objective(space), n_trials=5)
    keys = [space.canonical_key(t.params) for t in study.trials]
    # classes of this space: w 32 (1: scheme/granularity/structure irrelevant) + w 4 x 2 schemes x 2
    # granularities (structure irrelevant at keep 1.0) = 5: five trials, five classes
    assert study.trials[0].params == fixed
    assert len(set(keys)) == 5
    assert tried_keys(study, space, []) == set(keys)


def test_an_exhausted_space_repeats_a_policy() -> None:
    space = _space()
    sampler = _Stubborn(SearchContext(space=space, seed=0), {"w_bits": 32, "scheme": "symmetric",
                                                              "granularity": "channel", "structure": "channel"})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(toy_objective(space), n_trials=6)
    keys = [space.canonical_key(t.params) for t in study.trials]
    assert len(set(keys[:5])) == 5 and keys[5] in keys[:5]  # the 6th has nothing new left


def test_pending_and_interrupted_trials() -> None:
    """A running trial's policy is avoided; an interrupted (not counted) trial's is not a result."""
    from compsearch import record

    space = _space()
    study = optuna.create_study(directions=["maximize", "minimize"])
    running = study.ask()
    params = {"w_bits": 4, "scheme": "symmetric", "granularity": "channel", "structure": "channel"}
    record.record_proposal(study, running, params)
    pending = [params]
    assert tried_keys(study, space, pending) == {space.canonical_key(params)}
    record.tell_failure(study, running, "interrupted (KeyboardInterrupt)")
    assert tried_keys(study, space, []) == set()
    diverged = study.ask()
    record.record_proposal(study, diverged, params)
    record.tell_failure(study, diverged, "diverged: nan")
    assert tried_keys(study, space, []) == {space.canonical_key(params)}


@pytest.mark.parametrize("name", ["uniform8", "greedy-sensitivity"])
def test_heuristics_skip_equivalents_of_tried_policies(name: str) -> None:
    """The anchor walk and the greedy sweep step over policies equivalent to tried ones."""
    from compsearch.search.registry import get_strategy

    space = get_space("joint", toy_units(), w_bits=[4, 8, 16, 24], a_bits=[32], keep=[1.0])
    sampler = get_strategy(name, space=space, seed=0, objectives=[("accuracy", "maximize"), ("size_bits", "minimize")],
                           n_trials=8)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(toy_objective(space), n_trials=8)
    keys = [space.canonical_key(t.params) for t in study.trials]
    assert len(set(keys)) == 8
