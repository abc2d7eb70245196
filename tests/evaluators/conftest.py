"""Fixtures of the tiny models and synthetic data in ``tiny_nets`` (milliseconds per step)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tiny_nets import make_cnn, make_data
from torch import nn

from compsearch.evaluators.types import DataSplits


@pytest.fixture
def tiny_data() -> DataSplits:
    return make_data()


@pytest.fixture
def tiny_cnn() -> nn.Sequential:
    return make_cnn()


@pytest.fixture
def data_factory() -> Callable[..., DataSplits]:
    """``make_data`` for tests that need other shapes or class counts."""
    return make_data


@pytest.fixture
def cnn_factory() -> Callable[..., nn.Sequential]:
    """``make_cnn`` for tests that need another head size."""
    return make_cnn
