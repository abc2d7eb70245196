"""The maths of ``n2n`` (N2N learning, Ashok et al., ICLR 2018): two recurrent policies, the
paper's reward and REINFORCE with a moving-average baseline. Plain torch, no Optuna.

**Stage 1, removal** (:class:`RemovalPolicy`): a bidirectional LSTM reads the removable
blocks in execution order (``E x B x F1`` block features) and gives every block a keep
probability ``p_b = sigmoid(w . [h_fwd_b, h_bwd_b] + c + bias_b)`` (Bernoulli action, 1 =
keep). ``c = logit(keep_prior)`` makes the untrained policy keep most blocks; ``bias_b`` is a
per-block offset (zero at start), the policy's only model-specific parameter.

**Stage 2, shrinkage** (:class:`ShrinkPolicy`): an LSTM reads the kernels (what one space
group sets: a unit, or a block's units) in execution order; step ``k`` reads the kernel's
features ``F2``, whether stage 1 removed it, and the previous kernel's choices (one column
per field of :data:`FIELDS`: ``index / (n - 1)``, 0 when absent), and one linear head per
``(field, n_choices)`` gives a categorical distribution over that field's choices. The
log-probability of an episode counts the heads a kernel has, and only kernels stage 1 kept
(a removed kernel's choices change nothing).

**Reward** (:func:`n2n_reward`): ``R = C (2 - C) * A / A_ref``, ``C = 1 - r`` the relative
size reduction (``r`` = the compressed model's size or BOPs over the uncompressed one's), ``A``
the quality (accuracy), ``A_ref`` the uncompressed (teacher) model's quality. A candidate that
violates a constraint or whose evaluation failed gets ``infeasible`` (default -1, as the paper
gives invalid architectures).

**REINFORCE** (:func:`reinforce_step`): loss ``-mean_e (R_e - b_e) log pi(a_e) - beta H``
with ``b_e`` the exponential moving average of the earlier rewards,
``b <- m b + (1 - m) R`` (:class:`MovingBaseline`, ``b_1 = R_1``).

Shapes: ``E`` episodes, ``B`` removable blocks, ``K`` kernels, ``H`` heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from compsearch.errors import ConfigError

#: the fields whose previous choice stage 2 reads (fixed, so the input width does not depend on the space)
FIELDS = ("w_bits", "a_bits", "keep", "scheme", "granularity", "structure")


@dataclass(frozen=True)
class N2NConfig:
    """Settings of the two policies and their training.

    Attributes:
        hidden: LSTM hidden width of both policies.
        lr: Adam learning rate.
        steps_per_trial: REINFORCE gradient steps per finished trial.
        baseline_momentum: ``m`` of the moving-average baseline ``b <- m b + (1 - m) R``.
        entropy: weight ``beta`` of the entropy bonus.
        keep_prior: keep probability of every block under the untrained removal policy.
        infeasible: reward of a constraint-violating or failed candidate.
        max_grad_norm: gradient clipping norm.
        startup_trials: trials proposed uniformly at random before the policies propose.
    """

    hidden: int = 32
    lr: float = 0.02
    steps_per_trial: int = 2
    baseline_momentum: float = 0.8
    entropy: float = 0.01
    keep_prior: float = 0.8
    infeasible: float = -1.0
    max_grad_norm: float = 1.0
    startup_trials: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "steps_per_trial"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"n2n {name}={getattr(self, name)!r} must be an integer >= 1")
        if not isinstance(self.startup_trials, int) or self.startup_trials < 0:
            raise ConfigError(f"n2n startup_trials={self.startup_trials!r} must be an integer >= 0")
        if not self.lr > 0:
            raise ConfigError(f"n2n lr={self.lr!r} must be > 0")
        if not 0 <= self.baseline_momentum < 1:
            raise ConfigError(f"n2n baseline_momentum={self.baseline_momentum!r} must lie in [0, 1)")
        if not 0 < self.keep_prior < 1:
            raise ConfigError(f"n2n keep_prior={self.keep_prior!r} must lie in (0, 1), e.g. 0.8")
        if self.entropy < 0 or self.max_grad_norm <= 0:
            raise ConfigError(f"n2n entropy={self.entropy!r} must be >= 0 and max_grad_norm={self.max_grad_norm!r} > 0")


def n2n_reward(ratio: float, quality: float, reference: float) -> float:
    """The paper's reward ``C (2 - C) * A / A_ref`` with ``C = 1 - ratio`` (module docstring).

    Args:
        ratio: compressed size (or BOPs) / uncompressed, in ``(0, 1]``.
        quality: the candidate's quality ``A`` (e.g. validation accuracy).
        reference: the uncompressed model's quality ``A_ref`` (> 0).
    """
    c = 1.0 - float(ratio)
    return c * (2.0 - c) * float(quality) / float(reference)


class MovingBaseline:
    """Exponential moving average of rewards: ``b <- m b + (1 - m) R``, started at the first
    reward (``b_1 = R_1``, so the first advantage is 0).

    A baseline started at 0 would give every early episode a positive advantage (the paper's
    rewards lie in ``[0, 1]``), reinforcing whatever was sampled first until the average caught
    up, which collapses a warm-started policy onto its first proposals.

    Args:
        momentum: ``m`` in ``[0, 1)``.
    """

    def __init__(self, momentum: float) -> None:
        self.momentum = float(momentum)
        self.value: float | None = None

    def advantage(self, reward: float) -> float:
        """``R - b`` with the baseline before ``R``, then ``b`` takes ``R`` in."""
        if self.value is None:
            self.value = float(reward)
            return 0.0
        adv = float(reward) - self.value
        self.value = self.momentum * self.value + (1.0 - self.momentum) * float(reward)
        return adv


class RemovalPolicy(nn.Module):
    """Stage 1: bidirectional LSTM over the removable blocks (module docstring).

    Args:
        in_dim: block feature width ``F1``.
        hidden: LSTM hidden width ``h`` (each direction).
        n_blocks: ``B`` (the per-block offsets).
        keep_prior: keep probability at start.
    """

    #: parameter-name prefixes indexed by one model's blocks (not carried to another model)
    model_specific = ("block_bias",)

    def __init__(self, *, in_dim: int, hidden: int, n_blocks: int, keep_prior: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 1)
        self.block_bias = nn.Parameter(torch.zeros(n_blocks))
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.fill_(float(torch.logit(torch.tensor(keep_prior))))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Keep logits ``E x B`` of block features ``E x B x F1``."""
        h, _ = self.lstm(feats)
        return self.out(h).squeeze(-1) + self.block_bias

    def log_prob(self, feats: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi(keep)`` and entropy, each ``E`` (summed over blocks); ``keep`` is ``E x B`` in {0, 1}."""
        dist = torch.distributions.Bernoulli(logits=self(feats))
        return dist.log_prob(keep.float()).sum(-1), dist.entropy().sum(-1)

    @torch.no_grad()
    def sample(self, feats: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Keep actions ``E x B`` (long, 1 = keep)."""
        p = torch.sigmoid(self(feats))
        return (torch.rand(p.shape, generator=generator) < p).long()


def head_key(field: str, n: int) -> str:
    """Module key of the head for ``field`` with ``n`` choices (``"w_bits_4"``)."""
    return f"{field}_{int(n)}"


class ShrinkPolicy(nn.Module):
    """Stage 2: autoregressive LSTM over the kernels (module docstring).

    Args:
        in_dim: kernel feature width ``F2`` (the removed flag and previous choices are added).
        hidden: LSTM hidden width ``h``.
        heads: ``(field, n_choices)`` of each head ``H``.
    """

    model_specific: tuple[str, ...] = ()

    def __init__(self, *, in_dim: int, hidden: int, heads: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self.heads = tuple((str(f), int(n)) for f, n in heads)
        self.cell = nn.LSTMCell(in_dim + 1 + len(FIELDS), hidden)
        self.out = nn.ModuleDict({head_key(f, n): nn.Linear(hidden, n) for f, n in self.heads})
        with torch.no_grad():
            for lin in self.out.values():
                assert isinstance(lin, nn.Linear)
                lin.weight.mul_(0.1)
                lin.bias.zero_()
        self._field_col = [FIELDS.index(f) if f in FIELDS else -1 for f, _ in self.heads]

    def _prev(self, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Previous-choice columns ``E x len(FIELDS)`` of one kernel's actions ``E x H``."""
        out = torch.zeros(actions.shape[0], len(FIELDS))
        for h, ((_, n), col) in enumerate(zip(self.heads, self._field_col, strict=True)):
            if col >= 0 and bool(mask[h]):
                out[:, col] = actions[:, h].float() / max(n - 1, 1)
        return out

    def _run(self, feats: torch.Tensor, removed: torch.Tensor, head_mask: torch.Tensor, actions: torch.Tensor | None,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e, k = feats.shape[0], feats.shape[1]
        h = torch.zeros(e, self.cell.hidden_size)
        c = torch.zeros_like(h)
        prev = torch.zeros(e, len(FIELDS))
        taken = torch.zeros(e, k, len(self.heads), dtype=torch.long)
        logp, ent = torch.zeros(e), torch.zeros(e)
        for i in range(k):
            h, c = self.cell(torch.cat([feats[:, i], removed[:, i : i + 1], prev], dim=-1), (h, c))
            live = 1.0 - removed[:, i]
            for j, (f, n) in enumerate(self.heads):
                if not bool(head_mask[i, j]):
                    continue
                lsm = torch.log_softmax(self.out[head_key(f, n)](h), dim=-1)
                if actions is None:
                    assert generator is not None
                    a = torch.multinomial(lsm.exp(), 1, generator=generator).squeeze(-1)
                else:
                    a = actions[:, i, j].clone()
                taken[:, i, j] = a
                logp = logp + lsm.gather(-1, a.unsqueeze(-1)).squeeze(-1) * live
                ent = ent - (lsm.exp() * lsm).sum(-1) * live
            prev = self._prev(taken[:, i], head_mask[i])
        return taken, logp, ent

    def log_prob(self, feats: torch.Tensor, removed: torch.Tensor, head_mask: torch.Tensor,
                 actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi(actions)`` and entropy, each ``E``, of ``E x K x H`` actions (kernel features
        ``E x K x F2``, removed flags ``E x K``, ``head_mask`` ``K x H``)."""
        _, logp, ent = self._run(feats, removed, head_mask, actions, None)
        return logp, ent

    @torch.no_grad()
    def sample(self, feats: torch.Tensor, removed: torch.Tensor, head_mask: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
        """Actions ``E x K x H`` (heads a kernel lacks are 0)."""
        return self._run(feats, removed, head_mask, None, generator)[0]


def reinforce_step(
    optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter], logp: torch.Tensor, entropy: torch.Tensor,
    advantage: torch.Tensor, *, entropy_weight: float, max_grad_norm: float,
) -> float:
    """One REINFORCE step on ``-mean(A * logp) - beta * mean(H)``; returns the loss.

    Args:
        logp, entropy, advantage: ``E`` each (the advantage is a constant).
    """
    loss = -(advantage.detach() * logp).mean() - entropy_weight * entropy.mean()
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(list(params), max_grad_norm)
    optimizer.step()
    return float(loss.detach())


__all__ = [
    "FIELDS", "MovingBaseline", "N2NConfig", "RemovalPolicy", "ShrinkPolicy", "head_key", "n2n_reward", "reinforce_step",
]
