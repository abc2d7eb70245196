"""Fine-tuning loop of a compressed candidate (tensors in memory, seeded batch order).

The loss of a mini-batch is ``(1 - d) * CE(student, y) + d * T**2 *
KL(softmax(teacher / T) || softmax(student / T))`` with ``d = FineTuneConfig.distill``
and ``T = temperature``; the teacher logits are the uncompressed model's, cached once
by the evaluator. Batches are drawn without replacement from a fresh permutation of
the train split every epoch, the permutations coming from a ``torch.Generator``
seeded with ``FineTuneConfig.seed``; dropout and other module randomness are seeded
from the same seed inside a forked RNG, so the caller's global RNG is untouched.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import ConfigError, FineTuneDiverged
from compsearch.evaluators.types import FineTuneConfig, Reporter


@dataclass(frozen=True)
class FineTuneResult:
    """What a fine-tuning run did.

    Attributes:
        steps: optimizer steps run.
        train_loss: mean training loss over the last ``min(steps, batches per epoch)`` steps
            (nan for 0 steps).
        history: ``(step, validation accuracy)`` of every intermediate report.
    """

    steps: int
    train_loss: float
    history: list[tuple[int, float]] = field(default_factory=list)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """``ceil(n / batch_size)``: the last batch of an epoch may be smaller."""
    return max(1, math.ceil(n / batch_size))


def resolve_steps(config: FineTuneConfig, n_train: int, steps: int | None = None) -> int:
    """Steps to run: ``steps`` if given, else ``ceil(epochs * batches_per_epoch)``, else ``config.steps``."""
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps={steps!r} must be an integer >= 0 (None = use the fine-tune config)")
        return steps
    if config.epochs is not None:
        return math.ceil(config.epochs * batches_per_epoch(n_train, config.batch_size))
    return config.steps


def learning_rate(config: FineTuneConfig, step: int, total: int) -> float:
    """Learning rate of 0-based ``step`` of ``total``.

    ``constant``: ``lr``; ``cosine``: ``lr * 0.5 * (1 + cos(pi * step / total))``;
    ``step``: ``lr`` before ``floor(2 * total / 3)``, ``0.1 * lr`` from there.
    """
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    if config.schedule == "step":
        return config.lr * (0.1 if step >= (2 * total) // 3 else 1.0)
    return config.lr


def make_optimizer(params: list[nn.Parameter], config: FineTuneConfig) -> torch.optim.Optimizer:
    """``sgd`` (momentum), ``adam`` or ``adamw`` over ``params``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def batch_indices(n: int, batch_size: int, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Endless mini-batch indices: a seeded permutation per epoch, cut into ``batch_size`` slices."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen).to(device)
        yield from perm.split(batch_size)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean; inputs ``b x classes``."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
    ) * (t * t)


def divergence_bound(ratio: float, base_loss: float, floor: float) -> float | None:
    """``ratio x max(base_loss, floor)``: the validation loss above which a fine-tuned candidate
    has diverged (None when that maximum is not a finite positive number)."""
    reference = max(base_loss, floor)
    return ratio * reference if math.isfinite(reference) and reference > 0 else None


def check_diverged(loss: float, bound: float | None, *, steps: int, ratio: float | None, lr: float) -> None:
    """Raise :class:`FineTuneDiverged` if the final validation ``loss`` is not finite or above ``bound``."""
    if not math.isfinite(loss) or (bound is not None and loss > bound):
        limit = f"{bound:.6g}" if bound is not None else "a finite value"
        raise FineTuneDiverged(
            f"fine-tuning diverged: validation loss {loss:.6g} after {steps} steps exceeds {limit} "
            f"(divergence_ratio={ratio} x max(uncompressed loss, task loss floor)); lower finetune.lr (now {lr})"
        )


def fine_tune(
    model: nn.Module,
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FineTuneConfig,
    steps: int | None = None,
    teacher_logits: torch.Tensor | None = None,
    reporter: Reporter | None = None,
    validate: Callable[[], float] | None = None,
    after_step: Callable[[], None] | None = None,
) -> FineTuneResult:
    """Fine-tune ``model`` in place on ``(x, y)``.

    Args:
        model: the (compressed) model, on ``x``'s device.
        x: ``n x ...`` train inputs; y: ``n`` labels.
        config: optimizer, schedule, batch size, distillation, reporting, seed.
        steps: overrides the number of steps of ``config`` (see :func:`resolve_steps`).
        teacher_logits: ``n x classes`` uncompressed logits of ``x`` (needed if ``config.distill > 0``).
        reporter: receives ``report(step, validate(), {"train_loss": ...})`` every
            ``config.report_every`` steps (0 = once per epoch); may raise ``optuna.TrialPruned``.
        validate: returns validation accuracy (needed with a reporter); must leave
            the model in whatever mode it found it, or this loop resets ``train()``.
        after_step: called after every optimizer step (e.g. re-applies pruning masks).

    Raises:
        FineTuneDiverged: a mini-batch loss is nan or inf.
    """
    total = resolve_steps(config, x.shape[0], steps)
    if config.distill > 0 and teacher_logits is None:
        raise ConfigError("finetune distill > 0 needs teacher_logits (the uncompressed model's train logits)")
    if reporter is not None and validate is None:
        raise ConfigError("fine_tune got a reporter but no validate() callback to produce the reported value")
    every = config.report_every or batches_per_epoch(x.shape[0], config.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if total == 0 or not params:
        return FineTuneResult(steps=0, train_loss=float("nan"))
    optimizer = make_optimizer(params, config)
    batches = batch_indices(x.shape[0], config.batch_size, config.seed, x.device)
    recent: deque[float] = deque(maxlen=batches_per_epoch(x.shape[0], config.batch_size))
    history: list[tuple[int, float]] = []
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        model.train()
        for step in range(total):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, total)
            idx = next(batches)
            teacher = None if teacher_logits is None else teacher_logits[idx]
            value = _step(model, optimizer, x[idx], y[idx], config, teacher)
            if not math.isfinite(value):
                raise FineTuneDiverged(
                    f"fine-tuning diverged at step {step + 1}/{total}: loss={value} "
                    f"(optimizer={config.optimizer}, lr={config.lr}); lower finetune.lr or give the candidate more bits"
                )
            if after_step is not None:
                after_step()
            recent.append(value)
            if reporter is not None and validate is not None and (step + 1) % every == 0:
                acc = validate()
                model.train()
                history.append((step + 1, acc))
                reporter.report(step + 1, acc, {"train_loss": sum(recent) / len(recent)})
    return FineTuneResult(steps=total, train_loss=sum(recent) / len(recent), history=history)


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    config: FineTuneConfig,
    teacher: torch.Tensor | None,
) -> float:
    """One optimizer step; returns the mini-batch loss. A non-finite loss skips the update."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(xb)
    loss = F.cross_entropy(logits, yb)
    if teacher is not None and config.distill > 0:
        loss = (1 - config.distill) * loss + config.distill * distillation_loss(logits, teacher, config.temperature)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value
    loss.backward()
    optimizer.step()
    return value
