"""Transfer of a learned search policy to a larger model, and depth+joint against joint; prints JSON.

The model family (:class:`DigitsResNet`): a ResNet for sklearn's 8x8 digits, stem conv
(1 -> ``w``), stage 1 of ``d`` residual blocks (``relu(x + conv(relu(conv(x))))``, ``w`` channels),
stage 2 of one down-sampling block (stride 2, 1x1 shortcut, ``w -> 2w``) and ``d - 1`` residual
blocks, global average pooling and a linear head. Every block but the stem and head is
removable (the down-sampling block by its shortcut). The *small* model has ``d = 2`` (4
removable blocks), the *large* one ``d = --depth`` (default 4: 8 removable blocks). Each is
trained from the same seed on the train split, then searched with the real evaluator
(``--steps`` fine-tuning steps per candidate), objectives validation accuracy (max) and
``size_bits`` (min), hypervolume against the reference point (accuracy ``--acc-floor``,
uncompressed size), normalised (:func:`compsearch.studies.hypervolume.hypervolume_curve`).

Sections:

* ``transfer``: ``n2n`` searches the small model's ``depth+joint`` space for ``--source-trials``
  evaluations (seed ``--source-seed``, 0); its learned state (saved like a run's ``strategy_state/n2n-s0.pt``)
  warm-starts ``n2n`` on the large model (``warm_start``), against a cold start, ``--trials``
  evaluations each, over ``--seeds`` seeds. Reported: mean hypervolume curves, per-seed final
  values, and the evaluations warm needs to reach cold's mean final hypervolume (target: at most
  half the budget).
* ``depth``: on the large model, the same strategies (``--strategies``, default ``n2n`` and
  ``random``) search ``depth+joint`` and ``joint`` at equal budgets; the best-known front of each
  space (union over strategies and seeds) is compared below 20% of the uncompressed size: the
  share of joint's front points there that depth+joint's front weakly dominates, and each
  front's hypervolume in that region (reference: accuracy floor, 20% of the uncompressed size).
  The ``n2n`` cold runs of ``transfer`` are reused.

Run: ``nice -n 10 .venv/bin/python benchmarks/transfer.py [--quick] [--seeds 3] [--trials 40]``.
Timings are not reported (the numbers are hypervolumes and counts of evaluations).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from compsearch.evaluators import CompressionEvaluator
from compsearch.evaluators.datasets import load_digits
from compsearch.evaluators.objective import optuna_objective
from compsearch.evaluators.types import EvaluatorConfig, FineTuneConfig
from compsearch.search.registry import get_strategy
from compsearch.search.rl.persist import save_study_state
from compsearch.spaces import discover_units, get_space
from compsearch.studies.hypervolume import hypervolume, hypervolume_curve, pareto_front

CHOICES = {"w_bits": [2, 4, 8, 32], "keep": [0.25, 0.5, 1.0], "a_bits": 32, "scheme": "symmetric", "granularity": "channel",
           "structure": "channel"}
DIRECTIONS = ["maximize", "minimize"]
#: per-strategy options of the depth comparison (NSGA's population fits the budget)
OPTIONS: dict[str, dict[str, Any]] = {"nsga2": {"population_size": 10}, "nsga3": {"population_size": 10}, "tpe": {"n_startup_trials": 8}}


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class _Down(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.conv2(torch.relu(self.conv1(x))))


class DigitsResNet(nn.Module):
    """The benchmark's model family (module docstring): ``depth`` blocks per stage, width ``w``."""

    def __init__(self, depth: int, w: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, w, 3, padding=1)
        self.layer1 = nn.Sequential(*[_Res(w) for _ in range(depth)])
        self.layer2 = nn.Sequential(_Down(w, 2 * w), *[_Res(2 * w) for _ in range(depth - 1)])
        self.head = nn.Linear(2 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(torch.relu(self.stem(x)))).mean((2, 3)))


def train_base(depth: int, data: Any, steps: int) -> nn.Module:
    """The family member of ``depth``, trained ``steps`` Adam steps (batch 64, seed 0)."""
    torch.manual_seed(0)
    model = DigitsResNet(depth)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.x_train, data.y_train
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class Problem:
    """One family member: its evaluator, spaces and hypervolume reference."""

    def __init__(self, depth: int, data: Any, *, base_steps: int, steps: int, acc_floor: float) -> None:
        self.model = train_base(depth, data, base_steps)
        x = data.x_train[:2]
        self.units = discover_units(self.model, x)
        cfg = EvaluatorConfig(finetune=FineTuneConfig(steps=steps, lr=0.01, batch_size=64))
        self.evaluator = CompressionEvaluator(self.model, data, config=cfg)
        self.base = self.evaluator.base_metrics()
        self.spaces = {name: get_space(name, self.units, model=self.model, example_input=x, **CHOICES)
                       for name in ("depth+joint", "joint")}
        self.reference = [acc_floor, float(self.base.size_bits)]
        self.scale = [1.0 - acc_floor, float(self.base.size_bits)]

    def study(self, strategy: str, space: str, seed: int, trials: int, **options: Any) -> optuna.Study:
        sp = self.spaces[space]
        sampler = get_strategy(strategy, space=sp, seed=seed, evaluator=self.evaluator,
                               objectives=list(zip(["accuracy", "size_bits"], DIRECTIONS, strict=True)), n_trials=trials, **options)
        study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
        study.optimize(optuna_objective(sp, self.evaluator, ("accuracy", "size_bits")), n_trials=trials)
        return study

    def curve(self, study: optuna.Study) -> list[float]:
        rows = [list(t.values) if t.values is not None else None for t in study.trials]
        return hypervolume_curve(rows, DIRECTIONS, self.reference, self.scale)


def points(studies: Sequence[optuna.Study]) -> np.ndarray:
    rows = [list(t.values) for s in studies for t in s.trials if t.values is not None]
    return np.array(rows, dtype=float).reshape(-1, 2)


def first_reaching(curve: Sequence[float], target: float) -> int | None:
    """Evaluations (1-based) after which ``curve`` first reaches ``target``; None if never."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target - 1e-12), None)


def transfer(small: Problem, large: Problem, *, seeds: Sequence[int], trials: int, source_trials: int,
             folder: Path, source_seed: int = 0) -> tuple[dict[str, Any], dict[int, optuna.Study]]:
    src = small.study("n2n", "depth+joint", source_seed, source_trials)
    src.study_name  # noqa: B018
    path = save_study_state(src, folder)
    assert path is not None
    cold, warm = {}, {}
    for seed in seeds:
        cold[seed] = large.study("n2n", "depth+joint", seed, trials)
        warm[seed] = large.study("n2n", "depth+joint", seed, trials, warm_start=str(path))
    cc = {s: large.curve(st) for s, st in cold.items()}
    wc = {s: large.curve(st) for s, st in warm.items()}
    mean_c, mean_w = np.mean(list(cc.values()), axis=0), np.mean(list(wc.values()), axis=0)
    target = float(mean_c[-1])
    reach = first_reaching(mean_w.tolist(), target)
    copied = warm[seeds[0]].sampler.warm_copied  # type: ignore[attr-defined]
    out = {
        "source": {"model_depth": 2, "trials": source_trials, "seed": source_seed, "final_hv": round(small.curve(src)[-1], 5)},
        "copied_parameters": {k: len(v) for k, v in copied.items()},
        "cold": {"mean_curve": [round(float(v), 5) for v in mean_c], "final_per_seed": {s: round(c[-1], 5) for s, c in cc.items()}},
        "warm": {"mean_curve": [round(float(v), 5) for v in mean_w], "final_per_seed": {s: round(c[-1], 5) for s, c in wc.items()}},
        "cold_final_mean_hv": round(target, 5),
        "warm_evaluations_to_reach_cold_final": reach,
        "warm_hv_at_half_budget": round(float(mean_w[trials // 2 - 1]), 5),
        "cold_hv_at_half_budget": round(float(mean_c[trials // 2 - 1]), 5),
        "target_met": reach is not None and reach <= trials // 2,
    }
    return out, cold


def depth_vs_joint(large: Problem, *, strategies: Sequence[str], seeds: Sequence[int], trials: int,
                   n2n_cold: dict[int, optuna.Study]) -> dict[str, Any]:
    runs: dict[str, list[optuna.Study]] = {"depth+joint": [], "joint": []}
    for space in runs:
        for strategy in strategies:
            for seed in seeds:
                if strategy == "n2n" and space == "depth+joint" and seed in n2n_cold:
                    runs[space].append(n2n_cold[seed])
                else:
                    runs[space].append(large.study(strategy, space, seed, trials, **OPTIONS.get(strategy, {})))
    limit = 0.2 * large.reference[1]
    fronts = {k: pareto_front(points(v), DIRECTIONS) for k, v in runs.items()}
    low = {k: f[f[:, 1] < limit] for k, f in fronts.items()}
    dj = fronts["depth+joint"]
    dominated = [bool(np.any((dj[:, 0] >= a) & (dj[:, 1] <= s))) for a, s in low["joint"]]
    ref = [large.reference[0], limit]
    scale = [large.scale[0], limit]
    hv_low = {k: round(hypervolume(v, DIRECTIONS, ref, scale), 5) if len(v) else 0.0 for k, v in low.items()}
    return {
        "strategies": list(strategies),
        "size_limit_bits": limit,
        "front_points_below_limit": {k: [[round(a, 4), round(s)] for a, s in v.tolist()] for k, v in low.items()},
        "joint_points_dominated_by_depth_joint": f"{sum(dominated)}/{len(dominated)}",
        "hv_below_limit": hv_low,
        "hv_whole_front": {k: round(hypervolume(v, DIRECTIONS, large.reference, large.scale), 5) for k, v in fronts.items()},
        # met: depth+joint has points below the limit, weakly dominates every joint point there, and covers more of that region
        "target_met": len(low["depth+joint"]) > 0 and all(dominated) and hv_low["depth+joint"] > hv_low["joint"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds x 24 evaluations, 10 fine-tuning steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--source-trials", type=int, default=40)
    parser.add_argument("--source-seed", type=int, default=0, help="seed of the small model's n2n run")
    parser.add_argument("--steps", type=int, default=30, help="fine-tuning steps per candidate")
    parser.add_argument("--depth", type=int, default=4, help="blocks per stage of the large model")
    parser.add_argument("--acc-floor", type=float, default=0.5)
    parser.add_argument("--strategies", default="n2n,random")
    parser.add_argument("--what", choices=("transfer", "depth", "all"), default="all")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.source_trials, args.steps = 24, 24, 10
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.time()
    data = load_digits(seed=0)
    small = Problem(2, data, base_steps=400, steps=args.steps, acc_floor=args.acc_floor)
    large = Problem(args.depth, data, base_steps=400, steps=args.steps, acc_floor=args.acc_floor)
    seeds = list(range(args.seeds))
    result: dict[str, Any] = {
        "setup": {"small_depth": 2, "large_depth": args.depth, "trials": args.trials, "seeds": seeds, "finetune_steps": args.steps,
                  "choices": CHOICES, "reference": large.reference,
                  "uncompressed_accuracy": {"small": round(small.base.values["accuracy"], 4), "large": round(large.base.values["accuracy"], 4)}},
    }
    cold: dict[int, optuna.Study] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("transfer", "all"):
            result["transfer"], cold = transfer(small, large, seeds=seeds, trials=args.trials, source_trials=args.source_trials, folder=Path(tmp),
                                                  source_seed=args.source_seed)
    if args.what in ("depth", "all"):
        result["depth_vs_joint"] = depth_vs_joint(large, strategies=args.strategies.split(","), seeds=seeds, trials=args.trials, n2n_cold=cold)
    result["note"] = "run on a shared 2-core machine under load; wall time is not a measurement"
    result["wall_seconds"] = round(time.time() - start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
