"""The excitation variants (inner activation, gate, biases, any hidden width, the FC and the
conv forms) through the fused kernels, against eager PyTorch: the same parity rules as the
classic block (dtypes, layouts, odd shapes, gradcheck). The ops' CPU kernel (their twins of the
launchers in torch ops, fused_se.decomposed) is held to the same rules."""

import pytest
import torch
from se_testing import (
    FORM_KERNELS,
    FUSED_OPS,
    LAYOUTS,
    assert_within_torch_error,
    eager_variant,
    excite_bwd_launches,
    make_input,
    make_variant_params,
    record_launches,
    record_ops,
    run_variant,
)

import fused_se
from fused_se import _dispatch
from fused_se import decomposed as torch_ops_kernel

# (form, act, gate, bias, circular): every act x gate of the MLP form, both gates and paddings
# of the others.
VARIANTS = [
    ("mlp", "relu", "sigmoid", True, False),
    ("mlp", "silu", "sigmoid", True, False),
    ("mlp", "relu", "hard_sigmoid", True, False),
    ("mlp", "silu", "hard_sigmoid", False, False),
    ("fc", None, "hard_sigmoid", True, False),
    ("fc", None, "sigmoid", False, False),
    ("conv", None, "sigmoid", False, False),
    ("conv", None, "hard_sigmoid", True, True),
]

# (B, C, H, W, hidden, k): odd channel counts, hidden widths 1..13 that are not C // r, HW 1..196.
SHAPES = [(3, 24, 5, 13, 5, 3), (1, 65, 7, 7, 13, 5), (2, 16, 1, 1, 1, 1), (2, 40, 14, 14, 3, 9)]


def _variant_id(v):
    form, act, gate, bias, circular = v
    return "-".join(filter(None, [form, act, gate, "bias" if bias else "nobias", "circular" if circular else None]))


def _run(fn, x, params, g):
    x = x.detach().clone().requires_grad_()
    leaves = [p.detach().clone().requires_grad_() if p is not None else None for p in params]
    y = fn(x, leaves)
    wrt = [x] + [p for p in leaves if p is not None]
    return [y.detach(), *torch.autograd.grad(y, wrt, g)]


@pytest.fixture
def decomposed(monkeypatch):
    """The CPU without the interpreter: the fused ops run their torch-ops kernel."""
    monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    return torch.device("cpu")


def _eager_and_fp64(variant, x, params, g):
    """[y, dx, the parameters' gradients] of eager PyTorch in x's dtype, and in fp64."""
    form, act, gate, _, circular = variant

    def eager(x, p):
        return eager_variant(x, form, p, act, gate, circular)

    params64 = [p.double() if p is not None else None for p in params]
    return _run(eager, x, params, g), _run(eager, x.double(), params64, g.double())


def _check(variant, shape, dtype, layout, device, path="triton"):
    form, act, gate, bias, circular = variant
    b, c, h, w, hidden, k = shape
    params = make_variant_params(form, c, hidden, k, bias, device)
    x = make_input((b, c, h, w), dtype, device, layout) * 2
    g = torch.randn(b, c, h, w, device=device, dtype=dtype)
    with record_launches() as launched, record_ops() as ops:
        ours = _run(lambda x, p: run_variant(fused_se, x, form, p, act, gate, circular), x, params, g)
    assert fused_se.backend_for(x) == path
    assert [op for op in ops if op.startswith("fused_se.")] == [FUSED_OPS[form], FUSED_OPS[form] + "_backward"]
    kernel = FORM_KERNELS[form]
    expected = ["squeeze", kernel, "scale", "scale_bwd", *excite_bwd_launches(form, b), "squeeze_scale_bwd"]
    assert launched == (expected if path == "triton" else []), f"the {path} path did not run"
    own, ref64 = _eager_and_fp64(variant, x, params, g)
    names = ["y", "dx"] + [f"d{i}" for i in range(len(ours) - 2)]
    assert ours[0].dtype == ours[1].dtype == dtype
    for name, o, t, r in zip(names, ours, own, ref64, strict=False):
        # Weight gradients come back in the weights' dtype (fp32 here): compare them in fp32.
        assert_within_torch_error(name, o, t.to(o.dtype), r)
    return ours


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-{}x{}-h{}-k{}".format(*s))
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_fp32_shapes(variant, shape, device):
    _check(variant, shape, torch.float32, "nchw", device)


@pytest.mark.parametrize("layout", [lay for lay in LAYOUTS if lay != "nchw"])
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_fp32_layouts(variant, layout, device):
    _check(variant, SHAPES[1], torch.float32, layout, device)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_low_precision(variant, dtype, layout, device):
    _check(variant, SHAPES[0], dtype, layout, device)


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_gradcheck_fp64(variant, device):
    form, act, gate, bias, circular = variant
    b, c, h, w, hidden, k = 2, 6, 2, 2, 2, 3
    params = make_variant_params(form, c, hidden, k, bias, device, torch.float64)
    x = torch.randn(b, c, h, w, dtype=torch.float64, device=device) * 2
    inputs = [t.requires_grad_() for t in [x, *params] if t is not None]

    def fn(x, *weights):
        it = iter(weights)
        full = [next(it) if p is not None else None for p in params]
        return run_variant(fused_se, x, form, full, act, gate, circular)

    with record_launches() as launched:
        # The hard sigmoid's kinks: keep gradcheck's steps well inside the pieces.
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)
    assert FORM_KERNELS[form] + "_bwd" in launched


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_decomposed_fp32_shapes(variant, decomposed):
    for shape in SHAPES:
        _check(variant, shape, torch.float32, "nchw", decomposed, path="decomposed")


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_decomposed_layouts_and_low_precision(variant, decomposed):
    for layout in LAYOUTS:
        _check(variant, SHAPES[1], torch.float32, layout, decomposed, path="decomposed")
    for dtype in (torch.float16, torch.bfloat16):
        _check(variant, SHAPES[0], dtype, "channels_last", decomposed, path="decomposed")


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_decomposed_gradcheck_fp64(variant, decomposed):
    form, act, gate, bias, circular = variant
    params = make_variant_params(form, 6, 2, 3, bias, decomposed, torch.float64)
    x = torch.randn(2, 6, 2, 2, dtype=torch.float64) * 2
    inputs = [t.requires_grad_() for t in [x, *params] if t is not None]

    def fn(x, *weights):
        it = iter(weights)
        return run_variant(
            fused_se, x, form, [next(it) if p is not None else None for p in params], act, gate, circular
        )

    with record_ops() as ops:
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
    assert FUSED_OPS[form] + "_backward" in ops


def test_hidden_width_one_and_wide(device):
    """Reduced widths that are not C // r: 1, and one past a power of two."""
    for hidden in (1, 17):
        variant = ("mlp", "silu", "sigmoid", True, False)
        _check(variant, (2, 48, 3, 3, hidden, 1), torch.float32, "nchw", device)


@pytest.mark.parametrize("tail", [False, True], ids=["plain", "relu-tail"])
def test_decomposed_two_fc_block_runs_in_one_call_each_way(tail, decomposed, monkeypatch):
    """The CPU kernel's two-FC forward and backward are one call each (fewer ops a call), and give
    what the three-step twins give."""
    from fused_se import decomposed as twins

    b, c, h, w, hidden = 3, 24, 5, 6, 5
    params = make_variant_params("mlp", c, hidden, 3, True, decomposed)
    x = make_input((b, c, h, w), torch.float32, decomposed, "channels_last") * 2
    residual = torch.randn_like(x) if tail else None
    d = torch.tensor([1.0, 0.0, 2.0]) if tail else None
    g = torch.randn_like(x)

    def run(x, leaves):
        return fused_se.squeeze_excite(x, *leaves, residual=residual, out_act="relu" if tail else "identity",
                                       sample_scale=d)  # fmt: skip

    calls = []
    for name in ("squeeze_excite_fwd", "squeeze_excite_bwd"):
        monkeypatch.setattr(twins, name, (lambda f, n: lambda *a: calls.append(n) or f(*a))(getattr(twins, name), name))
    ours = _run(run, x, params, g)
    assert calls == ["squeeze_excite_fwd", "squeeze_excite_bwd"]

    # the three steps, as the ops ran them before: squeeze, excitation, scale; and back
    w1, b1, w2, b2 = params
    zsum = twins.squeeze_fwd(x)
    z, s, a = twins.excite_fwd(zsum, h * w, w1, b1, w2, b2, x.dtype)
    y = twins.scale_fwd(x, s, d, residual, tail)
    dssum, masked = twins.scale_bwd(g, x, d, y if tail else None, store_g=True)
    dz, *dweights = twins.excite_bwd(dssum, z, s, a, w1, b1, w2, x.dtype, (True,) * 5)
    dx = twins.squeeze_scale_bwd(masked, s, dz, x, d)
    for got, want in zip(ours, [y, dx, *dweights], strict=False):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "sliced_c"])
def test_decomposed_inference_computes_y_alone(layout, gate, dtype, decomposed, monkeypatch):
    """A CPU call that takes no gradient runs the two-FC block's y alone (nothing kept for a
    backward), with the bits, dtype and memory format that the autograd call's y has."""
    from fused_se import decomposed as twins

    b, c, h, w, hidden = 3, 24, 5, 6, 5
    w1, b1, w2, b2 = make_variant_params("mlp", c, hidden, 3, True, decomposed)
    x = make_input((b, c, h, w), dtype, decomposed, layout) * 2
    residual, d = torch.randn(b, c, h, w, dtype=dtype), torch.tensor([1.0, 0.0, 2.0])
    calls = []
    for name in ("squeeze_excite_fwd", "squeeze_excite_y"):
        monkeypatch.setattr(twins, name, (lambda f, n: lambda *a: calls.append(n) or f(*a))(getattr(twins, name), name))
    for tail in ({}, {"residual": residual, "out_act": "relu", "sample_scale": d}):
        del calls[:]
        with torch.no_grad():
            y = fused_se.squeeze_excite(x, w1, b1, w2, b2, gate=gate, **tail)
        want = fused_se.squeeze_excite(x, w1.requires_grad_(), b1, w2, b2, gate=gate, **tail)
        w1.requires_grad_(False)
        assert calls == ["squeeze_excite_y", "squeeze_excite_fwd"]
        assert torch.equal(y, want) and y.dtype == want.dtype == x.dtype and y.stride() == want.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("act", "gate"), [("relu", "sigmoid"), ("silu", "hard_sigmoid")])
@pytest.mark.parametrize("tail", [False, True], ids=["plain", "relu-tail"])
def test_decomposed_backward_takes_the_hidden_layer_its_forward_kept(tail, act, gate, dtype, decomposed, monkeypatch):
    """A plain CPU call keeps the hidden layer's pre-activation for its backward, which then reads
    W1 once (dz) instead of twice: no product recomputes it. The gradients are the bits of the op's
    own backward, which recomputes it (the path torch.compile and export take)."""
    from fused_se import decomposed as twins
    from fused_se import ops

    b, c, hw, hidden = 3, 24, 5, 5
    w1, b1, w2, b2 = make_variant_params("mlp", c, hidden, 3, True, decomposed)
    x = make_input((b, c, hw, hw), dtype, decomposed, "channels_last") * 2
    residual = torch.randn_like(x) if tail else None
    d = torch.tensor([1.0, 0.0, 2.0]) if tail else None
    out_act = "relu" if tail else "identity"
    g = torch.randn_like(x)
    products = []
    linear = twins.F.linear
    monkeypatch.setattr(twins.F, "linear", lambda *a: products.append(a[1].shape) or linear(*a))
    grads = {}
    for how in ("plain", "op"):
        xg, *leaves = (t.detach().clone().requires_grad_() for t in (x, w1, b1, w2, b2))
        args = (xg, *leaves, act, gate, residual, d, out_act)
        y = ops.run(ops.squeeze_excite, *args) if how == "plain" else ops.squeeze_excite(*args)[0]
        kept = y.grad_fn.hidden
        if how == "plain":
            z = x.float().mean((2, 3))
            assert kept is not None and torch.equal(kept, torch.nn.functional.linear(z, w1.float(), b1.float()))
        else:
            assert kept is None
        del products[:]
        grads[how] = torch.autograd.grad(y, [xg, *leaves], g)
        assert products == ([] if how == "plain" else [w1.shape]), how
    for got, want in zip(grads["plain"], grads["op"], strict=False):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] != "mlp"], ids=_variant_id)
def test_16_bit_parameters_get_their_gradients_without_a_cast(variant, dtype, device, monkeypatch):
    """A block moved to a 16-bit dtype: the FC and conv forms' excitation backward stores the
    weight gradients in the parameters' dtype (each fp32 sum rounded once), so the op casts
    none of them afterwards; the parity rules hold."""
    form, act, gate, bias, circular = variant
    b, c, h, w, hidden, k = SHAPES[0]
    params = [None if p is None else p.to(dtype) for p in make_variant_params(form, c, hidden, k, bias, device)]
    x = make_input((b, c, h, w), dtype, device, "channels_last") * 2
    g = torch.randn(b, c, h, w, device=device, dtype=dtype)
    casts = []
    as_dtype = torch_ops_kernel.as_dtype
    monkeypatch.setattr(torch_ops_kernel, "as_dtype", lambda t, dt: casts.append((t.dtype, dt)) or as_dtype(t, dt))
    with record_launches() as launched:
        ours = _run(lambda x, p: run_variant(fused_se, x, form, p, act, gate, circular), x, params, g)
    assert FORM_KERNELS[form] + "_bwd" in launched
    assert [t.dtype for t in ours] == [dtype] * len(ours)
    assert not [cast for cast in casts if cast[0] != cast[1]], casts
    monkeypatch.setattr(torch_ops_kernel, "as_dtype", as_dtype)
    own, ref64 = _eager_and_fp64(variant, x, params, g)
    for name, o, t, r in zip(["y", "dx", "dw", "db"], ours, own, ref64, strict=False):
        assert_within_torch_error(name, o, t, r)
