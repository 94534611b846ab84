"""Triton kernels of the fused SE block, their launchers and the planner (installed as fused_se.kernels).

The launcher contract (fused_se.decomposed implements the same functions in torch ops, with the
same arguments and outputs, for CPU tensors):

    passes.py       squeeze_fwd(x, lengths) -> zsum                     the three-launch path's
                    scale_fwd(x, s, d, residual, relu) -> y             memory passes, used by
                    scale_bwd(g, x, d, relu_out, store_g) -> (dssum, dr) every form
                    squeeze_scale_bwd(g, s, dz, like, d, relu_out, lengths) -> dx
    excite_mlp.py   excite_fwd(zsum, hw, w1, b1, w2, b2, x_dtype, act, gate) -> (z, s, a)
                    excite_bwd(dssum, z, s, a, w1, b1, w2, x_dtype, need, act, gate) -> (dz, dw1, db1, dw2, db2)
                        (the weight gradients in the weights' dtypes)
    excite_fc.py    excite_fc_fwd / excite_fc_bwd                       the FC form (ESE)
    excite_conv.py  excite_conv_fwd / excite_conv_bwd                   the conv form (ECA, CECA)
    one_launch.py   se_fwd_one_launch(x, w1, b1, w2, b2, act, gate, d, residual, relu, cfg) -> (y, z, s, a)
    spread.py       se_fwd_spread(..., cfg) -> (y, z, s, a)
    stream.py       se_fwd_stream(..., cfg) -> (y, z, s, a)
                    se_bwd_stream(g, x, z, s, a, w1, b1, w2, need, act, gate, d, relu_out, store_g, cfg,
                                  grad_dtypes) -> (dx, dr, dw1, db1, dw2, db2)
                        (the weight gradients in grad_dtypes: the parameters')
    scse.py         scse_squeeze_fwd(x) -> zsum                         scSE's passes around the
                    scse_scale_fwd(x, s, ws, bs) -> y                   MLP excitation
                    scse_reduce_bwd(g, x, ws, bs) -> (dssum, ss, dq, dbs)
                    scse_dx_bwd(g, x, s, dz, ss, dq, ws, need_dx, need_dws) -> (dx, dws)
                    scse_db_s(shares, bs) -> dbs
    plan.py         plan_forward / plan_backward -> Plan(path, config): which of the MLP form's paths runs
    heuristics.py   block sizes and the thresholds behind each choice

Everything is (B, C, HW) through strides; z, s, a and the gradients' partials are (B, C) in the
accumulation dtype (acc_dtype). docs/DESIGN.md holds the math, the traffic and the ordering rules.
"""

import numpy
import triton

from .._requirements import check_interpreter_numpy
from ..runtime.launch import INTERPRETED, record_launches
from . import heuristics, plan
from .common import ACT_CODES, GATE_CODES, acc_dtype, bchw_strides
from .excite_conv import excite_conv_bwd, excite_conv_fwd
from .excite_fc import excite_fc_bwd, excite_fc_fwd
from .excite_mlp import excite_bwd, excite_fwd
from .one_launch import se_fwd_one_launch
from .passes import scale_bwd, scale_fwd, squeeze_fwd, squeeze_scale_bwd
from .plan import PATHS, Plan, force_paths, plan_backward, plan_forward
from .scse import scse_db_s, scse_dx_bwd, scse_reduce_bwd, scse_scale_fwd, scse_squeeze_fwd
from .spread import se_fwd_spread
from .stream import se_bwd_stream, se_fwd_stream

check_interpreter_numpy(triton.__version__, numpy.__version__, INTERPRETED)

# The MLP form's forward launchers of the paths other than three_launch, by plan path.
FORWARD_PATHS = {"one_launch": se_fwd_one_launch, "spread": se_fwd_spread, "stream": se_fwd_stream}

__all__ = [
    "ACT_CODES",
    "FORWARD_PATHS",
    "GATE_CODES",
    "INTERPRETED",
    "PATHS",
    "Plan",
    "acc_dtype",
    "bchw_strides",
    "excite_bwd",
    "excite_conv_bwd",
    "excite_conv_fwd",
    "excite_fc_bwd",
    "excite_fc_fwd",
    "excite_fwd",
    "force_paths",
    "heuristics",
    "plan",
    "plan_backward",
    "plan_forward",
    "record_launches",
    "scale_bwd",
    "scale_fwd",
    "scse_db_s",
    "scse_dx_bwd",
    "scse_reduce_bwd",
    "scse_scale_fwd",
    "scse_squeeze_fwd",
    "se_bwd_stream",
    "se_fwd_one_launch",
    "se_fwd_spread",
    "se_fwd_stream",
    "squeeze_fwd",
    "squeeze_scale_bwd",
]
