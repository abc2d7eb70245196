"""``lrp``: per-output-channel relevance by Layer-wise Relevance Propagation (Bach et al. 2015),
an importance criterion for channel pruning of classifiers and agents (Yeom et al. 2021;
LRP-based policy pruning, ISORC 2022).

Rules: LRP-epsilon for ``Linear`` layers, ``R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j``
(``z_j = sum_i x_i w_ij + b_j``), and LRP-z+ for convolutions (only positive contributions
``x_i^+ w_ij^+ + x_i^- w_ij^-`` share ``R_j``); activations pass relevance unchanged,
average pooling distributes it in proportion to the inputs, batch norm passes it
through. A bias absorbs its share, so relevance is conserved exactly only without biases
and as ``eps -> 0`` (tested). Residual additions written as ``a + b`` in a forward (timm
ResNets) send the full upper relevance down both branches: scores stay comparable
within a unit, which is all a per-unit keep mask uses. Attention and layer norm have no
rule here: a vision transformer gives non-finite relevance, which is refused with an error.

Relevance starts at the output of the model's head (``get_classifier()``, else the model's
output), ``b x n``: ``R = out * onehot(argmax out)`` for classifiers (the predicted class
logit), DQN (the greedy action's Q-value) and PPO (the chosen action's logit); for a
continuous action (``model.continuous``: SAC's actor mean ``mu`` before ``tanh``) each
action dimension is explained in its own backward pass. The score of output channel
``c`` of a unit is ``mean_samples |sum_{positions} R_c|``: how much of the decision (for
or against) flows through the channel, summed over the action dimensions, averaged over
the calibration inputs.

Implementation: ``zennit`` (``pip install "compsearch[lrp]"``), the LRP authors' library.
Its rules attach by module type with hooks (its ``EpsilonPlus`` composite is exactly the
rule set above), so it runs on any model built from ``nn.Module`` layers -- the plain
``nn.Sequential`` CNNs/MLPs, the SB3 policy networks, the digits CNN and small timm CNNs
-- without rewriting them; a small implementation of our own would need a rule per layer
type and a graph walk, which zennit already has. Under zennit's hooks the gradient of the
explained output with respect to a unit's output tensor *is* that tensor's relevance, so
the per-channel relevance of every unit comes from one ``torch.autograd.grad`` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators.masks import ModelContext, register_criterion


def _channel_totals(t: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``b x C``: sum of ``t`` over every axis but the batch and the channel axis (1 for
    convolutions, last for ``Linear``)."""
    axis = 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else t.dim() - 1
    t = t.movedim(axis, -1)
    return t.reshape(t.shape[0], -1, t.shape[-1]).sum(dim=1)


def _head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) and any(m is head for m in model.modules()) else None


def relevance(
    model: nn.Module,
    inputs: torch.Tensor,
    units: Mapping[str, nn.Module],
    *,
    epsilon: float = 1e-6,
    continuous: bool | None = None,
) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """LRP relevance of every unit's output channels (see the module docstring).

    Args:
        model: the network (eval mode; its weights are not changed).
        inputs: ``b x ...`` input batch.
        units: unit name -> module.
        epsilon: ``eps`` of the epsilon rule (and the stabiliser of z+).
        continuous: explain each output dimension (True) or the argmax output (False);
            None = ``model.continuous`` if the model has it, else False.

    Returns:
        ``(per_unit, input_relevance)``: ``per_unit[name]`` holds one ``b x C`` tensor of
        signed channel totals per explained output dimension (one for argmax);
        ``input_relevance`` is the ``b x ...`` relevance of the inputs, summed over dimensions.
    """
    from zennit.composites import EpsilonPlus

    if continuous is None:
        continuous = bool(getattr(model, "continuous", False))
    head = _head(model)
    captured: dict[str, torch.Tensor] = {}
    start: list[torch.Tensor] = []

    def keep(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                captured[name] = out
        return hook

    x = inputs.detach().clone().requires_grad_(True)
    composite = EpsilonPlus(epsilon=epsilon, stabilizer=epsilon)
    was_training = model.training
    model.eval()
    per_unit: dict[str, list[torch.Tensor]] = {name: [] for name in units}
    rel_in = torch.zeros_like(x)
    with composite.context(model) as hooked:
        handles = [m.register_forward_hook(keep(n)) for n, m in units.items()]
        if head is not None:
            handles.append(head.register_forward_hook(lambda _m, _i, out: start.append(out)))
        try:
            with torch.enable_grad():
                out = hooked(x)
                top = (start[-1] if start else out).reshape(x.shape[0], -1)
                names = list(captured)
                dims: list[int | None] = list(range(top.shape[1])) if continuous else [None]
                for k, d in enumerate(dims):
                    grads = torch.autograd.grad(top, [x, *(captured[n] for n in names)], _seed(top, d),
                                                retain_graph=k < len(dims) - 1, allow_unused=True)
                    if grads[0] is not None:
                        rel_in += grads[0]
                    for name, g in zip(names, grads[1:], strict=True):
                        if g is not None:
                            per_unit[name].append(_channel_totals(g, units[name]).detach())
        finally:
            for h in handles:
                h.remove()
    model.train(was_training)
    return per_unit, rel_in.detach()


def _seed(top: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``b x n`` initial relevance: the explained output's value at its index, 0 elsewhere
    (index: the argmax per sample when ``dim`` is None)."""
    out = top.detach()
    index = out.argmax(dim=1, keepdim=True) if dim is None else torch.full((out.shape[0], 1), dim, device=out.device)
    return torch.zeros_like(out).scatter(1, index, out.gather(1, index))


def lrp_scores(
    model: nn.Module, units: Mapping[str, nn.Module], batches: Sequence[torch.Tensor], *, epsilon: float = 1e-6
) -> dict[str, torch.Tensor]:
    """``out_channels`` scores per unit: ``mean_samples |R_c|`` summed over explained dimensions.

    Raises:
        ConfigError: no input batch, or non-finite relevance (e.g. a vision transformer:
            attention and layer norm have no LRP rule here).
    """
    if not batches:
        raise ConfigError("lrp needs at least one calibration input batch; raise calib_batches")
    sums = {name: torch.zeros(_out_channels(m)) for name, m in units.items()}
    count = 0
    for batch in batches:
        per_unit, _ = relevance(model, batch, units, epsilon=epsilon)
        for name, parts in per_unit.items():
            for part in parts:
                sums[name] += part.abs().sum(dim=0).cpu()
        count += len(batch)
    bad = [name for name, s in sums.items() if not torch.isfinite(s).all()]
    if bad:
        raise ConfigError(f"lrp gave non-finite relevance for unit(s) {bad[:5]}{'...' if len(bad) > 5 else ''}: its rules cover "
                          f"convolutional and MLP networks (attention and layer norm are not), so use criterion 'l1' or 'fisher' "
                          f"for this model")
    return {name: s / count for name, s in sums.items()}


def _out_channels(module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"lrp scores layers with a weight; {type(module).__name__} has none")
    return int(weight.shape[0])


@register_criterion("lrp", model_level=True)
def _lrp_criterion(context: ModelContext) -> dict[str, torch.Tensor]:
    """The ``lrp`` criterion: :func:`lrp_scores` on the calibration inputs (epsilon 1e-6)."""
    return lrp_scores(context.model, context.modules, list(context.inputs))
