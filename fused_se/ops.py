"""The differentiable SE op: torch.library triton ops with a handwritten backward.

Forward: squeeze, excite, scale (three launches, 3N bytes). Backward: scale_bwd, excite_bwd,
squeeze_scale_bwd (three launches, 4N bytes). Saved for backward: x, the weights, and z and s,
two (B, C) fp32 tensors.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op

from . import kernels


@triton_op("fused_se::squeeze_excite", mutates_args=())
def squeeze_excite(
    x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], act: str, gate: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, z, s): the output, and the squeeze and gate (B, C) in the accumulation dtype."""
    zsum = kernels.squeeze_fwd(x)
    z, s = kernels.excite_fwd(zsum, x.shape[2] * x.shape[3], w1, b1, w2, b2, x.dtype)
    y = kernels.scale_fwd(x, s)
    return y, z, s


@triton_op("fused_se::squeeze_excite_backward", mutates_args=())
def squeeze_excite_backward(
    grad_y: Tensor,
    x: Tensor,
    z: Tensor,
    s: Tensor,
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW1, db1, dW2, db2); a gradient that was not asked for comes back empty."""
    if kernels.bchw_strides(grad_y) is None:
        grad_y = grad_y.contiguous(memory_format=torch.contiguous_format)
    need_db1 = need_db1 and b1 is not None
    need_db2 = need_db2 and b2 is not None
    dssum = kernels.scale_bwd(grad_y, x)
    dz, dw1, db1, dw2, db2 = kernels.excite_bwd(
        dssum, z, s, w1, b1, w2, x.dtype, need=(need_dx, need_dw1, need_db1, need_dw2, need_db2)
    )
    dx = kernels.squeeze_scale_bwd(grad_y, s, dz, x) if need_dx else None

    def out(t: Optional[Tensor], like: Optional[Tensor]) -> Tensor:
        if t is None or like is None:
            return x.new_empty(0)
        return t.to(like.dtype)

    return out(dx, x), out(dw1, w1), out(db1, b1), out(dw2, w2), out(db2, b2)


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, act, gate = inputs
    _, z, s = output
    ctx.save_for_backward(x, w1, b1, w2, b2, z, s)
    ctx.act, ctx.gate = act, gate


def _backward(ctx, grad_y, grad_z, grad_s):
    x, w1, b1, w2, b2, z, s = ctx.saved_tensors
    need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
    grads = squeeze_excite_backward(
        grad_y, x, z, s, w1, b1, w2, b2, ctx.act, ctx.gate, need_x, need_w1, need_b1, need_w2, need_b2
    )
    dx, dw1, db1, dw2, db2 = (g if need else None for g, need in zip(grads, ctx.needs_input_grad[:5]))
    return dx, dw1, db1, dw2, db2, None, None


squeeze_excite.register_autograd(_backward, setup_context=_setup_context)
