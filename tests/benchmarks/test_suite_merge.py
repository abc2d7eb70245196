"""benchmarks/suite.py's --seed-list and --merge options (parsing only: no runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_loader import load_benchmark

from compsearch.errors import ConfigError


def test_seed_list_picks_those_seeds() -> None:
    suite = load_benchmark("suite")
    problems, strategies, seeds, trials = suite._settings(suite._parse(["--seed-list", "3,4", "--quick"]))
    assert seeds == [3, 4] and problems == list(suite.QUICK_PROBLEMS) and trials == suite.QUICK_TRIALS
    assert suite._settings(suite._parse(["--seeds", "2"]))[2] == [0, 1]


@pytest.mark.parametrize("text", ["3,x", "-1", "3,3", "", "4,"])
def test_bad_seed_list_names_the_flag_and_the_fix(text: str) -> None:
    suite = load_benchmark("suite")
    with pytest.raises(ConfigError, match=rf"--seed-list='{text}' must be distinct comma-separated integers from 0 "
                                          r"to 2147483647, e.g. --seed-list 3,4"):
        suite._settings(suite._parse(["--seed-list", text]))


def test_seed_list_and_seeds_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    suite = load_benchmark("suite")
    with pytest.raises(SystemExit):
        suite._parse(["--seeds", "2", "--seed-list", "3"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_merge_skips_problems_without_a_source_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = load_benchmark("suite")
    (tmp_path / "src" / "cartpole").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"SRC '.*cartpole' is not a run folder"):
        suite.merge_sources(tmp_path / "src", tmp_path / "out", ["digits_cnn", "cartpole"])
    assert "digits_cnn: nothing to merge" in capsys.readouterr().err
