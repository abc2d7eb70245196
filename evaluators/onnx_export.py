"""ONNX export of a compressed model: QDQ int8 where a unit has 8 bits or fewer, float elsewhere.

The graph computes what the compressed forward computes (the evaluator's masks, grids and
input quantizers), given a model whose unit weights are the effective weights (after
physical pruning, :func:`~compsearch.evaluators.speedup.apply_plan`) and the units'
:class:`~compsearch.evaluators.unit_quant.UnitQuant` records in that model's shapes:

* weight, ``w_bits <= qdq_bits``: ``DequantizeLinear(int8 codes, scale, zero_point, axis=0)``
  (per channel) or per tensor. The codes are the unit's integer grid, shifted into int8:
  symmetric grids as they are (``|q| <= 127``); asymmetric ones ``q - 128`` with zero point
  ``zero_point - 128``; the binary grid ``+-1`` with scale ``scale / 2``. Exactly the
  evaluated weight.
* input, ``a_bits <= qdq_bits``: ``Clip(lo, hi)`` (the calibrated range, so grids narrower
  than 8 bits stay narrow), ``Mul(1 / scale)``, ``QuantizeLinear(scale=1, zero_point)``,
  ``DequantizeLinear(scale, zero_point)``, uint8 (the multiplication first rounds the same
  numbers as the evaluator, which multiplies by the reciprocal where ``QuantizeLinear`` divides).
* units with 9..15 bits: float weights (the effective ones), and the input grid as float
  ops (``Clip``, ``Mul``, ``Round``, ``Mul``); units at 16+ bits: plain float.

Exporters (torch 2.14): ``dynamo=True`` (default, ``torch.export`` + onnxscript, opset 20;
~4-15 s per call on 2 CPU cores) writes the QDQ nodes with ``torch.onnx.ops.symbolic``
(``torch.fake_quantize_*`` ops would not export with a dynamic batch); ``dynamo=False`` (the
deprecated TorchScript exporter, opset 17, well under a second) writes them through
``autograd.Function.symbolic``. In eager mode the same module computes the evaluator's float
math, so the torch model that is exported is also the reference the ONNX output is checked
against. Weights are stored as int8 initializers.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from compsearch.errors import ConfigError, ModelError
from compsearch.evaluators.speedup import clone_model, unit_weight
from compsearch.evaluators.unit_quant import UnitQuant


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        qdq_units: units with int8 QDQ weights.
        qdq_inputs: units whose input is QDQ uint8.
        float_units: units exported with float weights.
        exporter: ``"dynamo"`` or ``"torchscript"``.
        opset: the ONNX opset.
        dynamic_batch: the batch axis is dynamic.
        file_bytes: size of the file.
        seconds: wall time of the export.
    """

    path: Path
    qdq_units: tuple[str, ...]
    qdq_inputs: tuple[str, ...]
    float_units: tuple[str, ...]
    exporter: str
    opset: int
    dynamic_batch: bool
    file_bytes: int
    seconds: float


class _DequantizeTS(torch.autograd.Function):
    """``DequantizeLinear`` for the TorchScript exporter (eager: ``(codes - zero_point) * scale``)."""

    @staticmethod
    def forward(ctx: Any, codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        return _dequantize(codes, scale, zp)

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zp: Any) -> Any:
        return g.op("DequantizeLinear", codes, scale, zp, axis_i=0)


class _QDQTS(torch.autograd.Function):
    """``Mul(x, 1/scale)``, ``QuantizeLinear(., 1, zp)``, ``DequantizeLinear(., scale, zp)`` for the TorchScript exporter."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, inv: torch.Tensor, one: torch.Tensor, scale: torch.Tensor,
                zp: torch.Tensor) -> torch.Tensor:
        return torch.round(x * inv) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, inv: Any, one: Any, scale: Any, zp: Any) -> Any:
        return g.op("DequantizeLinear", g.op("QuantizeLinear", g.op("Mul", x, inv), one, zp), scale, zp)


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (codes.dim() - 1) if scale.dim() else ()
    return (codes.float() - zp.float().reshape(shape)) * scale.reshape(shape)


_DYNAMO_OPSET = 20
WEIGHT_DTYPES = ("int8", "uint8")


def _symbolic(op: str, inputs: tuple[torch.Tensor, ...], attrs: dict[str, Any], dtype: torch.dtype, shape: Any) -> torch.Tensor:
    return torch.onnx.ops.symbolic(f"::{op}", inputs, attrs, dtype=dtype, shape=shape, version=_DYNAMO_OPSET)


class _ExportUnit(nn.Module):
    """A unit's layer with its input and weight grids as QDQ ops (eager: the evaluator's float math).

    Buffers: ``w_codes`` (int8, the weight's shape), ``w_scale`` (float32, ``out`` or a
    scalar), ``w_zero_point`` (int8, like the scale); ``a_scale`` (float32 scalar),
    ``a_zero_point`` (uint8 scalar).
    """

    def __init__(self, layer: nn.Module, uq: UnitQuant, *, qdq_bits: int, weight_dtype: str = "int8") -> None:
        super().__init__()
        self.layer = layer
        self.act: tuple[float, float, float] | None = None  # scale, lo, hi
        self.act_qdq = uq.act_quantized and uq.a_bits <= qdq_bits
        if uq.act_quantized and uq.act_scale is not None:
            scale, zp = float(uq.act_scale), int(uq.act_zero_point or 0)
            self.act = (scale, -zp * scale, (2**uq.a_bits - 1 - zp) * scale)
            self.register_buffer("a_scale", torch.tensor(scale, dtype=torch.float32))
            self.register_buffer("a_inv_scale", torch.tensor(1.0 / scale, dtype=torch.float32))
            self.register_buffer("a_one", torch.tensor(1.0, dtype=torch.float32))
            self.register_buffer("a_zero_point", torch.tensor(zp, dtype=torch.uint8))
        self.weight_qdq = uq.quantized and uq.w_bits <= qdq_bits
        if self.weight_qdq:
            w_scale, w_zp = _int8_grid(uq)
            codes = torch.round(uq.weight / _per_row(w_scale, uq.weight)) + _per_row(w_zp.float(), uq.weight)
            shift, dtype = (128, torch.uint8) if weight_dtype == "uint8" else (0, torch.int8)
            self.register_buffer("w_codes", (codes.clamp(-128, 127) + shift).to(dtype))
            self.register_buffer("w_scale", w_scale)
            self.register_buffer("w_zero_point", (w_zp + shift).to(dtype))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        assert self.act is not None
        scale, lo, hi = self.act
        x = x.clamp(lo, hi)
        if not self.act_qdq:
            return torch.round(x * (1.0 / scale)) * scale
        # QuantizeLinear divides by its scale; the evaluator multiplies by 1 / scale. Multiplying
        # first and quantizing with scale 1 makes onnxruntime round exactly the same numbers.
        inv, one = cast(torch.Tensor, self.a_inv_scale), cast(torch.Tensor, self.a_one)
        a_scale, a_zp = cast(torch.Tensor, self.a_scale), cast(torch.Tensor, self.a_zero_point)
        if torch.jit.is_tracing():
            return cast(torch.Tensor, _QDQTS.apply(x, inv, one, a_scale, a_zp))
        if torch.onnx.is_in_onnx_export():
            q = _symbolic("QuantizeLinear", (x * inv, one, a_zp), {}, torch.uint8, x.shape)
            return _symbolic("DequantizeLinear", (q, a_scale, a_zp), {}, torch.float32, x.shape)
        return torch.mul(x, 1.0 / scale).round_().mul_(scale)  # the evaluator's input quantizer

    def _weight(self) -> torch.Tensor:
        codes, scale, zp = (cast(torch.Tensor, t) for t in (self.w_codes, self.w_scale, self.w_zero_point))
        if torch.jit.is_tracing():
            return cast(torch.Tensor, _DequantizeTS.apply(codes, scale, zp))
        if torch.onnx.is_in_onnx_export():
            return _symbolic("DequantizeLinear", (codes, scale, zp), {"axis": 0}, torch.float32, codes.shape)
        return _dequantize(codes, scale, zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self._input(x)
        if not self.weight_qdq:
            return cast(torch.Tensor, self.layer(x))
        return _forward_with(self.layer, self._weight(), x)


def _per_row(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (like.dim() - 1)) if t.dim() else t


def _forward_with(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` with ``weight`` in place of its weight (its own forward, e.g. timm's same-padding convs)."""
    forward = type(layer).forward
    if forward in (nn.Conv1d.forward, nn.Conv2d.forward):
        return cast(torch.Tensor, layer._conv_forward(x, weight, layer.bias))  # type: ignore[operator]
    if forward is nn.Linear.forward:
        return torch.nn.functional.linear(x, weight, cast("torch.Tensor | None", layer.bias))
    if not torch.jit.is_tracing():
        return cast(torch.Tensor, torch.func.functional_call(layer, {"weight": weight}, (x,)))
    original = layer._parameters.pop("weight")  # the TorchScript tracer refuses functional_call
    try:
        layer.weight = weight
        return cast(torch.Tensor, layer(x))
    finally:
        del layer.weight
        layer._parameters["weight"] = original


def _int8_grid(uq: UnitQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` (float32, int32; ``out`` per channel, scalars per tensor) of the grid in int8."""
    if uq.scale is None or uq.zero_point is None:
        raise ConfigError(f"a quantized unit (w_bits={uq.w_bits}) needs its scale and zero point")
    scale, zp = uq.scale.float().reshape(-1), uq.zero_point.float().reshape(-1)
    if uq.scheme == "symmetric" and uq.w_bits == 1:
        scale, zp = scale * 0.5, torch.zeros_like(scale)  # codes +-1
    elif uq.scheme == "asymmetric":
        zp = zp - 128
    if not uq.per_channel:
        scale, zp = scale[0], zp[0]
    return scale, zp.round().to(torch.int32)


def export_model(model: nn.Module, units: Mapping[str, UnitQuant], *, qdq_bits: int = 8,
                 weight_dtype: str = "int8") -> nn.Module:
    """A copy of ``model`` (eval mode) whose units hold their integer codes and grids.

    In torch it computes what the compressed forward computes; exported, the grids become QDQ.
    """
    if not 1 <= qdq_bits <= 8:
        raise ConfigError(f"qdq_bits={qdq_bits!r}; allowed: 1..8 (int8 holds at most 8-bit grids)")
    if weight_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"weight_dtype={weight_dtype!r}; allowed: {list(WEIGHT_DTYPES)}")
    out = clone_model(model).eval()
    for name, uq in units.items():
        weight = unit_weight(out, name)
        if tuple(weight.shape) != tuple(uq.weight.shape):
            raise ConfigError(f"unit {name!r}: weight shape {tuple(uq.weight.shape)} differs from the model's "
                              f"{tuple(weight.shape)}; restrict the units to the prune plan")
        if uq.functional or not (uq.quantized or uq.act_quantized):
            continue  # float; a functional weight is read by its parent, which a wrapper would not see
        try:
            layer: nn.Module | None = out.get_submodule(name)
        except AttributeError:
            layer = None  # a raw parameter
        if not isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Linear):
            raise ConfigError(f"unit {name!r} is not a Conv1d/Conv2d/Linear layer ({type(layer).__name__}); mark it "
                              f"functional (UnitQuant.functional=True) to export it in float")
        parent_name, _, child = name.rpartition(".")
        wrapper = _ExportUnit(layer, uq, qdq_bits=qdq_bits, weight_dtype=weight_dtype)
        setattr(out.get_submodule(parent_name) if parent_name else out, child, wrapper)
    return out


def export_onnx(model: nn.Module, units: Mapping[str, UnitQuant], example_input: torch.Tensor, path: str | Path,
                *, qdq_bits: int = 8, weight_dtype: str = "int8", dynamo: bool = True, dynamic_batch: bool = True,
                opset: int | None = None) -> OnnxExport:
    """Export the compressed model to ONNX (see the module docstring).

    Args:
        model: the model with effective unit weights (physically pruned where possible).
        units: unit -> :class:`UnitQuant` in the model's shapes; units not listed stay float.
        example_input: a batch ``n x ...``; its shape fixes every axis but the batch axis.
        path: the ``.onnx`` file to write.
        qdq_bits: units with at most this many bits get QDQ (weights int8, inputs uint8).
        weight_dtype: ``"int8"`` (the usual QDQ int8) or ``"uint8"`` (codes + 128: onnxruntime's
            u8u8 kernels, exact on CPUs whose u8s8 kernels saturate, see :func:`ort_session`).
        dynamo: the ``torch.export`` exporter (else the TorchScript one).
        dynamic_batch: make the batch axis dynamic (falls back to a fixed batch if the
            exporter refuses; :attr:`OnnxExport.dynamic_batch` says which).
        opset: ONNX opset (None: the exporter's default; the TorchScript exporter gets 17).

    Raises:
        ModelError: the exporter failed (the message carries its error).
    """
    import onnx

    start = time.perf_counter()
    graph_model = export_model(model, units, qdq_bits=qdq_bits, weight_dtype=weight_dtype)
    path = Path(path)
    tries = [True, False] if dynamic_batch else [False]
    error = ""
    for dynamic in tries:
        try:
            proto = _export(graph_model, example_input, dynamo=dynamo, dynamic=dynamic, opset=opset)
            break
        except Exception as e:  # noqa: BLE001 - retried with a fixed batch, then reported as a ModelError
            error = f"{type(e).__name__}: {str(e)[:300]}"
    else:
        raise ModelError(f"ONNX export failed ({'dynamo' if dynamo else 'torchscript'} exporter): {error}; "
                         f"try dynamo={not dynamo}")
    _drop_unused_initializers(proto)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    qdq = tuple(n for n, uq in units.items() if uq.quantized and uq.w_bits <= qdq_bits and not uq.functional)
    return OnnxExport(
        path=path, qdq_units=qdq, float_units=tuple(n for n in units if n not in qdq),
        qdq_inputs=tuple(n for n, uq in units.items() if uq.act_quantized and uq.a_bits <= qdq_bits and not uq.functional),
        exporter="dynamo" if dynamo else "torchscript", opset=int(proto.opset_import[0].version),
        dynamic_batch=dynamic, file_bytes=path.stat().st_size, seconds=time.perf_counter() - start)


def _drop_unused_initializers(proto: Any) -> None:
    """Remove initializers no node reads (the float weights the int8 codes replaced) and the
    exporter's per-node debug metadata (source stack, FX node; half of a small model's file)."""
    graph = proto.graph
    for node in graph.node:
        del node.metadata_props[:]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _export(model: nn.Module, x: torch.Tensor, *, dynamo: bool, dynamic: bool, opset: int | None) -> Any:
    """The ONNX ``ModelProto`` of one exporter run (its warnings and info logging silenced, then restored)."""
    import logging

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            return _run_exporter(model, x, dynamo=dynamo, dynamic=dynamic, opset=opset)
        finally:
            logger.setLevel(level)


def _run_exporter(model: nn.Module, x: torch.Tensor, *, dynamo: bool, dynamic: bool, opset: int | None) -> Any:
    import io

    import onnx

    export: Any = torch.onnx.export  # untyped call: the two exporters take different keywords
    if dynamo:
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
        program = export(model, (x,), dynamo=True, dynamic_shapes=shapes, optimize=True, verbose=False,
                         opset_version=opset or _DYNAMO_OPSET, input_names=["input"], output_names=["output"])
        return program.model_proto
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    export(model, (x,), buffer, dynamo=False, dynamic_axes=axes, opset_version=opset or 17,
           input_names=["input"], output_names=["output"])
    return onnx.load_from_string(buffer.getvalue())


def ort_session(path: str | Path, *, threads: int = 1, int8_matmul_activations: bool = False) -> Any:
    """An onnxruntime CPU session of ``path`` (all graph optimizations, ``threads`` intra-op threads).

    onnxruntime fuses ``DequantizeLinear(int8 weight) -> MatMul`` into ``MatMulNBits``, which by
    default also quantizes the float activations to int8 on the fly ("accuracy level 4"): faster,
    but not the computation compsearch evaluated (ViT-tiny at 32 px with int8 weights: logits off
    by ~1e-2). The session computes those products in float32 (level 1) unless
    ``int8_matmul_activations`` is True.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"running ONNX needs onnxruntime ({e}); install it with: pip install 'compsearch[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "4" if int8_matmul_activations else "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor:
    """The session's first output for input ``x`` (as a torch tensor)."""
    out = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})[0]
    return torch.from_numpy(out)


def onnx_ops(path: str | Path) -> dict[str, int]:
    """Node counts by op type (e.g. how many ``DequantizeLinear``)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


__all__ = ["OnnxExport", "export_model", "export_onnx", "onnx_ops", "ort_session", "run_onnx"]
