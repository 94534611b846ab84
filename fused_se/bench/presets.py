"""What the bench times: the providers' names, the modes, and the traffic each mode must move. The
shapes, presets, layouts and dtypes are fused_se.workloads' (re-exported here), which fused_se.perf
shares."""

from __future__ import annotations

from typing import Optional

from ..workloads import (
    DTYPES,
    ECAPA_TDNN,
    EFFICIENTNET_B0,
    FUSED_TRAFFIC,
    FUSED_TRAFFIC_SCSE,
    FUSED_TRAFFIC_TAIL,
    LAYOUTS,
    MIN_TRAFFIC,
    MIN_TRAFFIC_TAIL,
    MOBILENETV3,
    MODES,
    PRESETS,
    SERESNET50,
    SERESNET50_3D,
    SHAPE_SYNTAX,
    SEShape,
    parse_shape,
)

__all__ = [
    "COMPILE_MODES", "CUDA_GRAPHED", "DTYPES", "ECAPA_TDNN", "EFFICIENTNET_B0", "FUSED", "FUSED_TRAFFIC",
    "FUSED_TRAFFIC_TAIL", "LAYOUTS", "MIN_TRAFFIC", "MIN_TRAFFIC_TAIL", "MOBILENETV3", "MODES", "PRESETS",
    "PROVIDERS", "SERESNET50", "SERESNET50_3D", "SHAPE_SYNTAX", "SEShape", "parse_shape", "traffic_bytes",
]  # fmt: skip

PROVIDERS = (
    "eager", "eager-conv", "compile", "compile-max-autotune", "compile-reduce-overhead", "fused", "fused-3pass",
    "eager-cudagraph", "fused-cudagraph",
)  # fmt: skip
FUSED = ("fused", "fused-3pass", "fused-cudagraph")
# Replays of one captured CUDA graph of the block's inference: the host's cost is one graph launch
# whatever the block launches inside (fwd on a GPU only).
CUDA_GRAPHED = {"eager-cudagraph": "eager", "fused-cudagraph": "fused"}
COMPILE_MODES = {
    "compile": None,
    "compile-max-autotune": "max-autotune-no-cudagraphs",
    "compile-reduce-overhead": "reduce-overhead",
}


def traffic_bytes(
    mode: str, x_bytes: int, provider: str, tail: bool = False, scse: bool = False
) -> tuple[int, Optional[int]]:
    """(minimal traffic, the provider's own traffic or None where it is not known) in bytes; scse:
    the block has scSE's spatial gate too."""
    minimal, fused = (MIN_TRAFFIC_TAIL, FUSED_TRAFFIC_TAIL) if tail else (MIN_TRAFFIC, FUSED_TRAFFIC)
    if scse:
        fused = FUSED_TRAFFIC_SCSE
    own = fused[mode] * x_bytes if provider in FUSED else None
    return minimal[mode] * x_bytes, own
