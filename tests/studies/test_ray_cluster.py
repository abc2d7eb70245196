"""``--address``: join a Ray cluster started with ``ray start --head``, and say what to do when
joining fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compsearch.studies.hosts.ray import join_failure
from compsearch.studies.pgserver import free_port

pytest.importorskip("ray.tune", reason="Ray Tune is optional (pip install 'compsearch[ray]')")


def test_join_failure_names_the_token_fix_for_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    try:
        try:
            raise RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379") from inner
    except ConnectionError as e:
        failure = e
    message = join_failure("10.0.0.5:6379", failure)
    assert message.startswith("address='10.0.0.5:6379': the Ray cluster there requires token authentication")
    assert "RAY_AUTH_MODE=token" in message and "ray get-auth-token" in message
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set, but the token is not the cluster's
    assert "refused this machine's token; copy the head's" in join_failure("10.0.0.5:6379", failure)


def test_join_failure_without_a_cluster_says_how_to_start_one() -> None:
    message = join_failure("10.0.0.5:6379", ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379"))
    assert "could not join a Ray cluster there (Failed to connect" in message
    assert "ray start --head" in message and "leave out --address" in message


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def ray_head() -> Iterator[tuple[str, Path]]:
    """A one-node cluster of this machine (``ray start --head --block``), stopped afterwards: only
    its own processes (its process group), never another Ray running here."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}", "--node-ip-address=127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):  # the head's GCS is up (ray.init retries the rest)
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`ray start --head` did not come up (exit code {head.poll()})")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", Path(temp)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM ...
        try:
            head.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # ... and whatever of it is left goes now
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def test_run_joins_a_cluster_by_address(ray_head: tuple[str, Path], tmp_path: Path, mini_spec) -> None:  # noqa: ANN001
    import json

    address, head_dir = ray_head
    spec = mini_spec(tmp_path)
    out = tmp_path / "out"
    # as the error above tells a user; Ray reads RAY_AUTH_MODE when imported, so a fresh process
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    argv = ["run", str(spec), "--out", str(out), "--backend", "ray", "--address", address, "--workers", "2", "--quiet"]
    proc = subprocess.run([sys.executable, "-m", "compsearch", *argv], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert [(s["backend"], s["status"]) for s in run["sessions"]] == [("ray", "complete")]
    assert list(head_dir.glob("session_*/logs/python-core-driver-*"))  # our driver ran on the head's cluster
