"""The per-channel parameters a channel-pruned unit's pruned channels carry, held at 0 with them.

Zeroing a unit's pruned weight rows leaves its pruned channels alive: each still outputs a
constant, ``act(bias)`` or, through a BatchNorm, ``act(bn.bias - bn.running_mean * scale)``.
Export then cannot remove those channels without changing the outputs
(:func:`~compsearch.evaluators.speedup.plan_pruning` with ``reference="model"`` keeps them
masked). :class:`CoupledChannels` finds, on Torch-Pruning's traced graph of the
uncompressed model (:func:`~compsearch.evaluators.channel_groups.channel_group`), what
removing the pruned channels would remove, and returns the output-channel entries the
evaluator must hold at exactly 0 so that the channels are exactly 0 wherever they reach:

* the unit's own bias at the pruned channels;
* the weight and bias of the BatchNorm/PReLU layers and depthwise convs the channels pass
  through (BatchNorm: ``0 * (x - mean) / sqrt(var + eps) + 0 = 0`` in training and eval mode).

This is what :func:`~compsearch.evaluators.speedup.zero_pruned` zeroes for a removed unit,
except the rows of gates (a squeeze-excite ``conv_expand`` only multiplies channels that are
already 0, so it is left as it is). A unit whose group is **not** removable (a residual
stream, a LayerNorm, a grouped conv, attention, the model's output, a functional weight,
...) gets nothing: only its weight rows are zeroed, as before, because its channels would
stay in the exported model anyway. The same holds when a policy removes a block that the
group reaches (the graph of the full model no longer describes where the channels go), and
when Torch-Pruning is not installed (``pip install "compsearch[speedup]"``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

from compsearch.evaluators.channel_groups import ChannelGroup, true_depthwise
from compsearch.evaluators.speedup import PruneAnalyzer


class CoupledChannels:
    """Coupled output-channel entries of pruned channels, per ``(unit, channels)`` (cached).

    Args:
        model: the uncompressed model (no compression attached); traced once, on the first
            :meth:`rows` call, on a copy. The returned parameters are ``model``'s own.
        example_input: a batch, ``n x ...``, for the trace.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self._model, self._example = model, example_input
        self._analyzer: PruneAnalyzer | None = None
        self._traced = False
        self._groups: dict[tuple[str, tuple[int, ...]], ChannelGroup | None] = {}

    def group(self, unit: str, channels: Sequence[int]) -> ChannelGroup | None:
        """The removable group of ``unit``'s pruned ``channels``; None when it is not removable."""
        key = (unit, tuple(sorted(channels)))
        if key not in self._groups:
            analyzer = self._trace()
            found = None if analyzer is None else analyzer.group(unit, key[1])
            self._groups[key] = found if isinstance(found, ChannelGroup) else None
        return self._groups[key]

    def _trace(self) -> PruneAnalyzer | None:
        if not self._traced:
            self._traced = True
            try:
                self._analyzer = PruneAnalyzer(self._model, self._example)
            except ImportError:  # Torch-Pruning missing: today's behaviour (weight rows only)
                self._analyzer = None
        return self._analyzer

    def rows(self, unit: str, channels: Sequence[int], *, removed: Collection[str] = ()) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """``(parameter, out-channel indices)`` to hold at 0 for ``unit``'s pruned ``channels``.

        Args:
            unit: the channel-pruned unit (a Conv/Linear module name).
            channels: its pruned output channels.
            removed: names of blocks the policy removes; a group reaching one gets nothing.

        Returns:
            The unit's bias and the weight/bias of every BatchNorm, PReLU and depthwise conv
            of the group (1-D ``int64`` indices along axis 0); empty when the group is not
            removable. The unit's own weight rows are not included (its mask zeroes them).
        """
        group = self.group(unit, channels)
        if group is None or any(_inside(name, removed) for name in (*group.out, *group.inp)):
            return []
        found: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, idxs in group.out.items():
            module = self._model.get_submodule(name)
            if name != unit and isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear) and not true_depthwise(module):
                continue  # a gate: it multiplies channels that are already 0
            for attr in ("bias",) if name == unit else ("weight", "bias"):
                p = module._parameters.get(attr)
                if isinstance(p, nn.Parameter) and p.dim() >= 1 and p.shape[0] > max(idxs):
                    found.append((p, torch.tensor(idxs, dtype=torch.long, device=p.device)))
        return found


def _inside(name: str, blocks: Collection[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in blocks)


__all__ = ["CoupledChannels"]
