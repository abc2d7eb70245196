"""The saved-state format of the hierarchy's learned parts, and loading it into another model.

:func:`hierarchy_state` returns a plain dict (tensors, lists and strings only, so
``torch.save`` / ``torch.load(weights_only=True)`` round-trip it without unpickling code)::

    {
      "format": "compsearch.rl.hierarchy/1",
      "kernel_features": [...],   # KERNEL_FEATURES: the columns the low level reads
      "block_features": [...],    # BLOCK_FEATURES: the columns the high level reads
      "heads": [[field, n_choices], ...],   # the low level's heads, in output order
      "blocks": [block names],    # the model the state was learned on
      "low": {"kind": "SharedPolicy" | "PerBlockPolicy", "params": {name: tensor}},
      "high": {"levels": [budget level values], "agents": [{name: tensor}, ...]},
    }

Everything a policy computes from the *features* transfers between models: the shared trunk,
the heads and the value of :class:`~compsearch.search.rl.ppo.SharedPolicy` (low level and each
high-level agent). What is indexed by one model's blocks (a policy's ``model_specific``
parameters: the block embeddings, every weight of a
:class:`~compsearch.search.rl.ppo.PerBlockPolicy`) is loaded only onto the same blocks
(same block names) and is otherwise left at its fresh initialization. A parameter whose shape
differs (other head choices, other feature columns) is left as it is too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compsearch.errors import ConfigError
from compsearch.search.rl.ppo import load_transferable
from compsearch.search.rl.state import BLOCK_FEATURES, KERNEL_FEATURES

if TYPE_CHECKING:
    from compsearch.search.rl.hierarchy import Hierarchy

FORMAT = "compsearch.rl.hierarchy/1"


def hierarchy_state(h: Hierarchy) -> dict[str, Any]:
    """The learned state of ``h`` (format in the module docstring)."""
    return {
        "format": FORMAT,
        "kernel_features": list(KERNEL_FEATURES),
        "block_features": list(BLOCK_FEATURES),
        "heads": [[f, int(n)] for f, n in h.layout.heads],
        "blocks": list(h.layout.blocks),
        "low": {"kind": type(h.low.policy).__name__, "params": {k: v.clone() for k, v in h.low.policy.state_dict().items()}},
        "high": h.allocator.state_dict(),
    }


def load_hierarchy_state(h: Hierarchy, state: dict[str, Any]) -> dict[str, list[str]]:
    """Load ``state`` into ``h`` (module docstring); returns the parameter names copied per part.

    Raises:
        ConfigError: ``state`` is not of this format, or was learned on other feature columns.
    """
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"saved hierarchy state has format={state.get('format') if isinstance(state, dict) else type(state).__name__!r}; expected {FORMAT!r}")
    if state["kernel_features"] != list(KERNEL_FEATURES) or state["block_features"] != list(BLOCK_FEATURES):
        raise ConfigError("saved hierarchy state was learned on other feature columns; it cannot warm-start this version")
    same = list(state["blocks"]) == list(h.layout.blocks)
    heads_match = [list(x) for x in state["heads"]] == [[f, int(n)] for f, n in h.layout.heads]
    low = state["low"]["params"] if state["low"]["kind"] == type(h.low.policy).__name__ else {}
    if not heads_match:  # other choices: keep only the trunk (the heads' rows would mean other things)
        low = {k: v for k, v in low.items() if k.startswith("trunk.")}
    out = {"low": load_transferable(h.low.policy, low, same_model=same), "high": []}
    agents = getattr(h.allocator, "agents", [])
    high = state.get("high") or {}
    if list(high.get("levels", [])) and len(high["levels"]) == len(getattr(h.allocator, "levels", [])):
        for agent, saved in zip(agents, high.get("agents", []), strict=False):
            out["high"] += load_transferable(agent.policy, saved, same_model=same)
    return out
