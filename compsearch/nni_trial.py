"""``python -m compsearch.nni_trial``: the trial command of a compsearch NNI experiment.

A thin entry point; the code lives in :mod:`compsearch.studies.hosts.nni` (trial entry,
``nni_experiment``, the NNI host) and :mod:`compsearch.studies.hosts.nni_tuner`
(``StrategyTuner``, ``SpecTuner``, which NNI instantiates as
``compsearch.nni_trial.SpecTuner``). Importing this module imports ``nni``.
"""

from __future__ import annotations

import sys

from compsearch.studies.hosts.nni import DIVERGED_EXIT, main, nni_experiment, run_trial
from compsearch.studies.hosts.nni_tuner import SpecTuner

__all__ = ["DIVERGED_EXIT", "SpecTuner", "main", "nni_experiment", "run_trial"]

if __name__ == "__main__":
    sys.exit(main())
