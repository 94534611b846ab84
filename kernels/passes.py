"""The memory passes of the three-launch path, and their tile helpers that the other paths reuse.

    squeeze            partial sums of x over HW                  reads x           N
    scale              y = x * s (and the residual tail)          reads x, writes y 2N
    scale_bwd          partial sums of g * x over HW              reads g and x     2N
    squeeze_scale_bwd  dx = g * s + dz / HW                       reads g, writes dx 2N

x is viewed as (B, C, HW) through three strides: NCHW and channels_last are both native (and so
are the ranks 3 and 5, which the functional forms view as (B, C, L, 1) and (B, C, DHW, 1)).

With per-sample lengths n[b] (a squeeze over each sample's valid positions hw < n[b]), the
squeeze sums those positions only and scales its partial sums by HW / n[b], so that the
excitation's divide by HW gives their mean; the dx pass adds dz / n[b] at those positions only.
See docs/DESIGN.md for the math and the traffic budget.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..runtime.launch import empty, empty_like, launch, record
from . import heuristics as hz
from .common import acc_dtype, act_fwd, is_channels_last, strides_of
from .flat import hw_sum_flat_kernel, scale_flat_kernel

# L2 eviction policies of load_evict (integer codes: triton 3.6 takes no string default through
# a nested jit function's constexpr).
EVICT_FIRST, EVICT_LAST = tl.constexpr(1), tl.constexpr(2)


@triton.jit
def load_evict(ptrs, mask, EVICT: tl.constexpr):
    """tl.load(ptrs, mask, other=0) with L2 eviction policy EVICT: 0 the default, 1 evict_first,
    2 evict_last."""
    if EVICT == EVICT_LAST:
        val = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_last")
    elif EVICT == EVICT_FIRST:
        val = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
    else:
        val = tl.load(ptrs, mask=mask, other=0.0)
    return val


@triton.jit
def hw_sum_range(
    x_ptr, stride_xc, stride_xhw,  # one sample's x: (C, HW)
    offs_c, mask_c, hw_start, hw_end,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, IS_FP64: tl.constexpr,
    g_ptr=None, stride_gc=0, stride_ghw=0,  # the sample's g (HAS_G): the sum is of g * x
    o_ptr=None, stride_oc=0, stride_ohw=0,  # a ReLU's output (RELU_MASK): g is zeroed where o <= 0
    dres_ptr=None, stride_dresc=0, stride_dreshw=0,  # where the masked g is written (STORE_G)
    HAS_G: tl.constexpr = False, RELU_MASK: tl.constexpr = False, STORE_G: tl.constexpr = False,
    X_EVICT: tl.constexpr = 0, G_EVICT: tl.constexpr = 0, O_EVICT: tl.constexpr = 0,
):  # fmt: skip
    """(BLOCK_C,) sums over hw_start <= hw < hw_end of one sample's x (or g * x), channels offs_c.
    *_EVICT: the L2 eviction policy of x's, g's and o's loads (load_evict's codes: EVICT_LAST for
    what a second pass re-reads, EVICT_FIRST for what it does not, 0 the default)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    rows_c = offs_c.to(tl.int64)[:, None]
    x_ptrs = x_ptr + rows_c * stride_xc
    if HAS_G:
        g_ptrs = g_ptr + rows_c * stride_gc
    if RELU_MASK:
        o_ptrs = o_ptr + rows_c * stride_oc
        dres_ptrs = dres_ptr + rows_c * stride_dresc

    acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=acc_ty)
    for hw0 in range(hw_start, hw_end, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = mask_c[:, None] & (offs_hw[None, :] < hw_end)
        val = load_evict(x_ptrs + offs_hw[None, :] * stride_xhw, mask, X_EVICT)
        val = val.to(acc_ty)
        if HAS_G:
            g = load_evict(g_ptrs + offs_hw[None, :] * stride_ghw, mask, G_EVICT)
            if RELU_MASK:  # as torch's threshold_backward on a ReLU's output: NaN outputs pass g
                o = load_evict(o_ptrs + offs_hw[None, :] * stride_ohw, mask, O_EVICT)
                g = tl.where(o <= 0, 0.0, g).to(g.dtype)
                if STORE_G:
                    tl.store(dres_ptrs + offs_hw[None, :] * stride_dreshw, g, mask=mask)
            val *= g.to(acc_ty)
        acc += val
    return tl.sum(acc, axis=1)


@triton.jit
def _hw_sum_kernel(
    x_ptr,  # (B, C, HW) strided
    g_ptr,  # (B, C, HW) strided; read only when HAS_G (the sum is then of g * x)
    o_ptr,  # (B, C, HW) strided, a ReLU's output: g is zeroed where o <= 0; read only when RELU_MASK
    dres_ptr,  # (B, C, HW) strided: the masked g is written here when STORE_G
    d_ptr,  # (B,) acc dtype, a per-sample factor of the sums; read only when HAS_D
    len_ptr,  # (B,) int, each sample's count of valid positions; read only when HAS_LEN
    out_ptr,  # (SPLIT, B, C) partial sums, contiguous, acc dtype
    stride_xb, stride_xc, stride_xhw,
    stride_gb, stride_gc, stride_ghw,
    stride_ob, stride_oc, stride_ohw,
    stride_dresb, stride_dresc, stride_dreshw,
    B, C, HW, hw_per_split,
    HAS_G: tl.constexpr, RELU_MASK: tl.constexpr, STORE_G: tl.constexpr, HAS_D: tl.constexpr,
    HAS_LEN: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    pid_c = pid % num_c_blocks
    pid_b = (pid // num_c_blocks) % B
    pid_k = pid // (num_c_blocks * B)
    sample = pid_b.to(tl.int64)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    hw_start = pid_k * hw_per_split
    hw_end = tl.minimum(hw_start + hw_per_split, HW)
    if HAS_LEN:
        n = tl.load(len_ptr + pid_b)
        hw_end = tl.minimum(hw_end, n)
    total = hw_sum_range(
        x_ptr + sample * stride_xb, stride_xc, stride_xhw, offs_c, mask_c, hw_start, hw_end, BLOCK_C, BLOCK_HW, IS_FP64,
        g_ptr=g_ptr + sample * stride_gb, stride_gc=stride_gc, stride_ghw=stride_ghw,
        o_ptr=o_ptr + sample * stride_ob, stride_oc=stride_oc, stride_ohw=stride_ohw,
        dres_ptr=dres_ptr + sample * stride_dresb, stride_dresc=stride_dresc, stride_dreshw=stride_dreshw,
        HAS_G=HAS_G, RELU_MASK=RELU_MASK, STORE_G=STORE_G,
    )  # fmt: skip
    if HAS_D:
        total *= tl.load(d_ptr + pid_b)
    if HAS_LEN:  # the excitation divides by HW: these sums then end as the mean over n positions
        total *= HW / n.to(total.dtype)
    row = pid_k.to(tl.int64) * B + pid_b
    tl.store(out_ptr + row * C + offs_c, total, mask=mask_c)


@triton.jit
def residual_tail(
    y, res_ptr, stride_resc, stride_reshw, offs_c, offs_hw, mask, HAS_R: tl.constexpr, RELU: tl.constexpr
):  # fmt: skip
    """A residual block's tail on a (BLOCK_C, BLOCK_HW) tile of one sample's scaled x: + the
    sample's residual at res_ptr (when HAS_R), then a NaN-propagating ReLU (when RELU); in y's dtype."""
    if HAS_R:
        res_offs = offs_c.to(tl.int64)[:, None] * stride_resc + offs_hw[None, :] * stride_reshw
        y += tl.load(res_ptr + res_offs, mask=mask, other=0.0).to(y.dtype)
    if RELU:
        y = act_fwd(y, 0)
    return y


@triton.jit
def scale_tile(
    x_ptr, stride_xc, stride_xhw,  # one sample's x (the dx pass: its g)
    y_ptr, stride_yc, stride_yhw,  # one sample's output
    offs_c, mask_c, offs_hw, hw_end, s, IS_FP64: tl.constexpr,
    t=None, HW=1,  # y += t / HW (HAS_T): the dx pass's dz, (BLOCK_C,)
    t_end=0,  # with T_END, t is added at positions below t_end only (a sample's valid positions)
    res_ptr=None, stride_resc=0, stride_reshw=0,  # the sample's residual, added before a ReLU (HAS_R, RELU)
    o_ptr=None, stride_oc=0, stride_ohw=0,  # a ReLU's output (RELU_MASK): x is zeroed where o <= 0 first
    HAS_T: tl.constexpr = False, HAS_R: tl.constexpr = False, RELU: tl.constexpr = False,
    RELU_MASK: tl.constexpr = False, T_END: tl.constexpr = False, EVICT: tl.constexpr = 0,
):  # fmt: skip
    """y = x * s (+ t / HW) and the residual tail on a (BLOCK_C, BLOCK_HW) tile of one sample,
    positions below hw_end; s and t are (BLOCK_C,) in the acc dtype. EVICT: the L2 eviction
    policy of x's and o's loads (EVICT_FIRST where this is their last read)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    mask = mask_c[:, None] & (offs_hw[None, :] < hw_end)
    rows_c = offs_c.to(tl.int64)[:, None]
    x = load_evict(x_ptr + rows_c * stride_xc + offs_hw[None, :] * stride_xhw, mask, EVICT)
    x = x.to(acc_ty)
    if RELU_MASK:  # the backward through a ReLU epilogue, as threshold_backward on its output
        o = load_evict(o_ptr + rows_c * stride_oc + offs_hw[None, :] * stride_ohw, mask, EVICT)
        x = tl.where(o <= 0, 0.0, x)
    y = x * s[:, None]
    if HAS_T:
        if T_END:
            y += tl.where(offs_hw[None, :] < t_end, (t / HW)[:, None], 0.0)
        else:
            y += (t / HW)[:, None]
    y = residual_tail(y, res_ptr, stride_resc, stride_reshw, offs_c, offs_hw, mask, HAS_R, RELU)
    tl.store(y_ptr + rows_c * stride_yc + offs_hw[None, :] * stride_yhw, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_kernel(
    x_ptr,  # (B, C, HW) strided: x forward, g backward
    s_ptr,  # (B, C) contiguous, acc dtype: the per-channel factor
    t_ptr,  # (B, C) contiguous, acc dtype: a per-channel addend times HW, read only when HAS_T
    d_ptr,  # (B,) acc dtype: a per-sample factor on s, read only when HAS_D
    len_ptr,  # (B,) int: t / n[b] at positions hw < n[b] only (instead of t / HW everywhere); read only when HAS_LEN
    res_ptr,  # (B, C, HW) strided: a residual added before the output activation, read only when HAS_R
    o_ptr,  # (B, C, HW) strided, a ReLU's output: x is zeroed where o <= 0 first; read only when RELU_MASK
    y_ptr,  # (B, C, HW) strided output
    stride_xb, stride_xc, stride_xhw,
    stride_resb, stride_resc, stride_reshw,
    stride_ob, stride_oc, stride_ohw,
    stride_yb, stride_yc, stride_yhw,
    C, HW,
    HAS_T: tl.constexpr, HAS_D: tl.constexpr, HAS_R: tl.constexpr, RELU: tl.constexpr, RELU_MASK: tl.constexpr,
    HAS_LEN: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_hw_blocks = tl.cdiv(HW, BLOCK_HW)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    pid_hw = pid % num_hw_blocks
    pid_c = (pid // num_hw_blocks) % num_c_blocks
    pid_b = pid // (num_hw_blocks * num_c_blocks)
    sample = pid_b.to(tl.int64)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    mask_c = offs_c < C
    row = sample * C + offs_c
    s = tl.load(s_ptr + row, mask=mask_c, other=0.0)
    if HAS_D:
        s *= tl.load(d_ptr + pid_b)
    t = s
    if HAS_T:
        t = tl.load(t_ptr + row, mask=mask_c, other=0.0)
    t_div = HW
    if HAS_LEN:
        t_div = tl.load(len_ptr + pid_b)
    scale_tile(
        x_ptr + sample * stride_xb, stride_xc, stride_xhw,
        y_ptr + sample * stride_yb, stride_yc, stride_yhw,
        offs_c, mask_c, offs_hw, HW, s, IS_FP64,
        t=t, HW=t_div, t_end=t_div,
        res_ptr=res_ptr + sample * stride_resb, stride_resc=stride_resc, stride_reshw=stride_reshw,
        o_ptr=o_ptr + sample * stride_ob, stride_oc=stride_oc, stride_ohw=stride_ohw,
        HAS_T=HAS_T, HAS_R=HAS_R, RELU=RELU, RELU_MASK=RELU_MASK, T_END=HAS_LEN,
    )  # fmt: skip


def flat_stride(x: torch.Tensor, *others: Optional[torch.Tensor]) -> Optional[int]:
    """The elements between x's samples where the flat passes (kernels/flat.py) take x and the
    tensors shaped like it (`others`, None for absent ones): each sample one dense NCHW run, the
    same strides for all, rows that heuristics.flat_rows gives to the flat passes (FLAT_MIN_HW
    to FLAT_MAX_HW elements), and a batch and samples their grid and offsets hold. None where
    the tiled passes run."""
    b, c, h, w = x.shape
    hw = h * w
    if not (hz.flat_rows(hw) and hz.flat_fits(b, c * hw)):
        return None
    xs = strides_of(x, None)
    if xs[1] != hw or xs[2] != 1:
        return None
    if any(t is not None and strides_of(t, None) != xs for t in others):
        return None
    return xs[0]


def hw_sum(
    x: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    relu_out: Optional[torch.Tensor] = None,
    d: Optional[torch.Tensor] = None,
    store_g: bool = False,
    lengths: Optional[torch.Tensor] = None,
    cfg: Optional[hz.ReduceConfig] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Partial sums over HW of x, or of g * x; with relu_out, g is first zeroed where
    relu_out <= 0 (and, with store_g, written out: returned second); with d, sample b's sums
    are times d[b]; with lengths, over hw < lengths[b] only, times HW / lengths[b]. cfg: the
    tiled kernel's tiles and splits (heuristics.reduce_config's by default)."""
    b, c, h, w = x.shape
    hw = h * w
    xs = strides_of(x, None)
    gs = strides_of(g, xs)
    dr = empty_like(g) if store_g and g is not None else None
    flat = None if lengths is not None else flat_stride(x, g, relu_out, dr)
    if flat is not None:
        out = empty(1, b, c, dtype=acc_dtype(x.dtype), device=x.device)
        if out.numel():
            fcfg = hz.flat_reduce_config(c, hw)
            launch(hw_sum_flat_kernel, (hz.cdiv(c, fcfg.block_r), b))(
                x, x if g is None else g, x if relu_out is None else relu_out, x if dr is None else dr,
                x if d is None else d, out, flat, c,
                HW=hw, HAS_G=g is not None, RELU_MASK=relu_out is not None, STORE_G=dr is not None,
                HAS_D=d is not None, IS_FP64=x.dtype == torch.float64, BLOCK_R=fcfg.block_r, BLOCK=fcfg.block,
                WINDOW=fcfg.window, num_warps=fcfg.num_warps,
            )  # fmt: skip
        return out, dr
    cfg = cfg or hz.reduce_config(b, c, hw, is_channels_last(xs), hz.sm_count(x.device))
    out = empty(cfg.split, b, c, dtype=acc_dtype(x.dtype), device=x.device)
    if out.numel() == 0:
        return out, dr
    grid = (cfg.split * b * hz.cdiv(c, cfg.block_c),)
    launch(_hw_sum_kernel, grid)(
        x,
        x if g is None else g,
        x if relu_out is None else relu_out,
        x if dr is None else dr,
        x if d is None else d,
        x if lengths is None else lengths,
        out,
        *xs,
        *gs,
        *strides_of(relu_out, xs),
        *strides_of(dr, xs),
        b,
        c,
        hw,
        cfg.hw_per_split,
        HAS_G=g is not None,
        RELU_MASK=relu_out is not None,
        STORE_G=dr is not None,
        HAS_D=d is not None,
        HAS_LEN=lengths is not None,
        IS_FP64=x.dtype == torch.float64,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        num_warps=cfg.num_warps,
    )
    return out, dr


def squeeze_fwd(x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Partial sums of x over HW: (SPLIT, B, C) in the accumulation dtype. excite_fwd ends the mean.

    lengths: (B,) int, contiguous, each in 1..HW, or None: the sums over hw < lengths[b] only,
    times HW / lengths[b] (so that excite_fwd's divide by HW gives the mean over those positions)."""
    record("squeeze")
    return hw_sum(x, lengths=lengths)[0]


def scale_bwd(
    g: torch.Tensor,
    x: torch.Tensor,
    d: Optional[torch.Tensor] = None,
    relu_out: Optional[torch.Tensor] = None,
    store_g: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Partial sums over HW of g * x: (SPLIT, B, C), the gradient of the gate before excite_bwd.

    d: (B,) acc dtype or None, the per-sample factor the forward applied to s. Through a ReLU
    epilogue, relu_out is the forward's output: g is first zeroed where relu_out <= 0, as
    torch's threshold_backward; store_g also writes that masked g, the gradient of the residual,
    in g's dtype and memory format. Returns (dssum, masked g or None).
    """
    assert g.shape == x.shape and (relu_out is None or relu_out.shape == x.shape)
    assert not store_g or relu_out is not None
    record("scale_bwd")
    return hw_sum(x, g, relu_out, d, store_g)


def _scale(
    x: torch.Tensor,
    s: torch.Tensor,
    out: torch.Tensor,
    t: Optional[torch.Tensor] = None,
    d: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    relu: bool = False,
    relu_out: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    xs, ys = strides_of(x, None), strides_of(out, None)
    b, c, h, w = x.shape
    hw = h * w
    if out.numel() == 0:
        return out
    flat = None if lengths is not None else flat_stride(x, out, residual, relu_out)
    if flat is not None:
        grid = (hz.cdiv(c * hw, hz.FLAT_SCALE_BLOCK), b)
        launch(scale_flat_kernel, grid)(
            x, s, s if t is None else t, s if d is None else d, x if residual is None else residual,
            x if relu_out is None else relu_out, out, flat, c,
            HW=hw, HAS_T=t is not None, HAS_D=d is not None, HAS_R=residual is not None, RELU=relu,
            RELU_MASK=relu_out is not None, IS_FP64=x.dtype == torch.float64, BLOCK=hz.FLAT_SCALE_BLOCK,
            num_warps=hz.FLAT_SCALE_WARPS,
        )  # fmt: skip
        return out
    cfg = hz.scale_config(c, hw, is_channels_last(ys))
    grid = (b * hz.cdiv(c, cfg.block_c) * hz.cdiv(hw, cfg.block_hw),)
    launch(_scale_kernel, grid)(
        x,
        s,
        s if t is None else t,
        s if d is None else d,
        s if lengths is None else lengths,
        x if residual is None else residual,
        x if relu_out is None else relu_out,
        out,
        *xs,
        *strides_of(residual, xs),
        *strides_of(relu_out, xs),
        *ys,
        c,
        hw,
        HAS_T=t is not None,
        HAS_D=d is not None,
        HAS_R=residual is not None,
        RELU=relu,
        RELU_MASK=relu_out is not None,
        HAS_LEN=lengths is not None,
        IS_FP64=x.dtype == torch.float64,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        num_warps=cfg.num_warps,
    )
    return out


def scale_fwd(
    x: torch.Tensor,
    s: torch.Tensor,
    d: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    relu: bool = False,
) -> torch.Tensor:
    """y = x * s[b, c], in x's dtype and memory format. s: (B, C) contiguous, acc dtype.

    The epilogue of a residual block, in the same pass: y = act(x * s[b, c] * d[b] + residual),
    act a ReLU if `relu`; d: (B,) acc dtype (drop-path's per-sample factor) or None; residual:
    x's shape, any flattenable strides, or None.
    """
    record("scale")
    return _scale(x, s, empty_like(x), d=d, residual=residual, relu=relu)


def squeeze_scale_bwd(
    g: torch.Tensor,
    s: torch.Tensor,
    dz: torch.Tensor,
    like: torch.Tensor,
    d: Optional[torch.Tensor] = None,
    relu_out: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """dx = g * s[b, c] * d[b] + dz[b, c] / HW, in the dtype and memory format of `like` (x);
    through a ReLU epilogue, g is first zeroed where relu_out (the forward's output) <= 0.
    With lengths (as squeeze_fwd's), dz[b, c] / lengths[b] at positions hw < lengths[b] only."""
    record("squeeze_scale_bwd")
    return _scale(g, s, empty_like(like), t=dz, d=d, relu_out=relu_out, lengths=lengths)
