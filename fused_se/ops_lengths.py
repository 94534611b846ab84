"""The two-FC SE op with a squeeze over each sample's valid positions (sequences with lengths).

    squeeze_excite_lengths     z[b] = mean of x[b, :, l] over l < lengths[b]; y = x * s everywhere

As fused_se.ops.squeeze_excite otherwise (the residual tail included), on the three-launch path
only: squeeze (masked, its partial sums times HW / lengths[b]), excite (unchanged: its divide by
HW ends the masked mean), scale (unchanged: every position is scaled, past the length too).
Backward: scale_bwd over every position (unchanged), excite_bwd (unchanged), and the dx pass
adding dz / lengths[b] at the valid positions only. docs/DESIGN.md tells why.

x comes in as (B, C, L, 1) (fused_se.functional views a (B, C, L) sequence so); lengths is (B,)
int32 or int64 with values in 1..L, checked by fused_se.functional.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch.library import triton_op

from . import ops


def _squeeze_excite_lengths(
    x: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    act: str,
    gate: str,
    lengths: Tensor,
    residual: Optional[Tensor] = None,
    sample_scale: Optional[Tensor] = None,
    out_act: str = "identity",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, z, s, a) for s = gate(W2 act(W1 z + b1) + b2), z the mean over each sample's valid positions."""
    impl = ops._impl(x)
    zsum = impl.squeeze_fwd(x, lengths.contiguous())
    z, s, a = impl.excite_fwd(zsum, ops._hw(x), w1, b1, w2, b2, x.dtype, act, gate)
    return ops._scale_epilogue(impl, x, s, residual, sample_scale, out_act), z, s, a


squeeze_excite_lengths = triton_op("fused_se::squeeze_excite_lengths", mutates_args=())(_squeeze_excite_lengths)


def _squeeze_excite_lengths_backward(
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
    lengths: Tensor,
    need_dx: bool,
    need_dw1: bool,
    need_db1: bool,
    need_dw2: bool,
    need_db2: bool,
    need_dres: bool = False,
    sample_scale: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW1, db1, dW2, db2, dresidual), as fused_se.ops.squeeze_excite_backward's."""
    grad_y = ops._dense_grad(grad_y)
    need_db1 = need_db1 and b1 is not None
    need_db2 = need_db2 and b2 is not None
    impl = ops._impl(x)
    dssum, dres, d = ops._first_backward_pass(impl, grad_y, x, sample_scale, out, need_dres)
    need = (need_dx, need_dw1, need_db1, need_dw2, need_db2)
    dz, dw1, db1, dw2, db2 = impl.excite_bwd(dssum, z, s, a, w1, b1, w2, x.dtype, need, act, gate)
    dx = None
    if need_dx:
        # the masked g where it is in memory (a ReLU tail whose shortcut gradient was asked for), else dy and out
        g, relu_out = (dres, None) if dres is not None else (grad_y, out)
        dx = impl.squeeze_scale_bwd(g, s, dz, x, d, relu_out, lengths.contiguous())
    return ops._grads_out(x, (dx, x), (dw1, w1), (db1, b1), (dw2, w2), (db2, b2), (dres, x))


squeeze_excite_lengths_backward = triton_op("fused_se::squeeze_excite_lengths_backward", mutates_args=())(
    _squeeze_excite_lengths_backward
)


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, act, gate, lengths, _residual, sample_scale, out_act = inputs
    y, z, s, a = output
    ctx.save_for_backward(x, w1, b1, w2, b2, lengths, z, s, a, *ops._save_epilogue(ctx, sample_scale, out_act, y))
    ctx.act, ctx.gate = act, gate


def _backward(ctx, grad_y, grad_z, grad_s, grad_a):
    if grad_y is None:  # no gradient reached y (grads are not materialized)
        return ops.no_grads(ctx)
    x, w1, b1, w2, b2, lengths, z, s, a, sample_scale, out = ctx.saved_tensors
    need, need_res = ctx.needs_input_grad[:5], ops._needs_grad(ctx, 8)
    *grads, dres = ops._backward_op(ctx, squeeze_excite_lengths_backward)(
        grad_y, x, z, s, a, w1, b1, w2, b2, ctx.act, ctx.gate, lengths, *need, need_res, sample_scale, out
    )
    grads = [g if n else None for g, n in zip(grads, need)]
    return (*grads, None, None, None, ops._residual_grad(ctx, grad_y, dres, need_res), None, None)


squeeze_excite_lengths.register_autograd(_backward, setup_context=_setup_context)
squeeze_excite_lengths_backward.register_autograd(ops._no_double_backward, setup_context=ops._nothing_saved)

# Plain eager calls (fused_se.ops.run) take the same body and backward as an autograd.Function.
ops._PLAIN[squeeze_excite_lengths] = ops._plain_function(
    "SqueezeExciteLengths", _squeeze_excite_lengths, _setup_context, _backward
)
ops._PLAIN_BACKWARDS[squeeze_excite_lengths_backward] = ops._plain_backward(_squeeze_excite_lengths_backward)
