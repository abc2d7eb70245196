"""A throwaway local PostgreSQL server, for trying a database-backed study on one machine
(tests and ``benchmarks/scale.py`` use it too).

It uses the server binaries of Debian's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``; ``apt-get install -y postgresql``) or of any
``initdb`` on ``PATH``: ``initdb`` in a temporary data directory with password
authentication (``scram-sha-256``, a random password of this server alone), ``pg_ctl
start`` on a free loopback port with the socket in that directory, ``createdb``; on exit
``pg_ctl stop -m fast``. The password is in the yielded URL only (pass it to compsearch
with ``--storage``; run.json and the logs show it as ``***``). PostgreSQL refuses to run as root, so as
root the commands run as the ``postgres`` system user (``runuser``), who then owns the
data directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compsearch.errors import ConfigError

_RUN_AS = "postgres"


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest Debian version first), or None."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(p), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _version(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _RUN_AS, "--", *args]
    return args


def _run(args: list[str], *, timeout: float = 120, password: str | None = None) -> None:
    env = {**os.environ, "PGPASSWORD": password} if password else None
    done = subprocess.run(_command(args), capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit code {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")


@contextlib.contextmanager
def temporary_postgres(*, database: str = "compsearch", root: str | Path | None = None) -> Iterator[str]:
    """Start a PostgreSQL server in a temporary folder; yield its SQLAlchemy URL; stop and delete it.

    Args:
        database: the database created (the URL points at it).
        root: parent of the temporary data directory (default: the system temp folder).

    Yields:
        ``postgresql+psycopg2://postgres:<password>@127.0.0.1:<port>/<database>`` (the server
        refuses connections without the password).

    Raises:
        ConfigError: no PostgreSQL server binaries (install Debian's ``postgresql``).
        RuntimeError: ``initdb``/``pg_ctl``/``createdb`` failed (their stderr in the message).
    """
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise ConfigError("no PostgreSQL server binaries found (initdb, pg_ctl); install them with: "
                          "apt-get update && apt-get install -y postgresql")
    folder = Path(tempfile.mkdtemp(prefix="compsearch-pg-", dir=root))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, user=_RUN_AS)
    port = free_port()
    password = secrets.token_urlsafe(18)
    pwfile = folder / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(pwfile, user=_RUN_AS)
    started = False
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
              f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8"])
        pwfile.unlink()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start"])
        started = True
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
             password=password)
        yield f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["find_postgres_bin", "free_port", "temporary_postgres"]
