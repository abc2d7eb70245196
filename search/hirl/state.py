"""Per-block state of the RL agents: which dimensions belong to which block, and the
block feature matrix ``G x F``.

Blocks are the space's groups (``space.groups`` of the built-in spaces: one unit in
``joint``, one block in ``block``, all units in ``uniform``). A space without
``.groups`` is split by parameter-name prefix (``"<group>.<field>"``), each group
holding the units whose name equals the prefix (all units when none matches).

Block features (columns of :func:`block_features`, all in roughly ``[0, 1]``):

* ``fisher``: ``log`` of the block's summed Fisher sensitivity, min-max scaled over
  blocks; ``fisher_rank``: its rank / (G - 1). Both 0 without sensitivities or with
  Fisher guidance turned off.
* ``param_share``, ``mac_share``: the block's share of the searched units' weights / MACs.
* ``depth``: mean execution depth of its units / the deepest unit's depth.
* ``conv2d``, ``conv1d``, ``linear``, ``depthwise``: fraction of its units of each type.
* ``w_mean``, ``w_logvar``, ``w_entropy``: weight statistics when the model is
  available (``evaluator.model`` or ``evaluator.base_model``): mean of the weights
  (times 10, clipped to [-1, 1]), log-variance min-max scaled over blocks, and the
  entropy of a 32-bin histogram of the weights / log(32). Without a model they are 0
  (the policy then relies on the other features).
* ``unit_share``: the block's share of the searched units.

The remaining budget and the block's allocation are appended per episode by the
agents (they are not static).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compsearch.spaces.base import Space
from compsearch.spaces.units import Unit

FEATURE_NAMES = (
    "fisher", "fisher_rank", "param_share", "mac_share", "depth",
    "conv2d", "conv1d", "linear", "depthwise",
    "w_mean", "w_logvar", "w_entropy", "unit_share",
)
HIST_BINS = 32


@dataclass(frozen=True)
class GroupLayout:
    """How the space's dimensions map onto blocks and per-block heads.

    Attributes:
        groups: block names ``G``, in execution order.
        units: the units of each block.
        dim_group: block index of every dimension, ``D``.
        dim_head: head index of every dimension, ``D``.
        heads: ``(field, n_choices)`` of each head type ``H`` (shared by all blocks).
        head_mask: ``G x H`` bool, which heads a block has.
        dim_field: field name of every dimension (``w_bits``, ``keep``, ...).
    """

    groups: tuple[str, ...]
    units: tuple[tuple[Unit, ...], ...]
    dim_group: np.ndarray
    dim_head: np.ndarray
    heads: tuple[tuple[str, int], ...]
    head_mask: np.ndarray
    dim_field: tuple[str, ...]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def group_dims(self, g: int) -> np.ndarray:
        """Dimension indices of block ``g``."""
        return np.flatnonzero(self.dim_group == g)

    def to_slots(self, actions: np.ndarray) -> np.ndarray:
        """``E x D`` dimension actions -> ``E x G x H`` slot actions (unused entries 0)."""
        out = np.zeros((len(actions), self.n_groups, len(self.heads)), dtype=np.int64)
        out[:, self.dim_group, self.dim_head] = actions
        return out

    def from_slots(self, slots: np.ndarray) -> np.ndarray:
        """``E x G x H`` slot actions -> ``E x D`` dimension actions."""
        return np.asarray(slots)[:, self.dim_group, self.dim_head]


def group_layout(space: Space) -> GroupLayout:
    """The :class:`GroupLayout` of ``space`` (see the module docstring)."""
    dims = space.dimensions()
    searched = tuple(getattr(space, "units", space.all_units))
    groups_attr: Mapping[str, Sequence[Unit]] | None = getattr(space, "groups", None)
    if groups_attr is not None:
        names = list(groups_attr)
        units = [tuple(groups_attr[g]) for g in names]
    else:
        names = list(dict.fromkeys(d.group for d in dims))
        by_name = {u.name: u for u in searched}
        units = [(by_name[g],) if g in by_name else searched for g in names]
    index = {g: i for i, g in enumerate(names)}
    heads: list[tuple[str, int]] = []
    dim_group, dim_head, fields = [], [], []
    for d in dims:
        g, field = d.group, d.field
        key = (field, d.size)
        if key not in heads:
            heads.append(key)
        dim_group.append(index[g] if g in index else 0)
        dim_head.append(heads.index(key))
        fields.append(field)
    mask = np.zeros((len(names), len(heads)), dtype=bool)
    mask[dim_group, dim_head] = True
    return GroupLayout(
        groups=tuple(names), units=tuple(units), dim_group=np.asarray(dim_group, dtype=np.int64),
        dim_head=np.asarray(dim_head, dtype=np.int64), heads=tuple(heads), head_mask=mask, dim_field=tuple(fields),
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


def _fisher_columns(layout: GroupLayout, sensitivity: Mapping[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
    g = layout.n_groups
    if not sensitivity:
        return np.zeros(g), np.zeros(g)
    s = np.array([sum(float(sensitivity.get(u.name, 0.0)) for u in us) for us in layout.units])
    log_s = np.log(s + 1e-12)
    rank = np.argsort(np.argsort(s)) / max(g - 1, 1)
    return _minmax(log_s), rank.astype(float)


def group_sensitivity(layout: GroupLayout, sensitivity: Mapping[str, float] | None) -> np.ndarray:
    """Summed Fisher sensitivity per block, ``G`` (ones when unknown)."""
    if not sensitivity:
        return np.ones(layout.n_groups)
    return np.array([sum(float(sensitivity.get(u.name, 0.0)) for u in us) for us in layout.units])


def _weight_columns(layout: GroupLayout, model: Any) -> np.ndarray:
    out = np.zeros((layout.n_groups, 3))
    if model is None:
        return out
    for i, us in enumerate(layout.units):
        ws = [model.get_submodule(u.name).weight for u in us]
        flat = np.concatenate([w.detach().cpu().numpy().ravel() for w in ws])
        mean, var, ent = weight_statistics(flat)
        out[i] = (np.clip(10 * mean, -1, 1), np.log(var + 1e-12), ent)
    out[:, 1] = _minmax(out[:, 1])
    return out


def block_features(
    layout: GroupLayout,
    *,
    sensitivity: Mapping[str, float] | None = None,
    model: Any = None,
    fisher: bool = True,
) -> np.ndarray:
    """The static block feature matrix ``G x len(FEATURE_NAMES)`` (see the module docstring)."""
    all_units = [u for us in layout.units for u in us]
    params = np.array([sum(u.params for u in us) for us in layout.units], dtype=float)
    macs = np.array([sum(u.macs for u in us) for us in layout.units], dtype=float)
    max_depth = max(max(u.depth for u in all_units), 1)
    fisher_cols = _fisher_columns(layout, sensitivity if fisher else None)
    cols = [
        fisher_cols[0], fisher_cols[1],
        params / max(params.sum(), 1.0), macs / max(macs.sum(), 1.0),
        np.array([np.mean([u.depth for u in us]) / max_depth for us in layout.units]),
    ]
    for kind in ("conv2d", "conv1d", "linear"):
        cols.append(np.array([np.mean([u.kind == kind for u in us]) for us in layout.units]))
    cols.append(np.array([np.mean([u.groups > 1 for u in us]) for us in layout.units]))
    w = _weight_columns(layout, model)
    cols += [w[:, 0], w[:, 1], w[:, 2]]
    cols.append(np.array([len(us) / len(all_units) for us in layout.units]))
    return np.stack(cols, axis=1).astype(np.float32)
