"""``compsearch.nni_tuner``: NNI tuners that run any registered compsearch strategy.

* :class:`StrategyTuner` wraps a strategy over a space (ask/tell on an Optuna study);
* :class:`SpecTuner` builds it from a study spec (what NNI instantiates from ``class_args``).

The trial entry is ``python -m compsearch.nni_trial``; the code lives in
:mod:`compsearch.studies.hosts.nni_tuner` and :mod:`compsearch.studies.hosts.nni`.
Importing this module imports ``nni``.
"""

from compsearch.studies.hosts.nni import NNIHost, nni_experiment
from compsearch.studies.hosts.nni_tuner import SpecTuner, StrategyTuner, metrics_of

__all__ = ["NNIHost", "SpecTuner", "StrategyTuner", "metrics_of", "nni_experiment"]
