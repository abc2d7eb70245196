"""``bo``: Bayesian multi-objective search that models only what must be measured.

Size, BOPs, sparsity and compression ratio are exact and free
(``evaluator.cost(policy)``), so only accuracy (and any other measured metric) gets
a GP; qLogNEHVI scores candidates over (GP accuracy, exact costs), cost constraints
filter candidates exactly, and pending trials are fantasized. See
:mod:`compsearch.search.bayes.sampler` for the method and ``model.py`` /
``acquisition.py`` for the BoTorch maths, which are imported lazily (at the first
GP fit), so importing this package or listing strategies never imports botorch.
"""

from __future__ import annotations

from typing import Any

from compsearch.errors import check_keywords
from compsearch.search.bayes.sampler import BayesConfig, BayesianSampler, unit_cost_estimate
from compsearch.search.registry import SearchContext, register_strategy

_OPTIONS = frozenset(BayesConfig.__dataclass_fields__)


@register_strategy("bo")
def _bo(ctx: SearchContext, **options: Any) -> BayesianSampler:
    """``bo``: every option is a :class:`BayesConfig` field (``n_startup=10``, ``mc_samples=64``, ...)."""
    check_keywords("strategy 'bo'", options, _OPTIONS)
    return BayesianSampler.from_context(ctx, BayesConfig(**options))


__all__ = ["BayesConfig", "BayesianSampler", "unit_cost_estimate"]
