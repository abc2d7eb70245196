"""The saved-state format of the hierarchy's learned parts, and loading it into another model.

:func:`hierarchy_state` returns a plain dict (tensors, lists and strings only, so
``torch.save`` / ``torch.load(weights_only=True)`` round-trip it without unpickling code)::

    {
      "format": "compsearch.rl.hierarchy/1",
      "kernel_features": [...],   # KERNEL_FEATURES: the columns the low level reads
      "block_features": [...],    # BLOCK_FEATURES: the columns the high level reads
      "heads": [[field, n_choices], ...],   # the low level's heads, in output order
      "blocks": [block names],    # the model the state was learned on
      "low": {"kind": "SharedPolicy" | "PerBlockPolicy", "params": {name: tensor}},
      "high": {"levels": [budget level values], "agents": [{name: tensor}, ...]},
    }

Everything a policy computes from the *features* transfers between models: the shared trunk,
the heads and the value of :class:`~compsearch.search.rl.ppo.SharedPolicy` (low level and each
high-level agent). What is indexed by one model's blocks (a policy's ``model_specific``
parameters: the block embeddings, every weight of a
:class:`~compsearch.search.rl.ppo.PerBlockPolicy`) is loaded only onto the same blocks
(same block names) and is otherwise left at its fresh initialization. A parameter whose shape
differs (other head choices, other feature columns) is left as it is too. The surrogate
ensemble is not saved: it reads one space's dimensions (``space.features``), so a warm-started
``hirl`` fits its own from the new model's trials (and proxy) as a cold one does.

**Files.** A run saves each learning strategy's state at the end of every study to
``<run>/strategy_state/<study>.pt`` (:func:`save_study_state`, called by the hosts);
``warm_start`` (a strategy option of ``hirl`` and ``n2n``) names such a run folder or file
(:func:`load_warm_start`). Files are written with ``torch.save`` and read with
``torch.load(weights_only=True)``: nothing but tensors and plain containers is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError
from compsearch.search.rl.ppo import load_transferable
from compsearch.search.rl.state import BLOCK_FEATURES, KERNEL_FEATURES

if TYPE_CHECKING:
    from compsearch.search.rl.hierarchy import Hierarchy

FORMAT = "compsearch.rl.hierarchy/1"


def hierarchy_state(h: Hierarchy) -> dict[str, Any]:
    """The learned state of ``h`` (format in the module docstring)."""
    return {
        "format": FORMAT,
        "kernel_features": list(KERNEL_FEATURES),
        "block_features": list(BLOCK_FEATURES),
        "heads": [[f, int(n)] for f, n in h.layout.heads],
        "blocks": list(h.layout.blocks),
        "low": {"kind": type(h.low.policy).__name__, "params": {k: v.clone() for k, v in h.low.policy.state_dict().items()}},
        "high": h.allocator.state_dict(),
    }


def check_state(state: Any, *, fmt: str, reader: str, columns: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``state`` has format ``fmt`` and, for every key of
    ``columns``, the same feature columns (``reader`` names the strategy in the message)."""
    got = state.get("format") if isinstance(state, dict) else type(state).__name__
    if got != fmt:
        raise ConfigError(f"saved state has format={got!r}; {reader} reads {fmt!r} (a state saved by another strategy?)")
    for key, want in columns.items():
        if list(state.get(key, ())) != list(want):
            raise ConfigError(f"saved {reader} state was learned on other {key} columns; it cannot warm-start this version")


def check_hierarchy_state(state: Any) -> None:
    """Raise :class:`ConfigError` unless ``state`` is a hierarchy state this version reads."""
    check_state(state, fmt=FORMAT, reader="hirl", columns={"kernel_features": KERNEL_FEATURES, "block_features": BLOCK_FEATURES})


def load_hierarchy_state(h: Hierarchy, state: dict[str, Any]) -> dict[str, list[str]]:
    """Load ``state`` into ``h`` (module docstring); returns the parameter names copied per part.

    Raises:
        ConfigError: ``state`` is not of this format, or was learned on other feature columns.
    """
    check_hierarchy_state(state)
    same = list(state["blocks"]) == list(h.layout.blocks)
    heads_match = [list(x) for x in state["heads"]] == [[f, int(n)] for f, n in h.layout.heads]
    low = state["low"]["params"] if state["low"]["kind"] == type(h.low.policy).__name__ else {}
    if not heads_match:  # other choices: keep only the trunk (the heads' rows would mean other things)
        low = {k: v for k, v in low.items() if k.startswith("trunk.")}
    out = {"low": load_transferable(h.low.policy, low, same_model=same), "high": []}
    agents = getattr(h.allocator, "agents", [])
    high = state.get("high") or {}
    if list(high.get("levels", [])) and len(high["levels"]) == len(getattr(h.allocator, "levels", [])):
        for agent, saved in zip(agents, high.get("agents", []), strict=False):
            out["high"] += load_transferable(agent.policy, saved, same_model=same)
    return out


# ---- files: the run folder's saved states and warm starts ------------------------------------
STATE_DIR = "strategy_state"
"""Folder of a run folder holding each study's learned state, ``<study>.pt``."""


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` a learned state (tensors, lists, strings and numbers only) to ``path``
    (parents created); written to a temporary file and renamed, so a reader never sees half a file."""
    import os

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def read_state(path: str | Path, *, key: str = "warm_start") -> dict[str, Any]:
    """A learned state saved by :func:`save_state`, read with ``torch.load(weights_only=True)``
    (nothing is unpickled but tensors and plain containers).

    Raises:
        ConfigError: the file is missing or is not a saved state (the message names ``key``).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r}: no such file")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ConfigError(f"{key}={str(path)!r} is not a saved strategy state ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise ConfigError(f"{key}={str(path)!r} is not a saved strategy state (no 'format' entry)")
    return state


def state_file(source: str | Path, *, strategy: str, seed: int | None, key: str) -> Path:
    """The state file a warm start reads: ``source`` itself when it is a file; in a run folder
    (or its ``strategy_state`` folder), ``<strategy>-s<seed>.pt``, else the lowest seed's
    ``<strategy>-s<n>.pt``.

    Raises:
        ConfigError: nothing to read (the message names ``key``, the folder and what it holds).
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"{key}={str(source)!r}: no such run folder or state file; give a finished run's folder "
                          f"(it holds {STATE_DIR}/<study>.pt) or one of those files")
    folder = path / STATE_DIR if (path / STATE_DIR).is_dir() else path
    if seed is not None and (folder / f"{strategy}-s{seed}.pt").is_file():
        return folder / f"{strategy}-s{seed}.pt"
    found = sorted(folder.glob(f"{strategy}-s*.pt"), key=lambda p: (len(p.stem), p.stem))
    if not found:
        have = sorted(p.name for p in folder.glob("*.pt"))
        raise ConfigError(f"{key}={str(source)!r}: {folder} holds no saved state of strategy {strategy!r} "
                          f"(files: {have[:6]}); run {strategy!r} there first or name a state file")
    return found[0]


def save_study_state(study: Any, folder: str | Path) -> Path | None:
    """Save the learned state of ``study``'s sampler, ``sampler.learned_state(study)`` (after
    learning from every finished trial where the strategy learns per trial), to
    ``<folder>/strategy_state/<study name>.pt``; None when the sampler has no learned state
    (not a learning strategy, or nothing learned yet)."""
    get = getattr(study.sampler, "learned_state", None)
    if get is None:
        return None
    state = get(study)
    if not state:
        return None
    return save_state(state, Path(folder) / STATE_DIR / f"{study.study_name}.pt")


def load_warm_start(source: Any, *, strategy: str, seed: int | None, check: Any) -> dict[str, Any] | None:
    """The saved state that ``strategy_options.<strategy>.warm_start = source`` names (a run
    folder or a state file; None when not given), checked by ``check(state)``.

    Raises:
        ConfigError: not a path, nothing to read, not a saved state, or one ``check`` refuses;
            the message names the key ``strategy_options.<strategy>.warm_start``.
    """
    if source is None:
        return None
    key = f"strategy_options.{strategy}.warm_start"
    if not isinstance(source, (str, Path)) or not str(source):
        raise ConfigError(f"{key}={source!r} must be a run folder or a state file path, e.g. 'runs/small'")
    state = read_state(state_file(source, strategy=strategy, seed=seed, key=key), key=key)
    try:
        check(state)
    except ConfigError as e:
        raise ConfigError(f"{key}={str(source)!r}: {e}") from None
    return state
