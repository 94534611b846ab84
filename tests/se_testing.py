"""Helpers shared by the tests: the classic SE module and the tolerance rule."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fused_se.kernels import record_launches  # noqa: F401  (re-exported for the tests)
from fused_se.kernels.plan import Plan

FORWARD_KERNELS = ["squeeze", "excite", "scale"]
BACKWARD_KERNELS = ["scale_bwd", "excite_bwd", "squeeze_scale_bwd"]

FUSED_OPS = {
    "mlp": "fused_se.squeeze_excite",
    "fc": "fused_se.effective_squeeze_excite",
    "conv": "fused_se.efficient_channel_attention",
}


class _OpRecorder(TorchDispatchMode):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.log.append(str(func.overloadpacket._qualified_op_name).replace("::", "."))
        return func(*args, **(kwargs or {}))


@contextmanager
def record_ops() -> Iterator[list[str]]:
    """Names of the ops dispatched inside the block ("fused_se.squeeze_excite", "aten.mul", ...)."""
    log: list[str] = []
    with _OpRecorder(log):
        yield log


def planned(plan: Plan, path: str):
    """The plan's configuration where it chose `path`, else None."""
    return plan.config if plan.path == path else None


# Absolute slack on top of the 2x-PyTorch rule, relative to the reference's largest magnitude.
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}


class ClassicSE(nn.Module):
    """The SE block as SENet and most code bases write it, in nn layers."""

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0


def assert_within_torch_error(name: str, ours: torch.Tensor, torch_own: torch.Tensor, ref64: torch.Tensor) -> None:
    """ours passes when its error against the fp64 reference is at most twice PyTorch's own
    error in the same dtype, plus a small absolute slack."""
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(ours).any(), f"{name}: NaN in the result (an element left unwritten?)"
    scale = max(1.0, ref64.abs().max().item())
    err, own = max_err(ours, ref64), max_err(torch_own, ref64)
    bound = 2 * own + ATOL[ours.dtype] * scale
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (PyTorch's own error {own:.3g})"


def assert_nonfinite_like_eager(y: torch.Tensor, ref: torch.Tensor) -> None:
    """NaN and Inf exactly where eager has them, the finite values close to eager's."""
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(y[finite], ref[finite], rtol=1e-5, atol=1e-6)


def make_input(shape, dtype, device, layout: str) -> torch.Tensor:
    """A (B, C, H, W) input in one of the layouts the tests cover."""
    b, c, h, w = shape
    kw = {"dtype": dtype, "device": device}
    if layout == "nchw":
        return torch.randn(b, c, h, w, **kw)
    if layout == "channels_last":
        return torch.randn(b, c, h, w, **kw).to(memory_format=torch.channels_last)
    if layout == "sliced_hw":  # H and W do not flatten into one strided axis: the op copies once
        return torch.randn(b, c, h + 2, w + 3, **kw)[:, :, 1 : h + 1, 2 : w + 2]
    if layout == "sliced_c":  # every other channel: strided, but taken as it is
        return torch.randn(b, 2 * c, h, w, **kw)[:, ::2]
    raise ValueError(layout)


LAYOUTS = ["nchw", "channels_last", "sliced_hw", "sliced_c"]


def randomize_norms(model: nn.Module) -> None:
    """Random affine parameters and statistics for every BatchNorm: ResNets zero-initialise the
    last norm of each block, which would zero the SE's input and hide any error."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)


# ---- the excitation variants --------------------------------------------------------------------

_ACTS = {"relu": torch.relu, "silu": torch.nn.functional.silu}
_GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": torch.nn.functional.hardsigmoid}


def eager_variant(
    x: torch.Tensor, form: str, params: list, act: str, gate: str, circular: bool = False
) -> torch.Tensor:
    """The SE variants as timm and torchvision compute them: every step in x's dtype, unfused."""
    F = torch.nn.functional
    params = [p.to(x.dtype) if p is not None else None for p in params]
    z = x.mean(tuple(range(2, x.dim())))  # over every spatial dim, whatever x's rank
    if form == "mlp":
        w1, b1, w2, b2 = params
        a = F.linear(_ACTS[act](F.linear(z, w1, b1)), w2, b2)
    elif form == "fc":
        w, b = params
        a = F.linear(z, w, b)
    else:
        w, b = params
        pad = (w.shape[0] - 1) // 2
        v = z[:, None, :]
        if circular:
            v, pad = F.pad(v, (pad, pad), mode="circular"), 0
        a = F.conv1d(v, w.view(1, 1, -1), b, padding=pad)[:, 0]
    return x * _GATES[gate](a).view(*a.shape, *(1,) * (x.dim() - 2))


def make_variant_params(form: str, c: int, hidden: int, k: int, bias: bool, device, dtype=torch.float32) -> list:
    """Weights with gate inputs spread over a few units, so that both sides of the hard
    sigmoid's flat parts and of ReLU are reached."""
    kw = {"device": device, "dtype": dtype}
    if form == "mlp":
        w1, w2 = torch.randn(hidden, c, **kw) * 2 / c**0.5, torch.randn(c, hidden, **kw) * 2 / hidden**0.5
        return [w1, torch.randn(hidden, **kw) if bias else None, w2, torch.randn(c, **kw) if bias else None]
    if form == "fc":
        return [torch.randn(c, c, **kw) * 2 / c**0.5, torch.randn(c, **kw) if bias else None]
    return [torch.randn(k, **kw), torch.randn(1, **kw) if bias else None]


FORM_KERNELS = {"mlp": "excite", "fc": "excite_fc", "conv": "excite_conv"}


def excite_bwd_launches(form: str, batch: int, weight_grads: bool = True) -> list[str]:
    """The excitation backward's launches: the conv form's programs each take a few samples (one
    at these tests' batches) and write partials of dw and db, which one more launch adds up."""
    kernel = FORM_KERNELS[form] + "_bwd"
    return [kernel, "sum_partials"] if form == "conv" and batch > 1 and weight_grads else [kernel]


def run_variant(impl, x: torch.Tensor, form: str, params: list, act: str, gate: str, circular: bool = False):
    """One excitation form through `impl`: fused_se (the kernels) or fused_se.reference, which
    name their three functional forms alike."""
    if form == "mlp":
        return impl.squeeze_excite(x, *params, act=act, gate=gate)
    if form == "fc":
        return impl.effective_squeeze_excite(x, *params, gate=gate)
    return impl.efficient_channel_attention(x, *params, circular=circular, gate=gate)


def mlp_outputs_and_grads(fn, x: torch.Tensor, params: list, g: torch.Tensor) -> list:
    """[y, dx, and the gradient of each parameter that is not None] of y = fn(x, *params), on
    fresh leaves."""
    x = x.detach().clone().requires_grad_()
    leaves = [p.detach().clone().requires_grad_() if p is not None else None for p in params]
    y = fn(x, *leaves)
    wrt = [x] + [p for p in leaves if p is not None]
    return [y.detach(), *torch.autograd.grad(y, wrt, g)]


def model_outputs_and_grads(model, inputs: tuple, *args) -> tuple:
    """(output, {name: gradient}) of a model for a fixed cotangent: the gradients of the inputs
    ("input 0", ...) and of every parameter by name. Drop-path and dropout draw the same masks on
    every call; a Hugging Face output gives its last_hidden_state, a dict of features their concat."""
    inputs = tuple(x.detach().clone().requires_grad_() for x in inputs)
    torch.manual_seed(1234)
    y = model(*inputs, *args)
    if isinstance(y, dict):
        y = torch.cat([t.flatten() for t in y.values()])
    elif not isinstance(y, torch.Tensor):
        y = y.last_hidden_state
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype).to(y.device)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=False)
    grads = torch.autograd.grad(y, [*inputs, *params], g, allow_unused=True)
    return y.detach(), dict(zip([f"input {i}" for i in range(len(inputs))] + list(names), grads, strict=False))


def assert_same_outputs_and_grads(got: tuple, want: tuple, label: str, rel: float = 1e-9) -> None:
    """`model_outputs_and_grads` of a converted model against the original's: every gradient the
    original has, each within rel of the original's largest magnitude (fp64: the same math)."""
    (y, grads), (y_ref, grads_ref) = got, want
    assert grads.keys() == grads_ref.keys()
    for what, ours, ref in [("output", y, y_ref)] + [(k, grads[k], grads_ref[k]) for k in grads_ref]:
        if ref is None:
            assert ours is None, what
            continue
        err = (ours - ref).abs().max().item()
        assert err <= rel * max(1.0, ref.abs().max().item()), f"{what} ({label}): error {err:.3g}"
