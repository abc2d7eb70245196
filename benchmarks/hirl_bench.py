"""Benchmarks of the RL strategies (prints JSON; never timed assertions in tests).

* :func:`time_sample_relative`: median milliseconds per ``sample_relative`` of ``hirl``
  once warm, *excluding* the periodic surrogate/RL retraining (reported separately as the
  median seconds per retraining).

The hypervolume comparison of ``hirl`` against the other strategies is
``benchmarks/strategies.py --what compare`` (the studies runner on digits_compare.toml).

Usage::

    .venv/bin/python benchmarks/hirl_bench.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

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


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(json.dumps({"sample_relative": time_sample_relative(trials=args.trials)}, indent=1))

if __name__ == "__main__":
    main()
