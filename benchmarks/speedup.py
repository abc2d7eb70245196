"""Torch-Pruning vs NNI ModelSpeedup: which physically removes pruned channels on more timm families.

For each family (pretrained=False, 32x32 input, 10 classes) every unit but the classifier
output layer gets ``keep=0.5`` channel pruning (l1). The removable units are planned by
``compsearch.evaluators.speedup.plan_pruning``; both tools then remove exactly those
channels and the outputs are compared with ``masked_reference`` on a random batch.
NNI gets ``graph_module=torch.fx.symbolic_trace(model)`` (its own tracer crashes on recent
torch). Prints JSON: per family and tool, ok, the max abs output difference, the
parameter count after, seconds, and the error if any.

Run: ``.venv/bin/python benchmarks/speedup.py``
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings
from typing import Any

import torch

FAMILIES: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "vit_tiny_patch16_224": {"img_size": 32},
    "mobilenetv3_small_050": {},
    "efficientnet_b0": {},
    "convnext_atto": {},
}
TOL = 1e-4


def _torch_pruning(model: torch.nn.Module, policy: Any, units: Any, x: torch.Tensor) -> torch.nn.Module:
    from compsearch.evaluators.speedup import physically_prune

    return physically_prune(model, policy, units, x, atol=float("inf"))


def _nni(model: torch.nn.Module, plan: Any, x: torch.Tensor) -> torch.nn.Module:
    import logging

    from nni.compression.speedup import ModelSpeedup

    from compsearch.evaluators.speedup import masked_reference

    work = masked_reference(model, plan, x)
    masks = {}
    for name in plan.removable:
        module = work.get_submodule(name)
        keep = torch.ones(module.weight.shape[0])
        keep[plan.channels[name]] = 0
        masks[name] = {"weight": keep.view(-1, *([1] * (module.weight.dim() - 1))).expand_as(module.weight).clone()}
        if module.bias is not None:
            masks[name]["bias"] = keep.clone()
    graph = torch.fx.symbolic_trace(work)
    return ModelSpeedup(work, x, masks, graph_module=graph, logger=logging.getLogger("speedup")).speedup_model()


def _measure(fn: Any, reference: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        pruned = fn()
        with torch.no_grad():
            diff = float((pruned(x) - reference(x)).abs().max())
        params = sum(p.numel() for p in pruned.parameters())
        return {"ok": diff <= TOL * max(1.0, float(reference(x).abs().max())), "max_abs_diff": diff,
                "params_after": params, "seconds": round(time.perf_counter() - start, 2)}
    except Exception as e:  # noqa: BLE001 - a tool's failure is the measurement
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:160]}", "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    import timm

    from compsearch.evaluators.speedup import masked_reference, plan_pruning
    from compsearch.spaces import Policy, UnitPolicy, discover_units

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    json_out = os.dup(1)  # NNI logs to stdout: send fd 1 to stderr, keep the real stdout for the JSON
    os.dup2(2, 1)
    out: dict[str, Any] = {}
    for name, kwargs in FAMILIES.items():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
        x = torch.randn(2, 3, 32, 32)
        units = discover_units(model, x)
        policy = Policy({u.name: UnitPolicy(keep=0.5) for u in units if not u.is_head})
        plan = plan_pruning(model, policy, units, x)
        reference = masked_reference(model, plan, x)
        out[name] = {
            "units": len(units), "removable": len(plan.removable), "masked": len(plan.masked),
            "params_before": sum(p.numel() for p in model.parameters()),
            "torch_pruning": _measure(lambda m=model, p=policy, u=units, x=x: _torch_pruning(m, p, u, x), reference, x),
            "nni_model_speedup": _measure(lambda m=model, p=plan, x=x: _nni(copy.deepcopy(m), p, x), reference, x),
        }
    out["families_ok"] = {tool: sum(out[f][tool]["ok"] for f in FAMILIES) for tool in ("torch_pruning", "nni_model_speedup")}
    sys.stdout.flush()
    os.write(json_out, (json.dumps(out, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
