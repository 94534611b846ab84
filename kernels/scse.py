"""scSE, concurrent spatial and channel squeeze-and-excitation (Roy et al., 2018): the memory
passes around the MLP excitation (excite_mlp.py).

    s_c[b,c]  = gate(W2 act(W1 z + b1) + b2),  z[b,c] = mean_hw x        channel gate
    q[b,hw]   = sum_c w_s[c] x[b,c,hw],  s_s = sigmoid(q + b_s)         spatial gate
    y         = x * (s_c[b,c] + s_s[b,hw])

    scse_squeeze      partial sums of x over HW splits (SE's squeeze)      reads x               N
    scse_scale        q of its tile, then y = x * (s_c + s_s)              reads x, writes y     2N
    scse_reduce_bwd   partial sums over HW tiles of g * x, s_s and dq      reads g and x         2N
    scse_dx_bwd       dx, and dw_s's partials per span                     reads g, x, writes dx 3N

Backward, with g = dL/dy:

    ds_c[b,c] = sum_hw g x          -> excite_bwd: dz, dW1, db1, dW2, db2
    dq[b,hw]  = (sum_c g x) s_s (1 - s_s)
    db_s = sum_{b,hw} dq,  dw_s[c] = sum_{b,hw} dq x
    dx = g (s_c + s_s) + dz[b,c] / HW + dq[b,hw] w_s[c]

The forward stores no q: a scale program takes a span of positions across every channel, a tile
at a time (heuristics.scse_scale_config), sums w_s x over C and scales the tile it holds, x read
once; s_c and w_s are loaded once a span. Where every channel of the layout's narrowest tile (a
position in channels_last, 32 contiguous bytes of each row in NCHW) exceeds SCSE_SCALE_MAX_TILE
elements, it sweeps the channel blocks twice, q then y: x is read twice (the second time from L1
or L2 on a GPU; counted twice). The squeeze is SE's kernel (passes._hw_sum_kernel, or the flat
one) with HW splits of at least SCSE_MIN_SPLIT_HW positions: its (SPLIT, B, C) rows, which the
excitation adds up in order, are at most 4 / (128 * element size) of N.

The backward's first pass takes one sample's tile of BLOCK_HW positions and walks every channel
block (the spatial terms sum over C), so q, sum_c g x and dq need no atomics: each program's sums
are its own, over channel blocks in order. It recomputes q from x (in its own channel order, so
its s_s may differ from the forward's in the last bit) and writes s_s and dq, (B, HW) in the
accumulation dtype (N / C each for fp32 x), which the dx pass reads, and its sum of dq, a share
of db_s; each HW tile's sums of g x are a (SPLIT, B, C) row for excite_bwd. The dx pass takes a
channel block and a span of positions (heuristics.scse_dx_config): s_c, dz and w_s are loaded
once a span, s_s and dq once a channel block. dw_s's partials, one (C,) row per span, and db_s's
shares are summed by torch's reductions (deterministic; parallel, where one program per column
would walk every partial in a row). See docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import empty, empty_like, launch, record
from . import heuristics as hz
from .common import acc_dtype, is_channels_last, partials, strides_of, sum_partials, weight_grad
from .passes import hw_sum


@triton.jit
def _spatial_bias(bs_ptr, HAS_BS: tl.constexpr, IS_FP64: tl.constexpr):
    """b_s in the accumulation dtype (0 without a bias)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    b_s = tl.zeros((), dtype=acc_ty)
    if HAS_BS:
        b_s = tl.load(bs_ptr).to(acc_ty)
    return b_s


@triton.jit
def _scse_scale_kernel(
    x_ptr,  # (B, C, HW) strided
    s_ptr,  # (B, C) acc dtype: the channel gate
    ws_ptr,  # (C,) the spatial gate's weights
    bs_ptr,  # (1,) its bias, read only when HAS_BS
    y_ptr,  # (B, C, HW) strided out
    stride_xb, stride_xc, stride_xhw,
    stride_yb, stride_yc, stride_yhw,
    stride_ws,
    C, HW, span,
    HAS_BS: tl.constexpr, IS_FP64: tl.constexpr, ONE_SWEEP: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    """y = x (s_c + s_s) on one sample's `span` positions (a multiple of BLOCK_HW), a tile of
    BLOCK_HW at a time, q summed here over every channel: from the tile in registers (ONE_SWEEP,
    BLOCK_C >= C; s_c and w_s loaded once for the span), else over a first sweep of channel blocks."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    num_spans = tl.cdiv(HW, span)
    hw_start = (pid % num_spans) * span
    hw_end = tl.minimum(hw_start + span, HW)
    sample = (pid // num_spans).to(tl.int64)
    x_ptr += sample * stride_xb
    y_ptr += sample * stride_yb
    s_ptr += sample * C
    b_s = _spatial_bias(bs_ptr, HAS_BS, IS_FP64)

    if ONE_SWEEP:
        offs_c = tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        rows_c = offs_c.to(tl.int64)[:, None]
        w = tl.load(ws_ptr + offs_c * stride_ws, mask=mask_c, other=0.0).to(acc_ty)
        sc = tl.load(s_ptr + offs_c, mask=mask_c, other=0.0)
        for hw0 in range(hw_start, hw_end, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mask = mask_c[:, None] & (offs_hw < hw_end)[None, :]
            val = tl.load(x_ptr + rows_c * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0)
            val = val.to(acc_ty)
            ss = 1.0 / (1.0 + tl.exp(-(tl.sum(val * w[:, None], axis=0) + b_s)))
            out = val * (sc[:, None] + ss[None, :])
            y_offs = rows_c * stride_yc + offs_hw[None, :] * stride_yhw
            tl.store(y_ptr + y_offs, out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        for hw0 in range(hw_start, hw_end, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mask_hw = offs_hw < hw_end
            q = tl.zeros((BLOCK_HW,), dtype=acc_ty)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                mask = mask_c[:, None] & mask_hw[None, :]
                x_offs = offs_c.to(tl.int64)[:, None] * stride_xc + offs_hw[None, :] * stride_xhw
                val = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(acc_ty)
                w = tl.load(ws_ptr + offs_c * stride_ws, mask=mask_c, other=0.0).to(acc_ty)
                q += tl.sum(val * w[:, None], axis=0)
            ss = 1.0 / (1.0 + tl.exp(-(q + b_s)))
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                mask = mask_c[:, None] & mask_hw[None, :]
                rows_c = offs_c.to(tl.int64)[:, None]
                val = tl.load(x_ptr + rows_c * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0)
                sc = tl.load(s_ptr + offs_c, mask=mask_c, other=0.0)
                out = val.to(acc_ty) * (sc[:, None] + ss[None, :])
                y_offs = rows_c * stride_yc + offs_hw[None, :] * stride_yhw
                tl.store(y_ptr + y_offs, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scse_reduce_bwd_kernel(
    g_ptr,  # (B, C, HW) strided
    x_ptr,  # (B, C, HW) strided
    ws_ptr,  # (C,) the spatial gate's weights
    bs_ptr,  # (1,) its bias, read only when HAS_BS
    dssum_ptr,  # (SPLIT, B, C) out, acc dtype: each HW tile's sums of g * x
    ss_ptr,  # (B, HW) out, acc dtype: s_s
    dq_ptr,  # (B, HW) out, acc dtype: dq = (sum_c g x) s_s (1 - s_s)
    dbs_ptr,  # (P,) out, acc dtype: this program's share of db_s (the sum of its dq)
    stride_gb, stride_gc, stride_ghw,
    stride_xb, stride_xc, stride_xhw,
    stride_ws,
    B, C, HW,
    HAS_BS: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    num_hw_blocks = tl.cdiv(HW, BLOCK_HW)
    pid_hw = pid % num_hw_blocks
    sample = (pid // num_hw_blocks).to(tl.int64)
    g_ptr += sample * stride_gb
    x_ptr += sample * stride_xb
    offs_hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    mask_hw = offs_hw < HW
    row = (pid_hw.to(tl.int64) * B + sample) * C  # this tile's (B, C) row of partial sums

    q = tl.zeros((BLOCK_HW,), dtype=acc_ty)
    gx_c = tl.zeros((BLOCK_HW,), dtype=acc_ty)  # sum_c g x
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_c[:, None] & mask_hw[None, :]
        rows_c = offs_c.to(tl.int64)[:, None]
        val = tl.load(x_ptr + rows_c * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0).to(acc_ty)
        g = tl.load(g_ptr + rows_c * stride_gc + offs_hw[None, :] * stride_ghw, mask=mask, other=0.0).to(acc_ty)
        w = tl.load(ws_ptr + offs_c * stride_ws, mask=mask_c, other=0.0).to(acc_ty)
        q += tl.sum(val * w[:, None], axis=0)
        gx = g * val
        gx_c += tl.sum(gx, axis=0)
        tl.store(dssum_ptr + row + offs_c, tl.sum(gx, axis=1), mask=mask_c)

    ss = 1.0 / (1.0 + tl.exp(-(q + _spatial_bias(bs_ptr, HAS_BS, IS_FP64))))
    dq = gx_c * ss * (1.0 - ss)  # 0 past HW, where gx_c is
    bhw = sample * HW + offs_hw
    tl.store(ss_ptr + bhw, ss, mask=mask_hw)
    tl.store(dq_ptr + bhw, dq, mask=mask_hw)
    tl.store(dbs_ptr + pid, tl.sum(dq, axis=0))


@triton.jit
def _scse_dx_bwd_kernel(
    g_ptr,  # (B, C, HW) strided
    x_ptr,  # (B, C, HW) strided, read only when NEED_DWS
    s_ptr,  # (B, C) acc dtype: the channel gate, read only when NEED_DX
    ss_ptr,  # (B, HW) acc dtype: the spatial gate, read only when NEED_DX
    dz_ptr,  # (B, C) acc dtype, read only when NEED_DX
    dq_ptr,  # (B, HW) acc dtype
    ws_ptr,  # (C,), read only when NEED_DX
    dx_ptr,  # (B, C, HW) strided out, written only when NEED_DX
    dws_ptr,  # (B * SPANS, C) out, acc dtype: each span's share of dw_s, when NEED_DWS
    stride_gb, stride_gc, stride_ghw,
    stride_xb, stride_xc, stride_xhw,
    stride_dxb, stride_dxc, stride_dxhw,
    stride_ws,
    C, HW, span,
    NEED_DX: tl.constexpr, NEED_DWS: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    """dx = g (s_c + s_s) + dz / HW + dq w_s on one sample's channel block and `span` positions (a
    multiple of BLOCK_HW), a tile at a time, and sum_hw dq x over them."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    num_spans = tl.cdiv(HW, span)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    pid_hw = pid % num_spans
    pid_c = (pid // num_spans) % num_c_blocks
    sample = (pid // (num_spans * num_c_blocks)).to(tl.int64)
    hw_start = pid_hw * span
    hw_end = tl.minimum(hw_start + span, HW)
    g_ptr += sample * stride_gb
    dx_ptr += sample * stride_dxb
    if NEED_DWS:
        x_ptr += sample * stride_xb
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    rows_c = offs_c.to(tl.int64)[:, None]
    if NEED_DX:
        bc = sample * C + offs_c
        sc = tl.load(s_ptr + bc, mask=mask_c, other=0.0)
        dz_hw = tl.load(dz_ptr + bc, mask=mask_c, other=0.0) / HW
        w = tl.load(ws_ptr + offs_c * stride_ws, mask=mask_c, other=0.0).to(acc_ty)

    acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=acc_ty)  # dq x, summed over the span's tiles
    for hw0 in range(hw_start, hw_end, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask_hw = offs_hw < hw_end
        mask = mask_c[:, None] & mask_hw[None, :]
        bhw = sample * HW + offs_hw
        dq = tl.load(dq_ptr + bhw, mask=mask_hw, other=0.0)
        if NEED_DX:
            ss = tl.load(ss_ptr + bhw, mask=mask_hw, other=0.0)
            g = tl.load(g_ptr + rows_c * stride_gc + offs_hw[None, :] * stride_ghw, mask=mask, other=0.0)
            out = g.to(acc_ty) * (sc[:, None] + ss[None, :]) + dz_hw[:, None] + w[:, None] * dq[None, :]
            dx_offs = rows_c * stride_dxc + offs_hw[None, :] * stride_dxhw
            tl.store(dx_ptr + dx_offs, out.to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_DWS:
            xv = tl.load(x_ptr + rows_c * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0)
            acc += xv.to(acc_ty) * dq[None, :]
    if NEED_DWS:
        tl.store(dws_ptr + (sample * num_spans + pid_hw) * C + offs_c, tl.sum(acc, axis=1), mask=mask_c)


def channel_stride(ws: torch.Tensor) -> int:
    """The stride between the spatial gate's weights: ws is (C,), or the sSE conv's (1, C, 1, ...)
    weight as it is."""
    return ws.stride(0) if ws.dim() == 1 else ws.stride(1)


def _channels_last(x: torch.Tensor) -> bool:
    return is_channels_last(strides_of(x, None))


def _config(x: torch.Tensor) -> hz.ScseConfig:
    b, c, h, w = x.shape
    return hz.scse_config(b, c, h * w, _channels_last(x), hz.sm_count(x.device))


def _grid(x: torch.Tensor, block_hw: int) -> int:
    return x.shape[0] * hz.cdiv(x.shape[2] * x.shape[3], block_hw)


def scse_squeeze_fwd(x: torch.Tensor) -> torch.Tensor:
    """The partial sums of x over HW, (SPLIT, B, C) in the accumulation dtype, which excite_fwd
    adds up into z: SE's squeeze (passes.hw_sum) on heuristics.scse_squeeze_config's splits."""
    b, c, h, w = x.shape
    record("scse_squeeze")
    cfg = hz.scse_squeeze_config(b, c, h * w, _channels_last(x), x.element_size(), hz.sm_count(x.device))
    return hw_sum(x, cfg=cfg)[0]


def scse_scale_fwd(x: torch.Tensor, s: torch.Tensor, ws: torch.Tensor, bs: Optional[torch.Tensor]) -> torch.Tensor:
    """y = x * (s[b, c] + sigmoid(q[b, hw] + bs)), q[b, hw] = sum_c ws[c] x[b, c, hw], in x's
    dtype and memory format. s: (B, C), contiguous, in the accumulation dtype; ws: (C,); bs: (1,)
    or None."""
    _, c, h, w = x.shape
    hw = h * w
    cfg = hz.scse_scale_config(c, hw, _channels_last(x), x.element_size())
    y = empty_like(x)
    record("scse_scale")
    if x.numel():
        launch(_scse_scale_kernel, (_grid(x, cfg.span),))(
            x, s, ws, s if bs is None else bs, y, *strides_of(x, None), *strides_of(y, None), channel_stride(ws),
            c, hw, cfg.span,
            HAS_BS=bs is not None, IS_FP64=x.dtype == torch.float64, ONE_SWEEP=cfg.one_sweep,
            BLOCK_C=cfg.block_c, BLOCK_HW=cfg.block_hw, num_warps=cfg.num_warps,
        )  # fmt: skip
    return y


def scse_reduce_bwd(
    g: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, bs: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dssum, ss, dq, dbs): the partial sums of g * x over HW tiles, (SPLIT, B, C), the channel
    gate's gradient before excite_bwd; the spatial gate s_s = sigmoid(sum_c ws[c] x + bs) and
    dq = (sum_c g x) s_s (1 - s_s), the gradient of its input, (B, HW) each; and db_s's shares,
    (programs, 1), one per program (`scse_db_s` adds them up), or db_s itself, (1,), where one
    program writes it. All in the accumulation dtype; g and x of any flattenable strides."""
    assert g.shape == x.shape
    b, c, h, w = x.shape
    hw = h * w
    cfg = _config(x)
    acc = acc_dtype(x.dtype)
    programs = _grid(x, cfg.block_hw)
    dssum = empty(hz.cdiv(hw, cfg.block_hw), b, c, dtype=acc, device=x.device)
    ss, dq = empty(b, hw, dtype=acc, device=x.device), empty(b, hw, dtype=acc, device=x.device)
    dbs = partials(programs, 1, dtype=acc, device=x.device)
    record("scse_reduce_bwd")
    if x.numel():
        launch(_scse_reduce_bwd_kernel, (programs,))(
            g, x, ws, ws if bs is None else bs, dssum, ss, dq, dbs, *strides_of(g, None), *strides_of(x, None),
            channel_stride(ws), b, c, hw,
            HAS_BS=bs is not None, IS_FP64=x.dtype == torch.float64, BLOCK_C=cfg.block_c, BLOCK_HW=cfg.block_hw,
            num_warps=cfg.num_warps,
        )  # fmt: skip
    return dssum, ss, dq, dbs


def scse_dx_bwd(
    g: torch.Tensor,
    x: torch.Tensor,
    s: torch.Tensor,
    dz: Optional[torch.Tensor],
    ss: torch.Tensor,
    dq: torch.Tensor,
    ws: torch.Tensor,
    need_dx: bool,
    need_dws: bool,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dx, dws): dx = g * (s[b, c] + ss[b, hw]) + dz[b, c] / HW + dq[b, hw] * ws[c] in x's dtype
    and memory format; dws[c] = sum_{b, hw} dq x in ws's shape and dtype (each span's share in the
    accumulation dtype, added up in order by common.sum_partials). None where not needed; dz may be
    None without need_dx."""
    b, c, h, w = x.shape
    hw = h * w
    cfg = hz.scse_dx_config(c, hw, _channels_last(x))
    spans = hz.cdiv(hw, cfg.span)
    dx = empty_like(x) if need_dx else None
    p = b * spans
    launched_sum = p <= hz.SCSE_LAUNCHED_SUM_MAX_SHARES
    # where a launch adds the shares up, the kernel writes the gradient itself if it is the one share
    out_dtype = ws.dtype if launched_sum else None
    parts = partials(p, dtype=acc_dtype(x.dtype), device=x.device, out_dtype=out_dtype, like=ws) if need_dws else None
    record("scse_dx_bwd")
    if not (need_dx or need_dws):
        return None, None
    if x.numel():
        xs = strides_of(x, None)
        launch(_scse_dx_bwd_kernel, (b * hz.cdiv(c, cfg.block_c) * spans,))(
            g, x, s, ss, s if dz is None else dz, dq, ws, g if dx is None else dx, s if parts is None else parts,
            *strides_of(g, None), *xs, *strides_of(dx, xs), channel_stride(ws), c, hw, cfg.span,
            NEED_DX=need_dx, NEED_DWS=need_dws, IS_FP64=x.dtype == torch.float64,
            BLOCK_C=cfg.block_c, BLOCK_HW=cfg.block_hw, num_warps=cfg.num_warps,
        )  # fmt: skip
    if parts is None:
        return dx, None
    if launched_sum:
        return dx, sum_partials(p, parts, dtypes=(ws.dtype,), likes=(ws,))[0]
    return dx, weight_grad(ws, ws.dtype).copy_(parts.sum(0))


def scse_db_s(shares: torch.Tensor, bs: torch.Tensor) -> torch.Tensor:
    """db_s, (1,), from scse_reduce_bwd's shares: in bs's dtype where a launch adds them up, in
    the accumulation dtype where torch's reduction does (the op casts it)."""
    p = shares.shape[0] if shares.dim() == 2 else 1
    if p <= hz.SCSE_LAUNCHED_SUM_MAX_SHARES:
        return sum_partials(p, shares, dtypes=(bs.dtype,))[0]
    return shares.sum(0)
