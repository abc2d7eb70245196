"""The frozen run: everything one run folder's studies share, built in one step.

:func:`prepare` loads the data (split fixed by ``data.seed``), builds the model, trains
the uncompressed base model once and caches it in ``<out>/base/<hash>.pt`` (hash of model
+ recipe + data spec), builds the space and fixes the hypervolume reference point, and
returns a :class:`Run`. Every host (in-process, worker processes, Ray, NNI) and every
worker process builds its own :class:`Run` the same way; only the per-seed evaluators
and the opened storage are built lazily, in a small cache the run holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from compsearch.errors import SpecError
from compsearch.metrics import UNCOMPRESSED, Constraint, get_metric
from compsearch.plugins import import_plugins
from compsearch.record import is_feasible
from compsearch.studies import runfile
from compsearch.studies.hypervolume import hypervolume, metric_scales
from compsearch.studies.spec import StudySpec, load_spec
from compsearch.studies.storage import open_storage

BASE_DIR = "base"


class RunCache:
    """What a :class:`Run` builds lazily: one evaluator per study seed, and the opened storage.

    Args:
        build_evaluator: ``seed -> evaluator``.
        storage_url: the storage to open on first use.
        out_dir: the run folder (relative journal paths).
    """

    def __init__(self, build_evaluator: Any, storage_url: str, out_dir: Path) -> None:
        self._build = build_evaluator
        self._url = storage_url
        self._out = out_dir
        self._evaluators: dict[int, Any] = {}
        self._storage: optuna.storages.BaseStorage | None = None

    def evaluator(self, seed: int) -> Any:
        if seed not in self._evaluators:
            self._evaluators[seed] = self._build(seed)
        return self._evaluators[seed]

    def storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            self._storage = open_storage(self._url, out_dir=self._out)
        return self._storage


@dataclass(frozen=True)
class Run:
    """A prepared run folder (immutable; build it with :func:`prepare`).

    Attributes:
        spec: the effective spec.
        out_dir: the run folder (absolute).
        data: the splits (fixed by ``spec.data.seed``); None for an agent study.
        model: the trained uncompressed model (CPU, eval mode); an agent's acting network.
        base_info: how the base model was obtained (``hash``, ``path`` relative to the run
            folder, ``val_accuracy``, ...).
        space: the compression space over the model's units.
        reference_point: metric -> worst acceptable value, fixed before the run.
        scale_overrides: metric -> hypervolume normalisation scale replacing the default of
            :func:`metric_scales` (``return``: see :mod:`compsearch.studies.agent_run`).
        storage_url: the Optuna storage URL (may hold a password: never written anywhere).
        run_id: the run folder's identity, stamped on every study it creates.
        cache: the lazily built evaluators and storage.
    """

    spec: StudySpec
    out_dir: Path
    data: Any
    model: torch.nn.Module
    base_info: Mapping[str, Any]
    space: Any
    reference_point: Mapping[str, float]
    storage_url: str = field(repr=False)
    run_id: str
    cache: RunCache = field(repr=False, compare=False)
    scale_overrides: Mapping[str, float] = field(default_factory=dict)

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        return self.spec.objective_pairs

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        return self.spec.parsed_constraints()

    @property
    def reference(self) -> list[float]:
        return [self.reference_point[m] for m in self.metrics]

    @property
    def scales(self) -> list[float]:
        """Hypervolume normalisation per objective (see :func:`metric_scales`; ``scale_overrides`` first)."""
        return [self.scale_overrides.get(m, s) for m, s in zip(self.metrics, metric_scales(self.metrics, self.reference), strict=True)]

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return self.cache.storage()

    def evaluator(self, seed: int) -> Any:
        """The evaluator of study seed ``seed`` (built once per seed)."""
        return self.cache.evaluator(seed)

    def hypervolume(self, trials: Sequence[FrozenTrial]) -> float:
        """Normalised hypervolume of the feasible trials among ``trials``."""
        points = [[float(v) for v in t.values] for t in trials if is_feasible(t)]
        return hypervolume(points, self.directions, self.reference, self.scales)


# ---- preparation ----------------------------------------------------------------------------


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def build_model(spec: StudySpec, data: Any) -> torch.nn.Module:
    """The spec's model for ``data`` (random init, or the checkpoint's weights)."""
    from compsearch.evaluators.models import build_model as build

    table = spec.require_model()
    kwargs = dict(table.kwargs)
    kwargs.setdefault("num_classes", data.num_classes)
    kwargs.setdefault("in_chans", data.input_shape[0] if len(data.input_shape) > 1 else 1)
    return build(table.name, checkpoint=table.checkpoint, **kwargs)


def base_model(spec: StudySpec, data: Any, out_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained base model: from the checkpoint, the run folder's cache, or trained now."""
    from compsearch.evaluators.models import model_hash, train_base_model

    with torch.random.fork_rng(devices=[]):  # initial weights from ``base.seed``: a new run folder trains the same base
        torch.manual_seed(spec.base.seed if spec.base is not None else 0)
        model = build_model(spec, data)
    if spec.base is None:
        return model, {"source": "checkpoint", "path": spec.require_model().checkpoint, "hash": model_hash(model)}
    key = _digest({"model": spec.require_model().model_dump(mode="json"), "base": spec.base.model_dump(mode="json"),
                   "data": spec.data.model_dump(mode="json"), "torch": torch.__version__})[:16]
    rel = Path(BASE_DIR) / f"{key}.pt"
    path, meta_path = out_dir / rel, out_dir / BASE_DIR / f"{key}.json"
    if path.is_file() and meta_path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), {**runfile.read_json(meta_path), "path": rel.as_posix()}
    stats = train_base_model(model, data, **spec.base.model_dump(), device=spec.evaluator.device)
    model = model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta = {"source": "trained", "key": key, "path": rel.as_posix(), "hash": model_hash(model), **stats}
    runfile.write_json(meta_path, meta)
    return model, meta


def resolve_reference_point(spec: StudySpec, uncompressed: Mapping[str, float],
                            defaults: Mapping[str, float] | None = None) -> dict[str, float]:
    """The hypervolume reference point: the spec's entries, else the metrics table's defaults.

    Defaults (``Metric.reference``): ``accuracy`` -> ``constraints.min_accuracy`` if given,
    else 0 (the accuracy floor); ``size_bits`` / ``size_kb`` / ``bops`` -> the uncompressed
    model's value; ``compression_ratio`` -> 1; ``sparsity`` -> 0. ``defaults`` gives the
    task's own (an agent study: ``return`` -> the return of random actions, see
    :mod:`compsearch.studies.agent_run`). ``loss``, ``proxy`` and ``latency_ms`` have no default.

    Raises:
        SpecError: an objective without a default is missing from ``[reference_point]``.
    """
    out: dict[str, float] = {}
    for metric in (m for m, _ in spec.objective_pairs):
        default = get_metric(metric).reference
        if metric in spec.reference_point:
            out[metric] = float(spec.reference_point[metric])
        elif f"min_{metric}" in spec.constraints and get_metric(metric).direction == "maximize":
            out[metric] = float(spec.constraints[f"min_{metric}"])
        elif defaults is not None and metric in defaults:
            out[metric] = float(defaults[metric])
        elif default == UNCOMPRESSED:
            out[metric] = float(uncompressed[metric])
        elif isinstance(default, (int, float)):
            out[metric] = float(default)
        else:
            raise SpecError(f"reference_point.{metric}: objective {metric!r} has no default reference; give one")
    return out


def prepare(spec: StudySpec | str | Path | Mapping[str, Any], out_dir: str | Path, *,
            storage: str | None = None) -> Run:
    """Build the :class:`Run` of ``spec`` in ``out_dir`` (created): data, trained base model,
    space, reference point (and torch's CPU threads when the spec gives ``evaluator.threads``).

    Args:
        spec: a spec, a TOML path or a mapping.
        out_dir: the run folder.
        storage: the storage URL (default: the one run.json records, else the spec's
            choice inside the run folder; see :mod:`compsearch.studies.storage`).

    Raises:
        SpecError: invalid spec.
    """
    from compsearch.evaluators.datasets import load_dataset
    from compsearch.spaces import get_space
    from compsearch.studies.latency_objective import evaluator_factory

    spec = load_spec(spec)
    import_plugins(spec.plugins, where="plugins")  # a spec read from run.json (stored) has not imported them
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if spec.evaluator.threads is not None:
        torch.set_num_threads(spec.evaluator.threads)
    data: Any = None
    if spec.agent is not None:  # the policy task: the agent's acting network on its environment
        from compsearch.studies.agent_run import prepare_agent

        model, source, base_info, defaults, scales = prepare_agent(spec, out)
    else:
        data = load_dataset(spec.data.name, seed=spec.data.seed, **spec.data.options)
        model, base_info = base_model(spec, data, out)
        source, defaults, scales = data, {}, {}
    url = storage or runfile.resolve_storage(out, spec, None, several_processes=False)

    # a LatencyEvaluator when latency_ms is an objective or a constraint (compsearch.studies.latency_objective)
    cache = RunCache(evaluator_factory(model, source, spec, out), url, out)
    ev = cache.evaluator(spec.seeds[0])
    space = get_space(spec.space.name, ev.units, model=ev.model, example_input=ev.task.example_input(),
                      **spec.space.space_kwargs())
    return Run(spec=spec, out_dir=out, data=data, model=model, base_info=base_info, space=space,
               reference_point=resolve_reference_point(spec, ev.cost({}), defaults), storage_url=url,
               run_id=runfile.run_id(out), cache=cache, scale_overrides=scales)


__all__ = ["BASE_DIR", "Run", "RunCache", "base_model", "build_model", "prepare", "resolve_reference_point"]
