"""Which trials of a finished run ``compsearch export`` writes: ``--trial``, ``--pareto``, ``--best``.

Reads only ``run.json`` and the run's Optuna storage (no model, no plugin). The errors name the
command-line flag the value came from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from compsearch.errors import ConfigError
from compsearch.metrics import Constraint, pareto_indices
from compsearch.record import is_feasible, read_fail_reason, read_metrics
from compsearch.studies.results import load_studies, parse_study_name, study_name
from compsearch.studies.summary import canonical_key, read_run, run_storage, stored_constraints


@dataclass(frozen=True)
class Selected:
    """A trial chosen for export: its study, seed and frozen trial."""

    study: str
    seed: int
    trial: FrozenTrial

    @property
    def label(self) -> str:
        return f"{self.study}:{self.trial.number}"


def parse_trial(text: str) -> tuple[str, int]:
    """``"random-s0:3"`` -> ``("random-s0", 3)``; a malformed value raises naming ``--trial``."""
    study, sep, number = str(text).rpartition(":")
    if not sep or not study or not number.isdigit():
        raise ConfigError(f"--trial {text!r}: give STUDY:NUMBER, e.g. random-s0:3 (studies: compsearch show RUN)")
    return study, int(number)


_BOUND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|=)\s*([-+0-9.eE]+)\s*$")


def parse_best(text: str) -> tuple[Constraint, ...]:
    """Bounds of ``--best``: comma-separated ``METRIC<=X`` / ``METRIC>=X``, or the spec's
    constraint keys ``max_METRIC=X`` / ``min_METRIC=X`` (e.g. ``"size_kb<=20,accuracy>=0.9"``
    or ``"min_accuracy=0.9"``)."""
    out: dict[str, float] = {}
    for part in (p for p in str(text).split(",") if p.strip()):
        m = _BOUND.match(part)
        if m is None:
            raise ConfigError(f"--best {text!r}: cannot read {part.strip()!r}; give METRIC<=X, METRIC>=X, "
                              f"max_METRIC=X or min_METRIC=X, comma-separated (e.g. 'size_kb<=20,accuracy>=0.9')")
        name, op, value = m.groups()
        try:
            bound = float(value)
        except ValueError:
            raise ConfigError(f"--best {text!r}: {value!r} is not a number") from None
        if op == "=" and not name.startswith(("max_", "min_")):
            raise ConfigError(f"--best {text!r}: {part.strip()!r} needs max_/min_ before the metric, or <= / >=")
        out[name if op == "=" else f"{'max' if op == '<=' else 'min'}_{name}"] = bound
    if not out:
        raise ConfigError(f"--best {text!r} is empty; e.g. --best 'size_kb<=20'")
    return stored_constraints(out)


def _studies(run_dir: Path, run: Mapping[str, Any], storage: str | None) -> dict[str, tuple[int, list[FrozenTrial]]]:
    from compsearch.studies.storage import open_storage

    found = load_studies(open_storage(run_storage(dict(run), run_dir, storage), out_dir=run_dir))
    return {study_name(s, seed): (seed, trials) for (s, seed), trials in sorted(found.items())}


def select_trials(run_dir: str | Path, *, trial: str | None = None, pareto: bool = False, best: str | None = None,
                  storage: str | None = None) -> list[Selected]:
    """The trials to export: exactly one of ``trial`` (``"STUDY:NUMBER"``), ``pareto`` (the
    feasible non-dominated trials of every study, one per equivalent policy) or ``best``
    (:func:`parse_best`: the feasible trial with the highest validation quality satisfying
    the bounds; ties go to the smaller ``size_kb``, then the first study and trial). Studies
    of methods that train their own weights (``compsearch gates``) are left out: export
    re-derives weights with the evaluator.

    Raises:
        ConfigError: not exactly one choice, an unknown study or trial, a trial that did not
            complete, or no trial within the bounds (the messages name the flag).
    """
    if sum([trial is not None, pareto, best is not None]) != 1:
        raise ConfigError("choose the trials with exactly one of --trial STUDY:NUMBER, --pareto or --best CONSTRAINT")
    out_dir = Path(run_dir)
    run, spec = read_run(out_dir)
    studies = _studies(out_dir, run, storage)
    methods = {m for m in run.get("methods", []) if m not in spec.strategies}  # e.g. gates: not the evaluator's weights
    derivable = {name: v for name, v in studies.items() if (parse_study_name(name) or ("", 0))[0] not in methods}
    if trial is not None:
        study = parse_trial(trial)[0]
        if study in studies and study not in derivable:
            raise ConfigError(f"--trial {trial!r} comes from the {study.rsplit('-s', 1)[0]!r} method, which trains its "
                              f"own weights; export re-derives a strategy trial's weights with the evaluator only "
                              f"(strategy studies: {sorted(derivable)})")
        return [_one(trial, studies)]
    studies = derivable
    directions = [d for _, d in run["objectives"]]
    if pareto:
        chosen = []
        for name, (seed, trials) in studies.items():
            pool = [t for t in trials if is_feasible(t)]
            seen: set[str] = set()
            for i in sorted(pareto_indices([list(t.values) for t in pool], directions)) if pool else []:
                if canonical_key(pool[i]) not in seen:
                    seen.add(canonical_key(pool[i]))
                    chosen.append(Selected(name, seed, pool[i]))
        if not chosen:
            raise ConfigError(f"--pareto: run {str(out_dir)!r} has no feasible COMPLETE trial")
        return chosen
    return [_best(str(best), studies, spec.quality)]


def _one(text: str, studies: Mapping[str, tuple[int, list[FrozenTrial]]]) -> Selected:
    name, number = parse_trial(text)
    if name not in studies:
        raise ConfigError(f"--trial {text!r}: no study {name!r} in this run; studies: {sorted(studies)}")
    seed, trials = studies[name]
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise ConfigError(f"--trial {text!r}: study {name!r} has no trial {number} (trials 0..{len(trials) - 1})")
    if found.state != TrialState.COMPLETE:
        why = read_fail_reason(found)
        raise ConfigError(f"--trial {text!r} is {found.state.name}{f' ({why})' if why else ''}; only COMPLETE trials "
                          f"have a model to export")
    return Selected(name, seed, found)


def _best(text: str, studies: Mapping[str, tuple[int, list[FrozenTrial]]], quality: str) -> Selected:
    bounds = parse_best(text)
    pool = [(name, seed, t, read_metrics(t)) for name, (seed, trials) in studies.items() for t in trials
            if is_feasible(t)]
    unknown = sorted({c.metric for c in bounds} - {k for *_, m in pool for k in m})
    if unknown and pool:
        raise ConfigError(f"--best {text!r}: the trials record no metric {unknown}; recorded: {sorted(pool[0][3])}")
    ok = [p for p in pool if all(c.satisfied(p[3]) for c in bounds)]
    if not ok:
        raise ConfigError(f"--best {text!r}: none of the {len(pool)} feasible trials satisfies it; relax the bounds")
    name, seed, t, _ = min(ok, key=lambda p: (-p[3][quality], p[3].get("size_kb", 0.0), p[0], p[2].number))
    return Selected(name, seed, t)


__all__ = ["Selected", "parse_best", "parse_trial", "select_trials"]
