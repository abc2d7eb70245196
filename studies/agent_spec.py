"""The spec tables of an agent study -- ``[agent]``, ``[task]`` -- and of the gates method, ``[gates]``.

A study compresses either a classifier (``[model]``, ``[base]``, ``[data]``) or the
acting network of a reinforcement-learning agent (``[agent]``, optional ``[task]``)::

    name = "cartpole"
    strategies = ["random", "nsga2"]
    trials = 20
    objectives = ["return", "size_kb"]       # the default of an agent study
    [agent]                                  # trained into <run>/base/<hash>.zip, or
    algo = "dqn"                             # path = "my_agent.zip" (an SB3 file)
    env = "CartPole-v1"
    steps = 30000
    [task]
    episodes = 10                            # validation episodes of `return`
    [constraints]
    min_return = 450.0

``[agent]`` holds the fields of :class:`~compsearch.evaluators.agents.AgentRecipe`
(checked by it) plus ``path``; ``[task]`` those of
:class:`~compsearch.evaluators.policy_task.PolicyTaskConfig` with the distillation
settings (``temperature``, ``dagger_every``, ``dagger_episodes``, ``buffer_size``) flat.
Which task a spec describes decides which quality metric it may name:
:func:`check_task_metrics` refuses ``accuracy`` in an agent study and ``return`` in a
classification study, naming the key.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compsearch.errors import ConfigError
from compsearch.metrics import get_metric, is_known, parse_constraint

MAX_SEED = 2**31 - 1
POLICY, CLASSIFICATION = "policy", "classification"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class AgentSpec(_Table):
    """``[agent]``: the agent whose acting network is compressed (the policy task).

    Attributes:
        algo, env, steps, seed, net_arch, activation, features, features_dim, n_envs,
            env_kwargs, hyper: the :class:`~compsearch.evaluators.agents.AgentRecipe`
            (how the agent is, or was, trained; its network layout).
        path: an SB3 ``.zip`` (``model.save``) to compress instead of training one; the
            recipe must then describe its algorithm, environment and network. A relative
            path is relative to the spec file. Read without unpickling
            (:mod:`compsearch.evaluators.agents`).
    """

    algo: str
    env: str
    steps: int = Field(default=10_000, ge=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    net_arch: list[int] | None = None
    activation: str | None = None
    features: str = "flatten"
    features_dim: int = Field(default=128, ge=1)
    n_envs: int = Field(default=1, ge=1)
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    hyper: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None

    @model_validator(mode="after")
    def _valid_recipe(self) -> AgentSpec:
        self.recipe()  # AgentRecipe's own checks (algo, features, activation, reserved hyper keys)
        return self

    def recipe(self) -> Any:
        """The :class:`~compsearch.evaluators.agents.AgentRecipe` of this table."""
        from compsearch.evaluators.agents import AgentRecipe

        fields = self.model_dump(exclude={"path", "net_arch"})
        return AgentRecipe(**fields, net_arch=tuple(self.net_arch) if self.net_arch is not None else None)


class TaskSpec(_Table):
    """``[task]``: episodes, seeds and distillation of the policy task.

    Attributes:
        episodes: validation episodes (the searched ``return``).
        test_episodes: test episodes (report only).
        train_seed, val_seed, test_seed: first environment seed of each range; training
            rollouts (teacher states, DAgger) use ``train_seed + i``.
        teacher_episodes: teacher rollouts giving the initial distillation states.
        max_steps: cut every episode after this many steps (None = the environment's limit).
        temperature: distillation temperature (None = 1 for PPO logits, 0.01 for DQN Q-values).
        dagger_every: fine-tuning steps between student rollouts (0 = teacher states only).
        dagger_episodes: episodes per student rollout.
        buffer_size: most distillation states kept.
    """

    episodes: int = Field(default=10, ge=1)
    test_episodes: int = Field(default=20, ge=1)
    train_seed: int = Field(default=0, ge=0, le=MAX_SEED)
    val_seed: int = Field(default=1_000_000, ge=0, le=MAX_SEED)
    test_seed: int = Field(default=2_000_000, ge=0, le=MAX_SEED)
    teacher_episodes: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, gt=0)
    dagger_every: int = Field(default=100, ge=0)
    dagger_episodes: int = Field(default=2, ge=1)
    buffer_size: int = Field(default=100_000, ge=1)

    @model_validator(mode="after")
    def _valid_config(self) -> TaskSpec:
        self.config()  # PolicyTaskConfig's own checks (seed ranges apart)
        return self

    def config(self) -> Any:
        """The :class:`~compsearch.evaluators.policy_task.PolicyTaskConfig` of this table."""
        from compsearch.evaluators.distill import DistillSettings
        from compsearch.evaluators.policy_task import PolicyTaskConfig

        distill = DistillSettings(temperature=self.temperature, dagger_every=self.dagger_every,
                                  dagger_episodes=self.dagger_episodes, buffer_size=self.buffer_size)
        return PolicyTaskConfig(episodes=self.episodes, test_episodes=self.test_episodes, train_seed=self.train_seed,
                                val_seed=self.val_seed, test_seed=self.test_seed, teacher_episodes=self.teacher_episodes,
                                max_steps=self.max_steps, distill=distill)

    def dagger_seeds_fit(self, finetune_steps: int) -> None:
        """Raise :class:`ConfigError` when the DAgger rollouts of ``finetune_steps`` steps of
        distillation would reach the validation or test seeds."""
        if not self.dagger_every:
            return
        rounds = max(0, (finetune_steps - 1) // self.dagger_every)
        last = self.train_seed + self.teacher_episodes + rounds * self.dagger_episodes
        if last > min(self.val_seed, self.test_seed):
            raise ConfigError(f"{rounds} DAgger rounds of {self.dagger_episodes} episodes from seed "
                              f"{self.train_seed + self.teacher_episodes} reach the validation/test seeds (from "
                              f"{min(self.val_seed, self.test_seed)}); raise task.val_seed and task.test_seed, or "
                              f"task.dagger_every")


#: Range of the default penalty strengths of the gates method: ``trials`` strengths spaced geometrically
#: over it. The penalty is the expected kept share of the units' cost, in [0, 1]
#: (compsearch.evaluators.gates), against the task loss; on the CartPole DQN (Q-value distillation at
#: T = 0.01, 300 steps) strengths below 1 closed only the channels the loss does not use (about half),
#: 3000 kept a quarter of the channels at the full return and 10000 broke the policy (measured).
DEFAULT_STRENGTH_RANGE = (0.1, 10_000.0)


def default_strengths(n: int) -> list[float]:
    """``n`` strengths spaced geometrically over :data:`DEFAULT_STRENGTH_RANGE` (``[1.0]`` for one),
    rounded to 4 significant digits: ``low * (high / low) ** (i / (n - 1))``."""
    low, high = DEFAULT_STRENGTH_RANGE
    if n <= 1:
        return [1.0]
    return [float(f"{low * (high / low) ** (i / (n - 1)):.4g}") for i in range(n)]


class GatesSpec(_Table):
    """``[gates]``: the gates method (``compsearch gates SPEC``): channel gates trained jointly
    with the network, one point per penalty strength.

    Attributes:
        strengths: penalty weights ``lambda`` (each >= 0); one point each, so at most
            ``trials`` of them (every method gets the same budget of points). Default:
            ``trials`` strengths from :func:`default_strengths`.
        lr: Adam learning rate of the gate log-odds.
        init_open: initial deterministic gate value (in (0, 1)).
        params_weight: the parameters' share of a channel's cost (the rest: MACs).
        online: also train one agent from scratch per strength with gates on its acting
            network (online training and pruning; agent studies only; costs a full agent
            training per point). Its points form the method ``gates-online``.
    """

    strengths: list[float] | None = Field(default=None, min_length=1)
    lr: float = Field(default=0.1, gt=0)
    init_open: float = Field(default=0.9, gt=0, lt=1)
    params_weight: float = Field(default=0.5, ge=0, le=1)
    online: bool = False

    @field_validator("strengths", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        return v

    @field_validator("strengths")
    @classmethod
    def _non_negative(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        bad = [x for x in v if not (math.isfinite(x) and x >= 0)]
        if bad:
            raise ValueError(f"{bad} must be finite numbers >= 0 (penalty weights)")
        if len(set(v)) != len(v):
            raise ValueError(f"{v} has duplicates; list each strength once")
        return v

    def strength_list(self, trials: int) -> list[float]:
        """The strengths given, else ``trials`` default ones."""
        return list(self.strengths) if self.strengths is not None else default_strengths(trials)

    def training(self, *, seed: int, strength: float = 0.0) -> Any:
        """The :class:`~compsearch.evaluators.gates.GateTraining` of one point."""
        from compsearch.evaluators.gates import GateTraining

        return GateTraining(strength=float(strength), lr=self.lr, init_open=self.init_open,
                            params_weight=self.params_weight, seed=seed)


def task_of(agent: AgentSpec | None) -> str:
    """The task a spec describes: ``"policy"`` with an ``[agent]`` table, else ``"classification"``."""
    return POLICY if agent is not None else CLASSIFICATION


def _metric_task(name: str) -> str | None:
    return get_metric(name).task if is_known(name) else None


def _wrong_task(metric: str, task: str) -> str | None:
    owner = _metric_task(metric)
    if owner is None or owner == task:
        return None
    fix = ("an [agent] study measures 'return'" if task == POLICY else
           "'return' needs an [agent] table (the policy task); a [model] study measures 'accuracy'")
    return f"{metric!r} is the quality of the {owner} task, but this spec describes a {task} task; {fix}"


def check_task_metrics(task: str, objectives: list[str], constraints: dict[str, float],
                       reference_point: dict[str, float]) -> list[tuple[str, str]]:
    """``(key path, message)`` for every objective, constraint and reference point whose metric
    belongs to another task (``accuracy`` in an agent study, ``return`` in a classification one)."""
    found = [(f"objectives[{i}]", _wrong_task(metric, task)) for i, metric in enumerate(objectives)]
    found += [(f"constraints.{key}", _wrong_task(parse_constraint(key, bound, where="value").metric, task))
              for key, bound in constraints.items()]
    found += [(f"reference_point.{metric}", _wrong_task(metric, task)) for metric in reference_point]
    return [(k, m) for k, m in found if m is not None]


__all__ = ["AgentSpec", "DEFAULT_STRENGTH_RANGE", "default_strengths", "GatesSpec", "TaskSpec", "check_task_metrics", "task_of"]
