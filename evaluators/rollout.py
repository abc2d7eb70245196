"""Episodic return of a network acting deterministically, over fixed environment seeds.

``return`` (the quality metric of the policy task) is the mean **undiscounted** episodic
return ``mean_i sum_t r_{i,t}`` over ``N`` episodes, episode ``i`` starting from
``env.reset(seed=seeds[i])``; ``return_se`` is its standard error ``std_i(R_i, ddof=1) /
sqrt(N)`` (0 for ``N = 1``). An episode ends when the environment terminates or
truncates (its own time limit) or after ``max_steps`` steps. The ``N`` episodes run side
by side: one batched forward of the network per time step over the episodes still
running, so a forward costs the same for 1 or 50 episodes. The actions are the network's
deterministic ones (argmax of logits/Q-values, or the continuous action); the same seeds
give the same number.

Rollouts run torch single-threaded (:func:`torch_threads`): a forward of a few
observations gains nothing from intra-op threads, and on a loaded machine the thread
pool's hand-offs made a CartPole rollout 30x slower (8 s instead of 0.3 s, measured).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compsearch.errors import ConfigError
from compsearch.evaluators.envs import make_env

#: deterministic actor: ``b x obs...`` float observations -> ``b`` action indices or ``b x n`` actions
Actor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Rollout:
    """What a batch of episodes did.

    Attributes:
        returns: undiscounted return of every episode, in seed order.
        lengths: steps of every episode.
        observations: ``T x obs...`` every observation acted on (when recorded), float32.
    """

    returns: tuple[float, ...]
    lengths: tuple[int, ...]
    observations: torch.Tensor | None = None

    @property
    def mean(self) -> float:
        """Mean undiscounted return over the episodes."""
        return float(np.mean(self.returns))

    @property
    def se(self) -> float:
        """Standard error of :attr:`mean`: ``std(ddof=1) / sqrt(N)``; 0 for one episode."""
        n = len(self.returns)
        return float(np.std(self.returns, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def episode_seeds(start: int, n: int) -> tuple[int, ...]:
    """``start, start + 1, ..., start + n - 1``."""
    if n < 1:
        raise ConfigError(f"episodes={n!r} must be >= 1")
    return tuple(range(start, start + n))


def network_actor(net: torch.nn.Module, device: torch.device | str = "cpu") -> Actor:
    """Deterministic actor of a :class:`~compsearch.evaluators.agents.PolicyNet`-like network
    (eval mode, no gradients): argmax of discrete outputs, the output itself when continuous."""
    continuous = bool(getattr(net, "continuous", False))

    @torch.no_grad()
    def act(obs: torch.Tensor) -> torch.Tensor:
        net.eval()
        out = net(obs.to(device))
        return out if continuous else out.argmax(dim=1)

    return act


def rollout(
    actor: Actor,
    env_id: str,
    seeds: Sequence[int],
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    record: bool = False,
    epsilon: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Rollout:
    """Run one episode per seed, all side by side, and return their returns.

    Args:
        actor: maps a ``b x obs...`` float32 batch (of the episodes still running) to actions.
        env_id: gymnasium id; ``env_kwargs`` its keyword arguments.
        seeds: ``env.reset(seed=s)`` of every episode.
        max_steps: cut episodes after this many steps (None = the environment's own limit,
            or 100000 when it has none).
        record: keep every observation acted on (``Rollout.observations``).
        epsilon: probability of a uniformly random action instead of the actor's (discrete
            action spaces; exploration of distillation rollouts). 0 for measuring.
        rng: generator of the epsilon choices (required when ``epsilon > 0``).
    """
    envs = [make_env(env_id, env_kwargs) for _ in seeds]
    try:
        with torch_threads(1):
            return _run(actor, envs, seeds, max_steps, record, epsilon, rng)
    finally:
        for env in envs:
            env.close()


def _run(actor: Actor, envs: list[Any], seeds: Sequence[int], max_steps: int | None, record: bool,
         epsilon: float, rng: np.random.Generator | None) -> Rollout:
    if epsilon > 0 and rng is None:
        raise ConfigError("rollout with epsilon > 0 needs rng= (a numpy Generator) for reproducible exploration")
    limit = max_steps or (envs[0].spec.max_episode_steps if envs[0].spec and envs[0].spec.max_episode_steps else 100_000)
    space = envs[0].action_space
    obs = [env.reset(seed=int(s))[0] for env, s in zip(envs, seeds, strict=True)]
    returns, lengths = [0.0] * len(envs), [0] * len(envs)
    live = list(range(len(envs)))
    seen: list[torch.Tensor] = []
    while live:
        batch = torch.as_tensor(np.stack([np.asarray(obs[i]) for i in live]), dtype=torch.float32)
        if record:
            seen.append(batch)
        actions = actor(batch).cpu().numpy()
        still = []
        for j, i in enumerate(live):
            action = actions[j]
            if epsilon > 0 and rng is not None and rng.random() < epsilon:
                action = rng.integers(int(space.n))
            obs[i], reward, terminated, truncated, _ = envs[i].step(action.item() if action.ndim == 0 else action)
            returns[i] += float(reward)
            lengths[i] += 1
            if not (terminated or truncated) and lengths[i] < limit:
                still.append(i)
        live = still
    return Rollout(returns=tuple(returns), lengths=tuple(lengths), observations=torch.cat(seen) if record else None)
