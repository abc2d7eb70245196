"""The ``depth`` space: keep or remove every removable block of the model.

**Which blocks are removable.** The candidates are the model's blocks
(:mod:`compsearch.spaces.blocks`: residual blocks, transformer blocks, repeated stage
blocks, single layers of a plain ``nn.Sequential``) that are modules of the model, except
the blocks holding the stem or the classifier head. One forward of the example input (eval
mode, hooks only, nothing changed) decides, for every call of the candidate:

* it takes a tensor as its first positional argument and returns one tensor;
* **identity**: the output has the input's shape (a residual block without downsampling, a
  transformer block, a shape-keeping layer), so the block can be replaced by its input; else
* **shortcut**: a direct child ``s`` of the block is called on the block's own input, returns
  a tensor of the block's output shape, and that output reaches no other child holding a
  unit inside the block (it only joins the result through additions and activations, as a
  ResNet's ``downsample`` does; a ``conv1`` of the same output shape feeds ``bn1``/``conv2``
  and is therefore not a shortcut). The block is then replaced by ``s(input)``; when several
  children qualify (``relu(conv(x)) + proj(x)``), the one with the fewest parameters.

Anything else is not offered (:func:`check_blocks` says why), and asking for it
(``blocks=[...]``) raises :class:`~compsearch.errors.PolicyError` naming the block and the reason.

**The stage rule.** Every offered block keeps its own input -> output shape when replaced,
so the blocks' inputs keep their shapes whatever else is removed: any subset of the offered
blocks can be removed together, shapes always match. A stage whose every block is
replaceable may therefore lose all of them (a ResNet stage then keeps only its first block's
shortcut, the downsampling 1x1 convolution); a block whose removal would break the shapes
(channels or resolution change without a shortcut) is never offered, so removing "every
block of a stage" never breaks shapes.

**Removed units.** The units under a removed block, except those under its shortcut, are
removed with it (:meth:`~compsearch.spaces.Policy.removes`); so are its parameters that no
other module uses (:attr:`RemovableBlock.params`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError, ModelError, PolicyError
from compsearch.spaces.base import Dimension, Space, register_space
from compsearch.spaces.policy import IDENTITY, Policy
from compsearch.spaces.units import Unit, group_blocks

DEPTH_FIELD = "keep_block"
"""``Dimension.field`` of a block's keep/remove choice (choices ``(False, True)``: ``True`` keeps it)."""


@dataclass(frozen=True)
class RemovableBlock:
    """A block the model can lose.

    Attributes:
        name: the block's module path (also its ``Unit.block``).
        shortcut: path of the direct child that replaces it (``s(input)``), or ``None`` for the identity.
        units: units removed with it (under the block, not under the shortcut), in execution order.
        params: parameter elements removed with it: every parameter of the block that lies
            outside the shortcut and is used by no module outside the block.
        macs: multiply-accumulates per sample of its removed units.
        stage: path of the module holding it (``""`` = the model).
        depth: execution depth of its first unit.
        in_shape: per-sample input shape of its first call; ``out_shape`` likewise.
    """

    name: str
    shortcut: str | None
    units: tuple[str, ...]
    params: int
    macs: int
    stage: str
    depth: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class BlockCheck:
    """Whether one candidate block is removable, and why (``block`` is None when it is not)."""

    name: str
    block: RemovableBlock | None
    reason: str


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


class _Recorder:
    """Forward hooks on the candidate blocks and their direct children: per block call, the
    input, the output and every child call ``(child, input, output)``."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        self._active: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        self._handles: list[Any] = []
        modules = dict(model.named_modules())
        for name in names:
            block = modules[name]
            self._handles.append(block.register_forward_pre_hook(self._enter(name), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._leave(name), with_kwargs=True))
            for child, module in block.named_children():
                self._handles.append(module.register_forward_hook(self._child(name, f"{name}.{child}"), with_kwargs=True))

    def _enter(self, name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._active[name].append({"input": args[0] if args else None, "children": []})

        return hook

    def _leave(self, name: str) -> Any:
        def hook(_m: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], output: Any) -> None:
            call = self._active[name].pop()
            call["output"] = output
            self.calls[name].append(call)

        return hook

    def _child(self, block: str, path: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any], output: Any) -> None:
            if self._active[block]:
                self._active[block][-1]["children"].append((path, args[0] if args else None, output))

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _reaches(target: Any, start: torch.Tensor | None, stop: Any) -> bool:
    """Whether autograd node ``target`` is an ancestor of ``start`` (not looking past ``stop``)."""
    if not isinstance(start, torch.Tensor) or start.grad_fn is None or target is None:
        return False
    seen: set[Any] = set()
    stack = [start.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is target:
            return True
        if fn is stop or fn in seen:
            continue
        seen.add(fn)
        stack.extend(n for n, _ in fn.next_functions if n is not None)
    return False


def _shortcut(call: dict[str, Any], holders: set[str], sizes: Mapping[str, int]) -> str | None:
    """The child of one block call that is its shortcut (module docstring), or None; of
    several that qualify, the one with the fewest parameters (the cheap path), then the first."""
    x, y = call["input"], call["output"]
    stop = x.grad_fn
    found = []
    for path, inp, out in call["children"]:
        if inp is not x or not isinstance(out, torch.Tensor) or out.shape != y.shape or out.grad_fn is None:
            continue
        others = [c for c in call["children"] if c[0] != path and c[0] in holders]
        if out is y or not any(c[1] is out or _reaches(out.grad_fn, c[1], stop) for c in others):
            found.append(path)
    return min(found, key=lambda p: sizes.get(p, 0)) if found else None


def _replacement(calls: list[dict[str, Any]], holders: set[str], sizes: Mapping[str, int]) -> tuple[str | None, str]:
    """``(shortcut or None, "")`` when every call can be replaced, else ``(None, reason)``."""
    if not calls:
        return None, "it never runs in the forward pass of the example input"
    shortcut: str | None = None
    for call in calls:
        x, y = call["input"], call["output"]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return None, "it does not map one tensor (its first argument) to one tensor"
        if x.shape == y.shape and shortcut is None:
            continue
        found = _shortcut(call, holders, sizes)
        if found is None:
            return None, (f"its output shape {tuple(y.shape[1:])} differs from its input shape {tuple(x.shape[1:])} "
                          f"and no child computes a shortcut of that shape from its input")
        if shortcut not in (None, found):
            return None, f"its calls use different shortcuts ({shortcut!r}, {found!r})"
        shortcut = found
    return shortcut, ""


def _removed_params(model: nn.Module, block: str, shortcut: str | None) -> int:
    """Elements of the parameters used only inside ``block`` and outside ``shortcut``."""
    paths: dict[int, list[str]] = {}
    sizes: dict[int, int] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        paths.setdefault(id(p), []).append(name)
        sizes[id(p)] = p.numel()
    return sum(sizes[k] for k, names in paths.items()
               if all(_under(n, block) and not (shortcut is not None and _under(n, shortcut)) for n in names))


def check_blocks(model: nn.Module, example_input: torch.Tensor, units: Sequence[Unit]) -> dict[str, BlockCheck]:
    """Every block of ``units`` with whether it is removable and why (module docstring), in
    execution order. Runs ``model`` once on ``example_input`` in eval mode (modes restored).

    Raises:
        ModelError: the forward pass fails.
    """
    modules = dict(model.named_modules())
    groups = group_blocks(units)
    checks: dict[str, BlockCheck] = {}
    candidates = []
    for name, members in groups.items():
        if any(u.is_first or u.is_head for u in members):
            role = "stem" if any(u.is_first for u in members) else "classifier head"
            checks[name] = BlockCheck(name, None, f"it holds the {role}")
        elif not name or name not in modules:
            checks[name] = BlockCheck(name, None, "it is not a module of the model (a block override's name)")
        else:
            candidates.append(name)
    recorder = _Recorder(model, candidates)
    modes = {m: m.training for m in model.modules()}
    x = example_input.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)
    try:
        model.eval()
        with torch.enable_grad():
            model(x)
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward is reported as a model error
        raise ModelError(f"the depth check's forward pass of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
    finally:
        recorder.remove()
        for m, mode in modes.items():
            m.training = mode
    for name in candidates:
        holders = {f"{name}.{c}" for c, _ in modules[name].named_children()
                   if any(_under(u.name, f"{name}.{c}") for u in groups[name])}
        sizes = {f"{name}.{c}": sum(p.numel() for p in m.parameters()) for c, m in modules[name].named_children()}
        shortcut, reason = _replacement(recorder.calls[name], holders, sizes)
        if reason:
            checks[name] = BlockCheck(name, None, reason)
            continue
        removed = [u for u in units if _under(u.name, name) and not (shortcut is not None and _under(u.name, shortcut))]
        first = recorder.calls[name][0]
        block = RemovableBlock(
            name=name, shortcut=shortcut, units=tuple(u.name for u in sorted(removed, key=lambda u: u.depth)),
            params=_removed_params(model, name, shortcut), macs=sum(u.macs for u in removed),
            stage=name.rpartition(".")[0], depth=min(u.depth for u in groups[name]),
            in_shape=tuple(first["input"].shape[1:]), out_shape=tuple(first["output"].shape[1:]),
        )
        how = f"replaced by its shortcut {shortcut!r}" if shortcut else "replaced by the identity"
        checks[name] = BlockCheck(name, block, how)
    return {n: checks[n] for n in groups}


def removable_blocks(model: nn.Module, example_input: torch.Tensor, units: Sequence[Unit]) -> list[RemovableBlock]:
    """The removable blocks of ``model`` (:func:`check_blocks`), in execution order."""
    return [c.block for c in check_blocks(model, example_input, units).values() if c.block is not None]


@register_space("depth")
class DepthSpace(Space):
    """Keep or remove every removable block (module docstring): one dimension per block,
    ``<block>.keep_block`` with choices ``(False, True)`` (ordinal: ``True`` keeps it), group
    the block, field :data:`DEPTH_FIELD`. Decodes to a :class:`Policy` with no unit settings
    and the removed blocks in :attr:`Policy.removed`.

    Args:
        units: the model's units.
        model: the model (with ``example_input``), to find the removable blocks.
        example_input: an input batch of the model.
        removable: the removable blocks, when already known (instead of ``model``).
        blocks: offer only these blocks (default: every removable one).
        skip_first, skip_head: accepted for the spec's common keys; the stem's and the head's
            blocks are never offered (removing them changes the model's input or output).

    Raises:
        ConfigError: neither ``model`` nor ``removable`` given, or no block can be removed.
        PolicyError: ``blocks`` names a block that cannot be removed (the reason is given).
    """

    needs_model = True

    def __init__(self, units: Sequence[Unit], *, model: nn.Module | None = None, example_input: torch.Tensor | None = None,
                 removable: Sequence[RemovableBlock] | None = None, blocks: Sequence[str] | None = None,
                 skip_first: bool = True, skip_head: bool = True) -> None:
        super().__init__(units)
        if removable is None:
            if model is None or example_input is None:
                raise ConfigError("space 'depth' needs the model to find its removable blocks: call "
                                  "get_space('depth', units, model=model, example_input=x) (or pass removable=...)")
            checks = check_blocks(model, example_input, units)
        else:
            checks = {b.name: BlockCheck(b.name, b, "given") for b in removable}
        offered = [c.block for c in checks.values() if c.block is not None]
        if blocks is not None:
            offered = self._restrict(checks, blocks)
        if not offered:
            why = "; ".join(f"{n!r}: {c.reason}" for n, c in list(checks.items())[:4])
            raise ConfigError(f"space 'depth': no block of the model can be removed ({why}); use a space without 'depth'")
        self.blocks: tuple[RemovableBlock, ...] = tuple(offered)
        self.checks = checks
        by_name = {u.name: u for u in self.all_units}
        self.groups: dict[str, list[Unit]] = {b.name: [by_name[n] for n in b.units] for b in self.blocks}
        self.units: tuple[Unit, ...] = tuple(sorted({u for us in self.groups.values() for u in us}, key=lambda u: u.depth))
        self._dims = [Dimension(f"{b.name}.{DEPTH_FIELD}", (False, True), True, group=b.name, field=DEPTH_FIELD)
                      for b in self.blocks]

    @staticmethod
    def _restrict(checks: Mapping[str, BlockCheck], names: Sequence[str]) -> list[RemovableBlock]:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise ConfigError(f"blocks={names!r} must be a list of block names, e.g. ['layer1.1', 'layer2.1']")
        out = []
        for name in names:
            check = checks.get(name)
            if check is None:
                raise PolicyError(f"blocks: {name!r} is not a block of the model; blocks: {list(checks)[:8]}")
            if check.block is None:
                raise PolicyError(f"blocks: block {name!r} cannot be removed: {check.reason}")
            out.append(check.block)
        return sorted(dict.fromkeys(out), key=lambda b: b.depth)

    @property
    def removable(self) -> tuple[RemovableBlock, ...]:
        return self.blocks

    def dimensions(self) -> list[Dimension]:
        return list(self._dims)

    def decode(self, params: Mapping[str, Any]) -> Policy:
        self._check_params(params)
        removed = {}
        for b, d in zip(self.blocks, self._dims, strict=True):
            if not d.choices[d.index(params[d.name])]:
                removed[b.name] = b.shortcut
        return Policy({}, removed=removed)

    def encode(self, policy: Policy) -> dict[str, Any]:
        offered = {b.name: b for b in self.blocks}
        for block, short in policy.removed.items():
            if block not in offered:
                reason = self.checks[block].reason if block in self.checks else "it is not a block of the model"
                raise PolicyError(f"space 'depth' cannot remove block {block!r}: {reason}")
            if short != offered[block].shortcut:
                raise PolicyError(f"policy replaces block {block!r} by {short!r}; this model replaces it by "
                                  f"{offered[block].shortcut!r}")
        compressed = [n for n, up in policy.items() if up != IDENTITY]
        if compressed:
            raise PolicyError(f"space 'depth' searches no unit settings, but the policy compresses {compressed[:3]}; "
                              f"compose it with a unit space, e.g. 'depth+joint'")
        return {d.name: b.name not in policy.removed for b, d in zip(self.blocks, self._dims, strict=True)}


__all__ = ["DEPTH_FIELD", "BlockCheck", "DepthSpace", "RemovableBlock", "check_blocks", "removable_blocks"]
