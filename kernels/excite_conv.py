"""The excitation of the conv form (ECA, and CECA with circular padding): a k-tap conv across the
channel axis of the pooled vector, K odd, P = (K - 1) // 2, z[b, c'] = 0 outside 0 <= c' < C
(zeros) or z[b, c' mod C] (circular).

    a[b,c] = sum_j w[j] z[b, c + j - P] + bias,   s = gate(a)  w: (K,), bias: (1,) or none
Backward:
    dz[b,c] = sum_j w[j] u[b, c - j + P],   dw[j] = sum_{b,c} u[b,c] z[b, c + j - P]

Weight gradients are per-program partials summed afterwards in a fixed order. See docs/DESIGN.md.
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
    excite_outputs,
    gate_bwd,
    gate_fwd,
    keeps_gate_input,
    partials,
    sum_partials,
    sum_splits,
)


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
    B, C, K, split, HW,
    HAS_B: tl.constexpr, CIRCULAR: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_b = offs_b < B
    mask_c = offs_c < C
    rows = offs_b.to(tl.int64)[:, None] * C
    mask_bc = mask_b[:, None] & mask_c[None, :]
    bc = rows + offs_c[None, :]
    tl.store(z_ptr + bc, sum_splits(zsum_ptr, bc, mask_bc, split, B * C) / HW, mask=mask_bc)

    pad = (K - 1) // 2
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty)
    for j in range(0, K):
        src, inside = _tap(offs_c, j - pad, C, CIRCULAR)
        m = mask_bc & inside[None, :]
        zj = sum_splits(zsum_ptr, rows + src[None, :], m, split, B * C) / HW
        acc += tl.load(w_ptr + j * stride_w).to(acc_ty) * zj
    if HAS_B:
        acc += tl.load(b_ptr).to(acc_ty)
    tl.store(s_ptr + bc, gate_fwd(acc, GATE), mask=mask_bc)
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
    dw_ptr,  # (P, K) out: this program's share of dw (dw itself for one program), when NEED_DW
    db_ptr,  # (P,) out, when NEED_DB
    stride_w,
    B, C, K, split,
    CIRCULAR: tl.constexpr, GATE: tl.constexpr, NEED_DZ: tl.constexpr, NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
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
                uj = gate_bwd(dssum_ptr, s_ptr, a_ptr, rows + src[None, :], m, split, B * C, GATE)
                dz += tl.load(w_ptr + j * stride_w).to(acc_ty) * uj
            tl.store(dz_ptr + bc, dz, mask=mask_bc)
        if NEED_DW or NEED_DB:
            # Rows and channels past the ends have u = 0 and add nothing.
            u = gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_bc, split, B * C, GATE)
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
    record("excite_conv")
    if nb == 0:
        return z, s, a
    cfg = hz.excite_conv_fwd_config(nb, c)
    grid = (hz.cdiv(nb, cfg.block_b), hz.cdiv(c, cfg.block_c))
    launch(_excite_conv_fwd_kernel, grid)(
        zsum,
        w,
        w if b is None else b,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        w.stride(-1),
        nb,
        c,
        w.shape[-1],
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
    grad_dtypes: Optional[tuple[torch.dtype, torch.dtype]] = None,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Conv form: (dz, dw, dbias), dz in the accumulation dtype, dw and dbias in grad_dtypes (the
    op passes the parameters', so that no cast follows; default the accumulation dtype); None
    where `need` says so."""
    need_dz, need_dw, need_db = need
    split, nb, c = dssum.shape
    k = w.shape[-1]  # the taps: (K,), or a Conv1d(1, 1, K)'s weight as it is
    cfg = hz.excite_conv_bwd_config(nb, c, k)
    p = hz.cdiv(nb, cfg.block_b)
    dt, dev = dssum.dtype, dssum.device
    grad_dtypes = grad_dtypes or (dt, dt)
    dz = empty(nb, c, dtype=dt, device=dev) if need_dz else None
    dw = partials(p, *w.shape, dtype=dt, device=dev, out_dtype=grad_dtypes[0]) if need_dw else None
    db = partials(p, 1, dtype=dt, device=dev, out_dtype=grad_dtypes[1]) if need_db else None
    record("excite_conv_bwd")
    if p > 0 and any(need):
        launch(_excite_conv_bwd_kernel, (p,))(
            dssum,
            z,
            s,
            a if keeps_gate_input(gate) else s,
            w,
            dssum if dz is None else dz,
            dssum if dw is None else dw,
            dssum if db is None else db,
            w.stride(-1),
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
        dw = None if dw is None else torch.zeros(w.shape, dtype=grad_dtypes[0], device=dev)
        db = None if db is None else torch.zeros(1, dtype=grad_dtypes[1], device=dev)
    return (dz, *sum_partials(p, dw, db, dtypes=grad_dtypes))
