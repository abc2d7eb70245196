"""Classification results do not change: golden numbers of fixed evaluations.

The numbers below were recorded with the evaluator as it was before the task
abstraction and the compressed-forward rewrite (``CompressedForward`` calling
``F.linear`` / ``_conv_forward``), on the CPU. Plain ``Conv2d``/``Linear`` layers
compute the same thing through their own forward, so every value must stay the
same: accuracies exactly (a count over the split), losses, proxies and
sensitivities within a relative 1e-6. Recorded and checked with one torch thread
(as the test suite runs): the reduction order of other thread counts changes the
last bits, and 60 training steps of the digits base model amplify that.

One intended change since: channel pruning now also holds the pruned channels' own
bias and coupled BatchNorm scale/shift at 0 where the channels could be removed
physically (``evaluators/coupled.py``), so a pruned channel outputs 0 instead of
``act(bias)`` or the BatchNorm shift. The numbers of candidates with such a unit were
re-recorded: ``tiny_binary`` (unit "4", conv + BatchNorm at keep 0.25: its loss and its
proxy ``tiny_proxy[1]``), ``digits_uniform`` and its proxy ``digits_proxy[0]`` (every conv
and the hidden linear at keep 0.5). Everything else is as recorded at d235ab0: policies
without channel pruning (``tiny_base``, ``tiny_proxy[2]``, ``digits_quant``, the latter
recorded with the evaluator before the change), channel pruning whose group cannot be
removed (``tiny_mixed``: unit "2" is a depthwise conv sharing its channels with unit "0"),
and ``digits_mixed`` (the 16 pruned channels of ``classifier.1`` all have a negative bias,
so ``relu(bias)`` was already 0 and kept a zero gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from compsearch.evaluators import (
    CompressionEvaluator,
    EvaluatorConfig,
    FineTuneConfig,
    build_model,
    load_dataset,
)
from compsearch.spaces import Policy, UnitPolicy

FT = FineTuneConfig(steps=12, batch_size=32, optimizer="sgd", lr=0.05, seed=1)
MIXED = Policy({
    "0": UnitPolicy(w_bits=4, a_bits=8, scheme="asymmetric", granularity="tensor"),
    "2": UnitPolicy(w_bits=3, keep=0.5, structure="channel"),
    "4": UnitPolicy(w_bits=32, a_bits=6, keep=0.3, structure="unstructured"),
    "9": UnitPolicy(w_bits=2, scheme="symmetric", granularity="channel"),
})
BINARY = Policy({
    "4": UnitPolicy(w_bits=1, keep=0.25),
    "0": UnitPolicy(w_bits=5, a_bits=4, scheme="asymmetric", granularity="channel"),
})
GRADIENT_POLICY = Policy({"4": UnitPolicy(keep=0.5, structure="unstructured", w_bits=6), "2": UnitPolicy(keep=0.5)})
DIGITS_UNIFORM = UnitPolicy(w_bits=4, a_bits=8, keep=0.5, scheme="symmetric", granularity="channel", structure="channel")
DIGITS_QUANT = UnitPolicy(w_bits=4, a_bits=8, scheme="symmetric", granularity="channel")  # no pruning
DIGITS_MIXED = Policy({
    "features.3": UnitPolicy(w_bits=3, a_bits=6, scheme="asymmetric", granularity="tensor"),
    "features.5": UnitPolicy(w_bits=8, keep=0.4, structure="unstructured"),
    "classifier.1": UnitPolicy(w_bits=2, a_bits=8, keep=0.75, structure="channel"),
})

# Recorded with `python tests/evaluators/test_evaluator_golden.py` at commit d235ab0 (CPU, 1 thread).
GOLDEN: dict[str, Any] = {'tiny_sensitivity': {'0': 7.507281407015398e-05,
                      '2': 0.0002400310622761026,
                      '4': 0.003444886300712824,
                      '9': 0.0004981259698979557},
 'tiny_mixed': {'accuracy': 0.3333333432674408,
                'loss': 1.434591293334961,
                'size_bits': 8428.0,
                'compression_ratio': 3.0223065970574274,
                'bops': 1405184.0,
                'sparsity': 0.5837765957446809,
                'test_accuracy': 0.3541666567325592,
                'steps': 12},
 'tiny_binary': {'accuracy': 0.2916666567325592,
                 'loss': 1.4310394525527954,  # was 1.426507830619812 before the coupled zeroing
                 'size_bits': 5880.0,
                 'compression_ratio': 4.331972789115646,
                 'bops': 2904704.0,
                 'sparsity': 0.574468085106383,
                 'test_accuracy': None,
                 'steps': 12},
 'tiny_proxy': [0.0002484265132807195, 0.0001557077921461314, 1.9633459302781375e-08],  # [1] was 7.357782305916771e-05
 'tiny_base': {'accuracy': 0.2708333432674408,
               'loss': 1.4551194906234741,
               'size_bits': 25472.0,
               'compression_ratio': 1.0,
               'bops': 26574848.0,
               'sparsity': 0.0,
               'test_accuracy': 0.1458333283662796,
               'steps': 0},
 'tiny_taylor': {'accuracy': 0.1666666716337204,
                 'loss': 1.4499541521072388,
                 'size_bits': 8448.0,
                 'compression_ratio': 3.015151515151515,
                 'bops': 6004736.0,
                 'sparsity': 0.4308510638297872,
                 'test_accuracy': None,
                 'steps': 4},
 'tiny_fisher': {'accuracy': 0.1875,
                 'loss': 1.44955313205719,
                 'size_bits': 8448.0,
                 'compression_ratio': 3.015151515151515,
                 'bops': 6004736.0,
                 'sparsity': 0.4308510638297872,
                 'test_accuracy': None,
                 'steps': 4},
 'tiny_ema_distill': {'accuracy': 0.2291666716337204,
                      'loss': 1.4525622129440308,
                      'size_bits': 8428.0,
                      'compression_ratio': 3.0223065970574274,
                      'bops': 1405184.0,
                      'sparsity': 0.5837765957446809,
                      'test_accuracy': None,
                      'steps': 4},
 'digits_units': ['features.0', 'features.3', 'features.5', 'classifier.1', 'classifier.3'],
 'digits_sensitivity': {'features.0': 0.10636226087808609,
                        'features.3': 0.3100863993167877,
                        'features.5': 0.16367881000041962,
                        'classifier.1': 0.6658643484115601,
                        'classifier.3': 1.977520227432251},
 'digits_base': {'accuracy': 0.8913649320602417,
                 'loss': 0.401917427778244,
                 'size_bits': 734528.0,
                 'compression_ratio': 1.0,
                 'bops': 244973568.0,
                 'sparsity': 0.0,
                 'test_accuracy': 0.8495821952819824,
                 'steps': 0},
 'digits_uniform': {'accuracy': 0.5069637894630432,  # was 0.5097492933273315, loss 1.247310757637024
                    'loss': 1.2693778276443481,
                    'size_bits': 53312.0,
                    'compression_ratio': 13.777911164465786,
                    'bops': 3827712.0,
                    'sparsity': 0.5,
                    'test_accuracy': 0.47632312774658203,  # was 0.4958217144012451
                    'steps': 20},
 'digits_quant': {'accuracy': 0.8746517896652222,
                  'loss': 0.36231762170791626,
                  'size_bits': 101376.0,
                  'compression_ratio': 7.245580808080808,
                  'bops': 7655424.0,
                  'sparsity': 0.0,
                  'test_accuracy': 0.8579387068748474,
                  'steps': 20},
 'digits_mixed': {'accuracy': 0.8718662858009338,
                  'loss': 0.37135282158851624,
                  'size_bits': 97584.0,
                  'compression_ratio': 7.5271355959993445,
                  'bops': 26615808.0,
                  'sparsity': 0.3323684210526316,
                  'test_accuracy': None,
                  'steps': 20},
 'digits_proxy': [19.60618782043457, 0.784253716468811, 0.006453069858253002]}  # [0] was 19.167762756347656


def _metrics(result: Any) -> dict[str, Any]:
    return {k: v for k, v in result.metrics().items() if not k.startswith("seconds_")}


def tiny_numbers(make_cnn: Callable[..., torch.nn.Module], make_data: Callable[..., Any]) -> dict[str, Any]:
    """Every number of the tiny CNN (``conftest.make_cnn`` / ``make_data``) cases."""
    out: dict[str, Any] = {}
    ev = CompressionEvaluator(make_cnn(), make_data(), finetune=FT, device="cpu")
    out["tiny_sensitivity"] = ev.sensitivity()
    out["tiny_mixed"] = _metrics(ev.evaluate(MIXED, test=True))
    out["tiny_binary"] = _metrics(ev.evaluate(BINARY))
    uniform8 = Policy.uniform([u.name for u in ev.units], UnitPolicy(w_bits=8, a_bits=8))
    out["tiny_proxy"] = [ev.proxy(MIXED), ev.proxy(BINARY), ev.proxy(uniform8)]
    out["tiny_base"] = _metrics(ev.base_metrics(test=True))
    for criterion in ("taylor", "fisher"):
        ev = CompressionEvaluator(make_cnn(), make_data(), finetune=FT, criterion=criterion, device="cpu")
        out[f"tiny_{criterion}"] = _metrics(ev.evaluate(GRADIENT_POLICY, steps=4))
    config = EvaluatorConfig(act_range="ema", finetune=FineTuneConfig(steps=4, distill=0.5), calib_batches=1)
    out["tiny_ema_distill"] = _metrics(CompressionEvaluator(make_cnn(), make_data(), config=config, device="cpu").evaluate(MIXED))
    return out


def _trained_digits_cnn() -> tuple[torch.nn.Module, Any]:
    """The digits CNN after 60 seeded Adam steps (batch 64), so accuracies are informative."""
    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_chans=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, data.x_train.shape[0], (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    return model.eval(), data


def digits_numbers() -> dict[str, Any]:
    """Every number of the digits CNN cases."""
    model, data = _trained_digits_cnn()
    ev = CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=20, batch_size=64, lr=0.02), device="cpu")
    names = [u.name for u in ev.units]
    uniform = Policy.uniform(names, DIGITS_UNIFORM)
    out: dict[str, Any] = {"digits_units": names, "digits_sensitivity": ev.sensitivity()}
    out["digits_base"] = _metrics(ev.base_metrics(test=True))
    out["digits_uniform"] = _metrics(ev.evaluate(uniform, test=True))
    out["digits_mixed"] = _metrics(ev.evaluate(DIGITS_MIXED))
    out["digits_quant"] = _metrics(ev.evaluate(Policy.uniform(names, DIGITS_QUANT), test=True))
    out["digits_proxy"] = [ev.proxy(uniform), ev.proxy(DIGITS_MIXED), ev.proxy(Policy.uniform(names, UnitPolicy(w_bits=6)))]
    return out


def _close(got: Any, want: Any, path: str) -> None:
    if isinstance(want, dict):
        # the one addition since recording: metrics() also reports test_loss when the test split is measured
        assert set(got) - {"test_loss"} == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not path.endswith("accuracy"):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), path
    else:
        assert got == want, path


@pytest.mark.parametrize("case", ["tiny", "digits"])
def test_classification_numbers_unchanged(
    case: str, cnn_factory: Callable[..., torch.nn.Module], data_factory: Callable[..., Any]
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded (tests/conftest.py sets 1 too)
    try:
        got = tiny_numbers(cnn_factory, data_factory) if case == "tiny" else digits_numbers()
    finally:
        torch.set_num_threads(threads)
    want = {k: v for k, v in GOLDEN.items() if k.startswith(case)}
    assert want and set(got) == set(want)
    _close(got, want, case)


if __name__ == "__main__":  # print the numbers (used once to record GOLDEN)
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_nets import make_cnn, make_data

    torch.set_num_threads(1)
    print(json.dumps({**tiny_numbers(make_cnn, make_data), **digits_numbers()}, indent=1))
