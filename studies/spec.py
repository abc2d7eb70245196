"""The study spec: one TOML file that fixes everything a comparison depends on.

A spec names the model (and how its uncompressed base is trained, or a checkpoint),
the data, the compression space, the shared evaluator (fine-tuning budget, pruning
criterion, distillation), the objectives with their hypervolume reference point, the
constraints, the strategies to compare, the budget of full evaluations per strategy
and seed, the seeds, and where the Optuna studies are stored. Example::

    name = "quickstart"
    strategies = ["random", "nsga2", "tpe"]
    trials = 40
    seeds = 1                                 # a count (0..n-1) or a list [0, 7]
    objectives = ["accuracy", "size_kb"]      # or [{metric = "bops", direction = "minimize"}]

    [model]
    name = "digits_cnn"                       # built-in or any timm name
    [base]                                    # or model.checkpoint = "weights.pt"
    steps = 600
    [data]
    name = "digits"
    [space]
    name = "joint"
    [space.choices]
    w_bits = [2, 4, 8, 32]
    [evaluator.finetune]
    steps = 40
    [constraints]
    max_size_kb = 8.0

Every table forbids unknown keys; :func:`load_spec` turns pydantic's errors into one
:class:`~compsearch.errors.SpecError` naming each offending key path
(``evaluator.finetune.stepz: unknown key; allowed: [...]``).
"""

from __future__ import annotations

import importlib
import re
import sys
import typing
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from compsearch.errors import ConfigError, SpecError
from compsearch.metrics import (
    Constraint,
    direction,
    get_metric,
    metric_names,
    parse_constraint,
    parse_constraints,
)
from compsearch.plugins import PluginError, check_module_name, import_plugins, load_entry_points
from compsearch.studies.agent_spec import (
    AgentSpec,
    GatesSpec,
    TaskSpec,
    check_task_metrics,
    task_of,
)
from compsearch.studies.storage import check_spec_storage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_SEED = 2**31 - 1
#: True while :func:`load_spec` reads a stored spec (``stored=True``, a finished run's
#: run.json): registry names, metric names and evaluator settings were checked when it ran,
#: and a reader must not need the plugins that registered them.
_READING: ContextVar[bool] = ContextVar("compsearch_reading_stored_spec", default=False)
#: Upper bounds of budgets and sizes; ``allow_large = true`` in a spec lifts them (values
#: must still be finite). Key path -> largest accepted value.
LIMITS: dict[str, int] = {
    "trials": 10_000,
    "seeds": 100,  # how many seeds
    "base.steps": 1_000_000,
    "base.epochs": 10_000,
    "base.batch_size": 65_536,
    "evaluator.threads": 1024,
    "evaluator.finetune.steps": 1_000_000,
    "evaluator.finetune.epochs": 10_000,
    "evaluator.finetune.batch_size": 65_536,
    "evaluator.finetune.report_every": 1_000_000,
    "evaluator.calib_batches": 10_000,
    "evaluator.calib_batch_size": 65_536,
    "evaluator.eval_batch_size": 65_536,
    "evaluator.proxy_samples": 1_000_000,
    "evaluator.sensitivity_batches": 10_000,
    "agent.steps": 100_000_000,
    "agent.n_envs": 1024,
    "agent.features_dim": 65_536,
    "task.episodes": 10_000,
    "task.test_episodes": 10_000,
    "task.teacher_episodes": 10_000,
    "task.max_steps": 10_000_000,
    "task.buffer_size": 100_000_000,
}


def metric_directions() -> dict[str, str]:
    """Known metrics and their fixed direction (the metrics table, :mod:`compsearch.metrics`)."""
    return {name: direction(name) for name in metric_names()}


class AtKey(ValueError):
    """A validation error about the sub-key ``path`` of the field being validated; the
    spec error then names the full key path (``constraints.min_accuracy: ...``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# ---- registry-checked names ----------------------------------------------------------


def _registered(kind: str, module: str, lister: str) -> Callable[[str], str]:
    """Validator: ``name`` must be in ``module.lister()`` (imported lazily), else
    ``unknown <kind> 'name'; registered: [...]``."""

    def check(name: str) -> str:
        if _READING.get():
            return name
        known = getattr(importlib.import_module(module), lister)()
        if name not in known:
            raise ValueError(f"unknown {kind} {name!r}; registered: {known}")
        return name

    return check


_check_strategy = _registered("strategy", "compsearch.search.registry", "list_strategies")
_check_registered_space = _registered("space", "compsearch.spaces", "list_spaces")


def _check_space(name: str) -> str:
    """A registered space, or a composition ``a+b`` of distinct registered spaces (``depth+joint``)."""
    parts = name.split("+")
    if len(set(parts)) != len(parts):
        raise ValueError(f"space {name!r} names a part twice; compose distinct spaces, e.g. 'depth+joint'")
    for part in parts:
        _check_registered_space(part)
    return name


_check_dataset = _registered("dataset", "compsearch.evaluators.datasets", "list_datasets")
_check_registered_criterion = _registered("criterion", "compsearch.evaluators.masks", "list_criteria")
#: modules whose import registers model-level criteria (until the criterion registry loads them itself)
CRITERION_MODULES = ("compsearch.evaluators.lrp", "compsearch.evaluators.gates")


def _check_criterion(name: str) -> str:
    for module in CRITERION_MODULES:
        importlib.import_module(module)
    return _check_registered_criterion(name)


def _check_model(name: str) -> str:
    from compsearch.evaluators.models import list_models

    if _READING.get():
        return name
    if name in list_models():
        return name
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: neither a built-in model {list_models()} nor a timm model")
    return name


StrategyName = Annotated[str, AfterValidator(_check_strategy)]


# ---- sections ---------------------------------------------------------------------


class ModelSpec(_Model):
    """``[model]``: what to compress.

    Attributes:
        name: a built-in model (``compsearch list``) or any timm model name (random init).
        kwargs: extra builder / ``timm.create_model`` options; ``num_classes`` and
            ``in_chans`` default to the data's.
        checkpoint: local state-dict file with trained weights; replaces ``[base]`` training.
            A relative path is relative to the spec file.
    """

    name: Annotated[str, AfterValidator(_check_model)]
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None


class BaseSpec(_Model):
    """``[base]``: how the uncompressed model is trained once (Adam, cosine schedule).

    The trained weights are cached in the run folder under a hash of model + recipe + data.

    Attributes:
        steps: optimizer steps (ignored when ``epochs`` is given).
        epochs: passes over the train split.
        lr: peak learning rate.
        batch_size: mini-batch size.
        weight_decay: L2 weight decay.
        seed: seed of initialisation and batch order.
    """

    steps: int | None = Field(default=300, ge=1)
    epochs: float | None = Field(default=None, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class DataSpec(_Model):
    """``[data]``: the dataset; ``seed`` fixes the train/val/test split for every study.

    Attributes:
        name: a registered dataset (``digits``, ``synthetic``, ``cifar10``, ...).
        seed: split seed (the same for every strategy and study seed).
        options: loader options (e.g. ``root``, ``size``, ``val_fraction``); a relative
            ``root`` is relative to the spec file's folder.
    """

    name: Annotated[str, AfterValidator(_check_dataset)] = "digits"
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    options: dict[str, Any] = Field(default_factory=dict)


class ChoicesSpec(_Model):
    """``[space.choices]``: the values a built-in space may choose per field (None = its default)."""

    w_bits: list[int] | None = None
    a_bits: list[int] | None = None
    keep: list[float] | None = None
    scheme: list[str] | None = None
    granularity: list[str] | None = None
    structure: list[str] | None = None


class SpaceSpec(_Model):
    """``[space]``: the compression space.

    Attributes:
        name: a registered space (``joint``, ``block``, ``uniform``, ``quant``, ``prune``,
            ``depth``) or a composition ``a+b`` of them over disjoint choices (``depth+joint``;
            :mod:`compsearch.spaces.compose`).
        skip_first: leave the stem uncompressed.
        skip_head: leave the classifier uncompressed.
        choices: per-field choices of the built-in spaces (a composition gives them to every part that takes them).
        options: extra constructor options of a custom space; in a composition, a table named
            after a part (``[space.options.depth] blocks = [...]``) goes to that part only.
        blocks: block grouping override, regular expression -> block name (``[space.blocks]
            "layer[12]\\..*" = "early"``): a unit whose name matches (``re.fullmatch``, first
            match wins) joins that block; the others keep the discovered grouping.
    """

    name: Annotated[str, AfterValidator(_check_space)] = "joint"
    skip_first: bool = True
    skip_head: bool = True
    choices: ChoicesSpec = Field(default_factory=ChoicesSpec)
    options: dict[str, Any] = Field(default_factory=dict)
    blocks: dict[str, str] = Field(default_factory=dict)

    @field_validator("blocks")
    @classmethod
    def _valid_blocks(cls, v: dict[str, str]) -> dict[str, str]:
        for pattern, block in v.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression ({e}); e.g. 'layer[12]\\..*'") from None
            if not block.strip():
                raise ValueError(f"{pattern!r} maps to an empty block name; give a name, e.g. 'early'")
        return v

    def block_override(self) -> dict[str, str] | None:
        """``blocks`` for :func:`~compsearch.spaces.discover_units` (None: the discovered grouping)."""
        return dict(self.blocks) or None

    def space_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``get_space(name, units, **kwargs)``."""
        chosen = {k: v for k, v in self.choices.model_dump().items() if v is not None}
        return {**chosen, "skip_first": self.skip_first, "skip_head": self.skip_head, **self.options}


class FineTuneSpec(_Model):
    """``[evaluator.finetune]``: the fine-tuning budget of every candidate (and of the
    uncompressed baseline). Fields as :class:`~compsearch.evaluators.FineTuneConfig`;
    its ``seed`` is the study seed, so it is not given here."""

    steps: int = Field(default=100, ge=0)
    epochs: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=64, ge=1)
    optimizer: str = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    schedule: str = "cosine"
    distill: float = Field(default=0.0, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0, le=100)
    report_every: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _valid_config(self) -> FineTuneSpec:
        if not _READING.get():
            self.config(seed=0)  # FineTuneConfig's own checks (optimizer, schedule names)
        return self

    def config(self, *, seed: int) -> Any:
        """The :class:`FineTuneConfig` for study seed ``seed``."""
        from compsearch.evaluators.types import FineTuneConfig

        return FineTuneConfig(**self.model_dump(), seed=seed)


class EvaluatorSpec(_Model):
    """``[evaluator]``: the one evaluator every strategy is judged by.

    Attributes:
        criterion: pruning importance criterion (``l1``, ``l2``, ``taylor``, ``fisher``, ``nni-l1``, ``nni-l2``, ``nni-fpgm``).
        device: ``auto``, ``cpu``, ``cuda``, ...
        threads: torch intra-op CPU threads (None = torch's default, one per core). Small
            models run fastest with 1: their kernels are too short to share, and spare
            threads busy-wait when the machine is loaded.
        finetune: the fine-tuning recipe of every candidate.
        calib_batches, calib_batch_size, act_range, ema_momentum, eval_batch_size,
            proxy_samples, sensitivity_batches: as :class:`~compsearch.evaluators.EvaluatorConfig`
            (unset = its default).
    """

    criterion: Annotated[str, AfterValidator(_check_criterion)] = "l1"
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    finetune: FineTuneSpec = Field(default_factory=FineTuneSpec)
    calib_batches: int | None = Field(default=None, ge=1)
    calib_batch_size: int | None = Field(default=None, ge=1)
    act_range: str | None = None
    ema_momentum: float | None = Field(default=None, ge=0, le=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    proxy_samples: int | None = Field(default=None, ge=1)
    sensitivity_batches: int | None = Field(default=None, ge=1)
    divergence_ratio: float | None = Field(default=None, gt=1)

    @model_validator(mode="after")
    def _valid_config(self) -> EvaluatorSpec:
        if not _READING.get():
            self.config(seed=0)  # EvaluatorConfig's own checks
        return self

    def config(self, *, seed: int) -> Any:
        """The :class:`EvaluatorConfig` for study seed ``seed`` (fine-tuning, calibration and
        gradient-statistics batches all seeded by it); unset fields keep its defaults."""
        from compsearch.evaluators.evaluator import EvaluatorConfig

        extra = {k: v for k, v in self.model_dump(exclude={"criterion", "device", "threads", "finetune"}).items() if v is not None}
        return EvaluatorConfig(criterion=self.criterion, finetune=self.finetune.config(seed=seed), seed=seed, **extra)


class LatencySpec(_Model):
    """``[latency]``: how ``latency_ms`` (objective, ``max_latency_ms`` constraint, export) is measured.

    ``latency_ms`` is the median wall time of ``repeats`` timed forwards of the exported model
    after ``warmup`` untimed ones (:mod:`compsearch.studies.latency_objective`).

    Attributes:
        runtime: ``onnxruntime`` (the exported ONNX file, CPU) or ``torch`` (eager).
        batch: samples per timed forward (``compsearch export`` also times batch 1).
        threads: intra-op threads of the runtime.
        warmup: untimed forwards first.
        repeats: timed forwards.
    """

    runtime: str = "onnxruntime"
    batch: int = Field(default=1, ge=1, le=4096)
    threads: int = Field(default=1, ge=1, le=256)
    warmup: int = Field(default=5, ge=0, le=1000)
    repeats: int = Field(default=20, ge=1, le=10000)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in ("onnxruntime", "torch"):
            raise ValueError(f"unknown runtime {v!r}; allowed: ['onnxruntime', 'torch']")
        return v


class ObjectiveSpec(_Model):
    """One objective: a metric of the evaluator and its direction (default: the metric's natural one)."""

    metric: str
    direction: str | None = None

    @model_validator(mode="after")
    def _known(self) -> ObjectiveSpec:
        known = metric_directions()
        if _READING.get() and self.direction is not None:
            return self
        if self.metric not in known:
            raise ValueError(f"unknown metric {self.metric!r}; allowed: {sorted(known)}")
        if self.direction is None:
            object.__setattr__(self, "direction", known[self.metric])
        elif self.direction != known[self.metric]:
            raise ValueError(f"{self.metric} is always {known[self.metric]}d; got direction={self.direction!r}")
        return self




class StudySpec(_Model):
    """A whole study spec (see the module docstring for the TOML layout).

    Attributes:
        name: run name (folder-safe); the default run folder is ``runs/<name>``.
        description: free text shown in the report.
        model, base, data, space, evaluator: see their sections.
        agent, task: an RL agent to compress instead of ``[model]`` (the policy task; see
            :mod:`compsearch.studies.agent_spec`); ``[model]``, ``[base]`` and ``[data]``
            are then refused.
        gates: settings of the gates method (``compsearch gates SPEC``).
        latency: how ``latency_ms`` is measured (an objective, ``max_latency_ms``, export).
        objectives: ``(metric, direction)`` list, in the order of the Optuna study's values;
            default ``["accuracy", "size_kb"]``, or ``["return", "size_kb"]`` with ``[agent]``.
            A metric of the other task (``return`` without ``[agent]``, ``accuracy`` with
            it) is refused, in constraints and reference points too.
        reference_point: metric -> worst acceptable value for the hypervolume; missing
            entries default to the quality floor (``constraints.min_<quality>``, else 0 for
            accuracy and the return of uniformly random actions for ``return``) and the
            uncompressed model's cost (see ``run.resolve_reference_point``).
        constraints: ``max_<metric>`` / ``min_<metric>`` -> bound (recorded as Optuna constraints).
        strategies: registered strategy names to compare.
        strategy_options: strategy name -> options for its factory.
        trials: full evaluations per strategy and seed (the equal budget).
        seeds: a count ``n`` (seeds ``0..n-1``) or an explicit list (each < 2**31).
        storage: the storage *inside the run folder*: ``"sqlite"`` (``studies.db``, the
            default for one process), ``"journal"`` (``journal.log``, the default for several
            workers), or a file name ``"<name>.db"`` / ``"<name>.log"``. Any other storage is
            given on the command line (``--storage URL``), never by a spec.
        allow_large: lift the upper bounds of budgets and sizes (:data:`LIMITS`), e.g. for
            a million fine-tune steps on purpose. Values must still be finite.
        plugins: dotted module names imported before the spec is checked, which register
            the user's models, datasets, spaces, ... (:mod:`compsearch.plugins`); the only
            code a spec makes compsearch import.
    """

    name: str
    allow_large: bool = False
    description: str = ""
    model: ModelSpec | None = None
    agent: AgentSpec | None = None
    task: TaskSpec | None = None
    gates: GatesSpec = Field(default_factory=GatesSpec)
    base: BaseSpec | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    evaluator: EvaluatorSpec = Field(default_factory=EvaluatorSpec)
    latency: LatencySpec = Field(default_factory=LatencySpec)
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [ObjectiveSpec(metric="accuracy"), ObjectiveSpec(metric="size_kb")])
    reference_point: dict[str, float] = Field(default_factory=dict)
    constraints: dict[str, float] = Field(default_factory=dict)
    strategies: list[StrategyName] = Field(min_length=1)
    strategy_options: dict[StrategyName, dict[str, Any]] = Field(default_factory=dict)
    trials: int = Field(ge=1)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0], min_length=1)
    storage: str | None = None
    plugins: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} must be folder-safe: letters, digits, '_', '.', '-'")
        return v

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            check_module_name(name, f"[{i}]")  # a PluginError is a ValueError: "plugins: [0]='x' is not ..."
        return v

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: dict[str, float]) -> dict[str, float]:
        if _READING.get():
            return v
        for key, bound in v.items():
            try:
                parse_constraint(key, bound, where="value")
            except ConfigError as e:
                raise AtKey(key, str(e)) from None
        return v

    @field_validator("objectives", mode="before")
    @classmethod
    def _objective_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"metric": o} if isinstance(o, str) else o for o in v]
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, list)):
            raise ValueError(f"expected a seed count or a list of seeds, got {v!r}")
        count = v if isinstance(v, int) else len(v)
        limit = LIMITS["seeds"] if not info.data.get("allow_large") else 100 * LIMITS["seeds"]
        if count > limit:
            hint = "" if info.data.get("allow_large") else " (allow_large = true lifts it to 10000)"
            raise ValueError(f"{count} seeds is more than the limit of {limit}{hint}; give fewer seeds")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"seed count {v} must be >= 1")
            return list(range(v))
        return v

    @field_validator("storage")
    @classmethod
    def _storage_in_folder(cls, v: str | None) -> str | None:
        try:
            return check_spec_storage(v)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("storage=")) from None

    @field_validator("strategies", "seeds")
    @classmethod
    def _unique(cls, v: list[Any]) -> list[Any]:
        if len(set(v)) != len(v):
            raise ValueError(f"{v} has duplicates; list each once")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        self._one_network()
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives: {metrics} list a metric twice")
        extra = sorted(set(self.reference_point) - set(metrics))
        if extra:
            raise ValueError(f"reference_point: {extra} are not objectives; objectives: {metrics}")
        if self.model is not None and self.model.checkpoint is not None and self.base is not None:
            raise ValueError("model.checkpoint: give either model.checkpoint (trained weights) or [base] (train them), not both")
        if self.model is not None and self.model.checkpoint is None and self.base is None:
            object.__setattr__(self, "base", BaseSpec())
        for key, message in check_task_metrics(self.task_name, metrics, self.constraints, self.reference_point):
            raise AtKey(key, message)
        self._gates_fit()
        for metric in ([] if _READING.get() else metrics):
            m = get_metric(metric)
            own = m.direction == "maximize" and f"min_{metric}" in self.constraints
            if m.reference is None and m.task is None and metric not in self.reference_point and not own:
                # a task metric (``return``) gets its task's default at run time; these never do
                raise AtKey(f"reference_point.{metric}", f"objective {metric!r} has no default hypervolume reference; "
                                                          f"give the worst value you accept, e.g. [reference_point] "
                                                          f"{metric} = <value>")
        for metric, value in ({} if _READING.get() else self.reference_point).items():
            try:
                get_metric(metric).check(value, "value")
            except ConfigError as e:
                raise AtKey(f"reference_point.{metric}", str(e)) from None
        if not self.allow_large:
            for path, limit in LIMITS.items():
                value = len(self.seeds) if path == "seeds" else _value_at(self, path)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
                    raise AtKey(path, f"{value!r} is above the limit of {limit}; give a smaller value, or set "
                                      f"allow_large = true if you mean it")
        return self

    def _one_network(self) -> None:
        """Exactly one of ``[model]`` (a classifier) and ``[agent]`` (an RL agent); an agent
        study gets ``[task]`` and the objectives ``["return", "size_kb"]`` by default."""
        if self.agent is None:
            if self.model is None:
                raise AtKey("model", "required key is missing: give [model] (a classifier) or [agent] (an RL agent)")
            if self.task is not None:
                raise AtKey("task", "[task] configures the policy task of an [agent] study; add [agent] or remove [task]")
            return
        given = [k for k in ("model", "base") if getattr(self, k) is not None] + (["data"] if self.data != DataSpec() else [])
        if given:
            raise AtKey(given[0], f"an [agent] study compresses the agent's acting network on its environment; remove "
                                  f"[{given[0]}] (the agent replaces [model], [base] and [data])")
        if self.task is None:
            object.__setattr__(self, "task", TaskSpec())
        if "objectives" not in self.model_fields_set:
            object.__setattr__(self, "objectives", [ObjectiveSpec(metric="return"), ObjectiveSpec(metric="size_kb")])

    def _gates_fit(self) -> None:
        if self.gates.strengths is not None and len(self.gates.strengths) > self.trials:
            raise AtKey("gates.strengths", f"{len(self.gates.strengths)} strengths are more than trials={self.trials}: "
                                           f"each strength is one point of the gates method and every method gets the "
                                           f"same budget; give at most {self.trials}")
        if self.gates.online and self.agent is None:
            raise AtKey("gates.online", "online training with gates trains an agent from scratch; it needs an [agent] table")
        if self.agent is not None and self.task is not None and self.evaluator.finetune.epochs is None:
            try:
                self.task.dagger_seeds_fit(self.evaluator.finetune.steps)
            except ConfigError as e:
                raise AtKey("task", str(e)) from None

    # ---- derived ------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        """``"policy"`` (an ``[agent]`` study) or ``"classification"``."""
        return task_of(self.agent)

    @property
    def quality(self) -> str:
        """The task's quality metric: ``"return"`` (agent study) or ``"accuracy"``."""
        return "return" if self.agent is not None else "accuracy"

    def require_model(self) -> ModelSpec:
        """``[model]``; an agent study raises :class:`SpecError` (it has no classifier)."""
        if self.model is None:
            raise SpecError("model: this spec compresses an agent ([agent]); it has no [model] classifier")
        return self.model

    @property
    def objective_pairs(self) -> tuple[tuple[str, str], ...]:
        """``((metric, direction), ...)`` in study-value order."""
        return tuple((o.metric, str(o.direction)) for o in self.objectives)

    def parsed_constraints(self) -> tuple[Constraint, ...]:
        """The constraints, parsed by the one parser (:func:`compsearch.metrics.parse_constraints`)."""
        return parse_constraints(self.constraints)

    def comparison_key(self) -> dict[str, Any]:
        """The parts of the spec that results depend on (a resumed run must not change them)."""
        return self.model_dump(mode="json", include={"model", "base", "data", "space", "evaluator", "objectives", "reference_point",
                                                     "constraints", "agent", "task", "latency"})


def _value_at(spec: BaseModel, path: str) -> Any:
    """The value at a dotted key path of ``spec`` (None when a section is absent)."""
    value: Any = spec
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


# ---- loading and error messages -----------------------------------------------------


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]" or str(part).startswith(("function-", "constrained-")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` from a field annotation."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec model class that holds the key at ``loc`` (to list its allowed keys)."""
    current: Any = StudySpec
    for part in loc[:-1]:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            if part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        elif typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
}


def _message(err: Mapping[str, Any]) -> str:
    loc, kind = tuple(err["loc"]), err["type"]
    path = _path(loc)
    if kind == "extra_forbidden":
        holder = _model_at(loc)
        allowed = f"; allowed: {sorted(holder.model_fields)}" if holder is not None else ""
        return f"{path}: unknown key{allowed}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in _EXPECTED:
        return f"{path}: expected {_EXPECTED[kind]}, got {err.get('input')!r}"
    if kind == "value_error":
        error = err["ctx"]["error"]
        if isinstance(error, AtKey):
            return f"{path}.{error.path}: {error.message}" if loc else f"{error.path}: {error.message}"
        return f"{path}: {error}" if loc else str(error)
    return f"{path}: {err['msg'][0].lower()}{err['msg'][1:]} (got {err.get('input')!r})"


def _resolve_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    for section, key in (("model", "checkpoint"), ("agent", "path")):
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            path = Path(table[key]).expanduser()
            data = {**data, section: {**table, key: str(path if path.is_absolute() else (base_dir / path).resolve())}}
    return data


def _resolve_data_root(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """``data.options.root`` relative to the spec's folder (e.g. an ``imagefolder`` root)."""
    table = data.get("data")
    options = table.get("options") if isinstance(table, dict) else None
    if isinstance(table, dict) and isinstance(options, dict) and isinstance(options.get("root"), str):
        root = Path(options["root"]).expanduser()
        if not root.is_absolute():
            data = {**data, "data": {**table, "options": {**options, "root": str((base_dir / root).resolve())}}}
    return data


def _load_plugins(data: Mapping[str, Any], spec_dir: Path | None, where: str) -> None:
    """Load the installed ``compsearch.plugins`` entry points and import the spec's
    ``plugins`` (:mod:`compsearch.plugins`) before validation, which checks the names of
    models, datasets, spaces, ... they register."""
    plugins = data.get("plugins", [])
    try:
        load_entry_points()
        if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
            import_plugins(plugins, where="plugins", spec_dir=spec_dir)
    except PluginError as e:
        raise SpecError(f"{where}: {e}") from None


def load_spec(source: str | Path | Mapping[str, Any] | StudySpec, *, stored: bool = False) -> StudySpec:
    """Read and validate a study spec.

    Args:
        source: a TOML file path, an already-parsed mapping, or a :class:`StudySpec`.
        stored: ``source`` is a finished run's spec (run.json): import no plugin and leave
            registry names, metric names and evaluator settings unchecked (they were checked
            when the run started), so a run can be read without the code that made it.
            Otherwise the spec's ``plugins`` and the installed entry points are imported first.

    Returns:
        The validated spec (frozen).

    Raises:
        SpecError: the file is missing or not TOML, or a key is unknown, has the wrong
            type or an invalid value; the message names every offending key path.
    """
    if isinstance(source, StudySpec):
        return source
    where, spec_dir = "spec", None
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise SpecError(f"spec file {where!r} does not exist; pass the path of a .toml study spec")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{where}: not valid TOML: {e}") from None
        data, spec_dir = _resolve_data_root(_resolve_paths(data, path.parent), path.parent), path.parent
    if not stored:
        _load_plugins(data, spec_dir, where)
    token = _READING.set(stored)
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        lines = [_message(err) for err in e.errors(include_url=False)]
        raise SpecError(f"{where}: invalid study spec:\n  " + "\n  ".join(lines)) from None
    except ConfigError as e:  # raised outside pydantic's wrapping (should not happen)
        raise SpecError(f"{where}: {e}") from None
    finally:
        _READING.reset(token)


__all__ = [
    "BaseSpec",
    "ChoicesSpec",
    "DataSpec",
    "EvaluatorSpec",
    "FineTuneSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "SpaceSpec",
    "StudySpec",
    "load_spec",
    "metric_directions",
]
