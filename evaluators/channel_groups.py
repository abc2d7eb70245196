"""Which layers a unit's pruned output channels reach: coupling analysis on Torch-Pruning's graph.

Torch-Pruning (``torch_pruning.DependencyGraph``) traces one forward pass through
autograd into a graph of layer and operator nodes, with index mappings through
``torch.cat`` and flatten. :func:`channel_group` walks that graph from a unit's pruned
output channels, the way ``DependencyGraph.get_pruning_group`` does, but

* stops at the first coupling that cannot be removed exactly and returns it as the
  reason (so a residual stream is refused after a few steps, not after visiting every
  block: the walk that took over 75 s on some timm models takes milliseconds);
* remembers every visited ``(node, handler, indices)`` in a hash set (Torch-Pruning
  scans a list) and gives up after ``budget`` steps;
* never prunes anything: it returns which output/input channels of which modules would
  go (:class:`ChannelGroup`), by module name, in the original indices. A
  :class:`PrunePlan` collects the groups of the removed units and the reasons of the masked
  ones (JSON round trip, so a saved plan rebuilds the pruned architecture).

A group is **removable** when it holds, besides the unit itself, only
BatchNorm/PReLU layers and depthwise convolutions (``groups == in == out``) that the
channels pass through, element-wise ops, flattens and ``torch.cat`` with known sizes,
the input columns of consumer convolutions/linears (``groups == 1``), and *gates*: a
producer whose output only multiplies the channels (squeeze-excite's ``conv_expand``
-> sigmoid -> ``x * gate``). Anything else is a reason to keep the unit masked:
another producer (a residual stream, a fused q/k/v projection), a LayerNorm/GroupNorm
(its statistics change when a channel leaves), a grouped convolution (its groups would
become unequal), a split/slice/unbind/expand (the model's code fixes the sizes), a free
``nn.Parameter``, a matrix product, or the model's output.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from compsearch.errors import ModelError

BUDGET = 20000  # dependency steps per unit before the coupling is called too wide
INDEX_BUDGET = 1_000_000  # channel indices mapped per unit (flattens multiply them), likewise
STEP_INDICES = 65_536  # indices one flatten may produce (a 512 x 7 x 7 classifier input is 25,088)
_GATE_HOPS = 8
_MATMUL = ("MmBackward", "BmmBackward", "MatmulBackward", "BaddbmmBackward", "AddmmBackward")
_REFUSED_OPS = {
    "SPLIT": "a torch.split/chunk",
    "SLICE": "a slice",
    "UNBIND": "an unbind (attention heads)",
    "EXPAND": "an expand",
    "CUSTOMIZED": "a custom layer",
    "MHA": "an nn.MultiheadAttention",
    "LSTM": "an LSTM",
    "EMBED": "an embedding",
}
_NORMS = {"LN": "LayerNorm", "GN": "GroupNorm", "IN": "InstanceNorm"}


def torch_pruning() -> Any:
    """The ``torch_pruning`` module (imported lazily; a clear error when it is missing)."""
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise ImportError(f"physical pruning needs Torch-Pruning ({e}); install it with: pip install 'compsearch[speedup]'") from None
    return tp


@dataclass(frozen=True)
class ChannelGroup:
    """The channels that leave when one unit's pruned output channels are removed.

    Attributes:
        out: module name -> removed output channels (the unit, BatchNorm/PReLU layers,
            depthwise convs and gates); for a depthwise conv also its input channels.
        inp: module name -> removed input channels of consumer convs/linears (for a
            flatten the ``c x h x w`` columns of each channel).
    """

    out: dict[str, tuple[int, ...]] = field(default_factory=dict)
    inp: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {"out": {k: list(v) for k, v in self.out.items()}, "in": {k: list(v) for k, v in self.inp.items()}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ChannelGroup:
        return ChannelGroup(out={k: tuple(v) for k, v in d["out"].items()}, inp={k: tuple(v) for k, v in d["in"].items()})


PLAN_VERSION = 1


@dataclass(frozen=True)
class PrunePlan:
    """Which channels leave which unit, and which units stay masked.

    Attributes:
        channels: unit name -> sorted pruned output-channel indices (removed or masked).
        groups: removed unit -> its :class:`ChannelGroup` (original indices).
        masked: unit -> why its channels stay in place, zeroed (a sentence naming the coupling).
    """

    channels: dict[str, tuple[int, ...]]
    groups: dict[str, ChannelGroup] = field(default_factory=dict)
    masked: dict[str, str] = field(default_factory=dict)

    @property
    def removed(self) -> tuple[str, ...]:
        """Units whose channels are physically removed, in planning order."""
        return tuple(self.groups)

    def merged(self) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
        """Union over the groups: module -> removed output channels, module -> removed input channels."""
        outs: dict[str, set[int]] = {}
        ins: dict[str, set[int]] = {}
        for group in self.groups.values():
            for name, idxs in group.out.items():
                outs.setdefault(name, set()).update(idxs)
            for name, idxs in group.inp.items():
                ins.setdefault(name, set()).update(idxs)
        return outs, ins

    def mask(self, reasons: Mapping[str, str]) -> PrunePlan:
        """This plan with the units of ``reasons`` masked instead of removed."""
        groups = {u: g for u, g in self.groups.items() if u not in reasons}
        return replace(self, groups=groups, masked={**self.masked, **reasons})

    def only(self, units: Sequence[str]) -> PrunePlan:
        """This plan removing only ``units`` (the others neither removed nor masked, unless masked already)."""
        keep = set(units) | set(self.masked)
        return PrunePlan(channels={u: c for u, c in self.channels.items() if u in keep},
                         groups={u: self.groups[u] for u in units}, masked=dict(self.masked))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``version``, ``channels``, ``groups``, ``masked``); :meth:`from_dict` reads it."""
        return {"version": PLAN_VERSION, "channels": {u: list(c) for u, c in self.channels.items()},
                "groups": {u: g.to_dict() for u, g in self.groups.items()}, "masked": dict(self.masked)}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> PrunePlan:
        if d.get("version") != PLAN_VERSION:
            raise ModelError(f"prune plan version={d.get('version')!r} is not supported; allowed: {PLAN_VERSION}")
        return PrunePlan(channels={u: tuple(c) for u, c in d["channels"].items()},
                         groups={u: ChannelGroup.from_dict(g) for u, g in d["groups"].items()},
                         masked=dict(d["masked"]))


@dataclass
class Graph:
    """Torch-Pruning's dependency graph of one model, with what the walk needs.

    Attributes:
        dg: the ``DependencyGraph`` (None when tracing failed).
        names: module -> qualified name in the traced model.
        calls: module -> number of forward calls in the traced pass.
        error: why the model could not be traced (when ``dg`` is None).
        broken: concat/split/reshape nodes whose index mapping Torch-Pruning could not build.
    """

    dg: Any
    names: dict[Any, str]
    calls: dict[nn.Module, int]
    error: str = ""
    broken: set[Any] = field(default_factory=set)


def build_graph(model: nn.Module, example_input: torch.Tensor) -> Graph:
    """Trace ``model`` (changed: eval mode, Torch-Pruning's bookkeeping) into a :class:`Graph`.

    Never raises for a model Torch-Pruning cannot handle: ``Graph.error`` says why.
    """
    tp = torch_pruning()
    from torch_pruning.dependency import index_mapping

    calls: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, _o: calls.__setitem__(mod, calls.get(mod, 0) + 1))
             for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm)]
    dg = tp.DependencyGraph()
    names = {m: n for n, m in model.named_modules()}
    try:
        with torch.enable_grad(), warnings.catch_warnings():  # traced through autograd
            warnings.simplefilter("ignore")  # Torch-Pruning's shape-inference chatter; failures are caught below
            dg.build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as e:  # noqa: BLE001 - Torch-Pruning's failure becomes the reason units stay masked
        if getattr(dg, "module2node", None) is None:
            return Graph(dg=None, names=names, calls=calls, error=f"{type(e).__name__}: {str(e)[:200]}")
        # build_dependency failed in its last step (index mappings): redo them node by node below
    finally:
        for h in hooks:
            h.remove()
    broken = set()
    updates = {"CONCAT": index_mapping.update_concat_index_mapping, "SPLIT": index_mapping.update_split_index_mapping,
               "RESHAPE": index_mapping.update_reshape_index_mapping}
    for node in list(dg.module2node.values()):
        update = updates.get(node.type.name)
        if update is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                update(dg, node)
        except Exception:  # noqa: BLE001 - a node Torch-Pruning cannot map is refused by the walk
            broken.add(node)
    return Graph(dg=dg, names=names, calls=calls, broken=broken)


def _label(graph: Graph, node: Any) -> str:
    if node.type.name == "PARAMETER":
        name = getattr(graph.dg, "_param_to_name", {}).get(node.module)
    else:
        name = graph.names.get(node.module)
    return repr(name) if name is not None else f"{node.type.name.lower()} op {_op_name(node)}"


def _op_name(node: Any) -> str:
    fn = node.grad_fn
    return fn.name() if fn is not None and hasattr(fn, "name") else "?"


def true_depthwise(m: nn.Module) -> bool:
    """A depthwise conv: ``groups == in_channels == out_channels > 1``."""
    return isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _is_gate(node: Any) -> bool:
    """The node's output reaches a product only through single-input element-wise ops."""
    cur = node
    for _ in range(_GATE_HOPS):
        if len(cur.outputs) != 1:
            return False
        nxt = cur.outputs[0]
        if nxt.type.name != "ELEMENTWISE":
            return False
        if _op_name(nxt).startswith("MulBackward"):
            return len(nxt.inputs) == 2
        if len(nxt.inputs) != 1:
            return False
        cur = nxt
    return False


def _is_product_of_activations(node: Any) -> bool:
    """A matrix product (or fused attention) of two traced activations.

    The ``addmm``/``mm`` inside an ``nn.Linear`` on a 3-D input is not: its second operand
    is the transposed weight, a node with no traced inputs.
    """
    name = _op_name(node)
    if "ScaledDotProduct" in name or "Attention" in name:
        return True
    if not name.startswith(_MATMUL):
        return False
    return sum(1 for n in node.inputs if n.inputs or n.type.name != "ELEMENTWISE") >= 2


def _refusal(graph: Graph, node: Any, is_out: bool, root: Any) -> str | None:
    """Why removing channels at ``node`` would not be exact (None: it is fine)."""
    kind, module = node.type.name, node.module
    if node in graph.broken:
        return f"pass through {_label(graph, node)}, whose channel sizes Torch-Pruning cannot infer"
    if kind in _NORMS:
        return f"reach the {_NORMS[kind]} {_label(graph, node)}, whose statistics change when a channel leaves"
    if kind in _REFUSED_OPS:
        return f"pass through {_REFUSED_OPS[kind]} ({_label(graph, node)}), whose sizes the model's code fixes"
    if kind == "PARAMETER":
        return f"reach the free parameter {_label(graph, node)}"
    if kind == "OUTPUT":
        return "are outputs of the model"
    if kind == "CONCAT" and getattr(module, "offsets", None) is None:
        return f"pass through a torch.cat ({_label(graph, node)}) whose input sizes Torch-Pruning cannot infer"
    if kind == "ELEMENTWISE" and _is_product_of_activations(node):
        return f"reach a product of two activations ({_op_name(node)}, e.g. attention)"
    if isinstance(module, nn.Module) and graph.calls.get(module, 1) > 1:
        return f"reach {_label(graph, node)}, which the forward calls {graph.calls[module]} times"
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear) and not true_depthwise(module):
        if getattr(module, "groups", 1) > 1:
            return f"reach the grouped conv {_label(graph, node)} (groups={module.groups}), whose groups would become unequal"
        if is_out and node is not root and not _is_gate(node):
            return f"are shared with the producer {_label(graph, node)} (a coupled group, e.g. a residual stream)"
    if isinstance(module, nn.Conv1d | nn.Conv2d) and kind == "DEPTHWISE_CONV" and not true_depthwise(module):
        return f"reach the grouped conv {_label(graph, node)} (groups={module.groups}), whose groups would become unequal"
    return None


def _channels(dep: Any) -> int | None:
    """How many channels ``dep`` prunes from (output or input side of a layer); None for ops."""
    m = dep.target.module
    out = dep.handler.__name__ == "prune_out_channels"
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        return int(m.out_channels if out else m.in_channels)
    if isinstance(m, nn.Linear):
        return int(m.out_features if out else m.in_features)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return int(m.num_features)
    return None


def _classify(graph: Graph, dep: Any, root: Any) -> tuple[str | None, bool]:
    """(why ``dep``'s pruning cannot be exact or None, whether it prunes output channels of a module)."""
    module = dep.target.module
    is_module = isinstance(module, nn.Module) and module in graph.names
    own = graph.dg.get_pruner_of_module(module) if is_module else None
    is_out = own is not None and dep.handler == own.prune_out_channels
    return _refusal(graph, dep.target, is_out, root), is_out


def channel_group(graph: Graph, unit: str, idxs: Sequence[int], *, budget: int = BUDGET) -> ChannelGroup | str:
    """The :class:`ChannelGroup` of removing output channels ``idxs`` of module ``unit``, or why not.

    Args:
        graph: from :func:`build_graph` on the model holding ``unit``.
        unit: qualified name of a Conv/Linear module.
        idxs: its output channels to remove.
        budget: dependency steps before giving up.

    Returns:
        The group, or a sentence completing "its channels ..." that names the coupling.
    """
    if graph.dg is None:
        return f"cannot be traced: Torch-Pruning failed on this model ({graph.error})"
    from torch_pruning import _helpers
    from torch_pruning.dependency.dependency import Dependency

    dg = graph.dg
    try:
        root = dg.model.get_submodule(unit)
    except AttributeError:
        root = None
    node = dg.module2node.get(root) if isinstance(root, nn.Conv1d | nn.Conv2d | nn.Linear) else None
    if node is None:
        return ("belong to a weight Torch-Pruning's trace does not reach through its layer's forward "
                "(a functional weight, e.g. F.linear(x, layer.weight) or a raw parameter)")
    pruner = dg.get_pruner_of_module(root)
    fn = pruner.prune_out_channels
    root_dep = Dependency(fn, fn, source=node, target=node)
    why, _ = _classify(graph, root_dep, node)
    if why is not None:
        return why
    stack = [(root_dep, [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs])]
    seen: set[tuple[int, Any, frozenset[int]]] = set()
    out: dict[str, set[int]] = {}
    inp: dict[str, set[int]] = {}
    mapped = 0
    while stack:
        dep, hidx = stack.pop()
        _, is_out = _classify(graph, dep, node)
        module = dep.target.module
        if module in graph.names and list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            (out if is_out else inp).setdefault(graph.names[module], set()).update(i.idx for i in hidx)
        for new_dep in dep.target.dependencies:
            if not new_dep.is_triggered_by(dep.handler):
                continue
            new = hidx
            for mapping in new_dep.index_mapping:
                if mapping is None:
                    continue
                grown = len(new) * getattr(mapping, "_stride", 1) if not getattr(mapping, "reverse", True) else 0
                if grown > STEP_INDICES:
                    return (f"are flattened by {_label(graph, new_dep.target)} into {grown} indices "
                            f"(more than {STEP_INDICES}; a reshape Torch-Pruning may not model)")
                new = mapping(new)
            if not new:
                continue
            why, _ = _classify(graph, new_dep, node)
            if why is not None:
                return why
            count = _channels(new_dep)
            if count is not None and max(i.idx for i in new) >= count:
                return (f"are mapped by Torch-Pruning to indices beyond the {count} channels of "
                        f"{_label(graph, new_dep.target)} (a reshape it does not model)")
            mapped += len(new)
            key = (id(new_dep.target), new_dep.handler, frozenset(i.idx for i in new))
            if key in seen:
                continue
            seen.add(key)
            if len(seen) > budget or mapped > INDEX_BUDGET:
                return f"reach more than {budget} dependencies or {INDEX_BUDGET} channel indices (a coupling too wide to analyse)"
            stack.append((new_dep, new))
    return ChannelGroup(out={k: tuple(sorted(v)) for k, v in out.items()}, inp={k: tuple(sorted(v)) for k, v in inp.items()})


__all__ = ["BUDGET", "PLAN_VERSION", "ChannelGroup", "Graph", "PrunePlan", "build_graph", "channel_group", "torch_pruning", "true_depthwise"]
