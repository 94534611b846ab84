"""The public boundary: input checks, empty batches, dispatch, state_dict, gradients asked for."""

import os
import subprocess
import sys

import pytest
import torch
from se_testing import BACKWARD_KERNELS, FORWARD_KERNELS, ClassicSE, record_launches

import fused_se
from fused_se import _dispatch


def _args(device, b=2, c=16, h=5, w=5, r=4, dtype=torch.float32):
    return [
        torch.randn(b, c, h, w, device=device, dtype=dtype),
        torch.randn(r, c, device=device),
        None,
        torch.randn(c, r, device=device),
        None,
    ]


# ---- bad input: a clear error before any kernel runs ------------------------------------------


def _bad_cases(device):
    x, w1, _, w2, _ = _args(device)
    return {
        "x rank 2": ((x[0, :, :, 0], w1, None, w2, None), ValueError, "x must be 3-D, 4-D or 5-D .*got rank 2"),
        "x rank 6": ((x[None, None], w1, None, w2, None), ValueError, "x must be 3-D, 4-D or 5-D .*got rank 6"),
        "x not a tensor": ((x.tolist(), w1, None, w2, None), TypeError, "x must be a torch.Tensor"),
        "x int": ((x.long(), w1, None, w2, None), TypeError, "x must be float16"),
        "x bool": ((x > 0, w1, None, w2, None), TypeError, "x must be float16"),
        "w1 channels": ((x, w1[:, :8], None, w2, None), ValueError, "w1 must have shape"),
        "w1 rank": ((x, w1[0], None, w2, None), ValueError, r"w1 must have shape \(hidden, C\), or"),
        "w1 3x3 conv": ((x, w1[:, :, None, None].expand(-1, -1, 3, 3), None, w2, None), ValueError, "pointwise"),
        "w2 channels": ((x, w1, None, w2[:, :, None, None].expand(-1, -1, 1, 2), None), ValueError, "w2 must have"),
        "w1 int": ((x, w1.int(), None, w2, None), TypeError, "w1 must be float16"),
        "w2 shape": ((x, w1, None, w2.t(), None), ValueError, "w2 must have shape"),
        "b1 shape": ((x, w1, torch.zeros(3, device=device), w2, None), ValueError, "b1 must have shape"),
        "b2 shape": ((x, w1, None, w2, torch.zeros(15, device=device)), ValueError, "b2 must have shape"),
        "w1 device": ((x, w1.to("meta"), None, w2, None), ValueError, "w1 is on meta"),
        "b2 device": ((x, w1, None, w2, torch.zeros(16, device="meta")), ValueError, "b2 is on meta"),
        "empty HW": ((x[:, :, :0], w1, None, w2, None), ValueError, "at least one spatial position"),
    }


@pytest.mark.parametrize("case", list(_bad_cases("cpu")))
@pytest.mark.parametrize("after", ["first", "after_good_calls"])
def test_bad_input_raises_before_any_kernel(case, after, device):
    """Also after good calls have run (and been recorded for replay, with and without a gradient):
    a call whose replay key a checked call recorded skips the checks (ops.run_if_known), and no bad
    input has such a key."""
    args, exc, match = _bad_cases(device)[case]
    if after == "after_good_calls":
        x, w1, _, w2, _ = _args(device)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                fused_se.squeeze_excite(x, w1.requires_grad_(grad), None, w2, None)
                fused_se.squeeze_excite(x, w1, None, w2, None)
    with record_launches() as launched, pytest.raises(exc, match=match):
        fused_se.squeeze_excite(*args)
    assert launched == []


def test_a_call_with_a_recorded_key_skips_the_checks_and_gives_the_same_bits(device, monkeypatch):
    from fused_se import functional

    x, w1, _, w2, _ = _args(device)
    x.requires_grad_(True)
    w1.requires_grad_(True)
    checked = []
    check = functional.check_inputs
    monkeypatch.setattr(functional, "check_inputs", lambda *a: checked.append(1) or check(*a))
    ys = []
    for _ in range(3):
        with record_launches() as launched:
            y = fused_se.squeeze_excite(x, w1, None, w2, None)
            grads = torch.autograd.grad(y.sum(), [x, w1])
        assert launched == FORWARD_KERNELS + BACKWARD_KERNELS
        ys.append((y, *grads))
    assert checked == [1], "checked once: the first call, whose key the op recorded"
    assert all(torch.equal(a, b) for got in ys for a, b in zip(got, ys[0], strict=True))
    # the same signature under the reference backend takes the reference
    monkeypatch.setenv("FUSED_SE_BACKEND", "reference")
    with record_launches() as launched:
        fused_se.squeeze_excite(x, w1, None, w2, None)
    assert launched == []


@pytest.mark.parametrize(
    "kw,match", [({"act": "gelu"}, "act must be one of"), ({"gate": "tanh"}, "gate must be one of")]
)
def test_unknown_activation_names(kw, match, device):
    with pytest.raises(ValueError, match=match):
        fused_se.squeeze_excite(*_args(device), **kw)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((0,), {}, ValueError, "channel must be >= 1"),
        ((16, 0), {}, ValueError, "reduction must be between 1 and 16"),
        ((16, 32), {}, ValueError, "reduction must be between 1 and 16"),
        ((16.0,), {}, TypeError, "channel must be an int"),
        ((16,), {"rd_channels": 0}, ValueError, "rd_channels must be >= 1"),
        ((16,), {"act": "gelu"}, ValueError, "act must be one of"),
        ((16,), {"gate": "tanh"}, ValueError, "gate must be one of"),
        ((16,), {"bias": 1}, TypeError, "bias must be a bool"),
    ],
)
def test_module_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fused_se.FusedSEModule(*args, **kwargs)


# ---- empty batch -----------------------------------------------------------------------------


def test_empty_batch(device):
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(0, 16, 5, 5, device=device, requires_grad=True)
    with record_launches() as launched:
        y = m(x)
        y.sum().backward()
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS  # the Triton path, with nothing to launch
    assert y.shape == (0, 16, 5, 5) and x.grad.shape == (0, 16, 5, 5)
    for p in m.parameters():
        assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any()


# ---- dispatch --------------------------------------------------------------------------------


def test_kernels_run_by_default(device):
    with record_launches() as launched:
        fused_se.squeeze_excite(*_args(device))
    assert launched == FORWARD_KERNELS
    assert fused_se.backend_for(torch.empty(1, device=device)) == "triton"


def test_forced_reference_runs_no_kernel(device, monkeypatch):
    args = _args(device)
    fused = fused_se.squeeze_excite(*args)
    monkeypatch.setenv("FUSED_SE_BACKEND", "reference")
    with record_launches() as launched:
        ref = fused_se.squeeze_excite(*args)
    assert launched == []
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)


def test_cpu_without_interpreter_runs_the_ops_decomposed(monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    args = _args("cpu")
    assert fused_se.backend_for(args[0]) == "decomposed"
    with record_launches() as launched:
        y = fused_se.squeeze_excite(*args)
    assert launched == []
    torch.testing.assert_close(y, fused_se.reference.squeeze_excite(*args), rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("FUSED_SE_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused_se.backend_for(args[0])


def test_unknown_backend_name(monkeypatch):
    monkeypatch.setenv("FUSED_SE_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FUSED_SE_BACKEND must be one of"):
        fused_se.squeeze_excite(*_args("cpu"))


@pytest.mark.parametrize("name", ["FUSED_SE_TEST_SWITCH", "FUSED_SE_L2_BYTES"])
def test_switches_are_read_as_os_environ_holds_them(monkeypatch, name):
    """The switches' reads (fused_se.runtime.env.getenv and getenvs, which skip os.environ's
    KeyError) see every change made through os.environ, as os.environ.get does, and follow a
    replaced os.environ: for a name of the switches and for another."""
    from unittest import mock

    from fused_se.runtime.env import getenv, getenvs

    other = "FUSED_SE_CHECK_WAITS"
    monkeypatch.delenv(other, raising=False)

    def read(expected):
        assert getenv(name) == expected == os.environ.get(name)
        assert getenvs((name, other, name)) == (expected, None, expected)

    monkeypatch.delenv(name, raising=False)
    read(None)
    monkeypatch.setenv(name, "reference")
    read("reference")
    os.environ[name] = "tr\u00efton"  # decoded as os.environ decodes it
    read("tr\u00efton")
    with mock.patch.dict(os.environ, {name: "auto"}):
        read("auto")
    read("tr\u00efton")
    del os.environ[name]
    read(None)
    monkeypatch.setattr(os, "environ", {name: "replaced"})
    read("replaced")
    assert getenv("FUSED_SE_BACKEND") is None


def test_the_switches_state_changes_exactly_when_a_switch_does(monkeypatch):
    """state_reader (the replay signatures' view of the switches) is () where none of its names
    is set, and otherwise equals an earlier reading exactly when each name is set as it was then:
    through os.environ, mock.patch.dict, and a replaced os.environ."""
    from unittest import mock

    from fused_se.runtime.env import state_reader

    names = ("FUSED_SE_TEST_SWITCH", "FUSED_SE_L2_BYTES")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    read = state_reader(names)
    assert read() == ()
    monkeypatch.setenv("FUSED_SE_L2_BYTES", "1000")
    first = read()
    assert first != () and read() == first
    monkeypatch.setenv("FUSED_SE_L2_BYTES", "2000")
    assert read() not in ((), first)
    monkeypatch.setenv("FUSED_SE_L2_BYTES", "1000")
    assert read() == first
    with mock.patch.dict(os.environ, {"FUSED_SE_TEST_SWITCH": "x"}):
        assert read() not in ((), first)
    assert read() == first
    monkeypatch.delenv("FUSED_SE_L2_BYTES")
    monkeypatch.setenv("FUSED_SE_OTHER_SWITCH", "1")  # not one of the names
    assert read() == ()
    monkeypatch.setattr(os, "environ", {"FUSED_SE_TEST_SWITCH": "replaced"})
    assert read() not in ((), first)
    monkeypatch.setattr(os, "environ", {})
    assert read() == ()


# ---- the module as a drop-in ------------------------------------------------------------------


def test_state_dict_loads_both_ways(device):
    classic, fused = ClassicSE(64, 16).to(device), fused_se.FusedSEModule(64, 16).to(device)
    assert list(fused.state_dict()) == list(classic.state_dict()) == ["fc.0.weight", "fc.2.weight"]
    fused.load_state_dict(classic.state_dict())
    x = torch.randn(2, 64, 7, 7, device=device)
    torch.testing.assert_close(fused(x), classic(x), rtol=1e-5, atol=1e-6)
    other = fused_se.FusedSEModule(64, 16).to(device)
    classic.load_state_dict(other.state_dict())
    torch.testing.assert_close(other(x), classic(x), rtol=1e-5, atol=1e-6)


def test_repr():
    text = repr(fused_se.FusedSEModule(256, 16))
    assert text.startswith("FusedSEModule(\n  channel=256, reduction=16, hidden=16, act=relu, gate=sigmoid")
    assert "(fc): Sequential" in text


# ---- gradients that were asked for, and only those ---------------------------------------------


def test_frozen_weights_get_no_grad(device):
    m = fused_se.FusedSEModule(16, 4).to(device).requires_grad_(False)
    x = torch.randn(2, 16, 5, 5, device=device, requires_grad=True)
    with record_launches() as launched:
        m(x).sum().backward()
    assert launched == FORWARD_KERNELS + BACKWARD_KERNELS
    assert x.grad is not None and all(p.grad is None for p in m.parameters())
    m_ref = fused_se.FusedSEModule(16, 4).to(device)
    m_ref.load_state_dict(m.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    m_ref(x_ref).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)


def test_input_without_grad(device):
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(2, 16, 5, 5, device=device)
    with record_launches() as launched:
        m(x).sum().backward()
    assert launched == [*FORWARD_KERNELS, "scale_bwd", "excite_bwd"]  # no dx pass
    assert all(p.grad is not None for p in m.parameters())


def test_no_grad_saves_nothing(device):
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(2, 16, 5, 5, device=device, requires_grad=True)
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = m(x)
    assert saved == [] and not y.requires_grad


def test_import_does_not_import_triton():
    """TRITON_INTERPRET must still take effect when set after `import fused_se`."""
    code = "import sys, fused_se; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ), cwd=os.path.dirname(__file__))


@pytest.mark.parametrize(
    "make,channels_last",
    [
        (lambda b, c, h, w: torch.randn(b, h, c, w).permute(0, 2, 1, 3), False),  # dense, but (B, H, C, W) in memory
        (lambda b, c, h, w: torch.randn(b, w, h, c).permute(0, 3, 2, 1), True),  # dense, (B, W, H, C) in memory
        (lambda b, c, h, w: torch.randn(b, h, w + 1, c)[:, :, 1:].permute(0, 3, 1, 2), True),  # a channels_last W slice
    ],
    ids=["bhcw", "bwhc", "sliced_channels_last"],
)
def test_other_layouts_are_copied_once_into_a_native_one(make, channels_last, device):
    x = make(3, 24, 5, 7).to(device)
    assert fused_se.kernels.bchw_strides(x) is None
    args = [x, *_args(device, c=24)[1:]]
    with record_launches() as launched:
        y = fused_se.squeeze_excite(*args)
    assert launched == FORWARD_KERNELS
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(y, fused_se.reference.squeeze_excite(*args), rtol=1e-5, atol=1e-6)


def test_ese_and_eca_check_a_bad_call_after_good_ones(device):
    """The known-key route of the other forms: what a recorded key cannot tell apart (an int 1 for
    circular=True, equal and of equal hash) is still checked."""
    x = torch.randn(2, 16, 3, 3, device=device)
    w_fc, w_taps = torch.randn(16, 16, 1, 1, device=device), torch.randn(1, 1, 3, device=device)
    for _ in range(2):
        fused_se.effective_squeeze_excite(x, w_fc)
        fused_se.efficient_channel_attention(x, w_taps, circular=True)
    with record_launches() as launched:
        with pytest.raises(TypeError, match=r"w is torch\.float64 but x is torch\.float32"):
            fused_se.effective_squeeze_excite(x, w_fc.double())
        with pytest.raises(TypeError, match="circular must be a bool"):
            fused_se.efficient_channel_attention(x, w_taps, circular=1)
        with pytest.raises(ValueError, match="odd number of taps"):
            fused_se.efficient_channel_attention(x, torch.randn(1, 1, 4, device=device), circular=True)
    assert launched == []
