"""The differentiable SE ops: torch.library triton ops with handwritten backwards, each declared
once (fused_se/op_spec.py makes its ops, autograd and plain route).

Three excitation forms share the squeeze and scale passes:
    squeeze_excite                 two FCs (W1, b1, act, W2, b2, gate): the classic SE and its kin
    effective_squeeze_excite       one C x C FC (W, b, gate): effective SE (ESE)
    efficient_channel_attention    a k-tap conv across channels (w, b, padding, gate): ECA, CECA
(and squeeze_excite_lengths, in ops_lengths.py). Forward: squeeze, excite, scale. Backward:
scale_bwd, excite_bwd, squeeze_scale_bwd. The MLP form has more paths (one-launch, spread,
streamed), chosen by kernels.plan; docs/DESIGN.md tells each path's traffic.

Each forward op returns (y, z, s, a): the output, and the squeeze, the gate and the gate's input,
(B, C) in the accumulation dtype (a is empty unless the gate's backward needs it). Saved for
backward: x, the weights, z, s and a.

Every forward op also takes a residual block's tail, fused into the scale pass:
    y = out_act(x * s[b, c] * d[b] + residual)      out_act: "identity" | "relu"
with d (sample_scale, (B,) or None) drop-path's per-sample factor and residual (x's shape, or
None) the shortcut: 4N bytes forward instead of about 8N unfused. Its backward stays in the two
passes: scale_bwd masks g by the ReLU's output and writes the residual's gradient, the dx pass
reads that gradient. With a ReLU, the output is saved as well (its mask).
"""

from __future__ import annotations

from . import decomposed, kernels
from .op_spec import (  # noqa: F401  (run, run_if_known: the entry points)
    OUT_ACTS,
    OpSpec,
    declare,
    grad_dtypes,
    hw,
    impl_for,
    run,
    run_if_known,
)
from .runtime.trace import plain_eager  # noqa: F401  (asked by tests and tools)

TWO_FC_ARGS = (
    ("w1", "Tensor"),
    ("b1", "Tensor?"),
    ("w2", "Tensor"),
    ("b2", "Tensor?"),
    ("act", "str"),
    ("gate", "str"),
)


def two_fc_excite_fwd(impl, zsum, x, w1, b1, w2, b2, act, gate, *lengths):
    """s = gate(W2 act(W1 z + b1) + b2). lengths: the lengths op's last argument, which only the
    squeeze and the dx pass read."""
    return impl.excite_fwd(zsum, hw(x), w1, b1, w2, b2, x.dtype, act, gate)


def two_fc_excite_bwd(impl, dssum, z, s, a, x, need, w1, b1, w2, b2, act, gate, *lengths):
    return impl.excite_bwd(dssum, z, s, a, w1, b1, w2, x.dtype, need, act, gate)


def _two_fc_whole_fwd(x, d, residual, relu, w1, b1, w2, b2, act, gate):
    if impl_for(x) is decomposed:  # the CPU kernel: the three steps in one call, in the fewest ops
        return decomposed.squeeze_excite_fwd(x, w1, b1, w2, b2, act, gate, d, residual, relu)[:4]
    plan = kernels.plan_forward(x, w1.shape[0])
    if plan.path == "three_launch":
        return None
    return kernels.FORWARD_PATHS[plan.path](x, w1, b1, w2, b2, act, gate, d, residual, relu, plan.config)


def _two_fc_whole_bwd(grad_y, x, z, s, a, need, d, out, store_g, h, w1, b1, w2, b2, act, gate):
    """h: the hidden layer's pre-activation where the CPU kernel's forward kept it (plain calls),
    else None: the backward recomputes it (the kernels always do, on chip)."""
    if impl_for(x) is decomposed:  # the CPU kernel: the three steps in one call, in the fewest ops
        return decomposed.squeeze_excite_bwd(grad_y, x, z, s, a, w1, b1, w2, act, gate, need, d, out, store_g, h)
    plan = kernels.plan_backward(grad_y, x, w1.shape[0], out, store_g, need[0])
    if plan.path != "stream":
        return None
    # x past L2: one persistent launch, whose dx pass re-reads each sample's g from L2
    dx, dres, *dweights = kernels.se_bwd_stream(
        grad_y, x, z, s, a, w1, b1, w2, need[1:], act, gate, d, out, store_g, plan.config,
        grad_dtypes(w1, b1) + grad_dtypes(w2, b2),
    )  # fmt: skip
    return dx, *dweights, dres


TWO_FC = declare(
    OpSpec(
        "squeeze_excite",
        TWO_FC_ARGS,
        ("w1", "b1", "w2", "b2"),
        two_fc_excite_fwd,
        two_fc_excite_bwd,
        whole_fwd=_two_fc_whole_fwd,
        whole_bwd=_two_fc_whole_bwd,
        # looked up on each call, as the body looks up its own
        cpu_y=lambda x, d, residual, relu, *args: decomposed.squeeze_excite_y(x, *args, d, residual, relu),
        cpu_kept=lambda x, d, residual, relu, *args: decomposed.squeeze_excite_fwd(x, *args, d, residual, relu),
    )
)
squeeze_excite, squeeze_excite_backward = TWO_FC.op, TWO_FC.backward_op


def _fc_excite_bwd(impl, dssum, z, s, a, x, need, w, b, gate):
    return impl.excite_fc_bwd(dssum, z, s, a, w, x.dtype, gate, need, grad_dtypes(w, b))


FC = declare(
    OpSpec(
        "effective_squeeze_excite",
        (("w", "Tensor"), ("b", "Tensor?"), ("gate", "str")),
        ("w", "b"),
        lambda impl, zsum, x, w, b, gate: impl.excite_fc_fwd(zsum, hw(x), w, b, x.dtype, gate),  # gate(W z + b)
        _fc_excite_bwd,
    )
)
effective_squeeze_excite, effective_squeeze_excite_backward = FC.op, FC.backward_op


def _conv_excite_bwd(impl, dssum, z, s, a, x, need, w, b, circular, gate):
    dz, dw, db = impl.excite_conv_bwd(dssum, z, s, a, w, circular, gate, need, grad_dtypes(w, b))
    if db is not None and b is not None and db.shape != b.shape:  # (a view where it would be one: not replayed)
        db = db.view(b.shape)
    return dz, dw, db


CONV = declare(
    OpSpec(
        "efficient_channel_attention",
        (("w", "Tensor"), ("b", "Tensor?"), ("circular", "bool"), ("gate", "str")),
        ("w", "b"),
        # gate(conv1d_k(z) + b) across channels
        lambda impl, zsum, x, w, b, circular, gate: impl.excite_conv_fwd(zsum, hw(x), w, b, circular, gate),
        _conv_excite_bwd,
    )
)
efficient_channel_attention, efficient_channel_attention_backward = CONV.op, CONV.backward_op
