"""The RL strategy ``hirl``, the full hierarchy ``hirl-full`` with its registered ablations,
and the flat RL baselines ``amc`` and ``haq``, as Optuna samplers.

The samplers here are thin shells; the maths (PPO agents, allocation ensemble, hierarchy,
state, rewards, surrogate, DDPG) live in :mod:`compsearch.search.rl`. ``sls``
(:mod:`compsearch.search.sls`) is the same proposal loop without agents. Importing this
package imports torch but nothing heavier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compsearch.search.hirl.flat import FlatRLConfig, FlatRLSampler
from compsearch.search.hirl.sampler import HiRLConfig, HiRLSampler
from compsearch.search.hirl.variants import VARIANTS, default_parts, full_parts
from compsearch.search.registry import SearchContext, register_strategy


def _variant(name: str) -> Callable[..., HiRLSampler]:
    def factory(ctx: SearchContext, **options: Any) -> HiRLSampler:
        return HiRLSampler.from_context(ctx, name=name, **options)

    factory.__doc__ = f"``{name}`` (see compsearch.search.hirl.variants); options: HiRLConfig fields, parts, aliases."
    return factory


for _name in VARIANTS:
    register_strategy(_name)(_variant(_name))


@register_strategy("amc")
def _amc(ctx: SearchContext, **options: Any) -> FlatRLSampler:
    """AMC-style DDPG over keep ratios (layer by layer, size/MAC budget)."""
    return FlatRLSampler.from_context(ctx, method="amc", **options)


@register_strategy("haq")
def _haq(ctx: SearchContext, **options: Any) -> FlatRLSampler:
    """HAQ-style DDPG over bit-widths (layer by layer, size budget)."""
    return FlatRLSampler.from_context(ctx, method="haq", **options)


__all__ = ["VARIANTS", "FlatRLConfig", "FlatRLSampler", "HiRLConfig", "HiRLSampler", "default_parts", "full_parts"]
