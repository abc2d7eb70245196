"""``compsearch check`` of agent studies: every meaningless ``[agent]`` / ``[task]`` / ``[gates]``
value, environment, algorithm and agent file is rejected naming its key, before any training.

Same method as :mod:`test_validate`: systematic mutations of a valid agent spec, each known
valid or not. Agent files are written by SB3 itself (untrained, so nothing is learnt here),
plus a zip whose ``policy.pth`` is a malicious pickle (it must never run).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_validate import VALUES, Case, _Evil, _int, _real, _set, check_cases

from compsearch.studies.spec import MAX_SEED, load_spec

BASE_AGENT: dict[str, Any] = {
    "name": "fuzz-agent",
    "strategies": ["random", "nsga2"],
    "trials": 4,
    "agent": {"algo": "dqn", "env": "CartPole-v1", "steps": 1000, "net_arch": [16, 16]},
    "task": {"episodes": 3, "test_episodes": 3, "teacher_episodes": 3},
    "space": {"name": "joint", "choices": {"w_bits": [2, 4, 8, 32], "keep": [0.5, 1.0]}},
    "evaluator": {"device": "cpu", "finetune": {"steps": 5, "lr": 0.01}},
    "constraints": {"max_size_kb": 12.0, "min_return": 20.0},
}
# train seeds 0..2 must stay below the validation seeds (1e6); DAgger adds none (5 steps < dagger_every)
NUMERIC: dict[str, Callable[[Any], bool]] = {
    "agent.steps": _int(1, 100_000_000),
    "agent.seed": _int(0, MAX_SEED),
    "agent.n_envs": _int(1, 1024),
    "agent.features_dim": _int(1, 65_536),
    "task.episodes": _int(1, 10_000),
    "task.test_episodes": _int(1, 10_000),
    "task.teacher_episodes": _int(1, 10_000),
    "task.max_steps": _int(1, 10_000_000),
    "task.train_seed": _int(0, 1_000_000 - 3),
    "task.temperature": _real(0, math.inf, open_low=True),
    "task.dagger_every": _int(0, 2**63),
    "task.dagger_episodes": _int(1, 2**63),
    "task.buffer_size": _int(1, 100_000_000),
    "gates.lr": _real(0, math.inf, open_low=True),
    "gates.init_open": _real(0, 1, open_low=True, open_high=True),
    "gates.params_weight": _real(0, 1),
    "constraints.min_return": _real(-math.inf, math.inf),
}
SECTIONS = ["agent", "task", "gates"]


def _agent_files(tmp: Path) -> dict[str, Path]:
    """SB3's own files: an untrained DQN ([16, 16]) and PPO ([32, 32]) on CartPole; not-agent files."""
    import gymnasium as gym
    from stable_baselines3 import DQN, PPO

    env = gym.make("CartPole-v1")
    files = {"dqn": tmp / "dqn.zip", "ppo": tmp / "ppo.zip"}
    DQN("MlpPolicy", env, seed=0, device="cpu", policy_kwargs={"net_arch": [16, 16]}, learning_starts=0).save(files["dqn"])
    PPO("MlpPolicy", env, seed=0, device="cpu", n_steps=64, batch_size=32, policy_kwargs={"net_arch": [32, 32]}).save(files["ppo"])
    files["text"] = tmp / "notes.zip"
    files["text"].write_text("not an agent")
    files["other_zip"] = tmp / "other.zip"
    with zipfile.ZipFile(files["other_zip"], "w") as z:
        z.writestr("readme.txt", "hello")
    files["evil"] = tmp / "evil.zip"
    with zipfile.ZipFile(files["evil"], "w") as z:
        z.writestr("data", json.dumps({"policy_class": {"__module__": "stable_baselines3.dqn.policies"}}))
        z.writestr("policy.pth", pickle.dumps(_Evil(str(tmp / "pwned"))))
    return files


def _agent(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        spec["agent"] = {**spec["agent"], **fields}
    return change


def _cases(tmp: Path) -> list[Case]:
    files = _agent_files(tmp)
    cases = [Case(f"{path}={v!r}", _set(path, v), ok(v), path) for path, ok in NUMERIC.items() for v in VALUES]
    cases += [Case(f"{s}.bogus", _set(f"{s}.bogus", 1), False, f"{s}.bogus") for s in SECTIONS]
    cases += [
        Case("env unknown", _agent(env="CartPol-v1"), False, "agent.env"),
        Case("env kwargs rejected", _agent(env_kwargs={"bogus": 1}), False, "agent.env_kwargs"),
        Case("dqn on continuous actions", _agent(env="Pendulum-v1"), False, "agent.env"),
        Case("sac on discrete actions", _agent(algo="sac"), False, "agent.env"),
        Case("sac on Pendulum", _agent(algo="sac", env="Pendulum-v1"), True, "agent"),
        Case("ppo", _agent(algo="ppo"), True, "agent"),
        Case("algo unknown", _agent(algo="a2c"), False, "agent.algo"),
        Case("features unknown", _agent(features="resnet"), False, "agent.features"),
        Case("small_cnn on vector observations", _agent(features="small_cnn"), False, "agent.features"),
        Case("activation unknown", _agent(activation="swish"), False, "agent.activation"),
        Case("net_arch 0", _agent(net_arch=[0]), False, "agent.net_arch"),
        Case("hyper unknown key", _agent(hyper={"bogus": 1}), False, "agent.hyper"),
        Case("hyper reserved key", _agent(hyper={"seed": 1}), False, "agent.hyper"),
        Case("hyper known key", _agent(hyper={"learning_rate": 0.001}), True, "agent"),
        Case("file of the recipe", _agent(path=str(files["dqn"])), True, "agent.path"),
        Case("ppo file with algo ppo", _agent(path=str(files["ppo"]), algo="ppo", net_arch=[32, 32]), True, "agent.path"),
        Case("ppo file said dqn", _agent(path=str(files["ppo"]), net_arch=[32, 32]), False, "agent.algo"),
        Case("file of another network", _agent(path=str(files["dqn"]), net_arch=[64, 64]), False, "agent.net_arch"),
        Case("file for another env", _agent(path=str(files["dqn"]), env="Acrobot-v1"), False, "agent.env"),
        Case("file missing", _agent(path=str(tmp / "none.zip")), False, "agent.path"),
        Case("file a text file", _agent(path=str(files["text"])), False, "agent.path"),
        Case("file a zip of something else", _agent(path=str(files["other_zip"])), False, "agent.path"),
        Case("file with a malicious pickle", _agent(path=str(files["evil"])), False, "agent.path"),
        Case("agent and model", _set("model", {"name": "digits_cnn"}), False, "model"),
        Case("agent and base", _set("base", {"steps": 5}), False, "base"),
        Case("agent and data", _set("data", {"name": "synthetic"}), False, "data"),
        Case("objective accuracy", _set("objectives", ["accuracy", "size_kb"]), False, "objectives[0]"),
        Case("constraint min_accuracy", _set("constraints.min_accuracy", 0.5), False, "constraints.min_accuracy"),
        Case("objectives return, bops", _set("objectives", ["return", "bops"]), True, "objectives"),
        Case("reference return", _set("reference_point", {"return": 10.0}), True, "reference_point"),
        Case("reference return inf", _set("reference_point", {"return": math.inf}), False, "reference_point.return"),
        Case("val and test seeds overlap", _set("task.val_seed", 2_000_001), False, "task"),
        Case("DAgger reaches validation seeds", lambda s: (s["task"].update(dagger_every=1, dagger_episodes=10**6),
                                                          s["evaluator"]["finetune"].update(steps=50)), False, "task"),
        Case("gates strengths", _set("gates.strengths", [0.0, 0.5, 2.0]), True, "gates"),
        Case("gates strength negative", _set("gates.strengths", [-0.5]), False, "gates.strengths"),
        Case("gates strength nan", _set("gates.strengths", [math.nan]), False, "gates.strengths"),
        Case("gates strengths repeated", _set("gates.strengths", [0.5, 0.5]), False, "gates.strengths"),
        Case("gates online", _set("gates.online", True), True, "gates"),
        Case("criterion lrp", _set("evaluator.criterion", "lrp"), True, "evaluator.criterion"),
        Case("skip_first false", _set("space.skip_first", False), True, "space"),
    ]
    return cases


def test_fuzzed_agent_specs_are_rejected_cleanly_or_accepted(tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    problems = check_cases(cases, BASE_AGENT, tmp_path)
    valid = sum(c.valid for c in cases)
    assert problems == [], f"{len(problems)} of {len(cases)} ({valid} valid):\n" + "\n".join(problems)
    assert not (tmp_path / "pwned").exists()  # the malicious agent file ran nothing
    assert not (tmp_path / "run").exists()  # validation creates nothing, trains nothing
    assert not any(p.suffix == ".json" for p in tmp_path.iterdir())  # no agent was trained into a cache


def test_agent_spec_defaults() -> None:
    spec = load_spec({k: v for k, v in BASE_AGENT.items() if k != "task"})
    assert spec.objective_pairs == (("return", "maximize"), ("size_kb", "minimize")) and spec.quality == "return"
    assert spec.task is not None and spec.task.episodes == 10 and spec.model is None and spec.base is None
    assert spec.gates.strength_list(4) == [0.1, 4.642, 215.4, 10000.0]  # 0.1 * 1e5 ** (i / 3), 4 significant digits
    assert load_spec(spec.model_dump(mode="json")) == spec  # the effective spec of run.json reads back the same
    assert os.fspath(load_spec(spec.model_dump(mode="json")).agent.recipe().env) == "CartPole-v1"  # type: ignore[union-attr]
