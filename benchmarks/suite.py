"""The benchmark suite: every strategy on several problems at equal budgets, with statistics.

Problems are the specs in ``studies/suite/*.toml`` (digits CNN, a narrow timm resnet18 on 16 px
digits, a 4-block timm ViT on 16 px digits, a DQN agent's Q-network on CartPole). Each runs
through the studies runner (:func:`compsearch.studies.runner.run_study`) into
``<out>/<problem>/``, one call per ``(seed, strategy)`` in seed-major order, so an unfinished
run holds every strategy's first seeds, and rerunning the same command continues where it
stopped (finished studies are skipped by the runner). Progress and wall time go to stderr.

Per problem, from whatever the run folder holds (budget rule of
:mod:`compsearch.studies.results`; a seed counts at a checkpoint once it has that many counted
trials, so a partial run reports what finished and says which seeds are complete):

* normalised hypervolume (:mod:`compsearch.studies.hypervolume`, the reference point fixed in
  the spec before the run) after 25/50/100 % of the budget: mean and 95 % percentile-bootstrap
  CI over seeds (:func:`compsearch.studies.significance.bootstrap_ci`);
* hypervolume relative to the **best-known front**: the non-dominated union of every
  strategy's feasible points over all seeds of the problem (the empirical limit);
* ``hirl`` (or the RL strategy ``--candidate`` names) against the best non-RL strategy
  (highest mean final hypervolume among strategies that are neither ``hirl*`` nor
  ``amc``/``haq``): paired over the seeds both completed, the mean difference, its bootstrap CI
  and the Wilcoxon signed-rank test; and after how many evaluations its mean curve reaches the
  best non-RL mean final hypervolume (``hirl_targets`` then judges the candidate);
* ``hirl-full`` (the full hierarchy) minus each other ``hirl`` variant, paired the same way:
  each changes parts of it (``hirl`` three at once), so this says which part carries the result;
* an aggregate rank table: strategies ranked per problem by mean final hypervolume over the
  seeds that every ranked strategy completed (strategies without a complete seed are left
  out), mean rank over problems.

JSON goes to ``benchmarks/results/suite.json`` (``suite_quick.json`` with ``--quick``) and stdout.

Usage::

    .venv/bin/python benchmarks/suite.py --quick                 # 2 problems, 2 seeds, 20 evals
    nice -n 10 .venv/bin/python benchmarks/suite.py              # everything (hours to days on 2 cores)
    .venv/bin/python benchmarks/suite.py --problems digits_cnn --seeds 5 --trials 50
    .venv/bin/python benchmarks/suite.py --analyse-only          # statistics of what the folders hold
    .venv/bin/python benchmarks/suite.py --seed-list 3,4 --out runs/suite_b   # seeds 3 and 4 elsewhere
    .venv/bin/python benchmarks/suite.py --merge runs/suite_b --analyse-only  # bring them back, analyse
    .venv/bin/python benchmarks/suite.py --analyse-only --candidate hirl-front  # a variant judged in hirl's place
    .venv/bin/python benchmarks/suite.py --markdown benchmarks/results/suite.json   # the tables
    .venv/bin/python benchmarks/suite.py --markdown benchmarks/results/suite_pooled.json  # a --pool result
    .venv/bin/python benchmarks/suite.py --pool benchmarks/results/suite_every.json \
        benchmarks/results/suite_heldout_*.json --json benchmarks/results/suite_pooled.json  # seed sets together
    .venv/bin/python benchmarks/suite.py --pool A.json B.json --candidate hirl-sat \
        --pool-as C.json hirl     # C.json's hirl studies are the candidate's parts under another name
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUITE_DIR = ROOT / "studies" / "suite"
PROBLEMS = ("digits_cnn", "digits_resnet", "digits_vit", "cartpole")
# hirl and the non-RL strategies first: an unfinished seed then holds the main comparison.
STRATEGIES = ("hirl", "sls", "tpe", "nsga2", "bo", "gp", "random", "hirl-full",
              "hirl-mutations", "hirl-flat", "hirl-real", "hirl-nofisher", "hirl-curriculum", "hirl-front", "hirl-sweep", "haq", "amc")
#: the strategy the ablations (``hirl-*``, and ``hirl`` itself) each change parts of
ABLATION_BASE = "hirl-full"
QUICK_PROBLEMS = ("digits_cnn", "cartpole")
QUICK_STRATEGIES = ("hirl", "sls", "tpe", "random")
QUICK_SEEDS, QUICK_TRIALS = 2, 20
FRACTIONS = (0.25, 0.5, 1.0)
RESULTS = ROOT / "benchmarks" / "results"


def is_rl(strategy: str) -> bool:
    """``hirl`` and its ablations, ``amc`` and ``haq`` (the reinforcement-learning strategies)."""
    return strategy.startswith("hirl") or strategy in ("amc", "haq")


def _log(message: str) -> None:
    print(f"[suite {datetime.now(timezone.utc).strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- running -------------------------------------------------------------------------------


def run_problem(problem: str, out_dir: Path, *, strategies: Sequence[str], seeds: Sequence[int], trials: int,
                workers: int = 1) -> float:
    """Run (or continue) ``problem`` for every ``(seed, strategy)``, seed-major; returns wall seconds."""
    import torch

    from compsearch.studies.results import quiet_optuna
    from compsearch.studies.runner import run_study

    torch.set_num_threads(1)
    start = time.perf_counter()
    jobs = [(seed, s) for seed in seeds for s in strategies]
    for i, (seed, strategy) in enumerate(jobs, 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        with quiet_optuna():
            run_study(SUITE_DIR / f"{problem}.toml", out_dir, strategies=[strategy], seeds=[seed], trials=trials,
                      quiet=True, workers=workers, test=False)
        _log(f"{problem}: {i}/{len(jobs)} {strategy} seed {seed} done in {time.perf_counter() - t0:.1f} s wall, "
             f"{time.process_time() - cpu0:.1f} s CPU (problem wall {time.perf_counter() - start:.0f} s, "
             f"load {os.getloadavg()[0]:.1f})")
    return time.perf_counter() - start


# ---- statistics ------------------------------------------------------------------------------


def _interval(per_seed: Mapping[int, float]) -> dict[str, Any]:
    from compsearch.studies.significance import bootstrap_ci

    vals = [per_seed[s] for s in sorted(per_seed)]
    if not vals:
        return {"n": 0, "mean": None, "ci": None, "per_seed": {}}
    return {"n": len(vals), "mean": float(np.mean(vals)), "ci": list(bootstrap_ci(vals)),
            "per_seed": {str(s): per_seed[s] for s in sorted(per_seed)}}


def completion(counted: Mapping[int, int], budget: int) -> dict[str, Any]:
    """Which seeds are complete (``counted >= budget``), partial (``seed -> counted``) or missing."""
    return {"complete_seeds": sorted(s for s, c in counted.items() if c >= budget),
            "partial": {str(s): c for s, c in sorted(counted.items()) if 0 < c < budget},
            "missing_seeds": sorted(s for s, c in counted.items() if c == 0)}


def checkpoint_values(curves: Mapping[int, Sequence[float]], k: int) -> dict[int, float]:
    """``seed -> hypervolume after k evaluations`` for the seeds whose curve has ``k`` points."""
    return {s: float(c[k - 1]) for s, c in curves.items() if len(c) >= k}


def strategy_stats(curves: Mapping[int, Sequence[float]], budget: int, front_hv: float) -> dict[str, Any]:
    """Hypervolume at 25/50/100 % of ``budget`` and relative to the best-known front (final)."""
    from compsearch.studies.summary import budget_index

    hv = {f"{int(f * 100)}%": _interval(checkpoint_values(curves, budget_index(f, budget))) for f in FRACTIONS}
    final = checkpoint_values(curves, budget)
    relative = {s: v / front_hv for s, v in final.items()} if front_hv > 0 else {}
    return {"hv": hv, "relative_hv": _interval(relative)}


def mean_curve(curves: Mapping[int, Sequence[float]], budget: int) -> list[float] | None:
    """Mean over the complete seeds of the first ``budget`` hypervolumes; None without one."""
    full = [list(c[:budget]) for c in curves.values() if len(c) >= budget]
    return [float(v) for v in np.mean(full, axis=0)] if full else None


def hirl_vs_best(curves: Mapping[str, Mapping[int, Sequence[float]]], budget: int, hirl: str = "hirl") -> dict[str, Any]:
    """``hirl`` against the non-RL strategy with the highest mean final hypervolume (complete seeds)."""
    from compsearch.studies.significance import paired_comparison
    from compsearch.studies.summary import first_reaching

    finals = {s: checkpoint_values(c, budget) for s, c in curves.items()}
    means = {s: float(np.mean(list(v.values()))) for s, v in finals.items() if v and not is_rl(s)}
    if hirl not in curves or not finals.get(hirl) or not means:
        return {"best_non_rl": None, "reason": f"needs at least one complete seed of {hirl!r} and of a non-RL strategy"}
    best = max(means, key=lambda s: means[s])
    hirl_curve = mean_curve(curves[hirl], budget)
    reach = first_reaching(hirl_curve, means[best]) if hirl_curve else None
    return {"best_non_rl": best, "best_non_rl_final_mean": means[best], "hirl_final_mean": float(np.mean(list(finals[hirl].values()))),
            "hirl_evals_to_reach_best_non_rl": reach, "hirl_reaches_within_half_budget": reach is not None and reach <= budget / 2,
            "paired_final_hv": paired_comparison(finals[hirl], finals[best])}


def base_vs_ablations(curves: Mapping[str, Mapping[int, Sequence[float]]], budget: int,
                      base: str = ABLATION_BASE) -> dict[str, Any]:
    """``base`` minus each other ``hirl`` variant (``hirl`` and ``hirl-*``: each changes parts of
    it) on the final hypervolume, paired over the seeds both completed: which part carries the result."""
    from compsearch.studies.significance import paired_comparison

    if base not in curves:
        return {}
    mine = checkpoint_values(curves[base], budget)
    return {s: paired_comparison(mine, checkpoint_values(c, budget)) for s, c in curves.items()
            if s != base and (s == "hirl" or s.startswith("hirl-"))}


def analyse_problem(summary: Mapping[str, Any], *, strategies: Sequence[str] | None = None,
                    seeds: Sequence[int] | None = None, candidate: str = "hirl") -> dict[str, Any]:
    """Every statistic of one problem from :func:`compsearch.studies.summary.summarize`'s output.

    Args:
        summary: the run folder's summary (``budget``, ``objectives``, ``reference_point``,
            ``scales``, per strategy ``curves`` / ``counted`` / ``points``).
        strategies, seeds: restrict the report (default: all the run holds). The best-known
            front always pools every strategy and seed the run holds.
        candidate: the RL strategy compared with the best non-RL one (``hirl``, or a variant
            under test such as ``hirl-front``); the ablations are always :data:`ABLATION_BASE`'s.
    """
    from compsearch.studies.hypervolume import hypervolume
    from compsearch.studies.significance import best_known_front

    budget = int(summary["budget"])
    directions = [d for _, d in summary["objectives"]]
    reference = [summary["reference_point"][m] for m, _ in summary["objectives"]]
    front = best_known_front([s["points"] for s in summary["strategies"].values()], directions)
    front_hv = hypervolume(front, directions, reference, summary["scales"]) if len(front) else 0.0
    wanted = list(strategies or summary["strategies"])
    names = [s for s in wanted if s in summary["strategies"]]
    keep = {int(s) for s in seeds} if seeds is not None else None
    curves = {s: {int(seed): c for seed, c in summary["strategies"][s]["curves"].items() if keep is None or int(seed) in keep}
              for s in names}
    counted = {s: {int(seed): c for seed, c in summary["strategies"][s]["counted"].items() if keep is None or int(seed) in keep}
               for s in names}
    for s in names:  # requested seeds the run has not started count as missing
        counted[s].update({seed: 0 for seed in (keep or ()) if seed not in counted[s]})
    done = {s: completion(counted[s], budget) for s in names}
    finals = {s: checkpoint_values(curves[s], budget) for s in names}
    ranked = [s for s in names if finals[s]]
    common = sorted(set.intersection(*(set(finals[s]) for s in ranked))) if ranked else []
    return {
        "name": summary["name"], "budget": budget, "objectives": summary["objectives"],
        "reference_point": summary["reference_point"], "scales": summary["scales"],
        "complete": all(not d["partial"] and not d["missing_seeds"] for d in done.values()) and len(names) == len(wanted),
        "strategies_not_started": [s for s in wanted if s not in names],
        "completion": done,
        "best_known_front": {"points": front.tolist(), "hypervolume": front_hv},
        "strategies": {s: strategy_stats(curves[s], budget, front_hv) for s in names},
        "mean_curves": {s: mean_curve(curves[s], budget) for s in names},
        "candidate": candidate,
        "hirl_vs_best_non_rl": hirl_vs_best(curves, budget, hirl=candidate),
        "ablation_base": ABLATION_BASE,
        "ablations": base_vs_ablations(curves, budget),
        # Ranking score: mean final hypervolume over the seeds every ranked strategy completed
        # (seeds differ in difficulty as much as strategies do); strategies without a complete seed are unranked.
        "rank_seeds": common,
        "rank_scores": {s: float(np.mean([finals[s][k] for k in common])) for s in ranked} if common else {},
    }


def aggregate(problems: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Rank table over problems by each problem's ``rank_scores`` (mean final hypervolume over
    the seeds every ranked strategy completed)."""
    from compsearch.studies.significance import rank_table

    return rank_table({p: res["rank_scores"] for p, res in problems.items()})


def targets(problems: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """The problems where ``hirl``'s final mean is at or above the best non-RL strategy's, where
    the paired difference's bootstrap interval lies above 0, and where ``hirl``'s mean curve
    reaches the best non-RL final mean within half the budget."""
    versus = {p: r["hirl_vs_best_non_rl"] for p, r in problems.items() if r["hirl_vs_best_non_rl"].get("best_non_rl")}
    return {
        "compared": sorted(versus),
        "hirl_at_or_above_best_non_rl": sorted(p for p, v in versus.items() if v["hirl_final_mean"] >= v["best_non_rl_final_mean"]),
        "difference_ci_above_zero": sorted(p for p, v in versus.items() if v["paired_final_hv"]["ci_above_zero"]),
        "hirl_reaches_within_half_budget": sorted(p for p, v in versus.items() if v["hirl_reaches_within_half_budget"]),
    }


def analyse(out_root: Path, problems: Sequence[str], *, strategies: Sequence[str] | None,
            seeds: Sequence[int] | None, candidate: str = "hirl") -> dict[str, Any]:
    """Statistics of every problem folder under ``out_root`` that exists (missing ones listed)."""
    from compsearch.errors import ConfigError
    from compsearch.studies.results import quiet_optuna
    from compsearch.studies.summary import summarize

    out: dict[str, Any] = {}
    for p in problems:
        folder = out_root / p
        try:
            with quiet_optuna():
                summary = summarize(folder)
        except ConfigError:  # no run folder yet, or one still preparing (no spec in run.json)
            continue
        out[p] = {**analyse_problem(summary, strategies=strategies, seeds=seeds, candidate=candidate), "run": _rel(folder)}
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ---- command line -----------------------------------------------------------------------------


def _fmt(stat: Mapping[str, Any]) -> str:
    if not stat["n"]:
        return "-"
    low, high = stat["ci"]
    return f"{stat['mean']:.4f} [{low:.4f}, {high:.4f}] (n={stat['n']})"


def _ci_and_p(pair: Mapping[str, Any]) -> tuple[str, str]:
    """A paired comparison's bootstrap interval and Wilcoxon p as text ("-" when absent)."""
    ci = "-" if pair["ci"] is None else f"[{pair['ci'][0]:+.4f}, {pair['ci'][1]:+.4f}]"
    return ci, "-" if pair["wilcoxon"] is None else f"{pair['wilcoxon']['p_value']:.3f}"


def _ablation_row(name: str, pair: Mapping[str, Any]) -> str:
    ci, p_value = _ci_and_p(pair)
    return (f"| {name} | {pair['mean_difference']:+.4f} | {ci} | {p_value} | {pair['wins']}/{pair['losses']} | "
            f"{len(pair['seeds'])} |")


def pooled_markdown(doc: Mapping[str, Any]) -> str:
    """A :func:`pool_seed_sets` document as one table: per problem the candidate minus the best
    non-RL strategy (final HV, paired over the pooled seeds) and its mean after half the budget."""
    me = doc["candidate"]
    lines = [f"| problem | best non-RL | {me} minus it | 95% CI | Wilcoxon p | wins/losses | seeds | "
             f"{me} after half the budget / best non-RL final |", "|---|---|---|---|---|---|---|---|"]
    for name, res in doc["problems"].items():
        pair = res["paired_final_hv"]
        if not pair.get("seeds"):
            lines.append(f"| {name} | {res['best_non_rl']} | - | - | - | - | 0 | - |")
            continue
        ci, p_value = _ci_and_p(pair)
        half = res.get("candidate_half_budget_mean")
        reach = "-" if half is None else (f"{half:.4f} / {res['best_non_rl_final_mean']:.4f} "
                                          f"({'reached' if res['reaches_within_half_budget'] else 'not reached'})")
        lines.append(f"| {name} | {res['best_non_rl']} | {pair['mean_difference']:+.4f} | {ci} | {p_value} | "
                     f"{pair['wins']}/{pair['losses']} | {len(pair['seeds'])} | {reach} |")
    counts = ", ".join(f"{k.replace('_', ' ')} {doc[k]}" for k in ("at_or_above", "ci_above_zero", "reach_within_half_budget")
                       if k in doc)
    return "\n".join([*lines, "", f"of {doc['compared']} problems compared: {counts}"])


def markdown(doc: Mapping[str, Any]) -> str:
    """Per problem: one row per strategy (hypervolume at 25/50/100 % with bootstrap CIs and
    seed counts, relative to the best-known front) and the hirl-vs-best-non-RL line; then ranks.
    A pooled document (:func:`pool_seed_sets`) gets :func:`pooled_markdown`'s table."""
    from compsearch.studies.summary import budget_index

    if "compared" in doc and "ranks" not in doc:
        return pooled_markdown(doc)
    lines = []
    for name, res in doc["problems"].items():
        budget = res["budget"]
        at = [budget_index(f, budget) for f in FRACTIONS]
        lines += [f"**{name}** (budget {budget}; best-known front HV {res['best_known_front']['hypervolume']:.4f}"
                  f"{'' if res['complete'] else '; partial'})", "",
                  f"| strategy | HV @{at[0]} | HV @{at[1]} | HV @{at[2]} | HV / best-known | seeds complete |",
                  "|---|---|---|---|---|---|"]
        for s, st in res["strategies"].items():
            done = res["completion"][s]
            lines.append(f"| {s} | {_fmt(st['hv']['25%'])} | {_fmt(st['hv']['50%'])} | {_fmt(st['hv']['100%'])} | "
                         f"{_fmt(st['relative_hv'])} | {len(done['complete_seeds'])} |")
        if res.get("strategies_not_started"):
            lines += ["", f"no studies in the run folder (not started, or not run on this problem): {', '.join(res['strategies_not_started'])}"]
        v = res["hirl_vs_best_non_rl"]
        if v.get("best_non_rl"):
            pair = v["paired_final_hv"]
            ci, p_value = _ci_and_p(pair)
            reach = v["hirl_evals_to_reach_best_non_rl"]
            curve = f"reaches it after {reach} evaluations" if reach else "never reaches it"
            me = res.get("candidate", "hirl")
            lines += ["", f"{me} - {v['best_non_rl']} (final HV, seeds {pair['seeds']}): mean {pair['mean_difference']:+.4f}, "
                          f"95% CI {ci}, Wilcoxon p {p_value}, wins/losses {pair['wins']}/{pair['losses']}; "
                          f"{v['best_non_rl']}'s final mean {v['best_non_rl_final_mean']:.4f}: {me}'s mean curve {curve}"]
        ablations = {a: pair for a, pair in res.get("ablations", {}).items() if pair["seeds"]}
        if ablations:
            lines += ["", f"| {res['ablation_base']} minus | final HV difference | 95% CI | Wilcoxon p | wins/losses | seeds |", "|---|---|---|---|---|---|"]
            lines += [_ablation_row(a, pair) for a, pair in ablations.items()]
        lines.append("")
    ranks = doc["ranks"]
    if ranks["order"]:
        lines += ["| strategy | mean rank | problems |", "|---|---|---|"]
        lines += [f"| {s} | {ranks['mean_rank'][s]:.2f} | {ranks['problems'][s]} |" for s in ranks["order"]]
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 problems, 4 strategies, 2 seeds, 20 evaluations")
    p.add_argument("--problems", help=f"comma-separated, from {list(PROBLEMS)}")
    p.add_argument("--strategies", help="comma-separated registered strategy names")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, help="seeds 0..n-1 (default 5; 2 with --quick)")
    which.add_argument("--seed-list", metavar="A,B", help="these seeds only, e.g. 3,4 (to run some seeds in another "
                                                         "process or machine; bring them back with --merge)")
    p.add_argument("--trials", type=int, help="full evaluations per strategy and seed (default 50; 20 with --quick)")
    p.add_argument("--workers", type=int, default=1, help="worker processes per study (the runner's --workers)")
    p.add_argument("--out", type=Path, help="run folders root (default runs/suite, runs/suite_quick with --quick)")
    p.add_argument("--json", type=Path, help="output file (default benchmarks/results/suite[_quick].json)")
    p.add_argument("--candidate", default="hirl", help="the RL strategy compared with the best non-RL one and judged "
                   "against the targets (default hirl; e.g. a variant under test such as hirl-front)")
    p.add_argument("--analyse-only", action="store_true", help="no evaluation: statistics of what the folders hold")
    p.add_argument("--merge", type=Path, metavar="SRC_ROOT", help="first merge every study of SRC_ROOT/<problem> into "
                   "<out>/<problem> (compsearch merge; same spec and base model required), for each problem with one")
    p.add_argument("--markdown", type=Path, metavar="JSON", help="print the tables of a suite JSON as Markdown and exit")
    p.add_argument("--pool", type=Path, nargs="+", metavar="JSON", help="no evaluation: the candidate against the best "
                   "non-RL strategy of the first suite JSON, paired over the seeds of every JSON given (seed sets run "
                   "apart, e.g. fresh seeds); writes --json (default benchmarks/results/suite_pooled.json)")
    p.add_argument("--pool-as", nargs=2, action="append", default=[], metavar=("JSON", "STRATEGY"),
                   help="with --pool: one more suite JSON whose STRATEGY studies count as the candidate's (studies of "
                   "the same parts stored under another name); repeatable")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> tuple[list[str], list[str], list[int], int]:
    from compsearch.errors import ConfigError

    problems = args.problems.split(",") if args.problems else list(QUICK_PROBLEMS if args.quick else PROBLEMS)
    unknown = [p for p in problems if not (SUITE_DIR / f"{p}.toml").is_file()]
    if unknown:
        raise ConfigError(f"--problems: unknown problem(s) {unknown}; choose from {sorted(f.stem for f in SUITE_DIR.glob('*.toml'))}")
    strategies = args.strategies.split(",") if args.strategies else list(QUICK_STRATEGIES if args.quick else STRATEGIES)
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 5)
    trials = args.trials if args.trials is not None else (QUICK_TRIALS if args.quick else 50)
    for flag, value in (("--seeds", seeds), ("--trials", trials)):
        if value < 1:
            raise ConfigError(f"{flag}={value} must be at least 1")
    _check_candidate(args.candidate)
    chosen = _seed_list(args.seed_list) if args.seed_list is not None else list(range(seeds))
    return problems, strategies, chosen, trials


def _check_candidate(candidate: str, flag: str = "--candidate") -> None:
    """``--candidate`` (or ``flag``) must be an RL strategy: it is compared with the best non-RL one."""
    from compsearch.errors import ConfigError

    if not is_rl(candidate):
        raise ConfigError(f"{flag}={candidate!r} is not an RL strategy (hirl, a hirl-* variant, amc or haq); "
                          f"the comparison is against the best non-RL strategy")


def _seed_list(text: str) -> list[int]:
    """``"3,4"`` -> [3, 4]: distinct integers >= 0, in the order given."""
    from compsearch.errors import ConfigError
    from compsearch.studies.spec import MAX_SEED

    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or any(not 0 <= s <= MAX_SEED for s in seeds) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seed-list={text!r} must be distinct comma-separated integers from 0 to {MAX_SEED}, "
                          f"e.g. --seed-list 3,4")
    return seeds


def merge_sources(src_root: Path, out_root: Path, problems: Sequence[str]) -> None:
    """Merge ``src_root/<problem>`` into ``out_root/<problem>`` for each problem that has one there
    (:func:`compsearch.studies.merge.merge_run`), logging what was done."""
    from compsearch.studies.merge import merge_run

    for p in problems:
        if not (src_root / p).is_dir():
            _log(f"{p}: nothing to merge ({_rel(src_root / p)} does not exist)")
            continue
        result = merge_run(src_root / p, out_root / p)
        _log(f"{p}: merged {_rel(src_root / p)} into {_rel(out_root / p)}: " + "; ".join(result.lines()))


def _per_seed_hv(problem: Mapping[str, Any], strategy: str, checkpoint: str = "100%") -> dict[int, float]:
    """``seed -> hypervolume`` of ``strategy`` at ``checkpoint`` (``"100%"``: final) in a suite document's problem."""
    stats = problem.get("strategies", {}).get(strategy)
    per_seed = (stats or {}).get("hv", {}).get(checkpoint, {}).get("per_seed", {})
    return {int(k): float(v) for k, v in per_seed.items()}


def _suite_json(path: Path, flag: str = "--pool") -> dict[str, Any]:
    """A suite JSON (read for ``flag``), or a :class:`ConfigError` naming the flag, the file and the fix."""
    from compsearch.errors import ConfigError

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag}: cannot read {path} as JSON ({e}); give suite result files such as "
                          f"benchmarks/results/suite_every.json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("problems"), dict):
        raise ConfigError(f"{flag}: {path} has no 'problems' mapping: not a benchmarks/suite.py result")
    return doc


def pool_seed_sets(docs: Sequence[tuple[str, Mapping[str, Any]]], candidate: str = "hirl",
                   names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``candidate`` against the best non-RL strategy over the seeds of several suite documents
    (``(name, doc)`` pairs), per problem of the first: that one names the best non-RL strategy (its
    choice, made on its own seeds, is kept for the others). Each strategy's final hypervolumes are
    gathered per seed over all documents (so the candidate may come from one run and the
    baseline from another) and paired on the seeds both have. The documents must share each
    problem's reference point and budget, and a strategy's seed in two documents must hold the
    same value. ``reaches_within_half_budget``: the candidate's mean hypervolume at the 50 %
    checkpoint (``ceil(budget / 2)`` evaluations) over the paired seeds is at least the best
    non-RL strategy's final mean over the same seeds; hypervolume curves never fall, so for an
    even budget this is :func:`hirl_vs_best`'s test on the pooled mean curve. ``names`` maps a
    document's name to the name the candidate's studies have there (e.g. the same parts run
    under their registered name); the others use ``candidate``.

    Raises:
        ConfigError: a problem's reference point or budget differs between documents, or a seed
            repeats with other values.
    """
    from compsearch.errors import ConfigError
    from compsearch.studies.significance import paired_comparison

    first_name, first = docs[0]
    out: dict[str, Any] = {}
    for name, base in first["problems"].items():
        best = (base.get("hirl_vs_best_non_rl") or {}).get("best_non_rl")
        if best is None:
            continue
        cand: dict[int, float] = {}
        other: dict[int, float] = {}
        half: dict[int, float] = {}
        sources = []
        for doc_name, doc in docs:
            prob = doc.get("problems", {}).get(name)
            if prob is None:
                continue
            for key in ("reference_point", "budget"):
                if prob.get(key) != base.get(key):
                    raise ConfigError(f"--pool: {doc_name}: problem {name!r} has {key}={prob.get(key)!r}, "
                                      f"{first_name} has {base.get(key)!r}; only runs of the same problem pool")
            found = {}
            own = (names or {}).get(doc_name, candidate)
            for strategy, pooled in ((own, cand), (best, other)):
                new = _per_seed_hv(prob, strategy)
                for seed, value in new.items():
                    if seed in pooled and pooled[seed] != value:
                        raise ConfigError(f"--pool: {doc_name}: problem {name!r} {strategy} seed {seed} differs from an "
                                          f"earlier file's; give each seed set once")
                    pooled[seed] = value
                found[strategy] = sorted(new)
            half.update(_per_seed_hv(prob, own, "50%"))
            sources.append({"file": doc_name, "seeds": found})
        paired = sorted(set(cand) & set(other))
        cand, other = {s: cand[s] for s in paired}, {s: other[s] for s in paired}
        other_mean = float(np.mean(list(other.values()))) if other else None
        half_mean = float(np.mean([half[s] for s in paired])) if paired and all(s in half for s in paired) else None
        out[name] = {"best_non_rl": best, "chosen_in": first_name, "sources": sources,
                     "candidate_final_mean": float(np.mean(list(cand.values()))) if cand else None,
                     "best_non_rl_final_mean": other_mean,
                     "candidate_half_budget_mean": half_mean,
                     "reaches_within_half_budget": None if half_mean is None else half_mean >= other_mean - 1e-12,
                     "paired_final_hv": paired_comparison(cand, other)}
    pairs = [p["paired_final_hv"] for p in out.values() if p["paired_final_hv"].get("seeds")]
    return {"candidate": candidate, "problems": out,
            "at_or_above": sum(p["mean_difference"] >= 0 for p in pairs),
            "ci_above_zero": sum(bool(p["ci_above_zero"]) for p in pairs),
            "reach_within_half_budget": sum(bool(p["reaches_within_half_budget"]) for p in out.values()),
            "compared": len(pairs)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.markdown:
        doc = _suite_json(args.markdown, "--markdown")
        print(markdown(doc))
        return dict(doc)
    if args.pool_as and not args.pool:
        from compsearch.errors import ConfigError

        raise ConfigError("--pool-as adds a file to --pool: give the seed sets to pool with --pool too")
    if args.pool:
        _check_candidate(args.candidate)
        for path, name in args.pool_as:
            _check_candidate(name, f"--pool-as {path}")
        docs = [(_rel(f), _suite_json(f)) for f in args.pool]
        extra = [(_rel(Path(f)), _suite_json(Path(f), "--pool-as")) for f, _ in args.pool_as]
        given = [name for name, _ in docs + extra]
        if len(set(given)) < len(given):
            from compsearch.errors import ConfigError

            twice = sorted({n for n in given if given.count(n) > 1})
            raise ConfigError(f"--pool/--pool-as: {twice} given more than once; give each suite JSON once")
        pooled = pool_seed_sets(docs + extra, candidate=args.candidate,
                                names={name: strategy for (name, _), (_, strategy) in zip(extra, args.pool_as, strict=True)})
        pooled["command"] = " ".join(["benchmarks/suite.py", *(sys.argv[1:] if argv is None else argv)])
        path = args.json or RESULTS / "suite_pooled.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(pooled, indent=1) + "\n")
        print(json.dumps({k: pooled[k] for k in ("at_or_above", "ci_above_zero", "reach_within_half_budget", "compared")}, indent=1))
        return pooled
    problems, strategies, seeds, trials = _settings(args)
    out_root = args.out or ROOT / "runs" / ("suite_quick" if args.quick else "suite")
    json_path = args.json or RESULTS / ("suite_quick.json" if args.quick else "suite.json")
    started, t0, load0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter(), os.getloadavg()[0]
    walls: dict[str, float] = {}
    cpu0 = time.process_time()
    if args.merge:
        merge_sources(args.merge, out_root, problems)

    def write() -> dict[str, Any]:
        out = report(argv, problems, strategies, seeds, trials, out_root, candidate=args.candidate)
        out.update(started=started, wall_seconds=round(time.perf_counter() - t0, 1), wall_seconds_per_problem=walls,
                   cpu_seconds=round(time.process_time() - cpu0, 1), load_avg_start=round(load0, 2))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1) + "\n")
        _log(f"wrote {_rel(json_path)} (wall {out['wall_seconds']} s)")
        return out

    if not args.analyse_only:
        for p in problems:
            _log(f"{p}: {len(strategies)} strategies x {len(seeds)} seeds x {trials} evaluations -> {_rel(out_root / p)}")
            walls[p] = round(run_problem(p, out_root / p, strategies=strategies, seeds=seeds, trials=trials,
                                         workers=args.workers), 1)
            if p != problems[-1]:
                write()  # the statistics so far, after every problem
    out = write()
    print(json.dumps({k: out[k] for k in ("partial", "wall_seconds", "ranks")}, indent=1))
    return out


def report(argv: Sequence[str] | None, problems: Sequence[str], strategies: Sequence[str],
           seeds: Sequence[int], trials: int, out_root: Path, candidate: str = "hirl") -> dict[str, Any]:
    """The JSON document: settings, per-problem statistics, rank table."""
    results = analyse(out_root, problems, strategies=strategies, seeds=seeds, candidate=candidate)
    return {
        "command": " ".join(["benchmarks/suite.py", *(sys.argv[1:] if argv is None else argv)]),
        "cpus": os.cpu_count(), "load_avg_end": round(os.getloadavg()[0], 2),
        "requested": {"problems": problems, "strategies": strategies, "seeds": seeds, "trials": trials},
        "partial": any(not r["complete"] for r in results.values()) or len(results) < len(problems),
        "problems_missing": [p for p in problems if p not in results],
        "ci_method": "95% percentile bootstrap of the mean over seeds (10000 resamples, seed 0)",
        "candidate": candidate, "problems": results, "ranks": aggregate(results), "hirl_targets": targets(results),
    }


if __name__ == "__main__":
    main()
