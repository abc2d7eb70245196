"""Models to compress: small built-ins for digits, and any timm model by name.

Built-in models are registered by name (:func:`register_model`); every other
name goes to ``timm.create_model(name, pretrained=False, ...)``. Nothing is ever
downloaded: ``pretrained=True`` is rejected; pass ``checkpoint=`` (a local
state-dict file) to start from trained weights.

:func:`train_base_model` trains the uncompressed model once (deterministically
under a seed) and :func:`model_hash` fingerprints its weights, so a study can
cache the trained base model.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import (
    ConfigError,
    FineTuneDiverged,
    ModelError,
    UnknownNameError,
    check_keywords,
)
from compsearch.evaluators.checks import check_data_fits, resolve_device
from compsearch.evaluators.types import DataSplits
from compsearch.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(*, num_classes, in_chans, **kwargs) -> nn.Module`` as ``name``.

    Registering a name twice raises :class:`DuplicateNameError`.
    """
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of the built-in (registered) models, sorted; timm names are accepted too."""
    return MODELS.names()


# ---- built-in models ---------------------------------------------------------------


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits (works for any input side >= 2).

    ``features``: conv3x3(in_chans -> w) - ReLU - maxpool2 - conv3x3(w -> 2w) - ReLU -
    conv3x3(2w -> 2w) - ReLU; ``pool``: adaptive average pool to 2x2; ``classifier``:
    flatten - linear(8w -> hidden) - ReLU - linear(hidden -> num_classes). Shapes for
    the default ``w = 16`` and ``1 x 8 x 8`` input: ``n x 16 x 8 x 8`` -> ``n x 16 x 4 x 4``
    -> ``n x 32 x 4 x 4`` -> ``n x 32 x 4 x 4`` -> ``n x 32 x 2 x 2`` -> ``n x 128`` -> ``n x 64``
    -> ``n x 10``. Pooling right after the stem keeps a fine-tune step of a batch of 64
    at a few milliseconds on one CPU core (the 8x8 convolutions dominate the cost).

    Args:
        num_classes: output logits.
        in_chans: input channels.
        width: channels ``w`` of the first convolution.
        hidden: width of the hidden linear layer.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's convention)."""
        return self.classifier[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``n x in_chans x H x W`` -> ``n x num_classes`` logits."""
        return self.classifier(self.pool(self.features(x)))


class DigitsMLP(nn.Module):
    """flatten - linear - ReLU - linear - ReLU - linear.

    Args:
        num_classes: output logits.
        in_chans: input channels.
        input_size: side of the square input (8 for digits) or ``(H, W)``; the first
            layer takes ``in_chans x H x W`` features.
        hidden: widths of the two hidden layers.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: int | Sequence[int] = 8,
        hidden: Sequence[int] = (128, 64),
    ) -> None:
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        h1, h2 = hidden
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_chans * h * w, h1), nn.ReLU(),
            nn.Linear(h1, h2), nn.ReLU(),
            nn.Linear(h2, num_classes),
        )

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's convention)."""
        return self.layers[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``n x in_chans x H x W`` (or ``n x d``) -> ``n x num_classes`` logits."""
        return self.layers(x)


register_model("digits_cnn")(DigitsCNN)
register_model("digits_mlp")(DigitsMLP)


# ---- build_model -------------------------------------------------------------------


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}")


def _timm_model(name: str, *, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean one of {close}?" if close else ""
        raise UnknownNameError(
            f"model {name!r} is neither a built-in model (registered: {list_models()}) nor a timm "
            f"model{hint} (see timm.list_models('*pattern*'))"
        )
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:
        raise TypeError(f"timm model {name!r} rejected its keyword arguments {sorted(kwargs)}: {e}") from None


def load_checkpoint(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load a local state-dict file (``torch.save(model.state_dict(), path)``) into ``model``.

    A dict holding the weights under ``"state_dict"`` or ``"model"`` is accepted too.

    Raises:
        ModelError: the file is missing or its keys/shapes do not fit the model.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError(f"checkpoint={str(path)!r} does not exist; pass the path of a saved state dict")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"checkpoint={str(path)!r} does not fit the model: {e}") from None
    return model


def build_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 1,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A built-in model by name, else a timm model with random initialization.

    Args:
        name: a built-in (:func:`list_models`) or any ``timm.list_models()`` name.
        num_classes: output logits.
        in_chans: input channels (1 for digits, 3 for RGB).
        checkpoint: optional local state-dict file loaded after construction.
        **kwargs: builder / ``timm.create_model`` options (e.g. ``width=`` for
            ``digits_cnn``, ``drop_rate=`` for timm). ``pretrained=True`` is rejected.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        ConfigError: ``pretrained=True`` or a bad ``num_classes`` / ``in_chans``.
        UnknownNameError: neither a built-in nor a timm model.
        TypeError: an option the built-in builder does not take.
    """
    if kwargs.pop("pretrained", False):
        raise ConfigError(
            "pretrained=True is not supported: compsearch never downloads weights; build with "
            "pretrained=False and pass checkpoint='path/to/state_dict.pt' to load trained weights"
        )
    _check_int("num_classes", num_classes, 1)
    _check_int("in_chans", in_chans, 1)
    if name in MODELS:
        builder = MODELS.get(name)
        allowed = set(inspect.signature(builder).parameters) - {"num_classes", "in_chans"}
        check_keywords(f"build_model({name!r})", kwargs, allowed)
        model = builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    else:
        model = _timm_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


# ---- training the base model -------------------------------------------------------


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` (eval mode) on ``x`` (``n x ...``), ``y`` (``n``)."""
    device = next(model.parameters()).device
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return correct / n, loss / n


def _total_steps(steps: int | None, epochs: float | None, n: int, batch_size: int) -> int:
    if epochs is not None:
        if not isinstance(epochs, (int, float)) or not epochs > 0:
            raise ConfigError(f"epochs={epochs!r} must be a number > 0 or None (use steps=)")
        return max(1, math.ceil(epochs * math.ceil(n / batch_size)))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be an integer >= 1 (or give epochs=)")
    return steps


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Any:
    """Endless mini-batch index tensors: a fresh permutation of ``0..n-1`` per epoch."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i : i + batch_size]


def train_base_model(
    model: nn.Module,
    data: DataSplits,
    *,
    steps: int | None = 500,
    epochs: float | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Train the uncompressed model in place with Adam and a cosine learning-rate schedule.

    Deterministic under ``seed`` on one device (batch order from a seeded
    generator; the global RNG, used e.g. by dropout, is seeded inside a forked RNG
    state, so the caller's RNG is unchanged). The model is left on ``device`` in eval mode.

    Args:
        model: the model; its weights are updated in place.
        data: the splits; trains on ``train``, measures ``val``.
        steps: optimizer steps (ignored when ``epochs`` is given).
        epochs: passes over the train split (drop-last mini-batches).
        batch_size: mini-batch size.
        lr: peak Adam learning rate, annealed to 0 by a cosine.
        weight_decay: Adam L2 weight decay.
        seed: fixes batch order and any randomness in training.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``val_accuracy`` (top-1 on val), ``val_loss`` (mean cross-entropy on val),
        ``train_loss`` (mean over the last ``min(steps, 20)`` steps), ``steps``, ``seconds``.

    Raises:
        DataError: the data does not fit the model.
        FineTuneDiverged: the loss became NaN or infinite.
    """
    _check_int("batch_size", batch_size, 1)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr={lr!r} must be a finite number > 0")
    dev = resolve_device(device)
    total = _total_steps(steps, epochs, len(data.y_train), batch_size)
    model.to(dev)
    check_data_fits(model, data, dev)
    start = time.perf_counter()
    losses: list[float] = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        losses = _train_loop(model, data, total, batch_size, lr, weight_decay, seed, dev)
    val_acc, val_loss = evaluate_accuracy(model, data.x_val, data.y_val)
    return {
        "val_accuracy": val_acc,
        "val_loss": val_loss,
        "train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "steps": float(total),
        "seconds": time.perf_counter() - start,
    }


def _train_loop(
    model: nn.Module, data: DataSplits, total: int, batch_size: int,
    lr: float, weight_decay: float, seed: int, dev: torch.device,
) -> list[float]:
    x, y = data.x_train.to(dev), data.y_train.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    batches = _batches(len(y), batch_size, torch.Generator().manual_seed(seed))
    losses: list[float] = []
    model.train()
    for step in range(total):
        idx = next(batches).to(dev)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            raise FineTuneDiverged(
                f"base-model training diverged at step {step}: loss={loss.item()}; lower lr={lr}"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def model_hash(model: nn.Module) -> str:
    """SHA-256 hex digest of the state dict: every key, dtype, shape and raw bytes, in key order.

    Equal weights give equal hashes in any process; any changed value changes it.
    """
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
