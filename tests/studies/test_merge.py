"""Merging run folders (``compsearch.studies.merge``, ``compsearch merge``): two real tiny runs of
one spec, seed 0 and seed 1, merged into one folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest

from compsearch import cli
from compsearch.errors import ConfigError
from compsearch.studies.merge import merge_run
from compsearch.studies.runfile import RUN_ATTR
from compsearch.studies.runner import run_study
from compsearch.studies.summary import summarize
from compsearch.testing import digits_spec

SPEC = digits_spec("merge", trials=3, finetune={"steps": 1}, strategies=("random", "tpe"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run folders of SPEC: ``a`` with seed 0, ``b`` with seed 1 (b reuses a's trained base model)."""
    root = tmp_path_factory.mktemp("merge")
    run_study(SPEC, root / "a", seeds=[0], quiet=True, test=False)
    shutil.copytree(root / "a" / "base", root / "b" / "base")
    run_study(SPEC, root / "b", seeds=[1], quiet=True, test=False)
    return root / "a", root / "b"


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _storage(folder: Path) -> str:
    return f"sqlite:///{folder / 'studies.db'}"


def _trials(folder: Path, name: str) -> list[tuple[Any, ...]]:
    study = optuna.load_study(study_name=name, storage=_storage(folder))
    return [(t.number, t.state, t.params, t.values, t.user_attrs) for t in study.trials]


def _edit_run(folder: Path, **changes: Any) -> None:
    path = folder / "run.json"
    run = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = run
        for p in parents:
            node = node[p]
        node[key] = value
    path.write_text(json.dumps(run))


def test_merge_copies_the_other_seed_exactly(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    dst, src = _copy(a, tmp_path / "dst"), _copy(b, tmp_path / "src")
    (src / "strategy_state").mkdir()
    (src / "strategy_state" / "tpe-s1.pt").write_bytes(b"not unpickled")
    result = merge_run(src, dst)
    assert dict(result.copied) == {"random-s1": 3, "tpe-s1": 3}
    assert result.skipped_present == result.replaced_stubs == ()
    assert result.copied_states == ("tpe-s1.pt",) and result.seeds_added == (1,)
    names = {s.study_name for s in optuna.get_all_study_summaries(_storage(dst))}
    assert names == {"random-s0", "tpe-s0", "random-s1", "tpe-s1"}
    for name in ("random-s1", "tpe-s1"):
        assert _trials(dst, name) == _trials(src, name)  # numbers, states, params, values, attrs
        study = optuna.load_study(study_name=name, storage=_storage(dst))
        assert study.user_attrs[RUN_ATTR] == json.loads((dst / "run.json").read_text())["run_id"]
    run = json.loads((dst / "run.json").read_text())
    assert run["spec"]["seeds"] == [0, 1] and run["spec"]["strategies"] == ["random", "tpe"]
    assert run["trials"]["random-s1"] == run["trials"]["tpe-s1"] == 3
    assert run["sessions"][-1]["status"] == "merged"
    assert sorted(json.loads((dst / "baseline.json").read_text())) == ["0", "1"]
    assert (dst / "strategy_state" / "tpe-s1.pt").read_bytes() == b"not unpickled"
    summary = summarize(dst)
    assert {s: v["counted"] for s, v in summary["strategies"].items()} == {"random": {"0": 3, "1": 3},
                                                                           "tpe": {"0": 3, "1": 3}}

    before = [(dst / f).read_bytes() for f in ("studies.db", "run.json", "baseline.json")]
    again = merge_run(src, dst)  # a no-op: every study is present
    assert not again.copied and set(again.skipped_present) == {"random-s1", "tpe-s1"}
    assert [(dst / f).read_bytes() for f in ("studies.db", "run.json", "baseline.json")] == before
    run_study(SPEC, dst, seeds=[0, 1], quiet=True, test=False)  # the runner resumes it: nothing left to run
    assert [len(_trials(dst, n)) for n in sorted(names)] == [3, 3, 3, 3]


def test_a_stub_in_dst_is_replaced_and_strategies_filter(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    dst = _copy(a, tmp_path / "dst")
    optuna.create_study(study_name="tpe-s1", storage=_storage(dst), directions=["maximize", "minimize"])
    result = merge_run(b, dst, strategies=["tpe"])
    assert dict(result.copied) == {"tpe-s1": 3} and result.replaced_stubs == ("tpe-s1",)
    assert _trials(dst, "tpe-s1") == _trials(b, "tpe-s1")
    assert "random-s1" not in {s.study_name for s in optuna.get_all_study_summaries(_storage(dst))}
    with pytest.raises(ConfigError, match=r"strategies=\['nsga2'\]: SRC holds no study of them; it holds \['random', 'tpe'\]"):
        merge_run(b, dst, strategies=["nsga2"])
    # A study a merge stopped half-way: copied, still stamped with SRC's run id (the stamp is set last).
    optuna.copy_study(from_study_name="random-s1", from_storage=_storage(b), to_storage=_storage(dst))
    result = merge_run(b, dst)
    assert result.replaced_stubs == ("random-s1",) and result.skipped_present == ("tpe-s1",)
    assert optuna.load_study(study_name="random-s1", storage=_storage(dst)).user_attrs[RUN_ATTR] == \
        json.loads((dst / "run.json").read_text())["run_id"]


def test_methods_studies_are_listed_as_methods(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    dst, src = _copy(a, tmp_path / "dst"), _copy(b, tmp_path / "src")
    _edit_run(src, methods=["gates"])
    study = optuna.create_study(study_name="gates-s1", storage=_storage(src), directions=["maximize", "minimize"])
    study.set_user_attr(RUN_ATTR, json.loads((src / "run.json").read_text())["run_id"])
    study.add_trial(optuna.trial.create_trial(values=[0.5, 10.0]))
    optuna.create_study(study_name="notes", storage=_storage(src))  # not a run study: left alone
    result = merge_run(src, dst, strategies=["gates"])
    assert dict(result.copied) == {"gates-s1": 1} and result.strategies_added == ("gates",)
    run = json.loads((dst / "run.json").read_text())
    assert run["methods"] == ["gates"] and run["spec"]["strategies"] == ["random", "tpe"]
    assert run["spec"]["seeds"] == [0, 1]


def test_runs_of_other_studies_are_refused(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    src = _copy(b, tmp_path / "src")
    _edit_run(src, base__hash="f" * 64)
    hashes = r"\(SRC 'f{36}\.\.\., DST '\w{36}\.\.\.\)"
    with pytest.raises(ConfigError, match=rf"run\.json base\.hash differs {hashes}; merge only runs of the same spec"):
        merge_run(src, a)
    _edit_run(src, base__hash=json.loads((a / "run.json").read_text())["base"]["hash"], spec__trials=5)
    with pytest.raises(ConfigError, match=r"run\.json spec\.trials differs \(SRC 5, DST 3\)"):
        merge_run(src, a)
    with pytest.raises(ConfigError, match=r"SRC '.*nowhere' does not exist"):
        merge_run(tmp_path / "nowhere", a)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"DST '.*empty' is not a run folder \(no run\.json"):
        merge_run(b, tmp_path / "empty")
    assert {s.study_name for s in optuna.get_all_study_summaries(_storage(a))} == {"random-s0", "tpe-s0"}


def test_cli_merge(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    dst = _copy(a, tmp_path / "dst")
    assert cli.main(["merge", str(b), str(dst), "--strategies", "random"]) == 0
    out = capsys.readouterr().out
    assert "copied 1 studies: random-s1 (3 counted trials)" in out and "added seeds: 1" in out
    assert cli.main(["merge", str(b), str(dst), "--strategies", "random"]) == 0
    assert "kept DST's (it already holds counted trials): random-s1" in capsys.readouterr().out
    assert cli.main(["merge", str(b), str(dst), "--strategies", "nope"]) == 2
    assert "--strategies=['nope']" in capsys.readouterr().err
