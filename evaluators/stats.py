"""Per-unit statistics behind ``unit_stats()`` and ``reconstruction_error()`` (task-agnostic).

Definitions are in :class:`~compsearch.evaluators.types.UnitStats` and
:meth:`~compsearch.evaluators.evaluator.CompressionEvaluator.reconstruction_error`.
Sums run in float64 so the numbers do not depend on batch order beyond rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from compsearch.evaluators.masks import GradientStats
from compsearch.evaluators.types import GradientBatch

ENTROPY_BINS = 64
_NAN = float("nan")


def gradient_stats(model: nn.Module, weights: Mapping[str, torch.Tensor], batches: Sequence[GradientBatch]) -> dict[str, GradientStats]:
    """``E[g]`` and ``E[g**2]`` of every weight over ``batches`` (the gradient of each batch's
    loss, one backward per batch, eval mode; a weight without gradient counts as 0)."""
    model.eval()
    sums = {n: torch.zeros_like(w) for n, w in weights.items()}
    squares = {n: torch.zeros_like(w) for n, w in weights.items()}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        batch.loss(model(batch.inputs)).backward()
        for name, weight in weights.items():
            g = weight.grad
            if g is not None:
                sums[name] += g
                squares[name] += g.square()
    model.zero_grad(set_to_none=True)
    k = max(len(batches), 1)
    return {name: GradientStats(mean=sums[name] / k, sq_mean=squares[name] / k) for name in weights}


def histogram_entropy(w: torch.Tensor, bins: int = ENTROPY_BINS) -> float:
    """``H / ln(bins)`` of the ``bins``-bin equal-width histogram of ``w`` over ``[min, max]``."""
    flat = w.detach().double().flatten()
    lo, hi = float(flat.min()), float(flat.max())
    if not hi > lo:
        return 0.0
    counts = torch.histc(flat, bins=bins, min=lo, max=hi)
    p = counts[counts > 0] / flat.numel()
    return float(-(p * p.log()).sum()) / math.log(bins)


def weight_unit_stats(w: torch.Tensor) -> dict[str, float]:
    """``weight_mean``, ``weight_var`` (population) and ``weight_entropy`` of one weight."""
    flat = w.detach().double().flatten()
    return {"weight_mean": float(flat.mean()), "weight_var": float(flat.var(unbiased=False)),
            "weight_entropy": histogram_entropy(w)}


def gradient_unit_stats(grads: GradientStats) -> dict[str, float]:
    """``grad_mean = mean_i E[g_i]`` and ``grad_var = mean_i (E[g_i**2] - E[g_i]**2)``."""
    mean, sq = grads.mean.double(), grads.sq_mean.double()
    return {"grad_mean": float(mean.mean()), "grad_var": float((sq - mean.square()).clamp_min(0).mean())}


class _Moments:
    """Running count, sum, sum of squares and zero count of every tensor it is shown."""

    def __init__(self) -> None:
        self.n, self.total, self.squares, self.zeros = 0, 0.0, 0.0, 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.n += x.numel()
        self.total += float(x.sum())
        self.squares += float(x.square().sum())
        self.zeros += int((x == 0).sum())

    def as_stats(self) -> dict[str, float]:
        if self.n == 0:
            return {"act_mean": _NAN, "act_var": _NAN, "act_zero_fraction": _NAN}
        mean = self.total / self.n
        return {"act_mean": mean, "act_var": max(self.squares / self.n - mean * mean, 0.0),
                "act_zero_fraction": self.zeros / self.n}


def _input_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    return tensors[0] if len(tensors) == 1 else None


def activation_stats(model: nn.Module, modules: Mapping[str, nn.Module], inputs: Sequence[torch.Tensor]) -> dict[str, dict[str, float]]:
    """``act_mean``, ``act_var``, ``act_zero_fraction`` of every unit's input over ``inputs``
    (one eval forward per batch, forward pre-hooks); NaN where a module never runs."""
    moments = {name: _Moments() for name in modules}
    handles = []
    for name, module in modules.items():
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
            x = _input_of(args, kwargs)
            if x is not None:
                moments[name].add(x)

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        _run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {name: m.as_stats() for name, m in moments.items()}


def _run(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    model.eval()
    with torch.no_grad():
        for x in inputs:
            model(x)


def _capture(modules: Mapping[str, nn.Module], store: dict[str, list[torch.Tensor]]) -> list[Any]:
    def make(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                store[name].append(output.detach())

        return hook

    return [m.register_forward_hook(make(name)) for name, m in modules.items()]


def relative_errors(
    model: nn.Module, reference: nn.Module, names: Sequence[str], inputs: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """Per unit ``sum((y_c - y)**2) / sum(y**2)`` of its outputs in ``model`` (``y_c``) and in
    ``reference`` (``y``) over ``inputs`` (in batches of ``batch_size``); ``inf`` when ``y`` is
    all zero but ``y_c`` is not, 0 when both are; NaN where the module never runs."""
    errors = {n: 0.0 for n in names}
    norms = {n: 0.0 for n in names}
    seen: set[str] = set()
    for x in inputs.split(batch_size):
        outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        refs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        handles = _capture({n: model.get_submodule(n) for n in names if _is_module(model, n)}, outs)
        handles += _capture({n: reference.get_submodule(n) for n in names if _is_module(reference, n)}, refs)
        try:
            _run(model, [x])
            _run(reference, [x])
        finally:
            for h in handles:
                h.remove()
        for n in names:
            for yc, y in zip(outs[n], refs[n], strict=False):
                errors[n] += float((yc.double() - y.double()).square().sum())
                norms[n] += float(y.double().square().sum())
                seen.add(n)
    return {n: _ratio(errors[n], norms[n]) if n in seen else _NAN for n in names}


def _is_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _ratio(error: float, norm: float) -> float:
    if norm > 0:
        return error / norm
    return 0.0 if error == 0 else math.inf
