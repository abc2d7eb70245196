"""Speed of the shared evaluator; prints one JSON object.

* ``step_ms``: milliseconds per fine-tune step (batch 64), plain fp32 vs compressed
  (every unit: 4-bit symmetric per-channel weights, 8-bit inputs, 50% output channels
  pruned), on the digits CNN (1 x 8 x 8 digits) and on timm ``resnet18``
  (``num_classes=10``, 3 x 32 x 32 synthetic input, random init); ``ratio`` =
  compressed / fp32 (target <= 1.25). Measured as ``seconds["finetune"] / steps`` of
  :meth:`CompressionEvaluator.evaluate` (wall) and as process CPU time per step
  (``cpu_ratio``), fp32 and compressed runs interleaved, median over repeats after a
  warm-up; ``paired_ratio`` is the median over repeats of the ratio of each compressed
  run to the fp32 run just before it (the most robust to other load on a shared
  machine). ``load_avg`` is the 1-minute load average at the start: above the number
  of cores, treat every number as provisional.
* ``evaluate_s``: seconds per ``evaluate()`` of that digits candidate with 100
  fine-tune steps (target <= 2 s on 2 cores), median over repeats.

Run: ``.venv/bin/python benchmarks/evaluator.py [--repeats 5] [--threads 2] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from compsearch.evaluators import CompressionEvaluator, FineTuneConfig, build_model, load_dataset
from compsearch.spaces import Policy, UnitPolicy

COMPRESSED = UnitPolicy(w_bits=4, a_bits=8, keep=0.5, scheme="symmetric", granularity="channel", structure="channel")


def _one(ev: CompressionEvaluator, policy: Policy, steps: int) -> tuple[float, float]:
    """Wall and process-CPU milliseconds per fine-tune step of one run.

    CPU time is that of ``evaluate(steps=steps)`` minus ``evaluate(steps=0)`` (same
    prepare and validation), so it leaves out the other processes of a shared machine.
    """
    c0 = time.process_time()
    wall = ev.evaluate(policy, steps=steps).seconds["finetune"]
    c1 = time.process_time()
    ev.evaluate(policy, steps=0)
    c2 = time.process_time()
    return 1000.0 * wall / steps, 1000.0 * ((c1 - c0) - (c2 - c1)) / steps


def step_ms(ev: CompressionEvaluator, *, steps: int, repeats: int) -> dict[str, float]:
    """Median ms per fine-tune step of fp32 and compressed runs (interleaved), wall and CPU."""
    plain, compressed = Policy(), Policy.uniform([u.name for u in ev.units], COMPRESSED)
    for policy in (plain, compressed):  # warm-up
        ev.evaluate(policy, steps=max(2, steps // 4))
    wall: dict[str, list[float]] = {"fp32": [], "compressed": []}
    cpu: dict[str, list[float]] = {"fp32": [], "compressed": []}
    for _ in range(repeats):
        for key, policy in (("fp32", plain), ("compressed", compressed)):
            w, c = _one(ev, policy, steps)
            wall[key].append(w)
            cpu[key].append(c)
    med = {f"{k}_{kind}": statistics.median(v) for kind, d in (("ms", wall), ("cpu_ms", cpu)) for k, v in d.items()}
    paired = statistics.median(c / f for f, c in zip(wall["fp32"], wall["compressed"], strict=True))
    return {
        **{k: round(v, 3) for k, v in med.items()},
        "ratio": round(med["compressed_ms"] / med["fp32_ms"], 3),
        "cpu_ratio": round(med["compressed_cpu_ms"] / med["fp32_cpu_ms"], 3),
        "paired_ratio": round(paired, 3),
    }


def digits_case(repeats: int, device: str) -> tuple[dict[str, float], float]:
    data = load_dataset("digits", seed=0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1)
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=100, batch_size=64), device=device)
    steps = step_ms(ev, steps=100, repeats=repeats)
    policy = Policy.uniform([u.name for u in ev.units], COMPRESSED)
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        ev.evaluate(policy, steps=100)
        totals.append(time.perf_counter() - start)
    return steps, round(statistics.median(totals), 3)


def resnet_case(repeats: int, steps: int, device: str) -> dict[str, float]:
    data = load_dataset("synthetic", seed=0, n=640, num_classes=10, shape=(3, 32, 32))
    model = build_model("resnet18", num_classes=10, in_chans=3)
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=steps, batch_size=64), device=device)
    return step_ms(ev, steps=steps, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resnet-steps", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    digits_steps, evaluate_s = digits_case(args.repeats, args.device)
    resnet_steps = resnet_case(args.repeats, args.resnet_steps, args.device)
    out = {
        "device": args.device,
        "threads": args.threads,
        "cores": os.cpu_count(),
        "load_avg": round(load, 2),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "policy": "w4 per-channel symmetric, a8, 50% channel pruning on every unit",
        "digits_cnn_step_ms": digits_steps,
        "resnet18_32px_step_ms": resnet_steps,
        "digits_evaluate_100_steps_s": evaluate_s,
        "targets": {"ratio_max": 1.25, "evaluate_s_max": 2.0},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
