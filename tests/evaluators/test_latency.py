"""Latency: median and spread by hand on a fake timer, sane real measurements, structure signatures, the cache."""

from __future__ import annotations

import pytest
import torch

from compsearch.errors import ConfigError
from compsearch.evaluators.channel_groups import ChannelGroup
from compsearch.evaluators.latency import (
    LatencyCache,
    LatencyConfig,
    measure_latency,
    structure_signature,
    summarize,
    time_calls,
    torch_latency,
)
from compsearch.evaluators.models import build_model
from compsearch.evaluators.speedup import PrunePlan


class _FakeTimer:
    """Returns 0, d1, d1 + gap, d1 + gap + d2, ...: forward i takes durations[i] seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.ticks: list[float] = []
        t = 0.0
        for d in durations:
            self.ticks += [t, t + d]
            t += d + 100.0  # time between forwards is never counted
        self.ticks.reverse()

    def __call__(self) -> float:
        return self.ticks.pop()


def test_median_and_spread_by_hand() -> None:
    # 5, 1, 3, 2, 4 ms -> sorted 1 2 3 4 5: median 3; Q1 = 2, Q3 = 4 (ranks 1 and 3 of 0..4) -> IQR 2;
    # |t - 3| = 2 2 0 1 1 -> MAD 1
    stats = summarize([0.005, 0.001, 0.003, 0.002, 0.004])
    assert stats == pytest.approx({"latency_ms": 3.0, "iqr_ms": 2.0, "mad_ms": 1.0, "min_ms": 1.0, "max_ms": 5.0})
    # even count 1 2 3 10 ms: median 2.5; Q1 at rank 0.75 = 1.75, Q3 at rank 2.25 = 4.75 -> IQR 3; MAD median(1.5 .5 .5 7.5) = 1
    stats = summarize([0.001, 0.002, 0.003, 0.010])
    assert stats["latency_ms"] == pytest.approx(2.5) and stats["iqr_ms"] == pytest.approx(3.0) and stats["mad_ms"] == pytest.approx(1.0)


def test_warmup_calls_are_not_timed_and_each_call_is_timed_alone() -> None:
    calls = []
    timer = _FakeTimer([0.004, 0.002, 0.006])
    times = time_calls(lambda: calls.append(1), warmup=2, repeats=3, timer=timer)
    assert len(calls) == 5 and times == pytest.approx([0.004, 0.002, 0.006])


def test_a_torch_measurement_on_a_fake_timer_reports_what_was_asked() -> None:
    model = build_model("digits_cnn", num_classes=10, in_chans=1)
    config = LatencyConfig(threads=1, warmup=1, repeats=3)
    lat = torch_latency(model, torch.randn(2, 1, 8, 8), batch=3, config=config, timer=_FakeTimer([0.003, 0.001, 0.002]))
    assert (lat.latency_ms, lat.iqr_ms, lat.runtime, lat.batch, lat.threads, lat.repeats) == pytest.approx(
        (2.0, 1.0, "torch", 3, 1, 3))
    assert lat.machine["cores"] and lat.machine["torch"] == torch.__version__


def test_real_measurements_are_positive_in_both_runtimes(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from compsearch.evaluators.onnx_export import export_onnx

    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 8, 8)
    out = export_onnx(model, {}, x, tmp_path / "m.onnx", dynamo=False)
    threads_before = torch.get_num_threads()
    results = measure_latency(model, out.path, x, LatencyConfig(batch_sizes=(1, 8), threads=1, warmup=2, repeats=5))
    assert sorted(results) == ["onnxruntime/b1", "onnxruntime/b8", "torch/b1", "torch/b8"]
    for lat in results.values():
        assert 0 < lat.min_ms <= lat.latency_ms <= lat.max_ms < 10_000 and lat.iqr_ms >= 0 and lat.mad_ms >= 0
    assert torch.get_num_threads() == threads_before  # restored


def test_the_signature_sees_shapes_and_kernels_not_indices() -> None:
    def plan(idxs):
        return PrunePlan(channels={"a": idxs}, groups={"a": ChannelGroup(out={"a": idxs, "bn": idxs}, inp={"b": idxs})})

    bits = {"a": (4, 8), "b": (32, 32)}
    base = structure_signature(plan((0, 1)), bits, base="m")
    assert base == structure_signature(plan((2, 5)), bits, base="m")  # other channels, same shapes
    assert base != structure_signature(plan((0, 1, 2)), bits, base="m")  # one more channel removed
    assert base == structure_signature(plan((0, 1)), {"a": (8, 6), "b": (32, 32)}, base="m")  # still int8 / QDQ
    assert base != structure_signature(plan((0, 1)), {"a": (12, 8), "b": (32, 32)}, base="m")  # float weights
    assert base != structure_signature(plan((0, 1)), bits, base="m", removed_blocks=["blocks.3"])
    assert base != structure_signature(plan((0, 1)), bits, base="other")
    assert len(base) == 16


def test_the_cache_measures_each_structure_once(tmp_path) -> None:
    from compsearch.evaluators.latency import Latency

    calls = []
    config = LatencyConfig(runtimes=("torch",), repeats=1, warmup=0)

    def measure():
        calls.append(1)
        return {"torch/b1": Latency(latency_ms=2.0, iqr_ms=0.1, mad_ms=0.05, min_ms=1.9, max_ms=2.2, runtime="torch",
                                    batch=1, threads=1, repeats=1, warmup=0, machine={"cpu": "x"})}

    cache = LatencyCache(tmp_path / "latency.json")
    assert cache.get("sig1", config, measure)["torch/b1"]["latency_ms"] == 2.0
    cache.get("sig1", config, measure)
    cache.get("sig2", config, measure)
    assert len(calls) == 2 and (cache.hits, cache.misses) == (1, 2)
    reloaded = LatencyCache(tmp_path / "latency.json")
    reloaded.get("sig1", config, measure)
    assert len(calls) == 2 and len(reloaded) == 2
    reloaded.get("sig1", LatencyConfig(runtimes=("torch",), repeats=1, warmup=0, threads=2), measure)  # other threads
    assert len(calls) == 3


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"runtimes=\['tvm'\]; allowed"):
        LatencyConfig(runtimes=("tvm",))
    with pytest.raises(ConfigError, match=r"batch_sizes=\[0\] must be integers >= 1"):
        LatencyConfig(batch_sizes=(0,))
    with pytest.raises(ConfigError, match=r"LatencyConfig.repeats=0 must be an integer >= 1"):
        LatencyConfig(repeats=0)
    with pytest.raises(ConfigError, match=r"runtime 'onnxruntime' needs onnx_path"):
        measure_latency(None, None, torch.zeros(1, 1), LatencyConfig(runtimes=("onnxruntime",)))


def test_a_policy_signature_needs_no_compression_and_ignores_the_criterion() -> None:
    from compsearch.evaluators.latency import policy_signature
    from compsearch.evaluators.speedup import PruneAnalyzer
    from compsearch.spaces import Policy, UnitPolicy, discover_units

    model = build_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 8, 8)
    units = discover_units(model, x)
    analyzer = PruneAnalyzer(model, x)
    half = policy_signature(analyzer, Policy({"features.3": UnitPolicy(keep=0.5)}), units, base="digits")
    # keep 0.5 and 0.51 of 32 channels both keep floor(16 + 0.5) = floor(16.32 + 0.5) = 16; w_bits 16 is still a float kernel
    assert half == policy_signature(analyzer, Policy({"features.3": UnitPolicy(keep=0.51, w_bits=16)}), units, base="digits")
    assert half != policy_signature(analyzer, Policy({"features.3": UnitPolicy(keep=0.25)}), units, base="digits")
    assert half != policy_signature(analyzer, Policy({"features.3": UnitPolicy(keep=0.5, w_bits=8)}), units, base="digits")
    assert policy_signature(analyzer, Policy(), units, base="digits") != half
