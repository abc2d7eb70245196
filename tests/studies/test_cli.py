"""The ``compsearch`` command line: commands and exit codes (0 ok, 2 bad input, 1 internal error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compsearch import cli
from compsearch.search.registry import list_strategies

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps table cells to the terminal width; 200 columns keeps each cell on one line."""
    monkeypatch.setenv("COLUMNS", "200")


def test_list_shows_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("joint", "uniform", "l1", "fisher", "digits", "digits_cnn", *list_strategies()):
        assert name in out


def test_spaces_of_a_model_lists_units_params_and_macs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["spaces", "digits_cnn", "--input-shape", "1,8,8"]) == 0
    out = capsys.readouterr().out
    # features.3: conv 16 -> 32, 3x3, on the 4x4 map after pooling:
    # params 32*16*9 = 4,608; MACs 4,608 * 4 * 4 = 73,728.
    assert "features.3" in out and "4,608" in out and "73,728" in out
    assert "no (first)" in out and "no (head)" in out
    assert "over 3 searched units" in out


def test_spaces_of_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["spaces", str(REPO / "studies" / "quickstart.toml"), "--space", "block"]) == 0
    assert "space 'block'" in capsys.readouterr().out


def test_run_show_and_report_exit_zero(tmp_path: Path, tiny_run, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = tiny_run
    assert cli.main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "random" in shown and "nsga2" in shown and "HV @100%" in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "no_such_spec.toml"], "does not exist"),
        (["report", "no_such_dir"], "is not a run folder"),
        (["show", "no_such_dir"], "is not a run folder"),
        (["spaces", "no_such_model"], "no_such_model"),
        (["spaces", "digits_cnn", "--input-shape", "1,x"], "--input-shape"),
    ],
)
def test_bad_input_exits_2_with_the_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_malformed_spec_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "bad"\nstrategies = ["random", "nope"]\ntrials = 2\n[model]\nname = "digits_cnn"\n')
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "strategies[1]: unknown strategy 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_internal_error_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args, console):  # noqa: ANN001
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "ZeroDivisionError: boom" in err


def test_a_plain_type_error_exits_2_and_says_where_it_was_raised(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args, console):  # noqa: ANN001
        raise TypeError("cannot pickle 'lock'")

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    monkeypatch.setenv("COLUMNS", "400")
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot pickle 'lock'" in err and f"raised at {__file__}:" in err and "Traceback" not in err
    monkeypatch.setenv("COMPSEARCH_TRACEBACK", "1")
    assert cli.main(["list"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_argparse_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 2


def test_python_dash_m_runs_a_study(tmp_path: Path, mini_spec) -> None:  # noqa: ANN001
    spec = mini_spec(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "compsearch", "run", str(spec), "--out", str(out), "--trials", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HV @100%" in proc.stdout and f"compsearch report {out}" in proc.stdout
    assert (out / "run.json").is_file() and (out / "studies.db").is_file()


@pytest.fixture
def ray_shutdown():
    """Shut down the Ray a ``--backend ray`` run started in this process, even when the test fails."""
    yield
    import ray

    ray.shutdown()


# the ray case is slow (~70 s); the default suite runs the Ray backend in tests/search/test_tune.py and
# tests/studies/test_ray_cluster.py
@pytest.mark.parametrize("backend", ["optuna", pytest.param("ray", marks=pytest.mark.slow)])
def test_run_with_two_workers_then_report(backend: str, tmp_path: Path, ray_shutdown: None, mini_spec,  # noqa: ANN001
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    if backend == "ray":
        pytest.importorskip("ray.tune", reason="Ray Tune is optional (pip install 'compsearch[ray]')")
    spec = mini_spec(tmp_path, ("random", "hirl"), trials=4)
    out = tmp_path / "out"
    argv = ["run", str(spec), "--out", str(out), "--workers", "2", "--backend", backend, "--quiet"]
    assert cli.main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["storage"] == "journal:journal.log"  # several processes: a journal file in the run folder, not SQLite
    assert [(s["workers"], s["backend"], s["status"]) for s in run["sessions"]] == [(2, backend, "complete")]
    assert cli.main(["report", str(out), "--no-test"]) == 0  # the runner's layout: the report works unchanged
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["strategies"]) == ["hirl", "random"], list(summary["strategies"]["random"])
    assert (out / "report.html").is_file()
    assert cli.main(argv) == 0  # a re-run with the budget spent evaluates nothing and still exits 0
    assert [len(s["strategies"]) for s in json.loads((out / "run.json").read_text())["sessions"]] == [2, 2]
    capsys.readouterr()
