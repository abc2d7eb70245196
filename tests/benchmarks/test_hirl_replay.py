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


def test_next_trial_fit_by_hand() -> None:
    fit = load_benchmark("hirl_bench").next_trial_fit
    # same order -> rho 1, the predicted best (index 2) is the real best -> regret 0
    assert fit([0.1, 0.3, 0.9], [0.5, 0.6, 0.8]) == pytest.approx({"spearman": 1.0, "regret": 0.0})
    # reversed -> rho -1; the pick is index 0 (real 0.8), the best is 0.9 -> regret 0.1
    assert fit([0.9, 0.3, 0.1], [0.8, 0.85, 0.9]) == pytest.approx({"spearman": -1.0, "regret": 0.1})
    # ranks (1, 3, 2) against (1, 2, 3): d^2 = 0 + 1 + 1, rho = 1 - 6 * 2 / (3 * 8) = 0.5; pick index 1 (0.6 of best 0.7)
    assert fit([0.0, 2.0, 1.0], [0.5, 0.6, 0.7]) == pytest.approx({"spearman": 0.5, "regret": 0.1})
    assert fit([1.0, 1.0], [0.2, 0.4])["spearman"] == 0.0  # a constant prediction ranks nothing


def test_surrogate_fit_scores_each_model_on_the_trials_that_came_next(sls_run: Path) -> None:
    out = load_benchmark("hirl_bench").surrogate_fit(str(sls_run), "sls", [3], 2)
    real = [t.values[0] for t in _trials(sls_run)[3:5]]
    assert out["seeds"] == [0] and out["next"] == 2 and out["quality"] == "accuracy"
    assert set(out["models"]) == {"hirl_ensemble", "gp", "ridge"}
    for model in out["models"].values():
        # two trials predicted: either ranked right (rho 1, no regret) or wrong (rho -1, regret = their gap),
        # or nothing to rank (rho 0)
        rho, regret = model["spearman"][3], model["regret"][3]
        assert (rho, regret) in {(1.0, 0.0), (-1.0, round(abs(real[0] - real[1]), 4))} or rho == 0.0


def test_surrogate_fit_names_what_is_missing(sls_run: Path) -> None:
    bench = load_benchmark("hirl_bench")
    with pytest.raises(SystemExit, match=r"--strategy 'hirl'.*\['sls'\]"):
        bench.surrogate_fit(str(sls_run), "hirl", [3], 2)
    with pytest.raises(SystemExit, match=r"--after 4 --next 2: sls-s0 has 5 finished trials"):
        bench.surrogate_fit(str(sls_run), "sls", [4], 2)
