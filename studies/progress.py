"""Rich progress display of a run: one bar per strategy with ETA and the current hypervolume."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from compsearch.studies.results import (
    counted_trials,
    counts_toward_budget,
    load_studies,
    parse_study_name,
)

if TYPE_CHECKING:
    from compsearch.studies.run import Run


class RunProgress:
    """Context manager showing one bar per strategy (``trials x seeds`` counted trials).

    The text after each bar is the normalised hypervolume of the study that last finished
    a trial, and the best hypervolume this strategy reached over its seeds so far.

    Args:
        ctx: the run (reference point, storage).
        strategies: strategies of the run, in display order.
        seeds: the study seeds.
        n_trials: the budget per study.
    """

    def __init__(self, ctx: Run, strategies: Sequence[str], seeds: Sequence[int], n_trials: int) -> None:
        self.ctx = ctx
        self.n_trials = n_trials
        self.progress = Progress(
            TextColumn("[bold]{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[hv]}"),
        )
        existing = load_studies(ctx.storage)
        self.best: dict[str, float] = {}
        self.tasks: dict[str, TaskID] = {}
        for strategy in strategies:
            done = sum(len(counted_trials(existing.get((strategy, s), []), n_trials)) for s in seeds)
            self.best[strategy] = max(
                (ctx.hypervolume(counted_trials(existing.get((strategy, s), []), n_trials)) for s in seeds), default=0.0
            )
            self.tasks[strategy] = self.progress.add_task(
                strategy, total=n_trials * len(seeds), completed=done, hv=self._text(strategy, None)
            )

    def _text(self, strategy: str, current: tuple[int, float] | None) -> str:
        now = f"s{current[0]} HV {current[1]:.4f}  " if current is not None else ""
        return f"{now}best HV {self.best[strategy]:.4f}"

    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Advance the strategy's bar after ``trial`` and refresh its hypervolume."""
        parsed = parse_study_name(study.study_name)
        if parsed is None or parsed[0] not in self.tasks:
            return
        strategy, seed = parsed
        hv = self.ctx.hypervolume(counted_trials(study.get_trials(deepcopy=False), self.n_trials))
        self.best[strategy] = max(self.best[strategy], hv)
        advance = 1 if counts_toward_budget(trial) else 0
        self.progress.update(self.tasks[strategy], advance=advance, hv=self._text(strategy, (seed, hv)))

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()
