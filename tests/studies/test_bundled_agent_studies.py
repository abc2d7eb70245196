"""The bundled agent studies: cartpole_dqn end to end (slow: its agent trains for about a minute),
lunarlander_ppo and minatar_breakout_dqn checked without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compsearch.studies.runner import run_study
from compsearch.studies.spec import load_spec
from compsearch.studies.validate import check_run

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def test_lunarlander_spec_checks_without_training(tmp_path: Path) -> None:
    pytest.importorskip("Box2D", reason="LunarLander needs the box2d extra (make bench)")
    spec = load_spec(STUDIES / "lunarlander_ppo.toml")
    assert spec.agent is not None and spec.agent.algo == "ppo" and spec.agent.env == "LunarLander-v3"
    check_run(spec, tmp_path / "run")  # env id, action space, hyper keys; nothing trained or written
    assert not (tmp_path / "run").exists()


def test_minatar_spec_checks_without_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("minatar", reason="MinAtar needs the minatar extra (make bench)")
    from compsearch.cli import main

    spec = load_spec(STUDIES / "minatar_breakout_dqn.toml")
    assert spec.agent is not None and spec.agent.features == "small_cnn" and spec.agent.net_arch == []
    check_run(spec, tmp_path / "run")  # the hierarchy needs the two blocks of [space.blocks]
    assert not (tmp_path / "run").exists()
    assert main(["spaces", str(STUDIES / "minatar_breakout_dqn.toml"), "--format", "csv"]) == 0
    rows = [line.split(",")[:5] for line in capsys.readouterr().out.splitlines()[1:4]]
    # 10x10x4 frames: conv3x3 4 -> 16, linear 16*8*8 -> 128, Q head 128 -> 3; blocks from [space.blocks]
    assert rows == [["features.cnn.0", "conv2d", "module", "conv", "16x4x3x3"],
                    ["features.linear.0", "linear", "module", "fc", "128x1024"], ["head", "linear", "module", "head", "3x128"]]


@pytest.mark.slow
def test_cartpole_dqn_study_end_to_end(tmp_path: Path) -> None:
    run = run_study(STUDIES / "cartpole_dqn.toml", tmp_path / "run", strategies=["random"], trials=2, seeds=[0],
                    quiet=True)
    info = json.loads((tmp_path / "run" / "run.json").read_text())["base"]
    assert info["source"] == "trained" and (tmp_path / "run" / info["path"]).is_file()
    # 30k DQN steps solve CartPole: the greedy agent balances for the 500-step limit on most
    # validation seeds (measured: 500 on all 10).
    assert info["val_return"] >= 450
    baseline = json.loads((tmp_path / "run" / "baseline.json").read_text())["0"]
    # 64x64 MLP: 4*64+64 + 64*64+64 + 64*2+2 = 4610 parameters x 32 bits = 147520 bits.
    assert baseline["size_bits"] == 147520 and baseline["return"] >= 450
    trials = run.storage.get_all_trials(run.storage.get_study_id_from_name("random-s0"))
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
