"""Study spec (TOML) and validation, the frozen run, hosts, runner, hypervolume and the report.

Names resolve lazily (the runner imports optuna and torch).
"""

from __future__ import annotations

from compsearch.registry import lazy_exports

_EXPORTS = {
    "StudySpec": ".spec",
    "load_spec": ".spec",
    "prepare": ".run",
    "Run": ".run",
    "run_study": ".runner",
    "check_run": ".validate",
    "get_host": ".hosts",
    "build_report": ".report",
    "hypervolume": ".hypervolume",
    "pareto_front": ".hypervolume",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
