"""Acquisition of ``bo``: qLogNEHVI over (measured, exact) outcomes, maximized over a discrete space.

Plain BoTorch maths, no Optuna. Candidates are integer *action* vectors (one choice
index per dimension of the space, shape ``n x D``); an ``encode`` callable turns them
into model rows (``n x d``). The discrete maximization is

1. a pool of ``n_random`` uniform candidates plus ``n_mutate`` mutations of the
   current Pareto-optimal observations (each mutation changes ``k`` dimensions,
   ``P(k) = 2^-k``: an ordinal choice moves one step, a categorical one is redrawn);
2. the pool is filtered by ``allowed`` *before* scoring -- the sampler passes the exact
   cost constraints and the already observed/pending policies there, so an
   infeasible or duplicate candidate is never scored nor proposed;
3. a best-improvement local search from the ``local_search_starts`` best candidates
   over all single-dimension changes (again filtered by ``allowed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
from botorch.acquisition.objective import GenericMCObjective
from botorch.models.deterministic import DeterministicModel
from botorch.models.model import Model, ModelList
from botorch.sampling import ListSampler, MCSampler, SobolQMCNormalSampler
from botorch.sampling.index_sampler import IndexSampler
from torch import Tensor

Encode = Callable[[np.ndarray], Tensor]
Allowed = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class OutcomeConstraint:
    """A bound on one modelled output, feasible when ``c(Z) <= 0``.

    Attributes:
        output: index of the model output (signed: larger is better).
        sign: +1 if the output is the metric itself, -1 if it is its negation.
        bound: the metric's bound (unsigned, in the metric's own units).
        upper: True for ``metric <= bound`` (``max_``), False for ``metric >= bound`` (``min_``).
    """

    output: int
    sign: float
    bound: float
    upper: bool

    def __call__(self, Z: Tensor) -> Tensor:
        """``Z``: samples ``... x m`` -> violation ``...`` (<= 0 is feasible)."""
        value = self.sign * Z[..., self.output]
        return value - self.bound if self.upper else self.bound - value


@dataclass(frozen=True)
class AcquisitionSpec:
    """What to maximize.

    Attributes:
        objectives: model outputs that are objectives (signed, larger is better).
        ref_point: signed hypervolume reference point, one per objective.
        constraints: bounds on modelled outputs (accuracy floors and the like).
        mc_samples: quasi-MC samples of the posterior.
    """

    objectives: tuple[int, ...]
    ref_point: tuple[float, ...]
    constraints: tuple[OutcomeConstraint, ...] = ()
    mc_samples: int = 64


def make_sampler(model: Model, n: int, seed: int) -> MCSampler:
    """Quasi-MC sampler of ``n`` samples: for a ``ModelList`` a ``ListSampler`` with an
    independently seeded Sobol sampler per GP and an ``IndexSampler`` (the one exact
    sample) for the deterministic model."""
    shape = torch.Size([n])
    if not isinstance(model, ModelList):
        return SobolQMCNormalSampler(sample_shape=shape, seed=seed)
    return ListSampler(*[
        IndexSampler(sample_shape=shape, seed=seed)
        if isinstance(m, DeterministicModel)
        else SobolQMCNormalSampler(sample_shape=shape, seed=seed + i)
        for i, m in enumerate(model.models)
    ])


def build_acquisition(
    model: Model,
    spec: AcquisitionSpec,
    *,
    X_baseline: Tensor,
    X_pending: Tensor | None,
    seed: int,
) -> AcquisitionFunction:
    """qLogNEHVI (two or more objectives) or qLogNEI (one), with pending points fantasized.

    Args:
        model: the ``ModelList`` of GPs and exact costs.
        spec: objectives, reference point, outcome constraints.
        X_baseline: observed rows, ``n x d``.
        X_pending: rows of running trials, ``p x d`` (None or empty: none); they are
            sampled jointly with every candidate, so a candidate that only repeats a
            pending point's expected gain earns nothing.
        seed: seed of the quasi-MC sampler.
    """
    sampler = make_sampler(model, spec.mc_samples, seed)
    pending = X_pending if X_pending is not None and len(X_pending) else None
    constraints: list[Callable[[Tensor], Tensor]] | None = list(spec.constraints) or None
    if len(spec.objectives) >= 2:
        return qLogNoisyExpectedHypervolumeImprovement(
            model=model,
            ref_point=list(spec.ref_point),
            X_baseline=X_baseline,
            sampler=sampler,
            objective=IdentityMCMultiOutputObjective(outcomes=list(spec.objectives)),
            constraints=constraints,
            X_pending=pending,
            prune_baseline=True,
            cache_root=False,
        )
    index = spec.objectives[0]

    def single(Z: Tensor, X: Tensor | None = None) -> Tensor:
        return Z[..., index]

    return qLogNoisyExpectedImprovement(
        model=model,
        X_baseline=X_baseline,
        sampler=sampler,
        objective=GenericMCObjective(single),
        constraints=constraints,
        X_pending=pending,
        prune_baseline=True,
        cache_root=False,
    )


def score(acq: AcquisitionFunction, X: Tensor, *, batch: int = 256) -> Tensor:
    """Acquisition value of each row of ``X`` (``n x d``) as a q=1 candidate, shape ``n``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(X), batch):
            out.append(acq(X[i : i + batch].unsqueeze(-2)))
    return torch.cat(out) if out else torch.empty(0, dtype=X.dtype)


def random_actions(rng: np.random.Generator, sizes: Sequence[int], n: int) -> np.ndarray:
    """``n`` uniform action vectors, ``n x D`` (int64)."""
    return np.stack([rng.integers(s, size=n) for s in sizes], axis=1) if n else np.empty((0, len(sizes)), np.int64)


def mutate(
    rng: np.random.Generator, parents: np.ndarray, sizes: Sequence[int], ordinal: Sequence[bool], n: int
) -> np.ndarray:
    """``n`` mutations of rows of ``parents`` (``P x D``), ``n x D``.

    Each child changes ``k`` distinct dimensions, ``P(k) = 2^-k`` for ``k = 1, 2, ...``: an ordinal choice
    moves one step up or down (reflected at the ends), a categorical one takes a
    different choice uniformly. Dimensions with one choice never change.
    """
    sizes_a = np.asarray(sizes)
    free = np.flatnonzero(sizes_a > 1)
    if not len(parents) or not len(free) or not n:
        return np.empty((0, len(sizes)), np.int64)
    children = parents[rng.integers(len(parents), size=n)].copy()
    for child in children:
        k = min(len(free), int(rng.geometric(0.5)))
        for j in rng.choice(free, size=k, replace=False):
            old = int(child[j])
            if ordinal[j]:
                step = 1 if rng.random() < 0.5 else -1
                child[j] = old + step if 0 <= old + step < sizes_a[j] else old - step
            else:
                child[j] = (old + 1 + int(rng.integers(sizes_a[j] - 1))) % sizes_a[j]
    return children


def neighbours(x: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Every action vector that differs from ``x`` (shape ``D``) in one dimension, ``k x D``."""
    out = []
    for j, s in enumerate(sizes):
        for c in range(s):
            if c != x[j]:
                y = x.copy()
                y[j] = c
                out.append(y)
    return np.stack(out) if out else np.empty((0, len(x)), np.int64)


def unique_rows(A: np.ndarray, seen: set[bytes] | None = None) -> np.ndarray:
    """Rows of ``A`` in first-seen order without repeats (and without keys already in ``seen``,
    which is updated)."""
    seen = set() if seen is None else seen
    keep = []
    for i, row in enumerate(A):
        key = row.astype(np.int64).tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return A[keep]


@dataclass(frozen=True)
class DiscreteSearch:
    """Settings of :func:`maximize_discrete` (see the module docstring).

    Attributes:
        n_random: uniform candidates in the pool.
        n_mutate: mutated Pareto-optimal observations in the pool.
        local_search_starts: best pool candidates that start a local search.
        local_search_steps: best-improvement moves per local search, at most.
        batch: candidates per acquisition call (memory only).
    """

    n_random: int = 512
    n_mutate: int = 512
    local_search_starts: int = 3
    local_search_steps: int = 3
    batch: int = 256


def maximize_discrete(
    acq: AcquisitionFunction,
    *,
    sizes: Sequence[int],
    ordinal: Sequence[bool],
    parents: np.ndarray,
    encode: Encode,
    allowed: Allowed,
    rng: np.random.Generator,
    search: DiscreteSearch,
) -> tuple[np.ndarray, float] | None:
    """The allowed action vector of largest acquisition value found, and that value.

    Args:
        acq: acquisition function of q=1 candidates.
        sizes: choices per dimension, length ``D``.
        ordinal: whether each dimension is ordinal.
        parents: action vectors to mutate, ``P x D`` (may be empty).
        encode: action vectors ``n x D`` -> model rows ``n x d``.
        allowed: action vectors ``n x D`` -> boolean mask ``n`` (exact constraints, no duplicates).
        rng: randomness of the pool.
        search: pool and local-search sizes.

    Returns:
        None if no allowed candidate was found.
    """
    seen: set[bytes] = set()
    pool = np.concatenate([
        mutate(rng, parents, sizes, ordinal, search.n_mutate),
        random_actions(rng, sizes, search.n_random),
    ])
    pool = unique_rows(pool, seen)
    pool = pool[allowed(pool)] if len(pool) else pool
    if not len(pool):
        return None
    values = score(acq, encode(pool), batch=search.batch)
    best_i = int(torch.argmax(values))
    best, best_v = pool[best_i], float(values[best_i])
    order = torch.argsort(values, descending=True)[: search.local_search_starts].tolist()
    for i in order:
        x, v = pool[i], float(values[i])
        for _ in range(search.local_search_steps):
            nb = unique_rows(neighbours(x, sizes), seen)
            nb = nb[allowed(nb)] if len(nb) else nb
            if not len(nb):
                break
            nv = score(acq, encode(nb), batch=search.batch)
            j = int(torch.argmax(nv))
            if float(nv[j]) <= v:
                break
            x, v = nb[j], float(nv[j])
        if v > best_v:
            best, best_v = x, v
    return best, best_v
