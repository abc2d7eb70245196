"""``[space] name = "depth+joint"`` end to end: spec check, a run whose trials remove blocks and
record them, and the ``spaces`` command's removable column (digits CNN: ``features.5``, a
32 -> 32 3x3 conv, is the one block it can lose)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compsearch.errors import SpecError
from compsearch.testing import digits_spec


def _spec(name: str, **space: object) -> dict:
    spec = digits_spec(name, trials=4, finetune={"steps": 2}, strategies=["random"])
    spec["space"] = {"name": "depth+joint", "choices": {"w_bits": [4, 8], "keep": [1.0]}, **space}
    return spec


def test_check_accepts_depth_joint_and_names_a_block_that_cannot_go() -> None:
    from compsearch.studies.validate import check_run

    assert check_run(_spec("ok")).space.name == "depth+joint"
    bad = _spec("bad", options={"depth": {"blocks": ["features.3"]}})
    with pytest.raises(SpecError, match=r"space.*block 'features.3' cannot be removed: its output shape \(32, 4, 4\) differs"):
        check_run(bad)
    with pytest.raises(SpecError, match="names a part twice"):
        check_run({**_spec("twice"), "space": {"name": "joint+joint"}})


@pytest.mark.slow  # ~15 s on 2 cores: trains the base CNN 30 steps and runs 4 trials
def test_run_records_removed_blocks(tmp_path: Path) -> None:
    import optuna

    from compsearch.record import read_policy
    from compsearch.spaces import Policy
    from compsearch.studies.runner import run_study

    run = run_study(_spec("depth"), tmp_path, quiet=True, test=False)
    trials = optuna.load_study(study_name="random-s0", storage=run.storage_url).trials
    policies = [Policy.from_dict(read_policy(t)) for t in trials]
    assert len(policies) == 4
    assert {tuple(p.removed) for p in policies} <= {(), ("features.5",)}
    assert any(p.removed for p in policies)  # random over one keep/remove choice: seeded, removes it at least once


def test_spaces_command_shows_removable_blocks(capsys) -> None:
    from compsearch.cli import main

    assert main(["spaces", "digits_cnn", "--space", "depth+joint", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"removable": "identity"' in out and "no: it holds the stem" in out
