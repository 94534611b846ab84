"""The launchers' twins in plain torch ops: the fused ops' CPU kernel.

Every function here takes and returns what the launcher of the same name in fused_se.kernels
does, forward and backward written out (no autograd), so the ops' bodies run unchanged on
either. The ops pick these where the Triton kernels cannot run (CPU tensors without the
interpreter); torch.compile, torch.export and ONNX export on the CPU trace them into standard
aten ops. The squeeze and the excitation run in fp32 (fp64 for fp64 inputs), as in the kernels.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from .reference import acc_dtype

Tensor = torch.Tensor


_NO_CONTEXT = contextlib.nullcontext()  # reusable: one object for every call outside autocast


def _exact(t: Tensor):
    """Autocast off on t's device: the excitation stays in the accumulation dtype under torch.autocast."""
    # the tensor's flags first: t.device.type costs a call a fifth of a microsecond
    kind = "cpu" if t.is_cpu else "cuda" if t.is_cuda else t.device.type
    if torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return _NO_CONTEXT


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t.to(dtype) without the dispatch where t already has it (these ops are small on the CPU,
    and each call's Python counts)."""
    return t if t.dtype == dtype else t.to(dtype)


def _opt(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else as_dtype(t, dtype)


def _matrix(w: Tensor, dtype: torch.dtype) -> Tensor:
    """A weight matrix, (O, I) or a pointwise conv's (O, I, 1, ...) weight, as (O, I) in dtype."""
    return as_dtype(w if w.dim() == 2 else w.flatten(1), dtype)


def _as_weight(t: Optional[Tensor], w: Tensor, dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
    """An (O, I) weight gradient in dtype (default w's), w's shape and, where w is contiguous, w's
    strides (a channels_last conv's weight differs only on its size-1 dims, which DDP's buckets
    compare too), as the kernels write it."""
    if t is None:
        return None
    t = as_dtype(t, w.dtype if dtype is None else dtype)
    if w.dim() == 2:
        return t
    return t.as_strided(w.shape, w.stride()) if w.is_contiguous() else t.view(w.shape)


def _bc(t: Tensor) -> Tensor:
    """(B, C) as (B, C, 1, 1), to broadcast over HW (a view: cheaper to dispatch than indexing)."""
    return t.view(t.shape[0], t.shape[1], 1, 1)


def _like(t: Tensor, like: Tensor) -> Tensor:
    """t in like's dtype and memory format: channels_last where like is, NCHW otherwise."""
    cl = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return as_dtype(t, like.dtype).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


# ---- the passes over x ----------------------------------------------------------------------


def _valid(lengths: Tensor, hw: int) -> Tensor:
    """(B, 1, HW, 1): whether position hw is below lengths[b]."""
    return (torch.arange(hw, device=lengths.device) < lengths[:, None])[:, None, :, None]


def squeeze_fwd(x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
    """Sums of x over HW as one partial: (1, B, C) in the accumulation dtype. With lengths (B,),
    the sums over the first lengths[b] positions of x (B, C, HW, 1), times HW / lengths[b]."""
    acc = acc_dtype(x.dtype)
    if lengths is None:
        return x.sum(dim=(2, 3), dtype=acc)[None]  # summed in acc, with no copy of x in it
    hw = x.shape[2] * x.shape[3]
    sums = (as_dtype(x, acc) * _valid(lengths, hw)).sum(dim=(2, 3))
    return (sums * (hw / lengths.to(acc))[:, None])[None]


def scale_bwd(
    g: Tensor, x: Tensor, d: Optional[Tensor] = None, relu_out: Optional[Tensor] = None, store_g: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """(sums over HW of g * x, times d[b]: (1, B, C); the masked g or None). With relu_out, g
    is first zeroed where relu_out <= 0, as threshold_backward."""
    if relu_out is not None:
        g = torch.ops.aten.threshold_backward(g, relu_out, 0)
    return _gate_grad(g, x, d)[None], (g if store_g else None)


def _gate_grad(g: Tensor, x: Tensor, d: Optional[Tensor]) -> Tensor:
    """(B, C): the sums over HW of g * x, times d[b]."""
    acc = acc_dtype(x.dtype)
    sums = (as_dtype(g, acc) * as_dtype(x, acc)).sum(dim=(2, 3))
    return sums if d is None else sums * d[:, None]


def scale_fwd(
    x: Tensor, s: Tensor, d: Optional[Tensor] = None, residual: Optional[Tensor] = None, relu: bool = False
) -> Tensor:
    """y = act(x * s[b, c] * d[b] + residual) in x's dtype and memory format."""
    if d is not None:
        s = s * d[:, None]
    y = as_dtype(x, s.dtype) * _bc(s)  # a new tensor: the rest works in place, with no temporary the size of x
    if residual is not None:
        y += residual
    if relu:
        y.relu_()
    return _like(y, x)


def squeeze_scale_bwd(
    g: Tensor,
    s: Tensor,
    dz: Tensor,
    like: Tensor,
    d: Optional[Tensor] = None,
    relu_out: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> Tensor:
    """dx = g * s[b, c] * d[b] + dz[b, c] / HW, in like's dtype and memory format; g masked
    by relu_out > 0 first where given. With lengths (B,), dz[b, c] / lengths[b] at the first
    lengths[b] positions of (B, C, HW, 1) only."""
    if relu_out is not None:
        g = torch.ops.aten.threshold_backward(g, relu_out, 0)
    hw = g.shape[2] * g.shape[3]
    if d is not None:
        s = s * d[:, None]
    dx = as_dtype(g, s.dtype) * _bc(s)  # a new tensor, added to in place: one allocation the size of x
    if lengths is None:
        dx += _bc(dz / hw)
    else:
        dx += _bc(dz / lengths.to(dz.dtype)[:, None]) * _valid(lengths, hw)
    return _like(dx, like)


# ---- the gates and the inner activations ------------------------------------------------------


def _gate(a: Tensor, gate: str) -> Tensor:
    """s from a new tensor a, which the sigmoid overwrites."""
    return a.sigmoid_() if gate == "sigmoid" else F.hardsigmoid(a)


def _gate_outputs(a: Tensor, gate: str) -> tuple[Tensor, Tensor]:
    """(s, a kept for the backward or an empty placeholder), as the kernels return them. a is a
    new tensor of the caller's: the sigmoid, whose backward needs s alone, overwrites it."""
    return _gate(a, gate), (a.new_empty(0) if gate == "sigmoid" else a)


def _gate_bwd(ds: Tensor, s: Tensor, a: Tensor, gate: str) -> Tensor:
    if gate == "sigmoid":
        return torch.ops.aten.sigmoid_backward(ds, s)
    return torch.ops.aten.hardsigmoid_backward(ds, a)


def _act(h: Tensor, act: str) -> Tensor:
    return torch.relu(h) if act == "relu" else F.silu(h)


def _act_(h: Tensor, act: str) -> Tensor:
    """_act in place, on a new tensor of the caller's."""
    return h.relu_() if act == "relu" else F.silu(h, inplace=True)


def _act_bwd(dh: Tensor, h: Tensor, act: str) -> Tensor:
    if act == "relu":
        return torch.ops.aten.threshold_backward(dh, h, 0)
    return torch.ops.aten.silu_backward(dh, h)


def _mean(zsum: Tensor, hw: int) -> Tensor:
    return _partials_sum(zsum) / hw


def _partials_sum(t: Tensor) -> Tensor:
    """(P, B, C) partial sums added up: (B, C), a view where there is one."""
    return t[0] if t.shape[0] == 1 else t.sum(0)


# ---- two FCs ----------------------------------------------------------------------------------


def excite_fwd(
    zsum: Tensor,
    hw: int,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    x_dtype: torch.dtype,
    act: str = "relu",
    gate: str = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor]:
    z = _mean(zsum, hw)
    return (z, *_mlp(z, w1, b1, w2, b2, act, gate))


def _pre_gate(z: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], act: str) -> Tensor:
    """a = W2 act(W1 z + b1) + b2 from the mean z, in z's dtype: a new tensor."""
    dt = z.dtype
    with _exact(z):
        h = F.linear(z, _matrix(w1, dt), _opt(b1, dt))
        return F.linear(_act_(h, act), _matrix(w2, dt), _opt(b2, dt))


def _pre_gate_kept(
    z: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], act: str
) -> tuple[Tensor, Tensor]:
    """(a, h): _pre_gate's a, and the hidden layer's pre-activation h = W1 z + b1 kept for the
    backward (the activation out of place)."""
    dt = z.dtype
    with _exact(z):
        h = F.linear(z, _matrix(w1, dt), _opt(b1, dt))
        return F.linear(_act(h, act), _matrix(w2, dt), _opt(b2, dt)), h


def _mlp(
    z: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], act: str, gate: str
) -> tuple[Tensor, Tensor]:
    """(s, a) of the two FCs from the mean z, in z's dtype."""
    return _gate_outputs(_pre_gate(z, w1, b1, w2, b2, act), gate)


def squeeze_excite_fwd(
    x: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    act: str,
    gate: str,
    d: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The two-FC block's forward in one call: (y, z, s, a) as squeeze_fwd, excite_fwd and
    scale_fwd give them, with no partial sums to add up, and the hidden layer's pre-activation h
    (B, hidden), which squeeze_excite_bwd takes instead of recomputing it (on the CPU that product
    reads all of W1 again). On the CPU each op costs microseconds of dispatch at SE's small sizes,
    so the hot path takes the fewest."""
    z = _hw_mean(x)
    a, h = _pre_gate_kept(z, w1, b1, w2, b2, act)
    s, a = _gate_outputs(a, gate)
    return scale_fwd(x, s, d, residual, relu), z, s, a, h


def squeeze_excite_y(
    x: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    act: str,
    gate: str,
    d: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    relu: bool = False,
) -> Tensor:
    """squeeze_excite_fwd's y alone, the same bits, for a call that takes no gradient: nothing
    is kept for a backward (h, and the sigmoid's placeholder, each an allocation of its own)."""
    s = _gate(_pre_gate(_hw_mean(x), w1, b1, w2, b2, act), gate)
    return scale_fwd(x, s, d, residual, relu)


def _hw_mean(x: Tensor) -> Tensor:
    """(B, C): x's mean over HW in the accumulation dtype."""
    acc = acc_dtype(x.dtype)
    if acc == x.dtype:  # one op: the CPU's mean is that sum and divide
        return x.mean((2, 3))
    # the sum then an in-place divide: torch's mean with a dtype runs slower on the CPU
    return x.sum(dim=(2, 3), dtype=acc).div_(x.shape[2] * x.shape[3])


def excite_bwd(
    dssum: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    x_dtype: torch.dtype,
    need: tuple[bool, bool, bool, bool, bool],
    act: str = "relu",
    gate: str = "sigmoid",
) -> tuple[Optional[Tensor], ...]:
    return _mlp_bwd(_partials_sum(dssum), z, s, a, w1, b1, w2, need, act, gate)


def _mlp_bwd(
    ds: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    need: tuple[bool, bool, bool, bool, bool],
    act: str,
    gate: str,
    h: Optional[Tensor] = None,
) -> tuple[Optional[Tensor], ...]:
    """(dz, dw1, db1, dw2, db2) of the two FCs from ds, the gradient of s; h, the hidden layer's
    pre-activation, recomputed where the forward did not keep it."""
    need_dz, need_dw1, need_db1, need_dw2, need_db2 = need
    dt = z.dtype
    w1_in, w2_in = w1, w2
    with _exact(z):
        w1, w2 = _matrix(w1, dt), _matrix(w2, dt)
        if h is None:
            h = F.linear(z, w1, _opt(b1, dt))
        da = _gate_bwd(ds, s, a, gate)
        dw2 = da.t() @ _act(h, act) if need_dw2 else None
        db2 = da.sum(0) if need_db2 else None
        dh = _act_bwd(da @ w2, h, act) if (need_dz or need_dw1 or need_db1) else None
        dw1 = dh.t() @ z if need_dw1 else None
        db1 = dh.sum(0) if need_db1 else None
        dz = dh @ w1 if need_dz else None
    # in the weights' dtypes, as the kernels write them
    dw1, dw2 = _as_weight(dw1, w1_in), _as_weight(dw2, w2_in)
    db2 = None if db2 is None else as_dtype(db2, w2_in.dtype)
    db1 = None if db1 is None else as_dtype(db1, w1_in.dtype if b1 is None else b1.dtype)
    return dz, dw1, db1, dw2, db2


def squeeze_excite_bwd(
    grad_y: Tensor,
    x: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    act: str,
    gate: str,
    need: tuple[bool, bool, bool, bool, bool],
    d: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    store_g: bool = False,
    h: Optional[Tensor] = None,
) -> tuple[Optional[Tensor], ...]:
    """The two-FC block's backward in one call: (dx, dw1, db1, dw2, db2, the masked g) as
    scale_bwd, excite_bwd and squeeze_scale_bwd give them (None where not asked, the masked g only
    with store_g), with dx's two terms in one op (one pass over g, where the add would take two).
    h: the hidden pre-activation squeeze_excite_fwd kept, or None to recompute it."""
    g = grad_y if out is None else torch.ops.aten.threshold_backward(grad_y, out, 0)
    dz, dw1, db1, dw2, db2 = _mlp_bwd(_gate_grad(g, x, d), z, s, a, w1, b1, w2, need, act, gate, h)
    dx = None
    if need[0]:
        if d is not None:
            s = s * d[:, None]
        dx = _like(torch.addcmul(_bc(dz / (x.shape[2] * x.shape[3])), as_dtype(g, s.dtype), _bc(s)), x)
    return dx, dw1, db1, dw2, db2, (g if store_g else None)


# ---- one C x C FC -----------------------------------------------------------------------------


def excite_fc_fwd(
    zsum: Tensor, hw: int, w: Tensor, b: Optional[Tensor], x_dtype: torch.dtype, gate: str
) -> tuple[Tensor, Tensor, Tensor]:
    z = _mean(zsum, hw)
    with _exact(z):
        a = F.linear(z, _matrix(w, z.dtype), _opt(b, z.dtype))
    return (z, *_gate_outputs(a, gate))


def excite_fc_bwd(
    dssum: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w: Tensor,
    x_dtype: torch.dtype,
    gate: str,
    need,
    grad_dtypes: Optional[tuple[torch.dtype, torch.dtype]] = None,
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    need_dz, need_dw, need_db = need
    with _exact(z):
        da = _gate_bwd(_partials_sum(dssum), s, a, gate)
        dz = da @ _matrix(w, z.dtype) if need_dz else None
        dw = da.t() @ z if need_dw else None
        db = da.sum(0) if need_db else None
    dw_dtype, db_dtype = grad_dtypes or (z.dtype, z.dtype)
    return dz, _as_weight(dw, w, dw_dtype), _opt(db, db_dtype)


def _in_dtypes(grads: tuple[Optional[Tensor], ...], dtypes: Optional[tuple[torch.dtype, ...]]) -> tuple:
    """The weight gradients in dtypes (as the kernels store them), or as they are without."""
    if dtypes is None:
        return grads
    return tuple(None if t is None else as_dtype(t, dt) for t, dt in zip(grads, dtypes, strict=True))


# ---- k-tap conv across channels ----------------------------------------------------------------


def _conv_input(z: Tensor, pad: int, circular: bool) -> Tensor:
    v = z[:, None, :]
    return F.pad(v, (pad, pad), mode="circular" if circular else "constant")


def excite_conv_fwd(
    zsum: Tensor, hw: int, w: Tensor, b: Optional[Tensor], circular: bool, gate: str
) -> tuple[Tensor, Tensor, Tensor]:
    z = _mean(zsum, hw)
    pad = (w.shape[-1] - 1) // 2
    with _exact(z):
        a = F.conv1d(_conv_input(z, pad, circular), as_dtype(w, z.dtype).view(1, 1, -1), _opt(b, z.dtype))[:, 0, :]
    return (z, *_gate_outputs(a, gate))


def excite_conv_bwd(
    dssum: Tensor,
    z: Tensor,
    s: Tensor,
    a: Tensor,
    w: Tensor,
    circular: bool,
    gate: str,
    need,
    grad_dtypes: Optional[tuple[torch.dtype, torch.dtype]] = None,
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    need_dz, need_dw, need_db = need
    nb, c = z.shape
    k = w.shape[-1]
    pad = (k - 1) // 2
    with _exact(z):
        da = _gate_bwd(_partials_sum(dssum), s, a, gate)
        v = _conv_input(z, pad, circular)  # (B, 1, C + 2 pad)
        # a[b, c] = sum_j w[j] v[b, c + j]: dw[j] = sum_bc da[b, c] v[b, c + j], a conv of v with da over b and c
        if not need_dw:
            dw = None
        elif nb == 0:  # a sum over an empty batch
            dw = z.new_zeros(w.shape)
        else:
            dw = F.conv1d(v.transpose(0, 1), da[None]).reshape(w.shape)
        db = da.sum().reshape(1) if need_db else None
        dz = None
        if need_dz:
            # dv[b, c + j] += w[j] da[b, c]
            dv = F.conv_transpose1d(da[:, None, :], as_dtype(w, z.dtype).view(1, 1, -1))[:, 0, :]  # (B, C + 2 pad)
            dz = dv[:, pad : pad + c]
            if circular and pad > 0:
                dz = dz.clone()
                dz[:, c - pad :] += dv[:, :pad]
                dz[:, :pad] += dv[:, pad + c :]
    return (dz, *_in_dtypes((dw, db), grad_dtypes))


# ---- scSE: the spatial gate's passes (the channel gate is excite_fwd / excite_bwd) --------------


def _spatial_gate(x: Tensor, ws: Tensor, bs: Optional[Tensor]) -> Tensor:
    """s_s = sigmoid(sum_c ws[c] x + bs), (B, HW), in the accumulation dtype."""
    acc = acc_dtype(x.dtype)
    q = torch.einsum("bchw,c->bhw", as_dtype(x, acc), as_dtype(ws.reshape(-1), acc)).reshape(x.shape[0], -1)
    if bs is not None:
        q = q + as_dtype(bs, acc)
    return torch.sigmoid(q)


def _per_position(t: Tensor, like: Tensor) -> Tensor:
    """(B, HW) as (B, 1, H, W), to broadcast over channels."""
    return t.view(like.shape[0], 1, like.shape[2], like.shape[3])


def scse_squeeze_fwd(x: Tensor) -> Tensor:
    """The sums of x over HW as one partial, (1, B, C), in the accumulation dtype."""
    return x.sum(dim=(2, 3), dtype=acc_dtype(x.dtype))[None]


def scse_scale_fwd(x: Tensor, s: Tensor, ws: Tensor, bs: Optional[Tensor]) -> Tensor:
    """y = x * (s[b, c] + sigmoid(sum_c ws[c] x + bs)) in x's dtype and memory format."""
    y = as_dtype(x, s.dtype) * (_bc(s) + _per_position(_spatial_gate(x, ws, bs), x))
    return _like(y, x)


def scse_reduce_bwd(g: Tensor, x: Tensor, ws: Tensor, bs: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(sums over HW of g * x, (1, B, C); s_s, (B, HW); dq = (sum_c g x) s_s (1 - s_s), (B, HW);
    db_s = sum dq as one share, (1,))."""
    acc = acc_dtype(x.dtype)
    gx = as_dtype(g, acc) * as_dtype(x, acc)
    ss = _spatial_gate(x, ws, bs)
    dq = torch.ops.aten.sigmoid_backward(gx.sum(1).reshape(ss.shape), ss)
    return gx.sum(dim=(2, 3))[None], ss, dq, dq.sum().reshape(1)


def scse_dx_bwd(
    g: Tensor,
    x: Tensor,
    s: Tensor,
    dz: Optional[Tensor],
    ss: Tensor,
    dq: Tensor,
    ws: Tensor,
    need_dx: bool,
    need_dws: bool,
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(dx = g (s + s_s) + dz / HW + dq ws, in x's dtype and memory format; dws = sum dq x, in ws's
    shape and dtype)."""
    acc = s.dtype
    dq4 = _per_position(dq, x)
    dx = dws = None
    if need_dx:
        hw = x.shape[2] * x.shape[3]
        dx = as_dtype(g, acc) * (_bc(s) + _per_position(ss, x))
        dx += _bc(dz / hw)
        dx += dq4 * as_dtype(ws, acc).reshape(1, -1, 1, 1)
        dx = _like(dx, x)
    if need_dws:
        dws = (as_dtype(x, acc) * dq4).sum(dim=(0, 2, 3))
        dws = _as_weight(dws[None], ws, ws.dtype) if ws.dim() > 1 else as_dtype(dws, ws.dtype)
    return dx, dws


def scse_db_s(shares: Tensor, bs: Tensor) -> Tensor:
    """db_s, (1,) in bs's dtype, from scse_reduce_bwd's one share."""
    return as_dtype(shares, bs.dtype)
