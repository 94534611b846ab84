"""The excitation of the MLP form (two FCs: W1, b1, act, W2, b2, gate), forward and backward, over
all samples in one launch each; its bodies are jit helpers over a range of samples, which the
streamed paths run per chunk. See docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import heuristics as hz
from .common import (
    ACT_CODES,
    GATE_CODES,
    act_bwd,
    act_fwd,
    dot,
    empty,
    gate_bwd,
    gate_fwd,
    keeps_gate_input,
    launch,
    record,
    sum_partials,
    sum_splits,
    vec_stride,
)


@triton.jit
def excite_fwd_block(
    zsum_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    z_ptr,
    s_ptr,
    a_ptr,
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    stride_b2,
    b_start,
    b_end,
    B,
    C,
    R,
    split,
    HW,
    pid_c,
    programs_c,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The excitation of samples b_start <= b < b_end (at most BLOCK_B of them), channel blocks
    pid_c, pid_c + programs_c, ... of s and a; see _excite_fwd_kernel."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    offs_b = b_start + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < b_end
    mask_r = offs_r < R

    # First GEMM over the whole channel axis: each of the programs_c programs of a batch
    # block computes the same hidden layer, which is cheap while W1 is small (heuristics).
    h = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_bc = mask_b[:, None] & mask_c[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        z = sum_splits(zsum_ptr, bc, mask_bc, split, B * C) / HW
        tl.store(z_ptr + bc, z, mask=mask_bc & (pid_c == 0))
        w1t = tl.load(
            w1_ptr + offs_c[:, None] * stride_w1c + offs_r[None, :] * stride_w1r,
            mask=mask_c[:, None] & mask_r[None, :],
            other=0.0,
        ).to(acc_ty)
        h = dot(z, w1t, h, DOT_TF32, IS_FP64)
    if HAS_B1:
        h += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(acc_ty)[None, :]
    # Padded columns r >= R are exactly 0: an Inf in z times their zero weights would be NaN,
    # and would reach every channel through the second GEMM.
    h = tl.where(mask_r[None, :], act_fwd(h, ACT), 0.0)

    for c0 in range(pid_c * BLOCK_C, C, programs_c * BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        w2t = tl.load(
            w2_ptr + offs_r[:, None] * stride_w2r + offs_c[None, :] * stride_w2c,
            mask=mask_r[:, None] & mask_c[None, :],
            other=0.0,
        ).to(acc_ty)
        a = dot(h, w2t, tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
        if HAS_B2:
            a += tl.load(b2_ptr + offs_c * stride_b2, mask=mask_c, other=0.0).to(acc_ty)[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        mask_bc = mask_b[:, None] & mask_c[None, :]
        tl.store(s_ptr + bc, gate_fwd(a, GATE), mask=mask_bc)
        if KEEP_A:
            tl.store(a_ptr + bc, a, mask=mask_bc)


@triton.jit
def _excite_fwd_kernel(
    zsum_ptr,  # (SPLIT, B, C) partial sums of x over HW, contiguous
    w1_ptr,  # (R, C) strided
    b1_ptr,  # (R,) read only when HAS_B1
    w2_ptr,  # (C, R) strided
    b2_ptr,  # (C,) read only when HAS_B2
    z_ptr,  # (B, C) out: the squeeze, kept for the backward
    s_ptr,  # (B, C) out: the gate
    a_ptr,  # (B, C) out: the gate's input, written only when KEEP_A
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    stride_b2,
    B,
    C,
    R,
    split,
    HW,
    programs_c,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    excite_fwd_block(
        zsum_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        b2_ptr,
        z_ptr,
        s_ptr,
        a_ptr,
        stride_w1r,
        stride_w1c,
        stride_b1,
        stride_w2c,
        stride_w2r,
        stride_b2,
        tl.program_id(0) * BLOCK_B,
        B,
        B,
        C,
        R,
        split,
        HW,
        tl.program_id(1),
        programs_c,
        HAS_B1,
        HAS_B2,
        ACT,
        GATE,
        KEEP_A,
        IS_FP64,
        DOT_TF32,
        BLOCK_B,
        BLOCK_C,
        BLOCK_R,
    )


@triton.jit
def excite_bwd_block(
    dssum_ptr,  # (SPLIT, B, C) partial sums of g * x over HW, contiguous
    z_ptr,  # (B, C)
    s_ptr,  # (B, C)
    a_ptr,  # (B, C) the gate's input, read only when GATE needs it
    w1_ptr,  # (R, C) strided
    b1_ptr,  # (R,) read only when HAS_B1
    w2_ptr,  # (C, R) strided
    dz_ptr,  # (B, C) out, when NEED_DZ
    dw1_ptr,  # (P, R, C) out: this program's share of dW1, when NEED_DW1
    db1_ptr,  # (P, R) out, when NEED_DB1
    dw2_ptr,  # (P, C, R) out, when NEED_DW2
    db2_ptr,  # (P, C) out, when NEED_DB2
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    b_start,
    b_end,
    pid,
    B,
    C,
    R,
    split,
    HAS_B1: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    NEED_DZ: tl.constexpr,
    NEED_DW1: tl.constexpr,
    NEED_DB1: tl.constexpr,
    NEED_DW2: tl.constexpr,
    NEED_DB2: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The excitation's backward for samples b_start <= b < b_end (at most BLOCK_B of them):
    dz, and the weight gradients' partials of index pid; see _excite_bwd_kernel."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    offs_b = b_start + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < b_end
    mask_r = offs_r < R

    # Pass 1 over channels: the pre-activation W1 z + b1 (re-computed, not saved) and dh = u W2.
    hpre = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    dh = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_bc = mask_b[:, None] & mask_c[None, :]
        mask_cr = mask_c[:, None] & mask_r[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_bc, split, B * C, GATE)
        z = tl.load(z_ptr + bc, mask=mask_bc, other=0.0)
        w1t = tl.load(w1_ptr + offs_c[:, None] * stride_w1c + offs_r[None, :] * stride_w1r, mask=mask_cr, other=0.0)
        w2 = tl.load(w2_ptr + offs_c[:, None] * stride_w2c + offs_r[None, :] * stride_w2r, mask=mask_cr, other=0.0)
        hpre = dot(z, w1t.to(acc_ty), hpre, DOT_TF32, IS_FP64)
        dh = dot(u, w2.to(acc_ty), dh, DOT_TF32, IS_FP64)
    if HAS_B1:
        hpre += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(acc_ty)[None, :]
    # Padded columns r >= R are exactly 0 (an Inf in z or u times their zero weights is NaN).
    # Rows past B have u = 0, hence dh = 0 and v = 0: they add nothing to the sums below.
    h = tl.where(mask_r[None, :], act_fwd(hpre, ACT), 0.0)
    v = tl.where(mask_r[None, :], act_bwd(hpre, dh, ACT), 0.0)
    if NEED_DB1:
        tl.store(db1_ptr + pid * R + offs_r, tl.sum(v, axis=0), mask=mask_r)

    # Pass 2 over channels: everything that is indexed by channel.
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_bc = mask_b[:, None] & mask_c[None, :]
        mask_cr = mask_c[:, None] & mask_r[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        if NEED_DW2 or NEED_DB2:
            u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_bc, split, B * C, GATE)
            if NEED_DB2:
                tl.store(db2_ptr + pid * C + offs_c, tl.sum(u, axis=0), mask=mask_c)
            if NEED_DW2:
                dw2 = dot(tl.trans(u), h, tl.zeros((BLOCK_C, BLOCK_R), dtype=acc_ty), DOT_TF32, IS_FP64)
                cr = pid.to(tl.int64) * C * R + offs_c[:, None] * R + offs_r[None, :]
                tl.store(dw2_ptr + cr, dw2, mask=mask_cr)
        if NEED_DW1:
            z = tl.load(z_ptr + bc, mask=mask_bc, other=0.0)
            dw1 = dot(tl.trans(v), z, tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
            rc = pid.to(tl.int64) * R * C + offs_r[:, None] * C + offs_c[None, :]
            tl.store(dw1_ptr + rc, dw1, mask=mask_r[:, None] & mask_c[None, :])
        if NEED_DZ:
            w1 = tl.load(
                w1_ptr + offs_r[:, None] * stride_w1r + offs_c[None, :] * stride_w1c,
                mask=mask_r[:, None] & mask_c[None, :],
                other=0.0,
            )
            dz = dot(v, w1.to(acc_ty), tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
            tl.store(dz_ptr + bc, dz, mask=mask_bc)


@triton.jit
def _excite_bwd_kernel(
    dssum_ptr,  # (SPLIT, B, C) partial sums of g * x over HW, contiguous
    z_ptr,  # (B, C)
    s_ptr,  # (B, C)
    a_ptr,  # (B, C) the gate's input, read only when GATE needs it
    w1_ptr,  # (R, C) strided
    b1_ptr,  # (R,) read only when HAS_B1
    w2_ptr,  # (C, R) strided
    dz_ptr,  # (B, C) out, when NEED_DZ
    dw1_ptr,  # (P, R, C) out: this program's share of dW1, when NEED_DW1
    db1_ptr,  # (P, R) out, when NEED_DB1
    dw2_ptr,  # (P, C, R) out, when NEED_DW2
    db2_ptr,  # (P, C) out, when NEED_DB2
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    B,
    C,
    R,
    split,
    HAS_B1: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    NEED_DZ: tl.constexpr,
    NEED_DW1: tl.constexpr,
    NEED_DB1: tl.constexpr,
    NEED_DW2: tl.constexpr,
    NEED_DB2: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    excite_bwd_block(
        dssum_ptr,
        z_ptr,
        s_ptr,
        a_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        dz_ptr,
        dw1_ptr,
        db1_ptr,
        dw2_ptr,
        db2_ptr,
        stride_w1r,
        stride_w1c,
        stride_b1,
        stride_w2c,
        stride_w2r,
        tl.program_id(0) * BLOCK_B,
        B,
        tl.program_id(0),
        B,
        C,
        R,
        split,
        HAS_B1,
        ACT,
        GATE,
        NEED_DZ,
        NEED_DW1,
        NEED_DB1,
        NEED_DW2,
        NEED_DB2,
        IS_FP64,
        DOT_TF32,
        BLOCK_B,
        BLOCK_C,
        BLOCK_R,
    )


def excite_outputs(zsum: torch.Tensor, gate: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, s, a) for every excitation form: (B, C) each in zsum's dtype; a, the gate's input,
    only where the gate's backward needs it (an empty placeholder otherwise)."""
    _, b, c = zsum.shape
    z = empty(b, c, dtype=zsum.dtype, device=zsum.device)
    s = empty(b, c, dtype=zsum.dtype, device=zsum.device)
    a = empty(b, c, dtype=zsum.dtype, device=zsum.device) if keeps_gate_input(gate) else zsum.new_empty(0)
    return z, s, a


def excite_fwd(
    zsum: torch.Tensor,
    hw: int,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    x_dtype: torch.dtype,
    act: str = "relu",
    gate: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the squeeze's partial sums to (z, s, a), each (B, C) in the accumulation dtype.

    a, the gate's input, is kept only where the gate's backward needs it (empty otherwise).
    """
    split, b, c = zsum.shape
    r = w1.shape[0]
    z, s, a = excite_outputs(zsum, gate)
    record("excite")
    if b == 0:
        return z, s, a
    cfg = hz.excite_fwd_config(b, c, r, x_dtype, hz.sm_count(zsum.device))
    grid = (hz.cdiv(b, cfg.block_b), cfg.programs_c)
    launch(_excite_fwd_kernel, grid)(
        zsum,
        w1,
        w1 if b1 is None else b1,
        w2,
        w2 if b2 is None else b2,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        *w1.stride(),
        vec_stride(b1),
        *w2.stride(),
        vec_stride(b2),
        b,
        c,
        r,
        split,
        hw,
        cfg.programs_c,
        HAS_B1=b1 is not None,
        HAS_B2=b2 is not None,
        ACT=ACT_CODES[act],
        GATE=GATE_CODES[gate],
        KEEP_A=keeps_gate_input(gate),
        IS_FP64=zsum.dtype == torch.float64,
        DOT_TF32=cfg.dot_tf32,
        BLOCK_B=cfg.block_b,
        BLOCK_C=cfg.block_c,
        BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps,
    )
    return z, s, a


def excite_bwd(
    dssum: torch.Tensor,
    z: torch.Tensor,
    s: torch.Tensor,
    a: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    x_dtype: torch.dtype,
    need: tuple[bool, bool, bool, bool, bool],
    act: str = "relu",
    gate: str = "sigmoid",
) -> tuple[Optional[torch.Tensor], ...]:
    """(dz, dW1, db1, dW2, db2) from the partial sums of g * x; None where `need` says so.

    z, s and a are excite_fwd's outputs (a may be empty where the gate does not need it).

    dz is in the accumulation dtype; the weight gradients are summed over the per-program
    partials in a fixed order and returned in fp32 (fp64 for fp64 inputs).
    """
    need_dz, need_dw1, need_db1, need_dw2, need_db2 = need
    split, b, c = dssum.shape
    r = w1.shape[0]
    cfg = hz.excite_bwd_config(b, c, r, x_dtype)
    p = hz.cdiv(b, cfg.block_b)
    dt, dev = dssum.dtype, dssum.device
    dz = empty(b, c, dtype=dt, device=dev) if need_dz else None
    dw1 = empty(p, r, c, dtype=dt, device=dev) if need_dw1 else None
    db1 = empty(p, r, dtype=dt, device=dev) if need_db1 else None
    dw2 = empty(p, c, r, dtype=dt, device=dev) if need_dw2 else None
    db2 = empty(p, c, dtype=dt, device=dev) if need_db2 else None
    record("excite_bwd")
    if p > 0 and any(need):
        grid = (p,)
        launch(_excite_bwd_kernel, grid)(
            dssum,
            z,
            s,
            a if keeps_gate_input(gate) else s,
            w1,
            w1 if b1 is None else b1,
            w2,
            dssum if dz is None else dz,
            dssum if dw1 is None else dw1,
            dssum if db1 is None else db1,
            dssum if dw2 is None else dw2,
            dssum if db2 is None else db2,
            *w1.stride(),
            vec_stride(b1),
            *w2.stride(),
            b,
            c,
            r,
            split,
            HAS_B1=b1 is not None,
            ACT=ACT_CODES[act],
            GATE=GATE_CODES[gate],
            NEED_DZ=need_dz,
            NEED_DW1=need_dw1,
            NEED_DB1=need_db1,
            NEED_DW2=need_dw2,
            NEED_DB2=need_db2,
            IS_FP64=dt == torch.float64,
            DOT_TF32=cfg.dot_tf32,
            BLOCK_B=cfg.block_b,
            BLOCK_C=cfg.block_c,
            BLOCK_R=cfg.block_r,
            num_warps=cfg.num_warps,
        )
    return dz, sum_partials(dw1), sum_partials(db1), sum_partials(dw2), sum_partials(db2)
