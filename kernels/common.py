"""What every path shares: strides, dtype rules, the jit helpers of the excitation's math
(activation, gate, products, fixed-order sums) and the MLP forwards' common arguments. Launches
and buffers come from fused_se.runtime.launch.

docs/DESIGN.md holds the math, the traffic of each path and the determinism rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference import acc_dtype
from ..runtime.launch import INTERPRETED, empty, empty_like, launch, record  # noqa: F401  (INTERPRETED: read here by fused_se.perf)


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


def vec_stride(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.stride(0)


def is_channels_last(strides: tuple[int, int, int]) -> bool:
    return strides[1] == 1 and strides[2] != 1


def strides_of(t: Optional[torch.Tensor], like: Optional[tuple[int, int, int]]) -> tuple[int, int, int]:
    if t is None:
        assert like is not None
        return like
    ts = bchw_strides(t)
    assert ts is not None, "every (B, C, H, W) operand must have H and W flattenable into one strided axis"
    return ts


# Codes of the constexprs ACT and GATE.
ACT_CODES = {"relu": 0, "silu": 1}


GATE_CODES = {"sigmoid": 0, "hard_sigmoid": 1}


def keeps_gate_input(gate: str) -> bool:
    """Whether the backward of this gate needs its input a, not only s = gate(a)."""
    return gate == "hard_sigmoid"


@triton.jit
def dot(a, b, acc, DOT_TF32: tl.constexpr, IS_FP64: tl.constexpr):
    """acc + a @ b. DOT_TF32: on tensor cores as three TF32 products (the operands split into a
    high and a low part: about fp32's error); else IEEE fp32 products. fp64 (for gradcheck) takes a
    sum of products: tl.dot has no fp64 path on every GPU."""
    if IS_FP64:
        return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif DOT_TF32:
        return tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def sum_splits(ptr, offs, mask, split, stride_split):
    """sum over k < split of ptr[k * stride_split + offs], in order (the squeeze's HW splits, the
    excitation's channel shares). Four loads are issued before their adds, so that a long sum
    waits on a quarter of the round trips; the adds keep the order (a masked-off load adds 0)."""
    p = ptr + offs
    acc = tl.load(p, mask=mask, other=0.0)
    for k in range(1, split, 4):
        p += stride_split  # split k
        p1 = tl.load(p, mask=mask, other=0.0)
        p2 = tl.load(p + stride_split, mask=mask & (k + 1 < split), other=0.0)
        p3 = tl.load(p + 2 * stride_split, mask=mask & (k + 2 < split), other=0.0)
        p4 = tl.load(p + 3 * stride_split, mask=mask & (k + 3 < split), other=0.0)
        acc += p1
        acc += p2
        acc += p3
        acc += p4
        p += 3 * stride_split
    return acc


@triton.jit
def _sum_partials_kernel(
    p0, p1, p2, p3,  # (P, N_j) contiguous: the partials of up to four tensors
    o0, o1, o2, o3,  # (N_j,) contiguous out
    n0, n1, n2, n3,  # N_j; 0 for a tensor not passed
    P,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """o_j = sum over k < P of p_j[k], in order: program (i, j) takes elements i * BLOCK to
    (i + 1) * BLOCK of tensor j."""
    j = tl.program_id(1)
    src, dst, n = p0, o0, n0
    if j == 1:
        src, dst, n = p1, o1, n1
    elif j == 2:
        src, dst, n = p2, o2, n2
    elif j == 3:
        src, dst, n = p3, o3, n3
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst + offs, sum_splits(src, offs, mask, P, n), mask=mask)


SUM_PARTIALS_BLOCK = 1024


def matrix_strides(w: torch.Tensor) -> tuple[int, int]:
    """The (row, column) strides of a weight matrix: (O, I) as nn.Linear holds it, or a pointwise
    conv's (O, I, 1, ...) weight as it is (no view: a view of a parameter is an autograd node a
    call, forward and backward)."""
    return w.stride(0), w.stride(1)


def weight_grad(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A buffer for the gradient of a weight matrix w (`matrix_strides`), in w's shape, which the
    kernels write row-major over its first two dims: w's own strides where w is contiguous (a
    channels_last conv's weight too, whose strides differ only on its size-1 dims, which DDP's
    gradient buckets compare as well), contiguous otherwise."""
    if w.is_contiguous():
        return empty_like(w, dtype)
    return empty(*w.shape, dtype=dtype, device=w.device)


def partials(
    p: int,
    *shape: int,
    dtype: torch.dtype,
    device: torch.device,
    out_dtype: Optional[torch.dtype] = None,
    like: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A buffer for p programs' partials of a (*shape) result: (p, *shape) in dtype, or, where one
    program writes it, the (*shape) result itself in out_dtype (default dtype): nothing to sum
    (see sum_partials), and the kernel's stores round to the result's dtype. like: the weight
    matrix whose gradient this is (shape from it; the result as weight_grad makes it)."""
    if like is not None:
        shape = tuple(like.shape)
    if p > 1:
        return empty(p, *shape, dtype=dtype, device=device)
    if like is not None:
        return weight_grad(like, out_dtype or dtype)
    return empty(*shape, dtype=out_dtype or dtype, device=device)


def sum_partials(
    p: int,
    *parts: Optional[torch.Tensor],
    dtypes: Optional[tuple[torch.dtype, ...]] = None,
    likes: tuple[Optional[torch.Tensor], ...] = (),
) -> tuple[Optional[torch.Tensor], ...]:
    """Each tensor of p programs' partials (from `partials`; None stays None, all in one dtype)
    summed over its first axis, in order, into a new tensor: one launch for up to four of them,
    so that a body that ends in these sums still replays (runtime/replay.py). The sums are stored
    in the dtype `dtypes` asks for where the tensors' dtypes agree (each fp32 sum rounded once,
    so no cast follows), else in the partials' dtype: the kernel picks a slot's pointers at run
    time, and a GPU build needs one pointer type for every slot. With one program, the results
    as they are (`partials` gave them their dtype). likes: per part, the weight matrix whose
    gradient it is (its sum made by weight_grad), or None."""
    present = [t for t in parts if t is not None]
    if p <= 1 or not present:
        return parts
    assert len(parts) <= 4 and all(t.is_contiguous() and t.shape[0] == p for t in present)
    assert len({t.dtype for t in present}) == 1
    asked = {dt for t, dt in zip(parts, dtypes or (), strict=False) if t is not None}  # dtypes may be None
    out_dtype = asked.pop() if len(asked) == 1 else present[0].dtype
    likes = (*likes, *(None,) * (len(parts) - len(likes)))
    outs = tuple(
        None if t is None else empty(*t.shape[1:], dtype=out_dtype, device=t.device) if w is None
        else weight_grad(w, out_dtype)
        for t, w in zip(parts, likes, strict=True)
    )  # fmt: skip
    pad = 4 - len(parts)  # unused slots: n = 0, any pointer of the slots' types
    first_out = next(o for o in outs if o is not None)
    sizes = [0 if t is None else t.numel() // p for t in parts] + [0] * pad
    srcs = [present[0] if t is None else t for t in parts] + [present[0]] * pad
    dsts = [first_out if o is None else o for o in outs] + [first_out] * pad
    record("sum_partials")
    grid = (triton.cdiv(max(max(sizes), 1), SUM_PARTIALS_BLOCK), len(parts))
    launch(_sum_partials_kernel, grid)(*srcs, *dsts, *sizes, p, BLOCK=SUM_PARTIALS_BLOCK, num_warps=4)
    return outs


@triton.jit
def act_fwd(h, ACT: tl.constexpr):
    if ACT == 1:  # silu, as torch: h / (1 + exp(-h))
        return h / (1.0 + tl.exp(-h))
    else:  # relu; NaN stays NaN, as in torch
        return tl.maximum(h, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def act_bwd(hpre, dh, ACT: tl.constexpr):
    """dh * act'(hpre)."""
    if ACT == 1:
        sg = 1.0 / (1.0 + tl.exp(-hpre))
        return dh * sg * (1.0 + hpre * (1.0 - sg))
    else:
        # torch's threshold_backward: zero where the input is <= 0, so a NaN input passes dh on.
        return tl.where(hpre <= 0.0, 0.0, dh)


@triton.jit
def act_hidden(h, b1_ptr, stride_b1, offs_r, mask_r, HAS_B1: tl.constexpr, ACT: tl.constexpr):
    """act(h + b1) over the hidden units offs_r, for one sample's h (BLOCK_R,) or a batch block's
    (BLOCK_B, BLOCK_R), with the padded units r >= R exactly 0: an Inf in z times their zero
    weights would be NaN, and would reach every channel through the second product."""
    if HAS_B1:
        h += tl.load(b1_ptr + offs_r * stride_b1, mask=mask_r, other=0.0).to(h.dtype)
    return tl.where(mask_r, act_fwd(h, ACT), 0.0)


@triton.jit
def gate_gemv(
    h, w2_ptr, b2_ptr, s_ptr, a_ptr, offs, offs_c, mask_c, offs_r, mask_r, stride_w2c, stride_w2r, stride_b2,
    HAS_B2: tl.constexpr, GATE: tl.constexpr, KEEP_A: tl.constexpr,
):  # fmt: skip
    """s = gate(W2 h + b2) on channels offs_c of one sample (h: its hidden layer, (BLOCK_R,)), as a
    product of vectors (the one-launch and spread forwards); stored at s_ptr + offs, with a, the
    gate's input, at a_ptr + offs where KEEP_A. Returns s."""
    w2 = tl.load(
        w2_ptr + offs_c[:, None] * stride_w2c + offs_r[None, :] * stride_w2r,
        mask=mask_c[:, None] & mask_r[None, :],
        other=0.0,
    ).to(h.dtype)
    a = tl.sum(w2 * h[None, :], axis=1)
    if HAS_B2:
        a += tl.load(b2_ptr + offs_c * stride_b2, mask=mask_c, other=0.0).to(h.dtype)
    s = gate_fwd(a, GATE).to(h.dtype)
    tl.store(s_ptr + offs, s, mask=mask_c)
    if KEEP_A:
        tl.store(a_ptr + offs, a, mask=mask_c)
    return s


@triton.jit
def gate_fwd(a, GATE: tl.constexpr):
    if GATE == 1:  # hard sigmoid, as torch: min(max(a + 3, 0), 6) / 6, NaN stays NaN
        t = tl.maximum(a + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL)
        return tl.minimum(t, 6.0, propagate_nan=tl.PropagateNan.ALL) / 6.0
    else:
        return 1.0 / (1.0 + tl.exp(-a))


@triton.jit
def gate_bwd(dssum_ptr, s_ptr, a_ptr, offs, mask, split, stride_split, GATE: tl.constexpr):
    """u = ds * gate'(a), the gradient before the gate, from the partial sums of ds."""
    ds = sum_splits(dssum_ptr, offs, mask, split, stride_split)
    if GATE == 1:
        # torch's hardsigmoid_backward multiplies by 1/6 rounded to fp32, in every dtype.
        a = tl.load(a_ptr + offs, mask=mask, other=0.0)
        return tl.where((a > -3.0) & (a < 3.0), ds * 0.1666666716337204, 0.0)
    else:
        s = tl.load(s_ptr + offs, mask=mask, other=0.0)
        return ds * s * (1.0 - s)


@dataclass(frozen=True)
class MLPForward:
    """What the MLP form's single-launch forwards (one_launch, spread, stream) share: the outputs
    they write and, in their kernels' order, the leading tensor arguments, the stride arguments and
    the flags."""

    y: torch.Tensor
    z: torch.Tensor
    s: torch.Tensor
    a: torch.Tensor  # empty unless the gate's backward needs it
    inputs: tuple  # x, w1, b1, w2, b2, d, residual; a placeholder tensor where one is None
    strides: tuple  # x's, the residual's and y's (B, C, HW) strides, then W1's, b1's, W2's and b2's
    flags: dict  # HAS_B1, HAS_B2, ACT, GATE, KEEP_A, HAS_D, HAS_R, RELU, IS_FP64

    @property
    def outputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.y, self.z, self.s, self.a

    @property
    def a_arg(self) -> torch.Tensor:
        """a where the kernel writes it, else a placeholder it never touches."""
        return self.a if self.flags["KEEP_A"] else self.s


def mlp_forward(
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
) -> MLPForward:
    """The outputs and shared arguments of an MLP forward over x (B, C, H, W)."""
    b, c = x.shape[:2]
    keep_a = keeps_gate_input(gate)
    z, s, a = gate_outputs(b, c, acc_dtype(x.dtype), x.device, gate)
    y = empty_like(x)
    xs = strides_of(x, None)
    inputs = (
        x,
        w1,
        w1 if b1 is None else b1,
        w2,
        w2 if b2 is None else b2,
        z if d is None else d,
        x if residual is None else residual,
    )
    strides = (
        *xs,
        *strides_of(residual, xs),
        *strides_of(y, None),
        *matrix_strides(w1),
        vec_stride(b1),
        *matrix_strides(w2),
        vec_stride(b2),
    )
    flags = {
        "HAS_B1": b1 is not None,
        "HAS_B2": b2 is not None,
        "ACT": ACT_CODES[act],
        "GATE": GATE_CODES[gate],
        "KEEP_A": keep_a,
        "HAS_D": d is not None,
        "HAS_R": residual is not None,
        "RELU": relu,
        "IS_FP64": x.dtype == torch.float64,
    }
    return MLPForward(y, z, s, a, inputs, strides, flags)


def gate_outputs(
    b: int, c: int, dtype: torch.dtype, device: torch.device, gate: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, s, a), each (B, C) in the accumulation dtype, as every excitation form and path writes
    them; a, the gate's input, only where the gate's backward needs it (empty otherwise)."""
    z = empty(b, c, dtype=dtype, device=device)
    s = empty(b, c, dtype=dtype, device=device)
    a = empty(b, c, dtype=dtype, device=device) if keeps_gate_input(gate) else empty(0, dtype=dtype, device=device)
    return z, s, a


def excite_outputs(zsum: torch.Tensor, gate: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, s, a) from the squeeze's partial sums (SPLIT, B, C)."""
    _, b, c = zsum.shape
    return gate_outputs(b, c, zsum.dtype, zsum.device, gate)
