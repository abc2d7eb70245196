"""Statistics for comparing strategies over seeds and problems (the benchmark suite's maths).

Everything here works on plain numbers (one value per seed, or per problem), so it can be
checked by hand; reading run folders is :mod:`compsearch.studies.summary`'s job.

* :func:`bootstrap_ci`: percentile bootstrap interval of the mean of ``n`` values
  (``resamples`` resamples of size ``n`` with replacement, seeded: the same call gives the
  same interval in any process). Constant data gives a zero-width interval.
* :func:`wilcoxon`: the Wilcoxon signed-rank test of paired values (scipy's
  ``scipy.stats.wilcoxon``, two-sided; exact null distribution for small ``n`` without ties).
  With ``n`` pairs the smallest attainable two-sided p-value is ``2 / 2**n`` (0.0625 for 5
  seeds), so 5 seeds can never reach p < 0.05: read the bootstrap interval too.
* :func:`paired_comparison`: ``a - b`` over the seeds both have, its mean, the bootstrap CI
  of that mean and the Wilcoxon test.
* :func:`best_known_front`: the non-dominated union of several point sets (every strategy's
  points over every seed: the empirical limit of a problem).
* :func:`rank_table`: per problem, strategies ranked by a score (1 = best, ties share the
  average rank); the mean rank over the problems each strategy has a score on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from compsearch.errors import ConfigError
from compsearch.studies.hypervolume import pareto_front

LEVEL = 0.95
RESAMPLES = 10_000


def _values(values: Iterable[float], name: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.size == 0:
        raise ConfigError(f"{name} is empty; give at least one value")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name}={arr.tolist()!r} holds NaN or infinite values; drop them first")
    return arr


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level={level!r} must lie strictly between 0 and 1 (e.g. 0.95)")


def bootstrap_ci(values: Iterable[float], *, level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Draws ``resamples`` samples of size ``n`` with replacement from ``values`` (``n``) with
    ``numpy.random.default_rng(seed)``, takes each sample's mean and returns the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those means (linear
    interpolation). One value gives ``(v, v)``.

    Args:
        values: one number per seed.
        level: coverage of the interval.
        resamples: number of bootstrap samples (>= 100).
        seed: fixes the resampling.

    Returns:
        ``(low, high)``.
    """
    arr = _values(values, "values")
    _check_level(level)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ConfigError(f"resamples={resamples!r} must be an integer >= 100 (e.g. {RESAMPLES})")
    if arr.size == 1 or np.all(arr == arr[0]):
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of the pairs ``(a[i], b[i])``.

    The statistic is ``min(W+, W-)``, the smaller of the rank sums of the positive and of
    the negative differences ``a - b`` (ranks of ``|a - b|``, zero differences dropped, as
    scipy's default ``zero_method="wilcox"``). All differences zero: statistic 0, p 1.

    Returns:
        ``{"statistic", "p_value", "n"}`` (``n`` = non-zero differences).
    """
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ConfigError(f"a and b must pair up: got {x.size} and {y.size} values")
    d = x - y
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n": 0}
    from scipy.stats import wilcoxon as scipy_wilcoxon

    result = scipy_wilcoxon(x, y)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "n": nonzero}


def paired_comparison(a: Mapping[int, float], b: Mapping[int, float], *, level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """``a`` against ``b`` over their common seeds (``seed -> value`` each).

    Returns:
        ``seeds`` (common, sorted), ``differences`` (``a - b`` per seed), ``mean_difference``,
        ``ci`` (bootstrap interval of the mean difference, :func:`bootstrap_ci`),
        ``ci_above_zero`` (the interval's low end > 0, with at least 2 seeds: one seed's
        interval is a point, not evidence), ``wilcoxon`` (:func:`wilcoxon`;
        None for fewer than 2 common seeds), ``wins`` / ``losses`` / ``ties`` of ``a``.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"seeds": [], "differences": [], "mean_difference": None, "ci": None, "ci_above_zero": False,
                "wilcoxon": None, "wins": 0, "losses": 0, "ties": 0}
    diff = [float(a[s]) - float(b[s]) for s in seeds]
    ci = bootstrap_ci(diff, level=level, resamples=resamples, seed=seed)
    return {
        "seeds": seeds, "differences": diff, "mean_difference": float(np.mean(diff)), "ci": list(ci),
        "ci_above_zero": len(seeds) > 1 and ci[0] > 0, "wilcoxon": wilcoxon([a[s] for s in seeds], [b[s] for s in seeds]) if len(seeds) > 1 else None,
        "wins": sum(d > 0 for d in diff), "losses": sum(d < 0 for d in diff), "ties": sum(d == 0 for d in diff),
    }


def best_known_front(point_sets: Iterable[Sequence[Sequence[float]]], directions: Sequence[str]) -> np.ndarray:
    """The non-dominated rows of the union of ``point_sets`` (each ``n_i x m``), duplicates
    removed, sorted by the first column (``k x m``; ``0 x m`` when every set is empty)."""
    rows = [list(map(float, p)) for points in point_sets for p in points]
    if not rows:
        return np.zeros((0, len(directions)))
    return pareto_front(rows, directions)


def rank_table(scores: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Rank strategies per problem and average the ranks.

    Args:
        scores: ``problem -> {strategy: score}``, higher is better (e.g. mean final
            hypervolume). A strategy missing from a problem is not ranked there.

    Returns:
        ``{"ranks": {problem: {strategy: rank}}, "mean_rank": {strategy: mean},
        "problems": {strategy: number of problems ranked}, "order": strategies by mean
        rank, best first}``. Rank 1 is the best; tied scores share the average of the ranks
        they span (scores 3, 2, 2, 1 -> ranks 1, 2.5, 2.5, 4).
    """
    ranks: dict[str, dict[str, float]] = {}
    for problem, row in scores.items():
        ordered = sorted(row.items(), key=lambda kv: -float(kv[1]))
        ranks[problem] = {}
        i = 0
        while i < len(ordered):
            j = i
            while j + 1 < len(ordered) and math.isclose(float(ordered[j + 1][1]), float(ordered[i][1]), rel_tol=0, abs_tol=1e-12):
                j += 1
            for k in range(i, j + 1):
                ranks[problem][ordered[k][0]] = (i + j) / 2 + 1
            i = j + 1
    per: dict[str, list[float]] = {}
    for row_ranks in ranks.values():
        for strategy, r in row_ranks.items():
            per.setdefault(strategy, []).append(r)
    mean_rank = {s: float(np.mean(r)) for s, r in per.items()}
    return {"ranks": ranks, "mean_rank": mean_rank, "problems": {s: len(r) for s, r in per.items()},
            "order": sorted(mean_rank, key=lambda s: (mean_rank[s], s))}


__all__ = ["LEVEL", "RESAMPLES", "best_known_front", "bootstrap_ci", "paired_comparison", "rank_table", "wilcoxon"]
