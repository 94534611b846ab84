"""Each SE op declared once (`OpSpec`: its own arguments, the ones that take a gradient, by name,
and its form's steps), and everything torch needs made from the declaration (`declare`):

    fused_se::<name>(Tensor x, <args>, Tensor? residual=None, Tensor? sample_scale=None,
                     str out_act="identity") -> (y, z, s, a)
    fused_se::<name>_backward(Tensor grad_y, Tensor x, Tensor z, Tensor s, Tensor a, <args>,
                     bool need_dx, bool need_d<grad>..., bool need_dres=False,
                     Tensor? sample_scale=None, Tensor? out=None[, Tensor? h=None])
                     -> (dx, d<grad>..., dresidual)

the forward's autograd (setup_context saves x, the args' tensors, z, s, a, sample_scale and the
output where a ReLU ends the block; the backward calls the backward op), the backward op's
refusal of double backward, and the plain autograd.Function and y-only call that `run` takes in
plain eager execution (fused_se/runtime: trace.plain_eager, eager.replayed_body).

Every form runs the same three passes around its excitation (docs/DESIGN.md): squeeze, excite,
scale forward; scale_bwd, the excitation's backward, squeeze_scale_bwd backward. A declaration
gives the excitation's two steps, and may take a whole forward or backward over itself
(`whole_fwd`, `whole_bwd`: the two-FC form's CPU kernel and its one-launch paths).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op

from . import _dispatch, decomposed, kernels
from .kernels import plan as _plan
from .kernels.heuristics import L2_ENV as _L2_ENV
from .kernels.sync import CHECK_ENV as _CHECK_ENV
from .reference import acc_dtype
from .runtime.eager import replayed_body
from .runtime.env import state_reader
from .runtime.launch import empty
from .runtime.replay import derived, signature
from .runtime.trace import is_fake, plain_eager

TAIL = ("residual", "sample_scale", "out_act")
TAIL_SCHEMA = 'Tensor? residual=None, Tensor? sample_scale=None, str out_act="identity"'
TAIL_DEFAULTS = (None, None, "identity")
OUT_ACTS = ("identity", "relu")


@dataclass(frozen=True)
class OpSpec:
    """One op: `args` ((name, schema type), between x and the tail) and which of them take a
    gradient (`grads`, the leading args; x and the residual take one too). The steps take the args positionally, in order:
        excite_fwd(impl, zsum, x, *args) -> (z, s, a)
        excite_bwd(impl, dssum, z, s, a, x, need, *args) -> (dz, d<grad>...)   need: x's and the grads'
        whole_fwd(x, d, residual, relu, *args) -> (y, z, s, a), or None for the three passes
        whole_bwd(grad_y, x, z, s, a, need, d, out, store_g, h, *args) -> (dx, d<grad>..., dres), or None
    `lengths`: the arg the squeeze and the dx pass take as each sample's count of valid positions.
    `cpu_y`, `cpu_kept` (x, d, residual, relu, *args): on the CPU kernel, y alone for a call that
    takes no gradient, and the forward's outputs plus the hidden layer the backward takes as h.
    An op whose whole steps always answer (scSE, whose passes are its own) gives no excitation steps."""

    name: str
    args: tuple[tuple[str, str], ...]
    grads: tuple[str, ...]
    excite_fwd: Optional[Callable] = None
    excite_bwd: Optional[Callable] = None
    whole_fwd: Optional[Callable] = None
    whole_bwd: Optional[Callable] = None
    lengths: Optional[str] = None
    cpu_y: Optional[Callable] = None
    cpu_kept: Optional[Callable] = None

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.args)


def impl_for(x: Tensor):
    """The launchers for x: the Triton kernels, or their twins in torch ops (fused_se.decomposed).

    CUDA tensors take the kernels. CPU tensors take the twins, except with the Triton
    interpreter on, outside tracing: the interpreter runs on real tensors only, so torch.compile
    and torch.export (which run the bodies on fake tensors) trace the twins on the CPU.
    The device is a static fact under tracing, so the traced branch is the one that runs."""
    if x.is_cuda:
        return kernels
    if x.is_cpu and _dispatch.interpreter_enabled() and not is_fake(x):
        return kernels
    return decomposed


def sample_factor(sample_scale: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    return None if sample_scale is None else sample_scale.to(acc_dtype(x.dtype)).contiguous()


def grad_dtypes(w: Tensor, b: Optional[Tensor]) -> tuple[torch.dtype, torch.dtype]:
    """The dtypes a layer's weight and bias gradients leave the kernels in: the parameters' own,
    each rounded once as it is stored, so that no cast follows (a missing bias: the weight's)."""
    return w.dtype, (w if b is None else b).dtype


def hw(x: Tensor) -> int:
    return x.shape[2] * x.shape[3]


_SWITCHES = (_dispatch.BACKEND_ENV, _plan.PATHS_ENV, _L2_ENV, _CHECK_ENV)
_switches = state_reader(_SWITCHES)


def _settings() -> tuple:
    """What a body's decisions read besides its arguments (replay signatures): the planner's
    switches as they are set (force_paths' innermost block, then how the environment's switches are
    set: empty where none is, else their raw values; a value the planner refuses is refused at the
    first call that records under it). run_if_known reads the second part: empty, no
    FUSED_SE_BACKEND."""
    forced = _plan._forced
    return (forced[-1] if forced else None, _switches())


def _launches_kernels(args: tuple) -> bool:
    """Whether a body called with these arguments launches the kernels (`impl_for`, on real tensors:
    the plain route's, where no fake tensor comes, so impl_for's own test for them is left out)."""
    return _dispatch.kernels_run_for(args[0])


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fused_se: double backward (a gradient of a gradient) through the fused SE block is not supported; "
        "set FUSED_SE_BACKEND=reference to run the plain PyTorch reference, which supports it"
    )


def _nothing_saved(ctx, inputs, output) -> None:
    pass


def _with_defaults(args: tuple, n: int, defaults: tuple) -> tuple:
    """args padded to n with the trailing defaults (an op's body gets the arguments its caller passed)."""
    return args if len(args) == n else args + defaults[len(defaults) - (n - len(args)) :]


class Op:
    """What `declare` made of a spec: `op` and `backward_op` (the custom ops), and `run`'s plain route."""

    def __init__(self, spec: OpSpec):
        self.spec = spec
        names, types = spec.arg_names, [t for _, t in spec.args]
        k = len(names)
        self.n_args = k
        assert spec.grads == names[: len(spec.grads)], "the args that take a gradient lead"
        assert (spec.excite_fwd is None) == (spec.excite_bwd is None), "both excitation steps, or neither"
        assert spec.excite_fwd is not None or (spec.whole_fwd and spec.whole_bwd), "whole steps where no excitation"
        self.tensor_args = tuple(i for i, t in enumerate(types) if t.startswith("Tensor"))
        self.other_args = tuple(i for i in range(k) if i not in self.tensor_args)
        # saved tensors and ctx's other args put back in order by a concatenation where they allow
        self.tensors_first = self.tensor_args == tuple(range(len(self.tensor_args)))
        self.n_need = 1 + len(spec.grads)  # x's and the grads' needs_input_grad
        self.no_grads = (None,) * (k - len(spec.grads))
        self.residual_index = 1 + k
        self.pickers: dict = {}  # autograd_backward's, by (need, need_res, relu, plain call)
        self.lengths = None if spec.lengths is None else names.index(spec.lengths)
        self.cpu_y, self.cpu_kept = spec.cpu_y, spec.cpu_kept
        self.hidden = spec.cpu_kept is not None
        args = ", ".join(f"{t} {n}" for n, t in spec.args)
        needs = ", ".join(f"bool need_d{n}" for n in ("x", *spec.grads))
        hidden = ", Tensor? h=None" if self.hidden else ""
        outs = ", ".join(["Tensor"] * (2 + len(spec.grads)))
        # The schemas, also as the bodies' Python signatures: torch 2.11's triton_op infers the schema
        # from the function and drops the one it is given.
        tail = [("residual", "Tensor?", None), ("sample_scale", "Tensor?", None), ("out_act", "str", "identity")]
        forward_params = [("x", "Tensor", REQUIRED), *((n, t, REQUIRED) for n, t in spec.args), *tail]
        self.op = triton_op(
            f"fused_se::{spec.name}",
            mutates_args=(),
            schema=f"(Tensor x, {args}, {TAIL_SCHEMA}) -> (Tensor, Tensor, Tensor, Tensor)",
        )(typed_body(self.forward, forward_params, 4))
        backward_params = [
            *((n, "Tensor", REQUIRED) for n in ("grad_y", "x", "z", "s", "a")),
            *((n, t, REQUIRED) for n, t in spec.args),
            *((f"need_d{n}", "bool", REQUIRED) for n in ("x", *spec.grads)),
            ("need_dres", "bool", False),
            ("sample_scale", "Tensor?", None),
            ("out", "Tensor?", None),
            *([("h", "Tensor?", None)] if self.hidden else []),
        ]
        self.backward_op = triton_op(
            f"fused_se::{spec.name}_backward",
            mutates_args=(),
            schema=f"(Tensor grad_y, Tensor x, Tensor z, Tensor s, Tensor a, {args}, {needs}, bool need_dres=False, "
            f"Tensor? sample_scale=None, Tensor? out=None{hidden}) -> ({outs})",
        )(typed_body(self.backward, backward_params, 2 + len(spec.grads)))
        self.op.register_autograd(self.autograd_backward, setup_context=self.setup_context)
        self.backward_op.register_autograd(_no_double_backward, setup_context=_nothing_saved)
        self.plain_backward = replayed_body(self.backward, _launches_kernels, _settings)
        body = replayed_body(self.forward, _launches_kernels, _settings)
        self.plain_forward = body
        self.plain = type(
            "".join(p.title() for p in spec.name.split("_")),
            (torch.autograd.Function,),
            {"forward": staticmethod(self._plain_apply), "backward": staticmethod(self.autograd_backward)},
        )

    # ---- the bodies (the custom ops' and the plain route's) ----

    def forward(self, *args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(y, z, s, a)."""
        args = _with_defaults(args, self.n_args + 4, TAIL_DEFAULTS)
        x, args, (residual, sample_scale, out_act) = args[0], args[1:-3], args[-3:]
        spec, d, relu = self.spec, sample_factor(sample_scale, x), out_act == "relu"
        if spec.whole_fwd is not None:
            done = spec.whole_fwd(x, d, residual, relu, *args)
            if done is not None:
                return done
        impl = impl_for(x)
        zsum = impl.squeeze_fwd(x, self._lengths(args))
        z, s, a = spec.excite_fwd(impl, zsum, x, *args)
        return impl.scale_fwd(x, s, d, residual, relu), z, s, a

    def backward(self, grad_y: Tensor, x: Tensor, z: Tensor, s: Tensor, a: Tensor, *rest) -> tuple[Tensor, ...]:
        """(dx, d<grad>..., dresidual); a gradient that was not asked for comes back empty, and so
        does dresidual without a ReLU epilogue (out None: it is dy itself)."""
        k, n = self.n_args, 1 + len(self.spec.grads)
        rest = _with_defaults(rest, k + n + 3 + self.hidden, (False, None, None, None)[: 3 + self.hidden])
        args, asked, (need_dres, sample_scale, out) = rest[:k], rest[k : k + n], rest[k + n : k + n + 3]
        h = rest[-1] if self.hidden else None
        grad_y = _dense_grad(grad_y)
        inputs = (x, *args[: self.n_need - 1])
        need = tuple(q and t is not None for q, t in zip(asked, inputs, strict=True))
        store_g = need_dres and out is not None  # the ReLU tail's shortcut gradient is written out
        d = sample_factor(sample_scale, x)
        done = None
        if self.spec.whole_bwd is not None:
            done = self.spec.whole_bwd(grad_y, x, z, s, a, need, d, out, store_g, h, *args)
        if done is None:
            impl = impl_for(x)
            dssum, dres = impl.scale_bwd(grad_y, x, d, out, store_g)
            dz, *dweights = self.spec.excite_bwd(impl, dssum, z, s, a, x, need, *args)
            dx = None
            if need[0]:  # the masked g where it is in memory, else dy and out
                g, relu_out = (dres, None) if dres is not None else (grad_y, out)
                dx = impl.squeeze_scale_bwd(g, s, dz, x, d, relu_out, self._lengths(args))
            done = (dx, *dweights, dres)
        return tuple(
            empty(0, dtype=x.dtype, device=x.device)
            if t is None or like is None
            else decomposed.as_dtype(t, like.dtype)
            for t, like in zip(done, (*inputs, x), strict=True)
        )

    def _lengths(self, args: tuple) -> Optional[Tensor]:
        return None if self.lengths is None else args[self.lengths].contiguous()

    # ---- autograd ----

    def setup_context(self, ctx, inputs, output, hidden: Optional[Tensor] = None) -> None:
        args = inputs[1:-3]
        y, z, s, a = output
        # z, s and a are outputs only to be saved and the backward ignores their gradients: not
        # filled with zeros (three launches before every backward)
        ctx.set_materialize_grads(False)
        ctx.relu = relu = inputs[-1] == "relu"
        if self.tensors_first:
            n = len(self.tensor_args)
            tensors, ctx.others = args[:n], args[n:]
        else:
            tensors = [args[i] for i in self.tensor_args]
            ctx.others = tuple(args[i] for i in self.other_args)
        ctx.save_for_backward(inputs[0], z, s, a, inputs[-2], y if relu else None, *tensors)
        ctx.hidden = hidden  # the plain call's CPU kernel keeps it (_plain_apply)

    def _in_order(self, tensors, others) -> list:
        """The args from the saved tensors and ctx's other args, each at its place."""
        args = [None] * self.n_args
        for i, t in zip(self.tensor_args, tensors, strict=True):
            args[i] = t
        for i, v in zip(self.other_args, others, strict=True):
            args[i] = v
        return args

    def autograd_backward(self, ctx, grad_y, *_ignored):
        if grad_y is None:  # no gradient reached y (grads are not materialized)
            return (None,) * len(ctx.needs_input_grad)
        x, z, s, a, sample_scale, out, *tensors = ctx.saved_tensors
        args = (*tensors, *ctx.others) if self.tensors_first else self._in_order(tensors, ctx.others)
        # trailing inputs left at their defaults are not passed through autograd: needs_input_grad
        # may be shorter than the schema
        needs = ctx.needs_input_grad
        need = needs[: self.n_need]
        need_res = len(needs) > self.residual_index and needs[self.residual_index]
        plain_call = getattr(ctx, "plain", False)  # the plain Function's, not the op's
        plain = plain_call and not torch.is_grad_enabled() and plain_eager(())
        # the body itself where the forward ran plainly and no graph of the gradient is built;
        # else the op, whose own backward refuses double backward
        hidden = (ctx.hidden,) if self.hidden else ()
        bwd_args = (grad_y, x, z, s, a, *args, *need, need_res, sample_scale, out, *hidden)
        if not plain:
            done = self.backward_op(*bwd_args)
        elif ctx.program is None:  # the forward ran its body: the backward takes its whole signature
            done = self.plain_backward.keyed(bwd_args)[0]
        else:  # the forward's Program fixes every saved input and output's signature
            key = derived(ctx.program, grad_y, (*need, need_res), _settings())
            done = self.plain_backward.derived_call(bwd_args, key)
        relu = ctx.relu
        pick = self.pickers.get((need, need_res, relu, plain_call)) or self._picker(need, need_res, relu, plain_call)
        return pick((*done, grad_y, None))

    def _picker(self, need: tuple, need_res: bool, relu: bool, plain_call: bool) -> Callable[[tuple], tuple]:
        """What autograd_backward returns, picked from (dx, d<grad>..., dresidual, grad_y, None) by one
        itemgetter, made once per combination: each gradient asked for (None for the others: the
        body's empty tensors are not gradients), None for the other args, the residual's gradient
        (the backward's with a ReLU epilogue; without, dy itself) where asked for, None for
        sample_scale and out_act, and for the plain Function's last argument (the known Program)."""
        n = self.n_need
        none = n + 2
        index = [i if asked else none for i, asked in enumerate(need)] + [none] * len(self.no_grads)
        index += [(n if relu else n + 1) if need_res else none, none, none] + [none] * plain_call
        pick = self.pickers[(need, need_res, relu, plain_call)] = operator.itemgetter(*index)
        return pick

    # ---- the plain route ----

    def _plain_apply(self, ctx, *args) -> Tensor:
        """y: the plain Function's only output (z, s and a are saved, not returned: an output costs
        autograd a wrapper, a version check and a place in the node's inputs on every call). The
        last argument: the Program `run_if_known` found for the call, else None."""
        args, known = args[:-1], args[-1]
        kept = None
        cpu_kept = self.cpu_kept
        if known is not None:  # run_if_known's: recorded where the kernels launch
            out, program = self.plain_forward.run(args, known)
        elif cpu_kept is not None and not _launches_kernels(args):  # the CPU kernel
            *out, kept = self._on_cpu_kernel(cpu_kept, args)
            out, program = tuple(out), None
        else:
            out, program = self.plain_forward.keyed(args)
        self.setup_context(ctx, args, out, kept)
        ctx.program = program
        ctx.plain = True
        return out[0]

    def _on_cpu_kernel(self, fn, args: tuple):
        x, args, (residual, sample_scale, out_act) = args[0], args[1:-3], args[-3:]
        return fn(x, sample_factor(sample_scale, x), residual, out_act == "relu", *args)

    def y_alone(self, args: tuple, known=None) -> Tensor:
        """y of a plain call that takes no gradient (no autograd node): the body's first output, or
        on the CPU kernel cpu_y where given (the same bits, with nothing kept for a backward).
        known: the Program run_if_known found for these args."""
        if known is not None:  # recorded where the kernels launch
            return self.plain_forward.run(args, known)[0][0]
        if self.cpu_y is not None and not _launches_kernels(args):  # the CPU kernel
            return self._on_cpu_kernel(self.cpu_y, args)
        return self.plain_forward.keyed(args)[0][0]


def _dense_grad(grad_y: Tensor) -> Tensor:
    if kernels.bchw_strides(grad_y) is None:
        return grad_y.contiguous(memory_format=torch.contiguous_format)
    return grad_y


_OPS: dict = {}  # custom op -> its Op


REQUIRED = inspect.Parameter.empty
_SCHEMA_TYPES = {"Tensor": Tensor, "Tensor?": Optional[Tensor], "str": str, "bool": bool, "int": int, "float": float}


def typed_body(body: Callable, params: list[tuple[str, str, object]], outputs: int) -> Callable:
    """body(*args) with a signature that says its schema: (name, schema type, default) per
    parameter (`REQUIRED`: none), and `outputs` Tensors returned."""

    def typed(*args, **kwargs):
        return body(*args, *kwargs.values())  # the schema's order: keywords only ever trail

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    typed.__signature__ = inspect.Signature(
        [inspect.Parameter(n, kind, annotation=_SCHEMA_TYPES[t], default=d) for n, t, d in params],
        return_annotation=tuple[(Tensor,) * outputs],
    )
    typed.__name__ = typed.__qualname__ = body.__name__
    return typed


def declare(spec: OpSpec) -> Op:
    op = Op(spec)
    _OPS[op.op] = op
    return op


def _any_requires_grad(args: tuple) -> bool:
    for a in args:
        if isinstance(a, Tensor) and a.requires_grad:
            return True
    return False


def run(op, *args) -> Tensor:
    """y of a forward op, given every argument of its schema positionally, in order: as a plain
    autograd.Function in plain eager execution, else through the op itself. Both run the same
    body and the same backward, so they give the same bits."""
    if not plain_eager(args):
        return op(*args)[0]
    return _run_plain(_OPS[op], args)


def _run_plain(declared: Op, args: tuple) -> Tensor:
    if torch.is_grad_enabled() and _any_requires_grad(args):
        return declared.plain.apply(*args, None)
    return declared.y_alone(args)  # no gradient to take: no autograd node either


def run_if_known(op, args: tuple) -> Optional[Tensor]:
    """run(op, *args) for a plain call (every argument of the op's schema, positionally) whose
    replay key a call has already run with, else None (and None under the reference backend). Such
    a call's arguments passed the checks the functional forms make before `run`, and those checks
    read nothing the key does not hold (each tensor's dtype, device and shape, every other
    argument's value): a caller whose checks are of that kind may skip them where this runs the
    call. The key goes down to the replay, which does not sign the call again."""
    if not plain_eager(args):
        return None
    declared = _OPS[op]
    settings = _settings()
    try:
        program = declared.plain_forward.table.get(signature(args, settings))
    except TypeError:  # an unhashable argument: the checks say what is wrong with it
        return None
    if program is None:
        return None
    # in plain eager execution only FUSED_SE_BACKEND=reference chooses the reference: no switch
    # set, no need to ask
    if settings[1] and _dispatch.backend_for(args[0]) == "reference":
        return None
    if torch.is_grad_enabled() and (args[0].requires_grad or _any_requires_grad(args)):  # x: a tensor here
        return declared.plain.apply(*args, program)
    return declared.y_alone(args, program)
