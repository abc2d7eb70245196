"""Study spec (TOML), runner, hypervolume and the comparison report.

Names resolve lazily (the runner imports optuna and torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StudySpec": "spec",
    "load_spec": "spec",
    "prepare": "runner",
    "run_study": "runner",
    "build_report": "report",
    "hypervolume": "hypervolume",
    "pareto_front": "hypervolume",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'compsearch.studies' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compsearch.studies.{module}"), name)
