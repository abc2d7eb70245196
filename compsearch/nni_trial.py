"""Run a compsearch study as an NNI experiment.

* ``python -m compsearch.nni_trial --spec SPEC --out DIR [--seed S]`` is the trial
  command: it builds the study's evaluator (:func:`compsearch.studies.runner.prepare`;
  the base model comes from the run folder's cache), decodes ``nni.get_next_parameter()``
  into a policy, fine-tunes and measures it, reports validation accuracy per fine-tune
  report (``nni.report_intermediate_result``) and every final metric
  (``nni.report_final_result``, ``"default"`` = the first objective).
* :class:`SpecTuner` is the tuner NNI instantiates from JSON ``class_args``
  (``spec``, ``out_dir``, ``strategy``, ``seed``, ...): a
  :class:`~compsearch.search.nni_tuner.StrategyTuner` over the spec's space.
* :func:`nni_experiment` puts both into a local ``nni.experiment.Experiment``.

A diverged fine-tune exits with status 3, so NNI marks the trial FAILED and the tuner
records it as such. NNI must be installed (``pip install nni``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compsearch.errors import FineTuneDiverged
from compsearch.search.nni_tuner import StrategyTuner

DIVERGED_EXIT = 3
SPEC_FILE = "nni_spec.json"


def _load(spec: Any) -> Any:
    """A spec from a ``.json`` file (what :func:`nni_experiment` writes), a TOML path or a mapping."""
    from compsearch.studies.spec import load_spec

    if isinstance(spec, (str, Path)) and str(spec).endswith(".json"):
        return load_spec(json.loads(Path(spec).read_text()))
    return load_spec(spec)


class SpecTuner(StrategyTuner):
    """The NNI tuner of a study spec: its space, objectives, constraints and evaluator.

    Args:
        spec: a spec (mapping, TOML path, or the JSON file written by :func:`nni_experiment`).
        out_dir: the run folder (base-model cache, shared with the trials).
        strategy: a registered strategy.
        seed: the study seed (strategy and evaluator).
        n_trials: the budget (default: the spec's ``trials``).
        storage: keep the study ``<strategy>-s<seed>`` in this storage (URL or
            ``journal:///path``) instead of in memory, e.g. for ``compsearch report``.
        **options: the strategy's options (default: the spec's ``strategy_options``).
    """

    def __init__(self, *, spec: Any, out_dir: str, strategy: str = "random", seed: int = 0,
                 n_trials: int | None = None, storage: str | None = None, **options: Any) -> None:
        from compsearch.studies.results import open_storage, study_name
        from compsearch.studies.runner import prepare

        ctx = prepare(_load(spec), out_dir)
        self.ctx = ctx
        super().__init__(
            space=ctx.space, objectives=ctx.objectives, strategy=strategy, seed=seed, evaluator=ctx.evaluator(seed),
            constraints=ctx.spec.constraints, n_trials=n_trials or ctx.spec.trials,
            storage=open_storage(storage, out_dir=ctx.out_dir) if storage else None,
            study_name=study_name(strategy, seed) if storage else None,
            **(options or ctx.spec.strategy_options.get(strategy, {})),
        )


def run_trial(spec: Any, out_dir: str, *, seed: int = 0) -> dict[str, Any]:
    """Evaluate the policy NNI gives this trial and report to NNI; returns the final metrics.

    Raises:
        FineTuneDiverged: the fine-tune diverged (the trial fails).
    """
    import nni

    from compsearch.evaluators.objective import collect_metrics
    from compsearch.evaluators.reporters import NNIReporter
    from compsearch.studies.runner import prepare

    ctx = prepare(_load(spec), out_dir)
    params = nni.get_next_parameter()
    policy = ctx.space.decode(params)
    evaluator = ctx.evaluator(seed)
    reporter = NNIReporter(metric=ctx.metrics[0])
    result = evaluator.evaluate(policy, reporter=reporter)
    metrics = collect_metrics(evaluator, policy, result)
    reporter.final(metrics)
    return metrics


def nni_experiment(spec: Any, out_dir: str | Path, *, strategy: str = "random", seed: int = 0,
                   trials: int | None = None, concurrency: int = 1, storage: str | None = None,
                   options: dict[str, Any] | None = None) -> Any:
    """A local ``nni.experiment.Experiment`` running ``strategy`` on the study ``spec``.

    Writes the effective spec to ``<out_dir>/nni_spec.json`` and prepares the run folder
    (the base model is trained once here, before any trial). Start it with
    ``exp.start(port)`` (or ``exp.run(port)``) and always ``exp.stop()``.

    Args:
        spec: a spec (mapping, TOML path or StudySpec).
        out_dir: the run folder; NNI's own files go to ``<out_dir>/nni``.
        strategy: a registered strategy (the tuner).
        seed: the study seed.
        trials: the budget (default: the spec's ``trials``).
        concurrency: trials at once.
        storage: where the tuner keeps its study (see :class:`SpecTuner`; default in memory).
        options: the strategy's options.
    """
    from nni.experiment import CustomAlgorithmConfig, Experiment

    from compsearch.studies.runner import prepare

    out = Path(out_dir).expanduser().resolve()
    ctx = prepare(_load(spec), out)
    spec_path = out / SPEC_FILE
    spec_path.write_text(json.dumps(ctx.spec.model_dump(mode="json")))
    budget = trials or ctx.spec.trials
    exp = Experiment("local")
    exp.config.experiment_name = f"compsearch-{ctx.spec.name}-{strategy}-s{seed}"
    exp.config.trial_command = f"{sys.executable} -m compsearch.nni_trial --spec {spec_path} --out {out} --seed {seed}"
    exp.config.trial_code_directory = str(out)
    exp.config.experiment_working_directory = str(out / "nni")
    exp.config.search_space = ctx.space.nni_search_space()
    exp.config.tuner = CustomAlgorithmConfig(
        class_name="compsearch.nni_trial.SpecTuner", code_directory=str(out),
        class_args={"spec": str(spec_path), "out_dir": str(out), "strategy": strategy, "seed": seed,
                    "n_trials": budget, "storage": storage, **(options or {})},
    )
    exp.config.max_trial_number = budget
    exp.config.trial_concurrency = concurrency
    exp.config.training_service.use_active_gpu = False
    return exp


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of ``python -m compsearch.nni_trial``."""
    parser = argparse.ArgumentParser(prog="python -m compsearch.nni_trial", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="study spec (.toml, or the .json nni_experiment writes)")
    parser.add_argument("--out", required=True, help="run folder (base-model cache)")
    parser.add_argument("--seed", type=int, default=0, help="study seed (evaluator)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    try:
        run_trial(args.spec, args.out, seed=args.seed)
    except FineTuneDiverged as e:
        print(f"diverged: {e}", file=sys.stderr)
        return DIVERGED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
