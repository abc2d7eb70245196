"""Masks, fake quantization, fine-tuning, cost metrics, proxies, sensitivity, reporters, datasets.

Names are resolved lazily (PEP 562) so that ``import compsearch`` stays light.
"""

from __future__ import annotations

from compsearch.registry import lazy_exports

_EXPORTS = {
    "DataSplits": ".types",
    "EvalResult": ".types",
    "FineTuneConfig": ".types",
    "Reporter": ".types",
    "UnitStats": ".types",
    "CompressedUnit": ".types",
    "Task": ".tasks",
    "ClassificationTask": ".tasks",
    "register_task": ".tasks",
    "get_task": ".tasks",
    "list_tasks": ".tasks",
    "CompressionEvaluator": ".evaluator",
    "EvaluatorConfig": ".evaluator",
    "CRITERIA": ".masks",
    "register_criterion": ".masks",
    "list_criteria": ".masks",
    "load_dataset": ".datasets",
    "list_datasets": ".datasets",
    "build_model": ".models",
    "list_models": ".models",
    "optuna_objective": ".objective",
    "OptunaReporter": ".reporters",
    "TuneReporter": ".reporters",
    "NNIReporter": ".reporters",
    "NullReporter": ".reporters",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
