"""Triton kernels of the fused SE block and their launch heuristics (installed as fused_se.kernels)."""

from . import heuristics
from .se import (
    ACT_CODES,
    GATE_CODES,
    acc_dtype,
    bchw_strides,
    excite_bwd,
    excite_fwd,
    one_launch_forward,
    record_launches,
    scale_bwd,
    scale_fwd,
    se_bwd_stream,
    se_fwd_one_launch,
    se_fwd_stream,
    squeeze_fwd,
    squeeze_scale_bwd,
    stream_backward,
    stream_forward,
)
from .se_variants import excite_conv_bwd, excite_conv_fwd, excite_fc_bwd, excite_fc_fwd

__all__ = [
    "ACT_CODES",
    "GATE_CODES",
    "acc_dtype",
    "bchw_strides",
    "excite_bwd",
    "excite_conv_bwd",
    "excite_conv_fwd",
    "excite_fc_bwd",
    "excite_fc_fwd",
    "excite_fwd",
    "heuristics",
    "one_launch_forward",
    "record_launches",
    "scale_bwd",
    "scale_fwd",
    "se_bwd_stream",
    "se_fwd_one_launch",
    "se_fwd_stream",
    "squeeze_fwd",
    "squeeze_scale_bwd",
    "stream_backward",
    "stream_forward",
]
