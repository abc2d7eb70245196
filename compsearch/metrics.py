"""The one table of metrics, and the one parser of constraints on them.

Every metric an evaluation can produce and a study can optimise or bound is a row of
this table: its name, direction (``"maximize"`` / ``"minimize"``), unit, definition,
domain ``[low, high]`` (used to validate reference points and constraint bounds) and
the task whose quality it measures (``None`` = any task). Objectives, constraints,
reference points, hypervolume scales and the report all read it; nothing else lists
metric names. Add a metric with :func:`register_metric` (registering a name twice
raises).

Built in (definitions as computed by the evaluator):

========================  =========  ===========  ==============================================
name                      direction  domain       definition
========================  =========  ===========  ==============================================
``accuracy``              maximize   [0, 1]       top-1 on the validation split (classification)
``return``                maximize   (-inf, inf)  mean undiscounted episodic return over the
                                                  validation seeds (policy task)
``loss``                  minimize   [0, inf)     the task's loss on the validation split
``size_bits``             minimize   (0, inf)     kept weights x w_bits + scales/zero points +
                                                  sparse-mask cost + other parameters at 32 bits
``size_kb``               minimize   (0, inf)     ``size_bits / 8192``
``compression_ratio``     maximize   (0, inf)     ``32 x all parameters / size_bits``
``bops``                  minimize   [0, inf)     sum over units of MACs x kept fraction x
                                                  w_bits x a_bits
``sparsity``              maximize   [0, 1]       1 - kept unit weights / all unit weights
``proxy``                 minimize   [0, inf)     output MSE against the uncompressed model,
                                                  before fine-tuning
``latency_ms``            minimize   (0, inf)     median timed forward of the exported model
========================  =========  ===========  ==============================================

A **constraint** is a spec / API key ``max_<metric>`` or ``min_<metric>`` with a bound;
:func:`parse_constraints` is the only parser. Its Optuna constraint value is ``<= 0``
when satisfied (:meth:`Constraint.value`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compsearch.errors import ConfigError
from compsearch.registry import Registry

DIRECTIONS = ("maximize", "minimize")
#: Where a reference-point default comes from: the uncompressed model's value of the metric.
UNCOMPRESSED = "uncompressed"


@dataclass(frozen=True)
class Metric:
    """One row of the metrics table.

    Attributes:
        name: the key in an evaluation's metrics dict.
        direction: ``"maximize"`` or ``"minimize"`` (never changes).
        unit: the metric's unit, for tables and axis labels.
        definition: how it is computed (one sentence).
        low, high: the domain; a reference point or constraint bound outside it is
            meaningless and rejected (``-inf`` / ``inf`` = unbounded).
        task: the task whose quality it measures (``"classification"``, ``"policy"``);
            ``None`` = any task.
        open_low: values are strictly greater than ``low`` (a size is never 0), so a
            bound or reference equal to ``low`` is rejected too.
        reference: the default hypervolume reference when a spec gives none: a number,
            :data:`UNCOMPRESSED` (the uncompressed model's value), or ``None`` (the spec
            must give one).
    """

    name: str
    direction: str
    unit: str
    definition: str
    low: float = -math.inf
    high: float = math.inf
    task: str | None = None
    open_low: bool = False
    reference: float | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"Metric.name={self.name!r} must be an identifier such as 'size_kb'")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"Metric {self.name!r}: direction={self.direction!r}; allowed: {list(DIRECTIONS)}")
        if not (isinstance(self.low, (int, float)) and isinstance(self.high, (int, float)) and self.low < self.high):
            raise ConfigError(f"Metric {self.name!r}: domain [{self.low!r}, {self.high!r}] must have low < high")

    @property
    def fraction(self) -> bool:
        """Whether the metric is a fraction in [0, 1] (accuracy, sparsity)."""
        return self.low == 0.0 and self.high == 1.0

    @property
    def domain(self) -> str:
        """The domain as text, e.g. ``[0, 1]`` or ``(0, inf)``."""
        return f"{'(' if self.open_low or self.low == -math.inf else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high == math.inf else ']'}"

    def contains(self, value: float) -> bool:
        """Whether ``value`` is a finite number inside the domain."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return (value > self.low if self.open_low else value >= self.low) and value <= self.high

    def check(self, value: Any, where: str) -> float:
        """``float(value)`` when it is a finite number in the domain, else :class:`ConfigError`
        naming ``where`` (a key path), the value and the domain."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} must be a number ({self.name} in {self.unit})")
        if not self.contains(value):
            raise ConfigError(f"{where}={value!r} is outside the domain of {self.name}: {self.domain} {self.unit}; "
                              f"give a finite value inside it")
        return float(value)


def _num(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


METRICS: Registry[Metric] = Registry("metric")


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the table (a name registered twice raises ``DuplicateNameError``)."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register_metric expects a Metric, got {type(metric).__name__}")
    return METRICS.register(metric.name, metric)


def get_metric(name: str) -> Metric:
    """The table row of ``name``; an unknown name raises listing the known ones."""
    return METRICS.get(name)


def metric_names(task: str | None = None) -> list[str]:
    """Registered metric names, sorted; with ``task``, only those usable with it
    (metrics of that task and task-independent ones)."""
    return [n for n in METRICS.names() if task is None or METRICS.get(n).task in (None, task)]


def direction(name: str) -> str:
    """The fixed direction of metric ``name`` (``"maximize"`` / ``"minimize"``)."""
    return get_metric(name).direction


def is_known(name: object) -> bool:
    """Whether ``name`` is a registered metric."""
    return isinstance(name, str) and name in METRICS


for _m in (
    Metric("accuracy", "maximize", "fraction", "top-1 accuracy on the validation split", 0.0, 1.0,
           task="classification", reference=0.0),
    Metric("return", "maximize", "return", "mean undiscounted episodic return over the validation seeds",
           task="policy"),
    Metric("loss", "minimize", "nats", "the task's loss on the validation split", 0.0),
    Metric("size_bits", "minimize", "bits", "kept weights x w_bits + 32 bits per scale/zero point + sparse-mask "
           "cost + every other parameter at 32 bits; removed blocks cost 0", 0.0, open_low=True, reference=UNCOMPRESSED),
    Metric("size_kb", "minimize", "KiB", "size_bits / 8192", 0.0, open_low=True, reference=UNCOMPRESSED),
    Metric("compression_ratio", "maximize", "x", "32 x all parameters / size_bits", 0.0, open_low=True, reference=1.0),
    Metric("bops", "minimize", "bit-operations", "sum over units of MACs x kept fraction x w_bits x a_bits", 0.0,
           reference=UNCOMPRESSED),
    Metric("sparsity", "maximize", "fraction", "1 - kept unit weights / all unit weights", 0.0, 1.0, reference=0.0),
    Metric("proxy", "minimize", "MSE", "output MSE against the uncompressed model before fine-tuning", 0.0),
    Metric("latency_ms", "minimize", "ms", "median timed forward of the exported model (warm-up, threads and "
           "batch size recorded)", 0.0, open_low=True),
):
    register_metric(_m)


# ---- objectives ------------------------------------------------------------------------


def _objective_name(objective: str | Sequence[str]) -> str:
    """``"accuracy"`` or ``("accuracy", "maximize")`` -> ``"accuracy"`` (direction checked)."""
    if isinstance(objective, str):
        name, given = objective, None
    elif isinstance(objective, (tuple, list)) and len(objective) == 2:
        name, given = objective
    else:
        raise ConfigError(f"objective {objective!r} must be a metric name or a (metric, direction) pair")
    if not is_known(name):
        raise ConfigError(f"objective metric {name!r} is not produced by the evaluator; allowed: {metric_names()} "
                          f"(test_accuracy is never an objective: select on val)")
    if given is not None and given != direction(name):
        raise ConfigError(f"objective {name!r} has direction={given!r}; {name} is always {direction(name)!r}d")
    return str(name)


def objective_pairs(objectives: str | Iterable[str | Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """Validated ``((metric, direction), ...)`` of ``objectives`` (names or pairs).

    Raises:
        ConfigError: empty, repeated, an unknown metric or a wrong direction.
    """
    items = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    names = tuple(_objective_name(o) for o in items)
    if not names:
        raise ConfigError(f"objectives={list(items)!r} is empty; give at least one of {metric_names()}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives={list(names)} repeats a metric; each metric at most once")
    return tuple((n, direction(n)) for n in names)


# ---- constraints ----------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """A bound on one metric; its Optuna constraint value is ``<= 0`` when satisfied.

    Attributes:
        key: ``"max_<metric>"`` or ``"min_<metric>"`` (also the constraint's name in the trial record).
        metric: the bounded metric.
        bound: the bound, in the metric's unit.
        upper: ``True`` for ``max_`` (value = metric - bound), ``False`` for ``min_``
            (value = bound - metric).
    """

    key: str
    metric: str
    bound: float
    upper: bool

    @property
    def kind(self) -> str:
        """``"max"`` or ``"min"``."""
        return "max" if self.upper else "min"

    @property
    def label(self) -> str:
        """``"max_size_kb<=12"`` / ``"min_accuracy>=0.8"``."""
        return f"{self.key}{'<=' if self.upper else '>='}{self.bound:g}"

    def value(self, metrics: Mapping[str, Any]) -> float:
        """Violation (> 0) or slack (<= 0) of ``metrics``, in the metric's unit."""
        v = float(metrics[self.metric])
        return v - self.bound if self.upper else self.bound - v

    def satisfied(self, metrics: Mapping[str, Any]) -> bool:
        """Whether ``metrics`` holds a finite value of the metric within the bound."""
        v = metrics.get(self.metric)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return self.value(metrics) <= 0.0


def parse_constraint(key: str, bound: Any, *, where: str | None = None) -> Constraint:
    """One constraint; see :func:`parse_constraints`. ``where`` names the key in messages
    (default ``constraints.<key>``)."""
    where = where or f"constraints.{key}"
    kind, _, metric = str(key).partition("_")
    if kind not in ("max", "min") or not is_known(metric):
        raise ConfigError(f"constraint {key!r} is unknown; allowed: 'max_<metric>' or 'min_<metric>' with <metric> "
                          f"in {metric_names()}, e.g. 'max_size_kb' or 'min_accuracy'")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
        raise ConfigError(f"constraint {key!r} = {bound!r} must be a finite number")
    m = get_metric(metric)
    if not m.contains(bound):
        raise ConfigError(f"{where}={bound!r} is outside the domain of {metric}, {m.domain} {m.unit}, so it cannot "
                          f"be met or bounds nothing; give a bound inside it")
    return Constraint(key=str(key), metric=metric, bound=float(bound), upper=kind == "max")


def parse_constraints(constraints: Mapping[str, Any] | None) -> tuple[Constraint, ...]:
    """Parse ``{"max_size_kb": 4.0, "min_accuracy": 0.9}`` into :class:`Constraint` objects.

    Raises:
        ConfigError: a key not of the form ``max_<metric>`` / ``min_<metric>`` with a known
            metric, a bound that is not a finite number, or a bound outside the metric's
            domain (``min_accuracy = 1.5``, ``max_size_kb = 0``).
    """
    if constraints is None:
        return ()
    if not isinstance(constraints, Mapping):
        raise ConfigError(f"constraints={constraints!r} must be a mapping like {{'max_size_kb': 4.0}}")
    return tuple(parse_constraint(k, b) for k, b in constraints.items())


# ---- Pareto dominance -----------------------------------------------------------------------


def pareto_mask(points: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Boolean mask (``n``) of the non-dominated rows of ``points`` (``n x m``): the one
    Pareto filter of compsearch (strategies, hypervolume and report use it).

    A row is dominated when another row is at least as good in every objective and strictly
    better in one; duplicated non-dominated rows are all kept.

    Args:
        points: objective values, one row per candidate (finite).
        directions: ``"maximize"`` / ``"minimize"`` per column.

    Raises:
        ConfigError: bad directions, a shape that does not match them, or non-finite values.
    """
    dirs = list(directions)
    if not dirs or any(d not in DIRECTIONS for d in dirs):
        raise ConfigError(f"directions={dirs!r} must be a non-empty list of {list(DIRECTIONS)}")
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(0, dtype=bool)
    if arr.ndim != 2 or arr.shape[1] != len(dirs):
        raise ConfigError(f"points of shape {arr.shape} do not match {len(dirs)} direction(s); give an n x {len(dirs)} array")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("points contain NaN or infinite values; drop failed candidates first")
    s = arr * np.array([-1.0 if d == "maximize" else 1.0 for d in dirs])  # smaller is better in every column
    mask = np.ones(len(s), dtype=bool)
    for i in range(len(s)):
        mask[i] = not np.any(np.all(s <= s[i], axis=1) & np.any(s < s[i], axis=1))
    return mask


def pareto_indices(points: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Row indices of the non-dominated points (see :func:`pareto_mask`), in input order."""
    return [int(i) for i in np.flatnonzero(pareto_mask(points, directions))]


def _hv2d(gains: np.ndarray) -> float:
    """Area dominated by 2-D gains (maximisation, origin reference): sweep in decreasing g0."""
    order = np.argsort(-gains[:, 0], kind="stable")
    area, best_g1 = 0.0, 0.0
    for g0, g1 in gains[order]:
        if g1 > best_g1:
            area += g0 * (g1 - best_g1)
            best_g1 = g1
    return float(area)


def _nondominated_max(gains: np.ndarray) -> np.ndarray:
    """Non-dominated rows under maximisation, duplicates removed."""
    if len(gains) <= 1:
        return gains
    gains = np.unique(gains, axis=0)
    return gains[pareto_mask(gains, ["maximize"] * gains.shape[1])]


def _wfg(gains: np.ndarray) -> float:
    """Hypervolume of maximisation gains against the origin, WFG recursion."""
    if len(gains) == 0:
        return 0.0
    m = gains.shape[1]
    if m == 1:
        return float(gains[:, 0].max())
    if m == 2:
        return _hv2d(gains)
    gains = _nondominated_max(gains)
    gains = gains[np.argsort(-gains[:, 0], kind="stable")]
    total = 0.0
    for i, p in enumerate(gains):
        # Exclusive volume of p: its box minus what the later points share with it.
        limited = np.minimum(gains[i + 1 :], p)
        total += float(np.prod(p)) - _wfg(_nondominated_max(limited[np.all(limited > 0, axis=1)]))
    return total


def dominated_volume(gains: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Volume dominated by ``gains`` (``n x m``, larger is better) against the origin: the
    union of the boxes ``[0, g]``. Rows not strictly positive in every column add nothing.

    Exact: a sweep for ``m = 2``, the WFG recursion (exclusive volumes) above.
    """
    arr = np.asarray(gains, dtype=np.float64)
    if arr.size == 0:
        return 0.0
    return _wfg(arr[np.all(arr > 0, axis=1)])


__all__ = [
    "DIRECTIONS",
    "METRICS",
    "UNCOMPRESSED",
    "Constraint",
    "Metric",
    "direction",
    "dominated_volume",
    "get_metric",
    "is_known",
    "metric_names",
    "objective_pairs",
    "pareto_indices",
    "pareto_mask",
    "parse_constraint",
    "parse_constraints",
    "register_metric",
]
