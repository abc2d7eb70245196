"""``<run folder>/run.json``: what a run was, and the guards that keep a resume honest.

run.json holds the effective spec, the storage *reference* (relative to the run folder, or
a URL without its password: :mod:`compsearch.studies.storage`), the reference point,
versions, every session's start/end/status, the run folder's identity (``run_id``,
stamped on every study the run creates as study user attr ``compsearch:run``) and how
many trials each study held when last seen (``trials``). Paths in it are relative to
the run folder, so a moved folder resumes in place.

Before a resume touches the storage, :func:`check_studies` refuses a storage that was
emptied (a study missing, or fewer trials than recorded) or replaced (a study stamped by
another run), instead of silently running the whole budget again.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError, SpecError
from compsearch.studies.storage import (
    check_url,
    file_of,
    in_folder_url,
    open_storage,
    record_of,
    redact,
    url_from_record,
)

if TYPE_CHECKING:
    import optuna

    from compsearch.studies.spec import StudySpec

RUN_FILE = "run.json"
RUN_ATTR = "compsearch:run"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` ({} when there is none)."""
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str))
    tmp.replace(path)


def read(out_dir: str | Path) -> dict[str, Any]:
    """run.json of ``out_dir`` ({} for a new folder)."""
    return read_json(Path(out_dir) / RUN_FILE)


def update(out_dir: str | Path, **entries: Any) -> dict[str, Any]:
    """Merge ``entries`` into run.json (keeping every other key); returns the new content."""
    path = Path(out_dir) / RUN_FILE
    record = read_json(path)
    record.update(entries)
    write_json(path, record)
    return record


def run_id(out_dir: str | Path) -> str:
    """The run folder's identity (created in run.json on first use)."""
    record = read(out_dir)
    if not record.get("run_id"):
        record = update(out_dir, run_id=uuid.uuid4().hex)
    return str(record["run_id"])


def check_resume(out_dir: str | Path, spec: StudySpec) -> None:
    """Refuse to resume a run folder whose results come from an incomparable spec.

    Raises:
        SpecError: naming the differing sections.
    """
    from compsearch.studies.spec import load_spec

    previous = read(out_dir).get("spec")
    if previous is None:
        return
    before = load_spec(previous, stored=True).comparison_key()
    changed = sorted(k for k, v in spec.comparison_key().items() if before.get(k) != v)
    if changed:
        raise SpecError(
            f"{Path(out_dir) / RUN_FILE}: the run folder holds results of a spec with different {changed}; "
            f"resuming would mix incomparable trials. Use another --out folder or restore the spec"
        )


def resolve_storage(out_dir: str | Path, spec: StudySpec, given: str | None, *, several_processes: bool) -> str:
    """The storage URL of a run: ``given`` (the command line's ``--storage``), else the one
    run.json records, else the spec's choice inside the run folder.

    Raises:
        ConfigError: ``given`` is unusable, or run.json's storage needs a password.
    """
    if given is not None:
        return check_url(given)
    recorded = read(out_dir).get("storage")
    if recorded:
        return url_from_record(str(recorded), out_dir)
    return in_folder_url(out_dir, spec.storage, several_processes=several_processes)


def storage_record(url: str, out_dir: str | Path) -> str:
    """What run.json stores for ``url`` (see :func:`compsearch.studies.storage.record_of`)."""
    return record_of(url, out_dir)


def _refuse(url: str, what: str) -> ConfigError:
    return ConfigError(
        f"storage {redact(url)!r} {what}: it was emptied or replaced since the last session. Nothing was run; "
        f"restore the storage (or pass the right one with --storage), or start a new run folder with --out"
    )


def check_studies(out_dir: str | Path, url: str, names: Sequence[str] = ()) -> None:
    """Refuse a storage that lost trials run.json recorded, or holds another run's studies.

    Checks, for every study run.json lists under ``trials``: the study exists, holds at
    least the recorded number of trials, and carries this run's ``compsearch:run`` stamp
    (when it has one); and that none of the studies ``names`` this run is about to use
    belongs to another run. A file storage in the run folder that is missing altogether is
    refused before it would be created empty.

    Raises:
        ConfigError: naming the study, what was found and what to do.
    """
    import optuna

    record = read(out_dir)
    counts: Mapping[str, int] = record.get("trials", {}) or {}
    path = file_of(url, out_dir)
    if path is not None and not path.exists():
        if any(int(n) > 0 for n in counts.values()):
            raise _refuse(url, f"does not exist (run.json recorded {sum(map(int, counts.values()))} trials in it)")
        return  # a new file storage: nothing to compare
    storage = open_storage(url, out_dir=out_dir)
    present = set(optuna.get_all_study_names(storage))
    for name in sorted(set(names) & present - set(counts)):
        stamp = optuna.load_study(study_name=name, storage=storage).user_attrs.get(RUN_ATTR)
        if stamp is not None and stamp != record.get("run_id"):
            raise ConfigError(f"storage {redact(url)!r} already holds a study {name!r} of another run ({stamp}); "
                              f"nothing was run. Give this run its own storage (--storage) or resume that run's folder")
    for name, recorded in sorted(counts.items()):
        if int(recorded) == 0:
            continue
        if name not in present:
            raise _refuse(url, f"has no study {name!r} (run.json recorded {recorded} trials)")
        study = optuna.load_study(study_name=name, storage=storage)
        stamp = study.user_attrs.get(RUN_ATTR)
        if stamp is not None and stamp != record.get("run_id"):
            raise _refuse(url, f"holds a study {name!r} of another run ({stamp}, this run is {record.get('run_id')})")
        found = len(study.get_trials(deepcopy=False))
        if found < int(recorded):
            raise _refuse(url, f"holds {found} trials of study {name!r}, run.json recorded {recorded}")


def stamp_study(study: optuna.Study, run: str) -> None:
    """Mark ``study`` as created by run ``run`` (once)."""
    if study.user_attrs.get(RUN_ATTR) is None:
        study.set_user_attr(RUN_ATTR, run)


def record_counts(out_dir: str | Path, storage: optuna.storages.BaseStorage, names: list[str]) -> None:
    """Store in run.json how many trials each study in ``names`` holds now (counts only grow)."""
    record = read(out_dir)
    counts = dict(record.get("trials", {}) or {})
    for name in names:
        counts[name] = max(int(counts.get(name, 0)), n_trials(storage, name))
    update(out_dir, trials=counts)


def n_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    """Trials of study ``name`` in ``storage`` (0 when there is no such study). Reads that study
    only: ``optuna.get_all_study_summaries`` reads every trial of every study, which made
    recording the counts after each trial take seconds in a run folder of many studies."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


__all__ = [
    "RUN_ATTR",
    "RUN_FILE",
    "check_resume",
    "check_studies",
    "read",
    "read_json",
    "n_trials",
    "record_counts",
    "resolve_storage",
    "run_id",
    "stamp_study",
    "storage_record",
    "update",
    "write_json",
]
