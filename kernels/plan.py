"""Which path runs the MLP form's forward and backward: the one place it is decided.

    three_launch  squeeze, excite, scale (backward: scale_bwd, excite_bwd, squeeze_scale_bwd)
    one_launch    forward only: one program per sample              small batches of small samples
    spread        forward only: one persistent launch over every SM  other small batches
    stream        one persistent launch per direction                x past L2; asked for only

plan_forward and plan_backward return the path and its launch configuration; the ops, the bench
and the tests all ask them. The thresholds behind each choice are in heuristics.py, the paths'
traffic in docs/DESIGN.md. The FC and conv forms always take three launches.

Restricting the paths, for a user whose card misbehaves on one or to weigh one path against
another: FUSED_SE_PATHS=three_launch (or a comma list such as "three_launch,stream"; "auto", the
default, allows AUTO_PATHS), or, in code, `with force_paths("three_launch"): ...`. The three-launch
path is always allowed: it is what every other path falls back to.

The streamed passes are left out of "auto": measured on an H200 (benchmarks/results/), they took
2.5-5x the three launches' device time at SE-ResNet-50's stages at batch 128, although they move
fewer bytes (docs/DESIGN.md, "Paths and traffic"). Naming them (FUSED_SE_PATHS=stream, or
force_paths("stream")) still plans them where they apply.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..runtime.env import getenv
from . import heuristics as hz
from .common import bchw_strides, is_channels_last

PATHS = ("three_launch", "one_launch", "spread", "stream")
# What "auto" allows: every path that measured faster than the three launches where it is chosen.
AUTO_PATHS = frozenset(("three_launch", "one_launch", "spread"))
PATHS_ENV = "FUSED_SE_PATHS"

Config = Union[hz.OneLaunchConfig, hz.SpreadConfig, hz.StreamConfig]


@dataclass(frozen=True)
class Plan:
    """A path (one of PATHS) and its launch configuration (None for three_launch, whose three
    kernels each choose their own)."""

    path: str
    config: Optional[Config] = None


THREE_LAUNCH = Plan("three_launch")

_forced: list[frozenset[str]] = []


def _check_names(names: tuple[str, ...], where: str) -> frozenset[str]:
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        raise ValueError(f"{where}: unknown path {unknown[0]!r}; the paths are {', '.join(PATHS)} (or auto)")
    return frozenset(names) | {"three_launch"}


@functools.lru_cache(maxsize=16)
def _paths_from_env(text: str) -> frozenset[str]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    if not names or names == ("auto",):
        return AUTO_PATHS
    return _check_names(names, PATHS_ENV)


def enabled_paths() -> frozenset[str]:
    """The paths the planner may choose: force_paths' innermost block, else FUSED_SE_PATHS, else AUTO_PATHS."""
    if _forced:
        return _forced[-1]
    return _paths_from_env(getenv(PATHS_ENV) or "")


@contextmanager
def force_paths(*paths: str) -> Iterator[None]:
    """Within the block, the planner chooses only among `paths` (and three_launch), whatever
    FUSED_SE_PATHS says: `with force_paths("three_launch"):` holds the MLP form to its three launches."""
    _forced.append(_check_names(tuple(paths), "force_paths"))
    try:
        yield
    finally:
        _forced.pop()


def _stream(x: torch.Tensor, hidden: int, sample_bytes: int, xs: tuple[int, int, int]) -> Optional[hz.StreamConfig]:
    b, c, h, w = x.shape
    return hz.stream_config(
        b, c, h * w, hidden, x.dtype, is_channels_last(xs), sample_bytes, hz.sm_count(x.device), hz.l2_bytes(x.device)
    )


def plan_forward(x: torch.Tensor, hidden: int) -> Plan:
    """The MLP form's forward path for x (B, C, H, W) with a hidden layer of `hidden` units."""
    enabled = enabled_paths()
    xs = bchw_strides(x)
    if len(enabled) == 1 or xs is None:
        return THREE_LAUNCH
    b, c, h, w = x.shape
    hw, x_bytes = h * w, x.numel() * x.element_size()
    if "stream" in enabled:
        # x past L2: the scale re-reads each sample from L2
        cfg = _stream(x, hidden, x_bytes // b if b else 0, xs)
        if cfg is not None:
            return Plan("stream", cfg)
    if "one_launch" in enabled:
        # small batches of small samples: one program per sample
        acc_bytes = 8 if x.dtype == torch.float64 else 4
        if hz.one_launch_applies(b, c, hw, hidden, x_bytes, hz.l2_bytes(x.device), acc_bytes):
            return Plan("one_launch", hz.one_launch_config(c, hw, hidden, is_channels_last(xs)))
    if "spread" in enabled:
        # other small batches: the excitation spread over every SM too
        cfg = hz.spread_config(b, c, hw, hidden, is_channels_last(xs), hz.sm_count(x.device))
        if cfg is not None:
            return Plan("spread", cfg)
    return THREE_LAUNCH


def plan_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    hidden: int,
    relu_out: Optional[torch.Tensor] = None,
    store_g: bool = False,
    need_dx: bool = True,
) -> Plan:
    """The MLP form's backward path. relu_out: the forward's output where a ReLU tail ended it (its
    mask is read); store_g: the tail's shortcut gradient is written. A backward without dx (weights
    only) takes three launches."""
    if not need_dx or "stream" not in enabled_paths():
        return THREE_LAUNCH
    xs = bchw_strides(x)
    if xs is None:
        return THREE_LAUNCH
    # the bytes one sample's first pass touches, all of which its second pass should find in L2
    per_elem = grad_y.element_size() * (1 + store_g) + x.element_size()
    per_elem += 0 if relu_out is None else relu_out.element_size()
    cfg = _stream(x, hidden, x[0].numel() * per_elem if x.shape[0] else 0, xs)
    return THREE_LAUNCH if cfg is None else Plan("stream", cfg)
