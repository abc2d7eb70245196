"""The study runner: one study per strategy x seed, resume, failures as results, Ctrl-C, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from compsearch.errors import FineTuneDiverged, SpecError
from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.record import read_constraints, read_metrics
from compsearch.studies.hosts.base import run_trial
from compsearch.studies.results import counted_trials, counts_toward_budget, load_studies
from compsearch.studies.run import resolve_reference_point
from compsearch.studies.runner import run_study
from compsearch.studies.spec import load_spec
from compsearch.studies.storage import default_storage, open_storage

REPO = Path(__file__).resolve().parents[2]


def _trials(out: Path) -> dict[tuple[str, int], list[optuna.trial.FrozenTrial]]:
    return load_studies(open_storage(default_storage(out)))


def test_one_study_per_strategy_and_seed(tiny_run) -> None:
    out, ctx = tiny_run
    studies = _trials(out)
    assert sorted(studies) == [("nsga2", 0), ("random", 0)]
    for trials in studies.values():
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        for t in trials:
            metrics = read_metrics(t)
            # values follow the objectives; the constraint is size_kb - 12 (feasible <= 0)
            assert t.values == [metrics["accuracy"], metrics["size_kb"]]
            assert read_constraints(t) == [pytest.approx(metrics["size_kb"] - 12.0)]
            assert ctx.space.decode(t.params).to_dict() == t.user_attrs["policy"]
            assert metrics["steps"] == 5


def test_baseline_gets_the_candidates_budget(tiny_run) -> None:
    out, ctx = tiny_run
    baseline = json.loads((out / "baseline.json").read_text())["0"]
    assert baseline["steps"] == 5  # the same fine-tuning steps as every candidate
    assert baseline["compression_ratio"] == pytest.approx(1.0)
    # reference point: accuracy floor 0 (no min_accuracy) and the uncompressed size
    assert ctx.reference_point == {"accuracy": 0.0, "size_kb": pytest.approx(baseline["size_kb"])}


def test_run_json_records_spec_versions_and_times(tiny_run) -> None:
    out, _ = tiny_run
    run = json.loads((out / "run.json").read_text())
    assert load_spec(run["spec"]).strategies == ["random", "nsga2"]
    assert run["versions"]["optuna"] == optuna.__version__
    assert run["sessions"][-1]["status"] == "complete"
    assert run["sessions"][-1]["start"] <= run["sessions"][-1]["end"]
    assert (out / run["base"]["path"]).is_file()  # paths in run.json are relative to the run folder
    assert run["storage"] == "sqlite:studies.db" and run["trials"] == {"nsga2-s0": 4, "random-s0": 4}


def test_resume_and_extend(tmp_path: Path, tiny_run, make_spec) -> None:
    out, _ = tiny_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)  # run.json's paths are relative: the copy uses its own
    before = {k: [(t.number, t.values) for t in v] for k, v in _trials(copy).items()}
    run_study(make_spec(), copy, quiet=True)  # nothing left to do
    assert {k: [(t.number, t.values) for t in v] for k, v in _trials(copy).items()} == before
    run_study(make_spec(), copy, trials=5, strategies=["random"], quiet=True)
    after = _trials(copy)
    assert [(t.number, t.values) for t in after[("random", 0)][:4]] == before[("random", 0)]
    assert len(after[("random", 0)]) == 5 and len(after[("nsga2", 0)]) == 4
    # run.json keeps both strategies for the report, with the new budget
    assert load_spec(json.loads((copy / "run.json").read_text())["spec"]).strategies == ["random", "nsga2"]


def test_an_emptied_storage_is_refused_not_re_run(tmp_path: Path, tiny_run, make_spec) -> None:
    from compsearch.errors import ConfigError

    out, _ = tiny_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    (copy / "studies.db").unlink()
    with pytest.raises(ConfigError, match=r"does not exist \(run.json recorded 8 trials in it\).*Nothing was run"):
        run_study(make_spec(), copy, quiet=True)
    assert not (copy / "studies.db").exists()


def test_changed_spec_refuses_to_resume(tiny_run, make_spec) -> None:
    out, _ = tiny_run
    with pytest.raises(SpecError, match=r"different \['evaluator'\]"):
        run_study(make_spec(evaluator={"device": "cpu", "finetune": {"steps": 6}}), out, quiet=True)


def test_diverged_fine_tune_is_a_failed_trial_and_the_study_goes_on(tmp_path: Path, make_spec) -> None:
    # Adam moves every weight by about +-lr on its first step: with lr = 1e30 the second
    # layer multiplies ~1e30 activations by ~1e30 weights -> inf, +inf + -inf = nan loss.
    spec = make_spec(strategies=["random"], trials=3, space={"name": "joint", "choices": {"keep": [0.5, 1.0]}},
                     evaluator={"device": "cpu", "finetune": {"steps": 5, "lr": 1e30, "optimizer": "adam"}})
    run_study(spec, tmp_path, quiet=True)
    trials = _trials(tmp_path)[("random", 0)]
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["fail_reason"].startswith("diverged: FineTuneDiverged") for t in trials)
    assert len(counted_trials(trials)) == 3  # failures are results: they use the budget
    assert json.loads((tmp_path / "baseline.json").read_text())["0"]["fail_reason"].startswith("diverged")


def test_oom_counts_and_internal_errors_stop(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])

    def oom(trial: optuna.Trial) -> tuple[float, float]:
        trial.suggest_int("x", 0, 3)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def bug(trial: optuna.Trial) -> tuple[float, float]:
        raise KeyError("a bug")

    t = run_trial(study, oom)
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("out of memory")
    assert counts_toward_budget(t)
    with pytest.raises(KeyError, match="a bug"):
        run_trial(study, bug)
    t = study.get_trials()[-1]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith("interrupted by internal error: KeyError")
    assert not counts_toward_budget(t)


def test_ctrl_c_records_the_trial_and_resume_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec) -> None:
    spec = make_spec(strategies=["random"], trials=3, base={"steps": 20})
    real = CompressionEvaluator.evaluate
    calls = {"n": 0}

    def interrupt_third(self, policy, **kw):  # baseline, trial 0, then Ctrl-C in trial 1
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, policy, **kw)

    monkeypatch.setattr(CompressionEvaluator, "evaluate", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path, quiet=True)
    trials = _trials(tmp_path)[("random", 0)]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted")
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][-1]["status"] == "interrupted"
    monkeypatch.setattr(CompressionEvaluator, "evaluate", real)
    run_study(spec, tmp_path, quiet=True)
    trials = _trials(tmp_path)[("random", 0)]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert len(counted_trials(trials)) == 3


def test_failing_evaluations_do_not_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec) -> None:
    spec = make_spec(strategies=["random"], trials=3, base={"steps": 20})
    real = CompressionEvaluator.evaluate
    calls = {"n": 0}

    def diverge_second_trial(self, policy, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # call 1 = baseline, 2 = trial 0, 3 = trial 1
            raise FineTuneDiverged("fine-tuning diverged at step 2/5: loss=nan")
        return real(self, policy, **kw)

    monkeypatch.setattr(CompressionEvaluator, "evaluate", diverge_second_trial)
    run_study(spec, tmp_path, quiet=True)
    trials = _trials(tmp_path)[("random", 0)]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["fail_reason"] == "diverged: FineTuneDiverged: fine-tuning diverged at step 2/5: loss=nan"


def test_sigkill_mid_run_then_resume_loses_nothing(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        'name = "killed"\nstrategies = ["random", "tpe"]\ntrials = 5\nseeds = 1\n'
        '[model]\nname = "digits_cnn"\nkwargs = { width = 8, hidden = 32 }\n[base]\nsteps = 20\n'
        '[evaluator]\ndevice = "cpu"\n[evaluator.finetune]\nsteps = 5\n'
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "compsearch", "run", str(spec_path), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    try:
        complete = _wait_for_complete(out, proc, at_least=2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert complete >= 2
    before = {k: {t.number: t.values for t in v if t.state == TrialState.COMPLETE} for k, v in _trials(out).items()}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=300)
    after = _trials(out)
    for key in (("random", 0), ("tpe", 0)):
        trials = after[key]
        assert len(counted_trials(trials)) == 5
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
        kept = {t.number: t.values for t in trials if t.state == TrialState.COMPLETE}
        assert before.get(key, {}).items() <= kept.items()  # no COMPLETE trial lost or changed
        assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in trials if t.state == TrialState.FAIL)


def _wait_for_complete(out: Path, proc: subprocess.Popen[bytes], *, at_least: int, timeout: float = 240) -> int:
    """Poll the child's SQLite file read-only (never creating tables while the child does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{out / 'studies.db'}?mode=ro", uri=True, timeout=1) as db:
                n = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:  # no file or no table yet
            n = 0
        if n >= at_least:
            return n
        time.sleep(0.2)
    raise AssertionError(f"the run did not complete {at_least} trials in time (exit code {proc.poll()})")


def test_a_new_run_folder_trains_the_same_base_model(tmp_path: Path, make_spec) -> None:
    """Initial weights come from ``base.seed``, not from whatever torch's global generator holds
    (two fresh processes used to train different base models: validation 0.955 and 0.950)."""
    from compsearch.studies.run import prepare

    hashes = []
    for folder, global_seed in (("a", 1), ("b", 2)):
        torch.manual_seed(global_seed)
        hashes.append(prepare(make_spec(), tmp_path / folder).base_info["hash"])
    assert hashes[0] == hashes[1]


def test_reference_point_defaults(make_spec) -> None:
    spec = load_spec(make_spec(objectives=["accuracy", "size_kb", "bops", "compression_ratio"],
                               constraints={"min_accuracy": 0.7}, reference_point={"bops": 5.0}))
    ref = resolve_reference_point(spec, {"size_kb": 23.5, "bops": 1e6, "size_bits": 1.0})
    assert ref == {"accuracy": 0.7, "size_kb": 23.5, "bops": 5.0, "compression_ratio": 1.0}
    with pytest.raises(SpecError, match=r"reference_point\.loss"):
        resolve_reference_point(load_spec(make_spec(objectives=["accuracy", "loss"])), {})
