"""Hosts: where a run's trials run, behind one small protocol (:class:`~.base.Host`).

=================  ===========================================  ==========================
host               module                                       ``compsearch run``
=================  ===========================================  ==========================
in-process         :mod:`~compsearch.studies.hosts.inprocess`   default (``--workers 1``)
worker processes   :mod:`~compsearch.studies.hosts.workers`     ``--workers N``
Ray Tune           :mod:`~compsearch.studies.hosts.ray`         ``--backend ray``
NNI                :mod:`~compsearch.studies.hosts.nni`         ``--backend nni``
=================  ===========================================  ==========================

Shared parts: :mod:`~.base` (opening a job's study, one trial and its failures),
:mod:`~.slots` (budget slots), :mod:`~.lock` (the storage lock), :mod:`~.tune` (the Ray
Tune trainable and searcher), :mod:`~.nni_tuner` (the NNI tuners). Ray and NNI are
imported only when their host runs.
"""

from __future__ import annotations

from typing import Any

from compsearch.errors import ConfigError
from compsearch.studies.hosts.base import Host, Job, check_workers

BACKENDS = ("optuna", "ray", "nni")


def get_host(backend: str = "optuna", *, workers: int = 1, address: str | None = None, **options: Any) -> Host:
    """The host of ``compsearch run --backend B --workers N [--address A]``.

    Raises:
        ConfigError: an unknown backend, a bad worker count, or ``address`` without Ray.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is unknown; allowed: {list(BACKENDS)}")
    workers = check_workers(workers)
    if address is not None and backend != "ray":
        raise ConfigError(f"address={address!r} is a Ray cluster address; use it with --backend ray")
    if backend == "ray":
        from compsearch.studies.hosts.ray import RayHost

        return RayHost(workers, address=address, **options)
    if backend == "nni":
        from compsearch.studies.hosts.nni import NNIHost

        return NNIHost(workers, **options)
    if workers > 1:
        from compsearch.studies.hosts.workers import WorkerHost

        return WorkerHost(workers, **options)
    from compsearch.studies.hosts.inprocess import InProcessHost

    return InProcessHost()


__all__ = ["BACKENDS", "Host", "Job", "get_host"]
