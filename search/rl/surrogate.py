"""Ensemble of small MLPs predicting real objectives (e.g. validation accuracy) from
``space.features(policy)``.

The ensemble's members are trained at once as one batched module (weights ``M x d x h``),
each on its own bootstrap resample of the data (Poisson(1) sample weights), so the
spread of their predictions measures how much the data pins a prediction down: the
*disagreement* used as an exploration bonus. Targets are standardized per output;
predictions come back in the original units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compsearch.errors import ConfigError


@dataclass(frozen=True)
class SurrogateConfig:
    """How the surrogate ensemble is built and trained.

    Attributes:
        members: ensemble size ``M``.
        hidden: hidden width of every member (two hidden layers, SiLU).
        epochs: full-batch Adam steps per fit.
        lr: Adam learning rate.
        weight_decay: L2 penalty (keeps small-data fits smooth).
        bootstrap: train each member on a Poisson(1) bootstrap weighting of the data.
    """

    members: int = 5
    hidden: int = 32
    epochs: int = 150
    lr: float = 1e-2
    weight_decay: float = 1e-3
    bootstrap: bool = True

    def __post_init__(self) -> None:
        for name in ("members", "hidden", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"SurrogateConfig {name}={value!r} must be an integer >= 1")
        if not self.lr > 0:
            raise ConfigError(f"SurrogateConfig lr={self.lr!r} must be > 0")


class EnsembleMLP(nn.Module):
    """``M`` independent MLPs ``d -> h -> h -> o`` evaluated as one batched module.

    Args:
        members: ``M``.
        in_dim: ``d``.
        hidden: ``h``.
        out_dim: ``o``.
        generator: torch generator for the initial weights (reproducible init).
    """

    def __init__(self, *, members: int, in_dim: int, hidden: int, out_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        shapes = [(in_dim, hidden), (hidden, hidden), (hidden, out_dim)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in shapes:
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(members, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, fan_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``n x d`` (shared) or ``M x n x d`` inputs -> ``M x n x o`` outputs."""
        h = x.expand(self.weights[0].shape[0], *x.shape) if x.dim() == 2 else x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = nn.functional.silu(h)
        return h


class SurrogateEnsemble:
    """Fit ``y = f(x)`` with an MLP ensemble; predict mean and disagreement.

    Args:
        in_dim: feature dimension ``d`` (``len(space.features(policy))``).
        out_dim: number of predicted objectives ``o``.
        config: training settings.
        seed: seed of weight init and bootstrap weights.
    """

    def __init__(self, *, in_dim: int, out_dim: int = 1, config: SurrogateConfig | None = None, seed: int = 0) -> None:
        self.config = config or SurrogateConfig()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self._gen = torch.Generator().manual_seed(int(seed))
        self.net: EnsembleMLP | None = None
        self._y_mean = np.zeros(self.out_dim)
        self._y_std = np.ones(self.out_dim)
        self.n_fit = 0

    @property
    def fitted(self) -> bool:
        return self.net is not None

    def fit(self, x: np.ndarray, y: np.ndarray) -> SurrogateEnsemble:
        """Train from scratch on ``x`` (``n x d``) and ``y`` (``n x o`` or ``n``).

        Raises:
            ConfigError: shapes do not match, or fewer than 2 points.
        """
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
        if x.ndim != 2 or x.shape[1] != self.in_dim or y.shape[1] != self.out_dim:
            raise ConfigError(
                f"surrogate fit got x {x.shape} and y {y.shape}; expected n x {self.in_dim} and n x {self.out_dim}"
            )
        if len(x) < 2:
            raise ConfigError(f"surrogate fit needs at least 2 points, got {len(x)}")
        cfg = self.config
        self._y_mean = y.mean(axis=0)
        self._y_std = np.where(y.std(axis=0) > 1e-12, y.std(axis=0), 1.0)
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(((y - self._y_mean) / self._y_std).astype(np.float32))
        net = EnsembleMLP(members=cfg.members, in_dim=self.in_dim, hidden=cfg.hidden, out_dim=self.out_dim, generator=self._gen)
        if cfg.bootstrap:
            w = torch.poisson(torch.ones(cfg.members, len(x), 1), generator=self._gen)
        else:
            w = torch.ones(cfg.members, len(x), 1)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1.0)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        for _ in range(cfg.epochs):
            opt.zero_grad()
            loss = (w * (net(xt) - yt) ** 2).sum() / cfg.members
            loss.backward()
            opt.step()
        self.net = net
        self.n_fit = len(x)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and member standard deviation (disagreement), each ``n x o``, original units.

        Raises:
            ConfigError: called before :meth:`fit`.
        """
        if self.net is None:
            raise ConfigError("SurrogateEnsemble.predict called before fit(); fit it on at least 2 points first")
        with torch.no_grad():
            out = self.net(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()
        mean = out.mean(axis=0) * self._y_std + self._y_mean
        std = out.std(axis=0) * self._y_std
        return mean, std


def r_squared(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - sum (y - y_hat)^2 / sum (y - mean y)^2``."""
    y_true, y_pred = np.asarray(y_true, float).ravel(), np.asarray(y_pred, float).ravel()
    return float(1.0 - ((y_true - y_pred) ** 2).sum() / max(((y_true - y_true.mean()) ** 2).sum(), 1e-12))
