"""Triton kernels of the Squeeze-and-Excitation block, and their launchers.

x is viewed as (B, C, HW) through three strides, so NCHW-contiguous and channels_last inputs
are both native (no copy). N is the number of bytes of x.

Forward:
    zsum[k,b,c] = sum_{hw in split k} x[b,c,hw]           squeeze      reads x          N
    z[b,c]      = sum_k zsum[k,b,c] / HW                   excite       one launch, all samples:
    h[b,:]      = act(W1 z[b,:] + b1)                                   (B, C) -> (B, R) -> (B, C)
    a[b,:]      = W2 h[b,:] + b2,   s = gate(a)                         act: relu | silu
                                                                        gate: sigmoid | hard_sigmoid
    y           = x * s[b,c]                               scale        reads x, writes y 2N

Backward, with g = dL/dy:
    dssum[k,b,c] = sum_{hw in split k} g * x               scale_bwd    reads g and x    2N
    u       = ds * gate'(a)                                excite_bwd   one launch; weight grads
    dW2 = u^T h,  db2 = sum_b u,  dh = u W2                             are per-program partials
    v       = dh * act'(W1 z + b1)                                      summed in a fixed order
    dW1 = v^T z,  db1 = sum_b v,  dz = v W1
    dx      = g * s[b,c] + dz[b,c] / HW                    squeeze_scale_bwd  reads g, writes dx  2N

gate'(a) is s * (1 - s) for the sigmoid; for the hard sigmoid, min(max(a + 3, 0), 6) / 6 as in
torch, it is 1/6 on -3 < a < 3 and 0 elsewhere, which s cannot tell at the edges (a + 3 may round
to 6), so that gate keeps a as well. se_variants.py holds the other excitation forms (a single
C x C FC, a k-tap conv across channels) around the same squeeze and scale passes.

A residual block's tail rides on the same passes: the scale computes act(x * s * d[b] + r)
(drop-path's per-sample factor d, the shortcut r, a ReLU), scale_bwd masks g by the ReLU's
output and writes the shortcut's gradient, and the dx pass reads it.

So 3N forward and 4N backward. Everything between the passes is O(B*C) and fp32 (fp64 for
fp64 inputs, so that gradcheck sees exact math); nothing the size of x is allocated besides
the outputs. No atomics on values: every reduction has a fixed order, so the same input gives
the same bits on every run.

Three more paths for the two-FC form. For small batches, se_fwd_one_launch runs the whole
forward in one launch, a program per sample (small samples and weights), and se_fwd_spread in
one persistent launch over every SM, the excitation spread over its programs by channel block
(squeeze tiles, then gate tickets, then scale tiles, each behind a count or a flag). Where x is
past L2, se_fwd_stream and se_bwd_stream run each direction as one persistent launch over
tickets (_stream_ticket): a sample's second pass follows its first closely enough to re-read
it from L2, so 2N forward and 3N backward come from memory. The last first-pass tile of a chunk of samples runs the chunk's
excitation (_excite_fwd_block, _excite_bwd_block: the excitation kernels' own bodies), and
the chunk's second-pass tiles wait for its flag. Atomics there count tickets and set flags
only; the sums keep their fixed order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import heuristics as hz

# When set, every buffer a kernel writes is filled with NaN first, so an element a kernel
# forgets to write shows up in the tests.
POISON_OUTPUTS = False

_launch_logs: list[list[str]] = []


@contextmanager
def record_launches() -> Iterator[list[str]]:
    """Collects the names of the Triton kernels launched inside the block."""
    log: list[str] = []
    _launch_logs.append(log)
    try:
        yield log
    finally:
        _launch_logs.remove(log)


def _record(name: str) -> None:
    for log in _launch_logs:
        log.append(name)


# Whether wrap_triton takes this process's kernels: asked once, at the first launch.
_WRAP_TRITON: Optional[bool] = None


def _wrap_triton_takes(kernel) -> bool:
    """Whether wrap_triton takes `kernel`, and so every kernel of this process: triton.jit makes
    them all of one kind, JIT functions, or the interpreter's functions under TRITON_INTERPRET=1.
    torch 2.11's wrap_triton refuses the interpreter's functions, which newer torch hands back
    unwrapped; where it refuses, the kernels launch as they are, as they do on newer torch."""
    try:
        wrap_triton(kernel)
    except RuntimeError:
        return False
    return True


def _launch(kernel, grid):
    """kernel[grid] through wrap_triton, launched with the device of its first tensor argument
    made current, so that it runs on that device's current stream whichever device is current."""
    global _WRAP_TRITON
    if _WRAP_TRITON is None:
        _WRAP_TRITON = _wrap_triton_takes(kernel)
    launcher = (wrap_triton(kernel) if _WRAP_TRITON else kernel)[grid]

    def run(*args, **kwargs) -> None:
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with guard:
            launcher(*args, **kwargs)

    return run


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    # preserve_format keeps NCHW or channels_last for dense inputs and picks one of the two
    # for anything else, so the result is always a layout the kernels take as it is.
    out = torch.empty_like(x, memory_format=torch.preserve_format)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def acc_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """dtype of z, s and every intermediate: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if x_dtype == torch.float64 else torch.float32


def bchw_strides(x: torch.Tensor) -> Optional[tuple[int, int, int]]:
    """(stride_b, stride_c, stride_hw) if H and W flatten into one strided axis, else None."""
    _, _, h, w = x.shape
    sb, sc, sh, sw = x.stride()
    if h == 1:
        return sb, sc, sw
    if w == 1:
        return sb, sc, sh
    if sh == w * sw:
        return sb, sc, sw
    return None


def _vec_stride(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.stride(0)


def is_channels_last(strides: tuple[int, int, int]) -> bool:
    return strides[1] == 1 and strides[2] != 1


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------


@triton.jit
def _hw_sum_range(
    x_ptr,
    g_ptr,
    o_ptr,
    dr_ptr,
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_gb,
    stride_gc,
    stride_ghw,
    stride_ob,
    stride_oc,
    stride_ohw,
    stride_rb,
    stride_rc,
    stride_rhw,
    pid_b,
    offs_c,
    mask_c,
    hw_start,
    hw_end,
    HAS_G: tl.constexpr,
    RELU_MASK: tl.constexpr,
    STORE_G: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """(BLOCK_C,) sums over hw_start <= hw < hw_end of sample pid_b's x (or g * x); see _hw_sum_kernel."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    x_ptrs = x_ptr + pid_b.to(tl.int64) * stride_xb + offs_c.to(tl.int64)[:, None] * stride_xc
    if HAS_G:
        g_ptrs = g_ptr + pid_b.to(tl.int64) * stride_gb + offs_c.to(tl.int64)[:, None] * stride_gc
    if RELU_MASK:
        o_ptrs = o_ptr + pid_b.to(tl.int64) * stride_ob + offs_c.to(tl.int64)[:, None] * stride_oc
        dr_ptrs = dr_ptr + pid_b.to(tl.int64) * stride_rb + offs_c.to(tl.int64)[:, None] * stride_rc

    acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=acc_ty)
    for hw0 in range(hw_start, hw_end, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = mask_c[:, None] & (offs_hw[None, :] < hw_end)
        val = tl.load(x_ptrs + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0).to(acc_ty)
        if HAS_G:
            g = tl.load(g_ptrs + offs_hw[None, :] * stride_ghw, mask=mask, other=0.0)
            if RELU_MASK:  # as torch's threshold_backward on a ReLU's output: NaN outputs pass g
                o = tl.load(o_ptrs + offs_hw[None, :] * stride_ohw, mask=mask, other=0.0)
                g = tl.where(o <= 0, 0.0, g).to(g.dtype)
                if STORE_G:
                    tl.store(dr_ptrs + offs_hw[None, :] * stride_rhw, g, mask=mask)
            val *= g.to(acc_ty)
        acc += val
    return tl.sum(acc, axis=1)


@triton.jit
def _hw_sum_kernel(
    x_ptr,  # (B, C, HW) strided
    g_ptr,  # (B, C, HW) strided; read only when HAS_G (the sum is then of g * x)
    o_ptr,  # (B, C, HW) strided, a ReLU's output: g is zeroed where o <= 0; read only when RELU_MASK
    dr_ptr,  # (B, C, HW) strided: the masked g is written here when STORE_G
    d_ptr,  # (B,) acc dtype, a per-sample factor of the sums; read only when HAS_D
    out_ptr,  # (SPLIT, B, C) partial sums, contiguous, acc dtype
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_gb,
    stride_gc,
    stride_ghw,
    stride_ob,
    stride_oc,
    stride_ohw,
    stride_rb,
    stride_rc,
    stride_rhw,
    B,
    C,
    HW,
    hw_per_split,
    HAS_G: tl.constexpr,
    RELU_MASK: tl.constexpr,
    STORE_G: tl.constexpr,
    HAS_D: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    pid_c = pid % num_c_blocks
    pid_b = (pid // num_c_blocks) % B
    pid_k = pid // (num_c_blocks * B)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    hw_start = pid_k * hw_per_split
    hw_end = tl.minimum(hw_start + hw_per_split, HW)
    total = _hw_sum_range(
        x_ptr,
        g_ptr,
        o_ptr,
        dr_ptr,
        stride_xb,
        stride_xc,
        stride_xhw,
        stride_gb,
        stride_gc,
        stride_ghw,
        stride_ob,
        stride_oc,
        stride_ohw,
        stride_rb,
        stride_rc,
        stride_rhw,
        pid_b,
        offs_c,
        mask_c,
        hw_start,
        hw_end,
        HAS_G,
        RELU_MASK,
        STORE_G,
        IS_FP64,
        BLOCK_C,
        BLOCK_HW,
    )
    if HAS_D:
        total *= tl.load(d_ptr + pid_b)
    row = pid_k.to(tl.int64) * B + pid_b
    tl.store(out_ptr + row * C + offs_c, total, mask=mask_c)


@triton.jit
def _residual_tail(
    y, r_ptr, pid_b, offs_c, offs_hw, mask, stride_rb, stride_rc, stride_rhw, HAS_R: tl.constexpr, RELU: tl.constexpr
):
    """A residual block's tail on a (BLOCK_C, BLOCK_HW) tile of the scaled x: + the residual
    (when HAS_R), then a NaN-propagating ReLU (when RELU); in y's dtype."""
    if HAS_R:
        r_offs = (
            pid_b.to(tl.int64) * stride_rb + offs_c.to(tl.int64)[:, None] * stride_rc + offs_hw[None, :] * stride_rhw
        )
        y += tl.load(r_ptr + r_offs, mask=mask, other=0.0).to(y.dtype)
    if RELU:
        y = _act_fwd(y, 0)
    return y


@triton.jit
def _scale_tile(
    x_ptr,
    r_ptr,
    o_ptr,
    y_ptr,
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_rb,
    stride_rc,
    stride_rhw,
    stride_ob,
    stride_oc,
    stride_ohw,
    stride_yb,
    stride_yc,
    stride_yhw,
    pid_b,
    offs_c,
    mask_c,
    offs_hw,
    s,
    t,
    HW,
    hw_end,
    HAS_T: tl.constexpr,
    HAS_R: tl.constexpr,
    RELU: tl.constexpr,
    RELU_MASK: tl.constexpr,
    IS_FP64: tl.constexpr,
):
    """y = x * s (+ t / HW) and the residual tail on a (BLOCK_C, BLOCK_HW) tile of sample pid_b,
    positions below hw_end; s and t are (BLOCK_C,) in the acc dtype; see _scale_kernel."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    mask = mask_c[:, None] & (offs_hw[None, :] < hw_end)
    x_offs = pid_b.to(tl.int64) * stride_xb + offs_c.to(tl.int64)[:, None] * stride_xc + offs_hw[None, :] * stride_xhw
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(acc_ty)
    if RELU_MASK:  # the backward through a ReLU epilogue, as threshold_backward on its output
        o_offs = (
            pid_b.to(tl.int64) * stride_ob + offs_c.to(tl.int64)[:, None] * stride_oc + offs_hw[None, :] * stride_ohw
        )
        x = tl.where(tl.load(o_ptr + o_offs, mask=mask, other=0.0) <= 0, 0.0, x)
    y = x * s[:, None]
    if HAS_T:
        y += (t / HW)[:, None]
    y = _residual_tail(y, r_ptr, pid_b, offs_c, offs_hw, mask, stride_rb, stride_rc, stride_rhw, HAS_R, RELU)
    y_offs = pid_b.to(tl.int64) * stride_yb + offs_c.to(tl.int64)[:, None] * stride_yc + offs_hw[None, :] * stride_yhw
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_kernel(
    x_ptr,  # (B, C, HW) strided: x forward, g backward
    s_ptr,  # (B, C) contiguous, acc dtype: the per-channel factor
    t_ptr,  # (B, C) contiguous, acc dtype: a per-channel addend times HW, read only when HAS_T
    d_ptr,  # (B,) acc dtype: a per-sample factor on s, read only when HAS_D
    r_ptr,  # (B, C, HW) strided: a residual added before the output activation, read only when HAS_R
    o_ptr,  # (B, C, HW) strided, a ReLU's output: x is zeroed where o <= 0 first; read only when RELU_MASK
    y_ptr,  # (B, C, HW) strided output
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_rb,
    stride_rc,
    stride_rhw,
    stride_ob,
    stride_oc,
    stride_ohw,
    stride_yb,
    stride_yc,
    stride_yhw,
    C,
    HW,
    HAS_T: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_R: tl.constexpr,
    RELU: tl.constexpr,
    RELU_MASK: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    num_hw_blocks = tl.cdiv(HW, BLOCK_HW)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    pid_hw = pid % num_hw_blocks
    pid_c = (pid // num_hw_blocks) % num_c_blocks
    pid_b = pid // (num_hw_blocks * num_c_blocks)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    mask_c = offs_c < C
    row = pid_b.to(tl.int64) * C + offs_c
    s = tl.load(s_ptr + row, mask=mask_c, other=0.0)
    if HAS_D:
        s *= tl.load(d_ptr + pid_b)
    t = s
    if HAS_T:
        t = tl.load(t_ptr + row, mask=mask_c, other=0.0)
    _scale_tile(
        x_ptr,
        r_ptr,
        o_ptr,
        y_ptr,
        stride_xb,
        stride_xc,
        stride_xhw,
        stride_rb,
        stride_rc,
        stride_rhw,
        stride_ob,
        stride_oc,
        stride_ohw,
        stride_yb,
        stride_yc,
        stride_yhw,
        pid_b,
        offs_c,
        mask_c,
        offs_hw,
        s,
        t,
        HW,
        HW,
        HAS_T,
        HAS_R,
        RELU,
        RELU_MASK,
        IS_FP64,
    )


@triton.jit
def _dot(a, b, acc, DOT_TF32: tl.constexpr, IS_FP64: tl.constexpr):
    """acc + a @ b. fp64 (for gradcheck) takes a sum of products: tl.dot has no fp64 path on every GPU."""
    if IS_FP64:
        return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif DOT_TF32:
        return tl.dot(a, b, acc, input_precision="tf32")
    else:
        return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _sum_splits(ptr, offs, mask, split, stride_split):
    """sum over k < split of ptr[k * stride_split + offs], in order (the squeeze's HW splits)."""
    acc = tl.load(ptr + offs, mask=mask, other=0.0)
    for _ in range(1, split):
        ptr += stride_split
        acc += tl.load(ptr + offs, mask=mask, other=0.0)
    return acc


# Codes of the constexprs ACT and GATE.
ACT_CODES = {"relu": 0, "silu": 1}
GATE_CODES = {"sigmoid": 0, "hard_sigmoid": 1}


def keeps_gate_input(gate: str) -> bool:
    """Whether the backward of this gate needs its input a, not only s = gate(a)."""
    return gate == "hard_sigmoid"


@triton.jit
def _act_fwd(h, ACT: tl.constexpr):
    if ACT == 1:  # silu, as torch: h / (1 + exp(-h))
        return h / (1.0 + tl.exp(-h))
    else:  # relu; NaN stays NaN, as in torch
        return tl.maximum(h, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _act_bwd(hpre, dh, ACT: tl.constexpr):
    """dh * act'(hpre)."""
    if ACT == 1:
        sg = 1.0 / (1.0 + tl.exp(-hpre))
        return dh * sg * (1.0 + hpre * (1.0 - sg))
    else:
        # torch's threshold_backward: zero where the input is <= 0, so a NaN input passes dh on.
        return tl.where(hpre <= 0.0, 0.0, dh)


@triton.jit
def _gate_fwd(a, GATE: tl.constexpr):
    if GATE == 1:  # hard sigmoid, as torch: min(max(a + 3, 0), 6) / 6, NaN stays NaN
        t = tl.maximum(a + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL)
        return tl.minimum(t, 6.0, propagate_nan=tl.PropagateNan.ALL) / 6.0
    else:
        return 1.0 / (1.0 + tl.exp(-a))


@triton.jit
def _gate_bwd(dssum_ptr, s_ptr, a_ptr, offs, mask, split, stride_split, GATE: tl.constexpr):
    """u = ds * gate'(a), the gradient before the gate, from the partial sums of ds."""
    ds = _sum_splits(dssum_ptr, offs, mask, split, stride_split)
    if GATE == 1:
        # torch's hardsigmoid_backward multiplies by 1/6 rounded to fp32, in every dtype.
        a = tl.load(a_ptr + offs, mask=mask, other=0.0)
        return tl.where((a > -3.0) & (a < 3.0), ds * 0.1666666716337204, 0.0)
    else:
        s = tl.load(s_ptr + offs, mask=mask, other=0.0)
        return ds * s * (1.0 - s)


@triton.jit
def _excite_fwd_block(
    zsum_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    z_ptr,
    s_ptr,
    a_ptr,
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    stride_b2,
    b_start,
    b_end,
    B,
    C,
    R,
    split,
    HW,
    pid_c,
    programs_c,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The excitation of samples b_start <= b < b_end (at most BLOCK_B of them), channel blocks
    pid_c, pid_c + programs_c, ... of s and a; see _excite_fwd_kernel."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    offs_b = b_start + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < b_end
    mask_r = offs_r < R

    # First GEMM over the whole channel axis: each of the programs_c programs of a batch
    # block computes the same hidden layer, which is cheap while W1 is small (heuristics).
    h = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_bc = mask_b[:, None] & mask_c[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        z = _sum_splits(zsum_ptr, bc, mask_bc, split, B * C) / HW
        tl.store(z_ptr + bc, z, mask=mask_bc & (pid_c == 0))
        w1t = tl.load(
            w1_ptr + offs_c[:, None] * stride_w1c + offs_r[None, :] * stride_w1r,
            mask=mask_c[:, None] & mask_r[None, :],
            other=0.0,
        ).to(acc_ty)
        h = _dot(z, w1t, h, DOT_TF32, IS_FP64)
    if HAS_B1:
        h += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(acc_ty)[None, :]
    # Padded columns r >= R are exactly 0: an Inf in z times their zero weights would be NaN,
    # and would reach every channel through the second GEMM.
    h = tl.where(mask_r[None, :], _act_fwd(h, ACT), 0.0)

    for c0 in range(pid_c * BLOCK_C, C, programs_c * BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        w2t = tl.load(
            w2_ptr + offs_r[:, None] * stride_w2r + offs_c[None, :] * stride_w2c,
            mask=mask_r[:, None] & mask_c[None, :],
            other=0.0,
        ).to(acc_ty)
        a = _dot(h, w2t, tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
        if HAS_B2:
            a += tl.load(b2_ptr + offs_c * stride_b2, mask=mask_c, other=0.0).to(acc_ty)[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        mask_bc = mask_b[:, None] & mask_c[None, :]
        tl.store(s_ptr + bc, _gate_fwd(a, GATE), mask=mask_bc)
        if KEEP_A:
            tl.store(a_ptr + bc, a, mask=mask_bc)


@triton.jit
def _excite_fwd_kernel(
    zsum_ptr,  # (SPLIT, B, C) partial sums of x over HW, contiguous
    w1_ptr,  # (R, C) strided
    b1_ptr,  # (R,) read only when HAS_B1
    w2_ptr,  # (C, R) strided
    b2_ptr,  # (C,) read only when HAS_B2
    z_ptr,  # (B, C) out: the squeeze, kept for the backward
    s_ptr,  # (B, C) out: the gate
    a_ptr,  # (B, C) out: the gate's input, written only when KEEP_A
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    stride_b2,
    B,
    C,
    R,
    split,
    HW,
    programs_c,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    _excite_fwd_block(
        zsum_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        b2_ptr,
        z_ptr,
        s_ptr,
        a_ptr,
        stride_w1r,
        stride_w1c,
        stride_b1,
        stride_w2c,
        stride_w2r,
        stride_b2,
        tl.program_id(0) * BLOCK_B,
        B,
        B,
        C,
        R,
        split,
        HW,
        tl.program_id(1),
        programs_c,
        HAS_B1,
        HAS_B2,
        ACT,
        GATE,
        KEEP_A,
        IS_FP64,
        DOT_TF32,
        BLOCK_B,
        BLOCK_C,
        BLOCK_R,
    )


@triton.jit
def _excite_bwd_block(
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
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    b_start,
    b_end,
    pid,
    B,
    C,
    R,
    split,
    HAS_B1: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    NEED_DZ: tl.constexpr,
    NEED_DW1: tl.constexpr,
    NEED_DB1: tl.constexpr,
    NEED_DW2: tl.constexpr,
    NEED_DB2: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The excitation's backward for samples b_start <= b < b_end (at most BLOCK_B of them):
    dz, and the weight gradients' partials of index pid; see _excite_bwd_kernel."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    offs_b = b_start + tl.arange(0, BLOCK_B)
    offs_r = tl.arange(0, BLOCK_R)
    mask_b = offs_b < b_end
    mask_r = offs_r < R

    # Pass 1 over channels: the pre-activation W1 z + b1 (re-computed, not saved) and dh = u W2.
    hpre = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    dh = tl.zeros((BLOCK_B, BLOCK_R), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_bc = mask_b[:, None] & mask_c[None, :]
        mask_cr = mask_c[:, None] & mask_r[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        u = _gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_bc, split, B * C, GATE)
        z = tl.load(z_ptr + bc, mask=mask_bc, other=0.0)
        w1t = tl.load(w1_ptr + offs_c[:, None] * stride_w1c + offs_r[None, :] * stride_w1r, mask=mask_cr, other=0.0)
        w2 = tl.load(w2_ptr + offs_c[:, None] * stride_w2c + offs_r[None, :] * stride_w2r, mask=mask_cr, other=0.0)
        hpre = _dot(z, w1t.to(acc_ty), hpre, DOT_TF32, IS_FP64)
        dh = _dot(u, w2.to(acc_ty), dh, DOT_TF32, IS_FP64)
    if HAS_B1:
        hpre += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(acc_ty)[None, :]
    # Padded columns r >= R are exactly 0 (an Inf in z or u times their zero weights is NaN).
    # Rows past B have u = 0, hence dh = 0 and v = 0: they add nothing to the sums below.
    h = tl.where(mask_r[None, :], _act_fwd(hpre, ACT), 0.0)
    v = tl.where(mask_r[None, :], _act_bwd(hpre, dh, ACT), 0.0)
    if NEED_DB1:
        tl.store(db1_ptr + pid * R + offs_r, tl.sum(v, axis=0), mask=mask_r)

    # Pass 2 over channels: everything that is indexed by channel.
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_bc = mask_b[:, None] & mask_c[None, :]
        mask_cr = mask_c[:, None] & mask_r[None, :]
        bc = offs_b.to(tl.int64)[:, None] * C + offs_c[None, :]
        if NEED_DW2 or NEED_DB2:
            u = _gate_bwd(dssum_ptr, s_ptr, a_ptr, bc, mask_bc, split, B * C, GATE)
            if NEED_DB2:
                tl.store(db2_ptr + pid * C + offs_c, tl.sum(u, axis=0), mask=mask_c)
            if NEED_DW2:
                dw2 = _dot(tl.trans(u), h, tl.zeros((BLOCK_C, BLOCK_R), dtype=acc_ty), DOT_TF32, IS_FP64)
                cr = pid.to(tl.int64) * C * R + offs_c[:, None] * R + offs_r[None, :]
                tl.store(dw2_ptr + cr, dw2, mask=mask_cr)
        if NEED_DW1:
            z = tl.load(z_ptr + bc, mask=mask_bc, other=0.0)
            dw1 = _dot(tl.trans(v), z, tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
            rc = pid.to(tl.int64) * R * C + offs_r[:, None] * C + offs_c[None, :]
            tl.store(dw1_ptr + rc, dw1, mask=mask_r[:, None] & mask_c[None, :])
        if NEED_DZ:
            w1 = tl.load(
                w1_ptr + offs_r[:, None] * stride_w1r + offs_c[None, :] * stride_w1c,
                mask=mask_r[:, None] & mask_c[None, :],
                other=0.0,
            )
            dz = _dot(v, w1.to(acc_ty), tl.zeros((BLOCK_B, BLOCK_C), dtype=acc_ty), DOT_TF32, IS_FP64)
            tl.store(dz_ptr + bc, dz, mask=mask_bc)


@triton.jit
def _excite_bwd_kernel(
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
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    B,
    C,
    R,
    split,
    HAS_B1: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    NEED_DZ: tl.constexpr,
    NEED_DW1: tl.constexpr,
    NEED_DB1: tl.constexpr,
    NEED_DW2: tl.constexpr,
    NEED_DB2: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    _excite_bwd_block(
        dssum_ptr,
        z_ptr,
        s_ptr,
        a_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        dz_ptr,
        dw1_ptr,
        db1_ptr,
        dw2_ptr,
        db2_ptr,
        stride_w1r,
        stride_w1c,
        stride_b1,
        stride_w2c,
        stride_w2r,
        tl.program_id(0) * BLOCK_B,
        B,
        tl.program_id(0),
        B,
        C,
        R,
        split,
        HAS_B1,
        ACT,
        GATE,
        NEED_DZ,
        NEED_DW1,
        NEED_DB1,
        NEED_DW2,
        NEED_DB2,
        IS_FP64,
        DOT_TF32,
        BLOCK_B,
        BLOCK_C,
        BLOCK_R,
    )


@triton.jit
def _se_fwd_one_launch_kernel(
    x_ptr,  # (B, C, HW) strided
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    b2_ptr,  # (C,), read only when HAS_B2
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    r_ptr,  # (B, C, HW) strided residual, read only when HAS_R
    z_ptr,  # (B, C) contiguous, acc dtype: the squeeze (written, then read back)
    s_ptr,  # (B, C) contiguous, acc dtype: the gate
    a_ptr,  # (B, C) contiguous, acc dtype: the gate's input, written only when KEEP_A
    y_ptr,  # (B, C, HW) strided output
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_rb,
    stride_rc,
    stride_rhw,
    stride_yb,
    stride_yc,
    stride_yhw,
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    stride_b2,
    C,
    R,
    HW,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_R: tl.constexpr,
    RELU: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One sample per program: squeeze, both FCs as GEMVs, then the scale (and the residual
    tail), re-reading the sample while it is still in L2. One launch for the whole forward."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    pid_b = tl.program_id(0)
    x_ptr += pid_b.to(tl.int64) * stride_xb
    y_ptr += pid_b.to(tl.int64) * stride_yb
    row = pid_b.to(tl.int64) * C

    # squeeze: z = mean over HW, kept in memory (it is saved for the backward anyway)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=acc_ty)
        for hw0 in range(0, HW, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mask = mask_c[:, None] & (offs_hw[None, :] < HW)
            ptrs = x_ptr + offs_c.to(tl.int64)[:, None] * stride_xc + offs_hw[None, :] * stride_xhw
            acc += tl.load(ptrs, mask=mask, other=0.0).to(acc_ty)
        tl.store(z_ptr + row + offs_c, tl.sum(acc, axis=1) / HW, mask=mask_c)
    tl.debug_barrier()  # z is read back below by other threads of this program

    # hidden layer: h = act(W1 z + b1), a GEMV over channel blocks
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    h = tl.zeros((BLOCK_R,), dtype=acc_ty)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        z = tl.load(z_ptr + row + offs_c, mask=mask_c, other=0.0)
        w1 = tl.load(
            w1_ptr + offs_r[:, None] * stride_w1r + offs_c[None, :] * stride_w1c,
            mask=mask_r[:, None] & mask_c[None, :],
            other=0.0,
        ).to(acc_ty)
        h += tl.sum(w1 * z[None, :], axis=1)
    if HAS_B1:
        h += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(acc_ty)
    h = tl.where(mask_r, _act_fwd(h, ACT), 0.0)  # padded units exactly 0, whatever z holds
    if HAS_D:
        d = tl.load(d_ptr + pid_b)

    # per channel block: the gate, then the scale of that block's channels
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        w2 = tl.load(
            w2_ptr + offs_c[:, None] * stride_w2c + offs_r[None, :] * stride_w2r,
            mask=mask_c[:, None] & mask_r[None, :],
            other=0.0,
        ).to(acc_ty)
        a = tl.sum(w2 * h[None, :], axis=1)
        if HAS_B2:
            a += tl.load(b2_ptr + offs_c * stride_b2, mask=mask_c, other=0.0).to(acc_ty)
        s = _gate_fwd(a, GATE).to(acc_ty)
        tl.store(s_ptr + row + offs_c, s, mask=mask_c)
        if KEEP_A:
            tl.store(a_ptr + row + offs_c, a, mask=mask_c)
        if HAS_D:
            s *= d
        for hw0 in range(0, HW, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mask = mask_c[:, None] & (offs_hw[None, :] < HW)
            xv = tl.load(
                x_ptr + offs_c.to(tl.int64)[:, None] * stride_xc + offs_hw[None, :] * stride_xhw, mask=mask, other=0.0
            ).to(acc_ty)
            y = xv * s[:, None]
            y = _residual_tail(y, r_ptr, pid_b, offs_c, offs_hw, mask, stride_rb, stride_rc, stride_rhw, HAS_R, RELU)
            y_ptrs = y_ptr + offs_c.to(tl.int64)[:, None] * stride_yc + offs_hw[None, :] * stride_yhw
            tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _stream_ticket(t, B, LAG, tiles):
    """(second pass?, sample, tile) of ticket t. The first passes of samples 0 .. LAG-1 come
    first; then, for each b, the first pass of sample b + LAG and the second pass of sample b;
    then the second passes left. A sample's second pass thus comes after the first passes of
    every sample up to LAG - 1 past it: its whole chunk (LAG is a multiple of the chunk)."""
    head = LAG * tiles
    u = t - head
    paired = (B - LAG) * 2 * tiles
    j = u // (2 * tiles)
    rr = u - j * (2 * tiles)
    v = u - paired
    in_head = t < head
    in_pair = (t >= head) & (u < paired)
    second = tl.where(in_head, 0, tl.where(in_pair, (rr >= tiles).to(tl.int32), 1))
    sample = tl.where(in_head, t // tiles, tl.where(in_pair, tl.where(rr < tiles, j + LAG, j), B - LAG + v // tiles))
    tile = tl.where(in_head, t % tiles, tl.where(in_pair, rr % tiles, v % tiles))
    return second, sample, tile


@triton.jit
def _stream_arrive(count_ptr, n):
    """Counts this program's first-pass tile of a chunk done (n in all); True for the last one.
    Its partial sums are stored first (the barrier), and released by the atomic."""
    tl.debug_barrier()
    return tl.atomic_add(count_ptr, 1, sem="acq_rel") == n - 1


@triton.jit
def _stream_publish(flag_ptr):
    """The chunk's excitation is stored: lets its second-pass tiles go."""
    tl.debug_barrier()
    tl.atomic_xchg(flag_ptr, 1, sem="release")


@triton.jit
def _stream_wait(flag_ptr, err_ptr, WAIT: tl.constexpr, target=1):
    """Waits until the counter at flag_ptr reaches target (a chunk's excitation is out). Deadlock-
    free without co-residency: a ticket is taken only by a running program, it waits only on
    tickets taken before it, and the tickets it waits on never wait on later ones. Where
    programs run one after another (WAIT False: the interpreter), the order of the tickets
    alone must have got there; a miss is counted in err_ptr."""
    if WAIT:
        while tl.atomic_add(flag_ptr, 0, sem="acquire") < target:
            pass
    else:
        tl.atomic_add(err_ptr, (tl.atomic_add(flag_ptr, 0, sem="acquire") < target).to(tl.int32))
    tl.debug_barrier()


@triton.jit
def _se_fwd_stream_kernel(
    x_ptr,  # (B, C, HW) strided
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    b2_ptr,  # (C,), read only when HAS_B2
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    r_ptr,  # (B, C, HW) strided residual, read only when HAS_R
    zsum_ptr,  # (HW_TILES, B, C) acc dtype: each tile's partial sums
    z_ptr,  # (B, C) acc dtype out
    s_ptr,  # (B, C) acc dtype out
    a_ptr,  # (B, C) acc dtype out, written only when KEEP_A
    y_ptr,  # (B, C, HW) strided output
    ws_ptr,  # int32, zeroed: [ticket, misses, done count per chunk, ready flag per chunk]
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_rb,
    stride_rc,
    stride_rhw,
    stride_yb,
    stride_yc,
    stride_yhw,
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    stride_b2,
    B,
    C,
    R,
    HW,
    HW_TILE,
    hw_tiles,
    chunk,
    LAG,
    num_chunks,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_R: tl.constexpr,
    RELU: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    WAIT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    EX_BLOCK_B: tl.constexpr,
    EX_BLOCK_C: tl.constexpr,
    EX_BLOCK_R: tl.constexpr,
):
    """The MLP form's forward as one persistent launch (see _stream_ticket): a first-pass
    ticket sums one tile of x over its HW range; the last one of a chunk runs the chunk's
    excitation; a second-pass ticket scales one tile once its chunk's gate is out."""
    done_ptr = ws_ptr + 2
    ready_ptr = done_ptr + num_chunks
    tiles = tl.cdiv(C, BLOCK_C) * hw_tiles
    total = 2 * B * tiles
    t = tl.atomic_add(ws_ptr, 1)
    while t < total:
        second, pid_b, tile = _stream_ticket(t, B, LAG, tiles)
        pid_c = tile // hw_tiles
        hwt = tile - pid_c * hw_tiles
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        hw_start = hwt * HW_TILE
        hw_end = tl.minimum(hw_start + HW_TILE, HW)
        ck = pid_b // chunk
        if second == 0:
            part = _hw_sum_range(
                x_ptr, x_ptr, x_ptr, x_ptr,
                stride_xb, stride_xc, stride_xhw, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                pid_b, offs_c, mask_c, hw_start, hw_end,
                False, False, False, IS_FP64, BLOCK_C, BLOCK_HW,
            )  # fmt: skip
            tl.store(zsum_ptr + (hwt.to(tl.int64) * B + pid_b) * C + offs_c, part, mask=mask_c)
            b_start = ck * chunk
            b_end = tl.minimum(b_start + chunk, B)
            if _stream_arrive(done_ptr + ck, (b_end - b_start) * tiles):
                _excite_fwd_block(
                    zsum_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, z_ptr, s_ptr, a_ptr,
                    stride_w1r, stride_w1c, stride_b1, stride_w2c, stride_w2r, stride_b2,
                    b_start, b_end, B, C, R, hw_tiles, HW, 0, 1,
                    HAS_B1, HAS_B2, ACT, GATE, KEEP_A, IS_FP64, DOT_TF32, EX_BLOCK_B, EX_BLOCK_C, EX_BLOCK_R,
                )  # fmt: skip
                _stream_publish(ready_ptr + ck)
        else:
            _stream_wait(ready_ptr + ck, ws_ptr + 1, WAIT)
            sv = tl.load(s_ptr + pid_b.to(tl.int64) * C + offs_c, mask=mask_c, other=0.0)
            if HAS_D:
                sv *= tl.load(d_ptr + pid_b)
            for hw0 in range(hw_start, hw_end, BLOCK_HW):
                offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                _scale_tile(
                    x_ptr, r_ptr, x_ptr, y_ptr,
                    stride_xb, stride_xc, stride_xhw, stride_rb, stride_rc, stride_rhw, 0, 0, 0,
                    stride_yb, stride_yc, stride_yhw,
                    pid_b, offs_c, mask_c, offs_hw, sv, sv, HW, hw_end,
                    False, HAS_R, RELU, False, IS_FP64,
                )  # fmt: skip
        t = tl.atomic_add(ws_ptr, 1)


@triton.jit
def _se_fwd_spread_kernel(
    x_ptr,  # (B, C, HW) strided
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    b2_ptr,  # (C,), read only when HAS_B2
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    r_ptr,  # (B, C, HW) strided residual, read only when HAS_R
    zsum_ptr,  # (HW_TILES, B, C) acc dtype: each tile's partial sums
    hpart_ptr,  # (TILES, B, BLOCK_R) acc dtype: each tile's share of W1 @ (sum of x)
    z_ptr,  # (B, C) acc dtype out
    s_ptr,  # (B, C) acc dtype out
    a_ptr,  # (B, C) acc dtype out, written only when KEEP_A
    y_ptr,  # (B, C, HW) strided output
    ws_ptr,  # int32, zeroed: [ticket, misses, squeezed tiles per sample, gate flag per (sample, channel block)]
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_rb,
    stride_rc,
    stride_rhw,
    stride_yb,
    stride_yc,
    stride_yhw,
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    stride_b2,
    B,
    C,
    R,
    HW,
    HW_TILE,
    hw_tiles,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    KEEP_A: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_R: tl.constexpr,
    RELU: tl.constexpr,
    IS_FP64: tl.constexpr,
    WAIT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
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
    done_ptr = ws_ptr + 2
    ready_ptr = done_ptr + B
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    t = tl.atomic_add(ws_ptr, 1)
    while t < total:
        if t < n_squeeze:
            pid_b = t // tiles
            tile = t - pid_b * tiles
            pid_c = tile // hw_tiles
            hwt = tile - pid_c * hw_tiles
            offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            hw_start = hwt * HW_TILE
            part = _hw_sum_range(
                x_ptr, x_ptr, x_ptr, x_ptr,
                stride_xb, stride_xc, stride_xhw, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                pid_b, offs_c, mask_c, hw_start, tl.minimum(hw_start + HW_TILE, HW),
                False, False, False, IS_FP64, BLOCK_C, BLOCK_HW,
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
        elif t < n_squeeze + n_gate:
            u = t - n_squeeze
            pid_b = u // c_blocks
            pid_c = u - pid_b * c_blocks
            offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            _stream_wait(done_ptr + pid_b, ws_ptr + 1, WAIT, tiles)
            # the hidden layer, from every tile's product, in a fixed order
            h = tl.zeros((BLOCK_R,), dtype=acc_ty)
            for k in range(0, tiles):
                h += tl.load(hpart_ptr + (k * B + pid_b).to(tl.int64) * BLOCK_R + offs_r)
            h = h / HW
            if HAS_B1:
                h += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(acc_ty)
            h = tl.where(mask_r, _act_fwd(h, ACT), 0.0)  # padded units exactly 0, whatever z holds
            row = pid_b.to(tl.int64) * C + offs_c
            zc = _sum_splits(zsum_ptr, row, mask_c, hw_tiles, B * C) / HW
            tl.store(z_ptr + row, zc, mask=mask_c)
            w2 = tl.load(
                w2_ptr + offs_c[:, None] * stride_w2c + offs_r[None, :] * stride_w2r,
                mask=mask_c[:, None] & mask_r[None, :],
                other=0.0,
            ).to(acc_ty)
            a = tl.sum(w2 * h[None, :], axis=1)
            if HAS_B2:
                a += tl.load(b2_ptr + offs_c * stride_b2, mask=mask_c, other=0.0).to(acc_ty)
            tl.store(s_ptr + row, _gate_fwd(a, GATE).to(acc_ty), mask=mask_c)
            if KEEP_A:
                tl.store(a_ptr + row, a, mask=mask_c)
            _stream_publish(ready_ptr + pid_b * c_blocks + pid_c)
        else:
            u = t - n_squeeze - n_gate
            pid_b = u // tiles
            tile = u - pid_b * tiles
            pid_c = tile // hw_tiles
            hwt = tile - pid_c * hw_tiles
            offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            hw_start = hwt * HW_TILE
            hw_end = tl.minimum(hw_start + HW_TILE, HW)
            _stream_wait(ready_ptr + pid_b * c_blocks + pid_c, ws_ptr + 1, WAIT)
            sv = tl.load(s_ptr + pid_b.to(tl.int64) * C + offs_c, mask=mask_c, other=0.0)
            if HAS_D:
                sv *= tl.load(d_ptr + pid_b)
            for hw0 in range(hw_start, hw_end, BLOCK_HW):
                offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                _scale_tile(
                    x_ptr, r_ptr, x_ptr, y_ptr,
                    stride_xb, stride_xc, stride_xhw, stride_rb, stride_rc, stride_rhw, 0, 0, 0,
                    stride_yb, stride_yc, stride_yhw,
                    pid_b, offs_c, mask_c, offs_hw, sv, sv, HW, hw_end,
                    False, HAS_R, RELU, False, IS_FP64,
                )  # fmt: skip
        t = tl.atomic_add(ws_ptr, 1)


@triton.jit
def _se_bwd_stream_kernel(
    g_ptr,  # (B, C, HW) strided: dL/dy
    x_ptr,  # (B, C, HW) strided
    o_ptr,  # (B, C, HW) strided, a ReLU's output: g is zeroed where o <= 0; read only when RELU_MASK
    dr_ptr,  # (B, C, HW) strided: the masked g, written (and re-read) when STORE_G
    d_ptr,  # (B,) acc dtype, read only when HAS_D
    z_ptr,  # (B, C)
    s_ptr,  # (B, C)
    a_ptr,  # (B, C), read only when GATE needs it
    w1_ptr,  # (R, C)
    b1_ptr,  # (R,), read only when HAS_B1
    w2_ptr,  # (C, R)
    dssum_ptr,  # (HW_TILES, B, C) acc dtype: each tile's partial sums of g * x (times d)
    dz_ptr,  # (B, C) acc dtype
    dw1_ptr,  # (NUM_CHUNKS, R, C) out: each chunk's share of dW1, when NEED_DW1
    db1_ptr,  # (NUM_CHUNKS, R) out, when NEED_DB1
    dw2_ptr,  # (NUM_CHUNKS, C, R) out, when NEED_DW2
    db2_ptr,  # (NUM_CHUNKS, C) out, when NEED_DB2
    dx_ptr,  # (B, C, HW) strided out
    ws_ptr,  # int32, zeroed: [ticket, misses, done count per chunk, ready flag per chunk]
    stride_gb,
    stride_gc,
    stride_ghw,
    stride_xb,
    stride_xc,
    stride_xhw,
    stride_ob,
    stride_oc,
    stride_ohw,
    stride_rb,
    stride_rc,
    stride_rhw,
    stride_dxb,
    stride_dxc,
    stride_dxhw,
    stride_w1r,
    stride_w1c,
    stride_b1,
    stride_w2c,
    stride_w2r,
    B,
    C,
    R,
    HW,
    HW_TILE,
    hw_tiles,
    chunk,
    LAG,
    num_chunks,
    HAS_B1: tl.constexpr,
    ACT: tl.constexpr,
    GATE: tl.constexpr,
    NEED_DW1: tl.constexpr,
    NEED_DB1: tl.constexpr,
    NEED_DW2: tl.constexpr,
    NEED_DB2: tl.constexpr,
    HAS_D: tl.constexpr,
    RELU_MASK: tl.constexpr,
    STORE_G: tl.constexpr,
    IS_FP64: tl.constexpr,
    DOT_TF32: tl.constexpr,
    WAIT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    EX_BLOCK_B: tl.constexpr,
    EX_BLOCK_C: tl.constexpr,
    EX_BLOCK_R: tl.constexpr,
):
    """The MLP form's backward as one persistent launch (see _stream_ticket): a first-pass
    ticket sums g * x over one tile; the last one of a chunk runs the chunk's excitation
    backward (dz and the chunk's weight-gradient partials); a second-pass ticket writes one
    tile of dx = g * s * d + dz / HW, re-reading g (or the masked g) while it is in L2."""
    done_ptr = ws_ptr + 2
    ready_ptr = done_ptr + num_chunks
    tiles = tl.cdiv(C, BLOCK_C) * hw_tiles
    total = 2 * B * tiles
    t = tl.atomic_add(ws_ptr, 1)
    while t < total:
        second, pid_b, tile = _stream_ticket(t, B, LAG, tiles)
        pid_c = tile // hw_tiles
        hwt = tile - pid_c * hw_tiles
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        hw_start = hwt * HW_TILE
        hw_end = tl.minimum(hw_start + HW_TILE, HW)
        ck = pid_b // chunk
        if second == 0:
            part = _hw_sum_range(
                x_ptr, g_ptr, o_ptr, dr_ptr,
                stride_xb, stride_xc, stride_xhw, stride_gb, stride_gc, stride_ghw,
                stride_ob, stride_oc, stride_ohw, stride_rb, stride_rc, stride_rhw,
                pid_b, offs_c, mask_c, hw_start, hw_end,
                True, RELU_MASK, STORE_G, IS_FP64, BLOCK_C, BLOCK_HW,
            )  # fmt: skip
            if HAS_D:
                part *= tl.load(d_ptr + pid_b)
            tl.store(dssum_ptr + (hwt.to(tl.int64) * B + pid_b) * C + offs_c, part, mask=mask_c)
            b_start = ck * chunk
            b_end = tl.minimum(b_start + chunk, B)
            if _stream_arrive(done_ptr + ck, (b_end - b_start) * tiles):
                _excite_bwd_block(
                    dssum_ptr, z_ptr, s_ptr, a_ptr, w1_ptr, b1_ptr, w2_ptr,
                    dz_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr,
                    stride_w1r, stride_w1c, stride_b1, stride_w2c, stride_w2r,
                    b_start, b_end, ck, B, C, R, hw_tiles,
                    HAS_B1, ACT, GATE, True, NEED_DW1, NEED_DB1, NEED_DW2, NEED_DB2,
                    IS_FP64, DOT_TF32, EX_BLOCK_B, EX_BLOCK_C, EX_BLOCK_R,
                )  # fmt: skip
                _stream_publish(ready_ptr + ck)
        else:
            _stream_wait(ready_ptr + ck, ws_ptr + 1, WAIT)
            row = pid_b.to(tl.int64) * C + offs_c
            sv = tl.load(s_ptr + row, mask=mask_c, other=0.0)
            if HAS_D:
                sv *= tl.load(d_ptr + pid_b)
            dz = tl.load(dz_ptr + row, mask=mask_c, other=0.0)
            for hw0 in range(hw_start, hw_end, BLOCK_HW):
                offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                if STORE_G:  # the masked g is in memory already: read it instead of g and o
                    _scale_tile(
                        dr_ptr, x_ptr, x_ptr, dx_ptr,
                        stride_rb, stride_rc, stride_rhw, 0, 0, 0, 0, 0, 0,
                        stride_dxb, stride_dxc, stride_dxhw,
                        pid_b, offs_c, mask_c, offs_hw, sv, dz, HW, hw_end,
                        True, False, False, False, IS_FP64,
                    )  # fmt: skip
                else:
                    _scale_tile(
                        g_ptr, x_ptr, o_ptr, dx_ptr,
                        stride_gb, stride_gc, stride_ghw, 0, 0, 0, stride_ob, stride_oc, stride_ohw,
                        stride_dxb, stride_dxc, stride_dxhw,
                        pid_b, offs_c, mask_c, offs_hw, sv, dz, HW, hw_end,
                        True, False, False, RELU_MASK, IS_FP64,
                    )  # fmt: skip
        t = tl.atomic_add(ws_ptr, 1)


# True when triton.jit made the kernels above interpreter functions (TRITON_INTERPRET=1 when
# this module was imported): they then run on CPU tensors, with numpy.
INTERPRETED: bool = not isinstance(_scale_kernel, triton.runtime.JITFunction)


# --------------------------------------------------------------------------------------
# launchers: tensors in, tensors out
# --------------------------------------------------------------------------------------


def _strides(t: Optional[torch.Tensor], like: Optional[tuple[int, int, int]]) -> tuple[int, int, int]:
    if t is None:
        assert like is not None
        return like
    ts = bchw_strides(t)
    assert ts is not None, "every (B, C, H, W) operand must have H and W flattenable into one strided axis"
    return ts


def _hw_sum(
    x: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    relu_out: Optional[torch.Tensor] = None,
    d: Optional[torch.Tensor] = None,
    store_g: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Partial sums over HW of x, or of g * x; with relu_out, g is first zeroed where
    relu_out <= 0 (and, with store_g, written out: returned second); with d, sample b's sums
    are times d[b]."""
    b, c, h, w = x.shape
    hw = h * w
    xs = _strides(x, None)
    gs = _strides(g, xs)
    cfg = hz.reduce_config(b, c, hw, is_channels_last(xs), hz.sm_count(x.device))
    out = _empty(cfg.split, b, c, dtype=acc_dtype(x.dtype), device=x.device)
    dr = _empty_like(g) if store_g and g is not None else None
    if out.numel() == 0:
        return out, dr
    grid = (cfg.split * b * hz.cdiv(c, cfg.block_c),)
    _launch(_hw_sum_kernel, grid)(
        x,
        x if g is None else g,
        x if relu_out is None else relu_out,
        x if dr is None else dr,
        x if d is None else d,
        out,
        *xs,
        *gs,
        *_strides(relu_out, xs),
        *_strides(dr, xs),
        b,
        c,
        hw,
        cfg.hw_per_split,
        HAS_G=g is not None,
        RELU_MASK=relu_out is not None,
        STORE_G=dr is not None,
        HAS_D=d is not None,
        IS_FP64=x.dtype == torch.float64,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        num_warps=cfg.num_warps,
    )
    return out, dr


def squeeze_fwd(x: torch.Tensor) -> torch.Tensor:
    """Partial sums of x over HW: (SPLIT, B, C) in the accumulation dtype. excite_fwd ends the mean."""
    _record("squeeze")
    return _hw_sum(x)[0]


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
    _record("scale_bwd")
    return _hw_sum(x, g, relu_out, d, store_g)


def _scale(
    x: torch.Tensor,
    s: torch.Tensor,
    out: torch.Tensor,
    t: Optional[torch.Tensor] = None,
    d: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    relu: bool = False,
    relu_out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    xs, ys = _strides(x, None), _strides(out, None)
    b, c, h, w = x.shape
    hw = h * w
    if out.numel() == 0:
        return out
    cfg = hz.scale_config(c, hw, is_channels_last(ys))
    grid = (b * hz.cdiv(c, cfg.block_c) * hz.cdiv(hw, cfg.block_hw),)
    _launch(_scale_kernel, grid)(
        x,
        s,
        s if t is None else t,
        s if d is None else d,
        x if residual is None else residual,
        x if relu_out is None else relu_out,
        out,
        *xs,
        *_strides(residual, xs),
        *_strides(relu_out, xs),
        *ys,
        c,
        hw,
        HAS_T=t is not None,
        HAS_D=d is not None,
        HAS_R=residual is not None,
        RELU=relu,
        RELU_MASK=relu_out is not None,
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
    _record("scale")
    return _scale(x, s, _empty_like(x), d=d, residual=residual, relu=relu)


def squeeze_scale_bwd(
    g: torch.Tensor,
    s: torch.Tensor,
    dz: torch.Tensor,
    like: torch.Tensor,
    d: Optional[torch.Tensor] = None,
    relu_out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """dx = g * s[b, c] * d[b] + dz[b, c] / HW, in the dtype and memory format of `like` (x);
    through a ReLU epilogue, g is first zeroed where relu_out (the forward's output) <= 0."""
    _record("squeeze_scale_bwd")
    return _scale(g, s, _empty_like(like), t=dz, d=d, relu_out=relu_out)


def one_launch_forward(x: torch.Tensor, r: int) -> bool:
    """Whether squeeze_excite's forward on x (hidden width r) runs as one launch."""
    b, c, h, w = x.shape
    acc_bytes = 8 if x.dtype == torch.float64 else 4
    return hz.one_launch_forward(b, c, h * w, r, x.numel() * x.element_size(), hz.l2_bytes(x.device), acc_bytes)


def se_fwd_one_launch(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    act: str = "relu",
    gate: str = "sigmoid",
    d: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    relu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MLP form's whole forward in one launch, one program per sample: (y, z, s, a) as the
    three-launch path returns them (squeeze_fwd, excite_fwd, scale_fwd), the residual tail too.
    For small batches, where the three launches cost more than the bytes."""
    b, c, h, w = x.shape
    hw, r = h * w, w1.shape[0]
    xs, ys = _strides(x, None), None
    acc = acc_dtype(x.dtype)
    z = _empty(b, c, dtype=acc, device=x.device)
    s = _empty(b, c, dtype=acc, device=x.device)
    a = _empty(b, c, dtype=acc, device=x.device) if keeps_gate_input(gate) else z.new_empty(0)
    y = _empty_like(x)
    ys = _strides(y, None)
    _record("se_fwd_one_launch")
    if y.numel() == 0:
        return y, z, s, a
    cfg = hz.one_launch_config(c, hw, r, is_channels_last(xs))
    _launch(_se_fwd_one_launch_kernel, (b,))(
        x,
        w1,
        w1 if b1 is None else b1,
        w2,
        w2 if b2 is None else b2,
        z if d is None else d,
        x if residual is None else residual,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        y,
        *xs,
        *_strides(residual, xs),
        *ys,
        *w1.stride(),
        _vec_stride(b1),
        *w2.stride(),
        _vec_stride(b2),
        c,
        r,
        hw,
        HAS_B1=b1 is not None,
        HAS_B2=b2 is not None,
        ACT=ACT_CODES[act],
        GATE=GATE_CODES[gate],
        KEEP_A=keeps_gate_input(gate),
        HAS_D=d is not None,
        HAS_R=residual is not None,
        RELU=relu,
        IS_FP64=x.dtype == torch.float64,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps,
    )
    return y, z, s, a


def _stream_config(x: torch.Tensor, r: int, sample_bytes: int) -> Optional[hz.StreamConfig]:
    b, c, h, w = x.shape
    xs = bchw_strides(x)
    if xs is None:
        return None
    return hz.stream_config(
        b, c, h * w, r, x.dtype, is_channels_last(xs), sample_bytes, hz.sm_count(x.device), hz.l2_bytes(x.device)
    )


def stream_forward(x: torch.Tensor, r: int) -> Optional[hz.StreamConfig]:
    """The streamed forward's configuration for x (hidden width r), or None where it does not pay."""
    return _stream_config(x, r, x[0].numel() * x.element_size() if x.shape[0] else 0)


def stream_backward(
    g: torch.Tensor, x: torch.Tensor, r: int, relu_out: Optional[torch.Tensor], store_g: bool
) -> Optional[hz.StreamConfig]:
    """The streamed backward's configuration, or None where it does not pay."""
    per_elem = (
        g.element_size() * (1 + store_g) + x.element_size() + (0 if relu_out is None else relu_out.element_size())
    )
    return _stream_config(x, r, x[0].numel() * per_elem if x.shape[0] else 0)


def _stream_workspace(num_chunks: int, device: torch.device) -> torch.Tensor:
    # the ticket counter, the count of order misses, then a done counter and a ready flag per chunk
    return torch.zeros(2 + 2 * num_chunks, dtype=torch.int32, device=device)


def _check_stream(ws: torch.Tensor, tickets: int, programs: int) -> None:
    """Where programs run one after another (the interpreter), every second-pass ticket must
    have found its chunk's excitation done by the order of the tickets alone, and every
    program must have run out of tickets."""
    if INTERPRETED:
        taken, misses = int(ws[0]), int(ws[1])
        if misses or taken != tickets + programs:
            raise RuntimeError(f"fused_se: streamed pass out of order ({misses} early reads, {taken} tickets taken)")


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
    """The MLP form's forward as one persistent launch (cfg from stream_forward): (y, z, s, a)
    as the three-launch path returns them, the residual tail too; x's second read is served by
    L2, so 2N bytes move instead of 3N."""
    b, c, h, w = x.shape
    hw, r = h * w, w1.shape[0]
    xs = _strides(x, None)
    acc = acc_dtype(x.dtype)
    z = _empty(b, c, dtype=acc, device=x.device)
    s = _empty(b, c, dtype=acc, device=x.device)
    a = _empty(b, c, dtype=acc, device=x.device) if keeps_gate_input(gate) else z.new_empty(0)
    y = _empty_like(x)
    num_chunks = hz.cdiv(b, cfg.chunk)
    zsum = _empty(cfg.hw_tiles, b, c, dtype=acc, device=x.device)
    ws = _stream_workspace(num_chunks, x.device)
    _record("se_fwd_stream")
    _launch(_se_fwd_stream_kernel, (cfg.programs,))(
        x,
        w1,
        w1 if b1 is None else b1,
        w2,
        w2 if b2 is None else b2,
        z if d is None else d,
        x if residual is None else residual,
        zsum,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        y,
        ws,
        *xs,
        *_strides(residual, xs),
        *_strides(y, None),
        *w1.stride(),
        _vec_stride(b1),
        *w2.stride(),
        _vec_stride(b2),
        b,
        c,
        r,
        hw,
        cfg.hw_tile,
        cfg.hw_tiles,
        cfg.chunk,
        cfg.lag,
        num_chunks,
        HAS_B1=b1 is not None,
        HAS_B2=b2 is not None,
        ACT=ACT_CODES[act],
        GATE=GATE_CODES[gate],
        KEEP_A=keeps_gate_input(gate),
        HAS_D=d is not None,
        HAS_R=residual is not None,
        RELU=relu,
        IS_FP64=x.dtype == torch.float64,
        DOT_TF32=cfg.excite.dot_tf32,
        WAIT=not INTERPRETED,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        EX_BLOCK_B=cfg.excite.block_b,
        EX_BLOCK_C=cfg.excite.block_c,
        EX_BLOCK_R=cfg.excite.block_r,
        num_warps=cfg.num_warps,
    )
    _check_stream(ws, 2 * b * cfg.tiles, cfg.programs)
    return y, z, s, a


def spread_forward(x: torch.Tensor, r: int) -> Optional[hz.SpreadConfig]:
    """The spread forward's configuration for x (hidden width r), or None where it does not apply."""
    b, c, h, w = x.shape
    xs = bchw_strides(x)
    if xs is None:
        return None
    return hz.spread_config(b, c, h * w, r, is_channels_last(xs), hz.sm_count(x.device))


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
    excitation spread over the programs too (cfg from spread_forward): (y, z, s, a) as the
    three-launch path returns them, the residual tail too."""
    b, c, h, w = x.shape
    hw, r = h * w, w1.shape[0]
    xs = _strides(x, None)
    acc = acc_dtype(x.dtype)
    z = _empty(b, c, dtype=acc, device=x.device)
    s = _empty(b, c, dtype=acc, device=x.device)
    a = _empty(b, c, dtype=acc, device=x.device) if keeps_gate_input(gate) else z.new_empty(0)
    y = _empty_like(x)
    zsum = _empty(cfg.hw_tiles, b, c, dtype=acc, device=x.device)
    hpart = _empty(cfg.tiles, b, cfg.block_r, dtype=acc, device=x.device)
    # the ticket counter, the count of order misses, then a count of squeezed tiles per sample
    # and a gate flag per (sample, channel block)
    ws = torch.zeros(2 + b + b * cfg.c_blocks, dtype=torch.int32, device=x.device)
    _record("se_fwd_spread")
    _launch(_se_fwd_spread_kernel, (cfg.programs,))(
        x,
        w1,
        w1 if b1 is None else b1,
        w2,
        w2 if b2 is None else b2,
        z if d is None else d,
        x if residual is None else residual,
        zsum,
        hpart,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        y,
        ws,
        *xs,
        *_strides(residual, xs),
        *_strides(y, None),
        *w1.stride(),
        _vec_stride(b1),
        *w2.stride(),
        _vec_stride(b2),
        b,
        c,
        r,
        hw,
        cfg.hw_tile,
        cfg.hw_tiles,
        HAS_B1=b1 is not None,
        HAS_B2=b2 is not None,
        ACT=ACT_CODES[act],
        GATE=GATE_CODES[gate],
        KEEP_A=keeps_gate_input(gate),
        HAS_D=d is not None,
        HAS_R=residual is not None,
        RELU=relu,
        IS_FP64=x.dtype == torch.float64,
        WAIT=not INTERPRETED,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps,
    )
    _check_stream(ws, b * (2 * cfg.tiles + cfg.c_blocks), cfg.programs)
    return y, z, s, a


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
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], ...]:
    """The MLP form's backward as one persistent launch (cfg from stream_backward):
    (dx, masked g or None, dW1, db1, dW2, db2), the weight gradients None where `need`
    (dW1, db1, dW2, db2) says so. g is re-read from L2 for dx: 3N bytes instead of 4N.
    Arguments as scale_bwd and excite_bwd take them."""
    assert g.shape == x.shape and (relu_out is None or relu_out.shape == x.shape)
    assert not store_g or relu_out is not None
    need_dw1, need_db1, need_dw2, need_db2 = need
    b, c, h, w = x.shape
    hw, r = h * w, w1.shape[0]
    xs = _strides(x, None)
    dt, dev = z.dtype, x.device
    num_chunks = hz.cdiv(b, cfg.chunk)
    dssum = _empty(cfg.hw_tiles, b, c, dtype=dt, device=dev)
    dz = _empty(b, c, dtype=dt, device=dev)
    dw1 = _empty(num_chunks, r, c, dtype=dt, device=dev) if need_dw1 else None
    db1 = _empty(num_chunks, r, dtype=dt, device=dev) if need_db1 else None
    dw2 = _empty(num_chunks, c, r, dtype=dt, device=dev) if need_dw2 else None
    db2 = _empty(num_chunks, c, dtype=dt, device=dev) if need_db2 else None
    dr = _empty_like(g) if store_g else None
    dx = _empty_like(x)
    ws = _stream_workspace(num_chunks, dev)
    _record("se_bwd_stream")
    _launch(_se_bwd_stream_kernel, (cfg.programs,))(
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
        *_strides(g, None),
        *xs,
        *_strides(relu_out, xs),
        *_strides(dr, xs),
        *_strides(dx, None),
        *w1.stride(),
        _vec_stride(b1),
        *w2.stride(),
        b,
        c,
        r,
        hw,
        cfg.hw_tile,
        cfg.hw_tiles,
        cfg.chunk,
        cfg.lag,
        num_chunks,
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
        IS_FP64=dt == torch.float64,
        DOT_TF32=cfg.excite.dot_tf32,
        WAIT=not INTERPRETED,
        BLOCK_C=cfg.block_c,
        BLOCK_HW=cfg.block_hw,
        EX_BLOCK_B=cfg.excite.block_b,
        EX_BLOCK_C=cfg.excite.block_c,
        EX_BLOCK_R=cfg.excite.block_r,
        num_warps=cfg.num_warps,
    )
    _check_stream(ws, 2 * b * cfg.tiles, cfg.programs)
    return dx, dr, _sum_partials(dw1), _sum_partials(db1), _sum_partials(dw2), _sum_partials(db2)


def excite_outputs(zsum: torch.Tensor, gate: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, s, a) for every excitation form: (B, C) each in zsum's dtype; a, the gate's input,
    only where the gate's backward needs it (an empty placeholder otherwise)."""
    _, b, c = zsum.shape
    z = _empty(b, c, dtype=zsum.dtype, device=zsum.device)
    s = _empty(b, c, dtype=zsum.dtype, device=zsum.device)
    a = _empty(b, c, dtype=zsum.dtype, device=zsum.device) if keeps_gate_input(gate) else zsum.new_empty(0)
    return z, s, a


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
    """From the squeeze's partial sums to (z, s, a), each (B, C) in the accumulation dtype.

    a, the gate's input, is kept only where the gate's backward needs it (empty otherwise).
    """
    split, b, c = zsum.shape
    r = w1.shape[0]
    z, s, a = excite_outputs(zsum, gate)
    _record("excite")
    if b == 0:
        return z, s, a
    cfg = hz.excite_fwd_config(b, c, r, x_dtype, hz.sm_count(zsum.device))
    grid = (hz.cdiv(b, cfg.block_b), cfg.programs_c)
    _launch(_excite_fwd_kernel, grid)(
        zsum,
        w1,
        w1 if b1 is None else b1,
        w2,
        w2 if b2 is None else b2,
        z,
        s,
        a if keeps_gate_input(gate) else s,
        *w1.stride(),
        _vec_stride(b1),
        *w2.stride(),
        _vec_stride(b2),
        b,
        c,
        r,
        split,
        hw,
        cfg.programs_c,
        HAS_B1=b1 is not None,
        HAS_B2=b2 is not None,
        ACT=ACT_CODES[act],
        GATE=GATE_CODES[gate],
        KEEP_A=keeps_gate_input(gate),
        IS_FP64=zsum.dtype == torch.float64,
        DOT_TF32=cfg.dot_tf32,
        BLOCK_B=cfg.block_b,
        BLOCK_C=cfg.block_c,
        BLOCK_R=cfg.block_r,
        num_warps=cfg.num_warps,
    )
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

    dz is in the accumulation dtype; the weight gradients are summed over the per-program
    partials in a fixed order and returned in fp32 (fp64 for fp64 inputs).
    """
    need_dz, need_dw1, need_db1, need_dw2, need_db2 = need
    split, b, c = dssum.shape
    r = w1.shape[0]
    cfg = hz.excite_bwd_config(b, c, r, x_dtype)
    p = hz.cdiv(b, cfg.block_b)
    dt, dev = dssum.dtype, dssum.device
    dz = _empty(b, c, dtype=dt, device=dev) if need_dz else None
    dw1 = _empty(p, r, c, dtype=dt, device=dev) if need_dw1 else None
    db1 = _empty(p, r, dtype=dt, device=dev) if need_db1 else None
    dw2 = _empty(p, c, r, dtype=dt, device=dev) if need_dw2 else None
    db2 = _empty(p, c, dtype=dt, device=dev) if need_db2 else None
    _record("excite_bwd")
    if p > 0 and any(need):
        grid = (p,)
        _launch(_excite_bwd_kernel, grid)(
            dssum,
            z,
            s,
            a if keeps_gate_input(gate) else s,
            w1,
            w1 if b1 is None else b1,
            w2,
            dssum if dz is None else dz,
            dssum if dw1 is None else dw1,
            dssum if db1 is None else db1,
            dssum if dw2 is None else dw2,
            dssum if db2 is None else db2,
            *w1.stride(),
            _vec_stride(b1),
            *w2.stride(),
            b,
            c,
            r,
            split,
            HAS_B1=b1 is not None,
            ACT=ACT_CODES[act],
            GATE=GATE_CODES[gate],
            NEED_DZ=need_dz,
            NEED_DW1=need_dw1,
            NEED_DB1=need_db1,
            NEED_DW2=need_dw2,
            NEED_DB2=need_db2,
            IS_FP64=dt == torch.float64,
            DOT_TF32=cfg.dot_tf32,
            BLOCK_B=cfg.block_b,
            BLOCK_C=cfg.block_c,
            BLOCK_R=cfg.block_r,
            num_warps=cfg.num_warps,
        )
    return dz, _sum_partials(dw1), _sum_partials(db1), _sum_partials(dw2), _sum_partials(db2)


def _sum_partials(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(P, ...) -> (...): a plain reduction over the first axis, the same order on every run;
    no launch at all for a single program."""
    if t is None:
        return None
    return t[0] if t.shape[0] == 1 else t.sum(0)
