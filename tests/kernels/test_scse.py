"""scSE's passes (kernels/scse.py) against their twins in torch ops (fused_se.decomposed), run in fp64
on the same inputs; both layouts, odd sizes, every dtype, both sides of the tiles' HW shrink."""

import pytest
import torch
from se_testing import make_input, record_launches

from fused_se import decomposed, kernels
from fused_se.kernels import heuristics as hz

# (B, C, H, W): odd channel counts, a single position, a 7-long row, 3 x 5
SHAPES = [(2, 5, 3, 5), (3, 24, 1, 1), (1, 24, 1, 7), (2, 32, 6, 6)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# the passes' error against fp64 math: an fp32 accumulation, then one rounding to x's dtype
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def _inputs(shape, dtype, layout, device):
    b, c = shape[:2]
    x = make_input(shape, dtype, device, layout)
    g = make_input(shape, dtype, device, "channels_last" if layout == "nchw" else "nchw")  # unlike x's
    ws, bs = torch.randn(c, device=device, dtype=dtype) / c**0.5, torch.randn(1, device=device, dtype=dtype)
    s = torch.rand(b, c, device=device, dtype=kernels.acc_dtype(dtype))
    dz = torch.randn(b, c, device=device, dtype=kernels.acc_dtype(dtype))
    return x, g, ws, bs, s, dz


def _close(name, ours, ref, dtype):
    assert not torch.isnan(ours).any(), f"{name}: NaN (an element left unwritten?)"
    scale = max(1.0, ref.abs().max().item())
    err = (ours.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"{name}: error {err:.3g}"


# (dtype, layout, bias, the spatial gate's parameters in fp32): every layout and bias choice in fp32
# and fp64, the dense layouts in 16 bits, and fp32 parameters with a 16-bit x (autocast's convention)
CASES = [
    *(
        (dt, layout, bias, False)
        for dt in (torch.float32, torch.float64)
        for layout in ("nchw", "channels_last", "sliced_c")
        for bias in (True, False)
    ),
    *((dt, layout, True, False) for dt in (torch.float16, torch.bfloat16) for layout in ("nchw", "channels_last")),
    (torch.bfloat16, "channels_last", False, True),
    (torch.float16, "nchw", True, True),
]


def _case_id(case):
    dtype, layout, bias, fp32_params = case
    return f"{str(dtype).split('.')[-1]}-{layout}-{'bs' if bias else 'nobs'}{'-fp32params' if fp32_params else ''}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_scse_passes_match_their_twins(shape, case, device):
    dtype, layout, bias, fp32_params = case
    x, g, ws, bs, s, dz = _inputs(shape, dtype, layout, device)
    bs = bs if bias else None
    if fp32_params:
        ws, bs = ws.float(), (None if bs is None else bs.float())
    x64, g64, ws64 = x.double(), g.double(), ws.double()
    bs64 = None if bs is None else bs.double()
    with record_launches() as launched:
        zsum, q = kernels.scse_squeeze_fwd(x, ws)
        y = kernels.scse_scale_fwd(x, s, q, bs)
        dssum, dq = kernels.scse_reduce_bwd(g, x, q, bs)
        dx, dws = kernels.scse_dx_bwd(g, x, s, dz, q, bs, dq, ws, True, True)
    assert launched == ["scse_squeeze", "scse_scale", "scse_reduce_bwd", "scse_dx_bwd"]
    acc = kernels.acc_dtype(dtype)
    assert zsum.dtype == q.dtype == dssum.dtype == dq.dtype == dws.dtype == acc
    assert y.dtype == dx.dtype == dtype
    assert y.stride() == dx.stride() == torch.empty_like(x).stride()  # x's memory format
    zsum64, q64 = decomposed.scse_squeeze_fwd(x64, ws64)
    _close("zsum", zsum.sum(0), zsum64[0], torch.float32 if dtype != torch.float64 else dtype)
    _close("q", q, q64, torch.float32 if dtype != torch.float64 else dtype)
    # the second pass and the backward from the kernels' q, so that q's own error does not count twice
    q64 = q.double()
    _close("y", y, decomposed.scse_scale_fwd(x64, s.double(), q64, bs64), dtype)
    dssum64, dq64 = decomposed.scse_reduce_bwd(g64, x64, q64, bs64)
    _close("dssum", dssum.sum(0), dssum64[0], torch.float32 if dtype != torch.float64 else dtype)
    _close("dq", dq, dq64, torch.float32 if dtype != torch.float64 else dtype)
    dx64, dws64 = decomposed.scse_dx_bwd(g64, x64, s.double(), dz.double(), q64, bs64, dq.double(), ws64, True, True)
    _close("dx", dx, dx64, dtype)
    _close("dws", dws, dws64, torch.float32 if dtype != torch.float64 else dtype)


@pytest.mark.parametrize("need_dx,need_dws", [(True, False), (False, True), (False, False)])
def test_scse_dx_bwd_writes_what_is_needed(need_dx, need_dws, device):
    x, g, ws, bs, s, dz = _inputs((2, 24, 3, 5), torch.float32, "nchw", device)
    _, q = kernels.scse_squeeze_fwd(x, ws)
    _, dq = kernels.scse_reduce_bwd(g, x, q, bs)
    dx, dws = kernels.scse_dx_bwd(g, x, s, dz if need_dx else None, q, bs, dq, ws, need_dx, need_dws)
    dx64, dws64 = decomposed.scse_dx_bwd(
        g.double(), x.double(), s.double(), dz.double(), q.double(), bs.double(), dq.double(), ws.double(), True, True
    )
    assert (dx is None) != need_dx and (dws is None) != need_dws
    if need_dx:
        _close("dx", dx, dx64, torch.float32)
    if need_dws:
        _close("dws", dws, dws64, torch.float32)


@pytest.mark.parametrize(
    "b,hw,shrunk",
    [(1, 36, True), (4, 36, False), (3, 12, False)],
    ids=["few-programs-shrink", "enough-programs", "short-rows"],
)
def test_scse_tiles_shrink_while_programs_are_few(b, hw, shrunk, device):
    """HW tiles halve (down to SCSE_MIN_BLOCK_HW) while fewer than SPLIT_BELOW_PROGRAMS_PER_SM
    programs per SM would run; each tile then writes its own row of partial sums."""
    sms = hz.sm_count(device)
    cfg = hz.scse_config(b, 8, hw, False, sms)
    assert (cfg.block_hw < hz.next_pow2(hw)) == shrunk, cfg
    assert cfg.block_hw >= min(hz.SCSE_MIN_BLOCK_HW, hz.next_pow2(hw))
    x = torch.randn(b, 8, hw, 1, device=device)
    zsum, q = kernels.scse_squeeze_fwd(x, torch.ones(8, device=device))
    assert zsum.shape == (hz.cdiv(hw, cfg.block_hw), b, 8)
    torch.testing.assert_close(zsum.sum(0), x.sum((2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q, x.sum(1)[..., 0], rtol=1e-5, atol=1e-5)


def test_scse_config_layouts():
    nchw, cl = hz.scse_config(8, 256, 4096, False, 132), hz.scse_config(8, 256, 4096, True, 132)
    assert nchw.block_hw >= nchw.block_c and cl.block_c >= cl.block_hw  # the contiguous axis the long side
    assert nchw.block_c * nchw.block_hw <= hz.SCSE_TILE and cl.block_c * cl.block_hw <= hz.SCSE_TILE
