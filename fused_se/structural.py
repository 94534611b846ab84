"""convert's structural match: an SE block recognised by what its forward computes, whatever its class.

convert tries it on modules its class table does not know, and only on small candidates (at most
`MAX_MODULES` modules in all, two of them Linear or convs with a kernel of ones, and an adaptive
average pool among them or `mean` / `adaptive_avg_pool*d` in its forward's code), so a
big model costs a few microseconds a module, not a trace each. A candidate's own forward is
traced by torch.fx, every child a single op (a plain nn.Sequential traced through), and the graph
must be, with nothing else on it:

    x -> squeeze -> FC -> act -> FC -> gate -> x * s

squeeze: AdaptiveAvgPool1d/2d/3d(1), F.adaptive_avg_pool1d/2d/3d(x, 1), or x.mean over every
spatial dim; FC: nn.Linear or a pointwise Conv1d/2d/3d (the kernels check them); act: relu or silu
as a module, a function, a method, or x * sigmoid(x); gate: sigmoid or hard sigmoid, likewise.
Ops that only reshape (view, reshape, flatten, squeeze, unsqueeze, expand, expand_as, indexing with
None, nn.Flatten) and nn.Identity may sit anywhere between the squeeze and the product, and the
sizes they read from x (x.shape, x.size()) are allowed. A graph that takes a global average of its input and multiplies
its input by something, but breaks this shape, is a near miss: `NearMiss` says which op broke it.
A module whose forward takes more than x, that cannot be traced, or whose graph lacks either of
those two uses of x, is no match (`NoMatch`): convert looks inside it as usual.

A match becomes a FusedLayersSEModule holding the children of the original that hold parameters or
buffers, under their own names, so the Parameters are shared and the state_dict keeps its keys. The reshapes allowed keep the
elements' order (none transposes), so a graph that runs for any batch size computes the SE's math;
nothing is run to check it (a forward of the original on an example took milliseconds a block on
a CPU, more than the trace).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .adapters import FusedLayersSEModule

# A candidate holds at most this many modules, itself included: SE blocks hold four to eight.
MAX_MODULES = 16

_POOLS = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
_POOL_FUNCTIONS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}
_SQUEEZE_NAMES = frozenset({"mean", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"})
_FC_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_SHAPE_METHODS = frozenset({"view", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "expand_as", "view_as"})
_SHAPE_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
_SIZE_METHODS = frozenset({"size", "dim"})

_ACT_FUNCTIONS = {torch.relu: "relu", torch.relu_: "relu", F.relu: "relu", F.relu_: "relu", F.silu: "silu"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}
_GATE_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardsigmoid: "hard_sigmoid"}
_GATE_METHODS = {"sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
_PRODUCTS = (operator.mul, torch.mul)

_SHAPE = "x -> squeeze -> FC -> act -> FC -> gate -> x * s"


class NoMatch(Exception):
    """Not an SE block as far as the structural match can tell (or not traceable)."""


class NearMiss(Exception):
    """A global average of the input that does not end as a fusable SE; the message names the op."""


# --------------------------------------------------------------------------------------
# candidates: cheap checks before any trace
# --------------------------------------------------------------------------------------

_SQUEEZE_IN_FORWARD: dict[type, bool] = {}


def _forward_squeezes(cls: type) -> bool:
    """Whether cls.forward's code names a mean or an adaptive average pool (cached per class)."""
    known = _SQUEEZE_IN_FORWARD.get(cls)
    if known is None:
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        known = code is not None and not _SQUEEZE_NAMES.isdisjoint(code.co_names)
        _SQUEEZE_IN_FORWARD[cls] = known
    return known


def _is_fc(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, _FC_TYPES) and all(k == 1 for k in m.kernel_size))


def is_candidate(module: nn.Module) -> bool:
    """A small module with two FCs and a pooling child or a mean in its forward: worth a trace."""
    children = dict(module.named_children())
    if not children or len(children) >= MAX_MODULES:
        return False
    squeezes = _forward_squeezes(type(module))
    if not (squeezes or any(type(c) in _POOLS or type(c) is nn.Sequential for c in children.values())):
        return False
    fcs = 0
    for count, m in enumerate(module.modules(), 1):
        if count > MAX_MODULES:
            return False
        fcs += _is_fc(m)
        squeezes = squeezes or type(m) in _POOLS
    return fcs >= 2 and squeezes


# --------------------------------------------------------------------------------------
# the trace
# --------------------------------------------------------------------------------------


class _ChildrenAsOps(fx.Tracer):
    """Every child is one op of the graph; a plain Sequential is traced through to its layers."""

    def __init__(self) -> None:
        super().__init__(autowrap_modules=())  # no patching of math's functions: a quarter of a trace's time

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) is not nn.Sequential


def _trace(module: nn.Module) -> fx.Graph:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        raise NoMatch("no signature") from None
    # x alone: a fused block takes (x, residual), so a forward with more inputs would change its callers' meaning
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != 1 or params[0].kind not in plain:
        raise NoMatch("its forward takes other inputs than x")
    try:
        return _ChildrenAsOps().trace(module)
    except Exception as e:  # anything a forward does under a trace means "not traceable"
        raise NoMatch(f"not traceable: {e}") from None


# --------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------


def _describe(node: object, module: nn.Module) -> str:
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "call_module":
        return f"`{node.target}` ({type(module.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        where = getattr(node.target, "__module__", None) or ""
        where = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(where, where)
        if where.startswith("torch._C") or where == "torch.functional":
            where = "torch"
        return f"{where}.{name}" if where else name
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "placeholder":
        return f"the input `{node.target}`"
    return f"the attribute `{node.target}`"


def _is_shape_op(node: fx.Node, module: nn.Module) -> bool:
    if node.op == "call_module":  # nn.Identity (timm's bn=None), nn.Flatten in a Sequential
        layer = module.get_submodule(node.target)
        return type(layer) is nn.Identity or type(layer) is nn.Flatten
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    if node.op != "call_function":
        return False
    if node.target in _SHAPE_FUNCTIONS:
        return True
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        return all(i is None or i is Ellipsis or i == slice(None) for i in index)
    return False


def _is_size(node: fx.Node) -> bool:
    """x.size(), x.shape, x.dim() and items of them: ints a reshape may take."""
    if node.op == "call_method":
        return node.target in _SIZE_METHODS
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "ndim")
    if node.op == "call_function" and node.target is operator.getitem:
        return isinstance(node.args[0], fx.Node) and _is_size(node.args[0])
    return False


def _first_input(node: fx.Node) -> object:
    return node.args[0] if node.args else next(iter(node.kwargs.values()), None)


def _is_sigmoid_of(node: object, of: fx.Node, module: nn.Module) -> bool:
    if not isinstance(node, fx.Node) or _first_input(node) is not of:
        return False
    if node.op == "call_function":
        return _GATE_FUNCTIONS.get(node.target) == "sigmoid"
    if node.op == "call_method":
        return node.target in _GATE_METHODS
    return node.op == "call_module" and type(module.get_submodule(node.target)) is nn.Sigmoid


def _squeeze_rank(node: fx.Node, module: nn.Module) -> Optional[int]:
    """The rank of x that node averages over every spatial dim of, or None if it does not."""

    def all_ones(size: object) -> bool:
        return size == 1 or (isinstance(size, (tuple, list)) and all(s == 1 for s in size))

    if node.op == "call_module":
        pool = module.get_submodule(node.target)
        dims = _POOLS.get(type(pool))
        return dims + 2 if dims is not None and all_ones(pool.output_size) else None
    if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return _POOL_FUNCTIONS[node.target] + 2 if all_ones(size) else None
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )
    if not is_mean or "dtype" in node.kwargs:
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else dims
    if not (isinstance(dims, (tuple, list)) and dims and all(isinstance(d, int) for d in dims)):
        return None
    rank = len(dims) + 2
    return rank if {d % rank for d in dims} == set(range(2, rank)) else None


def _holds_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters()) or any(True for _ in m.buffers())


class _Path:
    """The walk back from the product to the squeeze, naming what breaks it."""

    def __init__(self, module: nn.Module, x: fx.Node, act_of: Callable, gate_of: Callable) -> None:
        self.module, self.x = module, x
        self.act_of, self.gate_of = act_of, gate_of
        self.nodes: set[fx.Node] = set()

    def miss(self, node: object, role: str) -> NearMiss:
        return NearMiss(f"{_describe(node, self.module)} where {role} was expected ({_SHAPE})")

    def past_reshapes(self, node: object) -> object:
        while isinstance(node, fx.Node) and _is_shape_op(node, self.module):
            self.nodes.add(node)
            node = _first_input(node)
        return node

    def step(self, node: fx.Node) -> object:
        """node's tensor input, past the reshapes between it and the op before."""
        self.nodes.add(node)
        return self.past_reshapes(_first_input(node))

    def named(self, name_of: Callable[[nn.Module], str], node: fx.Node) -> str:
        """What an activation module computes, by convert's rules; its refusal as a near miss."""
        try:
            return name_of(self.module.get_submodule(node.target))
        except Exception as e:  # convert's skip: an activation the kernels do not have
            raise NearMiss(str(e)) from None

    def holds_state(self, node: fx.Node) -> bool:
        return _holds_state(self.module.get_submodule(node.target))

    def gate(self, node: object) -> str:
        role = "the gate (sigmoid, hard_sigmoid)"
        if not isinstance(node, fx.Node):
            raise self.miss(node, role)
        if node.op == "call_module" and not self.holds_state(node):
            return self.named(self.gate_of, node)
        name = None
        if node.op == "call_function":
            name = _GATE_FUNCTIONS.get(node.target)
        elif node.op == "call_method":
            name = _GATE_METHODS.get(node.target)
        if name is None:
            raise self.miss(node, role)
        return name

    def act(self, node: object) -> tuple[str, object]:
        """The activation's name and the node it takes (x * sigmoid(x) is two nodes)."""
        role = "the activation (relu, silu)"
        if not isinstance(node, fx.Node):
            raise self.miss(node, role)
        if node.op == "call_module":
            if self.holds_state(node):
                raise NearMiss(f"{_describe(node, self.module)} between the two FCs ({_SHAPE})")
            return self.named(self.act_of, node), self.step(node)
        name = None
        if node.op == "call_function" and node.target in _PRODUCTS and len(node.args) == 2:
            a, b = node.args
            for inner, sig in ((a, b), (b, a)):
                if isinstance(inner, fx.Node) and _is_sigmoid_of(sig, inner, self.module) and len(sig.users) == 1:
                    self.nodes.update((node, sig))
                    return "silu", self.past_reshapes(inner)
        elif node.op == "call_function":
            name = _ACT_FUNCTIONS.get(node.target)
        elif node.op == "call_method":
            name = _ACT_METHODS.get(node.target)
        if name is None:
            raise self.miss(node, role)
        return name, self.step(node)

    def is_fc(self, node: object) -> bool:
        if not (isinstance(node, fx.Node) and node.op == "call_module"):
            return False
        layer = self.module.get_submodule(node.target)
        base = next((t for t in _FC_TYPES if isinstance(layer, t)), None)
        # a subclass with a forward of its own may compute something else
        return base is not None and type(layer).forward is base.forward

    def fc(self, node: object, which: str) -> str:
        if self.is_fc(node):
            return node.target
        if which == "first" and isinstance(node, fx.Node):  # a norm after the first FC: name it so
            behind = _first_input(node)
            for _ in range(4):
                if self.is_fc(behind):
                    raise NearMiss(f"{_describe(node, self.module)} between the two FCs ({_SHAPE})")
                behind = _first_input(behind) if isinstance(behind, fx.Node) else None
        raise self.miss(node, f"the {which} FC (nn.Linear or a 1x1 conv)")


def _product_factors(node: object) -> Optional[tuple[object, object]]:
    if not isinstance(node, fx.Node) or len(node.args) != 2 or node.kwargs:
        return None
    if (node.op == "call_function" and node.target in _PRODUCTS) or (node.op == "call_method" and node.target == "mul"):
        return node.args
    return None


def match(module: nn.Module, act_of: Callable[[nn.Module], str], gate_of: Callable[[nn.Module], str]):
    """(reduce path, expand path, act, gate, rank of x) of an SE block written as the module's forward.

    Raises NoMatch where the forward is not an SE (or cannot be traced) and NearMiss where it takes
    a global average of its input but is not the SE the kernels run. act_of and gate_of name an
    activation module (they raise for one the kernels do not have: a near miss with their message)."""
    graph = _trace(module)
    try:
        return _match_graph(graph, module, act_of, gate_of)
    except (NoMatch, NearMiss):
        raise
    except Exception as e:  # a graph this walk did not foresee: no match, never an error for the user
        raise NoMatch(f"graph not understood: {type(e).__name__}: {e}") from None


def _match_graph(graph: fx.Graph, module: nn.Module, act_of: Callable, gate_of: Callable):
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    (x,) = placeholders
    # an SE-like graph averages its input and multiplies it by something: else (a classifier head) no match
    if not any(_squeeze_rank(u, module) is not None and _first_input(u) is x for u in x.users):
        raise NoMatch("no global average of the input")
    if not any(_product_factors(u) is not None for u in x.users):
        raise NoMatch("no product with the input")
    output = next(n for n in graph.nodes if n.op == "output")
    path = _Path(module, x, act_of, gate_of)
    product = output.args[0]
    factors = _product_factors(product)
    if factors is None or x not in factors or factors[0] is factors[1]:
        raise NearMiss(f"the output is {_describe(product, module)}, not x * s ({_SHAPE})")
    path.nodes.add(product)
    node = path.past_reshapes(factors[1] if factors[0] is x else factors[0])
    gate = path.gate(node)
    node = path.step(node)
    expand = path.fc(node, "second")
    node = path.step(node)
    act, node = path.act(node)
    reduce = path.fc(node, "first")
    node = path.step(node)
    rank = _squeeze_rank(node, module) if isinstance(node, fx.Node) else None
    if rank is None:
        raise path.miss(node, "the squeeze (a mean over every spatial dim)")
    if _first_input(node) is not x:
        raise NearMiss(f"the squeeze averages {_describe(_first_input(node), module)}, not the block's input")
    path.nodes.add(node)
    for n in graph.nodes:
        if n.op == "output" or n is x or n in path.nodes:
            continue
        if not _is_size(n):
            raise NearMiss(f"{_describe(n, module)} is outside the SE's path ({_SHAPE})")
    for path_node in path.nodes:
        if any(u not in path.nodes and u is not output and not _is_size(u) for u in path_node.users):
            raise NearMiss(f"{_describe(path_node, module)} is used outside the SE's path")
    return reduce, expand, act, gate, rank


def build(
    module: nn.Module, act_of: Callable[[nn.Module], str], gate_of: Callable[[nn.Module], str]
) -> FusedLayersSEModule:
    """The fused block of a structural match."""
    if dict(module.named_parameters(recurse=False)) or dict(module.named_buffers(recurse=False)):
        raise NoMatch("parameters of its own")
    reduce, expand, act, gate, _ = match(module, act_of, gate_of)
    # the children that hold state, under their own names: the state_dict keeps its keys (the others,
    # a pool or an activation, may be named like the fused block's own attributes: act, gate)
    children = {n: c for n, c in module.named_children() if _holds_state(c)}
    try:
        fused = FusedLayersSEModule.from_children(children, reduce, expand, act=act, gate=gate)
    except (TypeError, ValueError) as e:
        raise NearMiss(str(e)) from None
    return fused
