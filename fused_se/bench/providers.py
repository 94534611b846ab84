"""The providers the bench times: eager SE blocks (Linear or 1x1 conv FCs), torch.compile of
eager, and the fused block (alone, with the residual tail, or held to its three launches); the
call each mode times; and the fused provider's path label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from ..workloads import EagerSE, FusedTail, build_block, three_launch_paths
from .presets import COMPILE_MODES, CUDA_GRAPHED, SEShape

__all__ = [
    "CudaGraphed", "EagerSE", "FusedTail", "build_block", "build_provider", "fused_path", "make_call",
    "three_launch_paths",
]  # fmt: skip


class CudaGraphed(nn.Module):
    """A block's inference replayed from one CUDA graph, captured at the first call on its input's
    buffer (after warm-up calls on a side stream, as torch.cuda.graphs asks); a later call with
    another tensor copies it into that buffer first. The output is the graph's own buffer,
    overwritten by the next replay."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    @torch.no_grad()
    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            self.static_in = (x, *extra)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.inner(*self.static_in)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = self.inner(*self.static_in)
        for buf, t in zip(self.static_in, (x, *extra), strict=True):
            if t.data_ptr() != buf.data_ptr():
                buf.copy_(t)
        self.graph.replay()
        return self.static_out


def build_provider(
    provider: str, shape: SEShape, device: torch.device, dtype: torch.dtype, tail: bool = False
) -> nn.Module:
    if provider in CUDA_GRAPHED:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"{provider} replays a CUDA graph: it needs a CUDA device")
        return CudaGraphed(build_provider(CUDA_GRAPHED[provider], shape, device, dtype, tail))
    if provider in COMPILE_MODES:
        eager = build_block("eager", shape, device, dtype, tail)
        # Every row compiles its own module: start from a clean cache, so that no recompile
        # limit sends a later row back to eager without a word.
        torch.compiler.reset()
        return torch.compile(eager, mode=COMPILE_MODES[provider])
    return build_block(provider, shape, device, dtype, tail)


def _in_three_launch_paths(fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        with three_launch_paths():
            return fn()

    return call


def make_call(
    module: nn.Module,
    x: torch.Tensor,
    grad: torch.Tensor,
    mode: str,
    shortcut: Optional[torch.Tensor] = None,
    three_pass: bool = False,
) -> Callable[[], object]:
    """One call of the mode: forward without grad, backward alone (the graph kept), or both.
    With a shortcut (the tail), the module takes it as its second input, and it gets a gradient.
    A CUDA-graphed module times its inference (fwd) only."""
    if isinstance(module, CudaGraphed) and mode != "fwd":
        raise ValueError(f"a CUDA-graphed provider times inference only (mode fwd); got mode {mode}")
    if three_pass:
        with three_launch_paths():  # the "bwd" call's forward runs here
            return _in_three_launch_paths(make_call(module, x, grad, mode, shortcut))
    extra = () if shortcut is None else (shortcut,)
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                return module(x, *extra)

        return fwd
    xg = x.detach().requires_grad_(True)
    extra = tuple(t.detach().requires_grad_(True) for t in extra)
    inputs = [xg, *extra, *module.parameters()]
    if mode == "bwd":
        y = module(xg, *extra)

        def bwd():
            return torch.autograd.grad(y, inputs, grad, retain_graph=True)

        return bwd

    def fwd_bwd():
        # autograd.grad, not .backward(): accumulating into .grad would add a pass of its own.
        return torch.autograd.grad(module(xg, *extra), inputs, grad)

    return fwd_bwd


def fused_path(x: torch.Tensor, shape: SEShape, mode: str = "fwd", tail: bool = False) -> str:
    """The fused provider's path for x in this mode, as the planner (fused_se.kernels.plan) chooses
    it: "triton <path>" with one of its path names (three_launch, one_launch, spread, stream), or
    "triton <fwd path> fwd, <bwd path> bwd" where fwd+bwd takes two; "decomposed" or "reference"
    off the kernels."""
    from .. import backend_for

    backend = backend_for(x)
    if backend != "triton":
        return backend
    if shape.spatial_gate:
        return "triton scse"  # scSE's own two passes each way: no planner
    from ..functional import _kernels_input
    from ..kernels import plan_backward, plan_forward

    x = _kernels_input(x)  # the (B, C, H, W) view the ops take, whatever x's rank
    fwd = plan_forward(x, shape.hidden).path
    # the tail's backward reads the ReLU's output and writes the shortcut's gradient
    bwd = plan_backward(x, x, shape.hidden, x if tail else None, tail).path
    if mode == "fwd" or (mode == "fwd+bwd" and fwd == bwd):
        return f"triton {fwd}"
    if mode == "bwd":
        return f"triton {bwd}"
    return f"triton {fwd} fwd, {bwd} bwd"
