"""The NNI tuner adapter (ask/tell on an Optuna study) and a real local NNI experiment."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

nni = pytest.importorskip("nni", reason="NNI is not installed (pip install nni); the NNI adapter is untested here")

from compsearch.nni_tuner import StrategyTuner, metrics_of  # noqa: E402
from compsearch.record import read_constraints, read_metrics  # noqa: E402
from compsearch.spaces import discover_units, get_space  # noqa: E402
from compsearch.testing import digits_spec  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJECTIVES = (("accuracy", "maximize"), ("size_kb", "minimize"))


@pytest.fixture
def space():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    units = discover_units(model, torch.zeros(2, 1, 6, 6))
    return get_space("joint", units, w_bits=[4, 8], keep=[0.5, 1.0])


def test_metrics_of_reads_dicts_and_bare_numbers() -> None:
    assert metrics_of({"default": 0.9, "accuracy": 0.9, "size_kb": 2.0, "note": "x"}, "accuracy") == {
        "accuracy": 0.9, "size_kb": 2.0}
    assert metrics_of({"default": 0.7}, "accuracy") == {"accuracy": 0.7}
    assert metrics_of(0.5, "accuracy") == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="neither a number nor a metric dict"):
        metrics_of("high", "accuracy")


def test_tuner_asks_tells_the_full_metric_dict_and_stops_at_the_budget(space) -> None:
    tuner = StrategyTuner(space=space, objectives=OBJECTIVES, strategy="random", seed=0, n_trials=3,
                          constraints={"max_size_kb": 1.5})
    tuner.update_search_space(space.nni_search_space())
    params = [tuner.generate_parameters(i) for i in range(3)]
    assert all(space.contains(p) for p in params)
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(3)
    tuner.receive_trial_result(0, params[0], {"default": 0.8, "accuracy": 0.8, "size_kb": 2.0, "bops": 5.0})
    tuner.receive_trial_result(1, params[1], {"default": 0.6, "accuracy": 0.6})  # lacks size_kb
    tuner.trial_end(0, True)  # already told: nothing changes
    tuner.trial_end(2, False)
    t0, t1, t2 = tuner.study.get_trials()
    assert t0.state == TrialState.COMPLETE and t0.values == [0.8, 2.0]
    assert read_metrics(t0) == {"accuracy": 0.8, "size_kb": 2.0, "bops": 5.0}
    assert read_constraints(t0) == [0.5]  # size_kb 2.0 - bound 1.5
    assert t0.params == params[0] and space.decode(params[0]).to_dict() == t0.user_attrs["policy"]
    assert t1.state == TrialState.FAIL and "lacks objective(s) ['size_kb']" in t1.user_attrs["fail_reason"]
    assert t2.state == TrialState.FAIL and t2.user_attrs["fail_reason"].startswith("the NNI trial failed")


def test_a_final_result_after_nnis_end_event_is_still_told(space) -> None:
    # NNI's manager may send a trial's metrics after reporting it SUCCEEDED (its dispatcher says so)
    tuner = StrategyTuner(space=space, objectives=OBJECTIVES, strategy="random", seed=0, n_trials=4)
    params = [tuner.generate_parameters(i) for i in range(2)]
    tuner.trial_end(0, True)
    assert [t.state for t in tuner.study.get_trials()] == [TrialState.RUNNING] * 2  # waits for the result
    tuner.receive_trial_result(0, params[0], {"default": 0.8, "accuracy": 0.8, "size_kb": 2.0})
    assert tuner.study.get_trials()[0].values == [0.8, 2.0] and tuner.ended == {}
    tuner.result_grace = 0.0  # a succeeded trial whose result never comes fails at the tuner's next call
    tuner.trial_end(1, True)
    t1 = tuner.study.get_trials()[1]
    assert t1.state == TrialState.FAIL and t1.user_attrs["fail_reason"].startswith("ended without a final result")
    tuner.receive_trial_result(1, params[1], {"default": 0.7, "accuracy": 0.7, "size_kb": 1.0})  # too late: ignored
    assert [t.state for t in tuner.study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL]


def test_tuner_saves_a_learning_strategys_state_after_every_told_trial(space, tmp_path: Path) -> None:
    from compsearch.search.rl.persist import STATE_DIR, read_state

    tuner = StrategyTuner(space=space, objectives=OBJECTIVES, strategy="n2n", seed=0, n_trials=3,
                          study_name="n2n-s0", storage=optuna.storages.InMemoryStorage(), state_dir=tmp_path)
    tuner.update_search_space(space.nni_search_space())
    params = [tuner.generate_parameters(i) for i in range(2)]
    path = tmp_path / STATE_DIR / "n2n-s0.pt"
    assert not path.exists()  # nothing told yet
    tuner.receive_trial_result(0, params[0], {"default": 0.8, "accuracy": 0.8, "size_kb": 2.0})
    first = read_state(path)
    r0 = tuner.study.sampler.rewards[0]
    assert first["format"] == "compsearch.rl.n2n/1" and first["baseline"].item() == pytest.approx(r0)  # b_1 = R_1
    tuner.trial_end(1, False)  # a failed trial is learned from too (the infeasible reward -1)
    second = read_state(path)
    assert tuner.study.sampler.rewards[1] == -1.0
    assert second["baseline"].item() == pytest.approx(0.8 * r0 + 0.2 * -1.0)  # momentum 0.8
    assert any(not torch.equal(first["removal"][k], second["removal"][k]) for k in first["removal"]) or any(
        not torch.equal(first["shrink"][k], second["shrink"][k]) for k in first["shrink"])
    random_tuner = StrategyTuner(space=space, objectives=OBJECTIVES, strategy="random", seed=0, state_dir=tmp_path / "r")
    random_tuner.update_search_space(space.nni_search_space())
    random_tuner.receive_trial_result(0, random_tuner.generate_parameters(0), {"accuracy": 0.8, "size_kb": 2.0})
    assert not (tmp_path / "r").exists()  # random learns nothing: no file


def test_tuner_rejects_a_foreign_search_space(space) -> None:
    tuner = StrategyTuner(space=space, objectives=OBJECTIVES, strategy="random")
    with pytest.raises(ValueError, match="NNI search space differs"):
        tuner.update_search_space({"lr": {"_type": "uniform", "_value": [0.0, 1.0]}})


def test_tuner_imports_finished_trials(space) -> None:
    tuner = StrategyTuner(space=space, objectives=OBJECTIVES, strategy="tpe", seed=1)
    point = space.params_from_actions([0] * len(space.action_sizes()))
    tuner.import_data([{"parameter": point, "value": {"default": 0.5, "accuracy": 0.5, "size_kb": 1.0}}])
    assert [t.values for t in tuner.study.get_trials()] == [[0.5, 1.0]]


def test_wait_recorded_waits_for_the_tuner_to_tell_running_trials(capsys) -> None:
    import threading

    from compsearch.studies.hosts.nni import wait_recorded

    study = optuna.create_study(study_name="tpe-s0")
    trial = study.ask()
    threading.Timer(0.3, study.tell, args=(trial, 1.0)).start()  # the tuner process, later
    assert wait_recorded(study, timeout=10, poll=0.05) == 0
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    study.ask()  # never told: reported after the timeout, left for a resume to re-run
    assert wait_recorded(study, timeout=0.2, poll=0.05) == 1
    assert "1 trial(s) of tpe-s0 were not recorded" in capsys.readouterr().err


# ---- a real NNI experiment: 4 trials, 2 at a time, on the digits CNN ----------------------------

SPEC = digits_spec("nni-tiny", trials=4, finetune={"steps": 20, "report_every": 10}, strategies=["tpe"])


@pytest.fixture
def experiment(tmp_path: Path):
    from compsearch.nni_trial import nni_experiment
    from compsearch.studies.storage import default_journal_storage

    exp = nni_experiment(SPEC, tmp_path, strategy="tpe", seed=0, trials=4, concurrency=2,
                         storage=default_journal_storage(tmp_path))
    try:
        yield exp, tmp_path
    finally:
        exp.stop()  # the NNI manager and dispatcher are gone even when the test fails


def _wait_done(exp, n: int, timeout: float) -> list:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs = exp.list_trial_jobs()
        if len(jobs) >= n and all(j.status in ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED") for j in jobs):
            return jobs
        time.sleep(2)
    raise TimeoutError(f"NNI trials not done after {timeout} s: {exp.list_trial_jobs()}")


# ~60 s on 2 busy cores: the NNI manager (node), its dispatcher and 4 trial processes
def test_local_nni_experiment_runs_four_trials_two_at_a_time(experiment) -> None:
    from compsearch.studies.hosts.nni import wait_recorded
    from compsearch.studies.results import load_studies
    from compsearch.studies.storage import open_storage

    exp, out = experiment
    exp.start(_free_port(), debug=False)
    jobs = _wait_done(exp, 4, timeout=400)
    assert [j.status for j in jobs] == ["SUCCEEDED"] * 4
    data = exp.export_data()
    assert len(data) == 4
    for entry in data:
        assert set(entry.value) >= {"default", "accuracy", "size_kb", "bops"}
        assert entry.value["default"] == entry.value["accuracy"]
    intermediate = exp.get_job_metrics(jobs[0].trialJobId)[jobs[0].trialJobId]
    assert [m.type for m in intermediate] == ["PERIODICAL", "PERIODICAL", "FINAL"]  # steps 10, 20, final
    storage = open_storage(f"journal://{out / 'journal.log'}")
    # the tuner process tells the study after NNI marks the job SUCCEEDED
    assert wait_recorded(optuna.load_study(study_name="tpe-s0", storage=storage), timeout=60) == 0
    trials = load_studies(storage)[("tpe", 0)]
    assert sorted(t.values[0] for t in trials) == sorted(e.value["accuracy"] for e in data)
    assert all(t.state == TrialState.COMPLETE and "policy" in t.user_attrs for t in trials)


def _free_port() -> int:
    from compsearch.studies.pgserver import free_port

    return free_port()


# ~60 s on 2 free cores (the NNI manager, its dispatcher, 3 trial processes); slow: NNI gives its
# tuner process 10 s to start, which a loaded 2-core machine (torch + nni imports) can miss
@pytest.mark.slow
def test_run_study_on_the_nni_host(tmp_path: Path) -> None:
    from compsearch.studies.results import counted_trials, load_studies
    from compsearch.studies.runner import run_study

    run = run_study({**SPEC, "trials": 3}, tmp_path, backend="nni", workers=2, quiet=True)
    trials = load_studies(run.storage)[("tpe", 0)]
    assert len(counted_trials(trials)) == 3
    assert all(t.state == TrialState.COMPLETE and read_metrics(t)["accuracy"] == t.values[0] for t in trials)
    import json

    run_json = json.loads((tmp_path / "run.json").read_text())
    assert run_json["storage"] == "journal:journal.log" and run_json["trials"] == {"tpe-s0": 3}
    run_study({**SPEC, "trials": 3}, tmp_path, backend="nni", quiet=True)  # resumed with the budget spent: no experiment
