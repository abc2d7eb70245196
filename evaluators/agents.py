"""Reinforcement-learning agents to compress: train from a recipe or load an SB3 file, and
extract the acting network as a plain ``nn.Module``.

Agents come from stable-baselines3 (``pip install "compsearch[rl]"``): ``dqn`` and ``ppo``
for discrete actions, ``sac`` for continuous ones. :func:`train_agent` trains an
:class:`AgentRecipe` into a folder, seeded and cached under a hash of the recipe (and
the torch / SB3 / gymnasium versions), like the base model of a classification study.
:func:`load_agent` reads an SB3 ``.zip`` (the format ``model.save`` writes).

Trust. SB3's own loader unpickles parts of the file (spaces, schedules, classes). This
module never does: it reads the archive's ``data`` member as plain JSON (only its
human-readable fields: policy module, space shapes, network sizes), rebuilds the policy
from the recipe and those fields, and loads ``policy.pth`` with
``torch.load(weights_only=True)``. Nothing in an agent file is executed. An agent needing
custom code (a features extractor class of its own) cannot be rebuilt that way and is
rejected with a message that says so.

``Agent.network()`` gives the acting network as a plain ``nn.Module``
(:class:`~compsearch.evaluators.policy_net.PolicyNet`, re-exported here).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError, ModelError, check_int_at_least
from compsearch.evaluators.envs import check_spaces_fit, make_env
from compsearch.evaluators.policy_net import PolicyNet, acting_module, acting_parts, policy_network

__all__ = ["ALGOS", "DEFAULT_HYPER", "Agent", "AgentRecipe", "PolicyNet", "SmallCNN", "acting_module", "acting_parts", "algo_class",
           "load_agent", "new_policy", "policy_kwargs", "policy_network", "train_agent"]

ALGOS = ("dqn", "ppo", "sac")
FEATURES = ("flatten", "nature_cnn", "small_cnn")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "leakyrelu": nn.LeakyReLU}
_SB3_DEFAULTS: dict[str, tuple[tuple[int, ...], str]] = {"dqn": ((64, 64), "relu"), "ppo": ((64, 64), "tanh"), "sac": ((256, 256), "relu")}
_POLICY_MODULE = {"dqn": "stable_baselines3.dqn.policies", "ppo": "stable_baselines3.common.policies", "sac": "stable_baselines3.sac.policies"}
_RESERVED = {"policy", "env", "seed", "policy_kwargs", "device", "verbose", "tensorboard_log", "_init_setup_model"}
#: CI-sized hyper-parameters (CartPole-sized problems), overridden by ``AgentRecipe.hyper``.
DEFAULT_HYPER: dict[str, dict[str, Any]] = {
    "dqn": {"learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 50_000, "learning_starts": 1000, "gamma": 0.99,
            "target_update_interval": 10, "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
            "exploration_final_eps": 0.04},
    "ppo": {"learning_rate": 1e-3, "n_steps": 256, "batch_size": 64, "n_epochs": 10, "gamma": 0.98, "gae_lambda": 0.8},
    "sac": {"learning_rate": 7.3e-4, "buffer_size": 300_000, "batch_size": 256, "learning_starts": 1000, "gamma": 0.99,
            "tau": 0.02, "train_freq": 8, "gradient_steps": 8},
}


@dataclass(frozen=True)
class AgentRecipe:
    """How to build (and train) an agent; the spec's ``[agent]`` table.

    Attributes:
        algo: ``dqn``, ``ppo`` (discrete actions) or ``sac`` (continuous actions).
        env: gymnasium environment id (``CartPole-v1``, ``Hopper-v5``, ``MinAtar/Breakout-v1``).
        steps: environment steps of training.
        seed: seed of the network initialisation, the environment and exploration.
        net_arch: hidden layer widths of the policy (and value/critic) MLPs; None = SB3's
            default for ``algo`` (dqn/ppo ``(64, 64)``, sac ``(256, 256)``).
        activation: ``relu``, ``tanh``, ``elu`` or ``leakyrelu``; None = SB3's default
            (ppo ``tanh``, else ``relu``).
        features: features extractor: ``flatten`` (vector observations), ``nature_cnn``
            (SB3's Atari CNN, image observations >= 36x36) or ``small_cnn``
            (:class:`SmallCNN`, MinAtar-sized images).
        features_dim: output width of a CNN features extractor.
        n_envs: parallel environments during training.
        env_kwargs: keyword arguments of ``gymnasium.make``.
        hyper: SB3 constructor arguments overriding :data:`DEFAULT_HYPER` (``learning_rate``,
            ``buffer_size``, ...).
    """

    algo: str
    env: str
    steps: int = 10_000
    seed: int = 0
    net_arch: tuple[int, ...] | None = None
    activation: str | None = None
    features: str = "flatten"
    features_dim: int = 128
    n_envs: int = 1
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    hyper: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"agent.algo={self.algo!r} is unknown; allowed: {list(ALGOS)}")
        if not isinstance(self.env, str) or not self.env:
            raise ConfigError(f"agent.env={self.env!r} must be a gymnasium environment id such as 'CartPole-v1'")
        check_int_at_least("agent", self, {"steps": 1, "seed": 0, "features_dim": 1, "n_envs": 1})
        if self.features not in FEATURES:
            raise ConfigError(f"agent.features={self.features!r} is unknown; allowed: {list(FEATURES)}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ConfigError(f"agent.activation={self.activation!r} is unknown; allowed: {sorted(ACTIVATIONS)}")
        if self.net_arch is not None:
            arch = tuple(self.net_arch)
            if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in arch):
                raise ConfigError(f"agent.net_arch={self.net_arch!r} must be a list of integers >= 1 (hidden widths)")
            object.__setattr__(self, "net_arch", arch)
        bad = sorted(set(self.hyper) & _RESERVED)
        if bad:
            raise ConfigError(f"agent.hyper sets {bad}, which the recipe controls; remove them (use agent.seed, agent.net_arch, ...)")

    @property
    def arch(self) -> tuple[int, ...]:
        """Hidden widths in force (SB3's default when ``net_arch`` is None)."""
        return self.net_arch if self.net_arch is not None else _SB3_DEFAULTS[self.algo][0]

    @property
    def activation_name(self) -> str:
        """Activation in force (SB3's default when ``activation`` is None)."""
        return self.activation or _SB3_DEFAULTS[self.algo][1]

    def key(self) -> str:
        """16 hex digits of SHA-256 over the recipe and the torch/SB3/gymnasium versions."""
        import gymnasium
        import stable_baselines3

        payload = {"recipe": asdict(self), "torch": torch.__version__, "sb3": stable_baselines3.__version__,
                   "gymnasium": gymnasium.__version__}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SmallCNN(nn.Module):
    """MinAtar-sized CNN features extractor (Young & Tian 2019): conv3x3(C -> channels) -
    ReLU - flatten - linear(-> features_dim) - ReLU.

    Observations are ``b x H x W x C`` (channels last, MinAtar's layout) when
    ``channels_last``, else ``b x C x H x W``.

    Args:
        observation_space: a gymnasium ``Box`` with a 3-D shape.
        features_dim: output width.
        channels: convolution output channels.
        channels_last: observations put channels on the last axis.
    """

    def __init__(self, observation_space: Any, features_dim: int = 128, channels: int = 16, channels_last: bool = True) -> None:
        super().__init__()
        shape = tuple(observation_space.shape)
        if len(shape) != 3:
            raise ConfigError(f"agent.features='small_cnn' needs 3-D image observations, got shape {shape}")
        h, w, c = shape if channels_last else (shape[1], shape[2], shape[0])
        self.channels_last = channels_last
        self.features_dim = features_dim
        self.cnn = nn.Sequential(nn.Conv2d(c, channels, 3), nn.ReLU(), nn.Flatten())
        self.linear = nn.Sequential(nn.Linear(channels * (h - 2) * (w - 2), features_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``b x H x W x C`` (or ``b x C x H x W``) -> ``b x features_dim``."""
        return self.linear(self.cnn(x.permute(0, 3, 1, 2) if self.channels_last else x))


def _features_class(name: str) -> type[nn.Module]:
    from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN

    return {"flatten": FlattenExtractor, "nature_cnn": NatureCNN, "small_cnn": SmallCNN}[name]


def policy_kwargs(recipe: AgentRecipe) -> dict[str, Any]:
    """The SB3 ``policy_kwargs`` the recipe stands for (net_arch, activation, features extractor)."""
    out: dict[str, Any] = {"net_arch": list(recipe.arch), "activation_fn": ACTIVATIONS[recipe.activation_name],
                           "features_extractor_class": _features_class(recipe.features)}
    if recipe.features != "flatten":
        out["features_extractor_kwargs"] = {"features_dim": recipe.features_dim}
    return out


def algo_class(algo: str) -> Any:
    """The SB3 class of ``algo`` (``DQN``, ``PPO``, ``SAC``)."""
    from stable_baselines3 import DQN, PPO, SAC

    return {"dqn": DQN, "ppo": PPO, "sac": SAC}[algo]


_algo_class = algo_class


# ---- agents: load and train ------------------------------------------------------------------------


@dataclass
class Agent:
    """A loaded agent.

    Attributes:
        recipe: the recipe the policy was rebuilt from.
        policy: the SB3 policy object (``nn.Module``) with the agent's weights, on the CPU.
        path: the ``.zip`` it was read from.
        meta: training statistics (trained agents) or ``{}``.
    """

    recipe: AgentRecipe
    policy: Any
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def network(self) -> PolicyNet:
        """A fresh copy of the acting network (eval mode)."""
        return policy_network(self.policy, algo=self.recipe.algo).eval()


def _not_agent(path: Path, why: str) -> ModelError:
    return ModelError(f"agent.path={str(path)!r} is not a stable-baselines3 agent file ({why}); "
                      f"pass a .zip written by SB3's model.save(), or leave agent.path out to train one from the recipe")


def _read_archive(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON ``data`` member (never unpickled) and the ``policy.pth`` state dict (weights only)."""
    if not path.is_file():
        raise ModelError(f"agent.path={str(path)!r} does not exist; pass the .zip written by SB3's model.save()")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"data", "policy.pth"} <= names:
                raise _not_agent(path, f"members {sorted(names)} lack 'data' and 'policy.pth'")
            data = json.loads(archive.read("data").decode())
            state = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
    except zipfile.BadZipFile:
        raise _not_agent(path, "not a zip archive") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _not_agent(path, "its 'data' member is not JSON") from None
    except (RuntimeError, pickle.UnpicklingError) as e:  # weights_only refuses anything but tensors and containers
        raise _not_agent(path, f"'policy.pth' holds more than tensors ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or not isinstance(state, dict):
        raise _not_agent(path, "unexpected layout")
    return data, state


def _space_shape(entry: Any) -> tuple[str, tuple[int, ...] | int | None]:
    """(type name, shape or n) from a space entry of the ``data`` JSON, read as text."""
    if not isinstance(entry, dict):
        return "", None
    kind = str(entry.get(":type:", "")).rsplit(".", 1)[-1].strip("'>")
    if kind == "Discrete" and "n" in entry:
        return kind, int(ast.literal_eval(str(entry["n"])))
    if "_shape" in entry:
        shape = entry["_shape"]
        return kind, tuple(ast.literal_eval(shape) if isinstance(shape, str) else shape)
    return kind, None


def _check_file_fits(path: Path, data: dict[str, Any], recipe: AgentRecipe, env: Any) -> None:
    module = data.get("policy_class", {}).get("__module__") if isinstance(data.get("policy_class"), dict) else None
    if module is not None and module != _POLICY_MODULE[recipe.algo]:
        found = [a for a, m in _POLICY_MODULE.items() if m == module]
        raise ConfigError(f"agent.algo={recipe.algo!r} does not match the agent file {str(path)!r}, whose policy is from "
                          f"{module!r} (algo {found[0] if found else 'unknown'!r}); set agent.algo to the algorithm it was trained with")
    for key, space in (("action_space", env.action_space), ("observation_space", env.observation_space)):
        kind, shape = _space_shape(data.get(key))
        mine = int(space.n) if hasattr(space, "n") else tuple(space.shape)
        if shape is not None and shape != mine:
            raise ConfigError(f"agent.env={recipe.env!r} does not fit the agent file {str(path)!r}: its {key} is {kind} "
                              f"{shape}, the environment's is {type(space).__name__} {mine}; use the environment the agent was trained on")


def new_policy(recipe: AgentRecipe, env: Any) -> Any:
    """A freshly initialised SB3 policy object of ``recipe`` for ``env``'s spaces (torch's
    global RNG draws the weights; nothing is trained)."""
    cls = algo_class(recipe.algo).policy_aliases["MlpPolicy"]
    return cls(env.observation_space, env.action_space, lambda _: 0.0, **policy_kwargs(recipe))


def load_agent(path: str | Path, recipe: AgentRecipe, *, meta: Mapping[str, Any] | None = None) -> Agent:
    """Read an SB3 agent file without unpickling anything (see the module docstring).

    Args:
        path: the ``.zip`` (``model.save(path)``).
        recipe: algo, env and network layout (``net_arch``, ``activation``, ``features``)
            the agent was trained with; the weights must fit exactly.
        meta: statistics to keep on the agent.

    Raises:
        ModelError: the file is missing, not an SB3 agent, or its weights do not fit the recipe.
        ConfigError: ``agent.algo`` or ``agent.env`` does not fit the file.
    """
    path = Path(path).expanduser()
    data, state = _read_archive(path)
    env = make_env(recipe.env, recipe.env_kwargs)
    try:
        _check_file_fits(path, data, recipe, env)
        check_spaces_fit(recipe.algo, env, key="agent.env")
        policy = new_policy(recipe, env)
    finally:
        env.close()
    try:
        policy.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(
            f"the weights in agent.path={str(path)!r} do not fit a {recipe.algo} policy with agent.net_arch="
            f"{list(recipe.arch)}, agent.features={recipe.features!r}: {str(e).splitlines()[0]} ... set agent.net_arch / "
            f"agent.activation / agent.features to the network the agent was trained with"
        ) from None
    return Agent(recipe=recipe, policy=policy.eval(), path=path, meta=dict(meta or {}))


def train_agent(recipe: AgentRecipe, folder: str | Path, *, device: str = "cpu") -> Agent:
    """Train ``recipe`` with SB3 into ``folder``, or load it from there when cached.

    The agent is saved as ``<folder>/<recipe.key()>.zip`` (SB3's format, usable with SB3)
    with ``<key>.json`` beside it (the recipe, ``seconds`` of training, versions). A second
    call with the same recipe loads the file (through :func:`load_agent`) instead of training.
    Training is seeded by ``recipe.seed`` (SB3's ``set_random_seed``); the caller's global
    torch/numpy/random states are restored afterwards. Runs of 100k steps or more print their
    progress to stderr at every 10% of the steps.

    Raises:
        ConfigError: unknown env id, a space the algorithm cannot act in, or bad ``agent.hyper``.
    """
    folder = Path(folder)
    key = recipe.key()
    path, meta_path = folder / f"{key}.zip", folder / f"{key}.json"
    if path.is_file() and meta_path.is_file():
        return load_agent(path, recipe, meta=json.loads(meta_path.read_text()))
    from compsearch.evaluators.sb3_train import learn, progress_callback

    start = time.perf_counter()
    progress = progress_callback(f"training agent {recipe.algo} on {recipe.env}", recipe.steps) if recipe.steps >= 100_000 else None
    model = learn(recipe, policy_kwargs(recipe), DEFAULT_HYPER[recipe.algo], device=device, callback=progress)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{key}.tmp.zip"
    model.save(tmp)
    tmp.replace(path)
    meta = {"source": "trained", "key": key, "path": str(path), "recipe": asdict(recipe), "seconds": seconds}
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    return load_agent(path, recipe, meta=meta)
