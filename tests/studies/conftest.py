"""A tiny study (digits CNN, few steps) shared by the studies tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compsearch.studies.run import Run
from compsearch.studies.runner import run_study


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """The quickstart in miniature: 2 strategies x 4 trials, 5 fine-tune steps."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "strategies": ["random", "nsga2"],
        "trials": 4,
        "seeds": 1,
        "objectives": ["accuracy", "size_kb"],
        "model": {"name": "digits_cnn", "kwargs": {"width": 8, "hidden": 32}},
        "base": {"steps": 60, "lr": 0.01},
        "data": {"name": "digits"},
        "space": {"name": "joint", "choices": {"w_bits": [2, 4, 8, 32], "keep": [0.5, 1.0]}},
        "evaluator": {"device": "cpu", "finetune": {"steps": 5, "lr": 0.01}},
        "constraints": {"max_size_kb": 12.0},
        "strategy_options": {"nsga2": {"population_size": 2}},
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def make_spec() -> Any:
    """``make_spec(**overrides)``: the tiny spec as a mapping."""
    return tiny_spec


def mini_spec_file(folder: Path, strategies: tuple[str, ...] = ("random",), trials: int = 3) -> Path:
    """``folder/mini.toml``: a study spec file of the digits CNN at width 8, 3 fine-tune steps."""
    path = folder / "mini.toml"
    names = ", ".join(f'"{s}"' for s in strategies)
    path.write_text(
        f'name = "mini"\nstrategies = [{names}]\ntrials = {trials}\n[model]\nname = "digits_cnn"\n'
        'kwargs = { width = 8, hidden = 32 }\n[base]\nsteps = 20\n[evaluator]\ndevice = "cpu"\n'
        '[evaluator.finetune]\nsteps = 3\n'
    )
    return path


@pytest.fixture(scope="session")
def mini_spec() -> Any:
    """``mini_spec(folder, strategies=("random",), trials=3)``: see :func:`mini_spec_file`."""
    return mini_spec_file


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """One finished tiny run (folder and context), shared read-only by several tests."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    ctx = run_study(tiny_spec(), out, quiet=True)
    return out, ctx
