"""The compressed forward: a unit's own computation with its effective weight substituted.

A unit's *effective weight* is ``fake_quantize(w) * mask`` of its stored weight ``w``
(:mod:`compsearch.evaluators.quant`; the mask only on the binary grid, where 0 is not a
level -- elsewhere pruned weights are kept at exactly 0 in storage). The module's **own**
forward computes with it, so whatever a subclass does -- "same" padding
(timm ``Conv2dSame``), weight standardisation (``StdConv2d``, ``ScaledStdConv2d``), any
other ``Conv1d``/``Conv2d``/``Linear`` subclass -- happens exactly as in the uncompressed
model. Two ways, chosen per unit by a probe forward (:func:`probe_weight_uses`):

* **module** (the weight is read only inside its module's own forward): the module's
  ``forward`` is wrapped (an instance attribute, removed afterwards). The wrapper quantizes
  the input activation, computes the effective weight once, puts it in place of the
  parameter for the duration of the module's original forward (``module._parameters``
  entry swapped, restored in ``finally``), and returns that forward's output.
* **functional** (the weight is also, or only, read outside its module's forward, e.g.
  ``F.linear(x, self.qkv.weight, bias)`` in EVA-style attention, or a raw parameter such
  as ``in_proj_weight``): a ``torch.nn.utils.parametrize`` parametrization on the weight
  makes every read return the effective weight. The input of such a computation is not
  visible to the evaluator, so input-activation quantization (``a_bits < 16``) of a
  functional unit is **refused** with a :class:`~compsearch.errors.ModelError`.

Refused at construction (:func:`resolve_weight`, :func:`probe_weight_uses`), each with a
:class:`~compsearch.errors.ModelError` that says why and what to do: a unit that is not a
``Conv1d``/``Conv2d``/``Linear`` (or subclass) nor a parameter; a weight that is not a
plain stored parameter (already parametrized, weight-norm, lazy/uninitialised); a weight
the forward never reads (compressing it would change nothing); two units sharing one weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from compsearch.errors import ModelError
from compsearch.evaluators.quant import ActQuantizer, WeightQuant, grid_values, weight_qparams
from compsearch.evaluators.types import CompressedUnit
from compsearch.spaces.units import COMPRESSIBLE, FUNCTIONAL, MODULE


@dataclass
class WeightOwner:
    """Where one unit's weight lives.

    Attributes:
        module: the module holding the parameter.
        param: the parameter's attribute name on ``module`` (``"weight"`` for layers).
        weight: the stored parameter (``out x ...``).
        use: :data:`MODULE` or :data:`FUNCTIONAL` (set by :func:`probe_weight_uses`).
    """

    module: nn.Module
    param: str
    weight: nn.Parameter
    use: str = MODULE


def _plain_parameter(module: nn.Module, param: str, name: str) -> nn.Parameter:
    if parametrize.is_parametrized(module, param):
        raise ModelError(f"unit {name!r}: its {param} is computed by a torch parametrization; compsearch compresses "
                         f"stored weights only: remove it first (torch.nn.utils.parametrize.remove_parametrizations("
                         f"module, {param!r}, leave_parametrized=True)) or exclude the unit")
    weight = module._parameters.get(param)
    if not isinstance(weight, nn.Parameter):
        raise ModelError(f"unit {name!r}: {type(module).__name__}.{param} is not a stored nn.Parameter (weight norm or "
                         f"another hook computes it); remove the weight norm (torch.nn.utils.remove_weight_norm) or "
                         f"exclude the unit")
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise ModelError(f"unit {name!r}: {type(module).__name__} is a lazy module whose weight is not initialised; "
                         f"run one forward before compressing")
    return weight


def resolve_weight(model: nn.Module, name: str) -> WeightOwner:
    """The module and parameter of unit ``name``: a ``Conv1d``/``Conv2d``/``Linear`` (or
    subclass) submodule and its ``weight``, or a parameter path (``attn.in_proj_weight``,
    always :data:`FUNCTIONAL`).

    Raises:
        ModelError: neither, or the weight is not a plain stored parameter.
    """
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if module is not None:
        if not isinstance(module, COMPRESSIBLE):
            raise ModelError(f"unit {name!r} is a {type(module).__name__}; only Conv1d, Conv2d, Linear and their "
                             f"subclasses (or a parameter path such as 'attn.in_proj_weight') compress")
        return WeightOwner(module=module, param="weight", weight=_plain_parameter(module, "weight", name))
    owner_name, _, param = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        owner = None
    if owner is None or param not in owner._parameters:
        raise ModelError(f"unit {name!r} is neither a submodule nor a parameter of {type(model).__name__}")
    weight = _plain_parameter(owner, param, name)
    if weight.dim() < 2:
        raise ModelError(f"unit {name!r} is a {weight.dim()}-D parameter; a unit's weight is out x ... (at least 2-D)")
    return WeightOwner(module=owner, param=param, weight=weight, use=FUNCTIONAL)


def swap_forward(module: nn.Module, replacement: Any) -> tuple[Any, bool]:
    """Make ``replacement`` the instance's ``forward``. Returns what :func:`restore_forward`
    needs: the forward it replaced (bound) and whether the instance had its own ``forward``."""
    had_own = "forward" in module.__dict__
    original = module.forward
    module.forward = replacement  # type: ignore[method-assign]
    return original, had_own


def restore_forward(module: nn.Module, replacement: Any, original: Any, had_own: bool) -> None:
    """Undo :func:`swap_forward` when ``replacement`` is still the instance's forward (the
    module is then exactly as before); otherwise leave the module alone."""
    if module.__dict__.get("forward") is not replacement:
        return
    if had_own:
        module.forward = original  # type: ignore[method-assign]
    else:
        del module.forward


#: Tensor methods that read a tensor's metadata, not its values (``weight.dtype``, ``.shape``, ...).
_METADATA = frozenset({"__get__", "size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex",
                       "element_size", "stride", "is_contiguous", "get_device", "__len__", "data_ptr", "storage_offset"})


class _Outside(torch.Tensor):
    """A weight read outside its module's forward (probe only): counts the reads that compute
    with its values; metadata reads (``weight.dtype``, ``weight.shape``) do not count."""

    _probe: tuple[dict[str, list[int]], str]

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _METADATA:
            for t in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(t, _Outside):
                    reads, name = t._probe
                    reads[name][1] += 1
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class _Probe(nn.Module):
    """Identity parametrization counting reads: ``[inside the owner's forward, computing
    outside it, any outside it]``."""

    def __init__(self, name: str, depth: dict[int, int], reads: dict[str, list[int]], owner: nn.Module) -> None:
        super().__init__()
        self._name, self._depth, self._reads, self._owner = name, depth, reads, id(owner)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self._depth.get(self._owner, 0) > 0:
            self._reads[self._name][0] += 1
            return w
        self._reads[self._name][2] += 1
        watched = w.as_subclass(_Outside)
        watched._probe = (self._reads, self._name)
        return watched


def probe_weight_uses(model: nn.Module, owners: Mapping[str, WeightOwner], example_input: torch.Tensor) -> None:
    """Set every owner's ``use`` from one eval forward of ``example_input``.

    A weight read only while its module's own forward runs is :data:`MODULE`; used (also)
    outside it in a computation, :data:`FUNCTIONAL`. A read outside the forward that looks
    only at the weight's metadata (``weight.dtype``, ``.device``, ``.shape``, as timm XCiT's
    positional encoding does) does not make a unit functional: such reads are told apart by
    a tensor subclass that counts every torch function computing with the weight. (That
    subclass also turns off fused kernels that read weights directly, such as
    ``nn.TransformerEncoderLayer``'s; discovery marks those functional, see
    :class:`~compsearch.spaces.Unit`, and the evaluator honours it.) Parametrizations and
    hooks are removed afterwards and the parameters left exactly as found (same objects,
    same order).

    Raises:
        ModelError: a weight is never read, or two units share one weight tensor.
    """
    seen: dict[int, str] = {}
    for name, owner in owners.items():
        other = seen.setdefault(id(owner.weight), name)
        if other != name:
            raise ModelError(f"units {other!r} and {name!r} share one weight tensor; compress only one of them "
                             f"(exclude the other)")
    depth: dict[int, int] = {}
    reads: dict[str, list[int]] = {name: [0, 0, 0] for name in owners}
    handles, done = [], []
    orders = {id(o.module): list(o.module._parameters) for o in owners.values()}
    try:
        for name, owner in owners.items():
            m = owner.module
            if id(m) not in depth:
                depth[id(m)] = 0
                handles.append(m.register_forward_pre_hook(lambda mod, _a: depth.__setitem__(id(mod), depth[id(mod)] + 1)))
                handles.append(m.register_forward_hook(lambda mod, _a, _o: depth.__setitem__(id(mod), depth[id(mod)] - 1)))
            parametrize.register_parametrization(m, owner.param, _Probe(name, depth, reads, m), unsafe=True)
            done.append(owner)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example_input)
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
        for owner in done:
            _unparametrize(owner, orders[id(owner.module)])
    for name, owner in owners.items():
        inside, outside, any_outside = reads[name]
        if inside + any_outside == 0:
            raise ModelError(f"unit {name!r}: the model's forward never reads its {owner.param} on the example input, "
                             f"so compressing it would change nothing; leave it out (exclude={name!r})")
        if outside or owner.use == FUNCTIONAL:
            owner.use = FUNCTIONAL


def _unparametrize(owner: WeightOwner, order: list[str]) -> None:
    """Remove the parametrization on ``owner.param`` and restore the parameter order."""
    m = owner.module
    if parametrize.is_parametrized(m, owner.param):
        parametrize.remove_parametrizations(m, owner.param, leave_parametrized=False)
    params = m._parameters
    if list(params) != order:
        items = dict(params)
        params.clear()
        params.update((k, items[k]) for k in order)
    if m._parameters.get(owner.param) is not owner.weight:
        raise ModelError(f"{type(m).__name__}.{owner.param} was replaced while compressed; compsearch cannot restore it")


def check_input_quantizable(owner: WeightOwner, name: str) -> None:
    """Raise :class:`ModelError` for input quantization of a functional unit (its input is not visible)."""
    if owner.use == FUNCTIONAL:
        raise ModelError(
            f"unit {name!r}: its weight is used functionally (read outside {type(owner.module).__name__}.forward, "
            f"e.g. F.linear(x, module.weight, ...)), so its input activation is not visible and cannot be "
            f"quantized; give this unit a_bits >= 16 (weight quantization and pruning work)"
        )


class _Effective(nn.Module):
    """Parametrization whose forward is the unit's effective weight (functional units)."""

    def __init__(self, compression: UnitCompression) -> None:
        super().__init__()
        self._compression = [compression]  # a list, so the compression is not a submodule

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self._compression[0].effective_weight()  # w is the owner's stored weight


FUSED_MAX_NUMEL = 1 << 16
"""Weights up to this many elements take the fused, cached path of :class:`WeightCache` in
training; larger ones are memory-bound, and the per-unit straight-through function (fewer
passes over the weight) is faster."""


class WeightCache:
    """The grid values of several units' weights, recomputed together when stored weights change.

    Fine-tuning changes every weight once per optimizer step; the first forward after it
    refreshes every stale unit at once -- narrow symmetric grids in one fused pass
    (:func:`~compsearch.evaluators.quant.grid_values`), the others one by one -- and keeps
    ``Q`` (the grid values) and, for small weights, ``D = Q - w``. A training forward of a
    small weight uses ``w + D``: the value is exactly ``Q`` (``Q - w`` is exact by Sterbenz's
    lemma, since ``|Q - w|`` is at most one step and ``Q`` is 0 or at least one step; tested on
    every grid) and the gradient is the identity (the straight-through estimator) without a
    Python backward. Large weights (> :data:`FUSED_MAX_NUMEL`) and the binary grid (where
    ``w + D`` is not exact) use the straight-through function in training; every weight
    uses the cached ``Q`` in evaluation forwards (no gradient recorded).
    """

    def __init__(self) -> None:
        self.members: list[UnitCompression] = []

    def refresh(self, *, everyone: bool) -> None:
        """Recompute the grid values of every stale member (only the fused ones unless ``everyone``)."""
        stale = [c for c in self.members if c._version != c.owner.weight._version and (everyone or c._fused)]
        if not stale:
            return
        narrow = [c for c in stale if cast(WeightQuant, c.weight_quant).narrow]
        other = [c for c in stale if not cast(WeightQuant, c.weight_quant).narrow]
        with torch.no_grad():
            values = grid_values([c.owner.weight for c in narrow], [cast(WeightQuant, c.weight_quant) for c in narrow])
            values += [cast(WeightQuant, c.weight_quant).values(c.owner.weight) for c in other]
            members = narrow + other
            fused = [i for i, c in enumerate(members) if c._fused]
            deltas = torch._foreach_sub([values[i] for i in fused], [members[i].owner.weight for i in fused]) if fused else []
            delta_of = dict(zip(fused, deltas, strict=True))
            for i, c in enumerate(members):
                c._store(values[i], delta_of.get(i))


class UnitCompression:
    """One unit's compression in force: quantized input, quantized (and masked) weight, the
    module's own forward (see the module docstring for the two ways).

    Args:
        owner: the unit's weight owner (after :func:`probe_weight_uses`).
        name: the unit name (for messages).
        weight_quant: weight fake quantizer, or None.
        act_quant: input fake quantizer, or None.
        mask: the unit's pruning mask (``out x 1 x ... x 1`` or the weight's shape), or
            None. Multiplied into the quantized weight only on the binary grid; it is kept
            for :meth:`describe` in every case.
        cache: the :class:`WeightCache` shared with the other units of the model (default:
            one of its own).

    Raises:
        ModelError: ``act_quant`` on a functional unit.
    """

    def __init__(
        self,
        owner: WeightOwner,
        *,
        name: str,
        weight_quant: WeightQuant | None,
        act_quant: ActQuantizer | None,
        mask: torch.Tensor | None = None,
        cache: WeightCache | None = None,
    ) -> None:
        if act_quant is not None:
            check_input_quantizable(owner, name)
        self.owner, self.name = owner, name
        self.weight_quant, self.act_quant, self.mask = weight_quant, act_quant, mask
        self._binary = weight_quant is not None and weight_quant.bits == 1 and weight_quant.scheme == "symmetric"
        self._fused = weight_quant is not None and not self._binary and owner.weight.numel() <= FUSED_MAX_NUMEL
        self._forward_mask = mask if self._binary else None
        self._original: Any = None
        self._had_instance_forward = False
        self._installed = False
        self._version = -1
        self._values: torch.Tensor | None = None
        self._delta: torch.Tensor | None = None
        self._cache = cache if cache is not None else WeightCache()
        if weight_quant is not None:
            self._cache.members.append(self)

    def _store(self, values: torch.Tensor, delta: torch.Tensor | None) -> None:
        self._version = self.owner.weight._version
        self._values = values if self._forward_mask is None else values * self._forward_mask
        self._delta = delta

    def effective_from(self, w: torch.Tensor) -> torch.Tensor:
        """The effective weight of stored weight ``w`` (straight-through gradient to ``w``);
        computed afresh (used by the parametrization and :meth:`describe`)."""
        if self.weight_quant is not None:
            w = self.weight_quant(w)
        if self._forward_mask is not None:
            w = w * self._forward_mask
        return w

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses now (``out x ...``): the cached grid values when no
        gradient is recorded; in training ``w + D`` (small weights) or the straight-through
        function (large weights, binary grid) -- see :class:`WeightCache`."""
        w = self.owner.weight
        if self.weight_quant is None:
            return w
        if torch.is_grad_enabled() and w.requires_grad:
            if not self._fused:
                return self.effective_from(w)
            if self._version != w._version:
                self._cache.refresh(everyone=False)
            return w + cast(torch.Tensor, self._delta)
        if self._version != w._version:
            self._cache.refresh(everyone=True)
        return cast(torch.Tensor, self._values)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The module's forward with quantized input and the effective weight swapped in."""
        if self.act_quant is not None:
            training = self.owner.module.training
            if args:
                args = (self.act_quant(args[0], training), *args[1:])
            elif len(kwargs) == 1:
                key, value = next(iter(kwargs.items()))
                kwargs = {key: self.act_quant(value, training)}
            else:
                raise ModelError(f"unit {self.name!r}: cannot tell which argument of {sorted(kwargs)} is the input to quantize")
        params = self.owner.module._parameters
        params[self.owner.param] = cast(nn.Parameter, self.effective_weight())
        try:
            return self._original(*args, **kwargs)
        finally:
            params[self.owner.param] = self.owner.weight

    def install(self) -> UnitCompression:
        """Put the compression in force (wrap the forward, or parametrize a functional weight)."""
        m = self.owner.module
        if self.weight_quant is None and self.act_quant is None:
            pass  # pruning only: the masks live in storage, the forward is untouched
        elif self.owner.use == FUNCTIONAL:
            self._order = list(m._parameters)
            parametrize.register_parametrization(m, self.owner.param, _Effective(self), unsafe=True)
        else:
            self._original, self._had_instance_forward = swap_forward(m, self)
        self._installed = True
        return self

    def remove(self) -> None:
        """Undo :meth:`install`; the module is exactly as before."""
        if not self._installed:
            return
        m = self.owner.module
        if self.owner.use == FUNCTIONAL:
            if parametrize.is_parametrized(m, self.owner.param):
                _unparametrize(self.owner, self._order)
        else:
            restore_forward(m, self, self._original, self._had_instance_forward)
        self._installed, self._version, self._values, self._delta = False, -1, None, None

    def check_calibrated(self) -> None:
        """Raise :class:`ModelError` if the input quantizer never saw an input."""
        if self.act_quant is not None and not self.act_quant.calibrated:
            raise ModelError(f"unit {self.name!r}: its forward did not run on the calibration inputs, so its input "
                             f"range is unknown; give it a_bits >= 16 or check the task's calibration_inputs")

    def describe(self) -> CompressedUnit:
        """The unit as its forward uses it now (see :class:`CompressedUnit`)."""
        w = self.owner.weight.detach()
        effective = self.effective_from(w).detach().clone()
        mask = None if self.mask is None else self.mask.detach().clone()
        q: dict[str, Any] = {"w_bits": None, "scheme": None, "per_channel": None, "scale": None,
                             "zero_point": None, "qmin": None, "qmax": None}
        wq = self.weight_quant
        if wq is not None:
            scale, zero_point, qmin, qmax = weight_qparams(w, bits=wq.bits, scheme=wq.scheme, per_channel=wq.per_channel)
            q = {"w_bits": wq.bits, "scheme": wq.scheme, "per_channel": wq.per_channel, "scale": scale,
                 "zero_point": zero_point, "qmin": qmin, "qmax": qmax}
        a: dict[str, Any] = {"a_bits": None, "act_scale": None, "act_zero_point": None}
        if self.act_quant is not None:
            act_scale, act_zero = self.act_quant.qparams
            a = {"a_bits": self.act_quant.bits, "act_scale": act_scale, "act_zero_point": act_zero}
        return CompressedUnit(name=self.name, weight=effective, mask=mask, functional=self.owner.use == FUNCTIONAL, **q, **a)


__all__ = ["FUNCTIONAL", "FUSED_MAX_NUMEL", "MODULE", "UnitCompression", "check_input_quantizable", "WeightCache", "WeightOwner", "probe_weight_uses", "resolve_weight"]
