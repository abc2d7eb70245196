"""Reconstruction error of a kernel's output under a candidate compression.

``e_k(s)`` = the parameter-weighted mean, over kernel ``k``'s units, of
``evaluator.reconstruction_error(policy)[unit]`` (the relative MSE of the unit's output against
the uncompressed model on the proxy inputs, masks and quantization in force, no fine-tuning)
for the policy that compresses only kernel ``k`` with setting ``s``. It is asked once per
distinct kernel setting (one forward each) and memoized, so an episode's per-kernel errors
``E x K`` cost nothing after the first sighting.

Two uses in the hierarchy:

* state: :meth:`Reconstruction.probe` gives each kernel's error under the *reference
  compression its allocated budget implies* (the setting of its ``w_bits`` and ``keep``
  choices whose size ratio is the largest not above the budget; other fields at their
  first choice, ``a_bits`` at its largest), on a fixed grid of budget values;
* reward: :meth:`Reconstruction.errors` of the chosen settings, weighted by
  :attr:`RewardWeights.recon <compsearch.search.rl.reward.RewardWeights.recon>`.

Without ``evaluator.reconstruction_error`` every error is 0 and :attr:`available` is False; a
unit the evaluator reports as NaN (its module forward never runs) counts 0, an infinite one 1e6.
Shapes: ``E`` episodes, ``K`` kernels, ``D`` dimensions, ``L`` probe levels.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from compsearch.search.rl.layout import BlockLayout
from compsearch.search.rl.reward import KernelCost, KernelMemo
from compsearch.spaces.base import Space
from compsearch.spaces.policy import Policy


class Reconstruction:
    """Per-kernel reconstruction errors (module docstring).

    Args:
        space: the searched space.
        layout: its block layout.
        evaluator: an evaluator with ``reconstruction_error(policy) -> {unit: float}``, or None.
        cost: the exact kernel cost (for the probe's reference settings).
        grid: ascending budget values ``L`` of the probe.
    """

    def __init__(self, space: Space, layout: BlockLayout, evaluator: Any, cost: KernelCost, grid: np.ndarray) -> None:
        self.layout, self.cost, self.grid = layout, cost, np.asarray(grid, dtype=float)
        self._fn = getattr(evaluator, "reconstruction_error", None) if evaluator is not None else None
        self.memo = KernelMemo(space, layout, self._error, 1)
        self._dims = space.dimensions()
        self._probe: np.ndarray | None = None
        self.queries = 0

    @property
    def available(self) -> bool:
        return self._fn is not None

    def _error(self, k: int, policy: Policy) -> np.ndarray:
        if self._fn is None:
            return np.zeros(1)
        self.queries += 1
        errs = self._fn(policy)
        units = self.layout.kernel_units[k]
        values = np.array([float(errs.get(u.name, 0.0)) for u in units])
        values = np.where(np.isnan(values), 0.0, np.where(np.isfinite(values), values, 1e6))  # NaN: unit never ran
        return np.array([np.average(values, weights=[max(u.params, 1) for u in units])])

    def errors(self, actions: np.ndarray) -> np.ndarray:
        """``e_k`` of every kernel's setting in ``E x D`` actions, ``E x K``."""
        if self._fn is None:
            return np.zeros((len(actions), self.layout.n_kernels))
        return self.memo(actions)[..., 0]

    def _reference(self, k: int) -> list[np.ndarray]:
        """Candidate full action vectors varying kernel ``k``'s ``w_bits``/``keep`` choices."""
        dims = self.layout.kernel_dims(k)
        base = np.array([d.size - 1 if d.ordinal else 0 for d in self._dims], dtype=np.int64)
        varied = [i for i in dims if self._dims[i].field in ("w_bits", "keep")]
        out = []
        for combo in itertools.product(*[range(self._dims[i].size) for i in varied]):
            a = base.copy()
            a[varied] = combo
            out.append(a)
        return out

    def probe(self) -> np.ndarray:
        """``K x L``: each kernel's error under the reference compression of each grid budget."""
        if self._probe is None:
            out = np.zeros((self.layout.n_kernels, len(self.grid)))
            if self._fn is not None:
                for k in range(self.layout.n_kernels):
                    cands = np.stack(self._reference(k))
                    ratio = self.cost.kernel_ratio(self.cost.deltas(cands))[:, k]
                    for j, b in enumerate(self.grid):
                        fits = np.flatnonzero(ratio <= b + 1e-9)
                        pick = fits[np.argmax(ratio[fits])] if len(fits) else int(np.argmin(ratio))
                        out[k, j] = self.errors(cands[pick : pick + 1])[0, k]
            self._probe = out
        return self._probe

    def at(self, budgets: np.ndarray) -> np.ndarray:
        """Probe error of every kernel at its budget ``E x K`` (nearest grid value below), as
        ``log10(1 + 100 e)`` so that the feature stays near ``[0, 4]``."""
        idx = np.clip(np.searchsorted(self.grid, np.asarray(budgets) + 1e-9) - 1, 0, len(self.grid) - 1)
        e = self.probe()[np.arange(self.layout.n_kernels)[None, :], idx]
        return np.log10(1.0 + 100.0 * e)
