"""The differentiable SE ops: torch.library triton ops with handwritten backwards.

Three excitation forms share the squeeze and scale passes:
    squeeze_excite                 two FCs (W1, b1, act, W2, b2, gate): the classic SE and its kin
    effective_squeeze_excite       one C x C FC (W, b, gate): effective SE (ESE)
    efficient_channel_attention    a k-tap conv across channels (w, b, padding, gate): ECA, CECA

Forward: squeeze, excite, scale (three launches, 3N bytes). Backward: scale_bwd, excite_bwd,
squeeze_scale_bwd (three launches, 4N bytes). The two-FC form has three more paths, chosen by
kernels.heuristics: where x is past L2, a streamed forward and backward (one persistent launch
each, whose second pass over a sample re-reads it from L2: 2N and 3N bytes); for small
batches, a one-launch forward (a program per sample, for small samples and weights) or a
spread one (one persistent launch over every SM, the excitation spread over the programs).

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

from typing import Callable, Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

from . import _dispatch, decomposed, kernels


def _impl(x: Tensor):
    """The launchers for x: the Triton kernels, or their twins in torch ops (fused_se.decomposed).

    CUDA tensors take the kernels. CPU tensors take the twins, except with the Triton
    interpreter on, outside tracing: the interpreter runs on real tensors only, so torch.compile
    and torch.export (which run this body on fake tensors) trace the twins on the CPU.
    The device is a static fact under tracing, so the traced branch is the one that runs.
    """
    if x.device.type == "cuda":
        return kernels
    if x.device.type == "cpu" and _dispatch.interpreter_enabled() and not is_fake(x):
        return kernels
    return decomposed


OUT_ACTS = ("identity", "relu")


def _sample_factor(sample_scale: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    return None if sample_scale is None else sample_scale.to(kernels.acc_dtype(x.dtype)).contiguous()


def _scale_epilogue(
    impl, x: Tensor, s: Tensor, residual: Optional[Tensor], sample_scale: Optional[Tensor], out_act: str
) -> Tensor:
    return impl.scale_fwd(x, s, _sample_factor(sample_scale, x), residual, out_act == "relu")


def _backward_passes(
    grad_y: Tensor,
    x: Tensor,
    s: Tensor,
    sample_scale: Optional[Tensor],
    out: Optional[Tensor],
    need_dx: bool,
    need_dres: bool,
    excite_bwd: Callable[[Tensor, bool], Optional[Tensor]],
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The two passes over x around an excitation's backward: (dx, the residual's gradient
    through the ReLU epilogue), None where not needed.

    out: the forward's output where a ReLU ended it (None otherwise); excite_bwd(dssum, need_dz)
    runs the excitation's backward and returns dz.
    """
    impl = _impl(x)
    d = _sample_factor(sample_scale, x)
    store_g = need_dres and out is not None
    dssum, g = impl.scale_bwd(grad_y, x, d, out, store_g)
    dz = excite_bwd(dssum, need_dx)
    if not need_dx:
        return None, g
    if g is not None:  # the masked gradient is already in memory: read it instead of dy and out
        return impl.squeeze_scale_bwd(g, s, dz, x, d), g
    return impl.squeeze_scale_bwd(grad_y, s, dz, x, d, out), None


def _stream_backward(grad_y: Tensor, x: Tensor, w1: Tensor, out: Optional[Tensor], need_dx: bool, store_g: bool):
    """The streamed backward's configuration where it applies: kernels, dx asked for, x past L2."""
    if not need_dx or _impl(x) is not kernels:
        return None
    return kernels.stream_backward(grad_y, x, w1.shape[0], out, store_g)


def _dense_grad(grad_y: Tensor) -> Tensor:
    if kernels.bchw_strides(grad_y) is None:
        return grad_y.contiguous(memory_format=torch.contiguous_format)
    return grad_y


def _grad_out(t: Optional[Tensor], like: Optional[Tensor], x: Tensor) -> Tensor:
    """A gradient in its input's dtype, or an empty tensor where none was asked for."""
    if t is None or like is None:
        return x.new_empty(0)
    return t.to(like.dtype)


def _save_epilogue(ctx, sample_scale: Optional[Tensor], out_act: str, y: Tensor):
    """The epilogue's part of what the backward needs: d, and the output where a ReLU ended it."""
    ctx.relu = out_act == "relu"
    return sample_scale, (y if ctx.relu else None)


def _needs_grad(ctx, i: int) -> bool:
    """Whether input i needs a gradient; trailing inputs left at their defaults are not passed
    through autograd, so needs_input_grad may be shorter than the schema."""
    return i < len(ctx.needs_input_grad) and ctx.needs_input_grad[i]


def _residual_grad(ctx, grad_y: Tensor, dres: Tensor, need_res: bool) -> Optional[Tensor]:
    if not need_res:
        return None
    return dres if ctx.relu else grad_y  # without a ReLU the residual's gradient is dy itself


# --------------------------------------------------------------------------------------
# two FCs
# --------------------------------------------------------------------------------------


@triton_op("fused_se::squeeze_excite", mutates_args=())
def squeeze_excite(
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
    impl = _impl(x)
    if impl is kernels:
        d, relu = _sample_factor(sample_scale, x), out_act == "relu"
        stream = kernels.stream_forward(x, w1.shape[0])
        if stream is not None:
            # x past L2: one persistent launch, whose scale re-reads each sample from L2
            return kernels.se_fwd_stream(x, w1, b1, w2, b2, act, gate, d, residual, relu, stream)
        if kernels.one_launch_forward(x, w1.shape[0]):
            # small batches of small samples: one launch, one program per sample
            return kernels.se_fwd_one_launch(x, w1, b1, w2, b2, act, gate, d, residual, relu)
        spread = kernels.spread_forward(x, w1.shape[0])
        if spread is not None:
            # other small batches: one persistent launch over every SM, the excitation's too
            return kernels.se_fwd_spread(x, w1, b1, w2, b2, act, gate, d, residual, relu, spread)
    zsum = impl.squeeze_fwd(x)
    z, s, a = impl.excite_fwd(zsum, x.shape[2] * x.shape[3], w1, b1, w2, b2, x.dtype, act, gate)
    return _scale_epilogue(impl, x, s, residual, sample_scale, out_act), z, s, a


@triton_op("fused_se::squeeze_excite_backward", mutates_args=())
def squeeze_excite_backward(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW1, db1, dW2, db2, dresidual); a gradient that was not asked for comes back empty,
    and so does dresidual without a ReLU epilogue (out None: it is dy itself)."""
    grad_y = _dense_grad(grad_y)
    need_db1 = need_db1 and b1 is not None
    need_db2 = need_db2 and b2 is not None
    store_g = need_dres and out is not None  # the ReLU tail's shortcut gradient is written out
    stream = _stream_backward(grad_y, x, w1, out, need_dx, store_g)
    if stream is not None:
        # x past L2: one persistent launch, whose dx pass re-reads each sample's g from L2
        dx, dres, dw1, db1, dw2, db2 = kernels.se_bwd_stream(
            grad_y, x, z, s, a, w1, b1, w2, (need_dw1, need_db1, need_dw2, need_db2), act, gate,
            _sample_factor(sample_scale, x), out, store_g, stream,
        )  # fmt: skip
        return tuple(
            _grad_out(t, like, x) for t, like in ((dx, x), (dw1, w1), (db1, b1), (dw2, w2), (db2, b2), (dres, x))
        )
    wgrads: list[Optional[Tensor]] = []

    def excite_bwd(dssum: Tensor, need_dz: bool) -> Optional[Tensor]:
        need = (need_dz, need_dw1, need_db1, need_dw2, need_db2)
        dz, *rest = _impl(x).excite_bwd(dssum, z, s, a, w1, b1, w2, x.dtype, need, act, gate)
        wgrads.extend(rest)
        return dz

    dx, dres = _backward_passes(grad_y, x, s, sample_scale, out, need_dx, need_dres, excite_bwd)
    dw1, db1, dw2, db2 = wgrads
    return (
        _grad_out(dx, x, x),
        _grad_out(dw1, w1, x),
        _grad_out(db1, b1, x),
        _grad_out(dw2, w2, x),
        _grad_out(db2, b2, x),
        _grad_out(dres, x, x),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, act, gate, _residual, sample_scale, out_act = inputs
    y, z, s, a = output
    ctx.save_for_backward(x, w1, b1, w2, b2, z, s, a, *_save_epilogue(ctx, sample_scale, out_act, y))
    ctx.act, ctx.gate = act, gate


def _backward(ctx, grad_y, grad_z, grad_s, grad_a):
    x, w1, b1, w2, b2, z, s, a, sample_scale, out = ctx.saved_tensors
    need, need_res = ctx.needs_input_grad[:5], _needs_grad(ctx, 7)
    *grads, dres = squeeze_excite_backward(
        grad_y, x, z, s, a, w1, b1, w2, b2, ctx.act, ctx.gate, *need, need_res, sample_scale, out
    )
    grads = [g if n else None for g, n in zip(grads, need)]
    return (*grads, None, None, _residual_grad(ctx, grad_y, dres, need_res), None, None)


squeeze_excite.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# one C x C FC
# --------------------------------------------------------------------------------------


@triton_op("fused_se::effective_squeeze_excite", mutates_args=())
def effective_squeeze_excite(
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
    z, s, a = impl.excite_fc_fwd(zsum, x.shape[2] * x.shape[3], w, b, x.dtype, gate)
    return _scale_epilogue(impl, x, s, residual, sample_scale, out_act), z, s, a


@triton_op("fused_se::effective_squeeze_excite_backward", mutates_args=())
def effective_squeeze_excite_backward(
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
    need_db = need_db and b is not None
    wgrads: list[Optional[Tensor]] = []

    def excite_bwd(dssum: Tensor, need_dz: bool) -> Optional[Tensor]:
        dz, *rest = _impl(x).excite_fc_bwd(dssum, z, s, a, w, x.dtype, gate, (need_dz, need_dw, need_db))
        wgrads.extend(rest)
        return dz

    dx, dres = _backward_passes(grad_y, x, s, sample_scale, out, need_dx, need_dres, excite_bwd)
    dw, db = wgrads
    return _grad_out(dx, x, x), _grad_out(dw, w, x), _grad_out(db, b, x), _grad_out(dres, x, x)


def _setup_context_fc(ctx, inputs, output) -> None:
    x, w, b, gate, _residual, sample_scale, out_act = inputs
    y, z, s, a = output
    ctx.save_for_backward(x, w, b, z, s, a, *_save_epilogue(ctx, sample_scale, out_act, y))
    ctx.gate = gate


def _backward_fc(ctx, grad_y, grad_z, grad_s, grad_a):
    x, w, b, z, s, a, sample_scale, out = ctx.saved_tensors
    need, need_res = ctx.needs_input_grad[:3], _needs_grad(ctx, 4)
    *grads, dres = effective_squeeze_excite_backward(
        grad_y, x, z, s, a, w, b, ctx.gate, *need, need_res, sample_scale, out
    )
    grads = [g if n else None for g, n in zip(grads, need)]
    return (*grads, None, _residual_grad(ctx, grad_y, dres, need_res), None, None)


effective_squeeze_excite.register_autograd(_backward_fc, setup_context=_setup_context_fc)


# --------------------------------------------------------------------------------------
# k-tap conv across channels
# --------------------------------------------------------------------------------------


@triton_op("fused_se::efficient_channel_attention", mutates_args=())
def efficient_channel_attention(
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
    z, s, a = impl.excite_conv_fwd(zsum, x.shape[2] * x.shape[3], w, b, circular, gate)
    return _scale_epilogue(impl, x, s, residual, sample_scale, out_act), z, s, a


@triton_op("fused_se::efficient_channel_attention_backward", mutates_args=())
def efficient_channel_attention_backward(
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
    need_db = need_db and b is not None
    wgrads: list[Optional[Tensor]] = []

    def excite_bwd(dssum: Tensor, need_dz: bool) -> Optional[Tensor]:
        dz, *rest = _impl(x).excite_conv_bwd(dssum, z, s, a, w, circular, gate, (need_dz, need_dw, need_db))
        wgrads.extend(rest)
        return dz

    dx, dres = _backward_passes(grad_y, x, s, sample_scale, out, need_dx, need_dres, excite_bwd)
    dw, db = wgrads
    if db is not None and b is not None:
        db = db.view(b.shape)
    return _grad_out(dx, x, x), _grad_out(dw, w, x), _grad_out(db, b, x), _grad_out(dres, x, x)


def _setup_context_conv(ctx, inputs, output) -> None:
    x, w, b, circular, gate, _residual, sample_scale, out_act = inputs
    y, z, s, a = output
    ctx.save_for_backward(x, w, b, z, s, a, *_save_epilogue(ctx, sample_scale, out_act, y))
    ctx.circular, ctx.gate = circular, gate


def _backward_conv(ctx, grad_y, grad_z, grad_s, grad_a):
    x, w, b, z, s, a, sample_scale, out = ctx.saved_tensors
    need, need_res = ctx.needs_input_grad[:3], _needs_grad(ctx, 5)
    *grads, dres = efficient_channel_attention_backward(
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
