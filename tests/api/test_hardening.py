"""Inputs that break kernels: offsets past 2**31, NaN and Inf, every pattern of gradients,
double backward."""

import pytest
import torch
from se_testing import FORM_KERNELS, make_variant_params, record_launches, run_variant

import fused_se
from fused_se import reference

# NaN and Inf arithmetic is the point here: numpy (under the interpreter) warns of it.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# (form, act, gate, circular)
FORMS = [
    ("mlp", "relu", "sigmoid", False),
    ("mlp", "silu", "hard_sigmoid", False),
    ("fc", None, "hard_sigmoid", False),
    ("conv", None, "sigmoid", True),
]


def _both(form, x, params, act, gate, circular, g):
    """(ours, reference): output and gradients of x and of every parameter."""
    out = []
    for impl in (fused_se, reference):
        xs = x.detach().clone().requires_grad_()
        ps = [p.detach().clone().requires_grad_() if p is not None else None for p in params]
        y = run_variant(impl, xs, form, ps, act, gate, circular)
        out.append([y.detach(), *torch.autograd.grad(y, [xs] + [p for p in ps if p is not None], g)])
    return out


# ---- offsets past 2**31 ------------------------------------------------------------------------


def test_offsets_past_int32(device):
    """A batch stride of 2**31 + 8 elements: every pointer offset past int32, on a 4 GiB storage
    of which only a few elements are touched."""
    stride_b = 2**31 + 8
    storage = torch.empty(stride_b + 64, dtype=torch.bfloat16, device=device)
    x = storage.as_strided((2, 3, 1, 4), (stride_b, 4, 4, 1))
    x.copy_(torch.randn(2, 3, 1, 4, device=device))
    params = make_variant_params("mlp", 3, 2, 1, True, device)
    g = torch.randn(2, 3, 1, 4, device=device, dtype=torch.bfloat16)
    with record_launches() as launched:
        ours, ref = _both("mlp", x, params, "relu", "sigmoid", False, g)
    assert launched == ["squeeze", "excite", "scale", "scale_bwd", "excite_bwd", "squeeze_scale_bwd"]
    assert storage.data_ptr() == x.data_ptr()  # the kernels took x as it is, not a copy
    for a, b in zip(ours, ref, strict=False):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


# ---- NaN and Inf -------------------------------------------------------------------------------


def _assert_same_nans(name, ours, ref):
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)), f"{name}: NaN where the reference has none, or not"
    assert torch.equal(torch.isinf(ours), torch.isinf(ref)), f"{name}: Inf where the reference has none, or not"
    finite = torch.isfinite(ref)
    torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("where", ["x", "x-inf", "dy", "dy-inf", "weight"])
@pytest.mark.parametrize("form,act,gate,circular", FORMS, ids=lambda v: str(v))
def test_nan_and_inf_propagate_as_in_eager(form, act, gate, circular, where, device):
    b, c, h, w = 3, 16, 2, 3
    x = torch.randn(b, c, h, w, device=device)
    g = torch.randn(b, c, h, w, device=device)
    params = make_variant_params(form, c, 4, 3, True, device)
    if where == "x":
        x[1, 5, 1, 2] = float("nan")  # one element: its sample's gate goes NaN through the FCs
    elif where == "x-inf":
        x[1, 5, 1, 2] = float("inf")
    elif where == "dy":
        g[2, 7, 0, 0] = float("nan")
    elif where == "dy-inf":
        g[2, 7, 0, 0] = float("inf")
    else:
        params[0] = params[0].clone()
        params[0].view(-1)[0] = float("nan")
    with record_launches() as launched:
        ours, ref = _both(form, x, params, act, gate, circular, g)
    assert FORM_KERNELS[form] + "_bwd" in launched
    names = ["y", "dx"] + [f"d{i}" for i in range(len(ours) - 2)]
    for name, a, r in zip(names, ours, ref, strict=False):
        _assert_same_nans(f"{where}/{name}", a, r)
    if where == "x":
        assert torch.isfinite(ours[0][[0, 2]]).all()  # the other samples are untouched
        if form != "conv":  # through the FCs, every channel of the sample; the conv reaches k of them
            assert torch.isnan(ours[0][1]).all()


# ---- gradients: every pattern, and no double backward -------------------------------------------


@pytest.mark.parametrize(
    "needs",
    [
        (False, True, True, True, True),  # x without grad, weights with
        (True, False, False, False, False),  # frozen weights
        (True, True, False, True, True),  # one bias frozen
        (False, False, True, False, False),  # only a bias
    ],
)
def test_gradient_patterns(needs, device):
    x = torch.randn(2, 16, 3, 3, device=device)
    params = make_variant_params("mlp", 16, 4, 1, True, device)
    leaves = [t.clone().requires_grad_(n) for t, n in zip([x, *params], needs, strict=False)]
    with record_launches() as launched:
        y = fused_se.squeeze_excite(*leaves, act="silu", gate="hard_sigmoid")
        y.backward(torch.ones_like(y))
    assert launched[:5] == ["squeeze", "excite", "scale", "scale_bwd", "excite_bwd"]
    assert ("squeeze_scale_bwd" in launched) == needs[0]  # no dx pass unless x needs it
    ref_leaves = [t.detach().clone().requires_grad_(n) for t, n in zip(leaves, needs, strict=False)]
    reference.squeeze_excite(*ref_leaves, act="silu", gate="hard_sigmoid").backward(torch.ones_like(y))
    for t, r, n in zip(leaves, ref_leaves, needs, strict=False):
        if n:
            torch.testing.assert_close(t.grad, r.grad, rtol=1e-4, atol=1e-5)
        else:
            assert t.grad is None


@pytest.mark.parametrize("form,act,gate,circular", FORMS, ids=lambda v: str(v))
def test_double_backward_raises_a_clear_error(form, act, gate, circular, device):
    x = torch.randn(2, 16, 3, 3, device=device, requires_grad=True)
    params = make_variant_params(form, 16, 4, 3, False, device)
    y = run_variant(fused_se, x, form, params, act, gate, circular)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward .* not supported; set FUSED_SE_BACKEND=reference"):
        gx.sum().backward()


# ---- memory ---------------------------------------------------------------------------------------


def _peak_cpu_bytes(fn) -> int:
    """Peak bytes held by the CPU allocator during fn, from the profiler's memory records.

    The profiler books what an op allocates or frees to the op itself (its self memory). Counted
    at the op's start for allocations and at its end for frees, this gives a timeline whose
    maximum is the peak (an autograd node that frees its inputs books them negatively, at its end).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    timeline = []
    for e in prof.events():
        nbytes = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if nbytes:
            timeline.append((e.time_range.start if nbytes > 0 else e.time_range.end, nbytes))
    held = peak = 0
    for _, nbytes in sorted(timeline):
        held += nbytes
        peak = max(peak, held)
    return peak


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU variant is in tests/gpu/test_gpu_only.py")
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_peak_memory_of_a_training_step_is_at_most_eagers(layout):
    from fused_se.bench import EagerSE, SEShape

    shape = SEShape(64, 28, 28, 4)
    x = torch.randn(8, 64, 28, 28).to(memory_format=layout).requires_grad_()
    g = torch.randn(8, 64, 28, 28).to(memory_format=layout)
    eager = EagerSE(shape, conv=False)
    fused = fused_se.FusedSEModule(64, rd_channels=4, bias=True)
    peaks = {}
    for name, m in (("eager", eager), ("fused", fused)):
        with record_launches() as launched:
            peaks[name] = _peak_cpu_bytes(lambda m=m: torch.autograd.grad(m(x), [x, *m.parameters()], g))
        assert bool(launched) == (name == "fused")
    n = x.numel() * x.element_size()
    # Eager holds y, dx and the g * x of mul's backward at once (about 3N); fused holds y and dx.
    assert peaks["eager"] >= 3 * n
    assert peaks["fused"] <= peaks["eager"] and peaks["fused"] < 2.1 * n, {k: v / n for k, v in peaks.items()}
