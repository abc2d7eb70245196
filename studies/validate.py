"""``compsearch check``: reject every meaningless value of a run before any work is done.

:func:`check_run` is what ``compsearch check SPEC`` runs, and what ``compsearch run`` runs
first. Nothing is trained, downloaded or written; every error is a
:class:`~compsearch.errors.SpecError` / :class:`~compsearch.errors.ConfigError` naming the
key path (or command-line flag), the value, what is allowed and the fix. In order:

1. the spec's values (:func:`~compsearch.studies.spec.load_spec`): types, unknown keys,
   finite numbers and ranges, upper bounds of budgets (``allow_large`` lifts them),
   reference points inside each metric's domain, constraint bounds, registered names;
2. the machine: ``evaluator.device`` exists here (``cuda:7`` on a CPU-only machine is
   refused), ``evaluator.threads`` at most the CPU count (unless ``allow_large``);
3. where results go: the run folder is (or can be made) a writable folder; ``--storage``
   is a usable URL (folder writable, database driver installed);
4. the model: a checkpoint is a real state dict (loaded with ``weights_only=True``, so it
   cannot run code) whose keys and shapes fit the model; for an ``[agent]`` study
   (:func:`compsearch.studies.agent_run.check_agent`): the environment id exists, the
   algorithm can act in its action space, ``agent.hyper`` names arguments of the SB3
   class, an ``agent.path`` file is an SB3 agent (read without unpickling) that fits the
   recipe -- nothing is trained;
5. the space and strategies: the model is built with random weights, its units
   discovered and the space built with the spec's choices (e.g. ``w_bits = [3, 5]`` on a
   space that does not allow them), each strategy built with its options -- all cheap,
   no training.

Data-dependent checks (4, 5) need the data's sample shape and class count: the data is
loaded (the bundled sets are small); a dataset that would have to be downloaded first is
not downloaded, and those checks then wait for the run.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from compsearch.errors import CompsearchError, ConfigError, DataError, SpecError
from compsearch.studies.spec import StudySpec, load_spec
from compsearch.studies.storage import check_url, writable_folder


def _error(path: str, message: str) -> SpecError:
    return SpecError(f"{path}: {message}")


def check_device(device: str) -> None:
    """``evaluator.device`` must name a device this machine has."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise _error("evaluator.device", f"{device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:<i>'") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise _error("evaluator.device", f"{device!r}: this machine has no CUDA device; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise _error("evaluator.device", f"{device!r}: this machine has {count} CUDA device(s), "
                                             f"cuda:0..cuda:{count - 1}; choose one of them or 'auto'")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise _error("evaluator.device", f"{device!r}: MPS is not available here; use 'cpu' or 'auto'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise _error("evaluator.device", f"{device!r}: compsearch runs on 'cpu', 'cuda[:i]' or 'mps'")


def check_threads(spec: StudySpec) -> None:
    threads, cpus = spec.evaluator.threads, os.cpu_count() or 1
    if threads is not None and threads > cpus and not spec.allow_large:
        raise _error("evaluator.threads", f"{threads} is more than the {cpus} CPU(s) of this machine; give at most "
                                          f"{cpus} (or set allow_large = true)")


def check_out_dir(out: str | Path) -> Path:
    """The run folder must be a writable folder, or creatable in a writable one (nothing is created)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a file; give a folder (new or an earlier run's)")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not writable_folder(existing):
        raise ConfigError(f"--out {str(path)!r}: cannot create files in {str(existing)!r}; choose a writable folder")
    return path


def check_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """``model.checkpoint`` must be a state dict: a mapping of names to tensors, loadable with
    ``weights_only=True`` (which never runs code from the file)."""
    if not Path(path).is_file():
        raise _error("model.checkpoint", f"{path!r} does not exist; give the path of a saved state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error("model.checkpoint", f"{path!r} is not a state-dict file that loads with weights_only=True "
                                         f"({type(e).__name__}: {first[:200]}); save one with "
                                         f"torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise _error("model.checkpoint", f"{path!r} holds a {type(state).__name__}, not a state dict (names -> "
                                         f"tensors); save one with torch.save(model.state_dict(), path)")
    return state


@lru_cache(maxsize=8)
def _data_shape(name: str, seed: int, options: str) -> tuple[tuple[int, ...], int] | None:
    """``(sample shape, num_classes)`` of a dataset, or None when it would need a download."""
    from compsearch.evaluators.datasets import load_dataset

    opts = json.loads(options)
    wants_download = bool(opts.get("download"))
    if wants_download:
        opts["download"] = False
    try:
        data = load_dataset(name, seed=seed, **opts)
    except DataError:
        if wants_download:
            return None
        raise
    return tuple(data.input_shape), int(data.num_classes)


def check_model_and_space(spec: StudySpec) -> None:
    """Build the model (random init; the checkpoint loaded) or the agent's acting network,
    discover its units, build the space with the spec's choices and every strategy with its
    options. No training."""
    if spec.agent is not None:
        from compsearch.studies.agent_run import check_agent

        check_space_and_strategies(spec, *check_agent(spec))
        return
    found = _model_and_example(spec)
    if found is not None:
        check_space_and_strategies(spec, *found)


def _model_and_example(spec: StudySpec) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """The spec's classifier (random init, or the checkpoint's weights) and a ``2 x sample``
    zero input; None when the data would have to be downloaded first."""
    from compsearch.evaluators.models import build_model

    try:
        found = _data_shape(spec.data.name, spec.data.seed, json.dumps(spec.data.options, sort_keys=True))
    except TypeError as e:
        raise _error("data.options", str(e)) from None
    except CompsearchError as e:
        raise _error("data", str(e)) from None
    if found is None:
        return None
    shape, num_classes = found
    table = spec.require_model()
    if table.checkpoint is not None:
        check_checkpoint(table.checkpoint)
    kwargs = dict(table.kwargs)
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("in_chans", shape[0] if len(shape) > 1 else 1)
    try:
        with torch.random.fork_rng(devices=[]):
            model = build_model(table.name, checkpoint=table.checkpoint, **kwargs)
    except (CompsearchError, TypeError, ValueError, RuntimeError) as e:
        where = "model.checkpoint" if table.checkpoint and "checkpoint" in str(e) else "model.kwargs"
        raise _error(where, f"{type(e).__name__}: {e}") from None
    return model, torch.zeros(2, *shape)


def check_space_and_strategies(spec: StudySpec, model: torch.nn.Module, example: torch.Tensor) -> None:
    """Discover ``model``'s units on ``example``, build the space with the spec's choices and
    every strategy with its options."""
    from compsearch.search.registry import get_strategy
    from compsearch.spaces import discover_units, get_space

    try:
        units = discover_units(model, example, blocks=spec.space.block_override())
    except (CompsearchError, RuntimeError, ValueError, TypeError) as e:
        if spec.agent is not None:
            raise _error("agent", f"the acting network does not run on the environment's observations of shape "
                                  f"{tuple(example.shape[1:])} ({type(e).__name__}: {str(e)[:200]}); fix agent.features") from None
        raise _error("model", f"model {spec.require_model().name!r} does not run on samples of shape {tuple(example.shape[1:])} "
                              f"({type(e).__name__}: {str(e)[:200]}); fix model.kwargs or data.options") from None
    try:
        space = get_space(spec.space.name, units, model=model, example_input=example, **spec.space.space_kwargs())
    except (CompsearchError, TypeError, ValueError) as e:
        raise _error("space", str(e)) from None
    for name in dict.fromkeys([*spec.strategies, *spec.strategy_options]):  # options of an unlisted strategy too
        try:
            get_strategy(name, space=space, seed=0, objectives=spec.objective_pairs, constraints=spec.constraints,
                         n_trials=spec.trials, **spec.strategy_options.get(name, {}))
        except (TypeError, ValueError) as e:  # an unknown option, or a value the sampler refuses
            raise _error(f"strategy_options.{name}", f"{type(e).__name__}: {e}") from None
        except Exception:  # noqa: BLE001 - a strategy that needs the evaluator is checked when the run builds it
            continue


def check_run(spec: Any, out_dir: str | Path | None = None, *, storage: str | None = None, host: Any = None) -> StudySpec:
    """Everything :mod:`compsearch.studies.validate` checks; returns the validated spec.

    Args:
        spec: a spec, a TOML path or a mapping.
        out_dir: the run folder (None = not checked).
        storage: the command line's ``--storage`` (None = the run folder's own).
        host: the host that will run it (its number of processes decides the default storage).

    Raises:
        SpecError, ConfigError: the first meaningless value, naming its key path or flag.
    """
    spec = load_spec(spec)
    check_device(spec.evaluator.device)
    check_threads(spec)
    if out_dir is not None:
        check_out_dir(out_dir)
    if storage is not None:
        check_url(storage)
    check_model_and_space(spec)
    return spec


__all__ = ["check_checkpoint", "check_device", "check_model_and_space", "check_out_dir", "check_run", "check_threads"]
