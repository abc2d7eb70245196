"""Storage faults and secrets: torn journals, redaction, run-folder references, emptied or
replaced storages, moved run folders, and the storage lock of a killed process."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from compsearch.errors import ConfigError, SpecError
from compsearch.studies import runfile
from compsearch.studies.hosts.lock import StorageLock, owner_ended
from compsearch.studies.storage import (
    ENV_STORAGE,
    check_spec_storage,
    default_journal_storage,
    default_storage,
    open_storage,
    record_of,
    redact,
    repair_journal,
    url_from_record,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
PG = "postgresql+psycopg2://alice:s3cret@db.example:5432/runs?sslmode=require&password=hunter2"


# ---- URLs, records, secrets ----------------------------------------------------------------


def test_storage_urls(tmp_path: Path) -> None:
    from optuna.storages import JournalStorage, RDBStorage

    assert isinstance(open_storage(f"journal://{tmp_path / 'j' / 'journal.log'}"), JournalStorage)
    assert isinstance(open_storage("journal://rel.log", out_dir=tmp_path), JournalStorage)
    assert isinstance(open_storage(default_storage(tmp_path)), RDBStorage)
    with pytest.raises(ConfigError, match="not a URL"):
        open_storage("studies.db")


def test_redaction_hides_passwords_and_secret_query_values() -> None:
    assert redact(PG) == "postgresql+psycopg2://alice:***@db.example:5432/runs?password=***&sslmode=require"
    assert redact("sqlite:////tmp/x/studies.db") == "sqlite:////tmp/x/studies.db"
    with pytest.raises(ConfigError) as info:
        open_storage("postgresql+psycopg2://alice:s3cret@127.0.0.1:1/runs")  # nothing listens on port 1
    assert "s3cret" not in str(info.value) and "alice:***@" in str(info.value)


def test_run_json_records_in_folder_storages_relative_and_others_without_secrets(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert record_of(default_storage(tmp_path), tmp_path) == "sqlite:studies.db"
    assert record_of(default_journal_storage(tmp_path), tmp_path) == "journal:journal.log"
    assert url_from_record("journal:journal.log", tmp_path) == f"journal://{tmp_path.resolve() / 'journal.log'}"
    assert record_of(PG, tmp_path) == redact(PG)
    monkeypatch.delenv(ENV_STORAGE, raising=False)
    with pytest.raises(ConfigError, match=f"needs its password.*--storage URL or in the environment variable {ENV_STORAGE}"):
        url_from_record(redact(PG), tmp_path)
    monkeypatch.setenv(ENV_STORAGE, PG)
    assert url_from_record(redact(PG), tmp_path) == PG


@pytest.mark.parametrize("value", ["sqlite:////etc/studies.db", "journal:///tmp/x.log", "../up.db", "a/b.db",
                                   "postgresql://u@h/db", "notes.txt", ""])
def test_a_spec_storage_stays_in_the_run_folder(value: str) -> None:
    with pytest.raises(ConfigError, match="only choose the storage inside the run folder"):
        check_spec_storage(value)
    assert [check_spec_storage(v) for v in ("sqlite", "journal", "mine.db", "mine.log")] == ["sqlite", "journal",
                                                                                            "mine.db", "mine.log"]


# ---- the journal file --------------------------------------------------------------------------


def _journal_with_two_trials(path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal://{path}"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)


def test_a_torn_journal_tail_is_cut_off_and_kept_as_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    _journal_with_two_trials(path)
    whole = path.read_bytes()
    torn = b'{"op_code": 5, "worker_id": "x", "trial_id": 2, "sta'  # a write cut short: 52 bytes, no newline
    path.write_bytes(whole + torn)
    note = repair_journal(path)
    assert len(torn) == 52 and note is not None and "incomplete record (52 bytes" in note
    assert path.read_bytes() == whole
    (copy,) = tmp_path.glob("journal.log.torn-*")
    assert copy.read_bytes().endswith(b'"sta')
    # the repaired journal takes more records and reads back whole
    storage = open_storage(f"journal://{path}", repair=True)
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(optuna.load_study(study_name="s", storage=open_storage(f"journal://{path}")).trials) == 3
    assert repair_journal(path) is None  # whole: nothing to do


def test_a_damaged_journal_line_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    _journal_with_two_trials(path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:10]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ConfigError, match=r"line 3 is not a complete record"):
        repair_journal(path)


# ---- run.json guards ----------------------------------------------------------------------------


def _fake_run(out: Path, counts: dict[str, int], n: int) -> None:
    """A run folder whose run.json recorded ``counts`` and whose SQLite storage holds ``n`` trials."""
    out.mkdir(parents=True, exist_ok=True)
    run = runfile.run_id(out)
    study = optuna.create_study(study_name="random-s0", storage=open_storage(default_storage(out)))
    runfile.stamp_study(study, run)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    runfile.update(out, storage="sqlite:studies.db", trials=counts)


def test_an_emptied_or_replaced_storage_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _fake_run(out, {"random-s0": 3}, 3)
    url = url_from_record("sqlite:studies.db", out)
    runfile.check_studies(out, url)  # as recorded: fine
    other = tmp_path / "other"
    _fake_run(other, {"random-s0": 5}, 5)
    shutil.copy(other / "studies.db", out / "studies.db")  # another run's storage, more trials
    with pytest.raises(ConfigError, match=r"holds a study 'random-s0' of another run .*Nothing was run"):
        runfile.check_studies(out, url)
    (out / "studies.db").unlink()
    with pytest.raises(ConfigError, match=r"does not exist \(run.json recorded 3 trials in it\)"):
        runfile.check_studies(out, url)
    assert not (out / "studies.db").exists()  # refused before an empty one was created
    fresh = tmp_path / "fresh"  # a new run pointed at another run's storage: its study is not mixed in
    fresh.mkdir()
    runfile.run_id(fresh)
    with pytest.raises(ConfigError, match=r"already holds a study 'random-s0' of another run"):
        runfile.check_studies(fresh, url_from_record("sqlite:studies.db", other), ["random-s0", "tpe-s0"])
    runfile.check_studies(fresh, url_from_record("sqlite:studies.db", other), ["tpe-s0"])  # other studies: fine
    optuna.create_study(study_name="random-s0", storage=open_storage(url))  # an emptied storage
    with pytest.raises(ConfigError, match=r"holds 0 trials of study 'random-s0', run.json recorded 3"):
        runfile.check_studies(out, url)


def test_a_moved_run_folder_resumes_in_place(tmp_path: Path) -> None:
    _fake_run(tmp_path / "a", {"random-s0": 2}, 2)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    url = url_from_record(runfile.read(tmp_path / "b")["storage"], tmp_path / "b")
    assert url == f"sqlite:///{(tmp_path / 'b' / 'studies.db').resolve()}"
    runfile.check_studies(tmp_path / "b", url)
    # an older run.json with the absolute path of the old place still finds the moved file
    assert url_from_record(f"sqlite:///{tmp_path / 'a' / 'studies.db'}", tmp_path / "b") == url


# ---- the storage lock ------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time, optuna
    from compsearch.studies.hosts.lock import StorageLock
    from compsearch.studies.storage import open_storage
    lock = StorageLock(open_storage(sys.argv[1]), "job")
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_lock_held_by_a_killed_process_is_recovered_at_once(tmp_path: Path) -> None:
    url = default_journal_storage(tmp_path)
    StorageLock(open_storage(url), "job")  # the lock and its first token exist before the holder starts
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert owner_ended(f"{socket.gethostname()}:{holder.pid}")
    lock = StorageLock(open_storage(url), "job")  # default stale_after: 10 s of heartbeat silence
    start = time.monotonic()
    lock.acquire()  # the owner is a dead process of this machine: broken at once, not after 10 s (or 300 s)
    waited = time.monotonic() - start
    lock.release()
    assert waited < 2.0, waited


def test_a_lock_whose_heartbeat_stopped_is_recovered_after_stale_after(tmp_path: Path) -> None:
    storage = open_storage(default_journal_storage(tmp_path))
    frozen = StorageLock(storage, "job")
    frozen.acquire()
    assert frozen._beat is not None
    frozen._beat.set()  # its heartbeat stops, as if its machine went away ...
    token = frozen.study.get_trials(states=(TrialState.RUNNING,))[0]
    from compsearch import optuna_compat

    optuna_compat.set_trial_system_attr(frozen.study, token, "compsearch:owner", "elsewhere:1")  # ... on another host
    assert not owner_ended("elsewhere:1")  # a pid of another machine is never judged here
    lock = StorageLock(storage, "job", stale_after=2.0)
    start = time.monotonic()
    lock.acquire()  # after 2 s without a beat (a live holder beats every 1 s)
    waited = time.monotonic() - start
    lock.release()
    assert 1.0 < waited < 6.0, waited


def test_a_live_holder_keeps_its_lock(tmp_path: Path) -> None:
    storage = open_storage(default_journal_storage(tmp_path))
    first, second = StorageLock(storage, "job", stale_after=2.0), StorageLock(storage, "job", stale_after=2.0)
    first.acquire()
    time.sleep(3.0)  # longer than stale_after, but the heartbeat thread keeps it fresh
    assert second.break_stale() == 0
    first.release()
    second.acquire()
    second.release()


def test_spec_error_for_outside_storage(make_spec) -> None:
    from compsearch.studies.spec import load_spec

    with pytest.raises(SpecError, match=r"storage: .*only choose the storage inside the run folder"):
        load_spec(make_spec(storage="sqlite:////tmp/elsewhere.db"))
    assert json.dumps(load_spec(make_spec(storage="journal")).storage) == '"journal"'
