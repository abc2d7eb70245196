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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compsearch.errors import CompsearchError, ConfigError, DataError
from compsearch.record import read_metrics, read_policy
from compsearch.studies.export_select import Selected, parse_best, parse_trial, select_trials
from compsearch.studies.summary import read_run, run_storage

EXPORT_DIR = "export"
METRICS_FILE = "metrics.json"
POLICY_FILE = "policy.json"
MODEL_FILE = "model.json"
EXPORTERS = ("dynamo", "torchscript")


class ExportMismatch(CompsearchError, ValueError):
    """The re-derived model does not reproduce the trial's recorded validation quality."""


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


def _rederive(run: Any, selected: Selected, *, verify: bool) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Evaluate the trial's policy again under its study seed: ``(evaluator, policy, result, recorded metrics)``."""
    from compsearch.spaces import Policy

    quality = run.spec.quality
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
    return ev, policy, result, recorded


def _quality(ev: Any, loaded: nn.Module, onnx_model: _OnnxModule | None, quality: str,
             reference: torch.Tensor, x_check: torch.Tensor) -> dict[str, Any]:
    """The exported model's validation and test quality (torch, onnxruntime) and its logit errors."""
    torch_q = _measure(ev.task, loaded, ev.device)
    loaded.cpu()
    onnx_q = _measure(ev.task, onnx_model, ev.device) if onnx_model is not None else None
    return {f"val_{quality}": torch_q["val"][quality], f"test_{quality}": torch_q["test"][quality],
            f"onnx_val_{quality}": onnx_q["val"][quality] if onnx_q else None,
            f"onnx_test_{quality}": onnx_q["test"][quality] if onnx_q else None,
            "max_abs_logit_error": {"torch": _max_error(loaded, reference, x_check),
                                    "onnxruntime": _max_error(onnx_model, reference, x_check) if onnx_model else None}}


def _latency(spec: Any, loaded: nn.Module, onnx_path: Path | None, example: torch.Tensor, *, batch: int | None,
             threads: int | None) -> dict[str, Any]:
    """Latency of torch eager (and onnxruntime) at batch 1 and the spec's batch; ``latency_ms`` is the spec's runtime's."""
    from compsearch.evaluators.latency import LatencyConfig, machine, measure_latency

    lat, batch = spec.latency, batch or spec.latency.batch
    config = LatencyConfig(runtimes=("onnxruntime", "torch") if onnx_path else ("torch",),
                           batch_sizes=tuple(sorted({1, batch})), threads=threads or lat.threads, warmup=lat.warmup,
                           repeats=lat.repeats)
    measured = measure_latency(loaded, onnx_path, example, config)
    main = f"{lat.runtime if onnx_path else 'torch'}/b{batch}"
    return {"latency": {k: {f: v for f, v in m.to_dict().items() if f != "machine"} for k, m in measured.items()},
            "latency_ms": measured[main].latency_ms, "latency_key": main, "machine": machine()}


def export_trial(run: Any, selected: Selected, folder: Path, *, verify: bool = True, exporter: str = "dynamo",
                 latency: bool = True, batch: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Re-derive ``selected``'s model with the prepared ``run`` and write its folder; returns metrics.json."""
    from compsearch.evaluators.bundle import ONNX, load_bundle, write_bundle
    from compsearch.evaluators.speedup import clone_model
    from compsearch.evaluators.unit_quant import from_compressed_units

    spec, quality = run.spec, run.spec.quality
    ev, policy, result, recorded = _rederive(run, selected, verify=verify)
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
                            meta={"policy": policy.to_json(), "trial": selected.label}, removed=policy.removed)
    loaded = load_bundle(folder, clone_model(run.model).cpu())
    onnx = manifest["onnx"]
    onnx_model = _OnnxModule(folder / ONNX, spec.latency.threads) if onnx and onnx["dynamic_batch"] else None
    metrics: dict[str, Any] = {
        "trial": selected.label, "study": selected.study, "number": selected.trial.number, "seed": selected.seed,
        "quality": quality, "weights": "re-derived", "verified": result.score == recorded.get(quality),
        "recorded": recorded, f"rederived_val_{quality}": result.score,
        **_quality(ev, loaded, onnx_model, quality, reference, x_check),
        "size_bits": recorded.get("size_bits"), "size_kb": recorded.get("size_kb"),
        "weights_bytes": manifest["weights_bytes"], "payload_bytes": manifest["payload_bytes"]["total"],
        "onnx_bytes": onnx["bytes"] if onnx else None,
        "removed_units": manifest["removed_units"], "masked_units": manifest["masked_units"],
        "removed_blocks": manifest.get("removed_blocks", {}),
    }
    if latency:
        metrics.update(_latency(spec, loaded, folder / ONNX if onnx else None, example, batch=batch, threads=threads))
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
