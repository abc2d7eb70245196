"""Block grouping: units grouped by the model's own module structure.

A *block* is the repeated element of a network -- a residual block, a dense layer,
a transformer block, an inverted-residual block, a cell -- found from the module
tree without reading names:

* A **container** is an ``nn.ModuleList``/``nn.ModuleDict`` (or subclass) or an
  ``nn.Sequential`` that keeps ``Sequential.forward``; it is never a block itself.
* The **direct members** of a module are its children that hold units, looking
  through containers (``stages -> stages.1 -> stages.1.blocks.0`` when ``stages``
  and ``stages.1`` are containers).
* A module is a **stage** when direct members of one class, each holding at least
  two units, repeat as an indexed sequence: at least two reached through a container
  (``layer1.0``, ``denseblock1.denselayer2`` in a ``ModuleDict``), or at least three
  attributes named with a trailing number (``s3.b1``, ``s3.b2``, ``s3.b3``). So a ResNet
  layer, a ConvNeXt stage, a DenseNet dense block or a RegNet stage is a stage, while
  a transformer block (one ``Attention``, one ``Mlp``), a mixer block (``mlp_tokens``,
  ``mlp_channels``) or a ghost bottleneck (``ghost1``, ``ghost2``) is not.
* A module is **split** (looked into, never a block) when it is the model, a
  container, a stage, or a wrapper whose one direct member holds all its units.
* The block of a unit is its **outermost** enclosing module (the unit's own module
  excluded, except for a unit that is a parameter path such as ``attn.in_proj_weight``,
  whose module counts) that is not split; a unit with no such module is a block of
  its own (the stem, the classifier, layers of a plain ``nn.Sequential``).
* A lone unit inside a stage (a downsampling conv, a dense-net transition) joins the
  block of the next unit in execution order when that one lies in the same stage,
  else the previous one. In a model with stages, consecutive lone units under one
  module other than the model (the convs of a multi-conv stem, a list of transitions)
  become one block named after that module. The stem and the head are never merged;
  a model without stages (a plain ``nn.Sequential`` CNN) keeps one block per layer.

:func:`check_grouping` measures the properties the tests hold every tested timm family
to: the largest block has at most half the units; at most 30% of the blocks are single
units, not counting the stem's and the head's blocks (single by design); every block is
one contiguous run in execution order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

from torch import nn

from compsearch.errors import ConfigError

BlockOverride = Callable[[str], str] | Mapping[str, str]


def is_container(module: nn.Module) -> bool:
    """``ModuleList``/``ModuleDict`` (any subclass), or a ``Sequential`` keeping its forward."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return True
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


class _Tree:
    """The module tree restricted to modules holding units."""

    def __init__(self, model: nn.Module, paths: Mapping[str, str]) -> None:
        self.modules = dict(model.named_modules())
        self.counts: Counter[str] = Counter()
        for path in paths.values():
            parts = path.split(".") if path else []
            for i in range(len(parts) + 1):
                self.counts[".".join(parts[:i])] += 1
        self._stage: dict[str, bool] = {}

    def members(self, path: str, via: bool) -> Iterator[tuple[str, bool]]:
        """Direct members of ``path``: (child path, reached through a container)."""
        for name, child in self.modules[path].named_children():
            cpath = f"{path}.{name}" if path else name
            if not self.counts[cpath]:
                continue
            if is_container(child):
                yield from self.members(cpath, True)
            else:
                yield cpath, via

    def is_stage(self, path: str) -> bool:
        if path not in self._stage:
            listed: Counter[type] = Counter()
            named: Counter[type] = Counter()
            members = list(self.members(path, is_container(self.modules[path])))
            for p, via in members:
                if self.counts[p] >= 2 and (via or p[-1].isdigit()):
                    (listed if via else named)[type(self.modules[p])] += 1
            self._stage[path] = any(listed[c] + named[c] >= (2 if listed[c] else 3) for c in listed | named)
        return self._stage[path]

    def is_split(self, path: str) -> bool:
        """The model, a container, a stage, or a wrapper of one member holding all its units."""
        if not path or is_container(self.modules[path]) or self.is_stage(path):
            return True
        members = list(self.members(path, False))
        return len(members) == 1 and self.counts[members[0][0]] == self.counts[path] >= 2


def _ancestors(path: str, own: bool) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + (1 if own else 0))]


def structural_blocks(
    model: nn.Module, paths: Mapping[str, str], order: Sequence[str], protected: Sequence[str] = ()
) -> dict[str, str]:
    """Block of every unit by the rules of the module docstring.

    Args:
        model: the model.
        paths: unit name -> qualified name of the module owning its weight (the unit name
            itself for a Conv/Linear module; the owner for a parameter-path unit).
        order: unit names in execution order.
        protected: units never merged with others (the stem and the head).

    Returns:
        unit name -> block name (a module path, or the unit's name).
    """
    tree = _Tree(model, paths)
    blocks: dict[str, str] = {}
    for unit in order:
        path = paths[unit]
        own = path != unit
        chosen = next((a for a in _ancestors(path, own) if not tree.is_split(a)), None)
        blocks[unit] = chosen if chosen is not None else unit
    sizes = Counter(blocks.values())
    staged = False
    for i in reversed(range(len(order))):
        unit = order[i]
        stages = [a for a in _ancestors(paths[unit], False) if tree.is_stage(a)]
        staged = staged or bool(stages)
        if sizes[blocks[unit]] != 1 or unit in protected or not stages:
            continue
        stage = stages[-1] + "."
        for j in (i + 1, i - 1):
            other = order[j] if 0 <= j < len(order) else None
            if other is not None and other not in protected and paths[other].startswith(stage):
                sizes[blocks[unit]] -= 1
                blocks[unit] = blocks[other]
                sizes[blocks[other]] += 1
                break
    if staged:
        _merge_runs(order, paths, blocks, {u for u in order if sizes[blocks[u]] == 1} - set(protected), tree)
    return blocks


def _common(a: str, b: str) -> str:
    """The deepest common module path of ``a`` and ``b`` (``""`` = the model)."""
    pa, pb = a.split("."), b.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[n] == pb[n]:
        n += 1
    return ".".join(pa[:n])


def _merge_runs(order: Sequence[str], paths: Mapping[str, str], blocks: dict[str, str], single: set[str],
                tree: _Tree) -> None:
    """Consecutive single-unit blocks under one module other than the model and a stage (a
    multi-conv stem, a transition list) become one block named after that module."""
    i = 0
    while i < len(order):
        j, common = i, ""
        while order[i] in single and j + 1 < len(order) and order[j + 1] in single:
            c = _common(paths[order[i]], paths[order[j + 1]])
            if not c or tree.is_stage(c) or (common and c != common):
                break
            common, j = c, j + 1
        for unit in order[i : j + 1] if j > i else ():
            blocks[unit] = common
        i = j + 1


def override_blocks(names: Sequence[str], blocks: BlockOverride, default: Mapping[str, str]) -> dict[str, str]:
    """Apply a user's block override: a function unit name -> block name, or a mapping
    regular expression -> block name (first full match wins; an unmatched unit keeps its
    ``default`` block).

    Raises:
        ConfigError: a pattern that is not a valid regular expression, a block name that is
            not a non-empty string, or a function that does not return one.
    """
    if callable(blocks):
        out = {n: blocks(n) for n in names}
    elif isinstance(blocks, Mapping):
        compiled = []
        for pattern, block in blocks.items():
            try:
                compiled.append((re.compile(pattern), block))
            except (re.error, TypeError) as e:
                raise ConfigError(f"blocks: pattern {pattern!r} is not a valid regular expression ({e}); "
                                  f"give a pattern matching whole unit names, e.g. 'layer1\\..*'") from None
        out = {n: next((b for rx, b in compiled if rx.fullmatch(n)), default[n]) for n in names}
    else:
        raise ConfigError(f"blocks={blocks!r} must be a function unit name -> block name or a mapping "
                          f"regex -> block name")
    bad = {n: b for n, b in out.items() if not isinstance(b, str) or not b}
    if bad:
        unit, block = next(iter(bad.items()))
        raise ConfigError(f"blocks: unit {unit!r} got block {block!r}; a block name must be a non-empty string")
    return out


def check_grouping(order: Sequence[str], blocks: Mapping[str, str], protected: Sequence[str] = ()) -> dict[str, float]:
    """The grouping properties of units ``order`` (execution order) and their ``blocks``.

    Args:
        order: unit names in execution order.
        blocks: unit name -> block name.
        protected: the stem and head units; blocks holding one are left out of
            ``singleton_share`` (they are single units by design).

    Returns:
        ``largest_share``: units of the largest block / all units; ``singleton_share``:
        blocks of one unit / all blocks, both without the blocks of ``protected`` units
        (0 when no other block is left); ``fragments``: blocks whose units are not one
        contiguous run of ``order`` (0 when every block is contiguous).
    """
    sizes = Counter(blocks[u] for u in order)
    runs = Counter(blocks[u] for i, u in enumerate(order) if i == 0 or blocks[order[i - 1]] != blocks[u])
    skip = {blocks[u] for u in protected}
    rest = [n for b, n in sizes.items() if b not in skip]
    return {
        "largest_share": max(sizes.values()) / len(order),
        "singleton_share": sum(1 for n in rest if n == 1) / len(rest) if rest else 0.0,
        "fragments": float(sum(1 for n in runs.values() if n > 1)),
    }
