"""Optuna's own sampler contract suites for compsearch's CompressionSampler strategies.

The samplers are built on the toy compression space; Optuna's tests use foreign
parameters (``x``, ``y``, ...), so they exercise the independent fallback and the
relative-sampling shell of :class:`~compsearch.search.common.CompressionSampler`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)

from compsearch.search.registry import get_strategy
from compsearch.testing import toy_space


class _CompressionSuites(BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    strategy: str = ""

    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        space = toy_space()
        return lambda: get_strategy(self.strategy, space=space, seed=0, n_trials=10)


class TestUniform8OptunaSuites(_CompressionSuites):
    strategy = "uniform8"


class TestGreedySensitivityOptunaSuites(_CompressionSuites):
    strategy = "greedy-sensitivity"
