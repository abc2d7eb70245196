"""Every use of Optuna's private API, in one place (Optuna 5.0).

compsearch needs a few things Optuna's public API does not give: a study's storage and
ids (to write a system attr or change a trial's state by id), the atomic WAITING ->
RUNNING transition ``Study.ask`` itself uses (budget slots and the storage lock), the
study's per-thread trial cache (to drop it after taking a trial by hand), and the random
generators inside Optuna's samplers (to re-seed them per trial, so a resumed study
continues its sequence). Each is wrapped here with the attribute it touches; when an
Optuna release moves one, this module is the only one to change, and
``tests/test_optuna_compat.py`` says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

#: Optuna's list-valued constraints system attr (``optuna.study._constrained_optimization._CONSTRAINTS_KEY``):
#: written by Optuna's own ``constraints_func`` path, read by ``FrozenTrial.constraints``, the
#: samplers, ``plot_pareto_front`` and optuna-dashboard 0.21 (which reads only this one).
CONSTRAINTS_KEY = "constraints"


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage object (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (``Study._study_id``)."""
    return int(study._study_id)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage id of a running or frozen trial (``_trial_id``)."""
    return int(trial._trial_id)


def pop_waiting_trial_id(study: optuna.Study) -> int | None:
    """Take one WAITING trial and make it RUNNING, atomically across processes and machines
    (``Study._pop_waiting_trial_id``, what ``Study.ask`` calls); None when none waits."""
    found = study._pop_waiting_trial_id()
    return None if found is None else int(found)


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the study's per-thread trial cache (``Study._thread_local.cached_all_trials``),
    as ``Study.ask`` does after creating a trial, so the next read sees the storage."""
    study._thread_local.cached_all_trials = None


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial | int) -> FrozenTrial:
    """The stored state of ``trial`` (a trial, frozen trial or trial id), read now."""
    tid = trial if isinstance(trial, int) else trial_id(trial)
    return storage_of(study).get_trial(tid)


def create_running_trial(study: optuna.Study) -> int:
    """A new RUNNING trial without a sampler (``storage.create_new_trial``); its id."""
    return int(storage_of(study).create_new_trial(study_id(study)))


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial | int, key: str, value: Any) -> None:
    """``storage.set_trial_system_attr`` (a running ``optuna.Trial`` has no public setter)."""
    tid = trial if isinstance(trial, int) else trial_id(trial)
    storage_of(study).set_trial_system_attr(tid, key, value)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.system_attrs[key] = value


def set_trial_user_attr(study: optuna.Study, trial: FrozenTrial | int, key: str, value: Any) -> None:
    """``storage.set_trial_user_attr`` for a trial this process holds only as frozen or id."""
    storage_of(study).set_trial_user_attr(trial if isinstance(trial, int) else trial_id(trial), key, value)


def finish_trial(study: optuna.Study, trial: FrozenTrial | int, state: TrialState,
                 values: list[float] | None = None) -> bool:
    """Set the state of a trial held only as frozen or id; False when it had already finished
    (another process finished it first)."""
    try:
        return bool(storage_of(study).set_trial_state_values(
            trial if isinstance(trial, int) else trial_id(trial), state, values))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


# ---- sampler random generators ------------------------------------------------------------


def _reseed_rng(rng: Any, seed: int) -> Any:
    """Re-seed ``rng`` in place when it is Optuna's ``LazyRandomState`` or a ``RandomState``
    (shared references stay valid), or return a new ``Generator`` for a numpy ``Generator``."""
    if hasattr(rng, "rng") and isinstance(getattr(rng, "rng", None), np.random.RandomState):  # LazyRandomState
        rng.rng.seed(seed)
        return rng
    if isinstance(rng, np.random.RandomState):
        rng.seed(seed)
        return rng
    if isinstance(rng, np.random.Generator):
        return np.random.default_rng(seed)
    return rng


_INNER_SAMPLERS = ("_random_sampler", "_independent_sampler", "_fallback")


def reseed_sampler(sampler: optuna.samplers.BaseSampler, seed: int) -> None:
    """Re-seed every random generator of one of Optuna's samplers (``RandomSampler``,
    ``TPESampler``, ``NSGAIISampler``, ``NSGAIIISampler``, ``GPSampler``, optuna-integration's
    ``BoTorchSampler``) and of its inner samplers, deterministically from ``seed``.

    Touches ``_rng`` (a ``LazyRandomState``, re-seeded in place: NSGA-II's child-generation
    strategy holds the same object), the inner ``_random_sampler`` / ``_independent_sampler``
    (seeded ``seed + 1``, ``seed + 2``: distinct streams), and ``BoTorchSampler._seed`` (which it
    increments per proposal). ``QMCSampler._seed`` is left alone: its sequence is indexed by
    the trial number already.
    """
    seeds = np.random.SeedSequence(int(seed)).generate_state(1 + len(_INNER_SAMPLERS))
    if hasattr(sampler, "_rng"):
        sampler._rng = _reseed_rng(sampler._rng, int(seeds[0]))
    if type(sampler).__name__ == "BoTorchSampler" and getattr(sampler, "_seed", None) is not None:
        sampler._seed = int(seeds[0]) % (2**31 - 1)  # type: ignore[attr-defined]
    for k, name in enumerate(_INNER_SAMPLERS, start=1):
        inner = getattr(sampler, name, None)
        if isinstance(inner, optuna.samplers.BaseSampler) and inner is not sampler:
            reseed_sampler(inner, int(seeds[k]))


__all__ = [
    "CONSTRAINTS_KEY",
    "create_running_trial",
    "finish_trial",
    "forget_cached_trials",
    "frozen",
    "pop_waiting_trial_id",
    "reseed_sampler",
    "set_trial_system_attr",
    "set_trial_user_attr",
    "storage_of",
    "study_id",
    "trial_id",
]
