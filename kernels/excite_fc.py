"""The excitation of the FC form (effective SE, as in VoVNet's ESE): one C x C layer, no hidden layer.

    a[b,:] = W z[b,:] + bias,   s = gate(a)                    W: (C, C), bias: (C,) or none
Backward, with u = ds * gate'(a):
    dz = u W,   dW = u^T z,   dbias = sum_b u

Each backward program owns a block of dW's columns and sums over the whole batch in order:
no partials to reduce afterwards. See docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import empty, launch, record
from . import heuristics as hz
from .common import (
    GATE_CODES,
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
def _excite_fc_fwd_kernel(
    zsum_ptr,  # (SPLIT, B, C) partial sums of x over HW, contiguous
    w_ptr,  # (C, C) strided: (output channel, input channel)
    b_ptr,  # (C,) read only when HAS_B
    z_ptr,  # (B, C) out
    s_ptr,  # (B, C) out
    a_ptr,  # (B, C) out, written only when KEEP_A
    stride_wn, stride_wk, stride_b,
    B, C, split, HW,
    HAS_B: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_b = offs_b < B
    mask_n = offs_n < C

    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=acc_ty)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < C
        mask_bk = mask_b[:, None] & mask_k[None, :]
        bk = offs_b.to(tl.int64)[:, None] * C + offs_k[None, :]
        z = sum_splits(zsum_ptr, bk, mask_bk, split, B * C) / HW
        tl.store(z_ptr + bk, z, mask=mask_bk & (pid_n == 0))
        wt = tl.load(
            w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        ).to(acc_ty)
        acc = dot(z, wt, acc, DOT_TF32, IS_FP64)
    if HAS_B:
        acc += tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0).to(acc_ty)[None, :]
    bn = offs_b.to(tl.int64)[:, None] * C + offs_n[None, :]
    mask_bn = mask_b[:, None] & mask_n[None, :]
    tl.store(s_ptr + bn, gate_fwd(acc, GATE), mask=mask_bn)
    if KEEP_A:
        tl.store(a_ptr + bn, acc, mask=mask_bn)


@triton.jit
def _excite_fc_bwd_kernel(
    dssum_ptr,  # (SPLIT, B, C) partial sums of g * x over HW, contiguous
    z_ptr,  # (B, C)
    s_ptr,  # (B, C)
    a_ptr,  # (B, C) read only when GATE needs it
    w_ptr,  # (C, C) strided
    dz_ptr,  # (B, C) out, when NEED_DZ
    dw_ptr,  # (C, C) out, contiguous, when NEED_DW
    db_ptr,  # (C,) out, when NEED_DB (written by program 0)
    stride_wn, stride_wk,
    B, C, split,
    GATE: tl.constexpr, NEED_DZ: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    SINGLE_B_BLOCK: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # Each program owns a block of input channels k: dz[:, k] and the columns dW[:, k], summed
    # over the whole batch in order, so there are no partials to reduce afterwards.
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    offs_k = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < C

    if NEED_DZ or (SINGLE_B_BLOCK and (NEED_DW or NEED_DB)):
        for b0 in range(0, B, BLOCK_B):
            offs_b = b0 + tl.arange(0, BLOCK_B)
            mask_b = offs_b < B
            bk = offs_b.to(tl.int64)[:, None] * C + offs_k[None, :]
            mask_bk = mask_b[:, None] & mask_k[None, :]
            if SINGLE_B_BLOCK and NEED_DW:
                z = tl.load(z_ptr + bk, mask=mask_bk, other=0.0)
            dz = tl.zeros((BLOCK_B, BLOCK_K), dtype=acc_ty)
            for n0 in range(0, C, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                mask_n = offs_n < C
                bn = offs_b.to(tl.int64)[:, None] * C + offs_n[None, :]
                u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bn, mask_b[:, None] & mask_n[None, :], split, B * C, GATE)
                if NEED_DZ:
                    w = tl.load(
                        w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                        mask=mask_n[:, None] & mask_k[None, :],
                        other=0.0,
                    ).to(acc_ty)
                    dz = dot(u, w, dz, DOT_TF32, IS_FP64)
                # With the whole batch in one block, the weight gradients need no sum over
                # batch blocks: they come out of the same pass over u.
                if SINGLE_B_BLOCK and NEED_DW:
                    dw = dot(tl.trans(u), z, tl.zeros((BLOCK_N, BLOCK_K), dtype=acc_ty), DOT_TF32, IS_FP64)
                    nk = offs_n.to(tl.int64)[:, None] * C + offs_k[None, :]
                    tl.store(dw_ptr + nk, dw, mask=mask_n[:, None] & mask_k[None, :])
                if SINGLE_B_BLOCK and NEED_DB:
                    tl.store(db_ptr + offs_n, tl.sum(u, axis=0), mask=mask_n & (pid == 0))
            if NEED_DZ:
                tl.store(dz_ptr + bk, dz, mask=mask_bk)

    if not SINGLE_B_BLOCK and (NEED_DW or NEED_DB):
        for n0 in range(0, C, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < C
            dw = tl.zeros((BLOCK_N, BLOCK_K), dtype=acc_ty)
            db = tl.zeros((BLOCK_N,), dtype=acc_ty)
            for b0 in range(0, B, BLOCK_B):
                offs_b = b0 + tl.arange(0, BLOCK_B)
                mask_b = offs_b < B
                bn = offs_b.to(tl.int64)[:, None] * C + offs_n[None, :]
                u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bn, mask_b[:, None] & mask_n[None, :], split, B * C, GATE)
                if NEED_DB:
                    db += tl.sum(u, axis=0)
                if NEED_DW:
                    bk = offs_b.to(tl.int64)[:, None] * C + offs_k[None, :]
                    z = tl.load(z_ptr + bk, mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                    dw = dot(tl.trans(u), z, dw, DOT_TF32, IS_FP64)
            if NEED_DW:
                nk = offs_n.to(tl.int64)[:, None] * C + offs_k[None, :]
                tl.store(dw_ptr + nk, dw, mask=mask_n[:, None] & mask_k[None, :])
            if NEED_DB:
                tl.store(db_ptr + offs_n, db, mask=mask_n & (pid == 0))


def excite_fc_fwd(
    zsum: torch.Tensor,
    hw: int,
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    x_dtype: torch.dtype,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FC form: from the squeeze's partial sums to (z, s, a), as excite_fwd."""
    split, nb, c = zsum.shape
    z, s, a = excite_outputs(zsum, gate)
    record("excite_fc")
    if nb == 0:
        return z, s, a
    cfg = hz.excite_fc_config(c, x_dtype)
    grid = (hz.cdiv(nb, cfg.block_b), hz.cdiv(c, cfg.block_n))
    launch(_excite_fc_fwd_kernel, grid)(
        zsum,
        w,
        w if b is None else b,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        *matrix_strides(w),
        vec_stride(b),
        nb,
        c,
        split,
        hw,
        HAS_B=b is not None,
        GATE=GATE_CODES[gate],
        KEEP_A=keeps_gate_input(gate),
        IS_FP64=zsum.dtype == torch.float64,
        DOT_TF32=cfg.dot_tf32,
        BLOCK_B=cfg.block_b,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps,
    )
    return z, s, a


def excite_fc_bwd(
    dssum: torch.Tensor,
    z: torch.Tensor,
    s: torch.Tensor,
    a: torch.Tensor,
    w: torch.Tensor,
    x_dtype: torch.dtype,
    gate: str,
    need: tuple[bool, bool, bool],
    grad_dtypes: Optional[tuple[torch.dtype, torch.dtype]] = None,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """FC form: (dz, dW, dbias), dz in the accumulation dtype, dW and dbias in grad_dtypes (the op
    passes the parameters', so that no cast follows; default the accumulation dtype); None where
    `need` says so."""
    need_dz, need_dw, need_db = need
    split, nb, c = dssum.shape
    dt, dev = dssum.dtype, dssum.device
    dw_dtype, db_dtype = grad_dtypes or (dt, dt)
    dz = empty(nb, c, dtype=dt, device=dev) if need_dz else None
    dw = weight_grad(w, dw_dtype) if need_dw else None
    db = empty(c, dtype=db_dtype, device=dev) if need_db else None
    record("excite_fc_bwd")
    if not any(need):
        return dz, dw, db
    if nb == 0:  # an empty batch: the weight gradients are sums over nothing
        return dz, None if dw is None else dw.zero_(), None if db is None else db.zero_()
    cfg = hz.excite_fc_config(c, x_dtype)
    grid = (hz.cdiv(c, cfg.block_k),)
    launch(_excite_fc_bwd_kernel, grid)(
        dssum,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        w,
        dssum if dz is None else dz,
        dssum if dw is None else dw,
        dssum if db is None else db,
        *matrix_strides(w),
        nb,
        c,
        split,
        GATE=GATE_CODES[gate],
        NEED_DZ=need_dz,
        NEED_DW=need_dw,
        NEED_DB=need_db,
        SINGLE_B_BLOCK=nb <= cfg.block_b,
        IS_FP64=dt == torch.float64,
        DOT_TF32=cfg.dot_tf32,
        BLOCK_B=cfg.block_b,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps,
    )
    return dz, dw, db
