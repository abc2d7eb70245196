"""PPO over *slots* with multi-discrete actions: the agents of the hierarchical strategy.

A slot is one thing an agent decides for in an episode: a kernel (a unit, or whatever one
space group sets) for the low level, a model block for the high level. A policy maps the
slot features ``E x S x F`` and each slot's *owner* index ``S`` (the kernel's block, or the
block itself) to one categorical head per searched field and a value:

* :class:`SharedPolicy`: one network for every slot, plus learned owner parameters: a per-owner
  logit offset (``bias``) and/or an owner embedding appended to the features (``embed``), both
  zero at start. Every episode gives
  ``S`` training samples to one network, what it learns about "a sensitive, parameter-heavy
  kernel under a tight budget" carries across blocks (and, through the features, across
  models), and its size does not grow with depth.
* :class:`PerBlockPolicy`: one network per owner (weights ``O x F x h``, evaluated batched),
  HiReLC's "one agent per block". Nothing is shared, so each block learns only from its own
  slots.

Training is PPO (clipped surrogate objective, entropy bonus, value baseline) on per-slot
returns. Shapes: ``E`` episodes, ``S`` slots, ``O`` owners, ``F`` features, ``H`` heads,
``n_h`` choices of head ``h``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compsearch.errors import ConfigError

Prior = Sequence[torch.Tensor | None] | None


@dataclass(frozen=True)
class PPOConfig:
    """PPO settings shared by the low- and high-level agents.

    Attributes:
        hidden: width of the two hidden layers.
        lr: Adam learning rate.
        clip: clip range ``eps`` of the probability ratio.
        epochs: optimization passes over one batch of episodes.
        entropy: weight of the entropy bonus.
        value_coef: weight of the value-baseline regression loss.
        max_grad_norm: gradient clipping norm.
    """

    hidden: int = 32
    lr: float = 1e-2
    clip: float = 0.2
    epochs: int = 3
    entropy: float = 0.05
    value_coef: float = 0.5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ConfigError(f"PPOConfig hidden={self.hidden!r} must be an integer >= 1")
        if not self.lr > 0 or not 0 < self.clip < 1:
            raise ConfigError(f"PPOConfig lr={self.lr!r} must be > 0 and clip={self.clip!r} in (0, 1)")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"PPOConfig epochs={self.epochs!r} must be an integer >= 1")


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class SlotPolicy(nn.Module):
    """Base of the slot policies: ``forward(obs E x S x F, owner S) -> (logits per head, value E x S)``."""

    head_sizes: tuple[int, ...]
    #: parameter-name prefixes that depend on one model's owners (blocks): not carried to another model.
    model_specific: tuple[str, ...] = ()

    def split(self, out: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``E x S x (sum n_h + 1)`` -> logits per head (``E x S x n_h``) and value ``E x S``."""
        logits, value = out[..., :-1], out[..., -1]
        return list(torch.split(logits, list(self.head_sizes), dim=-1)), value


class SharedPolicy(SlotPolicy):
    """One MLP ``F (+ embed) -> h -> h -> (sum n_h + 1)`` shared by every slot.

    Args:
        in_dim: ``F``.
        head_sizes: ``n_h`` for each head.
        hidden: hidden width ``h``.
        generator: torch generator for the initial weights.
        owners: number of owners ``O`` (blocks) for the embedding and the bias.
        embed: width of the learned owner embedding appended to the features (0 = none).
        bias: add a learned per-owner logit offset ``O x sum n_h`` (zero at start): the fastest way
            for owners whose features barely differ to specialize.
    """

    model_specific = ("embedding", "owner_bias")

    def __init__(
        self, *, in_dim: int, head_sizes: Sequence[int], hidden: int, generator: torch.Generator, owners: int = 1, embed: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.head_sizes = tuple(int(n) for n in head_sizes)
        self.embedding = nn.Parameter(torch.zeros(owners, embed)) if embed > 0 else None
        self.owner_bias = nn.Parameter(torch.zeros(owners, sum(self.head_sizes))) if bias else None
        width = in_dim + (embed if embed > 0 else 0)
        self.trunk = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, sum(self.head_sizes) + 1)
        with torch.no_grad():
            for p in [*self.trunk.parameters(), *self.out.parameters()]:
                p.copy_(_uniform(tuple(p.shape), p.shape[-1], generator) if p.dim() > 1 else torch.zeros_like(p))
            self.out.weight[:-1].mul_(0.1)  # near-uniform initial policy

    def forward(self, obs: torch.Tensor, owner: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.embedding is not None:
            emb = self.embedding[owner].expand(obs.shape[0], -1, -1)
            obs = torch.cat([obs, emb], dim=-1)
        out = self.out(self.trunk(obs))
        if self.owner_bias is not None:
            out = out + nn.functional.pad(self.owner_bias[owner], (0, 1))
        return self.split(out)


class PerBlockPolicy(SlotPolicy):
    """One MLP per owner, evaluated as one batched module (weights ``O x F x h``).

    Args:
        in_dim: ``F``.
        head_sizes: ``n_h`` for each head.
        hidden: hidden width ``h``.
        generator: torch generator for the initial weights.
        owners: number of owners ``O``.
    """

    model_specific = ("weights", "biases")

    def __init__(self, *, in_dim: int, head_sizes: Sequence[int], hidden: int, generator: torch.Generator, owners: int) -> None:
        super().__init__()
        self.head_sizes = tuple(int(n) for n in head_sizes)
        out = sum(self.head_sizes) + 1
        shapes = [(in_dim, hidden), (hidden, hidden), (hidden, out)]
        self.weights = nn.ParameterList([nn.Parameter(_uniform((owners, i, o), i, generator)) for i, o in shapes])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(owners, o)) for _, o in shapes])
        with torch.no_grad():
            self.weights[-1][..., :-1].mul_(0.1)

    def forward(self, obs: torch.Tensor, owner: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        h = obs
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.einsum("esf,sfh->esh", h, w[owner]) + b[owner]
            if i < last:
                h = torch.tanh(h)
        return self.split(h)


def _with_prior(logits: list[torch.Tensor], prior: Prior) -> list[torch.Tensor]:
    if prior is None:
        return logits
    return [lg if p is None else lg + p for lg, p in zip(logits, prior, strict=True)]


def evaluate_actions(
    policy: SlotPolicy, obs: torch.Tensor, owner: torch.Tensor, actions: torch.Tensor, head_mask: torch.Tensor, prior: Prior = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probability, entropy and value of ``actions``.

    Args:
        policy: the network.
        obs: ``E x S x F``.
        owner: ``S`` owner index of every slot.
        actions: ``E x S x H`` choice indices (entries of heads a slot does not have are ignored).
        head_mask: ``S x H`` bool, which heads a slot has.
        prior: per head ``S x n_h`` logit offsets (or None).

    Returns:
        ``logp``, ``entropy``, ``value``, each ``E x S`` (summed over the slot's heads).
    """
    logits, value = policy(obs, owner)
    logp = torch.zeros(obs.shape[:2])
    ent = torch.zeros(obs.shape[:2])
    for h, lg in enumerate(_with_prior(logits, prior)):
        lsm = torch.log_softmax(lg, dim=-1)
        m = head_mask[:, h].float()
        logp = logp + lsm.gather(-1, actions[..., h : h + 1]).squeeze(-1) * m
        ent = ent - (lsm.exp() * lsm).sum(-1) * m
    return logp, ent, value


@torch.no_grad()
def sample_actions(
    policy: SlotPolicy, obs: torch.Tensor, owner: torch.Tensor, head_mask: torch.Tensor, generator: torch.Generator,
    prior: Prior = None, greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or take the mode of) every head: actions ``E x S x H`` (long), ``logp`` ``E x S``."""
    logits, _ = policy(obs, owner)
    cols = []
    for lg in _with_prior(logits, prior):
        if greedy:
            cols.append(lg.argmax(-1))
        else:
            probs = torch.softmax(lg, dim=-1).reshape(-1, lg.shape[-1])
            cols.append(torch.multinomial(probs, 1, generator=generator).reshape(lg.shape[:-1]))
    actions = torch.stack(cols, dim=-1) * head_mask.long()
    logp, _, _ = evaluate_actions(policy, obs, owner, actions, head_mask, prior)
    return actions, logp


def ppo_loss(
    policy: SlotPolicy, *, obs: torch.Tensor, owner: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor,
    returns: torch.Tensor, head_mask: torch.Tensor, config: PPOConfig, prior: Prior = None,
) -> torch.Tensor:
    """PPO-clip loss ``-min(rho A, clip(rho, 1-eps, 1+eps) A) - c_ent H + c_v (V - R)^2`` averaged
    over ``E x S``, with ``rho = exp(logp - old_logp)`` and advantage ``A = R - V`` normalized over
    the batch (``obs``: ``E x S x F``; ``actions``: ``E x S x H``; ``old_logp``, ``returns``: ``E x S``)."""
    logp, ent, value = evaluate_actions(policy, obs, owner, actions, head_mask, prior)
    adv = returns - value.detach()
    adv = (adv - adv.mean()) / adv.std().clamp_min(1e-3) if adv.numel() > 1 else adv
    ratio = torch.exp(logp - old_logp)
    pg = -torch.min(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv).mean()
    return pg - config.entropy * ent.mean() + config.value_coef * ((value - returns) ** 2).mean()


class PPOAgent:
    """A :class:`SlotPolicy` with its slots' owners and its optimizer.

    Args:
        policy: the network.
        owner: ``S`` owner index of every slot.
        head_mask: ``S x H`` bool.
        config: PPO settings.
    """

    def __init__(self, *, policy: SlotPolicy, owner: np.ndarray | torch.Tensor, head_mask: np.ndarray | torch.Tensor, config: PPOConfig) -> None:
        self.policy, self.config = policy, config
        self.owner = torch.as_tensor(np.asarray(owner), dtype=torch.long)
        self.head_mask = torch.as_tensor(np.asarray(head_mask), dtype=torch.bool)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)

    def act(self, obs: torch.Tensor, generator: torch.Generator, prior: Prior = None, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`sample_actions`."""
        return sample_actions(self.policy, obs, self.owner, self.head_mask, generator, prior, greedy)

    def logp(self, obs: torch.Tensor, actions: torch.Tensor, prior: Prior = None) -> torch.Tensor:
        """Log-probability ``E x S`` of given actions under the current policy."""
        with torch.no_grad():
            return evaluate_actions(self.policy, obs, self.owner, actions, self.head_mask, prior)[0]

    def update(self, obs: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor, returns: torch.Tensor, prior: Prior = None) -> float:
        """``config.epochs`` PPO steps on one batch (see :func:`ppo_loss`); returns the last loss."""
        loss_value = 0.0
        for _ in range(self.config.epochs):
            loss = ppo_loss(
                self.policy, obs=obs, owner=self.owner, actions=actions, old_logp=old_logp, returns=returns,
                head_mask=self.head_mask, config=self.config, prior=prior,
            )
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            loss_value = float(loss.detach())
        return loss_value

    @torch.no_grad()
    def probs(self, obs: torch.Tensor, prior: Prior = None) -> list[torch.Tensor]:
        """Choice probabilities per head, each ``E x S x n_h``."""
        logits, _ = self.policy(obs, self.owner)
        return [torch.softmax(lg, -1) for lg in _with_prior(logits, prior)]


# ---- the low-level part ------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedLowLevel:
    """The low level as one policy shared by every kernel of every block, with learned block
    parameters (builds :class:`SharedPolicy`; see the module docstring for why shared).

    Attributes:
        embed: width of the block embedding appended to the features (0 = none).
        bias: a learned per-block logit offset (the block's own preferences).
    """

    embed: int = 0
    bias: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.embed, bool) or not isinstance(self.embed, int) or self.embed < 0:
            raise ConfigError(f"SharedLowLevel embed={self.embed!r} must be an integer >= 0")

    def build(self, *, in_dim: int, head_sizes: Sequence[int], owners: int, hidden: int, seed: int) -> SlotPolicy:
        return SharedPolicy(
            in_dim=in_dim, head_sizes=head_sizes, hidden=hidden, generator=torch.Generator().manual_seed(seed), owners=owners, embed=self.embed,
            bias=self.bias,
        )


@dataclass(frozen=True)
class PerBlockLowLevel:
    """The low level as one policy per block (builds :class:`PerBlockPolicy`)."""

    def build(self, *, in_dim: int, head_sizes: Sequence[int], owners: int, hidden: int, seed: int) -> SlotPolicy:
        return PerBlockPolicy(in_dim=in_dim, head_sizes=head_sizes, hidden=hidden, generator=torch.Generator().manual_seed(seed), owners=owners)


def load_transferable(module: nn.Module, saved: dict[str, torch.Tensor], *, same_model: bool = False) -> list[str]:
    """Copy the saved parameters that fit into ``module``; returns the names copied.

    A parameter is copied when ``module`` has it with the same shape and either ``same_model``
    or it is not one of the module's ``model_specific`` parts (see :mod:`compsearch.search.rl.persist`).
    """
    specific = tuple(getattr(module, "model_specific", ()))
    own = module.state_dict()
    copied = []
    with torch.no_grad():
        for name, value in saved.items():
            if name not in own or tuple(own[name].shape) != tuple(value.shape):
                continue
            if not same_model and name.split(".")[0] in specific:
                continue
            own[name].copy_(value)
            copied.append(name)
    return copied
