"""Rename a strategy's studies in a run folder (``compsearch rename RUN OLD=NEW``).

A registered strategy can change what it runs (a new default part, say) while its old form stays
registered under another name. A run folder whose ``<old>-s<seed>`` studies were made by the old
form then says the wrong thing, and resuming it would continue them with the new parts. Renaming
moves each of those studies to ``<new>-s<seed>``:

* every study ``<old>-s<seed>`` of the folder's run is copied within its storage
  (``optuna.copy_study``: all trials, in their order and numbers) to ``<new>-s<seed>``, its
  ``strategy`` attribute set to ``<new>`` and, last, a marker naming the old study; only then is
  the old study deleted. An interrupted rename leaves both: run it again, and a target carrying
  the marker is kept (the old study deleted), while a target without it (a copy cut short) is
  reported with the fix;
* ``strategy_state/<old>-s<seed>.pt`` is renamed;
* run.json: ``spec.strategies``, ``spec.strategy_options`` and ``trials`` use the new names, and
  ``sessions`` gets a ``"renamed"`` entry. Written last, atomically.

Several renames apply together, in an order where no target is still in use
(``hirl=hirl-full,hirl-new=hirl`` first moves ``hirl`` away, then renames ``hirl-new`` to
``hirl``). A target that names a strategy the run holds and that is not renamed away, or renames that form a cycle
(``a=b,b=a``), raise :class:`~compsearch.errors.ConfigError`. Nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compsearch.errors import ConfigError
from compsearch.studies import runfile
from compsearch.studies.merge import STATE_DIR, _read_run_folder, _storage_url, _studies
from compsearch.studies.results import parse_study_name, quiet_optuna, study_name
from compsearch.studies.storage import open_storage

RENAMED_ATTR = "compsearch:renamed_from"


def parse_renames(text: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}``.

    Raises:
        ConfigError: an item without one ``=``, an empty name, or a name given twice.
    """
    out: dict[str, str] = {}
    for item in (s.strip() for s in text.split(",")):
        old, sep, new = (s.strip() for s in item.partition("="))
        if not sep or not old or not new or "=" in new:
            raise ConfigError(f"RENAMES item {item!r} is not OLD=NEW; write e.g. hirl=hirl-full (several: a=b,c=d)")
        if old in out:
            raise ConfigError(f"RENAMES names {old!r} twice; give each old name once")
        out[old] = new
    return out


def _order(renames: Mapping[str, str], held: set[str], foreign: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """The renames in an order where each target is free when its turn comes; ``foreign``: per
    rename target, its studies in the run that no earlier rename of this kind made.

    Raises:
        ConfigError: a target the run holds that is not renamed away, a target given twice, a
            rename onto itself, or a cycle.
    """
    for old, new in renames.items():
        if old == new:
            raise ConfigError(f"rename {old}={new} renames a strategy onto itself; leave it out")
        if new in held and new not in renames and foreign.get(new):
            raise ConfigError(f"rename {old}={new}: the run already holds studies of {new!r} ({', '.join(foreign[new])}); "
                              f"rename {new!r} away in the same call (e.g. {new}=<another name>) or pick another name. "
                              f"If they are copies an interrupted rename cut short, delete them "
                              f"(optuna.delete_study) and run the rename again")
    targets = list(renames.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ConfigError(f"renames give {twice} as the new name of several strategies; give each new name once")
    pending, order = dict(renames), []
    while pending:
        ready = [old for old, new in pending.items() if new not in pending]
        if not ready:
            raise ConfigError(f"renames {pending} form a cycle; rename through a third name in two calls")
        for old in ready:
            order.append((old, pending.pop(old)))
    return order


def rename_strategies(folder: str | Path, renames: Mapping[str, str]) -> dict[str, str]:
    """Rename the studies of strategies ``renames`` (old -> new) in run folder ``folder``
    (module docstring). Returns old study name -> new study name for every study moved.

    Raises:
        ConfigError: not a run folder, a strategy the run holds no study of, or renames that
            cannot apply (see :func:`_order`).
    """
    import optuna

    out_dir = Path(folder).expanduser().resolve()
    run = _read_run_folder(out_dir, "RUN")
    storage = open_storage(_storage_url(run, out_dir, "RUN", must_exist=True), out_dir=out_dir)
    studies = {name: key for name in _studies(storage) if (key := parse_study_name(name)) is not None}
    held = {strategy for strategy, _ in studies.values()}
    missing = [old for old in renames if old not in held]
    if missing:
        raise ConfigError(f"RENAMES {missing}: the run holds no study of them; it holds {sorted(held)}")
    old_of = {new: old for old, new in renames.items()}
    foreign = {new: [name for name, (strategy, seed) in sorted(studies.items()) if strategy == new
                     and optuna.load_study(study_name=name, storage=storage).user_attrs.get(RENAMED_ATTR) != study_name(old_of[new], seed)]
               for new in renames.values()}
    moved: dict[str, str] = {}
    for old, new in _order(renames, held, foreign):
        for name, (strategy, seed) in sorted(studies.items()):
            if strategy != old:
                continue
            target = study_name(new, seed)
            with quiet_optuna():
                if target not in _studies(storage):
                    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=target)
                    copy = optuna.load_study(study_name=target, storage=storage)
                    copy.set_user_attr("strategy", new)
                    copy.set_user_attr(RENAMED_ATTR, name)  # last: the copy is complete
                elif not _same_trials(storage, name, target):  # a marked copy of an interrupted rename must match
                    raise ConfigError(f"study {target!r} is marked as a copy of {name!r} but their trials differ; "
                                      f"nothing was deleted: compare them and delete the wrong one (optuna.delete_study)")
                optuna.delete_study(study_name=name, storage=storage)
            state = out_dir / STATE_DIR / f"{name}.pt"
            if state.is_file():
                state.replace(out_dir / STATE_DIR / f"{target}.pt")
            moved[name] = target
    _update_run_file(out_dir, renames, moved)
    return moved


def _same_trials(storage: Any, a: str, b: str) -> bool:
    import optuna

    def key(name: str) -> list[tuple[Any, ...]]:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        return [(t.number, t.state, t.values, t.params, t.user_attrs) for t in trials]

    return key(a) == key(b)


def _update_run_file(out_dir: Path, renames: Mapping[str, str], moved: Mapping[str, str]) -> None:
    run = runfile.read(out_dir)
    spec: dict[str, Any] = run["spec"]
    spec["strategies"] = [renames.get(s, s) for s in spec.get("strategies", [])]
    options = spec.get("strategy_options")
    if isinstance(options, dict):
        spec["strategy_options"] = {renames.get(k, k): v for k, v in options.items()}
    run["trials"] = {moved.get(k, k): v for k, v in (run.get("trials") or {}).items()}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run["sessions"] = [*run.get("sessions", []), {"start": now, "end": now, "status": "renamed", "renamed": dict(renames)}]
    runfile.write_json(out_dir / runfile.RUN_FILE, run)


__all__ = ["RENAMED_ATTR", "parse_renames", "rename_strategies"]
