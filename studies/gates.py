"""The gates method in a run folder: ``compsearch gates SPEC`` (Python: :func:`run_gates`).

For every study seed ``s`` and every penalty strength ``lambda`` of ``[gates]`` (default:
``trials`` strengths, :func:`~compsearch.studies.agent_spec.default_strengths`), one point:

1. **joint training** (:func:`~compsearch.evaluators.gate_sweep.gate_sweep`): a copy of the
   uncompressed network with a hard-concrete gate on every output channel of the searched
   units (the space's units: stem and head as the space leaves them) is trained with the
   task loss plus ``lambda`` x the cost-aware penalty, for the evaluator's fine-tuning
   budget (``evaluator.finetune``, seeded ``s``). For an agent the task loss is policy
   distillation from the uncompressed agent with DAgger rounds; for a classifier it is
   cross-entropy on the train split.
2. **the point's policy**: ``keep`` = the fraction of open gates per unit, channel structure.
3. **evaluated the way a strategy's candidate is**: an evaluator of study seed ``s`` whose
   pruning criterion is the point's gate log-odds
   (:func:`~compsearch.evaluators.gate_sweep.gate_criterion`, so exactly the closed
   channels are pruned) evaluates the policy -- masks on the base weights, the same
   fine-tuning budget, the same validation measure -- and, at once, the test split
   (the report cannot re-create this criterion; the test value is never used to select).

Each point is a COMPLETE trial of the Optuna study ``gates-s<seed>`` in the run's storage,
written through :mod:`compsearch.record` (policy, every metric, constraint values), with
extra metrics ``gate_strength``, ``joint_<quality>`` (the jointly trained, gate-folded
network's validation quality) and ``gate_seconds``; a diverged evaluation is a FAILED
trial with its reason. run.json lists ``gates`` under ``methods``, so ``compsearch report``
draws its front beside the strategies'. A point costs one joint training plus one
evaluation (about twice a candidate's fine-tuning).

With ``gates.online = true`` (agent studies) every strength also trains an agent from
scratch with gates on its acting network during SB3 training
(:func:`~compsearch.evaluators.gate_sweep.train_agent_gated`, seed ``agent.seed + s``):
study ``gates-online-s<seed>``, its network measured as trained (no distillation).

Resuming: strengths that already have a counted trial in the study are skipped; a study
created with other ``[gates]`` settings is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from compsearch import record
from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.studies import runfile
from compsearch.studies.results import quiet_optuna, study_name
from compsearch.studies.run import Run, prepare
from compsearch.studies.spec import StudySpec, load_spec

GATES, ONLINE = "gates", "gates-online"
STRENGTH_ATTR = "gates:strength"
SETTINGS_ATTR = "gates:settings"


def _settings(spec: StudySpec, method: str) -> str:
    table = spec.gates.model_dump(mode="json", exclude={"strengths", "online"})
    return json.dumps({"method": method, **table, "finetune": spec.evaluator.finetune.model_dump(mode="json")}, sort_keys=True)


def open_method_study(run: Run, method: str, seed: int) -> optuna.Study:
    """Create or load study ``<method>-s<seed>`` (objectives, constraints, run stamp recorded).

    Raises:
        ConfigError: the study was created with other ``[gates]`` / fine-tuning settings.
    """
    study = optuna.create_study(study_name=study_name(method, seed), storage=run.storage, directions=run.directions,
                                load_if_exists=True)
    record.setup_study(study, run.objectives, run.constraints,
                       attrs={"strategy": method, "seed": seed, "budget": run.spec.trials})
    runfile.stamp_study(study, run.run_id)
    settings = _settings(run.spec, method)
    before = study.user_attrs.get(SETTINGS_ATTR)
    if before is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
    elif before != settings:
        raise ConfigError(f"study {study.study_name!r} holds points of other [gates] / evaluator.finetune settings "
                          f"({before}); mixing them is meaningless. Restore the settings or use another --out folder")
    return study


def _done(study: optuna.Study) -> set[float]:
    return {float(t.user_attrs[STRENGTH_ATTR]) for t in study.get_trials(deepcopy=False)
            if record.counts_toward_budget(t) and STRENGTH_ATTR in t.user_attrs}


def _add_point(study: optuna.Study, run: Run, strength: float, policy: Any, metrics: dict[str, Any] | None,
               failure: str | None = None) -> None:
    """Add one finished trial in the record's layout (COMPLETE, or FAILED with ``failure``)."""
    if failure is None and metrics is not None:
        try:
            user, system = record.frozen_attrs(policy=policy, metrics=metrics, constraints=run.constraints)
            values: list[float] | None = record.objective_values(metrics, run.objectives)
            state = TrialState.COMPLETE
        except FineTuneDiverged as e:
            failure = f"diverged: {e}"
    if failure is not None:
        user, system, values, state = {record.POLICY_ATTR: dict(policy), record.FAIL_REASON_ATTR: failure}, {}, None, TrialState.FAIL
    user[STRENGTH_ATTR] = float(strength)
    study.add_trial(optuna.trial.create_trial(state=state, values=values, params={}, distributions={},
                                              user_attrs=user, system_attrs=system))


def searched_units(run: Run, seed: int) -> list[Any]:
    """The units the gates go on: the space's searched units, in the evaluator's order."""
    names = {u.name for u in getattr(run.space, "units", run.space.all_units)}
    return [u for u in run.evaluator(seed).units if u.name in names]


def evaluate_with_gates(run: Run, seed: int, point: Any) -> dict[str, Any]:
    """Metrics of ``point.policy`` from an evaluator of seed ``seed`` whose criterion is the
    point's gate log-odds (validation and test split, the run's fine-tuning budget)."""
    from compsearch.evaluators.evaluator import CompressionEvaluator
    from compsearch.evaluators.gate_sweep import gate_criterion
    from compsearch.evaluators.masks import CRITERIA, register_criterion
    from compsearch.evaluators.objective import collect_metrics

    name = f"gates-point-{uuid.uuid4().hex[:12]}"
    register_criterion(name, model_level=True)(gate_criterion(point))
    try:
        base = run.evaluator(seed)
        config = dataclasses.replace(run.spec.evaluator.config(seed=seed), criterion=name)
        ev = CompressionEvaluator(run.model, base.task, config=config, units=base.units, device=base.device)
        result = ev.evaluate(point.policy, test=True)
        return collect_metrics(ev, point.policy, result)
    finally:
        CRITERIA.unregister(name)


def gate_points(run: Run, seed: int, strengths: Sequence[float], *, log: Any = None) -> optuna.Study:
    """Run the missing points of study ``gates-s<seed>`` (module docstring, steps 1-3)."""
    from compsearch.evaluators.gate_sweep import gate_sweep

    study = open_method_study(run, GATES, seed)
    done = _done(study)
    ev = run.evaluator(seed)
    units = searched_units(run, seed)
    model = copy.deepcopy(run.model).to(ev.device)
    quality = run.spec.quality
    for strength in (s for s in strengths if float(s) not in done):
        start = time.perf_counter()
        training = run.spec.gates.training(seed=seed, strength=strength)
        (point,) = gate_sweep(model, ev.task, units=units, strengths=[strength], training=training,
                              config=run.spec.evaluator.finetune.config(seed=seed))
        try:
            metrics: dict[str, Any] | None = evaluate_with_gates(run, seed, point)
            failure = None
        except FineTuneDiverged as e:
            metrics, failure = None, f"diverged: {e}"
        if metrics is not None:
            metrics.update({"gate_strength": float(strength), f"joint_{quality}": float(point.values[quality]),
                            "gate_seconds": time.perf_counter() - start})
        _add_point(study, run, strength, _policy_dict(point.policy), metrics, failure)
        _log(log, f"gates s{seed} strength {strength:g}", run, metrics, failure)
    return study


def _log(log: Any, what: str, run: Run, metrics: dict[str, Any] | None, failure: str | None = None) -> None:
    if log is not None:
        log(f"{what}: " + (failure or ", ".join(f"{m}={(metrics or {}).get(m, float('nan')):.4g}" for m, _ in run.objectives)))


def _policy_dict(units: Any) -> dict[str, Any]:
    from compsearch.spaces.policy import Policy

    return Policy(units).to_dict()


def online_points(run: Run, seed: int, strengths: Sequence[float], *, log: Any = None) -> optuna.Study:
    """Run the missing points of study ``gates-online-s<seed>``: an agent trained from scratch
    with gates per strength, measured as trained."""
    from compsearch.evaluators.gate_sweep import train_agent_gated

    if run.spec.agent is None:
        raise ConfigError("gates.online trains agents from scratch; it needs an [agent] table")
    study = open_method_study(run, ONLINE, seed)
    done = _done(study)
    ev = run.evaluator(seed)
    units = [u.name for u in searched_units(run, seed)]
    recipe = run.spec.agent.recipe()
    recipe = dataclasses.replace(recipe, seed=recipe.seed + seed)
    for strength in (s for s in strengths if float(s) not in done):
        start = time.perf_counter()
        net, gates = train_agent_gated(recipe, run.spec.gates.training(seed=seed, strength=strength), units=units)
        policy = gates.policy()
        net = net.to(ev.device)
        val, test = ev.task.measure(net, "val"), ev.task.measure(net, "test")
        metrics = {**ev.cost(policy), **val, **{f"test_{k}": v for k, v in test.items()}, "steps": 0,
                   "gate_strength": float(strength), "gate_seconds": time.perf_counter() - start}
        _add_point(study, run, strength, _policy_dict(policy), metrics)
        _log(log, f"gates-online s{seed} strength {strength:g}", run, metrics)
    return study


def run_gates(spec: StudySpec | str | Path | dict[str, Any], out_dir: str | Path, *, seeds: int | Sequence[int] | None = None,
              strengths: Sequence[float] | None = None, online: bool | None = None, quiet: bool = True,
              storage: str | None = None) -> Run:
    """Run (or resume) the gates method of ``spec`` in the run folder ``out_dir``.

    Args:
        spec: a spec, a TOML path or a mapping.
        out_dir: the run folder (the same as ``compsearch run``'s, before or after it). When a
            run already used it, its ``trials`` (e.g. ``compsearch run --trials 3``) replace the
            spec's: the default strengths are that many, an equal budget.
        seeds: override the spec's seeds (a count or a list).
        strengths: override ``gates.strengths``.
        online: override ``gates.online``.
        quiet: print nothing; else one line per point.
        storage: a storage URL outside the run folder (``--storage``).

    Returns:
        The run; its storage holds the studies ``gates-s<seed>`` (and ``gates-online-s<seed>``).

    Raises:
        SpecError, ConfigError: bad spec or arguments, an incomparable run folder, changed
            ``[gates]`` settings, a storage that lost trials -- before any training.
    """
    from compsearch.studies.runner import _now, _write_session, effective_spec, evaluate_baseline
    from compsearch.studies.storage import open_storage
    from compsearch.studies.validate import check_run

    out = Path(out_dir).expanduser().resolve()
    ran = runfile.read(out).get("spec", {}).get("trials")  # the budget this run folder's strategies got
    spec = effective_spec(load_spec(spec), seeds=seeds, trials=ran if isinstance(ran, int) and ran > 0 else None)
    if strengths is not None or online is not None:
        data = spec.model_dump(mode="json")
        data["gates"] = {**data["gates"], **({"strengths": [float(s) for s in strengths]} if strengths is not None else {}),
                         **({"online": bool(online)} if online is not None else {})}
        spec = load_spec(data)
    check_run(spec, out, storage=storage)
    runfile.check_resume(out, spec)
    url = runfile.resolve_storage(out, spec, storage, several_processes=False)
    methods = [GATES, *([ONLINE] if spec.gates.online else [])]
    out.mkdir(parents=True, exist_ok=True)
    runfile.run_id(out)
    names = [study_name(m, seed) for m in methods for seed in spec.seeds]
    runfile.check_studies(out, url, names)
    if url.startswith("journal://"):
        open_storage(url, out_dir=out, repair=True)
    run = prepare(spec, out, storage=url)
    session = {"start": _now(), "end": None, "status": "running", "methods": methods, "seeds": spec.seeds,
               "strengths": spec.gates.strength_list(spec.trials)}
    _write_session(run, session)
    runfile.update(out, methods=sorted({*runfile.read(out).get("methods", []), *methods}))
    log = None if quiet else print
    try:
        with quiet_optuna():
            for seed in spec.seeds:
                evaluate_baseline(run, seed)
                gate_points(run, seed, spec.gates.strength_list(spec.trials), log=log)
                if spec.gates.online:
                    online_points(run, seed, spec.gates.strength_list(spec.trials), log=log)
                runfile.record_counts(out, run.storage, names)
    except BaseException as e:
        _write_session(run, {**session, "end": _now(), "status": "interrupted" if isinstance(e, KeyboardInterrupt) else "error"})
        raise
    _write_session(run, {**session, "end": _now(), "status": "complete"})
    return run


__all__ = ["GATES", "ONLINE", "evaluate_with_gates", "gate_points", "online_points", "open_method_study", "run_gates"]
