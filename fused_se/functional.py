"""The functional forms of the fused SE block, with the input checks of the public boundary."""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import reference
from ._dispatch import backend_for

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_IMPORTED: Optional[tuple] = None  # (kernels, ops, ops_lengths, ops_scse) once imported outside tracing


def _fused_modules() -> tuple:
    """fused_se.kernels, fused_se.ops, fused_se.ops_lengths and fused_se.ops_scse. Imported on first use, not at the
    top: importing fused_se must not import triton, so that TRITON_INTERPRET can still be set
    after `import fused_se` (the demo does). Kept here after that, since an import statement costs
    every call microseconds; not while torch.compile traces, which would split its graph at the
    assignment."""
    global _IMPORTED
    if _IMPORTED is not None:
        return _IMPORTED
    from . import kernels, ops, ops_lengths, ops_scse

    modules = (kernels, ops, ops_lengths, ops_scse)
    if not torch.compiler.is_compiling():
        _IMPORTED = modules
    return modules


def _check_tensor(name: str, t: object, ndim: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}; got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D with shape {shape_doc}; got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {t.dtype}")


def _check_matrix(name: str, t: object, rows: str, cols: str) -> None:
    """A weight matrix: (rows, cols) as nn.Linear holds it, or a pointwise conv's (rows, cols, 1, ...)
    weight as it is (the kernels read its first two strides; no view a call)."""
    shape_doc = f"({rows}, {cols})"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}; got {type(t).__name__}")
    if t.dim() < 2 or any(n != 1 for n in t.shape[2:]):
        raise ValueError(
            f"{name} must have shape {shape_doc}, or ({rows}, {cols}, 1, ...) (a pointwise conv's weight); "
            f"got shape {tuple(t.shape)}"
        )
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {t.dtype}")


def _check_weights_vector(name: str, t: object, axis: int, shape_doc: str, conv_doc: str) -> int:
    """A layer's weights as a vector: 1-D (shape_doc), or the conv's weight as it is (conv_doc), every
    dim but `axis` of size 1. Their count."""
    if isinstance(t, torch.Tensor) and t.dim() > 1:
        if t.dim() <= axis or any(n != 1 for i, n in enumerate(t.shape) if i != axis):
            raise ValueError(f"{name} must be 1-D, {shape_doc}, or {conv_doc}; got shape {tuple(t.shape)}")
        _check_tensor(name, t, t.dim(), conv_doc)  # its dtype
        return t.shape[axis]
    _check_tensor(name, t, 1, shape_doc)
    return t.shape[0]


# The ranks x may have: (B, C, L), (B, C, H, W), (B, C, D, H, W).
RANKS = (3, 4, 5)
_X_SHAPES = "(B, C, L), (B, C, H, W) or (B, C, D, H, W)"


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape {_X_SHAPES}; got {type(x).__name__}")
    if x.dim() not in RANKS:
        raise ValueError(
            f"x must be 3-D, 4-D or 5-D (rank 3 to 5: one to three spatial dims), of shape {_X_SHAPES}; "
            f"got rank {x.dim()}, shape {tuple(x.shape)}"
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64; got {x.dtype}")
    if math.prod(x.shape[2:]) == 0:
        raise ValueError(
            f"x must have at least one spatial position to take a mean over them; got shape {tuple(x.shape)}"
        )


def _check_vector(name: str, t: Optional[torch.Tensor], n: int, what: str) -> None:
    if t is None:
        return
    _check_tensor(name, t, 1, f"({n},)")
    if t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match {what}; got {tuple(t.shape)}")


def _check_devices(x: torch.Tensor, **params: Optional[torch.Tensor]) -> None:
    for name, t in params.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all inputs must be on one device")


# x's dtypes with which fp32 parameters may run: autocast's convention (its convolutions hand SE a
# 16-bit x while the block's parameters stay fp32). Any other pair of dtypes is refused, as
# nn.Linear refuses it.
_AUTOCAST_DTYPES = frozenset((torch.float16, torch.bfloat16))


def _dtype_pairs(x_dtype: torch.dtype, t: Optional[torch.Tensor]) -> bool:
    """Whether a parameter t may run with an x of x_dtype: the same dtype, or fp32 with a 16-bit x."""
    return t is None or t.dtype is x_dtype or (t.dtype is torch.float32 and x_dtype in _AUTOCAST_DTYPES)


def _check_dtypes(x: torch.Tensor, **params: Optional[torch.Tensor]) -> None:
    for name, t in params.items():
        if not _dtype_pairs(x.dtype, t):
            raise TypeError(
                f"{name} is {t.dtype} but x is {x.dtype}: parameters must have x's dtype, or be float32 with a "
                "float16 or bfloat16 x (autocast's convention); cast the module or x (e.g. module.to(x.dtype))"
            )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def _vector_passes(t: Optional[torch.Tensor], n: int, device: torch.device) -> bool:
    return t is None or (
        isinstance(t, torch.Tensor)
        and t.dim() == 1
        and t.dtype in _FLOAT_DTYPE_SET
        and t.shape[0] == n
        and t.device == device
    )


# The fast pass's dtypes: a hashed lookup, not a walk of ==s (act and gate stay tuples: a
# name may be anything, an unhashable value too, and the checks say what is wrong with it).
_FLOAT_DTYPE_SET = frozenset(_FLOAT_DTYPES)


def _inputs_pass(x, w1, b1, w2, b2, act, gate) -> bool:
    """Whether every check of check_inputs passes, in a few tests without a call each (they run
    on every call); where this says no (an empty batch too), the checks themselves run and say why."""
    tensor = torch.Tensor
    if not (isinstance(x, tensor) and isinstance(w1, tensor) and isinstance(w2, tensor)):
        return False
    shape, wshape, w2shape = x.shape, w1.shape, w2.shape
    if len(shape) not in RANKS or len(wshape) < 2 or len(w2shape) < 2:
        return False
    dtype, wdtype = x.dtype, w1.dtype
    if dtype not in _FLOAT_DTYPE_SET or w2.dtype is not wdtype:
        return False
    if wdtype is not dtype and not (wdtype is torch.float32 and dtype in _AUTOCAST_DTYPES):  # _dtype_pairs
        return False
    r, c = wshape[0], wshape[1]
    if c != shape[1] or r == 0 or w2shape[0] != c or w2shape[1] != r or 0 in shape:
        return False
    # a pointwise conv's weight: every dim past the first two of size 1 (r * c > 0 here)
    if (len(wshape) > 2 and w1.numel() != r * c) or (len(w2shape) > 2 and w2.numel() != r * c):
        return False
    device = x.device
    return (
        w1.device == device
        and w2.device == device
        and (b1 is None or (_vector_passes(b1, r, device) and _dtype_pairs(dtype, b1)))
        and (b2 is None or (_vector_passes(b2, c, device) and _dtype_pairs(dtype, b2)))
        and act in reference.ACTIVATIONS
        and gate in reference.GATES
    )


def check_inputs(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    act: str,
    gate: str,
) -> None:
    """Checks squeeze_excite's arguments: ValueError or TypeError naming the argument."""
    if _inputs_pass(x, w1, b1, w2, b2, act, gate):
        return
    _check_x(x)
    c = x.shape[1]
    _check_matrix("w1", w1, "hidden", "C")
    r = w1.shape[0]
    if w1.shape[1] != c:
        raise ValueError(f"w1 must have shape (hidden, C) with C = x.shape[1] = {c}; got {tuple(w1.shape)}")
    if r == 0:
        raise ValueError("w1 must have at least one row (hidden width >= 1); got shape (0, C)")
    _check_matrix("w2", w2, "C", "hidden")
    if tuple(w2.shape[:2]) != (c, r):
        raise ValueError(f"w2 must have shape (C, hidden) = ({c}, {r}) to match x and w1; got {tuple(w2.shape)}")
    _check_vector("b1", b1, r, "w1")
    _check_vector("b2", b2, c, "x's channels")
    _check_devices(x, w1=w1, b1=b1, w2=w2, b2=b2)
    _check_dtypes(x, w1=w1, b1=b1, w2=w2, b2=b2)
    _check_choice("act", act, reference.ACTIVATIONS)
    _check_choice("gate", gate, reference.GATES)


def check_epilogue(
    x: torch.Tensor, residual: Optional[torch.Tensor], out_act: str, sample_scale: Optional[torch.Tensor]
) -> None:
    """Checks the residual-block tail's arguments against x."""
    if residual is None and sample_scale is None:  # the plain block: one check
        _check_choice("out_act", out_act, reference.OUT_ACTS)
        return
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor shaped like x or None; got {type(residual).__name__}")
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}; got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"residual must have x's dtype {x.dtype}; got {residual.dtype}")
    _check_choice("out_act", out_act, reference.OUT_ACTS)
    if sample_scale is not None:
        _check_tensor("sample_scale", sample_scale, 1, "(B,)")
        if sample_scale.shape[0] != x.shape[0]:
            raise ValueError(
                f"sample_scale must have shape (B,) = ({x.shape[0]},) to match x; got {tuple(sample_scale.shape)}"
            )
        if sample_scale.requires_grad and torch.is_grad_enabled():
            raise ValueError("sample_scale (drop-path's per-sample factor) is not differentiable; detach it")
    _check_devices(x, residual=residual, sample_scale=sample_scale)


def _kernels_input(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """x as the (B, C, H, W) tensor the ops take: a view of x itself, or of one copy of it where
    its spatial dims do not flatten into one strided axis.

    Rank 3 (B, C, L) is viewed as (B, C, L, 1), rank 5 (B, C, D, H, W) as (B, C, D * H * W, 1)
    (a view where D, H and W flatten: contiguous, channels_last_3d), so that every path of the
    kernels, which see x as (B, C, HW) through three strides, runs them as they are."""
    if x is None:
        return None
    if x.dim() == 3:
        return x.unsqueeze(-1)  # one spatial axis: always one strided axis
    if x.dim() == 5:
        b, c = x.shape[:2]
        if _flat_spatial_stride(x) is None:
            # A spatial slice, a permutation: one copy, into channels_last_3d where channels
            # vary faster than W in x's memory, NCDHW otherwise.
            fmt = torch.channels_last_3d if x.stride(1) < x.stride(4) else torch.contiguous_format
            x = x.contiguous(memory_format=fmt)
        return x.view(b, c, math.prod(x.shape[2:]), 1)
    if _fused_modules()[0].bchw_strides(x) is None:
        # A spatial slice, a permutation: one copy, into channels_last where channels vary
        # faster than W in x's memory, NCHW otherwise.
        fmt = torch.channels_last if x.stride(1) < x.stride(3) else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
    return x


def _flat_spatial_stride(x: torch.Tensor) -> Optional[int]:
    """The stride of x's spatial dims flattened into one axis, or None where they do not flatten
    (size-1 dims are free)."""
    stride = None
    expected = None
    for size, st in reversed(list(zip(x.shape[2:], x.stride()[2:], strict=True))):
        if size == 1:
            continue
        if expected is not None and st != expected:
            return None
        if stride is None:
            stride = st
        expected = st * size
    return 1 if stride is None else stride


def _output(y4: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The ops' (B, C, H, W) output viewed back in x's shape (autograd takes the gradient back
    through the same view)."""
    return y4 if y4.dim() == x.dim() else y4.view(x.shape)


def check_lengths(x: torch.Tensor, lengths: Optional[torch.Tensor]) -> None:
    """Checks squeeze_excite's lengths against x: (B,) integer counts of valid positions, each in
    1..L, for a (B, C, L) x. The range check reads the values (a host sync on a GPU); it is left
    out while torch.compile traces and while a CUDA graph is captured."""
    if lengths is None:
        return
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be a torch.Tensor of shape (B,) or None; got {type(lengths).__name__}")
    if x.dim() != 3:
        raise ValueError(
            f"lengths is for sequences: x must be 3-D (B, C, L) with lengths; got rank {x.dim()}, "
            f"shape {tuple(x.shape)}"
        )
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
        raise ValueError(f"lengths must have shape (B,) = ({x.shape[0]},) to match x; got {tuple(lengths.shape)}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"lengths must be int32 or int64 (each sample's count of valid positions, 1..L); got {lengths.dtype}"
            " (SpeechBrain's relative lengths: fused_se.adapters.speechbrain_lengths turns them into counts)"
        )
    if lengths.device != x.device:
        raise ValueError(f"lengths is on {lengths.device} but x is on {x.device}; all inputs must be on one device")
    if lengths.requires_grad:
        raise ValueError("lengths must not require a gradient")
    if lengths.numel() == 0 or torch.compiler.is_compiling() or _capturing(x):
        return
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > x.shape[2]:
        raise ValueError(
            f"lengths must be in 1..L = 1..{x.shape[2]} (each sample's count of valid positions); "
            f"got values from {low} to {high}"
        )


def _capturing(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def squeeze_excite(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor] = None,
    *,
    act: str = "relu",
    gate: str = "sigmoid",
    residual: Optional[torch.Tensor] = None,
    out_act: str = "identity",
    sample_scale: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y = x * gate(W2 act(W1 mean(x) + b1) + b2), fused, the mean over x's spatial dims.

    x: (B, C, L), (B, C, H, W) or (B, C, D, H, W), in any layout whose spatial dims flatten into
    one strided axis (contiguous, channels_last, channels_last_3d, a channel slice; others are
    copied once); w1: (hidden, C) and w2: (C, hidden) as nn.Linear stores them (any hidden >= 1),
    or pointwise convs' weights as they are ((hidden, C, 1, ...), (C, hidden, 1, ...)): their
    gradients come back in the weights' shapes; b1 and b2 may be None. act: "relu" or "silu"; gate: "sigmoid" or "hard_sigmoid" (torch's
    hardsigmoid). The squeeze and the excitation run in fp32 whatever x's dtype; y has x's
    shape, dtype and memory format. Differentiable in x, the weights and the biases.

    A residual block's tail, in the same pass over x: y = out_act(x * s * sample_scale[b] +
    residual), out_act "identity" or "relu". residual: x's shape and dtype (the shortcut;
    differentiable); sample_scale: (B,) (drop-path's per-sample factor, 1 or 0 / keep_prob;
    not differentiable). The output is a new tensor; the residual is not written.

    lengths: for a sequence x (B, C, L), (B,) int32 or int64 counts of each sample's valid
    positions, 1..L: the squeeze is the mean over positions l < lengths[b] only, and every
    position, past the length too, is scaled by the same gate (SpeechBrain's ECAPA-TDNN SE,
    whose relative lengths fused_se.adapters.speechbrain_lengths turns into these counts).
    Runs the three-launch path (docs/DESIGN.md).
    """
    return _squeeze_excite(x, w1, b1, w2, b2, act, gate, residual, out_act, sample_scale, lengths)


# The functional forms first try ops.run_if_known: y where the forward op has already run with
# arguments of this replay key (they passed the checks, which read nothing the key does not hold;
# x and a residual are then 4-D, in layouts the kernels take as they are), neither checked nor
# signed again; None otherwise, and under the reference backend. (The common case inline: no
# sample_scale, the fused modules imported.)


def _keyed_factor(sample_scale: Optional[torch.Tensor]) -> bool:
    """Whether a replay key holds everything check_epilogue reads of sample_scale: not what it
    reads of one that requires a gradient (refused while grad mode is on)."""
    return sample_scale is None or (type(sample_scale) is torch.Tensor and not sample_scale.requires_grad)


def _squeeze_excite(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    act: str,
    gate: str,
    residual: Optional[torch.Tensor],
    out_act: str,
    sample_scale: Optional[torch.Tensor],
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """squeeze_excite with every argument positional (the modules' call: keywords cost each call
    their parsing)."""
    if lengths is None and (sample_scale is None or _keyed_factor(sample_scale)):
        ops = (_IMPORTED or _fused_modules())[1]
        y = ops.run_if_known(ops.squeeze_excite, (x, w1, b1, w2, b2, act, gate, residual, sample_scale, out_act))
        if y is not None:
            return y
    check_inputs(x, w1, b1, w2, b2, act, gate)
    check_epilogue(x, residual, out_act, sample_scale)
    check_lengths(x, lengths)
    if backend_for(x) == "reference":
        tail = {"residual": residual, "out_act": out_act, "sample_scale": sample_scale}
        return reference.squeeze_excite(x, w1, b1, w2, b2, act=act, gate=gate, lengths=lengths, **tail)
    _, ops, ops_lengths, _ = _fused_modules()
    # every argument positionally, in the ops' order: keywords cost each call its parsing
    tail4 = (_kernels_input(residual), sample_scale, out_act)
    if lengths is not None:
        y = ops.run(ops_lengths.squeeze_excite_lengths, _kernels_input(x), w1, b1, w2, b2, act, gate, lengths, *tail4)
    else:
        y = ops.run(ops.squeeze_excite, _kernels_input(x), w1, b1, w2, b2, act, gate, *tail4)
    return _output(y, x)


def effective_squeeze_excite(
    x: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    *,
    gate: str = "hard_sigmoid",
    residual: Optional[torch.Tensor] = None,
    out_act: str = "identity",
    sample_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y = x * gate(W mean(x) + b), fused: the effective SE block (ESE) of VoVNet.

    w: (C, C), or a 1x1 conv's (C, C, 1, ...) weight as it is; b: (C,) or None. As squeeze_excite otherwise
    (ranks, layouts, the residual tail), without lengths.
    """
    return _effective_squeeze_excite(x, w, b, gate, residual, out_act, sample_scale)


def _effective_squeeze_excite(
    x: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    gate: str,
    residual: Optional[torch.Tensor],
    out_act: str,
    sample_scale: Optional[torch.Tensor],
) -> torch.Tensor:
    """effective_squeeze_excite with every argument positional (the modules' call)."""
    if sample_scale is None or _keyed_factor(sample_scale):
        ops = (_IMPORTED or _fused_modules())[1]
        y = ops.run_if_known(ops.effective_squeeze_excite, (x, w, b, gate, residual, sample_scale, out_act))
        if y is not None:
            return y
    _check_x(x)
    c = x.shape[1]
    _check_matrix("w", w, "C", "C")
    if tuple(w.shape[:2]) != (c, c):
        raise ValueError(f"w must have shape (C, C) = ({c}, {c}) to match x; got {tuple(w.shape)}")
    _check_vector("b", b, c, "x's channels")
    _check_devices(x, w=w, b=b)
    _check_dtypes(x, w=w, b=b)
    _check_choice("gate", gate, reference.GATES)
    check_epilogue(x, residual, out_act, sample_scale)
    if backend_for(x) == "reference":
        tail = {"residual": residual, "out_act": out_act, "sample_scale": sample_scale}
        return reference.effective_squeeze_excite(x, w, b, gate=gate, **tail)
    ops = _fused_modules()[1]
    tail4 = (_kernels_input(residual), sample_scale, out_act)
    return _output(ops.run(ops.effective_squeeze_excite, _kernels_input(x), w, b, gate, *tail4), x)


def efficient_channel_attention(
    x: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    *,
    circular: bool = False,
    gate: str = "sigmoid",
    residual: Optional[torch.Tensor] = None,
    out_act: str = "identity",
    sample_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y = x * gate(conv1d(mean(x), w) + b) across channels, fused: ECA, or CECA if circular.

    w: (K,) with K odd, the taps of a Conv1d(1, 1, K) with padding (K - 1) // 2, zero or
    circular, or that conv's (1, 1, K) weight as it is (its gradient comes back in that shape);
    b: (1,) or None. As squeeze_excite otherwise (ranks, layouts, the residual tail),
    without lengths.
    """
    return _efficient_channel_attention(x, w, b, circular, gate, residual, out_act, sample_scale)


def _efficient_channel_attention(
    x: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    circular: bool,
    gate: str,
    residual: Optional[torch.Tensor],
    out_act: str,
    sample_scale: Optional[torch.Tensor],
) -> torch.Tensor:
    """efficient_channel_attention with every argument positional (the modules' call)."""
    # (type(circular): 1 == True, so that a key would not tell them apart)
    if (sample_scale is None or _keyed_factor(sample_scale)) and type(circular) is bool:
        ops = (_IMPORTED or _fused_modules())[1]
        y = ops.run_if_known(
            ops.efficient_channel_attention, (x, w, b, circular, gate, residual, sample_scale, out_act)
        )
        if y is not None:
            return y
    _check_x(x)
    c = x.shape[1]
    k = _check_weights_vector("w", w, 2, "(K,)", "a Conv1d(1, 1, K)'s (1, 1, K) weight")
    if k % 2 == 0:
        raise ValueError(f"w must have an odd number of taps K (padding (K - 1) // 2 on each side); got K = {k}")
    if circular and (k - 1) // 2 > c:
        raise ValueError(f"circular padding of {(k - 1) // 2} wraps around C = {c} channels more than once")
    _check_vector("b", b, 1, "the single output channel")
    _check_devices(x, w=w, b=b)
    _check_dtypes(x, w=w, b=b)
    if not isinstance(circular, bool):
        raise TypeError(f"circular must be a bool; got {type(circular).__name__}")
    _check_choice("gate", gate, reference.GATES)
    check_epilogue(x, residual, out_act, sample_scale)
    if backend_for(x) == "reference":
        tail = {"residual": residual, "out_act": out_act, "sample_scale": sample_scale}
        return reference.efficient_channel_attention(x, w, b, circular=circular, gate=gate, **tail)
    ops = _fused_modules()[1]
    tail4 = (_kernels_input(residual), sample_scale, out_act)
    return _output(ops.run(ops.efficient_channel_attention, _kernels_input(x), w, b, circular, gate, *tail4), x)


def spatial_channel_squeeze_excite(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    ws: torch.Tensor,
    bs: Optional[torch.Tensor] = None,
    *,
    act: str = "relu",
    gate: str = "sigmoid",
) -> torch.Tensor:
    """scSE, concurrent spatial and channel squeeze-and-excitation (segmentation_models_pytorch's
    SCSEModule), fused: y = x * (s_c[b, c] + s_s[b, hw]) with

        s_c = gate(W2 act(W1 mean(x) + b1) + b2)      the channel gate, as squeeze_excite's
        s_s = sigmoid(sum_c ws[c] x[b, c, hw] + bs)   the spatial gate: a 1x1 conv to one channel

    Args:
        x: (B, C, L), (B, C, H, W) or (B, C, D, H, W), in any layout whose spatial dims flatten into
            one strided axis (others are copied once).
        w1, b1, w2, b2: the channel gate's layers as nn.Linear stores them ((hidden, C), (hidden,),
            (C, hidden), (C,)), the weights also as pointwise convs' ((hidden, C, 1, ...)); the
            biases may be None.
        ws, bs: the spatial gate's 1x1 conv, its weight as (C,) or as the conv holds it, (1, C, 1, 1)
            (its gradient comes back in that shape), and its bias as (1,) or None.
        act: "relu" or "silu"; gate: the channel gate, "sigmoid" or "hard_sigmoid".
    Parameters have x's dtype, or are fp32 with a 16-bit x. Everything is summed in fp32 (fp64
    for fp64 x).

    Returns:
        y, in x's shape, dtype and memory format; differentiable in x and every parameter.
    Two passes over x forward (3N bytes), two over g and x backward (5N); docs/DESIGN.md, "scSE".
    """
    return _spatial_channel_squeeze_excite(x, w1, b1, w2, b2, ws, bs, act, gate)


def _spatial_channel_squeeze_excite(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    ws: torch.Tensor,
    bs: Optional[torch.Tensor],
    act: str,
    gate: str,
    residual: Optional[torch.Tensor] = None,
    out_act: str = "identity",
    sample_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """spatial_channel_squeeze_excite with every argument positional (the module's call, which passes
    the residual tail's arguments too: scSE has no fused tail, so anything but their defaults is refused)."""
    if residual is not None or out_act != "identity" or sample_scale is not None:
        raise ValueError("scSE has no fused residual tail: residual, out_act and sample_scale are for SE blocks")
    _, ops, _, ops_scse = _fused_modules()
    y = ops.run_if_known(ops_scse.scse, (x, w1, b1, w2, b2, ws, bs, act, gate, None, None, "identity"))
    if y is not None:
        return y
    check_inputs(x, w1, b1, w2, b2, act, gate)
    c = x.shape[1]
    if _check_weights_vector("ws", ws, 1, "(C,)", "the sSE conv's (1, C, 1, ...) weight") != c:
        raise ValueError(
            f"ws must have shape (C,) = ({c},), or (1, {c}, 1, ...), to match x's channels; got {tuple(ws.shape)}"
        )
    _check_vector("bs", bs, 1, "the spatial gate's single output channel")
    _check_devices(x, ws=ws, bs=bs)
    _check_dtypes(x, w1=w1, b1=b1, w2=w2, b2=b2, ws=ws, bs=bs)
    if backend_for(x) == "reference":
        return reference.spatial_channel_squeeze_excite(x, w1, b1, w2, b2, ws, bs, act=act, gate=gate)
    _, ops, _, ops_scse = _fused_modules()
    return _output(
        ops.run(ops_scse.scse, _kernels_input(x), w1, b1, w2, b2, ws, bs, act, gate, None, None, "identity"), x
    )
