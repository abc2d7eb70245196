"""Every registered strategy in every host, driven in this process on the toy space: a shared
Optuna storage with two workers (budget slots), the Ray Tune searcher, the NNI tuner.

Three trials run at once in each host; a compsearch strategy (a ``CompressionSampler``)
must give them three different policies (it sees the others as pending). The real hosts
(worker processes, a Ray cluster, an NNI experiment) run with the digits CNN in
tests/studies/test_backends.py, tests/search/test_tune.py and tests/search/test_nni.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from compsearch.search.common import CompressionSampler, params_key
from compsearch.search.registry import get_strategy, list_strategies
from compsearch.studies.hosts.base import worker_seed
from compsearch.studies.hosts.slots import BudgetedStudy, top_up_slots
from compsearch.studies.storage import default_journal_storage, open_storage
from compsearch.testing import toy_accuracy, toy_size_bits, toy_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJECTIVES = (("accuracy", "maximize"), ("size_bits", "minimize"))
STRATEGIES = [s for s in list_strategies() if s != "botorch-optuna"]  # its model-based phase is a slow test


def _metrics(space: Any, params: dict[str, Any]) -> dict[str, float]:
    policy = space.decode({n: params[n] for n in space.param_names()})
    return {"accuracy": toy_accuracy(policy, space.all_units), "size_bits": toy_size_bits(policy, space.all_units)}


def _avoids_pending(name: str) -> bool:
    return isinstance(get_strategy(name, space=toy_space(), seed=0), CompressionSampler)


def _check(space: Any, name: str, concurrent: list[dict[str, Any]], study: optuna.Study, n: int) -> None:
    assert all(space.contains({k: p[k] for k in space.param_names()}) for p in concurrent)
    if _avoids_pending(name):
        assert len({params_key(p) for p in concurrent}) == len(concurrent), f"{name} repeated a running policy"
    assert [t.state for t in study.get_trials()].count(TrialState.COMPLETE) == n


@pytest.mark.parametrize("name", STRATEGIES)
def test_two_workers_on_one_storage(name: str, tmp_path: Path) -> None:
    space = toy_space()
    url = default_journal_storage(tmp_path)
    optuna.create_study(study_name="job", storage=open_storage(url), directions=["maximize", "minimize"])
    top_up_slots(optuna.load_study(study_name="job", storage=open_storage(url)), 4)
    workers = []
    for w in range(2):  # each "worker" has its own storage handle and sampler, as in its own process
        sampler = get_strategy(name, space=space, seed=worker_seed(0, w), objectives=OBJECTIVES, n_trials=4)
        study = optuna.load_study(study_name="job", storage=open_storage(url), sampler=sampler)
        workers.append(BudgetedStudy(study, budget=4, space=space))
    running = [workers[0].ask(), workers[1].ask(), workers[0].ask()]
    concurrent = [dict(t.params) for t in running]
    for worker, trial in zip((0, 1, 0), running, strict=True):
        workers[worker].tell(trial, list(_metrics(space, trial.params).values()))
    last = workers[1].ask()
    workers[1].tell(last, list(_metrics(space, last.params).values()))
    _check(space, name, concurrent, workers[0], 4)


@pytest.mark.parametrize("name", STRATEGIES)
def test_ray_tune_searcher(name: str) -> None:
    pytest.importorskip("ray.tune", reason="Ray Tune is optional (pip install 'compsearch[ray]')")
    from ray import cloudpickle

    from compsearch import tune_searcher

    space = toy_space()
    searcher = tune_searcher(name, space, OBJECTIVES, seed=0, n_trials=4)
    cloudpickle.loads(cloudpickle.dumps(searcher))  # tune.Tuner pickles its searcher
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    concurrent = [c["params"] for c in configs.values()]
    for trial_id, config in configs.items():
        searcher.on_trial_complete(trial_id, {**_metrics(space, config["params"]), "final": 1.0})
    last = searcher.suggest("t3")
    searcher.on_trial_complete("t3", {**_metrics(space, last["params"]), "final": 1.0})
    assert searcher.suggest("t4") == "FINISHED"
    _check(space, name, concurrent, searcher.study, 4)


@pytest.mark.parametrize("name", STRATEGIES)
def test_nni_tuner(name: str) -> None:
    pytest.importorskip("nni", reason="NNI is optional (pip install 'compsearch[nni]')")
    from compsearch.nni_tuner import StrategyTuner

    space = toy_space()
    tuner = StrategyTuner(space=space, objectives=OBJECTIVES, strategy=name, seed=0, n_trials=4)
    tuner.update_search_space(space.nni_search_space())
    concurrent = [tuner.generate_parameters(i) for i in range(3)]
    for i, params in enumerate(concurrent):
        tuner.receive_trial_result(i, params, {"default": 0.0, **_metrics(space, params)})
    last = tuner.generate_parameters(3)
    tuner.receive_trial_result(3, last, {"default": 0.0, **_metrics(space, last)})
    _check(space, name, concurrent, tuner.study, 4)


class _FakeTime:
    """A clock that advances only by the sleeps; ``on_sleep(n)`` runs after the n-th sleep."""

    def __init__(self, on_sleep: Any = None) -> None:
        self.now, self.on_sleep = 0.0, on_sleep
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


def test_wait_running_returns_when_the_last_running_trial_ends_or_at_the_timeout() -> None:
    from compsearch.studies.hosts.workers import wait_running

    study = optuna.create_study()
    running = study.ask()
    other_worker = _FakeTime(on_sleep=lambda n: study.tell(running, 1.0) if n == 3 else None)  # ends after 3 polls
    assert wait_running(study, timeout=10.0, poll=2.0, clock=other_worker.clock, sleep=other_worker.sleep) is True
    assert other_worker.sleeps == [2.0, 2.0, 2.0]
    study.ask()  # a trial nobody finishes (its worker died): give up at the timeout, 10 s = 5 polls of 2 s
    dead = _FakeTime()
    assert wait_running(study, timeout=10.0, poll=2.0, clock=dead.clock, sleep=dead.sleep) is False
    assert dead.sleeps == [2.0] * 5
