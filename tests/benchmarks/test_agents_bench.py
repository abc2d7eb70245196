"""benchmarks/agents.py end to end on a tiny CartPole DQN, as a user runs it (a subprocess):
the JSON's numbers follow their definitions, and a second run resumes without new work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
name = "tiny_agent"
strategies = ["random"]
trials = 2
objectives = ["return", "size_kb"]
[agent]
algo = "dqn"
env = "CartPole-v1"
steps = 1500
net_arch = [32, 32]
[task]
episodes = 3
test_episodes = 3
teacher_episodes = 3
[space]
name = "joint"
skip_first = false
[space.choices]
w_bits = [4, 8, 32]
keep = [0.5, 1.0]
granularity = ["tensor"]
[evaluator]
device = "cpu"
threads = 1
[evaluator.finetune]
steps = 20
optimizer = "adam"
lr = 0.001
[gates]
strengths = [0.0, 20.0]
lr = 0.5
"""


def _bench(tmp_path: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "agents.py"), "--studies", str(tmp_path / "tiny_agent.toml"),
           "--strategies", "random", "--criteria", "l1,lrp", "--keeps", "0.5", "--trials", "2", "--seeds", "2",
           "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "agents.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "agents.json").read_text())


@pytest.mark.slow
def test_agent_benchmark_numbers_and_resume(tmp_path: Path) -> None:
    (tmp_path / "tiny_agent.toml").write_text(SPEC)
    result = _bench(tmp_path)
    assert result["partial"] is False
    entry = result["studies"]["tiny_agent"]
    assert entry["status"] == "complete" and entry["seeds_done"] == [0, 1]
    assert set(entry["fronts"]) == {"random", "gates"}
    small = entry["smallest_at_1pct_loss"]
    # Units 4->32, 32->32, 32->2 with biases: 160 + 1056 + 66 = 1282 parameters x 32 bits / 8192 = 5.0078125 KiB.
    assert small["uncompressed_size_kb"] == 5.0078125
    r0 = small["uncompressed_return"]
    assert small["return_floor"] == pytest.approx(r0 - 0.01 * abs(r0))
    for method in ("random", "gates"):
        for point in small[method]["per_seed"]:
            if point["size_kb"] is not None:
                assert point["return"] >= small["return_floor"]
                assert point["ratio"] == pytest.approx(5.0078125 / point["size_kb"])
    criteria = entry["criteria"]
    assert set(criteria) == {"l1", "lrp"} and all(len(c["0.5"]["return"]) == 2 for c in criteria.values())
    storage = f"sqlite:///{tmp_path / 'runs' / 'tiny_agent' / 'studies.db'}"
    counts = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert counts == {"random-s0": 2, "random-s1": 2, "gates-s0": 2, "gates-s1": 2}

    again = _bench(tmp_path)  # resumes: no new trials, the cached criteria and test returns are read back
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == counts
    assert again["studies"]["tiny_agent"]["criteria"] == criteria
    assert again["studies"]["tiny_agent"]["smallest_at_1pct_loss"] == small
