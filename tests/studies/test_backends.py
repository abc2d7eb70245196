"""Several workers on one study: exact shared budget, journal file and a real PostgreSQL server."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from compsearch import optuna_compat
from compsearch.errors import ConfigError
from compsearch.record import read_metrics, read_policy
from compsearch.studies.hosts.base import worker_seed
from compsearch.studies.hosts.slots import (
    SLOT_ATTR,
    BudgetedStudy,
    BudgetSpent,
    pop_budget_trial,
    top_up_slots,
)
from compsearch.studies.hosts.workers import WorkerHost
from compsearch.studies.pgserver import find_postgres_bin, temporary_postgres
from compsearch.studies.results import counted_trials, load_studies
from compsearch.studies.storage import default_journal_storage, open_storage
from compsearch.testing import digits_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY_SPEC = digits_spec("tiny", trials=6, finetune={"steps": 3})


def _strategies() -> list[str]:
    from compsearch.search.registry import list_strategies

    known = list_strategies()
    return ["random"] + [s for s in ("hirl", "bo") if s in known]


# ---- budget slots, in one process ------------------------------------------------------


def test_top_up_enqueues_one_empty_waiting_trial_per_free_slot() -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # 2 unslotted counted trials
    assert top_up_slots(study, 5) == 3  # 5 - 2
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs[SLOT_ATTR] for t in waiting] == [2, 3, 4]  # the 2 trials hold slots 0, 1
    assert all(t.params == {} for t in waiting)
    assert top_up_slots(study, 5) == 0  # idempotent
    assert top_up_slots(study, 7) == 2  # a larger budget adds slots 5, 6


def test_pop_runs_exactly_the_budget_and_gives_up_duplicate_slots() -> None:
    study = optuna.create_study()
    top_up_slots(study, 3)
    top_up_slots(optuna.load_study(study_name=study.study_name, storage=optuna_compat.storage_of(study)), 3)  # idempotent
    # a second coordinator raced and enqueued slots 1 and 2 again:
    for k in (1, 2):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {}, SLOT_ATTR: k}))
    ran = []
    while (trial := pop_budget_trial(study, 3)) is not None:
        ran.append(trial.number)
        study.tell(trial, trial.suggest_float("x", 0, 1))
    assert ran == [0, 1, 2]
    trials = study.get_trials()
    assert len(counted_trials(trials)) == 3
    given_up = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in given_up] == [3, 4]
    assert all(t.user_attrs["fail_reason"].startswith("interrupted: duplicate of budget slot") for t in given_up)


def test_pop_refuses_when_unslotted_running_trials_fill_the_budget() -> None:
    study = optuna.create_study()
    top_up_slots(study, 2)
    optuna_compat.create_running_trial(study)  # another process runs an unslotted trial (#2)
    first = pop_budget_trial(study, 2)
    assert first is not None and first.number == 0
    assert pop_budget_trial(study, 2) is None  # #0 and #2 running fill the budget: slot 1 is given up
    assert study.get_trials()[1].user_attrs["fail_reason"] == "interrupted: budget of 2 trials already used or running"


def test_budgeted_study_raises_when_spent_and_delegates_the_rest() -> None:
    study = optuna.create_study()
    top_up_slots(study, 1)
    budgeted = BudgetedStudy(study, budget=1)
    trial = budgeted.ask()
    budgeted.tell(trial, 1.0)
    assert budgeted.study_name == study.study_name
    with pytest.raises(BudgetSpent):
        budgeted.ask()


def test_worker_seed_keeps_the_study_seed_for_worker_zero_only() -> None:
    seeds = [worker_seed(3, w) for w in range(4)]
    assert seeds[0] == 3 and len(set(seeds)) == 4
    assert seeds == [worker_seed(3, w) for w in range(4)]  # reproducible


def test_worker_host_rejects_a_bad_worker_count() -> None:
    with pytest.raises(ConfigError, match="workers=0 must be an integer >= 1"):
        WorkerHost(0)


# ---- budget slots, four processes racing on one journal file ------------------------------

_RACER = textwrap.dedent(
    """
    import random, sys, time, optuna
    from compsearch.studies.hosts.slots import pop_budget_trial
    from compsearch.studies.storage import open_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="race", storage=open_storage(sys.argv[1]))
    rng = random.Random(int(sys.argv[2]))
    while (trial := pop_budget_trial(study, 12)) is not None:
        x = trial.suggest_int("x", 0, 10**9)
        time.sleep(rng.uniform(0, 0.05))
        study.tell(trial, x)
    """
)


def test_four_processes_share_one_budget_exactly(tmp_path: Path) -> None:
    url = default_journal_storage(tmp_path)
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    top_up_slots(study, 12)
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, url, str(i)]) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    trials = optuna.load_study(study_name="race", storage=open_storage(url)).get_trials()
    assert len(trials) == 12  # nothing created beyond the slots
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.system_attrs[SLOT_ATTR] for t in trials) == list(range(12))


# ---- the digits CNN with real evaluations ----------------------------------------------------


def _check_jobs(storage: optuna.storages.BaseStorage, strategies: list[str], budget: int) -> list[tuple[str, int, int]]:
    """Assert the exact budget per study; return concurrent trials with identical params."""
    studies = load_studies(storage)
    duplicates: list[tuple[str, int, int]] = []
    assert sorted(studies) == sorted((s, 0) for s in strategies)
    for (strategy, _), trials in studies.items():
        done = counted_trials(trials)
        assert len(done) == budget, strategy
        assert all(t.state == TrialState.COMPLETE for t in done), strategy
        assert sorted(t.system_attrs[SLOT_ATTR] for t in done) == list(range(budget)), strategy
        assert all(read_policy(t) and read_metrics(t) for t in done)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        for a, b in itertools.combinations(done, 2):  # duplicate proposals among concurrent trials
            if a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete and a.params == b.params:
                duplicates.append((strategy, a.number, b.number))
    return duplicates


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose base model is trained once for every test here."""
    from compsearch.studies.run import prepare

    out = tmp_path_factory.mktemp("base-run")
    prepare(TINY_SPEC, out, storage=default_journal_storage(out))
    return out / "base"


def _prepared(tmp_path: Path, base_cache: Path, storage: str) -> object:
    from compsearch.studies.run import prepare

    shutil.copytree(base_cache, tmp_path / "base")
    return prepare(TINY_SPEC, tmp_path, storage=storage)


def test_two_workers_on_a_journal_file_run_each_budget_exactly(tmp_path: Path, base_cache: Path) -> None:
    ctx = _prepared(tmp_path, base_cache, default_journal_storage(tmp_path))
    strategies = _strategies()
    stale = optuna.create_study(study_name="random-s0", storage=ctx.storage, directions=ctx.directions)
    stale.ask()  # a trial left RUNNING by a killed run: marked interrupted and re-run
    host = WorkerHost(2)
    host.run(ctx, [(s, 0) for s in strategies], quiet=True)
    assert host.enqueued == 6 * len(strategies)
    assert _check_jobs(ctx.storage, strategies, 6) == []
    first = optuna.load_study(study_name="random-s0", storage=ctx.storage).get_trials()[0]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith("interrupted")
    # a re-run with the budget already spent evaluates nothing
    host.run(ctx, [(s, 0) for s in strategies], quiet=True)
    assert host.enqueued == 0


@pytest.fixture(scope="session")
def postgres_url():
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin or on PATH; "
                    "install them with: apt-get update && apt-get install -y postgresql")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2 is missing (pip install psycopg2-binary)")
    with temporary_postgres() as url:
        yield url


# ~35 s on 2 busy cores: a PostgreSQL server, 3 spawned workers
def test_three_workers_on_postgresql_run_each_budget_exactly(tmp_path: Path, base_cache: Path, postgres_url: str) -> None:
    ctx = _prepared(tmp_path, base_cache, postgres_url)
    strategies = _strategies()
    WorkerHost(3).run(ctx, [(s, 0) for s in strategies], quiet=True)
    assert _check_jobs(open_storage(postgres_url), strategies, 6) == []


def test_storage_lock_hands_its_token_on_and_breaks_a_stale_one() -> None:
    from compsearch.studies.hosts.lock import StorageLock

    storage = optuna.storages.InMemoryStorage()
    lock = StorageLock(storage, "job", stale_after=3600)
    with lock:
        assert lock.study.get_trials(states=(TrialState.WAITING,)) == []  # the only token is held
    assert len(lock.study.get_trials(states=(TrialState.WAITING,))) == 1
    dead = StorageLock(storage, "job")  # a second process: no new token for an existing lock
    dead.acquire()  # ... which then dies holding it
    eager = StorageLock(storage, "job", stale_after=0.0)
    eager.acquire()  # breaks the abandoned token (held > 0 s) and takes the replacement
    states = [t.state for t in eager.study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]


def test_postgresql_needs_its_password_and_run_json_never_shows_it(tmp_path: Path, base_cache: Path,
                                                                   postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy

    from compsearch.errors import ConfigError
    from compsearch.studies.runner import run_study
    from compsearch.studies.storage import ENV_STORAGE, redact

    password = sqlalchemy.engine.make_url(postgres_url).password
    assert password  # the test server uses password authentication
    with pytest.raises(ConfigError, match="cannot be opened"):
        open_storage(postgres_url.replace(f":{password}@", "@"))  # no password: refused by the server
    shutil.copytree(base_cache, tmp_path / "base")
    spec = {**TINY_SPEC, "name": "pg", "trials": 1}
    from compsearch.studies.runfile import stamp_study

    foreign = optuna.create_study(study_name="random-s0", storage=open_storage(postgres_url), load_if_exists=True)
    stamp_study(foreign, "another-run")  # (kept when the 3-worker test's run stamped it first)
    with pytest.raises(ConfigError, match=r"already holds a study 'random-s0' of another run"):
        run_study(spec, tmp_path, storage=postgres_url, quiet=True)  # never mixed into another run's study
    spec["seeds"] = [7]  # a study of its own: random-s7
    run_study(spec, tmp_path, storage=postgres_url, quiet=True)
    text = (tmp_path / "run.json").read_text()
    assert password not in text and redact(postgres_url) in text
    monkeypatch.delenv(ENV_STORAGE, raising=False)
    with pytest.raises(ConfigError, match=f"needs its password.*{ENV_STORAGE}"):
        run_study(spec, tmp_path, quiet=True)  # a resume needs the URL again
    monkeypatch.setenv(ENV_STORAGE, postgres_url)
    run_study(spec, tmp_path, quiet=True)  # ... from the environment: nothing left to run
    assert len(load_studies(open_storage(postgres_url))[("random", 7)]) == 1


def test_a_resume_beside_other_machines_recovers_only_trials_of_ended_local_workers() -> None:
    import socket

    from compsearch.studies.hosts.base import mark_interrupted
    from compsearch.studies.hosts.slots import WORKER_ATTR

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    study = optuna.create_study()
    owners = [f"{socket.gethostname()}:{ended.pid}/0",  # a worker of this machine that ended: re-run now
              f"{socket.gethostname()}:{os.getpid()}/1",  # a live local worker: keep
              f"elsewhere:{ended.pid}/0"]  # another machine: never judged here
    for owner in owners:
        tid = optuna_compat.create_running_trial(study)
        optuna_compat.set_trial_system_attr(study, tid, WORKER_ATTR, owner)
    assert mark_interrupted(study, all_running=False) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    assert study.get_trials()[0].user_attrs["fail_reason"].startswith("interrupted")
