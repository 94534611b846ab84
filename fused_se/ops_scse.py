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

Declared through op_spec.declare with whole steps (its passes are its own, not SE's three around
an excitation): the same schema tail as the SE ops (residual, sample_scale, out_act, which scSE
takes at their defaults only: fused_se.functional refuses the rest), the same dispatch
(op_spec.impl_for: CUDA and the interpreter on real CPU tensors run the kernels, other CPU tensors
and tracing the twins in torch ops of fused_se.decomposed) and the same plain route in eager
execution (an autograd.Function whose bodies replay). ws is (C,) or the sSE conv's (1, C, 1, 1)
weight as it is. x comes in as (B, C, H, W) (fused_se.functional views the other ranks).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .op_spec import OpSpec, declare, hw, impl_for

SCHEMA_ARGS = (
    ("w1", "Tensor"), ("b1", "Tensor?"), ("w2", "Tensor"), ("b2", "Tensor?"), ("ws", "Tensor"), ("bs", "Tensor?"),
    ("act", "str"), ("gate", "str"),
)  # fmt: skip


def _forward(x: Tensor, d, residual, relu, w1, b1, w2, b2, ws, bs, act: str, gate: str) -> tuple[Tensor, ...]:
    """(y, z, s, a); the tail (d, residual, relu) is at its defaults (the functional form refuses others)."""
    impl = impl_for(x)
    zsum = impl.scse_squeeze_fwd(x)
    z, s, a = impl.excite_fwd(zsum, hw(x), w1, b1, w2, b2, x.dtype, act, gate)
    return impl.scse_scale_fwd(x, s, ws, bs), z, s, a


def _backward(
    grad_y: Tensor,
    x: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    need,
    d,
    out,
    store_g,
    h,
    w1,
    b1,
    w2,
    b2,
    ws,
    bs,
    act,
    gate,
) -> tuple[Optional[Tensor], ...]:
    """(dx, dw1, db1, dw2, db2, dws, dbs, the residual's: None), None where `need` (x's and the
    six parameters') says so."""
    need_dx, need_dw1, need_db1, need_dw2, need_db2, need_dws, need_dbs = need
    impl = impl_for(x)
    dssum, ss, dq, dbs_shares = impl.scse_reduce_bwd(grad_y, x, ws, bs)
    excite_need = (need_dx, need_dw1, need_db1, need_dw2, need_db2)
    dz, dw1, db1, dw2, db2 = impl.excite_bwd(dssum, z, s, a, w1, b1, w2, x.dtype, excite_need, act, gate)
    dx, dws = impl.scse_dx_bwd(grad_y, x, s, dz, ss, dq, ws, need_dx, need_dws)
    dbs = impl.scse_db_s(dbs_shares, bs) if need_dbs else None
    return dx, dw1, db1, dw2, db2, dws, dbs, None


SCSE = declare(
    OpSpec("scse", SCHEMA_ARGS, ("w1", "b1", "w2", "b2", "ws", "bs"), whole_fwd=_forward, whole_bwd=_backward)
)
scse, scse_backward = SCSE.op, SCSE.backward_op
