"""Exact hypervolume and Pareto fronts for mixed maximize/minimize objectives.

Conventions used throughout compsearch:

* ``points`` is an ``n x m`` array (``n`` evaluated candidates, ``m`` objectives) in the
  metrics' own units (accuracy in [0, 1], ``size_kb``, ``bops``, ...).
* ``directions`` gives one ``"maximize"`` / ``"minimize"`` per column.
* The **reference point** ``r`` (``m``) is the worst acceptable value of every metric
  (e.g. the accuracy floor and the uncompressed size). Only points that are strictly
  better than ``r`` in every objective add volume.
* **Normalisation**: every objective is turned into a gain ``g_j >= 0`` measured from the
  reference point and divided by a scale ``s_j``::

      g_j = (x_j - r_j) / s_j   (maximize)        g_j = (r_j - x_j) / s_j   (minimize)

  The default scale is ``|r_j|`` (1 where ``r_j == 0``), so for a size objective ``g_j``
  is the fraction of the uncompressed size saved. :func:`metric_scales` gives 1 for
  metrics that are already fractions (accuracy, sparsity), so accuracy gains stay in
  accuracy points. The hypervolume is the Lebesgue measure of the union of the boxes
  ``[0, g(p)]`` over the points ``p``; with these scales a 2-D accuracy/size front lies
  in the unit square and its hypervolume is at most 1.

Algorithms: a sort-and-sweep for 2-D (``O(n log n)``) and WFG (While, Bradstreet and
Barone 2012: the sum of exclusive volumes, each computed recursively on the "limited"
set) for three and more objectives, exact for the small fronts a study produces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from compsearch.errors import ConfigError
from compsearch.metrics import (
    DIRECTIONS,
    dominated_volume,
    get_metric,
    is_known,
    pareto_indices,
    pareto_mask,
)


def _as_points(points: np.ndarray | Sequence[Sequence[float]], m: int | None = None) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, m if m is not None else 0))
    if arr.ndim != 2:
        raise ConfigError(f"points must be an n x m array, got shape {arr.shape}")
    if m is not None and arr.shape[1] != m:
        raise ConfigError(f"points have {arr.shape[1]} objective(s) but {m} direction(s) were given")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("points contain NaN or infinite values; drop failed candidates first")
    return arr


def _check_directions(directions: Sequence[str]) -> list[str]:
    dirs = list(directions)
    bad = [d for d in dirs if d not in DIRECTIONS]
    if bad or not dirs:
        raise ConfigError(f"directions={dirs!r} must be a non-empty list of {list(DIRECTIONS)}")
    return dirs


def _signed(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Points oriented so that *smaller is better* in every column (maximized columns negated)."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return points * sign


def pareto_front(points: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """The non-dominated rows of ``points`` (``k x m``), duplicates removed, sorted by the first column."""
    dirs = _check_directions(directions)
    pts = _as_points(points, len(dirs))
    front = np.unique(pts[pareto_mask(pts, dirs)], axis=0) if len(pts) else pts
    return front[np.argsort(front[:, 0], kind="stable")] if len(front) else front


def metric_scales(metrics: Sequence[str], reference: Sequence[float]) -> list[float]:
    """Default normalisation scale per objective: 1 for fraction metrics (domain [0, 1] in
    the metrics table: accuracy, sparsity), ``|reference|`` for the others (1 where the
    reference is 0)."""
    out = []
    for metric, r in zip(metrics, reference, strict=True):
        fraction = is_known(metric) and get_metric(metric).fraction
        out.append(1.0 if fraction or r == 0 else abs(float(r)))
    return out


def normalized_gains(
    points: np.ndarray | Sequence[Sequence[float]],
    directions: Sequence[str],
    reference: Sequence[float],
    scale: Sequence[float] | None = None,
) -> np.ndarray:
    """Gains ``g`` (``n x m``) over the reference point, divided by ``scale`` (see module doc).

    Rows not strictly better than the reference in every objective are dropped.
    """
    dirs = _check_directions(directions)
    pts = _as_points(points, len(dirs))
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (len(dirs),) or not np.all(np.isfinite(ref)):
        raise ConfigError(f"reference={list(reference)!r} must hold one finite value per objective ({len(dirs)})")
    sc = np.array([abs(r) if r != 0 else 1.0 for r in ref]) if scale is None else np.asarray(scale, dtype=np.float64)
    if sc.shape != ref.shape or not np.all(sc > 0):
        raise ConfigError(f"scale={list(sc)!r} must hold one positive value per objective")
    gains = (_signed(ref[None, :], dirs) - _signed(pts, dirs)) / sc
    return gains[np.all(gains > 0, axis=1)] if len(gains) else gains.reshape(0, len(dirs))


def hypervolume(
    points: np.ndarray | Sequence[Sequence[float]],
    directions: Sequence[str],
    reference: Sequence[float],
    scale: Sequence[float] | None = None,
) -> float:
    """Exact normalised hypervolume of ``points`` (``n x m``) against ``reference`` (``m``).

    Args:
        points: objective values in the metrics' units, one row per candidate.
        directions: ``"maximize"`` / ``"minimize"`` per column.
        reference: the worst acceptable value per column; points not strictly better in
            every column contribute nothing.
        scale: per-column divisor of the gains (default ``|reference|``, 1 where it is 0;
            see :func:`metric_scales` for the metric-aware choice the studies use).

    Returns:
        The volume of the union of boxes ``[0, g(p)]`` in normalised gain space (0 for no
        point better than the reference).
    """
    return dominated_volume(normalized_gains(points, directions, reference, scale))


def hypervolume_curve(
    points: np.ndarray | Sequence[Sequence[float] | None],
    directions: Sequence[str],
    reference: Sequence[float],
    scale: Sequence[float] | None = None,
) -> list[float]:
    """Hypervolume after each of ``n`` evaluations, in order (``None`` rows = failed or
    infeasible evaluations that use budget but add no point). Returns ``n`` floats."""
    dirs = _check_directions(directions)
    curve: list[float] = []
    kept: list[Sequence[float]] = []
    value = 0.0
    for row in points:
        if row is not None:
            kept.append(row)
            value = hypervolume(kept, dirs, reference, scale)
        curve.append(value)
    return curve


def reference_vector(metrics: Sequence[str], reference: Mapping[str, float]) -> list[float]:
    """The reference point as a list in ``metrics`` order; a missing metric raises."""
    missing = [m for m in metrics if m not in reference]
    if missing:
        raise ConfigError(f"reference point lacks metric(s) {missing}; give them under [reference_point]")
    return [float(reference[m]) for m in metrics]


__all__ = [
    "hypervolume",
    "hypervolume_curve",
    "metric_scales",
    "normalized_gains",
    "pareto_front",
    "pareto_indices",
    "pareto_mask",
    "reference_vector",
]
