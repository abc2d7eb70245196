"""Run a study: every strategy x seed as one Optuna study, all judged by one evaluator.

``run_study(spec, out_dir)`` does, in order:

1. Validate everything (:func:`compsearch.studies.validate.check_run`): the spec's values,
   the device, the storage URL, the run folder, the checkpoint, the space's choices --
   before any work, without training.
2. Refuse to resume a folder of an incomparable spec, or a storage that was emptied or
   replaced since the last session (:mod:`compsearch.studies.runfile`); repair a journal
   whose last record was cut short.
3. :func:`~compsearch.studies.run.prepare` the frozen run: data (split fixed by
   ``data.seed``), the base model (trained once, cached in ``<out>/base/``), the space,
   the hypervolume reference point.
4. Evaluate the uncompressed baseline (the identity policy) once per seed with the same
   fine-tuning budget as a candidate; stored in ``<out>/baseline.json``.
5. Run every job ``(strategy, seed)`` -- study ``<strategy>-s<seed>`` -- on a host
   (:mod:`compsearch.studies.hosts`) until it holds ``trials`` counted trials (budget rule
   in :mod:`compsearch.studies.results`). The evaluator's seed is the study seed, so
   every strategy sees the same evaluator for a given seed.

Re-running resumes: COMPLETE trials are kept; trials left RUNNING by a killed run are
marked FAILED (``fail_reason = "interrupted"``) and re-run; every strategy continues its
proposal sequence (samplers are seeded per trial number). A diverged fine-tune or
out-of-memory becomes a FAILED trial with its reason and the study goes on; Ctrl-C
records the trial in flight as FAILED ``"interrupted"`` and stops. ``<out>/run.json``
holds the effective spec, the storage reference, versions, each study's trial count and
the start/end time of every session (:mod:`compsearch.studies.runfile`).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch

from compsearch import record
from compsearch.errors import FineTuneDiverged, SpecError
from compsearch.plugins import loaded_plugins
from compsearch.studies import runfile
from compsearch.studies.hosts import get_host
from compsearch.studies.results import study_name
from compsearch.studies.run import Run, prepare, resolve_reference_point
from compsearch.studies.spec import StudySpec, load_spec
from compsearch.studies.storage import open_storage
from compsearch.studies.summary import evaluate_final_points

BASELINE_FILE = "baseline.json"
BUDGET_RULE = (
    "budget = COMPLETE (including trials that reused an equivalent policy's evaluation) + PRUNED + FAILED "
    "trials whose fail_reason does not start with 'interrupted'; interrupted and internal-error trials are re-run"
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def evaluate_baseline(run: Run, seed: int) -> dict[str, Any]:
    """Metrics of the uncompressed model fine-tuned with a candidate's budget (cached per seed)."""
    from compsearch.evaluators.objective import collect_metrics
    from compsearch.spaces import Policy

    path = run.out_dir / BASELINE_FILE
    cache = runfile.read_json(path)
    if str(seed) not in cache:
        ev, identity = run.evaluator(seed), Policy()
        try:
            cache[str(seed)] = collect_metrics(ev, identity, ev.evaluate(identity))
        except FineTuneDiverged as e:
            cache[str(seed)] = {record.FAIL_REASON_ATTR: f"diverged: {e}"}
        runfile.write_json(path, cache)
    return dict(cache[str(seed)])


def _versions() -> dict[str, str]:
    import compsearch

    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
            "compsearch": compsearch.__version__, "platform": platform.platform()}


def effective_spec(spec: StudySpec, *, strategies: Sequence[str] | None = None, trials: int | None = None,
                   seeds: int | Sequence[int] | None = None, plugins: Sequence[str] | None = None) -> StudySpec:
    """``spec`` with the command line's overrides (validated like the spec itself; an error
    about an overridden key names its flag, e.g. ``--strategies``). ``plugins`` (``--plugin``)
    are added to the spec's, so run.json records them and worker processes import them."""
    data = spec.model_dump(mode="json")
    if plugins:
        data["plugins"] = list(dict.fromkeys([*spec.plugins, *plugins]))
    if strategies is not None:
        data["strategies"] = list(strategies)
    if trials is not None:
        data["trials"] = trials
    if seeds is not None:
        data["seeds"] = seeds if isinstance(seeds, int) else list(seeds)
    try:
        return load_spec(data)
    except SpecError as e:
        raise _name_flags(e, [k for k, v in (("strategies", strategies), ("trials", trials), ("seeds", seeds),
                                             ("plugins", plugins)) if v is not None]) from None


#: The command-line flag of each spec key it overrides (errors about them name the flag).
FLAGS = {"strategies": "--strategies", "trials": "--trials", "seeds": "--seeds", "plugins": "--plugin"}


def _name_flags(error: SpecError, overridden: Sequence[str]) -> SpecError:
    """``error`` with every line about an ``overridden`` key naming its flag instead
    (``strategies[1]: unknown strategy 'x'`` -> ``--strategies: unknown strategy 'x'``)."""
    pattern = re.compile(rf"^(\s*)({'|'.join(map(re.escape, overridden))})(\[\d+\])?(\.[^:]*)?:" if overridden else r"$^")
    lines = str(error).split("\n")
    renamed = [pattern.sub(lambda m: f"{m[1]}{FLAGS[m[2]]}:", line) for line in lines]
    if renamed == lines:
        return error
    return SpecError("\n".join(renamed).replace("invalid study spec:", "invalid study spec or command-line flag:", 1))


def unit_table(space: Any) -> list[dict[str, Any]]:
    """The model's units in network order (execution order of the traced forward), for
    run.json: ``name``, ``block``, ``params``, ``out_channels`` and whether the space
    searches it; the report draws per-layer policies in this order without the model."""
    searched = {u.name for u in getattr(space, "units", space.all_units)}
    return [{"name": u.name, "block": u.block, "params": u.params, "out_channels": u.out_channels,
             "searched": u.name in searched} for u in sorted(space.all_units, key=lambda u: u.depth)]


def _write_session(run: Run, session: dict[str, Any]) -> None:
    previous = runfile.read(run.out_dir)
    spec = run.spec.model_dump(mode="json")
    for key in ("strategies", "seeds"):  # keep what earlier sessions ran, for the report
        spec[key] = list(dict.fromkeys([*previous.get("spec", {}).get(key, []), *spec[key]]))
    sessions = [s for s in previous.get("sessions", []) if s.get("start") != session["start"]]
    runfile.update(
        run.out_dir, name=run.spec.name, spec=spec, storage=runfile.storage_record(run.storage_url, run.out_dir),
        run_id=run.run_id, reference_point=dict(run.reference_point), objectives=[list(o) for o in run.objectives],
        scales=run.scales, budget_rule=BUDGET_RULE, base=dict(run.base_info), versions=_versions(),
        plugins=loaded_plugins(), units=unit_table(run.space),
        sessions=[*sessions, session],
    )


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
    test: bool = True,
) -> Run:
    """Run (or resume) every strategy x seed study of ``spec`` in ``out_dir``.

    Args:
        spec: a spec, a TOML path or a mapping.
        out_dir: the run folder.
        strategies, trials, seeds: override the spec's (a seed count or a list).
        quiet: print nothing; else one rich progress bar per strategy.
        workers: processes (``optuna``), concurrent Tune trials (``ray``) or NNI trials (``nni``).
        backend: ``"optuna"``, ``"ray"`` or ``"nni"`` (see :mod:`compsearch.studies.hosts`).
        address: Ray cluster address (``"auto"`` joins a running one).
        storage: a storage URL outside the run folder (the command line's ``--storage``).
            Default: the one run.json records, else the spec's choice inside the run folder
            (SQLite for one process, a journal file for several; see
            :mod:`compsearch.studies.storage`).
        test: when every study is done, evaluate each strategy's Pareto points (and the
            baseline) once on the test split into ``test_eval.json``
            (:func:`~compsearch.studies.summary.evaluate_final_points`), so the report
            reads a finished run without building the model.

    Returns:
        The run (its ``storage`` holds the studies).

    Raises:
        SpecError, ConfigError: bad spec, arguments, environment, or a storage that lost
            trials (before any evaluation).
        KeyboardInterrupt: after recording the trial in flight as FAILED ``"interrupted"``.
    """
    from compsearch.studies.validate import check_run

    host = get_host(backend, workers=workers, address=address)
    out = Path(out_dir).expanduser().resolve()
    effective = effective_spec(load_spec(spec), strategies=strategies, trials=trials, seeds=seeds)
    check_run(effective, out, storage=storage, host=host)
    runfile.check_resume(out, effective)
    url = runfile.resolve_storage(out, effective, storage, several_processes=host.processes > 1)
    jobs = [(s, seed) for s in effective.strategies for seed in effective.seeds]
    out.mkdir(parents=True, exist_ok=True)
    runfile.run_id(out)
    runfile.check_studies(out, url, [study_name(s, seed) for s, seed in jobs])
    if url.startswith("journal://"):
        open_storage(url, out_dir=out, repair=True)  # a torn journal tail is cut off before anyone appends
    run = prepare(effective, out, storage=url)
    session = {"start": _now(), "end": None, "status": "running", "strategies": effective.strategies,
               "trials": effective.trials, "seeds": effective.seeds, "workers": workers, "backend": backend}
    _write_session(run, session)
    try:
        for seed in effective.seeds:
            evaluate_baseline(run, seed)
        host.run(run, jobs, quiet=quiet)
        if test:
            evaluate_final_points(run)  # the only use of the test split; report and show then only read
    except KeyboardInterrupt:
        _write_session(run, {**session, "end": _now(), "status": "interrupted"})
        raise
    except BaseException:
        _write_session(run, {**session, "end": _now(), "status": "error"})
        raise
    runfile.record_counts(run.out_dir, run.storage, [study_name(s, seed) for s, seed in jobs])
    _write_session(run, {**session, "end": _now(), "status": "complete"})
    return run


__all__ = ["BASELINE_FILE", "BUDGET_RULE", "effective_spec", "evaluate_baseline", "prepare",
           "resolve_reference_point", "run_study"]
