"""Removed blocks: a policy's :attr:`~compsearch.spaces.Policy.removed` blocks in the compressed
forward and in the exported model.

A removed block (a module path, :mod:`compsearch.spaces.depth`) is replaced by the identity
(its output is its input) or by its shortcut (its output is ``shortcut(input)``, e.g. a ResNet
block's ``downsample``). Two ways, computing the same outputs:

* in the evaluator, :class:`BlockRemoval` swaps the block's ``forward`` for the replacement
  (an instance attribute, removed afterwards, as the unit compressions do), so the working
  model is restored exactly by :meth:`BlockRemoval.remove`;
* for export, :func:`remove_blocks` returns a copy of the model in which each removed block is
  a :class:`RemovedBlock` module: empty for the identity, or holding the shortcut module under
  its own child name, so the shortcut's parameters keep their paths
  (``layer2.0.downsample.0.weight``) and the compression records of its units still apply.

Which blocks a model can lose is decided by :func:`~compsearch.spaces.depth.check_blocks`;
:func:`check_removed` turns a policy that asks for any other block into a
:class:`~compsearch.errors.PolicyError` naming the block and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from compsearch.errors import PolicyError
from compsearch.evaluators.compressed import restore_forward, swap_forward
from compsearch.spaces.depth import BlockCheck
from compsearch.spaces.policy import Policy


def check_removed(policy: Policy, checks: Mapping[str, BlockCheck]) -> None:
    """Raise :class:`PolicyError` unless every removed block of ``policy`` is removable (``checks``
    from :func:`~compsearch.spaces.depth.check_blocks`) and replaced as the model allows."""
    for block, shortcut in policy.removed.items():
        check = checks.get(block)
        if check is None:
            raise PolicyError(f"policy removes block {block!r}, which is not a block of the model; its blocks: "
                              f"{list(checks)[:12]}")
        if check.block is None:
            raise PolicyError(f"policy removes block {block!r}, which cannot be removed: {check.reason}")
        if shortcut != check.block.shortcut:
            raise PolicyError(f"policy replaces removed block {block!r} by {shortcut!r}; this model replaces it by "
                              f"{check.block.shortcut!r} (None = the identity)")


def _child(shortcut: str | None) -> str | None:
    return None if shortcut is None else shortcut.rpartition(".")[2]


class BlockRemoval:
    """One removed block in force in the evaluator's working model (module docstring).

    Args:
        block: the block module.
        name: its path (for messages).
        shortcut: the path of its shortcut child, or None for the identity.
    """

    def __init__(self, block: nn.Module, *, name: str, shortcut: str | None) -> None:
        self.block, self.name, self.shortcut_path = block, name, shortcut
        child = _child(shortcut)
        self.shortcut: nn.Module | None = None if child is None else block.get_submodule(child)
        self._had_instance_forward = False
        self._original: Any = None
        self._installed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else next(iter(kwargs.values()))
        return x if self.shortcut is None else self.shortcut(x)

    def install(self) -> BlockRemoval:
        """Replace the block's forward by the identity or its shortcut."""
        self._original, self._had_instance_forward = swap_forward(self.block, self)
        self._installed = True
        return self

    def remove(self) -> None:
        """Undo :meth:`install`; the block is exactly as before."""
        if not self._installed:
            return
        restore_forward(self.block, self, self._original, self._had_instance_forward)
        self._installed = False


class RemovedBlock(nn.Module):
    """What a removed block becomes in an exported model: ``forward(x) = x`` (identity), or
    ``shortcut(x)`` with the shortcut held under its own child name ``child``.

    Args:
        child: the shortcut's attribute name in the original block, or None for the identity.
        shortcut: the shortcut module (None for the identity).
    """

    def __init__(self, child: str | None = None, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.child = child
        if child is not None and shortcut is not None:
            self.add_module(child, shortcut)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x if self.child is None else self.get_submodule(self.child)(x)

    def extra_repr(self) -> str:
        return "identity" if self.child is None else f"shortcut={self.child!r}"


def remove_blocks(model: nn.Module, removed: Mapping[str, str | None]) -> nn.Module:
    """A copy of ``model`` with every block of ``removed`` (path -> shortcut path or None) replaced
    by a :class:`RemovedBlock` (module docstring); ``model`` is not changed. Blocks inside
    another removed block (outside its shortcut) are dropped with it.

    Raises:
        PolicyError: a path that is not a module of the model, or a shortcut that is not a
            direct child of its block.
    """
    from compsearch.evaluators.speedup import clone_model

    out = clone_model(model)
    outer = Policy({}, removed=removed).outer_removed()
    for block, shortcut in sorted(outer.items(), key=lambda kv: -kv[0].count(".")):
        parent_name, _, attr = block.rpartition(".")
        try:
            parent = out.get_submodule(parent_name)
            module = out.get_submodule(block)
        except AttributeError:
            raise PolicyError(f"removed block {block!r} is not a module of {type(model).__name__}") from None
        child = _child(shortcut)
        if child is not None and (f"{block}.{child}" != shortcut or child not in dict(module.named_children())):
            raise PolicyError(f"removed block {block!r}: its shortcut {shortcut!r} must be a direct child of the block")
        replacement = RemovedBlock(child, None if child is None else module.get_submodule(child))
        setattr(parent, attr, replacement)
    return out


__all__ = ["BlockRemoval", "RemovedBlock", "check_removed", "remove_blocks"]
