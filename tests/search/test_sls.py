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
    assert parts <= {"random", "mutation", "fallback", "distinct"} and "mutation" in parts
    assert sampler.origins == {t.number: o for t, o in zip(study.trials, origins, strict=True)}
    assert len({str(t.params) for t in study.trials}) == 10


def test_sls_rejects_sources_that_need_agents() -> None:
    with pytest.raises(TypeError, match=r"sources \['agents'\] need them"):
        SLSSampler(toy_space(), sources=(AgentProposals(),))


class _Predict:
    """A stub surrogate: predicted (signed) accuracy per candidate row, keyed by its features."""

    def __init__(self, obj: StrategyObjective, table: dict[tuple[int, ...], float]) -> None:
        self.rows = {obj.featurize(np.array([a]))[0].tobytes(): v for a, v in table.items()}

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.array([[self.rows[r.tobytes()]] for r in np.asarray(x, np.float32)])
        return mean, np.zeros_like(mean)


def _front_setup(constraints: dict[str, float]) -> tuple[StrategyObjective, list[tuple[int, ...]], np.ndarray]:
    """Objective over the toy space (accuracy learned, size_bits exact) and four actions sorted
    by their exact size gain ``1 - size / size(identity)``, with those gains."""
    space = toy_space()
    obj = StrategyObjective(SearchContext(space=space, constraints=constraints), ["maximize", "minimize"], layout=block_layout(space))
    rng = np.random.default_rng(3)
    acts = np.array([[rng.integers(n) for n in space.action_sizes()] for _ in range(40)])
    gain = 1.0 - obj.cost.metrics(acts)["size_bits"] / obj.cost.identity["size_bits"]
    order = np.argsort(gain)
    pick4 = order[[5, 15, 25, 35]]  # four distinct, increasing gains
    return obj, [tuple(int(v) for v in acts[i]) for i in pick4], gain[pick4]


def _obs(obj: StrategyObjective, number: int, action: tuple[int, ...], acc: float) -> Observation:
    params = obj.space.params_from_actions(list(action))
    return Observation(number, params, (acc, 0.0), {})


def test_front_scores_are_the_hypervolume_a_candidate_adds_by_hand() -> None:
    obj, (d, a, c, b), g = _front_setup({})
    gd, ga, gc, gb = g
    assert gd < ga < gc < gb
    history = [_obs(obj, 0, a, 0.9), _obs(obj, 1, b, 0.8)]
    obj.attach(_Predict(obj, {c: 0.85, d: 0.82}), kappa=0.0)  # type: ignore[arg-type]
    scores = obj.front_scores(np.array([c, d]), history)
    # reference: accuracy 0.8 - 0.1 * (0.9 - 0.8) = 0.79, size gain 0; scales: accuracy 0.1,
    # size gain gb - ga. Normalised: A = (1.1, ga/s), B = (0.1, gb/s), C = (0.6, gc/s).
    s = gb - ga
    # C's box outside A's and B's: accuracy from 0.1 to 0.6, size gain from ga to gc.
    assert scores[0] == pytest.approx(0.5 * (gc - ga) / s, rel=1e-6)
    # D = (0.3, gd/s) is dominated by A; escaping A needs min(1.1 - 0.3, (ga - gd)/s).
    assert scores[1] == pytest.approx(-min(0.8, (ga - gd) / s) - 1e-9, rel=1e-6)


def test_front_scores_leave_infeasible_trials_out_and_penalise_predicted_violations() -> None:
    obj, (d, a, c, b), g = _front_setup({"min_accuracy": 0.84})
    _, ga, gc, gb = g
    history = [_obs(obj, 0, a, 0.9), _obs(obj, 1, b, 0.8)]  # B violates min_accuracy: not on the front
    obj.attach(_Predict(obj, {c: 0.85, d: 0.82}), kappa=0.0)  # type: ignore[arg-type]
    scores = obj.front_scores(np.array([c, d]), history)
    # front = A alone; both trials span the scales (0.1 and gb - ga); the accuracy reference is
    # the constraint's bound 0.84. Normalised: A = (0.6, ga/s), C = (0.1, gc/s), D = (-0.2, gd/s).
    s = gb - ga
    # C adds its box above A's size gain: 0.1 * (gc - ga) / s.
    assert scores[0] == pytest.approx(0.1 * (gc - ga) / s, rel=1e-6)
    # D is 0.2 below the reference, dominated by A (escape: min(0.6 + 0.2, (ga - gd)/s)), and
    # violates the bound by (0.84 - 0.82) / 0.84, times penalty 2.
    escape = min(0.8, (ga - g[0]) / s)
    assert scores[1] == pytest.approx(-0.2 - escape - 1e-9 - 2.0 * 0.02 / 0.84, rel=1e-6)


def test_hirl_front_keeps_the_goal_score_while_the_surrogate_models_the_proxy() -> None:
    from compsearch.search.rl.critic import FrontRewards

    obj, (d, a, c, b), _ = _front_setup({})
    critic = FrontRewards().build(0)
    obj.attach(_Predict(obj, {c: 0.85, d: 0.82}), kappa=0.0)  # type: ignore[arg-type]
    obj.proxy_mode = True
    cands, counts = np.array([c, d]), np.ones(2)
    goal_scores = obj.score(cands, np.full(2, 0.5), [obj.default_weights])[0][:, 0]
    assert critic.scores(obj, cands, counts, 0.5, []).tolist() == goal_scores.tolist()
    obj.proxy_mode = False
    assert critic.scores(obj, cands, counts, 0.5, [_obs(obj, 0, a, 0.9)]).tolist() == obj.front_scores(cands, [_obs(obj, 0, a, 0.9)]).tolist()
