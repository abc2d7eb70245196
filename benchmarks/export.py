"""Export benchmark: packed bytes against the cost model, and latency of fp32, pruned and pruned+int8.

For each model (the digits CNN at 8x8, timm resnet18 and vit_tiny_patch16_224 at 32x32;
random weights: latency and size do not depend on them) and three variants:

* ``fp32``: the model as it is;
* ``pruned``: every unit but the first and the classifier at ``keep=0.5`` channel pruning,
  physically removed where the graph allows (``physically_prune``; the rest masked), fp32;
* ``pruned_int8``: the same graph with 8-bit per-channel symmetric weights and 8-bit inputs:
  QDQ int8 in ONNX.
* ``ort_static_int8`` (reference, not a compsearch model): onnxruntime's ``quantize_static`` of
  the pruned fp32 graph, which also quantizes every op's output so its int8 kernels apply.

each is exported to ONNX (``export_onnx``), checked against the torch compressed model, and
timed (``measure_latency``: median of ``--repeats`` forwards after ``--warmup``, with IQR) in
onnxruntime and torch eager at batch 1 and ``--batch``, ``--threads`` intra-op threads.
``size`` compares the cost model's ``size_bits / 8`` of the pruned_int8 policy with the packed
payload of the same policy on the unpruned (masked) model -- what the cost model counts -- and
on the physically pruned model (smaller: consumers lose input columns too), and the file bytes.

Targets (resnet18, onnxruntime, batch 1): ``pruned`` >= 1.6x faster than ``fp32``;
``pruned_int8`` >= 1.3x faster than ``pruned`` (the same graph). Timings need an idle machine.

Run: ``.venv/bin/python benchmarks/export.py [--models digits_cnn,resnet18,vit_tiny] [--threads 1]
[--exporter dynamo|torchscript] [--weight-dtype int8|uint8]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

MODELS = ("digits_cnn", "resnet18", "vit_tiny")


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    from compsearch.evaluators.models import build_model

    torch.manual_seed(0)
    if name == "digits_cnn":
        return build_model("digits_cnn", num_classes=10, in_chans=1).eval(), torch.randn(32, 1, 8, 8)
    if name == "resnet18":
        return build_model("resnet18", num_classes=10, in_chans=3).eval(), torch.randn(32, 3, 32, 32)
    return build_model("vit_tiny_patch16_224", num_classes=10, in_chans=3, img_size=32).eval(), torch.randn(32, 3, 32, 32)


def variants(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """name -> (torch model, units in its shapes, reference torch model, prune result or None), plus the policies."""
    from compsearch.evaluators.speedup import clone_model, physically_prune
    from compsearch.evaluators.unit_quant import (
        attach_input_quant,
        effective_model,
        quantize_units,
        restrict,
    )
    from compsearch.spaces import Policy, UnitPolicy, discover_units

    units_ = discover_units(model, x[:2])
    inner = [u.name for u in units_ if not u.is_head and not u.is_first]
    pruned_policy = Policy({n: UnitPolicy(keep=0.5) for n in inner})
    int8_policy = Policy({n: UnitPolicy(w_bits=8, a_bits=8, keep=0.5, granularity="channel") for n in inner})
    out: dict[str, Any] = {"fp32": (model, {}, model, None)}
    pruned = physically_prune(model, pruned_policy, units_, x[:2])
    out["pruned"] = (pruned.model, {}, pruned.model, pruned)
    units = quantize_units(model, int8_policy, calib=[x])
    result = physically_prune(effective_model(model, units), int8_policy, units_, x[:2])
    restricted = restrict(units, result.plan)
    reference = clone_model(result.model)
    attach_input_quant(reference, restricted)
    out["pruned_int8"] = (result.model, restricted, reference, result)
    return {"variants": out, "units": units_, "int8_policy": int8_policy, "int8_units": units}


def size_report(model: torch.nn.Module, info: dict[str, Any], folder: Path) -> dict[str, Any]:
    from compsearch.evaluators.cost import CostModel
    from compsearch.evaluators.packing import pack_model, payload_bytes, save_packed
    from compsearch.evaluators.unit_quant import effective_model

    cost = CostModel(units=info["units"], total_params=sum(p.numel() for p in model.parameters()))(info["int8_policy"])
    masked = pack_model(effective_model(model, info["int8_units"]), info["int8_units"])
    pruned_model, pruned_units, _, _ = info["variants"]["pruned_int8"]
    pruned = pack_model(pruned_model, pruned_units)
    return {"size_bits_over_8": cost["size_bits"] / 8, "size_kb": round(cost["size_kb"], 2),
            "packed_masked_payload": payload_bytes(masked)["total"],
            "packed_masked_vs_cost": round(payload_bytes(masked)["total"] / (cost["size_bits"] / 8), 4),
            "packed_pruned_payload": payload_bytes(pruned)["total"],
            "packed_pruned_file": save_packed(pruned, folder / "pruned_int8.pt"),
            "fp32_state_dict_bytes": 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())}


def measure(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from compsearch.evaluators.latency import LatencyConfig, measure_latency
    from compsearch.evaluators.onnx_export import export_onnx, ort_session, run_onnx

    model, x = build(name)
    info = variants(model, x)
    config = LatencyConfig(batch_sizes=(1, args.batch), threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    report: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "size": size_report(model, info, folder)}
    results: dict[str, Any] = {}
    for variant, (torch_model, units, reference, pruned) in info["variants"].items():
        start = time.perf_counter()
        onnx_file = export_onnx(torch_model, units, x[:1], folder / f"{name}_{variant}.onnx", dynamo=args.exporter == "dynamo",
                                weight_dtype=args.weight_dtype)
        export_seconds = time.perf_counter() - start
        with torch.no_grad():
            want = reference(x)
        got = run_onnx(ort_session(onnx_file.path, threads=args.threads), x)
        runnable = reference if units else torch_model
        latency = measure_latency(runnable, onnx_file.path, x, config)
        results[variant] = {
            "params": sum(p.numel() for p in torch_model.parameters()),
            "removed_units": len(pruned.plan.removed) if pruned else 0, "masked_units": len(pruned.plan.masked) if pruned else 0,
            "onnx_bytes": onnx_file.file_bytes, "export_seconds": round(export_seconds, 2),
            "onnx_max_abs_error": float(f"{float((got - want).abs().max()):.3g}"),
            "same_predictions": bool(torch.equal(got.argmax(1), want.argmax(1))),
            "latency": {k: {f: (round(v, 4) if isinstance(v, float) else v) for f, v in lat.to_dict().items() if f != "machine"}
                        for k, lat in latency.items()},
        }
    results["ort_static_int8"] = ort_static_reference(folder / f"{name}_pruned.onnx", x, config, info["variants"]["pruned"][0])
    report["variants"] = results

    def ratio(a: str, b: str, key: str) -> float:
        return round(results[a]["latency"][key]["latency_ms"] / results[b]["latency"][key]["latency_ms"], 3)

    pairs = (("fp32", "pruned"), ("pruned", "pruned_int8"), ("pruned", "ort_static_int8"))
    report["speedups"] = {f"{a}_vs_{b}/{key}": ratio(a, b, key) for a, b in pairs for key in results[b]["latency"]}
    return report


def ort_static_reference(pruned_onnx: Path, x: torch.Tensor, config: Any, pruned_model: torch.nn.Module) -> dict[str, Any]:
    """onnxruntime's own static int8 quantization of the pruned fp32 graph (QDQ, per channel, calibrated on ``x``).

    Not the model compsearch evaluated (it also quantizes every op's output, which lets
    onnxruntime fuse int8 kernels): a reference for what int8 kernels give on this CPU.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from compsearch.evaluators.latency import onnx_latency
    from compsearch.evaluators.onnx_export import ort_session, run_onnx

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": b.numpy()} for b in x.split(8)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    out = pruned_onnx.with_name(pruned_onnx.stem + "_ort_int8.onnx")
    quantize_static(str(pruned_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    with torch.no_grad():
        want = pruned_model(x)
    got = run_onnx(ort_session(out, threads=config.threads), x)
    latency = {f"onnxruntime/b{b}": onnx_latency(out, x, batch=b, config=config) for b in config.batch_sizes}
    return {"onnx_bytes": out.stat().st_size, "max_abs_error_vs_pruned_fp32": float(f"{float((got - want).abs().max()):.3g}"),
            "latency": {k: {f: (round(v, 4) if isinstance(v, float) else v) for f, v in lat.to_dict().items() if f != "machine"}
                        for k, lat in latency.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32, help="the second batch size timed (besides 1)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--weight-dtype", choices=("int8", "uint8"), default="int8",
                        help="QDQ weight codes; uint8 avoids onnxruntime's u8s8 saturation on CPUs without VNNI")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; allowed: {list(MODELS)}")
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    from compsearch.evaluators.latency import machine

    out: dict[str, Any] = {"machine": machine(), "threads": args.threads, "exporter": args.exporter,
                           "weight_dtype": args.weight_dtype, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out["models"][name] = measure(name, args, Path(tmp))
    if "resnet18" in out["models"]:
        s = out["models"]["resnet18"]["speedups"]
        out["targets"] = {"resnet18_pruned_vs_fp32_onnxruntime_b1 >= 1.6": s["fp32_vs_pruned/onnxruntime/b1"],
                          "resnet18_int8_vs_pruned_onnxruntime_b1 >= 1.3": s["pruned_vs_pruned_int8/onnxruntime/b1"]}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
