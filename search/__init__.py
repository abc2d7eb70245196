"""Search strategies (every one an Optuna sampler) and their registry.

Importing the package registers the built-in strategies: Optuna's samplers and the
heuristic anchors (:mod:`~compsearch.search.baselines`), the hierarchical RL strategies
(:mod:`~compsearch.search.hirl`), N2N learning (:mod:`~compsearch.search.n2n`) and the
Bayesian one (:mod:`~compsearch.search.bayes`).
The registry module itself imports none of them, so the import graph stays one-way
(strategy modules -> registry). Heavy backends (botorch) stay lazy inside them.
"""

from __future__ import annotations

import compsearch.search.baselines  # noqa: F401  (registers random, tpe, nsga2, nsga3, gp, botorch-optuna, anchors)

try:
    import compsearch.search.hirl  # noqa: F401
except ModuleNotFoundError as _e:  # an optional dependency of that strategy family is missing
    if _e.name is None or not _e.name.startswith("compsearch.search.hirl"):
        raise
import compsearch.search.n2n  # noqa: F401  (registers n2n)

try:
    import compsearch.search.bayes  # noqa: F401
except ModuleNotFoundError as _e:
    if _e.name is None or not _e.name.startswith("compsearch.search.bayes"):
        raise
