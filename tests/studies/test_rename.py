"""Renaming a strategy's studies in a run folder (``compsearch.studies.rename``,
``compsearch rename``), on a real tiny run of two strategies; and ``runfile.n_trials``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from test_merge import _copy, _storage, _trials  # the same run-folder helpers

from compsearch import cli
from compsearch.errors import ConfigError
from compsearch.studies import runfile
from compsearch.studies.rename import RENAMED_ATTR, parse_renames, rename_strategies
from compsearch.studies.runner import run_study
from compsearch.studies.summary import summarize
from compsearch.testing import digits_spec

SPEC = digits_spec("rename", trials=3, finetune={"steps": 1}, strategies=("random", "tpe"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rename") / "run"
    run_study(SPEC, folder, seeds=[0], quiet=True, test=False)
    return folder


def _names(folder: Path) -> set[str]:
    return set(optuna.get_all_study_names(_storage(folder)))


def test_parse_renames_and_its_errors() -> None:
    assert parse_renames("hirl=hirl-full, hirl-lean=hirl") == {"hirl": "hirl-full", "hirl-lean": "hirl"}
    for bad, match in (("hirl", "is not OLD=NEW"), ("a=", "is not OLD=NEW"), ("a=b=c", "is not OLD=NEW"),
                       ("a=b,a=c", "names 'a' twice")):
        with pytest.raises(ConfigError, match=match):
            parse_renames(bad)


def test_a_chain_of_renames_moves_every_study_and_the_run_record(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path / "run")
    before = {"random-s0": _trials(run, "random-s0"), "tpe-s0": _trials(run, "tpe-s0")}
    # random moves away first, then tpe takes its name
    moved = rename_strategies(folder, {"random": "uniform-old", "tpe": "random"})
    assert moved == {"random-s0": "uniform-old-s0", "tpe-s0": "random-s0"}
    assert _names(folder) == {"uniform-old-s0", "random-s0"}
    assert _trials(folder, "uniform-old-s0") == before["random-s0"] and _trials(folder, "random-s0") == before["tpe-s0"]
    study = optuna.load_study(study_name="random-s0", storage=_storage(folder))
    assert study.user_attrs["strategy"] == "random" and study.user_attrs[RENAMED_ATTR] == "tpe-s0"
    record = runfile.read(folder)
    assert record["spec"]["strategies"] == ["uniform-old", "random"]
    assert record["trials"] == {"uniform-old-s0": 3, "random-s0": 3}
    assert record["sessions"][-1]["status"] == "renamed"
    assert record["sessions"][-1]["renamed"] == {"random": "uniform-old", "tpe": "random"}
    summary = summarize(folder)  # the report reads the new names
    assert set(summary["strategies"]) == {"uniform-old", "random"}


def test_renames_that_cannot_apply_are_refused_before_anything_moves(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path / "run")
    cases = (({"nope": "x"}, r"RENAMES \['nope'\]: the run holds no study of them; it holds \['random', 'tpe'\]"),
             ({"tpe": "random"}, r"rename tpe=random: the run already holds studies of 'random' \(random-s0\)"),
             ({"random": "tpe", "tpe": "random"}, "form a cycle; rename through a third name"),
             ({"random": "random"}, "onto itself"),
             ({"random": "x", "tpe": "x"}, r"give \['x'\] as the new name of several strategies"))
    for renames, match in cases:
        with pytest.raises(ConfigError, match=match):
            rename_strategies(folder, renames)
    assert _names(folder) == {"random-s0", "tpe-s0"}
    with pytest.raises(ConfigError, match=r"RUN '.*nothing' does not exist"):
        rename_strategies(tmp_path / "nothing", {"random": "x"})


def test_an_interrupted_rename_completes_when_run_again(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path / "run")
    storage = _storage(folder)
    # killed after the copy was marked complete, before the old study was deleted
    optuna.copy_study(from_study_name="tpe-s0", from_storage=storage, to_storage=storage, to_study_name="tpe2-s0")
    optuna.load_study(study_name="tpe2-s0", storage=storage).set_user_attr(RENAMED_ATTR, "tpe-s0")
    assert rename_strategies(folder, {"tpe": "tpe2"}) == {"tpe-s0": "tpe2-s0"}
    assert _names(folder) == {"random-s0", "tpe2-s0"} and _trials(folder, "tpe2-s0") == _trials(run, "tpe-s0")
    # killed during the copy (no marker yet): reported, nothing deleted
    optuna.copy_study(from_study_name="random-s0", from_storage=storage, to_storage=storage, to_study_name="rnd-s0")
    with pytest.raises(ConfigError, match=r"already holds studies of 'rnd' \(rnd-s0\).*interrupted rename cut short, delete them"):
        rename_strategies(folder, {"random": "rnd"})
    assert "random-s0" in _names(folder)


def test_cli_rename(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy(run, tmp_path / "run")
    assert cli.main(["rename", str(folder), "tpe=tpe-old"]) == 0
    assert "renamed 1 studies" in (out := capsys.readouterr().out) and "tpe-s0 -> tpe-old-s0" in out
    assert cli.main(["rename", str(folder), "tpe-old"]) == 2
    assert "is not OLD=NEW" in capsys.readouterr().err


def test_n_trials_reads_only_the_named_study(run: Path) -> None:
    storage = optuna.storages.get_storage(_storage(run))
    read: list[int] = []
    real = storage.get_all_trials

    def spy(study_id: int, *args: Any, **kwargs: Any) -> Any:
        read.append(study_id)
        return real(study_id, *args, **kwargs)

    storage.get_all_trials = spy  # type: ignore[method-assign]
    assert runfile.n_trials(storage, "tpe-s0") == 3 and runfile.n_trials(storage, "absent-s0") == 0
    assert read == [storage.get_study_id_from_name("tpe-s0")]
    record = json.loads((run / "run.json").read_text())
    assert record["trials"] == {"random-s0": 3, "tpe-s0": 3}  # what record_counts stored after each trial
