"""scSE's passes (kernels/scse.py) against their twins in torch ops (fused_se.decomposed), run in fp64
on the same inputs; both layouts, odd sizes, every dtype, both sides of the tiles' HW shrink."""

import pytest
import torch
from se_testing import make_input, record_launches

import fused_se
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
        zsum = kernels.scse_squeeze_fwd(x)
        y = kernels.scse_scale_fwd(x, s, ws, bs)
        dssum, ss, dq, dbs = kernels.scse_reduce_bwd(g, x, ws, bs)
        dx, dws = kernels.scse_dx_bwd(g, x, s, dz, ss, dq, ws, True, True)
    # dw_s's span shares added up by a launch where there are more than one
    spans = launched[4:]
    assert launched[:4] == ["scse_squeeze", "scse_scale", "scse_reduce_bwd", "scse_dx_bwd"] and spans in (
        [],
        ["sum_partials"],
    )
    acc = kernels.acc_dtype(dtype)
    assert zsum.dtype == dssum.dtype == ss.dtype == dq.dtype == dbs.dtype == acc
    assert dws.dtype == ws.dtype and dws.shape == ws.shape  # rounded once, into the weight's dtype
    assert y.dtype == dx.dtype == dtype
    assert y.stride() == dx.stride() == torch.empty_like(x).stride()  # x's memory format
    acc_tol = torch.float32 if dtype != torch.float64 else dtype
    _close("zsum", zsum.sum(0), decomposed.scse_squeeze_fwd(x64)[0], acc_tol)
    _close("y", y, decomposed.scse_scale_fwd(x64, s.double(), ws64, bs64), dtype)
    dssum64, ss64, dq64, dbs64 = decomposed.scse_reduce_bwd(g64, x64, ws64, bs64)
    _close("dssum", dssum.sum(0), dssum64[0], acc_tol)
    _close("ss", ss, ss64, acc_tol)
    _close("dq", dq, dq64, acc_tol)
    _close("dbs", dbs.sum().reshape(1), dbs64, acc_tol)
    # the dx pass from the kernels' s_s and dq, so that their own error does not count twice
    dx64, dws64 = decomposed.scse_dx_bwd(g64, x64, s.double(), dz.double(), ss.double(), dq.double(), ws64, True, True)
    _close("dx", dx, dx64, dtype)
    _close("dws", dws, dws64, ws.dtype if ws.dtype != torch.float32 else acc_tol)


@pytest.mark.parametrize("need_dx,need_dws", [(True, False), (False, True), (False, False)])
def test_scse_dx_bwd_writes_what_is_needed(need_dx, need_dws, device):
    x, g, ws, bs, s, dz = _inputs((2, 24, 3, 5), torch.float32, "nchw", device)
    _, ss, dq, _ = kernels.scse_reduce_bwd(g, x, ws, bs)
    dx, dws = kernels.scse_dx_bwd(g, x, s, dz if need_dx else None, ss, dq, ws, need_dx, need_dws)
    dx64, dws64 = decomposed.scse_dx_bwd(
        g.double(), x.double(), s.double(), dz.double(), ss.double(), dq.double(), ws.double(), True, True
    )
    assert (dx is None) != need_dx and (dws is None) != need_dws
    if need_dx:
        _close("dx", dx, dx64, torch.float32)
    if need_dws:
        _close("dws", dws, dws64, torch.float32)


# (B, C, H, W, layout, dtype, one sweep): every channel of the narrowest tile within
# SCSE_SCALE_MAX_TILE (fp64: half) or past it (NCHW fp32 rows of 8 positions: 2048 x 8 fits, 4096 x 8
# does not; fp64 rows of 4: 4096 x 4 does not; channels_last holds a position of up to 16384
# channels); a span of several tiles (C = 256, HW = 100)
SCALE_SWEEPS = [
    ((1, 2048, 2, 4), "nchw", torch.float32, True),
    ((1, 2049, 2, 4), "nchw", torch.float32, False),
    ((1, 2049, 2, 2), "nchw", torch.float64, False),
    ((2, 1025, 4, 4), "nchw", torch.bfloat16, False),
    ((2, 1025, 1, 3), "channels_last", torch.bfloat16, True),
    ((2, 256, 10, 10), "channels_last", torch.float32, True),
    ((2, 256, 10, 10), "nchw", torch.float16, True),
]


@pytest.mark.parametrize("shape,layout,dtype,one_sweep", SCALE_SWEEPS, ids=lambda v: str(v))
def test_scse_scale_reads_x_once_where_every_channel_fits(shape, layout, dtype, one_sweep, device):
    _, c, h, w = shape
    cfg = hz.scse_scale_config(c, h * w, layout == "channels_last", dtype.itemsize)
    assert cfg.one_sweep == one_sweep and (cfg.block_c >= c) == one_sweep
    assert cfg.span % cfg.block_hw == 0
    x, _, ws, bs, s, _ = _inputs(shape, dtype, layout, device)
    y = kernels.scse_scale_fwd(x, s, ws, bs)
    _close("y", y, decomposed.scse_scale_fwd(x.double(), s.double(), ws.double(), bs.double()), dtype)


@pytest.mark.parametrize(
    "shape,layout",
    [((2, 128, 7, 9), "channels_last"), ((2, 80, 10, 10), "nchw")],
    ids=["cl-two-tiles-a-span", "nchw-two-channel-blocks-two-spans"],
)
def test_scse_dx_bwd_spans_and_channel_blocks(shape, layout, device):
    """The dx pass's programs: a channel block and a span of tiles each, the last of either partial."""
    _, c, h, w = shape
    cfg = hz.scse_dx_config(c, h * w, layout == "channels_last")
    spans = hz.cdiv(h * w, cfg.span)
    assert (cfg.span > cfg.block_hw) if layout == "channels_last" else (cfg.block_c < c and spans > 1), cfg
    x, g, ws, bs, s, dz = _inputs(shape, torch.float32, layout, device)
    _, ss, dq, _ = kernels.scse_reduce_bwd(g, x, ws, bs)
    dx, dws = kernels.scse_dx_bwd(g, x, s, dz, ss, dq, ws, True, True)
    dx64, dws64 = decomposed.scse_dx_bwd(
        g.double(), x.double(), s.double(), dz.double(), ss.double(), dq.double(), ws.double(), True, True
    )
    _close("dx", dx, dx64, torch.float32)
    _close("dws", dws, dws64, torch.float32)


def test_scse_scale_config_tiles():
    """Every channel a tile of up to SCSE_TILE elements (more only where the narrowest tile is), at
    least 32 bytes of each NCHW row, a program's span SCSE_SPAN positions or one tile."""
    for c, hw, cl, elem in [(16, 65536, True, 2), (768, 256, True, 2), (768, 256, False, 2), (192, 4096, False, 4)]:
        cfg = hz.scse_scale_config(c, hw, cl, elem)
        assert cfg.one_sweep and cfg.block_c == hz.next_pow2(c)
        narrowest = 1 if cl else hz.SECTOR_BYTES // elem
        assert cfg.block_hw == max(narrowest, min(hz.next_pow2(hw), hz.SCSE_TILE // cfg.block_c)), (c, hw, cl, cfg)
        assert cfg.block_c * cfg.block_hw <= hz.SCSE_SCALE_MAX_TILE
        assert cfg.span == max(cfg.block_hw, hz.SCSE_SPAN)
    assert hz.scse_scale_config(768, 256, True, 2).block_hw == 4  # 16 tiles a span
    wide = hz.scse_scale_config(768, 256, False, 2)  # NCHW rows keep 32 bytes: 1024 x 16, 16 warps
    assert wide.block_hw == 16 and wide.num_warps == 16


def test_scse_squeeze_splits_span_at_least_scse_min_split_hw():
    """SE's squeeze on scSE's splits: at batch 1 on 132 SMs, channels_last tiles narrow to 32 bytes a
    position before HW splits shorten below SCSE_MIN_SPLIT_HW; the partial sums stay under
    4 / (SCSE_MIN_SPLIT_HW * element size) of x."""
    for c, hw in [(768, 256), (384, 1024), (128, 1024), (16, 65536), (192, 4096)]:
        for cl in (True, False):
            cfg = hz.scse_squeeze_config(1, c, hw, cl, 2, 132)
            assert cfg.hw_per_split >= min(hw, hz.SCSE_MIN_SPLIT_HW) and cfg.split == hz.cdiv(hw, cfg.hw_per_split)
            assert cfg.hw_per_split % cfg.block_hw == 0 and cfg.block_c * cfg.block_hw <= hz.REDUCE_TILE
            assert cfg.split * c * 4 <= 4 / (hz.SCSE_MIN_SPLIT_HW * 2) * c * hw * 2
            if cl:
                assert cfg.block_c >= min(hz.next_pow2(c), hz.SECTOR_BYTES // 2)
    assert hz.scse_squeeze_config(1, 384, 1024, True, 2, 132).block_c == 16  # narrowed from SE's 128
    assert hz.scse_squeeze_config(64, 384, 1024, True, 2, 132) == hz.reduce_config(64, 384, 1024, True, 132)


@pytest.mark.parametrize(
    "b,hw,shrunk",
    [(1, 36, True), (4, 36, False), (3, 12, False)],
    ids=["few-programs-shrink", "enough-programs", "short-rows"],
)
def test_scse_backward_tiles_shrink_while_programs_are_few(b, hw, shrunk, device):
    """The backward's HW tiles halve (down to SCSE_MIN_BLOCK_HW) while fewer than
    SPLIT_BELOW_PROGRAMS_PER_SM programs per SM would run; each tile then writes its own row of
    partial sums."""
    sms = hz.sm_count(device)
    cfg = hz.scse_config(b, 8, hw, False, sms)
    assert (cfg.block_hw < hz.next_pow2(hw)) == shrunk, cfg
    assert cfg.block_hw >= min(hz.SCSE_MIN_BLOCK_HW, hz.next_pow2(hw))
    x, g = torch.randn(b, 8, hw, 1, device=device), torch.randn(b, 8, hw, 1, device=device)
    dssum, ss, dq, dbs = kernels.scse_reduce_bwd(g, x, torch.ones(8, device=device), None)
    # s_s and dq of w_s = 1 and no bias: sigmoid(sum_c x), (sum_c g x) s_s (1 - s_s); db_s the sum of dq
    programs = b * hz.cdiv(hw, cfg.block_hw)
    assert dssum.shape == (hz.cdiv(hw, cfg.block_hw), b, 8) and dbs.shape == ((programs, 1) if programs > 1 else (1,))
    torch.testing.assert_close(dssum.sum(0), (g * x).sum((2, 3)), rtol=1e-5, atol=1e-5)
    ss64 = torch.sigmoid(x.double().sum(1)[..., 0])
    dq64 = (g.double() * x.double()).sum(1)[..., 0] * ss64 * (1 - ss64)
    torch.testing.assert_close(ss.double(), ss64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dbs.sum().double(), dq64.sum(), rtol=1e-5, atol=1e-5)


def test_scse_config_layouts():
    nchw, cl = hz.scse_config(8, 256, 4096, False, 132), hz.scse_config(8, 256, 4096, True, 132)
    assert nchw.block_hw >= nchw.block_c and cl.block_c >= cl.block_hw  # the contiguous axis the long side
    assert nchw.block_c * nchw.block_hw <= hz.SCSE_TILE and cl.block_c * cl.block_hw <= hz.SCSE_TILE


@pytest.mark.parametrize("max_shares", [0, 10_000], ids=["torch-sums", "launched-sums"])
def test_scse_weight_shares_are_added_up_by_a_launch_or_by_torch(max_shares, device, monkeypatch):
    """dw_s's and db_s's shares: a launch adds them up where there are few (the backward then
    replays), torch's reduction where there are many; both give the sums, in the weights' shapes."""
    monkeypatch.setattr(hz, "SCSE_LAUNCHED_SUM_MAX_SHARES", max_shares)
    module = fused_se.FusedSCSEModule(8, 2).to(device)
    x = torch.randn(3, 8, 5, 30, device=device, requires_grad=True)
    g = torch.randn_like(x)
    with record_launches() as launched:
        grads = torch.autograd.grad(module(x), [x, *module.parameters()], g)
    assert launched.count("sum_partials") == (2 if max_shares else 0)
    ref = fused_se.reference.SCSEModule(8, 2).to(device).double()
    ref.load_state_dict(module.state_dict())
    xr = x.detach().double().requires_grad_()
    want = torch.autograd.grad(ref(xr), [xr, *ref.parameters()], g.double())
    for got, w, p in zip(grads, want, [x, *module.parameters()], strict=True):
        assert got.shape == p.shape
        torch.testing.assert_close(got.double(), w, rtol=1e-4, atol=1e-5)
