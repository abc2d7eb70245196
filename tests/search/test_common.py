"""The sampler shell: what a strategy is shown when other workers change the study meanwhile."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
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


# ---- resume: every strategy continues its sequence ------------------------------------------------

OBJECTIVES = (("accuracy", "maximize"), ("size_bits", "minimize"))
#: small start-up phases, so 8 trials reach the model-based / evolutionary phase of each
OPTIONS: dict[str, dict[str, Any]] = {"tpe": {"n_startup_trials": 3}, "gp": {"n_startup_trials": 4},
                                      "nsga2": {"population_size": 4}, "nsga3": {"population_size": 4}}
DETERMINISTIC = ["random", "tpe", "nsga2", "nsga3", "gp", "bo", "greedy-sensitivity", "uniform4", "uniform8"]
LEARNING = ["hirl", "hirl-sweep", "hirl-mutations", "hirl-flat", "hirl-real", "hirl-nofisher", "hirl-curriculum", "hirl-front", "hirl-full", "sls", "n2n", "amc", "haq"]


def _params(name: str, n: int, *, kill_after: int | None = None, seed: int = 3) -> list[tuple[Any, ...]]:
    """Params of ``n`` trials of strategy ``name``; with ``kill_after = k`` the sampler (as in a
    killed process) is replaced by a new object with the same seed after ``k`` trials."""
    from compsearch.search.registry import get_strategy
    from compsearch.testing import toy_objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, storage = toy_space(), InMemoryStorage()

    def sampler() -> Any:
        return get_strategy(name, space=space, seed=seed, objectives=OBJECTIVES, n_trials=n, **OPTIONS.get(name, {}))

    study = optuna.create_study(storage=storage, sampler=sampler(), directions=["maximize", "minimize"])
    study.optimize(toy_objective(space), n_trials=n if kill_after is None else kill_after)
    if kill_after is not None:
        resumed = optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler())
        resumed.optimize(toy_objective(space), n_trials=n - kill_after)
    return [params_key(t.params) for t in study.get_trials()]


def test_an_unwrapped_seeded_sampler_restarts_its_sequence_after_a_resume() -> None:
    """What a resume did before trial-number seeding: a new RandomSampler(seed=3) replays trial 0."""
    space, storage = toy_space(), InMemoryStorage()
    from compsearch.testing import toy_objective

    for _ in range(2):
        study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                    sampler=optuna.samplers.RandomSampler(seed=3), directions=["maximize", "minimize"])
        study.optimize(toy_objective(space), n_trials=2)
    trials = study.get_trials()
    assert params_key(trials[2].params) == params_key(trials[0].params)  # the policy is evaluated twice


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_a_resumed_study_continues_the_uninterrupted_sequence(name: str) -> None:
    n, k = (5, 4) if name == "gp" else (8, 4)  # gp: its one GP proposal comes after the kill (each takes seconds)
    whole = _params(name, n)
    resumed = _params(name, n, kill_after=k)
    assert resumed == whole
    assert len(set(resumed)) == len(resumed)  # no policy evaluated twice


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNING)
def test_a_resumed_learning_strategy_evaluates_no_policy_twice(name: str) -> None:
    resumed = _params(name, 7, kill_after=4)
    assert len(set(resumed)) == len(resumed)


@pytest.mark.parametrize("name", ["sls", "hirl", "amc", "n2n"])
def test_a_failed_candidate_is_spent_for_every_strategy(name: str) -> None:
    """Keep ratios in {0.5, 1.0} on 3 units (for ``n2n``: keep or remove 4 blocks): 8 (16)
    policies. All but the last FAILED for a reason of their own (a diverged fine-tune), which
    keeps them out of the history a strategy learns from; the strategy's own proposal, before
    the framework's de-duplication, must be the last (a uniform draw that ignored the failures
    would pick a failed one with probability 7/8, 15/16)."""
    import itertools

    from compsearch import record
    from compsearch.search.common import observations
    from compsearch.search.registry import get_strategy

    if name == "n2n":
        space = toy_space("depth")
    else:
        space = toy_space("joint", w_bits=[8], a_bits=[32], keep=[0.5, 1.0], scheme="symmetric",
                          granularity="channel", structure="channel")
    sizes = space.action_sizes()
    points = [space.params_from_actions(list(a)) for a in itertools.product(*(range(n) for n in sizes))]
    assert len(points) == (16 if name == "n2n" else 8)
    failed, last = points[:-1], points[-1]
    dists = space.optuna_distributions()
    for seed in range(4):
        sampler = get_strategy(name, space=space, seed=seed)
        study = optuna.create_study(directions=["maximize", "minimize"])
        for p in failed:
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.FAIL, params=p, distributions=dists,
                user_attrs={record.FAIL_REASON_ATTR: "diverged: FineTuneDiverged: test"}))
        assert sorted(map(params_key, sampler.spent(study, observations(study, space), []))) == sorted(map(params_key, failed))
        assert sampler.propose(study, observations(study, space), []) == last
