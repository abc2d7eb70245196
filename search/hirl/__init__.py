"""Hierarchical RL strategy (HiReLC-style) ``hirl`` and the flat RL baselines ``amc``
and ``haq``, registered as Optuna samplers.

Layout: the maths are plain torch modules and functions (``agents``: PPO policies and
the high-level ensemble; ``hierarchy``: hierarchical rollouts; ``surrogate``: MLP
ensemble; ``ddpg``: DDPG actor-critic; ``state``: block features; ``reward`` and
``objective``: exact costs, goals and scalarization); ``sampler`` and ``flat`` are
the thin Optuna shells. Importing this package imports torch but nothing heavier.
"""

from __future__ import annotations

from typing import Any

from compsearch.search.hirl.flat import FlatRLConfig, FlatRLSampler
from compsearch.search.hirl.sampler import HiRLConfig, HiRLSampler
from compsearch.search.registry import SearchContext, register_strategy


@register_strategy("hirl")
def _hirl(ctx: SearchContext, **options: Any) -> HiRLSampler:
    """Hierarchical RL; ``options``: ``config=HiRLConfig(...)``, ``sensitivity=``, or HiRLConfig fields."""
    return HiRLSampler.from_context(ctx, **options)


@register_strategy("amc")
def _amc(ctx: SearchContext, **options: Any) -> FlatRLSampler:
    """AMC-style DDPG over keep ratios (layer by layer, size/MAC budget)."""
    return FlatRLSampler.from_context(ctx, method="amc", **options)


@register_strategy("haq")
def _haq(ctx: SearchContext, **options: Any) -> FlatRLSampler:
    """HAQ-style DDPG over bit-widths (layer by layer, size budget)."""
    return FlatRLSampler.from_context(ctx, method="haq", **options)


__all__ = ["FlatRLConfig", "FlatRLSampler", "HiRLConfig", "HiRLSampler"]
