"""scSE (fused_se.spatial_channel_squeeze_excite, FusedSCSEModule) against the fp64 reference:
y and every gradient, both layouts, odd sizes, every dtype, ranks 3 to 5, the three dispatch
paths, the input checks and the module's state_dict."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from se_testing import assert_within_torch_error, make_input, mlp_outputs_and_grads, record_launches

import fused_se
from fused_se import _dispatch, reference

FWD = ["scse_squeeze", "excite", "scse_scale"]
BWD = ["scse_reduce_bwd", "excite_bwd", "scse_dx_bwd"]


def _passes(launched: list) -> list:
    """The launches without the sums that follow the dx pass: dw_s's span shares and db_s's program
    shares, each added up by a launch (so that the backward replays) where there are more than one."""
    i = launched.index("scse_dx_bwd") + 1 if "scse_dx_bwd" in launched else len(launched)
    assert launched[i:] in ([], ["sum_partials"], ["sum_partials", "sum_partials"]), launched
    return launched[:i]


GRAD_NAMES = ["y", "dx", "dw1", "db1", "dw2", "db2", "dws", "dbs"]
_ACTS = {"relu": torch.relu, "silu": F.silu}
_GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid}


def _params(c, hidden, device, dtype=torch.float32, bias=True):
    kw = {"device": device, "dtype": dtype}
    w1, w2 = torch.randn(hidden, c, **kw) * 2 / c**0.5, torch.randn(c, hidden, **kw) * 2 / hidden**0.5
    b1, b2 = (torch.randn(hidden, **kw), torch.randn(c, **kw)) if bias else (None, None)
    ws, bs = torch.randn(c, **kw) / c**0.5, (torch.randn(1, **kw) if bias else None)
    return [w1, b1, w2, b2, ws, bs]


def _eager(x, w1, b1, w2, b2, ws, bs, act="relu", gate="sigmoid"):
    """scSE as smp's SCSEModule computes it: every step in x's dtype, unfused."""
    w1, b1, w2, b2, ws, bs = (None if p is None else p.to(x.dtype) for p in (w1, b1, w2, b2, ws, bs))
    z = x.mean(tuple(range(2, x.dim())))
    sc = _GATES[gate](F.linear(_ACTS[act](F.linear(z, w1, b1)), w2, b2))
    q = torch.einsum("bc...,c->b...", x, ws)
    ss = torch.sigmoid(q if bs is None else q + bs.reshape(()))
    return x * sc.view(*sc.shape, *(1,) * (x.dim() - 2)) + x * ss.unsqueeze(1)


def _check_all(x, params, act="relu", gate="sigmoid"):
    """y and every gradient of the fused call within twice eager's error of the fp64 reference;
    returns the kernels launched."""
    g = torch.randn_like(x)

    def fused(x, *p):
        return fused_se.spatial_channel_squeeze_excite(x, *p, act=act, gate=gate)

    with record_launches() as launched:
        ours = mlp_outputs_and_grads(fused, x, params, g)
    ref = mlp_outputs_and_grads(
        lambda x, *p: reference.spatial_channel_squeeze_excite(x, *p, act=act, gate=gate),
        x.double(),
        [None if p is None else p.double() for p in params],
        g.double(),
    )
    own = mlp_outputs_and_grads(lambda x, *p: _eager(x, *p, act, gate), x, params, g)
    names = [n for n, p in zip(GRAD_NAMES, [x, x, *params], strict=False) if p is not None]
    assert len(ours) == len(ref) == len(own) == len(names)
    for name, o, r, e in zip(names, ours, ref, own, strict=False):
        assert_within_torch_error(name, o, e, r.to(o.dtype) if o.dtype == torch.float64 else r)
    assert ours[0].stride() == torch.empty_like(x).stride() and ours[1].stride() == ours[0].stride()
    return launched


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(
    "shape,hidden",
    [((2, 5, 3, 5), 2), ((3, 24, 1, 1), 6), ((1, 24, 1, 7), 3), ((2, 32, 6, 6), 8)],
    ids=["5ch-3x5", "24ch-1x1", "24ch-1x7", "32ch-6x6"],
)
def test_scse_matches_the_reference(shape, hidden, layout, device):
    x = make_input(shape, torch.float32, device, layout)
    launched = _check_all(x, _params(shape[1], hidden, device))
    assert _passes(launched) == FWD + BWD  # the kernels ran, not the reference


@pytest.mark.parametrize(
    "dtype,param_dtype",
    [
        (torch.float64, torch.float64),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),  # autocast's convention: fp32 parameters, 16-bit x
    ],
    ids=["fp64", "fp16", "bf16", "bf16-fp32params"],
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_scse_dtypes(dtype, param_dtype, layout, device):
    x = make_input((2, 24, 3, 5), dtype, device, layout)
    assert _passes(_check_all(x, _params(24, 6, device, param_dtype))) == FWD + BWD


@pytest.mark.parametrize("act,gate", [("silu", "hard_sigmoid"), ("relu", "hard_sigmoid"), ("silu", "sigmoid")])
def test_scse_variants_and_no_biases(act, gate, device):
    x = make_input((2, 24, 3, 5), torch.float32, device, "sliced_c")
    assert _passes(_check_all(x, _params(24, 6, device, bias=False), act, gate)) == FWD + BWD


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sequence"])
def test_scse_other_ranks(layout, device):
    if layout == "sequence":
        x = torch.randn(2, 24, 7, device=device)
    else:
        x = torch.randn(2, 24, 2, 3, 3, device=device)
        if layout == "channels_last_3d":
            x = x.to(memory_format=torch.channels_last_3d)
    assert _passes(_check_all(x, _params(24, 6, device))) == FWD + BWD


def test_scse_gradient_subsets(device):
    """Only the gradients asked for: x alone, then the spatial gate's parameters alone."""
    x = make_input((2, 24, 3, 5), torch.float32, device, "nchw")
    params = _params(24, 6, device)
    g = torch.randn_like(x)
    xr = x.double().requires_grad_()
    pr = [p.double().requires_grad_() for p in params]
    yr = reference.spatial_channel_squeeze_excite(xr, *pr)
    expected = torch.autograd.grad(yr, [xr, pr[4], pr[5]], g.double())
    xg = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(fused_se.spatial_channel_squeeze_excite(xg, *params), [xg], g)
    torch.testing.assert_close(dx.double(), expected[0], rtol=1e-5, atol=1e-5)
    ws, bs = params[4].clone().requires_grad_(), params[5].clone().requires_grad_()
    dws, dbs = torch.autograd.grad(fused_se.spatial_channel_squeeze_excite(x, *params[:4], ws, bs), [ws, bs], g)
    torch.testing.assert_close(dws.double(), expected[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dbs.double(), expected[2], rtol=1e-5, atol=1e-4)


def test_scse_twins_and_reference_paths(device, monkeypatch):
    """CPU tensors without the interpreter take the twins in torch ops through the same op;
    FUSED_SE_BACKEND=reference the plain autograd reference: neither launches a kernel."""
    if device.type != "cpu":
        pytest.skip("the twins run on the CPU")
    x = make_input((2, 24, 3, 5), torch.float32, device, "channels_last")
    params = _params(24, 6, device)
    monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    assert _check_all(x, params) == []
    monkeypatch.setenv("FUSED_SE_BACKEND", "reference")
    assert _check_all(x, params) == []


# ---- the public boundary ------------------------------------------------------------------------


def _bad(device):
    x = torch.randn(2, 8, 3, 3, device=device)
    return x, _params(8, 2, device)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda x, p: (x, [*p[:4], torch.randn(7), p[5]]), ValueError, "ws must have shape"),
        (lambda x, p: (x, [*p[:4], torch.randn(8, 1), p[5]]), ValueError, "ws must be 1-D"),
        (lambda x, p: (x, [*p[:5], torch.randn(2)]), ValueError, "bs must have shape"),
        (lambda x, p: (x, [*p[:4], p[4].double(), p[5]]), TypeError, "ws is torch.float64 but x is torch.float32"),
        (lambda x, p: (x.half(), [p[0].double(), *p[1:]]), TypeError, "w1 is torch.float64"),
        (lambda x, p: (x, [torch.randn(2, 7), *p[1:]]), ValueError, "w1 must have shape"),
        (lambda x, p: (x[:, :, 0, 0], p), ValueError, "x must be 3-D, 4-D or 5-D"),
        (lambda x, p: (x, [*p[:4], p[4].to("meta"), p[5]]), ValueError, "ws is on meta"),
    ],
    ids=["ws-size", "ws-rank", "bs-size", "ws-dtype", "w1-dtype", "w1-shape", "x-rank", "ws-device"],
)
@pytest.mark.parametrize("after", ["first", "after_good_calls"])
def test_scse_input_checks_name_the_argument(change, error, match, after, device):
    """Also after good calls of the same shapes have run and been recorded (a recorded key skips the
    checks; no bad call has one)."""
    if after == "after_good_calls":
        x, params = _bad(device)
        for grad in (False, True):
            w1 = params[0].detach().requires_grad_(grad)
            for _ in range(2):
                fused_se.spatial_channel_squeeze_excite(x, w1, *params[1:])
    x, params = change(*_bad(device))
    with record_launches() as launched, pytest.raises(error, match=match):
        fused_se.spatial_channel_squeeze_excite(x, *params)
    assert launched == []


def test_scse_act_and_gate_are_checked(device):
    x, params = _bad(device)
    with pytest.raises(ValueError, match="gate must be one of"):
        fused_se.spatial_channel_squeeze_excite(x, *params, gate="tanh")
    with pytest.raises(ValueError, match="act must be one of"):
        fused_se.spatial_channel_squeeze_excite(x, *params, act="gelu")


# ---- the module -----------------------------------------------------------------------------------


SMP_KEYS = ["cSE.1.weight", "cSE.1.bias", "cSE.3.weight", "cSE.3.bias", "sSE.0.weight", "sSE.0.bias"]


def test_scse_module_state_dict_loads_both_ways(device):
    fused = fused_se.FusedSCSEModule(32, reduction=4).to(device)
    eager = reference.SCSEModule(32, reduction=4).to(device)
    assert list(fused.state_dict()) == list(eager.state_dict()) == SMP_KEYS
    assert fused.hidden == 8 and fused.form == "scse" and isinstance(fused, fused_se.FusedSEModule)
    fused.load_state_dict(eager.state_dict())
    x = make_input((2, 32, 3, 5), torch.float64, device, "channels_last")
    fused, eager = fused.double(), eager.double()
    with record_launches() as launched:
        y = fused(x)
    assert launched == FWD
    torch.testing.assert_close(y, eager(x))
    eager.load_state_dict(fused.state_dict())


def test_scse_module_from_module_shares_the_layers(device):
    eager = reference.SCSEModule(24, reduction=4).to(device).double()
    fused = fused_se.FusedSCSEModule.from_module(eager)
    assert fused.cSE is eager.cSE and fused.sSE is eager.sSE
    assert [p is q for p, q in zip(fused.parameters(), eager.parameters(), strict=False)] == [True] * 6
    x = torch.randn(2, 24, 3, 5, device=device, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(x)
    ours = torch.autograd.grad(fused(x), [x, *eager.parameters()], g)
    theirs = torch.autograd.grad(eager(x), [x, *eager.parameters()], g)
    for a, b in zip(ours, theirs, strict=False):
        torch.testing.assert_close(a, b)


def test_scse_module_checks_its_layers():
    eager = reference.SCSEModule(24, reduction=4)
    eager.sSE[1] = torch.nn.Tanh()
    with pytest.raises(ValueError, match=r"sSE\.1 must be one of Sigmoid"):
        fused_se.FusedSCSEModule.from_module(eager)
    eager = reference.SCSEModule(24, reduction=4)
    eager.cSE[3] = torch.nn.Conv2d(6, 24, 3)
    with pytest.raises(ValueError, match=r"cSE\.3 must be a pointwise"):
        fused_se.FusedSCSEModule.from_module(eager)
    with pytest.raises(TypeError, match="cSE and sSE"):
        fused_se.FusedSCSEModule.from_module(torch.nn.ReLU())


# ---- torch.library and torch.compile ---------------------------------------------------------------


def test_scse_opcheck(device):
    from fused_se import ops_scse

    x = torch.randn(2, 8, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in _params(8, 2, device, torch.float64)]
    torch.library.opcheck(ops_scse.scse, (x, *params, "relu", "sigmoid"))


def test_scse_compile_fullgraph(device):
    torch._dynamo.reset()
    module = fused_se.FusedSCSEModule(16, 4).to(device)
    x = make_input((2, 16, 3, 5), torch.float32, device, "channels_last").requires_grad_()
    g = torch.randn_like(x)
    with record_launches() as launched:
        eager = [module(x), *torch.autograd.grad(module(x), [x, *module.parameters()], g)]
    assert launched[:3] == FWD
    compiled = torch.compile(module, fullgraph=True)
    y = compiled(x)
    ours = [y, *torch.autograd.grad(y, [x, *module.parameters()], g)]
    for o, e in zip(ours, eager, strict=False):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5)


def test_the_module_refuses_a_residual_tail_before_any_kernel_runs(device):
    m = fused_se.FusedSCSEModule(8, 2).to(device)
    x = torch.randn(2, 8, 3, 3, device=device)
    with record_launches() as launched:
        with pytest.raises(ValueError, match="no fused residual tail"):
            m(x, torch.randn_like(x), out_act="relu")
        with pytest.raises(ValueError, match="two-FC form only"):
            m(torch.randn(2, 8, 5, device=device), lengths=torch.tensor([5, 3], device=device))
    assert launched == []


def test_scse_eager_calls_take_the_plain_route_replay_and_match_the_custom_op(device):
    """scSE's plain route, as the SE ops': an autograd.Function whose forward and backward replay
    their recorded launches from the second call (the sums of dw_s's and db_s's shares are launches,
    not torch ops, so the backward replays too); a function mode makes the call take the custom op,
    with the same bits."""
    from torch.overrides import TorchFunctionMode

    from fused_se import ops_scse
    from fused_se.runtime import replay

    class PassThrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    module = fused_se.FusedSCSEModule(16, 4).to(device)
    x = make_input((2, 16, 3, 5), torch.float32, device, "channels_last").requires_grad_()
    g = torch.randn_like(x)
    leaves = [x, *module.parameters()]
    runs = []
    for mode in (None, None, PassThrough()):
        with mode if mode is not None else contextlib.nullcontext(), record_launches() as launched:
            y = module(x)
            runs.append((y.grad_fn, y, *torch.autograd.grad(y, leaves, g), launched))
    plain = type(runs[0][0]).__name__
    assert plain == "ScseBackward" and type(runs[1][0]).__name__ == plain
    assert type(runs[2][0]).__name__ != plain  # the custom op's node
    assert _passes(runs[1][-1]) == FWD + BWD and runs[1][-1] == runs[0][-1]
    for table in (ops_scse.SCSE.plain_forward.table, ops_scse.SCSE.plain_backward.table):
        assert table and all(isinstance(p, replay.Program) for p in table.values()), table
    for got in runs[1:]:
        for a, b in zip(got[1:-1], runs[0][1:-1], strict=True):
            assert torch.equal(a, b)
    # the sSE conv's weight as it is: its gradient in its own shape
    assert runs[0][2 + 5].shape == module.sSE[0].weight.shape
