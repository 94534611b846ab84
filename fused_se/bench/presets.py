"""What the bench times: the SE placements of a few networks, the modes, the providers' names, and
the traffic each mode must move."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SEShape:
    """Where an SE block sits in a network: its input map and its excitation."""

    c: int
    h: int
    w: int
    hidden: int
    act: str = "relu"
    gate: str = "sigmoid"

    def label(self) -> str:
        return f"{self.c}x{self.h}x{self.w}"


# SE-ResNet-50: the SE of each stage's bottlenecks (r = 16, ReLU, sigmoid) at 224x224.
SERESNET50 = [SEShape(256, 56, 56, 16), SEShape(512, 28, 28, 32), SEShape(1024, 14, 14, 64), SEShape(2048, 7, 7, 128)]
# EfficientNet-B0 at 224x224: the distinct SE placements (SiLU inside, sigmoid gate).
EFFICIENTNET_B0 = [
    SEShape(c, h, h, r, "silu", "sigmoid")
    for c, h, r in [
        (32, 112, 8),
        (96, 56, 4),
        (144, 56, 6),
        (144, 28, 6),
        (240, 28, 10),
        (240, 14, 10),
        (480, 14, 20),
        (672, 14, 28),
        (672, 7, 28),
        (1152, 7, 48),
    ]
]
# MobileNetV3-Large at 224x224 (ReLU inside, hard sigmoid gate).
MOBILENETV3 = [
    SEShape(c, h, h, r, "relu", "hard_sigmoid")
    for c, h, r in [(72, 28, 24), (120, 28, 32), (480, 14, 120), (672, 14, 168), (672, 7, 168), (960, 7, 240)]
]
PRESETS = {"seresnet50": SERESNET50, "efficientnet_b0": EFFICIENTNET_B0, "mobilenetv3": MOBILENETV3}

MODES = ("fwd", "bwd", "fwd+bwd")
# Bytes moved, in multiples of N = bytes of x: the least any implementation must move, and the
# fused kernels' own budget (docs/DESIGN.md): read x, write y; read dy and x, write dx.
MIN_TRAFFIC = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}
FUSED_TRAFFIC = {"fwd": 3, "bwd": 4, "fwd+bwd": 7}
# With --tail, out = relu(se(x) + shortcut): read x and the shortcut, write out; read dy, out
# (the ReLU's mask) and x, write dx and the shortcut's gradient. The fused tail adds the
# shortcut to the scale pass (4N) and, backward, writes the masked dy that the dx pass reads
# (4N + 2N).
MIN_TRAFFIC_TAIL = {"fwd": 3, "bwd": 5, "fwd+bwd": 8}
FUSED_TRAFFIC_TAIL = {"fwd": 4, "bwd": 6, "fwd+bwd": 10}
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
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "channels_last")


def traffic_bytes(mode: str, x_bytes: int, provider: str, tail: bool = False) -> tuple[int, Optional[int]]:
    """(minimal traffic, the provider's own traffic or None where it is not known) in bytes."""
    minimal, fused = (MIN_TRAFFIC_TAIL, FUSED_TRAFFIC_TAIL) if tail else (MIN_TRAFFIC, FUSED_TRAFFIC)
    own = fused[mode] * x_bytes if provider in FUSED else None
    return minimal[mode] * x_bytes, own


def parse_shape(text: str) -> tuple[int, SEShape]:
    """`--shapes` item: N,C,H,W or N,C,H,W,hidden (hidden defaults to C // 16)."""
    parts = text.split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (4, 5) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"shape must be N,C,H,W or N,C,H,W,hidden with positive integers; got {text!r}"
        )
    n, c, h, w = values[:4]
    hidden = values[4] if len(values) == 5 else max(1, c // 16)
    return n, SEShape(c, h, w, hidden)
