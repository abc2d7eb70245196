"""How many channel-pruned units of an *evaluated* model export removes (not masks).

Every unit gets ``keep=0.5`` channel pruning (l1) and 8-bit weights; the evaluator
fine-tunes a few steps (digits CNN on the bundled digits data, timm resnet18 at 32 x 32
on a seeded random batch), then the model is pruned the way ``compsearch export`` does:
the plain model with the evaluated weights, effective (quantized) unit weights,
``physically_prune(..., reference="model")``. Prints JSON per model: channel-pruned units,
units removed and masked (with one reason per masked unit), parameters before/after, the
max relative output error and the seconds of the whole case. Correctness numbers, not
timings.

Run: ``.venv/bin/python benchmarks/evaluated_removal.py``
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import nn

from compsearch.evaluators import CompressionEvaluator, FineTuneConfig, build_model, load_dataset
from compsearch.evaluators.speedup import clone_model, physically_prune
from compsearch.evaluators.types import DataSplits
from compsearch.evaluators.unit_quant import effective_model, from_compressed_units, pruned_rows
from compsearch.spaces import Policy, UnitPolicy


def case(model: nn.Module, data: DataSplits, steps: int) -> dict[str, Any]:
    start = time.perf_counter()
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=steps, batch_size=32, lr=0.01), device="cpu")
    policy = Policy.uniform([u.name for u in ev.units], UnitPolicy(keep=0.5, structure="channel", w_bits=8))
    ev.evaluate(policy)
    units = from_compressed_units(ev.compressed_units(), policy)
    plain = clone_model(model)  # as compsearch export does
    plain.load_state_dict({k: v.detach() for k, v in ev.model.state_dict().items()})
    x = ev.task.example_input()[:4]
    res = physically_prune(effective_model(plain, units), None, None, x, channels=pruned_rows(units), reference="model")
    return {"channel_pruned_units": len(pruned_rows(units)), "removed": list(res.plan.removed),
            "masked": {u: why.split(": ", 1)[-1][:120] for u, why in res.plan.masked.items()},
            "params_before": res.params_before, "params_after": res.params_after, "max_error": res.max_error,
            "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    import timm

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    torch.manual_seed(0)
    out["digits_cnn"] = case(build_model("digits_cnn", num_classes=10, in_chans=1), load_dataset("digits", seed=0), 10)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    data = DataSplits(x_train=x, y_train=y, x_val=x[:32], y_val=y[:32], x_test=x[:32], y_test=y[:32], num_classes=10, name="random32")
    torch.manual_seed(0)
    out["resnet18_32px"] = case(timm.create_model("resnet18", num_classes=10), data, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
