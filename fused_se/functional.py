"""The functional form of the fused SE block, with the input checks of the public boundary."""

from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._dispatch import backend_for

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, t: object, ndim: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}; got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D with shape {shape_doc}; got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {t.dtype}")


def check_inputs(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    act: str,
    gate: str,
) -> None:
    """Raises ValueError or TypeError naming the argument; runs before any kernel."""
    _check_tensor("x", x, 4, "(B, C, H, W)")
    _, c, h, w = x.shape
    _check_tensor("w1", w1, 2, "(hidden, C)")
    r = w1.shape[0]
    if w1.shape[1] != c:
        raise ValueError(f"w1 must have shape (hidden, C) with C = x.shape[1] = {c}; got {tuple(w1.shape)}")
    if r == 0:
        raise ValueError("w1 must have at least one row (hidden width >= 1); got shape (0, C)")
    _check_tensor("w2", w2, 2, "(C, hidden)")
    if tuple(w2.shape) != (c, r):
        raise ValueError(f"w2 must have shape (C, hidden) = ({c}, {r}) to match x and w1; got {tuple(w2.shape)}")
    if b1 is not None:
        _check_tensor("b1", b1, 1, f"({r},)")
        if b1.shape[0] != r:
            raise ValueError(f"b1 must have shape ({r},) to match w1; got {tuple(b1.shape)}")
    if b2 is not None:
        _check_tensor("b2", b2, 1, f"({c},)")
        if b2.shape[0] != c:
            raise ValueError(f"b2 must have shape ({c},) to match x's channels; got {tuple(b2.shape)}")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all inputs must be on one device")
    if h * w == 0:
        raise ValueError(f"x must have H * W >= 1 to take a mean over H and W; got shape {tuple(x.shape)}")
    if act not in reference.ACTIVATIONS:
        raise ValueError(f"act must be one of {reference.ACTIVATIONS}; got {act!r}")
    if gate not in reference.GATES:
        raise ValueError(f"gate must be one of {reference.GATES}; got {gate!r}")


def squeeze_excite(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor] = None,
    *,
    act: str = "relu",
    gate: str = "sigmoid",
) -> torch.Tensor:
    """y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2), fused.

    x: (B, C, H, W), NCHW-contiguous or channels_last (other strides are copied once);
    w1: (hidden, C) and w2: (C, hidden) as nn.Linear stores them; b1 and b2 may be None.
    The squeeze and the excitation run in fp32 whatever x's dtype; y has x's dtype and
    memory format. Differentiable in x, the weights and the biases.
    """
    check_inputs(x, w1, b1, w2, b2, act, gate)
    if backend_for(x) == "reference":
        return reference.squeeze_excite(x, w1, b1, w2, b2, act=act, gate=gate)
    # Imported here, not at the top: importing fused_se must not import triton, so that
    # TRITON_INTERPRET can still be set after `import fused_se` (the demo does).
    from . import kernels, ops

    if kernels.bchw_strides(x) is None:
        # H and W do not flatten into one strided axis (a spatial slice, a permutation): one copy,
        # into channels_last where channels vary faster than W in x's memory, NCHW otherwise.
        fmt = torch.channels_last if x.stride(1) < x.stride(3) else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
    y, _, _ = ops.squeeze_excite(x, w1, b1, w2, b2, act, gate)
    return y
