"""The one-launch forward of the two-FC form (small batches): one program per sample runs the
squeeze, the excitation and the scale. Held to the parity rules of the three-launch path, and
tested on each side of every threshold that picks it."""

from __future__ import annotations

import pytest
import torch
from se_testing import (
    BACKWARD_KERNELS,
    FORWARD_KERNELS,
    LAYOUTS,
    assert_nonfinite_like_eager,
    assert_within_torch_error,
    eager_variant,
    make_input,
    make_variant_params,
    mlp_outputs_and_grads,
    record_launches,
)

import fused_se
from fused_se import reference
from fused_se.kernels import force_paths
from fused_se.kernels import heuristics as hz

ONE = ["se_fwd_one_launch"]
VARIANTS = [
    ("relu", "sigmoid", False),
    ("silu", "sigmoid", True),
    ("relu", "hard_sigmoid", True),
    ("silu", "hard_sigmoid", False),
]


@pytest.fixture(autouse=True)
def _on(one_launch, device):
    """The one-launch forward on; tensors made without a device go to the test device."""
    with torch.device(device):
        yield


def _run(x, params, act, gate, g, **tail):
    return mlp_outputs_and_grads(lambda x, *p: fused_se.squeeze_excite(x, *p, act=act, gate=gate, **tail), x, params, g)


def _eager(x, params, act, gate, g):
    return mlp_outputs_and_grads(lambda x, *p: eager_variant(x, "mlp", list(p), act, gate), x, params, g)


def _check(shape, dtype, layout, act, gate, bias, device, expect=ONE):
    b, c, h, w, hidden = shape
    params = make_variant_params("mlp", c, hidden, 1, bias, device)
    x = make_input((b, c, h, w), dtype, device, layout) * 2
    g = torch.randn(b, c, h, w, dtype=dtype, device=device)
    with record_launches() as launched:
        ours = _run(x, params, act, gate, g)
    assert launched == expect + BACKWARD_KERNELS, launched
    own = _eager(x, params, act, gate, g)
    ref64 = _eager(x.double(), [p.double() if p is not None else None for p in params], act, gate, g.double())
    for name, o, t, r in zip(["y", "dx", "dw1", "db1", "dw2", "db2"], ours, own, ref64, strict=False):
        assert_within_torch_error(name, o, t.to(o.dtype), r)
    if layout in ("nchw", "channels_last"):
        assert ours[0].stride() == x.stride()
    return ours


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v)))
@pytest.mark.parametrize("shape", [(3, 40, 5, 7, 5), (1, 300, 3, 3, 20), (8, 16, 1, 1, 1)], ids=str)
def test_fp32_shapes(shape, variant, device):
    _check(shape, torch.float32, "nchw", *variant, device)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_dtypes_and_layouts(dtype, layout, device):
    _check((2, 48, 4, 6, 3), dtype, layout, "silu", "hard_sigmoid", True, device)


def test_gradcheck_fp64(device):
    params = [p.requires_grad_() for p in make_variant_params("mlp", 6, 2, 1, True, device, torch.float64)]
    x = torch.randn(2, 6, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    with record_launches() as launched:
        assert torch.autograd.gradcheck(
            lambda x, *w: fused_se.squeeze_excite(x, *w, act="silu"), (x, *params), eps=1e-6, atol=1e-5, fast_mode=True
        )
    assert "se_fwd_one_launch" in launched and "squeeze" not in launched


@pytest.mark.parametrize("out_act", ["identity", "relu"])
def test_residual_tail(out_act):
    b, c, h, w, r = 3, 24, 5, 5, 4
    x, residual = torch.randn(b, c, h, w) * 2, torch.randn(b, c, h, w).to(memory_format=torch.channels_last)
    w1, w2 = torch.randn(r, c) / c**0.5, torch.randn(c, r) / r**0.5
    d = torch.tensor([1.25, 0.0, 1.25])
    tail = {"residual": residual, "out_act": out_act, "sample_scale": d}
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2, **tail)
    assert launched == ONE
    ref = reference.squeeze_excite(
        x.double(), w1.double(), None, w2.double(), residual=residual.double(), out_act=out_act, sample_scale=d.double()
    )
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_nan_and_inf_stay_where_eager_puts_them():
    x = torch.randn(3, 16, 3, 3)
    x[0, 2, 1, 1] = float("inf")
    x[1, 5, 0, 0] = float("nan")
    w1, w2 = torch.randn(3, 16), torch.randn(16, 3)  # hidden 3 of a BLOCK_R of 4: a padded unit
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2)
    assert launched == ONE
    ref = eager_variant(x, "mlp", [w1, None, w2, None], "relu", "sigmoid")
    assert_nonfinite_like_eager(y, ref)


# ---- each side of each threshold ---------------------------------------------------------------


def _forward_launches(x, r):
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, torch.randn(r, x.shape[1]), None, torch.randn(x.shape[1], r))
    return launched, y


@pytest.mark.parametrize(("b", "expect"), [(8, ONE), (9, FORWARD_KERNELS)])
def test_batch_threshold(b, expect):
    assert hz.ONE_LAUNCH_MAX_BATCH == 8
    assert _forward_launches(torch.randn(b, 16, 3, 3), 2)[0] == expect


@pytest.mark.parametrize(("r", "expect"), [(256, ONE), (257, FORWARD_KERNELS)])
def test_hidden_threshold(r, expect):
    assert hz.ONE_LAUNCH_MAX_HIDDEN == 256
    assert _forward_launches(torch.randn(1, 16, 1, 1), r)[0] == expect


@pytest.mark.parametrize(("extra", "expect"), [(0, ONE), (1, FORWARD_KERNELS)])
def test_bytes_threshold(extra, expect, monkeypatch):
    x = torch.randn(2, 16, 3, 3)
    monkeypatch.setattr(hz, "ONE_LAUNCH_MAX_BYTES", x.numel() * x.element_size() - extra)
    assert _forward_launches(x, 2)[0] == expect


@pytest.mark.parametrize(("l2_factor", "expect"), [(hz.ONE_LAUNCH_L2_FRACTION, ONE), (1, FORWARD_KERNELS)])
def test_l2_threshold(l2_factor, expect, monkeypatch):
    x = torch.randn(2, 16, 3, 3)
    monkeypatch.setattr(hz, "l2_bytes", lambda device: l2_factor * x.numel() * x.element_size())
    assert _forward_launches(x, 2)[0] == expect


def test_both_sides_agree(device):
    x = torch.randn(4, 40, 5, 5)
    params = make_variant_params("mlp", 40, 6, 1, True, device)
    g = torch.randn_like(x)
    one = _run(x, params, "silu", "hard_sigmoid", g)
    with force_paths("three_launch"), record_launches() as launched:
        three = _run(x, params, "silu", "hard_sigmoid", g)
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS
    for a, b in zip(one, three, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_empty_batch_and_other_forms_take_three_launches():
    assert _forward_launches(torch.randn(0, 16, 3, 3), 2)[0] == FORWARD_KERNELS
    x = torch.randn(2, 16, 3, 3)
    with record_launches() as launched:
        fused_se.effective_squeeze_excite(x, torch.randn(16, 16))
        fused_se.efficient_channel_attention(x, torch.randn(3))
    assert launched == ["squeeze", "excite_fc", "scale", "squeeze", "excite_conv", "scale"]
