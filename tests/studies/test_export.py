"""compsearch export: trials of a finished run re-derived, verified, written and loaded back."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
import torch

pytest.importorskip("torch_pruning", reason="Torch-Pruning is not installed (pip install torch-pruning)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'compsearch[export]')")

import compsearch  # noqa: E402
from compsearch.errors import ConfigError  # noqa: E402
from compsearch.evaluators.datasets import load_dataset  # noqa: E402
from compsearch.record import is_feasible, read_metrics, read_policy  # noqa: E402
from compsearch.studies import export as export_module  # noqa: E402
from compsearch.studies.export import (  # noqa: E402
    ExportMismatch,
    export_run,
    parse_best,
    parse_trial,
    select_trials,
)


def _trials(run):
    return optuna.load_study(study_name="random-s0", storage=run.storage).get_trials()


def _quantized_trial(run) -> str:
    """A COMPLETE random-s0 trial with at least one quantized unit (the tiny run's choices make most of them so)."""
    for t in _trials(run):
        policy = read_policy(t) or {}
        units = policy.get("units", policy)
        if t.state.name == "COMPLETE" and any(u.get("w_bits", 32) < 16 for u in units.values()):
            return f"random-s0:{t.number}"
    raise AssertionError("the tiny run has no quantized COMPLETE trial")


def test_an_exported_trial_reproduces_the_recorded_model(tiny_run, tmp_path) -> None:
    out, run = tiny_run
    label = _quantized_trial(run)
    trial = _trials(run)[parse_trial(label)[1]]
    recorded = read_metrics(trial)
    [m] = compsearch.export(out, trial=label, out=tmp_path, exporter="torchscript")
    folder = tmp_path / label.replace(":", "-")
    assert {p.name for p in folder.iterdir()} >= {"weights.pt", "model.onnx", "manifest.json", "policy.json",
                                                  "metrics.json", "model.json"}
    assert json.loads((folder / "metrics.json").read_text())["trial"] == label
    assert json.loads((folder / "policy.json").read_text()) == read_policy(trial)
    # same predictions as the trial recorded: the same validation accuracy exactly, in torch and onnxruntime
    assert m["verified"] and m["rederived_val_accuracy"] == recorded["accuracy"]
    assert m["val_accuracy"] == recorded["accuracy"] and m["onnx_val_accuracy"] == recorded["accuracy"]
    assert m["test_accuracy"] == m["onnx_test_accuracy"]
    assert m["max_abs_logit_error"]["torch"] <= 1e-4 and m["max_abs_logit_error"]["onnxruntime"] <= 1e-3
    # size honesty: the packed payload is size_bits / 8 within 5% (row bitmaps and byte rounding), plus the header
    assert abs(m["payload_bytes"] - m["size_bits"] / 8) <= 0.05 * m["size_bits"] / 8
    assert 0 < m["weights_bytes"] - m["payload_bytes"] < 8192
    # every pruned unit is either removed or masked with its reason
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["masked_units"] == m["masked_units"] and all("stays masked" in v for v in m["masked_units"].values())
    # latency of both runtimes at batch 1 (the spec's [latency] batch is 1), with its spread and the machine
    assert set(m["latency"]) == {"onnxruntime/b1", "torch/b1"} and m["latency_key"] == "onnxruntime/b1"
    assert m["latency_ms"] == m["latency"]["onnxruntime/b1"]["latency_ms"] > 0 and m["latency"]["torch/b1"]["iqr_ms"] >= 0
    assert m["machine"]["torch"] == torch.__version__
    # load_compressed rebuilds the architecture from model.json: its validation accuracy is the recorded one
    model = compsearch.load_compressed(folder)
    data = load_dataset("digits", seed=0)
    with torch.no_grad():
        acc = float((model(data.x_val).argmax(1) == data.y_val).float().mean())
    assert acc == recorded["accuracy"]


def test_pareto_and_best_choose_the_trials_by_hand(tiny_run) -> None:
    out, run = tiny_run
    trials = [t for t in _trials(run) if is_feasible(t)]
    # Pareto by hand: accuracy up, size_kb down; a point is dropped when another is at least as good in both and better in one
    front = sorted(t.number for t in trials if not any(
        o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in trials))
    chosen = [s.trial.number for s in select_trials(out, pareto=True) if s.study == "random-s0"]
    assert chosen and set(chosen) <= set(front)  # one per equivalent policy
    [best] = select_trials(out, best="size_kb<=12")
    pool = [(s, t) for s in ("nsga2-s0", "random-s0") for t in optuna.load_study(study_name=s, storage=run.storage).get_trials()
            if is_feasible(t) and read_metrics(t)["size_kb"] <= 12]
    assert read_metrics(best.trial)["accuracy"] == max(read_metrics(t)["accuracy"] for _, t in pool)
    assert [c.key for c in parse_best("size_kb<=20, accuracy>=0.9")] == ["max_size_kb", "min_accuracy"]
    assert [c.key for c in parse_best("min_accuracy=0.5")] == ["min_accuracy"]
    with pytest.raises(ConfigError, match=r"--best 'size_kb<<3': cannot read"):
        parse_best("size_kb<<3")
    with pytest.raises(ConfigError, match=r"--best 'size_kb<=0.001': none of the \d+ feasible trials"):
        select_trials(out, best="size_kb<=0.001")
    with pytest.raises(ConfigError, match=r"--trial 'random-s0': give STUDY:NUMBER"):
        select_trials(out, trial="random-s0")
    with pytest.raises(ConfigError, match=r"no study 'tpe-s0' in this run; studies: \['nsga2-s0', 'random-s0'\]"):
        select_trials(out, trial="tpe-s0:1")
    with pytest.raises(ConfigError, match="exactly one of --trial"):
        select_trials(out, trial="random-s0:0", pareto=True)


def test_a_mismatch_a_missing_plugin_and_a_missing_base_are_refused(tiny_run, tmp_path, monkeypatch) -> None:
    out, run = tiny_run
    label = _quantized_trial(run)
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("export"))
    stored = json.loads((copy / "run.json").read_text())
    stored["spec"]["plugins"] = ["my_models"]
    (copy / "run.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"builds its model with plugins \['my_models'\].*pass --plugin my_models"):
        export_run(copy, trial=label)
    stored["spec"]["plugins"] = []
    # a study of a method that trains its own weights (as `compsearch gates` records them) is not re-derivable
    stored["spec"]["strategies"], stored["methods"] = ["random"], ["nsga2"]
    (copy / "run.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"--trial 'nsga2-s0:0' comes from the 'nsga2' method.*\['random-s0'\]"):
        select_trials(copy, trial="nsga2-s0:0")
    assert {s.study for s in select_trials(copy, pareto=True)} == {"random-s0"}
    (copy / stored["base"]["path"]).unlink()
    with pytest.raises(compsearch.DataError, match="trained base model .* is missing"):
        export_run(copy, trial=label)
    # a recorded accuracy the re-derived model does not reproduce: refused, naming the trial and --no-verify
    real = export_module.read_metrics
    monkeypatch.setattr(export_module, "read_metrics", lambda t: {**real(t), "accuracy": real(t)["accuracy"] + 0.25})
    with pytest.raises(ExportMismatch, match=rf"trial {label}: the re-derived model's validation accuracy .* --no-verify"):
        export_run(out, trial=label, out=tmp_path / "x", latency=False, exporter="torchscript")


@pytest.mark.slow
def test_an_agent_trial_exports_with_its_return(tmp_path) -> None:
    from test_agent_study import SPEC

    from compsearch.studies.runner import run_study

    spec = {**SPEC, "strategies": ["random"], "trials": 2}
    spec.pop("strategy_options")
    run = run_study(spec, tmp_path / "run", quiet=True)
    done = [t for t in _trials(run) if t.state.name == "COMPLETE"]
    [m] = export_run(tmp_path / "run", trial=f"random-s0:{done[-1].number}", exporter="torchscript")
    # the policy task's quality: mean return over the validation seeds, the same episodes in torch and onnxruntime
    assert m["quality"] == "return" and m["verified"] and m["val_return"] == read_metrics(done[-1])["return"]
    assert m["onnx_val_return"] == m["val_return"] and m["onnx_test_return"] == m["test_return"]
    assert m["max_abs_logit_error"]["torch"] <= 1e-4 and m["max_abs_logit_error"]["onnxruntime"] <= 1e-3
    with pytest.raises(compsearch.DataError, match="agent's acting network.*pass model="):
        compsearch.load_compressed(tmp_path / "run" / "export" / m["trial"].replace(":", "-"))
    ev = run.evaluator(0)
    loaded = compsearch.load_compressed(tmp_path / "run" / "export" / m["trial"].replace(":", "-"), model=run.model)
    assert ev.task.measure(loaded, "val")["return"] == m["val_return"]


@pytest.mark.slow
def test_a_plugin_models_run_exports_with_its_plugin(tmp_path, monkeypatch, capsys) -> None:
    import sys

    from test_plugins import PLUGIN, SPEC, _forget

    from compsearch.cli import main

    (tmp_path / "my_compress_plugins.py").write_text(PLUGIN)
    (tmp_path / "mine.toml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    try:
        assert main(["run", "mine.toml", "--out", "run", "--quiet", "--no-test"]) == 0
        _forget("my_compress_plugins")  # a fresh process: nothing imported
        assert main(["export", "run", "--trial", "random-s0:0", "--exporter", "torchscript", "--no-latency"]) == 2
        assert "pass --plugin my_compress_plugins" in " ".join(capsys.readouterr().err.split())
        assert main(["export", "run", "--trial", "random-s0:0", "--exporter", "torchscript", "--no-latency",
                     "--plugin", "my_compress_plugins"]) == 0
        metrics = json.loads((tmp_path / "run" / "export" / "random-s0-0" / "metrics.json").read_text())
        assert metrics["verified"] and metrics["val_accuracy"] == metrics["recorded"]["accuracy"]
        assert compsearch.load_compressed(tmp_path / "run" / "export" / "random-s0-0")[0].in_channels == 1
    finally:
        sys.path[:] = path
        _forget("my_compress_plugins")
