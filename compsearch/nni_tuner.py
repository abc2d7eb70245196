"""``compsearch.nni_tuner``: NNI tuners that run any registered compsearch strategy.

* :class:`StrategyTuner` wraps a strategy over a space (ask/tell on an in-memory Optuna study);
* :class:`SpecTuner` builds it from a study spec (what NNI instantiates from ``class_args``).

The trial entry is ``python -m compsearch.nni_trial``. Importing this module imports ``nni``.
"""

from compsearch.nni_trial import SpecTuner, nni_experiment
from compsearch.search.nni_tuner import StrategyTuner, metrics_of

__all__ = ["SpecTuner", "StrategyTuner", "metrics_of", "nni_experiment"]
