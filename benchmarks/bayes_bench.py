"""``bo`` against its Bayesian peers ``gp`` (Optuna GPSampler) and ``botorch-optuna``; prints JSON.

* :func:`time_proposals`: seconds per proposal with 20/50/100 observations already in
  the study. The observations are synthetic (no training): random policies of the
  quickstart space (digits CNN, ``joint``: w_bits {2,3,4,6,8,32}, a_bits {8,32}, keep
  {0.25,0.5,0.75,1}, scheme, granularity, structure -> 18 dimensions), exact
  ``size_kb`` from the evaluator and an analytic accuracy (see :func:`synthetic_accuracy`).
  Two objectives (accuracy max, size_kb min), no constraints. Per strategy and size:
  one cold proposal (a fresh sampler), then ``repeats`` proposals in the running
  study (each told before the next); ``seconds``/``cpu_s`` are their median wall/CPU
  time, ``cold_s``/``cold_cpu_s`` the first's.
  Target (issue 5): ``bo`` <= 2 s at 100 observations on 2 cores, faster than both peers.
The hypervolume comparison of ``bo`` against its peers is ``benchmarks/strategies.py
--what compare`` (the studies runner on digits_compare.toml).

Run: ``.venv/bin/python benchmarks/bayes_bench.py [--quick]`` (``--quick``: sizes 20/50).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna
import torch

from compsearch.evaluators import CompressionEvaluator, FineTuneConfig, build_model, load_dataset
from compsearch.evaluators.models import train_base_model
from compsearch.search.registry import get_strategy
from compsearch.spaces import Policy, Space, get_space

PEERS = ("bo", "gp", "botorch-optuna")
OBJECTIVES = (("accuracy", "maximize"), ("size_kb", "minimize"))
DIRECTIONS: list[Any] = [d for _, d in OBJECTIVES]
CHOICES = {"w_bits": [2, 3, 4, 6, 8, 32], "a_bits": [8, 32], "keep": [0.25, 0.5, 0.75, 1.0]}
CONSTRAINTS = {"min_accuracy": 0.80, "max_size_kb": 24.0}
FINETUNE = FineTuneConfig(steps=40, lr=0.01, optimizer="sgd", batch_size=64, distill=0.5)


@dataclass
class Setting:
    """The digits comparison setting: trained base model, data, space, reference point."""

    model: torch.nn.Module
    data: Any
    space: Space
    reference: dict[str, float]

    def evaluator(self, seed: int) -> CompressionEvaluator:
        ft = replace(FINETUNE, seed=seed)
        return CompressionEvaluator(copy.deepcopy(self.model), self.data, finetune=ft, criterion="l1", device="cpu")


def digits_setting(*, base_steps: int = 300) -> Setting:
    data = load_dataset("digits", seed=0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1)
    if base_steps:
        train_base_model(model, data, steps=base_steps, lr=0.003, seed=0, device="cpu")
    ev = CompressionEvaluator(copy.deepcopy(model), data, finetune=FINETUNE, device="cpu")
    space = get_space("joint", ev.units, **CHOICES)
    reference = {"accuracy": CONSTRAINTS["min_accuracy"], "size_kb": ev.cost(Policy())["size_kb"]}
    return Setting(model=model, data=data, space=space, reference=reference)


def synthetic_accuracy(policy: Policy, space: Space, rng: np.random.Generator) -> float:
    """``0.97 - sum_u 0.4 * share_u * (keep loss + bit loss) + N(0, 0.005)``, where
    ``share_u`` is the unit's share of the searched weights, keep loss ``(1 - keep)^2``,
    bit loss ``2^-(w_bits - 1)`` (+0.02 for 8-bit inputs)."""
    total = sum(u.params for u in space.units)
    acc = 0.97
    for u in space.units:
        up = policy.get_or_identity(u.name)
        loss = (1 - up.keep) ** 2 + 2.0 ** -(up.w_bits - 1) + (0.02 if up.a_bits < 16 else 0.0)
        acc -= 0.4 * u.params / total * loss
    return float(acc + rng.normal(0.0, 0.005))


def _synthetic_study(setting: Setting, cost: Any, n: int, seed: int) -> optuna.Study:
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=DIRECTIONS)
    dists = setting.space.optuna_distributions()
    for _ in range(n):
        policy = setting.space.sample(rng)
        params = setting.space.encode(policy)
        acc, size = synthetic_accuracy(policy, setting.space, rng), cost(policy)["size_kb"]
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, values=[acc, size],
            user_attrs={"metrics": {"accuracy": acc, **cost(policy)}},
        ))
    return study


def _ask_tell(study: optuna.Study, setting: Setting, cost: Any, rng: np.random.Generator) -> tuple[float, float]:
    """One proposal, told at once; returns its (wall, CPU) seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    trial = study.ask()
    policy = setting.space.suggest(trial)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    study.tell(trial, [synthetic_accuracy(policy, setting.space, rng), cost(policy)["size_kb"]])
    return seconds, cpu


def time_proposals(
    strategies: Sequence[str] = PEERS,
    n_obs: Sequence[int] = (20, 50, 100),
    *,
    repeats: int = 2,
    setting: Setting | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{strategy: {str(n): {"seconds", "cpu_s", "cold_s", "cold_cpu_s"}}}``: median wall and
    CPU seconds of the steady-state proposals, and of the first (cold) one. With one torch
    thread, CPU seconds are what the proposal costs on an otherwise idle core; wall
    seconds also include waiting for a shared machine."""
    setting = setting or digits_setting(base_steps=0)
    ev = setting.evaluator(0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in strategies:
        out[name] = {}
        for n in n_obs:
            study = _synthetic_study(setting, ev.cost, n, seed=n)
            study.sampler = get_strategy(
                name, space=setting.space, seed=0, evaluator=ev, objectives=OBJECTIVES,
                reference_point=setting.reference,
            )
            rng = np.random.default_rng(1)
            cold = _ask_tell(study, setting, ev.cost, rng)
            steady = [_ask_tell(study, setting, ev.cost, rng) for _ in range(repeats)]
            out[name][str(n)] = {
                "seconds": round(statistics.median(s for s, _ in steady), 3),
                "cpu_s": round(statistics.median(c for _, c in steady), 3),
                "cold_s": round(cold[0], 3),
                "cold_cpu_s": round(cold[1], 3),
            }
            print(f"time {name} n={n}: {out[name][str(n)]} load={os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-obs", type=int, nargs="+", default=[20, 50, 100])
    p.add_argument("--strategies", nargs="+", default=list(PEERS))
    p.add_argument("--repeats", type=int, default=2, help="steady-state proposals timed per size")
    p.add_argument("--quick", action="store_true", help="sizes 20 50")
    args = p.parse_args(argv)
    if args.quick:
        args.n_obs = [20, 50]
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    result: dict[str, Any] = {"threads": 1, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    result["seconds_per_proposal"] = time_proposals(args.strategies, args.n_obs, repeats=args.repeats)
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
