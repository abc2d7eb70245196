"""Physical pruning over timm families: does it run, how much goes, how exact, how fast.

For each family (pretrained=False, 32x32 input, 10 classes) every unit but the classifier
output layer gets ``keep=0.5`` channel pruning (l1) and
``compsearch.evaluators.speedup.physically_prune`` removes what it can. Prints JSON: per
family ``ok`` (no exception and the pruned model equals the masked model within 1e-4 on
a fresh random batch), the units removed and masked (with the most common reasons), the
parameters before/after, the seconds of ``physically_prune`` and the max relative error.

``--nni`` also runs NNI 3.0's ``ModelSpeedup`` on the same removable channels (given
``graph_module=torch.fx.symbolic_trace(model)``; its own tracer crashes on recent torch),
the comparison behind choosing Torch-Pruning.

Run: ``.venv/bin/python benchmarks/speedup.py [--nni] [--families resnet18,vit_tiny_patch16_224]``
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import warnings
from typing import Any

import torch

IMG = {"img_size": 32}
FAMILIES: dict[str, dict[str, Any]] = {
    "resnet18": {}, "resnext26ts": IMG, "regnetx_002": {}, "regnety_002": {}, "mobilenetv3_small_050": {},
    "efficientnet_b0": {}, "tf_efficientnet_b0": {}, "densenet121": {}, "dpn68": {}, "ghostnet_100": {},
    "convnext_atto": {}, "levit_128s": IMG, "vit_tiny_patch16_224": IMG, "deit_tiny_distilled_patch16_224": IMG,
    "mixer": {}, "resmlp_12_224": IMG, "coatnet_nano_rw_224": IMG, "maxvit_nano_rw_256": IMG, "mobilevit_xxs": IMG,
    "hrnet_w18_small": {}, "cspresnet50": {}, "dla34": {}, "res2net50_14w_8s": {}, "selecsls42b": {},
    "rexnet_100": {}, "lcnet_050": {}, "poolformer_s12": {}, "pvt_v2_b0": {}, "edgenext_xx_small": {},
    "fastvit_t8": {}, "efficientvit_b0": {}, "gernet_s": IMG, "mixnet_s": {}, "skresnet18": {},
    "seresnext26d_32x4d": {}, "eca_resnet33ts": IMG, "repvit_m0_9": IMG, "inception_next_tiny": {},
}
TOL = 1e-4


def build(name: str) -> torch.nn.Module:
    if name == "mixer":  # a tiny MLP-Mixer (mixer_b16's design at 4 blocks x 64 channels, 8 px patches)
        from timm.models.mlp_mixer import MlpMixer

        return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=4, embed_dim=64).eval()
    import timm

    return timm.create_model(name, pretrained=False, num_classes=10, **FAMILIES[name]).eval()


def _nni(model: torch.nn.Module, plan: Any, x: torch.Tensor) -> dict[str, Any]:
    import logging

    from nni.compression.speedup import ModelSpeedup

    from compsearch.evaluators.speedup import masked_reference, output_error

    start = time.perf_counter()
    try:
        work = masked_reference(model, plan)
        masks = {}
        for name in plan.removed:
            module = work.get_submodule(name)
            keep = torch.ones(module.weight.shape[0])
            keep[list(plan.channels[name])] = 0
            masks[name] = {"weight": keep.view(-1, *([1] * (module.weight.dim() - 1))).expand_as(module.weight).clone()}
            if module.bias is not None:
                masks[name]["bias"] = keep.clone()
        graph = torch.fx.symbolic_trace(work)
        pruned = ModelSpeedup(work, x, masks, graph_module=graph, logger=logging.getLogger("speedup")).speedup_model()
        err = output_error(pruned, masked_reference(model, plan), [x])
        return {"ok": err <= TOL, "max_error": err, "seconds": round(time.perf_counter() - start, 2)}
    except Exception as e:  # noqa: BLE001 - a tool's failure is the measurement
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:160]}", "seconds": round(time.perf_counter() - start, 2)}


def measure(name: str, *, nni: bool = False) -> dict[str, Any]:
    from compsearch.evaluators.speedup import masked_reference, output_error, physically_prune
    from compsearch.spaces import Policy, UnitPolicy, discover_units

    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    units = discover_units(model, x)
    policy = Policy({u.name: UnitPolicy(keep=0.5) for u in units if not u.is_head})
    start = time.perf_counter()
    try:
        result = physically_prune(model, policy, units, x)
    except Exception as e:  # noqa: BLE001 - a failure is the measurement
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}", "seconds": round(time.perf_counter() - start, 2)}
    seconds = time.perf_counter() - start
    fresh = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    err = output_error(result.model, masked_reference(model, result.plan), fresh)
    reasons = collections.Counter(why.split(": ", 1)[1].split(" (")[0].split(" '")[0] for why in result.plan.masked.values())
    out = {"ok": err <= TOL, "units": len(units), "pruned": len(result.plan.channels), "removed": len(result.plan.removed),
           "masked": len(result.plan.masked), "masked_reasons": dict(reasons.most_common(4)),
           "params_before": result.params_before, "params_after": result.params_after,
           "seconds": round(seconds, 2), "max_error": float(f"{max(err, result.max_error):.3g}")}
    if nni:
        out["nni_model_speedup"] = _nni(model, result.plan, x)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated names (default: all)")
    parser.add_argument("--nni", action="store_true", help="also run NNI's ModelSpeedup")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    json_out = os.dup(1)  # NNI logs to stdout: send fd 1 to stderr, keep the real stdout for the JSON
    os.dup2(2, 1)
    names = [n for n in args.families.split(",") if n]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; allowed: {list(FAMILIES)}")
    out: dict[str, Any] = {name: measure(name, nni=args.nni) for name in names}
    out["summary"] = {"families": len(names), "ok": sum(out[n]["ok"] for n in names),
                      "max_seconds": max(out[n]["seconds"] for n in names),
                      "torch_threads": torch.get_num_threads()}
    sys.stdout.flush()
    os.write(json_out, (json.dumps(out, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
