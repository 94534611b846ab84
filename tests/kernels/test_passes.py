"""Each launcher against plain PyTorch math, on each side of every heuristic threshold."""

import pytest
import torch
from se_testing import make_input, record_launches

from fused_se import kernels, reference
from fused_se.kernels import heuristics as hz


def _sms(device):
    return hz.sm_count(device)


# ---- squeeze: split over HW or not -------------------------------------------------------


def _enough_batch(device):
    """The smallest batch that launches enough squeeze programs not to split HW on this device."""
    return hz.SPLIT_BELOW_PROGRAMS_PER_SM * _sms(device)


# (C, H, W, layout): maps with at least two HW blocks, so that a split is possible.
SPLITTABLE = [(4, 40, 40, "nchw"), (16, 14, 14, "channels_last")]


@pytest.mark.parametrize("split", [True, False], ids=["batch1-split", "enough-programs-nosplit"])
@pytest.mark.parametrize("c,h,w,layout", SPLITTABLE, ids=lambda v: str(v))
def test_squeeze_split_threshold(c, h, w, layout, split, device):
    b = 1 if split else _enough_batch(device)
    x = make_input((b, c, h, w), torch.float32, device, layout)
    cfg = hz.reduce_config(b, c, h * w, layout == "channels_last", _sms(device))
    assert hz.cdiv(h * w, cfg.block_hw) >= 2 and (cfg.split > 1) == split, cfg
    with record_launches() as launched:
        zsum = kernels.squeeze_fwd(x)
    assert launched == ["squeeze"]
    assert zsum.shape == (cfg.split, b, c) and zsum.dtype == torch.float32
    flat = x.reshape(b, c, h * w)
    for k in range(cfg.split):  # each partial covers its own range of HW, nothing more
        part = flat[:, :, k * cfg.hw_per_split : (k + 1) * cfg.hw_per_split].sum(-1)
        torch.testing.assert_close(zsum[k], part, rtol=1e-5, atol=1e-4)


def test_squeeze_single_element_map(device):
    x = make_input((1, 8, 1, 1), torch.float32, device, "nchw")
    zsum = kernels.squeeze_fwd(x)
    assert zsum.shape == (1, 1, 8)  # nothing to split
    assert torch.equal(zsum[0], x[:, :, 0, 0])


@pytest.mark.parametrize("split", [True, False], ids=["batch1-split", "enough-programs-nosplit"])
def test_scale_bwd_reduces_product(split, device):
    shape = (1 if split else _enough_batch(device), 4, 40, 40)
    x = make_input(shape, torch.float32, device, "nchw")
    g = make_input(shape, torch.float32, device, "channels_last")  # a layout unlike x's
    with record_launches() as launched:
        dssum, _ = kernels.scale_bwd(g, x)
    assert launched == ["scale_bwd"]
    assert (dssum.shape[0] > 1) == split
    torch.testing.assert_close(dssum.sum(0), (g * x).sum((2, 3)), rtol=1e-5, atol=1e-4)


# ---- scale and the dx pass ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_c"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_scale_fwd(layout, dtype, device):
    x = make_input((3, 65, 5, 13), dtype, device, layout)
    s = torch.rand(3, 65, device=device)
    with record_launches() as launched:
        y = kernels.scale_fwd(x, s)
    assert launched == ["scale"]
    assert y.dtype == dtype and y.stride() == torch.empty_like(x).stride()
    expected = x.float() * s[:, :, None, None]
    # fp32 must match exactly. The GPU rounds fp32 -> bf16 to nearest even; the interpreter
    # truncates, so allow one bf16 ulp.
    rtol = 0.0 if dtype == torch.float32 else 2.0**-7
    torch.testing.assert_close(y.float(), expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("g_layout,x_layout", [("nchw", "nchw"), ("nchw", "channels_last"), ("channels_last", "nchw")])
def test_squeeze_scale_bwd(g_layout, x_layout, device):
    shape = (3, 24, 5, 13)
    g = make_input(shape, torch.float32, device, g_layout)
    x = make_input(shape, torch.float32, device, x_layout)
    s, dz = torch.rand(3, 24, device=device), torch.randn(3, 24, device=device)
    with record_launches() as launched:
        dx = kernels.squeeze_scale_bwd(g, s, dz, x)
    assert launched == ["squeeze_scale_bwd"]
    assert dx.stride() == torch.empty_like(x).stride()
    expected = g * s[:, :, None, None] + (dz / 65)[:, :, None, None]
    torch.testing.assert_close(dx, expected, rtol=1e-6, atol=1e-6)


# ---- NCHW rows of unaligned bytes: the flat passes ----------------------------------------


@pytest.fixture
def kernels_launched():
    """The Triton kernels launched, in order: (kernel, grid, args, kwargs) each."""
    from fused_se.runtime.launch import kernel_calls

    with kernel_calls() as calls:
        yield calls


def _names(calls) -> list[str]:
    return [kernel.__name__ for kernel, *_ in calls]


def _passes_with_every_option(x, g, o, s, t, d):
    """Each pass with every option it has: (z sums, g * x sums and the masked g, y, dx)."""
    zsum = kernels.squeeze_fwd(x)
    dssum, masked = kernels.scale_bwd(g, x, d, o, True)
    y = kernels.scale_fwd(x, s, d, o, True)
    dx = kernels.squeeze_scale_bwd(g, s, t, x, d, o)
    return zsum, dssum, masked, y, dx


@pytest.mark.parametrize(
    "dtype,shape,flat",
    [
        (torch.bfloat16, (2, 40, 7, 7), True),  # 98-byte rows; the last program has 8 channels
        (torch.bfloat16, (3, 16, 14, 14), True),  # 392-byte rows
        (torch.float32, (2, 40, 7, 7), True),  # 196-byte rows
        (torch.float32, (3, 16, 14, 14), True),  # 784-byte rows: aligned
        (torch.float32, (2, 8, 20, 20), True),  # rows past FLAT_LONG_ROWS: the other launch parameters
        (torch.bfloat16, (2, 24, 5, 5), False),  # rows below FLAT_MIN_HW: the tiles
    ],
    ids=lambda v: str(v),
)
def test_flat_passes(dtype, shape, flat, device, kernels_launched):
    """NCHW samples whose rows are short and unaligned run the flat passes, with every option
    (ReLU mask, the stored masked g, the per-sample factor, the residual tail, dz)."""
    torch.manual_seed(0)
    b, c, h, w = shape
    x, g, o = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    s, t = torch.rand(b, c, device=device), torch.randn(b, c, device=device)
    d = torch.rand(b, device=device)
    zsum, dssum, masked, y, dx = _passes_with_every_option(x, g, o, s, t, d)
    expected_kernels = (
        ["hw_sum_flat_kernel", "hw_sum_flat_kernel", "scale_flat_kernel", "scale_flat_kernel"]
        if flat
        else ["_hw_sum_kernel", "_hw_sum_kernel", "_scale_kernel", "_scale_kernel"]
    )
    assert _names(kernels_launched) == expected_kernels
    xf, gf, of = x.float(), g.float(), o.float()
    gm = torch.where(of <= 0, 0.0, gf)
    dn, sn = d[:, None, None, None], s[:, :, None, None]
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2.0**-7, "atol": 1e-2}
    torch.testing.assert_close(zsum.sum(0), xf.sum((2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dssum.sum(0), (gm * xf).sum((2, 3)) * d[:, None], rtol=1e-5, atol=1e-4)
    assert torch.equal(masked, gm.to(dtype))
    torch.testing.assert_close(y.float(), torch.relu(xf * sn * dn + of), **tol)
    torch.testing.assert_close(dx.float(), gm * sn * dn + (t / (h * w))[:, :, None, None], **tol)


@pytest.mark.parametrize(
    "hw,flat",
    [(hz.FLAT_MIN_HW - 1, False), (hz.FLAT_MIN_HW, True), (hz.FLAT_MAX_HW, True), (hz.FLAT_MAX_HW + 1, False)],
)
def test_flat_passes_row_length_thresholds(hw, flat, device, kernels_launched):
    """Both sides of FLAT_MIN_HW and FLAT_MAX_HW."""
    x = torch.randn(2, 24, hw, 1, device=device, dtype=torch.bfloat16)
    zsum = kernels.squeeze_fwd(x)
    y = kernels.scale_fwd(x, torch.ones(2, 24, device=device))
    assert _names(kernels_launched) == (
        ["hw_sum_flat_kernel", "scale_flat_kernel"] if flat else ["_hw_sum_kernel", "_scale_kernel"]
    )
    torch.testing.assert_close(zsum.sum(0), x.float().sum((2, 3)), rtol=1e-5, atol=1e-4)
    assert torch.equal(y, x)


def test_flat_passes_fit_their_grid(monkeypatch, device, kernels_launched):
    """A batch past the grid's second dimension keeps the tiles (with the limit lowered to 2 here)."""
    monkeypatch.setattr(hz, "MAX_GRID_Y", 2)
    assert hz.flat_fits(2, 64) and not hz.flat_fits(3, 64) and not hz.flat_fits(1, 2**31)
    for b in (2, 3):
        x = torch.randn(b, 8, 7, 7, device=device)
        torch.testing.assert_close(kernels.squeeze_fwd(x).sum(0), x.sum((2, 3)), rtol=1e-5, atol=1e-5)
    assert _names(kernels_launched) == ["hw_sum_flat_kernel", "_hw_sum_kernel"]


def test_flat_passes_need_one_layout(device, kernels_launched):
    """A g in another layout than x's (or a residual, a ReLU output) keeps the tiles."""
    x = torch.randn(2, 16, 7, 7, device=device, dtype=torch.bfloat16)
    g = x.contiguous(memory_format=torch.channels_last)
    kernels.scale_bwd(g, x)
    kernels.scale_fwd(x, torch.rand(2, 16, device=device), residual=g)
    assert _names(kernels_launched) == ["_hw_sum_kernel", "_scale_kernel"]


# ---- excite: forward and backward, each side of their thresholds ----------------------------


def _excite_case(b, c, r, bias, device, split=1):
    hw = 7
    zsum = torch.randn(split, b, c, device=device) * hw
    w1, w2 = torch.randn(r, c, device=device) / c**0.5, torch.randn(c, r, device=device) / r**0.5
    b1, b2 = (torch.randn(r, device=device), torch.randn(c, device=device)) if bias else (None, None)
    return zsum, hw, w1, b1, w2, b2


ACT_GATES = [("relu", "sigmoid"), ("silu", "sigmoid"), ("relu", "hard_sigmoid"), ("silu", "hard_sigmoid")]


def _check_gate_input(a, z, w1, b1, w2, b2, act, gate):
    if gate == "hard_sigmoid":  # kept for the backward
        h = reference._ACT_FNS[act](torch.nn.functional.linear(z, w1, b1))
        torch.testing.assert_close(a, torch.nn.functional.linear(h, w2, b2), rtol=1e-5, atol=1e-5)
    else:
        assert a.numel() == 0


@pytest.mark.parametrize(
    "b,c,r,form",
    [
        (1, 256, 16, "recompute"),  # W1 small, one batch block: channel blocks shared by several programs
        (3, 24, 3, "one"),  # a single channel block
        (40, 64, 16, "one"),  # a single channel block, three batch blocks
        (1, 512, 128, "split"),  # W1 above EXCITE_RECOMPUTE_MAX_W1_BYTES: the first GEMM split
        (1, 1000, 40, "split"),  # channels not a multiple of the split nor of the channel block
    ],
)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act,gate", ACT_GATES)
def test_excite_fwd(b, c, r, form, bias, act, gate, device):
    sms = _sms(device)
    split = hz.excite_fwd_split_config(b, c, r, torch.float32, sms)
    assert (split is not None) == (form == "split")
    if split is not None:
        assert split.ks > 1 and (split.ks - 1) * split.ck < c <= split.ks * split.ck
    else:
        assert (hz.excite_fwd_config(b, c, r, torch.float32, sms).programs_c > 1) == (form == "recompute")
    zsum, hw, w1, b1, w2, b2 = _excite_case(b, c, r, bias, device, split=2)
    with record_launches() as launched:
        z, s, a = kernels.excite_fwd(zsum, hw, w1, b1, w2, b2, torch.float32, act, gate)
    assert launched == ["excite"]
    z_ref = zsum.sum(0) / hw
    torch.testing.assert_close(z, z_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s, reference.excite(z_ref, w1, b1, w2, b2, act, gate), rtol=1e-5, atol=1e-6)
    _check_gate_input(a, z_ref, w1, b1, w2, b2, act, gate)


@pytest.mark.parametrize(
    "b,c,r,ks",
    [
        (3, 24, 3, 1),
        (40, 65, 16, 1),  # three batch blocks, two channel blocks of the last kernel
        (1, 256, 16, 2),  # the reductions over channels split in two
        (70, 130, 20, 1),  # the last kernel walks five batch blocks of 16
    ],
)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act,gate", ACT_GATES)
def test_excite_bwd(b, c, r, ks, bias, act, gate, device, monkeypatch):
    # the channel splits as planned for two SMs (the interpreter's count), on any device
    monkeypatch.setattr(hz, "sm_count", lambda device: hz.INTERPRETER_SM_COUNT)
    assert hz.excite_bwd_config(b, c, r, torch.float32, hz.sm_count(device)).ks == ks
    zsum, hw, w1, b1, w2, b2 = _excite_case(b, c, r, bias, device)
    # Gate inputs spread over [-6, 6], so the hard sigmoid's flat parts are reached too.
    w2 = w2 * 4
    ds_sum = torch.randn(2, b, c, device=device)
    z, s, a = kernels.excite_fwd(zsum, hw, w1, b1, w2, b2, torch.float32, act, gate)

    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (z, w1, b1, w2, b2)]
    s_ref = reference.excite(*leaves, act, gate)
    s_ref.backward(ds_sum.sum(0).double())
    need = (True, True, bias, True, bias)
    with record_launches() as launched:
        grads = kernels.excite_bwd(ds_sum, z, s, a, w1, b1, w2, torch.float32, need, act, gate)
    assert launched == ["excite_bwd"]
    for name, got, leaf in zip(["dz", "dW1", "db1", "dW2", "db2"], grads, leaves, strict=False):
        if leaf is None:
            assert got is None
            continue
        # fp32 sums over up to 70 samples and 130 channels: the error scales with the largest terms
        atol = 1e-5 * max(1.0, leaf.grad.abs().max().item())
        torch.testing.assert_close(got.double(), leaf.grad, rtol=1e-4, atol=atol, msg=name)


def test_excite_bwd_computes_only_what_is_asked(device):
    zsum, hw, w1, b1, w2, b2 = _excite_case(3, 24, 3, True, device)
    z, s, a = kernels.excite_fwd(zsum, hw, w1, b1, w2, b2, torch.float32)
    ds = torch.randn(1, 3, 24, device=device)
    need = (False, True, False, False, True)
    dz, dw1, db1, dw2, db2 = kernels.excite_bwd(ds, z, s, a, w1, b1, w2, torch.float32, need)
    assert dz is None and db1 is None and dw2 is None
    assert dw1.shape == w1.shape and db2.shape == b2.shape
    full = kernels.excite_bwd(ds, z, s, a, w1, b1, w2, torch.float32, (True,) * 5)
    assert torch.equal(dw1, full[1]) and torch.equal(db2, full[4])


def test_hard_sigmoid_gradient_at_its_edges(device):
    """torch's hardsigmoid passes the gradient on -3 < a < 3 only; a = +-3 exactly gives 0."""
    b, c, r, hw = 1, 16, 1, 1
    w1 = torch.ones(r, c, device=device)
    w2 = torch.zeros(c, r, device=device)
    b2 = torch.tensor([-3.0, 3.0, -2.999, 2.999, -7.0, 7.0, 0.0, 1.0] * 2, device=device)
    zsum = torch.zeros(1, b, c, device=device)
    z, s, a = kernels.excite_fwd(zsum, hw, w1, None, w2, b2, torch.float32, "relu", "hard_sigmoid")
    ds = torch.ones(1, b, c, device=device)
    *_, db2 = kernels.excite_bwd(
        ds, z, s, a, w1, None, w2, torch.float32, (False,) * 4 + (True,), "relu", "hard_sigmoid"
    )
    a_ref = b2.clone().requires_grad_()
    torch.nn.functional.hardsigmoid(a_ref).sum().backward()
    assert torch.equal(s[0], torch.nn.functional.hardsigmoid(b2))
    assert torch.equal(db2, a_ref.grad)


# ---- the FC form (effective SE) and the conv form (ECA) -------------------------------------


def _form_case(b, c, device, split=2):
    hw = 5
    zsum = torch.randn(split, b, c, device=device) * hw
    ds_sum = torch.randn(split, b, c, device=device)
    return zsum, hw, ds_sum


def _grads(excitation, z, ds, params):
    leaves = [z.detach().double().requires_grad_()] + [
        p.detach().double().requires_grad_() if p is not None else None for p in params
    ]
    excitation(*leaves).backward(ds.double())
    return [leaf.grad if leaf is not None else None for leaf in leaves]


# (B, C, backward programs): one tile; several batch blocks and dW column owners; more of both.
@pytest.mark.parametrize("b,c,programs", [(3, 24, 1), (40, 65, 3), (2, 200, 7)])
@pytest.mark.parametrize("bias,gate", [(True, "hard_sigmoid"), (False, "sigmoid"), (True, "sigmoid")])
def test_excite_fc(b, c, programs, bias, gate, device):
    assert hz.cdiv(c, hz.excite_fc_config(c, torch.float32).block_k) == programs
    zsum, hw, ds_sum = _form_case(b, c, device)
    w = torch.randn(c, c, device=device) * 3 / c**0.5
    bb = torch.randn(c, device=device) if bias else None
    with record_launches() as launched:
        z, s, a = kernels.excite_fc_fwd(zsum, hw, w, bb, torch.float32, gate)
        dz, dw, db = kernels.excite_fc_bwd(ds_sum, z, s, a, w, torch.float32, gate, (True, True, bias))
    assert launched == ["excite_fc", "excite_fc_bwd"]
    z_ref = zsum.sum(0) / hw
    torch.testing.assert_close(z, z_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s, reference.excite_fc(z_ref, w, bb, gate), rtol=1e-5, atol=1e-6)
    expected = _grads(lambda *t: reference.excite_fc(*t, gate), z, ds_sum.sum(0), [w, bb])
    for name, got, want in zip(["dz", "dW", "db"], [dz, dw, db], expected, strict=False):
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("b", [3, 40], ids=["one-batch-block", "several-batch-blocks"])
@pytest.mark.parametrize(
    "need", [(False, True, False), (False, False, True), (True, False, False), (False, True, True)]
)
def test_excite_fc_bwd_computes_only_what_is_asked(b, need, device):
    c = 40
    assert (b <= hz.excite_fc_config(c, torch.float32).block_b) == (b == 3)
    zsum, hw, ds = _form_case(b, c, device)
    w, bb = torch.randn(c, c, device=device), torch.randn(c, device=device)
    z, s, a = kernels.excite_fc_fwd(zsum, hw, w, bb, torch.float32, "sigmoid")
    full = kernels.excite_fc_bwd(ds, z, s, a, w, torch.float32, "sigmoid", (True, True, True))
    part = kernels.excite_fc_bwd(ds, z, s, a, w, torch.float32, "sigmoid", need)
    for got, want, asked in zip(part, full, need, strict=False):
        assert (got is None) != asked
        if asked:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("b,c", [(3, 24), (40, 300)])  # one program; partials and several channel blocks
@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("circular", [False, True], ids=["zeros", "circular"])
@pytest.mark.parametrize("bias,gate", [(False, "sigmoid"), (True, "hard_sigmoid")])
def test_excite_conv(b, c, k, circular, bias, gate, device):
    zsum, hw, ds_sum = _form_case(b, c, device)
    w = torch.randn(k, device=device) * 2
    bb = torch.randn(1, device=device) if bias else None
    with record_launches() as launched:
        z, s, a = kernels.excite_conv_fwd(zsum, hw, w, bb, circular, gate)
        dz, dw, db = kernels.excite_conv_bwd(ds_sum, z, s, a, w, circular, gate, (True, True, bias))
    # several programs write partials of dw and db, which one more launch adds up in order
    partials = hz.cdiv(b, hz.excite_conv_bwd_config(b, c, k).block_b) > 1
    assert launched == ["excite_conv", "excite_conv_bwd"] + ["sum_partials"] * partials
    z_ref = zsum.sum(0) / hw
    torch.testing.assert_close(z, z_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s, reference.excite_conv(z_ref, w, bb, circular, gate), rtol=1e-5, atol=1e-6)
    expected = _grads(lambda *t: reference.excite_conv(*t, circular, gate), z, ds_sum.sum(0), [w, bb])
    for name, got, want in zip(["dz", "dw", "db"], [dz, dw, db], expected, strict=False):
        if want is None:
            assert got is None
            continue
        torch.testing.assert_close(got.double().view_as(want), want, rtol=1e-4, atol=1e-5, msg=name)


def test_excite_conv_bwd_partials(device):
    """Enough rows for several per-program partials of dw, summed in a fixed order."""
    b, c = 4 * hz.EXCITE_CONV_BWD_TARGET_PARTIALS, 8
    assert hz.cdiv(b, hz.excite_conv_bwd_config(b, c, 3).block_b) > 1
    zsum, hw, ds_sum = _form_case(b, c, device, split=1)
    w = torch.randn(3, device=device)
    z, s, a = kernels.excite_conv_fwd(zsum, hw, w, None, False, "sigmoid")
    with record_launches() as launched:
        _, dw, _ = kernels.excite_conv_bwd(ds_sum, z, s, a, w, False, "sigmoid", (False, True, False))
    assert launched == ["excite_conv_bwd", "sum_partials"] and dw.shape == (3,)
    (dw_ref,) = _grads(lambda z, w: reference.excite_conv(z, w, None), z, ds_sum[0], [w])[1:]
    torch.testing.assert_close(dw.double(), dw_ref, rtol=1e-5, atol=1e-5)


def test_excite_forms_empty_batch(device):
    zsum, hw, ds = _form_case(0, 8, device)
    w_fc, w_conv = torch.randn(8, 8, device=device), torch.randn(3, device=device)
    z, s, a = kernels.excite_fc_fwd(zsum, hw, w_fc, None, torch.float32, "sigmoid")
    _, dw, db = kernels.excite_fc_bwd(ds, z, s, a, w_fc, torch.float32, "sigmoid", (True, True, True))
    assert (
        z.shape == (0, 8) and torch.equal(dw, torch.zeros_like(w_fc)) and torch.equal(db, torch.zeros(8, device=device))
    )
    z, s, a = kernels.excite_conv_fwd(zsum, hw, w_conv, None, True, "sigmoid")
    _, dw, db = kernels.excite_conv_bwd(ds, z, s, a, w_conv, True, "sigmoid", (True, True, True))
    assert torch.equal(dw, torch.zeros(3, device=device)) and torch.equal(db, torch.zeros(1, device=device))


# ---- heuristics and strides ----------------------------------------------------------------


def test_dot_precision_by_dtype():
    """16-bit x: three TF32 products; fp32 and fp64 x: IEEE products (fp64: a sum of products)."""
    for dtype, tc in ((torch.float16, True), (torch.bfloat16, True), (torch.float32, False), (torch.float64, False)):
        assert hz.excite_fwd_config(8, 64, 4, dtype, 132).dot_tf32 == tc
        assert hz.excite_bwd_config(8, 64, 4, dtype, 132).dot_tf32 == tc
        assert hz.excite_fc_config(64, dtype).dot_tf32 == tc
    assert hz.excite_fwd_split_config(8, 2048, 128, torch.bfloat16, 132).dot_tf32


def test_dot_blocks_are_at_least_16():
    for c, r in [(1, 1), (16, 1), (24, 3), (2048, 128), (65, 65)]:
        cfg = hz.excite_fwd_config(1, c, r, torch.float32, 132)
        assert min(cfg.block_b, cfg.block_c, cfg.block_r) >= hz.MIN_DOT and cfg.block_r >= r


@pytest.mark.parametrize(
    "layout,flat", [("nchw", True), ("channels_last", True), ("sliced_c", True), ("sliced_hw", False)]
)
def test_bchw_strides(layout, flat):
    x = make_input((2, 8, 5, 7), torch.float32, "cpu", layout)
    assert (kernels.bchw_strides(x) is not None) == flat
    if flat:
        sb, sc, shw = kernels.bchw_strides(x)
        flat_view = x.as_strided((2, 8, 35), (sb, sc, shw))
        assert torch.equal(flat_view, x.reshape(2, 8, 35))


def _is_pow2(n):
    return n >= 1 and n & (n - 1) == 0


@pytest.mark.parametrize("sms", [2, 132])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_reduce_config_invariants(channels_last, sms):
    """Every split covers its own HW range, none is empty, and the split count stays capped."""
    for b in (1, 3, 64, 1024):
        for c in (1, 16, 65, 2048):
            for hw in (1, 49, 196, 3136, 66_000, 2**20 + 1):
                cfg = hz.reduce_config(b, c, hw, channels_last, sms)
                assert _is_pow2(cfg.block_c) and _is_pow2(cfg.block_hw)
                assert cfg.block_c * cfg.block_hw <= max(hz.REDUCE_TILE, cfg.block_c)
                assert cfg.hw_per_split % cfg.block_hw == 0
                assert 1 <= cfg.split <= hz.MAX_HW_SPLIT
                assert (cfg.split - 1) * cfg.hw_per_split < hw <= cfg.split * cfg.hw_per_split
    # The cap itself is reached: batch 1, one channel, a huge map, many SMs.
    assert hz.reduce_config(1, 1, 2**20, False, 132).split == hz.MAX_HW_SPLIT


def test_excite_channel_splits_fill_the_sms_and_stay_capped():
    """SE-ResNet-50's last stage: batch 128 takes 8 batch blocks x 16 splits of 128 channels on 132
    SMs; batch 1 is capped at MAX_EXCITE_SPLIT_K shares; a small W1 keeps the one launch."""
    cfg = hz.excite_fwd_split_config(128, 2048, 128, torch.bfloat16, 132)
    assert (cfg.ks, cfg.ck) == (16, 128)
    assert hz.excite_fwd_split_config(1, 2048, 128, torch.bfloat16, 132).ks == hz.MAX_EXCITE_SPLIT_K
    assert hz.excite_fwd_split_config(128, 256, 16, torch.bfloat16, 132) is None
    for b, c, r in [(1, 1, 1), (3, 24, 3), (128, 2048, 128), (4096, 1024, 64), (1, 65, 65)]:
        bwd = hz.excite_bwd_config(b, c, r, torch.bfloat16, 132)
        assert 1 <= bwd.ks <= hz.MAX_EXCITE_SPLIT_K and (bwd.ks - 1) * bwd.ck < max(c, 1) <= bwd.ks * bwd.ck
        assert min(bwd.block_b, bwd.block_c, bwd.block_r, bwd.chan_block_b, bwd.chan_block_c) >= hz.MIN_DOT


def test_excite_bwd_warps_by_tile_width():
    narrow = hz.excite_bwd_config(16, 256, 32, torch.bfloat16, 132)
    wide = hz.excite_bwd_config(16, 2048, 128, torch.bfloat16, 132)
    assert narrow.chan_block_b * narrow.block_r < hz.EXCITE_BWD_WIDE_TILE and narrow.chan_num_warps == 4
    assert wide.chan_block_b * wide.block_r >= hz.EXCITE_BWD_WIDE_TILE and wide.chan_num_warps == 8


@pytest.mark.parametrize(
    "asked,stored",
    [
        ((torch.float16, None, torch.float16, torch.float16), torch.float16),  # they agree: stored in it
        ((torch.bfloat16, None, torch.float32, torch.bfloat16), torch.float32),  # they differ: the partials'
        (None, torch.float32),
    ],
    ids=["agree", "differ", "none"],
)
def test_sum_partials_stores_one_dtype_for_every_slot(asked, stored, device):
    """A GPU build of the sum needs one pointer type for all four slots (it picks a slot's at run
    time): the dtypes asked for where they agree, else the partials' own, which the op casts."""
    from fused_se.kernels import common

    parts = [
        torch.randn(5, 7, device=device),
        None,
        torch.randn(5, 3, 2, device=device),
        torch.randn(5, 1, device=device),
    ]
    with record_launches() as launched:
        outs = common.sum_partials(5, *parts, dtypes=asked)
    assert launched == ["sum_partials"] and outs[1] is None
    for out, part in zip(outs, parts, strict=False):
        if part is not None:
            assert out.dtype == stored and out.shape == part.shape[1:]
            torch.testing.assert_close(
                out, part.sum(0).to(stored), rtol=2e-3 if stored != torch.float32 else 1e-6, atol=2e-3
            )
