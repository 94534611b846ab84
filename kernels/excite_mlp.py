"""The excitation of the MLP form (two FCs: W1, b1, act, W2, b2, gate), forward and backward, over
all samples in one launch each; its bodies are jit helpers over a range of samples, which the
streamed paths run per chunk. See docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import empty, launch, record
from . import heuristics as hz
from .common import (
    ACT_CODES,
    GATE_CODES,
    act_bwd,
    act_fwd,
    act_hidden,
    dot,
    excite_outputs,
    gate_bwd,
    gate_fwd,
    keeps_gate_input,
    matrix_strides,
    sum_splits,
    vec_stride,
    weight_grad,
)


@triton.jit
def _hidden_range(
    zsum_ptr, w1_ptr, z_ptr, stride_w1r, stride_w1c,
    offs_b, mask_b, offs_r, mask_r, c_start, c_end, B, C, split, HW, store_z,
    IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):  # fmt: skip
    """z W1[:, c_start:c_end]^T for the rows offs_b, (BLOCK_B, BLOCK_R) in the accumulation dtype,
    z = the squeeze's partial sums / HW; z stored where store_z."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    h = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    for c0 in range(c_start, c_end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < c_end
        mask_bc = mask_b[:, None] & mask_c[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        z = sum_splits(zsum_ptr, bc, mask_bc, split, B * C) / HW
        tl.store(z_ptr + bc, z, mask=mask_bc & store_z)
        w1t = tl.load(
            w1_ptr + offs_c[:, None] * stride_w1c + offs_r[None, :] * stride_w1r,
            mask=mask_c[:, None] & mask_r[None, :],
            other=0.0,
        ).to(acc_ty)
        h = dot(z, w1t, h, DOT_TF32, IS_FP64)
    return h


@triton.jit
def _gate_blocks(
    h, w2_ptr, b2_ptr, s_ptr, a_ptr, stride_w2c, stride_w2r, stride_b2,
    offs_b, mask_b, offs_r, mask_r, c_first, c_step, C,
    HAS_B2: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr, IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """s = gate(h W2^T + b2) (and a, its input, where KEEP_A) on channel blocks c_first,
    c_first + c_step, ... of the rows offs_b."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    for c0 in range(c_first, C, c_step):
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
def excite_fwd_block(
    zsum_ptr,  # (SPLIT, B, C) partial sums of x over HW, contiguous
    w1_ptr,  # (R, C) strided
    b1_ptr,  # (R,) read only when HAS_B1
    w2_ptr,  # (C, R) strided
    b2_ptr,  # (C,) read only when HAS_B2
    z_ptr,  # (B, C) out: the squeeze, kept for the backward
    s_ptr,  # (B, C) out: the gate
    a_ptr,  # (B, C) out: the gate's input, written only when KEEP_A
    stride_w1r, stride_w1c, stride_b1,
    stride_w2c, stride_w2r, stride_b2,
    b_start, b_end, B, C, R, split, HW,
    pid_c, programs_c,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    GRID: tl.constexpr = False,
):  # fmt: skip
    """The excitation of samples b_start <= b < b_end (at most BLOCK_B of them), channel blocks
    pid_c, pid_c + programs_c, ... of s and a. Launched as a kernel (GRID) over (batch blocks,
    programs_c), each program takes batch block program_id(0) and channel program program_id(1);
    the streamed forward calls it for a chunk of samples."""
    if GRID:
        b_start = tl.program_id(0) * BLOCK_B
        pid_c = tl.program_id(1)
    offs_b = b_start + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < b_end
    mask_r = offs_r < R
    # First GEMM over the whole channel axis: each of the programs_c programs of a batch
    # block computes the same hidden layer, which is cheap while W1 is small (heuristics).
    h = _hidden_range(
        zsum_ptr, w1_ptr, z_ptr, stride_w1r, stride_w1c, offs_b, mask_b, offs_r, mask_r, 0, C, B, C, split, HW,
        pid_c == 0, IS_FP64, DOT_TF32, BLOCK_B, BLOCK_C, BLOCK_R,
    )  # fmt: skip
    h = act_hidden(h, b1_ptr, stride_b1, offs_r, mask_r, HAS_B1, ACT)
    _gate_blocks(
        h, w2_ptr, b2_ptr, s_ptr, a_ptr, stride_w2c, stride_w2r, stride_b2, offs_b, mask_b, offs_r, mask_r,
        pid_c * BLOCK_C, programs_c * BLOCK_C, C, HAS_B2, GATE, KEEP_A, IS_FP64, DOT_TF32, BLOCK_B, BLOCK_C,
    )  # fmt: skip


@triton.jit
def excite_hidden_split(
    zsum_ptr,  # (SPLIT, B, C) partial sums of x over HW, contiguous
    w1_ptr,  # (R, C) strided
    z_ptr,  # (B, C) out: the squeeze
    hpart_ptr,  # (KS, B, R) out: this channel split's share of z W1^T
    stride_w1r, stride_w1c,
    B, C, R, split, HW, CK,
    IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The first GEMM split over channels: program (i, k) takes batch block i and channels
    k * CK <= c < (k + 1) * CK, writes their z and their share of the hidden layer's input."""
    pid_k = tl.program_id(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < B
    mask_r = offs_r < R
    c_start = pid_k * CK
    h = _hidden_range(
        zsum_ptr, w1_ptr, z_ptr, stride_w1r, stride_w1c, offs_b, mask_b, offs_r, mask_r,
        c_start, tl.minimum(c_start + CK, C), B, C, split, HW, True, IS_FP64, DOT_TF32, BLOCK_B, BLOCK_C, BLOCK_R,
    )  # fmt: skip
    br = (pid_k.to(tl.int64) * B + offs_b[:, None]) * R + offs_r[None, :]
    tl.store(hpart_ptr + br, h, mask=mask_b[:, None] & mask_r[None, :])


@triton.jit
def _sum_hidden(part_ptr, offs_b, mask_b, offs_r, mask_r, B, R, KS, IS_FP64: tl.constexpr):
    """sum over k < KS of part[k, b, r], in order, for the rows offs_b."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    br = offs_b.to(tl.int64)[:, None] * R + offs_r[None, :]
    return sum_splits(part_ptr, br, mask_b[:, None] & mask_r[None, :], KS, B * R).to(acc_ty)


@triton.jit
def excite_gate_split(
    hpart_ptr,  # (KS, B, R) excite_hidden_split's shares
    b1_ptr, w2_ptr, b2_ptr, s_ptr, a_ptr,
    stride_b1, stride_w2c, stride_w2r, stride_b2,
    B, C, R, KS, programs_c,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The second GEMM after a split first one: program (i, j) sums batch block i's shares in a
    fixed order and runs channel blocks j, j + programs_c, ... of s and a."""
    pid_c = tl.program_id(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < B
    mask_r = offs_r < R
    h = _sum_hidden(hpart_ptr, offs_b, mask_b, offs_r, mask_r, B, R, KS, IS_FP64)
    h = act_hidden(h, b1_ptr, stride_b1, offs_r, mask_r, HAS_B1, ACT)
    _gate_blocks(
        h, w2_ptr, b2_ptr, s_ptr, a_ptr, stride_w2c, stride_w2r, stride_b2, offs_b, mask_b, offs_r, mask_r,
        pid_c * BLOCK_C, programs_c * BLOCK_C, C, HAS_B2, GATE, KEEP_A, IS_FP64, DOT_TF32, BLOCK_B, BLOCK_C,
    )  # fmt: skip


@triton.jit
def _bwd_reductions(
    dssum_ptr, z_ptr, s_ptr, a_ptr, w1_ptr, w2_ptr, stride_w1r, stride_w1c, stride_w2c, stride_w2r,
    offs_b, mask_b, offs_r, mask_r, c_start, c_end, B, C, split,
    GATE: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """(z W1[:, c_start:c_end]^T, u W2[c_start:c_end]) for the rows offs_b, u = ds * gate'(a) from
    the partial sums of g * x: the backward's reductions over channels, (BLOCK_B, BLOCK_R) each."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    hpre = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    dh = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    for c0 in range(c_start, c_end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < c_end
        mask_bc = mask_b[:, None] & mask_c[None, :]
        mask_cr = mask_c[:, None] & mask_r[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_bc, split, B * C, GATE)
        z = tl.load(z_ptr + bc, mask=mask_bc, other=0.0)
        w1t = tl.load(w1_ptr + offs_c[:, None] * stride_w1c + offs_r[None, :] * stride_w1r, mask=mask_cr, other=0.0)
        w2 = tl.load(w2_ptr + offs_c[:, None] * stride_w2c + offs_r[None, :] * stride_w2r, mask=mask_cr, other=0.0)
        hpre = dot(z, w1t.to(acc_ty), hpre, DOT_TF32, IS_FP64)
        dh = dot(u, w2.to(acc_ty), dh, DOT_TF32, IS_FP64)
    return hpre, dh


# Not inlined: the streamed backward calls it once per chunk, and inlined into that kernel's
# streaming loop (16 warps, at most 128 registers a thread) it made ptxas spill.
@triton.jit(noinline=True)
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
    stride_w1r, stride_w1c, stride_b1,
    stride_w2c, stride_w2r,
    b_start, b_end, pid, B, C, R, split,
    HAS_B1: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr,
    NEED_DZ: tl.constexpr, NEED_DW1: tl.constexpr, NEED_DB1: tl.constexpr, NEED_DW2: tl.constexpr,
    NEED_DB2: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The excitation's backward for samples b_start <= b < b_end (at most BLOCK_B of them):
    dz, and the weight gradients' partials of index pid, in one program: the streamed backward
    runs it for a chunk (the three-launch backward spreads the same math over excite_bwd_split,
    excite_bwd_hidden and excite_bwd_channels)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    offs_b = b_start + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < b_end
    mask_r = offs_r < R

    # Pass 1 over channels: the pre-activation W1 z + b1 (re-computed, not saved) and dh = u W2.
    hpre, dh = _bwd_reductions(
        dssum_ptr, z_ptr, s_ptr, a_ptr, w1_ptr, w2_ptr, stride_w1r, stride_w1c, stride_w2c, stride_w2r,
        offs_b, mask_b, offs_r, mask_r, 0, C, B, C, split, GATE, IS_FP64, DOT_TF32, BLOCK_B, BLOCK_C, BLOCK_R,
    )  # fmt: skip
    if HAS_B1:
        hpre += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(acc_ty)[None, :]
    # Padded columns r >= R are exactly 0 (an Inf in z or u times their zero weights is NaN).
    # Rows past B have u = 0, hence dh = 0 and v = 0: they add nothing to the sums below.
    h = tl.where(mask_r[None, :], act_fwd(hpre, ACT), 0.0)
    v = tl.where(mask_r[None, :], act_bwd(hpre, dh, ACT), 0.0)
    if NEED_DB1:
        tl.store(db1_ptr + pid * R + offs_r, tl.sum(v, axis=0), mask=mask_r)

    # Then everything indexed by channel, one loop per product: a loop holds one dot's operands
    # (h; v transposed; v) across its trips, not all three (fewer registers at the streamed
    # backward's 16 warps: the same bytes, each loop reading what its product needs).
    if NEED_DW2 or NEED_DB2:
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
            u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_b[:, None] & mask_c[None, :], split, B * C, GATE)
            if NEED_DB2:
                tl.store(db2_ptr + pid * C + offs_c, tl.sum(u, axis=0), mask=mask_c)
            if NEED_DW2:
                dw2 = dot(tl.trans(u), h, tl.zeros((BLOCK_C, BLOCK_R), dtype=acc_ty), DOT_TF32, IS_FP64)
                cr = pid.to(tl.int64) * C * R + offs_c[:, None] * R + offs_r[None, :]
                tl.store(dw2_ptr + cr, dw2, mask=mask_c[:, None] & mask_r[None, :])
    if NEED_DW1:
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
            z = tl.load(z_ptr + bc, mask=mask_b[:, None] & mask_c[None, :], other=0.0)
            dw1 = dot(tl.trans(v), z, tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
            rc = pid.to(tl.int64) * R * C + offs_r[:, None] * C + offs_c[None, :]
            tl.store(dw1_ptr + rc, dw1, mask=mask_r[:, None] & mask_c[None, :])
    if NEED_DZ:
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            w1 = tl.load(
                w1_ptr + offs_r[:, None] * stride_w1r + offs_c[None, :] * stride_w1c,
                mask=mask_r[:, None] & mask_c[None, :],
                other=0.0,
            )
            dz = dot(v, w1.to(acc_ty), tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
            bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
            tl.store(dz_ptr + bc, dz, mask=mask_b[:, None] & mask_c[None, :])


@triton.jit
def excite_bwd_split(
    dssum_ptr,  # (SPLIT, B, C) partial sums of g * x over HW, contiguous
    z_ptr, s_ptr, a_ptr,  # (B, C); a read only when GATE needs it
    w1_ptr,  # (R, C) strided
    w2_ptr,  # (C, R) strided
    hpart_ptr,  # (KS, B, R) out: this channel split's share of z W1^T
    dhpart_ptr,  # (KS, B, R) out: this channel split's share of u W2
    stride_w1r, stride_w1c, stride_w2c, stride_w2r,
    B, C, R, split, CK,
    GATE: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The backward's reductions over channels, split: program (i, k) takes batch block i and
    channels k * CK <= c < (k + 1) * CK, and writes their shares of the hidden layer's input
    (re-computed, not saved) and of dh = u W2, u = ds * gate'(a)."""
    pid_k = tl.program_id(1)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < B
    mask_r = offs_r < R
    c_start = pid_k * CK
    hpre, dh = _bwd_reductions(
        dssum_ptr, z_ptr, s_ptr, a_ptr, w1_ptr, w2_ptr, stride_w1r, stride_w1c, stride_w2c, stride_w2r,
        offs_b, mask_b, offs_r, mask_r, c_start, tl.minimum(c_start + CK, C), B, C, split,
        GATE, IS_FP64, DOT_TF32, BLOCK_B, BLOCK_C, BLOCK_R,
    )  # fmt: skip
    br = (pid_k.to(tl.int64) * B + offs_b[:, None]) * R + offs_r[None, :]
    mask_br = mask_b[:, None] & mask_r[None, :]
    tl.store(hpart_ptr + br, hpre, mask=mask_br)
    tl.store(dhpart_ptr + br, dh, mask=mask_br)


@triton.jit
def excite_bwd_hidden(
    hpart_ptr, dhpart_ptr,  # (KS, B, R) excite_bwd_split's shares
    b1_ptr,  # (R,) read only when HAS_B1
    h_ptr,  # (B, R) out: act(W1 z + b1)
    v_ptr,  # (B, R) out: dh * act'(W1 z + b1), the gradient of the hidden layer's input
    stride_b1, B, R, KS,
    HAS_B1: tl.constexpr, ACT: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Sums a batch block's shares in a fixed order and writes its h and v. Padded columns
    r >= R are exactly 0 (an Inf in z or u times their zero weights is NaN)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < B
    mask_r = offs_r < R
    hpre = _sum_hidden(hpart_ptr, offs_b, mask_b, offs_r, mask_r, B, R, KS, IS_FP64)
    dh = _sum_hidden(dhpart_ptr, offs_b, mask_b, offs_r, mask_r, B, R, KS, IS_FP64)
    if HAS_B1:
        hpre += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(hpre.dtype)[None, :]
    br = offs_b.to(tl.int64)[:, None] * R + offs_r[None, :]
    mask_br = mask_b[:, None] & mask_r[None, :]
    tl.store(h_ptr + br, tl.where(mask_r[None, :], act_fwd(hpre, ACT), 0.0), mask=mask_br)
    tl.store(v_ptr + br, tl.where(mask_r[None, :], act_bwd(hpre, dh, ACT), 0.0), mask=mask_br)


@triton.jit
def excite_bwd_channels(
    dssum_ptr,  # (SPLIT, B, C) partial sums of g * x over HW, contiguous
    z_ptr, s_ptr, a_ptr,  # (B, C); a read only when GATE needs it
    h_ptr, v_ptr,  # (B, R) excite_bwd_hidden's outputs
    w1_ptr,  # (R, C) strided
    dz_ptr,  # (B, C) out, when NEED_DZ
    dw1_ptr,  # (R, C) out, when NEED_DW1
    db1_ptr,  # (R,) out, when NEED_DB1 (program 0)
    dw2_ptr,  # (C, R) out, when NEED_DW2
    db2_ptr,  # (C,) out, when NEED_DB2
    stride_w1r, stride_w1c,
    B, C, R, split,
    GATE: tl.constexpr, NEED_DZ: tl.constexpr, NEED_DW1: tl.constexpr, NEED_DB1: tl.constexpr,
    NEED_DW2: tl.constexpr, NEED_DB2: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Everything indexed by channel, for channel block program_id(0) over every sample, in
    batch order: dz = v W1, dW1 = v^T z, dW2 = u^T h, db2 = sum u; program 0 also db1 = sum v.
    Each gradient is written whole by one program: no partials to sum afterwards."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    offs_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_r = tl.arange(0, BLOCK_R)
    mask_c = offs_c < C
    mask_r = offs_r < R
    mask_rc = mask_r[:, None] & mask_c[None, :]
    # Two sweeps over the batch, each with one (BLOCK_R x BLOCK_C) accumulator live: in one sweep
    # the two (and W1's tile) held past 255 registers at BLOCK_R = 128 and spilled. Each sweep
    # reads its own operands, so no byte is read twice; the sums run in the same order.
    if NEED_DW2 or NEED_DB2:
        dw2 = tl.zeros((BLOCK_C, BLOCK_R), dtype=acc_ty)
        db2 = tl.zeros((BLOCK_C,), dtype=acc_ty)
        for b0 in range(0, B, BLOCK_B):
            offs_b = b0 + tl.arange(0, BLOCK_B)
            mask_b = offs_b < B
            bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
            u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_b[:, None] & mask_c[None, :], split, B * C, GATE)
            if NEED_DB2:
                db2 += tl.sum(u, axis=0)
            if NEED_DW2:
                br = offs_b.to(tl.int64)[:, None] * R + offs_r[None, :]
                h = tl.load(h_ptr + br, mask=mask_b[:, None] & mask_r[None, :], other=0.0)
                dw2 = dot(tl.trans(u), h, dw2, DOT_TF32, IS_FP64)
        if NEED_DW2:
            tl.store(dw2_ptr + offs_c[:, None] * R + offs_r[None, :], dw2, mask=mask_c[:, None] & mask_r[None, :])
        if NEED_DB2:
            tl.store(db2_ptr + offs_c, db2, mask=mask_c)
    if NEED_DW1 or NEED_DB1 or NEED_DZ:
        if NEED_DZ:
            w1 = tl.load(w1_ptr + offs_r[:, None] * stride_w1r + offs_c[None, :] * stride_w1c, mask=mask_rc, other=0.0)
            w1 = w1.to(acc_ty)
        dw1 = tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty)
        db1 = tl.zeros((BLOCK_R,), dtype=acc_ty)
        for b0 in range(0, B, BLOCK_B):
            offs_b = b0 + tl.arange(0, BLOCK_B)
            mask_b = offs_b < B
            mask_bc = mask_b[:, None] & mask_c[None, :]
            bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
            br = offs_b.to(tl.int64)[:, None] * R + offs_r[None, :]
            v = tl.load(v_ptr + br, mask=mask_b[:, None] & mask_r[None, :], other=0.0)
            if NEED_DB1:
                db1 += tl.sum(v, axis=0)
            if NEED_DW1:
                z = tl.load(z_ptr + bc, mask=mask_bc, other=0.0)
                dw1 = dot(tl.trans(v), z, dw1, DOT_TF32, IS_FP64)
            if NEED_DZ:
                dz = dot(v, w1, tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
                tl.store(dz_ptr + bc, dz, mask=mask_bc)
        if NEED_DW1:
            tl.store(dw1_ptr + offs_r[:, None] * C + offs_c[None, :], dw1, mask=mask_rc)
        if NEED_DB1:
            tl.store(db1_ptr + offs_r, db1, mask=mask_r & (pid == 0))


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
    """From the squeeze's partial sums to (z, s, a), each (B, C) in the accumulation dtype: one
    launch, or two where W1 is large (heuristics.excite_fwd_split_config).

    a, the gate's input, is kept only where the gate's backward needs it (empty otherwise).
    """
    split, b, c = zsum.shape
    hidden = w1.shape[0]
    z, s, a = excite_outputs(zsum, gate)
    record("excite")
    if b == 0:
        return z, s, a
    sms = hz.sm_count(zsum.device)
    flags = {
        "HAS_B1": b1 is not None,
        "HAS_B2": b2 is not None,
        "ACT": ACT_CODES[act],
        "GATE": GATE_CODES[gate],
        "KEEP_A": keeps_gate_input(gate),
        "IS_FP64": zsum.dtype == torch.float64,
    }
    a_arg = a if keeps_gate_input(gate) else s
    b1_arg, b2_arg = (w1 if b1 is None else b1), (w2 if b2 is None else b2)
    cfg = hz.excite_fwd_split_config(b, c, hidden, x_dtype, sms)
    if cfg is not None:
        hpart = empty(cfg.ks, b, hidden, dtype=zsum.dtype, device=zsum.device)
        blocks = {"BLOCK_B": cfg.block_b, "BLOCK_C": cfg.block_c, "BLOCK_R": cfg.block_r}
        batch_blocks = hz.cdiv(b, cfg.block_b)
        launch(excite_hidden_split, (batch_blocks, cfg.ks))(
            zsum, w1, z, hpart, *matrix_strides(w1), b, c, hidden, split, hw, cfg.ck,
            IS_FP64=flags["IS_FP64"], DOT_TF32=cfg.dot_tf32, **blocks, num_warps=cfg.num_warps,
        )  # fmt: skip
        launch(excite_gate_split, (batch_blocks, cfg.programs_c))(
            hpart, b1_arg, w2, b2_arg, s, a_arg, vec_stride(b1), *matrix_strides(w2), vec_stride(b2),
            b, c, hidden, cfg.ks, cfg.programs_c, **flags, DOT_TF32=cfg.dot_tf32, **blocks, num_warps=cfg.num_warps,
        )  # fmt: skip
        return z, s, a
    cfg = hz.excite_fwd_config(b, c, hidden, x_dtype, sms)
    grid = (hz.cdiv(b, cfg.block_b), cfg.programs_c)
    launch(excite_fwd_block, grid)(
        zsum, w1, b1_arg, w2, b2_arg, z, s, a_arg,
        *matrix_strides(w1), vec_stride(b1), *matrix_strides(w2), vec_stride(b2),
        0, b, b, c, hidden, split, hw, 0, cfg.programs_c,
        **flags, DOT_TF32=cfg.dot_tf32, BLOCK_B=cfg.block_b, BLOCK_C=cfg.block_c, BLOCK_R=cfg.block_r, GRID=True,
        num_warps=cfg.num_warps,
    )  # fmt: skip
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
    Three launches: the reductions over channels, split (excite_bwd_split); h and v per batch
    block (excite_bwd_hidden); everything indexed by channel (excite_bwd_channels), each weight
    gradient written whole, in a fixed order. dz is in the accumulation dtype; the weight
    gradients are accumulated in it and written in their weights' dtypes (db2 in W2's), so that
    no cast follows.
    """
    need_dz, need_dw1, need_db1, need_dw2, need_db2 = need
    split, b, c = dssum.shape
    hidden = w1.shape[0]
    dt, dev = dssum.dtype, dssum.device
    cfg = hz.excite_bwd_config(b, c, hidden, x_dtype, hz.sm_count(dev))
    dz = empty(b, c, dtype=dt, device=dev) if need_dz else None
    dw1 = weight_grad(w1, w1.dtype) if need_dw1 else None
    db1 = empty(hidden, dtype=w1.dtype if b1 is None else b1.dtype, device=dev) if need_db1 else None
    dw2 = weight_grad(w2, w2.dtype) if need_dw2 else None
    db2 = empty(c, dtype=w2.dtype, device=dev) if need_db2 else None
    record("excite_bwd")
    if not any(need):
        return dz, dw1, db1, dw2, db2
    if b == 0:  # sums over no sample
        return dz, *(None if t is None else t.zero_() for t in (dw1, db1, dw2, db2))
    is_fp64 = dt == torch.float64
    a_arg = a if keeps_gate_input(gate) else s
    batch_blocks = hz.cdiv(b, cfg.block_b)
    hpart = empty(cfg.ks, b, hidden, dtype=dt, device=dev)
    dhpart = empty(cfg.ks, b, hidden, dtype=dt, device=dev)
    launch(excite_bwd_split, (batch_blocks, cfg.ks))(
        dssum, z, s, a_arg, w1, w2, hpart, dhpart, *matrix_strides(w1), *matrix_strides(w2), b, c, hidden, split, cfg.ck,
        GATE=GATE_CODES[gate], IS_FP64=is_fp64, DOT_TF32=cfg.dot_tf32,
        BLOCK_B=cfg.block_b, BLOCK_C=cfg.block_c, BLOCK_R=cfg.block_r, num_warps=cfg.num_warps,
    )  # fmt: skip
    h = empty(b, hidden, dtype=dt, device=dev)
    v = empty(b, hidden, dtype=dt, device=dev)
    launch(excite_bwd_hidden, (batch_blocks,))(
        hpart, dhpart, w1 if b1 is None else b1, h, v, vec_stride(b1), b, hidden, cfg.ks,
        HAS_B1=b1 is not None, ACT=ACT_CODES[act], IS_FP64=is_fp64, BLOCK_B=cfg.block_b, BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    launch(excite_bwd_channels, (hz.cdiv(c, cfg.chan_block_c),))(
        dssum, z, s, a_arg, h, v, w1,
        dssum if dz is None else dz, dssum if dw1 is None else dw1, dssum if db1 is None else db1,
        dssum if dw2 is None else dw2, dssum if db2 is None else db2,
        *matrix_strides(w1), b, c, hidden, split,
        GATE=GATE_CODES[gate], NEED_DZ=need_dz, NEED_DW1=need_dw1, NEED_DB1=need_db1, NEED_DW2=need_dw2,
        NEED_DB2=need_db2, IS_FP64=is_fp64, DOT_TF32=cfg.dot_tf32,
        BLOCK_B=cfg.chan_block_b, BLOCK_C=cfg.chan_block_c, BLOCK_R=cfg.block_r, num_warps=cfg.chan_num_warps,
        num_stages=1,
    )  # fmt: skip
    return dz, dw1, db1, dw2, db2
