"""The public forms on sequences (B, C, L) and volumes (B, C, D, H, W), and the squeeze over each
sequence's valid positions (lengths): parity with eager PyTorch and the reference, gradients,
gradcheck, the residual tail, the modules, the ops' torch-ops kernel, and the errors."""

from __future__ import annotations

import pytest
import torch
from se_testing import (
    BACKWARD_KERNELS,
    FORM_KERNELS,
    FORWARD_KERNELS,
    assert_within_torch_error,
    eager_variant,
    excite_bwd_launches,
    make_variant_params,
    record_launches,
)

import fused_se
from fused_se import _dispatch, ops_lengths, reference

SHAPES = {3: (2, 12, 9), 5: (2, 12, 2, 3, 4)}
LAYOUTS = {
    3: ["contiguous", "channels_last", "sliced_c", "sliced_l"],
    5: ["contiguous", "channels_last", "sliced_c", "sliced_spatial", "permuted"],
}


def make_x(shape, dtype, device, layout):
    kw = {"dtype": dtype, "device": device}
    b, c, *spatial = shape
    if layout == "contiguous":
        return torch.randn(shape, **kw)
    if layout == "channels_last":  # channels fastest: a (B, L, C) sequence transposed, channels_last_3d
        if len(spatial) == 1:
            return torch.randn(b, spatial[0], c, **kw).transpose(1, 2)
        return torch.randn(shape, **kw).contiguous(memory_format=torch.channels_last_3d)
    if layout == "sliced_c":
        return torch.randn(b, 2 * c, *spatial, **kw)[:, 1::2]
    if layout == "sliced_l":  # every other position: one strided axis still
        return torch.randn(b, c, 2 * spatial[0], **kw)[:, :, ::2]
    if layout == "sliced_spatial":  # D, H, W do not flatten into one axis: copied once
        return torch.randn(b, c, *(n + 2 for n in spatial), **kw)[:, :, 1:-1, 2:, :-2]
    if layout == "permuted":  # W strides over D: no layout anyone uses on purpose
        d, h, w = spatial
        return torch.randn(b, c, w, h, d, **kw).permute(0, 1, 4, 3, 2)
    raise ValueError(layout)


def _fused(form, x, params, **kw):
    if form == "mlp":
        return fused_se.squeeze_excite(x, *params, act="silu", gate="hard_sigmoid", **kw)
    if form == "fc":
        return fused_se.effective_squeeze_excite(x, *params, gate="hard_sigmoid", **kw)
    return fused_se.efficient_channel_attention(x, *params, circular=True, gate="sigmoid", **kw)


def _eager(form, x, params, residual=None, out_act="identity", sample_scale=None):
    gate = "sigmoid" if form == "conv" else "hard_sigmoid"
    y = eager_variant(x, form, params, "silu", gate, circular=True)
    if sample_scale is not None:
        y = y * sample_scale.to(y.dtype).view(-1, *(1,) * (x.dim() - 1))
    if residual is not None:
        y = y + residual
    return torch.relu(y) if out_act == "relu" else y


def _grads(fn, x, params, g, residual=None):
    x = x.detach().clone().requires_grad_()
    leaves = [p.detach().clone().requires_grad_() if p is not None else None for p in params]
    res = None if residual is None else residual.detach().clone().requires_grad_()
    y = fn(x, leaves, res)
    wrt = [t for t in (x, *leaves, res) if t is not None]
    return [y.detach(), *torch.autograd.grad(y, wrt, g)]


def _parity(form, x, tail=False, dtype=None):
    device = x.device
    params = make_variant_params(form, x.shape[1], 3, 3, True, device)
    g = torch.randn(x.shape, dtype=x.dtype, device=device)
    residual = torch.randn(x.shape, dtype=x.dtype, device=device) if tail else None
    kw = {"out_act": "relu", "sample_scale": torch.tensor([2.0, 0.0], device=device)} if tail else {}
    with record_launches() as launched:
        ours = _grads(lambda x, p, r: _fused(form, x, p, residual=r, **kw), x, params, g, residual)
    excite = FORM_KERNELS[form]
    bwd = excite_bwd_launches(form, x.shape[0])
    assert launched == ["squeeze", excite, "scale", "scale_bwd", *bwd, "squeeze_scale_bwd"], launched
    own = _grads(lambda x, p, r: _eager(form, x, p, r, **kw), x, params, g, residual)
    p64 = [p.double() if p is not None else None for p in params]
    r64 = None if residual is None else residual.double()
    ref = _grads(lambda x, p, r: _eager(form, x, p, r, **kw), x.double(), p64, g.double(), r64)
    for i, (o, t, r) in enumerate(zip(ours, own, ref, strict=False)):
        assert_within_torch_error(f"tensor {i}", o, t.to(o.dtype), r)
    return ours


@pytest.mark.parametrize("form", ["mlp", "fc", "conv"])
@pytest.mark.parametrize("rank,layout", [(r, lay) for r in (3, 5) for lay in LAYOUTS[r]], ids=str)
def test_forms_match_eager(rank, layout, form, device):
    x = make_x(SHAPES[rank], torch.float32, device, layout) * 2
    y, dx, *_ = _parity(form, x)
    assert y.shape == x.shape and dx.shape == x.shape
    if layout in ("contiguous", "channels_last"):  # taken as they are: y and dx keep x's strides
        assert y.stride() == x.stride() and dx.stride() == x.stride()


@pytest.mark.parametrize("form", ["mlp", "fc", "conv"])
@pytest.mark.parametrize("rank", [3, 5])
def test_residual_tail(rank, form, device):
    x = make_x(SHAPES[rank], torch.float32, device, "channels_last") * 2
    _parity(form, x, tail=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("rank", [3, 5])
def test_low_precision(rank, dtype, device):
    _parity("mlp", make_x(SHAPES[rank], dtype, device, "contiguous") * 2)


@pytest.mark.parametrize("form", ["mlp", "fc", "conv"])
@pytest.mark.parametrize("rank", [3, 5])
def test_gradcheck_fp64(rank, form, device):
    shape = {3: (2, 5, 4), 5: (2, 5, 2, 1, 3)}[rank]
    x = make_x(shape, torch.float64, device, "channels_last").requires_grad_()
    params = [
        p.requires_grad_() if p is not None else None
        for p in make_variant_params(form, 5, 2, 3, True, device, torch.float64)
    ]
    residual = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    ok = torch.autograd.gradcheck(
        lambda x, r, *p: _fused(form, x, p, residual=r), (x, residual, *params), eps=1e-6, atol=1e-6, fast_mode=True
    )
    assert ok


@pytest.mark.parametrize("rank", [3, 5])
def test_modules(rank, device):
    x = make_x(SHAPES[rank], torch.float32, device, "contiguous")
    se = fused_se.FusedSEModule(12, 4).to(device)
    ref = reference.squeeze_excite(x, se.fc[0].weight, None, se.fc[2].weight, None)
    torch.testing.assert_close(se(x), ref, rtol=1e-5, atol=1e-6)
    eca = fused_se.FusedEcaModule(3).to(device)
    ref = reference.efficient_channel_attention(x, eca.conv.weight.view(-1), None)
    torch.testing.assert_close(eca(x), ref, rtol=1e-5, atol=1e-6)
    conv = {3: torch.nn.Conv1d, 5: torch.nn.Conv3d}[rank]
    pointwise = fused_se.FusedConv2dSEModule.from_layers(
        conv(12, 3, 1).to(device), conv(3, 12, 1).to(device), act="relu", gate="sigmoid"
    )
    ref = reference.squeeze_excite(
        x, pointwise.fc1.weight.flatten(1), pointwise.fc1.bias, pointwise.fc2.weight.flatten(1), pointwise.fc2.bias
    )
    torch.testing.assert_close(pointwise(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank", [3, 5])
def test_reference_is_the_mean_over_every_spatial_dim(rank, device):
    x = make_x(SHAPES[rank], torch.float64, device, "contiguous")
    w1, w2 = torch.randn(3, 12, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    z = x.flatten(2).mean(-1)
    s = torch.sigmoid(torch.relu(z @ w1.t()) @ w2.t())
    want = x * s.view(*s.shape, *(1,) * (rank - 2))
    torch.testing.assert_close(reference.squeeze_excite(x, w1, None, w2, None), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [3, 5])
def test_decomposed(rank, monkeypatch):
    """The ops' torch-ops kernel (CPU without the interpreter) on both ranks, lengths too."""
    monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    x = make_x(SHAPES[rank], torch.float64, "cpu", "channels_last")
    assert fused_se.backend_for(x) == "decomposed"
    params = make_variant_params("mlp", 12, 3, 1, True, "cpu", torch.float64)
    g = torch.randn(x.shape, dtype=torch.float64)
    kw = {"lengths": torch.tensor([9, 4])} if rank == 3 else {}
    with record_launches() as launched:
        ours = _grads(lambda x, p, r: fused_se.squeeze_excite(x, *p, **kw), x, params, g)
    assert launched == []
    ref = _grads(lambda x, p, r: reference.squeeze_excite(x, *p, **kw), x, params, g)
    for o, r in zip(ours, ref, strict=False):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    assert ours[0].stride() == x.stride() and ours[1].stride() == x.stride()


# ---- lengths -------------------------------------------------------------------------------------


def _speechbrain_style(x, w1, b1, w2, b2, lengths):
    """SpeechBrain's SEBlock with counts: the masked mean (x * mask).sum / mask.sum, then x * s everywhere."""
    mask = (torch.arange(x.shape[2], device=x.device) < lengths[:, None]).to(x.dtype)[:, None, :]
    z = (x * mask).sum(2) / mask.sum(2)
    s = torch.sigmoid(torch.relu(z @ w1.t() + b1) @ w2.t() + b2)
    return x * s[:, :, None]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced_l"])
def test_lengths_match_the_masked_mean(layout, device):
    x = make_x((3, 12, 9), torch.float64, device, layout)
    params = make_variant_params("mlp", 12, 3, 1, True, device, torch.float64)
    n = torch.tensor([9, 1, 5], device=device)
    g = torch.randn(x.shape, dtype=torch.float64, device=device)
    with record_launches() as launched:
        ours = _grads(lambda x, p, r: fused_se.squeeze_excite(x, *p, lengths=n), x, params, g)
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS
    want = _grads(lambda x, p, r: _speechbrain_style(x, *p, n), x, params, g)
    for o, w in zip(ours, want, strict=False):
        torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-12)
    assert (ours[0][1, :, 1:] != 0).all()  # positions past the length are scaled too, not zeroed
    whole = fused_se.squeeze_excite(x, *params, lengths=torch.tensor([9, 9, 9], device=device))
    torch.testing.assert_close(whole, fused_se.squeeze_excite(x, *params), rtol=1e-12, atol=1e-12)


def test_lengths_gradcheck_and_tail(device):
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    res = torch.randn(3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    params = [p.requires_grad_() for p in make_variant_params("mlp", 4, 2, 1, True, device, torch.float64)]
    n = torch.tensor([5, 2, 1], dtype=torch.int32, device=device)

    def fn(x, r, *p):
        return fused_se.squeeze_excite(x, *p, lengths=n, residual=r, out_act="relu")

    assert torch.autograd.gradcheck(fn, (x, res, *params), eps=1e-6, atol=1e-6, fast_mode=True)
    got = fn(x, res, *params)
    want = reference.squeeze_excite(x, *params, lengths=n, residual=res, out_act="relu")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_lengths_through_the_modules_and_the_reference_backend(device, monkeypatch):
    x = torch.randn(2, 16, 7, device=device)
    n = torch.tensor([3, 7], device=device)
    se = fused_se.FusedSEModule(16, 4).to(device)
    y = se(x, lengths=n)
    want = _speechbrain_style(x, se.fc[0].weight, 0.0, se.fc[2].weight, 0.0, n)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("FUSED_SE_BACKEND", "reference")
    with record_launches() as launched:
        torch.testing.assert_close(se(x, lengths=n), want, rtol=1e-5, atol=1e-6)
    assert launched == []
    with pytest.raises(ValueError, match="lengths is for the two-FC form only"):
        fused_se.FusedEcaModule(3).to(device)(x, lengths=n)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's traced twins; the GPU tests cover CUDA")
@pytest.mark.parametrize("rank", [3, 5])
def test_compile_fullgraph(rank):
    """torch.compile sees the views and the fused ops (traced through their torch-ops twins on the CPU),
    lengths included; the compiled gradients match the kernels'."""
    torch._dynamo.reset()
    x = make_x(SHAPES[rank], torch.float32, "cpu", "channels_last").requires_grad_()
    w1, w2 = torch.randn(3, 12, requires_grad=True), torch.randn(12, 3, requires_grad=True)
    kw = {"lengths": torch.tensor([9, 2])} if rank == 3 else {}

    def fn(x, w1, w2):
        return fused_se.squeeze_excite(x, w1, None, w2, None, **kw)

    compiled = torch.compile(fn, fullgraph=True)
    g = torch.randn(x.shape)
    got = [compiled(x, w1, w2), *torch.autograd.grad(compiled(x, w1, w2), [x, w1, w2], g)]
    want = [fn(x, w1, w2), *torch.autograd.grad(fn(x, w1, w2), [x, w1, w2], g)]
    for a, b in zip(got, want, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors through the interpreter; the GPU tests cover CUDA")
@pytest.mark.parametrize("interpreter", [True, False], ids=["kernels", "decomposed"])
def test_opcheck_lengths_ops(interpreter, monkeypatch):
    if not interpreter:
        monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    x = torch.randn(3, 8, 6, 1).requires_grad_()
    w1, b1, w2, b2 = (torch.randn(*s).requires_grad_() for s in [(2, 8), (2,), (8, 2), (8,)])
    n = torch.tensor([6, 1, 4])
    for args in [(x, w1, b1, w2, b2, "silu", "hard_sigmoid", n), (x, w1, None, w2, None, "relu", "sigmoid", n)]:
        result = torch.library.opcheck(ops_lengths.squeeze_excite_lengths, args)
        assert set(result.values()) == {"SUCCESS"}, result


# ---- errors, before any kernel runs --------------------------------------------------------------


def _lengths_errors(device):
    x = torch.randn(2, 8, 6, device=device)
    n = torch.tensor([6, 2], device=device)
    return x, {
        "shape": (x, n[:1], ValueError, r"lengths must have shape \(B,\) = \(2,\)"),
        "rank-2": (x, n[:, None], ValueError, r"lengths must have shape \(B,\)"),
        "float": (x, n.float() / 6, TypeError, "lengths must be int32 or int64.*speechbrain_lengths"),
        "device": (x, n.to("meta"), ValueError, "lengths is on meta"),
        "zero": (x, torch.tensor([6, 0], device=device), ValueError, r"lengths must be in 1..L = 1..6.*from 0 to 6"),
        "past L": (x, torch.tensor([7, 1], device=device), ValueError, r"lengths must be in 1..L = 1..6"),
        "not a tensor": (x, [6, 2], TypeError, "lengths must be a torch.Tensor"),
        "x rank 4": (x[..., None], n, ValueError, "lengths is for sequences: x must be 3-D"),
    }


@pytest.mark.parametrize("case", list(_lengths_errors("cpu")[1]))
def test_lengths_errors(case, device):
    x, cases = _lengths_errors(device)
    x, n, exc, match = cases[case]
    w1, w2 = torch.randn(2, 8, device=device), torch.randn(8, 2, device=device)
    with record_launches() as launched, pytest.raises(exc, match=match):
        fused_se.squeeze_excite(x, w1, None, w2, None, lengths=n)
    assert launched == []


@pytest.mark.parametrize("rank", [1, 2, 6])
@pytest.mark.parametrize("form", ["mlp", "fc", "conv"])
def test_rank_errors_name_the_accepted_ranks(form, rank, device):
    x = torch.randn((2, 8, 3, 3, 3, 3)[:rank], device=device)
    params = make_variant_params(form, 8, 2, 3, False, device)
    with record_launches() as launched, pytest.raises(ValueError, match=f"x must be 3-D, 4-D or 5-D .*got rank {rank}"):
        _fused(form, x, params)
    assert launched == []
    with pytest.raises(ValueError, match="x must be 3-D, 4-D or 5-D"):
        fused_se.FusedSEModule(8, 4).to(device)(x if rank > 1 else x[None])


@pytest.mark.parametrize("rank", [3, 5])
def test_empty_spatial_and_residual_shape_errors(rank, device):
    x = torch.randn(SHAPES[rank], device=device)
    params = make_variant_params("mlp", 12, 3, 1, False, device)
    with pytest.raises(ValueError, match="at least one spatial position"):
        fused_se.squeeze_excite(x[:, :, :0], *params)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        fused_se.squeeze_excite(x, *params, residual=x[..., :1])


def test_empty_batch(device):
    for rank in (3, 5):
        x = torch.randn((0, *SHAPES[rank][1:]), device=device, requires_grad=True)
        params = [p.requires_grad_() for p in make_variant_params("mlp", 12, 3, 1, False, device) if p is not None]
        y = fused_se.squeeze_excite(x, params[0], None, params[1], None)
        assert y.shape == x.shape
        dx, dw1 = torch.autograd.grad(y.sum(), [x, params[0]])
        assert dx.shape == x.shape and torch.equal(dw1, torch.zeros_like(dw1))


@pytest.mark.parametrize("rank", [3, 5])
def test_plain_eager_calls_and_the_custom_op_agree(rank, device):
    """Plain eager calls run the op's body as an autograd.Function (behind the view back to x's
    shape), lengths included; under a function mode the custom op runs; both give the same bits."""
    from torch.overrides import TorchFunctionMode

    class PassThrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x = make_x(SHAPES[rank], torch.float32, device, "channels_last").requires_grad_()
    params = [p.requires_grad_() for p in make_variant_params("mlp", 12, 3, 1, True, device)]
    kw = {"lengths": torch.tensor([9, 4], device=device)} if rank == 3 else {}

    def run():
        y = fused_se.squeeze_excite(x, *params, **kw)
        return y, torch.autograd.grad(y, [x, *params], torch.ones_like(y))

    y, grads = run()
    op_node = y.grad_fn.next_functions[0][0]  # under the view of y in x's shape
    assert type(op_node).__name__ == ("SqueezeExciteLengthsBackward" if kw else "SqueezeExciteBackward")
    with PassThrough():
        y_op, grads_op = run()
    assert torch.equal(y, y_op) and all(torch.equal(a, b) for a, b in zip(grads, grads_op, strict=False))
