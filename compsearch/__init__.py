"""compsearch: multi-objective search for neural-network compression policies.

The light core (errors, units, policies, spaces) is imported eagerly; the
evaluator, the strategies, the studies and the Ray/NNI adapters are resolved
lazily on first attribute access (PEP 562), so ``import compsearch`` never
imports ray, nni or botorch.
"""

from __future__ import annotations

from compsearch.errors import (
    CompsearchError,
    ConfigError,
    DataError,
    FineTuneDiverged,
    ModelError,
    PolicyError,
    SpecError,
    UnknownNameError,
)
from compsearch.registry import lazy_exports
from compsearch.spaces import (
    Policy,
    Space,
    Unit,
    UnitPolicy,
    discover_units,
    get_space,
    list_spaces,
    register_space,
)

__version__ = "0.1.0"

_LAZY = {
    "CompressionEvaluator": "compsearch.evaluators",
    "EvaluatorConfig": "compsearch.evaluators",
    "FineTuneConfig": "compsearch.evaluators",
    "EvalResult": "compsearch.evaluators",
    "DataSplits": "compsearch.evaluators",
    "load_dataset": "compsearch.evaluators",
    "build_model": "compsearch.evaluators",
    "optuna_objective": "compsearch.evaluators",
    "register_criterion": "compsearch.evaluators",
    "register_model": "compsearch.evaluators.models",
    "register_dataset": "compsearch.evaluators.datasets",
    "register_task": "compsearch.evaluators.tasks",
    "register_metric": "compsearch.metrics",
    "load_plugins": "compsearch.plugins",
    "list_criteria": "compsearch.evaluators",
    "get_strategy": "compsearch.search.registry",
    "list_strategies": "compsearch.search.registry",
    "register_strategy": "compsearch.search.registry",
    "SearchContext": "compsearch.search.registry",
    "StudySpec": "compsearch.studies.spec",
    "load_spec": "compsearch.studies.spec",
    "run_study": "compsearch.studies.runner",
    "check_run": "compsearch.studies.validate",
    "build_report": "compsearch.studies.report",
    "hypervolume": "compsearch.studies.hypervolume",
    "pareto_front": "compsearch.studies.hypervolume",
    "tune_trainable": "compsearch.studies.hosts.tune",
    "tune_searcher": "compsearch.studies.hosts.tune",
    "export": "compsearch.studies.export",
    "load_compressed": "compsearch.studies.export",
}

__all__ = [
    "CompsearchError",
    "ConfigError",
    "DataError",
    "FineTuneDiverged",
    "ModelError",
    "Policy",
    "PolicyError",
    "Space",
    "SpecError",
    "Unit",
    "UnitPolicy",
    "UnknownNameError",
    "discover_units",
    "get_space",
    "list_spaces",
    "register_space",
    *sorted(_LAZY),
]


__getattr__ = lazy_exports(__name__, _LAZY)
