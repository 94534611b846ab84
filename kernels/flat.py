"""The three-launch path's memory passes over NCHW samples whose rows are short.

In NCHW a sample is one contiguous run of C * HW elements, one row of HW per channel. A
(BLOCK_C, BLOCK_HW) tile of short rows leaves lanes idle past HW (15 of 64 at 7x7) and, where a
row's bytes are not a multiple of 16 (7x7 and 14x14 in 16-bit dtypes), starts its rows at
unaligned addresses, where the compiler issues narrow loads. These kernels take the sample as
one flat axis instead, cut into aligned runs of BLOCK elements (full-width loads, no idle lanes
but at a program's end); each element finds its channel as flat // HW, with HW a compile-time
constant, so the divide is a multiply and a shift.

    scale_flat     y = x * s[c] (+ t[c] / HW), the residual tail     as passes._scale_kernel
    hw_sum_flat    per-channel sums of x (or of g * x), BLOCK_R        as passes._hw_sum_kernel
                   channels a program, each run summed over the few
                   channels it touches (a (WINDOW, BLOCK) select)

Same bytes as the tiled kernels; the passes choose them (passes.flat_stride, heuristics.flat_rows,
where the measurements are). Not for per-sample lengths (the tiled kernels keep those).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import act_fwd


@triton.jit
def scale_flat_kernel(
    x_ptr,  # (B, C * HW) contiguous per sample: x forward, g backward
    s_ptr,  # (B, C) contiguous, acc dtype
    t_ptr,  # (B, C) contiguous, acc dtype, read when HAS_T: y += t / HW
    d_ptr,  # (B,) acc dtype, read when HAS_D: a per-sample factor on s
    res_ptr,  # like x, read when HAS_R
    o_ptr,  # like x, a ReLU's output, read when RELU_MASK: x is zeroed where o <= 0
    y_ptr,  # like x
    stride_b,  # elements between samples, the same for every tensor above shaped like x
    C,
    HW: tl.constexpr, HAS_T: tl.constexpr, HAS_D: tl.constexpr, HAS_R: tl.constexpr, RELU: tl.constexpr,
    RELU_MASK: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid_b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < C * HW
    base = pid_b * stride_b
    rows = pid_b * C + offs // HW
    s = tl.load(s_ptr + rows, mask=mask, other=0.0)
    if HAS_D:
        s *= tl.load(d_ptr + pid_b)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(acc_ty)
    if RELU_MASK:  # as threshold_backward on the ReLU's output
        x = tl.where(tl.load(o_ptr + base + offs, mask=mask, other=0.0) <= 0, 0.0, x)
    y = x * s
    if HAS_T:
        y += tl.load(t_ptr + rows, mask=mask, other=0.0) / HW
    if HAS_R:
        y += tl.load(res_ptr + base + offs, mask=mask, other=0.0).to(acc_ty)
    if RELU:
        y = act_fwd(y, 0)
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def hw_sum_flat_kernel(
    x_ptr,  # (B, C * HW) contiguous per sample
    g_ptr,  # like x, read when HAS_G: the sums are of g * x
    o_ptr,  # like x, a ReLU's output, read when RELU_MASK: g is zeroed where o <= 0
    dres_ptr,  # like x: the masked g is written here when STORE_G
    d_ptr,  # (B,) acc dtype, read when HAS_D: a per-sample factor of the sums
    out_ptr,  # (1, B, C) contiguous, acc dtype
    stride_b,  # elements between samples, the same for every tensor above shaped like x
    C,
    HW: tl.constexpr, HAS_G: tl.constexpr, RELU_MASK: tl.constexpr, STORE_G: tl.constexpr, HAS_D: tl.constexpr,
    IS_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    """Channels [r0, r0 + BLOCK_R) of sample b: BLOCK_R * HW contiguous elements, in runs of
    BLOCK. A run's offset k0 is a compile-time constant, so the channels it touches are known:
    the WINDOW channels from k0 // HW on (WINDOW >= BLOCK / HW + 2). Each run is summed per channel
    of its window (a (WINDOW, BLOCK) select), and the window's sums added to the program's."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid_b = tl.program_id(1).to(tl.int64)
    r0 = tl.program_id(0) * BLOCK_R
    base = pid_b * stride_b + r0 * HW
    end = tl.minimum(BLOCK_R, C - r0) * HW  # this program's elements
    local = tl.arange(0, BLOCK_R)
    window = tl.arange(0, WINDOW)
    acc = tl.zeros((BLOCK_R,), dtype=acc_ty)
    for k0 in tl.static_range(0, BLOCK_R * HW, BLOCK):
        j = k0 + tl.arange(0, BLOCK)
        mask = j < end
        v = tl.load(x_ptr + base + j, mask=mask, other=0.0).to(acc_ty)
        if HAS_G:
            g = tl.load(g_ptr + base + j, mask=mask, other=0.0)
            if RELU_MASK:
                g = tl.where(tl.load(o_ptr + base + j, mask=mask, other=0.0) <= 0, 0.0, g).to(g.dtype)
                if STORE_G:
                    tl.store(dres_ptr + base + j, g, mask=mask)
            v *= g.to(acc_ty)
        first = k0 // HW
        part = tl.sum(tl.where((j // HW - first)[None, :] == window[:, None], v[None, :], 0.0), axis=1)
        acc += tl.sum(tl.where(local[:, None] == (first + window)[None, :], part[None, :], 0.0), axis=1)
    if HAS_D:
        acc *= tl.load(d_ptr + pid_b)
    rows = r0 + local
    tl.store(out_ptr + pid_b * C + rows, acc, mask=rows < C)
