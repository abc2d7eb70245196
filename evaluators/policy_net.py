"""The acting network of an SB3 agent as a plain ``nn.Module`` (:class:`PolicyNet`), and the
map from its unit names to the SB3 modules they were copied from.

:class:`PolicyNet` maps a batch of observations to action logits (``ppo``), Q-values
(``dqn``) or the deterministic action (``sac``: the actor's mean, squashed by ``tanh`` and
rescaled to the action bounds). Its Linear/Conv layers (features extractor, hidden layers,
action layer) are the units; ``get_classifier()`` returns the action layer, so unit
discovery marks it as the head (skipped by default). PPO's value network and SAC's
critics are not part of it: they do not act, and the deployed agent does not need them.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn

from compsearch.errors import ConfigError, ModelError


class PolicyNet(nn.Module):
    """The acting network of an agent: ``b x obs...`` observations -> ``b x n`` outputs.

    ``kind`` says what the outputs are: ``"logits"`` (PPO's categorical logits), ``"q"``
    (DQN's Q-values) or ``"action"`` (SAC's deterministic action, ``low + (tanh(mu) + 1) / 2
    * (high - low)`` per action dimension). Preprocessing follows SB3: observations are
    cast to float, divided by 255 for uint8 images, one-hot encoded for a discrete space.

    Args:
        features: features extractor (``b x obs...`` -> ``b x d``).
        body: hidden layers (``b x d`` -> ``b x h``; may be empty).
        head: the action layer (``b x h`` -> ``b x n``).
        kind: ``"logits"``, ``"q"`` or ``"action"``.
        obs_scale: factor applied after the float cast (1/255 for images, else 1).
        one_hot: number of states of a discrete observation space (0 = not discrete).
        low, high: action bounds (``kind="action"`` only), ``n`` each.
    """

    def __init__(
        self,
        *,
        features: nn.Module,
        body: nn.Module,
        head: nn.Module,
        kind: str,
        obs_scale: float = 1.0,
        one_hot: int = 0,
        low: torch.Tensor | None = None,
        high: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("logits", "q", "action"):
            raise ConfigError(f"PolicyNet kind={kind!r} is unknown; allowed: ['logits', 'q', 'action']")
        if kind == "action" and (low is None or high is None):
            raise ConfigError("PolicyNet kind='action' needs the action bounds low= and high=")
        self.features, self.body, self.head = features, body, head
        self.kind, self.obs_scale, self.one_hot = kind, float(obs_scale), int(one_hot)
        self.register_buffer("low", low.float() if low is not None else torch.zeros(0), persistent=False)
        self.register_buffer("high", high.float() if high is not None else torch.zeros(0), persistent=False)

    @property
    def continuous(self) -> bool:
        """Whether the outputs are a continuous action (else one score per discrete action)."""
        return self.kind == "action"

    def get_classifier(self) -> nn.Module:
        """The action layer (timm's convention; unit discovery marks it as the head)."""
        return self.head

    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """SB3's observation preprocessing (float cast, image scaling, one-hot)."""
        if self.one_hot:
            return nn.functional.one_hot(obs.long().reshape(-1), self.one_hot).float()
        x = obs.float()
        return x * self.obs_scale if self.obs_scale != 1.0 else x

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``b x obs...`` -> ``b x n`` logits / Q-values / actions (see the class docstring)."""
        out = self.head(self.body(self.features(self.preprocess(obs))))
        if self.kind == "action":
            low, high = cast(torch.Tensor, self.low), cast(torch.Tensor, self.high)
            return low + 0.5 * (torch.tanh(out) + 1.0) * (high - low)
        return out

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions: ``b`` greedy indices (argmax; ties: lowest index) or ``b x n`` actions."""
        out = self(obs)
        return out if self.continuous else out.argmax(dim=1)


def _sequential(layers: nn.Module) -> nn.Sequential:
    return layers if isinstance(layers, nn.Sequential) else nn.Sequential(layers)


def acting_parts(policy: Any, *, algo: str, target: bool = False) -> dict[str, nn.Module]:
    """The SB3 modules (not copies) of the acting network: ``features``, ``body``, ``head``.

    ``PolicyNet`` unit names resolve in them: ``"body.2"`` is ``parts["body"].get_submodule("2")``.

    Args:
        policy: ``model.policy`` of an SB3 ``DQN``, ``PPO`` or ``SAC``.
        algo: ``dqn``, ``ppo`` or ``sac``.
        target: DQN's target network instead of the online one.

    Raises:
        ModelError: a policy layout this module does not know (gSDE, PPO with continuous actions).
    """
    if algo == "dqn":
        q = policy.q_net_target if target else policy.q_net
        layers = list(q.q_net)
        return {"features": q.features_extractor, "body": nn.Sequential(*layers[:-1]), "head": layers[-1]}
    if target:
        raise ModelError(f"agent.algo={algo!r} has no target acting network (only dqn has)")
    if algo == "ppo":
        if not hasattr(policy.action_space, "n"):
            raise ModelError("agent.algo='ppo' with a continuous action space is not supported; use agent.algo='sac'")
        return {"features": policy.pi_features_extractor, "body": _sequential(policy.mlp_extractor.policy_net),
                "head": policy.action_net}
    actor = policy.actor
    if getattr(actor, "use_sde", False) or not isinstance(actor.mu, nn.Linear):
        raise ModelError("SAC agents trained with gSDE (use_sde=True) are not supported; train with use_sde=False")
    return {"features": actor.features_extractor, "body": _sequential(actor.latent_pi), "head": actor.mu}


def acting_module(parts: dict[str, nn.Module], name: str) -> nn.Module:
    """The module of ``PolicyNet`` unit ``name`` (``"body.2"``) among :func:`acting_parts`."""
    first, _, rest = name.partition(".")
    return parts[first].get_submodule(rest) if rest else parts[first]


def policy_network(policy: Any, *, algo: str) -> PolicyNet:
    """Copy the acting network out of an SB3 policy object (no weights shared).

    Args:
        policy: ``model.policy`` of an SB3 ``DQN``, ``PPO`` or ``SAC``.
        algo: ``dqn``, ``ppo`` or ``sac``.

    Raises:
        ModelError: a policy layout this module does not know (gSDE, PPO with continuous actions).
    """
    from stable_baselines3.common.preprocessing import is_image_space

    obs_space, act_space = policy.observation_space, policy.action_space
    scale = 1 / 255 if getattr(policy, "normalize_images", True) and is_image_space(obs_space) else 1.0
    one_hot = int(obs_space.n) if hasattr(obs_space, "n") else 0
    parts = copy.deepcopy(acting_parts(policy, algo=algo))
    kind = {"dqn": "q", "ppo": "logits", "sac": "action"}[algo]
    bounds = {"low": torch.as_tensor(act_space.low), "high": torch.as_tensor(act_space.high)} if kind == "action" else {}
    return PolicyNet(features=parts["features"], body=parts["body"], head=parts["head"], kind=kind, obs_scale=scale,
                     one_hot=one_hot, **bounds)
