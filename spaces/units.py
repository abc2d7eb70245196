"""Model introspection: find the compressible layers ("units") and group them into blocks.

A *unit* is one ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Linear`` (grouped and
depthwise convolutions included; attention and MLP projections of timm models
are ``nn.Linear``). MACs are measured by one traced forward of an example
input, so they are exact for the input size the user gives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from compsearch.errors import ModelError

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_KIND = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear"}


@dataclass(frozen=True)
class Unit:
    """One compressible layer.

    Attributes:
        name: qualified module name (``model.get_submodule(name)``).
        kind: ``"conv1d"``, ``"conv2d"`` or ``"linear"``.
        weight_shape: shape of the weight tensor, ``out x in/groups x k...`` or ``out x in``.
        params: number of weight elements (the bias is counted in ``bias_params``).
        bias_params: number of bias elements (0 without bias).
        macs: multiply-accumulates per sample of the weight product, from one traced forward.
        out_channels: size of the output-channel axis (axis 0 of the weight).
        groups: convolution groups (1 for ``Linear``).
        block: block name (module-path prefix such as ``layer2.1`` or ``blocks.3``).
        depth: position in execution order of the traced forward (0 = first executed).
        is_first: the first unit executed (usually the stem); spaces skip it by default.
        is_head: the classifier head; spaces skip it by default.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int
    bias_params: int
    macs: int
    out_channels: int
    groups: int
    block: str
    depth: int
    is_first: bool = False
    is_head: bool = False

    @property
    def out_axis(self) -> int:
        """Axis of the weight that indexes output channels (always 0 for these layers)."""
        return 0

    @property
    def fan_in(self) -> int:
        """Weight elements per output channel."""
        return self.params // self.out_channels


def _macs_hook(store: dict[str, int], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        batch = output.shape[0] if output.dim() > 1 else 1
        per_output = cast(torch.Tensor, module.weight)[0].numel()  # in/groups x kernel, or in_features
        store[name] = store.get(name, 0) + int(output.numel() // max(batch, 1)) * per_output

    return hook


def _numeric(part: str) -> bool:
    return part.isdigit()


def default_block_name(name: str, unit_counts: Mapping[str, int]) -> str:
    """Block of a unit by module path.

    The candidates are the path prefixes (the name itself included) ending in a numeric index (``layer1.0``,
    ``blocks.3``, ``stages.1.blocks.0``, ``features.4``). The block is the deepest
    candidate holding at least two units, else the shallowest candidate, else the
    first path component (``conv1``, ``fc``, ``head``, ``patch_embed``).

    Args:
        name: qualified unit name.
        unit_counts: number of units under every module-path prefix.
    """
    parts = name.split(".")
    candidates = [".".join(parts[: i + 1]) for i in range(len(parts)) if _numeric(parts[i])]
    if not candidates:
        return parts[0] if len(parts) > 1 else name
    rich = [c for c in candidates if unit_counts.get(c, 0) >= 2]
    return rich[-1] if rich else candidates[0]


def _prefix_counts(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts)):
            key = ".".join(parts[:i])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _head_name(model: nn.Module, executed: Sequence[str]) -> str | None:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        for n, m in model.named_modules():
            if m is head and isinstance(m, COMPRESSIBLE):
                return n
    last = executed[-1]
    return last if isinstance(model.get_submodule(last), nn.Linear) else None


def _match(name: str, patterns: Sequence[str] | None) -> bool:
    return any(re.fullmatch(p, name) or p == name for p in patterns or ())


def discover_units(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    blocks: Callable[[str], str] | Mapping[str, str] | None = None,
) -> list[Unit]:
    """Find the compressible layers of ``model`` in execution order.

    Args:
        model: any ``nn.Module``.
        example_input: an input batch (``b x ...``); MACs are per sample of this shape.
        include: regular expressions (full match) or exact names; only matching units are kept.
        exclude: regular expressions or exact names of units to leave out.
        blocks: block override, either a function unit name -> block name or a
            mapping regex -> block name (first full match wins; unmatched units
            fall back to the default path rule, see :func:`default_block_name`).

    Returns:
        Units sorted by ``depth``. A layer that never runs in the forward pass is omitted.

    Raises:
        ModelError: if no compressible layer is found or executed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)}
    macs: dict[str, int] = {}
    order: list[str] = []
    handles = []
    for n, m in layers.items():
        handles.append(m.register_forward_hook(_macs_hook(macs, n)))
        handles.append(m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(n) if n not in order else None))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not order:
        raise ModelError(
            f"model {type(model).__name__} has no compressible layer (Conv1d, Conv2d or Linear) "
            f"that runs in its forward pass; compsearch cannot compress it"
        )
    head = _head_name(model, order)
    counts = _prefix_counts(order)
    units = []
    for depth, n in enumerate(order):
        m = layers[n]
        bias = getattr(m, "bias", None)
        units.append(
            Unit(
                name=n,
                kind=_KIND[type(m)] if type(m) in _KIND else _kind_of(m),
                weight_shape=tuple(m.weight.shape),
                params=m.weight.numel(),
                bias_params=0 if bias is None else bias.numel(),
                macs=macs.get(n, 0),
                out_channels=m.weight.shape[0],
                groups=getattr(m, "groups", 1),
                block=_block_of(n, counts, blocks),
                depth=depth,
                is_first=depth == 0,
                is_head=n == head,
            )
        )
    units = [u for u in units if (include is None or _match(u.name, include)) and not _match(u.name, exclude)]
    if not units:
        raise ModelError(
            f"include={include!r} / exclude={exclude!r} leave no compressible layer; "
            f"available: {order[:10]}{'...' if len(order) > 10 else ''}"
        )
    return units


def _kind_of(m: nn.Module) -> str:
    for cls, kind in _KIND.items():
        if isinstance(m, cls):
            return kind
    raise ModelError(f"unsupported layer type {type(m).__name__}")


def _block_of(name: str, counts: Mapping[str, int], blocks: Callable[[str], str] | Mapping[str, str] | None) -> str:
    if callable(blocks):
        return blocks(name)
    for pattern, block in (blocks or {}).items():
        if re.fullmatch(pattern, name):
            return block
    return default_block_name(name, counts)


def group_blocks(units: Sequence[Unit]) -> dict[str, list[Unit]]:
    """Units grouped by block, blocks in execution order of their first unit."""
    out: dict[str, list[Unit]] = {}
    for u in sorted(units, key=lambda u: u.depth):
        out.setdefault(u.block, []).append(u)
    return out
