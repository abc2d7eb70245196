"""latency_ms as an objective and a constraint: measured once per exported structure, cached in the run folder."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

pytest.importorskip("torch_pruning", reason="Torch-Pruning is not installed (pip install torch-pruning)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'compsearch[export]')")

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluators"))
from tiny_nets import make_cnn, make_data  # noqa: E402

from compsearch.errors import SpecError  # noqa: E402
from compsearch.evaluators.evaluator import CompressionEvaluator  # noqa: E402
from compsearch.evaluators.objective import directions, optuna_objective  # noqa: E402
from compsearch.evaluators.types import FineTuneConfig  # noqa: E402
from compsearch.record import is_feasible, read_constraints, read_metrics  # noqa: E402
from compsearch.spaces import Policy, UnitPolicy, get_space  # noqa: E402
from compsearch.studies.latency_objective import (  # noqa: E402
    LatencyEvaluator,
    RunLatencyCache,
    evaluator_factory,
    latency_config,
    needs_latency,
)
from compsearch.studies.spec import load_spec  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _evaluator(path: Path) -> LatencyEvaluator:
    return LatencyEvaluator(make_cnn(), make_data(), latency_config=latency_config("onnxruntime", 2, warmup=1, repeats=3),
                            cache=RunLatencyCache(path), finetune=FineTuneConfig(steps=1, batch_size=16), device="cpu")


def test_one_measurement_per_structure_and_the_cache_file(tmp_path) -> None:
    path = tmp_path / "latency.json"
    ev = _evaluator(path)
    # unit "4" at 4 or 6 bits: both int8 QDQ kernels, the same shapes -> one structure, one measurement
    a = ev.evaluate(Policy({"4": UnitPolicy(w_bits=4, a_bits=8)}))
    b = ev.evaluate(Policy({"4": UnitPolicy(w_bits=6, a_bits=8)}))
    assert ev.latency.measurements == 1 and a["latency_ms"] == b["latency_ms"] > 0
    assert a.metrics()["latency_iqr_ms"] >= 0 and "latency" in a.seconds
    ev.evaluate(Policy())  # fp32 kernels: another structure
    assert ev.latency.measurements == 2 and len(RunLatencyCache(path)) == 2
    entry = next(iter(RunLatencyCache(path)._data.values()))["onnxruntime/b2"]
    assert entry["batch"] == 2 and entry["repeats"] == 3 and {"iqr_ms", "mad_ms"} <= set(entry)
    assert {"cpu", "cores", "torch", "onnxruntime"} <= set(entry["machine"])
    # another process (a fresh evaluator on the same file) measures nothing it finds there
    again = _evaluator(path)
    again.evaluate(Policy({"4": UnitPolicy(w_bits=5, a_bits=8)}))
    assert again.latency.measurements == 0 and again.latency.cache.hits == 1


def test_the_signature_follows_the_exports_plan_and_processes_share_the_file(tmp_path) -> None:
    from compsearch.evaluators.latency import Latency, structure_signature
    from compsearch.evaluators.speedup import clone_model, plan_pruning, zero_pruned
    from compsearch.evaluators.unit_quant import pruned_rows, quantize_units
    from compsearch.studies.latency_objective import StructureLatency, kernel_bits

    data, model = make_data(), make_cnn()
    x = data.x_val[:2]
    policy = Policy({"4": UnitPolicy(w_bits=8, keep=0.5, structure="channel")})
    units = quantize_units(model, policy)
    measurer = StructureLatency(model=model, example_input=x, config=latency_config("torch", 1))
    plan = plan_pruning(model, None, None, x, channels=pruned_rows(units))
    zeroed = zero_pruned(clone_model(model), plan)  # the group's channels are 0: export removes unit 4
    for plain, removed in ((model, ()), (zeroed, ("4",))):  # the base model's bias keeps them alive: masked
        want = plan_pruning(plain, None, None, x, channels=pruned_rows(units), reference="model")
        assert want.removed == removed
        assert measurer.signature(plain, units, policy) == structure_signature(want, kernel_bits(units), base=measurer.base)
    assert measurer.signature(model, units, policy) != measurer.signature(zeroed, units, policy)
    # two processes on one file: each keeps what the other measured
    fake = Latency(latency_ms=1.0, iqr_ms=0.0, mad_ms=0.0, min_ms=1.0, max_ms=1.0, runtime="torch", batch=1, threads=1,
                   repeats=1, warmup=0, machine={"cpu": "x"})
    config = latency_config("torch", 1)
    first, second = RunLatencyCache(tmp_path / "l.json"), RunLatencyCache(tmp_path / "l.json")
    first.get("a", config, lambda: {"torch/b1": fake})
    second.get("b", config, lambda: {"torch/b1": fake})
    assert second.get("a", config, lambda: pytest.fail("measured again")) and second.misses == 1
    assert len(RunLatencyCache(tmp_path / "l.json")) == 2


def test_removed_blocks_are_another_structure_and_are_timed_without_them(tmp_path) -> None:
    from compsearch.testing import toy_resnet

    ev = LatencyEvaluator(toy_resnet(), make_data(shape=(1, 4, 4), num_classes=3, n=120),
                          latency_config=latency_config("onnxruntime", 1, warmup=1, repeats=3),
                          finetune=FineTuneConfig(steps=1, batch_size=16), device="cpu")
    keep = Policy({"layer2.1.conv": UnitPolicy(w_bits=8, a_bits=8)})
    gone = Policy({"layer2.1.conv": UnitPolicy(w_bits=8, a_bits=8)}, removed={"layer1.1": None, "layer2.0": "layer2.0.shortcut"})
    ev.evaluate(keep)
    plain, units = ev.compressed_model(keep)
    ev.evaluate(gone)
    assert ev.latency.measurements == 2  # the same kernels, fewer blocks: another structure
    assert ev.latency.signature(plain, units, keep) != ev.latency.signature(*ev.compressed_model(gone), gone)


def test_a_latency_constraint_violation_is_recorded_as_an_optuna_constraint(tmp_path) -> None:
    ev = _evaluator(tmp_path / "latency.json")
    space = get_space("uniform", ev.units, w_bits=[4], a_bits=[8], keep=[1.0])
    objectives = ["accuracy", "latency_ms"]
    study = optuna.create_study(directions=directions(objectives))
    # 1e-6 ms: no forward is that fast, so the constraint value latency_ms - 1e-6 > 0 (infeasible)
    study.optimize(optuna_objective(space, ev, objectives, constraints={"max_latency_ms": 1e-6}), n_trials=1)
    [trial] = study.trials
    latency = read_metrics(trial)["latency_ms"]
    assert trial.values[1] == latency and read_constraints(trial) == [pytest.approx(latency - 1e-6)]
    assert not is_feasible(trial)


def test_the_spec_turns_latency_on_only_when_asked(make_spec) -> None:
    assert needs_latency([("accuracy", "maximize"), ("latency_ms", "minimize")], {})
    assert needs_latency(["accuracy"], {"max_latency_ms": 3.0}) and not needs_latency(["accuracy", "size_kb"], {})
    plain = load_spec(make_spec())
    build = evaluator_factory(make_cnn(), make_data(), plain, Path("unused"))
    assert type(build(0)) is CompressionEvaluator
    spec = load_spec(make_spec(constraints={"max_latency_ms": 5.0}, latency={"runtime": "torch", "batch": 8}))
    ev = evaluator_factory(make_cnn(), make_data(), spec, Path("unused"))(0)
    assert isinstance(ev, LatencyEvaluator) and ev.latency.config.runtimes == ("torch",)
    assert ev.latency.config.batch_sizes == (8,)
    with pytest.raises(SpecError, match=r"latency.runtime.*unknown runtime 'tensorrt'"):
        load_spec(make_spec(latency={"runtime": "tensorrt"}))


@pytest.mark.slow
def test_a_run_with_a_latency_objective_and_constraint_then_export(make_spec, tmp_path) -> None:
    import json

    from compsearch.studies.export import export_run
    from compsearch.studies.runner import run_study

    spec = make_spec(strategies=["random"], trials=3, objectives=["accuracy", "latency_ms"],
                     reference_point={"latency_ms": 50.0}, constraints={"max_latency_ms": 50.0},
                     latency={"runtime": "onnxruntime", "batch": 4, "warmup": 1, "repeats": 5})
    run = run_study(spec, tmp_path / "run", quiet=True)
    cache = json.loads((tmp_path / "run" / "latency.json").read_text())
    medians = {entry["onnxruntime/b4"]["latency_ms"] for entry in cache.values()}
    trials = optuna.load_study(study_name="random-s0", storage=run.storage).get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert done and all(read_metrics(t)["latency_ms"] in medians for t in done)
    assert all(t.values[1] == read_metrics(t)["latency_ms"] for t in done)
    assert len(cache) <= len(done) + 1  # the baseline's structure and at most one per trial; repeats measured once
    [m] = export_run(tmp_path / "run", trial=f"random-s0:{done[0].number}", exporter="torchscript")
    assert m["verified"] and m["latency_key"] == "onnxruntime/b4" and set(m["latency"]) == {
        "onnxruntime/b1", "onnxruntime/b4", "torch/b1", "torch/b4"}


@pytest.mark.slow
def test_a_depth_run_times_removed_blocks_and_exports_them(tmp_path) -> None:
    import json

    from compsearch.record import read_policy
    from compsearch.studies.export import export_run
    from compsearch.studies.runner import run_study
    from compsearch.testing import digits_spec

    spec = digits_spec("depthlat", trials=4, finetune={"steps": 2}, strategies=["random"])
    spec.update(space={"name": "depth+joint", "choices": {"w_bits": [4, 8], "keep": [1.0]}},
                constraints={"max_latency_ms": 100.0}, latency={"warmup": 1, "repeats": 5})
    run = run_study(spec, tmp_path / "run", quiet=True, test=False)
    trials = optuna.load_study(study_name="random-s0", storage=run.storage_url).trials
    removing = [t for t in trials if (read_policy(t) or {}).get("removed")]
    assert removing  # seeded: the random strategy removes features.5 at least once
    cache = json.loads((tmp_path / "run" / "latency.json").read_text())
    structures = {(json.dumps((read_policy(t) or {}).get("removed")), json.dumps(read_policy(t)["units"], sort_keys=True))
                  for t in trials}
    assert len(cache) <= len(structures) + 1  # the baseline and at most one per distinct policy
    [m] = export_run(tmp_path / "run", trial=f"random-s0:{removing[0].number}", exporter="torchscript")
    assert m["verified"] and m["removed_blocks"] == {"features.5": None}
    assert m["onnx_val_accuracy"] == m["val_accuracy"] == read_metrics(removing[0])["accuracy"]
    assert m["max_abs_logit_error"]["onnxruntime"] <= 1e-3
