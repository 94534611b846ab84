"""The excitation forms besides the two-FC MLP, around the same squeeze and scale passes.

FC form (Effective SE, as in VoVNet's ESE): one C x C layer, no hidden layer.
    a[b,:] = W z[b,:] + bias,   s = gate(a)                    W: (C, C), bias: (C,) or none
Backward, with u = ds * gate'(a):
    dz = u W,   dW = u^T z,   dbias = sum_b u

Conv form (ECA, and CECA with circular padding): a k-tap conv across the channel axis of the
pooled vector, K odd, P = (K - 1) // 2, z[b, c'] = 0 outside 0 <= c' < C (zeros) or
z[b, c' mod C] (circular).
    a[b,c] = sum_j w[j] z[b, c + j - P] + bias,   s = gate(a)  w: (K,), bias: (1,) or none
Backward:
    dz[b,c] = sum_j w[j] u[b, c - j + P],   dw[j] = sum_{b,c} u[b,c] z[b, c + j - P]

Both take the squeeze's HW partial sums and write z, s (and a where the gate needs it), so the
squeeze, scale and the backward's two passes over x are the same launches as for the MLP form.
Weight gradients are reduced in a fixed order: the FC form's programs each own a block of dW's
columns (no partials), the conv form's programs write per-program partials summed afterwards.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import heuristics as hz
from .se import (
    GATE_CODES,
    _dot,
    _empty,
    _gate_bwd,
    _gate_fwd,
    _launch,
    _record,
    _sum_partials,
    _sum_splits,
    _vec_stride,
    excite_outputs,
    keeps_gate_input,
)

# --------------------------------------------------------------------------------------
# FC form
# --------------------------------------------------------------------------------------


@triton.jit
def _excite_fc_fwd_kernel(
    zsum_ptr,  # (SPLIT, B, C) partial sums of x over HW, contiguous
    w_ptr,  # (C, C) strided: (output channel, input channel)
    b_ptr,  # (C,) read only when HAS_B
    z_ptr,  # (B, C) out
    s_ptr,  # (B, C) out
    a_ptr,  # (B, C) out, written only when KEEP_A
    stride_wn,
    stride_wk,
    stride_b,
    B,
    C,
    split,
    HW,
    HAS_B: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
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
        z = _sum_splits(zsum_ptr, bk, mask_bk, split, B * C) / HW
        tl.store(z_ptr + bk, z, mask=mask_bk & (pid_n == 0))
        wt = tl.load(
            w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        ).to(acc_ty)
        acc = _dot(z, wt, acc, DOT_TF32, IS_FP64)
    if HAS_B:
        acc += tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0).to(acc_ty)[None, :]
    bn = offs_b.to(tl.int64)[:, None] * C + offs_n[None, :]
    mask_bn = mask_b[:, None] & mask_n[None, :]
    tl.store(s_ptr + bn, _gate_fwd(acc, GATE), mask=mask_bn)
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
    stride_wn,
    stride_wk,
    B,
    C,
    split,
    GATE: tl.constexpr,
    NEED_DZ: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    SINGLE_B_BLOCK: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
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
                u = _gate_bwd(dssum_ptr, s_ptr, a_ptr, bn, mask_b[:, None] & mask_n[None, :], split, B * C, GATE)
                if NEED_DZ:
                    w = tl.load(
                        w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                        mask=mask_n[:, None] & mask_k[None, :],
                        other=0.0,
                    ).to(acc_ty)
                    dz = _dot(u, w, dz, DOT_TF32, IS_FP64)
                # With the whole batch in one block, the weight gradients need no sum over
                # batch blocks: they come out of the same pass over u.
                if SINGLE_B_BLOCK and NEED_DW:
                    dw = _dot(tl.trans(u), z, tl.zeros((BLOCK_N, BLOCK_K), dtype=acc_ty), DOT_TF32, IS_FP64)
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
                u = _gate_bwd(dssum_ptr, s_ptr, a_ptr, bn, mask_b[:, None] & mask_n[None, :], split, B * C, GATE)
                if NEED_DB:
                    db += tl.sum(u, axis=0)
                if NEED_DW:
                    bk = offs_b.to(tl.int64)[:, None] * C + offs_k[None, :]
                    z = tl.load(z_ptr + bk, mask=mask_b[:, None] & mask_k[None, :], other=0.0)
                    dw = _dot(tl.trans(u), z, dw, DOT_TF32, IS_FP64)
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
    _record("excite_fc")
    if nb == 0:
        return z, s, a
    cfg = hz.excite_fc_config(c, x_dtype)
    grid = (hz.cdiv(nb, cfg.block_b), hz.cdiv(c, cfg.block_n))
    _launch(_excite_fc_fwd_kernel, grid)(
        zsum,
        w,
        w if b is None else b,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        *w.stride(),
        _vec_stride(b),
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
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """FC form: (dz, dW, dbias) in the accumulation dtype; None where `need` says so."""
    need_dz, need_dw, need_db = need
    split, nb, c = dssum.shape
    dt, dev = dssum.dtype, dssum.device
    dz = _empty(nb, c, dtype=dt, device=dev) if need_dz else None
    dw = _empty(c, c, dtype=dt, device=dev) if need_dw else None
    db = _empty(c, dtype=dt, device=dev) if need_db else None
    _record("excite_fc_bwd")
    if not any(need):
        return dz, dw, db
    if nb == 0:  # an empty batch: the weight gradients are sums over nothing
        return dz, None if dw is None else dw.zero_(), None if db is None else db.zero_()
    cfg = hz.excite_fc_config(c, x_dtype)
    grid = (hz.cdiv(c, cfg.block_k),)
    _launch(_excite_fc_bwd_kernel, grid)(
        dssum,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        w,
        dssum if dz is None else dz,
        dssum if dw is None else dw,
        dssum if db is None else db,
        *w.stride(),
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


# --------------------------------------------------------------------------------------
# Conv form
# --------------------------------------------------------------------------------------


@triton.jit
def _tap(offs_c, shift, C, CIRCULAR: tl.constexpr):
    """(channel index offs_c + shift, whether it is inside the padded vector's real part)."""
    src = offs_c + shift
    if CIRCULAR:
        # |shift| <= P <= C (checked by the caller), so one wrap is enough.
        src = tl.where(src < 0, src + C, tl.where(src >= C, src - C, src))
    return src, (src >= 0) & (src < C)


@triton.jit
def _excite_conv_fwd_kernel(
    zsum_ptr,  # (SPLIT, B, C) partial sums of x over HW, contiguous
    w_ptr,  # (K,) strided
    b_ptr,  # (1,) read only when HAS_B
    z_ptr,  # (B, C) out
    s_ptr,  # (B, C) out
    a_ptr,  # (B, C) out, written only when KEEP_A
    stride_w,
    B,
    C,
    K,
    split,
    HW,
    HAS_B: tl.constexpr,
    CIRCULAR: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_b = offs_b < B
    mask_c = offs_c < C
    rows = offs_b.to(tl.int64)[:, None] * C
    mask_bc = mask_b[:, None] & mask_c[None, :]
    bc = rows + offs_c[None, :]
    tl.store(z_ptr + bc, _sum_splits(zsum_ptr, bc, mask_bc, split, B * C) / HW, mask=mask_bc)

    pad = (K - 1) // 2
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty)
    for j in range(0, K):
        src, inside = _tap(offs_c, j - pad, C, CIRCULAR)
        m = mask_bc & inside[None, :]
        zj = _sum_splits(zsum_ptr, rows + src[None, :], m, split, B * C) / HW
        acc += tl.load(w_ptr + j * stride_w).to(acc_ty) * zj
    if HAS_B:
        acc += tl.load(b_ptr).to(acc_ty)
    tl.store(s_ptr + bc, _gate_fwd(acc, GATE), mask=mask_bc)
    if KEEP_A:
        tl.store(a_ptr + bc, acc, mask=mask_bc)


@triton.jit
def _excite_conv_bwd_kernel(
    dssum_ptr,  # (SPLIT, B, C) partial sums of g * x over HW, contiguous
    z_ptr,  # (B, C)
    s_ptr,  # (B, C)
    a_ptr,  # (B, C) read only when GATE needs it
    w_ptr,  # (K,) strided
    dz_ptr,  # (B, C) out, when NEED_DZ
    dw_ptr,  # (P, K) out: this program's share of dw, when NEED_DW
    db_ptr,  # (P,) out, when NEED_DB
    stride_w,
    B,
    C,
    K,
    split,
    CIRCULAR: tl.constexpr,
    GATE: tl.constexpr,
    NEED_DZ: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_k = tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    rows = offs_b.to(tl.int64)[:, None] * C
    pad = (K - 1) // 2

    dw = tl.zeros((BLOCK_K,), dtype=acc_ty)
    db = tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_bc = mask_b[:, None] & (offs_c < C)[None, :]
        bc = rows + offs_c[None, :]
        if NEED_DZ:
            # Tap j carried z[c] into the output c - j + P.
            dz = tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty)
            for j in range(0, K):
                src, inside = _tap(offs_c, pad - j, C, CIRCULAR)
                m = mask_bc & inside[None, :]
                uj = _gate_bwd(dssum_ptr, s_ptr, a_ptr, rows + src[None, :], m, split, B * C, GATE)
                dz += tl.load(w_ptr + j * stride_w).to(acc_ty) * uj
            tl.store(dz_ptr + bc, dz, mask=mask_bc)
        if NEED_DW or NEED_DB:
            # Rows and channels past the ends have u = 0 and add nothing.
            u = _gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_bc, split, B * C, GATE)
            if NEED_DB:
                db += u
            if NEED_DW:
                for j in range(0, K):
                    src, inside = _tap(offs_c, j - pad, C, CIRCULAR)
                    zj = tl.load(z_ptr + rows + src[None, :], mask=mask_bc & inside[None, :], other=0.0)
                    dw += tl.where(offs_k == j, tl.sum(tl.sum(u * zj, axis=1), axis=0), 0.0)
    if NEED_DW:
        tl.store(dw_ptr + pid * K + offs_k, dw, mask=offs_k < K)
    if NEED_DB:
        tl.store(db_ptr + pid, tl.sum(tl.sum(db, axis=1), axis=0))


def excite_conv_fwd(
    zsum: torch.Tensor,
    hw: int,
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    circular: bool,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conv form: from the squeeze's partial sums to (z, s, a), as excite_fwd. w: (K,), K odd."""
    split, nb, c = zsum.shape
    z, s, a = excite_outputs(zsum, gate)
    _record("excite_conv")
    if nb == 0:
        return z, s, a
    cfg = hz.excite_conv_fwd_config(nb, c)
    grid = (hz.cdiv(nb, cfg.block_b), hz.cdiv(c, cfg.block_c))
    _launch(_excite_conv_fwd_kernel, grid)(
        zsum,
        w,
        w if b is None else b,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        w.stride(0),
        nb,
        c,
        w.shape[0],
        split,
        hw,
        HAS_B=b is not None,
        CIRCULAR=circular,
        GATE=GATE_CODES[gate],
        KEEP_A=keeps_gate_input(gate),
        IS_FP64=zsum.dtype == torch.float64,
        BLOCK_B=cfg.block_b,
        BLOCK_C=cfg.block_c,
        num_warps=cfg.num_warps,
    )
    return z, s, a


def excite_conv_bwd(
    dssum: torch.Tensor,
    z: torch.Tensor,
    s: torch.Tensor,
    a: torch.Tensor,
    w: torch.Tensor,
    circular: bool,
    gate: str,
    need: tuple[bool, bool, bool],
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Conv form: (dz, dw, dbias) in the accumulation dtype; None where `need` says so."""
    need_dz, need_dw, need_db = need
    split, nb, c = dssum.shape
    k = w.shape[0]
    cfg = hz.excite_conv_bwd_config(nb, c, k)
    p = hz.cdiv(nb, cfg.block_b)
    dt, dev = dssum.dtype, dssum.device
    dz = _empty(nb, c, dtype=dt, device=dev) if need_dz else None
    dw = _empty(p, k, dtype=dt, device=dev) if need_dw else None
    db = _empty(p, 1, dtype=dt, device=dev) if need_db else None
    _record("excite_conv_bwd")
    if p > 0 and any(need):
        _launch(_excite_conv_bwd_kernel, (p,))(
            dssum,
            z,
            s,
            a if keeps_gate_input(gate) else s,
            w,
            dssum if dz is None else dz,
            dssum if dw is None else dw,
            dssum if db is None else db,
            w.stride(0),
            nb,
            c,
            k,
            split,
            CIRCULAR=circular,
            GATE=GATE_CODES[gate],
            NEED_DZ=need_dz,
            NEED_DW=need_dw,
            NEED_DB=need_db,
            IS_FP64=dt == torch.float64,
            BLOCK_B=cfg.block_b,
            BLOCK_C=cfg.block_c,
            BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps,
        )
    if p == 0:  # an empty batch: the weight gradients are sums over nothing
        dw = None if dw is None else torch.zeros(1, k, dtype=dt, device=dev)
        db = None if db is None else torch.zeros(1, 1, dtype=dt, device=dev)
    return dz, _sum_partials(dw), _sum_partials(db)
