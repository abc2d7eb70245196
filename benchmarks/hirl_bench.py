"""Benchmarks of ``hirl``, its ablations and ``sls`` (prints JSON; never timed assertions in tests).

* ``--what sample [--strategy hirl-full]``: median milliseconds per ``sample_relative`` of ``hirl`` (or the variant named) once warm,
  *excluding* the periodic surrogate/RL retraining (reported separately as the median seconds
  per retraining) -- :func:`time_sample_relative`.
* ``--what compare --run DIR``: from a studies-runner run folder (e.g. ``compsearch run
  studies/digits_compare.toml --strategies hirl,hirl-full,sls,tpe --trials 30 --seeds 3``),
  per strategy the normalised hypervolume (mean, std over seeds) at 25/50/100% of the budget and
  the evaluations its mean curve needs to reach the best non-RL strategy's final mean.
* ``--what origins --run DIR``: where the proposals of each strategy came from (the trials'
  ``compsearch:proposal_origin``: ``startup``, ``agents``, ``greedy``, ``mutation``, ``random``,
  ``fallback``, ``+``-joined when several sources produced the same policy), counts and shares.
* ``--what replay --run DIR --study hirl-s0 --after 3,9``: what the study's strategy (``sls``,
  ``hirl`` or a variant, with the run's strategy options) would propose after the study's first
  ``k`` finished trials, for each ``k`` of ``--after``, without evaluating it: the proposal's budget
  target, exact size, surrogate-predicted quality (mean, ensemble std, optimism weight) and reward
  score, next to the same numbers for the trials it learned from. Uses the run folder's stored
  base model or agent (refuses to train an agent). The sampler is rebuilt and fitted once on those ``k``
  trials, so its proposal can differ from the one the run made (that sampler retrained along
  the way, with its own random state). ``--option name=value`` (repeatable, JSON value)
  overrides a strategy option, e.g. ``--option kappa=0`` (no optimism bonus).
* ``--what surrogate --run DIR [--strategy hirl] --after 10,20,30 [--next 10]``: how well the
  surrogate predicts the quality of the trials the strategy actually proposed next. For every seed's
  study of ``--strategy`` and every ``k`` of ``--after``: fit on the first ``k`` finished trials,
  predict the next ``--next``; Spearman rank correlation of predicted against real quality, and the
  regret of picking the predicted best among them (best real quality minus the picked one's). Models:
  ``hirl``'s MLP ensemble (its default settings and features), a Gaussian process (scikit-learn,
  Matern 5/2 with one length scale per feature, a noise term, targets normalised) and ridge
  regression (regularisation chosen by leave-one-out), on the same features.
* ``--what proxy``: a cheap real problem for ablations of the parts that need many runs: the
  digits CNN's logit MSE against the uncompressed model (``proxy``, one forward per "evaluation",
  no fine-tuning) against ``size_kb``; every strategy / part setting in ``--variants`` over
  ``--seeds`` seeds of ``--trials`` evaluations. The strategies see the evaluator without its
  ``proxy`` (no free cold start on the objective itself).

Usage::

    .venv/bin/python benchmarks/hirl_bench.py --what compare --run runs/h5_quick
    .venv/bin/python benchmarks/hirl_bench.py --what proxy --trials 40 --seeds 3
    .venv/bin/python benchmarks/hirl_bench.py --what replay --run runs/bench_agents/minatar_breakout_dqn --study hirl-s0 --after 3,9
    .venv/bin/python benchmarks/hirl_bench.py --what surrogate --run runs/suite/digits_vit --after 10,20,30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import optuna
import torch

SPACE_CHOICES = dict(w_bits=(2, 3, 4, 5, 6, 8, 32), a_bits=(4, 8, 32), keep=(0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0))
OBJECTIVES = (("accuracy", "maximize"), ("size_kb", "minimize"))
RL = ("hirl", "hirl-full", "hirl-mutations", "hirl-flat", "hirl-real", "hirl-nofisher", "hirl-curriculum", "hirl-front", "hirl-sweep", "amc", "haq")
ORIGIN_ATTR = "compsearch:proposal_origin"


def digits_setting(*, steps: int = 100, base_steps: int = 600, model_name: str = "digits_cnn", **choices: Any) -> tuple[Any, Any]:
    """``(space, evaluator)`` of the digits_compare setting (base model trained once, seed 0);
    ``model_name`` may name any registered or timm model (e.g. ``resnet18``: 8 blocks, 19 units)."""
    from compsearch.evaluators import (
        CompressionEvaluator,
        FineTuneConfig,
        build_model,
        load_dataset,
    )
    from compsearch.evaluators.models import train_base_model
    from compsearch.spaces import get_space

    data = load_dataset("digits", seed=0)
    model = build_model(model_name, num_classes=10, in_chans=1)
    train_base_model(model, data, steps=base_steps, lr=3e-3, seed=0)
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=steps, lr=0.01, optimizer="sgd", distill=0.5), criterion="l1", device="cpu")
    return get_space("joint", ev.units, **{**SPACE_CHOICES, **choices}), ev


def time_sample_relative(*, trials: int = 30, seed: int = 0, space: Any = None, evaluator: Any = None,
                         strategy: str = "hirl") -> dict[str, float]:
    """Median ms per ``sample_relative`` of ``strategy`` (``hirl`` or a variant) once warm (excluding retraining) and
    median seconds per retraining, on a study whose values are the exact size and a cheap
    analytic accuracy stand-in (no fine-tuning, so only the sampler is timed)."""
    from compsearch.search.registry import get_strategy

    if space is None:
        space, evaluator = digits_setting(steps=0, base_steps=200)
    sampler = get_strategy(strategy, space=space, evaluator=evaluator, seed=seed, objectives=OBJECTIVES)
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


# ---- run folders -----------------------------------------------------------------------------
def _run_studies(run_dir: str) -> tuple[Any, dict[tuple[str, int], list[Any]]]:
    """The run folder's spec and ``(strategy, seed) -> trials`` of its studies."""
    from compsearch.studies.results import load_studies
    from compsearch.studies.storage import open_storage
    from compsearch.studies.summary import read_run, run_storage

    run, spec = read_run(run_dir)
    return spec, load_studies(open_storage(run_storage(run, run_dir), out_dir=run_dir))


def _load(run_dir: str) -> tuple[dict[str, Any], dict[tuple[str, int], list[Any]]]:
    from compsearch.studies.summary import summarize

    return summarize(run_dir), _run_studies(run_dir)[1]


def compare(run_dir: str) -> dict[str, Any]:
    """Hypervolume per strategy and the evaluations to reach the best non-RL final (module docstring)."""
    from compsearch.studies.summary import first_reaching

    summary, _ = _load(run_dir)
    out: dict[str, Any] = {}
    means: dict[str, list[float]] = {}
    for name, s in summary["strategies"].items():
        curves = [c for c in s["curves"].values() if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        means[name] = np.mean([c[:n] for c in curves], axis=0).tolist()
        out[name] = {k: {"mean": v["mean"], "std": v["std"]} for k, v in s["hypervolume"].items()} | {"seeds": len(curves)}
    non_rl = {k: v[-1] for k, v in means.items() if k not in RL and k != "sls"}
    best_name = max(non_rl, key=non_rl.__getitem__) if non_rl else None
    for name, curve in means.items():
        if best_name is not None:
            hit = first_reaching(curve, non_rl[best_name])
            out[name]["evals_to_best_non_rl_final"] = None if hit is None else hit
    return {"run": run_dir, "budget": summary["budget"], "best_non_rl": best_name, "strategies": out}


def origins(run_dir: str) -> dict[str, Any]:
    """Counts and shares of the proposals' origins per strategy (module docstring)."""
    _, studies = _load(run_dir)
    counts: dict[str, Counter[str]] = {}
    for (name, _seed), trials in studies.items():
        c = counts.setdefault(name, Counter())
        c.update(str(t.system_attrs.get(ORIGIN_ATTR, "unrecorded")) for t in trials)
    return {
        name: {"counts": dict(c.most_common()), "share": {k: round(v / sum(c.values()), 3) for k, v in c.most_common()}}
        for name, c in sorted(counts.items())
    }


@contextlib.contextmanager
def _no_agent_training(run_dir: str, what: str) -> Iterator[None]:
    """Refuse to train an RL agent: the run folder must hold the agent its spec names."""
    from compsearch.evaluators import sb3_train

    learn = sb3_train.learn

    def no_training(*_: Any, **__: Any) -> Any:
        raise SystemExit(f"--what {what}: the run folder {run_dir} has no stored agent for its spec; it would be trained")

    sb3_train.learn = no_training  # type: ignore[assignment]
    try:
        yield
    finally:
        sb3_train.learn = learn  # type: ignore[assignment]


def replay(run_dir: str, study_name: str, after: Sequence[int], options: dict[str, Any]) -> dict[str, Any]:
    """The study's next proposal after its first ``k`` finished trials, each ``k`` in ``after`` (module docstring)."""
    with _no_agent_training(run_dir, "replay"):
        return _replay(run_dir, study_name, after, options)


def _replay(run_dir: str, study_name: str, after: Sequence[int], options: dict[str, Any]) -> dict[str, Any]:
    from compsearch.search.registry import get_strategy
    from compsearch.studies.results import parse_study_name
    from compsearch.studies.results import study_name as name_of
    from compsearch.studies.run import prepare

    spec, studies = _run_studies(run_dir)
    key = parse_study_name(study_name)
    if key not in studies:
        raise SystemExit(f"--study {study_name!r}: not in {run_dir}; it holds {sorted(name_of(*k) for k in studies)}")
    strategy, seed = key
    run = prepare(spec, run_dir)
    finished = [t for t in studies[key] if t.values is not None]
    if too_many := [k for k in after if not 1 <= k <= len(finished)]:
        raise SystemExit(f"--after {','.join(map(str, too_many))}: {study_name} has {len(finished)} finished trials; give counts 1..{len(finished)}")
    evaluator = run.evaluator(seed)
    opts = {**run.spec.strategy_options.get(strategy, {}), **options}
    out: dict[str, Any] = {"run": run_dir, "study": study_name, "options": opts, "after": {}}
    for k in after:
        sampler = get_strategy(strategy, space=run.space, seed=seed, evaluator=evaluator, objectives=run.objectives,
                               constraints=run.spec.constraints, n_trials=run.spec.trials, **opts)
        study = optuna.create_study(directions=run.directions, sampler=sampler)
        study.add_trials(finished[:k])
        trial = study.ask()
        run.space.suggest(trial)
        obj = getattr(sampler, "_objective", None)
        if obj is None or obj.mode != "budget":
            raise SystemExit(f"--what replay: {strategy!r} after {k} trials has no budget-mode objective (sls, hirl and its variants)")
        acts = np.array([run.space.actions_from_params(t.params) for t in finished[:k]] + [run.space.actions_from_params(trial.params)],
                        dtype=np.int64)
        goal = obj.proposal_goal(k)
        score = obj.score(acts, np.full(len(acts), goal), [obj.default_weights])[0][:, 0]
        mean, std = obj.surrogate.predict(obj.featurize(acts)) if obj.surrogate is not None else (np.full((len(acts), 1), np.nan),) * 2
        size = obj.cost.metrics(acts)["size_kb"]
        sign = 1.0 if obj.learned[0].direction == "maximize" else -1.0

        observed = [round(float(t.values[obj.learned[0].index]), 4) for t in finished[:k]] + [None]
        rows = [{"observed": o, "size_kb": round(float(size[i]), 2), "predicted": round(sign * float(mean[i, 0]), 3),
                 "std": round(float(std[i, 0]), 3), "score": round(float(score[i]), 4)} for i, o in enumerate(observed)]
        out["after"][k] = {
            "goal_ratio": round(goal, 4), "ratio_min": round(obj.ratio_min, 4), "kappa": round(obj.kappa, 3),
            "surrogate_on": "proxy" if obj.proxy_mode else "real trials", "quality": obj.learned[0].metric,
            "proposal": {**rows[-1], "origin": sampler.origins.get(trial.number)}, "learned_from": rows[:-1],
        }
    return out


def next_trial_fit(predicted: Sequence[float], real: Sequence[float]) -> dict[str, float]:
    """Spearman correlation of ``predicted`` against ``real`` (0 when either is constant) and the
    regret of picking the predicted best: ``max(real) - real[argmax(predicted)]``."""
    from scipy.stats import spearmanr

    pred, true = np.asarray(predicted, float), np.asarray(real, float)
    rho = float(spearmanr(pred, true).statistic) if len(pred) > 1 and np.ptp(pred) > 0 and np.ptp(true) > 0 else 0.0
    return {"spearman": rho, "regret": float(true.max() - true[int(np.argmax(pred))])}


def _surrogate_models() -> dict[str, Any]:
    """name -> ``fit_predict(x, y, x_next, seed)`` (first learned column), module docstring."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    from sklearn.linear_model import RidgeCV

    from compsearch.search.rl.critic import SurrogateRewards
    from compsearch.search.rl.surrogate import SurrogateEnsemble

    def ensemble(x: np.ndarray, y: np.ndarray, xt: np.ndarray, seed: int) -> np.ndarray:
        model = SurrogateEnsemble(in_dim=x.shape[1], out_dim=y.shape[1], config=SurrogateRewards().surrogate, seed=seed).fit(x, y)
        return model.predict(xt)[0][:, 0]

    def gp(x: np.ndarray, y: np.ndarray, xt: np.ndarray, seed: int) -> np.ndarray:
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(np.ones(x.shape[1]), (1e-2, 1e3), nu=2.5) + WhiteKernel(1e-2, (1e-6, 1.0))
        return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed).fit(x, y[:, 0]).predict(xt)

    def ridge(x: np.ndarray, y: np.ndarray, xt: np.ndarray, seed: int) -> np.ndarray:
        return RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x, y[:, 0]).predict(xt)

    return {"hirl_ensemble": ensemble, "gp": gp, "ridge": ridge}


def surrogate_fit(run_dir: str, strategy: str, after: Sequence[int], n_next: int) -> dict[str, Any]:
    """The surrogate's predictions of the trials ``strategy`` proposed next (module docstring)."""
    with _no_agent_training(run_dir, "surrogate"):
        return _surrogate_fit(run_dir, strategy, after, n_next)


def _surrogate_fit(run_dir: str, strategy: str, after: Sequence[int], n_next: int) -> dict[str, Any]:
    import warnings

    from compsearch.search.common import observations
    from compsearch.search.registry import SearchContext
    from compsearch.search.rl.layout import block_layout
    from compsearch.search.rl.objective import StrategyObjective
    from compsearch.studies.run import prepare

    spec, studies = _run_studies(run_dir)
    seeds = sorted(seed for name, seed in studies if name == strategy)
    if not seeds:
        raise SystemExit(f"--strategy {strategy!r}: {run_dir} has no study of it; it holds {sorted({n for n, _ in studies})}")
    run = prepare(spec, run_dir)
    models = _surrogate_models()
    rows: dict[str, dict[int, list[dict[str, float]]]] = {m: {k: [] for k in after} for m in models}
    for seed in seeds:
        ctx = SearchContext(space=run.space, seed=seed, evaluator=run.evaluator(seed), objectives=run.objectives, constraints={})
        obj = StrategyObjective(ctx, run.directions, layout=block_layout(run.space, merge=True))
        hist = observations(None, run.space, studies[(strategy, seed)])  # type: ignore[arg-type]  # the trials are given
        for k in after:
            if k + n_next > len(hist):
                raise SystemExit(f"--after {k} --next {n_next}: {strategy}-s{seed} has {len(hist)} finished trials")
            x, y = obj.real_data(hist[:k])
            xt, yt = obj.real_data(hist[k:k + n_next])
            for name, fit_predict in models.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the GP's length-scale bounds warnings on small data
                    rows[name][k].append(next_trial_fit(fit_predict(x, y, xt, seed + 31 * k), yt[:, 0]))
    return {
        "run": run_dir, "strategy": strategy, "seeds": seeds, "next": n_next, "quality": obj.learned[0].metric, "features": int(x.shape[1]),
        "models": {
            name: {
                "spearman": {k: round(float(np.mean([r["spearman"] for r in v])), 3) for k, v in per_k.items()},
                "regret": {k: round(float(np.mean([r["regret"] for r in v])), 4) for k, v in per_k.items()},
                "mean_spearman": round(float(np.mean([r["spearman"] for v in per_k.values() for r in v])), 3),
            }
            for name, per_k in rows.items()
        },
    }


# ---- the proxy problem -------------------------------------------------------------------------
class _NoProxy:
    """The evaluator's hooks without ``proxy`` (so no strategy gets a free cold start on the objective)."""

    def __init__(self, ev: Any) -> None:
        self.model, self.cost, self.sensitivity = ev.model, ev.cost, ev.sensitivity
        self.unit_stats, self.reconstruction_error = ev.unit_stats, ev.reconstruction_error


def _variant(name: str) -> tuple[str, dict[str, Any]]:
    """``"hirl"`` or ``"hirl:low_level=per_block;k=5"`` -> strategy and options with part objects."""
    from compsearch.search.rl.allocation import EnsembleAllocation, FixedAllocation
    from compsearch.search.rl.critic import BudgetCurriculum, RealRewards
    from compsearch.search.rl.ppo import PerBlockLowLevel, SharedLowLevel
    from compsearch.search.rl.reward import RewardWeights
    from compsearch.search.rl.state import FisherPrior, NoPrior

    strategy, _, opts = name.partition(":")
    named = {
        "low_level=per_block": {"low_level": PerBlockLowLevel()}, "low_level=shared_embed": {"low_level": SharedLowLevel(embed=4, bias=False)},
        "recon=0.2": {"weights": RewardWeights(recon=0.2)}, "prior=none": {"prior": NoPrior()}, "prior=fisher": {"prior": FisherPrior()},
        "allocation=fixed": {"allocation": FixedAllocation()}, "allocation=ensemble": {"allocation": EnsembleAllocation()},
        "curriculum=on": {"curriculum": BudgetCurriculum()}, "rewards=real": {"rewards": RealRewards()},
    }
    options: dict[str, Any] = {}
    for o in filter(None, opts.split(";")):
        options.update(named[o] if o in named else {o.split("=")[0]: json.loads(o.split("=")[1])})
    return strategy, options


def proxy_problem(
    variants: Sequence[str], *, trials: int, seeds: int, first_seed: int = 0, model_name: str = "digits_cnn", base_steps: int = 600, **choices: Any
) -> dict[str, Any]:
    """Final and half-budget hypervolume (mean, std) per variant on the proxy problem (module docstring)."""
    from compsearch.search.registry import get_strategy
    from compsearch.studies.hypervolume import hypervolume_curve

    space, ev = digits_setting(steps=0, base_steps=base_steps, model_name=model_name, **choices)
    wrapped = _NoProxy(ev)
    worst = space.decode(space.params_from_actions([0] * len(space.dimensions())))  # cheapest choices
    full = space.decode(space.params_from_actions([n - 1 for n in space.action_sizes()]))  # 32 bits, keep 1
    reference = [float(ev.proxy(worst)), float(ev.cost(full)["size_kb"])]
    objectives = (("proxy", "minimize"), ("size_kb", "minimize"))
    out: dict[str, Any] = {"model": model_name, "choices": {**SPACE_CHOICES, **choices}, "reference": reference, "trials": trials, "seeds": list(range(first_seed, first_seed + seeds)), "variants": {}}
    for name in variants:
        strategy, options = _variant(name)
        finals, halves, seconds = [], [], []
        for seed in range(first_seed, first_seed + seeds):
            sampler = get_strategy(strategy, space=space, seed=seed, evaluator=wrapped, objectives=objectives, **options)
            study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
            t0 = time.perf_counter()
            for _ in range(trials):
                trial = study.ask()
                policy = space.suggest(trial)
                study.tell(trial, (float(ev.proxy(policy)), float(ev.cost(policy)["size_kb"])))
            seconds.append(time.perf_counter() - t0)
            curve = hypervolume_curve([t.values for t in study.trials], ["minimize", "minimize"], reference)
            finals.append(curve[-1])
            halves.append(curve[trials // 2 - 1])
        out["variants"][name] = {
            "hv_final": {"mean": float(np.mean(finals)), "std": float(np.std(finals))},
            "hv_half": {"mean": float(np.mean(halves)), "std": float(np.std(halves))},
            "per_seed_final": [round(f, 5) for f in finals], "sampler_s_mean": float(np.mean(seconds)),
        }
    return out


def _options(p: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            p.error(f"--option {pair!r}: expected NAME=VALUE, e.g. --option kappa=0")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--what", choices=("sample", "compare", "origins", "proxy", "replay", "surrogate"), default="sample")
    p.add_argument("--run", help="run folder (compare, origins, replay, surrogate)")
    p.add_argument("--study", help="study name, e.g. hirl-s0 (replay)")
    p.add_argument("--after", default="3,6,9", help="comma-separated counts of finished trials (replay, surrogate)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=JSON", help="strategy option override (replay)")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="first seed (proxy)")
    p.add_argument("--model", default="digits_cnn", help="model of the proxy problem (a registered or timm name)")
    p.add_argument("--base-steps", type=int, default=600, help="base-model training steps (proxy)")
    p.add_argument("--symmetric", action="store_true", help="fix scheme=symmetric in the space (proxy)")
    p.add_argument("--strategy", default="hirl", help="the hirl variant timed (sample); the strategy whose studies are read (surrogate)")
    p.add_argument("--next", type=int, default=10, help="trials predicted after each --after count (surrogate)")
    p.add_argument("--variants", default="hirl,hirl-full,hirl-flat,hirl-nofisher,sls,random,tpe",
                   help="comma-separated strategies; 'name:opt=value;opt=value' for options (proxy)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.what in ("compare", "origins", "replay", "surrogate") and not args.run:
        p.error(f"--what {args.what} needs --run DIR (a studies-runner run folder)")
    if args.what == "sample":
        result: Any = {"strategy": args.strategy, "sample_relative": time_sample_relative(trials=args.trials, strategy=args.strategy)}
    elif args.what == "compare":
        result = compare(args.run)
    elif args.what == "origins":
        result = origins(args.run)
    elif args.what == "replay":
        if not args.study:
            p.error("--what replay needs --study NAME (e.g. hirl-s0)")
        result = replay(args.run, args.study, [int(k) for k in args.after.split(",")], _options(p, args.option))
    elif args.what == "surrogate":
        result = surrogate_fit(args.run, args.strategy, [int(k) for k in args.after.split(",")], args.next)
    else:
        extra = {"scheme": "symmetric"} if args.symmetric else {}
        result = proxy_problem(
            args.variants.split(","), trials=args.trials, seeds=args.seeds, first_seed=args.first_seed, model_name=args.model,
            base_steps=args.base_steps, **extra,
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
