"""Run a study: every strategy x seed as one Optuna study, all judged by one evaluator.

``run_study(spec, out_dir)`` does, in order:

1. :func:`prepare`: load the data (split fixed by ``data.seed``), build the model, train
   the uncompressed base model once and cache it in ``<out>/base/<hash>.pt`` (hash of
   model + recipe + data spec), build the space and fix the hypervolume reference point.
2. Evaluate the uncompressed baseline (the identity policy) once per seed with the same
   fine-tuning budget as a candidate; stored in ``<out>/baseline.json``.
3. For every strategy and seed, run the study ``<strategy>-s<seed>`` in one storage
   until it holds ``trials`` counted trials (budget rule in
   :mod:`compsearch.studies.results`). The evaluator's seed (fine-tuning batches,
   calibration, gradient statistics) is the study seed, so every strategy sees the
   same evaluator for a given seed.

Re-running resumes: COMPLETE trials are kept; trials left RUNNING by a killed run are
marked FAILED (``fail_reason = "interrupted"``) and re-run. A diverged fine-tune or
out-of-memory becomes a FAILED trial with its reason and the study goes on; Ctrl-C
records the trial in flight as FAILED ``"interrupted"`` and stops. ``<out>/run.json``
holds the effective spec, versions and the start/end time of every session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from compsearch.errors import FineTuneDiverged, SpecError
from compsearch.studies.hypervolume import hypervolume, metric_scales
from compsearch.studies.results import (
    FAIL_REASON_ATTR,
    INTERRUPTED,
    counted_trials,
    default_storage,
    open_storage,
    quiet_optuna,
    study_name,
    trial_point,
)
from compsearch.studies.spec import StudySpec, load_spec

RUN_FILE = "run.json"
BASELINE_FILE = "baseline.json"
BASE_DIR = "base"
BUDGET_RULE = (
    "budget = COMPLETE + PRUNED + FAILED trials whose fail_reason does not start with 'interrupted'; "
    "interrupted and internal-error trials are re-run"
)
#: Defaults of reference-point entries the spec leaves out (cost metrics use the uncompressed cost).
_REFERENCE_DEFAULTS = {"compression_ratio": 1.0, "sparsity": 0.0}
_COST_METRICS = ("size_bits", "size_kb", "bops")


@dataclass
class RunContext:
    """Everything a run needs, built once by :func:`prepare`.

    Attributes:
        spec: the effective spec.
        out_dir: the run folder.
        data: the splits (fixed by ``spec.data.seed``).
        model: the trained uncompressed model (CPU, eval mode).
        base_info: how the base model was obtained (``hash``, ``path``, ``val_accuracy``, ...).
        space: the compression space over the model's units.
        reference_point: metric -> worst acceptable value, fixed before the run.
        storage_url: the Optuna storage URL.
    """

    spec: StudySpec
    out_dir: Path
    data: Any
    model: torch.nn.Module
    base_info: dict[str, Any]
    space: Any
    reference_point: dict[str, float]
    storage_url: str
    _evaluators: dict[int, Any] = field(default_factory=dict, repr=False)
    _storage: optuna.storages.BaseStorage | None = field(default=None, repr=False)

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        return self.spec.objective_pairs

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @property
    def reference(self) -> list[float]:
        return [self.reference_point[m] for m in self.metrics]

    @property
    def scales(self) -> list[float]:
        """Hypervolume normalisation per objective (see :func:`metric_scales`)."""
        return metric_scales(self.metrics, self.reference)

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            self._storage = open_storage(self.storage_url, out_dir=self.out_dir)
        return self._storage

    def evaluator(self, seed: int) -> Any:
        """The evaluator of study seed ``seed`` (built once per seed)."""
        if seed not in self._evaluators:
            from compsearch.evaluators.evaluator import CompressionEvaluator

            self._evaluators[seed] = CompressionEvaluator(
                self.model, self.data, config=self.spec.evaluator.config(seed=seed), device=self.spec.evaluator.device
            )
        return self._evaluators[seed]

    def hypervolume(self, trials: Sequence[FrozenTrial]) -> float:
        """Normalised hypervolume of the feasible trials among ``trials``."""
        points = [p for p in (trial_point(t) for t in trials) if p is not None]
        return hypervolume(points, self.directions, self.reference, self.scales)


# ---- preparation ----------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str))
    tmp.replace(path)


def _build_model(spec: StudySpec, data: Any) -> torch.nn.Module:
    from compsearch.evaluators.models import build_model

    kwargs = dict(spec.model.kwargs)
    kwargs.setdefault("num_classes", data.num_classes)
    kwargs.setdefault("in_chans", data.input_shape[0] if len(data.input_shape) > 1 else 1)
    return build_model(spec.model.name, checkpoint=spec.model.checkpoint, **kwargs)


def _base_model(spec: StudySpec, data: Any, out_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained base model: from the checkpoint, the run folder's cache, or trained now."""
    from compsearch.evaluators.models import model_hash, train_base_model

    with torch.random.fork_rng(devices=[]):  # initial weights from ``base.seed``: a new run folder trains the same base
        torch.manual_seed(spec.base.seed if spec.base is not None else 0)
        model = _build_model(spec, data)
    if spec.base is None:
        return model, {"source": "checkpoint", "path": spec.model.checkpoint, "hash": model_hash(model)}
    key = _digest({"model": spec.model.model_dump(mode="json"), "base": spec.base.model_dump(mode="json"),
                   "data": spec.data.model_dump(mode="json"), "torch": torch.__version__})[:16]
    path, meta_path = out_dir / BASE_DIR / f"{key}.pt", out_dir / BASE_DIR / f"{key}.json"
    if path.is_file() and meta_path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), _read_json(meta_path)
    stats = train_base_model(model, data, **spec.base.model_dump(), device=spec.evaluator.device)
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta = {"source": "trained", "key": key, "path": str(path), "hash": model_hash(model), **stats}
    _write_json(meta_path, meta)
    return model, meta


def resolve_reference_point(spec: StudySpec, uncompressed_cost: dict[str, float]) -> dict[str, float]:
    """The hypervolume reference point: the spec's entries, else the defaults.

    Defaults: ``accuracy`` -> ``constraints.min_accuracy`` if given, else 0 (the accuracy
    floor); ``size_bits`` / ``size_kb`` / ``bops`` -> the uncompressed model's value;
    ``compression_ratio`` -> 1; ``sparsity`` -> 0. ``loss`` and ``proxy`` have no default.

    Raises:
        SpecError: an objective without a default is missing from ``[reference_point]``.
    """
    out: dict[str, float] = {}
    for metric in (m for m, _ in spec.objective_pairs):
        if metric in spec.reference_point:
            out[metric] = float(spec.reference_point[metric])
        elif metric == "accuracy":
            out[metric] = float(spec.constraints.get("min_accuracy", 0.0))
        elif metric in _COST_METRICS:
            out[metric] = float(uncompressed_cost[metric])
        elif metric in _REFERENCE_DEFAULTS:
            out[metric] = _REFERENCE_DEFAULTS[metric]
        else:
            raise SpecError(f"reference_point.{metric}: objective {metric!r} has no default reference; give one")
    return out


def _check_resume(out_dir: Path, spec: StudySpec) -> None:
    previous = _read_json(out_dir / RUN_FILE).get("spec")
    if previous is None:
        return
    before = load_spec(previous).comparison_key()
    changed = sorted(k for k, v in spec.comparison_key().items() if before.get(k) != v)
    if changed:
        raise SpecError(
            f"{out_dir / RUN_FILE}: the run folder holds results of a spec with different {changed}; "
            f"resuming would mix incomparable trials. Use another --out folder or restore the spec"
        )


def prepare(spec: StudySpec | str | Path | dict[str, Any], out_dir: str | Path, *, storage: str | None = None) -> RunContext:
    """Load data, obtain the trained base model, build the space and the reference point
    (and set torch's CPU threads when the spec gives ``evaluator.threads``).

    Args:
        spec: a spec, a TOML path or a mapping.
        out_dir: the run folder (created).
        storage: overrides ``spec.storage``.

    Raises:
        SpecError: invalid spec, or the folder holds a run of an incomparable spec.
    """
    from compsearch.evaluators.datasets import load_dataset
    from compsearch.spaces import get_space

    spec = load_spec(spec)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, spec)
    if spec.evaluator.threads is not None:
        torch.set_num_threads(spec.evaluator.threads)
    data = load_dataset(spec.data.name, seed=spec.data.seed, **spec.data.options)
    model, base_info = _base_model(spec, data, out)
    previous_storage = _read_json(out / RUN_FILE).get("storage")
    url = storage or spec.storage or previous_storage or default_storage(out)
    ctx = RunContext(spec=spec, out_dir=out, data=data, model=model, base_info=base_info,
                     space=None, reference_point={}, storage_url=url)
    ev = ctx.evaluator(spec.seeds[0])
    ctx.space = get_space(spec.space.name, ev.units, **spec.space.space_kwargs())
    ctx.reference_point = resolve_reference_point(spec, ev.cost({}))
    return ctx


# ---- one trial, one study --------------------------------------------------------


def make_objective(ctx: RunContext, seed: int | None = None) -> Callable[[optuna.Trial], Any]:
    """The Optuna objective of study seed ``seed`` (default: the first seed).

    Each trial decodes the sampled params into a policy, fine-tunes and measures it with
    the seed's evaluator, stores user attrs ``policy`` and ``metrics``, sets one
    ``trial.set_constraint`` per spec constraint, and returns the objective values.
    """
    from compsearch.evaluators.objective import optuna_objective

    seed = ctx.spec.seeds[0] if seed is None else seed
    return optuna_objective(ctx.space, ctx.evaluator(seed), ctx.objectives, constraints=ctx.spec.constraints)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    study.tell(trial, state=TrialState.FAIL)


def run_trial(study: optuna.Study, objective: Callable[[optuna.Trial], Any]) -> FrozenTrial:
    """Ask, evaluate and tell one trial; failures become FAILED trials with a reason.

    Diverged fine-tuning and out-of-memory errors are results (the study goes on);
    Ctrl-C is recorded as ``"interrupted"`` and re-raised; any other exception is an
    internal error, recorded as ``"interrupted by internal error: ..."`` and re-raised.
    """
    trial = study.ask()
    try:
        values = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except KeyboardInterrupt:
        _fail(study, trial, f"{INTERRUPTED} (KeyboardInterrupt)")
        raise
    except (FineTuneDiverged, RuntimeError, MemoryError) as e:
        if not isinstance(e, FineTuneDiverged) and not _is_oom(e):
            _fail(study, trial, f"{INTERRUPTED} by internal error: {type(e).__name__}: {e}")
            raise
        _fail(study, trial, f"{'out of memory' if _is_oom(e) else 'diverged'}: {type(e).__name__}: {e}")
    except Exception as e:
        _fail(study, trial, f"{INTERRUPTED} by internal error: {type(e).__name__}: {e}")
        raise
    else:
        study.tell(trial, values)
    return study._storage.get_trial(trial._trial_id)


def mark_interrupted(study: optuna.Study) -> int:
    """Mark RUNNING/WAITING trials (left by a killed process) FAILED ``"interrupted"``; returns how many.

    Only call this when no other process works on the study.
    """
    storage = study._storage
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for t in stale:
        storage.set_trial_user_attr(t._trial_id, FAIL_REASON_ATTR, f"{INTERRUPTED} (process ended while the trial ran)")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)


def open_study(ctx: RunContext, strategy: str, seed: int, n_trials: int) -> optuna.Study:
    """Create or load the study ``<strategy>-s<seed>`` with the strategy's sampler."""
    from compsearch.search.registry import get_strategy

    sampler = get_strategy(
        strategy, space=ctx.space, seed=seed, evaluator=ctx.evaluator(seed), objectives=ctx.objectives,
        constraints=ctx.spec.constraints, reference_point=ctx.reference_point, n_trials=n_trials,
        **ctx.spec.strategy_options.get(strategy, {}),
    )
    study = optuna.create_study(
        study_name=study_name(strategy, seed), storage=ctx.storage, directions=ctx.directions,  # type: ignore[arg-type]
        sampler=sampler, load_if_exists=True,
    )
    for key, value in (("strategy", strategy), ("seed", seed), ("budget", n_trials)):
        study.set_user_attr(key, value)
    return study


def run_strategy_seed(
    ctx: RunContext,
    strategy: str,
    seed: int,
    n_trials: int,
    *,
    quiet: bool = True,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    recover: bool = True,
) -> optuna.Study:
    """Run (or resume) study ``<strategy>-s<seed>`` until it holds ``n_trials`` counted trials.

    Args:
        ctx: from :func:`prepare`.
        strategy: a registered strategy.
        seed: the study seed (sampler seed and evaluator seed).
        n_trials: the budget of counted trials.
        quiet: print nothing (else a progress bar for this study alone, when ``on_trial`` is None).
        on_trial: called after every finished trial (progress display).
        recover: mark trials left RUNNING by a killed run as interrupted first (False when
            other workers share the study).

    Returns:
        The study.
    """
    with quiet_optuna():
        study = open_study(ctx, strategy, seed, n_trials)
        if recover:
            mark_interrupted(study)
        objective = make_objective(ctx, seed)
        with contextlib.ExitStack() as stack:
            if on_trial is None and not quiet:
                from compsearch.studies.progress import RunProgress

                progress = stack.enter_context(RunProgress(ctx, [strategy], [seed], n_trials))
                on_trial = progress.on_trial
            while _budget_left(study, n_trials) > 0:
                trial = run_trial(study, objective)
                if on_trial is not None:
                    on_trial(study, trial)
    return study


def _budget_left(study: optuna.Study, n_trials: int) -> int:
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return n_trials - len(counted_trials(trials)) - running


# ---- baseline, run.json, the whole study -----------------------------------------------


def evaluate_baseline(ctx: RunContext, seed: int) -> dict[str, Any]:
    """Metrics of the uncompressed model fine-tuned with a candidate's budget (cached per seed)."""
    from compsearch.evaluators.objective import collect_metrics
    from compsearch.spaces import Policy

    path = ctx.out_dir / BASELINE_FILE
    cache = _read_json(path)
    if str(seed) not in cache:
        ev, identity = ctx.evaluator(seed), Policy()
        try:
            cache[str(seed)] = collect_metrics(ev, identity, ev.evaluate(identity))
        except FineTuneDiverged as e:
            cache[str(seed)] = {FAIL_REASON_ATTR: f"diverged: {e}"}
        _write_json(path, cache)
    return cache[str(seed)]


def _versions() -> dict[str, str]:
    import compsearch

    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
            "compsearch": compsearch.__version__, "platform": platform.platform()}


def _effective_spec(spec: StudySpec, out: Path, strategies: Sequence[str] | None,
                    trials: int | None, seeds: int | Sequence[int] | None) -> tuple[StudySpec, dict[str, Any]]:
    """The spec with CLI overrides; strategies and seeds of earlier sessions are kept."""
    data = spec.model_dump(mode="json")
    previous = _read_json(out / RUN_FILE).get("spec", {})
    if strategies is not None:
        data["strategies"] = list(strategies)
    if trials is not None:
        data["trials"] = trials
    if seeds is not None:
        data["seeds"] = seeds if isinstance(seeds, int) else list(seeds)
    return load_spec(data), previous


def _write_run(ctx: RunContext, previous: dict[str, Any], session: dict[str, Any]) -> None:
    record = _read_json(ctx.out_dir / RUN_FILE)
    spec = ctx.spec.model_dump(mode="json")
    for key in ("strategies", "seeds"):  # keep what earlier sessions ran, for the report
        spec[key] = list(dict.fromkeys([*previous.get(key, []), *spec[key]]))
    sessions = [s for s in record.get("sessions", []) if s.get("start") != session["start"]]
    record.update({
        "name": ctx.spec.name, "spec": spec, "storage": ctx.storage_url, "reference_point": ctx.reference_point,
        "objectives": [list(o) for o in ctx.objectives], "scales": ctx.scales, "budget_rule": BUDGET_RULE,
        "base": ctx.base_info, "versions": _versions(), "sessions": [*sessions, session],
    })
    _write_json(ctx.out_dir / RUN_FILE, record)


def run_study(
    spec: StudySpec | str | Path | dict[str, Any],
    out_dir: str | Path,
    *,
    strategies: Sequence[str] | None = None,
    trials: int | None = None,
    seeds: int | Sequence[int] | None = None,
    quiet: bool = False,
    workers: int = 1,
    backend: str = "optuna",
    address: str | None = None,
    storage: str | None = None,
) -> RunContext:
    """Run (or resume) every strategy x seed study of ``spec`` in ``out_dir``.

    Args:
        spec: a spec, a TOML path or a mapping.
        out_dir: the run folder.
        strategies, trials, seeds: override the spec's (a seed count or a list).
        quiet: print nothing; else one rich progress bar per strategy.
        workers: worker processes on the shared storage (> 1 uses
            ``compsearch.studies.backends.run_workers``).
        backend: ``"optuna"`` or ``"ray"`` (``compsearch.studies.backends.run_ray``).
        address: Ray cluster address (``"auto"`` joins a running one).
        storage: overrides the spec's storage URL. Default: the spec's, else the one an
            earlier session of this folder used, else ``sqlite:///<out>/studies.db`` (one
            process) or ``journal:///<out>/journal.log`` (several workers or Ray).

    Returns:
        The run context (its ``storage`` holds the studies).

    Raises:
        SpecError, ConfigError: bad spec or arguments (before any evaluation).
        KeyboardInterrupt: after recording the trial in flight as FAILED ``"interrupted"``.
    """
    if backend not in ("optuna", "ray"):
        raise SpecError(f"backend={backend!r} is unknown; allowed: ['optuna', 'ray']")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SpecError(f"workers={workers!r} must be an integer >= 1")
    base = load_spec(spec)
    out = Path(out_dir).expanduser().resolve()
    effective, previous = _effective_spec(base, out, strategies, trials, seeds)
    if storage is None and effective.storage is None and not _read_json(out / RUN_FILE).get("storage") and (
        workers > 1 or backend == "ray"
    ):
        from compsearch.studies.backends import default_journal_storage

        storage = default_journal_storage(out)  # several processes: a journal file, not SQLite
    ctx = prepare(effective, out, storage=storage)
    session = {"start": _now(), "end": None, "status": "running", "strategies": effective.strategies,
               "trials": effective.trials, "seeds": effective.seeds, "workers": workers, "backend": backend}
    _write_run(ctx, previous, session)
    try:
        for seed in effective.seeds:
            evaluate_baseline(ctx, seed)
        _dispatch(ctx, quiet=quiet, workers=workers, backend=backend, address=address)
    except KeyboardInterrupt:
        _write_run(ctx, previous, {**session, "end": _now(), "status": "interrupted"})
        raise
    except BaseException:
        _write_run(ctx, previous, {**session, "end": _now(), "status": "error"})
        raise
    _write_run(ctx, previous, {**session, "end": _now(), "status": "complete"})
    return ctx


def _dispatch(ctx: RunContext, *, quiet: bool, workers: int, backend: str, address: str | None) -> None:
    spec = ctx.spec
    jobs = [(s, seed) for s in spec.strategies for seed in spec.seeds]
    if backend == "ray":
        from compsearch.studies.backends import run_ray

        run_ray(ctx, jobs=jobs, n_trials=spec.trials, workers=workers, address=address, quiet=quiet)
        return
    if workers > 1:
        from compsearch.studies.backends import run_workers

        run_workers(ctx, jobs=jobs, n_trials=spec.trials, workers=workers, quiet=quiet)
        return
    with contextlib.ExitStack() as stack:
        on_trial = None
        if not quiet:
            from compsearch.studies.progress import RunProgress

            on_trial = stack.enter_context(RunProgress(ctx, spec.strategies, spec.seeds, spec.trials)).on_trial
        for strategy, seed in jobs:
            run_strategy_seed(ctx, strategy, seed, spec.trials, quiet=True, on_trial=on_trial)


__all__ = [
    "BUDGET_RULE",
    "RunContext",
    "evaluate_baseline",
    "make_objective",
    "mark_interrupted",
    "open_study",
    "prepare",
    "resolve_reference_point",
    "run_strategy_seed",
    "run_study",
    "run_trial",
]
