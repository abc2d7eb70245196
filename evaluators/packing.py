"""Packed weights: every unit stored at its bit width, in a file ``torch.load(weights_only=True)`` reads.

Format (version 1), a plain dict of tensors, ints, strings and lists (nothing is unpickled
but these)::

    {"format": "compsearch.packed", "version": 1, "byteorder": "little",
     "blob": uint8 tensor,                  # every payload byte, segments back to back
     "entries": {key: entry, ...},          # where each tensor's bytes are, how to decode them
     "meta": {str: str | int, ...}}         # free text (model name, policy JSON, prune plan JSON, ...)

A *span* ``[offset, nbytes]`` addresses bytes of ``blob``. Entries:

* ``"<unit>.weight"`` (or the parameter path of a raw-parameter unit), ``kind="quant"`` (``w_bits < 16``): ``shape`` (the stored layer's weight
  shape), ``bits``, ``scheme``, ``granularity`` (``"tensor"``/``"channel"``), ``qmin``; ``codes``:
  the codes ``c = q - qmin`` (:func:`~compsearch.evaluators.unit_quant.codes`) of the stored
  elements, ``bits`` bits each, packed densely LSB-first (bit ``j`` of element ``i`` is bit
  ``(i * bits + j) % 8`` of byte ``(i * bits + j) // 8``); ``scale``: float32, one per tensor or
  per stored output channel; ``zero_point``: int32, same count (``asymmetric`` only; symmetric
  grids have 0, the binary grid the constant 0.5). The weight is ``(c + qmin - zero_point) *
  scale`` (binary: ``(c - 0.5) * scale``), exactly the evaluated effective weight.
* ``kind="float"`` (``w_bits >= 16``): ``dtype`` ``"float16"`` (16..31 bits, the cost model's
  16-bit rule) or ``"float32"``; ``values``: the stored elements.
* Both unit kinds may carry ``rows`` (a bitmap of kept output channels, LSB-first, when channel
  pruning left rows zeroed in place: only kept rows are stored, their scales too) or ``mask``
  (unstructured pruning: ``{"coding": "bitmap" | "index", "kept": k, "span": ...}``, a bitmap of
  the ``n`` elements or the ``k`` kept flat indices at ``ceil(log2 n)`` bits each, whichever is
  smaller; only kept elements are stored, in flat order) and ``act`` (input quantization:
  ``{"bits", "scale": float32 span, "zero_point": int32 span}``).
* ``"<module>"``, ``kind="batchnorm"``: a BatchNorm folded for inference, ``channels`` C and
  ``values`` ``2C`` float32 (``gamma / sqrt(var + eps)``, then ``beta - mean * that``); loading
  sets ``running_mean=0``, ``running_var=1``, ``eps=0``.
* any other state-dict key, ``kind="tensor"``: ``dtype``, ``shape``, ``buffer`` (1 for a buffer),
  ``values`` (raw, as is).

Size. The payload (``blob``) is the cost model's ``size_bits / 8``
(:mod:`compsearch.evaluators.cost`) up to rounding each segment to whole bytes, row bitmaps
and buffers other than BatchNorm's; it is smaller when channels were removed physically (the consumers' input
columns leave too, which the cost model does not count). The rest of the file is the
header: the zip container of ``torch.save`` and the entry table (about 100 bytes per entry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from compsearch.errors import ConfigError, DataError
from compsearch.evaluators.unit_quant import UnitQuant, codes, dequantize

FORMAT = "compsearch.packed"
VERSION = 1
_EPS = 1e-12


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """``n`` integers in ``[0, 2**bits)`` -> ``ceil(n * bits / 8)`` bytes, densely, LSB-first (1 <= bits <= 32)."""
    if not 1 <= bits <= 32:
        raise ConfigError(f"bits={bits!r} cannot be packed; allowed: 1..32")
    v = values.reshape(-1).to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ConfigError(f"values in [{int(v.min())}, {int(v.max())}] do not fit {bits} unsigned bits")
    nbits = v.numel() * bits
    stream = torch.zeros(math.ceil(nbits / 8) * 8, dtype=torch.uint8)
    planes = stream[:nbits].view(-1, bits)
    for j in range(bits):
        planes[:, j] = ((v >> j) & 1).to(torch.uint8)
    grouped = stream.view(-1, 8)
    out = torch.zeros(grouped.shape[0], dtype=torch.uint8)
    for k in range(8):
        out |= grouped[:, k] << k
    return out


def unpack_bits(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` integers (int64)."""
    if data.numel() * 8 < n * bits:
        raise DataError(f"{data.numel()} bytes cannot hold {n} values of {bits} bits")
    stream = torch.empty(data.numel(), 8, dtype=torch.uint8)
    for k in range(8):
        stream[:, k] = (data >> k) & 1
    planes = stream.reshape(-1)[: n * bits].view(n, bits).to(torch.int64)
    out = torch.zeros(n, dtype=torch.int64)
    for j in range(bits):
        out |= planes[:, j] << j
    return out


class _Blob:
    """Appends byte segments back to back and hands out their spans (read back through a copy)."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.size = 0

    def add(self, t: torch.Tensor) -> list[int]:
        raw = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        span = [self.size, raw.numel()]
        self.parts.append(raw)
        self.size += raw.numel()
        return span

    def tensor(self) -> torch.Tensor:
        return torch.cat(self.parts) if self.parts else torch.zeros(0, dtype=torch.uint8)


def _unit_entry(uq: UnitQuant, blob: _Blob, *, half: bool) -> dict[str, Any]:
    w = uq.weight.detach().float()
    entry: dict[str, Any] = {"shape": list(w.shape)}
    rows = None
    if uq.mask is not None and uq.channel_mask:
        rows = uq.mask.reshape(-1).bool()
        if not bool(rows.all()):
            entry["rows"] = blob.add(pack_bits(rows.to(torch.int64), 1))
            w = w[rows]
    flat_keep = None
    if uq.mask is not None and not uq.channel_mask:
        flat_keep = uq.mask.reshape(-1).bool()
        n, k = flat_keep.numel(), int(flat_keep.sum())
        width = max(1, math.ceil(math.log2(n))) if n > 1 else 1
        if k * width < n:
            entry["mask"] = {"coding": "index", "kept": k, "span": blob.add(pack_bits(torch.nonzero(flat_keep).reshape(-1), width))}
        else:
            entry["mask"] = {"coding": "bitmap", "kept": k, "span": blob.add(pack_bits(flat_keep.to(torch.int64), 1))}
    if uq.quantized:
        sub = replace(uq, weight=w, scale=_rows(uq.scale, rows, uq.per_channel), zero_point=_rows(uq.zero_point, rows, uq.per_channel))
        c = codes(sub).reshape(-1)
        c = c[flat_keep] if flat_keep is not None else c
        assert sub.scale is not None and sub.zero_point is not None
        entry.update(kind="quant", bits=uq.w_bits, scheme=uq.scheme, granularity="channel" if uq.per_channel else "tensor",
                     qmin=uq.qmin, codes=blob.add(pack_bits(c, uq.w_bits)), scale=blob.add(sub.scale.float().reshape(-1)))
        if uq.scheme == "asymmetric":
            entry["zero_point"] = blob.add(sub.zero_point.reshape(-1).to(torch.int32))
    else:
        dtype = torch.float16 if half and uq.w_bits < 32 else torch.float32
        values = w.reshape(-1)
        values = values[flat_keep] if flat_keep is not None else values
        entry.update(kind="float", dtype=str(dtype).removeprefix("torch."), values=blob.add(values.to(dtype)))
    if uq.act_quantized:
        entry["act"] = {"bits": uq.a_bits, "scale": blob.add(torch.tensor([uq.act_scale], dtype=torch.float32)),
                        "zero_point": blob.add(torch.tensor([uq.act_zero_point], dtype=torch.int32))}
    return entry


def _rows(t: torch.Tensor | None, rows: torch.Tensor | None, per_channel: bool) -> torch.Tensor | None:
    if t is None or rows is None or not per_channel:
        return t
    return t.reshape(-1)[rows]


def _foldable(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats


def pack_model(model: nn.Module, units: Mapping[str, UnitQuant], *, half: bool = True,
               meta: Mapping[str, str | int] | None = None) -> dict[str, Any]:
    """The packed form of ``model`` whose units are described by ``units``.

    Args:
        model: the model as it will be loaded (physically pruned or not); supplies every
            tensor of its ``state_dict`` that is not a unit weight.
        units: unit name -> :class:`UnitQuant` in the model's shapes
            (:func:`~compsearch.evaluators.unit_quant.restrict` after physical pruning).
            Units not listed are stored as fp32 tensors.
        half: store 16..31-bit float units as float16 (the cost model's rule); else float32.
        meta: free strings/ints stored as they are.

    Raises:
        ConfigError: a unit's weight shape differs from the model's.
    """
    blob = _Blob()
    entries: dict[str, Any] = {}
    state = model.state_dict()
    for name, uq in units.items():
        key = f"{name}.weight" if f"{name}.weight" in state else name  # a layer's weight, or a raw parameter
        if key not in state or tuple(state[key].shape) != tuple(uq.weight.shape):
            raise ConfigError(f"unit {name!r}: weight shape {tuple(uq.weight.shape)} does not match the model's "
                              f"{tuple(state[key].shape) if key in state else 'missing weight'}; restrict the units to the prune plan")
        entries[key] = _unit_entry(uq, blob, half=half)
    folded: set[str] = set()
    buffers = {name for name, _ in model.named_buffers()}
    for mname, module in model.named_modules():
        if _foldable(module):
            bn = cast(nn.modules.batchnorm._BatchNorm, module)
            assert bn.running_var is not None and bn.running_mean is not None
            inv = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            values = torch.cat([inv, bn.bias.detach() - bn.running_mean * inv]).float()
            entries[mname] = {"kind": "batchnorm", "channels": bn.num_features, "values": blob.add(values)}
            folded.update(f"{mname}.{k}" if mname else k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
    for key, t in state.items():
        if key in entries or key in folded:
            continue
        entries[key] = {"kind": "tensor", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                        "buffer": int(key in buffers), "values": blob.add(t)}
    return {"format": FORMAT, "version": VERSION, "byteorder": "little", "blob": blob.tensor(), "entries": entries,
            "meta": dict(meta or {})}


def _read(blob: torch.Tensor, span: list[int], dtype: torch.dtype) -> torch.Tensor:
    off, n = int(span[0]), int(span[1])
    if off < 0 or off + n > blob.numel():
        raise DataError(f"span [{off}, {n}] lies outside the {blob.numel()}-byte blob; the file is damaged")
    return blob[off: off + n].clone().view(dtype)


def _unit(entry: Mapping[str, Any], blob: torch.Tensor) -> UnitQuant:
    shape = tuple(entry["shape"])
    rows = None
    if "rows" in entry:
        rows = unpack_bits(_read(blob, entry["rows"], torch.uint8), 1, shape[0]).bool()
    stored = (int(rows.sum()),) + shape[1:] if rows is not None else shape
    n = math.prod(stored)
    keep = None
    if "mask" in entry:
        m = entry["mask"]
        data = _read(blob, m["span"], torch.uint8)
        if m["coding"] == "bitmap":
            keep = unpack_bits(data, 1, n).bool()
        else:
            keep = torch.zeros(n, dtype=torch.bool)
            keep[unpack_bits(data, max(1, math.ceil(math.log2(n))) if n > 1 else 1, int(m["kept"]))] = True
    count = int(keep.sum()) if keep is not None else n
    act = entry.get("act")
    a = {} if act is None else {"a_bits": int(act["bits"]), "act_scale": float(_read(blob, act["scale"], torch.float32)[0]),
                                "act_zero_point": int(_read(blob, act["zero_point"], torch.int32)[0])}
    if entry["kind"] == "quant":
        scale = _read(blob, entry["scale"], torch.float32)
        zp = _read(blob, entry["zero_point"], torch.int32).float() if "zero_point" in entry else torch.zeros_like(scale)
        if entry["scheme"] == "symmetric" and int(entry["bits"]) == 1:
            zp = torch.full_like(scale, 0.5)
        bits, qmin = int(entry["bits"]), int(entry["qmin"])
        qmax = qmin + (1 << bits) - 1 if entry["scheme"] == "asymmetric" or bits == 1 else -qmin
        uq = UnitQuant(weight=torch.zeros(stored), w_bits=bits, scheme=entry["scheme"], per_channel=entry["granularity"] == "channel",
                       scale=scale, zero_point=zp, qmin=qmin, qmax=qmax, **a)
        values = unpack_bits(_read(blob, entry["codes"], torch.uint8), bits, count)
        c = values if keep is None else torch.zeros(n, dtype=torch.int64).masked_scatter(keep, values)
        w = dequantize(c.reshape(stored), uq)
        if keep is not None:
            w = torch.where(keep.reshape(stored), w, torch.zeros(()))
    else:
        dtype = getattr(torch, entry["dtype"])
        values = _read(blob, entry["values"], dtype).float()
        w = torch.zeros(n)
        w[keep if keep is not None else slice(None)] = values
        w = w.reshape(stored)
        uq = UnitQuant(weight=w, w_bits=16 if dtype == torch.float16 else 32, **a)
    if rows is not None:
        full = torch.zeros(shape)
        full[rows] = w
        w = full
        if uq.quantized and uq.per_channel:
            assert uq.scale is not None and uq.zero_point is not None
            scale, zp = torch.full((shape[0],), _EPS), torch.zeros(shape[0])
            scale[rows], zp[rows] = uq.scale, uq.zero_point
            uq = replace(uq, scale=scale, zero_point=zp)
    mask = rows if rows is not None else (keep.reshape(shape) if keep is not None else None)
    return replace(uq, weight=w, mask=mask)


def check_packed(packed: Any) -> None:
    """Raise :class:`DataError` unless ``packed`` is a version-1 packed dict."""
    if not isinstance(packed, dict) or packed.get("format") != FORMAT:
        raise DataError(f"not a compsearch packed-weights dict (format={packed.get('format') if isinstance(packed, dict) else type(packed).__name__!r}); "
                        f"expected format={FORMAT!r}")
    if packed.get("version") != VERSION:
        raise DataError(f"packed-weights version={packed.get('version')!r} is not supported; allowed: {VERSION}")


def unpack_model(model: nn.Module, packed: Mapping[str, Any]) -> dict[str, UnitQuant]:
    """Load ``packed`` into ``model`` (same architecture, e.g. rebuilt with ``apply_plan``), in place.

    Folded BatchNorms get ``running_mean=0``, ``running_var=1``, ``eps=0``.

    Returns:
        unit name -> :class:`UnitQuant` as stored (dequantized weight, grid, masks, input grid):
        what re-attaching input quantization or exporting to ONNX needs.

    Raises:
        DataError: not a packed dict of a supported version, or damaged.
        RuntimeError: the model's state dict does not match the entries (``load_state_dict``).
    """
    check_packed(packed)
    blob, entries = packed["blob"], packed["entries"]
    state: dict[str, torch.Tensor] = {}
    units: dict[str, UnitQuant] = {}
    folded: list[str] = []
    for key, entry in entries.items():
        kind = entry["kind"]
        if kind in ("quant", "float"):
            uq = _unit(entry, blob)
            units[key.removesuffix(".weight")] = uq
            state[key] = uq.weight
        elif kind == "batchnorm":
            c = int(entry["channels"])
            values = _read(blob, entry["values"], torch.float32)
            prefix = f"{key}." if key else ""
            state.update({f"{prefix}weight": values[:c], f"{prefix}bias": values[c:], f"{prefix}running_mean": torch.zeros(c),
                          f"{prefix}running_var": torch.ones(c), f"{prefix}num_batches_tracked": torch.tensor(0)})
            folded.append(key)
        elif kind == "tensor":
            state[key] = _read(blob, entry["values"], getattr(torch, entry["dtype"])).reshape(entry["shape"])
        else:
            raise DataError(f"entry {key!r} has kind={kind!r}; allowed: quant, float, batchnorm, tensor")
    model.load_state_dict(state, strict=True)
    for name in folded:
        bn = cast(nn.modules.batchnorm._BatchNorm, model.get_submodule(name))
        bn.eps = 0.0
    return units


def save_packed(packed: Mapping[str, Any], path: str | Path) -> int:
    """Write ``packed`` with ``torch.save``; returns the file's bytes."""
    torch.save(dict(packed), str(path))
    return Path(path).stat().st_size


def load_packed(path: str | Path) -> dict[str, Any]:
    """Read a packed file with ``torch.load(weights_only=True)`` (nothing else is unpickled)."""
    packed = torch.load(str(path), map_location="cpu", weights_only=True)
    check_packed(packed)
    return cast(dict[str, Any], packed)


def payload_bytes(packed: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of the payload by section.

    ``weights`` (codes and float unit values), ``qparams`` (scales, zero points), ``masks``
    (row bitmaps, unstructured masks), ``act`` (input grids), ``params`` (other parameters,
    folded BatchNorms), ``buffers`` (other buffers), ``total`` (the blob).
    """
    out = dict.fromkeys(("weights", "qparams", "masks", "act", "params", "buffers"), 0)
    for entry in packed["entries"].values():
        if entry["kind"] in ("quant", "float"):
            out["weights"] += entry["codes" if entry["kind"] == "quant" else "values"][1]
            out["qparams"] += sum(entry[k][1] for k in ("scale", "zero_point") if k in entry)
            out["masks"] += entry["rows"][1] if "rows" in entry else 0
            out["masks"] += entry["mask"]["span"][1] if "mask" in entry else 0
            out["act"] += 8 if "act" in entry else 0
        else:
            out["buffers" if entry.get("buffer") else "params"] += entry["values"][1]
    out["total"] = int(packed["blob"].numel())
    return out


__all__ = ["FORMAT", "VERSION", "check_packed", "load_packed", "pack_bits", "pack_model", "payload_bytes",
           "save_packed", "unpack_bits", "unpack_model"]
