"""Scaling of the multi-worker backends: evaluations per minute with 1 and 2 workers.

For each backend -- Optuna with a journal file, Optuna with a PostgreSQL server (a
throwaway local one, ``compsearch.studies.pgserver``; skipped when the binaries are
missing) and Ray Tune -- and 1 and 2 workers, one ``random`` study of ``--trials``
evaluations of the digits CNN (fine-tune ``--steps`` steps each, one torch thread per
worker) runs in a fresh run folder whose base model is already cached. Printed as JSON:

* ``steady_evals_per_min``: ``(n - 1) / (last - first completion time)``, the rate once
  every worker is running (startup excluded);
* ``end_to_end_evals_per_min``: ``n / wall time`` of the whole call;
* ``first_trial_latency_s``: call start to the first completed trial (worker spawn,
  imports, building the evaluator; for Ray also its trial actor);
* ``ray_start_s``: ``ray.init`` on this machine;
* ``speedup_2v1``: steady rate with 2 workers / with 1 (target >= 1.7 on 2 free cores).

Run: ``.venv/bin/python benchmarks/scale.py [--trials 24] [--steps 60]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

SPEC: dict[str, Any] = {
    "name": "scale",
    "model": {"name": "digits_cnn"},
    "base": {"steps": 100},
    "data": {"name": "digits"},
    "space": {"name": "joint", "choices": {"w_bits": [2, 4, 8], "keep": [0.5, 1.0]}},
    "evaluator": {"device": "cpu", "finetune": {"steps": 60}},
    "strategies": ["random"],
    "trials": 24,
}


def _rates(trials: list[Any], start: float, wall: float) -> dict[str, float]:
    done = sorted(t.datetime_complete.timestamp() for t in trials if t.datetime_complete is not None)
    steady = (len(done) - 1) / (done[-1] - done[0]) * 60 if len(done) > 1 and done[-1] > done[0] else float("nan")
    return {"evaluations": len(done), "steady_evals_per_min": round(steady, 1),
            "end_to_end_evals_per_min": round(len(done) / wall * 60, 1),
            "first_trial_latency_s": round(done[0] - start, 2), "wall_s": round(wall, 2)}


def _run(backend: str, workers: int, base: Path, root: Path, storage: str | None, n: int, tag: str) -> dict[str, float]:
    from compsearch.studies.hosts.ray import RayHost
    from compsearch.studies.hosts.workers import WorkerHost
    from compsearch.studies.results import load_studies
    from compsearch.studies.run import prepare
    from compsearch.studies.storage import default_journal_storage

    out = root / f"{backend}-{workers}"
    shutil.copytree(base, out / "base")
    ctx = prepare(SPEC, out, storage=storage or default_journal_storage(out))
    jobs = [("random", int(tag))]
    start = time.time()
    if backend == "ray":
        RayHost(workers).run(ctx, jobs, quiet=True)
    else:
        WorkerHost(workers, threads=1).run(ctx, jobs, quiet=True)
    wall = time.time() - start
    return _rates(load_studies(ctx.storage)[("random", int(tag))], start, wall)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--root", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    json_out = os.dup(1)  # Ray may print to stdout: send fd 1 to stderr, keep the real stdout for the JSON
    os.dup2(2, 1)
    SPEC["evaluator"]["finetune"]["steps"] = args.steps
    SPEC["trials"] = args.trials

    import tempfile

    from compsearch.studies.hosts.ray import init_ray
    from compsearch.studies.pgserver import find_postgres_bin, temporary_postgres
    from compsearch.studies.run import prepare

    root = Path(args.root or tempfile.mkdtemp(prefix="compsearch-scale-"))
    prepare(SPEC, root / "seed-run")  # trains and caches the base model once
    base = root / "seed-run" / "base"
    result: dict[str, Any] = {"trials": args.trials, "finetune_steps": args.steps, "backends": {}}
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(temporary_postgres()) if find_postgres_bin() else None
        for backend, storage in (("optuna-journal", None), ("optuna-postgresql", pg)):
            if backend == "optuna-postgresql" and pg is None:
                result["backends"][backend] = {"skipped": "no PostgreSQL binaries"}
                continue
            runs = {w: _run(backend, w, base, root, storage, args.trials, str(w)) for w in (1, 2)}
            result["backends"][backend] = _summary(runs)
        import ray

        start = time.time()
        init_ray(num_cpus=2)
        ray_start = time.time() - start
        try:
            runs = {w: _run("ray", w, base, root, None, args.trials, str(w)) for w in (1, 2)}
        finally:
            ray.shutdown()
        result["backends"]["ray"] = {**_summary(runs), "ray_start_s": round(ray_start, 2)}
    sys.stdout.flush()
    os.write(json_out, (json.dumps(result, indent=2) + "\n").encode())


def _summary(runs: dict[int, dict[str, float]]) -> dict[str, Any]:
    one, two = runs[1]["steady_evals_per_min"], runs[2]["steady_evals_per_min"]
    return {"workers_1": runs[1], "workers_2": runs[2], "speedup_2v1": round(two / one, 2) if one else None}


if __name__ == "__main__":
    main()
