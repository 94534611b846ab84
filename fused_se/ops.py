"""The differentiable SE ops: torch.library triton ops with handwritten backwards.

Three excitation forms share the squeeze and scale passes:
    squeeze_excite                 two FCs (W1, b1, act, W2, b2, gate): the classic SE and its kin
    effective_squeeze_excite       one C x C FC (W, b, gate): effective SE (ESE)
    efficient_channel_attention    a k-tap conv across channels (w, b, padding, gate): ECA, CECA

Forward: squeeze, excite, scale. Backward: scale_bwd, excite_bwd, squeeze_scale_bwd. The MLP
form has more paths (one-launch, spread, streamed), chosen by kernels.plan; docs/DESIGN.md tells
each path's traffic.

Each forward op returns (y, z, s, a): the output, and the squeeze, the gate and the gate's input, (B, C) in the accumulation dtype (a is empty
unless the gate's backward needs it). Saved for backward: x, the weights, z, s and a.

Every forward op also takes a residual block's tail, fused into the scale pass:
    y = out_act(x * s[b, c] * d[b] + residual)      out_act: "identity" | "relu"
with d (sample_scale, (B,) or None) drop-path's per-sample factor and residual (x's shape, or
None) the shortcut: 4N bytes forward instead of about 8N unfused. Its backward stays in the two
passes: scale_bwd masks g by the ReLU's output and writes the residual's gradient, the dx pass
reads that gradient. With a ReLU, the output is saved as well (its mask).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch._library.triton import set_wrap_triton_enabled
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

from . import _dispatch, decomposed, kernels
from .kernels.replay import replayed


def _impl(x: Tensor):
    """The launchers for x: the Triton kernels, or their twins in torch ops (fused_se.decomposed).

    CUDA tensors take the kernels. CPU tensors take the twins, except with the Triton
    interpreter on, outside tracing: the interpreter runs on real tensors only, so torch.compile
    and torch.export (which run this body on fake tensors) trace the twins on the CPU.
    The device is a static fact under tracing, so the traced branch is the one that runs.
    """
    if x.is_cuda:
        return kernels
    if x.is_cpu and _dispatch.interpreter_enabled() and not is_fake(x):
        return kernels
    return decomposed


OUT_ACTS = ("identity", "relu")


def _sample_factor(sample_scale: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    return None if sample_scale is None else sample_scale.to(kernels.acc_dtype(x.dtype)).contiguous()


def _scale_epilogue(
    impl, x: Tensor, s: Tensor, residual: Optional[Tensor], sample_scale: Optional[Tensor], out_act: str
) -> Tensor:
    return impl.scale_fwd(x, s, _sample_factor(sample_scale, x), residual, out_act == "relu")


def _first_backward_pass(
    impl, grad_y: Tensor, x: Tensor, sample_scale: Optional[Tensor], out: Optional[Tensor], need_dres: bool
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """The backward's pass over x before an excitation's backward: (the partial sums of g * x, the
    masked g through a ReLU tail where the residual's gradient is asked for, d). out: the forward's
    output where a ReLU ended it (None otherwise)."""
    d = _sample_factor(sample_scale, x)
    dssum, g = impl.scale_bwd(grad_y, x, d, out, need_dres and out is not None)
    return dssum, g, d


def _dx_pass(
    impl,
    grad_y: Tensor,
    masked_g: Optional[Tensor],
    x: Tensor,
    s: Tensor,
    dz: Tensor,
    d: Optional[Tensor],
    out: Optional[Tensor],
) -> Tensor:
    """dx after the excitation's backward; reads the masked g where it is in memory, else dy and out."""
    if masked_g is not None:
        return impl.squeeze_scale_bwd(masked_g, s, dz, x, d)
    return impl.squeeze_scale_bwd(grad_y, s, dz, x, d, out)


def _dense_grad(grad_y: Tensor) -> Tensor:
    if kernels.bchw_strides(grad_y) is None:
        return grad_y.contiguous(memory_format=torch.contiguous_format)
    return grad_y


def _grads_out(x: Tensor, *pairs: tuple[Optional[Tensor], Optional[Tensor]]) -> tuple[Tensor, ...]:
    """Each (gradient, its input) as the gradient in its input's dtype, or an empty tensor where
    none was asked for (or the input is None)."""
    return tuple(
        kernels.common.empty(0, dtype=x.dtype, device=x.device)
        if t is None or like is None
        else decomposed.as_dtype(t, like.dtype)
        for t, like in pairs
    )


def _grad_dtypes(w: Tensor, b: Optional[Tensor]) -> tuple[torch.dtype, torch.dtype]:
    """The dtypes a layer's weight and bias gradients leave the kernels in: the parameters' own,
    each rounded once as it is stored, so that no cast follows (a missing bias: the weight's)."""
    return w.dtype, (w if b is None else b).dtype


def _hw(x: Tensor) -> int:
    return x.shape[2] * x.shape[3]


def _save_epilogue(ctx, sample_scale: Optional[Tensor], out_act: str, y: Tensor):
    """The epilogue's part of what the backward needs: d, and the output where a ReLU ended it.
    Also: z, s and a are outputs only to be saved, and the backwards ignore their gradients, so
    autograd is told not to fill them with zeros (three launches before every backward)."""
    ctx.set_materialize_grads(False)
    ctx.relu = out_act == "relu"
    return sample_scale, (y if ctx.relu else None)


def _needs_grad(ctx, i: int) -> bool:
    """Whether input i needs a gradient; trailing inputs left at their defaults are not passed
    through autograd, so needs_input_grad may be shorter than the schema."""
    return i < len(ctx.needs_input_grad) and ctx.needs_input_grad[i]


def no_grads(ctx) -> tuple[None, ...]:
    """A backward's answer where no gradient reached y: None for every input autograd passed."""
    return (None,) * len(ctx.needs_input_grad)


def _residual_grad(ctx, grad_y: Tensor, dres: Tensor, need_res: bool) -> Optional[Tensor]:
    if not need_res:
        return None
    return dres if ctx.relu else grad_y  # without a ReLU the residual's gradient is dy itself


# --------------------------------------------------------------------------------------
# two FCs
# --------------------------------------------------------------------------------------


def _squeeze_excite(
    x: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    act: str,
    gate: str,
    residual: Optional[Tensor] = None,
    sample_scale: Optional[Tensor] = None,
    out_act: str = "identity",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, z, s, a) for s = gate(W2 act(W1 z + b1) + b2)."""
    d = _sample_factor(sample_scale, x)
    if _impl(x) is decomposed:  # the CPU kernel: the three steps in one call, in the fewest ops
        return decomposed.squeeze_excite_fwd(x, w1, b1, w2, b2, act, gate, d, residual, out_act == "relu")[:4]
    plan = kernels.plan_forward(x, w1.shape[0])
    if plan.path != "three_launch":
        return kernels.FORWARD_PATHS[plan.path](
            x, w1, b1, w2, b2, act, gate, d, residual, out_act == "relu", plan.config
        )
    zsum = kernels.squeeze_fwd(x)
    z, s, a = kernels.excite_fwd(zsum, _hw(x), w1, b1, w2, b2, x.dtype, act, gate)
    return kernels.scale_fwd(x, s, d, residual, out_act == "relu"), z, s, a


squeeze_excite = triton_op("fused_se::squeeze_excite", mutates_args=())(_squeeze_excite)


def _squeeze_excite_backward(
    grad_y: Tensor,
    x: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    act: str,
    gate: str,
    need_dx: bool,
    need_dw1: bool,
    need_db1: bool,
    need_dw2: bool,
    need_db2: bool,
    need_dres: bool = False,
    sample_scale: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    h: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW1, db1, dW2, db2, dresidual); a gradient that was not asked for comes back empty,
    and so does dresidual without a ReLU epilogue (out None: it is dy itself). h: the hidden
    layer's pre-activation where the CPU kernel's forward kept it (plain calls), else None: the
    backward recomputes it (the kernels always do, on chip)."""
    grad_y = _dense_grad(grad_y)
    need_db1 = need_db1 and b1 is not None
    need_db2 = need_db2 and b2 is not None
    store_g = need_dres and out is not None  # the ReLU tail's shortcut gradient is written out
    need = (need_dx, need_dw1, need_db1, need_dw2, need_db2)
    if _impl(x) is decomposed:  # the CPU kernel: the three steps in one call, in the fewest ops
        dx, dw1, db1, dw2, db2, dres = decomposed.squeeze_excite_bwd(
            grad_y, x, z, s, a, w1, b1, w2, act, gate, need, _sample_factor(sample_scale, x), out, store_g, h
        )
        return _grads_out(x, (dx, x), (dw1, w1), (db1, b1), (dw2, w2), (db2, b2), (dres, x))
    plan = kernels.plan_backward(grad_y, x, w1.shape[0], out, store_g, need_dx)
    if plan.path == "stream":
        # x past L2: one persistent launch, whose dx pass re-reads each sample's g from L2
        dx, dres, dw1, db1, dw2, db2 = kernels.se_bwd_stream(
            grad_y, x, z, s, a, w1, b1, w2, (need_dw1, need_db1, need_dw2, need_db2), act, gate,
            _sample_factor(sample_scale, x), out, store_g, plan.config, _grad_dtypes(w1, b1) + _grad_dtypes(w2, b2),
        )  # fmt: skip
        return _grads_out(x, (dx, x), (dw1, w1), (db1, b1), (dw2, w2), (db2, b2), (dres, x))
    dssum, dres, d = _first_backward_pass(kernels, grad_y, x, sample_scale, out, need_dres)
    dz, dw1, db1, dw2, db2 = kernels.excite_bwd(dssum, z, s, a, w1, b1, w2, x.dtype, need, act, gate)
    dx = _dx_pass(kernels, grad_y, dres, x, s, dz, d, out) if need_dx else None
    return _grads_out(x, (dx, x), (dw1, w1), (db1, b1), (dw2, w2), (db2, b2), (dres, x))


squeeze_excite_backward = triton_op("fused_se::squeeze_excite_backward", mutates_args=())(_squeeze_excite_backward)


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, act, gate, _residual, sample_scale, out_act = inputs
    y, z, s, a = output
    ctx.save_for_backward(x, w1, b1, w2, b2, z, s, a, *_save_epilogue(ctx, sample_scale, out_act, y))
    ctx.act, ctx.gate = act, gate
    ctx.hidden = None  # the plain call's CPU kernel keeps it (_plain_function)


def _backward(ctx, grad_y, grad_z, grad_s, grad_a):
    if grad_y is None:  # no gradient reached y (grads are not materialized)
        return no_grads(ctx)
    x, w1, b1, w2, b2, z, s, a, sample_scale, out = ctx.saved_tensors
    need, need_res = ctx.needs_input_grad[:5], _needs_grad(ctx, 7)
    *grads, dres = _backward_op(ctx, squeeze_excite_backward)(
        grad_y, x, z, s, a, w1, b1, w2, b2, ctx.act, ctx.gate, *need, need_res, sample_scale, out, ctx.hidden
    )
    grads = [g if n else None for g, n in zip(grads, need)]
    return (*grads, None, None, _residual_grad(ctx, grad_y, dres, need_res), None, None)


squeeze_excite.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# one C x C FC
# --------------------------------------------------------------------------------------


def _effective_squeeze_excite(
    x: Tensor,
    w: Tensor,
    b: Optional[Tensor],
    gate: str,
    residual: Optional[Tensor] = None,
    sample_scale: Optional[Tensor] = None,
    out_act: str = "identity",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, z, s, a) for s = gate(W z + b)."""
    impl = _impl(x)
    zsum = impl.squeeze_fwd(x)
    z, s, a = impl.excite_fc_fwd(zsum, _hw(x), w, b, x.dtype, gate)
    return _scale_epilogue(impl, x, s, residual, sample_scale, out_act), z, s, a


effective_squeeze_excite = triton_op("fused_se::effective_squeeze_excite", mutates_args=())(_effective_squeeze_excite)


def _effective_squeeze_excite_backward(
    grad_y: Tensor,
    x: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w: Tensor,
    b: Optional[Tensor],
    gate: str,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
    need_dres: bool = False,
    sample_scale: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW, db, dresidual); a gradient that was not asked for comes back empty."""
    grad_y = _dense_grad(grad_y)
    impl = _impl(x)
    dssum, dres, d = _first_backward_pass(impl, grad_y, x, sample_scale, out, need_dres)
    need = (need_dx, need_dw, need_db and b is not None)
    dz, dw, db = impl.excite_fc_bwd(dssum, z, s, a, w, x.dtype, gate, need, _grad_dtypes(w, b))
    dx = _dx_pass(impl, grad_y, dres, x, s, dz, d, out) if need_dx else None
    return _grads_out(x, (dx, x), (dw, w), (db, b), (dres, x))


effective_squeeze_excite_backward = triton_op("fused_se::effective_squeeze_excite_backward", mutates_args=())(
    _effective_squeeze_excite_backward
)


def _setup_context_fc(ctx, inputs, output) -> None:
    x, w, b, gate, _residual, sample_scale, out_act = inputs
    y, z, s, a = output
    ctx.save_for_backward(x, w, b, z, s, a, *_save_epilogue(ctx, sample_scale, out_act, y))
    ctx.gate = gate


def _backward_fc(ctx, grad_y, grad_z, grad_s, grad_a):
    if grad_y is None:  # no gradient reached y (grads are not materialized)
        return no_grads(ctx)
    x, w, b, z, s, a, sample_scale, out = ctx.saved_tensors
    need, need_res = ctx.needs_input_grad[:3], _needs_grad(ctx, 4)
    *grads, dres = _backward_op(ctx, effective_squeeze_excite_backward)(
        grad_y, x, z, s, a, w, b, ctx.gate, *need, need_res, sample_scale, out
    )
    grads = [g if n else None for g, n in zip(grads, need)]
    return (*grads, None, _residual_grad(ctx, grad_y, dres, need_res), None, None)


effective_squeeze_excite.register_autograd(_backward_fc, setup_context=_setup_context_fc)


# --------------------------------------------------------------------------------------
# k-tap conv across channels
# --------------------------------------------------------------------------------------


def _efficient_channel_attention(
    x: Tensor,
    w: Tensor,
    b: Optional[Tensor],
    circular: bool,
    gate: str,
    residual: Optional[Tensor] = None,
    sample_scale: Optional[Tensor] = None,
    out_act: str = "identity",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, z, s, a) for s = gate(conv1d_k(z) + b) across channels."""
    impl = _impl(x)
    zsum = impl.squeeze_fwd(x)
    z, s, a = impl.excite_conv_fwd(zsum, _hw(x), w, b, circular, gate)
    return _scale_epilogue(impl, x, s, residual, sample_scale, out_act), z, s, a


efficient_channel_attention = triton_op("fused_se::efficient_channel_attention", mutates_args=())(
    _efficient_channel_attention
)


def _efficient_channel_attention_backward(
    grad_y: Tensor,
    x: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w: Tensor,
    b: Optional[Tensor],
    circular: bool,
    gate: str,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
    need_dres: bool = False,
    sample_scale: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dw, db, dresidual); a gradient that was not asked for comes back empty."""
    grad_y = _dense_grad(grad_y)
    impl = _impl(x)
    dssum, dres, d = _first_backward_pass(impl, grad_y, x, sample_scale, out, need_dres)
    need = (need_dx, need_dw, need_db and b is not None)
    dz, dw, db = impl.excite_conv_bwd(dssum, z, s, a, w, circular, gate, need, _grad_dtypes(w, b))
    if db is not None and b is not None:
        db = db.view(b.shape)
    dx = _dx_pass(impl, grad_y, dres, x, s, dz, d, out) if need_dx else None
    return _grads_out(x, (dx, x), (dw, w), (db, b), (dres, x))


efficient_channel_attention_backward = triton_op("fused_se::efficient_channel_attention_backward", mutates_args=())(
    _efficient_channel_attention_backward
)


def _setup_context_conv(ctx, inputs, output) -> None:
    x, w, b, circular, gate, _residual, sample_scale, out_act = inputs
    y, z, s, a = output
    ctx.save_for_backward(x, w, b, z, s, a, *_save_epilogue(ctx, sample_scale, out_act, y))
    ctx.circular, ctx.gate = circular, gate


def _backward_conv(ctx, grad_y, grad_z, grad_s, grad_a):
    if grad_y is None:  # no gradient reached y (grads are not materialized)
        return no_grads(ctx)
    x, w, b, z, s, a, sample_scale, out = ctx.saved_tensors
    need, need_res = ctx.needs_input_grad[:3], _needs_grad(ctx, 5)
    *grads, dres = _backward_op(ctx, efficient_channel_attention_backward)(
        grad_y, x, z, s, a, w, b, ctx.circular, ctx.gate, *need, need_res, sample_scale, out
    )
    grads = [g if n else None for g, n in zip(grads, need)]
    return (*grads, None, None, _residual_grad(ctx, grad_y, dres, need_res), None, None)


efficient_channel_attention.register_autograd(_backward_conv, setup_context=_setup_context_conv)


# --------------------------------------------------------------------------------------
# gradients of gradients
# --------------------------------------------------------------------------------------


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fused_se: double backward (a gradient of a gradient) through the fused SE block is not supported; "
        "set FUSED_SE_BACKEND=reference to run the plain PyTorch reference, which supports it"
    )


def _nothing_saved(ctx, inputs, output) -> None:
    pass


for _op in (squeeze_excite_backward, effective_squeeze_excite_backward, efficient_channel_attention_backward):
    _op.register_autograd(_no_double_backward, setup_context=_nothing_saved)


# --------------------------------------------------------------------------------------
# plain eager calls
# --------------------------------------------------------------------------------------
#
# In plain eager execution a call through the custom op pays for its dispatch and its generated
# autograd wrapper, tens of microseconds of Python a call, more than a small SE block's kernels
# take on a GPU. There the same bodies run as a plain autograd.Function instead; everywhere
# else (torch.compile, export, make_fx, a dispatch or function mode, functorch transforms,
# tensor subclasses) the custom op runs, as the graph needs it.


def plain_eager(args: tuple) -> bool:
    """Whether nothing traces, transforms or intercepts a call with these arguments: nothing that
    may trace a launch (kernels.common.tracing), no function mode, no jit trace, no subclass."""
    if torch.compiler.is_compiling():  # first: under dynamo the checks below would break the graph
        return False
    return not (
        kernels.common.tracing()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._is_tracing()  # torch.jit.is_tracing outside TorchScript, without its Python frame
        or torch.overrides.has_torch_function(args)  # non-tensors have none
    )


def _on_real_tensors(body):
    """body with wrap_triton off: its launches run the kernels directly, as a triton_op's body does
    on real tensors."""

    def run(*args):
        with set_wrap_triton_enabled(False):
            return body(*args)

    return run


def _launches_kernels(args: tuple) -> bool:
    """Whether a body called with these arguments launches the kernels (`_impl`, on real tensors)."""
    return _dispatch.kernels_run_for(args[0])


def _backward_op(ctx, op):
    """The backward op a backward calls: its body, where the forward ran as a plain autograd.Function
    and the backward runs plainly too (no graph of the gradient is built, no mode intercepts); else
    the op, whose own backward refuses double backward."""
    if getattr(ctx, "plain", False) and not torch.is_grad_enabled() and plain_eager(()):
        return _PLAIN_BACKWARDS[op]
    return op


def _plain_backward(body):
    """A backward op's body as plain calls run it: replayed per signature (kernels.replay)."""
    return replayed(_on_real_tensors(body), _launches_kernels, elsewhere=body)


_PLAIN_BACKWARDS = {
    op: _plain_backward(body)
    for op, body in (
        (squeeze_excite_backward, _squeeze_excite_backward),
        (effective_squeeze_excite_backward, _effective_squeeze_excite_backward),
        (efficient_channel_attention_backward, _efficient_channel_attention_backward),
    )
}


def _plain_function(name: str, body, setup_context, backward, cpu_y=None, cpu_kept=None) -> tuple:
    """An autograd.Function running a forward op's body, its setup_context and its backward, and
    y alone (for calls that need no gradient; cpu_y on the CPU twins where given). The body is
    replayed per signature (kernels.replay). On the CPU twins, cpu_kept where given runs instead
    of the body: the body's outputs and one more, which the backward takes as ctx.hidden (an
    intermediate with no autograd history: kept on ctx, it makes no reference cycle)."""
    # a replay binds nothing, and the CPU kernel (elsewhere) launches nothing: no wrapping to turn off
    body = replayed(_on_real_tensors(body), _launches_kernels, elsewhere=body)

    def forward(ctx, *args):
        kept = None
        if cpu_kept is not None and _impl(args[0]) is decomposed:
            *out, kept = cpu_kept(*args)
            out = tuple(out)
        else:
            out = body(*args)
        setup_context(ctx, args, out)
        if kept is not None:
            ctx.hidden = kept  # after setup_context, which leaves it None
        ctx.plain = True
        return out

    fn = type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    return fn, _y_alone(body, cpu_y)


def _y_alone(body, cpu_y=None):
    """y of a plain call that takes no gradient: the body's first output, or on the CPU twins
    cpu_y where given (the same bits, with nothing kept for a backward)."""
    if cpu_y is None:
        return lambda *args: body(*args)[0]

    def run(*args):
        return cpu_y(*args) if _impl(args[0]) is decomposed else body(*args)[0]

    return run


def _on_cpu_kernel(name: str):
    """The CPU kernel's two-FC function `name`, of (x, w1, b1, w2, b2, act, gate, d, residual,
    relu), as a call with the op's arguments (..., residual, sample_scale, out_act); looked up on
    each call, as the op's body looks up its own."""

    def run(x, w1, b1, w2, b2, act, gate, residual=None, sample_scale=None, out_act="identity"):
        d = _sample_factor(sample_scale, x)
        return getattr(decomposed, name)(x, w1, b1, w2, b2, act, gate, d, residual, out_act == "relu")

    return run


_PLAIN = {
    squeeze_excite: _plain_function(
        "SqueezeExcite",
        _squeeze_excite,
        _setup_context,
        _backward,
        _on_cpu_kernel("squeeze_excite_y"),
        _on_cpu_kernel("squeeze_excite_fwd"),
    ),
    effective_squeeze_excite: _plain_function(
        "EffectiveSqueezeExcite", _effective_squeeze_excite, _setup_context_fc, _backward_fc
    ),
    efficient_channel_attention: _plain_function(
        "EfficientChannelAttention", _efficient_channel_attention, _setup_context_conv, _backward_conv
    ),
}


def _any_requires_grad(args: tuple) -> bool:
    for a in args:
        if isinstance(a, Tensor) and a.requires_grad:
            return True
    return False


def run(op, *args) -> Tensor:
    """y of a forward op (squeeze_excite, effective_squeeze_excite, efficient_channel_attention,
    squeeze_excite_lengths), given every argument of its schema positionally, in order: as a plain
    autograd.Function in plain eager execution, else through the op itself. Both run the same body
    and the same backward, so they give the same bits."""
    if not plain_eager(args):
        return op(*args)[0]
    fn, y_alone = _PLAIN[op]
    if torch.is_grad_enabled() and _any_requires_grad(args):
        return fn.apply(*args)[0]
    return y_alone(*args)  # no gradient to take: no autograd node either
