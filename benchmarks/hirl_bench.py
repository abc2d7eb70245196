"""Benchmarks of the RL strategies (prints JSON; never timed assertions in tests).

* :func:`time_sample_relative`: median milliseconds per ``sample_relative`` of ``hirl``
  once warm, *excluding* the periodic surrogate/RL retraining (reported separately as the
  median seconds per retraining).
* :func:`compare`: a ``studies/digits_compare.toml``-like setting (digits CNN, ``joint``
  space with the study's choices, accuracy vs size_kb, fine-tuned evaluations) for each
  strategy and seed; hypervolume (:func:`compsearch.studies.hypervolume.hypervolume`,
  reference = accuracy floor 0.85 and the uncompressed size) after given numbers of
  evaluations, mean and standard deviation over seeds.

Usage::

    .venv/bin/python benchmarks/hirl_bench.py --seeds 2 --trials 30 --steps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import torch

SPACE_CHOICES = dict(w_bits=(2, 3, 4, 5, 6, 8, 32), a_bits=(4, 8, 32), keep=(0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0))
OBJECTIVES = (("accuracy", "maximize"), ("size_kb", "minimize"))
ACC_FLOOR = 0.85


def digits_setting(*, steps: int = 100, base_steps: int = 600) -> tuple[Any, Any]:
    """``(space, evaluator)`` of the digits_compare setting (base model trained once, seed 0)."""
    from compsearch.evaluators import (
        CompressionEvaluator,
        FineTuneConfig,
        build_model,
        load_dataset,
    )
    from compsearch.evaluators.models import train_base_model
    from compsearch.spaces import get_space

    data = load_dataset("digits", seed=0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1)
    train_base_model(model, data, steps=base_steps, lr=3e-3, seed=0)
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=steps, lr=0.01, optimizer="sgd", distill=0.5), criterion="l1", device="cpu")
    return get_space("joint", ev.units, **SPACE_CHOICES), ev


def time_sample_relative(*, trials: int = 30, seed: int = 0, space: Any = None, evaluator: Any = None) -> dict[str, float]:
    """Median ms per ``sample_relative`` of ``hirl`` once warm (excluding retraining) and
    median seconds per retraining, on a study whose values are the exact size and a cheap
    analytic accuracy stand-in (no fine-tuning, so only the sampler is timed)."""
    from compsearch.search.hirl import HiRLSampler

    if space is None:
        space, evaluator = digits_setting(steps=0, base_steps=200)
    sampler = HiRLSampler(space, evaluator=evaluator, seed=seed, objectives=OBJECTIVES)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    cheap, retrain = [], []
    for _ in range(trials):
        n_retrain = len(sampler.retrain_seconds)
        t0 = time.perf_counter()
        trial = study.ask()
        policy = space.suggest(trial)
        ms = (time.perf_counter() - t0) * 1e3
        if len(sampler.retrain_seconds) > n_retrain:
            retrain.append(sampler.retrain_seconds[-1])
        elif len(study.trials) > sampler.config.startup_trials + 1:
            cheap.append(ms)
        cost = evaluator.cost(policy)
        acc = 1.0 - 0.5 * (1.0 - cost["compression_ratio"] ** -0.5) ** 3
        study.tell(trial, (acc, cost["size_kb"]))
    return {
        "sample_relative_ms_median": statistics.median(cheap) if cheap else float("nan"),
        "retrain_s_median": statistics.median(retrain) if retrain else float("nan"),
        "n_cheap": len(cheap),
        "n_retrain": len(retrain),
    }


def _hv_curve(study: optuna.Study, reference: Sequence[float]) -> list[float]:
    from compsearch.studies.hypervolume import hypervolume_curve, metric_scales

    rows = [t.values if t.state == optuna.trial.TrialState.COMPLETE else None for t in sorted(study.trials, key=lambda t: t.number)]
    dirs = [d for _, d in OBJECTIVES]
    return hypervolume_curve(rows, dirs, reference, metric_scales([m for m, _ in OBJECTIVES], reference))


def compare(
    strategies: Sequence[str] = ("hirl", "amc", "haq", "nsga2", "tpe", "random"),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    trials: int = 60,
    *,
    checkpoints: Sequence[int] = (15, 30, 60),
    steps: int = 100,
) -> dict[str, Any]:
    """Hypervolume after each checkpoint (evaluations) per strategy: mean, std, per seed."""
    from compsearch.evaluators import optuna_objective
    from compsearch.search.registry import get_strategy

    space, ev = digits_setting(steps=steps)
    size_id = ev.cost(space.decode(space.params_from_actions([n - 1 for n in space.action_sizes()])))["size_kb"]
    reference = [ACC_FLOOR, size_id]
    constraints = {"max_size_kb": 20.0}
    out: dict[str, Any] = {"reference": reference, "trials": trials, "finetune_steps": steps, "seeds": list(seeds), "results": {}}
    for name in strategies:
        curves, secs = [], []
        for seed in seeds:
            sampler = get_strategy(name, space=space, seed=seed, evaluator=ev, objectives=OBJECTIVES, constraints=constraints, n_trials=trials)
            study = optuna.create_study(directions=[d for _, d in OBJECTIVES], sampler=sampler)
            t0 = time.perf_counter()
            study.optimize(optuna_objective(space, ev, [m for m, _ in OBJECTIVES]), n_trials=trials)
            secs.append(time.perf_counter() - t0)
            curves.append(_hv_curve(study, reference))
        res: dict[str, Any] = {"seconds_per_study": statistics.mean(secs)}
        for c in checkpoints:
            if c <= trials:
                vals = [cv[c - 1] for cv in curves]
                res[f"hv@{c}"] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "per_seed": vals}
        out["results"][name] = res
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default="hirl,amc,haq,nsga2,tpe,random")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--steps", type=int, default=100, help="fine-tune steps per evaluation")
    p.add_argument("--skip-compare", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result: dict[str, Any] = {"sample_relative": time_sample_relative()}
    if not args.skip_compare:
        checkpoints = [c for c in (15, 30, 60) if c <= args.trials] or [args.trials]
        result["compare"] = compare(args.strategies.split(","), range(args.seeds), args.trials, checkpoints=checkpoints, steps=args.steps)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
