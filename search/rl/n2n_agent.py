"""``n2n``'s learner: the two policies of :mod:`~compsearch.search.rl.n2n` on one
:class:`~compsearch.search.rl.n2n_problem.N2NProblem`, trained by REINFORCE, and its saved state.

Saved state (:meth:`N2NAgent.state_dict`; tensors, lists and strings only, so
``torch.save`` / ``torch.load(weights_only=True)`` round-trip it without unpickling code)::

    {
      "format": "compsearch.rl.n2n/1",
      "block_features": [...],    # BLOCK_COLUMNS: what the removal policy reads
      "kernel_features": [...],   # KERNEL_FEATURES: what the shrink policy reads
      "blocks": [block names],    # the model the state was learned on
      "heads": [[field, n_choices], ...],
      "removal": {name: tensor} | {},   # RemovalPolicy parameters
      "shrink": {name: tensor} | {},    # ShrinkPolicy parameters
      "baseline": tensor (0-d; NaN before the first reward),
    }

**Transfer** (:meth:`N2NAgent.load_state_dict` on another model): every LSTM weight reads
features, not one model's indices, and is copied; a shrink head is copied when the new space
has a head of the same field and number of choices; the removal policy's per-block offsets
(``block_bias``, indexed by the source model's blocks) are copied only onto the same blocks
(same names), else left at zero; the baseline (a reward scale of the source model) is dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compsearch.search.rl.n2n import (
    MovingBaseline,
    N2NConfig,
    RemovalPolicy,
    ShrinkPolicy,
    reinforce_step,
)
from compsearch.search.rl.n2n_problem import BLOCK_COLUMNS, N2NProblem
from compsearch.search.rl.persist import check_state
from compsearch.search.rl.ppo import load_transferable
from compsearch.search.rl.state import KERNEL_FEATURES

FORMAT = "compsearch.rl.n2n/1"


class N2NAgent:
    """Both stages' policies, their optimizer and the moving-average baseline.

    Args:
        problem: the space's stages and features.
        config: :class:`N2NConfig`.
        seed: initial weights.
    """

    def __init__(self, problem: N2NProblem, config: N2NConfig, seed: int) -> None:
        self.problem, self.config = problem, config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.removal = (RemovalPolicy(in_dim=len(BLOCK_COLUMNS), hidden=config.hidden, n_blocks=len(problem.blocks),
                                          keep_prior=config.keep_prior) if len(problem.blocks) else None)
            lay = problem.layout
            self.shrink = ShrinkPolicy(in_dim=len(KERNEL_FEATURES), hidden=config.hidden, heads=lay.heads) if lay is not None else None
        self.params = [p for m in (self.removal, self.shrink) if m is not None for p in m.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.baseline = MovingBaseline(config.baseline_momentum)
        self._bf = torch.as_tensor(problem.block_feats).unsqueeze(0)
        self._kf = torch.as_tensor(problem.kernel_feats).unsqueeze(0)
        self._mask = torch.as_tensor(lay.head_mask) if lay is not None else None

    def sample(self, generator: torch.Generator) -> np.ndarray:
        """One episode: stage 1 then stage 2 on what stage 1 kept; dimension actions ``D``."""
        keep = self.removal.sample(self._bf, generator).numpy() if self.removal is not None else None
        slots = None
        if self.shrink is not None:
            removed = self._removed(keep)
            slots = self.shrink.sample(self._kf, removed, self._mask, generator).numpy()
        return self.problem.to_actions(keep, slots)[0]

    def _removed(self, keep: np.ndarray | None) -> torch.Tensor:
        k = self.problem.layout.n_kernels if self.problem.layout is not None else 0
        if keep is None:
            return torch.zeros(1, k)
        return torch.as_tensor(self.problem.removed_kernels(keep), dtype=torch.float32)

    def log_prob(self, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi`` and entropy (both stages summed), each ``E``, of ``E x D`` dimension actions."""
        actions = np.asarray(actions, dtype=np.int64).reshape(-1, self.problem.n_dims)
        e = len(actions)
        logp, ent = torch.zeros(e), torch.zeros(e)
        keep = self.problem.keep_from_actions(actions) if self.removal is not None else None
        if self.removal is not None and keep is not None:
            lp, en = self.removal.log_prob(self._bf.expand(e, -1, -1), torch.as_tensor(keep))
            logp, ent = logp + lp, ent + en
        if self.shrink is not None:
            removed = self._removed(keep).expand(e, -1) if keep is None else self._removed(keep)
            slots = torch.as_tensor(self.problem.slots_from_actions(actions))
            lp, en = self.shrink.log_prob(self._kf.expand(e, -1, -1), removed, self._mask, slots)
            logp, ent = logp + lp, ent + en
        return logp, ent

    def update(self, actions: np.ndarray, reward: float) -> float:
        """REINFORCE on one finished episode: advantage ``R - b`` (then ``b`` takes ``R`` in),
        ``steps_per_trial`` gradient steps; returns the advantage."""
        adv = self.baseline.advantage(reward)
        if not self.params:
            return adv
        cfg = self.config
        for _ in range(cfg.steps_per_trial):
            logp, ent = self.log_prob(actions)
            reinforce_step(self.optimizer, self.params, logp, ent, torch.full_like(logp, adv),
                           entropy_weight=cfg.entropy, max_grad_norm=cfg.max_grad_norm)
        return adv

    # ---- saved state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The learned state (format in the module docstring)."""
        lay = self.problem.layout
        return {
            "format": FORMAT,
            "block_features": list(BLOCK_COLUMNS),
            "kernel_features": list(KERNEL_FEATURES),
            "blocks": list(self.problem.blocks),
            "heads": [[f, int(n)] for f, n in lay.heads] if lay is not None else [],
            "removal": {k: v.detach().clone() for k, v in self.removal.state_dict().items()} if self.removal is not None else {},
            "shrink": {k: v.detach().clone() for k, v in self.shrink.state_dict().items()} if self.shrink is not None else {},
            "baseline": torch.tensor(float("nan") if self.baseline.value is None else self.baseline.value),
        }

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, list[str]]:
        """Warm-start from a saved state, possibly of another model (module docstring);
        returns the parameter names copied per policy (``removal``, ``shrink``).

        Raises:
            ConfigError: not this format, or learned on other feature columns.
        """
        check_format(state)
        same = list(state["blocks"]) == list(self.problem.blocks)
        out: dict[str, list[str]] = {"removal": [], "shrink": []}
        if self.removal is not None:
            out["removal"] = load_transferable(self.removal, dict(state["removal"]), same_model=same)
        if self.shrink is not None:
            out["shrink"] = load_transferable(self.shrink, dict(state["shrink"]), same_model=same)
        return out


def check_format(state: Any) -> None:
    """Raise :class:`ConfigError` unless ``state`` is an n2n state this version reads."""
    check_state(state, fmt=FORMAT, reader="n2n", columns={"block_features": BLOCK_COLUMNS, "kernel_features": KERNEL_FEATURES})


__all__ = ["FORMAT", "N2NAgent", "check_format"]
