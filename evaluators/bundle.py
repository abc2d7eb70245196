"""One folder per exported model: pruned where the graph allows, packed weights, ONNX, a manifest.

:func:`write_bundle` turns a compressed model -- the plain model holding the (fine-tuned)
weights plus the per-unit records of its compression
(:class:`~compsearch.evaluators.unit_quant.UnitQuant`, e.g. from
``evaluator.compressed_units()`` via
:func:`~compsearch.evaluators.unit_quant.from_compressed_units`) -- into a folder:

* ``weights.pt``: the packed weights (:mod:`compsearch.evaluators.packing`; ``meta`` holds
  the prune plan as JSON), loadable with ``torch.load(weights_only=True)``;
* ``model.onnx``: QDQ int8 for units at <= 8 bits, float elsewhere
  (:mod:`compsearch.evaluators.onnx_export`);
* ``manifest.json``: which units were removed and which stay masked (with the reason), the
  payload bytes by section, the file sizes, the ONNX export's details, the pruning error.

The pruned model equals the given compressed model (``reference="model"`` of
:func:`~compsearch.evaluators.speedup.physically_prune`): channels that are not exactly 0
there (e.g. a bias the evaluator's masks leave alive) stay in place, masked.
:func:`load_bundle` rebuilds it on a freshly built model of the same architecture.

Removed blocks (``removed=``, e.g. ``policy.removed`` or ``evaluator.removed_blocks()``) are
replaced first (:func:`~compsearch.evaluators.removal.remove_blocks`: the identity or the
block's shortcut), so their parameters are neither packed nor exported; the manifest lists
them under ``removed_blocks`` and :func:`load_bundle` replaces them again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compsearch.errors import DataError
from compsearch.evaluators.packing import (
    load_packed,
    pack_model,
    payload_bytes,
    save_packed,
    unpack_model,
)
from compsearch.evaluators.removal import remove_blocks
from compsearch.evaluators.speedup import PrunePlan, apply_plan, physically_prune
from compsearch.evaluators.unit_quant import (
    UnitQuant,
    attach_input_quant,
    effective_model,
    pruned_rows,
    restrict,
)
from compsearch.spaces.policy import Policy

MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
ONNX = "model.onnx"


def write_bundle(model: nn.Module, units: Mapping[str, UnitQuant], example_input: torch.Tensor, folder: str | Path, *,
                 onnx: bool = True, dynamo: bool = True, qdq_bits: int = 8, half: bool = True,
                 meta: Mapping[str, str | int] | None = None, removed: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """Write the bundle of a compressed model (see the module docstring); returns the manifest.

    Args:
        model: the plain model with the compressed model's stored weights (not changed).
        units: unit -> :class:`UnitQuant` (effective weights, grids, masks, input grids).
        example_input: a batch ``n x ...`` (traced; checks the pruned model; ONNX shapes).
        folder: created if missing.
        onnx: also write ``model.onnx``.
        dynamo, qdq_bits: for :func:`~compsearch.evaluators.onnx_export.export_onnx`.
        half: 16..31-bit float units as float16 (:func:`~compsearch.evaluators.packing.pack_model`).
        meta: free strings/ints stored in the packed file (e.g. the policy JSON, the model name).
        removed: removed blocks, block -> shortcut path or None (``policy.removed``); records
            of units inside them are ignored.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    removed = dict(removed or {})
    if removed:
        gone = Policy({}, removed=removed)
        model, units = remove_blocks(model, removed), {n: u for n, u in units.items() if not gone.removes(n)}
    result = physically_prune(effective_model(model, units), None, None, example_input, channels=pruned_rows(units),
                              reference="model")
    pruned_units = restrict(units, result.plan)
    packed = pack_model(result.model, pruned_units, half=half,
                        meta={**dict(meta or {}), "prune_plan": json.dumps(result.plan.to_dict(), sort_keys=True),
                              "removed_blocks": json.dumps(removed, sort_keys=True)})
    manifest: dict[str, Any] = {
        "format": "compsearch.bundle", "version": 1, "weights": WEIGHTS,
        "weights_bytes": save_packed(packed, folder / WEIGHTS), "payload_bytes": payload_bytes(packed),
        "removed_units": list(result.plan.removed), "masked_units": dict(result.plan.masked), "removed_blocks": removed,
        "params_before": result.params_before, "params_after": result.params_after,
        "pruning_max_error": result.max_error, "onnx": None,
    }
    if onnx:
        from compsearch.evaluators.onnx_export import export_onnx

        out = export_onnx(result.model, pruned_units, example_input[:1], folder / ONNX, qdq_bits=qdq_bits, dynamo=dynamo)
        manifest["onnx"] = {"file": ONNX, "bytes": out.file_bytes, "exporter": out.exporter, "opset": out.opset,
                            "dynamic_batch": out.dynamic_batch, "qdq_units": list(out.qdq_units),
                            "qdq_inputs": list(out.qdq_inputs), "float_units": list(out.float_units)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return manifest


def load_bundle(folder: str | Path, model: nn.Module) -> nn.Module:
    """The compressed model of a bundle, on ``model`` (a freshly built model of the same architecture, not changed).

    Returns:
        The pruned model (eval mode) with the packed weights and the units' input quantization
        (forward pre-hooks), computing what the exported model computes.

    Raises:
        DataError: the folder holds no bundle weights, or they are not a packed file.
    """
    path = Path(folder) / WEIGHTS
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a folder written by write_bundle (compsearch export)")
    packed = load_packed(path)
    plan = PrunePlan.from_dict(json.loads(packed["meta"]["prune_plan"]))
    removed = json.loads(packed["meta"].get("removed_blocks", "{}"))
    pruned = apply_plan(remove_blocks(model, removed) if removed else model, plan)
    units = unpack_model(pruned, packed)
    attach_input_quant(pruned, units)
    return pruned.eval()


__all__ = ["MANIFEST", "ONNX", "WEIGHTS", "load_bundle", "write_bundle"]
