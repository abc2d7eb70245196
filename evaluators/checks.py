"""Input checks shared by the evaluator and base-model training."""

from __future__ import annotations

import torch
from torch import nn

from compsearch.errors import ConfigError, DataError
from compsearch.evaluators.types import DataSplits


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:i]'") from None


def check_data_fits(model: nn.Module, data: DataSplits, device: torch.device | None = None) -> None:
    """Raise :class:`DataError` unless ``model`` (on ``device``) maps ``data`` samples to ``num_classes`` logits."""
    if not isinstance(data, DataSplits):
        raise DataError(f"data must be a DataSplits, got {type(data).__name__}; build one with load_dataset(...)")
    shape = data.input_shape
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        if tuple(x.shape[1:]) != shape or x.shape[0] != y.shape[0] or y.dim() != 1:
            raise DataError(
                f"{split} split has x {tuple(x.shape)} and y {tuple(y.shape)}; expected n x {shape} and n labels"
            )
        if y.numel() and (y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= data.num_classes):
            raise DataError(
                f"{split} labels must be integers in [0, {data.num_classes}) (num_classes={data.num_classes}); "
                f"got dtype {y.dtype}, range [{y.min().item()}, {y.max().item()}]"
            )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_train[:2].to(device) if device is not None else data.x_train[:2])
    except Exception as e:  # noqa: BLE001 - any failure means the shapes do not fit
        raise DataError(
            f"data {data.name!r} with sample shape {shape} does not fit model {type(model).__name__}: "
            f"its forward failed with {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; build the "
            f"model for this input (in_chans=, input_size=) or resize the data (size=, channels=)"
        ) from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (min(2, data.x_train.shape[0]), data.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(
            f"model {type(model).__name__} maps a batch of 2 samples of shape {shape} to {got}, "
            f"but data {data.name!r} has num_classes={data.num_classes}: expected (2, {data.num_classes}); "
            f"build the model with num_classes={data.num_classes}"
        )
