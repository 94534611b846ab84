"""Triton kernels of the fused SE block and their launch heuristics (installed as fused_se.kernels)."""

from . import heuristics
from .se import (
    acc_dtype,
    bchw_strides,
    excite_bwd,
    excite_fwd,
    record_launches,
    scale_bwd,
    scale_fwd,
    squeeze_fwd,
    squeeze_scale_bwd,
)

__all__ = [
    "acc_dtype",
    "bchw_strides",
    "excite_bwd",
    "excite_fwd",
    "heuristics",
    "record_launches",
    "scale_bwd",
    "scale_fwd",
    "squeeze_fwd",
    "squeeze_scale_bwd",
]
