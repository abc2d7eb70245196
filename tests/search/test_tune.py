"""Ray Tune: the checkpointing reporter, a 4-trial ASHA sweep, and a study run on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray.tune", reason="Ray Tune is not installed (pip install 'compsearch[ray]')")

from compsearch.record import read_metrics  # noqa: E402
from compsearch.studies.hosts.tune import CheckpointTuneReporter, read_checkpoint_state  # noqa: E402
from compsearch.testing import digits_spec  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = digits_spec("ray-tiny", trials=4, finetune={"steps": 30, "report_every": 10})


class _FakeCheckpoint:
    def __init__(self, folder: str) -> None:
        self.folder = folder

    @classmethod
    def from_directory(cls, folder: str) -> _FakeCheckpoint:
        return cls(folder)

    def as_directory(self) -> Any:
        import contextlib

        return contextlib.nullcontext(self.folder)


class _FakeTune:
    Checkpoint = _FakeCheckpoint

    def __init__(self) -> None:
        self.reports: list[tuple[dict[str, Any], _FakeCheckpoint | None]] = []

    def report(self, metrics: dict[str, Any], *, checkpoint: _FakeCheckpoint | None = None) -> None:
        self.reports.append((metrics, checkpoint))


def test_reporter_checkpoints_every_report_and_skips_replayed_steps() -> None:
    first = CheckpointTuneReporter(metric="accuracy", constant={"size_kb": 3.0})
    first._tune = fake = _FakeTune()
    first.report(10, 0.5, {"train_loss": 1.0})
    first.report(20, 0.7, {"train_loss": 0.8})
    assert [m for m, _ in fake.reports] == [
        {"step": 10, "size_kb": 3.0, "train_loss": 1.0, "accuracy": 0.5},
        {"step": 20, "size_kb": 3.0, "train_loss": 0.8, "accuracy": 0.7},
    ]
    state = read_checkpoint_state(fake.reports[-1][1])
    assert state == {"step": 20, "history": [[10, 0.5], [20, 0.7]], "final": None}
    # the trial is restarted from that checkpoint: the replayed steps 10 and 20 are not reported again
    resumed = CheckpointTuneReporter(metric="accuracy", resume=state)
    resumed._tune = again = _FakeTune()
    for step, acc in ((10, 0.5), (20, 0.7), (30, 0.9)):
        resumed.report(step, acc)
    resumed.final({"accuracy": 0.9, "size_kb": 3.0, "test_accuracy": None})
    assert [m for m, _ in again.reports] == [{"step": 30, "accuracy": 0.9}, {"accuracy": 0.9, "size_kb": 3.0, "final": 1.0}]
    final_state = read_checkpoint_state(again.reports[-1][1])
    assert final_state["final"] == {"accuracy": 0.9, "size_kb": 3.0}
    assert final_state["history"] == [[10, 0.5], [20, 0.7], [30, 0.9]]
    assert read_checkpoint_state(None) is None


def test_tune_trainable_rejects_an_unknown_target() -> None:
    from compsearch import tune_trainable

    with pytest.raises(ValueError, match="pass \\(space, evaluator\\)"):
        tune_trainable("resnet18")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from compsearch.studies.hosts.ray import init_ray

    init_ray(num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()  # even when a test failed
        assert not ray.is_initialized()


@pytest.fixture(scope="module")
def run_ctx(tmp_path_factory: pytest.TempPathFactory):
    from compsearch.studies.run import prepare
    from compsearch.studies.storage import default_journal_storage

    out = tmp_path_factory.mktemp("ray-run")
    return prepare(SPEC, out, storage=default_journal_storage(out))


def test_asha_sweep_of_four_trials_two_at_a_time(ray_session, run_ctx, tmp_path: Path) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from compsearch import tune_searcher, tune_trainable

    searcher = tune_searcher("tpe", run_ctx.space, ("accuracy", "size_kb"), seed=0, n_trials=4)
    asha = ASHAScheduler(metric="accuracy", mode="max", time_attr="training_iteration", grace_period=1,
                         max_t=4, reduction_factor=2)
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable((run_ctx.space, run_ctx.evaluator(0))), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=asha, num_samples=-1, max_concurrent_trials=2),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0),
    )
    grid = tuner.fit()
    assert len(grid) == 4 and not grid.errors
    trials = searcher.study.get_trials()
    assert len(trials) == 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete  # ASHA never stops the first trial to reach a rung
    for t in complete:
        assert t.values == [read_metrics(t)["accuracy"], read_metrics(t)["size_kb"]]
        assert run_ctx.space.decode(t.params).to_dict() == t.user_attrs["policy"]
    for t in trials:
        if t.state == TrialState.PRUNED:
            (step,) = t.user_attrs["intermediate"]
            assert int(step) < 30  # stopped before the last fine-tune step
    # every trial left a checkpoint with its reported history
    for result in grid:
        state = read_checkpoint_state(result.checkpoint)
        assert state is not None and state["history"][0][0] == 10


def test_run_ray_writes_the_runner_storage_layout(ray_session, run_ctx) -> None:
    import dataclasses

    from compsearch.studies.hosts.ray import RayHost
    from compsearch.studies.hosts.slots import SLOT_ATTR
    from compsearch.studies.results import counted_trials, load_studies
    from compsearch.studies.spec import load_spec

    run = dataclasses.replace(run_ctx, spec=load_spec({**SPEC, "trials": 3}))  # same evaluators, a budget of 3
    host = RayHost(2)
    host.run(run, [("random", 0)], quiet=True)
    assert host.enqueued == 3
    trials = load_studies(run_ctx.storage)[("random", 0)]
    done = counted_trials(trials)
    assert len(done) == 3 and all(t.state == TrialState.COMPLETE for t in done)
    assert sorted(t.system_attrs[SLOT_ATTR] for t in done) == [0, 1, 2]
    for t in done:
        metrics = read_metrics(t)
        assert t.values == [metrics["accuracy"], metrics["size_kb"]]
        assert {"bops", "compression_ratio", "seconds_total"} <= set(metrics)
        assert not {"training_iteration", "step", "final"} & set(metrics)
    assert (run_ctx.out_dir / "ray" / "random-s0").is_dir()  # Tune's own files stay in the run folder
