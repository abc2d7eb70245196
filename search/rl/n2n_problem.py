"""What ``n2n``'s two policies see of one space: the removable blocks and kernels, their
features, and the map between policy actions and the space's dimension actions.

**Stage 1** covers the space's depth dimensions (``Dimension.field == "keep_block"``, from the
``depth`` space or the ``depth`` part of a composition such as ``depth+joint``); a space without
them has no stage 1 (nothing can be removed, every block is kept). **Stage 2** covers every
other dimension, grouped into kernels by :func:`~compsearch.search.rl.layout.block_layout`; a
space with only depth dimensions has no stage 2.

Block features (:data:`BLOCK_COLUMNS`, free of the model's size, so a policy learned on one
model reads another's): ``param_share`` / ``mac_share`` (the block's removed units' share of the
model's unit weights / MACs), ``depth`` (mean execution depth of its units / the deepest
unit's), ``shortcut`` (1 when removal leaves its shortcut, 0 for the identity), ``stage_pos``
(its position among the removable blocks of its stage / (count - 1)), ``stage_share`` (1 / that
count), ``width`` (its widest unit's output channels / the model's widest), ``unit_share`` (its
units / the most any removable block has), ``fisher`` (its summed Fisher sensitivity, ``log``,
min-max scaled over blocks; 0 without sensitivities). Kernel features are
:data:`~compsearch.search.rl.state.KERNEL_FEATURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from compsearch.search.rl.layout import BlockLayout, block_layout
from compsearch.search.rl.state import FisherPrior, NoPrior, kernel_features
from compsearch.spaces.base import Dimension, Space
from compsearch.spaces.depth import DEPTH_FIELD
from compsearch.spaces.units import Unit

BLOCK_COLUMNS = ("param_share", "mac_share", "depth", "shortcut", "stage_pos", "stage_share", "width", "unit_share", "fisher")


class _DimsView:
    """The part of a space made of some of its dimensions (what :func:`block_layout` reads)."""

    def __init__(self, space: Space, dims: list[Dimension]) -> None:
        self.name = space.name
        self._dims = dims
        self.all_units = space.all_units
        self.units = getattr(space, "units", space.all_units)
        groups = getattr(space, "groups", None)
        if groups is not None:
            self.groups = groups

    def dimensions(self) -> list[Dimension]:
        return list(self._dims)


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if len(x) else 0.0
    return (x - x.min()) / span if span > 1e-12 else np.zeros_like(x)


class N2NProblem:
    """The two stages of one space (module docstring).

    Args:
        space: the searched space.
        evaluator: optional; gives sensitivities and layer statistics for the features.
        fisher: use Fisher sensitivities (``evaluator.sensitivity()``) in the features.

    Attributes:
        depth_dims: dimension indices of stage 1, ``B`` (execution order of their blocks).
        blocks: block names ``B``; ``shrink_dims`` the other dimension indices.
        layout: the stage-2 :class:`BlockLayout` (kernels ``K``, heads ``H``), or None.
        block_feats: ``B x len(BLOCK_COLUMNS)``; ``kernel_feats``: ``K x len(KERNEL_FEATURES)``.
        removal: ``K x B``, the fraction of kernel ``k``'s units that removing block ``b`` removes.
    """

    def __init__(self, space: Space, *, evaluator: Any = None, fisher: bool = True) -> None:
        self.space = space
        dims = space.dimensions()
        self.n_dims = len(dims)
        self.depth_dims = np.array([i for i, d in enumerate(dims) if d.field == DEPTH_FIELD], dtype=np.int64)
        self.shrink_dims = np.array([i for i, d in enumerate(dims) if d.field != DEPTH_FIELD], dtype=np.int64)
        self.blocks = tuple(dims[i].group for i in self.depth_dims)
        self._keep_index = np.array([dims[i].choices.index(True) for i in self.depth_dims], dtype=np.int64)
        sens = None
        if fisher and evaluator is not None and hasattr(evaluator, "sensitivity"):
            sens = evaluator.sensitivity()
        removed_units, shortcuts = self._removed_units(dims)
        self.layout: BlockLayout | None = None
        self.kernel_feats = np.zeros((0, 0), dtype=np.float32)
        self.removal = np.zeros((0, len(self.blocks)))
        if len(self.shrink_dims):
            view = _DimsView(space, [dims[i] for i in self.shrink_dims])
            self.layout = block_layout(cast(Space, view), merge=True)
            prior = FisherPrior().build(self.layout, sens) if sens else NoPrior().build(self.layout, None)
            self.kernel_feats = kernel_features(self.layout, prior, evaluator)
            self.removal = np.array([[np.mean([u.name in removed_units[b] for u in us]) for b in range(len(self.blocks))]
                                     for us in self.layout.kernel_units]).reshape(self.layout.n_kernels, len(self.blocks))
        self.block_feats = self._block_features(removed_units, shortcuts, sens)

    # ---- set-up ----------------------------------------------------------------------------
    def _removed_units(self, dims: list[Dimension]) -> tuple[list[set[str]], list[bool]]:
        """Per block: the units removing it alone removes, and whether it leaves a shortcut."""
        base = [self._keep_choice(i) if i in set(self.depth_dims.tolist()) else 0 for i in range(len(dims))]
        out, shortcut = [], []
        for j, i in enumerate(self.depth_dims):
            actions = list(base)
            actions[int(i)] = 1 - int(self._keep_index[j])
            policy = self.space.decode(self.space.params_from_actions(actions))
            out.append({u.name for u in self.space.all_units if policy.removes(u.name)})
            shortcut.append(policy.removed.get(self.blocks[j]) is not None)
        return out, shortcut

    def _keep_choice(self, dim: int) -> int:
        return int(self._keep_index[list(self.depth_dims).index(dim)])

    def _block_features(self, removed: list[set[str]], shortcut: list[bool], sens: Mapping[str, float] | None) -> np.ndarray:
        n = len(self.blocks)
        if n == 0:
            return np.zeros((0, len(BLOCK_COLUMNS)), dtype=np.float32)
        units: dict[str, Unit] = {u.name: u for u in self.space.all_units}
        params = max(sum(u.params for u in units.values()), 1)
        macs = max(sum(u.macs for u in units.values()), 1)
        max_depth = max(max(u.depth for u in units.values()), 1)
        widest = max(max(u.out_channels for u in units.values()), 1)
        most = max(max(len(r) for r in removed), 1)
        stages = [b.rpartition(".")[0] for b in self.blocks]
        rows = []
        for b in range(n):
            us = [units[name] for name in removed[b]]
            same = [j for j in range(n) if stages[j] == stages[b]]
            rows.append([
                sum(u.params for u in us) / params, sum(u.macs for u in us) / macs,
                float(np.mean([u.depth for u in us])) / max_depth if us else 0.0,
                float(shortcut[b]), same.index(b) / max(len(same) - 1, 1), 1.0 / len(same),
                max((u.out_channels for u in us), default=0) / widest, len(us) / most, 0.0,
            ])
        feats = np.array(rows, dtype=np.float64)
        if sens:
            s = np.array([sum(float(sens.get(name, 0.0)) for name in removed[b]) for b in range(n)])
            feats[:, -1] = _minmax(np.log(s + 1e-12))
        return feats.astype(np.float32)

    # ---- actions ---------------------------------------------------------------------------
    def keep_from_actions(self, actions: np.ndarray) -> np.ndarray:
        """``E x D`` dimension actions -> ``E x B`` keep flags (1 = keep)."""
        actions = np.asarray(actions, dtype=np.int64).reshape(-1, self.n_dims)
        return (actions[:, self.depth_dims] == self._keep_index).astype(np.int64)

    def removed_kernels(self, keep: np.ndarray) -> np.ndarray:
        """``E x B`` keep flags -> ``E x K`` removed fraction of every kernel (clipped to 1)."""
        keep = np.asarray(keep, dtype=np.float64).reshape(-1, len(self.blocks))
        if self.layout is None:
            return np.zeros((len(keep), 0))
        return np.clip((1.0 - keep) @ self.removal.T, 0.0, 1.0) if len(self.blocks) else np.zeros((len(keep), self.layout.n_kernels))

    def slots_from_actions(self, actions: np.ndarray) -> np.ndarray:
        """``E x D`` dimension actions -> ``E x K x H`` stage-2 kernel actions."""
        assert self.layout is not None
        actions = np.asarray(actions, dtype=np.int64).reshape(-1, self.n_dims)
        return self.layout.to_slots(actions[:, self.shrink_dims])

    def to_actions(self, keep: np.ndarray | None, slots: np.ndarray | None) -> np.ndarray:
        """Stage actions (``E x B`` keep flags, ``E x K x H`` slots) -> ``E x D`` dimension actions."""
        e = len(keep) if keep is not None else len(slots) if slots is not None else 1
        out = np.zeros((e, self.n_dims), dtype=np.int64)
        if keep is not None and len(self.blocks):
            out[:, self.depth_dims] = np.where(np.asarray(keep) == 1, self._keep_index, 1 - self._keep_index)
        if slots is not None and self.layout is not None:
            out[:, self.shrink_dims] = self.layout.from_slots(np.asarray(slots))
        return out


__all__ = ["BLOCK_COLUMNS", "N2NProblem"]
