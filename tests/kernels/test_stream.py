"""The streamed forward and backward of the two-FC form (x past L2): one persistent launch each,
taking tiles from a ticket counter so that a sample's second pass follows its first while the
sample is still in L2. Held to the parity rules of the three-launch path, and tested on each
side of every threshold that picks it.

The thresholds are set per test (a small L2, small tiles) so that small tensors take the path
with several chunks, channel blocks and HW tiles. Programs run one after another in the
interpreter: there the kernels do not wait on a flag, they count every read of a chunk's gate
that the order of the tickets alone did not make safe, and the launcher raises on any.
"""

from __future__ import annotations

import dataclasses

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
from fused_se import decomposed, kernels, reference
from fused_se.kernels import INTERPRETED, plan_backward, plan_forward
from fused_se.kernels import heuristics as hz

FWD, BWD = ["se_fwd_stream"], ["se_bwd_stream", "sum_partials"]
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


def _stream_for(monkeypatch, x, lag, ratio=1.0):
    """An L2 that holds `lag` samples of x's forward between its two passes (the backward, which
    touches g as well, gets about half), and chunks from the weight ratio."""
    sample = x[0].numel() * x.element_size()
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * lag * sample)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", ratio)


def _stream_plans(x, hidden):
    """The streamed forward's and backward's configurations for x, None where they do not apply."""
    return planned(plan_forward(x, hidden), "stream"), planned(plan_backward(x, x, hidden), "stream")


def _run(x, params, act, gate, g, **tail):
    return mlp_outputs_and_grads(lambda x, *p: fused_se.squeeze_excite(x, *p, act=act, gate=gate, **tail), x, params, g)


def _eager(x, params, act, gate, g):
    return mlp_outputs_and_grads(lambda x, *p: eager_variant(x, "mlp", list(p), act, gate), x, params, g)


def _check(x, hidden, act, gate, bias, device):
    c = x.shape[1]
    params = make_variant_params("mlp", c, hidden, 1, bias, device)
    g = torch.randn(x.shape, dtype=x.dtype, device=device)
    with record_launches() as launched:
        ours = _run(x, params, act, gate, g)
    assert launched == FWD + BWD, launched
    own = _eager(x, params, act, gate, g)
    ref64 = _eager(x.double(), [p.double() if p is not None else None for p in params], act, gate, g.double())
    for name, o, t, r in zip(["y", "dx", "dw1", "db1", "dw2", "db2"], ours, own, ref64, strict=False):
        assert_within_torch_error(name, o, t.to(o.dtype), r)
    assert ours[0].stride() == x.stride() and ours[1].stride() == x.stride()
    return ours


# Shapes and the configurations they get (checked): several chunks with a partial last one,
# several channel blocks, several HW tiles, in both layouts.
CASES = [
    # (B, C, H, W, hidden), layout, lag, weight ratio
    ((7, 40, 5, 7, 5), "nchw", 4, 0.05),  # 40 channel blocks of 1, chunks of 1
    ((9, 33, 4, 5, 8), "channels_last", 8, 2.0),  # 10 HW tiles, chunks of 4 (9 = 4 + 4 + 1)
    ((10, 24, 9, 9, 3), "nchw", 6, 1.0),  # 2 HW tiles x 24 channel blocks
    ((9, 33, 4, 5, 8), "nchw", 8, 2.0),  # chunks of 2 (the last of 1), 17 channel blocks of 2
]


@pytest.mark.parametrize(
    ("shape", "layout", "lag", "ratio", "variant"),
    [(*case, VARIANTS[i % len(VARIANTS)]) for i, case in enumerate(CASES)],  # each variant on two cases
    ids=lambda v: str(v),
)
def test_parity_fp32(shape, layout, lag, ratio, variant, device, monkeypatch):
    b, c, h, w, hidden = shape
    x = make_input((b, c, h, w), torch.float32, device, layout) * 2
    _stream_for(monkeypatch, x, lag, ratio)
    fwd, bwd = _stream_plans(x, hidden)
    assert fwd is not None and bwd is not None
    assert fwd.lag < b and bwd.lag < b and max(fwd.c_blocks, fwd.hw_tiles) > 1
    _check(x, hidden, *variant, device)


def test_the_cases_cover_the_structure(monkeypatch):
    """Between them, CASES have partial last chunks, chunks > 1 on both passes, several HW
    tiles in both layouts and several channel blocks."""
    seen = set()
    for (b, c, h, w, hidden), layout, lag, ratio in CASES:
        x = make_input((b, c, h, w), torch.float32, "cpu", layout)
        _stream_for(monkeypatch, x, lag, ratio)
        for cfg in _stream_plans(x, hidden):
            seen |= {("partial chunk", b % cfg.chunk != 0), ("chunk > 1", cfg.chunk > 1)}
            seen |= {(f"hw tiles {layout}", cfg.hw_tiles > 1), ("channel blocks", cfg.c_blocks > 1)}
    for want in ("partial chunk", "chunk > 1", "hw tiles nchw", "hw tiles channels_last", "channel blocks"):
        assert (want, True) in seen, want


def test_short_rows_take_several_channel_blocks_a_ticket(device, monkeypatch):
    """NCHW rows shorter than a ticket: each ticket sums (then scales) several channel blocks of
    the whole HW, the last group partly past C; parity both ways."""
    monkeypatch.setattr(hz, "STREAM_TILE", 256)
    x = make_input((6, 40, 3, 5), torch.float32, device, "nchw") * 2
    _stream_for(monkeypatch, x, 4, 0.05)
    for cfg in _stream_plans(x, 4):
        assert cfg is not None and cfg.hw_tiles == 1 and cfg.c_steps == 4
        assert cfg.c_blocks % cfg.c_steps != 0  # 10 blocks in groups of 4
        assert cfg.tiles == 3
    _check(x, 4, "relu", "sigmoid", True, device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_half_precision(dtype, layout, device, monkeypatch):
    x = make_input((9, 33, 4, 5), dtype, device, layout) * 2
    _stream_for(monkeypatch, x, 8, 2.0)
    _check(x, 8, "relu", "sigmoid", True, device)


def test_gradcheck_fp64(device, monkeypatch):
    params = [p.requires_grad_() for p in make_variant_params("mlp", 6, 2, 1, True, device, torch.float64)]
    x = torch.randn(5, 6, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    _stream_for(monkeypatch, x, 4, 0.01)
    with record_launches() as launched:
        assert torch.autograd.gradcheck(
            lambda x, *w: fused_se.squeeze_excite(x, *w, act="silu"), (x, *params), eps=1e-6, atol=1e-5, fast_mode=True
        )
    assert "se_fwd_stream" in launched and "se_bwd_stream" in launched and "squeeze" not in launched


@pytest.mark.parametrize("need_res", [True, False], ids=["dres", "no-dres"])
@pytest.mark.parametrize("out_act", ["identity", "relu"])
def test_residual_tail(out_act, need_res, monkeypatch):
    b, c, h, w, r = 10, 24, 5, 5, 4
    x = (torch.randn(b, c, h, w) * 2).requires_grad_()
    residual = torch.randn(b, c, h, w).to(memory_format=torch.channels_last).requires_grad_(need_res)
    w1, w2 = (torch.randn(r, c) / c**0.5).requires_grad_(), (torch.randn(c, r) / r**0.5).requires_grad_()
    d = torch.tensor([1.25, 0.0, 1.25, 1.25, 0.0, 1.25, 1.25, 1.25, 0.0, 1.25])
    _stream_for(monkeypatch, x, 8)  # the backward, reading g, x and the ReLU's output: a lag of 2
    g = torch.randn(b, c, h, w)
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2, residual=residual, out_act=out_act, sample_scale=d)
        grads = torch.autograd.grad(y, [x, w1, w2] + ([residual] if need_res else []), g)
    assert launched == FWD + BWD, launched
    leaves = [t.detach().double().requires_grad_() for t in (x, w1, w2, residual)]
    ref = reference.squeeze_excite(
        leaves[0], leaves[1], None, leaves[2], residual=leaves[3], out_act=out_act, sample_scale=d.double()
    )
    ref_grads = torch.autograd.grad(ref, leaves if need_res else leaves[:3], g.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    for name, ours, want in zip(["dx", "dw1", "dw2", "dres"], grads, ref_grads, strict=False):
        torch.testing.assert_close(ours.double(), want, rtol=1e-4, atol=1e-4, msg=name)


def test_nan_and_inf_stay_where_eager_puts_them(monkeypatch):
    x = torch.randn(6, 16, 3, 3)
    x[0, 2, 1, 1] = float("inf")
    x[4, 5, 0, 0] = float("nan")
    w1, w2 = torch.randn(3, 16), torch.randn(16, 3)  # hidden 3 of a BLOCK_R of 16: padded units
    _stream_for(monkeypatch, x, 2)
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2)
    assert launched == FWD
    ref = eager_variant(x, "mlp", [w1, None, w2, None], "relu", "sigmoid")
    assert_nonfinite_like_eager(y, ref)


def test_both_paths_agree(monkeypatch, device):
    x = make_input((9, 33, 4, 5), torch.float32, device, "channels_last")
    params = make_variant_params("mlp", 33, 8, 1, True, device)
    g = torch.randn_like(x)
    three = _run(x, params, "relu", "sigmoid", g)
    _stream_for(monkeypatch, x, 8, 2.0)
    with record_launches() as launched:
        streamed = _run(x, params, "relu", "sigmoid", g)
    assert launched == FWD + BWD
    for a, b in zip(streamed, three, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_weight_gradients_leave_in_the_parameters_dtype(dtype, monkeypatch, device):
    """16-bit parameters: the chunks' partials summed in fp32 and rounded once as they are
    stored, the same bits as the fp32 gradients cast afterwards, with no cast left to the op
    (its gradients come out of the kernels in the parameters' dtype). The interpreter truncates
    fp32 to bf16 where a GPU's store rounds to nearest: there, within one bf16 step."""
    x = make_input((9, 33, 4, 5), dtype, device, "channels_last") * 2
    w1, b1, w2, b2 = (p.to(dtype) for p in make_variant_params("mlp", 33, 8, 1, True, device))
    _stream_for(monkeypatch, x, 8, 2.0)
    fwd_cfg, bwd_cfg = _stream_plans(x, 8)
    assert fwd_cfg is not None and bwd_cfg is not None and hz.cdiv(9, bwd_cfg.chunk) > 1  # partials to sum
    _, z, s, a = kernels.se_fwd_stream(x, w1, b1, w2, b2, "relu", "sigmoid", None, None, False, fwd_cfg)
    g = torch.randn(x.shape, dtype=dtype, device=device)
    args = (g, x, z, s, a, w1, b1, w2, (True,) * 4, "relu", "sigmoid", None, None, False, bwd_cfg)
    wide = kernels.se_bwd_stream(*args)
    narrow = kernels.se_bwd_stream(*args, (dtype,) * 4)
    assert [t.dtype for t in wide[2:]] == [torch.float32] * 4
    for name, n, w in zip(["dw1", "db1", "dw2", "db2"], narrow[2:], wide[2:], strict=False):
        assert n.dtype == dtype, name
        if INTERPRETED and dtype == torch.bfloat16:
            step = 2.0 ** (torch.frexp(w)[1].float() - 8)  # bf16's spacing at |w|: 8 significant bits
            assert ((n.float() - w).abs() < step).all(), name
        else:
            assert torch.equal(n, w.to(dtype)), name
    assert torch.equal(narrow[0], wide[0])
    # through the op: the gradients in the parameters' dtypes, none of them cast by torch
    params = [p.requires_grad_() for p in (w1, b1, w2, b2)]
    casts = []
    real_as_dtype = decomposed.as_dtype
    monkeypatch.setattr(decomposed, "as_dtype", lambda t, dt: casts.append((t.dtype, dt)) or real_as_dtype(t, dt))
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x.requires_grad_(), *params)
        grads = torch.autograd.grad(y, [x, *params], g)
    assert launched == FWD + BWD
    assert [t.dtype for t in grads] == [dtype] * 5
    assert not [c for c in casts if c[0] != c[1]], casts


# ---- each side of each threshold ---------------------------------------------------------------


def _launches(x, r, need_dx=True):
    x = x.detach().requires_grad_(need_dx)
    w1, w2 = torch.randn(r, x.shape[1], requires_grad=True), torch.randn(x.shape[1], r, requires_grad=True)
    with record_launches() as launched:
        y = fused_se.squeeze_excite(x, w1, None, w2)
        y.sum().backward()
    return launched


def _config(b=8, c=16, hw=9, r=2, dtype=torch.float32, sample_bytes=16 * 9 * 4, l2=None, lag=4):
    l2 = hz.STREAM_L2_FRACTION * lag * sample_bytes if l2 is None else l2
    return hz.stream_config(b, c, hw, r, dtype, False, sample_bytes, 132, l2)


@pytest.mark.parametrize(
    ("b", "expect"),
    [(5, FWD + BWD), (4, FORWARD_KERNELS + BWD), (3, FORWARD_KERNELS + BWD), (2, FORWARD_KERNELS + BACKWARD_KERNELS)],
)
def test_batch_against_lag(b, expect, monkeypatch):
    """Streams only where a pass over x does not fit in L2 (LAG < B); otherwise the three
    launches' second read is served by L2 already. Here LAG is 4 forward and 2 backward."""
    x = torch.randn(b, 16, 3, 3)
    _stream_for(monkeypatch, x, 4, 0.1)
    assert _launches(x, 2) == expect


@pytest.mark.parametrize(("lag", "stream"), [(2, True), (1, False)])
def test_lag_of_two_chunks_at_least(lag, stream):
    assert hz.STREAM_MIN_LAG_CHUNKS == 2
    cfg = _config(lag=lag, r=1, sample_bytes=1 << 20)
    assert (cfg is not None) == stream
    if stream:
        assert cfg.chunk == 1 and cfg.lag == 2


@pytest.mark.parametrize(("ratio", "chunk"), [(1, 1), (2, 2), (3, 4), (64, 64), (65, None)])
def test_chunk_is_the_smallest_power_of_two_past_the_weights(ratio, chunk, monkeypatch):
    """A chunk holds STREAM_WEIGHT_RATIO times W1 and W2's bytes, up to STREAM_MAX_CHUNK."""
    assert hz.STREAM_MAX_CHUNK == 64
    c, r = 16, 2
    weight_bytes = 2 * c * r * 4
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", ratio)
    cfg = _config(b=1000, c=c, r=r, sample_bytes=weight_bytes, lag=256)
    assert (cfg and cfg.chunk) == chunk
    if cfg:
        assert cfg.lag % cfg.chunk == 0 and cfg.excite.block_b >= cfg.chunk


@pytest.mark.parametrize(("r", "stream"), [(128, True), (129, False)])
def test_hidden_threshold(r, stream):
    assert hz.STREAM_MAX_HIDDEN == 128
    assert (_config(b=1000, c=16, r=r, sample_bytes=1 << 20, lag=4) is not None) == stream


@pytest.mark.parametrize(("chunk", "stream"), [(16, True), (32, False)])
def test_fp64_chunks_of_sixteen_at_most(chunk, stream, monkeypatch):
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", chunk)
    cfg = _config(b=1000, c=16, r=2, dtype=torch.float64, sample_bytes=2 * 16 * 2 * 8, lag=256)
    assert (cfg is not None) == stream


def test_weights_only_backward_takes_the_three_launch_passes(monkeypatch):
    x = torch.randn(6, 16, 3, 3)
    _stream_for(monkeypatch, x, 2)
    assert _launches(x, 2, need_dx=False) == [*FWD, "scale_bwd", "excite_bwd"]


def test_other_forms_take_three_launches(monkeypatch):
    x = torch.randn(6, 16, 3, 3)
    _stream_for(monkeypatch, x, 2)
    with record_launches() as launched:
        fused_se.effective_squeeze_excite(x, torch.randn(16, 16))
        fused_se.efficient_channel_attention(x, torch.randn(3))
    assert launched == ["squeeze", "excite_fc", "scale", "squeeze", "excite_conv", "scale"]


def test_se_resnet50_on_an_h100_class_card():
    """With a 50 MB L2 at batch 128 in bf16, the first two stages stream both ways. The third
    does not (51 MB of x, about L2's size: its chunks of 32 samples, for W1 + W2 of 0.5 MB, leave
    no two chunks in the quarter of L2 a window's reads may take), nor the last (25 MB of x,
    fitting in L2, and W1 + W2 of 2 MB per 200 KB sample)."""
    stages = [(256, 3136, 16), (512, 784, 32), (1024, 196, 64), (2048, 49, 128)]
    l2 = 50 * 1024 * 1024
    got = []
    for c, hw, r in stages:
        fwd = hz.stream_config(128, c, hw, r, torch.bfloat16, True, c * hw * 2, 132, l2)
        bwd = hz.stream_config(128, c, hw, r, torch.bfloat16, True, c * hw * 4, 132, l2)
        got.append((fwd is not None, bwd is not None))
    assert got == [(True, True), (True, True), (False, False), (False, False)]


@pytest.mark.skipif(not INTERPRETED, reason="checks the interpreter's order count; a GPU waits instead")
def test_an_order_that_reads_a_gate_early_is_caught(monkeypatch):
    """With LAG = 0 and chunks of 2, sample 0's scale comes before sample 1's squeeze: the
    interpreter's count of early reads makes the launcher raise."""
    x = torch.randn(6, 16, 3, 3)
    _stream_for(monkeypatch, x, 4, 1.0)
    w1, w2 = torch.randn(2, 16), torch.randn(16, 2)
    cfg = planned(plan_forward(x, 2), "stream")
    assert cfg is not None
    bad = dataclasses.replace(cfg, chunk=2, lag=0)
    with pytest.raises(RuntimeError, match="before their flag was set by the order of the tickets"):
        kernels.se_fwd_stream(x, w1, None, w2, None, "relu", "sigmoid", None, None, False, bad)
    kernels.se_fwd_stream(
        x, w1, None, w2, None, "relu", "sigmoid", None, None, False, dataclasses.replace(cfg, chunk=2)
    )
