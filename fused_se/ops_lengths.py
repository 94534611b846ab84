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

from .op_spec import OpSpec, declare
from .ops import TWO_FC_ARGS, two_fc_excite_bwd, two_fc_excite_fwd

TWO_FC_LENGTHS = declare(
    OpSpec(
        "squeeze_excite_lengths",
        (*TWO_FC_ARGS, ("lengths", "Tensor")),
        ("w1", "b1", "w2", "b2"),
        two_fc_excite_fwd,
        two_fc_excite_bwd,
        lengths="lengths",
    )
)
squeeze_excite_lengths, squeeze_excite_lengths_backward = TWO_FC_LENGTHS.op, TWO_FC_LENGTHS.backward_op
