"""The spread forward of the MLP form for small batches: one persistent launch over every SM, the
excitation spread over the programs by channel block. Tickets in order: squeeze tiles (each with
its product by a block of W1's columns), a gate ticket per (sample, channel block), scale tiles,
each waiting for what it needs behind a count or a flag. See docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import empty, launch, record
from . import heuristics as hz
from .common import act_hidden, gate_gemv, mlp_forward, sum_splits
from .passes import hw_sum_range, scale_tile
from .sync import check_waits, counts_at, flags_at, poisoned, publish, spins, take_ticket, wait_for, workspace


@triton.jit
def _se_fwd_spread_kernel(
    x_ptr,  # (B, C, HW) strided
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    b2_ptr,  # (C,), read only when HAS_B2
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    res_ptr,  # (B, C, HW) strided residual, read only when HAS_R
    zsum_ptr,  # (HW_TILES, B, C) acc dtype: each tile's partial sums
    hpart_ptr,  # (TILES, B, BLOCK_R) acc dtype: each tile's share of W1 @ (sum of x)
    z_ptr,  # (B, C) acc dtype out
    s_ptr,  # (B, C) acc dtype out
    a_ptr,  # (B, C) acc dtype out, written only when KEEP_A
    y_ptr,  # (B, C, HW) strided output
    ws_ptr,  # int32, zeroed (sync.workspace): ticket, misses; squeezed tiles per sample; gate flag per (sample, channel block)
    stride_xb, stride_xc, stride_xhw,
    stride_resb, stride_resc, stride_reshw,
    stride_yb, stride_yc, stride_yhw,
    stride_w1r, stride_w1c, stride_b1,
    stride_w2c, stride_w2r, stride_b2,
    B, C, R, HW, HW_TILE, hw_tiles, max_polls,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr,
    HAS_D: tl.constexpr, HAS_R: tl.constexpr, RELU: tl.constexpr, IS_FP64: tl.constexpr, WAIT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The MLP form's forward for small batches as one persistent launch, the excitation spread
    over the programs too (weights read once, by many SMs). Tickets in order: every squeeze
    tile (its sums, and their product with its block of W1's columns); then, per sample and
    channel block, the gate (the hidden layer from all tiles' products, then that block of W2's
    rows), once the sample's tiles are in; then every scale tile, once its block's gate is out."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    c_blocks = tl.cdiv(C, BLOCK_C)
    tiles = c_blocks * hw_tiles
    n_squeeze = B * tiles
    n_gate = B * c_blocks
    total = n_squeeze + n_gate + B * tiles
    done_ptr = counts_at(ws_ptr)
    ready_ptr = flags_at(ws_ptr, B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    ticket = take_ticket(ws_ptr)
    while ticket < total:
        following = take_ticket(ws_ptr)  # in flight while this one runs
        if ticket < n_squeeze:
            pid_b = ticket // tiles
            tile = ticket - pid_b * tiles
            pid_c = tile // hw_tiles
            hwt = tile - pid_c * hw_tiles
            offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            hw_start = hwt * HW_TILE
            part = hw_sum_range(
                x_ptr + pid_b.to(tl.int64) * stride_xb, stride_xc, stride_xhw,
                offs_c, mask_c, hw_start, tl.minimum(hw_start + HW_TILE, HW), BLOCK_C, BLOCK_HW, IS_FP64,
            )  # fmt: skip
            tl.store(zsum_ptr + (hwt.to(tl.int64) * B + pid_b) * C + offs_c, part, mask=mask_c)
            w1 = tl.load(
                w1_ptr + offs_r[:, None] * stride_w1r + offs_c[None, :] * stride_w1c,
                mask=mask_r[:, None] & mask_c[None, :],
                other=0.0,
            ).to(acc_ty)
            hp = tl.sum(w1 * part[None, :], axis=1)
            tl.store(hpart_ptr + (tile.to(tl.int64) * B + pid_b) * BLOCK_R + offs_r, hp)
            tl.debug_barrier()  # the sums and products stored, then released by the count
            tl.atomic_add(done_ptr + pid_b, 1, sem="release")
        elif ticket < n_squeeze + n_gate:
            u = ticket - n_squeeze
            pid_b = u // c_blocks
            pid_c = u - pid_b * c_blocks
            offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            met = wait_for(done_ptr + pid_b, ws_ptr + 1, max_polls, WAIT, tiles)
            # the hidden layer, from every tile's product, in a fixed order
            h = tl.zeros((BLOCK_R,), dtype=acc_ty)
            for k in range(0, tiles):
                h += tl.load(hpart_ptr + (k * B + pid_b).to(tl.int64) * BLOCK_R + offs_r)
            h = h / HW
            h = act_hidden(h, b1_ptr, stride_b1, offs_r, mask_r, HAS_B1, ACT)
            row = pid_b.to(tl.int64) * C + offs_c
            zc = sum_splits(zsum_ptr, row, mask_c, hw_tiles, B * C) / HW
            tl.store(z_ptr + row, zc, mask=mask_c)
            gate_gemv(
                h, w2_ptr, b2_ptr, s_ptr, a_ptr, row, offs_c, mask_c, offs_r, mask_r,
                stride_w2c, stride_w2r, stride_b2, HAS_B2, GATE, KEEP_A,
            )  # fmt: skip
            # a gate whose wait gave up leaves s NaN (sync.poisoned), never plausible
            tl.store(s_ptr + row, poisoned(tl.zeros((BLOCK_C,), dtype=acc_ty), met), mask=mask_c & (met == 0))
            publish(ready_ptr + pid_b * c_blocks + pid_c)
        else:
            u = ticket - n_squeeze - n_gate
            pid_b = u // tiles
            tile = u - pid_b * tiles
            pid_c = tile // hw_tiles
            hwt = tile - pid_c * hw_tiles
            offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            hw_start = hwt * HW_TILE
            hw_end = tl.minimum(hw_start + HW_TILE, HW)
            met = wait_for(ready_ptr + pid_b * c_blocks + pid_c, ws_ptr + 1, max_polls, WAIT)
            sv = poisoned(tl.load(s_ptr + pid_b.to(tl.int64) * C + offs_c, mask=mask_c, other=0.0), met)
            if HAS_D:
                sv *= tl.load(d_ptr + pid_b)
            for hw0 in range(hw_start, hw_end, BLOCK_HW):
                offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                scale_tile(
                    x_ptr + pid_b.to(tl.int64) * stride_xb, stride_xc, stride_xhw,
                    y_ptr + pid_b.to(tl.int64) * stride_yb, stride_yc, stride_yhw,
                    offs_c, mask_c, offs_hw, hw_end, sv, IS_FP64,
                    res_ptr=res_ptr + pid_b.to(tl.int64) * stride_resb, stride_resc=stride_resc, stride_reshw=stride_reshw, HAS_R=HAS_R, RELU=RELU,
                )  # fmt: skip
        ticket = following


def se_fwd_spread(
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
    cfg: hz.SpreadConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MLP form's forward for small batches as one persistent launch over every SM, the
    excitation spread over the programs too (cfg from plan.plan_forward): (y, z, s, a) as the
    three-launch path returns them, the residual tail too."""
    b, c, h, w = x.shape
    f = mlp_forward(x, w1, b1, w2, b2, act, gate, d, residual, relu)
    zsum = empty(cfg.hw_tiles, b, c, dtype=f.z.dtype, device=x.device)
    hpart = empty(cfg.tiles, b, cfg.block_r, dtype=f.z.dtype, device=x.device)
    # a count of squeezed tiles per sample and a gate flag per (sample, channel block)
    ws = workspace(b, b * cfg.c_blocks, x.device)
    record("se_fwd_spread")
    launch(_se_fwd_spread_kernel, (cfg.programs,))(
        *f.inputs,
        zsum,
        hpart,
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
        hz.WAIT_MAX_POLLS,
        **f.flags,
        WAIT=spins(),
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps,
    )
    check_waits(ws, b * (2 * cfg.tiles + cfg.c_blocks), cfg.programs, "se_fwd_spread", x.shape)
    return f.outputs
