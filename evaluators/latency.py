"""Measured latency of a compressed model, and the structure signature that caches it.

``latency_ms`` is the **median** wall time of ``repeats`` timed forwards of one batch, after
``warmup`` untimed ones, in one runtime (``onnxruntime`` on the exported ONNX file, or
``torch`` eager under ``torch.no_grad``) with a fixed number of intra-op threads. Its spread
is the inter-quartile range ``iqr_ms = Q3 - Q1`` (quartiles by linear interpolation between
the sorted times, as ``numpy.percentile``) and the median absolute deviation ``mad_ms =
median |t - median|``. Every :class:`Latency` records the runtime, batch size, threads,
repeats, warm-up and the machine (:func:`machine`), so numbers from different machines are
never compared by accident.

Latency depends on the physical structure, not on the weights: the kept shapes of every
layer, the removed blocks and which units run int8 kernels (QDQ at ``<= 8`` bits) or float.
:func:`structure_signature` hashes exactly that, so a search measures each distinct
structure once (:class:`LatencyCache`) instead of once per trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError, check_int_at_least

RUNTIMES = ("onnxruntime", "torch")


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured.

    Attributes:
        runtimes: among ``"onnxruntime"`` (needs the ONNX file) and ``"torch"`` (eager).
        batch_sizes: batch sizes to time (the spec's batch size and 1).
        threads: intra-op threads of both runtimes.
        warmup: untimed forwards before timing.
        repeats: timed forwards (the median is over these).
    """

    runtimes: tuple[str, ...] = RUNTIMES
    batch_sizes: tuple[int, ...] = (1,)
    threads: int = 1
    warmup: int = 10
    repeats: int = 50

    def __post_init__(self) -> None:
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown or not self.runtimes:
            raise ConfigError(f"latency runtimes={list(self.runtimes)!r}; allowed: a non-empty subset of {list(RUNTIMES)}")
        if not self.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"latency batch_sizes={list(self.batch_sizes)!r} must be integers >= 1")
        check_int_at_least("LatencyConfig", self, {"threads": 1, "warmup": 0, "repeats": 1})


@dataclass(frozen=True)
class Latency:
    """One measurement (see the module docstring for the definitions).

    Attributes:
        latency_ms: median time of one forward of ``batch`` samples, milliseconds.
        iqr_ms, mad_ms: inter-quartile range and median absolute deviation, milliseconds.
        min_ms, max_ms: fastest and slowest timed forward.
        runtime, batch, threads, repeats, warmup: how it was measured.
        machine: :func:`machine` of the host that measured it.
    """

    latency_ms: float
    iqr_ms: float
    mad_ms: float
    min_ms: float
    max_ms: float
    runtime: str
    batch: int
    threads: int
    repeats: int
    warmup: int
    machine: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (``numpy.percentile``'s default)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """``latency_ms`` (median), ``iqr_ms``, ``mad_ms``, ``min_ms``, ``max_ms`` of per-forward times in seconds."""
    if not seconds:
        raise ConfigError("summarize() needs at least one timing")
    ms = sorted(1000.0 * s for s in seconds)
    median = statistics.median(ms)
    return {"latency_ms": median, "iqr_ms": _quantile(ms, 0.75) - _quantile(ms, 0.25),
            "mad_ms": statistics.median(abs(t - median) for t in ms), "min_ms": ms[0], "max_ms": ms[-1]}


def time_calls(fn: Callable[[], Any], *, warmup: int, repeats: int,
               timer: Callable[[], float] = time.perf_counter) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed alone (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = timer()
        fn()
        times.append(timer() - start)
    return times


def machine() -> dict[str, str]:
    """The host: CPU model, logical cores, OS, Python, torch and onnxruntime versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "os": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": ort_version}


def _batch(example_input: torch.Tensor, batch: int) -> torch.Tensor:
    reps = -(-batch // example_input.shape[0])
    return example_input.repeat(reps, *([1] * (example_input.dim() - 1)))[:batch].contiguous()


def _result(times: list[float], *, runtime: str, batch: int, config: LatencyConfig) -> Latency:
    return Latency(**summarize(times), runtime=runtime, batch=batch, threads=config.threads, repeats=config.repeats,
                   warmup=config.warmup, machine=machine())


def torch_latency(model: nn.Module, example_input: torch.Tensor, *, batch: int, config: LatencyConfig,
                  timer: Callable[[], float] = time.perf_counter) -> Latency:
    """Eager torch latency of ``model`` (eval mode, no gradients, ``config.threads`` threads)."""
    x = _batch(example_input, batch)
    before, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(config.threads)
    model.eval()
    try:
        with torch.no_grad():
            times = time_calls(lambda: model(x), warmup=config.warmup, repeats=config.repeats, timer=timer)
    finally:
        torch.set_num_threads(before)
        model.train(was_training)
    return _result(times, runtime="torch", batch=batch, config=config)


def onnx_latency(path: str | Path, example_input: torch.Tensor, *, batch: int, config: LatencyConfig,
                 timer: Callable[[], float] = time.perf_counter) -> Latency:
    """onnxruntime (CPU) latency of the ONNX file at ``path`` (its batch axis must be dynamic, or equal ``batch``)."""
    from compsearch.evaluators.onnx_export import ort_session

    session = ort_session(path, threads=config.threads)
    feed = {session.get_inputs()[0].name: _batch(example_input, batch).numpy()}
    times = time_calls(lambda: session.run(None, feed), warmup=config.warmup, repeats=config.repeats, timer=timer)
    return _result(times, runtime="onnxruntime", batch=batch, config=config)


def measure_latency(model: nn.Module | None, onnx_path: str | Path | None, example_input: torch.Tensor,
                    config: LatencyConfig | None = None) -> dict[str, Latency]:
    """Every runtime x batch size of ``config``, keyed ``"<runtime>/b<batch>"``.

    Args:
        model: the torch model (for ``"torch"``).
        onnx_path: its ONNX export (for ``"onnxruntime"``).
        example_input: a batch ``n x ...``; repeated or cut to each batch size.
        config: default :class:`LatencyConfig`.

    Raises:
        ConfigError: a runtime of ``config`` lacks its model or file.
    """
    config = config or LatencyConfig()
    out: dict[str, Latency] = {}
    for runtime in config.runtimes:
        if (runtime == "torch" and model is None) or (runtime == "onnxruntime" and onnx_path is None):
            raise ConfigError(f"latency runtime {runtime!r} needs {'model' if runtime == 'torch' else 'onnx_path'}; "
                              f"pass it or drop {runtime!r} from LatencyConfig.runtimes")
        for batch in config.batch_sizes:
            if model is not None and runtime == "torch":
                out[f"torch/b{batch}"] = torch_latency(model, example_input, batch=batch, config=config)
            elif onnx_path is not None:
                out[f"onnxruntime/b{batch}"] = onnx_latency(onnx_path, example_input, batch=batch, config=config)
    return out


def structure_signature(plan: Any, bits: Mapping[str, tuple[int, int]], *, base: str = "", qdq_bits: int = 8,
                        removed_blocks: Sequence[str] = ()) -> str:
    """A 16-hex-digit hash of what makes the exported model's kernels what they are.

    Args:
        plan: the :class:`~compsearch.evaluators.speedup.PrunePlan` (or None): how many output
            and input channels each module loses (which ones does not change the kernels).
        bits: unit -> ``(w_bits, a_bits)``; only the kernel kind counts: int8 weights
            (``w_bits <= qdq_bits``) or float, and a QDQ input (``a_bits <= qdq_bits``), a
            rounded float input (up to 15 bits) or a float one.
        base: identifies the uncompressed model and input shape (e.g. model name + shape).
        qdq_bits: the export's QDQ threshold.
        removed_blocks: blocks a depth space removed.
    """
    outs, ins = plan.merged() if plan is not None else ({}, {})
    shapes = {m: [len(outs.get(m, ())), len(ins.get(m, ()))] for m in sorted(set(outs) | set(ins))}

    def kind(w: int, a: int) -> str:
        weight = "int8" if w <= qdq_bits else "float"
        act = "qdq" if a <= qdq_bits else ("round" if a < 16 else "float")
        return f"{weight}/{act}"

    kernels = {u: kind(w, a) for u, (w, a) in sorted(bits.items()) if kind(w, a) != "float/float"}
    payload = json.dumps({"base": base, "removed_channels": shapes, "kernels": kernels,
                          "removed_blocks": sorted(removed_blocks)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def policy_signature(analyzer: Any, policy: Any, units: Sequence[Any], *, base: str = "", qdq_bits: int = 8,
                     removed_blocks: Sequence[str] = ()) -> str:
    """:func:`structure_signature` of a policy, without compressing anything.

    Which channels a criterion prunes does not change the shapes, so every channel-pruned
    unit (the classifier excluded) is planned with its first ``c - k`` channels, ``k`` the
    kept count of :func:`~compsearch.evaluators.masks.keep_count`; the groups come from
    ``analyzer`` (a :class:`~compsearch.evaluators.speedup.PruneAnalyzer`, cached per unit
    and count: milliseconds per policy).
    """
    from compsearch.evaluators.masks import keep_count

    channels = {}
    for unit in units:
        up = policy.get_or_identity(unit.name)
        if up.pruned and up.structure == "channel" and not unit.is_head:
            channels[unit.name] = tuple(range(unit.out_channels - keep_count(up.keep, unit.out_channels)))
    bits = {name: (up.w_bits, up.a_bits) for name, up in policy.items()}
    return structure_signature(analyzer.plan(channels) if channels else None, bits, base=base, qdq_bits=qdq_bits,
                               removed_blocks=removed_blocks)


class LatencyCache:
    """Latency per structure signature (and runtime/batch/threads): each structure is measured once.

    Args:
        path: an optional JSON file the cache is loaded from and saved to.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.exists():
            self._data = json.loads(self.path.read_text(encoding="utf-8"))

    @staticmethod
    def key(signature: str, config: LatencyConfig) -> str:
        """The cache key: the structure, how it is measured, and the CPU that measures it."""
        how = {"runtimes": list(config.runtimes), "batch_sizes": list(config.batch_sizes), "threads": config.threads,
               "repeats": config.repeats, "warmup": config.warmup, "cpu": machine()["cpu"]}
        return f"{signature}:{hashlib.sha256(json.dumps(how, sort_keys=True).encode()).hexdigest()[:8]}"

    def get(self, signature: str, config: LatencyConfig, measure: Callable[[], dict[str, Latency]]) -> dict[str, dict[str, Any]]:
        """The cached measurements of ``signature`` under ``config``, measuring (and saving) them on a miss.

        Returns:
            ``"<runtime>/b<batch>"`` -> :meth:`Latency.to_dict`.
        """
        key = self.key(signature, config)
        if key in self._data:
            self.hits += 1
            return self._data[key]
        self.misses += 1
        self._data[key] = {name: lat.to_dict() for name, lat in measure().items()}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self._data, indent=1, sort_keys=True), encoding="utf-8")
        return self._data[key]

    def __len__(self) -> int:
        return len(self._data)


__all__ = ["RUNTIMES", "Latency", "LatencyCache", "LatencyConfig", "machine", "measure_latency", "onnx_latency",
           "policy_signature", "structure_signature", "summarize", "time_calls", "torch_latency"]
