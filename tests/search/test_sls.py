"""``sls`` (surrogate-guided local search) and the proposal pool it shares with ``hirl``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import optuna
import pytest

from compsearch.search.common import Observation
from compsearch.search.registry import SearchContext, get_strategy
from compsearch.search.rl.layout import block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.proposals import AgentProposals, MutationProposals, PoolContext, pick
from compsearch.search.sls import ORIGIN_ATTR, SLSSampler
from compsearch.testing import toy_objective, toy_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Fixed:
    """A stub source proposing fixed candidates."""

    rows: tuple[tuple[int, ...], ...]
    label: str
    needs_agents: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.label

    def candidates(self, ctx: PoolContext) -> np.ndarray:
        return np.array(self.rows, dtype=np.int64)


def test_pick_scores_deduplicates_avoids_and_names_every_origin() -> None:
    ctx = PoolContext(objective=None, history=[], goal=0.5, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    a, b = Fixed(((1, 1), (2, 2), (0, 5)), "a"), Fixed(((2, 2), (3, 0)), "b")
    # score = sum of the actions: (0, 5) = 5 is best but avoided; (2, 2) = 4 came from both sources
    best, origin = pick([a, b], ctx, avoid={(0, 5)}, score=lambda c, n: c.sum(1).astype(float))
    assert best.tolist() == [2, 2] and origin == "a+b"
    # the counts passed to the score say how many sources produced each candidate
    best, origin = pick([a, b], ctx, avoid=set(), score=lambda c, n: n.astype(float) * 10 - c.sum(1))
    assert best.tolist() == [2, 2]
    assert pick([a], ctx, avoid={(1, 1), (2, 2), (0, 5)}, score=lambda c, n: c.sum(1)) is None


def test_mutations_change_one_or_two_choices_of_the_best_trials() -> None:
    space = toy_space()
    obj = StrategyObjective(SearchContext(space=space), ["maximize", "minimize"], layout=block_layout(space))
    best = [3, 1, 2, 0, 0] * 3
    history = [Observation(0, space.params_from_actions(best), (0.9, 100.0), {})]
    ctx = PoolContext(objective=obj, history=history, goal=0.5, rng=np.random.default_rng(0))
    rows = MutationProposals(n=50, incumbents=1).candidates(ctx)
    changed = (rows != np.array(best)).sum(1)
    assert rows.shape == (50, 15) and changed.max() <= 2 and changed.min() >= 0
    assert (changed >= 1).mean() > 0.5  # a redrawn choice may land on the same value


def _study(sampler, n: int) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(toy_objective(toy_space()), n_trials=n)
    return study


def test_sls_proposes_random_points_and_mutations_and_records_each_origin() -> None:
    sampler = get_strategy("sls", space=toy_space(), seed=0, startup_trials=2)
    study = _study(sampler, 10)
    origins = [t.system_attrs[ORIGIN_ATTR] for t in study.trials]
    assert origins[:2] == ["startup", "startup"]
    parts = {p for o in origins[2:] for p in o.split("+")}
    assert parts <= {"random", "mutation", "fallback"} and "mutation" in parts
    assert sampler.origins == {t.number: o for t, o in zip(study.trials, origins, strict=True)}
    assert len({str(t.params) for t in study.trials}) == 10


def test_sls_rejects_sources_that_need_agents() -> None:
    with pytest.raises(TypeError, match=r"sources \['agents'\] need them"):
        SLSSampler(toy_space(), sources=(AgentProposals(),))
