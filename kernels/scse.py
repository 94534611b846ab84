"""scSE, concurrent spatial and channel squeeze-and-excitation (Roy et al., 2018): the memory
passes around the MLP excitation (excite_mlp.py).

    s_c[b,c]  = gate(W2 act(W1 z + b1) + b2),  z[b,c] = mean_hw x        channel gate
    q[b,hw]   = sum_c w_s[c] x[b,c,hw],  s_s = sigmoid(q + b_s)         spatial gate
    y         = x * (s_c[b,c] + s_s[b,hw])

    scse_squeeze      partial sums of x over HW tiles, and q               reads x            N
    scse_scale        y = x * (s_c + s_s)                                  reads x, writes y  2N
    scse_reduce_bwd   partial sums over HW tiles of g * x, and dq          reads g and x      2N
    scse_dx_bwd       dx, and dw_s's partials per program                  reads g, x, writes dx 3N

Backward, with g = dL/dy:

    ds_c[b,c] = sum_hw g x          -> excite_bwd: dz, dW1, db1, dW2, db2
    dq[b,hw]  = (sum_c g x) s_s (1 - s_s)
    db_s = sum_{b,hw} dq,  dw_s[c] = sum_{b,hw} dq x
    dx = g (s_c + s_s) + dz[b,c] / HW + dq[b,hw] w_s[c]

A program takes one sample's tile of BLOCK_HW positions and walks every channel block (the
spatial terms sum over C), so q, dq and dw_s need no atomics: each program's sums are its own,
written once, and q and dq run over channel blocks in order. The HW tiles' partial sums are
(SPLIT, B, C) rows that the excitation adds up in order, as it does the squeeze's. q and dq are
(B, HW) in the accumulation dtype (N / C for fp32 x); dw_s's partials, one (C,) row per program,
and db_s are summed by torch's reductions (deterministic; parallel, where one program per column
would walk every partial in a row). See docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import empty, empty_like, launch, record
from . import heuristics as hz
from .common import acc_dtype, is_channels_last, strides_of


@triton.jit
def _spatial_gate(q_ptr, bs_ptr, offs_hw, mask_hw, HAS_BS: tl.constexpr):
    """s_s = sigmoid(q + b_s) on one sample's positions offs_hw, in q's dtype (the accumulation dtype)."""
    q = tl.load(q_ptr + offs_hw, mask=mask_hw, other=0.0)
    if HAS_BS:
        q += tl.load(bs_ptr).to(q.dtype)
    return 1.0 / (1.0 + tl.exp(-q))


@triton.jit
def _scse_squeeze_kernel(
    x_ptr,  # (B, C, HW) strided
    g_ptr,  # (B, C, HW) strided; read only when HAS_G (the sums are then of g * x)
    ws_ptr,  # (C,) the spatial gate's weights; read only when not HAS_G
    bs_ptr,  # (1,) its bias; read only when HAS_G and HAS_BS
    q_ptr,  # (B, HW) acc dtype: q out (not HAS_G), q in (HAS_G)
    zsum_ptr,  # (SPLIT, B, C) out, acc dtype: each HW tile's sums of x (or of g * x)
    dq_ptr,  # (B, HW) out when HAS_G, acc dtype: dq = (sum_c g x) s_s (1 - s_s)
    stride_xb, stride_xc, stride_xhw,
    stride_gb, stride_gc, stride_ghw,
    stride_ws,
    B, C, HW,
    HAS_G: tl.constexpr, HAS_BS: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    num_hw_blocks = tl.cdiv(HW, BLOCK_HW)
    pid_hw = pid % num_hw_blocks
    pid_b = pid // num_hw_blocks
    sample = pid_b.to(tl.int64)
    x_ptr += sample * stride_xb
    if HAS_G:
        g_ptr += sample * stride_gb
    offs_hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    mask_hw = offs_hw < HW
    row = (pid_hw.to(tl.int64) * B + sample) * C  # this tile's (B, C) row of partial sums

    across = tl.zeros((BLOCK_HW,), dtype=acc_ty)  # q, or sum_c g x
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        rows_c = offs_c.to(tl.int64)[:, None]
        val = tl.load(x_ptr + rows_c * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0).to(acc_ty)
        if HAS_G:
            g = tl.load(g_ptr + rows_c * stride_gc + offs_hw[None, :] * stride_ghw, mask=mask, other=0.0)
            val *= g.to(acc_ty)
            across += tl.sum(val, axis=0)
        else:
            w = tl.load(ws_ptr + offs_c * stride_ws, mask=mask_c, other=0.0).to(acc_ty)
            across += tl.sum(val * w[:, None], axis=0)
        tl.store(zsum_ptr + row + offs_c, tl.sum(val, axis=1), mask=mask_c)

    bhw = sample * HW + offs_hw
    if HAS_G:
        ss = _spatial_gate(q_ptr + sample * HW, bs_ptr, offs_hw, mask_hw, HAS_BS)
        tl.store(dq_ptr + bhw, across * ss * (1.0 - ss), mask=mask_hw)
    else:
        tl.store(q_ptr + bhw, across, mask=mask_hw)


@triton.jit
def _scse_scale_kernel(
    x_ptr,  # (B, C, HW) strided: x forward, g backward
    xx_ptr,  # (B, C, HW) strided: x, read only when NEED_DWS (backward)
    s_ptr,  # (B, C) acc dtype: the channel gate
    q_ptr,  # (B, HW) acc dtype: the spatial gate's input before its bias
    bs_ptr,  # (1,) read only when HAS_BS
    dz_ptr,  # (B, C) acc dtype, read only when BWD
    dq_ptr,  # (B, HW) acc dtype, read only when BWD
    ws_ptr,  # (C,), read only when BWD
    y_ptr,  # (B, C, HW) strided out: y forward, dx backward; written only when NEED_DX
    dws_ptr,  # (P, C) out, acc dtype: this program's share of dw_s, when NEED_DWS
    stride_xb, stride_xc, stride_xhw,
    stride_xxb, stride_xxc, stride_xxhw,
    stride_yb, stride_yc, stride_yhw,
    stride_ws,
    C, HW,
    HAS_BS: tl.constexpr, BWD: tl.constexpr, NEED_DX: tl.constexpr, NEED_DWS: tl.constexpr,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    """Forward: y = x (s_c + s_s). Backward (BWD, x_ptr holding g): dx = g (s_c + s_s) + dz / HW
    + dq w_s, and sum_hw dq x of this program's tile."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    num_hw_blocks = tl.cdiv(HW, BLOCK_HW)
    pid_hw = pid % num_hw_blocks
    pid_b = pid // num_hw_blocks
    sample = pid_b.to(tl.int64)
    x_ptr += sample * stride_xb
    y_ptr += sample * stride_yb
    if NEED_DWS:
        xx_ptr += sample * stride_xxb
    offs_hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    mask_hw = offs_hw < HW
    ss = _spatial_gate(q_ptr + sample * HW, bs_ptr, offs_hw, mask_hw, HAS_BS)
    if BWD:
        dq = tl.load(dq_ptr + sample * HW + offs_hw, mask=mask_hw, other=0.0)

    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        rows_c = offs_c.to(tl.int64)[:, None]
        bc = sample * C + offs_c
        if NEED_DX:
            sc = tl.load(s_ptr + bc, mask=mask_c, other=0.0)
            val = tl.load(x_ptr + rows_c * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0)
            out = val.to(acc_ty) * (sc[:, None] + ss[None, :])
            if BWD:
                dz = tl.load(dz_ptr + bc, mask=mask_c, other=0.0)
                w = tl.load(ws_ptr + offs_c * stride_ws, mask=mask_c, other=0.0).to(acc_ty)
                out += (dz / HW)[:, None] + w[:, None] * dq[None, :]
            tl.store(
                y_ptr + rows_c * stride_yc + offs_hw[None, :] * stride_yhw, out.to(y_ptr.dtype.element_ty), mask=mask
            )
        if NEED_DWS:
            xv = tl.load(xx_ptr + rows_c * stride_xxc + offs_hw[None, :] * stride_xxhw, mask=mask, other=0.0)
            tl.store(dws_ptr + pid.to(tl.int64) * C + offs_c, tl.sum(xv.to(acc_ty) * dq[None, :], axis=1), mask=mask_c)


def _config(x: torch.Tensor) -> hz.ScseConfig:
    b, c, h, w = x.shape
    return hz.scse_config(b, c, h * w, is_channels_last(strides_of(x, None)), hz.sm_count(x.device))


def _grid(x: torch.Tensor, cfg: hz.ScseConfig) -> int:
    return x.shape[0] * hz.cdiv(x.shape[2] * x.shape[3], cfg.block_hw)


def _reduced(x: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The first pass's two outputs, in the accumulation dtype: a (SPLIT, B, C) row of partial sums
    over each HW tile, and a (B, HW) value per position (the reduction over C)."""
    b, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    sums = empty(hz.cdiv(h * w, cfg.block_hw), b, c, dtype=acc, device=x.device)
    return sums, empty(b, h * w, dtype=acc, device=x.device)


def scse_squeeze_fwd(x: torch.Tensor, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(zsum, q): the partial sums of x over HW tiles, (SPLIT, B, C), which excite_fwd adds up into
    z, and q[b, hw] = sum_c ws[c] x[b, c, hw], (B, HW); both in the accumulation dtype. ws: (C,)."""
    b, c, h, w = x.shape
    hw = h * w
    cfg = _config(x)
    zsum, q = _reduced(x, cfg)
    record("scse_squeeze")
    if x.numel():
        xs = strides_of(x, None)
        launch(_scse_squeeze_kernel, (_grid(x, cfg),))(
            x, x, ws, ws, q, zsum, q, *xs, *xs, ws.stride(0), b, c, hw,
            HAS_G=False, HAS_BS=False, IS_FP64=x.dtype == torch.float64,
            BLOCK_C=cfg.block_c, BLOCK_HW=cfg.block_hw, num_warps=cfg.num_warps,
        )  # fmt: skip
    return zsum, q


def scse_scale_fwd(x: torch.Tensor, s: torch.Tensor, q: torch.Tensor, bs: Optional[torch.Tensor]) -> torch.Tensor:
    """y = x * (s[b, c] + sigmoid(q[b, hw] + bs)), in x's dtype and memory format. s: (B, C) and
    q: (B, HW), contiguous, in the accumulation dtype; bs: (1,) or None."""
    cfg = _config(x)
    y = empty_like(x)
    record("scse_scale")
    if x.numel():
        xs, ys = strides_of(x, None), strides_of(y, None)
        launch(_scse_scale_kernel, (_grid(x, cfg),))(
            x, x, s, q, s if bs is None else bs, s, q, s, y, s, *xs, *xs, *ys, 0, x.shape[1], x.shape[2] * x.shape[3],
            HAS_BS=bs is not None, BWD=False, NEED_DX=True, NEED_DWS=False, IS_FP64=x.dtype == torch.float64,
            BLOCK_C=cfg.block_c, BLOCK_HW=cfg.block_hw, num_warps=cfg.num_warps,
        )  # fmt: skip
    return y


def scse_reduce_bwd(
    g: torch.Tensor, x: torch.Tensor, q: torch.Tensor, bs: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dssum, dq): the partial sums of g * x over HW tiles, (SPLIT, B, C), the channel gate's
    gradient before excite_bwd; dq = (sum_c g x) s_s (1 - s_s), (B, HW), the gradient of the
    spatial gate's input. Both in the accumulation dtype; g and x of any flattenable strides."""
    assert g.shape == x.shape
    b, c, h, w = x.shape
    hw = h * w
    cfg = _config(x)
    dssum, dq = _reduced(x, cfg)
    record("scse_reduce_bwd")
    if x.numel():
        launch(_scse_squeeze_kernel, (_grid(x, cfg),))(
            x, g, q, q if bs is None else bs, q, dssum, dq, *strides_of(x, None), *strides_of(g, None), 0, b, c, hw,
            HAS_G=True, HAS_BS=bs is not None, IS_FP64=x.dtype == torch.float64,
            BLOCK_C=cfg.block_c, BLOCK_HW=cfg.block_hw, num_warps=cfg.num_warps,
        )  # fmt: skip
    return dssum, dq


def scse_dx_bwd(
    g: torch.Tensor,
    x: torch.Tensor,
    s: torch.Tensor,
    dz: Optional[torch.Tensor],
    q: torch.Tensor,
    bs: Optional[torch.Tensor],
    dq: torch.Tensor,
    ws: torch.Tensor,
    need_dx: bool,
    need_dws: bool,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dx, dws): dx = g * (s[b, c] + s_s) + dz[b, c] / HW + dq[b, hw] * ws[c] in x's dtype and
    memory format; dws[c] = sum_{b, hw} dq x in the accumulation dtype (each program's share,
    summed in torch's fixed order). None where not needed; dz may be None without need_dx."""
    _, c, h, w = x.shape
    hw = h * w
    cfg = _config(x)
    dx = empty_like(x) if need_dx else None
    programs = _grid(x, cfg)
    parts = empty(programs, c, dtype=acc_dtype(x.dtype), device=x.device) if need_dws else None
    record("scse_dx_bwd")
    if not (need_dx or need_dws):
        return None, None
    if x.numel():
        xs = strides_of(x, None)
        launch(_scse_scale_kernel, (programs,))(
            g, x, s, q, s if bs is None else bs, s if dz is None else dz, dq, ws,
            g if dx is None else dx, s if parts is None else parts,
            *strides_of(g, None), *xs, *strides_of(dx, xs), ws.stride(0), c, hw,
            HAS_BS=bs is not None, BWD=True, NEED_DX=need_dx, NEED_DWS=need_dws, IS_FP64=x.dtype == torch.float64,
            BLOCK_C=cfg.block_c, BLOCK_HW=cfg.block_hw, num_warps=cfg.num_warps,
        )  # fmt: skip
    return dx, (None if parts is None else parts.sum(0))
