"""Transfer of a learned state to another model: the saved files (torch.save, read back with
``weights_only=True``), how a warm start finds them in a run folder, and what ``n2n`` and
``hirl`` copy (feature-based parameters) and drop (what is indexed by one model's blocks)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.search.registry import get_strategy
from compsearch.search.rl.n2n import N2NConfig
from compsearch.search.rl.n2n_agent import N2NAgent
from compsearch.search.rl.n2n_problem import N2NProblem
from compsearch.search.rl.persist import (
    STATE_DIR,
    read_state,
    save_state,
    save_study_state,
    state_file,
)
from compsearch.spaces import discover_units, get_space
from compsearch.testing import (
    TOY_CHOICES,
    run_toy_study,
    toy_depth_units,
    toy_objective,
    toy_resnet,
    toy_space,
)

X = torch.zeros(1, 1, 4, 4)


def _depth_joint(model: nn.Module) -> Any:
    return get_space("depth+joint", discover_units(model, X), model=model, example_input=X, **TOY_CHOICES)


def _deeper_resnet() -> nn.Module:
    """ToyResNet with a third residual block in layer1 (5 removable blocks instead of 4)."""
    m = toy_resnet()
    m.layer1.append(copy.deepcopy(m.layer1[1]))
    return m


class _Renamed(nn.Module):
    """ToyResNet's modules under other names (``stage1``/``stage2``): 4 removable blocks, other block names."""

    def __init__(self) -> None:
        super().__init__()
        m = toy_resnet()
        self.stem, self.stage1, self.stage2, self.head = m.stem, m.layer1, m.layer2, m.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(torch.relu(self.stem(x)))).flatten(1))


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("unpickled!",))


def test_save_and_read_round_trip_with_weights_only(tmp_path: Path) -> None:
    state = {"format": "x/1", "params": {"w": torch.arange(3.0)}, "names": ["a", "b"], "baseline": torch.tensor(0.5)}
    path = save_state(state, tmp_path / "sub" / "s.pt")
    back = read_state(path)
    assert torch.equal(back["params"]["w"], torch.arange(3.0)) and back["names"] == ["a", "b"]
    # a file holding any other object is refused, never unpickled (weights_only=True)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "x/1", "payload": _Evil()}, protocol=2))
    with pytest.raises(ConfigError, match=r"strategy_options\.n2n\.warm_start=.*not a saved strategy state"):
        read_state(evil, key="strategy_options.n2n.warm_start")


def test_state_file_in_a_run_folder(tmp_path: Path) -> None:
    folder = tmp_path / "run" / STATE_DIR
    for seed in (0, 1):
        save_state({"format": "x/1"}, folder / f"n2n-s{seed}.pt")
    run = tmp_path / "run"
    assert state_file(run, strategy="n2n", seed=1, key="k") == folder / "n2n-s1.pt"
    assert state_file(run, strategy="n2n", seed=7, key="k") == folder / "n2n-s0.pt"  # no seed 7: the lowest seed's
    assert state_file(folder / "n2n-s1.pt", strategy="n2n", seed=0, key="k") == folder / "n2n-s1.pt"
    with pytest.raises(ConfigError, match=r"strategy_options\.hirl\.warm_start=.*no saved state of strategy 'hirl'.*n2n-s0\.pt"):
        state_file(run, strategy="hirl", seed=0, key="strategy_options.hirl.warm_start")
    with pytest.raises(ConfigError, match=r"strategy_options\.n2n\.warm_start='nowhere': no such run folder"):
        get_strategy("n2n", space=toy_space("joint"), seed=0, warm_start="nowhere")


def test_n2n_warm_start_copies_features_and_drops_block_offsets() -> None:
    small = N2NAgent(N2NProblem(toy_space("depth+joint")), N2NConfig(hidden=8), seed=0)
    with torch.no_grad():
        for p in small.params:
            p.add_(1.0)  # something learned: every parameter differs from a fresh agent's
    state = small.state_dict()
    big = N2NAgent(N2NProblem(_depth_joint(_deeper_resnet())), N2NConfig(hidden=8), seed=1)
    assert len(big.problem.blocks) == 5
    copied = big.load_state_dict(state)
    # removal: 8 bidirectional LSTM tensors + out.weight + out.bias copied; block_bias (one offset per source block) dropped
    assert len(copied["removal"]) == 10 and "block_bias" not in copied["removal"]
    assert len(state["removal"]) == 11
    assert torch.equal(big.removal.state_dict()["lstm.weight_ih_l0_reverse"], state["removal"]["lstm.weight_ih_l0_reverse"])
    assert torch.equal(big.removal.block_bias.detach(), torch.zeros(5))
    # shrink: the LSTM cell (4 tensors) and every head (same fields and choices) copied
    assert sorted(copied["shrink"]) == sorted(state["shrink"]) and len(copied["shrink"]) == 4 + 2 * len(big.problem.layout.heads)
    # the same blocks (same model): the offsets are copied too
    same = N2NAgent(N2NProblem(toy_space("depth+joint")), N2NConfig(hidden=8), seed=2)
    assert len(same.load_state_dict(state)["removal"]) == 11
    # the same number of blocks under other names: the offsets are still model-specific
    other = N2NAgent(N2NProblem(_depth_joint(_Renamed())), N2NConfig(hidden=8), seed=3)
    assert len(other.problem.blocks) == 4 and len(other.load_state_dict(state)["removal"]) == 10


def test_n2n_run_state_warm_starts_another_model(tmp_path: Path) -> None:
    study = run_toy_study("n2n", seed=0, n_trials=4, space_name="depth+joint")
    study.study_name  # noqa: B018 - the file is named after it
    path = save_study_state(study, tmp_path)
    assert path == tmp_path / STATE_DIR / f"{study.study_name}.pt"
    space = _depth_joint(_deeper_resnet())
    sampler = get_strategy("n2n", space=space, seed=0, warm_start=str(path))
    warm = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    warm.optimize(toy_objective(space), n_trials=2)
    assert len(sampler.warm_copied["removal"]) == 10 and sampler.warm_copied["shrink"]
    with pytest.raises(ConfigError, match=r"strategy_options\.hirl\.warm_start=.*format='compsearch\.rl\.n2n/1'; hirl reads"):
        get_strategy("hirl", space=toy_space("joint"), seed=0, warm_start=str(path))


@pytest.mark.parametrize("name", ["hirl", "hirl-full"])
def test_hirl_warm_start_drops_the_block_embedding(name: str, tmp_path: Path) -> None:
    fast = {"episodes": 4, "iterations": 1, "replay_iterations": 1, "pool": 8, "startup_trials": 2}
    src = toy_space("joint")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=get_strategy(name, space=src, seed=0, **fast))
    study.optimize(toy_objective(src), n_trials=3)
    state = study.sampler.learned_state()
    save_state(state, tmp_path / STATE_DIR / f"{name}-s0.pt")
    target = get_space("joint", toy_depth_units(), **TOY_CHOICES)  # another model: the toy ResNet
    sampler = get_strategy(name, space=target, seed=0, warm_start=str(tmp_path), **fast)
    warm = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    warm.optimize(toy_objective(target), n_trials=3)
    low = state["low"]["params"]
    specific = [k for k in low if k.split(".")[0] in ("embedding", "owner_bias")]
    assert specific, "the default low level has block-indexed parameters"
    assert sorted(sampler.warm_copied["low"]) == sorted(k for k in low if k not in specific)
    # hirl-full's allocation agents read block features only and carry over; hirl has none
    assert bool(sampler.warm_copied.get("high")) == (name == "hirl-full")


@pytest.mark.slow
def test_a_run_saves_its_state_and_another_run_warm_starts_from_it(tmp_path: Path) -> None:
    from compsearch.errors import SpecError
    from compsearch.studies.runner import run_study
    from compsearch.studies.validate import check_run
    from compsearch.testing import digits_spec

    src = tmp_path / "small"
    run_study(digits_spec("src", trials=3, finetune={"steps": 2}, strategies=["n2n"]), src, quiet=True, test=False)
    saved = read_state(src / STATE_DIR / "n2n-s0.pt")
    assert saved["format"] == "compsearch.rl.n2n/1"
    spec = digits_spec("dst", trials=3, finetune={"steps": 2}, strategies=["n2n"])
    spec["strategy_options"] = {"n2n": {"warm_start": str(src)}}
    run_study(spec, tmp_path / "large", quiet=True, test=False)
    assert (tmp_path / "large" / STATE_DIR / "n2n-s0.pt").is_file()
    spec["strategy_options"] = {"n2n": {"warm_start": str(tmp_path / "missing")}}
    with pytest.raises(SpecError, match=r"strategy_options\.n2n.*warm_start"):
        check_run(spec)
