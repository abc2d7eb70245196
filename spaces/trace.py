"""One traced forward that finds every weight a Conv/Linear computation uses.

:func:`trace_weight_uses` runs the model once on an example input under a
``torch.overrides.TorchFunctionMode`` that sees every ``F.linear``,
``F.conv1d`` and ``F.conv2d`` call (whoever makes it: a module's own forward,
or code that calls ``F.linear(x, self.qkv.weight, ...)`` on another module's
parameter) and every ``F.multi_head_attention_forward`` call (``nn.MultiheadAttention``:
its packed ``in_proj_weight`` and its ``out_proj`` weight). Each call's weight
argument is mapped to the parameter it is (or views), else -- a weight computed
inside a running ``Conv1d``/``Conv2d``/``Linear`` forward, e.g. weight
standardisation -- to that module's ``weight``. A weight computed anywhere else
cannot be traced back to one parameter and is reported in
:attr:`Trace.unattributed`.

The forward runs with gradients recorded (input and parameters unchanged; the
input is cloned), so the autograd graph tells, without guessing from names,
which unit reads the model input first (the stem) and which units feed the
output with no other unit in between (the classifier candidates).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from compsearch.errors import ModelError

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
MODULE, FUNCTIONAL = "module", "functional"
_OPS: dict[Any, str] = {F.linear: "linear", F.conv1d: "conv1d", F.conv2d: "conv2d"}
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


@dataclass
class WeightUse:
    """Every traced computation on one weight (one future unit).

    Attributes:
        owner: qualified name of the module holding the parameter.
        param: the parameter's attribute name on ``owner``.
        kind: ``"linear"``, ``"conv1d"`` or ``"conv2d"`` (the first computation's op).
        weight_shape: the parameter's shape (``out x ...``).
        macs: multiply-accumulates of all its computations in the traced forward (whole batch).
        groups: convolution groups of the first computation (1 for linear).
        bias_params: elements of the bias parameter of the first computation (0 if none).
        order: index of its first computation among all traced computations.
        uses: ``{"module"}``, ``{"functional"}`` or both (see :class:`~compsearch.spaces.Unit`).
        reads_input: its first computation's input depends on the model input through no other unit.
    """

    owner: str
    param: str
    kind: str
    weight_shape: tuple[int, ...]
    macs: int
    groups: int
    bias_params: int
    order: int
    uses: set[str] = field(default_factory=set)
    reads_input: bool = False


@dataclass
class Trace:
    """What one traced forward saw.

    Attributes:
        uses: unit name -> its :class:`WeightUse`, in execution order. The unit name is the
            module name for the ``weight`` of a ``Conv1d``/``Conv2d``/``Linear`` (or
            subclass), else the parameter path (``attn.in_proj_weight``).
        unattributed: one line per computation whose weight is computed outside any
            Conv/Linear forward from no single parameter (not compressible).
        terminal: units whose output reaches the model output through no other unit, in
            execution order.
        output_skips_units: the model output also depends on the input through no unit.
        input_traced: the input was differentiable, so ``reads_input``/``terminal`` are known.
        batch: the example input's batch size (``macs / batch`` is per sample).
    """

    uses: dict[str, WeightUse]
    unattributed: list[str]
    terminal: list[str]
    output_skips_units: bool
    input_traced: bool
    batch: int


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) output: a tensor, a tuple/list or a dict of them."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            yield from _tensors(o)


def _reaches(start: Any, target: Any, blocked: Mapping[Any, str]) -> tuple[bool, list[str]]:
    """Walk the autograd graph back from ``start``: (reached ``target`` without passing a
    node of ``blocked``, the blocked nodes met, as unit names in first-met order)."""
    seen: set[int] = set()
    stack = [start]
    met: list[str] = []
    found = False
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node is target:
            found = True
            continue
        if node in blocked:
            if blocked[node] not in met:
                met.append(blocked[node])
            continue
        stack.extend(n for n, _ in node.next_functions)
    return found, met


class _Recorder(TorchFunctionMode):
    """The function mode of :func:`trace_weight_uses` (see the module docstring)."""

    def __init__(self, model: nn.Module, input_node: Any) -> None:
        super().__init__()
        self.params: dict[int, tuple[str, str]] = {}
        self.tensors: dict[tuple[str, str], torch.Tensor] = {}
        self.buffers = {id(b): n for n, b in model.named_buffers()}
        for mname, m in model.named_modules():
            for pname, p in m._parameters.items():
                if p is not None and id(p) not in self.params:
                    self.params[id(p)] = (mname, pname)
                    self.tensors[(mname, pname)] = p
        self.layers = {n for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)}
        self.stack: list[str] = []  # running Conv/Linear forwards, innermost last
        self.input_node = input_node
        self.uses: dict[str, WeightUse] = {}
        self.unattributed: list[str] = []
        self.outputs: dict[Any, str] = {}  # grad_fn of a unit computation's output -> unit
        self.count = 0
        self.stem_found = False

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _OPS:
            self._conv_or_linear(_OPS[func], args, kwargs, out)
        elif func is F.multi_head_attention_forward:
            self._attention(args, kwargs, out)
        return out

    def _param(self, t: Any) -> tuple[str, str] | None:
        if not isinstance(t, torch.Tensor):
            return None
        found = self.params.get(id(t))
        if found is None and t._base is not None:
            found = self.params.get(id(t._base))
        return found

    def _unit_of(self, weight: Any) -> tuple[str, str, str, str] | None:
        """(unit name, owner module, parameter name, use) of a weight argument, or None."""
        top = self.stack[-1] if self.stack else None
        found = self._param(weight)
        if found is not None:
            owner, pname = found
            if pname == "weight" and owner in self.layers:
                return owner, owner, pname, MODULE if top == owner else FUNCTIONAL
            return (f"{owner}.{pname}" if owner else pname), owner, pname, FUNCTIONAL
        if top is not None:
            return top, top, "weight", MODULE
        return None

    def _record(self, kind: str, weight: Any, bias: Any, inp: Any, out: Any, macs: int, groups: int = 1) -> None:
        self.count += 1
        unit = self._unit_of(weight)
        if unit is None:
            buffer = self.buffers.get(id(weight), self.buffers.get(id(weight._base)))
            what = f"buffer {buffer!r}" if buffer else "tensor computed outside any Conv/Linear module"
            self.unattributed.append(f"{kind} with a {tuple(weight.shape)} weight that is a {what}, not one parameter")
            return
        name, owner, pname, use = unit
        record = self.uses.get(name)
        if record is None:
            stored = self.tensors.get((owner, pname))
            shape = tuple((weight if stored is None else stored).shape)
            b = self._param(bias)
            bias_params = 0 if b is None else self.tensors[b].numel()
            record = self.uses[name] = WeightUse(owner=owner, param=pname, kind=kind, weight_shape=shape, macs=0,
                                                 groups=groups, bias_params=bias_params, order=self.count)
            if not self.stem_found and isinstance(inp, torch.Tensor) and inp.grad_fn is not None:
                record.reads_input = _reaches(inp.grad_fn, self.input_node, self.outputs)[0]
                self.stem_found = record.reads_input
        record.macs += macs
        record.uses.add(use)
        for t in _tensors(out):
            if t.grad_fn is not None:
                self.outputs.setdefault(t.grad_fn, name)

    def _conv_or_linear(self, kind: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        inp = args[0] if args else kwargs.get("input")
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if not isinstance(weight, torch.Tensor) or not isinstance(out, torch.Tensor):
            return
        groups = 1
        if kind != "linear":
            groups = int(args[6] if len(args) > 6 else kwargs.get("groups", 1))
        fan_in = weight.shape[-1] if kind == "linear" else weight[0].numel()
        self._record(kind, weight, bias, inp, out, out.numel() * fan_in, groups)

    def _attention(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        a = _MHA_SIGNATURE.bind(*args, **kwargs).arguments
        q, k, v = a["query"], a["key"], a["value"]
        e = int(a["embed_dim_to_check"])
        tq, tk, tv = q.numel() // q.shape[-1], k.numel() // k.shape[-1], v.numel() // v.shape[-1]
        if not a.get("use_separate_proj_weight", False):
            self._record("linear", a["in_proj_weight"], a["in_proj_bias"], q, None, (tq + tk + tv) * e * e)
        else:
            bias = a["in_proj_bias"]
            for key, tokens, x in (("q_proj_weight", tq, q), ("k_proj_weight", tk, k), ("v_proj_weight", tv, v)):
                w = a[key]
                self._record("linear", w, bias, x, None, tokens * e * w.shape[-1])
        attn_out = out[0] if isinstance(out, tuple) else out
        self._record("linear", a["out_proj_weight"], a["out_proj_bias"], None, attn_out, tq * e * e)


def _stack_hooks(model: nn.Module, recorder: _Recorder) -> list[Any]:
    """Hooks keeping ``recorder.stack`` = the running Conv/Linear forwards (the hooks return None)."""

    def enter(name: str) -> Callable[..., None]:
        return lambda _m, _a: recorder.stack.append(name)

    def leave(_m: nn.Module, _a: Any, _o: Any) -> None:
        recorder.stack.pop()

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, COMPRESSIBLE):
            handles.append(m.register_forward_pre_hook(enter(name)))
            handles.append(m.register_forward_hook(leave, always_call=True))
    return handles


def trace_weight_uses(model: nn.Module, example_input: torch.Tensor) -> Trace:
    """Run ``model`` once in eval mode on ``example_input`` (``b x ...``) and record every
    linear/convolution computation (see the module docstring). The model's mode, weights
    and gradients are left as found.

    A unit's MACs are summed over its computations as ``output elements x weight
    elements per output element`` for the whole batch (divide by :attr:`Trace.batch` for
    one sample; attention batched as ``b * windows`` counts every window).
    """
    differentiable = example_input.is_floating_point() or example_input.is_complex()
    leaf = example_input.detach().clone().requires_grad_(differentiable)
    x = leaf.clone() if differentiable else leaf  # a non-leaf, so in-place ops on the input stay legal
    batch = int(example_input.shape[0]) if example_input.dim() > 0 else 1
    recorder = _Recorder(model, x.grad_fn)
    handles = _stack_hooks(model, recorder)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), recorder:
            output = model(x)
    except Exception as e:  # the model's own failure, reported with the input that caused it
        raise ModelError(
            f"model {type(model).__name__} fails on an example input of shape {tuple(example_input.shape)} "
            f"({type(e).__name__}: {str(e)[:300]}); give an input the model accepts (channels, size) or build "
            f"the model for this input (e.g. timm's img_size=)"
        ) from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    terminal: list[str] = []
    skips = False
    if differentiable:
        for t in _tensors(output):
            if t.grad_fn is not None:
                found, met = _reaches(t.grad_fn, x.grad_fn, recorder.outputs)
                skips = skips or found
                terminal += [m for m in met if m not in terminal]
    terminal.sort(key=lambda n: recorder.uses[n].order)
    return Trace(uses=recorder.uses, unattributed=recorder.unattributed, terminal=terminal,
                 output_skips_units=skips, input_traced=differentiable, batch=max(batch, 1))
