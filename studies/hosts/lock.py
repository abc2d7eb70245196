"""A mutex shared by every process that reaches one Optuna storage, with an owner and a heartbeat.

The lock lives in a companion study ``<name>:lock`` holding one WAITING trial, the token.
Acquiring pops it (Optuna's atomic WAITING -> RUNNING transition, across processes and
machines); the holder writes its owner (``host:pid``) and a heartbeat (a UNIX time,
refreshed every :data:`HEARTBEAT` seconds by a thread while it holds the lock) into the
token's system attrs; releasing finishes the token and enqueues the next one.

A token whose holder died is broken **within seconds**, not minutes: at once when the
owner is a process on this machine that no longer runs, else when its heartbeat is older
than ``stale_after`` seconds (default 10: a live holder refreshes it every second). The
one process whose FAIL of the stale token succeeds enqueues the replacement. The report
ignores the companion study (its name is not ``<strategy>-s<seed>``).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from compsearch import optuna_compat as compat

OWNER_ATTR = "compsearch:owner"
HEARTBEAT_ATTR = "compsearch:heartbeat"
HEARTBEAT = 1.0
STALE_AFTER = 10.0


def this_process() -> str:
    """``"<host>:<pid>"`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie counts as ended)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def owner_ended(owner: object) -> bool:
    """Whether ``owner`` (``"host:pid"``, maybe with a ``/worker`` suffix) names a process
    of this machine that no longer runs. Owners on other machines are never judged here."""
    if not isinstance(owner, str) or ":" not in owner:
        return False
    host, _, rest = owner.rpartition(":")
    pid = rest.split("/", 1)[0]
    return host == socket.gethostname() and pid.isdigit() and not pid_running(int(pid))


class StorageLock:
    """A cross-process, cross-machine mutex on one storage (see the module docstring).

    Create the lock once before the workers start (``prepare_jobs`` does): the first
    token is enqueued only when the companion study is new.

    Used to make "read pending trials, propose, store the proposal" atomic, so a strategy
    that avoids the proposals of running trials sees every one of them.

    Args:
        storage: the shared storage.
        name: what is locked (a study name).
        stale_after: seconds without a heartbeat after which a held token counts as abandoned.
        poll: seconds between tries (with up to 100% random jitter).
    """

    def __init__(self, storage: optuna.storages.BaseStorage, name: str, *, stale_after: float = STALE_AFTER,
                 poll: float = 0.02) -> None:
        self.study = optuna.create_study(study_name=f"{name}:lock", storage=storage, load_if_exists=True)
        self.stale_after = stale_after
        self.poll = poll
        self.owner = this_process()
        self._held: int | None = None
        self._beat: threading.Event | None = None
        if not self.study.get_trials(deepcopy=False):  # a new lock: its first token
            self.study.enqueue_trial({})

    @property
    def held(self) -> bool:
        return self._held is not None

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        while True:
            trial_id = compat.pop_waiting_trial_id(self.study)
            if trial_id is not None:
                self._held = trial_id
                compat.set_trial_system_attr(self.study, trial_id, OWNER_ATTR, self.owner)
                compat.set_trial_system_attr(self.study, trial_id, HEARTBEAT_ATTR, time.time())
                self._start_heartbeat(trial_id)
                return
            self.break_stale()
            time.sleep(self.poll * (1.0 + random.random()))

    def _start_heartbeat(self, trial_id: int) -> None:
        stop = threading.Event()
        self._beat = stop

        def beat() -> None:
            while not stop.wait(HEARTBEAT):
                try:
                    compat.set_trial_system_attr(self.study, trial_id, HEARTBEAT_ATTR, time.time())
                except optuna.exceptions.UpdateFinishedTrialError:
                    return  # the token was broken as stale meanwhile
                except Exception:  # noqa: BLE001 - a storage hiccup: try again at the next beat
                    continue

        threading.Thread(target=beat, name="compsearch-lock-heartbeat", daemon=True).start()

    def _stale(self, token: FrozenTrial, now: float) -> bool:
        owner = token.system_attrs.get(OWNER_ATTR)
        if owner_ended(owner):
            return True
        beat = token.system_attrs.get(HEARTBEAT_ATTR)
        if isinstance(beat, (int, float)):
            return now - float(beat) > self.stale_after
        start = token.datetime_start  # not yet stamped: RDB storages give naive local time, journals aware UTC
        if start is None:
            return False
        return now - (start if start.tzinfo else start.astimezone()).timestamp() > self.stale_after

    def break_stale(self) -> int:
        """Break every token held by a dead owner or without a fresh heartbeat; returns how many."""
        now, broken = time.time(), 0
        for token in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if compat.trial_id(token) == self._held or not self._stale(token, now):
                continue
            if compat.finish_trial(self.study, token, TrialState.FAIL):  # only one breaker succeeds
                self.study.enqueue_trial({})
                broken += 1
        return broken

    def release(self) -> None:
        """Hand the token on (no-op when not held)."""
        if self._held is None:
            return
        held, self._held = self._held, None
        if self._beat is not None:
            self._beat.set()
            self._beat = None
        if compat.frozen(self.study, held).state != TrialState.RUNNING:
            return  # broken as stale meanwhile: its breaker enqueued the next token
        self.study.enqueue_trial({})  # the next token first: a live token always exists
        compat.finish_trial(self.study, held, TrialState.COMPLETE, [0.0])

    def __enter__(self) -> StorageLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["HEARTBEAT", "OWNER_ATTR", "STALE_AFTER", "StorageLock", "owner_ended", "pid_running", "this_process"]
