"""The SE workloads that fused_se.bench times and fused_se.perf counts: where SE blocks sit in a
few networks (shapes, presets, the --shapes syntax), the modes and layouts, the traffic each mode
must move, the inputs made for a shape, and the SE blocks built for it (eager and fused).

Both packages import this module and neither imports the other's: fused_se.bench (the timed
benchmark) hands --traffic, --host and --kernel-report to fused_se.perf (counted and modeled).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class SEShape:
    """Where an SE block sits in a network: its input map and its excitation.

    An image map is (H, W). A sequence (L,) or a volume (D, H, W) keeps its own dims in
    ``spatial``, with h and w holding them as the kernels see them, (L * ... , 1): so every count
    of elements (h * w) stays right; ``dims`` gives the map's own dims whatever its rank.
    """

    c: int
    h: int
    w: int
    hidden: int
    act: str = "relu"
    gate: str = "sigmoid"
    spatial: Optional[tuple[int, ...]] = None
    # scSE (segmentation_models_pytorch's SCSEModule): the channel gate and a spatial gate, a 1x1
    # conv from C channels to one and a sigmoid, summed: y = x * (s_c[b, c] + s_s[b, hw])
    spatial_gate: bool = False

    @classmethod
    def of(cls, c: int, dims: tuple[int, ...], hidden: int, act: str = "relu", gate: str = "sigmoid") -> SEShape:
        """The shape of a map with spatial dims `dims`: (L,), (H, W) or (D, H, W)."""
        if len(dims) == 2:
            return cls(c, dims[0], dims[1], hidden, act, gate)
        return cls(c, math.prod(dims), 1, hidden, act, gate, tuple(dims))

    @property
    def dims(self) -> tuple[int, ...]:
        """The map's spatial dims: (L,), (H, W) or (D, H, W)."""
        return self.spatial if self.spatial is not None else (self.h, self.w)

    def label(self) -> str:
        return "x".join(str(n) for n in (self.c, *self.dims))


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
# MONAI's SEResNet50(spatial_dims=3) at a 96^3 volume: the SE of each stage's bottlenecks (r = 16),
# on 24^3, 12^3, 6^3 and 3^3 maps (3, 4, 6 and 3 blocks).
SERESNET50_3D = [SEShape.of(c, (s, s, s), c // 16) for c, s in [(256, 24), (512, 12), (1024, 6), (2048, 3)]]
# ECAPA-TDNN (SpeechBrain's, the speaker-verification model): the SE of its three SE-Res2Net blocks,
# bottleneck 128, over T = 300 frames (3 s at 100 frames/s), with C = 1024 and the lighter C = 512.
ECAPA_TDNN = [SEShape.of(c, (300,), 128) for c in (1024, 512)]
# segmentation_models_pytorch's Unet decoder with decoder_attention_type="scse" at a 256x256 input,
# decoder channels (256, 128, 64, 32, 16), reduction 16: each decoder block's scSE on its input (the
# upsampled map and the skip, concatenated) and on its output; the last block has no skip, and its
# first scSE never runs.
UNET_SCSE = [
    SEShape(c, h, h, r, spatial_gate=True)
    for c, h, r in [
        (768, 16, 48),
        (256, 16, 16),
        (384, 32, 24),
        (128, 32, 8),
        (192, 64, 12),
        (64, 64, 4),
        (128, 128, 8),
        (32, 128, 2),
        (16, 256, 1),
    ]
]
PRESETS = {
    "seresnet50": SERESNET50,
    "efficientnet_b0": EFFICIENTNET_B0,
    "mobilenetv3": MOBILENETV3,
    "seresnet50_3d": SERESNET50_3D,
    "ecapa_tdnn": ECAPA_TDNN,
    "unet_scse": UNET_SCSE,
}

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
# scSE: its floor is SE's (the spatial gate needs no pass of its own); the fused passes read x twice
# forward (no (B, HW) values: the scale pass sums the spatial gate's input for its own tile) and g
# and x twice backward, plus O(N / C) there for the spatial gate's (B, HW) values and dq.
FUSED_TRAFFIC_SCSE = {"fwd": 3, "bwd": 5, "fwd+bwd": 8}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "channels_last")


SHAPE_SYNTAX = (
    "N,C,H,W[,hidden] (an image map), or N,C,SPATIAL[,hidden] with SPATIAL one item: L<length> for a "
    "sequence (L300), HxW (56x56) or DxHxW (24x24x24) for a volume; positive integers, hidden C // 16 "
    "by default"
)


def _positive(text: str, item: str, whole: str) -> int:
    try:
        value = int(item)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"shape must be {SHAPE_SYNTAX}; got {whole!r}: {text} {item!r} is not a positive integer"
        )
    return value


def parse_shape(text: str) -> tuple[int, SEShape]:
    """`--shapes` item: N,C,H,W[,hidden] as before, or N,C,SPATIAL[,hidden] where SPATIAL is L<length>
    (a sequence: 8,1024,L300,128), HxW (8,256,56x56) or DxHxW (2,256,24x24x24,16); hidden
    defaults to C // 16."""
    parts = text.split(",")
    grouped = len(parts) >= 3 and (parts[2][:1] in ("L", "l") or "x" in parts[2])
    if grouped and len(parts) in (3, 4):
        spatial = parts[2]
        if spatial[:1] in ("L", "l"):
            dims = (_positive("the length", spatial[1:], text),)
        else:
            items = spatial.split("x")
            if len(items) not in (2, 3):
                raise argparse.ArgumentTypeError(
                    f"shape must be {SHAPE_SYNTAX}; got {text!r}: SPATIAL {spatial!r} has {len(items)} dims"
                )
            dims = tuple(_positive("the size", d, text) for d in items)
        n, c = (_positive(name, v, text) for name, v in zip(("N", "C"), parts[:2], strict=True))
        hidden = _positive("hidden", parts[3], text) if len(parts) == 4 else max(1, c // 16)
        return n, SEShape.of(c, dims, hidden)
    if grouped or len(parts) not in (4, 5):
        raise argparse.ArgumentTypeError(f"shape must be {SHAPE_SYNTAX}; got {text!r}")
    n, c, h, w, *rest = (
        _positive(name, v, text)
        for name, v in zip(("N", "C", "H", "W", "hidden"), parts, strict=False)  # hidden optional
    )
    hidden = rest[0] if rest else max(1, c // 16)
    return n, SEShape(c, h, w, hidden)


def make_x(shape: SEShape, n: int, layout: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """x of shape (N, C, *shape.dims): contiguous ("nchw"), or with channels varying fastest
    ("channels_last": channels_last for a map, channels_last_3d for a volume, a (N, L, C) sequence
    transposed)."""
    x = torch.randn(n, shape.c, *shape.dims, device=device, dtype=dtype)
    if layout != "channels_last":
        return x
    return x.movedim(1, -1).contiguous().movedim(-1, 1)


_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU}
_POINTWISE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}  # by the map's spatial rank
_GATES = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}


class EagerSE(nn.Module):
    """The SE block as eager code writes it: Linear FCs (SENet, MONAI), or pointwise convs (timm,
    torchvision; SpeechBrain's Conv1d on a sequence), over the map's spatial dims whatever its rank."""

    def __init__(self, shape: SEShape, conv: bool, tail: bool = False) -> None:
        super().__init__()
        c, r = shape.c, shape.hidden
        self.conv, self.tail = conv, tail
        self.spatial = tuple(range(2, 2 + len(shape.dims)))
        if conv:
            pointwise = _POINTWISE[len(shape.dims)]
            self.fc1, self.fc2 = pointwise(c, r, 1), pointwise(r, c, 1)
        else:
            self.fc1, self.fc2 = nn.Linear(c, r), nn.Linear(r, c)
        self.act, self.gate = _ACTS[shape.act](inplace=True), _GATES[shape.gate]()

    def forward(self, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        z = x.mean(self.spatial, keepdim=self.conv)
        s = self.gate(self.fc2(self.act(self.fc1(z))))
        y = x * (s if self.conv else s.view(*s.shape, *(1,) * len(self.spatial)))
        if not self.tail:
            return y
        y += shortcut  # as timm's Bottleneck: in place, then an in-place ReLU
        return torch.relu_(y)


class EagerSCSE(nn.Module):
    """scSE as segmentation_models_pytorch writes it (its SCSEModule, with this shape's hidden width,
    activation and gate): x * cSE(x) + x * sSE(x), on an image map."""

    def __init__(self, shape: SEShape) -> None:
        super().__init__()
        if len(shape.dims) != 2:
            raise ValueError(f"the scSE workload is for image maps (H, W); got spatial dims {shape.dims}")
        c, r = shape.c, shape.hidden
        self.cSE = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, r, 1),
            _ACTS[shape.act](inplace=True),
            nn.Conv2d(r, c, 1),
            _GATES[shape.gate](),
        )
        self.sSE = nn.Sequential(nn.Conv2d(c, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cSE(x) + x * self.sSE(x)


class FusedTail(nn.Module):
    """The fused block with the tail in its scale pass: relu(se(x) + shortcut)."""

    def __init__(self, se: nn.Module) -> None:
        super().__init__()
        self.se = se

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return self.se(x, shortcut, out_act="relu")


BLOCKS = ("eager", "eager-conv", "fused", "fused-3pass")


def build_block(kind: str, shape: SEShape, device: torch.device, dtype: torch.dtype, tail: bool = False) -> nn.Module:
    """The SE block of one kind for a shape: eager with Linear FCs ("eager") or pointwise convs
    ("eager-conv"), or the fused block ("fused"; "fused-3pass" is the same module, which the caller
    holds to three launches with three_launch_paths) with the eager block's weights. With tail, the
    block takes a shortcut and ends with relu(se(x) + shortcut). A shape with a spatial gate builds
    scSE: smp's SCSEModule ("eager", "eager-conv") or FusedSCSEModule around its layers."""
    from .modules import FusedSEModule

    if kind not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}; got {kind!r}")
    torch.manual_seed(0)
    if shape.spatial_gate:  # scSE: eager as smp writes it (1x1 convs), fused around its layers
        if tail:
            raise ValueError("the residual tail is fused for SE blocks, not for scSE")
        from .modules import FusedSCSEModule

        eager_scse = EagerSCSE(shape).to(device=device, dtype=dtype)
        return eager_scse if kind.startswith("eager") else FusedSCSEModule.from_module(eager_scse)
    eager = EagerSE(shape, conv=False, tail=tail).to(device=device, dtype=dtype)
    if kind == "eager":
        return eager
    if kind == "eager-conv":
        return EagerSE(shape, conv=True, tail=tail).to(device=device, dtype=dtype)
    fused = FusedSEModule(shape.c, rd_channels=shape.hidden, bias=True, act=shape.act, gate=shape.gate)
    fused.fc[0].load_state_dict(eager.fc1.state_dict())
    fused.fc[2].load_state_dict(eager.fc2.state_dict())
    return (FusedTail(fused) if tail else fused).to(device=device, dtype=dtype)


@contextmanager
def three_launch_paths() -> Iterator[None]:
    """The fused block held to its three launches each way (the fused-3pass provider, to weigh the
    planner's other paths against the passes they replace in the same run)."""
    from .kernels import force_paths

    with force_paths("three_launch"):
        yield
