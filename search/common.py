"""The thin Optuna shell every compression strategy shares.

A :class:`CompressionSampler` proposes one whole policy of its :class:`Space`
per trial in ``sample_relative``. Everything else is Optuna glue that keeps it
a well-behaved sampler:

* parameters outside its compression space (or a foreign search space handed
  to ``sample_relative``) are sampled by an independent fallback sampler;
* its learnt state is rebuilt from the study's trials (``observations``), so a
  resumed or multi-worker study continues where it stopped;
* proposals of running trials are passed in as ``pending`` so a strategy can
  avoid giving two running trials the same policy;
* a proposal equivalent to a finished or running trial's policy (the same canonical
  policy, :mod:`compsearch.spaces.policy`) is never made while the space has another:
  :meth:`CompressionSampler.distinct` replaces it by the nearest unseen policy (one
  dimension changed, in an order drawn from ``self._rng``), else a random unseen one;
  only an exhausted space repeats a policy (the objective then reuses the stored result);
* its random generator ``self._rng`` is re-seeded before every proposal from
  ``(seed, trial number)`` (:func:`trial_seed`), so a study killed and resumed with a new
  sampler object continues the sequence instead of restarting it, and one seed gives
  the same proposals in any process.

Optuna's own samplers get the same continuity from :class:`TrialSeededSampler`, which
the strategy registry wraps around them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from compsearch import optuna_compat, record
from compsearch.search.registry import SearchContext
from compsearch.search.seeding import trial_seed

if TYPE_CHECKING:
    from optuna.study import Study

    from compsearch.spaces.base import Space


@dataclass(frozen=True)
class Observation:
    """One finished trial of the compression space.

    Attributes:
        number: Optuna trial number.
        params: the space's params (one value per dimension).
        values: the study's objective values, in ``SearchContext.objectives`` order.
        metrics: every metric the evaluator stored (``record.read_metrics(trial)``), may be empty.
    """

    number: int
    params: dict[str, Any]
    values: tuple[float, ...]
    metrics: dict[str, Any]

    def signed(self, directions: Sequence[str]) -> np.ndarray:
        """Values oriented so that larger is better for every objective, shape ``m``."""
        return np.array([v if d == "maximize" else -v for v, d in zip(self.values, directions, strict=True)])


def _trials_in(study: Study, trials: Sequence[FrozenTrial] | None, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    if trials is None:
        return study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if t.state in states]


def space_params(params: Mapping[str, Any], space: Space) -> dict[str, Any] | None:
    """The part of ``params`` that is a point of ``space`` (one valid choice per dimension),
    or None if a dimension is missing or invalid. Extra params (a learning rate the
    objective also suggests) are dropped, so such trials still count for the strategy."""
    names = space.param_names()
    if not all(n in params for n in names):
        return None
    point = {n: params[n] for n in names}
    return point if space.contains(point) else None


def observations(study: Study, space: Space, trials: Sequence[FrozenTrial] | None = None) -> list[Observation]:
    """COMPLETE trials of ``study`` that hold a point of ``space`` (see :func:`space_params`);
    ``Observation.params`` holds only the space's params.

    Args:
        trials: the study's trials as already read (default: read them now). Pass the
            same list to :func:`pending_params` so that both see one snapshot.
    """
    out = []
    for t in _trials_in(study, trials, (TrialState.COMPLETE,)):
        point = space_params(t.params, space)
        if t.values is None or point is None:
            continue
        out.append(Observation(t.number, point, tuple(t.values), record.read_metrics(t)))
    return out


def pending_params(
    study: Study, space: Space, exclude: int | None = None, trials: Sequence[FrozenTrial] | None = None
) -> list[dict[str, Any]]:
    """Params of RUNNING/WAITING trials in ``space`` (except trial ``exclude``), plus the
    proposals other processes have stored but not yet suggested (system attr ``compsearch:proposal``).

    Args:
        trials: the study's trials as already read (default: read them now), see :func:`observations`.
    """
    out = []
    for t in _trials_in(study, trials, (TrialState.RUNNING, TrialState.WAITING)):
        if t.number == exclude:
            continue
        proposal = record.read_proposal(t)
        point = space_params(proposal if proposal is not None else t.params, space)
        if point is not None:
            out.append(point)
    return out


def params_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Hashable key of a params dict (for de-duplicating proposals)."""
    return tuple(sorted(params.items()))


def tried_keys(study: Study, space: Space, pending: Sequence[Mapping[str, Any]],
               trials: Sequence[FrozenTrial] | None = None) -> set[str]:
    """Canonical policy keys (``space.canonical_key``) of every finished trial -- COMPLETE,
    PRUNED, or FAILED for a reason of the candidate (``record.counts_toward_budget``: an
    interrupted trial's policy is not a result) -- and of ``pending``.

    A finished trial counts by its params in ``space``, or, when it stopped before
    suggesting them all, by the proposal stored in its ``compsearch:proposal`` attribute.
    """
    keys = {space.canonical_key(p) for p in pending}
    return keys | {space.canonical_key(p) for p in _spent_points(study, space, trials, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))}


def _spent_points(study: Study, space: Space, trials: Sequence[FrozenTrial] | None,
                  states: tuple[TrialState, ...]) -> list[dict[str, Any]]:
    """Points of ``space`` of the trials in ``states`` that count toward the budget (see :func:`tried_keys`)."""
    out = []
    for t in _trials_in(study, trials, states):
        if not record.counts_toward_budget(t):
            continue
        params = space_params(t.params, space)
        proposal = record.read_proposal(t)
        if params is None and proposal is not None:
            params = space_params(proposal, space)
        if params is not None:
            out.append(params)
    return out


def failed_params(study: Study, space: Space, trials: Sequence[FrozenTrial] | None = None) -> list[dict[str, Any]]:
    """Points of ``space`` of FAILED trials that failed for a reason of the candidate (a
    diverged fine-tune, out of memory; not an interruption): spent, but absent from the
    history a strategy learns from, so a strategy that walks a fixed design must skip them."""
    return _spent_points(study, space, trials, (TrialState.FAIL,))


class CompressionSampler(BaseSampler, ABC):
    """Base of compsearch's own strategies: subclasses implement :meth:`propose`.

    Args:
        ctx: the search context (space, seed, evaluator, objectives, constraints).
    """

    #: re-seeds itself per trial (the registry does not wrap it in a TrialSeededSampler)
    seeds_per_trial = True

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.space = ctx.space
        self._distributions = ctx.space.optuna_distributions()
        self._fallback = RandomSampler(seed=ctx.seed)
        self._rng = np.random.default_rng(ctx.seed)
        self._lock = threading.Lock()  # for subclasses: one proposal at a time when threads share a sampler

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Ray Tune pickles its searcher, with the sampler): the lock is left out."""
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @abstractmethod
    def propose(
        self,
        study: Study,
        history: list[Observation],
        pending: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Params for the next trial: one value per dimension of ``self.space``.

        Args:
            study: the Optuna study (read-only use).
            history: finished trials of this space, oldest first.
            pending: params proposed to running trials; avoid repeating them.
        """

    # ---- Optuna BaseSampler API -------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if not done or any(space_params(t.params, self.space) is not None for t in done[-20:]):
            return dict(self._distributions)
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Re-seed ``self._rng`` and the fallback sampler from ``(seed, trial number)``."""
        if self.ctx.seed is not None:
            seed = trial_seed(self.ctx.seed, trial.number)
            self._rng = np.random.default_rng(seed)
            optuna_compat.reseed_sampler(self._fallback, seed)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        if search_space != self._distributions:
            return {
                name: self._fallback.sample_independent(study, trial, name, dist)
                for name, dist in search_space.items()
            }
        # One read for both: with two reads, a trial finishing in between (another worker's)
        # is in neither, and its policy could be proposed again while it is still counted.
        trials = study.get_trials(deepcopy=False)
        history = observations(study, self.space, trials)
        pending = pending_params(study, self.space, exclude=trial.number, trials=trials)
        params = self.propose(study, history, pending)
        params = self.distinct(params, tried_keys(study, self.space, pending, trials))
        record.record_proposal(study, trial, params)
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()
        self._rng = np.random.default_rng()

    def distinct(self, params: dict[str, Any], tried: set[str], tries: int = 100) -> dict[str, Any]:
        """``params`` when its canonical policy is not in ``tried``; else the first unseen
        policy among the one-dimension changes of ``params`` (dimensions and choices in an
        order drawn from ``self._rng``), then among ``tries`` random points; ``params``
        itself when none is unseen (an exhausted space)."""
        space = self.space
        if space.canonical_key(params) not in tried:
            return params
        dims = space.dimensions()
        for i in self._rng.permutation(len(dims)):
            dim = dims[int(i)]
            for j in self._rng.permutation(dim.size):
                other = {**params, dim.name: dim.choices[int(j)]}
                if other[dim.name] != params[dim.name] and space.canonical_key(other) not in tried:
                    return other
        for _ in range(tries):
            other = space.params_from_actions([int(self._rng.integers(n)) for n in space.action_sizes()])
            if space.canonical_key(other) not in tried:
                return other
        return params

    def spent(self, study: Study, history: Sequence[Observation], pending: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every point a proposal should not repeat: the finished ``history``, ``pending``, and
        the candidates that FAILED for a reason of their own (:func:`failed_params`). Those are
        absent from ``history``, so a strategy that avoids only what it learned from proposes a
        failed point again (and :meth:`distinct` turns the repeat into a neighbour of it)."""
        return [o.params for o in history] + list(pending) + failed_params(study, self.space)

    def canonical_key(self, params: Mapping[str, Any]) -> str:
        """The canonical policy key of ``params`` (equal for equivalent policies)."""
        return self.space.canonical_key(params)

    # ---- helpers for subclasses -----------------------------------------------------
    def random_params(self, avoid: set[tuple[tuple[str, Any], ...]] | None = None, tries: int = 100) -> dict[str, Any]:
        """A uniformly random point of the space, avoiding keys in ``avoid`` when possible."""
        sizes = self.space.action_sizes()
        params: dict[str, Any] = {}
        for _ in range(tries):
            params = self.space.params_from_actions([int(self._rng.integers(n)) for n in sizes])
            if not avoid or params_key(params) not in avoid:
                break
        return params


def is_multi_objective(study: Study) -> bool:
    return len(study.directions) > 1


__all__ = [
    "CompressionSampler",
    "Observation",
    "failed_params",
    "is_multi_objective",
    "observations",
    "params_key",
    "pending_params",
    "space_params",
    "tried_keys",
]
