"""The streamed forward and backward of the MLP form, one persistent launch each, for x past L2.

Programs take tickets in a fixed order (_stream_ticket): the first pass of sample b + LAG next to
the second pass of sample b, so that a sample's second pass re-reads it from L2. The last
first-pass tile of a chunk of samples runs the chunk's excitation; the chunk's second-pass tiles
wait for its flag. See docs/DESIGN.md for the traffic and the ordering proof.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import empty, empty_like, launch, record
from . import heuristics as hz
from .common import (
    ACT_CODES,
    GATE_CODES,
    keeps_gate_input,
    matrix_strides,
    mlp_forward,
    partials,
    strides_of,
    sum_partials,
    vec_stride,
)
from .excite_mlp import excite_bwd_block, excite_fwd_block
from .passes import EVICT_FIRST, EVICT_LAST, hw_sum_range, scale_tile
from .sync import (
    arrive,
    check_waits,
    counts_at,
    flags_at,
    poisoned,
    publish,
    spins,
    take_ticket,
    wait_for,
    workspace,
)


@triton.jit
def _stream_ticket(ticket, B, LAG, tiles):
    """(second pass?, sample, tile) of a ticket number. The first passes of samples 0 .. LAG-1 come
    first; then, for each b, the first pass of sample b + LAG and the second pass of sample b;
    then the second passes left. A sample's second pass thus comes after the first passes of
    every sample up to LAG - 1 past it: its whole chunk (LAG is a multiple of the chunk)."""
    head = LAG * tiles
    u = ticket - head
    paired = (B - LAG) * 2 * tiles
    j = u // (2 * tiles)
    rr = u - j * (2 * tiles)
    v = u - paired
    in_head = ticket < head
    in_pair = (ticket >= head) & (u < paired)
    second = tl.where(in_head, 0, tl.where(in_pair, (rr >= tiles).to(tl.int32), 1))
    sample = tl.where(
        in_head, ticket // tiles, tl.where(in_pair, tl.where(rr < tiles, j + LAG, j), B - LAG + v // tiles)
    )
    tile = tl.where(in_head, ticket % tiles, tl.where(in_pair, rr % tiles, v % tiles))
    return second, sample, tile


@triton.jit
def _se_fwd_stream_kernel(
    x_ptr,  # (B, C, HW) strided
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    b2_ptr,  # (C,), read only when HAS_B2
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    res_ptr,  # (B, C, HW) strided residual, read only when HAS_R
    zsum_ptr,  # (HW_TILES, B, C) acc dtype: each tile's partial sums
    z_ptr,  # (B, C) acc dtype out
    s_ptr,  # (B, C) acc dtype out
    a_ptr,  # (B, C) acc dtype out, written only when KEEP_A
    y_ptr,  # (B, C, HW) strided output
    ws_ptr,  # int32, zeroed (sync.workspace): ticket, misses; done count per chunk; ready flag per chunk
    stride_xb, stride_xc, stride_xhw,
    stride_resb, stride_resc, stride_reshw,
    stride_yb, stride_yc, stride_yhw,
    stride_w1r, stride_w1c, stride_b1,
    stride_w2c, stride_w2r, stride_b2,
    B, C, R, HW, HW_TILE, hw_tiles, c_steps, chunk, LAG, num_chunks, max_polls,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr,
    HAS_D: tl.constexpr, HAS_R: tl.constexpr, RELU: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr,
    WAIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, EX_BLOCK_B: tl.constexpr,
    EX_BLOCK_C: tl.constexpr, EX_BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The MLP form's forward as one persistent launch (see _stream_ticket): a first-pass
    ticket sums one tile of x over its HW range; the last one of a chunk runs the chunk's
    excitation; a second-pass ticket scales one tile once its chunk's gate is out."""
    done_ptr = counts_at(ws_ptr)
    ready_ptr = flags_at(ws_ptr, num_chunks)
    tiles = tl.cdiv(tl.cdiv(C, BLOCK_C), c_steps) * hw_tiles  # per sample and pass
    total = 2 * B * tiles
    ticket = take_ticket(ws_ptr)
    while ticket < total:
        following = take_ticket(ws_ptr)  # in flight while this one runs
        second, pid_b, tile = _stream_ticket(ticket, B, LAG, tiles)
        sample = pid_b.to(tl.int64)
        group = tile // hw_tiles  # c_steps channel blocks
        hwt = tile - group * hw_tiles
        hw_start = hwt * HW_TILE
        hw_end = tl.minimum(hw_start + HW_TILE, HW)
        ck = pid_b // chunk
        if second == 0:
            for step in range(0, c_steps):
                offs_c = (group * c_steps + step) * BLOCK_C + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                part = hw_sum_range(
                    x_ptr + sample * stride_xb, stride_xc, stride_xhw, offs_c, mask_c, hw_start, hw_end,
                    BLOCK_C, BLOCK_HW, IS_FP64, X_EVICT=EVICT_LAST,  # the second pass re-reads x
                )  # fmt: skip
                tl.store(zsum_ptr + (hwt.to(tl.int64) * B + pid_b) * C + offs_c, part, mask=mask_c)
            b_start = ck * chunk
            b_end = tl.minimum(b_start + chunk, B)
            if arrive(done_ptr + ck, (b_end - b_start) * tiles):
                excite_fwd_block(
                    zsum_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, z_ptr, s_ptr, a_ptr,
                    stride_w1r, stride_w1c, stride_b1, stride_w2c, stride_w2r, stride_b2,
                    b_start, b_end, B, C, R, hw_tiles, HW, 0, 1,
                    HAS_B1, HAS_B2, ACT, GATE, KEEP_A, IS_FP64, DOT_TF32, EX_BLOCK_B, EX_BLOCK_C, EX_BLOCK_R,
                )  # fmt: skip
                publish(ready_ptr + ck)
        else:
            met = wait_for(ready_ptr + ck, ws_ptr + 1, max_polls, WAIT)
            for step in range(0, c_steps):
                offs_c = (group * c_steps + step) * BLOCK_C + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                sv = poisoned(tl.load(s_ptr + pid_b.to(tl.int64) * C + offs_c, mask=mask_c, other=0.0), met)
                if HAS_D:
                    sv *= tl.load(d_ptr + pid_b)
                for hw0 in range(hw_start, hw_end, BLOCK_HW):
                    offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                    scale_tile(
                        x_ptr + sample * stride_xb, stride_xc, stride_xhw,
                        y_ptr + sample * stride_yb, stride_yc, stride_yhw,
                        offs_c, mask_c, offs_hw, hw_end, sv, IS_FP64,
                        res_ptr=res_ptr + sample * stride_resb, stride_resc=stride_resc, stride_reshw=stride_reshw, HAS_R=HAS_R, RELU=RELU,
                        EVICT=EVICT_FIRST,
                    )  # fmt: skip
        ticket = following


@triton.jit
def _se_bwd_stream_kernel(
    g_ptr,  # (B, C, HW) strided: dL/dy
    x_ptr,  # (B, C, HW) strided
    o_ptr,  # (B, C, HW) strided, a ReLU's output: g is zeroed where o <= 0; read only when RELU_MASK
    dres_ptr,  # (B, C, HW) strided: the masked g, written (and re-read) when STORE_G
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    z_ptr,  # (B, C)
    s_ptr,  # (B, C)
    a_ptr,  # (B, C), read only when GATE needs it
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    dssum_ptr,  # (HW_TILES, B, C) acc dtype: each tile's partial sums of g * x (times d)
    dz_ptr,  # (B, C) acc dtype
    dw1_ptr,  # (NUM_CHUNKS, R, C) out: each chunk's share of dW1 (dW1 itself for one chunk), when NEED_DW1
    db1_ptr,  # (NUM_CHUNKS, R) out, when NEED_DB1
    dw2_ptr,  # (NUM_CHUNKS, C, R) out, when NEED_DW2
    db2_ptr,  # (NUM_CHUNKS, C) out, when NEED_DB2
    dx_ptr,  # (B, C, HW) strided out
    ws_ptr,  # int32, zeroed (sync.workspace): ticket, misses; done count per chunk; ready flag per chunk
    stride_gb, stride_gc, stride_ghw,
    stride_xb, stride_xc, stride_xhw,
    stride_ob, stride_oc, stride_ohw,
    stride_dresb, stride_dresc, stride_dreshw,
    stride_dxb, stride_dxc, stride_dxhw,
    stride_w1r, stride_w1c, stride_b1,
    stride_w2c, stride_w2r,
    B, C, R, HW, HW_TILE, hw_tiles, c_steps, chunk, LAG, num_chunks, max_polls,
    HAS_B1: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, NEED_DW1: tl.constexpr, NEED_DB1: tl.constexpr,
    NEED_DW2: tl.constexpr, NEED_DB2: tl.constexpr, HAS_D: tl.constexpr, RELU_MASK: tl.constexpr,
    STORE_G: tl.constexpr, O_EVICT: tl.constexpr, IS_FP64: tl.constexpr, DOT_TF32: tl.constexpr, WAIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, EX_BLOCK_B: tl.constexpr, EX_BLOCK_C: tl.constexpr,
    EX_BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The MLP form's backward as one persistent launch (see _stream_ticket): a first-pass
    ticket sums g * x over one tile; the last one of a chunk runs the chunk's excitation
    backward (dz and the chunk's weight-gradient partials); a second-pass ticket writes one
    tile of dx = g * s * d + dz / HW, re-reading g (or the masked g) while it is in L2."""
    done_ptr = counts_at(ws_ptr)
    ready_ptr = flags_at(ws_ptr, num_chunks)
    tiles = tl.cdiv(tl.cdiv(C, BLOCK_C), c_steps) * hw_tiles  # per sample and pass
    total = 2 * B * tiles
    ticket = take_ticket(ws_ptr)
    while ticket < total:
        following = take_ticket(ws_ptr)  # in flight while this one runs
        second, pid_b, tile = _stream_ticket(ticket, B, LAG, tiles)
        sample = pid_b.to(tl.int64)
        group = tile // hw_tiles  # c_steps channel blocks
        hwt = tile - group * hw_tiles
        hw_start = hwt * HW_TILE
        hw_end = tl.minimum(hw_start + HW_TILE, HW)
        ck = pid_b // chunk
        if second == 0:
            for step in range(0, c_steps):
                offs_c = (group * c_steps + step) * BLOCK_C + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                part = hw_sum_range(
                    x_ptr + sample * stride_xb, stride_xc, stride_xhw, offs_c, mask_c, hw_start, hw_end,
                    BLOCK_C, BLOCK_HW, IS_FP64,
                    g_ptr=g_ptr + sample * stride_gb, stride_gc=stride_gc, stride_ghw=stride_ghw,
                    o_ptr=o_ptr + sample * stride_ob, stride_oc=stride_oc, stride_ohw=stride_ohw,
                    dres_ptr=dres_ptr + sample * stride_dresb, stride_dresc=stride_dresc, stride_dreshw=stride_dreshw,
                    HAS_G=True, RELU_MASK=RELU_MASK, STORE_G=STORE_G,
                    X_EVICT=EVICT_FIRST, G_EVICT=EVICT_LAST, O_EVICT=O_EVICT,  # the second pass re-reads g
                )  # fmt: skip
                if HAS_D:
                    part *= tl.load(d_ptr + pid_b)
                tl.store(dssum_ptr + (hwt.to(tl.int64) * B + pid_b) * C + offs_c, part, mask=mask_c)
            b_start = ck * chunk
            b_end = tl.minimum(b_start + chunk, B)
            if arrive(done_ptr + ck, (b_end - b_start) * tiles):
                excite_bwd_block(
                    dssum_ptr, z_ptr, s_ptr, a_ptr, w1_ptr, b1_ptr, w2_ptr,
                    dz_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr,
                    stride_w1r, stride_w1c, stride_b1, stride_w2c, stride_w2r,
                    b_start, b_end, ck, B, C, R, hw_tiles,
                    HAS_B1, ACT, GATE, True, NEED_DW1, NEED_DB1, NEED_DW2, NEED_DB2,
                    IS_FP64, DOT_TF32, EX_BLOCK_B, EX_BLOCK_C, EX_BLOCK_R,
                )  # fmt: skip
                publish(ready_ptr + ck)
        else:
            met = wait_for(ready_ptr + ck, ws_ptr + 1, max_polls, WAIT)
            for step in range(0, c_steps):
                offs_c = (group * c_steps + step) * BLOCK_C + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                row = pid_b.to(tl.int64) * C + offs_c
                sv = poisoned(tl.load(s_ptr + row, mask=mask_c, other=0.0), met)
                if HAS_D:
                    sv *= tl.load(d_ptr + pid_b)
                dz = poisoned(tl.load(dz_ptr + row, mask=mask_c, other=0.0), met)
                for hw0 in range(hw_start, hw_end, BLOCK_HW):
                    offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                    if STORE_G:  # the masked g is in memory already: read it instead of g and o
                        scale_tile(
                            dres_ptr + sample * stride_dresb, stride_dresc, stride_dreshw,
                            dx_ptr + sample * stride_dxb, stride_dxc, stride_dxhw,
                            offs_c, mask_c, offs_hw, hw_end, sv, IS_FP64, t=dz, HW=HW, HAS_T=True, EVICT=EVICT_FIRST,
                        )  # fmt: skip
                    else:
                        scale_tile(
                            g_ptr + sample * stride_gb, stride_gc, stride_ghw,
                            dx_ptr + sample * stride_dxb, stride_dxc, stride_dxhw,
                            offs_c, mask_c, offs_hw, hw_end, sv, IS_FP64, t=dz, HW=HW, HAS_T=True,
                            o_ptr=o_ptr + sample * stride_ob, stride_oc=stride_oc, stride_ohw=stride_ohw, RELU_MASK=RELU_MASK,
                            EVICT=EVICT_FIRST,
                        )  # fmt: skip
        ticket = following


def se_fwd_stream(
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
    cfg: hz.StreamConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MLP form's forward as one persistent launch (cfg from plan.plan_forward): (y, z, s, a)
    as the three-launch path returns them, the residual tail too; x's second read is served by
    L2, so 2N bytes move instead of 3N."""
    b, c, h, w = x.shape
    f = mlp_forward(x, w1, b1, w2, b2, act, gate, d, residual, relu)
    num_chunks = hz.cdiv(b, cfg.chunk)
    zsum = empty(cfg.hw_tiles, b, c, dtype=f.z.dtype, device=x.device)
    ws = workspace(num_chunks, num_chunks, x.device)
    record("se_fwd_stream")
    launch(_se_fwd_stream_kernel, (cfg.programs,))(
        *f.inputs,
        zsum,
        f.z,
        f.s,
        f.a_arg,
        f.y,
        ws,
        *f.strides,
        b,
        c,
        w1.shape[0],
        h * w,
        cfg.hw_tile,
        cfg.hw_tiles,
        cfg.c_steps,
        cfg.chunk,
        cfg.lag,
        num_chunks,
        hz.WAIT_MAX_POLLS,
        **f.flags,
        DOT_TF32=cfg.excite.dot_tf32,
        WAIT=spins(),
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        EX_BLOCK_B=cfg.excite.block_b,
        EX_BLOCK_C=cfg.excite.block_c,
        EX_BLOCK_R=cfg.excite.block_r,
        num_warps=cfg.num_warps,
    )
    check_waits(ws, 2 * b * cfg.tiles, cfg.programs, "se_fwd_stream", x.shape)
    return f.outputs


def se_bwd_stream(
    g: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    s: torch.Tensor,
    a: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    need: tuple[bool, bool, bool, bool],
    act: str,
    gate: str,
    d: Optional[torch.Tensor],
    relu_out: Optional[torch.Tensor],
    store_g: bool,
    cfg: hz.StreamConfig,
    grad_dtypes: Optional[tuple[torch.dtype, torch.dtype, torch.dtype, torch.dtype]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], ...]:
    """The MLP form's backward as one persistent launch (cfg from plan.plan_backward):
    (dx, masked g or None, dW1, db1, dW2, db2), the weight gradients None where `need`
    (dW1, db1, dW2, db2) says so, in grad_dtypes (the op passes the parameters', so that no
    cast follows; default the accumulation dtype). g is re-read from L2 for dx: 3N bytes
    instead of 4N. Arguments as scale_bwd and excite_bwd take them."""
    assert g.shape == x.shape and (relu_out is None or relu_out.shape == x.shape)
    assert not store_g or relu_out is not None
    need_dw1, need_db1, need_dw2, need_db2 = need
    b, c, h, w = x.shape
    hw, hidden = h * w, w1.shape[0]
    xs = strides_of(x, None)
    dt, dev = z.dtype, x.device
    num_chunks = hz.cdiv(b, cfg.chunk)
    dssum = empty(cfg.hw_tiles, b, c, dtype=dt, device=dev)
    dz = empty(b, c, dtype=dt, device=dev)
    grad_dtypes = grad_dtypes or (dt,) * 4
    dw1 = partials(num_chunks, dtype=dt, device=dev, out_dtype=grad_dtypes[0], like=w1) if need_dw1 else None
    db1 = partials(num_chunks, hidden, dtype=dt, device=dev, out_dtype=grad_dtypes[1]) if need_db1 else None
    dw2 = partials(num_chunks, dtype=dt, device=dev, out_dtype=grad_dtypes[2], like=w2) if need_dw2 else None
    db2 = partials(num_chunks, c, dtype=dt, device=dev, out_dtype=grad_dtypes[3]) if need_db2 else None
    dr = empty_like(g) if store_g else None
    dx = empty_like(x)
    ws = workspace(num_chunks, num_chunks, dev)
    record("se_bwd_stream")
    launch(_se_bwd_stream_kernel, (cfg.programs,))(
        g,
        x,
        x if relu_out is None else relu_out,
        x if dr is None else dr,
        z if d is None else d,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        w1,
        w1 if b1 is None else b1,
        w2,
        dssum,
        dz,
        dz if dw1 is None else dw1,
        dz if db1 is None else db1,
        dz if dw2 is None else dw2,
        dz if db2 is None else db2,
        dx,
        ws,
        *strides_of(g, None),
        *xs,
        *strides_of(relu_out, xs),
        *strides_of(dr, xs),
        *strides_of(dx, None),
        *matrix_strides(w1),
        vec_stride(b1),
        *matrix_strides(w2),
        b,
        c,
        hidden,
        hw,
        cfg.hw_tile,
        cfg.hw_tiles,
        cfg.c_steps,
        cfg.chunk,
        cfg.lag,
        num_chunks,
        hz.WAIT_MAX_POLLS,
        HAS_B1=b1 is not None,
        ACT=ACT_CODES[act],
        GATE=GATE_CODES[gate],
        NEED_DW1=need_dw1,
        NEED_DB1=need_db1,
        NEED_DW2=need_dw2,
        NEED_DB2=need_db2,
        HAS_D=d is not None,
        RELU_MASK=relu_out is not None,
        STORE_G=store_g,
        # the second pass re-reads the ReLU's output only where it does not read the masked g instead
        O_EVICT=(EVICT_FIRST if store_g else EVICT_LAST).value,
        IS_FP64=dt == torch.float64,
        DOT_TF32=cfg.excite.dot_tf32,
        WAIT=spins(),
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        EX_BLOCK_B=cfg.excite.block_b,
        EX_BLOCK_C=cfg.excite.block_c,
        EX_BLOCK_R=cfg.excite.block_r,
        num_warps=cfg.num_warps,
    )
    check_waits(ws, 2 * b * cfg.tiles, cfg.programs, "se_bwd_stream", x.shape)
    return (dx, dr, *sum_partials(num_chunks, dw1, db1, dw2, db2, dtypes=grad_dtypes, likes=(w1, None, w2)))
