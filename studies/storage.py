"""Where a run's Optuna studies live, and how that is written down without secrets.

**In the run folder unless the command line says otherwise.** A spec's ``storage`` key may
only pick the kind and file name *inside* the run folder: ``"sqlite"`` (``studies.db``,
the default for one process), ``"journal"`` (``journal.log``, the default for several
workers or Ray), or a bare file name ``"<name>.db"`` / ``"<name>.log"``. Any other place
-- a PostgreSQL server, a file elsewhere -- is given with ``--storage URL`` on the command
line (or ``storage=`` in Python), never by a spec, so a spec cannot write outside its run
folder.

**run.json stores a reference, not the URL.** A storage in the run folder is recorded
relative to it (``"sqlite:studies.db"``, ``"journal:journal.log"``), so a moved or copied
run folder resumes in place. Any other URL is recorded with its password and secret query
values replaced by ``***`` (:func:`redact`); resuming such a run needs the full URL again:
``--storage URL`` or the environment variable ``COMPSEARCH_STORAGE``.

**A journal with a torn last line** (a process killed while appending) is repaired before
it is opened: the file is copied to ``<name>.torn-<UTC time>`` and the incomplete tail
is cut off (:func:`repair_journal` says what it did). A damaged line in the middle is
refused with a message naming the line. The journal's own file lock is taken as stale
after :data:`JOURNAL_LOCK_GRACE` seconds (Optuna's default is 30).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from compsearch.errors import ConfigError

STUDIES_FILE = "studies.db"
JOURNAL_FILE = "journal.log"
ENV_STORAGE = "COMPSEARCH_STORAGE"
JOURNAL_LOCK_GRACE = 10
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.(db|log)$")
_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token", "key")


# ---- what the spec may say -----------------------------------------------------------------------


def check_spec_storage(value: str | None) -> str | None:
    """Validate a spec's ``storage`` value (see the module docstring); returns it.

    Raises:
        ConfigError: anything but ``"sqlite"``, ``"journal"``, ``"<name>.db"`` or ``"<name>.log"``.
    """
    if value is None or value in ("sqlite", "journal") or (isinstance(value, str) and _FILE_RE.match(value)):
        return value
    raise ConfigError(
        f"storage={value!r}: a spec may only choose the storage inside the run folder: 'sqlite', 'journal', "
        f"or a file name '<name>.db' / '<name>.log'; give any other storage (a database URL, a path elsewhere) "
        f"on the command line with --storage URL"
    )


def in_folder_url(out_dir: str | Path, spec_value: str | None, *, several_processes: bool) -> str:
    """The URL of the storage a spec's ``storage`` value names inside ``out_dir``."""
    out = Path(out_dir).resolve()
    value = check_spec_storage(spec_value) or ("journal" if several_processes else "sqlite")
    if value == "sqlite" or value.endswith(".db"):
        return f"sqlite:///{out / (STUDIES_FILE if value == 'sqlite' else value)}"
    return f"journal://{out / (JOURNAL_FILE if value == 'journal' else value)}"


def default_storage(out_dir: str | Path) -> str:
    """``sqlite:///<out_dir>/studies.db`` (absolute path)."""
    return in_folder_url(out_dir, "sqlite", several_processes=False)


def default_journal_storage(out_dir: str | Path) -> str:
    """``journal:///<out_dir>/journal.log``: the storage of multi-worker runs on one machine."""
    return in_folder_url(out_dir, "journal", several_processes=True)


# ---- file paths of file storages -----------------------------------------------------------------


def file_of(url: str, out_dir: str | Path | None = None) -> Path | None:
    """The file of a ``sqlite:///`` or ``journal://`` URL (relative journal paths are
    relative to ``out_dir``), or None for a server URL."""
    if url.startswith("journal://"):
        path = Path(url[len("journal://"):]).expanduser()
        return path if path.is_absolute() else Path(out_dir or ".") / path
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):].split("?", 1)[0]  # "sqlite:////abs" -> "/abs"
        return None if rest in ("", ":memory:") else Path(rest)
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# ---- recording without secrets -------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``."""
    if not isinstance(url, str) or "://" not in url or url.startswith(("journal://", "sqlite:")):
        return url
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # not an SQLAlchemy URL: hide anything between '//' and '@'
        return re.sub(r"//[^/@]*@", "//***@", url)
    query = {k: ("***" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in parsed.query.items()}
    return str(parsed.set(query=query).render_as_string(hide_password=True)).replace("%2A%2A%2A", "***")


def has_secret(url: str) -> bool:
    """Whether :func:`redact` hides anything in ``url``."""
    return redact(url) != url


def record_of(url: str, out_dir: str | Path) -> str:
    """What run.json stores for ``url``: ``"sqlite:<file>"`` / ``"journal:<file>"`` relative
    to the run folder when the file is in it, else the redacted URL."""
    path = file_of(url, out_dir)
    if path is not None and _inside(path, Path(out_dir)):
        rel = path.resolve().relative_to(Path(out_dir).resolve()).as_posix()
        return f"{'journal' if url.startswith('journal://') else 'sqlite'}:{rel}"
    return redact(url)


def url_from_record(recorded: str, out_dir: str | Path) -> str:
    """The URL a run.json storage entry refers to (see :func:`record_of`).

    An entry of an older run that names an absolute ``studies.db`` / ``journal.log`` whose
    file is no longer there but is in ``out_dir`` (the folder was moved) resolves to the
    file in ``out_dir``. A redacted URL needs ``COMPSEARCH_STORAGE``.

    Raises:
        ConfigError: a redacted URL and no ``COMPSEARCH_STORAGE`` holding its full form.
    """
    out = Path(out_dir).resolve()
    for kind in ("sqlite", "journal"):
        if recorded.startswith(f"{kind}:") and not recorded.startswith(f"{kind}:/"):
            rel = recorded[len(kind) + 1:]
            return f"sqlite:///{out / rel}" if kind == "sqlite" else f"journal://{out / rel}"
    path = file_of(recorded, out)
    if path is not None and not path.exists() and (out / path.name).exists():
        return f"sqlite:///{out / path.name}" if recorded.startswith("sqlite") else f"journal://{out / path.name}"
    if "***" in recorded:
        env = os.environ.get(ENV_STORAGE)
        if env and redact(env) == recorded:
            return env
        raise ConfigError(
            f"the run's storage {recorded} needs its password, which run.json does not keep; pass the full URL "
            f"again with --storage URL or in the environment variable {ENV_STORAGE}"
        )
    return recorded


# ---- opening ---------------------------------------------------------------------------------------


def check_url(url: Any, *, where: str = "--storage") -> str:
    """Check that ``url`` can name an Optuna storage without opening it: a journal or
    SQLite file whose folder exists and is writable, or an SQLAlchemy URL whose driver
    is installed.

    Raises:
        ConfigError: naming ``where``, the (redacted) URL, what is wrong and the fix.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}={url!r} must be an Optuna storage URL, e.g. sqlite:///run/studies.db or "
                          f"journal:///run/journal.log")
    shown = redact(url)
    if url.startswith("journal://") or url.startswith("sqlite:"):
        path = file_of(url)
        if path is None or not url.startswith(("journal://", "sqlite:///")):
            raise ConfigError(f"{where}={shown!r} names no file; use sqlite:///path/studies.db or journal:///path/journal.log")
        if path.is_dir():
            raise ConfigError(f"{where}={shown!r} is a folder; name a file in it")
        folder = path.parent if url.startswith("sqlite:") else _existing_parent(path)  # a journal's folders are made
        if not writable_folder(folder):
            raise ConfigError(f"{where}={shown!r}: cannot create files in {str(folder)!r} (missing, not a folder, or "
                              f"not writable); choose a writable place")
        return url
    if "://" not in url:
        raise ConfigError(f"{where}={shown!r} is not a URL; use e.g. sqlite:///run/studies.db, journal:///run/journal.log "
                          f"or postgresql+psycopg2://user:password@host/db")
    try:
        from sqlalchemy.engine import make_url

        make_url(url).get_dialect()
    except Exception as e:
        raise ConfigError(f"{where}={shown!r} is not a usable database URL ({type(e).__name__}: {redact(str(e))}); "
                          f"check the scheme and install its driver (e.g. psycopg2-binary for postgresql)") from None
    return url


def _existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")


def writable_folder(folder: Path) -> bool:
    """Whether ``folder`` is a folder this process can create files in (probed with a
    temporary file, removed at once: permission bits say nothing for root)."""
    import tempfile

    if not folder.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def open_storage(url: str, *, out_dir: str | Path | None = None, repair: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``.

    Args:
        url: any Optuna RDB URL (``sqlite:///...``, ``postgresql://...``), or
            ``journal:///abs/path.log`` / ``journal://rel/path.log`` for a journal file
            (relative paths are relative to ``out_dir``).
        out_dir: the run folder (for relative journal paths).
        repair: repair a torn journal tail first (:func:`repair_journal`). Only the one
            process that opens the storage before any other writes to it may ask for this:
            a live writer's record in progress would look torn.

    Raises:
        ConfigError: not a URL, a damaged journal, or a database that cannot be reached
            (the message shows the URL without its password).
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"storage={url!r} must be an Optuna storage URL or journal:///path")
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        path = file_of(url, out_dir)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileOpenLock(str(path), grace_period=JOURNAL_LOCK_GRACE)
        if repair:
            lock.acquire()
            try:
                note = repair_journal(path)
            finally:
                lock.release()
            if note:
                print(f"compsearch: {note}", file=sys.stderr)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    if "://" not in url:
        raise ConfigError(f"storage={url!r} is not a URL; use e.g. sqlite:///run/studies.db or journal:///run/journal.log")
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=None)
    except Exception as e:
        raise ConfigError(f"storage {redact(url)!r} cannot be opened ({type(e).__name__}: {redact(str(e))[:300]}); "
                          f"check that the server runs and the URL, user and database are right") from None


# ---- journal repair -----------------------------------------------------------------------------


def repair_journal(path: str | Path) -> str | None:
    """Cut a torn last line off the journal file ``path`` (after copying the file to
    ``<name>.torn-<UTC time>``); returns what was done, or None when the file is whole.

    Raises:
        ConfigError: a line before the last is not a complete JSON record (the file is
            damaged beyond a torn tail; the message names the line).
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError:
            raise ConfigError(
                f"journal {str(path)!r} line {number} is not a complete record (the file was damaged, not just "
                f"cut short); restore it from a copy, or start a new run folder"
            ) from None
    if not tail:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    copy = path.with_name(f"{path.name}.torn-{stamp}")
    shutil.copy2(path, copy)
    with open(path, "r+b") as f:
        f.truncate(len(data) - len(tail))
    return (f"journal {str(path)!r} ended with an incomplete record ({len(tail)} bytes, a write cut short by a "
            f"killed process); cut it off, the original is kept as {copy.name}")


__all__ = [
    "ENV_STORAGE",
    "JOURNAL_FILE",
    "STUDIES_FILE",
    "check_spec_storage",
    "check_url",
    "default_journal_storage",
    "default_storage",
    "file_of",
    "has_secret",
    "in_folder_url",
    "open_storage",
    "record_of",
    "redact",
    "repair_journal",
    "url_from_record",
]
