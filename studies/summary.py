"""The numbers of a comparison report, computed from a run folder.

For every strategy (over its seeds), on the first ``trials`` counted trials of each
study (budget rule in :mod:`compsearch.studies.results`):

* **hypervolume after 25/50/100 % of the budget**: the normalised hypervolume
  (:mod:`compsearch.studies.hypervolume`, reference point of ``run.json``, fixed before
  the run) of the feasible trials among the first ``ceil(f * trials)`` counted ones;
  mean, sample standard deviation, min and max over seeds.
* **evaluations to 90 %**: the first number of counted trials whose hypervolume reaches
  ``0.9 x`` the best final hypervolume of any strategy and seed; mean over the seeds
  that reach it, and how many did.
* **best under each constraint**: for a ``max_<metric>`` / ``min_<metric>`` constraint
  alone, the best validation quality (``accuracy``, or ``return`` of an agent study) of
  the COMPLETE trials that satisfy it (for a constraint on the quality itself: the best
  value of the first other objective); plus ``all constraints``: the trials satisfying
  every constraint.
* **Pareto points**: the non-dominated feasible trials of the strategy (all seeds
  pooled, one per policy), each re-evaluated once with ``evaluate(policy, test=True)``
  under its study seed -- the only use of the test split -- and cached in
  ``test_eval.json`` so a second report does not redo it. Its value is ``test_<quality>``
  of the row. A trial that already holds its ``test_<quality>`` (the gates method's points,
  whose channels come from their own gates, not from the spec's criterion: see
  :mod:`compsearch.studies.gates`) is reported with it, not re-evaluated.

Besides the spec's strategies, the report covers the **methods** run.json lists under
``methods`` (``compsearch gates`` adds ``gates``): their studies ``<method>-s<seed>`` are
summarised the same way, on the same budget.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.metrics import Constraint
from compsearch.record import canonical_digest, read_canonical, read_policy
from compsearch.studies.hypervolume import hypervolume_curve, pareto_indices
from compsearch.studies.results import (
    counted_trials,
    load_studies,
    state_counts,
    trial_metrics,
    trial_point,
)
from compsearch.studies.spec import StudySpec, load_spec
from compsearch.studies.storage import open_storage, url_from_record

TEST_CACHE = "test_eval.json"
FRACTIONS = (0.25, 0.5, 1.0)
TARGET_FRACTION = 0.9


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """``mean``, ``std`` (sample, 0 for one value), ``min``, ``max``, ``n`` of the non-None
    values, and ``ci``: the half-width of the two-sided 95 % Student-t interval of the mean,
    ``t(0.975, n - 1) x std / sqrt(n)`` (None for fewer than 2 values: one seed has no interval)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "ci": None}
    arr = np.asarray(vals)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "min": float(arr.min()), "max": float(arr.max()), "n": len(vals),
            "ci": t_halfwidth(std, len(vals))}


CI_LEVEL = 0.95
CI_METHOD = "95% Student-t interval of the mean over seeds"


def t_halfwidth(std: float, n: int, level: float = CI_LEVEL) -> float | None:
    """``t((1 + level) / 2, n - 1) * std / sqrt(n)``; None for ``n < 2``."""
    if n < 2:
        return None
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


def stored_constraints(constraints: Mapping[str, float]) -> tuple[Constraint, ...]:
    """The constraints of a stored spec, read without the metrics registry (a plugin's
    metric need not be registered to read a finished run): ``max_<m>`` / ``min_<m>``."""
    out = []
    for key, bound in constraints.items():
        kind, _, metric = key.partition("_")
        out.append(Constraint(key=key, metric=metric, bound=float(bound), upper=kind == "max"))
    return tuple(out)


def canonical_key(trial: FrozenTrial) -> str:
    """The trial's canonical policy digest (``record.read_canonical``); a trial recorded
    without one gets the digest of its stored policy's canonical form without the unit
    shapes (rules 1-5 of :mod:`compsearch.spaces.policy`)."""
    digest = read_canonical(trial)
    if digest is not None:
        return digest
    from compsearch.spaces import Policy

    policy = read_policy(trial)
    return canonical_digest(Policy.from_dict(policy).canonical() if policy else Policy())


def read_run(out_dir: str | Path) -> tuple[dict[str, Any], StudySpec]:
    """``run.json`` and its spec; a folder without one raises ``ConfigError``."""
    path = Path(out_dir) / "run.json"
    if not path.is_file() or "spec" not in json.loads(path.read_text()):
        raise ConfigError(f"{str(out_dir)!r} is not a run folder (no run.json); run `compsearch run SPEC --out DIR` first")
    run = json.loads(path.read_text())
    return run, load_spec(run["spec"], stored=True)  # no plugin import, no registry: a reader


def run_storage(run: dict[str, Any], out_dir: str | Path, storage: str | None = None) -> str:
    """The storage URL of a run folder: ``storage`` (the command line's), else run.json's reference."""
    return storage or url_from_record(str(run["storage"]), out_dir)


def budget_index(fraction: float, budget: int) -> int:
    """Number of evaluations at ``fraction`` of ``budget``: ``max(1, ceil(fraction * budget))``."""
    return max(1, math.ceil(fraction * budget - 1e-9))


def _curve_at(curve: list[float], k: int) -> float | None:
    return curve[k - 1] if len(curve) >= k else None


def first_reaching(curve: Sequence[float], target: float) -> int | None:
    """1-based number of evaluations after which ``curve`` first reaches ``target`` (> 0), or None."""
    return next((i + 1 for i, v in enumerate(curve) if target > 0 and v >= target - 1e-12), None)


def _best_under(trials: list[FrozenTrial], spec: StudySpec) -> dict[str, tuple[str, float | None]]:
    """Constraint label -> (metric reported, best value) over COMPLETE trials satisfying it."""
    metrics = [trial_metrics(t) for t in trials if t.state == TrialState.COMPLETE]
    quality = spec.quality
    others = [m for m, _ in spec.objective_pairs if m != quality]
    directions = dict(spec.objective_pairs)
    out: dict[str, tuple[str, float | None]] = {}
    rules = [(c.label, [c]) for c in stored_constraints(spec.constraints)]
    if len(rules) > 1:
        rules.append(("all constraints", [r[0] for _, r in rules]))
    for label, conds in rules:
        target = quality if all(c.metric != quality for c in conds) or not others else others[0]
        ok = [m[target] for m in metrics if target in m and all(c.satisfied(m) for c in conds)]
        best = (max(ok) if directions.get(target, "maximize") == "maximize" else min(ok)) if ok else None
        out[label] = (target, best)
    return out


def _seed_record(trials: list[FrozenTrial], run: dict[str, Any], budget: int) -> dict[str, Any]:
    counted = counted_trials(trials, budget)
    directions = [d for _, d in run["objectives"]]
    reference = [run["reference_point"][m] for m, _ in run["objectives"]]
    curve = hypervolume_curve([trial_point(t) for t in counted], directions, reference, run["scales"])
    return {"counted": len(counted), "curve": curve, "states": state_counts(counted), "trials": counted}


def _pareto_rows(records: dict[int, dict[str, Any]], spec: StudySpec) -> list[dict[str, Any]]:
    """Non-dominated feasible trials of one strategy (seeds pooled), one row per policy."""
    pool = [(seed, t) for seed, rec in records.items() for t in rec["trials"] if trial_point(t) is not None]
    if not pool:
        return []
    directions = [d for _, d in spec.objective_pairs]
    idx = pareto_indices([trial_point(t) for _, t in pool], directions)
    rows, seen = [], set()
    keys: list[str] = []
    merged: dict[str, list[list[int]]] = {}
    for seed, t in sorted((pool[i] for i in idx), key=lambda st: list(st[1].values)):
        policy = read_policy(t)
        key = canonical_key(t)
        if key in seen:  # an equivalent policy (its own seed's evaluation, or a reused one): one row
            merged.setdefault(key, []).append([seed, t.number])
            continue
        seen.add(key)
        keys.append(key)
        rows.append({"seed": seed, "trial": t.number, "policy": policy, "metrics": trial_metrics(t),
                     "values": list(t.values), f"test_{spec.quality}": None})
    for row, key in zip(rows, keys, strict=True):
        row["equivalent"] = merged.get(key, [])  # [seed, trial] of the merged equivalent points
    return rows


def summarize(out_dir: str | Path, *, storage: str | None = None) -> dict[str, Any]:
    """Every number of the report except test accuracies (see :func:`add_test_accuracy`).

    Args:
        out_dir: the run folder.
        storage: the storage URL when run.json keeps it without its password (else
            ``COMPSEARCH_STORAGE``).
    """
    run, spec = read_run(out_dir)
    studies = load_studies(open_storage(run_storage(run, out_dir, storage), out_dir=out_dir))
    budget = spec.trials
    names = [*spec.strategies, *(m for m in run.get("methods", []) if m not in spec.strategies)]
    per: dict[str, dict[int, dict[str, Any]]] = {
        s: {seed: _seed_record(studies.get((s, seed), []), run, budget) for seed in spec.seeds} for s in names
    }
    finals = [rec["curve"][-1] for recs in per.values() for rec in recs.values() if rec["curve"]]
    target = TARGET_FRACTION * max(finals, default=0.0)
    strategies = {s: _strategy_summary(recs, spec, budget, target) for s, recs in per.items()}
    baseline_path = Path(out_dir) / "baseline.json"
    return {
        "name": spec.name, "description": spec.description, "budget": budget, "seeds": spec.seeds, "quality": spec.quality,
        "objectives": run["objectives"], "reference_point": run["reference_point"], "scales": run["scales"],
        "constraints": spec.constraints, "hv_target": target, "target_fraction": TARGET_FRACTION,
        "baseline": json.loads(baseline_path.read_text()) if baseline_path.is_file() else {},
        "base": run.get("base", {}), "budget_rule": run.get("budget_rule"), "versions": run.get("versions", {}),
        "strategies": strategies, "units": run.get("units", []), "plugins": run.get("spec", {}).get("plugins", []),
        "ci_method": CI_METHOD,
    }


def _strategy_summary(recs: dict[int, dict[str, Any]], spec: StudySpec, budget: int, target: float) -> dict[str, Any]:
    hv = {f"{int(f * 100)}%": spread([_curve_at(r["curve"], budget_index(f, budget)) for r in recs.values()]) for f in FRACTIONS}
    reach = [first_reaching(r["curve"], target) for r in recs.values()]
    best: dict[str, dict[str, Any]] = {}
    for seed_best in (_best_under(r["trials"], spec) for r in recs.values()):
        for label, (metric, value) in seed_best.items():
            best.setdefault(label, {"metric": metric, "values": []})["values"].append(value)
    states = {k: sum(r["states"][k] for r in recs.values()) for k in ("complete", "feasible", "pruned", "failed", "reused")}
    return {
        "hypervolume": hv,
        "evals_to_target": {**spread(reach), "reached": sum(v is not None for v in reach), "seeds": len(reach)},
        "best_under_constraints": {k: {**v, **spread(v["values"])} for k, v in best.items()},
        "curves": {str(seed): r["curve"] for seed, r in recs.items()},
        "counted": {str(seed): r["counted"] for seed, r in recs.items()},
        "states": states,
        "points": [trial_point(t) for r in recs.values() for t in r["trials"] if trial_point(t) is not None],
        "pareto": _pareto_rows(recs, spec),
    }


def _cache_key(policy: Any, seed: int) -> str:
    return f"{json.dumps(policy, sort_keys=True)}|s{seed}"


def add_test_accuracy(summary: dict[str, Any], out_dir: str | Path, *, compute: bool = True,
                      storage: str | None = None, prepared: Any = None) -> int:
    """Fill ``test_<quality>`` (``test_accuracy``, ``test_return``) of every Pareto row and of
    the baseline from ``test_eval.json``; with ``compute``, evaluate the missing ones
    (``evaluate(policy, test=True)`` under the row's seed) and cache them. A row whose trial
    already holds the value (gates points) keeps it. Returns the number of new evaluations."""
    key = f"test_{summary.get('quality', 'accuracy')}"
    path = Path(out_dir) / TEST_CACHE
    cache: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    rows = [(row["policy"], row["seed"], row) for s in summary["strategies"].values() for row in s["pareto"]
            if row.get("metrics", {}).get(key) is None]
    for s in summary["strategies"].values():
        for row in s["pareto"]:
            row[key] = row.get("metrics", {}).get(key)
    rows += [({}, int(seed), m) for seed, m in summary["baseline"].items() if isinstance(m, dict)]
    missing = [(p, seed) for p, seed, _ in rows if _cache_key(p, seed) not in cache]
    if missing and compute:
        _evaluate_on_test(missing, cache, out_dir, storage, prepared)
        path.write_text(json.dumps(cache, indent=2))
    for policy, seed, row in rows:
        row[key] = cache.get(_cache_key(policy, seed), {}).get(key)
    return len(missing) if compute else 0


def _evaluate_on_test(missing: list[tuple[Any, int]], cache: dict[str, Any], out_dir: str | Path,
                      storage: str | None, prepared: Any = None) -> None:
    """Evaluate ``missing`` on the test split with ``prepared`` (the running Run), else by
    preparing the run folder again: that builds the model, importing the run's plugins, and
    says so (a warning on stderr)."""
    from compsearch.spaces import Policy
    from compsearch.studies.run import prepare

    run, spec = read_run(out_dir)
    if prepared is None:
        logging.getLogger(__name__).warning(
            "evaluating %d point(s) on the test split that the run did not: building the model%s",
            len(missing), f" (importing plugins {spec.plugins})" if spec.plugins else "")
    ctx = prepared if prepared is not None else prepare(spec, out_dir, storage=run_storage(run, out_dir, storage))
    for policy, seed in missing:
        try:
            result = ctx.evaluator(seed).evaluate(Policy.from_dict(policy) if policy else Policy(), test=True)
        except FineTuneDiverged as e:
            cache[_cache_key(policy, seed)] = {f"test_{spec.quality}": None, "fail_reason": f"diverged: {e}"}
            continue
        tests = result.test_values or {}
        cache[_cache_key(policy, seed)] = {f"test_{result.quality}": tests.get(result.quality), f"val_{result.quality}": result.score}


def evaluate_final_points(run: Any) -> int:
    """At the end of ``compsearch run``: evaluate the Pareto points of every strategy and the
    baseline on the test split with the running ``run``'s evaluators and cache them in
    ``test_eval.json``, so ``compsearch report`` and ``show`` only read (no model, no
    plugin). Returns the number of new evaluations."""
    summary = summarize(run.out_dir, storage=run.storage_url)
    return add_test_accuracy(summary, run.out_dir, compute=True, storage=run.storage_url, prepared=run)


__all__ = ["CI_METHOD", "add_test_accuracy", "budget_index", "canonical_key", "evaluate_final_points", "read_run",
           "run_storage", "spread", "stored_constraints", "summarize", "t_halfwidth"]
