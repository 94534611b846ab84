"""Sequences (B, C, L) and volumes (B, C, D, H, W) through every path of the kernels, and the
squeeze over each sample's valid positions (lengths) in the passes that take it.

The functional forms view a rank-3 x as (B, C, L, 1) and a rank-5 one as (B, C, DHW, 1); the
kernels see (B, C, HW) through three strides either way. Each test asserts which kernels ran.
"""

from __future__ import annotations

import pytest
import torch
from se_testing import (
    BACKWARD_KERNELS,
    FORWARD_KERNELS,
    assert_within_torch_error,
    eager_variant,
    make_variant_params,
    mlp_outputs_and_grads,
    planned,
    record_launches,
)

import fused_se
from fused_se import kernels
from fused_se.functional import _kernels_input
from fused_se.kernels import heuristics as hz
from fused_se.kernels import plan_backward, plan_forward

# The MLP form's forward launches on each path (the backward: three launches, or one streamed).
FORWARD = {
    "three_launch": FORWARD_KERNELS,
    "one_launch": ["se_fwd_one_launch"],
    "spread": ["se_fwd_spread"],
    "stream": ["se_fwd_stream"],
}
BACKWARD = {"stream": ["se_bwd_stream", "sum_partials"]}


def make_x(shape, dtype, device, layout):
    """A rank-3 or rank-5 x in one of the layouts: contiguous, channels-last (channels vary fastest:
    a (B, L, C) sequence transposed, channels_last_3d), a channel slice (strided, taken as it is),
    a spatial slice of a volume (its D, H, W do not flatten: copied once)."""
    kw = {"dtype": dtype, "device": device}
    b, c, *spatial = shape
    if layout == "contiguous":
        return torch.randn(shape, **kw)
    if layout == "channels_last":
        if len(spatial) == 1:
            return torch.randn(b, spatial[0], c, **kw).transpose(1, 2)
        return torch.randn(shape, **kw).contiguous(memory_format=torch.channels_last_3d)
    if layout == "sliced_c":
        return torch.randn(b, 2 * c, *spatial, **kw)[:, ::2]
    if layout == "sliced_spatial":
        big = torch.randn(b, c, *(n + 1 for n in spatial), **kw)
        return big[(slice(None), slice(None), *(slice(1, None) for _ in spatial))]
    raise ValueError(layout)


def _check(x, hidden, path, act="relu", gate="sigmoid", bias=True, **tail):
    device = x.device
    c = x.shape[1]
    params = make_variant_params("mlp", c, hidden, 1, bias, device)
    g = torch.randn(x.shape, dtype=x.dtype, device=device)

    def fused(x, *p):
        return fused_se.squeeze_excite(x, *p, act=act, gate=gate, **tail)

    with record_launches() as launched:
        ours = mlp_outputs_and_grads(fused, x, params, g)
    assert launched == FORWARD[path] + BACKWARD.get(path, BACKWARD_KERNELS), launched

    def eager(x, *p):
        return eager_variant(x, "mlp", list(p), act, gate)

    own = mlp_outputs_and_grads(eager, x, params, g)
    params64 = [p.double() if p is not None else None for p in params]
    ref64 = mlp_outputs_and_grads(eager, x.double(), params64, g.double())
    for name, o, t, r in zip(["y", "dx", "dw1", "db1", "dw2", "db2"], ours, own, ref64, strict=False):
        assert_within_torch_error(name, o, t.to(o.dtype), r)
    assert ours[0].shape == x.shape and ours[1].shape == x.shape
    return ours


SHAPES = {3: (3, 24, 37), 5: (2, 20, 3, 4, 5)}
LAYOUTS = ["contiguous", "channels_last", "sliced_c", "sliced_spatial"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rank", [3, 5])
def test_three_launch(rank, layout, device):
    if rank == 3 and layout == "sliced_spatial":
        layout = "sliced_c"
    x = make_x(SHAPES[rank], torch.float32, device, layout) * 2
    assert planned(plan_forward(_kernels_input(x), 4), "three_launch") is None  # None: the config of this path
    ours = _check(x, 4, "three_launch", act="silu", gate="hard_sigmoid")
    if layout in ("contiguous", "channels_last"):  # taken as they are: y and dx in x's own strides
        assert ours[0].stride() == x.stride() and ours[1].stride() == x.stride()


@pytest.mark.parametrize("rank", [3, 5])
def test_the_views_need_no_copy(rank, device):
    for layout in ("contiguous", "channels_last", "sliced_c"):
        x = make_x(SHAPES[rank], torch.float32, device, layout)
        x4 = _kernels_input(x)
        assert x4.data_ptr() == x.data_ptr() and kernels.bchw_strides(x4) is not None, layout
    if rank == 5:
        x = make_x(SHAPES[5], torch.float32, device, "sliced_spatial")
        assert kernels.bchw_strides(_kernels_input(x)) is not None  # one copy, into a layout the kernels take


@pytest.mark.parametrize("rank", [3, 5])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_one_launch(rank, layout, one_launch, device):
    x = make_x(SHAPES[rank], torch.float32, device, layout) * 2
    assert plan_forward(_kernels_input(x), 4).path == "one_launch"
    _check(x, 4, "one_launch")


@pytest.mark.parametrize("rank", [3, 5])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_spread(rank, layout, spread, device):
    x = make_x(SHAPES[rank], torch.float32, device, layout) * 2
    assert plan_forward(_kernels_input(x), 4).path == "spread"
    _check(x, 4, "spread", act="silu")


@pytest.mark.parametrize("rank", [3, 5])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_stream(rank, layout, device, monkeypatch):
    monkeypatch.setattr(hz, "STREAM_BLOCK_TILE", 64)
    monkeypatch.setattr(hz, "STREAM_TILE", 64)
    monkeypatch.setattr(hz, "MAX_BLOCK_HW_STREAM", 32)
    shape = {3: (7, 24, 37), 5: (6, 20, 3, 4, 5)}[rank]
    x = make_x(shape, torch.float32, device, layout) * 2
    sample = x[0].numel() * x.element_size()
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * sample)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.5)
    x4 = _kernels_input(x)
    assert planned(plan_forward(x4, 4), "stream") is not None
    assert planned(plan_backward(x4, x4, 4), "stream") is not None
    ours = _check(x, 4, "stream", gate="hard_sigmoid")
    assert ours[0].stride() == x.stride() and ours[1].stride() == x.stride()


@pytest.mark.parametrize("rank", [3, 5])
@pytest.mark.parametrize("form", ["fc", "conv"])
def test_other_forms_take_three_launches(rank, form, device):
    x = make_x(SHAPES[rank], torch.float32, device, "channels_last") * 2
    params = make_variant_params(form, x.shape[1], 1, 3, True, device)
    op = fused_se.effective_squeeze_excite if form == "fc" else fused_se.efficient_channel_attention
    with record_launches() as launched:
        y = op(x, *params, gate="sigmoid")
    name = {"fc": "excite_fc", "conv": "excite_conv"}[form]
    assert launched == ["squeeze", name, "scale"]
    ref = eager_variant(x.double(), form, [p.double() if p is not None else None for p in params], "relu", "sigmoid")
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


# ---- lengths: the passes over each sample's valid positions -------------------------------------


def _lengths_case(b, c, length, device, layout="nchw"):
    x = torch.randn(b, c, length, device=device)
    if layout == "channels_last":
        x = torch.randn(b, length, c, device=device).transpose(1, 2)
    n = torch.randint(1, length + 1, (b,), device=device)
    n[0] = length  # one sample whole
    if b > 1:
        n[1] = 1  # one with a single valid position
    return x, n


@pytest.mark.parametrize("split", [True, False], ids=["batch1-split", "enough-programs-nosplit"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_squeeze_with_lengths(split, layout, device):
    b = 1 if split else hz.SPLIT_BELOW_PROGRAMS_PER_SM * hz.sm_count(device)
    x, n = _lengths_case(b, 4, 1600, device, layout)
    if split:
        n[0] = 700  # ends inside a split past the first
    x4 = x.unsqueeze(-1)
    cfg = hz.reduce_config(b, 4, 1600, layout == "channels_last", hz.sm_count(device))
    assert (cfg.split > 1) == split
    with record_launches() as launched:
        zsum = kernels.squeeze_fwd(x4, n)
    assert launched == ["squeeze"]
    valid = torch.arange(1600, device=device) < n[:, None]
    want = (x * valid[:, None]).sum(-1) * (1600 / n)[:, None]  # the excitation divides by HW
    torch.testing.assert_close(zsum.sum(0), want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_dx_pass_with_lengths(layout, device):
    g, n = _lengths_case(3, 24, 50, device, layout)
    s = torch.rand(3, 24, device=device)
    dz = torch.randn(3, 24, device=device)
    with record_launches() as launched:
        dx = kernels.squeeze_scale_bwd(g.unsqueeze(-1), s, dz, g.unsqueeze(-1), lengths=n)
    assert launched == ["squeeze_scale_bwd"]
    valid = torch.arange(50, device=device) < n[:, None]
    want = g * s[:, :, None] + (dz / n[:, None])[:, :, None] * valid[:, None]
    torch.testing.assert_close(dx[..., 0], want, rtol=1e-6, atol=1e-6)
    assert dx.stride() == g.unsqueeze(-1).stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lengths_forward_and_backward_through_the_kernels(dtype, one_launch, spread, device):
    """Three launches whatever the planner would choose for this small batch (one_launch and spread are on)."""
    x, n = _lengths_case(3, 24, 37, device)
    x = (x * 2).to(dtype)
    assert plan_forward(x.unsqueeze(-1), 4).path != "three_launch"  # what a call without lengths takes
    params = make_variant_params("mlp", 24, 4, 1, True, device)
    g = torch.randn(x.shape, dtype=dtype, device=device)
    with record_launches() as launched:
        ours = mlp_outputs_and_grads(lambda x, *p: fused_se.squeeze_excite(x, *p, lengths=n), x, params, g)
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS, launched
    own = mlp_outputs_and_grads(lambda x, *p: fused_se.reference.squeeze_excite(x, *p, lengths=n), x, params, g)
    params64 = [p.double() for p in params]
    ref = mlp_outputs_and_grads(
        lambda x, *p: fused_se.reference.squeeze_excite(x, *p, lengths=n), x.double(), params64, g.double()
    )
    for name, o, t, r in zip(["y", "dx", "dw1", "db1", "dw2", "db2"], ours, own, ref, strict=False):
        assert_within_torch_error(name, o, t.to(o.dtype), r)
