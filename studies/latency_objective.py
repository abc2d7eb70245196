"""``latency_ms`` during a search: measured once per distinct exported structure, cached in the run folder.

A study whose objectives or constraints name ``latency_ms`` (e.g. ``max_latency_ms = 2.0``)
builds its evaluators as :class:`LatencyEvaluator`. After each evaluation it adds to the
result's values

* ``latency_ms``: the median wall time of one forward of the model that ``compsearch export``
  would write for this evaluation, in ``[latency] runtime`` (``onnxruntime`` on its ONNX
  file, or ``torch`` eager) at ``[latency] batch`` samples with ``[latency] threads``
  intra-op threads, after ``warmup`` untimed forwards, over ``repeats`` timed ones
  (:mod:`compsearch.evaluators.latency`);
* ``latency_iqr_ms``: the inter-quartile range of those forwards,

so every host records them through the trial record like any other metric, and
``max_latency_ms`` goes to Optuna's constraint mechanism.

**Once per structure.** Latency depends on the exported model's structure, not its weights:
which output channels physically leave each layer and which units run int8 (QDQ) or float
kernels. The structure is the export's own: the prune plan that
:func:`~compsearch.evaluators.bundle.write_bundle` computes on the evaluated model
(``physically_prune(..., reference="model")``: a pruned unit whose channels are still
alive in the evaluated model, e.g. through a bias, stays masked and costs full width) and
each unit's kernel kind, hashed by
:func:`~compsearch.evaluators.latency.structure_signature`. Only a signature never seen
before is measured: the bundle is written to a temporary folder exactly as export writes
it (TorchScript exporter), loaded back and timed. Measurements live in
``<run>/latency.json`` (:class:`RunLatencyCache`), keyed by the signature, the measurement
settings and the CPU model; each holds its spread (``iqr_ms``, ``mad_ms``), ``min_ms``,
``max_ms`` and the machine (CPU, cores, OS, Python, torch and onnxruntime versions).
Worker processes re-read the file before measuring, so a structure another process
already measured is not measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.evaluators.latency import (
    Latency,
    LatencyCache,
    LatencyConfig,
    measure_latency,
    structure_signature,
)
from compsearch.evaluators.speedup import PruneAnalyzer, _live_channels, clone_model
from compsearch.evaluators.types import EvalResult
from compsearch.evaluators.unit_quant import (
    UnitQuant,
    effective_model,
    from_compressed_units,
    pruned_rows,
)
from compsearch.spaces.policy import Policy

LATENCY_FILE = "latency.json"
LATENCY_METRICS = ("latency_ms", "latency_iqr_ms")


def needs_latency(objectives: Any, constraints: Mapping[str, Any]) -> bool:
    """Whether ``latency_ms`` is an objective (metric names or ``(metric, direction)`` pairs) or a constraint."""
    names = {o if isinstance(o, str) else o[0] for o in objectives}
    return "latency_ms" in names or any(k.endswith("_latency_ms") for k in constraints)


def latency_config(runtime: str = "onnxruntime", batch: int = 1, *, threads: int = 1, warmup: int = 5,
                   repeats: int = 20) -> LatencyConfig:
    """The :class:`LatencyConfig` of the search's ``latency_ms``: one runtime, one batch size."""
    return LatencyConfig(runtimes=(runtime,), batch_sizes=(batch,), threads=threads, warmup=warmup, repeats=repeats)


class RunLatencyCache(LatencyCache):
    """A :class:`LatencyCache` shared by the processes of one run folder.

    On a miss the file is read again (another worker may have measured the structure
    since), and after measuring, the entry is merged into the file's current contents and
    written atomically (temporary file, then rename).
    """

    def get(self, signature: str, config: LatencyConfig,
            measure: Callable[[], dict[str, Latency]]) -> dict[str, dict[str, Any]]:
        key = self.key(signature, config)
        if key not in self._data and self.path is not None and self.path.exists():
            self._data.update(_read(self.path))
        if key in self._data:
            self.hits += 1
            return self._data[key]
        self.misses += 1
        entry = {name: lat.to_dict() for name, lat in measure().items()}
        self._data[key] = entry
        if self.path is not None:
            merged = {**(_read(self.path) if self.path.exists() else {}), key: entry}
            self._data.update(merged)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".latency-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(merged, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        return entry


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def architecture_digest(model: nn.Module, example_input: torch.Tensor) -> str:
    """A 12-hex-digit hash of the uncompressed architecture (parameter and buffer shapes) and input shape."""
    shapes = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    payload = json.dumps({"class": type(model).__name__, "shapes": shapes, "input": list(example_input.shape[1:])})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def kernel_bits(units: Mapping[str, UnitQuant]) -> dict[str, tuple[int, int]]:
    """Unit -> ``(w_bits, a_bits)`` as the export runs it (a functional unit stays float)."""
    return {name: (32, 32) if uq.functional else (uq.w_bits, uq.a_bits if uq.act_quantized else 32)
            for name, uq in units.items()}


def removed_blocks(policy: Policy) -> dict[str, str | None]:
    """The policy's removed blocks (block -> shortcut path or None)."""
    return dict(getattr(policy, "removed", None) or {})


def without_removed(model: nn.Module, units: Mapping[str, UnitQuant],
                    removed: Mapping[str, str | None]) -> tuple[nn.Module, dict[str, UnitQuant]]:
    """``model`` with the removed blocks replaced and the records of units inside them dropped,
    as :func:`~compsearch.evaluators.bundle.write_bundle` does before planning."""
    if not removed:
        return model, dict(units)
    from compsearch.evaluators.removal import remove_blocks

    gone = Policy({}, removed=removed)
    return remove_blocks(model, removed), {n: u for n, u in units.items() if not gone.removes(n)}


class StructureLatency:
    """Latency of the exported structure of compressed models, measured once per structure.

    Args:
        model: the uncompressed model (its architecture; copied, CPU).
        example_input: a batch ``n x ...`` (traced, and repeated or cut to the batch size).
        config: how to measure (:func:`latency_config`): its first runtime and batch size give ``latency_ms``.
        cache: where measurements are kept (default: in memory only).

    Attributes:
        measurements: how many structures this object measured (cache misses).
    """

    def __init__(self, *, model: nn.Module, example_input: torch.Tensor, config: LatencyConfig,
                 cache: LatencyCache | None = None) -> None:
        self.model = clone_model(model).cpu().eval()
        self.example_input = example_input.detach().cpu()
        self.config = config
        self.cache = cache if cache is not None else LatencyCache()
        self.base = architecture_digest(self.model, self.example_input)
        self.measurements = 0
        self._analyzers: dict[str, PruneAnalyzer] = {}

    def signature(self, plain: nn.Module, units: Mapping[str, UnitQuant], policy: Policy) -> str:
        """The structure signature of what ``write_bundle(plain, units, ...)`` would export.

        The plan is ``plan_pruning(..., reference="model")``'s on the effective model: the
        groups come from one traced graph kept for every call (the architecture does not
        change between trials), and a group whose channels are alive in this model stays
        masked, by the library's own test (``speedup._live_channels``).
        """
        removed = removed_blocks(policy)
        plain, units = without_removed(plain, units, removed)
        channels = pruned_rows(units)
        plan = None
        if channels:
            key = json.dumps(removed, sort_keys=True)
            if key not in self._analyzers:  # one traced graph per set of removed blocks
                self._analyzers[key] = PruneAnalyzer(without_removed(self.model, {}, removed)[0], self.example_input[:2])
            plan = self._analyzers[key].plan(channels)
            model = effective_model(plain, units)
            plan = plan.mask({u: "alive" for u, group in plan.groups.items() if _live_channels(model, u, group)})
        return structure_signature(plan, kernel_bits(units), base=self.base, removed_blocks=tuple(removed))

    def measure(self, plain: nn.Module, units: Mapping[str, UnitQuant], policy: Policy) -> dict[str, float]:
        """``latency_ms`` and ``latency_iqr_ms`` of the export of ``plain`` (the compressed model's
        stored weights) with ``units``; measured only when its structure is not cached."""
        signature = self.signature(plain, units, policy)
        got = self.cache.get(signature, self.config, lambda: self._time(plain, units, removed_blocks(policy)))
        key = f"{self.config.runtimes[0]}/b{self.config.batch_sizes[0]}"
        return {"latency_ms": float(got[key]["latency_ms"]), "latency_iqr_ms": float(got[key]["iqr_ms"])}

    def _time(self, plain: nn.Module, units: Mapping[str, UnitQuant], removed: Mapping[str, str | None]) -> dict[str, Latency]:
        from compsearch.evaluators.bundle import ONNX, load_bundle, write_bundle

        self.measurements += 1
        onnx = "onnxruntime" in self.config.runtimes
        with tempfile.TemporaryDirectory(prefix="compsearch-latency-") as tmp:
            write_bundle(plain, units, self.example_input[:2], tmp, onnx=onnx, dynamo=False, removed=removed)
            model = load_bundle(tmp, clone_model(self.model))
            return measure_latency(model, Path(tmp) / ONNX if onnx else None, self.example_input, self.config)


class LatencyEvaluator(CompressionEvaluator):
    """A :class:`CompressionEvaluator` whose results also hold ``latency_ms`` and ``latency_iqr_ms``.

    Args:
        model, task_or_data: as for :class:`CompressionEvaluator`.
        latency_config: how to measure (:func:`latency_config`).
        cache: the run's measurements (share one between the evaluators of a run).
        **kwargs: the keyword arguments of :class:`CompressionEvaluator`.

    Attributes:
        latency: the :class:`StructureLatency` measurer (``latency.measurements`` counts misses).
    """

    def __init__(self, model: nn.Module, task_or_data: Any, *, latency_config: LatencyConfig,
                 cache: LatencyCache | None = None, **kwargs: Any) -> None:
        super().__init__(model, task_or_data, **kwargs)
        self.latency = StructureLatency(model=model, example_input=self.task.example_input(), config=latency_config,
                                        cache=cache)

    def compressed_model(self, policy: Policy) -> tuple[nn.Module, dict[str, UnitQuant]]:
        """The last evaluated model as a plain CPU model (its stored weights) and its units' records."""
        plain = clone_model(self.latency.model)
        plain.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        return plain, from_compressed_units(self.compressed_units(), policy)

    def evaluate(self, policy: Any, **kwargs: Any) -> EvalResult:
        """:meth:`CompressionEvaluator.evaluate`, plus the latency metrics (module docstring)."""
        result = super().evaluate(policy, **kwargs)
        start = time.perf_counter()
        policy = policy if isinstance(policy, Policy) else Policy(policy)
        plain, units = self.compressed_model(policy)
        extra = self.latency.measure(plain, units, policy)
        seconds = {**result.seconds, "latency": time.perf_counter() - start}
        return EvalResult(values={**result.values, **extra}, quality=result.quality, size_bits=result.size_bits,
                          compression_ratio=result.compression_ratio, bops=result.bops, sparsity=result.sparsity,
                          test_values=result.test_values, steps=result.steps, seconds=seconds)


def evaluator_factory(model: nn.Module, source: Any, spec: Any, out_dir: Path) -> Callable[[int], CompressionEvaluator]:
    """``seed -> evaluator`` of a run: a :class:`LatencyEvaluator` (all seeds share
    ``<out_dir>/latency.json``) when the spec's objectives or constraints name ``latency_ms``,
    else a plain :class:`CompressionEvaluator`.

    Raises:
        ConfigError: latency in onnxruntime is asked for and onnxruntime or onnx is not installed.
    """
    lat = getattr(spec, "latency", None)
    blocks = spec.space.block_override()
    if lat is None or not needs_latency(spec.objective_pairs, spec.constraints):
        return lambda seed: CompressionEvaluator(model, source, config=spec.evaluator.config(seed=seed),
                                                 blocks=blocks, device=spec.evaluator.device)
    if lat.runtime == "onnxruntime":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"latency.runtime='onnxruntime' needs onnx and onnxruntime ({e}); install them with "
                              f"pip install 'compsearch[export]', or set [latency] runtime = 'torch'") from None
    config = latency_config(lat.runtime, lat.batch, threads=lat.threads, warmup=lat.warmup, repeats=lat.repeats)
    cache = RunLatencyCache(out_dir / LATENCY_FILE)
    return lambda seed: LatencyEvaluator(model, source, latency_config=config, cache=cache,
                                         config=spec.evaluator.config(seed=seed), blocks=blocks,
                                         device=spec.evaluator.device)


__all__ = ["LATENCY_FILE", "LATENCY_METRICS", "LatencyEvaluator", "RunLatencyCache", "StructureLatency",
           "architecture_digest", "evaluator_factory", "kernel_bits", "latency_config", "needs_latency", "removed_blocks",
           "without_removed"]
