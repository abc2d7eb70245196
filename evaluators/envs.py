"""Gymnasium environments for the policy task: creation by id, plug-in namespaces, space checks.

Environments are made with ``gymnasium.make(env_id, **env_kwargs)``. Ids in a namespace
whose package registers its environments on demand (``MinAtar/...`` through the
``minatar`` package) are registered first. Nothing is downloaded.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from compsearch.errors import ConfigError

#: namespace prefix -> (module, registering function, pip package)
ENV_PLUGINS: dict[str, tuple[str, str, str]] = {"MinAtar/": ("minatar.gym", "register_envs", "minatar")}
#: which action spaces each algorithm acts in
_DISCRETE_ALGOS = ("dqn", "ppo")


def _register_plugin(env_id: str, key: str) -> None:
    import gymnasium as gym

    for prefix, (module, fn, package) in ENV_PLUGINS.items():
        if env_id.startswith(prefix) and env_id not in gym.registry:
            try:
                getattr(importlib.import_module(module), fn)()
            except ImportError:
                raise ConfigError(f"{key}={env_id!r} needs the {package!r} package; pip install {package}") from None


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, key: str = "agent.env") -> Any:
    """``gymnasium.make(env_id, **env_kwargs)`` with clear errors.

    Raises:
        ConfigError: an unknown id (close matches listed), a missing optional package
            (box2d, mujoco, minatar), or keyword arguments the environment rejects.
    """
    import gymnasium as gym

    _register_plugin(env_id, key)
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f"; did you mean one of {close}?" if close else "; see gymnasium.pprint_registry()"
        raise ConfigError(f"{key}={env_id!r} is not a registered gymnasium environment{hint}")
    try:
        return gym.make(env_id, **dict(env_kwargs or {}))
    except gym.error.DependencyNotInstalled as e:
        raise ConfigError(f"{key}={env_id!r} needs an optional package: {e}") from None
    except ModuleNotFoundError as e:
        raise ConfigError(f"{key}={env_id!r} needs the {e.name!r} package (pip install it)") from None
    except TypeError as e:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.env_kwargs={dict(env_kwargs or {})!r} rejected by {env_id!r}: {e}") from None


def check_spaces_fit(algo: str, env: Any, *, key: str = "agent.env") -> None:
    """Raise :class:`ConfigError` unless ``algo`` can act in ``env``: ``dqn``/``ppo`` need a
    ``Discrete`` action space, ``sac`` a ``Box``; observations must be a ``Box`` or ``Discrete``."""
    from gymnasium import spaces

    act, obs = env.action_space, env.observation_space
    discrete = isinstance(act, spaces.Discrete)
    if algo in _DISCRETE_ALGOS and not discrete:
        raise ConfigError(f"{key}={env.spec.id if env.spec else env!r} has a {type(act).__name__} action space; "
                          f"agent.algo={algo!r} needs Discrete actions; use agent.algo='sac' for continuous actions")
    if algo == "sac" and not isinstance(act, spaces.Box):
        raise ConfigError(f"{key}={env.spec.id if env.spec else env!r} has a {type(act).__name__} action space; "
                          f"agent.algo='sac' needs continuous (Box) actions; use 'dqn' or 'ppo'")
    if not isinstance(obs, (spaces.Box, spaces.Discrete)):
        raise ConfigError(f"{key}={env.spec.id if env.spec else env!r} has {type(obs).__name__} observations; "
                          f"only Box and Discrete observation spaces are supported")
