"""Rewards of the RL strategies: exact costs, objective roles, reward weights and scalarization.

**Exact cost.** :class:`KernelCost` gives ``size_bits``, ``size_kb``, ``compression_ratio``,
``bops`` and ``sparsity`` of many candidate policies at once. Its oracle is ``evaluator.cost``
(or, without an evaluator, the documented unit-size cost of
:class:`compsearch.evaluators.cost.CostModel` over the space's units, with the non-unit
parameters counted as the units' biases). ``size_bits``, ``bops`` and the removed weights are
sums over units (see :mod:`compsearch.evaluators.cost`), so the cost of a policy is the
identity's cost plus one delta per kernel; each delta is asked of the oracle once per distinct
kernel setting and memoized. ``size_kb = size_bits / 8192``, ``compression_ratio =
size_bits(identity) / size_bits``. The result equals ``evaluator.cost(policy)`` exactly (tested).
Spaces that remove blocks (``depth``, ``depth+joint``): a kernel of keep/remove choices
(field :data:`~compsearch.spaces.depth.DEPTH_FIELD`) costs its block's removal alone, and
the deltas of the other kernels whose units all lie in a block the same policy removes are
zeroed (a removed unit costs 0 whatever its setting), so the sum stays exact.

**Objective roles.** When the study's directions match ``SearchContext.objectives``, a metric
the cost oracle computes is *exact*; every other objective (the task's quality metric:
``accuracy``, ``return``, ...; ``loss``) is *learned* by the surrogate from real trials.
Otherwise (a foreign study) every study value is learned.

**Scalarization** (larger is better), with :class:`RewardWeights` ``(quality q, penalty p,
thrift t, recon c)``. Learned values are min-max normalized over the finished trials (signed so
that larger is better); the primary cost is the ratio ``r = metric / metric(identity)`` of the
first exact objective (``size_bits`` for size metrics, ``bops``). Modes:

* ``budget`` (one exact objective and learned ones, the usual quality-vs-size study):
  ``R = q * mean_j y_j - p * max(0, r / T - 1) - t * r / T``, with ``T`` a budget target swept
  across proposals (:func:`sweep_target`), so successive proposals aim at different points of
  the front;
* ``chebyshev`` (any other multi-objective study): augmented Chebyshev
  ``R = -q * (max_j w_j (1 - z_j) + 0.05 sum_j w_j (1 - z_j))`` over normalized signed
  objectives ``z_j`` with weights ``w`` from a low-discrepancy sequence over the simplex;
* ``single``: ``R = q * y`` (the one objective, normalized).

Constraints ``max_<metric>`` / ``min_<metric>`` add ``-p * relative violation``. The
reconstruction term ``-c * e`` (``e``: parameter-weighted mean relative output error of the
compressed kernels, :mod:`~compsearch.search.rl.recon`) is added by the caller when ``c > 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from compsearch.errors import ConfigError
from compsearch.search.rl.layout import BlockLayout
from compsearch.spaces.base import Space
from compsearch.spaces.depth import DEPTH_FIELD
from compsearch.spaces.policy import Policy

COST_METRICS = ("size_bits", "size_kb", "compression_ratio", "bops", "sparsity")
PRIMARY = {"size_bits": "size_bits", "size_kb": "size_bits", "compression_ratio": "size_bits", "bops": "bops", "sparsity": "size_bits"}


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward terms (module docstring).

    Attributes:
        quality: weight of the learned objectives (the task's quality metric, e.g. accuracy or return).
        penalty: weight of the budget overshoot and constraint violation (the size term).
        thrift: weight of the small bonus for cost below the target (the size term).
        recon: weight of the reconstruction-error term (0 = off; needs ``evaluator.reconstruction_error``).
    """

    quality: float = 1.0
    penalty: float = 2.0
    thrift: float = 0.05
    recon: float = 0.0

    def __post_init__(self) -> None:
        for name in ("quality", "penalty", "thrift", "recon"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"RewardWeights {name}={value!r} must be a number >= 0")


def unit_cost_oracle(space: Space) -> Callable[[Policy], dict[str, float]]:
    """Exact unit-size cost without an evaluator (non-unit parameters = the units' biases; a
    removed block's non-unit parameters = its removed units' biases)."""
    from dataclasses import replace

    from compsearch.evaluators.cost import CostModel

    units = space.all_units
    by_name = {u.name: u for u in units}
    blocks = [replace(b, params=sum(by_name[n].params + by_name[n].bias_params for n in b.units if n in by_name))
              for b in space.removable]
    return CostModel(units=units, total_params=sum(u.params + u.bias_params for u in units), blocks=blocks)


class KernelMemo:
    """Per-kernel memo of a quantity of the kernel's own setting (``E x D`` actions -> ``E x K x C``).

    Args:
        space: the searched space.
        layout: its block layout.
        compute: ``(kernel index, kernel-only policy) -> C`` numbers, called once per distinct setting.
        width: ``C``.
    """

    def __init__(self, space: Space, layout: BlockLayout, compute: Callable[[int, Policy], np.ndarray], width: int) -> None:
        self.space, self.layout, self.compute, self.width = space, layout, compute, width
        self._dims = [layout.kernel_dims(k) for k in range(layout.n_kernels)]
        sizes = np.array(space.action_sizes(), dtype=np.int64)
        self._radix = [np.cumprod(np.concatenate([[1], sizes[d][:-1]])).astype(np.int64) for d in self._dims]
        self._memo: list[dict[int, np.ndarray]] = [{} for _ in self._dims]
        self._base = np.zeros(len(sizes), dtype=np.int64)
        dims = space.dimensions()
        self._blocks = [{dims[i].group for i in d if dims[i].field == DEPTH_FIELD} for d in self._dims]
        self._sets_units = [any(dims[i].field != DEPTH_FIELD for i in d) for d in self._dims]

    def kernel_policy(self, k: int, sub: np.ndarray) -> Policy:
        """The policy that compresses only kernel ``k``'s units (if it sets any unit field) and
        removes only the blocks its keep/remove choices remove, with its dimensions at ``sub``."""
        actions = self._base.copy()
        actions[self._dims[k]] = sub
        policy = self.space.decode(self.space.params_from_actions(actions.tolist()))
        units = {u.name: policy.get_or_identity(u.name) for u in self.layout.kernel_units[k]} if self._sets_units[k] else {}
        return Policy(units, removed={b: s for b, s in policy.removed.items() if b in self._blocks[k]})

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.int64).reshape(-1, len(self._base))
        out = np.zeros((len(actions), self.layout.n_kernels, self.width))
        for k, dims in enumerate(self._dims):
            sub = actions[:, dims]
            codes = sub @ self._radix[k]
            uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
            memo = self._memo[k]
            for code, row in zip(uniq.tolist(), first.tolist(), strict=True):
                if code not in memo:
                    memo[code] = np.asarray(self.compute(k, self.kernel_policy(k, sub[row])), dtype=float)
            out[:, k] = np.stack([memo[c] for c in uniq.tolist()])[inverse.reshape(-1)]
        return out


class _RemovalMask:
    """Which kernels lie wholly in a block that a policy removes: ``E x D`` actions -> ``E x K`` bools.

    Shapes: ``J`` keep/remove dimensions, ``covered`` is ``J x K``."""

    def __init__(self, space: Space, layout: BlockLayout) -> None:
        dims = space.dimensions()
        self.depth_dims = [i for i, d in enumerate(dims) if d.field == DEPTH_FIELD]
        self.active = bool(self.depth_dims)
        if not self.active:
            return
        self.remove_index = np.array([dims[i].index(False) for i in self.depth_dims])
        every = [0] * len(dims)
        for i, r in zip(self.depth_dims, self.remove_index.tolist(), strict=True):
            every[i] = r
        removed_all = space.decode(space.params_from_actions(every)).removed
        self.covered = np.zeros((len(self.depth_dims), layout.n_kernels), dtype=bool)
        for j, i in enumerate(self.depth_dims):
            block = dims[i].group
            one = Policy({}, removed={block: removed_all.get(block)})
            for k, units in enumerate(layout.kernel_units):
                self.covered[j, k] = k != layout.dim_kernel[i] and bool(units) and all(one.removes(u.name) for u in units)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.int64).reshape(-1, actions.shape[-1])
        removing = actions[:, self.depth_dims] == self.remove_index
        return (removing.astype(np.int64) @ self.covered.astype(np.int64)) > 0


class KernelCost:
    """Exact cost of many policies by per-kernel memoized deltas (see module docstring).

    Args:
        space: the searched space.
        layout: its block layout.
        oracle: ``policy -> metrics dict`` (``evaluator.cost``).
    """

    def __init__(self, space: Space, layout: BlockLayout, oracle: Callable[[Policy], Mapping[str, float]]) -> None:
        self.space, self.layout, self.oracle = space, layout, oracle
        self.identity = dict(oracle(Policy({})))
        self._memo = KernelMemo(space, layout, self._delta, 3)
        self._removal = _RemovalMask(space, layout)
        self.kernel_full_bits = np.maximum(np.array([32.0 * sum(u.params for u in us) if sets else 0.0
                                                     for us, sets in zip(layout.kernel_units, self._memo._sets_units, strict=True)]), 1.0)
        self.block_full_bits = np.array([self.kernel_full_bits[layout.block_kernels(g)].sum() for g in range(layout.n_blocks)])

    def _delta(self, k: int, policy: Policy) -> np.ndarray:
        m = self.oracle(policy)
        return np.array([m[key] - self.identity[key] for key in ("size_bits", "bops", "sparsity")])

    def deltas(self, actions: np.ndarray) -> np.ndarray:
        """Per-kernel deltas ``E x K x 3`` (size_bits, bops, sparsity) for ``E x D`` actions
        (those of kernels inside a removed block zeroed, module docstring)."""
        deltas = self._memo(actions)
        if self._removal.active:
            deltas[self._removal(actions)] = 0.0
        return deltas

    def metrics(self, actions: np.ndarray, deltas: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every cost metric for ``E x D`` actions, each an ``E`` array."""
        d = (self.deltas(actions) if deltas is None else deltas).sum(axis=1)
        size = self.identity["size_bits"] + d[:, 0]
        return {
            "size_bits": size,
            "size_kb": size / 8192.0,
            "compression_ratio": self.identity["size_bits"] / size,
            "bops": self.identity["bops"] + d[:, 1],
            "sparsity": self.identity["sparsity"] + d[:, 2],
        }

    def kernel_ratio(self, deltas: np.ndarray) -> np.ndarray:
        """Kernel size relative to its uncompressed weights, ``E x K`` (from :meth:`deltas`)."""
        return np.clip((self.kernel_full_bits + deltas[..., 0]) / self.kernel_full_bits, 0.0, None)

    def block_ratio(self, deltas: np.ndarray) -> np.ndarray:
        """Block size relative to its uncompressed weights, ``E x G`` (from :meth:`deltas`)."""
        per_block = np.zeros(deltas.shape[:1] + (self.layout.n_blocks,))
        np.add.at(per_block.T, self.layout.kernel_block, deltas[..., 0].T)
        return np.clip((self.block_full_bits + per_block) / self.block_full_bits, 0.0, None)


@dataclass(frozen=True)
class Objective:
    """One study objective and how the strategy obtains it.

    Attributes:
        metric: metric name (``"accuracy"``, ``"size_bits"``, ...; ``"value_i"`` for a foreign study).
        direction: ``maximize`` or ``minimize``.
        exact: computed by the cost oracle (else learned by the surrogate).
        index: position in ``trial.values``.
    """

    metric: str
    direction: str
    exact: bool
    index: int


def objective_roles(ctx_objectives: Sequence[tuple[str, str]], study_directions: Sequence[str]) -> list[Objective]:
    """Roles of the study's objectives (see the module docstring)."""
    ctx_dirs = [d for _, d in ctx_objectives]
    if list(study_directions) == ctx_dirs:
        return [Objective(m, d, m in COST_METRICS, i) for i, (m, d) in enumerate(ctx_objectives)]
    return [Objective(f"value_{i}", d, False, i) for i, d in enumerate(study_directions)]


def scalar_mode(objectives: Sequence[Objective]) -> str:
    """``budget``, ``chebyshev`` or ``single`` (see the module docstring)."""
    exact = [o for o in objectives if o.exact]
    if len(objectives) == 1:
        return "single"
    if len(exact) == 1:
        return "budget"
    return "chebyshev"


def van_der_corput(n: int, base: int = 2) -> float:
    """The ``n``-th point of the base-``base`` van der Corput sequence in ``[0, 1)``."""
    q, denom = 0.0, 1.0
    while n > 0:
        denom *= base
        n, rem = divmod(n, base)
        q += rem / denom
    return q


def sweep_target(u: float, lo: float, hi: float) -> float:
    """Budget target at quantile ``u`` of a log-uniform sweep over ``[lo, hi]``."""
    lo, hi = max(lo, 1e-6), max(hi, lo * (1 + 1e-9))
    return float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))


def simplex_weights(n: int, m: int) -> np.ndarray:
    """``m`` Chebyshev weights for proposal ``n`` (low-discrepancy, sum 1, each >= 0.02)."""
    u = np.array([van_der_corput(n + 1, b) for b in (2, 3, 5, 7, 11, 13)[: max(m - 1, 1)]])[: m - 1]
    cuts = np.sort(np.concatenate([[0.0], u, [1.0]]))
    w = np.diff(cuts) + 0.02
    return w / w.sum()


def constraint_penalty(values: Mapping[str, np.ndarray], constraints: Mapping[str, float]) -> np.ndarray:
    """Summed relative violation of ``max_<metric>`` / ``min_<metric>`` bounds, ``E``.

    A bound on a metric absent from ``values`` is ignored here.
    """
    n = len(next(iter(values.values()))) if values else 0
    pen = np.zeros(n)
    for key, bound in constraints.items():
        kind, _, metric = key.partition("_")
        if metric not in values or kind not in ("max", "min"):
            continue
        scale = max(abs(float(bound)), 1e-12)
        v = np.asarray(values[metric], float)
        pen += np.maximum(0.0, (v - bound) / scale if kind == "max" else (bound - v) / scale)
    return pen


@dataclass(frozen=True)
class Normalizer:
    """Min-max normalization of signed learned values, fitted on finished trials.

    Attributes:
        lo, hi: per learned objective, signed (larger is better) minimum and maximum.
    """

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, signed: np.ndarray) -> Normalizer:
        """From ``n x j`` signed values (``n`` may be 0: identity scaling)."""
        if len(signed) == 0:
            return cls(np.zeros(signed.shape[1]), np.ones(signed.shape[1]))
        lo, hi = signed.min(0), signed.max(0)
        return cls(lo, np.where(hi - lo > 1e-12, hi, lo + 1.0))

    def __call__(self, signed: np.ndarray) -> np.ndarray:
        return (signed - self.lo) / (self.hi - self.lo)

    def scale(self, std: np.ndarray) -> np.ndarray:
        return std / (self.hi - self.lo)


def scalarize(
    mode: str,
    *,
    learned: np.ndarray,
    ratio: np.ndarray,
    exact_signed: np.ndarray,
    target: float,
    weights: RewardWeights,
    chebyshev: np.ndarray | None = None,
) -> np.ndarray:
    """Scalar reward ``E`` (see the module docstring).

    Args:
        mode: ``budget``, ``chebyshev`` or ``single``.
        learned: normalized signed learned objectives ``E x j`` (optimism bonus already added).
        ratio: primary cost ratio ``r``, ``E``.
        exact_signed: exact objectives as normalized signed values ``E x c`` (``-r`` for size).
        target: budget target ``T`` (fraction of the identity's primary cost).
        weights: the :class:`RewardWeights`.
        chebyshev: weights ``w`` over ``[learned, exact]`` objectives (chebyshev mode).
    """
    if mode == "single":
        return weights.quality * (learned[:, 0] if learned.shape[1] else exact_signed[:, 0])
    if mode == "budget":
        over = np.maximum(0.0, ratio / target - 1.0)
        return weights.quality * learned.mean(1) - weights.penalty * over - weights.thrift * ratio / target
    z = np.concatenate([learned, exact_signed], axis=1)
    w = chebyshev if chebyshev is not None else np.full(z.shape[1], 1.0 / z.shape[1])
    gap = w * (1.0 - z)
    return -(gap.max(1) + 0.05 * gap.sum(1)) * weights.quality
