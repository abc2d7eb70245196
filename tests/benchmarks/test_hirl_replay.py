"""benchmarks/hirl_bench.py --what replay: a finished study's next proposal, re-derived without evaluating it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from benchmark_loader import load_benchmark

from compsearch.studies.runner import run_study


@pytest.fixture(scope="module")
def sls_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "replay"
    run_study({
        "name": "replay", "strategies": ["sls"], "trials": 5, "seeds": 1, "objectives": ["accuracy", "size_kb"],
        "model": {"name": "digits_cnn", "kwargs": {"width": 8, "hidden": 32}}, "base": {"steps": 60, "lr": 0.01},
        "data": {"name": "digits"},
        "space": {"name": "joint", "choices": {"w_bits": [2, 4, 8, 32], "keep": [0.5, 1.0]}},
        "evaluator": {"device": "cpu", "finetune": {"steps": 3, "lr": 0.01}},
        "constraints": {"max_size_kb": 12.0},
    }, out, quiet=True)
    return out


def _trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="sls-s0", storage=f"sqlite:///{run / 'studies.db'}")
    return [t for t in study.trials if t.values is not None]


def test_replay_reports_the_learned_trials_and_the_goal_of_the_sweep(sls_run: Path) -> None:
    before = _trials(sls_run)
    out = load_benchmark("hirl_bench").replay(str(sls_run), "sls-s0", [4], {})
    got = out["after"][4]
    # the rows it learned from are the study's first 4 trials: observed accuracy as recorded, and
    # the exact-cost size equal to the size the evaluator measured
    assert [r["observed"] for r in got["learned_from"]] == [round(t.values[0], 4) for t in before[:4]]
    assert [r["size_kb"] for r in got["learned_from"]] == [round(t.values[1], 2) for t in before[:4]]
    # proposal 4's budget target: van der Corput vdc(5) = 0.625 of the log range [r_min, r_max],
    # r_max = 12 KiB / the uncompressed size (the max_size_kb constraint)
    identity_kb = json.loads((sls_run / "baseline.json").read_text())["0"]["size_kb"]
    r_min, r_max = got["ratio_min"], 12.0 / identity_kb
    assert got["goal_ratio"] == pytest.approx(np.exp(np.log(r_min) + 0.625 * (np.log(r_max) - np.log(r_min))), rel=1e-3)
    assert got["proposal"]["observed"] is None and got["proposal"]["size_kb"] > 0
    assert len(_trials(sls_run)) == len(before)  # nothing written to the run


def test_replay_names_the_studies_it_has_and_leaves_agent_training_as_it_was(sls_run: Path) -> None:
    from compsearch.evaluators import sb3_train

    learn = sb3_train.learn
    with pytest.raises(SystemExit, match=r"--study 'hirl-s9'.*\['sls-s0'\]"):
        load_benchmark("hirl_bench").replay(str(sls_run), "hirl-s9", [4], {})
    assert sb3_train.learn is learn  # replay blocks training only while it runs


def test_replay_refuses_more_trials_than_the_study_finished(sls_run: Path) -> None:
    with pytest.raises(SystemExit, match=r"--after 9: sls-s0 has 5 finished trials; give counts 1\.\.5"):
        load_benchmark("hirl_bench").replay(str(sls_run), "sls-s0", [4, 9], {})
