"""The ``gates`` method: train channel gates jointly with the network for a sweep of penalty
strengths; every strength gives one point (the policy its open gates imply, and the
quality of the jointly trained, gate-folded network).

Three ways to train (see :mod:`compsearch.evaluators.gates` for the gates and penalty):

* :func:`gate_sweep` with a :class:`~compsearch.evaluators.policy_task.PolicyTask`: during
  policy distillation from the uncompressed agent (student = a copy of the teacher with
  gates; loss = distillation loss + ``lambda`` x penalty; DAgger rounds as in fine-tuning);
* :func:`gate_sweep` with any other task: on the task's gradient batches (classification:
  cross-entropy on the train split, a fresh seeded permutation per epoch);
* :func:`train_agent_gated`: during SB3 training from scratch (online training and pruning,
  XiNet 2025): gates on the acting network (DQN's online and target Q-networks share
  them; SAC's actor; PPO's policy path) get the RL loss gradient through their forward
  hooks, plus the penalty gradient, stepped by their own Adam right before each SB3
  optimizer step.

Weights and gates are trained with one optimizer (``FineTuneConfig``; the gates' learning
rate is ``GateTraining.lr``, following the same schedule). After training, the
deterministic gates are folded into the weights (closed channels become zero rows), the
network is measured by ``task.measure`` and the point's policy is ``keep`` = open
fraction per unit (channel structure).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.distill import DistillHooks, StateBuffer, distill
from compsearch.evaluators.finetune import learning_rate, make_optimizer
from compsearch.evaluators.gates import GateTraining, HardConcreteGates, make_gates
from compsearch.evaluators.masks import ModelContext
from compsearch.evaluators.tasks import Task
from compsearch.evaluators.types import FineTuneConfig
from compsearch.spaces.policy import UnitPolicy
from compsearch.spaces.units import Unit


@dataclass(frozen=True)
class GatePoint:
    """One strength of a gate sweep.

    Attributes:
        strength: the penalty weight ``lambda``.
        policy: unit -> ``UnitPolicy(keep=open fraction, structure="channel")`` (units
            with every gate open left out).
        keep: unit -> open fraction, every gated unit.
        scores: unit -> ``out_channels`` gate log-odds (higher = more open); as channel
            scores they make an evaluator prune exactly the closed channels.
        values: ``task.measure(network, "val")`` of the gate-folded network.
        test_values: the same on ``"test"`` when asked for, else None.
        seconds: wall time of training and measuring.
    """

    strength: float
    policy: dict[str, UnitPolicy]
    keep: dict[str, float]
    scores: dict[str, torch.Tensor]
    values: dict[str, float]
    test_values: dict[str, float] | None = None
    seconds: float = 0.0
    network: nn.Module | None = field(default=None, repr=False, compare=False)


def gate_criterion(point: GatePoint) -> Callable[[ModelContext], dict[str, torch.Tensor]]:
    """A model-level criterion (``register_criterion(name, model_level=True)``) giving the
    point's gate log-odds as channel scores, so an evaluator with it prunes, under
    ``point.policy``, exactly the channels whose gates closed; units without gates score 0
    (``point.policy`` does not prune them)."""

    def score(context: ModelContext) -> dict[str, torch.Tensor]:
        return {name: point.scores[name] if name in point.scores else torch.zeros(int(m.weight.shape[0]))  # type: ignore[index, union-attr]
                for name, m in context.modules.items()}

    return score


def _point(strength: float, gates: HardConcreteGates, net: nn.Module, modules: Mapping[str, nn.Module], task: Task,
           test: bool, start: float) -> GatePoint:
    gates.fold(modules)
    net.eval()
    return GatePoint(
        strength=strength, policy=gates.policy(), keep=gates.keep_ratios(),
        scores={n: gates.alpha(n).detach().clone() for n in gates.names}, values=task.measure(net, "val"),
        test_values=task.measure(net, "test") if test else None, seconds=time.perf_counter() - start, network=net,
    )


def gate_sweep(
    model: nn.Module,
    task: Task,
    *,
    units: Sequence[Unit],
    strengths: Sequence[float],
    config: FineTuneConfig,
    training: GateTraining | None = None,
    test: bool = False,
) -> list[GatePoint]:
    """Train gates jointly with a copy of ``model`` once per strength (module docstring).

    Args:
        model: the uncompressed network (not changed).
        task: the task (a policy task distils; others train on their gradient batches).
        units: the gated units (usually the searched ones: not the head, not the stem).
        strengths: penalty weights ``lambda``, one point each.
        config: optimizer, lr, schedule, batch size, steps and seed of the joint training.
        training: gate settings (its ``strength`` is replaced by each of ``strengths``).
        test: also measure the test split (final reports only).

    Raises:
        ConfigError: no strength or no unit.
    """
    if not strengths:
        raise ConfigError("gates.strengths is empty; give penalty weights such as [0.1, 0.3, 1.0]")
    if not units:
        raise ConfigError("the gate sweep needs units to gate; check the space's units (include/exclude)")
    base = training or GateTraining()
    device = next(model.parameters()).device
    points = []
    for strength in strengths:
        start = time.perf_counter()
        setting = replace(base, strength=float(strength))
        net = copy.deepcopy(model)
        modules = {u.name: net.get_submodule(u.name) for u in units}
        gates = make_gates(units, setting).to(device)
        with torch.random.fork_rng(devices=[]), gates.attached(modules):
            torch.manual_seed(setting.seed)
            _train_jointly(net, task, gates, config, setting)
        points.append(_point(float(strength), gates, net, modules, task, test, start))
    return points


def _groups(net: nn.Module, gates: HardConcreteGates, config: FineTuneConfig, lr: float) -> list[dict[str, Any]]:
    return [{"params": [p for p in net.parameters() if p.requires_grad]},
            {"params": list(gates.parameters()), "lr_scale": lr / config.lr}]


def _train_jointly(net: nn.Module, task: Task, gates: HardConcreteGates, config: FineTuneConfig, training: GateTraining) -> None:
    from compsearch.evaluators.policy_task import PolicyTask

    penalty = lambda: training.strength * gates.penalty()  # noqa: E731
    if isinstance(task, PolicyTask):
        buffer = StateBuffer(task.states(), capacity=task.config.distill.buffer_size)
        hooks = DistillHooks(after_step=lambda: None, collect=task._collect, extra_loss=penalty)
        distill(net, task.teacher, buffer, kind=task.kind, config=config, settings=task.config.distill, hooks=hooks,
                half_range=task._half_range(), params=_groups(net, gates, config, training.lr))
        return
    optimizer = make_optimizer(_groups(net, gates, config, training.lr), config)  # type: ignore[arg-type]
    net.train()
    for step, batch in enumerate(itertools.islice(_epochs(task, config), config.steps)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, config.steps) * group.get("lr_scale", 1.0)
        loss = batch.loss(net(batch.inputs)) + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()


def _epochs(task: Task, config: FineTuneConfig) -> Iterator[Any]:
    """The task's gradient batches, a fresh seeded permutation per epoch."""
    for epoch in itertools.count():
        batches = task.gradient_batches(batches=1 << 30, batch_size=config.batch_size, seed=config.seed + epoch)
        if not batches:
            raise ConfigError(f"task {task.describe()!r} gave no gradient batches for the gate sweep")
        yield from batches


# ---- online: gates during SB3 training from scratch ------------------------------------------------


def train_agent_gated(recipe: Any, training: GateTraining, *, units: Sequence[str] | None = None,
                      device: str = "cpu") -> tuple[nn.Module, HardConcreteGates]:
    """Train an SB3 agent from scratch with gates on its acting network (online pruning).

    Args:
        recipe: the :class:`~compsearch.evaluators.agents.AgentRecipe`.
        training: gate strength, learning rate, initial open value, cost weights, seed.
        units: ``PolicyNet`` unit names to gate (default: every unit but the action layer).
        device: torch device of training.

    Returns:
        ``(network, gates)``: the acting network with the deterministic gates folded in
        (closed channels are zero rows) and the trained gates (for ``keep_ratios``/``policy``).
    """
    from compsearch.evaluators.agents import (
        DEFAULT_HYPER,
        acting_module,
        acting_parts,
        policy_kwargs,
        policy_network,
    )
    from compsearch.evaluators.sb3_train import learn
    from compsearch.spaces.units import discover_units

    state: dict[str, Any] = {}

    def prepare(model: Any) -> None:
        net = policy_network(model.policy, algo=recipe.algo)
        example = torch.as_tensor(model.observation_space.sample()[None]).float().repeat(2, *([1] * len(model.observation_space.shape)))
        found = [u for u in discover_units(net, example) if (u.name in units if units is not None else not u.is_head)]
        gates = make_gates(found, training).to(model.device)
        online = acting_parts(model.policy, algo=recipe.algo)
        shared = [online] + ([acting_parts(model.policy, algo=recipe.algo, target=True)] if recipe.algo == "dqn" else [])
        modules = {u.name: [acting_module(parts, u.name) for parts in shared] for u in found}
        state["context"] = gates.attached(modules)
        state["context"].__enter__()
        optimizer = model.actor.optimizer if recipe.algo == "sac" else model.policy.optimizer
        state["hook"] = optimizer.register_step_pre_hook(_gate_step(gates, training))
        state["gates"], state["units"] = gates, found

    model = learn(recipe, policy_kwargs(recipe), DEFAULT_HYPER[recipe.algo], device=device, prepare=prepare)
    state["context"].__exit__(None, None, None)
    state["hook"].remove()
    gates: HardConcreteGates = state["gates"].cpu()
    net = policy_network(model.policy, algo=recipe.algo).cpu()
    gates.fold({u.name: net.get_submodule(u.name) for u in state["units"]})
    return net.eval(), gates


def _gate_step(gates: HardConcreteGates, training: GateTraining) -> Any:
    """Optimizer pre-step hook: add the penalty gradient to the gates' RL-loss gradient,
    step the gates' own Adam, clear their gradients."""
    optimizer = torch.optim.Adam(gates.parameters(), lr=training.lr)

    def hook(_opt: Any, _args: Any, _kwargs: Any) -> None:
        params = list(gates.parameters())
        penalty = torch.autograd.grad(training.strength * gates.penalty(), params)
        for p, g in zip(params, penalty, strict=True):
            p.grad = g if p.grad is None else p.grad + g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return hook
