"""The strategy registry: every strategy is an ``optuna.samplers.BaseSampler``.

A strategy is registered as a factory ``factory(ctx: SearchContext, **options)
-> BaseSampler``. :class:`SearchContext` carries what a compression-aware
strategy may use (the space, the evaluator for exact costs/proxy/sensitivity,
the objectives and constraints of the study); Optuna's own samplers ignore
most of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError
from compsearch.registry import Registry
from compsearch.search.seeding import TrialSeededSampler

if TYPE_CHECKING:
    import optuna

    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.spaces.base import Space

DIRECTIONS = ("maximize", "minimize")
DEFAULT_OBJECTIVES: tuple[tuple[str, str], ...] = (("accuracy", "maximize"), ("size_bits", "minimize"))


@dataclass(frozen=True)
class SearchContext:
    """What a strategy knows about the study it samples for.

    Attributes:
        space: the compression space; the strategy proposes its params.
        seed: random seed (None = nondeterministic).
        evaluator: the shared evaluator (``cost``, ``proxy``, ``sensitivity``); optional.
        objectives: ``(metric, direction)`` pairs in the order of the study's values.
        constraints: metric -> bound, e.g. ``{"max_size_kb": 4.0, "min_accuracy": 0.9}``.
        reference_point: metric -> value, the hypervolume reference point.
        n_trials: the budget of full evaluations, when known (strategies may plan with it).
    """

    space: Space
    seed: int | None = None
    evaluator: CompressionEvaluator | None = None
    objectives: tuple[tuple[str, str], ...] = DEFAULT_OBJECTIVES
    constraints: Mapping[str, float] = field(default_factory=dict)
    reference_point: Mapping[str, float] = field(default_factory=dict)
    n_trials: int | None = None

    def __post_init__(self) -> None:
        for metric, direction in self.objectives:
            if direction not in DIRECTIONS:
                raise ConfigError(f"objective {metric!r} has direction={direction!r}; allowed: {list(DIRECTIONS)}")

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.objectives]


StrategyFactory = Callable[..., "optuna.samplers.BaseSampler"]
STRATEGIES: Registry[StrategyFactory] = Registry("strategy")


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Decorator registering ``factory(ctx, **options) -> BaseSampler`` under ``name``."""
    return STRATEGIES.register(name)


def get_strategy(
    name: str,
    *,
    space: Space,
    seed: int | None = None,
    evaluator: CompressionEvaluator | None = None,
    objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
    constraints: Mapping[str, float] | None = None,
    reference_point: Mapping[str, float] | None = None,
    n_trials: int | None = None,
    **options: Any,
) -> optuna.samplers.BaseSampler:
    """Build the strategy registered as ``name``; ``options`` go to its factory
    (an option it does not take raises ``TypeError``).

    With a ``seed``, a sampler that is not one of compsearch's own (those re-seed per
    trial themselves) is wrapped in :class:`~compsearch.search.seeding.TrialSeededSampler`,
    so its randomness depends on the trial number and a resumed study continues the
    sequence instead of restarting it."""
    factory = STRATEGIES.get(name)
    ctx = SearchContext(
        space=space,
        seed=seed,
        evaluator=evaluator,
        objectives=tuple((m, d) for m, d in objectives),
        constraints=dict(constraints or {}),
        reference_point=dict(reference_point or {}),
        n_trials=n_trials,
    )
    sampler = factory(ctx, **options)
    if seed is not None and not getattr(sampler, "seeds_per_trial", False):
        sampler = TrialSeededSampler(sampler, seed)
    return sampler


def list_strategies() -> list[str]:
    """Registered strategy names, sorted (the built-ins register when ``compsearch.search`` is imported)."""
    return STRATEGIES.names()
