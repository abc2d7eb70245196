"""The agents' state: static kernel and block features, and the Fisher prior part.

Kernel features (columns :data:`KERNEL_FEATURES`, each roughly in ``[-1, 1]`` and free of the
model's size, so that what an agent learns on them can be carried to another model):

* ``fisher``, ``fisher_rank``: the kernel's summed Fisher sensitivity (``log``, min-max scaled
  over kernels) and its rank / (K - 1); given by the prior part (:class:`FisherPrior`), zero
  with :class:`NoPrior`.
* ``param_share``, ``mac_share``: the kernel's share of the searched units' weights / MACs.
* ``depth``: mean execution depth of its units / the deepest unit's depth.
* ``conv2d``, ``conv1d``, ``linear``, ``depthwise``: fraction of its units of each kind.
* ``in_block``: position of the kernel in its block / the block's kernel count.
* layer statistics (after "Dynamic sparsity allocation via RL"), parameter-weighted over the
  kernel's units, from ``evaluator.unit_stats()`` (:func:`layer_statistics`): ``w_mean``,
  ``w_logvar``, ``w_entropy`` (weights: mean / std clipped to [-1, 1], log-variance min-max
  scaled over kernels, normalized 32-bin histogram entropy); ``a_mean``, ``a_logvar``, ``a_zero``
  (input activations over the calibration batches: same scalings, and the fraction of zeros);
  ``g_mean``, ``g_logvar`` (gradients). Without ``unit_stats`` the weight columns come from the
  evaluator's model and the others are 0; a statistic the evaluator reports as NaN (a unit whose
  module forward never runs) counts as 0.

Block features (:data:`BLOCK_FEATURES`): the parameter-weighted mean of its kernels' features,
plus ``block_param_share``, ``block_mac_share`` and ``kernel_share`` (its share of the kernels).
The dynamic parts (target, allocated budget, reconstruction error under that budget) are added
per episode by :mod:`~compsearch.search.rl.hierarchy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compsearch.search.rl.allocation import fisher_prior
from compsearch.search.rl.layout import BlockLayout

STATIC = ("param_share", "mac_share", "depth", "conv2d", "conv1d", "linear", "depthwise", "in_block")
STATS = ("w_mean", "w_logvar", "w_entropy", "a_mean", "a_logvar", "a_zero", "g_mean", "g_logvar")
KERNEL_FEATURES = ("fisher", "fisher_rank", *STATIC, *STATS)
BLOCK_FEATURES = (*KERNEL_FEATURES, "block_param_share", "block_mac_share", "kernel_share")
HIST_BINS = 32
#: UnitStats attribute -> raw statistic (mean, variance, entropy, zero fraction); see :func:`layer_statistics`.
UNIT_STATS_FIELDS = (
    "weight_mean", "weight_var", "weight_entropy", "act_mean", "act_var", "act_zero_fraction", "grad_mean", "grad_var",
)


def weight_statistics(weight: Any) -> tuple[float, float, float]:
    """``(mean, variance, normalized histogram entropy)`` of a weight tensor/array.

    The entropy is that of a ``HIST_BINS``-bin histogram over ``[min, max]``, divided by
    ``log(HIST_BINS)`` (1 = flat, 0 = all weights in one bin).
    """
    w = np.asarray(weight.detach().cpu().numpy() if hasattr(weight, "detach") else weight, dtype=np.float64).ravel()
    if w.size == 0:
        return 0.0, 0.0, 0.0
    counts, _ = np.histogram(w, bins=HIST_BINS)
    p = counts[counts > 0] / w.size
    return float(w.mean()), float(w.var()), float(-(p * np.log(p)).sum() / np.log(HIST_BINS))


def find_model(evaluator: Any) -> Any:
    """The uncompressed ``nn.Module`` an evaluator exposes (``model`` / ``base_model``), or None."""
    for attr in ("model", "base_model"):
        model = getattr(evaluator, attr, None)
        if model is not None and hasattr(model, "get_submodule"):
            return model
    return None


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min() if len(x) else 0.0
    return (x - x.min()) / span if span > 1e-12 else np.zeros_like(x)


def _raw_unit_stats(evaluator: Any, unit_names: list[str]) -> dict[str, np.ndarray] | None:
    """unit -> the 8 raw statistics of :data:`UNIT_STATS_FIELDS`, or None without ``unit_stats``."""
    get = getattr(evaluator, "unit_stats", None)
    if get is not None:
        stats = get()
        rows = {n: np.array([float(getattr(stats[n], f, 0.0)) for f in UNIT_STATS_FIELDS]) for n in unit_names if n in stats}
        return {n: np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0) for n, r in rows.items()}  # NaN: never ran
    model = find_model(evaluator)
    if model is None:
        return None
    out = {}
    for n in unit_names:
        mean, var, ent = weight_statistics(model.get_submodule(n).weight)
        out[n] = np.array([mean, var, ent, 0.0, 0.0, 0.0, 0.0, 0.0])
    return out


def layer_statistics(layout: BlockLayout, evaluator: Any) -> np.ndarray:
    """The :data:`STATS` columns ``K x 8`` (see the module docstring); zeros without statistics."""
    names = [u.name for us in layout.kernel_units for u in us]
    raw = _raw_unit_stats(evaluator, names) if evaluator is not None else None
    out = np.zeros((layout.n_kernels, len(STATS)))
    if not raw:
        return out
    for k, us in enumerate(layout.kernel_units):
        rows = [(raw[u.name], u.params) for u in us if u.name in raw]
        if not rows:
            continue
        r = np.average(np.stack([x for x, _ in rows]), axis=0, weights=[max(p, 1) for _, p in rows])
        w_m, w_v, w_e, a_m, a_v, a_z, g_m, g_v = r
        out[k] = (
            np.clip(w_m / np.sqrt(w_v + 1e-12), -1, 1), np.log(w_v + 1e-12), w_e,
            np.clip(a_m / np.sqrt(a_v + 1e-12), -1, 1), np.log(a_v + 1e-12), a_z,
            np.clip(g_m / np.sqrt(g_v + 1e-12), -1, 1), np.log(g_v + 1e-12),
        )
    for col in (1, 4, 7):  # log-variances relative to this model's kernels
        out[:, col] = _minmax(out[:, col]) if np.ptp(out[:, col]) > 0 else 0.0
    return out


def kernel_statistics(layout: BlockLayout) -> np.ndarray:
    """The :data:`STATIC` columns ``K x 8`` (see the module docstring)."""
    ku = layout.kernel_units
    params = np.array([sum(u.params for u in us) for us in ku], dtype=float)
    macs = np.array([sum(u.macs for u in us) for us in ku], dtype=float)
    max_depth = max(max(u.depth for us in ku for u in us), 1)
    pos = np.zeros(layout.n_kernels)
    for g in range(layout.n_blocks):
        ks = layout.block_kernels(g)
        pos[ks] = np.arange(len(ks)) / max(len(ks) - 1, 1)
    cols = [params / max(params.sum(), 1.0), macs / max(macs.sum(), 1.0), np.array([np.mean([u.depth for u in us]) / max_depth for us in ku])]
    cols += [np.array([np.mean([u.kind == kind for u in us]) for us in ku]) for kind in ("conv2d", "conv1d", "linear")]
    cols += [np.array([np.mean([u.groups > 1 for u in us]) for us in ku]), pos]
    return np.stack(cols, axis=1)


def block_statistics(layout: BlockLayout, kernel_feats: np.ndarray) -> np.ndarray:
    """Block features ``G x len(BLOCK_FEATURES)`` from kernel features ``K x len(KERNEL_FEATURES)``."""
    params = np.array([sum(u.params for u in us) for us in layout.kernel_units], dtype=float)
    macs = np.array([sum(u.macs for u in us) for us in layout.kernel_units], dtype=float)
    rows = []
    for g in range(layout.n_blocks):
        ks = layout.block_kernels(g)
        mean = np.average(kernel_feats[ks], axis=0, weights=np.maximum(params[ks], 1.0))
        extra = [params[ks].sum() / max(params.sum(), 1.0), macs[ks].sum() / max(macs.sum(), 1.0), len(ks) / layout.n_kernels]
        rows.append(np.concatenate([mean, extra]))
    return np.stack(rows).astype(np.float32)


# ---- the prior part ------------------------------------------------------------------------
@dataclass(frozen=True)
class PriorState:
    """What a prior part gives the hierarchy.

    Attributes:
        kernel_columns: ``K x 2`` (``fisher``, ``fisher_rank``) feature columns.
        block_sensitivity: summed sensitivity per block ``G`` (ones when unknown).
        strength: scale of the allocation logit offsets (0 = none).
    """

    kernel_columns: np.ndarray
    block_sensitivity: np.ndarray
    strength: float

    def logits(self, levels: np.ndarray) -> torch.Tensor | None:
        """Allocation logit offsets ``G x L`` (:func:`~compsearch.search.rl.allocation.fisher_prior`) or None."""
        if self.strength <= 0 or len(self.block_sensitivity) < 2:
            return None
        return fisher_prior(self.block_sensitivity, levels, self.strength)


@dataclass(frozen=True)
class FisherPrior:
    """Fisher guidance: sensitivity features for both levels and a prior on the allocation
    logits (sensitive blocks keep larger budgets).

    Attributes:
        strength: scale of the allocation prior.
    """

    strength: float = 1.0
    uses_sensitivity = True

    def build(self, layout: BlockLayout, sensitivity: Mapping[str, float] | None) -> PriorState:
        if not sensitivity:
            return NoPrior().build(layout, None)
        s = np.array([sum(float(sensitivity.get(u.name, 0.0)) for u in us) for us in layout.kernel_units])
        rank = np.argsort(np.argsort(s)) / max(len(s) - 1, 1)
        cols = np.stack([_minmax(np.log(s + 1e-12)), rank.astype(float)], axis=1)
        block = np.array([s[layout.block_kernels(g)].sum() for g in range(layout.n_blocks)])
        return PriorState(cols, block, self.strength)


@dataclass(frozen=True)
class NoPrior:
    """No Fisher guidance (the ``hirl-nofisher`` ablation): zero sensitivity features, no prior."""

    uses_sensitivity = False

    def build(self, layout: BlockLayout, sensitivity: Mapping[str, float] | None) -> PriorState:
        return PriorState(np.zeros((layout.n_kernels, 2)), np.ones(layout.n_blocks), 0.0)


def kernel_features(layout: BlockLayout, prior: PriorState, evaluator: Any) -> np.ndarray:
    """The full kernel feature matrix ``K x len(KERNEL_FEATURES)``."""
    return np.concatenate([prior.kernel_columns, kernel_statistics(layout), layer_statistics(layout, evaluator)], axis=1).astype(np.float32)
