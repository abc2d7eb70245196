"""Pruning masks at an exact keep ratio, from importance criteria registered by name.

A criterion scores every weight element (``out x ...`` scores for an ``out x ...``
weight; higher = more important). Built in:

* ``l1``: ``|w|``.
* ``l2``: ``w**2``.
* ``taylor``: ``|w * g|`` with ``g`` the mean mini-batch gradient of the
  cross-entropy (first-order Taylor estimate of the loss change when ``w`` is
  removed; Molchanov et al. 2017).
* ``fisher``: ``0.5 * F * w**2`` with ``F = E_batches[g**2]`` the diagonal of the
  empirical (mini-batch) Fisher information; the second-order estimate of the loss
  change when ``w`` is removed (Optimal-Brain-Damage with the Fisher as Hessian).
* ``nni-l1``, ``nni-l2``, ``nni-fpgm`` (channel pruning only; need NNI,
  ``pip install "compsearch[nni]"``): the per-channel metric computed by NNI's own
  ``L1NormPruner``, ``L2NormPruner`` and ``FPGMPruner`` (FPGM: a filter's summed
  distance to all others, so filters near the geometric median go first; He et al.
  2019). ``nni-l1``/``nni-l2`` keep the same channels as ``l1``/``l2`` (tested);
  only the number kept follows this module's rounding, not NNI's (which keeps
  ``n - int(n * (1 - keep))``).

Structured pruning scores an output channel by the **sum** of its element scores
(``l1`` -> the channel's L1 norm, ``l2`` -> its squared L2 norm, ...) and keeps
whole rows of axis 0; unstructured pruning keeps single elements of the unit.

Rounding. For ``n`` candidates (``out_channels`` for structured, ``numel`` for
unstructured pruning) the number kept is ``k = max(1, floor(keep * n + 0.5))``
(round half up, at least one), e.g. ``keep=0.5`` of 5 channels keeps 3. The ``k``
highest scores are kept; among equal scores the lower flat index wins, so masks are
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from compsearch.errors import ConfigError
from compsearch.registry import Registry

ScoreFn = Callable[[torch.Tensor, "GradientStats | None"], torch.Tensor]


@dataclass(frozen=True)
class GradientStats:
    """Gradient statistics of one unit's weight over a few mini-batches.

    Attributes:
        mean: ``E_batches[g]``, same shape as the weight.
        sq_mean: ``E_batches[g**2]`` (diagonal empirical Fisher), same shape as the weight.
    """

    mean: torch.Tensor
    sq_mean: torch.Tensor


@dataclass(frozen=True)
class Criterion:
    """An importance criterion.

    Attributes:
        name: registered name.
        score: ``(weight, grads) -> scores`` of the weight's shape; ``grads`` is None
            unless ``needs_gradients``.
        needs_gradients: the evaluator must compute :class:`GradientStats` first.
        channel_only: scores only whole output channels (``structure="channel"``).
    """

    name: str
    score: ScoreFn
    needs_gradients: bool = False
    channel_only: bool = False


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str, *, needs_gradients: bool = False, channel_only: bool = False) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator registering ``fn(weight, grads) -> scores`` as criterion ``name``.

    Registering a name twice raises :class:`~compsearch.errors.DuplicateNameError`.
    """

    def add(fn: ScoreFn) -> ScoreFn:
        CRITERIA.register(name, Criterion(name=name, score=fn, needs_gradients=needs_gradients, channel_only=channel_only))
        return fn

    return add


def list_criteria() -> list[str]:
    """Registered criterion names, sorted."""
    return CRITERIA.names()


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name`` (unknown names raise listing the known ones)."""
    return CRITERIA.get(name)


def _need(grads: GradientStats | None, name: str) -> GradientStats:
    if grads is None:
        raise ConfigError(f"criterion {name!r} needs gradient statistics; pass grads=GradientStats(...)")
    return grads


@register_criterion("l1")
def _l1(weight: torch.Tensor, grads: GradientStats | None) -> torch.Tensor:
    return weight.abs()


@register_criterion("l2")
def _l2(weight: torch.Tensor, grads: GradientStats | None) -> torch.Tensor:
    return weight.square()


@register_criterion("taylor", needs_gradients=True)
def _taylor(weight: torch.Tensor, grads: GradientStats | None) -> torch.Tensor:
    return (weight * _need(grads, "taylor").mean).abs()


@register_criterion("fisher", needs_gradients=True)
def _fisher(weight: torch.Tensor, grads: GradientStats | None) -> torch.Tensor:
    return 0.5 * _need(grads, "fisher").sq_mean * weight.square()


def _nni_criterion(pruner: str) -> ScoreFn:
    def score(weight: torch.Tensor, grads: GradientStats | None) -> torch.Tensor:
        from compsearch.evaluators.nni_criteria import nni_channel_metric

        out = torch.zeros_like(weight).reshape(weight.shape[0], -1)
        out[:, 0] = nni_channel_metric(pruner, weight).to(out)  # a row sums to NNI's metric exactly
        return out.reshape(weight.shape)

    return score


for _name, _pruner in (("nni-l1", "L1NormPruner"), ("nni-l2", "L2NormPruner"), ("nni-fpgm", "FPGMPruner")):
    register_criterion(_name, channel_only=True)(_nni_criterion(_pruner))


def keep_count(keep: float, n: int) -> int:
    """Number of candidates kept: ``max(1, floor(keep * n + 0.5))``, at most ``n``."""
    if not 0 < keep <= 1:
        raise ConfigError(f"keep={keep!r} must be in (0, 1]")
    return min(n, max(1, math.floor(keep * n + 0.5)))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of the 1-D ``scores`` (ties: lower index wins).

    Args:
        scores: ``n`` scores.
        k: 1..n.

    Returns:
        ``n`` booleans with exactly ``k`` True.
    """
    n = scores.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    scores = scores.float()
    kth = -torch.kthvalue(-scores, k).values  # the k-th largest value
    mask = scores > kth
    missing = k - int(mask.sum())
    ties = torch.nonzero(scores == kth).flatten()[:missing]  # nonzero lists indices ascending
    mask[ties] = True
    return mask


def compute_mask(
    weight: torch.Tensor,
    *,
    keep: float,
    structure: str,
    criterion: str | Criterion = "l1",
    grads: GradientStats | None = None,
) -> torch.Tensor | None:
    """Pruning mask of one weight.

    Args:
        weight: ``out x ...`` weight.
        keep: kept fraction in (0, 1]; rounding in the module docstring.
        structure: ``"channel"`` (whole output channels) or ``"unstructured"``.
        criterion: registered name or :class:`Criterion`.
        grads: gradient statistics (criteria with ``needs_gradients``).

    Returns:
        None for ``keep == 1``; else a float 0/1 mask, ``out x 1 x ... x 1`` for
        ``"channel"`` (broadcasts over the weight) or the weight's shape.
    """
    if keep >= 1.0:
        return None
    crit = criterion if isinstance(criterion, Criterion) else get_criterion(criterion)
    if crit.channel_only and structure != "channel":
        raise ConfigError(f"criterion {crit.name!r} scores whole channels only, but structure={structure!r}; "
                          f"use structure 'channel' (space choices) or a criterion such as 'l1'")
    with torch.no_grad():
        scores = crit.score(weight.detach(), grads)
        if structure == "channel":
            per_channel = scores.reshape(weight.shape[0], -1).sum(dim=1)
            mask = top_k_mask(per_channel, keep_count(keep, weight.shape[0]))
            shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
        elif structure == "unstructured":
            mask = top_k_mask(scores.flatten(), keep_count(keep, weight.numel()))
            shape = tuple(weight.shape)
        else:
            raise ConfigError(f"structure={structure!r} is unknown; allowed: ['channel', 'unstructured']")
    return mask.reshape(shape).to(weight.dtype)
