"""Masks, fake quantization, fine-tuning, cost metrics, proxies, sensitivity, reporters, datasets.

Names are resolved lazily (PEP 562) so that ``import compsearch`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataSplits": "types",
    "EvalResult": "types",
    "FineTuneConfig": "types",
    "Reporter": "types",
    "CompressionEvaluator": "evaluator",
    "EvaluatorConfig": "evaluator",
    "CRITERIA": "masks",
    "register_criterion": "masks",
    "list_criteria": "masks",
    "load_dataset": "datasets",
    "list_datasets": "datasets",
    "build_model": "models",
    "list_models": "models",
    "optuna_objective": "objective",
    "OptunaReporter": "reporters",
    "TuneReporter": "reporters",
    "NNIReporter": "reporters",
    "NullReporter": "reporters",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'compsearch.evaluators' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compsearch.evaluators.{module}"), name)
