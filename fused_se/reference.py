"""The SE block in plain PyTorch ops: the same math as the kernels, unfused.

The CPU fallback runs it, and the tests and benchmarks compare against it. Like the kernels,
it keeps the squeeze and the excitation in fp32 (fp64 for fp64 inputs) and returns x's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

ACTIVATIONS = ("relu", "silu")
GATES = ("sigmoid", "hard_sigmoid")

_ACT_FNS = {"relu": torch.relu, "silu": F.silu}
_GATE_FNS = {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of every path (kernels, twins, reference): z, s, a and every
    intermediate are fp32, or fp64 for fp64 inputs (so that gradcheck sees exact math)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _opt(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype)


def _matrix(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A weight matrix, (O, I) or a pointwise conv's (O, I, 1, ...) weight, as (O, I) in dtype,
    through a view whose gradient comes back in w's own strides (channels_last too, as DDP's
    gradient buckets expect)."""
    if w.dim() > 2:
        w = w.movedim(1, -1).flatten(1) if w.stride(-1) != 1 else w.flatten(1)
    return w.to(dtype)


def excite(
    z: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    act: str = "relu",
    gate: str = "sigmoid",
) -> torch.Tensor:
    """s = gate(W2 act(W1 z + b1) + b2) for z of shape (B, C), in z's dtype."""
    h = _ACT_FNS[act](F.linear(z, _matrix(w1, z.dtype), _opt(b1, z.dtype)))
    return _GATE_FNS[gate](F.linear(h, _matrix(w2, z.dtype), _opt(b2, z.dtype)))


def excite_fc(z: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], gate: str = "hard_sigmoid") -> torch.Tensor:
    """FC form (effective SE): s = gate(W z + b), W of shape (C, C) (or (C, C, 1, ...))."""
    return _GATE_FNS[gate](F.linear(z, _matrix(w, z.dtype), _opt(b, z.dtype)))


def excite_conv(
    z: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], circular: bool = False, gate: str = "sigmoid"
) -> torch.Tensor:
    """Conv form (ECA, CECA): s = gate(conv1d over channels of z with the K taps w, + b), K odd; w
    (K,) or a Conv1d(1, 1, K)'s (1, 1, K) weight."""
    pad = (w.shape[-1] - 1) // 2
    v = z[:, None, :]
    if circular:
        v = F.pad(v, (pad, pad), mode="circular")
        pad = 0
    a = F.conv1d(v, w.to(z.dtype).view(1, 1, -1), _opt(b, z.dtype), padding=pad)
    return _GATE_FNS[gate](a[:, 0, :])


OUT_ACTS = ("identity", "relu")


def squeeze(x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """z: the mean of x (B, C, *spatial) over its spatial dims, (B, C) in the accumulation dtype;
    with lengths (B,) for a (B, C, L) x, over each sample's first lengths[b] positions only."""
    acc = acc_dtype(x.dtype)
    spatial = tuple(range(2, x.dim()))
    if lengths is None:
        return x.to(acc).mean(dim=spatial)
    valid = torch.arange(x.shape[2], device=x.device) < lengths[:, None]  # (B, L)
    return (x.to(acc) * valid[:, None, :]).sum(dim=2) / lengths.to(acc)[:, None]


def _squeeze_scale(
    x: torch.Tensor,
    excitation,
    residual: Optional[torch.Tensor] = None,
    out_act: str = "identity",
    sample_scale: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    acc = acc_dtype(x.dtype)
    z = squeeze(x, lengths)
    s = excitation(z)
    if sample_scale is not None:
        s = s * sample_scale.to(acc)[:, None]
    y = x.to(acc) * s.view(*s.shape, *(1,) * (x.dim() - 2))
    if residual is not None:
        y = y + residual.to(acc)
    if out_act == "relu":
        y = torch.relu(y)
    return y.to(x.dtype)


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
    """y = out_act(x * gate(W2 act(W1 mean(x) + b1) + b2) * sample_scale + residual), by autograd;
    x of any rank 3 to 5, the mean over its spatial dims (over each sample's first lengths[b]
    positions where lengths is given)."""
    excitation = lambda z: excite(z, w1, b1, w2, b2, act, gate)  # noqa: E731
    return _squeeze_scale(x, excitation, residual, out_act, sample_scale, lengths)


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
    """y = x * gate(W mean(x) + b), W of shape (C, C); the epilogue as squeeze_excite."""
    return _squeeze_scale(x, lambda z: excite_fc(z, w, b, gate), residual, out_act, sample_scale)


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
    """y = x * gate(conv1d_k(mean(x)) + b) across channels, zero or circular padding; the
    epilogue as squeeze_excite."""
    return _squeeze_scale(x, lambda z: excite_conv(z, w, b, circular, gate), residual, out_act, sample_scale)


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
    """scSE: y = x * (gate(W2 act(W1 mean(x) + b1) + b2)[b, c] + sigmoid(sum_c ws[c] x + bs)[b, hw]),
    by autograd, in the accumulation dtype; x of any rank 3 to 5, ws (C,) or the sSE conv's
    (1, C, 1, ...) weight, bs (1,) or None."""
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    s = excite(squeeze(x), w1, b1, w2, b2, act, gate)
    q = torch.einsum("bc...,c->b...", xa, (ws if ws.dim() == 1 else _matrix(ws, acc)[0]).to(acc))
    if bs is not None:
        q = q + bs.to(acc).reshape(())
    y = xa * (s.view(*s.shape, *(1,) * (x.dim() - 2)) + torch.sigmoid(q).unsqueeze(1))
    return y.to(x.dtype)


class SCSEModule(torch.nn.Module):
    """scSE in nn layers, as segmentation_models_pytorch writes it (eager PyTorch): the module
    FusedSCSEModule replaces, with the same state_dict keys."""

    def __init__(self, in_channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.cSE = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Conv2d(in_channels, in_channels // reduction, 1),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(in_channels // reduction, in_channels, 1),
            torch.nn.Sigmoid(),
        )
        self.sSE = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 1, 1), torch.nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cSE(x) + x * self.sSE(x)


class SEModule(torch.nn.Module):
    """The classic SE block in nn layers (eager PyTorch): the module FusedSEModule replaces."""

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(channel, channel // reduction, bias=False),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(channel // reduction, channel, bias=False),
            torch.nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        s = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * s
