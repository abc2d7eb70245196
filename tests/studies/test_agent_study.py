"""An agent study end to end on a tiny CartPole DQN: the agent trained into the run folder once
(cached), strategies and the gates method in one run folder, the report drawing both.

CI-sized: a 1500-step agent ([32, 32], a few seconds), 3 validation episodes, 30 distillation
steps per candidate. The bundled ``studies/cartpole_dqn.toml`` runs in the slow variant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from compsearch import record
from compsearch.errors import ConfigError
from compsearch.spaces import Policy
from compsearch.studies.gates import run_gates
from compsearch.studies.report import build_report
from compsearch.studies.run import prepare
from compsearch.studies.runner import run_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SPEC: dict[str, Any] = {
    "name": "tiny-cartpole",
    "strategies": ["random", "nsga2"],
    "strategy_options": {"nsga2": {"population_size": 2}},
    "trials": 3,
    "agent": {"algo": "dqn", "env": "CartPole-v1", "steps": 1500, "net_arch": [32, 32]},
    "task": {"episodes": 3, "test_episodes": 3, "teacher_episodes": 3},
    "space": {"name": "joint", "skip_first": False, "choices": {"w_bits": [4, 8, 32], "keep": [0.5, 1.0],
                                                                "granularity": ["tensor"]}},
    "evaluator": {"device": "cpu", "threads": 1, "finetune": {"steps": 30, "optimizer": "adam", "lr": 0.001}},
    "gates": {"strengths": [0.0, 20.0], "lr": 0.5},
}


def test_agent_study_with_gates_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = run_study(SPEC, out, quiet=True)
    info = json.loads((out / "run.json").read_text())
    agent_file = out / info["base"]["path"]
    assert info["base"]["source"] == "trained" and agent_file.suffix == ".zip" and agent_file.is_file()
    # the reference of `return` is the return of random actions on the validation seeds, the
    # scale the gap from it to the uncompressed agent (a gain of 1 = the agent's whole return)
    ev = run.evaluator(0)
    random_return = ev.task.random_return()
    assert random_return == ev.task.random_return() and 5 < random_return < 100  # CartPole: ~20 steps of chance
    base_return = ev.task.measure(run.model, "val")["return"]
    assert info["base"]["val_return"] == base_return
    assert info["reference_point"]["return"] == random_return
    assert info["scales"][0] == pytest.approx(base_return - random_return if base_return > random_return else random_return)

    mtime = agent_file.stat().st_mtime_ns
    again = prepare(SPEC, out)  # a second preparation reads the cached agent, trains nothing
    assert agent_file.stat().st_mtime_ns == mtime and again.base_info["hash"] == run.base_info["hash"]

    run_gates(SPEC, out)
    study = optuna.load_study(study_name="gates-s0", storage=run.storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    strong = record.read_metrics(trials[1])
    assert strong["gate_strength"] == 20.0 and "joint_return" in strong and strong["test_return"] is not None
    stored = record.read_policy(trials[1])
    assert stored is not None
    units = stored["units"]  # a strong penalty closes channels: keep = open gates / 32 per hidden layer
    assert units and all(u["structure"] == "channel" and (u["keep"] * 32).is_integer() for u in units.values())
    assert strong["size_kb"] == ev.cost(Policy.from_dict(stored))["size_kb"] < ev.cost(Policy())["size_kb"]

    run_gates({**SPEC, "trials": 16}, out)  # resumed: every strength already has its point
    assert len(optuna.load_study(study_name="gates-s0", storage=run.storage).trials) == 2
    # the run folder's budget (3 trials per strategy) stays the budget, not the spec file's 16
    assert json.loads((out / "run.json").read_text())["spec"]["trials"] == 3
    with pytest.raises(ConfigError, match="other \\[gates\\]"):
        run_gates({**SPEC, "gates": {**SPEC["gates"], "lr": 0.1}}, out)

    summary = build_report(out)
    assert summary["quality"] == "return" and list(summary["strategies"]) == ["random", "nsga2", "gates"]
    for row in summary["strategies"]["gates"]["pareto"]:  # the gates points keep their own test return
        assert row["test_return"] == row["metrics"]["test_return"]
    assert all(row["test_return"] is not None for s in summary["strategies"].values() for row in s["pareto"])
    html = (out / "report.html").read_text()
    assert 'data-strategy="gates"' in html and "test_return" in html
