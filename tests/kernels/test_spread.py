"""The spread forward of the two-FC form for small batches: one persistent launch over every SM, the
excitation spread over the programs by channel block. Held to the parity rules of the three-launch
path, and tested on each side of every threshold that picks it (small tiles here, so that small
tensors span several channel blocks and HW tiles).
"""

from __future__ import annotations

import pytest
import torch
from se_testing import (
    BACKWARD_KERNELS,
    FORWARD_KERNELS,
    assert_nonfinite_like_eager,
    assert_within_torch_error,
    eager_variant,
    make_input,
    make_variant_params,
    mlp_outputs_and_grads,
    planned,
    record_launches,
)

import fused_se
from fused_se import reference
from fused_se.kernels import force_paths, plan_forward
from fused_se.kernels import heuristics as hz

VARIANTS = [
    ("relu", "sigmoid", True),
    ("silu", "hard_sigmoid", False),
]


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch, device):
    """Tiles of a few dozen elements, so that a small sample spans several tickets; tensors
    made without a device go to the test device."""
    monkeypatch.setattr(hz, "STREAM_BLOCK_TILE", 64)
    monkeypatch.setattr(hz, "STREAM_TILE", 64)
    monkeypatch.setattr(hz, "MAX_BLOCK_HW_STREAM", 32)
    with torch.device(device):
        yield


def _run(x, params, act, gate, g, **tail):
    return mlp_outputs_and_grads(lambda x, *p: fused_se.squeeze_excite(x, *p, act=act, gate=gate, **tail), x, params, g)


def _eager(x, params, act, gate, g):
    return mlp_outputs_and_grads(lambda x, *p: eager_variant(x, "mlp", list(p), act, gate), x, params, g)


SPREAD = ["se_fwd_spread"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v)))
@pytest.mark.parametrize(
    ("shape", "layout"),
    [((1, 40, 5, 7, 5), "nchw"), ((3, 33, 6, 7, 8), "channels_last"), ((8, 16, 9, 9, 2), "nchw")],
    ids=str,
)
def test_spread_parity(shape, layout, variant, spread, device):
    """Several channel blocks and HW tiles per sample (small tiles here), 1 to 8 samples."""
    b, c, h, w, hidden = shape
    x = make_input((b, c, h, w), torch.float32, device, layout) * 2
    cfg = planned(plan_forward(x, hidden), "spread")
    assert cfg is not None and cfg.c_blocks > 1 and cfg.hw_tiles > 1
    params = make_variant_params("mlp", c, hidden, 1, variant[2], device)
    g = torch.randn(x.shape, device=device)
    with record_launches() as launched:
        ours = _run(x, params, variant[0], variant[1], g)
    assert launched == SPREAD + BACKWARD_KERNELS, launched
    own = _eager(x, params, variant[0], variant[1], g)
    ref64 = _eager(x.double(), [p.double() if p is not None else None for p in params], *variant[:2], g.double())
    for name, o, t, r in zip(["y", "dx", "dw1", "db1", "dw2", "db2"], ours, own, ref64, strict=False):
        assert_within_torch_error(name, o, t.to(o.dtype), r)
    assert ours[0].stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_spread_half_precision(dtype, spread, device):
    x = make_input((2, 33, 4, 5), dtype, device, "channels_last") * 2
    params = make_variant_params("mlp", 33, 8, 1, True, device)
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, *params)
    assert launched == SPREAD
    own = eager_variant(x, "mlp", params, "relu", "sigmoid")
    ref = eager_variant(x.double(), "mlp", [p.double() for p in params], "relu", "sigmoid")
    assert_within_torch_error("y", y, own, ref)


def test_spread_gradcheck_fp64(spread, device):
    params = [p.requires_grad_() for p in make_variant_params("mlp", 6, 2, 1, True, device, torch.float64)]
    x = torch.randn(2, 6, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    with record_launches() as launched:
        assert torch.autograd.gradcheck(
            lambda x, *w: fused_se.squeeze_excite(x, *w, act="silu"), (x, *params), eps=1e-6, atol=1e-5, fast_mode=True
        )
    assert "se_fwd_spread" in launched and "squeeze" not in launched


@pytest.mark.parametrize("out_act", ["identity", "relu"])
def test_spread_residual_tail(out_act, spread):
    b, c, h, w, r = 3, 24, 5, 5, 4
    x, residual = torch.randn(b, c, h, w) * 2, torch.randn(b, c, h, w).to(memory_format=torch.channels_last)
    w1, w2 = torch.randn(r, c) / c**0.5, torch.randn(c, r) / r**0.5
    d = torch.tensor([1.25, 0.0, 1.25])
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2, residual=residual, out_act=out_act, sample_scale=d)
    assert launched == SPREAD
    ref = reference.squeeze_excite(
        x.double(), w1.double(), None, w2.double(), residual=residual.double(), out_act=out_act, sample_scale=d.double()
    )
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_spread_nan_and_inf_stay_where_eager_puts_them(spread):
    x = torch.randn(3, 16, 3, 3)
    x[0, 2, 1, 1] = float("inf")
    x[1, 5, 0, 0] = float("nan")
    w1, w2 = torch.randn(3, 16), torch.randn(16, 3)  # hidden 3 of a BLOCK_R of 4: a padded unit
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2)
    assert launched == SPREAD
    ref = eager_variant(x, "mlp", [w1, None, w2, None], "relu", "sigmoid")
    assert_nonfinite_like_eager(y, ref)


def _forward_launches(x, r):
    with record_launches() as launched:
        fused_se.squeeze_excite(x, torch.randn(r, x.shape[1]), None, torch.randn(x.shape[1], r))
    return launched


@pytest.mark.parametrize(("b", "expect"), [(8, SPREAD), (9, FORWARD_KERNELS)])
def test_spread_batch_threshold(b, expect, spread):
    assert hz.SPREAD_MAX_BATCH == 8
    assert _forward_launches(torch.randn(b, 16, 3, 3), 2) == expect


@pytest.mark.parametrize(("r", "expect"), [(128, SPREAD), (129, FORWARD_KERNELS)])
def test_spread_hidden_threshold(r, expect, spread):
    assert _forward_launches(torch.randn(1, 16, 1, 1), r) == expect


@pytest.mark.parametrize(("extra", "expect"), [(0, ["se_fwd_one_launch"]), (1, SPREAD)])
def test_one_launch_takes_small_programs_and_spread_the_rest(extra, expect, monkeypatch):
    """One program per sample while its sample and both weights are at most
    ONE_LAUNCH_MAX_PROGRAM_BYTES; past that, the spread forward."""
    b, c, hw, r = 2, 16, 9, 2
    monkeypatch.setattr(hz, "ONE_LAUNCH_MAX_PROGRAM_BYTES", c * hw * 4 + 2 * c * r * 4 - extra)
    with force_paths("one_launch", "spread"):
        assert _forward_launches(torch.randn(b, c, 3, 3), r) == expect


def test_spread_and_three_launches_agree(spread, device):
    x = make_input((3, 33, 4, 5), torch.float32, device, "channels_last")
    params = make_variant_params("mlp", 33, 8, 1, True, device)
    g = torch.randn_like(x)
    spread_out = _run(x, params, "silu", "hard_sigmoid", g)
    with force_paths("three_launch"), record_launches() as launched:
        three = _run(x, params, "silu", "hard_sigmoid", g)
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS
    for a, b in zip(spread_out, three, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
