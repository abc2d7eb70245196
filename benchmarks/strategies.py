"""Strategy benchmarks of issues 4 (RL) and 5 (Bayesian); prints JSON.

Sections (``--what``):

* ``timing``: ms per ``sample_relative`` of ``hirl`` once warm, excluding the periodic
  surrogate/RL retraining (reported separately) -- :func:`hirl_bench.time_sample_relative`;
  seconds per proposal of ``bo``, ``gp`` and ``botorch-optuna`` with 20/50/100
  observations -- :func:`bayes_bench.time_proposals`.
* ``compare``: the real product path. ``studies/digits_compare.toml`` (digits CNN,
  ``joint`` space, accuracy vs size_kb, 100 fine-tune steps per candidate, constraints
  min_accuracy 0.85 / max_size_kb 20, reference point = accuracy floor and uncompressed
  size) is run with :func:`compsearch.studies.runner.run_study` for each strategy, with
  ``--trials`` evaluations per strategy and seed; one run folder per seed (so seeds run
  in parallel processes, and a killed benchmark resumes). Reported per strategy:
  hypervolume after 25/50/100% of the budget (15/30/60 for 60 trials), mean, std and
  per-seed values (:mod:`compsearch.studies.summary`), and the evaluations each strategy
  needs to reach the best *baseline's* mean final hypervolume (issue 4's target: ``hirl``
  in at most half the budget).

Run: ``.venv/bin/python benchmarks/strategies.py [--what timing|compare|all] [--seeds 5]
[--trials 60] [--jobs 2] [--out runs/bench_strategies]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from compsearch.studies.summary import first_reaching

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "studies" / "digits_compare.toml"
COMPARED = ("hirl", "amc", "haq", "nsga2", "tpe", "random", "bo", "gp")
RL = ("hirl", "amc", "haq")


def _run_seed(out: str, strategies: Sequence[str], trials: int, seed: int) -> dict[str, list[float]]:
    import torch

    from compsearch.studies.runner import run_study
    from compsearch.studies.summary import summarize

    torch.set_num_threads(1)
    run_study(SPEC, out, strategies=list(strategies), trials=trials, seeds=[seed], quiet=True)
    summary = summarize(out)
    return {s: summary["strategies"][s]["curves"][str(seed)] for s in strategies}


def compare(strategies: Sequence[str], seeds: Sequence[int], trials: int, out_root: Path, jobs: int) -> dict[str, Any]:
    """Hypervolume checkpoints per strategy, pooled over one run folder per seed."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {s: pool.submit(_run_seed, str(out_root / f"s{s}"), strategies, trials, s) for s in seeds}
        per_seed = {s: f.result() for s, f in futures.items()}
    checkpoints = sorted({max(1, round(f * trials)) for f in (0.25, 0.5, 1.0)})
    result: dict[str, Any] = {}
    for name in strategies:
        curves = [per_seed[s][name] for s in seeds]
        row: dict[str, Any] = {}
        for c in checkpoints:
            vals = [curve[c - 1] if len(curve) >= c else 0.0 for curve in curves]
            row[f"hv@{c}"] = {"mean": round(float(np.mean(vals)), 5), "std": round(float(np.std(vals)), 5),
                              "per_seed": [round(v, 5) for v in vals]}
        row["mean_curve"] = [round(float(v), 5) for v in np.mean([c[:trials] for c in curves], axis=0)]
        result[name] = row
    baselines = [s for s in strategies if s not in RL]
    if baselines:
        best = max(baselines, key=lambda s: result[s]["mean_curve"][-1])
        target = result[best]["mean_curve"][-1]
        result["_target"] = {"best_baseline": best, "final_hv": target, "evaluations_to_reach": {
            s: first_reaching(result[s]["mean_curve"], target) for s in strategies}}
    return result


def timing(repeats: int) -> dict[str, Any]:
    import bayes_bench
    import hirl_bench

    return {
        "hirl_sample_relative": hirl_bench.time_sample_relative(),
        "seconds_per_proposal": bayes_bench.time_proposals(("bo", "gp", "botorch-optuna"), (20, 50, 100), repeats=repeats),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--what", choices=("timing", "compare", "all"), default="all")
    p.add_argument("--strategies", default=",".join(COMPARED))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes")
    p.add_argument("--repeats", type=int, default=2, help="steady-state proposals timed per size")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_strategies")
    args = p.parse_args(argv)
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_start": round(os.getloadavg()[0], 2)}
    if args.what in ("timing", "all"):
        out["timing"] = timing(args.repeats)
    if args.what in ("compare", "all"):
        out["compare_scale"] = {"spec": str(SPEC.relative_to(ROOT)), "seeds": args.seeds, "trials": args.trials}
        out["compare"] = compare(args.strategies.split(","), list(range(args.seeds)), args.trials, args.out, args.jobs)
    out["load_avg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
