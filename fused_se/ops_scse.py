"""The scSE op (concurrent spatial and channel squeeze-and-excitation): a torch.library triton op
with a handwritten backward.

    fused_se::scse(x, w1, b1, w2, b2, ws, bs, act, gate) -> (y, z, s, a)
        y = x * (s[b, c] + sigmoid(q[b, hw] + bs)),  s = gate(W2 act(W1 mean_hw x + b1) + b2),
        q[b, hw] = sum_c ws[c] x[b, c, hw]
    fused_se::scse_backward(grad_y, x, z, s, a, <args>, need_dx, need_dw1, need_db1, need_dw2,
                            need_db2, need_dws, need_dbs) -> (dx, dw1, db1, dw2, db2, dws, dbs)

Forward: scse_squeeze (x's sums over HW splits, one read of x), the MLP excitation
(excite_mlp.excite_fwd), scse_scale (reads x, sums q for its own tile, writes y): 3N. Backward:
scse_reduce_bwd (reads g and x: the sums of g * x per HW tile, s_s and dq), the excitation's
backward (excite_bwd), scse_dx_bwd (reads g and x, writes dx and the programs' shares of dws):
5N. Saved: x, the weights, and z, s, a (B, C) in the accumulation dtype; no (B, HW) tensor.
docs/DESIGN.md, "scSE".

The op declares its own schema rather than going through op_spec.declare, whose steps are the
three SE passes around an excitation; the dispatch is the same (op_spec.impl_for: CUDA and the
interpreter on real CPU tensors run the kernels, other CPU tensors and tracing the twins in torch
ops of fused_se.decomposed). x comes in as (B, C, H, W) (fused_se.functional views the other ranks).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch.library import triton_op

from . import decomposed
from .op_spec import REQUIRED, _dense_grad, _no_double_backward, _nothing_saved, hw, impl_for, typed_body
from .runtime.launch import empty

SCHEMA_ARGS = (
    ("w1", "Tensor"), ("b1", "Tensor?"), ("w2", "Tensor"), ("b2", "Tensor?"), ("ws", "Tensor"), ("bs", "Tensor?"),
    ("act", "str"), ("gate", "str"),
)  # fmt: skip
ARGS = ", ".join(f"{t} {n}" for n, t in SCHEMA_ARGS)
GRADS = ("x", "w1", "b1", "w2", "b2", "ws", "bs")


def _forward(x: Tensor, w1, b1, w2, b2, ws, bs, act: str, gate: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    impl = impl_for(x)
    zsum = impl.scse_squeeze_fwd(x)
    z, s, a = impl.excite_fwd(zsum, hw(x), w1, b1, w2, b2, x.dtype, act, gate)
    return impl.scse_scale_fwd(x, s, ws, bs), z, s, a


scse = triton_op("fused_se::scse", mutates_args=(), schema=f"(Tensor x, {ARGS}) -> (Tensor, Tensor, Tensor, Tensor)")(
    typed_body(_forward, [("x", "Tensor", REQUIRED), *((n, t, REQUIRED) for n, t in SCHEMA_ARGS)], 4)
)


def _backward(
    grad_y: Tensor, x: Tensor, z: Tensor, s: Tensor, a: Tensor, w1, b1, w2, b2, ws, bs, act, gate, *need
) -> tuple[Tensor, ...]:
    """Every gradient of GRADS in its input's dtype; an empty tensor where not asked for (or the
    input is None)."""
    inputs = (x, w1, b1, w2, b2, ws, bs)
    need = tuple(n and t is not None for n, t in zip(need, inputs, strict=True))
    need_dx, need_dw1, need_db1, need_dw2, need_db2, need_dws, need_dbs = need
    grad_y = _dense_grad(grad_y)
    impl = impl_for(x)
    dssum, ss, dq, dbs_shares = impl.scse_reduce_bwd(grad_y, x, ws, bs)
    excite_need = (need_dx, need_dw1, need_db1, need_dw2, need_db2)
    dz, dw1, db1, dw2, db2 = impl.excite_bwd(dssum, z, s, a, w1, b1, w2, x.dtype, excite_need, act, gate)
    dx, dws = impl.scse_dx_bwd(grad_y, x, s, dz, ss, dq, ws, need_dx, need_dws)
    dbs: Optional[Tensor] = dbs_shares.sum().reshape(bs.shape) if need_dbs else None
    return tuple(
        empty(0, dtype=x.dtype, device=x.device) if t is None else decomposed.as_dtype(t, like.dtype)
        for t, like in zip((dx, dw1, db1, dw2, db2, dws, dbs), inputs, strict=True)
    )


scse_backward = triton_op(
    "fused_se::scse_backward",
    mutates_args=(),
    schema=f"(Tensor grad_y, Tensor x, Tensor z, Tensor s, Tensor a, {ARGS}, "
    + ", ".join(f"bool need_d{g}" for g in GRADS)
    + ") -> ("
    + ", ".join(["Tensor"] * len(GRADS))
    + ")",
)(
    typed_body(
        _backward,
        [
            *((n, "Tensor", REQUIRED) for n in ("grad_y", "x", "z", "s", "a")),
            *((n, t, REQUIRED) for n, t in SCHEMA_ARGS),
            *((f"need_d{g}", "bool", REQUIRED) for g in GRADS),
        ],
        len(GRADS),
    )
)


def _setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, ws, bs, act, gate = inputs
    _, z, s, a = output
    ctx.set_materialize_grads(False)  # z, s and a are outputs only to be saved
    ctx.save_for_backward(x, z, s, a, w1, b1, w2, b2, ws, bs)
    ctx.act, ctx.gate = act, gate


def _autograd_backward(ctx, grad_y, *_ignored):
    if grad_y is None:  # no gradient reached y
        return (None,) * 9
    need = ctx.needs_input_grad[: len(GRADS)]
    grads = scse_backward(grad_y, *ctx.saved_tensors, ctx.act, ctx.gate, *need)
    return (*(g if n else None for g, n in zip(grads, need, strict=True)), None, None)


scse.register_autograd(_autograd_backward, setup_context=_setup_context)
scse_backward.register_autograd(_no_double_backward, setup_context=_nothing_saved)
