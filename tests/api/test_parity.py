"""FusedSEModule against the classic SEModule written with nn layers: outputs and gradients."""

import pytest
import torch
from se_testing import (
    BACKWARD_KERNELS,
    FORWARD_KERNELS,
    LAYOUTS,
    ClassicSE,
    assert_within_torch_error,
    make_input,
    record_launches,
)

import fused_se

# (C, reduction, H, W, B): hidden widths 1..16, odd channel counts, HW from 1 to 196.
SHAPES = [
    (16, 16, 7, 7, 1),  # hidden 1
    (16, 1, 1, 1, 3),  # hidden 16, 1x1 map
    (16, 2, 14, 14, 3),  # hidden 8
    (24, 3, 5, 13, 3),  # hidden 8, 5x13
    (24, 8, 14, 14, 1),  # hidden 3
    (65, 4, 7, 7, 3),  # hidden 16
    (65, 13, 5, 13, 1),  # hidden 5
    (256, 16, 1, 1, 3),  # hidden 16
    (256, 32, 7, 7, 1),  # hidden 8
    (256, 128, 5, 13, 1),  # hidden 2
]


def _shape_id(s):
    c, r, h, w, b = s
    return f"C{c}-r{r}-{h}x{w}-B{b}"


def _run(module, x, grad_out):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(grad_out)
    return y.detach(), x.grad, module.fc[0].weight.grad, module.fc[2].weight.grad


def _check_parity(shape, dtype, layout, device):
    c, r, h, w, b = shape
    classic = ClassicSE(c, r).to(device)
    fused = fused_se.FusedSEModule(c, r).to(device)
    fused.load_state_dict(classic.state_dict())

    x = make_input((b, c, h, w), dtype, device, layout)
    grad_out = torch.randn(b, c, h, w, device=device, dtype=dtype)

    with record_launches() as launched:
        got = _run(fused.to(dtype), x, grad_out)
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS, "the Triton path did not run"
    classic64 = ClassicSE(c, r).to(device)
    classic64.load_state_dict(classic.state_dict())
    ref64 = _run(classic64.double(), x.double(), grad_out.double())
    own = _run(classic.to(dtype), x, grad_out)
    for name, ours, torch_own, ref in zip(["y", "dx", "dW1", "dW2"], got, own, ref64, strict=False):
        assert ours.dtype == dtype, f"{name} has dtype {ours.dtype}"
        assert_within_torch_error(name, ours, torch_own, ref)
    return x, got


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_fp32_shapes_and_layouts(shape, layout, device):
    _x, (y, dx, _, _) = _check_parity(shape, torch.float32, layout, device)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert dx.is_contiguous(memory_format=torch.channels_last)
    if layout == "nchw":
        assert y.is_contiguous() and dx.is_contiguous()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3], SHAPES[8]], ids=_shape_id)
def test_low_precision(shape, dtype, layout, device):
    _check_parity(shape, dtype, layout, device)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gradcheck_fp64_through_kernels(bias, device):
    b, c, h, w, r = 2, 6, 2, 2, 2
    kw = {"dtype": torch.float64, "device": device, "requires_grad": True}
    x = torch.randn(b, c, h, w, **kw)
    w1, w2 = torch.randn(r, c, **kw), torch.randn(c, r, **kw)
    b1, b2 = (torch.randn(r, **kw), torch.randn(c, **kw)) if bias else (None, None)
    with record_launches() as launched:
        assert torch.autograd.gradcheck(lambda *a: fused_se.squeeze_excite(*a), (x, w1, b1, w2, b2))
    assert set(launched) == set(FORWARD_KERNELS + BACKWARD_KERNELS)


@pytest.mark.parametrize("params", ["contiguous", "strided"])
def test_biases_against_reference_fp64(params, device):
    """Every gradient of the functional form, biases included, against autograd through the
    reference; "strided" passes transposed weights and every-other-element biases."""
    b, c, h, w, r = 3, 24, 5, 13, 6
    kw = {"dtype": torch.float64, "device": device}
    args = [
        torch.randn(b, c, h, w, **kw),
        torch.randn(r, c, **kw),
        torch.randn(r, **kw),
        torch.randn(c, r, **kw),
        torch.randn(c, **kw),
    ]
    g = torch.randn(b, c, h, w, **kw)
    ours = [a.clone().requires_grad_() for a in args]
    ref = [a.clone().requires_grad_() for a in args]
    if params == "strided":
        views = [ours[0], ours[1].t().contiguous().t(), ours[2].repeat_interleave(2)[::2], ours[3].t().contiguous().t()]
        views.append(ours[4].repeat_interleave(2)[::2])
        assert views[2].stride(0) == 2 and views[1].stride() == (1, r)
        ours_in = views
    else:
        ours_in = ours
    with record_launches() as launched:
        fused_se.squeeze_excite(*ours_in).backward(g)
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS
    fused_se.reference.squeeze_excite(*ref).backward(g)
    for name, a, e in zip(["x", "w1", "b1", "w2", "b2"], ours, ref, strict=False):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-10, atol=1e-12, msg=f"grad of {name}")


def test_same_bits_twice(device):
    m = fused_se.FusedSEModule(65, 4).to(device)
    x = make_input((3, 65, 7, 7), torch.float32, device, "channels_last")
    g = torch.randn(3, 65, 7, 7, device=device)
    with record_launches() as launched:
        first = _run(m, x, g)
        second = _run(m, x, g)
    assert launched == (FORWARD_KERNELS + BACKWARD_KERNELS) * 2
    for a, b in zip(first, second, strict=False):
        assert torch.equal(a, b)


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_saves_only_x_weights_and_per_channel_values(gate, device):
    b, c, h, w = 3, 24, 5, 13
    m = fused_se.FusedSEModule(c, 3, gate=gate).to(device)
    x = torch.randn(b, c, h, w, device=device, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    weights = {p.data_ptr() for p in m.parameters()}
    xs = [t for t in saved if t.data_ptr() == x.data_ptr()]
    rest = [t for t in saved if t.data_ptr() != x.data_ptr() and t.data_ptr() not in weights]
    assert len(xs) == 1 and xs[0].shape == x.shape
    # z and s, (B, C) fp32, and the hard sigmoid's input (an empty placeholder for the sigmoid)
    per_channel = [((b, c), torch.float32)] * (2 if gate == "sigmoid" else 3)
    placeholder = [((0,), torch.float32)] if gate == "sigmoid" else []
    assert sorted((tuple(t.shape), t.dtype) for t in rest) == sorted(per_channel + placeholder)
    y.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_input_with_fp32_weights(dtype, device):
    """The AMP case: 16-bit activations, fp32 weights. The excitation runs in fp32, y and dx come
    back in x's dtype, the weight gradients in fp32."""
    b, c, h, w, r = 3, 24, 5, 13, 6
    x = torch.randn(b, c, h, w, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(b, c, h, w, device=device, dtype=dtype)
    w1 = torch.randn(r, c, device=device, requires_grad=True)
    w2 = torch.randn(c, r, device=device, requires_grad=True)
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2)
        y.backward(g)
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS
    assert y.dtype == x.grad.dtype == dtype and w1.grad.dtype == w2.grad.dtype == torch.float32

    ref = [t.detach().double().requires_grad_() for t in (x, w1, w2)]
    y_ref = fused_se.reference.squeeze_excite(ref[0], ref[1], None, ref[2])
    y_ref.backward(g.double())
    # A few roundings to the output dtype: on the GPU the gate's GEMMs may use TF32 for 16-bit x,
    # whose input rounding (2**-11) is that of fp16 itself.
    rtol = 4 * (2.0**-10 if dtype == torch.float16 else 2.0**-7)
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), ref[0].grad, rtol=rtol, atol=1e-4)
    torch.testing.assert_close(w1.grad.double(), ref[1].grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w2.grad.double(), ref[2].grad, rtol=1e-4, atol=1e-4)
