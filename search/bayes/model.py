"""The models behind ``bo``: GPs for the measured metrics, an exact lookup for the free ones.

Plain BoTorch/GPyTorch maths, no Optuna. A policy of the space enters every model
as one row ``x`` of an :class:`Encoder` (``d`` columns):

* ``"features"`` encoding: :meth:`Space.features_from_params` -- ordinal choices as
  ``index / (n - 1)`` in [0, 1], categorical ones one-hot;
* ``"mixed"`` encoding: ordinal choices as above, each categorical dimension as one
  column holding its choice index; the GP is BoTorch's ``MixedSingleTaskGP``
  (a sum/product of a continuous and a categorical overlap kernel).

Measured metrics (accuracy, loss, ...) get one ``SingleTaskGP`` each (ARD RBF kernel
with BoTorch's dimension-scaled lengthscale prior, standardized outcome). For spaces
with many columns the GP sees *block-tied* features: column ``(block, field)`` is the
parameter-weighted mean of that field's feature over the units of the block
(:func:`block_projection`, applied as an input transform so that the acquisition still
works on full rows). Exact metrics (size, BOPs, sparsity, compression ratio) come
from :class:`CostLookup`, a ``GenericDeterministicModel`` that looks every row up in
a table filled from ``cost_fn(params)`` -- the evaluator's own exact numbers, never a
fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from botorch.exceptions.errors import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, ModelList, SingleTaskGP
from botorch.models.deterministic import GenericDeterministicModel
from botorch.models.model import Model
from botorch.models.transforms.input import InputTransform
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

from compsearch.errors import ConfigError
from compsearch.spaces.base import Space

DTYPE = torch.float64
ENCODINGS = ("features", "mixed")


class Encoder:
    """Params of a space <-> model input rows.

    Args:
        space: the compression space.
        kind: ``"features"`` (the space's features, one-hot categoricals) or
            ``"mixed"`` (one index column per categorical dimension).
    """

    def __init__(self, space: Space, *, kind: str = "features") -> None:
        if kind not in ENCODINGS:
            raise ConfigError(f"encoding={kind!r} is unknown; allowed: {list(ENCODINGS)}")
        self.space = space
        self.kind = kind
        self.dims = space.dimensions()
        self.cat_dims: list[int] = [i for i, d in enumerate(self.dims) if not d.ordinal] if kind == "mixed" else []
        self.d = len(self.dims) if kind == "mixed" else len(space.feature_names())

    def row(self, params: Mapping[str, Any]) -> np.ndarray:
        """One input row, shape ``d``."""
        if self.kind == "features":
            return self.space.features_from_params(params)
        return self.row_from_actions(self.space.actions_from_params(params))

    def row_from_actions(self, actions: Sequence[int]) -> np.ndarray:
        """Input row of one choice index per dimension, shape ``d``."""
        if self.kind == "features":
            return self.space.features_from_params(self.space.params_from_actions(actions))
        out = np.empty(len(self.dims))
        for j, (dim, a) in enumerate(zip(self.dims, actions, strict=True)):
            out[j] = a if not dim.ordinal else (a / (dim.size - 1) if dim.size > 1 else 0.0)
        return out

    def rows(self, params_list: Sequence[Mapping[str, Any]]) -> Tensor:
        """Input rows, shape ``n x d`` (float64)."""
        if not params_list:
            return torch.empty(0, self.d, dtype=DTYPE)
        return torch.as_tensor(np.stack([self.row(p) for p in params_list]), dtype=DTYPE)


def block_projection(space: Space) -> Tensor | None:
    """Block-tying projection ``P`` (``d x e``, ``e < d``) of the ``features`` encoding, or None.

    Column ``j`` of the features belongs to a dimension (one column if ordinal, one per
    choice if categorical) of group ``dim.group`` and field ``dim.field``. Its group's units share a block
    (``Unit.block``); the reduced column ``(block, field[=choice])`` is the mean of the
    block's columns weighted by the groups' weight counts, so reduced features stay in
    [0, 1]. Returns None when the space has no ``groups`` or tying removes nothing.
    """
    groups = getattr(space, "groups", None)
    if not isinstance(groups, Mapping):
        return None
    keys: list[tuple[str, str]] = []
    weights: list[float] = []
    for dim in space.dimensions():  # columns in the order of Space.features
        members = groups.get(dim.group)
        if not members:
            return None
        blocks = {u.block for u in members}
        block = blocks.pop() if len(blocks) == 1 else dim.group
        columns = [dim.field] if dim.ordinal else [f"{dim.field}={c}" for c in dim.choices]
        keys += [(block, c) for c in columns]
        weights += [float(sum(u.params for u in members))] * len(columns)
    reduced = sorted(set(keys), key=keys.index)
    if len(reduced) >= len(keys):
        return None
    P = torch.zeros(len(keys), len(reduced), dtype=DTYPE)
    for j, (key, w) in enumerate(zip(keys, weights, strict=True)):
        P[j, reduced.index(key)] = w
    return P / P.sum(dim=0, keepdim=True)


class LinearProjection(InputTransform):
    """Input transform ``X -> X @ P``: ``batch x n x d`` to ``batch x n x e``.

    Args:
        P: projection matrix, ``d x e``, columns summing to 1 (keeps [0, 1] inputs in [0, 1]).
    """

    def __init__(self, P: Tensor) -> None:
        super().__init__()
        self.transform_on_train = True
        self.transform_on_eval = True
        self.transform_on_fantasize = True
        self.register_buffer("P", P)

    def transform(self, X: Tensor) -> Tensor:
        return X @ self.get_buffer("P")


def fit_gp(
    X: Tensor,
    y: Tensor,
    *,
    cat_dims: Sequence[int] = (),
    projection: Tensor | None = None,
    warm_start: Mapping[str, Tensor] | None = None,
    maxiter: int = 200,
) -> Model:
    """Fit one GP to one measured metric by maximizing the exact marginal likelihood.

    Args:
        X: inputs, ``n x d`` (float64).
        y: signed outcomes (larger is better), ``n x 1``.
        cat_dims: columns holding categorical indices (``"mixed"`` encoding).
        projection: block-tying matrix ``d x e`` (``"features"`` encoding only).
        warm_start: :func:`hyperparameters` of an earlier fit; L-BFGS starts there
            (entries whose shape differs are ignored). A warm start changes only where
            the optimizer starts, not the objective it maximizes.
        maxiter: L-BFGS iterations, at most.

    Returns:
        The fitted model in eval mode. If L-BFGS fails, BoTorch's retries are
        exhausted and the model keeps its prior-mode hyperparameters (a warning says so).
    """
    transform = LinearProjection(projection) if projection is not None else None
    if cat_dims:
        gp: Model = MixedSingleTaskGP(X, y, cat_dims=list(cat_dims), outcome_transform=Standardize(m=1))
    else:
        gp = SingleTaskGP(X, y, outcome_transform=Standardize(m=1), input_transform=transform)
    if warm_start:
        own = gp.state_dict()
        gp.load_state_dict({k: v for k, v in warm_start.items() if k in own and own[k].shape == v.shape}, strict=False)
    mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not (standardized|contained to the unit cube).*")
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": maxiter}})
    except ModelFittingError as e:
        warnings.warn(f"bo: GP fit failed ({e}); using the prior-mode hyperparameters", stacklevel=2)
    return gp.eval()


def hyperparameters(gp: Model) -> dict[str, Tensor]:
    """The fitted hyperparameters of ``gp`` (kernel, mean, likelihood; not the data-dependent
    outcome/input transforms), for a later ``fit_gp(..., warm_start=...)``."""
    skip = ("outcome_transform", "input_transform", "train_")
    return {k: v.detach().clone() for k, v in gp.state_dict().items() if not k.startswith(skip)}


def row_key(row: np.ndarray) -> bytes:
    """Hashable key of one input row (rounded, so float noise cannot split a policy)."""
    return np.round(np.asarray(row, dtype=np.float64), 9).tobytes()


class CostLookup:
    """Exact metrics of registered rows, as a BoTorch deterministic model.

    Args:
        encoder: the row encoding.
        cost_fn: params -> ``{metric: value}`` (exact, cheap: ``evaluator.cost``).
        metrics: the metrics to output, in this order.
        signs: ``+1/scale`` (maximize) or ``-1/scale`` (minimize) per metric; outputs
            are signed, so larger is better for every output, and scaled to order 1.
    """

    def __init__(
        self,
        encoder: Encoder,
        cost_fn: Callable[[Mapping[str, Any]], Mapping[str, float]],
        *,
        metrics: Sequence[str],
        signs: Sequence[float],
    ) -> None:
        self.encoder = encoder
        self.cost_fn = cost_fn
        self.metrics = list(metrics)
        self.signs = np.asarray(signs, dtype=np.float64)
        self._table: dict[bytes, np.ndarray] = {}

    def raw(self, params: Mapping[str, Any]) -> dict[str, float]:
        """Unsigned exact metrics of ``params`` (every key ``cost_fn`` returns)."""
        return {k: float(v) for k, v in self.cost_fn(params).items()}

    def register(self, params: Mapping[str, Any], row: np.ndarray | None = None) -> np.ndarray:
        """Compute (once) and store the signed metrics of ``params``; returns them, shape ``k``."""
        row = self.encoder.row(params) if row is None else row
        key = row_key(row)
        value = self._table.get(key)
        if value is None:
            raw = self.raw(params)
            value = self._table[key] = np.array([raw[m] for m in self.metrics]) * self.signs
        return value

    def __call__(self, X: Tensor) -> Tensor:
        """Signed exact metrics of rows ``X`` (``batch x n x d``) -> ``batch x n x k``.

        Raises:
            KeyError: a row was never registered (a bug: every row the acquisition
                sees -- baseline, pending, candidates -- is registered first).
        """
        flat = np.round(X.detach().reshape(-1, X.shape[-1]).cpu().numpy(), 9)
        if not len(flat):
            return X.new_zeros(*X.shape[:-1], len(self.metrics))
        uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
        out = np.stack([self._table[row_key(r)] for r in uniq])[inverse.reshape(-1)]
        return torch.as_tensor(out, dtype=X.dtype).reshape(*X.shape[:-1], len(self.metrics))

    def model(self) -> GenericDeterministicModel:
        return GenericDeterministicModel(self, num_outputs=len(self.metrics))


def model_list(gps: Sequence[Model], costs: CostLookup | None) -> ModelList:
    """``ModelList(gp_1, ..., gp_r, costs)``: outputs are the GP metrics then the exact ones."""
    models: list[Model] = list(gps)
    if costs is not None and costs.metrics:
        models.append(costs.model())
    if not models:
        raise ConfigError("bo has nothing to model: no objective and no constraint")
    return ModelList(*models)
