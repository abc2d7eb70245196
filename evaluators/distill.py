"""Policy distillation (Rusu et al. 2016): fine-tune a compressed student network to act like
the uncompressed teacher, on states from teacher and (DAgger-style) student rollouts.

Loss of a mini-batch of states ``s`` (teacher outputs ``t = teacher(s)``, no gradient):

* discrete actions, logits (``"logits"``): ``T**2 * KL(softmax(t / T) || softmax(student(s)
  / T))``, batch mean, ``T`` 1 by default (the classification distillation loss);
* discrete actions, Q-values (``"q"``): ``KL(softmax(t / T) || softmax(student(s) / T))``,
  ``T`` 0.01 by default (Rusu et al.'s sharpening temperature: the teacher's greedy
  action dominates). No ``T**2`` factor: for ``T < 1`` it would shrink the loss (and so
  the weight of the task loss against a gate penalty) by ``T**2 = 1e-4``;
* continuous actions (``"action"``): ``mean(((student(s) - t) / h)**2)`` over batch and
  action dimensions, ``h = (high - low) / 2`` the half range of each dimension (so the
  loss is in units of the normalised action in [-1, 1]).

An identical student has loss 0. States: the buffer starts with the teacher's rollout
states; every ``dagger_every`` steps the student (with the compression in force) acts
for ``dagger_episodes`` episodes and the states it visits are added (labelled by the
teacher when drawn), so the student also learns where its own mistakes lead (DAgger,
Ross et al. 2011). The buffer keeps the newest ``buffer_size`` states. Mini-batches are
drawn uniformly with replacement by a ``torch.Generator`` seeded with the fine-tuning
seed; optimizer, learning-rate schedule and reporting follow
:class:`~compsearch.evaluators.types.FineTuneConfig` as for classification. The loop runs
torch single-threaded (policy networks are small: on a loaded 2-core machine 200 steps
took 2.4 s with one thread and 62 s with two, measured).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import ConfigError, FineTuneDiverged, check_int_at_least
from compsearch.evaluators.finetune import (
    FineTuneResult,
    distillation_loss,
    learning_rate,
    make_optimizer,
    resolve_steps,
)
from compsearch.evaluators.rollout import torch_threads
from compsearch.evaluators.types import FineTuneConfig, Reporter

KINDS = ("logits", "q", "action")
_DEFAULT_T = {"logits": 1.0, "q": 0.01}


@dataclass(frozen=True)
class DistillSettings:
    """The policy-specific part of distillation (the rest is the evaluator's FineTuneConfig).

    Attributes:
        temperature: ``T`` of the discrete loss; None = 1 for logits, 0.01 for Q-values.
        dagger_every: steps between student rollouts (0 = teacher states only).
        dagger_episodes: episodes per student rollout.
        buffer_size: most states kept (oldest dropped first).
        report_every: steps between intermediate reports when ``FineTuneConfig.report_every``
            is 0 (default: a fifth of the steps).
    """

    temperature: float | None = None
    dagger_every: int = 100
    dagger_episodes: int = 2
    buffer_size: int = 100_000
    report_every: int | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"task.temperature={self.temperature!r} must be > 0 (or None for the default)")
        check_int_at_least("task", self, {"dagger_every": 0, "dagger_episodes": 1, "buffer_size": 1})

    def temperature_for(self, kind: str) -> float:
        """``temperature``, or the default of ``kind`` (1 for logits, 0.01 for Q-values)."""
        return self.temperature if self.temperature is not None else _DEFAULT_T.get(kind, 1.0)


def policy_distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, kind: str, temperature: float = 1.0,
    half_range: torch.Tensor | None = None,
) -> torch.Tensor:
    """The distillation loss of the module docstring; ``b x n`` outputs of both networks.

    Args:
        student, teacher: ``b x n`` logits / Q-values / actions.
        kind: ``"logits"``, ``"q"`` or ``"action"``.
        temperature: ``T`` of the discrete loss.
        half_range: ``n`` half ranges of the action dimensions (``"action"``; None = 1).
    """
    if kind == "action":
        diff = student - teacher
        if half_range is not None and half_range.numel():
            diff = diff / half_range
        return diff.square().mean()
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is unknown; allowed: {list(KINDS)}")
    loss = distillation_loss(student, teacher, temperature)
    return loss / (temperature * temperature) if kind == "q" else loss


def greedy_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``CE(student, argmax teacher)``: cross-entropy of the student's softmax against the
    teacher's greedy actions, batch mean (``b x n`` each)."""
    return F.cross_entropy(student, teacher.argmax(dim=1))


class StateBuffer:
    """The newest ``capacity`` states (``n x obs...``) for distillation mini-batches."""

    def __init__(self, states: torch.Tensor, *, capacity: int) -> None:
        self.capacity = capacity
        self.states = states[-capacity:]

    def __len__(self) -> int:
        return len(self.states)

    def add(self, states: torch.Tensor) -> None:
        """Append ``states``; drop the oldest beyond ``capacity``."""
        self.states = torch.cat([self.states, states.to(self.states)])[-self.capacity:]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` states drawn uniformly with replacement."""
        idx = torch.randint(len(self.states), (n,), generator=generator)
        return self.states[idx.to(self.states.device)]


@dataclass(frozen=True)
class DistillHooks:
    """Callbacks of :func:`distill` (all optional but ``after_step``).

    Attributes:
        after_step: called after every optimizer step (re-applies pruning masks).
        collect: ``(student, round) -> states`` of a student rollout (DAgger); None = off.
        validate: the validation quality now (needed with a reporter).
        reporter: receives ``report(step, validate(), {"train_loss": ...})``.
        extra_loss: added to every mini-batch loss (e.g. a gate penalty); its parameters
            must be in ``params``.
    """

    after_step: Callable[[], None]
    collect: Callable[[nn.Module, int], torch.Tensor] | None = None
    validate: Callable[[], float] | None = None
    reporter: Reporter | None = None
    extra_loss: Callable[[], torch.Tensor] | None = None


def distill(
    student: nn.Module,
    teacher: nn.Module,
    buffer: StateBuffer,
    *,
    kind: str,
    config: FineTuneConfig,
    settings: DistillSettings,
    hooks: DistillHooks,
    steps: int | None = None,
    half_range: torch.Tensor | None = None,
    params: list[Any] | None = None,
) -> FineTuneResult:
    """Distil ``teacher`` into ``student`` in place (see the module docstring).

    Args:
        student: the compressed network (its compression stays in force).
        teacher: the uncompressed network (not changed; eval mode).
        buffer: the states to learn on; student rollouts are added to it.
        kind: output kind of both networks.
        config: optimizer, lr, schedule, batch size, steps, seed, report_every.
        settings: temperature and DAgger settings.
        hooks: callbacks (masks, DAgger rollouts, reporting, extra loss).
        steps: overrides the step count of ``config`` (``epochs`` count buffer passes).
        half_range: action half ranges (``kind="action"``).
        params: parameters to optimise (default: the student's that require grad), or
            param-group dicts; a group's ``"lr_scale"`` multiplies the scheduled learning rate.

    Raises:
        FineTuneDiverged: a non-finite mini-batch loss.
    """
    total = resolve_steps(config, len(buffer), steps)
    params = params if params is not None else [p for p in student.parameters() if p.requires_grad]
    if total == 0 or not params:
        return FineTuneResult(steps=0, train_loss=float("nan"))
    if hooks.reporter is not None and hooks.validate is None:
        raise ConfigError("distill got a reporter but no validate() callback to produce the reported value")
    every = config.report_every or settings.report_every or max(1, total // 5)
    optimizer = make_optimizer(params, config)
    gen = torch.Generator().manual_seed(config.seed)
    temperature = settings.temperature_for(kind)
    recent: deque[float] = deque(maxlen=max(1, min(total, 50)))
    history: list[tuple[int, float]] = []
    teacher.eval()
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        torch.manual_seed(config.seed)
        for step in range(total):
            if hooks.collect is not None and settings.dagger_every and step and step % settings.dagger_every == 0:
                buffer.add(hooks.collect(student, step // settings.dagger_every))
            student.train()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, total) * group.get("lr_scale", 1.0)
            states = buffer.sample(config.batch_size, gen)
            with torch.no_grad():
                target = teacher(states)
            loss = policy_distillation_loss(student(states), target, kind=kind, temperature=temperature, half_range=half_range)
            if hooks.extra_loss is not None:
                loss = loss + hooks.extra_loss()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FineTuneDiverged(f"policy distillation diverged at step {step + 1}/{total}: loss={value} "
                                       f"(optimizer={config.optimizer}, lr={config.lr}); lower finetune.lr or use fewer bits")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            hooks.after_step()
            recent.append(value)
            if hooks.reporter is not None and hooks.validate is not None and (step + 1) % every == 0:
                quality = hooks.validate()
                history.append((step + 1, quality))
                hooks.reporter.report(step + 1, quality, {"train_loss": sum(recent) / len(recent)})
    student.eval()
    return FineTuneResult(steps=total, train_loss=sum(recent) / len(recent), history=history)
