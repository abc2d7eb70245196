"""Built-in baseline strategies: Optuna's samplers and the heuristic anchors.

Each factory has the registry signature ``factory(ctx, **options) -> BaseSampler``;
an option it does not take raises ``TypeError`` naming it.

================== ================================================================
name               sampler
================== ================================================================
``random``         ``RandomSampler``
``tpe``            ``TPESampler(multivariate=True)``
``nsga2``          ``NSGAIISampler`` (population 8-16, scaled to the budget)
``nsga3``          ``NSGAIIISampler`` (same population rule)
``gp``             ``GPSampler`` (mixed categorical GP; logEHVI when multi-objective)
``botorch-optuna`` ``optuna_integration.BoTorchSampler`` (imported lazily)
``uniform8``       :class:`~compsearch.search.heuristics.AnchorSampler`, 8-bit anchor
``uniform4``       :class:`~compsearch.search.heuristics.AnchorSampler`, 4-bit anchor
``greedy-sensitivity`` :class:`~compsearch.search.heuristics.GreedySensitivitySampler`
================== ================================================================

Constraints (what the installed Optuna 5.0 does). ``trial.set_constraint(key, value)``
stores ``value`` in the trial's system attribute ``"constraints:<key>"``;
``FrozenTrial.constraints`` reads them back (and the old list-valued ``"constraints"``
attribute). A trial is feasible when every value is <= 0. The samplers read
``trial.constraints`` directly, with no option to set:

* ``NSGAIISampler`` / ``NSGAIIISampler``: once any trial of the population has a
  constraint, elite selection and parent tournaments use *constrained domination*
  (a feasible trial dominates an infeasible one; two infeasible ones compare by total
  violation; two feasible ones by ordinary Pareto domination).
* ``TPESampler``: trials with positive total violation are ranked after every feasible
  one when splitting good/bad trials (c-TPE).
* ``GPSampler``: with constraints it fits one GP per constraint and uses log
  constrained EI / EHVI (logCEI, logCEHVI).
* ``BoTorchSampler``: passes ``trial.constraints`` (same keys on every trial, else it
  raises) as outcome constraints to its candidates function (qEI / qEHVI-style).
* ``RandomSampler`` and the heuristic anchors ignore them (they do not learn).

The deprecated ``constraints_func`` argument (FutureWarning since 5.0) is therefore
never passed: a study that calls ``trial.set_constraint`` is honoured as it is. A
study must set the same constraint keys on every COMPLETE trial (BoTorchSampler
requires it; the others then see a consistent feasibility).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from optuna.exceptions import ExperimentalWarning
from optuna.samplers import (
    BaseSampler,
    GPSampler,
    NSGAIIISampler,
    NSGAIISampler,
    RandomSampler,
    TPESampler,
)

from compsearch.errors import ConfigError, check_keywords
from compsearch.search.heuristics import AnchorSampler, GreedySensitivitySampler
from compsearch.search.registry import SearchContext, register_strategy
from compsearch.spaces.policy import UnitPolicy

STARTUP_TRIALS = 10
"""Default random start-up trials of the model-based samplers (tpe, gp, botorch-optuna)."""


def _options(name: str, given: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """``defaults`` updated with ``given``; an unknown key raises ``TypeError`` naming it."""
    check_keywords(f"strategy {name!r}", given, set(defaults))
    return {**defaults, **given}


def default_population(ctx: SearchContext) -> int:
    """Population of the genetic samplers: ``n_trials // 5`` clipped to [8, 16] (12 when the
    budget is unknown), so a 40-trial budget runs 5 generations and a 100-trial one 6."""
    if ctx.n_trials is None:
        return 12
    return min(16, max(8, ctx.n_trials // 5))


def _quiet(build: Callable[[], BaseSampler]) -> BaseSampler:
    """Build a sampler without Optuna's ExperimentalWarning (the registry chose it on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return build()


@register_strategy("random")
def random_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """Uniform random sampling (no options)."""
    _options("random", options)
    return RandomSampler(seed=ctx.seed)


@register_strategy("tpe")
def tpe_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """Multivariate TPE. Options: ``n_startup_trials`` (10), ``constant_liar`` (False; set it
    for parallel workers so running trials are penalised)."""
    o = _options("tpe", options, n_startup_trials=STARTUP_TRIALS, constant_liar=False)
    return _quiet(lambda: TPESampler(multivariate=True, seed=ctx.seed, **o))


@register_strategy("nsga2")
def nsga2_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """NSGA-II. Options: ``population_size`` (:func:`default_population`),
    ``crossover_prob`` (0.9), ``mutation_prob`` (None = 1 / number of params)."""
    o = _options("nsga2", options, population_size=default_population(ctx), crossover_prob=0.9, mutation_prob=None)
    return NSGAIISampler(seed=ctx.seed, **o)


@register_strategy("nsga3")
def nsga3_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """NSGA-III (reference-point niching). Options: ``population_size``
    (:func:`default_population`), ``dividing_parameter`` (3, reference-point density)."""
    o = _options("nsga3", options, population_size=default_population(ctx), dividing_parameter=3)
    return _quiet(lambda: NSGAIIISampler(seed=ctx.seed, **o))


@register_strategy("gp")
def gp_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """Optuna's GPSampler: categorical parameters handled by its mixed-space acquisition
    optimizer, logEI / logEHVI for one / several objectives. Options: ``n_startup_trials``
    (10), ``deterministic_objective`` (False)."""
    o = _options("gp", options, n_startup_trials=STARTUP_TRIALS, deterministic_objective=False)
    return _quiet(lambda: GPSampler(seed=ctx.seed, warn_independent_sampling=False, **o))


@register_strategy("botorch-optuna")
def botorch_optuna_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """optuna-integration's BoTorchSampler (imported here, so ``import compsearch`` never
    imports botorch). Options: ``n_startup_trials`` (10), ``consider_running_trials`` (False)."""
    o = _options("botorch-optuna", options, n_startup_trials=STARTUP_TRIALS, consider_running_trials=False)
    try:
        from optuna_integration import BoTorchSampler
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError(
            "strategy 'botorch-optuna' needs optuna-integration and botorch; "
            "install them with `pip install compsearch[bayes]`"
        ) from e
    return _quiet(lambda: BoTorchSampler(seed=ctx.seed, **o))


def _anchor(name: str, w_bits: int, ctx: SearchContext, options: dict[str, Any]) -> BaseSampler:
    _options(name, options)
    anchor = UnitPolicy(w_bits=w_bits, a_bits=8, keep=1.0, scheme="symmetric", granularity="channel", structure="channel")
    return AnchorSampler(ctx, anchor=anchor)


@register_strategy("uniform8")
def uniform8_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """8-bit per-channel symmetric weights and 8-bit activations everywhere, then its
    nearest neighbours (:class:`~compsearch.search.heuristics.AnchorSampler`). No options."""
    return _anchor("uniform8", 8, ctx, options)


@register_strategy("uniform4")
def uniform4_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """4-bit per-channel symmetric weights and 8-bit activations everywhere, then its
    nearest neighbours. No options."""
    return _anchor("uniform4", 4, ctx, options)


@register_strategy("greedy-sensitivity")
def greedy_sensitivity_strategy(ctx: SearchContext, **options: Any) -> BaseSampler:
    """HAWQ-like allocation swept over budgets
    (:class:`~compsearch.search.heuristics.GreedySensitivitySampler`). Options: ``metric``
    (``"size_bits"``, or ``"bops"`` when the study optimizes bops and not size),
    ``n_budgets`` (``ctx.n_trials``, or 20)."""
    size_metrics = {"size_bits", "size_kb", "compression_ratio"}
    default = "bops" if "bops" in ctx.metrics and not size_metrics & set(ctx.metrics) else "size_bits"
    o = _options("greedy-sensitivity", options, metric=default, n_budgets=None)
    return GreedySensitivitySampler(ctx, **o)
