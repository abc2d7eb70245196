"""The export command: flags, errors naming them, the printed table."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch_pruning", reason="Torch-Pruning is not installed (pip install torch-pruning)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'compsearch[export]')")

from compsearch.cli import main  # noqa: E402


def test_export_command_writes_the_best_trial(tiny_run, tmp_path, capsys) -> None:
    out, _ = tiny_run
    code = main(["export", str(out), "--best", "max_size_kb=12", "--out", str(tmp_path), "--exporter", "torchscript",
                 "--no-latency"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    [folder] = list(tmp_path.iterdir())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["verified"] and "latency" not in metrics and metrics["size_kb"] <= 12
    assert metrics["trial"] in printed.out and "removed/masked units" in printed.out


@pytest.mark.parametrize(("argv", "message"), [
    (["--trial", "random-s0"], "--trial 'random-s0': give STUDY:NUMBER"),
    (["--trial", "random-s0:999"], "study 'random-s0' has no trial 999"),
    (["--best", "size_kb<<3"], "--best 'size_kb<<3': cannot read"),
    (["--pareto", "--batch", "0"], "--batch=0 must be an integer >= 1"),
])
def test_export_errors_name_the_flag(tiny_run, capsys, argv, message) -> None:
    out, _ = tiny_run
    assert main(["export", str(out), *argv]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_export_needs_one_choice_of_trials(tiny_run, capsys) -> None:
    out, _ = tiny_run
    with pytest.raises(SystemExit) as e:
        main(["export", str(out)])
    assert e.value.code == 2 and "one of the arguments --trial --pareto --best is required" in capsys.readouterr().err
