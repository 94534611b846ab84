"""The one-launch forward of the MLP form: one program per sample runs the squeeze, both FCs as
GEMVs, and the scale (with the residual tail), re-reading its sample from L2. For small batches
of small samples, where the three launches cost more than the bytes. See docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import launch, record
from . import heuristics as hz
from .common import act_hidden, gate_gemv, mlp_forward
from .passes import residual_tail


@triton.jit
def _se_fwd_one_launch_kernel(
    x_ptr,  # (B, C, HW) strided
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    b2_ptr,  # (C,), read only when HAS_B2
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    res_ptr,  # (B, C, HW) strided residual, read only when HAS_R
    z_ptr,  # (B, C) contiguous, acc dtype: the squeeze (written, then read back)
    s_ptr,  # (B, C) contiguous, acc dtype: the gate
    a_ptr,  # (B, C) contiguous, acc dtype: the gate's input, written only when KEEP_A
    y_ptr,  # (B, C, HW) strided output
    stride_xb, stride_xc, stride_xhw,
    stride_resb, stride_resc, stride_reshw,
    stride_yb, stride_yc, stride_yhw,
    stride_w1r, stride_w1c, stride_b1,
    stride_w2c, stride_w2r, stride_b2,
    C, R, HW,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr,
    HAS_D: tl.constexpr, HAS_R: tl.constexpr, RELU: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """One sample per program: squeeze, both FCs as GEMVs, then the scale (and the residual
    tail), re-reading the sample while it is still in L2. One launch for the whole forward."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid_b = tl.program_id(0)
    x_ptr += pid_b.to(tl.int64) * stride_xb
    y_ptr += pid_b.to(tl.int64) * stride_yb
    res_ptr += pid_b.to(tl.int64) * stride_resb
    row = pid_b.to(tl.int64) * C

    # squeeze: z = mean over HW, kept in memory (it is saved for the backward anyway)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=acc_ty)
        for hw0 in range(0, HW, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mask = mask_c[:, None] & (offs_hw[None, :] < HW)
            ptrs = x_ptr + offs_c.to(tl.int64)[:, None] * stride_xc + offs_hw[None, :] * stride_xhw
            acc += tl.load(ptrs, mask=mask, other=0.0).to(acc_ty)
        tl.store(z_ptr + row + offs_c, tl.sum(acc, axis=1) / HW, mask=mask_c)
    tl.debug_barrier()  # z is read back below by other threads of this program

    # hidden layer: h = act(W1 z + b1), a GEMV over channel blocks
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    h = tl.zeros((BLOCK_R,), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        z = tl.load(z_ptr + row + offs_c, mask=mask_c, other=0.0)
        w1 = tl.load(
            w1_ptr + offs_r[:, None] * stride_w1r + offs_c[None, :] * stride_w1c,
            mask=mask_r[:, None] & mask_c[None, :],
            other=0.0,
        ).to(acc_ty)
        h += tl.sum(w1 * z[None, :], axis=1)
    h = act_hidden(h, b1_ptr, stride_b1, offs_r, mask_r, HAS_B1, ACT)
    if HAS_D:
        d = tl.load(d_ptr + pid_b)

    # per channel block: the gate, then the scale of that block's channels
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        s = gate_gemv(
            h, w2_ptr, b2_ptr, s_ptr, a_ptr, row + offs_c, offs_c, mask_c, offs_r, mask_r,
            stride_w2c, stride_w2r, stride_b2, HAS_B2, GATE, KEEP_A,
        )  # fmt: skip
        if HAS_D:
            s *= d
        for hw0 in range(0, HW, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mask = mask_c[:, None] & (offs_hw[None, :] < HW)
            xv = tl.load(
                x_ptr + offs_c.to(tl.int64)[:, None] * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0
            ).to(acc_ty)
            y = xv * s[:, None]
            y = residual_tail(y, res_ptr, stride_resc, stride_reshw, offs_c, offs_hw, mask, HAS_R, RELU)
            y_ptrs = y_ptr + offs_c.to(tl.int64)[:, None] * stride_yc + offs_hw[None, :] * stride_yhw
            tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


def se_fwd_one_launch(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    act: str,
    gate: str,
    d: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    relu: bool,
    cfg: hz.OneLaunchConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MLP form's whole forward in one launch, one program per sample (cfg from
    plan.plan_forward): (y, z, s, a) as the three-launch path returns them, the residual tail too."""
    b, c, h, w = x.shape
    f = mlp_forward(x, w1, b1, w2, b2, act, gate, d, residual, relu)
    record("se_fwd_one_launch")
    if f.y.numel() == 0:
        return f.outputs
    launch(_se_fwd_one_launch_kernel, (b,))(
        *f.inputs,
        f.z,
        f.s,
        f.a_arg,
        f.y,
        *f.strides,
        c,
        w1.shape[0],
        h * w,
        **f.flags,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps,
    )
    return f.outputs
