"""CompressionEvaluator on a tiny CNN: masks and grid survive fine-tuning, reuse, determinism, errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from compsearch.errors import (
    ConfigError,
    DataError,
    FineTuneDiverged,
    ModelError,
    PolicyError,
    UnknownNameError,
)
from compsearch.evaluators import CompressionEvaluator, EvaluatorConfig, FineTuneConfig
from compsearch.evaluators.masks import CRITERIA, ModelContext, keep_count, register_criterion
from compsearch.evaluators.quant import fake_quantize_weight
from compsearch.evaluators.types import DataSplits
from compsearch.spaces import Policy, UnitPolicy

FT = FineTuneConfig(steps=12, batch_size=32, optimizer="sgd", lr=0.05, seed=1)

# units of conftest.make_cnn: "0" conv 8x1x3x3, "2" depthwise 8x1x3x3, "4" conv 8x8x3x3, "9" linear 4x8
MIXED = Policy({
    "0": UnitPolicy(w_bits=4, a_bits=8, scheme="asymmetric", granularity="tensor"),
    "2": UnitPolicy(w_bits=3, keep=0.5, structure="channel"),
    "4": UnitPolicy(w_bits=32, a_bits=6, keep=0.3, structure="unstructured"),
    "9": UnitPolicy(w_bits=2, scheme="symmetric", granularity="channel"),
})


@pytest.fixture
def ev(tiny_cnn: nn.Module, tiny_data: DataSplits) -> CompressionEvaluator:
    return CompressionEvaluator(tiny_cnn, tiny_data, finetune=FT, device="auto")


def test_units_device_and_identity_cost(ev: CompressionEvaluator) -> None:
    assert [u.name for u in ev.units] == ["0", "2", "4", "9"]
    assert ev.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    total = sum(p.numel() for p in ev.model.parameters())  # 80 + 80 + 584 + 16 (bn) + 36 = 796
    assert total == 796
    assert ev.cost(Policy())["size_bits"] == 32 * total
    # coverage: unit weights 72 + 72 + 576 + 32 = 752 of the 796 parameters
    assert ev.coverage == pytest.approx(752 / 796) and "covering 94.5% of the parameters" in repr(ev)


def test_masks_and_grid_survive_finetuning(ev: CompressionEvaluator) -> None:
    base = {n: w.clone() for n, w in ev.effective_weights().items()}
    result = ev.evaluate(MIXED)
    assert result.steps == FT.steps
    eff = ev.effective_weights()
    stored = {u.name: ev.model.get_submodule(u.name).weight.detach() for u in ev.units}
    # "2": 4 of 8 depthwise channels pruned; stored and effective rows exactly zero
    assert int((stored["2"].flatten(1) == 0).all(dim=1).sum()) == 8 - keep_count(0.5, 8) == 4
    assert int((eff["2"].flatten(1) == 0).all(dim=1).sum()) >= 4
    # "4": unstructured, unquantized: exactly floor(0.3 * 576 + 0.5) = 173 weights left
    assert int((eff["4"] != 0).sum()) == keep_count(0.3, 576) == 173
    # every quantized unit's effective weight sits on its grid and has <= 2^bits levels
    for name, bits, scheme, per_channel in (("0", 4, "asymmetric", False), ("2", 3, "symmetric", True), ("9", 2, "symmetric", True)):
        w = eff[name]
        torch.testing.assert_close(fake_quantize_weight(w, bits=bits, scheme=scheme, per_channel=per_channel), w)
        rows = [w] if not per_channel else list(w)
        assert all(r.unique().numel() <= 2**bits for r in rows)
    # fine-tuning moved the weights
    assert not torch.equal(stored["9"], base["9"])


def test_binary_weights_keep_pruned_rows_at_zero(ev: CompressionEvaluator) -> None:
    ev.evaluate(Policy({"4": UnitPolicy(w_bits=1, keep=0.25)}), steps=3)
    w = ev.effective_weights()["4"]
    assert int((w.flatten(1) == 0).all(dim=1).sum()) == 8 - keep_count(0.25, 8) == 6
    kept = w.flatten(1)[(w.flatten(1) != 0).any(dim=1)]
    assert all(row.abs().unique().numel() == 1 for row in kept)  # {-a, +a} per channel


def test_reuse_restores_the_base_model(ev: CompressionEvaluator, tiny_cnn: nn.Module) -> None:
    original = [p.detach().clone() for p in tiny_cnn.parameters()]
    first = ev.evaluate(MIXED)
    ev.evaluate(Policy.uniform([u.name for u in ev.units], UnitPolicy(w_bits=2, keep=0.25)))
    again = ev.evaluate(MIXED)
    assert (again.accuracy, again.loss) == (first.accuracy, first.loss)
    assert all(torch.equal(a, b) for a, b in zip(original, tiny_cnn.parameters(), strict=True))


def test_same_seed_same_result(tiny_data: DataSplits, cnn_factory: Callable[..., nn.Module]) -> None:
    results = [CompressionEvaluator(cnn_factory(), tiny_data, finetune=FT).evaluate(MIXED) for _ in range(2)]
    untimed = [{k: v for k, v in r.metrics().items() if not k.startswith("seconds_")} for r in results]
    assert untimed[0] == untimed[1]
    other = CompressionEvaluator(cnn_factory(), tiny_data, finetune=FineTuneConfig(**{**FT.__dict__, "seed": 2}))
    assert other.evaluate(MIXED).loss != results[0].loss


def test_base_metrics_and_costs_in_result(ev: CompressionEvaluator) -> None:
    base = ev.base_metrics()
    assert base.compression_ratio == 1.0 and base.sparsity == 0.0 and base.steps == 0
    assert ev.evaluate(Policy(), steps=0).accuracy == base.accuracy
    result = ev.evaluate(MIXED, test=True)
    cost = ev.cost(MIXED)
    assert (result.size_bits, result.bops, result.sparsity) == (cost["size_bits"], cost["bops"], cost["sparsity"])
    assert result.test_accuracy is not None and 0.0 <= result.test_accuracy <= 1.0
    assert set(result.seconds) == {"prepare", "finetune", "validate", "total"}


def test_proxy(ev: CompressionEvaluator) -> None:
    names = [u.name for u in ev.units]
    assert ev.proxy(Policy()) == 0.0
    coarse = ev.proxy(Policy.uniform(names, UnitPolicy(w_bits=2)))
    fine = ev.proxy(Policy.uniform(names, UnitPolicy(w_bits=8)))
    assert coarse > fine > 0.0
    assert ev.proxy(Policy.uniform(names, UnitPolicy(w_bits=2))) == coarse


def test_sensitivity(ev: CompressionEvaluator) -> None:
    sens = ev.sensitivity()
    assert list(sens) == ["0", "2", "4", "9"]
    assert all(math.isfinite(v) and v >= 0 for v in sens.values())
    assert sum(sens.values()) > 0
    assert ev.sensitivity() == sens


@pytest.mark.parametrize("criterion", ["taylor", "fisher", "l2"])
def test_gradient_criteria(tiny_cnn: nn.Module, tiny_data: DataSplits, criterion: str) -> None:
    ev = CompressionEvaluator(tiny_cnn, tiny_data, finetune=FT, criterion=criterion)
    ev.evaluate(Policy({"4": UnitPolicy(keep=0.5, structure="unstructured")}), steps=2)
    assert int((ev.effective_weights()["4"] != 0).sum()) == 288


def test_ema_ranges_and_distillation(tiny_cnn: nn.Module, tiny_data: DataSplits) -> None:
    config = EvaluatorConfig(act_range="ema", finetune=FineTuneConfig(steps=4, distill=0.5), calib_batches=1)
    result = CompressionEvaluator(tiny_cnn, tiny_data, config=config).evaluate(MIXED)
    assert result.steps == 4 and math.isfinite(result.loss)


def test_reporter_receives_validation_accuracy(ev: CompressionEvaluator) -> None:
    calls: list[tuple[int, float]] = []

    class Rec:
        def report(self, step: int, value: float, metrics: dict[str, float] | None = None) -> None:
            calls.append((step, value))

        def final(self, metrics: dict[str, object]) -> None:
            pass

    ev.evaluate(MIXED, reporter=Rec())  # 144 samples / 32 = 5 batches per epoch -> steps 5 and 10
    assert [s for s, _ in calls] == [5, 10]
    assert all(0.0 <= v <= 1.0 for _, v in calls)


def test_bad_policies(ev: CompressionEvaluator) -> None:
    with pytest.raises(PolicyError, match=r"policy names unit\(s\) \['layer9'\] that the model does not have"):
        ev.evaluate(Policy({"layer9": UnitPolicy(w_bits=4)}))
    with pytest.raises(PolicyError, match=r"unit\(s\) \['fc'\]"):
        ev.proxy({"fc": UnitPolicy()})
    with pytest.raises(PolicyError, match="w_bits=0 is invalid"):
        UnitPolicy(w_bits=0)
    with pytest.raises(PolicyError, match=r"keep=1.5 is invalid: the kept fraction must be in \(0, 1\]"):
        UnitPolicy(keep=1.5)
    with pytest.raises(PolicyError, match="policy must be a Policy or a mapping"):
        ev.cost([("0", UnitPolicy())])  # type: ignore[arg-type]


def test_bad_construction(
    tiny_cnn: nn.Module, tiny_data: DataSplits, data_factory: Callable[..., DataSplits], cnn_factory: Callable[..., nn.Module]
) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown criterion 'snip'; registered: \["):
        CompressionEvaluator(tiny_cnn, tiny_data, criterion="snip")
    with pytest.raises(ModelError, match="has no compressible layer"):
        CompressionEvaluator(nn.Sequential(nn.Flatten()), data_factory(shape=(4,), num_classes=4))
    with pytest.raises(DataError, match=r"sample shape \(3, 6, 6\) does not fit model Sequential"):
        CompressionEvaluator(tiny_cnn, data_factory(shape=(3, 6, 6)))
    with pytest.raises(DataError, match=r"to \(2, 3\), but data 'tiny' has num_classes=4"):
        CompressionEvaluator(cnn_factory(num_classes=3), tiny_data)
    bad_labels = DataSplits(**{**tiny_data.__dict__, "y_val": tiny_data.y_val + 10})
    with pytest.raises(DataError, match=r"val labels must be integers in \[0, 4\)"):
        CompressionEvaluator(tiny_cnn, bad_labels)
    with pytest.raises(ConfigError, match="act_range='median' is unknown"):
        EvaluatorConfig(act_range="median")
    with pytest.raises(ConfigError, match="calib_batches=0 must be an integer >= 1"):
        EvaluatorConfig(calib_batches=0)
    with pytest.raises(ConfigError, match="device='tpu9' is not a torch device"):
        CompressionEvaluator(tiny_cnn, tiny_data, device="tpu9")


def test_quantized_candidate_at_huge_lr_fails_as_diverged(tiny_cnn: nn.Module, tiny_data: DataSplits) -> None:
    # lr 1e6 under fake quantization keeps every loss finite (the grid bounds the weights a
    # forward uses), so only the validation-loss rule catches it: bound = 10 x max(base loss
    # 1.455, ln 4) = 14.55, while the candidate ends near 4e5
    policy = Policy.uniform(["0", "2", "4", "9"], UnitPolicy(w_bits=4, a_bits=8))
    huge = FineTuneConfig(steps=12, batch_size=32, lr=1e6)
    ev = CompressionEvaluator(tiny_cnn, tiny_data, finetune=huge, device="cpu")
    with pytest.raises(FineTuneDiverged, match=r"fine-tuning diverged: validation loss .* exceeds 14.55"):
        ev.evaluate(policy)
    unchecked = CompressionEvaluator(tiny_cnn, tiny_data, config=EvaluatorConfig(finetune=huge, divergence_ratio=None))
    assert unchecked.evaluate(policy).loss > 1e3  # what the old evaluator returned as a result
    assert ev.evaluate(policy, steps=0).steps == 0  # no fine-tuning, nothing to diverge
    with pytest.raises(ConfigError, match=r"divergence_ratio=0.5 must be a number > 1"):
        EvaluatorConfig(divergence_ratio=0.5)


def test_compressed_units_pack_exactly(ev: CompressionEvaluator) -> None:
    assert ev.compressed_units() == {}
    policy = Policy({
        "0": UnitPolicy(w_bits=4, a_bits=8, scheme="asymmetric", granularity="channel"),
        "2": UnitPolicy(keep=0.5, structure="channel"),
        "4": UnitPolicy(w_bits=3, keep=0.5, granularity="tensor", structure="unstructured"),
        "9": UnitPolicy(w_bits=1, keep=0.5),
    })
    ev.evaluate(policy, steps=3)
    units, effective = ev.compressed_units(), ev.effective_weights()
    assert set(units) == {"0", "2", "4", "9"}
    assert units["2"].w_bits is None and units["2"].mask is not None and units["2"].mask.shape == (8, 1, 1, 1)
    for name in ("0", "4", "9"):
        u = units[name]
        assert u.scale is not None and u.zero_point is not None and u.qmin is not None and u.qmax is not None
        assert torch.equal(u.weight, effective[name])
        codes = u.codes()
        assert int(codes.min()) >= u.qmin and int(codes.max()) <= u.qmax
        assert torch.equal(u.dequantize(codes), u.weight)  # reproduces the effective weight exactly
        if name != "9":  # integral zero points: round(w / scale) + zero_point
            assert torch.equal(torch.round(u.weight / u.scale) + u.zero_point, codes.float())
    assert units["0"].scale.shape == (8, 1, 1, 1) and units["4"].scale.dim() == 0
    assert (units["9"].qmin, units["9"].qmax) == (0, 1) and units["9"].mask is not None
    assert units["0"].a_bits == 8 and units["4"].a_bits is None
    assert units["0"].act_scale == ev._attached["0"].act_quant.qparams[0]  # type: ignore[union-attr]


def test_model_level_criterion_is_computed_once(tiny_cnn: nn.Module, tiny_data: DataSplits) -> None:
    calls: list[ModelContext] = []

    @register_criterion("test-later-channels", model_level=True)
    def later(context: ModelContext) -> dict[str, torch.Tensor]:
        calls.append(context)
        # 144 train samples: 2 calibration batches of 50; gradient batches of 32: 5 (of at most 8)
        assert not context.model.training and len(context.inputs) == 2 and len(context.loss_batches) == 5
        return {name: torch.arange(float(w.shape[0])) for name, w in context.weights.items()}

    try:
        config = EvaluatorConfig(criterion="test-later-channels", calib_batches=2, calib_batch_size=50, finetune=FT)
        ev = CompressionEvaluator(tiny_cnn, tiny_data, config=config, device="cpu")
        ev.evaluate(Policy({"4": UnitPolicy(keep=0.5), "0": UnitPolicy(w_bits=4, keep=0.25)}), steps=2)
        ev.proxy(Policy({"4": UnitPolicy(keep=0.75)}))
        assert len(calls) == 1
        rows = ev.compressed_units()["4"].mask.flatten()  # type: ignore[union-attr]
        assert rows.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]  # 6 of 8, the highest-scored (last) channels
        with pytest.raises(ConfigError, match="scores whole channels only"):
            ev.evaluate(Policy({"4": UnitPolicy(keep=0.5, structure="unstructured")}))
    finally:
        CRITERIA.unregister("test-later-channels")
