"""The command line for people and scripts: --version, flag-named errors, full-width tables in a
pipe, --format json|csv, exit code 130."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

import compsearch
from compsearch import cli
from compsearch.cli import main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "studies" / "quickstart.toml")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"compsearch {compsearch.__version__}"


@pytest.mark.parametrize(("argv", "message"), [
    (["--strategies", "random,nope"], "--strategies: unknown strategy 'nope'"),
    (["--trials", "0"], "--trials: input should be greater than or equal to 1"),
    (["--seeds", "3,3"], "--seeds: [3, 3] has duplicates"),
    (["--workers", "0"], "--workers=0 must be an integer >= 1"),
    (["--address", "auto"], "--address='auto' is a Ray cluster address"),
    (["--plugin", "no_such_plugin_mod"], "--plugin='no_such_plugin_mod': no module of that name"),
])
def test_errors_caused_by_flags_name_the_flag(argv: list[str], message: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", QUICKSTART, "--out", str(tmp_path / "run"), *argv]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines on stderr
    assert message in err
    assert "strategies[1]" not in err and "spec key" not in err


def test_tables_keep_their_full_width_in_a_pipe(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # captured stdout is no terminal, as in a pipe
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if "strategies" in line)
    assert "greedy-sensitivity" in row and "uniform8" in row  # one row, not wrapped at 80 columns
    assert len(row) > 120


def test_list_as_json_and_csv(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "digits" in listed["datasets"] and "joint" in listed["spaces"] and "accuracy" in listed["metrics"]
    assert main(["list", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["kind", "name"] and ["datasets", "imagefolder"] in rows


def test_show_as_json_and_csv(tiny_run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = tiny_run
    assert main(["show", str(out), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in shown["hypervolume"]] == ["random", "nsga2"]
    assert {"HV @100%", "reused", "feasible"} <= set(shown["hypervolume"][0])
    assert main(["show", str(out), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["strategy", "seed", "trial"] and rows[1][0] == "uncompressed"
    assert len(rows) == 1 + len(shown["pareto"])


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: Any, console: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list", interrupted)
    assert main(["list"]) == cli.EXIT_INTERRUPTED == 130
    assert "Re-run the same command to resume" in " ".join(capsys.readouterr().err.split())
