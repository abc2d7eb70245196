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
* model-level criteria (``model_level=True``, channel pruning only; e.g. ``lrp`` and
  ``gates``): scores need the whole model, not one weight. The evaluator computes them
  **once**, from the uncompressed model and the task's calibration inputs and gradient
  batches (a :class:`ModelContext`), as unit name -> ``out_channels`` scores, caches
  them, and turns each unit's scores into a channel mask with :func:`channel_mask`.
  Register one with::

      @register_criterion("my-criterion", model_level=True)
      def score(context: ModelContext) -> dict[str, torch.Tensor]:
          ...  # one 1-D tensor of out_channels scores per name in context.modules

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.registry import Registry

ScoreFn = Callable[[torch.Tensor, "GradientStats | None"], torch.Tensor]
ModelScoreFn = Callable[["ModelContext"], "dict[str, torch.Tensor]"]
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


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
class ModelContext:
    """What a model-level criterion sees (built once per evaluator).

    Attributes:
        model: the uncompressed model (base weights, no compression attached, eval mode).
            The criterion may run forwards and backwards and even change weights: the
            evaluator restores the base weights afterwards; it must remove any hook or
            module it adds.
        modules: unit name -> the module owning the unit's weight, in execution order.
        weights: unit name -> the unit's weight parameter (``out x ...``).
        inputs: the task's calibration input batches (``b x ...`` each).
        loss_batches: the task's ``(inputs, loss)`` gradient batches
            (:class:`~compsearch.evaluators.types.GradientBatch`), for criteria that need
            the task's loss (e.g. trained gates).
        seed: the evaluator's seed.
    """

    model: nn.Module
    modules: Mapping[str, nn.Module]
    weights: Mapping[str, torch.Tensor]
    inputs: Sequence[torch.Tensor]
    loss_batches: Sequence[Any]
    seed: int


@dataclass(frozen=True)
class Criterion:
    """An importance criterion.

    Attributes:
        name: registered name.
        score: ``(weight, grads) -> scores`` of the weight's shape (``grads`` is None
            unless ``needs_gradients``); for ``model_level`` criteria
            ``(ModelContext) -> {unit: out_channels scores}``.
        needs_gradients: the evaluator must compute :class:`GradientStats` first.
        channel_only: scores only whole output channels (``structure="channel"``).
        model_level: scores every unit at once from the model (implies ``channel_only``).
    """

    name: str
    score: Callable[..., Any]
    needs_gradients: bool = False
    channel_only: bool = False
    model_level: bool = False


#: Built-in model-level criteria of optional modules, registered when first asked for.
LAZY_CRITERIA = {"lrp": "compsearch.evaluators.lrp", "gates": "compsearch.evaluators.gates"}
CRITERIA: Registry[Criterion] = Registry("criterion", lazy=LAZY_CRITERIA)


def register_criterion(
    name: str, *, needs_gradients: bool = False, channel_only: bool = False, model_level: bool = False
) -> Callable[[_Fn], _Fn]:
    """Decorator registering a criterion as ``name``.

    ``fn(weight, grads) -> scores`` (weight-level), or with ``model_level=True``
    ``fn(context: ModelContext) -> {unit name: 1-D out_channels scores}`` (channel pruning
    only; computed once per evaluator and cached). Registering a name twice raises
    :class:`~compsearch.errors.DuplicateNameError`.
    """

    def add(fn: _Fn) -> _Fn:
        CRITERIA.register(name, Criterion(name=name, score=fn, needs_gradients=needs_gradients,
                                          channel_only=channel_only or model_level, model_level=model_level))
        return fn

    return add


def list_criteria() -> list[str]:
    """Registered criterion names (``lrp`` and ``gates`` without importing their modules), sorted."""
    return CRITERIA.names()


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name`` (``lrp``/``gates`` import their module on first
    use; unknown names raise listing the known ones)."""
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
    if crit.model_level:
        raise ConfigError(f"criterion {crit.name!r} is model-level: it scores all units from the model at once; "
                          f"use CompressionEvaluator (which computes its channel scores) and channel_mask(...)")
    with torch.no_grad():
        scores = crit.score(weight.detach(), grads)
        if structure == "channel":
            return channel_mask(scores.reshape(weight.shape[0], -1).sum(dim=1), keep=keep, weight=weight)
        if structure == "unstructured":
            mask = top_k_mask(scores.flatten(), keep_count(keep, weight.numel()))
            return mask.reshape(weight.shape).to(weight.dtype)
    raise ConfigError(f"structure={structure!r} is unknown; allowed: ['channel', 'unstructured']")


def channel_mask(scores: torch.Tensor, *, keep: float, weight: torch.Tensor) -> torch.Tensor | None:
    """Channel mask keeping the ``keep_count(keep, out)`` highest-scored output channels.

    Args:
        scores: ``out`` channel scores (higher = more important).
        keep: kept fraction in (0, 1].
        weight: the ``out x ...`` weight the mask is for (shape and dtype).

    Returns:
        None for ``keep == 1``, else a 0/1 mask ``out x 1 x ... x 1`` in ``weight``'s dtype.

    Raises:
        ConfigError: ``scores`` is not one finite score per output channel.
    """
    if keep >= 1.0:
        return None
    out = weight.shape[0]
    if tuple(scores.shape) != (out,) or not bool(torch.isfinite(scores).all()):
        raise ConfigError(f"channel scores of shape {tuple(scores.shape)} must be {out} finite values "
                          f"(one per output channel of a {tuple(weight.shape)} weight)")
    mask = top_k_mask(scores.detach().to(weight.device), keep_count(keep, out))
    return mask.reshape((out,) + (1,) * (weight.dim() - 1)).to(weight.dtype)
