"""Learned channel gates: hard-concrete (variational Bernoulli) gates on every output channel,
trained with the task loss plus a cost-aware sparsity penalty (Louizos et al. 2018; online
training and pruning of RL agents, XiNet 2025).

Gate of channel ``c`` with log-odds ``a_c`` (a parameter): in training a sample
``z = min(1, max(0, sigmoid((log u - log(1 - u) + a_c) / beta) * (zeta - gamma) + gamma))``,
``u ~ U(0, 1)``; in eval mode the deterministic ``z = min(1, max(0, sigmoid(a_c) * (zeta -
gamma) + gamma))``. ``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``. The gate multiplies
the unit's output channel (forward hook), so a closed gate removes the channel exactly.
The probability that the gate is open is ``P(z > 0) = sigmoid(a_c - beta * log(-gamma / zeta))``.

Cost-aware penalty (what a gate switches off): channel ``c`` of unit ``u`` carries
``cost_uc = p * (fan_in_u + bias_u / out_u) / P + m * (macs_u / out_u) / M`` with ``P`` the
weights and biases and ``M`` the MACs of all gated units, ``p + m = 1`` (default 1/2
each). The penalty is the expected kept cost ``sum_uc cost_uc * P(z_uc > 0)`` -- a share
in [0, 1] -- times the strength ``lambda``. (Only the unit's own row is counted, as in
:mod:`compsearch.evaluators.cost`: the next unit's input columns stay in its size.)

Uses: the ``gates`` criterion (gates trained alone, weights frozen, on the task's loss
batches; scores = the log-odds ``a_c``, the same ranking as the open probabilities but
without float saturation) and the gate sweep of :mod:`compsearch.evaluators.gate_sweep`
(gates trained jointly with the network; the open gates give the policy).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError, check_int_at_least
from compsearch.evaluators.masks import ModelContext, register_criterion
from compsearch.spaces.policy import UnitPolicy
from compsearch.spaces.units import Unit

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def channel_costs(units: Sequence[Unit], *, params_weight: float = 0.5) -> dict[str, float]:
    """Cost of one output channel of each unit (module docstring); all channels sum to 1.

    Args:
        units: the gated units.
        params_weight: ``p`` (share of parameters; ``m = 1 - p`` goes to MACs).
    """
    if not 0.0 <= params_weight <= 1.0:
        raise ConfigError(f"gates.params_weight={params_weight!r} must be in [0, 1]")
    total_p = sum(u.params + u.bias_params for u in units)
    total_m = sum(u.macs for u in units)
    out = {}
    for u in units:
        p = (u.params + u.bias_params) / u.out_channels / total_p if total_p else 0.0
        m = u.macs / u.out_channels / total_m if total_m else 0.0
        out[u.name] = params_weight * p + (1.0 - params_weight) * (m if total_m else p)
    return out


class HardConcreteGates(nn.Module):
    """One hard-concrete gate per output channel of each unit.

    Args:
        channels: unit name -> number of output channels.
        costs: unit name -> cost of one of its channels (:func:`channel_costs`).
        init_open: initial deterministic gate value is 1 for every channel when the
            log-odds start at ``log(init_open / (1 - init_open))``; default 0.9.
    """

    def __init__(self, channels: Mapping[str, int], costs: Mapping[str, float], *, init_open: float = 0.9) -> None:
        super().__init__()
        if not 0.0 < init_open < 1.0:
            raise ConfigError(f"gates.init_open={init_open!r} must be in (0, 1)")
        if not channels:
            raise ConfigError("gates need at least one unit to gate; check the space's units (include/exclude)")
        self.names = list(channels)
        start = math.log(init_open / (1.0 - init_open))
        self.log_alpha = nn.ParameterList([nn.Parameter(torch.full((channels[n],), start)) for n in self.names])
        self.register_buffer("costs", torch.tensor([float(costs[n]) for n in self.names]), persistent=False)
        self._index = {n: i for i, n in enumerate(self.names)}

    def alpha(self, name: str) -> torch.Tensor:
        """The log-odds ``a`` of ``name``'s channels (``out_channels``)."""
        return self.log_alpha[self._index[name]]

    def open_probability(self, name: str) -> torch.Tensor:
        """``P(z > 0) = sigmoid(a - beta * log(-gamma / zeta))`` per channel."""
        return torch.sigmoid(self.alpha(name) - BETA * math.log(-GAMMA / ZETA))

    def gate(self, name: str, *, sample: bool) -> torch.Tensor:
        """``out_channels`` gate values: a hard-concrete sample, or the deterministic value."""
        a = self.alpha(name)
        if sample:
            u = torch.rand_like(a).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + a) / BETA)
        else:
            s = torch.sigmoid(a)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def penalty(self) -> torch.Tensor:
        """Expected kept cost ``sum_uc cost_uc * P(z_uc > 0)`` (a share in [0, 1])."""
        costs: torch.Tensor = self.costs  # type: ignore[assignment]
        total = costs[0] * self.open_probability(self.names[0]).sum()
        for i, name in enumerate(self.names[1:], start=1):
            total = total + costs[i] * self.open_probability(name).sum()
        return total

    def open_channels(self, name: str) -> torch.Tensor:
        """Boolean ``out_channels``: deterministic gate > 0; at least the highest-odds channel."""
        keep = self.gate(name, sample=False) > 0
        if not keep.any():
            keep[int(self.alpha(name).argmax())] = True
        return keep

    def keep_ratios(self) -> dict[str, float]:
        """Unit -> fraction of its channels open (deterministic gates)."""
        return {n: float(self.open_channels(n).float().mean()) for n in self.names}

    def policy(self) -> dict[str, UnitPolicy]:
        """The policy the open gates imply: ``keep`` = open fraction, channel structure; fully open units left out."""
        return {n: UnitPolicy(keep=k, structure="channel") for n, k in self.keep_ratios().items() if k < 1.0}

    @contextmanager
    def attached(self, modules: Mapping[str, nn.Module | Sequence[nn.Module]]) -> Iterator[HardConcreteGates]:
        """Multiply every gated unit's output channels by its gates while the block runs.

        ``modules[name]`` is the unit's module or several modules sharing the gates (e.g. a
        DQN's online and target networks). A module in training mode draws a sample per
        forward; in eval mode it uses the deterministic gate.
        """
        handles = []
        for name in self.names:
            group = modules[name]
            for module in group if isinstance(group, Sequence) else [group]:
                handles.append(module.register_forward_hook(self._hook(name)))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            z = self.gate(name, sample=module.training)
            shape = [1] * out.dim()
            shape[1 if isinstance(module, _CONV) else -1] = -1
            return out * z.reshape(shape)
        return hook

    @torch.no_grad()
    def fold(self, modules: Mapping[str, nn.Module]) -> None:
        """Multiply each unit's weight rows (and bias) by its deterministic gates: the
        gate-free network then computes exactly what the gated one did in eval mode --
        except in a unit whose gates all closed, where the channel :meth:`open_channels`
        keeps (highest log-odds) keeps its weights unscaled, so that the network has the
        one channel its policy (``keep = 1 / out_channels``) says."""
        for name in self.names:
            module = modules[name]
            z = self.gate(name, sample=False)
            z = torch.where(self.open_channels(name) & (z == 0), torch.ones_like(z), z)
            weight = module.weight
            assert isinstance(weight, torch.Tensor)
            weight.mul_(z.reshape((-1,) + (1,) * (weight.dim() - 1)).to(weight))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.mul_(z.to(bias))


@dataclass(frozen=True)
class GateTraining:
    """How gates are trained.

    Attributes:
        strength: ``lambda``, the weight of the penalty (share of cost kept) against the task loss.
        steps: optimizer steps.
        lr: Adam learning rate of the gate log-odds.
        init_open: initial open value (see :class:`HardConcreteGates`).
        params_weight: parameters' share of a channel's cost (the rest: MACs).
        seed: seed of the gate samples and batch order.
    """

    strength: float = 0.5
    steps: int = 200
    lr: float = 0.05
    init_open: float = 0.9
    params_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.strength >= 0 and math.isfinite(self.strength)):
            raise ConfigError(f"gates.strength={self.strength!r} must be a finite number >= 0")
        if not self.lr > 0:
            raise ConfigError(f"gates.lr={self.lr!r} must be > 0")
        check_int_at_least("gates", self, {"steps": 1})


#: settings of the ``gates`` criterion (change with ``dataclasses.replace`` before building an evaluator)
CRITERION_TRAINING = GateTraining()


def make_gates(units: Sequence[Unit], training: GateTraining) -> HardConcreteGates:
    """Gates over ``units`` with their channel costs."""
    costs = channel_costs(units, params_weight=training.params_weight)
    return HardConcreteGates({u.name: u.out_channels for u in units}, costs, init_open=training.init_open)


def train_gates_alone(model: nn.Module, modules: Mapping[str, nn.Module], batches: Sequence[Any],
                      gates: HardConcreteGates, training: GateTraining) -> list[float]:
    """Train only the gates (weights frozen) on ``(inputs, loss)`` batches plus the penalty;
    returns the loss of every step. The model is in training mode only for the gate samples."""
    if not batches:
        raise ConfigError("gates need at least one loss batch; raise sensitivity_batches")
    optimizer = torch.optim.Adam(gates.parameters(), lr=training.lr)
    losses = []
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[]), gates.attached(modules):
            torch.manual_seed(training.seed)
            for batch in itertools.islice(itertools.cycle(batches), training.steps):
                for m in modules.values():
                    m.train()
                loss = batch.loss(model(batch.inputs)) + training.strength * gates.penalty()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.eval()
    return losses


@register_criterion("gates", model_level=True)
def _gates_criterion(context: ModelContext) -> dict[str, torch.Tensor]:
    """The ``gates`` criterion: log-odds of gates trained alone (:data:`CRITERION_TRAINING`)."""
    from compsearch.spaces.units import discover_units

    example = context.inputs[0][:2] if context.inputs else context.loss_batches[0].inputs[:2]
    units = [u for u in discover_units(context.model, example) if u.name in context.modules]
    gates = make_gates(units, CRITERION_TRAINING).to(example.device)
    train_gates_alone(context.model, {u.name: context.modules[u.name] for u in units}, list(context.loss_batches),
                      gates, CRITERION_TRAINING)
    scores = {u.name: gates.alpha(u.name).detach() for u in units}
    for name, module in context.modules.items():  # a unit discovery did not see: no gate, equal scores
        scores.setdefault(name, torch.zeros(int(module.weight.shape[0])))  # type: ignore[index, union-attr]
    return scores
