"""Tiny models and synthetic data for the evaluator and export tests (milliseconds per step).

Test modules import these builders as ``from tiny_nets import make_cnn, make_data`` (this
folder is on ``sys.path`` while its tests run); ``conftest`` is not importable by name in a
full run, where another folder's ``conftest`` may hold that module name.
"""

from __future__ import annotations

import torch
from torch import nn

from compsearch.evaluators.types import DataSplits


def make_data(
    *, n: int = 240, shape: tuple[int, ...] = (1, 6, 6), num_classes: int = 4, seed: int = 0, noise: float = 0.7
) -> DataSplits:
    """Class prototypes plus noise, split 60/20/20."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((num_classes, *shape), generator=gen)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=gen)]
    x = prototypes[y] + noise * torch.randn((n, *shape), generator=gen)
    a, b = int(0.6 * n), int(0.8 * n)
    return DataSplits(
        x_train=x[:a], y_train=y[:a], x_val=x[a:b], y_val=y[a:b], x_test=x[b:], y_test=y[b:],
        num_classes=num_classes, name="tiny",
    )


def make_cnn(*, num_classes: int = 4, seed: int = 0) -> nn.Sequential:
    """conv(1->8) - ReLU - depthwise conv(8, groups=8) - ReLU - conv(8->8) - pool - linear(8->classes)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


__all__ = ["make_cnn", "make_data"]
