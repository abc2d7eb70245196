"""Training an SB3 agent from an :class:`~compsearch.evaluators.agents.AgentRecipe` (seeded,
RNG-neutral for the caller), with an optional hook on the model before learning starts."""

from __future__ import annotations

import inspect
import random
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from compsearch.errors import ConfigError
from compsearch.evaluators.envs import check_spaces_fit, make_env
from compsearch.evaluators.rollout import torch_threads

if TYPE_CHECKING:
    from compsearch.evaluators.agents import AgentRecipe


def check_hyper(algo_cls: Any, hyper: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming every ``agent.hyper`` key the SB3 class does not take."""
    allowed = set(inspect.signature(algo_cls.__init__).parameters) - {"self", "policy", "env", "seed", "policy_kwargs",
                                                                     "device", "verbose", "tensorboard_log", "_init_setup_model"}
    unknown = sorted(set(hyper) - allowed)
    if unknown:
        raise ConfigError(f"agent.hyper has key(s) {unknown} that {algo_cls.__name__} does not take; allowed: {sorted(allowed)}")


def learn(
    recipe: AgentRecipe,
    policy_kwargs: dict[str, Any],
    defaults: Mapping[str, Any],
    *,
    device: str = "cpu",
    prepare: Callable[[Any], None] | None = None,
    callback: Any = None,
) -> Any:
    """Build the SB3 algorithm of ``recipe`` and learn ``recipe.steps`` environment steps.

    Args:
        recipe: algo, env, steps, seed, ``hyper`` (overrides ``defaults``), ``n_envs``.
        policy_kwargs: SB3 ``policy_kwargs``.
        defaults: default hyper-parameters of the algorithm.
        device: torch device of training.
        prepare: called with the SB3 model before ``learn`` (e.g. to attach gates).
        callback: an SB3 callback passed to ``learn``.

    Returns:
        The trained SB3 model. The global python/numpy/torch RNG states are restored.
        Training runs torch single-threaded (small networks gain nothing from intra-op
        threads, lose much on a loaded machine, and the result does not depend on the
        machine's thread count).

    Raises:
        ConfigError: unknown env id, unfit spaces, or bad ``agent.hyper`` keys.
    """
    from stable_baselines3.common.env_util import make_vec_env

    from compsearch.evaluators.agents import _algo_class

    cls = _algo_class(recipe.algo)
    hyper = {**defaults, **recipe.hyper}
    check_hyper(cls, hyper)
    probe = make_env(recipe.env, recipe.env_kwargs)
    check_spaces_fit(recipe.algo, probe)
    probe.close()
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        try:
            env = make_vec_env(lambda: make_env(recipe.env, recipe.env_kwargs), n_envs=recipe.n_envs, seed=recipe.seed)
            model = cls("MlpPolicy", env, policy_kwargs=policy_kwargs, seed=recipe.seed, device=device, verbose=0, **hyper)
            if prepare is not None:
                prepare(model)
            model.learn(total_timesteps=recipe.steps, callback=callback)
            env.close()
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    return model


def progress_callback(label: str, total: int, *, every: float = 0.1, stream: Any = None) -> Any:
    """An SB3 callback printing ``label: steps/total (pct), elapsed, mean return of the last
    episodes, time left`` to ``stream`` (default stderr) at every ``every`` fraction of ``total``
    environment steps: agent training runs for minutes to hours without other output."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _Progress(BaseCallback):  # type: ignore[misc]
        def _on_training_start(self) -> None:
            self.start, self.next = time.perf_counter(), every

        def _on_step(self) -> bool:
            done = self.num_timesteps / total
            if done >= self.next or self.num_timesteps >= total:
                self.next = (int(done / every) + 1) * every
                elapsed = time.perf_counter() - self.start
                returns = [e["r"] for e in self.model.ep_info_buffer or []]
                mean = f", return {np.mean(returns):.1f} (last {len(returns)} episodes)" if returns else ""
                left = elapsed * (1 - done) / done if done > 0 else 0.0
                print(f"{label}: {self.num_timesteps:,}/{total:,} steps ({done:.0%}), {elapsed / 60:.1f} min{mean}, "
                      f"~{left / 60:.1f} min left", file=stream or sys.stderr, flush=True)
            return True

    return _Progress()
