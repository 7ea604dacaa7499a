"""Channel plans from the model itself: :func:`trace_plan` derives which dimensions of which
parameters share an index set from one traced forward pass, and :func:`check_plan` verifies a
plan by running submodels (docs/algorithm.md §4).

The tracer is ``torch.fx``: it ships with PyTorch, gives the call graph of stock modules and
functions with parameter names as ``named_parameters()`` spells them, and with
``ShapeProp`` the shapes needed for a flatten's ``repeat``. A channel label flows along every
tensor: a conv or linear layer starts a new one on its output, a norm, an activation or a pool
passes it on, an addition (a residual sum) or a product of two tensors joins the labels of
both operands into one group, and a flatten of C×H×W multiplies the repeat by H·W. Labels are
joined with union-find; each final set is one channel group, named after the first layer in
the graph that produces it. The network input, by default the model's output (class scores),
and the channels through a depthwise convolution (its ``groups`` is a constant of the layer, so
a stock layer cannot run on fewer channels) are never pruned.
"""

from __future__ import annotations

import contextlib
import io
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import PlanError
from ..submodel import Axis, ChannelPlan, SubmodelIndex, width


@dataclass(frozen=True)
class _Label:
    """The channel label of a tensor's channel dimension: union-find element ``elem`` (None:
    never pruned, like the network input), ``repeat`` entries per channel (after a flatten)."""

    elem: int | None
    repeat: int = 1


# Layers and functions that keep every channel where it is (elementwise or spatial only).
_PASS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU, nn.Mish, nn.Tanh,
                 nn.Sigmoid, nn.Softplus, nn.Hardswish, nn.Hardtanh, nn.Identity, nn.Dropout,
                 nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d)
_F = nn.functional
_PASS_FUNCTIONS = {torch.relu, _F.relu, _F.leaky_relu, _F.gelu, _F.silu, _F.elu, torch.tanh,
                   torch.sigmoid, _F.max_pool1d, _F.max_pool2d, _F.avg_pool1d, _F.avg_pool2d,
                   _F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d, _F.dropout, _F.hardswish,
                   _F.relu6, _F.softplus, torch.nn.functional.hardtanh}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "double", "to",
                 "relu_", "detach"}
_JOIN = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
         operator.iadd, operator.imul}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}


class _Tracer:
    """Union-find over channel labels and parameter dimensions while walking the graph."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.producer: list[str] = []
        self.dims: dict[tuple[str, int], _Label] = {}   # (param name, dim) → label
        self.fixed: set[int] = set()                      # elements that must stay full
        self.depthwise: list[str] = []                    # the layers that fixed them

    # --- union-find -------------------------------------------------------------------------
    def new(self, channels: int, producer: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(channels)
        self.producer.append(producer)
        return len(self.parent) - 1

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def join(self, a: _Label, b: _Label, where: str) -> _Label:
        """One group for two labels that must keep the same channels (a residual sum)."""
        if a.elem is None or b.elem is None:
            if a.elem is None and b.elem is None:
                return a
            raise PlanError(f"{where} combines an unprunable tensor (the network input) with "
                            f"prunable channels of {self.producer[(a.elem or b.elem)]!r}")
        if a.repeat != b.repeat:
            raise PlanError(f"{where} combines tensors with {a.repeat} and {b.repeat} "
                            f"entries per channel")
        ra, rb = self.find(a.elem), self.find(b.elem)
        if ra != rb:
            if self.size[ra] != self.size[rb]:
                raise PlanError(f"{where} joins {self.producer[ra]!r} ({self.size[ra]} channels) "
                                f"and {self.producer[rb]!r} ({self.size[rb]} channels)")
            first, second = sorted((ra, rb))     # the earlier producer names the group
            self.parent[second] = first
        return _Label(self.find(ra), a.repeat)

    # --- parameters ---------------------------------------------------------------------------
    def bind(self, module_name: str, param: str, dim: int, label: _Label) -> None:
        name = f"{module_name}.{param}" if module_name else param
        self.dims[(name, dim)] = label

    def layer(self, target: str, module: nn.Module, inp: _Label, where: str) -> _Label:
        """Bind a layer's parameters to its input's and its new output's labels."""
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out_ch = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            groups = getattr(module, "groups", 1)
            if groups != 1:
                if not (groups == module.in_channels == out_ch):
                    raise PlanError(f"{where}: grouped convolution with groups={groups} (only "
                                    f"groups=1 or depthwise, groups = channels, is supported); "
                                    f"it blocks {target}.weight")
                out = inp                                   # depthwise: channel c stays c
                self.bind(target, "weight", 0, out)
                if out.elem is not None:      # `groups` is a constant of the layer: the
                    self.fixed.add(out.elem)  # channels through it are never pruned
                    self.depthwise.append(target)
            else:
                out = _Label(self.new(out_ch, target))
                self.bind(target, "weight", 0, out)
                self.bind(target, "weight", 1, inp)
            if module.bias is not None:
                self.bind(target, "bias", 0, out)
            return out
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if module.track_running_stats:
                raise PlanError(f"BatchNorm {target!r} keeps running statistics: build it with "
                                f"track_running_stats=False (a submodel normalises with its "
                                f"batch's statistics; sliced running statistics are not kept)")
            for param, _ in module.named_parameters(recurse=False):
                self.bind(target, param, 0, inp)
            return inp
        if isinstance(module, (*_PASS_MODULES, nn.Flatten)):   # Flatten: see _reshaped
            return inp
        raise PlanError(f"{where}: layer {type(module).__name__} is not supported by "
                        f"trace_plan; it blocks {_first_param(module, target)}")


def _first_param(module: nn.Module, target: str) -> str:
    names = [f"{target}.{n}" for n, _ in module.named_parameters()]
    return names[0] if names else f"the layers after {target!r}"


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _reshaped(label: _Label, before: tuple[int, ...], after: tuple[int, ...],
              where: str) -> _Label:
    """A flatten of (N, C, *spatial) into (N, C·Π spatial): channel c owns Π spatial columns."""
    if before == after:
        return label
    spatial = 1
    for s in before[2:]:
        spatial *= s
    if len(after) == 2 and after[0] == before[0] and after[1] == before[1] * spatial:
        return _Label(label.elem, label.repeat * spatial)
    if label.elem is None:
        return label
    raise PlanError(f"{where}: reshape from {list(before)} to {list(after)} moves channels; "
                    f"trace_plan follows only a flatten of (N, C, …) into (N, features)")


def trace_plan(model: nn.Module, example_inputs: Sequence[Tensor] | Tensor,
               full_outputs: bool = True) -> ChannelPlan:
    """The channel plan of ``model`` (keyed by its ``named_parameters()`` names) from one traced
    forward on ``example_inputs``. ``full_outputs``: the output channels are class scores and
    stay full (False for a backbone whose output features a head consumes: they stay a group,
    see :func:`output_axis`). An op the tracer cannot follow is a one-line :class:`PlanError`."""
    return _trace(model, example_inputs, full_outputs)[0]


def output_axis(model: nn.Module, example_inputs: Sequence[Tensor] | Tensor) -> Axis | None:
    """The group (and repeat) the model's output features follow in its traced plan, so that a
    head's input columns can follow them (None: the output stays full)."""
    return _trace(model, example_inputs, False)[1]


def _trace(model: nn.Module, example_inputs: Sequence[Tensor] | Tensor,
           full_outputs: bool) -> tuple[ChannelPlan, Axis | None]:
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    try:   # with autograd on, as in training (a forward may branch on it)
        with torch.enable_grad():
            graph = fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many kinds; the message says which
        raise PlanError(f"torch.fx cannot trace {type(model).__name__} "
                        f"({str(err).splitlines()[0][:120]}): write its ChannelPlan by hand "
                        f"and verify it with rabo.check_plan") from None
    try:   # ShapeProp prints the traceback of a failing node: the one line below is enough
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(graph).propagate(*inputs)
    except Exception as err:  # noqa: BLE001 - whatever the user's forward raises
        cause = err.__cause__ or err
        raise PlanError(f"{type(model).__name__} fails on the example inputs "
                        f"({str(cause).splitlines()[0][:120]})") from None
    modules = dict(graph.named_modules())
    t = _Tracer()
    try:
        return _walk(t, graph, modules, model, full_outputs)
    except PlanError as err:
        raise PlanError(f"{type(model).__name__}: {err}") from None


def _walk(t: _Tracer, graph: fx.GraphModule, modules: dict[str, nn.Module], model: nn.Module,
          full_outputs: bool) -> tuple[ChannelPlan, Axis | None]:
    """Follow the labels through the graph's nodes in order; the plan of what they bound."""
    labels: dict[fx.Node, _Label | None] = {}
    result: _Label | None = None
    for node in graph.graph.nodes:
        where = f"layer {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = labels.get(args[0]) if args else None
        if node.op == "placeholder":
            labels[node] = _Label(None)
        elif node.op == "get_attr":
            raise PlanError(f"{where}: the forward reads a tensor attribute directly; trace_plan "
                            f"needs every parameter used through its layer")
        elif node.op == "call_module":
            labels[node] = t.layer(node.target, modules[node.target], first, where)
            if isinstance(modules[node.target], nn.Flatten):
                labels[node] = _reshaped(first, _shape(args[0]), _shape(node), where)
        elif node.op == "output":
            result = labels.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        else:
            labels[node] = _follow(t, node, args, labels, where)
    return _plan(t, model, result, full_outputs)


def _follow(t: _Tracer, node: fx.Node, args: list[fx.Node],
            labels: dict[fx.Node, _Label | None], where: str) -> _Label | None:
    """The label of a function or method call's result."""
    target = node.target
    first = labels.get(args[0]) if args else None
    if node.op == "call_function" and target in _JOIN or \
            node.op == "call_method" and target in ("add", "add_", "mul", "sub"):
        tensors = [labels[a] for a in args if _shape(a) is not None and len(_shape(a)) > 1]
        out = tensors[0] if tensors else first
        for other in tensors[1:]:
            out = t.join(out, other, where)
        return out
    if node.op == "call_function" and target in (operator.truediv,) and len(args) == 1:
        return first
    if (node.op == "call_function" and target in _PASS_FUNCTIONS) or \
            (node.op == "call_method" and target in _PASS_METHODS):
        return first
    if (node.op == "call_function" and target is torch.flatten) or \
            (node.op == "call_method" and target in _RESHAPE_METHODS):
        return _reshaped(first, _shape(args[0]), _shape(node), where)
    if (node.op == "call_method" and target in ("mean", "sum", "amax")) or \
            (node.op == "call_function" and target in (torch.mean, torch.sum, torch.amax)):
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if dims and all(d >= 2 or d < 0 and d + len(_shape(args[0])) >= 2 for d in dims):
            return first                                # a spatial pool: channels stay
    name = getattr(target, "__name__", str(target))
    raise PlanError(f"{where}: operation {name!r} is not supported by trace_plan; write the "
                    f"plan by hand and verify it with rabo.check_plan")


def _plan(t: _Tracer, model: nn.Module, result: _Label | None,
          full_outputs: bool) -> tuple[ChannelPlan, Axis | None]:
    """Groups from the union-find sets; the output's set is full when ``full_outputs``."""
    full = {t.find(e) for e in t.fixed}
    if full_outputs and result is not None and result.elem is not None:
        full.add(t.find(result.elem))
    names: dict[int, str] = {}
    for root in sorted({t.find(e) for e in range(len(t.parent))} - full):
        names[root] = t.producer[root]
    dims: dict[str, tuple[Axis | None, ...]] = {}
    for pname, p in model.named_parameters():
        axes: list[Axis | None] = []
        for d in range(p.ndim):
            label = t.dims.get((pname, d))
            root = None if label is None or label.elem is None else t.find(label.elem)
            axes.append(Axis(names[root], label.repeat) if root in names else None)
        dims[pname] = tuple(axes)
    if t.depthwise:
        kept = sum(p.numel() for n, p in model.named_parameters()
                   if all(a is None for a in dims[n]))
        total = sum(p.numel() for p in model.parameters())
        warnings.warn(f"trace_plan: the channels through depthwise layer(s) "
                      f"{', '.join(t.depthwise[:3])} stay full (a layer's `groups` is fixed), "
                      f"and so do those coupled to them; {kept} of {total} parameters are "
                      f"never pruned", stacklevel=3)
    used = {a.group for axes in dims.values() for a in axes if a is not None}
    groups = {names[r]: t.size[r] for r in sorted(names) if names[r] in used}
    axis = None
    if result is not None and result.elem is not None and t.find(result.elem) in names:
        axis = Axis(names[t.find(result.elem)], result.repeat)
    return ChannelPlan(groups, dims), axis


def check_plan(model: nn.Module, plan: ChannelPlan, example_inputs: Sequence[Tensor] | Tensor,
               capacities: Sequence[float] = (0.5, 0.25), seed: int = 0,
               output: Axis | None = None, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Raise a one-line :class:`PlanError` unless a random submodel per capacity computes what
    the full model computes with every pruned coordinate zeroed (at the kept output columns:
    ``output`` is the group the output features follow, None when they stay full), to within
    ``atol + rtol · max |full output|`` everywhere: the sliced and the zeroed forward sum in
    other orders (float32 differences up to 5e-6 of the output's scale on ResNet-12), while a
    wrong plan changes outputs by a share of their scale. Checks
    first that each group's size matches its tensors and that no BatchNorm keeps running
    statistics; on a mismatch, prunes each group alone to name the group at fault."""
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    params = {n: p.detach() for n, p in model.named_parameters()}
    _check_static(model, plan, params)
    gen = torch.Generator().manual_seed(seed)

    def draw(capacity: float, groups: Sequence[str]) -> SubmodelIndex:
        index = plan.full_index()
        for g in groups:
            c = plan.groups[g]
            index[g] = torch.randperm(c, generator=gen)[:width(c, capacity)].sort().values
        return index

    for capacity in capacities:
        if _mismatch(model, plan, params, inputs, draw(capacity, list(plan.groups)), output,
                     rtol, atol) is None:
            continue
        for group in plan.groups:
            problem = _mismatch(model, plan, params, inputs, draw(capacity, [group]), output,
                                rtol, atol)
            if problem is not None:
                raise PlanError(f"group {group!r} ({', '.join(_members(plan, group)[:3])}, …) "
                                f"{problem}")
        raise PlanError(f"a submodel at capacity {capacity} differs from the full model with "
                        f"its pruned channels zeroed, though each group alone agrees: two "
                        f"groups hold channels that must be one group")


def _members(plan: ChannelPlan, group: str) -> list[str]:
    return sorted(n for n, axes in plan.dims.items() if any(a and a.group == group for a in axes))


def _check_static(model: nn.Module, plan: ChannelPlan, params: dict[str, Tensor]) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            raise PlanError(f"BatchNorm {name!r} keeps running statistics: build it with "
                            f"track_running_stats=False")
    for name, axes in plan.dims.items():
        if name not in params:
            raise PlanError(f"the plan names tensor {name!r}, which the model does not have")
        if len(axes) > params[name].ndim:
            raise PlanError(f"the plan gives tensor {name!r} {len(axes)} axes, but it has "
                            f"{params[name].ndim} dimensions")
        for d, axis in enumerate(axes):
            if axis is None:
                continue
            want = plan.groups[axis.group] * axis.repeat
            if d >= params[name].ndim or params[name].shape[d] != want:
                size = params[name].shape[d] if d < params[name].ndim else None
                raise PlanError(f"tensor {name!r} dim {d} has size {size}, but group "
                                f"{axis.group!r} has {plan.groups[axis.group]} channels × "
                                f"repeat {axis.repeat} = {want}")


def _mismatch(model: nn.Module, plan: ChannelPlan, params: dict[str, Tensor],
              inputs: tuple[Tensor, ...], index: SubmodelIndex, output: Axis | None,
              rtol: float, atol: float) -> str | None:
    """What is wrong with the submodel ``index`` (None: it matches the zeroed full model)."""
    sub = plan.extract(params, index)
    with torch.no_grad():
        try:
            got = functional_call(model, sub, inputs)
        except RuntimeError as err:
            return (f"fails when pruned ({str(err).splitlines()[0][:300]}); a tensor this "
                    f"group's channels feed is in no group or in another one")
        want = functional_call(model, plan.scatter(sub, index, {n: torch.zeros_like(p) for n, p
                                                               in params.items()}), inputs)
    if output is not None:
        want = want[:, plan.coords(output, index, want.shape[1])]
    if got.shape != want.shape:
        return (f"gives output shape {list(got.shape)} where the full model's kept outputs have "
                f"{list(want.shape)}")
    difference, scale = (got - want).abs().max().item(), want.abs().max().item()
    if not difference <= atol + rtol * scale:
        return (f"computes other values than the full model with its pruned channels zeroed "
                f"(max difference {difference:.3g} on outputs up to {scale:.3g}): a tensor "
                f"coupled to its channels is in another group")
    return None
