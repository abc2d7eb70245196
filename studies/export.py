"""Export trials of a finished run as deployable models (``compsearch export``).

:func:`export_run` reads a run folder (``run.json`` and the run's Optuna storage; no plugin
is imported to read it), picks trials (one ``--trial STUDY:NUMBER``, every Pareto point
``--pareto``, or the best one under bounds ``--best``), and writes one folder per trial,
``<run>/export/<study>-<number>/`` (or under ``out``):

* ``weights.pt``, ``model.onnx``, ``manifest.json``: the bundle
  (:func:`~compsearch.evaluators.bundle.write_bundle`): pruned channels physically removed
  where the graph allows, masked elsewhere (``manifest.json`` lists ``removed_units`` and
  ``masked_units`` with the reason of each), weights packed at their bit width
  (:mod:`compsearch.evaluators.packing`, ``torch.load(weights_only=True)``), ONNX with QDQ
  int8 for units at <= 8 bits and float elsewhere;
* ``policy.json``: the trial's policy;
* ``model.json``: how to rebuild the architecture (:func:`load_compressed` reads it);
* ``metrics.json``: the exported model's own measured validation and test quality (torch,
  and onnxruntime), its largest logit difference from the evaluator's compressed model,
  the recorded trial metrics, and its latency (median with IQR and MAD, torch eager and
  onnxruntime, batch 1 and the spec's ``[latency] batch``, ``[latency] threads``; the
  machine).

**The weights are re-derived**: the run keeps no fine-tuned weights, so the trial is
evaluated again with its own policy under its study's seed and the run's evaluator
configuration (the fine-tune is seeded, so this is deterministic on the same software and
thread count), and the re-derived validation quality must equal the recorded one exactly,
else :class:`ExportMismatch` (``verify=False`` / ``--no-verify`` exports anyway and says so
in ``metrics.json``).

Rebuilding the model needs the model's code: a run whose spec names ``plugins`` is exported
only when they are given (``plugins=`` / ``--plugin``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from compsearch.errors import CompsearchError, ConfigError, DataError
from compsearch.metrics import Constraint, pareto_indices
from compsearch.record import is_feasible, read_fail_reason, read_metrics, read_policy
from compsearch.studies.results import load_studies, parse_study_name, study_name
from compsearch.studies.summary import canonical_key, read_run, run_storage, stored_constraints

EXPORT_DIR = "export"
METRICS_FILE = "metrics.json"
POLICY_FILE = "policy.json"
MODEL_FILE = "model.json"
EXPORTERS = ("dynamo", "torchscript")


class ExportMismatch(CompsearchError, ValueError):
    """The re-derived model does not reproduce the trial's recorded validation quality."""


@dataclass(frozen=True)
class Selected:
    """A trial chosen for export: its study, seed and frozen trial."""

    study: str
    seed: int
    trial: FrozenTrial

    @property
    def label(self) -> str:
        return f"{self.study}:{self.trial.number}"


# ---- choosing trials ------------------------------------------------------------------------


def parse_trial(text: str) -> tuple[str, int]:
    """``"random-s0:3"`` -> ``("random-s0", 3)``; a malformed value raises naming ``--trial``."""
    study, sep, number = str(text).rpartition(":")
    if not sep or not study or not number.isdigit():
        raise ConfigError(f"--trial {text!r}: give STUDY:NUMBER, e.g. random-s0:3 (studies: compsearch show RUN)")
    return study, int(number)


_BOUND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|=)\s*([-+0-9.eE]+)\s*$")


def parse_best(text: str) -> tuple[Constraint, ...]:
    """Bounds of ``--best``: comma-separated ``METRIC<=X`` / ``METRIC>=X``, or the spec's
    constraint keys ``max_METRIC=X`` / ``min_METRIC=X`` (e.g. ``"size_kb<=20,accuracy>=0.9"``
    or ``"min_accuracy=0.9"``)."""
    out: dict[str, float] = {}
    for part in (p for p in str(text).split(",") if p.strip()):
        m = _BOUND.match(part)
        if m is None:
            raise ConfigError(f"--best {text!r}: cannot read {part.strip()!r}; give METRIC<=X, METRIC>=X, "
                              f"max_METRIC=X or min_METRIC=X, comma-separated (e.g. 'size_kb<=20,accuracy>=0.9')")
        name, op, value = m.groups()
        try:
            bound = float(value)
        except ValueError:
            raise ConfigError(f"--best {text!r}: {value!r} is not a number") from None
        if op == "=" and not name.startswith(("max_", "min_")):
            raise ConfigError(f"--best {text!r}: {part.strip()!r} needs max_/min_ before the metric, or <= / >=")
        out[name if op == "=" else f"{'max' if op == '<=' else 'min'}_{name}"] = bound
    if not out:
        raise ConfigError(f"--best {text!r} is empty; e.g. --best 'size_kb<=20'")
    return stored_constraints(out)


def _studies(run_dir: Path, run: Mapping[str, Any], storage: str | None) -> dict[str, tuple[int, list[FrozenTrial]]]:
    from compsearch.studies.storage import open_storage

    found = load_studies(open_storage(run_storage(dict(run), run_dir, storage), out_dir=run_dir))
    return {study_name(s, seed): (seed, trials) for (s, seed), trials in sorted(found.items())}


def select_trials(run_dir: str | Path, *, trial: str | None = None, pareto: bool = False, best: str | None = None,
                  storage: str | None = None) -> list[Selected]:
    """The trials to export: exactly one of ``trial`` (``"STUDY:NUMBER"``), ``pareto`` (the
    feasible non-dominated trials of every study, one per equivalent policy) or ``best``
    (:func:`parse_best`: the feasible trial with the highest validation quality satisfying
    the bounds; ties go to the smaller ``size_kb``, then the first study and trial). Studies
    of methods that train their own weights (``compsearch gates``) are left out: export
    re-derives weights with the evaluator.

    Raises:
        ConfigError: not exactly one choice, an unknown study or trial, a trial that did not
            complete, or no trial within the bounds (the messages name the flag).
    """
    if sum([trial is not None, pareto, best is not None]) != 1:
        raise ConfigError("choose the trials with exactly one of --trial STUDY:NUMBER, --pareto or --best CONSTRAINT")
    out_dir = Path(run_dir)
    run, spec = read_run(out_dir)
    studies = _studies(out_dir, run, storage)
    methods = {m for m in run.get("methods", []) if m not in spec.strategies}  # e.g. gates: not the evaluator's weights
    derivable = {name: v for name, v in studies.items() if (parse_study_name(name) or ("", 0))[0] not in methods}
    if trial is not None:
        study = parse_trial(trial)[0]
        if study in studies and study not in derivable:
            raise ConfigError(f"--trial {trial!r} comes from the {study.rsplit('-s', 1)[0]!r} method, which trains its "
                              f"own weights; export re-derives a strategy trial's weights with the evaluator only "
                              f"(strategy studies: {sorted(derivable)})")
        return [_one(trial, studies)]
    studies = derivable
    directions = [d for _, d in run["objectives"]]
    if pareto:
        chosen = []
        for name, (seed, trials) in studies.items():
            pool = [t for t in trials if is_feasible(t)]
            seen: set[str] = set()
            for i in sorted(pareto_indices([list(t.values) for t in pool], directions)) if pool else []:
                if canonical_key(pool[i]) not in seen:
                    seen.add(canonical_key(pool[i]))
                    chosen.append(Selected(name, seed, pool[i]))
        if not chosen:
            raise ConfigError(f"--pareto: run {str(out_dir)!r} has no feasible COMPLETE trial")
        return chosen
    return [_best(str(best), studies, spec.quality)]


def _one(text: str, studies: Mapping[str, tuple[int, list[FrozenTrial]]]) -> Selected:
    name, number = parse_trial(text)
    if name not in studies:
        raise ConfigError(f"--trial {text!r}: no study {name!r} in this run; studies: {sorted(studies)}")
    seed, trials = studies[name]
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise ConfigError(f"--trial {text!r}: study {name!r} has no trial {number} (trials 0..{len(trials) - 1})")
    if found.state != TrialState.COMPLETE:
        why = read_fail_reason(found)
        raise ConfigError(f"--trial {text!r} is {found.state.name}{f' ({why})' if why else ''}; only COMPLETE trials "
                          f"have a model to export")
    return Selected(name, seed, found)


def _best(text: str, studies: Mapping[str, tuple[int, list[FrozenTrial]]], quality: str) -> Selected:
    bounds = parse_best(text)
    pool = [(name, seed, t, read_metrics(t)) for name, (seed, trials) in studies.items() for t in trials
            if is_feasible(t)]
    unknown = sorted({c.metric for c in bounds} - {k for *_, m in pool for k in m})
    if unknown and pool:
        raise ConfigError(f"--best {text!r}: the trials record no metric {unknown}; recorded: {sorted(pool[0][3])}")
    ok = [p for p in pool if all(c.satisfied(p[3]) for c in bounds)]
    if not ok:
        raise ConfigError(f"--best {text!r}: none of the {len(pool)} feasible trials satisfies it; relax the bounds")
    name, seed, t, _ = min(ok, key=lambda p: (-p[3][quality], p[3].get("size_kb", 0.0), p[0], p[2].number))
    return Selected(name, seed, t)


# ---- re-deriving and writing one trial ---------------------------------------------------------


def _check_plugins(spec: Any, plugins: Sequence[str], run_dir: Path) -> None:
    missing = [p for p in spec.plugins if p not in plugins]
    if missing:
        flags = " ".join(f"--plugin {p}" for p in missing)
        raise ConfigError(f"run {str(run_dir)!r} builds its model with plugins {missing} (run.json spec.plugins); "
                          f"export rebuilds the model, so pass {flags} (Python: plugins={missing!r})")


def _check_base(run: Mapping[str, Any], run_dir: Path) -> None:
    base = run.get("base") or {}
    if base.get("source") == "trained" and base.get("path") and not (run_dir / base["path"]).is_file():
        raise DataError(f"the run's trained base model {base['path']!r} is missing from {str(run_dir)!r}; export "
                        f"re-derives every trial from it")


class _OnnxModule(nn.Module):
    """An onnxruntime session behind ``nn.Module.forward`` (so a task can measure it)."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        from compsearch.evaluators.onnx_export import ort_session

        self.session = ort_session(path, threads=threads)
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # tasks read the device from a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from compsearch.evaluators.onnx_export import run_onnx

        return run_onnx(self.session, x.detach().cpu().float()).to(x.device)


def _check_inputs(ev: Any) -> torch.Tensor:
    data = getattr(ev.task, "data", None)
    x = getattr(data, "x_val", None)
    if isinstance(x, torch.Tensor):
        return x[:512].detach().cpu()
    return ev.task.example_input().detach().cpu()


def _max_error(model: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        got = model(x)
    return float((got.float().cpu() - reference).abs().max())


def _measure(task: Any, model: nn.Module, device: Any) -> dict[str, dict[str, float]]:
    return {split: task.measure(model.to(device) if not isinstance(model, _OnnxModule) else model, split)
            for split in ("val", "test")}


def export_trial(run: Any, selected: Selected, folder: Path, *, verify: bool = True, exporter: str = "dynamo",
                 latency: bool = True, batch: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Re-derive ``selected``'s model with the prepared ``run`` and write its folder; returns metrics.json."""
    from compsearch.evaluators.bundle import ONNX, load_bundle, write_bundle
    from compsearch.evaluators.latency import LatencyConfig, machine, measure_latency
    from compsearch.evaluators.speedup import clone_model
    from compsearch.evaluators.unit_quant import from_compressed_units
    from compsearch.spaces import Policy

    spec, quality = run.spec, run.spec.quality
    recorded = read_metrics(selected.trial)
    stored = read_policy(selected.trial)
    policy = Policy.from_dict(stored) if stored else Policy()
    ev = run.evaluator(selected.seed)
    result = ev.evaluate(policy)
    if result.score != recorded.get(quality) and verify:
        raise ExportMismatch(
            f"trial {selected.label}: the re-derived model's validation {quality} {result.score!r} differs from the "
            f"recorded {recorded.get(quality)!r}; the fine-tune is not reproducible here (another torch version, "
            f"thread count or device than the run's?). Export on the run's machine, or pass --no-verify "
            f"(verify=False) to export the re-derived model anyway")
    x_check = _check_inputs(ev)
    ev.model.eval()
    with torch.no_grad():
        reference = ev.model(x_check.to(ev.device)).float().cpu()
    units = from_compressed_units(ev.compressed_units(), policy)
    plain = clone_model(run.model).cpu()
    plain.load_state_dict({k: v.detach().cpu() for k, v in ev.model.state_dict().items()})
    example = ev.task.example_input().detach().cpu()
    folder.mkdir(parents=True, exist_ok=True)
    manifest = write_bundle(plain, units, example[:2], folder, dynamo=exporter == "dynamo",
                            meta={"policy": policy.to_json(), "trial": selected.label, "format_note": "compsearch export"})
    loaded = load_bundle(folder, clone_model(run.model).cpu())
    onnx_model = _OnnxModule(folder / ONNX, spec.latency.threads) if manifest["onnx"] and manifest["onnx"]["dynamic_batch"] else None
    torch_q = _measure(ev.task, loaded, ev.device)
    loaded.cpu()
    onnx_q = _measure(ev.task, onnx_model, ev.device) if onnx_model is not None else None
    metrics: dict[str, Any] = {
        "trial": selected.label, "study": selected.study, "number": selected.trial.number, "seed": selected.seed,
        "quality": quality, "weights": "re-derived", "verified": result.score == recorded.get(quality),
        "recorded": recorded, f"rederived_val_{quality}": result.score,
        f"val_{quality}": torch_q["val"][quality], f"test_{quality}": torch_q["test"][quality],
        f"onnx_val_{quality}": onnx_q["val"][quality] if onnx_q else None,
        f"onnx_test_{quality}": onnx_q["test"][quality] if onnx_q else None,
        "max_abs_logit_error": {"torch": _max_error(loaded, reference, x_check),
                                "onnxruntime": _max_error(onnx_model, reference, x_check) if onnx_model else None},
        "size_bits": recorded.get("size_bits"), "size_kb": recorded.get("size_kb"),
        "weights_bytes": manifest["weights_bytes"], "payload_bytes": manifest["payload_bytes"]["total"],
        "onnx_bytes": manifest["onnx"]["bytes"] if manifest["onnx"] else None,
        "removed_units": manifest["removed_units"], "masked_units": manifest["masked_units"],
    }
    if latency:
        lat = spec.latency
        config = LatencyConfig(runtimes=("onnxruntime", "torch") if manifest["onnx"] else ("torch",),
                               batch_sizes=tuple(sorted({1, batch or lat.batch})), threads=threads or lat.threads,
                               warmup=lat.warmup, repeats=lat.repeats)
        measured = measure_latency(loaded, folder / ONNX if manifest["onnx"] else None, example, config)
        main = f"{lat.runtime if manifest['onnx'] else 'torch'}/b{batch or lat.batch}"
        metrics.update(latency={k: {f: v for f, v in m.to_dict().items() if f != "machine"} for k, m in measured.items()},
                       latency_ms=measured[main].latency_ms, latency_key=main, machine=machine())
    (folder / POLICY_FILE).write_text(policy.to_json(indent=2), encoding="utf-8")
    (folder / MODEL_FILE).write_text(json.dumps(_model_record(spec, run), indent=2, sort_keys=True), encoding="utf-8")
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return metrics


def _model_record(spec: Any, run: Any) -> dict[str, Any]:
    """How :func:`load_compressed` rebuilds the architecture (a built-in or timm model; agents: pass ``model=``)."""
    if spec.model is None:
        return {"builder": None, "plugins": list(spec.plugins), "note": "an agent's acting network, which model.json cannot rebuild"}
    kwargs = dict(spec.model.kwargs)
    kwargs.setdefault("num_classes", run.data.num_classes)
    kwargs.setdefault("in_chans", run.data.input_shape[0] if len(run.data.input_shape) > 1 else 1)
    return {"builder": "compsearch.evaluators.models.build_model", "name": spec.model.name, "kwargs": kwargs,
            "plugins": list(spec.plugins)}


def export_run(run_dir: str | Path, *, trial: str | None = None, pareto: bool = False, best: str | None = None,
               out: str | Path | None = None, plugins: Sequence[str] = (), storage: str | None = None,
               verify: bool = True, exporter: str = "dynamo", latency: bool = True, batch: int | None = None,
               threads: int | None = None) -> list[dict[str, Any]]:
    """Export trials of a finished run (module docstring); returns each folder's metrics.json.

    Args:
        run_dir: the run folder.
        trial, pareto, best: which trials (:func:`select_trials`; exactly one).
        out: parent folder of the trial folders (default ``<run_dir>/export``).
        plugins: plugin modules already imported (``--plugin``); must cover the spec's ``plugins``.
        storage: the storage URL when the run's needs a password.
        verify: fail with :class:`ExportMismatch` when the re-derived validation quality
            differs from the recorded one.
        exporter: ``"dynamo"`` (torch.export) or ``"torchscript"`` (faster, deprecated in torch).
        latency: measure latency (torch eager and onnxruntime, batch 1 and ``batch``).
        batch, threads: override ``[latency] batch`` / ``threads`` of the spec.

    Raises:
        ConfigError: bad choice of trials, a missing plugin, a bad exporter.
        DataError: the base model is missing from the run folder.
        ExportMismatch: see ``verify``.
    """
    from compsearch.studies.run import prepare

    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter!r}; allowed: {list(EXPORTERS)}")
    run_dir = Path(run_dir).expanduser().resolve()
    chosen = select_trials(run_dir, trial=trial, pareto=pareto, best=best, storage=storage)
    stored, spec = read_run(run_dir)
    _check_plugins(spec, plugins, run_dir)
    _check_base(stored, run_dir)
    run = prepare(spec, run_dir, storage=run_storage(stored, run_dir, storage))
    parent = Path(out) if out is not None else run_dir / EXPORT_DIR
    return [export_trial(run, s, parent / f"{s.study}-{s.trial.number}", verify=verify, exporter=exporter,
                         latency=latency, batch=batch, threads=threads) for s in chosen]


def load_compressed(path: str | Path, *, model: nn.Module | None = None) -> nn.Module:
    """The exported model of a trial folder (eval mode): packed weights, pruned shapes, input quantization.

    Args:
        path: a folder written by :func:`export_run` (``compsearch export``).
        model: a freshly built model of the run's architecture; default: rebuilt from
            ``model.json`` (built-in and timm models; a plugin's model needs its plugin
            imported first, an agent's network must be passed).

    Raises:
        DataError: not an export folder, or the architecture cannot be rebuilt.
    """
    from compsearch.evaluators.bundle import load_bundle

    folder = Path(path)
    if model is None:
        record_path = folder / MODEL_FILE
        if not record_path.is_file():
            raise DataError(f"{str(record_path)!r} does not exist; pass a folder written by compsearch export, "
                            f"or model= (a freshly built model of the run's architecture)")
        rec = json.loads(record_path.read_text(encoding="utf-8"))
        if rec.get("builder") is None:
            raise DataError(f"{str(folder)!r} holds {rec.get('note', 'no model builder')}; pass model= (a network of "
                            f"the same architecture, e.g. the run's agent's policy network)")
        from compsearch.evaluators.models import build_model

        try:
            model = build_model(rec["name"], **rec["kwargs"])
        except (CompsearchError, ValueError, KeyError) as e:
            hint = f" (the run used plugins {rec['plugins']}: import them first)" if rec.get("plugins") else ""
            raise DataError(f"cannot rebuild model {rec['name']!r} from {str(record_path)!r}{hint}: {e}") from None
    return load_bundle(folder, model)



#: ``compsearch.export(run_dir, trial=..., out=...)``: the Python name of :func:`export_run`.
export = export_run


__all__ = ["EXPORTERS", "EXPORT_DIR", "METRICS_FILE", "MODEL_FILE", "POLICY_FILE", "ExportMismatch", "Selected", "export",
           "export_run", "export_trial", "load_compressed", "parse_best", "parse_trial", "select_trials"]
