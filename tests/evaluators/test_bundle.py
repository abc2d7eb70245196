"""A bundle of the evaluator's compressed model: same outputs after loading, in torch and in onnxruntime."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torch_pruning", reason="Torch-Pruning is not installed (pip install torch-pruning)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'compsearch[export]')")

from tiny_nets import make_cnn, make_data  # noqa: E402

from compsearch.errors import DataError  # noqa: E402
from compsearch.evaluators.bundle import load_bundle, write_bundle  # noqa: E402
from compsearch.evaluators.evaluator import CompressionEvaluator  # noqa: E402
from compsearch.evaluators.onnx_export import ort_session, run_onnx  # noqa: E402
from compsearch.evaluators.packing import load_packed  # noqa: E402
from compsearch.evaluators.speedup import clone_model, zero_pruned  # noqa: E402
from compsearch.evaluators.types import FineTuneConfig  # noqa: E402
from compsearch.evaluators.unit_quant import from_compressed_units  # noqa: E402
from compsearch.spaces import Policy, UnitPolicy  # noqa: E402


def test_the_bundle_reproduces_the_evaluated_model(tmp_path) -> None:
    data, model = make_data(), make_cnn()
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=3, batch_size=32), device="cpu")
    policy = Policy({
        "0": UnitPolicy(w_bits=4, a_bits=8, scheme="asymmetric", granularity="channel"),
        "4": UnitPolicy(w_bits=3, a_bits=6, keep=0.5, structure="channel"),
        "9": UnitPolicy(w_bits=1, keep=0.5, structure="unstructured"),
    })
    ev.evaluate(policy, steps=3)
    ev.model.eval()
    with torch.no_grad():
        want = ev.model(data.x_val)
    units = from_compressed_units(ev.compressed_units(), policy)
    plain = clone_model(model)
    plain.load_state_dict(ev.model.state_dict())
    manifest = write_bundle(plain, units, data.x_val[:4], tmp_path / "trial", dynamo=False, meta={"policy": policy.key})
    # the evaluator holds unit 4's bias and BatchNorm entries at 0 at its pruned channels: they are removed
    assert manifest["removed_units"] == ["4"] and manifest["masked_units"] == {}
    assert manifest["onnx"]["qdq_units"] == ["0", "4", "9"] and json.loads((tmp_path / "trial" / "manifest.json").read_text()) == manifest
    assert load_packed(tmp_path / "trial" / "weights.pt")["meta"]["policy"] == policy.key
    loaded = load_bundle(tmp_path / "trial", make_cnn(seed=7))  # another initialization: every weight comes from the file
    with torch.no_grad():
        assert float((loaded(data.x_val) - want).abs().max()) <= 1e-4
    assert torch.equal(loaded(data.x_val).argmax(1), want.argmax(1))
    got = run_onnx(ort_session(tmp_path / "trial" / "model.onnx"), data.x_val)
    assert float((got - want).abs().max()) <= 1e-3


def test_a_model_whose_pruned_groups_are_zero_loses_its_channels(tmp_path) -> None:
    from compsearch.evaluators.speedup import plan_pruning
    from compsearch.evaluators.unit_quant import pruned_rows, quantize_units

    data, model = make_data(), make_cnn()
    policy = Policy({"4": UnitPolicy(w_bits=8, keep=0.5, structure="channel")})
    units = quantize_units(model, policy)
    x = data.x_val[:4]
    zeroed = zero_pruned(clone_model(model), plan_pruning(model, None, None, x, channels=pruned_rows(units)))
    manifest = write_bundle(zeroed, units, x, tmp_path / "b", onnx=False)
    assert manifest["removed_units"] == ["4"] and manifest["params_after"] < manifest["params_before"]
    loaded = load_bundle(tmp_path / "b", make_cnn(seed=3))
    assert loaded[4].out_channels == 4 and loaded[5].num_features == 4 and loaded[9].in_features == 4
    with pytest.raises(DataError, match="does not exist"):
        load_bundle(tmp_path / "missing", make_cnn())
