"""Merge run folders: bring the studies of seeds run in another process or machine back into one run folder.

Split a study's seeds over processes or machines by running the same spec into several run
folders (``compsearch run SPEC --out a --seeds 0,1,2`` here, ``--out b --seeds 3,4`` there),
then ``compsearch merge b a`` (Python: :func:`merge_run`) copies ``b``'s studies into
``a``, and ``a`` reports every seed as if one process had run them all.

**Only runs of the same study merge.** Both folders must hold a run.json, and these keys must be
equal: ``base.hash`` (the trained base model), ``reference_point``, ``objectives`` and the whole
``spec`` apart from ``seeds``, ``strategies`` and ``storage`` (which seeds and strategies a
process ran, and where it kept its studies, are bookkeeping; ``spec.trials``, the budget, must
be equal). A difference raises :class:`~compsearch.errors.ConfigError` naming the first
differing key path, e.g. ``run.json base.hash``, and both values.

**What is copied** (into DST, nothing is removed from SRC; nothing is unpickled):

* every study ``<strategy>-s<seed>`` of SRC's run (``optuna.copy_study``, all its trials, in
  their order and numbers), stamped with DST's run id (study user attr
  :data:`~compsearch.studies.runfile.RUN_ATTR`), unless DST already holds that study with a
  counted trial (budget rule: :func:`compsearch.record.counts_toward_budget`): DST's study is
  kept and SRC's is skipped. A DST study without a counted trial (the stub of an interrupted
  start) is replaced, and so is one a merge interrupted half-way left behind (it still carries
  SRC's stamp: the stamp is set last). A SRC study without a counted trial is skipped.
* ``strategy_state/<study>.pt`` (the learned state of an RL strategy) of each copied study,
  where DST has none;
* the entries of ``baseline.json`` (per seed) and ``test_eval.json`` (per policy and seed)
  DST lacks. On a key both hold, DST's entry is kept: both measure the same base model under
  the same seed, and DST's studies were reported against it.
* run.json: the copied seeds and strategies (and ``methods``) are appended to DST's ``spec``
  (DST's order first), ``trials`` records each merged study's trial count, and ``sessions``
  gets a ``"merged"`` entry naming SRC. run.json is written last, atomically.

Merging the same SRC again copies nothing. A merge is not safe while a process runs on DST.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError
from compsearch.record import counts_toward_budget
from compsearch.studies import runfile
from compsearch.studies.results import parse_study_name, quiet_optuna
from compsearch.studies.storage import file_of, open_storage, redact, url_from_record

if TYPE_CHECKING:
    import optuna

#: ``spec`` keys that may differ between merged runs: which seeds and strategies a process ran,
#: and where it kept its studies.
SPEC_BOOKKEEPING = ("seeds", "strategies", "storage")
STATE_DIR = "strategy_state"  # = compsearch.search.rl.persist.STATE_DIR (not imported: it pulls in torch)
JSON_CACHES = ("baseline.json", "test_eval.json")
FIX = "merge only runs of the same spec and base model"
_ABSENT = object()  # a key one run.json lacks


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_run` did.

    Args:
        copied: study name -> its counted trials, for each study copied into DST.
        skipped_present: studies DST already held with a counted trial (DST's kept).
        replaced_stubs: DST studies without a counted trial, or left half-copied by an
            interrupted merge, that SRC's copy replaced.
        skipped_empty: SRC studies without a counted trial (not copied).
        copied_states: ``strategy_state`` files copied (file names).
        seeds_added, strategies_added: appended to DST's ``spec.seeds`` / ``spec.strategies``
            (or ``methods``).
        cache_entries: file name -> number of entries added (``baseline.json``, ``test_eval.json``).
    """

    copied: Mapping[str, int] = field(default_factory=dict)
    skipped_present: tuple[str, ...] = ()
    replaced_stubs: tuple[str, ...] = ()
    skipped_empty: tuple[str, ...] = ()
    copied_states: tuple[str, ...] = ()
    seeds_added: tuple[int, ...] = ()
    strategies_added: tuple[str, ...] = ()
    cache_entries: Mapping[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What was done, one line per kind of action (for the command line and logs)."""
        out = [f"copied {len(self.copied)} studies" + (": " + ", ".join(f"{n} ({c} counted trials)"
                                                                        for n, c in self.copied.items())
                                                       if self.copied else "")]
        for label, names in (("replaced stubs (no counted trial, or a half-copied study)", self.replaced_stubs),
                             ("kept DST's (it already holds counted trials)", self.skipped_present),
                             ("skipped (no counted trial in SRC)", self.skipped_empty),
                             ("copied learned states", self.copied_states),
                             ("added seeds", self.seeds_added), ("added strategies", self.strategies_added)):
            if names:
                out.append(f"{label}: {', '.join(map(str, names))}")
        added = {k: n for k, n in self.cache_entries.items() if n}
        if added:
            out.append("added entries: " + ", ".join(f"{k} {n}" for k, n in added.items()))
        return out


# ---- checks ------------------------------------------------------------------------------------


def _read_run_folder(folder: Path, role: str) -> dict[str, Any]:
    """run.json of ``folder`` (``role``: ``"SRC"`` or ``"DST"``, for messages).

    Raises:
        ConfigError: no such folder, or no run.json with a spec in it.
    """
    fix = "give a folder that `compsearch run` wrote" + (" (to start DST from SRC, copy SRC's folder)" if role == "DST" else "")
    if not folder.is_dir():
        raise ConfigError(f"{role} {str(folder)!r} does not exist or is not a folder; {fix}")
    record = runfile.read(folder)
    if "spec" not in record or "run_id" not in record:
        raise ConfigError(f"{role} {str(folder)!r} is not a run folder (no {runfile.RUN_FILE} with a spec and run_id); {fix}")
    return record


def _short(value: Any, limit: int = 40) -> str:
    """``value`` as text (a string quoted), cut to ``limit`` characters."""
    text = "(absent)" if value is _ABSENT else repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first key path (dotted, below ``path``) where mappings ``a`` and ``b`` differ, with both
    values (``_ABSENT`` for a missing key); lists and scalars are compared whole. None if equal."""
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return None if a == b else (path, a, b)
    for key in [*a, *(k for k in b if k not in a)]:
        where = f"{path}.{key}" if path else str(key)
        if key not in a or key not in b:
            return where, a.get(key, _ABSENT), b.get(key, _ABSENT)
        found = first_difference(a[key], b[key], where)
        if found is not None:
            return found
    return None


def _comparable(run: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of run.json two merged runs must share, in the order they are checked."""
    spec = {k: v for k, v in run["spec"].items() if k not in SPEC_BOOKKEEPING}
    return {"base": {"hash": (run.get("base") or {}).get("hash", _ABSENT)},
            "reference_point": run.get("reference_point", _ABSENT),
            "objectives": run.get("objectives", _ABSENT), "spec": spec}


def check_same_study(src: Mapping[str, Any], dst: Mapping[str, Any], src_dir: Path, dst_dir: Path) -> None:
    """Refuse to merge runs of different studies (see the module docstring).

    Raises:
        ConfigError: naming the differing run.json key path, both values and the fix.
    """
    found = first_difference(_comparable(src), _comparable(dst), "")
    if found is not None:
        where, a, b = found
        raise ConfigError(f"cannot merge {str(src_dir)!r} into {str(dst_dir)!r}: run.json {where} differs "
                          f"(SRC {_short(a)}, DST {_short(b)}); {FIX}")


def _storage_url(run: Mapping[str, Any], folder: Path, role: str, *, must_exist: bool) -> str:
    url = url_from_record(str(run.get("storage", "sqlite:studies.db")), folder)
    path = file_of(url, folder)
    if must_exist and path is not None and not path.is_file():
        raise ConfigError(f"{role} {str(folder)!r}: its storage {redact(url)!r} (run.json storage) does not exist; "
                          f"copy the whole run folder, studies file included")
    return url


# ---- copying ------------------------------------------------------------------------------------


def _counted(storage: optuna.storages.BaseStorage, name: str) -> tuple[int, Any]:
    """(counted trials, run stamp) of study ``name``."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False)), study.user_attrs.get(runfile.RUN_ATTR)


def _studies(storage: optuna.storages.BaseStorage) -> set[str]:
    """The names of every study in ``storage`` (no trial is read)."""
    import optuna

    return set(optuna.get_all_study_names(storage))


def _select(names: Sequence[str], src: Mapping[str, Any], strategies: Sequence[str] | None,
            storage: optuna.storages.BaseStorage) -> list[str]:
    """SRC's run studies (``<strategy>-s<seed>``, not stamped by another run) of ``strategies``.

    Raises:
        ConfigError: a strategy in ``strategies`` SRC holds no study of.
    """
    import optuna

    own: dict[str, str] = {}  # study name -> strategy
    for name in sorted(names):
        key = parse_study_name(name)
        stamp = optuna.load_study(study_name=name, storage=storage).user_attrs.get(runfile.RUN_ATTR) if key else None
        if key is not None and stamp in (None, src["run_id"]):
            own[name] = key[0]
    if strategies is None:
        return list(own)
    missing = [s for s in strategies if s not in own.values()]
    if missing:
        raise ConfigError(f"strategies={missing}: SRC holds no study of them; it holds {sorted(set(own.values()))}. "
                          f"Name strategies SRC ran, or leave the option out to merge every study")
    return [n for n, s in own.items() if s in strategies]


def _copy_study(name: str, src: optuna.storages.BaseStorage, dst: optuna.storages.BaseStorage, run_id: str) -> None:
    import optuna

    with quiet_optuna():  # no "A new study created" line
        optuna.copy_study(from_study_name=name, from_storage=src, to_storage=dst, to_study_name=name)
    optuna.load_study(study_name=name, storage=dst).set_user_attr(runfile.RUN_ATTR, run_id)  # last: the merge's commit


def _merge_json(src_dir: Path, dst_dir: Path, name: str) -> int:
    """Add the entries of ``src_dir/name`` that ``dst_dir/name`` lacks (DST wins); returns how many."""
    src, dst = runfile.read_json(src_dir / name), runfile.read_json(dst_dir / name)
    new = {k: v for k, v in src.items() if k not in dst}
    if new:
        runfile.write_json(dst_dir / name, dict(sorted({**dst, **new}.items())))
    return len(new)


def _copy_states(src_dir: Path, dst_dir: Path, names: Sequence[str]) -> tuple[str, ...]:
    """Copy ``strategy_state/<name>.pt`` of each study in ``names`` that DST lacks (bytes only)."""
    copied = []
    for name in names:
        source, target = src_dir / STATE_DIR / f"{name}.pt", dst_dir / STATE_DIR / f"{name}.pt"
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
            copied.append(target.name)
    return tuple(copied)


def _appended(mine: Sequence[Any], theirs: Sequence[Any]) -> list[Any]:
    return [x for x in dict.fromkeys(theirs) if x not in mine]


# ---- the merge ---------------------------------------------------------------------------------


def merge_run(src: str | Path, dst: str | Path, *, strategies: Sequence[str] | None = None) -> MergeResult:
    """Copy the studies of run folder ``src`` into run folder ``dst`` (see the module docstring).

    Args:
        src: the run folder to bring in (read only).
        dst: the run folder to merge into.
        strategies: merge only the studies of these strategies (or methods); default: every
            study of SRC's run.

    Returns:
        What was copied, kept and replaced.

    Raises:
        ConfigError: a missing or non-run folder, runs of different studies (naming the run.json
            key path), both folders on one storage, or a strategy SRC holds no study of.
    """
    src_dir, dst_dir = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    src_run, dst_run = _read_run_folder(src_dir, "SRC"), _read_run_folder(dst_dir, "DST")
    if src_dir == dst_dir:
        raise ConfigError(f"SRC and DST are the same folder {str(dst_dir)!r}; give the run folder to bring in as SRC")
    check_same_study(src_run, dst_run, src_dir, dst_dir)
    src_url = _storage_url(src_run, src_dir, "SRC", must_exist=True)
    dst_url = _storage_url(dst_run, dst_dir, "DST", must_exist=False)
    if src_url == dst_url:
        raise ConfigError(f"SRC and DST keep their studies in one storage ({redact(dst_url)}): there is nothing to copy")
    src_storage, dst_storage = open_storage(src_url, out_dir=src_dir), open_storage(dst_url, out_dir=dst_dir)
    names = _select(sorted(_studies(src_storage)), src_run, strategies, src_storage)
    result = _merge_studies(names, src_storage, dst_storage, src_id=src_run["run_id"], dst_id=dst_run["run_id"])
    states = _copy_states(src_dir, dst_dir, list(result.copied))
    caches = {name: _merge_json(src_dir, dst_dir, name) for name in JSON_CACHES}
    counts = {name: runfile.n_trials(dst_storage, name) for name in [*result.copied, *result.skipped_present]}
    seeds, added = _update_run_file(dst_dir, src_dir, src_run, result, counts)
    return replace(result, copied_states=states, seeds_added=tuple(seeds), strategies_added=tuple(added),
                   cache_entries=caches)


def _merge_studies(names: Sequence[str], src: optuna.storages.BaseStorage, dst: optuna.storages.BaseStorage, *,
                   src_id: str, dst_id: str) -> MergeResult:
    """Copy each SRC study of ``names`` with a counted trial into DST, unless DST holds it with
    one (and not half-copied: still stamped ``src_id``); the studies part of the result."""
    import optuna

    present = _studies(dst)
    copied: dict[str, int] = {}
    kept, replaced, empty = [], [], []
    for name in names:
        count, _ = _counted(src, name)
        if count == 0:
            empty.append(name)
            continue
        if name in present:
            held, stamp = _counted(dst, name)
            if held and not stamp == src_id != dst_id:
                kept.append(name)
                continue
            optuna.delete_study(study_name=name, storage=dst)
            replaced.append(name)
        _copy_study(name, src, dst, dst_id)
        copied[name] = count
    return MergeResult(copied=copied, skipped_present=tuple(kept), replaced_stubs=tuple(replaced),
                       skipped_empty=tuple(empty))


def _update_run_file(dst_dir: Path, src_dir: Path, src_run: Mapping[str, Any], result: MergeResult,
                     counts: Mapping[str, int]) -> tuple[list[int], list[str]]:
    """Record the merged studies (copied and kept; ``counts``: trials per study in DST now) in
    DST's run.json, read again now; written atomically, with a ``"merged"`` session, unless
    nothing changed. Returns the seeds and strategies (or methods) appended to its spec."""
    run = runfile.read(dst_dir)
    before = copy.deepcopy(run)
    merged = [*result.copied, *result.skipped_present]
    keys = [k for k in map(parse_study_name, merged) if k is not None]
    spec, src_methods = run["spec"], src_run.get("methods", [])
    seeds = _appended(spec["seeds"], sorted(seed for _, seed in keys))
    strategies = _appended(spec["strategies"], [s for s, _ in keys if s not in src_methods])
    methods = _appended(run.get("methods", []), [s for s, _ in keys if s in src_methods])
    spec["seeds"], spec["strategies"] = [*spec["seeds"], *seeds], [*spec["strategies"], *strategies]
    if methods:
        run["methods"] = sorted({*run.get("methods", []), *methods})
    trials = dict(run.get("trials", {}) or {})
    run["trials"] = {**trials, **{n: max(int(trials.get(n, 0)), int(counts.get(n, 0))) for n in merged}}
    if run != before or result.copied:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run["sessions"] = [*run.get("sessions", []), {"start": now, "end": now, "status": "merged", "source": str(src_dir),
                                                      "source_run_id": src_run["run_id"], "copied": list(result.copied)}]
        runfile.write_json(dst_dir / runfile.RUN_FILE, run)
    return seeds, [*strategies, *methods]


__all__ = ["MergeResult", "SPEC_BOOKKEEPING", "check_same_study", "first_difference", "merge_run"]
