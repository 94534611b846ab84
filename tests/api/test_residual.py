"""The residual-block tail fused into the SE's scale pass: out = act(x * s * d + shortcut).

The functional epilogue against the unfused computation in the same dtype (the 2x-error rule),
for every excitation form, both output activations, with and without drop-path's factor, and
every dtype and layout; then timm SE-ResNets converted with fuse_residual=True against the
original models, in eval and train mode (drop-path masks drawn alike).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from se_testing import (
    FORM_KERNELS,
    assert_within_torch_error,
    eager_variant,
    excite_bwd_launches,
    make_input,
    make_variant_params,
    randomize_norms,
    record_launches,
)
from torch import nn

import fused_se
from fused_se import _dispatch, tails

# (form, act, gate, bias, circular)
FORMS = [
    ("mlp", "relu", "sigmoid", False, False),
    ("fc", None, "hard_sigmoid", True, False),
    ("conv", None, "sigmoid", False, True),
]
B, C, H, W, HIDDEN, K = 3, 20, 5, 7, 5, 3


def _tail_fn(form, act, gate, circular, out_act, sample_scale):
    def fused(x, residual, params):
        kw = {"residual": residual, "out_act": out_act, "sample_scale": sample_scale}
        if form == "mlp":
            return fused_se.squeeze_excite(x, *params, act=act, gate=gate, **kw)
        if form == "fc":
            return fused_se.effective_squeeze_excite(x, *params, gate=gate, **kw)
        return fused_se.efficient_channel_attention(x, *params, circular=circular, gate=gate, **kw)

    def unfused(x, residual, params):
        y = eager_variant(x, form, params, act, gate, circular)
        if sample_scale is not None:
            y = y * sample_scale.to(y.dtype)[:, None, None, None]
        y = y + residual
        return torch.relu(y) if out_act == "relu" else y

    return fused, unfused


def _grads(fn, x, residual, params, g):
    x = x.detach().clone().requires_grad_()
    residual = residual.detach().clone().requires_grad_()
    leaves = [p.detach().clone().requires_grad_() for p in params if p is not None]
    it = iter(leaves)
    full = [next(it) if p is not None else None for p in params]
    y = fn(x, residual, full)
    return [y.detach(), *torch.autograd.grad(y, [x, residual, *leaves], g)]


def _check(form_spec, out_act, drop, dtype, x_layout, r_layout, device, path="triton"):
    form, act, gate, bias, circular = form_spec
    # fp32 parameters with a 16-bit x (autocast's convention); x's own dtype otherwise
    p_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    params = make_variant_params(form, C, HIDDEN, K, bias, device, p_dtype)
    x = make_input((B, C, H, W), dtype, device, x_layout) * 2
    residual = make_input((B, C, H, W), dtype, device, r_layout)
    g = torch.randn(B, C, H, W, dtype=dtype, device=device)
    sample_scale = torch.tensor([1.25, 0.0, 1.25], dtype=dtype, device=device) if drop else None
    fused, unfused = _tail_fn(form, act, gate, circular, out_act, sample_scale)
    with record_launches() as launched:
        ours = _grads(fused, x, residual, params, g)
    kernel = FORM_KERNELS[form]
    expected = ["squeeze", kernel, "scale", "scale_bwd", *excite_bwd_launches(form, B), "squeeze_scale_bwd"]
    assert launched == (expected if path == "triton" else []), f"the {path} path did not run"
    own = _grads(unfused, x, residual, params, g)
    s64 = None if sample_scale is None else sample_scale.double()
    _, unfused64 = _tail_fn(form, act, gate, circular, out_act, s64)
    ref64 = _grads(
        unfused64, x.double(), residual.double(), [p.double() if p is not None else None for p in params], g.double()
    )
    assert ours[0].dtype == dtype
    if x_layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
    names = ["out", "dx", "dshortcut"] + [f"dw{i}" for i in range(len(ours) - 3)]
    for name, o, t, r in zip(names, ours, own, ref64, strict=False):
        assert_within_torch_error(name, o, t.to(o.dtype), r)
    return ours


def _form_id(f):
    return f[0]


@pytest.mark.parametrize("drop", [False, True], ids=["no-drop", "drop-path"])
@pytest.mark.parametrize("out_act", ["identity", "relu"])
@pytest.mark.parametrize("form", FORMS, ids=_form_id)
def test_epilogue_fp32(form, out_act, drop, device):
    _check(form, out_act, drop, torch.float32, "nchw", "nchw", device)


@pytest.mark.parametrize(
    "layouts", [("channels_last", "channels_last"), ("channels_last", "nchw"), ("nchw", "sliced_c")]
)
@pytest.mark.parametrize("out_act", ["identity", "relu"])
def test_epilogue_layouts(out_act, layouts, device):
    _check(FORMS[0], out_act, True, torch.float32, *layouts, device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
@pytest.mark.parametrize("out_act", ["identity", "relu"])
def test_epilogue_dtypes(out_act, dtype, device):
    _check(FORMS[0], out_act, True, dtype, "channels_last", "channels_last", device)


@pytest.mark.parametrize("out_act", ["identity", "relu"])
@pytest.mark.parametrize("form", FORMS, ids=_form_id)
def test_epilogue_decomposed(form, out_act, monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    cpu = torch.device("cpu")
    _check(form, out_act, True, torch.float32, "channels_last", "nchw", cpu, path="decomposed")
    _check(form, out_act, False, torch.bfloat16, "nchw", "nchw", cpu, path="decomposed")


def test_epilogue_gradcheck_fp64(device):
    params = make_variant_params("mlp", 6, 2, 1, True, device, torch.float64)
    x = torch.randn(2, 6, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    residual = torch.randn(2, 6, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    d = torch.tensor([2.0, 0.5], dtype=torch.float64, device=device)
    weights = [p.requires_grad_() for p in params]

    def fn(x, residual, *w):
        return fused_se.squeeze_excite(x, *w, act="silu", residual=residual, out_act="relu", sample_scale=d)

    with record_launches() as launched:
        assert torch.autograd.gradcheck(fn, (x, residual, *weights), eps=1e-6, atol=1e-5, fast_mode=True)
    assert "scale_bwd" in launched


def test_identity_tail_passes_dy_to_the_shortcut():
    x, residual = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3, requires_grad=True)
    w1, w2 = torch.randn(2, 8), torch.randn(8, 2)
    y = fused_se.squeeze_excite(x, w1, None, w2, residual=residual)
    g = torch.randn_like(y)
    (dr,) = torch.autograd.grad(y, residual, g)
    assert torch.equal(dr, g)


@pytest.mark.parametrize("out_act", ["identity", "relu"])
def test_saved_for_backward(out_act):
    """x, and the output only where a ReLU's mask needs it; the rest is O(B * C)."""
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    residual = torch.randn(2, 8, 3, 3, requires_grad=True)
    w1, w2 = torch.randn(2, 8, requires_grad=True), torch.randn(8, 2, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fused_se.squeeze_excite(x, w1, None, w2, residual=residual, out_act=out_act)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == (2 if out_act == "relu" else 1)
    assert any(t.data_ptr() == x.data_ptr() for t in big)
    if out_act == "relu":
        assert any(t.data_ptr() == y.data_ptr() for t in big)
    assert all(t.numel() <= 2 * 8 for t in saved if t.numel() != x.numel())  # (B, C) values and the weights


@pytest.mark.parametrize(("shortcut_grad", "allocated"), [(False, 1), (True, 2)])
def test_relu_tail_backward_writes_only_the_gradients(shortcut_grad, allocated, device, monkeypatch):
    """Through the ReLU the backward allocates nothing of x's size but dx, and the shortcut's
    gradient where it needs one (the dx pass then reads it instead of dy and the mask)."""
    from fused_se.kernels import passes

    x = torch.randn(2, 8, 3, 3, device=device, requires_grad=True)
    residual = torch.randn(2, 8, 3, 3, device=device, requires_grad=shortcut_grad)
    w1, w2 = torch.randn(2, 8, device=device), torch.randn(8, 2, device=device)
    y = fused_se.squeeze_excite(x, w1, None, w2, residual=residual, out_act="relu")
    g = torch.randn_like(y)
    sizes = []
    empty_like = passes.empty_like
    monkeypatch.setattr(passes, "empty_like", lambda t: sizes.append(t.numel()) or empty_like(t))
    wrt = [x, residual] if shortcut_grad else [x]
    with record_launches() as launched:
        grads = torch.autograd.grad(y, wrt, g)
    assert launched == ["scale_bwd", "excite_bwd", "squeeze_scale_bwd"]
    assert sizes.count(x.numel()) == allocated
    ref = fused_se.reference
    xr, rr = x.detach().clone().requires_grad_(), residual.detach().clone().requires_grad_(shortcut_grad)
    y_ref = ref.squeeze_excite(xr, w1, None, w2, residual=rr, out_act="relu")
    for got, want in zip(grads, torch.autograd.grad(y_ref, [xr, rr] if shortcut_grad else [xr], g), strict=False):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"residual": torch.randn(2, 8, 3, 4)}, ValueError, "residual must have x's shape"),
        ({"residual": torch.randn(2, 8, 3, 3, dtype=torch.float64)}, TypeError, "residual must have x's dtype"),
        ({"residual": [1.0]}, TypeError, "residual must be a torch.Tensor"),
        ({"out_act": "gelu"}, ValueError, "out_act must be one of"),
        ({"sample_scale": torch.ones(3)}, ValueError, r"sample_scale must have shape \(B,\)"),
        ({"sample_scale": torch.ones(2, 1)}, ValueError, "sample_scale must be 1-D"),
        ({"sample_scale": torch.ones(2, requires_grad=True)}, ValueError, "not differentiable"),
        ({"residual": torch.randn(2, 8, 3, 3, device="meta")}, ValueError, "residual is on meta"),
    ],
)
@pytest.mark.parametrize("after", ["first", "after_good_calls"])
def test_epilogue_errors(kwargs, error, match, after):
    """Also after good tails of the same shapes have run and been recorded (a recorded key skips
    the checks: ops.run_if_known; no bad tail has such a key)."""
    x = torch.randn(2, 8, 3, 3)
    if after == "after_good_calls":
        tails = [
            {"residual": torch.randn(2, 8, 3, 3), "out_act": "relu"},
            {"residual": torch.randn(2, 8, 3, 3), "sample_scale": torch.ones(2)},
            {"sample_scale": torch.ones(2)},
        ]
        for tail in tails:
            for grad in (False, True):
                w1 = torch.randn(2, 8, requires_grad=grad)
                for _ in range(2):
                    fused_se.squeeze_excite(x, w1, None, torch.randn(8, 2), **tail)
    with record_launches() as launched, pytest.raises(error, match=match):
        fused_se.squeeze_excite(x, torch.randn(2, 8), None, torch.randn(8, 2), **kwargs)
    assert launched == []


# ---- converted timm SE-ResNets ---------------------------------------------------------------

timm = pytest.importorskip("timm")


def _forward_backward(model: nn.Module, x: torch.Tensor, seed: int = 1234):
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)  # the same drop-path masks on both sides in train mode
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype).to(y.device)
    names, params = zip(*model.named_parameters(), strict=False)
    grads = torch.autograd.grad(y, [x, *params], g)
    return y.detach(), dict(zip(["input", *names], grads, strict=False))


@pytest.mark.parametrize(("name", "size"), [("seresnet18", 32), ("seresnext26d_32x4d", 16)])
def test_converted_se_resnet_with_fused_tails(name, size, device):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.3)
    randomize_norms(model)
    model.double().to(device)
    original = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = [n for n, m in model.named_modules() if type(m).__name__ in ("Bottleneck", "BasicBlock")]

    model, report = fused_se.convert(model, fuse_residual=True, return_report=True)
    assert [r.name for r in report.tails_fused] == blocks and not report.tails_skipped, str(report)
    assert "tail fused" in str(report)
    assert all(tails.is_installed(model.get_submodule(n)) for n in blocks)
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)

    x = torch.randn(4, 3, size, size, dtype=torch.float64, device=device)
    for train in (False, True):
        model.train(train)
        original.train(train)
        with record_launches() as launched:
            y, grads = _forward_backward(model, x)
        assert launched.count("scale") == len(blocks) and launched.count("squeeze_scale_bwd") == len(blocks)
        y_ref, grads_ref = _forward_backward(original, x)
        for what, got, want in [("output", y, y_ref)] + [(k, grads[k], grads_ref[k]) for k in grads_ref]:
            err = (got - want).abs().max().item()
            assert err <= 1e-9 * max(1.0, want.abs().max().item()), f"{what} (train={train}): error {err:.3g}"
    # drop-path really drops here: another draw gives another output (on a deep copy, whose
    # tails are its own, so that the model's batch-norm statistics stay in step with the original's)
    probe = copy.deepcopy(model)
    assert all(probe.get_submodule(n).forward.args[0] is probe.get_submodule(n) for n in blocks)
    torch.manual_seed(99)
    with torch.no_grad():
        assert not torch.allclose(probe(x), y)

    clone = pickle.loads(pickle.dumps(model))
    assert all(tails.is_installed(clone.get_submodule(n)) for n in blocks)
    assert clone.get_submodule(blocks[0]).forward.args[0] is clone.get_submodule(blocks[0])

    assert fused_se.revert(model) is model
    assert not any(tails.is_installed(m) for m in model.modules())
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    model.eval()
    original.eval()
    with torch.no_grad(), record_launches() as launched:
        torch.testing.assert_close(model(x), original(x), rtol=1e-12, atol=1e-12)
    assert launched == []


def test_tails_left_alone_are_reported():
    model = timm.create_model("seresnet18", num_classes=10)
    model.layer1[0].act2 = nn.GELU()
    model.layer1[1].drop_path = nn.Dropout(0.1)
    model.layer2[0].se = nn.Sequential(nn.BatchNorm2d(128))  # not an SE block convert knows
    model, report = fused_se.convert(model, fuse_residual=True, return_report=True)
    reasons = {s.name: s.reason for s in report.tails_skipped}
    assert "GELU" in reasons["layer1.0"] and "is not ReLU or Identity" in reasons["layer1.0"]
    assert "Dropout" in reasons["layer1.1"] and "DropPath" in reasons["layer1.1"]
    assert "was not fused" in reasons["layer2.0"]
    assert len(report.tails_fused) == 5
    for name in reasons:
        assert not tails.is_installed(model.get_submodule(name))
    # converting again neither fuses a tail twice nor reports the fused ones again
    _, again = fused_se.convert(model, fuse_residual=True, return_report=True)
    assert again.tails_fused == [] and len(again.tails_skipped) == 3
    with pytest.raises(TypeError, match="fuse_residual must be a bool"):
        fused_se.convert(model, fuse_residual="yes")


def test_without_fuse_residual_no_tail_changes():
    model = fused_se.convert(timm.create_model("seresnet18", num_classes=10))
    assert not any(tails.is_installed(m) for m in model.modules())
