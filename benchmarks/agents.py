"""Agent compression benchmark: strategies vs the gates method vs pruning criteria; prints JSON.

For each agent study (``studies/cartpole_dqn.toml``, ``studies/lunarlander_ppo.toml``), in one
run folder per study under ``--out`` (resumable: re-run the same command after a kill):

1. **Fronts at equal budgets.** ``hirl``, ``bo``, ``nsga2`` and ``random`` through the studies
   runner (:func:`~compsearch.studies.runner.run_study`, ``--trials`` full evaluations per
   strategy and seed, ``--seeds`` seeds), and the gates method
   (:func:`~compsearch.studies.gates.run_gates`, ``--trials`` penalty strengths per seed: one
   point per strength). The report (:func:`~compsearch.studies.report.build_report`) gives
   each method's normalised hypervolume (mean, std over seeds) and its Pareto points (seeds
   pooled) with their test return.
2. **Smallest size at <= 1 % return loss**, per method and seed: among the COMPLETE trials whose
   validation return is at least ``R0 - 0.01 |R0|`` (``R0`` = the uncompressed agent's
   validation return), the smallest ``size_kb``; reported with its compression ratio
   (uncompressed size / size) and its test return (measured once, cached in
   ``bench_test.json``; a gates point carries its own). Target: >= 8x.
3. **Criteria at fixed keep ratios**: every searched unit keeps ``keep`` of its output
   channels (channel structure, 32-bit weights), chosen by ``lrp``, ``l1`` or ``gates``
   (gates trained alone on the task's loss batches), then the same distillation budget as a
   candidate; validation and test return per seed (cached in ``criteria.json``).

The steps run a seed at a time (seed 0's studies, gates points, steps 2 and 3; then seed 1,
...), and ``--results`` (default ``benchmarks/results/agents.json``) is rewritten after every
step from the seeds finished so far (``seeds_done``; ``"partial": true`` until every study
is complete), so a run stopped early still leaves a consistent table. A test return below
the floor is reported beside the validation-selected point (``test_within_tolerance``):
selection uses the validation episodes only. Timings depend on the machine's load; the
command and the machine's load are recorded.

Run: ``nice -n 10 .venv/bin/python benchmarks/agents.py [--studies cartpole_dqn,lunarlander_ppo]
[--trials 30] [--seeds 3] [--out runs/bench_agents] > bench.log 2>&1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "agents.json"
STRATEGIES = ("hirl", "bo", "nsga2", "random")
CRITERIA = ("lrp", "l1", "gates")
KEEPS = (0.5, 0.25, 0.125)
TOLERANCE = 0.01


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cache(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def spec_path(study: str) -> Path:
    """A bundled study's name (``cartpole_dqn``) or the path of a spec file (``*.toml``)."""
    return Path(study) if study.endswith(".toml") else ROOT / "studies" / f"{study}.toml"


def study_spec(study: str, strategies: Sequence[str], trials: int, seeds: Sequence[int]) -> Any:
    from compsearch.studies.runner import effective_spec
    from compsearch.studies.spec import load_spec

    return effective_spec(load_spec(spec_path(study)), strategies=list(strategies), trials=trials, seeds=list(seeds))


def run_methods(spec: Any, out: Path) -> Any:
    """Step 1: the strategies' studies and the gates method's points (both resume)."""
    from compsearch.studies.gates import run_gates
    from compsearch.studies.runner import run_study

    start = time.perf_counter()
    run_study(spec, out, quiet=True)
    log(f"{spec.name}: strategies done ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    run = run_gates(spec, out, quiet=True)
    log(f"{spec.name}: gates done ({time.perf_counter() - start:.0f} s)")
    return run


def fronts(summary: dict[str, Any]) -> dict[str, Any]:
    """Per method: final hypervolume over seeds and the Pareto points (seeds pooled)."""
    out = {}
    for method, s in summary["strategies"].items():
        points = [{"seed": r["seed"], "trial": r["trial"], "return": r["metrics"].get("return"),
                   "size_kb": r["metrics"].get("size_kb"), "compression_ratio": r["metrics"].get("compression_ratio"),
                   "test_return": r.get("test_return")} for r in s["pareto"]]
        out[method] = {"hypervolume": s["hypervolume"]["100%"], "states": s["states"],
                       "pareto": sorted(points, key=lambda p: p["size_kb"])}
    return out


def _complete(run: Any, method: str, seed: int) -> list[optuna.trial.FrozenTrial]:
    from compsearch.studies.results import counted_trials

    try:
        study = optuna.load_study(study_name=f"{method}-s{seed}", storage=run.storage)
    except KeyError:
        return []
    return [t for t in counted_trials(study.get_trials(deepcopy=False), run.spec.trials)
            if t.state == optuna.trial.TrialState.COMPLETE]


def smallest_at_tolerance(run: Any, methods: Sequence[str], seeds: Sequence[int], out: Path) -> dict[str, Any]:
    """Step 2 (see the module docstring)."""
    from compsearch import record
    from compsearch.spaces import Policy

    base_return = float(run.base_info["val_return"])
    floor = base_return - TOLERANCE * abs(base_return)
    base_size = run.evaluator(run.spec.seeds[0]).cost(Policy())["size_kb"]
    cache_path = out / "bench_test.json"
    cache = _cache(cache_path)
    result: dict[str, Any] = {"uncompressed_return": base_return, "return_floor": floor, "uncompressed_size_kb": base_size}
    for method in methods:
        per_seed: list[dict[str, Any]] = []
        for seed in seeds:
            ok = [t for t in _complete(run, method, seed) if record.read_metrics(t).get("return", -float("inf")) >= floor]
            if not ok:
                per_seed.append({"seed": seed, "size_kb": None, "ratio": None})
                continue
            best = min(ok, key=lambda t: (record.read_metrics(t)["size_kb"], -record.read_metrics(t)["return"]))
            metrics = record.read_metrics(best)
            test = metrics.get("test_return")
            key = f"{method}-s{seed}#{best.number}"
            if test is None:
                if key not in cache:
                    policy = record.read_policy(best)
                    res = run.evaluator(seed).evaluate(Policy.from_dict(policy) if policy else Policy(), test=True)
                    cache[key] = (res.test_values or {}).get("return")
                    _save(cache_path, cache)
                test = cache[key]
            per_seed.append({"seed": seed, "trial": best.number, "size_kb": metrics["size_kb"], "return": metrics["return"],
                             "test_return": test, "test_within_tolerance": test is not None and test >= floor,
                             "ratio": base_size / metrics["size_kb"], "policy": record.read_policy(best)})
        ratios = [p["ratio"] for p in per_seed if p["ratio"] is not None]
        result[method] = {"per_seed": per_seed, "ratio_min": min(ratios) if len(ratios) == len(per_seed) else None,
                          "ratio_mean": sum(ratios) / len(ratios) if ratios else None, "seeds_reaching": len(ratios)}
    return result


def criteria_at_keeps(run: Any, criteria: Sequence[str], keeps: Sequence[float], seeds: Sequence[int],
                      out: Path) -> dict[str, Any]:
    """Step 3 (see the module docstring)."""
    import compsearch.evaluators.gates  # noqa: F401 - registers the `gates` criterion
    import compsearch.evaluators.lrp  # noqa: F401 - registers the `lrp` criterion
    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.spaces import Policy, UnitPolicy
    from compsearch.studies.gates import searched_units

    cache_path = out / "criteria.json"
    cache = _cache(cache_path)
    for seed in seeds:
        base = run.evaluator(seed)
        units = [u.name for u in searched_units(run, seed)]
        for criterion in criteria:
            config = dataclasses.replace(run.spec.evaluator.config(seed=seed), criterion=criterion)
            ev = None
            for keep in keeps:
                key = f"{criterion}|{keep}|s{seed}"
                if key in cache:
                    continue
                if ev is None:
                    ev = CompressionEvaluator(run.model, base.task, config=config, units=base.units, device=base.device)
                policy = Policy({n: UnitPolicy(keep=keep, structure="channel") for n in units})
                start = time.perf_counter()
                res = ev.evaluate(policy, test=True)
                cache[key] = {"criterion": criterion, "keep": keep, "seed": seed, "return": res["return"],
                              "test_return": (res.test_values or {}).get("return"), "size_kb": res.size_bits / 8192,
                              "compression_ratio": res.compression_ratio, "seconds": time.perf_counter() - start}
                _save(cache_path, cache)
                log(f"{run.spec.name}: {criterion} keep {keep} seed {seed}: return {res['return']:.1f}")
    table: dict[str, Any] = {}
    for entry in (e for e in cache.values() if e["seed"] in seeds):
        cell = table.setdefault(entry["criterion"], {}).setdefault(str(entry["keep"]), {"return": [], "test_return": []})
        cell["return"].append(entry["return"])
        cell["test_return"].append(entry["test_return"])
    for by_keep in table.values():
        for cell in by_keep.values():
            cell["mean_return"] = sum(cell["return"]) / len(cell["return"])
            tests = [t for t in cell["test_return"] if t is not None]
            cell["mean_test_return"] = sum(tests) / len(tests) if tests else None
    return table


def bench_study(study: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Every step for one study, a seed at a time: ``results[name]`` is rewritten (and the JSON
    written, ``"partial": true``) after each seed, from every seed finished so far."""
    from compsearch.studies.report import build_report

    name = spec_path(study).stem
    out = Path(args.out) / name
    seeds = list(range(args.seeds))
    entry = results.setdefault(name, {})
    entry.update({"run_folder": str(out), "trials": args.trials, "seeds": seeds, "status": "running"})
    timings = entry.setdefault("seconds", {})
    for i, seed in enumerate(seeds):
        start = time.perf_counter()
        run = run_methods(study_spec(study, args.strategies, args.trials, [seed]), out)
        done = seeds[: i + 1]
        entry["seeds_done"] = done
        entry["agent"] = {k: v for k, v in run.base_info.items() if k != "path"}
        entry["reference_point"] = dict(run.reference_point)
        summary = build_report(out)
        entry["fronts"] = fronts(summary)
        entry["baseline"] = summary["baseline"]
        _write(results, Path(args.results), partial=True)
        entry["smallest_at_1pct_loss"] = smallest_at_tolerance(run, [*args.strategies, "gates"], done, out)
        _write(results, Path(args.results), partial=True)
        entry["criteria"] = criteria_at_keeps(run, args.criteria, args.keeps, done, out)
        timings.setdefault(f"s{seed}", time.perf_counter() - start)
        _write(results, Path(args.results), partial=True)
        log(f"{name}: seed {seed} done")
    entry["status"] = "complete"


def _write(results: dict[str, Any], path: Path, *, partial: bool) -> None:
    payload = {"partial": partial, "command": " ".join(sys.argv), "machine": {"platform": platform.platform(),
               "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}, "tolerance": TOLERANCE, "studies": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(path, payload)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    """The README tables of a results JSON: per study, each method's hypervolume and smallest
    size at <= 1 % return loss (per seed), then the criteria's returns at each keep ratio."""
    lines: list[str] = []
    for name, entry in payload.get("studies", {}).items():
        small = entry.get("smallest_at_1pct_loss", {})
        done = entry.get("seeds_done", [])
        state = "complete" if entry.get("status") == "complete" else f"partial: seeds {done} of {entry.get('seeds')}"
        lines += [f"**{name}** ({entry.get('trials')} evaluations per method and seed; {state}; uncompressed: "
                  f"{_fmt(small.get('uncompressed_size_kb'), 2)} KiB, validation return "
                  f"{_fmt(small.get('uncompressed_return'))}, floor {_fmt(small.get('return_floor'))})", "",
                  "| method | HV @100% (mean +- std) | smallest KiB at <= 1% loss, per seed (x smaller) | its test return |",
                  "|---|---|---|---|"]
        for method, front in entry.get("fronts", {}).items():
            hv = front["hypervolume"]
            per_seed = small.get(method, {}).get("per_seed", [])
            sizes = ", ".join("-" if p["size_kb"] is None else f"{p['size_kb']:.2f} ({p['ratio']:.1f}x)" for p in per_seed)
            tests = ", ".join(_fmt(p.get("test_return")) for p in per_seed if p["size_kb"] is not None)
            lines.append(f"| {method} | {_fmt(hv['mean'], 3)} +- {_fmt(hv['std'], 3)} | {sizes or '-'} | {tests or '-'} |")
        criteria = entry.get("criteria", {})
        keeps = sorted({k for c in criteria.values() for k in c}, key=float, reverse=True)
        if criteria:
            lines += ["", "| criterion | " + " | ".join(f"keep {k}: return (test)" for k in keeps) + " |",
                      "|---|" + "---|" * len(keeps)]
            for criterion, by_keep in criteria.items():
                cells = [f"{_fmt(by_keep[k]['mean_return'])} ({_fmt(by_keep[k]['mean_test_return'])})" if k in by_keep else "-"
                         for k in keeps]
                lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default="cartpole_dqn,lunarlander_ppo",
                        help="comma-separated bundled study names or spec files (*.toml)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--keeps", default=",".join(map(str, KEEPS)))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_agents"))
    parser.add_argument("--results", default=str(RESULTS), help="the JSON file written after every step")
    parser.add_argument("--markdown", action="store_true", help="only print the tables of --results as Markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(_cache(Path(args.results))))
        return 0
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.criteria = [c for c in args.criteria.split(",") if c]
    args.keeps = [float(k) for k in args.keeps.split(",") if k]
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, Any] = _cache(Path(args.results)).get("studies", {})
    studies = [s for s in args.studies.split(",") if s]
    for study in studies:
        log(f"{study}: start")
        bench_study(study, args, results)
        _write(results, Path(args.results), partial=True)
    done = all(results.get(spec_path(s).stem, {}).get("status") == "complete" for s in studies)
    _write(results, Path(args.results), partial=not done)
    print(json.dumps(_cache(Path(args.results)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
