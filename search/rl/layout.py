"""How a space's dimensions map onto the model's blocks and kernels (the hierarchy's slots).

* A **kernel** is what one space group sets: a unit (``joint``, ``quant``, ``prune``) or every
  unit of a block (``block``). Each of its dimensions is one head (``w_bits``, ``keep``,
  ``scheme``, ...) of the low level's multi-discrete action for that kernel.
* A **block** is a model block (``Unit.block``, from ``discover_units``: residual blocks,
  transformer blocks, stages); the high level allocates the budget across blocks.

A dimension's ``group`` (a unit name, a block name, or ``""`` for all searched units) says
which units it sets. When those units lie in several model blocks (``uniform``, or a custom
group across blocks), the hierarchy cannot give each block its own budget: :func:`block_layout`
raises :class:`LayoutError` naming the dimension, unless ``merge=True`` (used without a high
level), which merges the blocks such a kernel spans into one (named ``"a+b"``).

Shapes: ``D`` dimensions, ``K`` kernels, ``G`` blocks, ``H`` head types, ``E`` episodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compsearch.errors import ConfigError
from compsearch.spaces.base import Space
from compsearch.spaces.units import Unit


class LayoutError(ConfigError):
    """A space the hierarchy cannot map onto model blocks."""


@dataclass(frozen=True)
class BlockLayout:
    """Blocks, kernels and heads of one space.

    Attributes:
        blocks: block names ``G``, in execution order.
        kernels: kernel names ``K`` (the space groups), in dimension order.
        kernel_units: the units each kernel sets.
        kernel_block: block index of every kernel, ``K``.
        dim_kernel: kernel index of every dimension, ``D``.
        dim_head: head index of every dimension, ``D``.
        heads: ``(field, n_choices)`` of each head type ``H`` (shared by all kernels).
        head_mask: ``K x H`` bool, which heads a kernel has.
    """

    blocks: tuple[str, ...]
    kernels: tuple[str, ...]
    kernel_units: tuple[tuple[Unit, ...], ...]
    kernel_block: np.ndarray
    dim_kernel: np.ndarray
    dim_head: np.ndarray
    heads: tuple[tuple[str, int], ...]
    head_mask: np.ndarray

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_kernels(self) -> int:
        return len(self.kernels)

    def kernel_dims(self, k: int) -> np.ndarray:
        """Dimension indices of kernel ``k``."""
        return np.flatnonzero(self.dim_kernel == k)

    def block_kernels(self, g: int) -> np.ndarray:
        """Kernel indices of block ``g``."""
        return np.flatnonzero(self.kernel_block == g)

    def block_units(self, g: int) -> tuple[Unit, ...]:
        """Every unit block ``g``'s kernels set."""
        return tuple(u for k in self.block_kernels(g) for u in self.kernel_units[k])

    def to_slots(self, actions: np.ndarray) -> np.ndarray:
        """``E x D`` dimension actions -> ``E x K x H`` kernel actions (unused heads 0)."""
        actions = np.asarray(actions, dtype=np.int64)
        out = np.zeros((len(actions), self.n_kernels, len(self.heads)), dtype=np.int64)
        out[:, self.dim_kernel, self.dim_head] = actions
        return out

    def from_slots(self, slots: np.ndarray) -> np.ndarray:
        """``E x K x H`` kernel actions -> ``E x D`` dimension actions."""
        return np.asarray(slots)[:, self.dim_kernel, self.dim_head]


def _kernel_units(space: Space, group: str, dim_name: str) -> tuple[Unit, ...]:
    groups: Mapping[str, Sequence[Unit]] | None = getattr(space, "groups", None)
    if groups is not None and group in groups:
        return tuple(groups[group])
    searched = tuple(getattr(space, "units", space.all_units))
    if group == "":
        return searched
    by_name = [u for u in space.all_units if u.name == group]
    by_block = [u for u in searched if u.block == group]
    if by_name or by_block:
        return tuple(by_name or by_block)
    raise LayoutError(
        f"space {space.name!r}: dimension {dim_name!r} has group={group!r}, which is neither a unit nor a block "
        f"of the model; a space used by the hierarchy must set Dimension.group to a unit name, a block name or ''"
    )


def _merge(kernel_blocks: list[set[str]]) -> dict[str, str]:
    """Union of the blocks that one kernel spans: block name -> merged block's first name."""
    parent: dict[str, str] = {}

    def find(b: str) -> str:
        while parent.setdefault(b, b) != b:
            b = parent[b]
        return b

    for blocks in kernel_blocks:
        first, *rest = sorted(blocks)
        for b in rest:
            parent[find(b)] = find(first)
    return {b: find(b) for bs in kernel_blocks for b in bs}


def block_layout(space: Space, *, merge: bool = False) -> BlockLayout:
    """The :class:`BlockLayout` of ``space`` (see the module docstring).

    Raises:
        LayoutError: a dimension's units span several blocks (``merge=False``), or its group
            names no unit or block.
    """
    dims = space.dimensions()
    names = list(dict.fromkeys(d.group for d in dims))
    units = {g: _kernel_units(space, g, next(d.name for d in dims if d.group == g)) for g in names}
    spans = {g: {u.block for u in us} for g, us in units.items()}
    wide = [g for g in names if len(spans[g]) > 1]
    if wide and not merge:
        g = wide[0]
        dim = next(d.name for d in dims if d.group == g)
        raise LayoutError(
            f"space {space.name!r}: dimension {dim!r} sets group {g or 'all units'!r}, whose units lie in "
            f"{len(spans[g])} model blocks {sorted(spans[g])[:4]}; the hierarchy gives every block its own budget "
            f"and cannot split one choice across blocks. Use a space whose groups are units or blocks "
            f"('joint', 'block', 'quant', 'prune'), or a strategy without a high level ('hirl', 'hirl-flat', 'sls')"
        )
    root = _merge([spans[g] for g in names])
    first_depth: dict[str, int] = {}
    for g in names:
        for u in units[g]:
            first_depth[u.block] = min(first_depth.get(u.block, u.depth), u.depth)
    members: dict[str, list[str]] = {}
    for b in sorted(first_depth, key=lambda b: (first_depth[b], b)):
        members.setdefault(root[b], []).append(b)
    rename = {b: "+".join(ms) for ms in members.values() for b in ms}  # a merged block is named 'a+b'
    blocks = list(dict.fromkeys(rename[b] for b in sorted(first_depth, key=lambda b: (first_depth[b], b))))
    block_index = {b: i for i, b in enumerate(blocks)}
    heads: list[tuple[str, int]] = []
    dim_head = []
    for d in dims:
        if (d.field, d.size) not in heads:
            heads.append((d.field, d.size))
        dim_head.append(heads.index((d.field, d.size)))
    kernel_index = {g: i for i, g in enumerate(names)}
    dim_kernel = np.array([kernel_index[d.group] for d in dims], dtype=np.int64)
    mask = np.zeros((len(names), len(heads)), dtype=bool)
    for d, k, h in zip(dims, dim_kernel, dim_head, strict=True):
        if mask[k, h]:
            raise LayoutError(
                f"space {space.name!r}: dimension {d.name!r} sets field {d.field!r} of group {d.group!r} a second "
                f"time; every group may have one dimension per field"
            )
        mask[k, h] = True
    return BlockLayout(
        blocks=tuple(blocks), kernels=tuple(names), kernel_units=tuple(units[g] for g in names),
        kernel_block=np.array([block_index[rename[units[g][0].block]] for g in names], dtype=np.int64),
        dim_kernel=dim_kernel, dim_head=np.asarray(dim_head, dtype=np.int64), heads=tuple(heads), head_mask=mask,
    )
