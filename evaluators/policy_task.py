"""The ``policy`` task: compress the acting network of a reinforcement-learning agent.

==========================  ==================================================================
``quality``                 ``return``: mean undiscounted episodic return of the network
                            acting deterministically, one episode per seed of the split
                            (:mod:`compsearch.evaluators.rollout`); ``return_se`` its
                            standard error
seeds                       ``val``: ``val_seed + i`` (``i < episodes``), searched on;
                            ``test``: ``test_seed + i`` (``i < test_episodes``), reports only;
                            training rollouts (teacher states, DAgger): ``train_seed + i``
inputs                      observations of the teacher's rollouts on the first
                            ``teacher_episodes`` training seeds: example input (first 2),
                            calibration batches (seeded permutation), proxy inputs (first n)
gradient batches            seeded batches of teacher states; loss: cross-entropy of the
                            network's outputs against the teacher's greedy actions
                            (discrete) or ``0.5 * sum(((out - y) / s)**2)``, batch mean,
                            with ``y = teacher action + s * eps``, ``s = 0.1 * half range``,
                            ``eps`` standard normal from the batch seed (continuous: a
                            Monte-Carlo Fisher of a Gaussian policy)
fine-tuning                 policy distillation (:mod:`compsearch.evaluators.distill`),
                            compression in force; ``FineTuneConfig`` gives optimizer, lr,
                            schedule, steps, batch size, seed (``distill`` and
                            ``temperature`` are not used: see ``PolicyTaskConfig.distill``)
``measure(model, split)``   ``return``, ``return_se``, ``episode_length`` (mean) and
                            ``loss``: on the states the network visited in those episodes,
                            its cross-entropy against the teacher's greedy actions
                            (discrete) or its normalised action MSE (continuous)
``loss_floor``              ``ln(number of actions)`` (a uniform policy); 1 for continuous
                            actions (normalised MSE of an action at a bound)
==========================  ==================================================================

The teacher is the uncompressed acting network (a
:class:`~compsearch.evaluators.agents.PolicyNet`, or any module mapping observations to
``b x n`` outputs with attributes ``kind`` and, for ``"action"``, ``low``/``high``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compsearch.errors import ConfigError, DataError, check_int_at_least
from compsearch.evaluators.distill import (
    DistillHooks,
    DistillSettings,
    StateBuffer,
    distill,
    greedy_cross_entropy,
)
from compsearch.evaluators.finetune import FineTuneResult
from compsearch.evaluators.rollout import Rollout, episode_seeds, network_actor, rollout
from compsearch.evaluators.tasks import SPLITS, Task, register_task
from compsearch.evaluators.types import FineTuneConfig, GradientBatch, Reporter


@dataclass(frozen=True)
class PolicyTaskConfig:
    """Episodes, seeds and distillation of the policy task (spec ``[task]``).

    Attributes:
        episodes: validation episodes (the searched ``return``).
        test_episodes: test episodes (final reports only).
        train_seed, val_seed, test_seed: first seed of each range (see the module docstring).
        teacher_episodes: teacher rollouts giving the initial states.
        max_steps: cut every episode after this many steps (None = the environment's limit).
        distill: temperature and DAgger settings of fine-tuning.
    """

    episodes: int = 10
    test_episodes: int = 20
    train_seed: int = 0
    val_seed: int = 1_000_000
    test_seed: int = 2_000_000
    teacher_episodes: int = 10
    max_steps: int | None = None
    distill: DistillSettings = field(default_factory=DistillSettings)

    def __post_init__(self) -> None:
        check_int_at_least("task", self, {"episodes": 1, "test_episodes": 1, "train_seed": 0, "val_seed": 0,
                                          "test_seed": 0, "teacher_episodes": 1})
        if self.max_steps is not None:
            check_int_at_least("task", self, {"max_steps": 1})
        val = range(self.val_seed, self.val_seed + self.episodes)
        test = range(self.test_seed, self.test_seed + self.test_episodes)
        if max(val.start, test.start) < min(val.stop, test.stop):  # interval arithmetic: no huge sets
            raise ConfigError(f"task seeds overlap: the validation seeds {val} (task.val_seed, task.episodes) and the test "
                              f"seeds {test} (task.test_seed, task.test_episodes); keep the two ranges apart")
        if self.train_seed + self.teacher_episodes > min(self.val_seed, self.test_seed):
            raise ConfigError(f"task seeds overlap: the training seeds from {self.train_seed} (task.train_seed, "
                              f"task.teacher_episodes={self.teacher_episodes}) reach the validation/test seeds from "
                              f"{min(self.val_seed, self.test_seed)}; keep train_seed + teacher_episodes <= val_seed, test_seed")


@register_task("policy")
class PolicyTask(Task):
    """Quality ``return`` of an agent's acting network on a gymnasium environment.

    Args:
        env: gymnasium id.
        teacher: the uncompressed acting network (copied; the copy is the distillation teacher).
        env_kwargs: keyword arguments of ``gymnasium.make``.
        config: episodes, seeds, distillation (default :class:`PolicyTaskConfig`).
    """

    name = "policy"
    quality = "return"

    def __init__(self, *, env: str, teacher: nn.Module, env_kwargs: Mapping[str, Any] | None = None,
                 config: PolicyTaskConfig | None = None) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"PolicyTask(teacher=...) needs the acting network (nn.Module), got {type(teacher).__name__}")
        self.env, self.env_kwargs = env, dict(env_kwargs or {})
        self.config = config if config is not None else PolicyTaskConfig()
        self.teacher = copy.deepcopy(teacher).eval()
        self.kind = str(getattr(teacher, "kind", "logits"))
        self._states: torch.Tensor | None = None

    @classmethod
    def from_agent(cls, agent: Any, *, config: PolicyTaskConfig | None = None) -> PolicyTask:
        """The task of an :class:`~compsearch.evaluators.agents.Agent` (its env and network)."""
        return cls(env=agent.recipe.env, env_kwargs=agent.recipe.env_kwargs, teacher=agent.network(), config=config)

    # ---- inputs ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.teacher.parameters()).device

    def to(self, device: torch.device) -> PolicyTask:
        moved = copy.copy(self)
        moved.teacher = copy.deepcopy(self.teacher).to(device)
        moved._states = None if self._states is None else self._states.to(device)
        return moved

    def _half_range(self) -> torch.Tensor | None:
        if self.kind != "action":
            return None
        low, high = cast(torch.Tensor, self.teacher.low), cast(torch.Tensor, self.teacher.high)
        return (high - low) / 2

    def states(self) -> torch.Tensor:
        """``n x obs...`` observations of the teacher's rollouts on the training seeds (cached)."""
        if self._states is None:
            seeds = episode_seeds(self.config.train_seed, self.config.teacher_episodes)
            run = self._rollout(self.teacher, seeds, record=True)
            assert run.observations is not None
            self._states = run.observations.to(self.device)
        return self._states

    def _rollout(self, model: nn.Module, seeds: tuple[int, ...], *, record: bool = False) -> Rollout:
        device = next(model.parameters()).device
        return rollout(network_actor(model, device), self.env, seeds, env_kwargs=self.env_kwargs,
                       max_steps=self.config.max_steps, record=record)

    def check_model(self, model: nn.Module) -> None:
        x = self.states()[:2]
        with torch.no_grad():
            want = self.teacher(x).shape
            try:
                got = model(x).shape
            except RuntimeError as e:
                raise DataError(f"the model cannot take the observations of env {self.env!r} ({tuple(x.shape)}): "
                                f"{str(e).splitlines()[0]}; compress the acting network of an agent for this env") from None
        if got != want:
            raise DataError(f"the model maps observations to {tuple(got)}, the agent's network to {tuple(want)}; "
                            f"compress the acting network of the agent on env {self.env!r}")

    def example_input(self) -> torch.Tensor:
        return self.states()[:2]

    def _permutation(self, seed: int) -> torch.Tensor:
        return torch.randperm(len(self.states()), generator=torch.Generator().manual_seed(seed)).to(self.device)

    def calibration_inputs(self, *, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        idx = self._permutation(seed)[: batches * batch_size]
        return [self.states()[b] for b in idx.split(batch_size)]

    def proxy_inputs(self, n: int) -> torch.Tensor:
        return self.states()[:n]

    def gradient_batches(self, *, batches: int, batch_size: int, seed: int) -> list[GradientBatch]:
        out = []
        for k, b in enumerate(self._permutation(seed).split(batch_size)[:batches]):
            x = self.states()[b]
            with torch.no_grad():
                target = self.teacher(x)
            out.append(GradientBatch(inputs=x, loss=self._fisher_loss(target, seed * 1000 + k)))
        return out

    def _fisher_loss(self, target: torch.Tensor, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.kind != "action":
            return lambda out: greedy_cross_entropy(out, target)
        half = self._half_range()
        assert half is not None
        s = 0.1 * half
        y = target + s * torch.randn(target.shape, generator=torch.Generator().manual_seed(seed)).to(target)
        return lambda out: 0.5 * (((out - y) / s) ** 2).sum(dim=1).mean()

    def loss_floor(self) -> float:
        if self.kind == "action":
            return 1.0
        n = int(self.teacher(self.states()[:1]).shape[1])
        return math.log(n) if n > 1 else 1.0

    # ---- fine-tuning and measuring -------------------------------------------------------------
    def _collect(self, student: nn.Module, round_: int) -> torch.Tensor:
        """States the student visits on the next ``dagger_episodes`` training seeds (round ``round_ >= 1``)."""
        n = self.config.distill.dagger_episodes
        start = self.config.train_seed + self.config.teacher_episodes + (round_ - 1) * n
        if start + n > min(self.config.val_seed, self.config.test_seed):
            raise ConfigError(f"DAgger round {round_} would use seeds from {start}, reaching the validation/test seeds; "
                              f"raise task.val_seed and task.test_seed or task.dagger_every")
        run = self._rollout(student, episode_seeds(start, n), record=True)
        assert run.observations is not None
        return run.observations

    def fine_tune(self, model: nn.Module, *, config: FineTuneConfig, steps: int | None, reporter: Reporter | None,
                  validate: Callable[[], float], after_step: Callable[[], None]) -> FineTuneResult:
        buffer = StateBuffer(self.states(), capacity=self.config.distill.buffer_size)
        hooks = DistillHooks(after_step=after_step, collect=self._collect, validate=validate, reporter=reporter)
        return distill(model, self.teacher, buffer, kind=self.kind, config=config, settings=self.config.distill,
                       hooks=hooks, steps=steps, half_range=self._half_range())

    def measure(self, model: nn.Module, split: str) -> dict[str, float]:
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is unknown; allowed: {list(SPLITS)} (train is never measured)")
        cfg = self.config
        seeds = episode_seeds(cfg.val_seed, cfg.episodes) if split == "val" else episode_seeds(cfg.test_seed, cfg.test_episodes)
        run = self._rollout(model, seeds, record=True)
        assert run.observations is not None
        return {"return": run.mean, "return_se": run.se, "episode_length": float(np.mean(run.lengths)),
                "loss": self.imitation_loss(model, run.observations)}

    @torch.no_grad()
    def imitation_loss(self, model: nn.Module, states: torch.Tensor) -> float:
        """How far ``model`` acts from the teacher on ``states``: cross-entropy against the
        teacher's greedy actions (discrete), normalised action MSE (continuous)."""
        model.eval()
        states = states.to(self.device)
        out, target = model(states), self.teacher(states)
        if self.kind == "action":
            half = self._half_range()
            return float((((out - target) / half) ** 2).mean())
        return float(F.cross_entropy(out, target.argmax(dim=1)))

    def random_return(self) -> float:
        """Mean undiscounted return of uniformly random actions over the validation seeds
        (a floor any useful policy beats; the default hypervolume reference of ``return``).

        Actions come from ``numpy.random.default_rng(val_seed)``: ``integers(n)`` per running
        episode for ``n`` discrete actions, ``uniform(low, high)`` per action dimension for
        continuous ones, so the number is the same on every call.
        """
        from compsearch.evaluators.envs import make_env

        probe = make_env(self.env, self.env_kwargs)
        space = probe.action_space
        probe.close()
        rng = np.random.default_rng(self.config.val_seed)

        def act(obs: torch.Tensor) -> torch.Tensor:
            if hasattr(space, "n"):
                return torch.as_tensor(rng.integers(int(space.n), size=len(obs)))
            return torch.as_tensor(rng.uniform(space.low, space.high, size=(len(obs), *space.shape)), dtype=torch.float32)

        seeds = episode_seeds(self.config.val_seed, self.config.episodes)
        return rollout(act, self.env, seeds, env_kwargs=self.env_kwargs, max_steps=self.config.max_steps).mean

    def describe(self) -> str:
        return f"policy on {self.env!r}"
