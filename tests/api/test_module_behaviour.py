"""The fused modules behave as nn.Modules do: copies, pickling, state_dicts, dtype and memory
format conversions, frozen weights, no_grad and inference_mode, train and eval, parameters.

Each behaviour is checked on FusedSEModule and on the other fused classes against the eager
block they stand for, and where it makes sense on a small converted timm model. Every forward
that claims the kernels ran asserts their launches.
"""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import timm
import torch
from se_testing import FORM_KERNELS, assert_within_torch_error, excite_bwd_launches, record_launches
from timm.layers.eca import EcaModule
from timm.layers.squeeze_excite import EffectiveSEModule
from timm.layers.squeeze_excite import SEModule as TimmSEModule
from torch import nn

import fused_se
import fused_se.kernels
from fused_se import reference

# CPU tensors here run the kernels through the Triton interpreter, which the suite turns on only
# where there is no CUDA device; on a GPU machine tests/gpu/test_gpu_integration.py covers the ops.
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="CPU tests through the Triton interpreter (on only without CUDA); see tests/gpu/test_gpu_integration.py",
)

SHAPE = (2, 16, 5, 5)

# name: (fused block, the eager block it stands for, excitation form)
CASES = {
    "se": (lambda: fused_se.FusedSEModule(16, 4), lambda: reference.SEModule(16, 4), "mlp"),
    "conv2d-se": (
        lambda: fused_se.FusedConv2dSEModule(16, 4, act="silu", gate="hard_sigmoid"),
        lambda: TimmSEModule(16, rd_channels=4, act_layer=nn.SiLU, gate_layer="hard_sigmoid"),
        "mlp",
    ),
    "ese": (lambda: fused_se.FusedEffectiveSEModule(16), lambda: EffectiveSEModule(16), "fc"),
    "eca": (lambda: fused_se.FusedEcaModule(3), lambda: EcaModule(kernel_size=3), "conv"),
}

# The backward launcher of each excitation form, as the ops call it: fused_se.kernels.<name>.
BACKWARD_LAUNCHERS = {"mlp": "excite_bwd", "fc": "excite_fc_bwd", "conv": "excite_conv_bwd"}

BWD_LAUNCHES = {form: ["scale_bwd", *excite_bwd_launches(form, SHAPE[0]), "squeeze_scale_bwd"] for form in FORM_KERNELS}


def fwd_launches(form: str) -> list[str]:
    return ["squeeze", FORM_KERNELS[form], "scale"]


def make_pair(case: str) -> tuple[nn.Module, nn.Module, str]:
    """The fused block and its eager counterpart holding the same (randomised) values."""
    make_fused, make_eager, form = CASES[case]
    fused, eager = make_fused(), make_eager()
    with torch.no_grad():
        for p in fused.parameters():  # away from the default init, biases and ECA's taps included
            p.copy_(torch.randn_like(p) * 0.5)
    eager.load_state_dict(fused.state_dict())
    return fused, eager, form


def forward_and_grads(module: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """The output, the input gradient and the parameters' gradients of one forward and backward."""
    module.zero_grad()
    x = x.detach().requires_grad_()
    y = module(x)
    y.backward(g)
    return y.detach(), x.grad, [p.grad for p in module.parameters()]


def fused_blocks(model: nn.Module) -> list[fused_se.FusedSEModule]:
    return [m for m in model.modules() if isinstance(m, fused_se.FusedSEModule)]


def convert_checked(model: nn.Module) -> nn.Module:
    model, report = fused_se.convert(model, return_report=True)
    assert fused_blocks(model), f"convert replaced nothing:\n{report}"
    return model


IMAGE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def mobilenet():
    """A converted MobileNetV3 (conv_reduce / conv_expand SE blocks, hard sigmoid gates) in eval
    mode, an input image and its output; small enough for the interpreter at 32x32."""
    torch.manual_seed(0)
    model = convert_checked(timm.create_model("mobilenetv3_small_050", pretrained=False).eval())
    x = torch.randn(IMAGE)
    with record_launches() as launched:
        y = model(x)
    assert len(launched) == 3 * len(fused_blocks(model))
    return model, x, y


# ---- copies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_deepcopy_is_independent(case):
    fused, _, form = make_pair(case)
    clone = copy.deepcopy(fused)
    assert type(clone) is type(fused) and repr(clone) == repr(fused)
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in fused.named_parameters()]
    for p, q in zip(fused.parameters(), clone.parameters(), strict=False):
        assert q is not p and q.data_ptr() != p.data_ptr()
        assert torch.equal(q, p)
    x, g = torch.randn(SHAPE), torch.randn(SHAPE)
    with record_launches() as launched:
        y, dx, grads = forward_and_grads(fused, x, g)
        y_clone, dx_clone, grads_clone = forward_and_grads(clone, x, g)
    assert launched == 2 * (fwd_launches(form) + BWD_LAUNCHES[form])
    assert torch.equal(y_clone, y) and torch.equal(dx_clone, dx)
    for dp, dq in zip(grads, grads_clone, strict=False):
        assert torch.equal(dq, dp)
    # Changing the copy leaves the original alone.
    with torch.no_grad():
        for q in clone.parameters():
            q.add_(1.0)
    assert torch.equal(fused(x), y)
    assert not torch.equal(clone(x), y)


@pytest.mark.parametrize("case", list(CASES))
def test_pickle_round_trip(case):
    fused, _, form = make_pair(case)
    loaded = pickle.loads(pickle.dumps(fused))
    assert type(loaded) is type(fused) and repr(loaded) == repr(fused)
    assert (loaded.channel, loaded.hidden, loaded.act, loaded.gate) == (
        fused.channel,
        fused.hidden,
        fused.act,
        fused.gate,
    )
    for (n, p), (m, q) in zip(fused.named_parameters(), loaded.named_parameters(), strict=False):
        assert m == n and torch.equal(q, p) and q.requires_grad
    x = torch.randn(SHAPE)
    with record_launches() as launched:
        y_loaded = loaded(x)
    assert launched == fwd_launches(form)
    assert torch.equal(y_loaded, fused(x))


def test_pickle_and_deepcopy_of_a_converted_model(mobilenet):
    mobilenet, x, y = mobilenet
    n_blocks = len(fused_blocks(mobilenet))
    for restored in (pickle.loads(pickle.dumps(mobilenet)), copy.deepcopy(mobilenet)):
        assert [type(m) for m in fused_blocks(restored)] == [type(m) for m in fused_blocks(mobilenet)]
        assert list(restored.state_dict()) == list(mobilenet.state_dict())
        with record_launches() as launched:
            y_restored = restored(x)
        assert len(launched) == 3 * n_blocks
        assert torch.equal(y_restored, y)


# ---- state_dict --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip(case):
    fused, eager, form = make_pair(case)
    make_fused, make_eager, _ = CASES[case]
    x = torch.randn(SHAPE)
    with record_launches() as launched:
        y = fused(x)
    assert launched == fwd_launches(form)
    torch.testing.assert_close(y, eager(x), rtol=1e-5, atol=1e-6)

    # Into a fresh fused block and into a fresh eager block, strictly: no key missing or left over.
    fresh_fused, fresh_eager = make_fused(), make_eager()
    assert not any(fresh_fused.load_state_dict(fused.state_dict(), strict=True))
    assert not any(fresh_eager.load_state_dict(fused.state_dict(), strict=True))
    assert torch.equal(fresh_fused(x), y)
    torch.testing.assert_close(fresh_eager(x), y, rtol=1e-5, atol=1e-6)

    # And back: the eager block's state_dict into a fresh fused block.
    back = make_fused()
    assert not any(back.load_state_dict(fresh_eager.state_dict(), strict=True))
    assert torch.equal(back(x), y)


def test_state_dict_strict_loading_rejects_other_layouts():
    """Strict loading compares the real keys: a block with biases does not take a bias-less
    state_dict, and the classic block does not take an extra bias."""
    with_bias = fused_se.FusedSEModule(16, 4, bias=True)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*fc\.0\.bias"):
        with_bias.load_state_dict(reference.SEModule(16, 4).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*fc\.0\.bias"):
        reference.SEModule(16, 4).load_state_dict(with_bias.state_dict(), strict=True)


def test_state_dict_of_a_converted_model_loads_both_ways(mobilenet):
    """The converted model's state_dict loads strictly into the timm model and the timm model's
    into a converted one; both compute the same output."""
    mobilenet, x, y_mobilenet = mobilenet
    eager = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    assert not any(eager.load_state_dict(mobilenet.state_dict(), strict=True))
    converted = convert_checked(timm.create_model("mobilenetv3_small_050", pretrained=False).eval())
    assert not any(converted.load_state_dict(eager.state_dict(), strict=True))
    with record_launches() as launched:
        y = converted(x)
    assert len(launched) == 3 * len(fused_blocks(converted))
    torch.testing.assert_close(y, eager(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(y, y_mobilenet)


# ---- dtypes and memory formats -----------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_to_float64(case):
    fused, eager, form = make_pair(case)
    fused, eager = fused.to(torch.float64), eager.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in fused.parameters())
    x, g = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    with record_launches() as launched:
        y, dx, grads = forward_and_grads(fused, x, g)
    assert launched == fwd_launches(form) + BWD_LAUNCHES[form]
    y_ref, dx_ref, grads_ref = forward_and_grads(eager, x, g)
    assert y.dtype == dx.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-12)
    for dp, dp_ref in zip(grads, grads_ref, strict=False):
        assert dp.dtype == torch.float64
        torch.testing.assert_close(dp, dp_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["half", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_half_and_bfloat16(case, method):
    """module.half() / .bfloat16() with an input of that dtype: the output and every gradient
    in that dtype, within twice the error of the eager block in that dtype (against fp64)."""
    fused, eager, form = make_pair(case)
    eager64 = copy.deepcopy(eager).to(torch.float64)
    fused, eager = getattr(fused, method)(), getattr(eager, method)()
    dtype = next(fused.parameters()).dtype
    assert dtype == {"half": torch.float16, "bfloat16": torch.bfloat16}[method]
    x, g = torch.randn(SHAPE, dtype=dtype), torch.randn(SHAPE, dtype=dtype)
    with record_launches() as launched:
        y, dx, grads = forward_and_grads(fused, x, g)
    assert launched == fwd_launches(form) + BWD_LAUNCHES[form]
    y_own, dx_own, grads_own = forward_and_grads(eager, x, g)
    y64, dx64, grads64 = forward_and_grads(eager64, x.double(), g.double())
    assert y.dtype == dx.dtype == dtype
    assert_within_torch_error("y", y, y_own, y64)
    assert_within_torch_error("dx", dx, dx_own, dx64)
    names = [n for n, _ in fused.named_parameters()]
    for name, dp, dp_own, dp64 in zip(names, grads, grads_own, grads64, strict=False):
        assert dp.dtype == dtype, name
        assert_within_torch_error(name, dp, dp_own, dp64)


def test_channels_last_converted_model():
    """model.to(memory_format=torch.channels_last): the output matches the eager model's, and
    every SE block keeps its channels_last input's strides."""
    torch.manual_seed(0)
    eager = timm.create_model("seresnet18", pretrained=False).eval()
    model = convert_checked(copy.deepcopy(eager)).to(memory_format=torch.channels_last)
    strides = []

    def keep_strides(module, inputs, output):
        strides.append((inputs[0].is_contiguous(memory_format=torch.channels_last), output))

    handles = [m.register_forward_hook(keep_strides) for m in fused_blocks(model)]
    x = torch.randn(IMAGE).to(memory_format=torch.channels_last)
    x_model, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    with record_launches() as launched:
        y = model(x_model)
        y.sum().backward()
    for h in handles:
        h.remove()
    n_blocks = len(fused_blocks(model))
    assert launched.count("scale") == launched.count("squeeze_scale_bwd") == n_blocks
    assert len(strides) == n_blocks
    for input_cl, out in strides:
        assert input_cl, "the SE block's input is not channels_last: the test shows nothing"
        assert out.is_contiguous(memory_format=torch.channels_last), f"SE output strides {out.stride()}"
    # At least one block where channels_last and NCHW differ (H * W > 1), so the check bites.
    assert any(not out.is_contiguous() for _, out in strides)
    y_eager = eager(x_eager)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_model.grad, x_eager.grad, rtol=1e-4, atol=1e-5)


# ---- frozen weights ----------------------------------------------------------------------------


def spy_on_backward_launcher(monkeypatch, form: str) -> list[tuple[bool, ...]]:
    """Wraps the excitation's backward launcher; returns the list of `need` flags it is given."""
    name = BACKWARD_LAUNCHERS[form]
    launcher = getattr(fused_se.kernels, name)
    signature = inspect.signature(launcher)
    seen = []

    def spy(*args, **kwargs):
        seen.append(tuple(signature.bind(*args, **kwargs).arguments["need"]))
        return launcher(*args, **kwargs)

    monkeypatch.setattr(fused_se.kernels, name, spy)
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_frozen_se_weights(case, monkeypatch):
    """requires_grad_(False) on the block: x still gets its gradient, no weight gradient is
    computed (the kernel is asked for dz only) and every .grad stays None."""
    fused, eager, form = make_pair(case)
    fused.requires_grad_(False)
    eager.requires_grad_(False)
    need = spy_on_backward_launcher(monkeypatch, form)
    x, g = torch.randn(SHAPE), torch.randn(SHAPE)
    with record_launches() as launched:
        y, dx, grads = forward_and_grads(fused, x, g)
    frozen = ["scale_bwd", *excite_bwd_launches(form, SHAPE[0], weight_grads=False), "squeeze_scale_bwd"]
    assert launched == fwd_launches(form) + frozen  # no weight gradient: no partials to add up
    n_flags = 5 if form == "mlp" else 3
    assert need == [(True,) + (False,) * (n_flags - 1)]
    assert all(dp is None for dp in grads)
    y_ref, dx_ref, _ = forward_and_grads(eager, x, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)


def test_first_layer_frozen(monkeypatch):
    """Freezing only the reducing conv: its weight and bias get no gradient and the kernel is not
    asked for them; the expanding conv's gradients still match eager."""
    fused, eager, form = make_pair("conv2d-se")
    fused.fc1.requires_grad_(False)
    eager.fc1.requires_grad_(False)
    need = spy_on_backward_launcher(monkeypatch, form)
    x, g = torch.randn(SHAPE), torch.randn(SHAPE)
    with record_launches() as launched:
        _, dx, _ = forward_and_grads(fused, x, g)
    assert launched == fwd_launches(form) + BWD_LAUNCHES[form]
    assert need == [(True, False, False, True, True)]
    assert fused.fc1.weight.grad is None and fused.fc1.bias.grad is None
    _, dx_ref, _ = forward_and_grads(eager, x, g)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.fc2.weight.grad, eager.fc2.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.fc2.bias.grad, eager.fc2.bias.grad, rtol=1e-5, atol=1e-6)


# ---- no_grad and inference_mode ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("case", ["se", "eca"])
def test_no_grad_and_inference_mode(case, mode):
    """Under no_grad and inference_mode the kernels run and nothing is saved for backward; with
    grad enabled (the control) the same hook sees the saved tensors."""
    fused, eager, form = make_pair(case)
    x = torch.randn(SHAPE, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    with context(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), record_launches() as launched:
        y = fused(x)
    assert launched == fwd_launches(form)
    if mode == "grad":
        assert y.grad_fn is not None and packed
    else:
        assert y.grad_fn is None and not y.requires_grad
        assert packed == []
    assert y.is_inference() == (mode == "inference_mode")
    torch.testing.assert_close(y, eager(x), rtol=1e-5, atol=1e-6)


# ---- train / eval, parameters, zero_grad, repr -------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_train_and_eval_give_the_same_result(case):
    fused, _, form = make_pair(case)
    x, g = torch.randn(SHAPE), torch.randn(SHAPE)
    with record_launches() as launched:
        y_train, dx_train, grads_train = forward_and_grads(fused.train(), x, g)
        y_eval, dx_eval, grads_eval = forward_and_grads(fused.eval(), x, g)
    assert launched == 2 * (fwd_launches(form) + BWD_LAUNCHES[form])
    assert not fused.training and not any(m.training for m in fused.modules())
    assert torch.equal(y_eval, y_train) and torch.equal(dx_eval, dx_train)
    for a, b in zip(grads_train, grads_eval, strict=False):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_parameters_match_the_eager_module(case):
    fused, eager, _ = make_pair(case)
    named, named_eager = list(fused.named_parameters()), list(eager.named_parameters())
    assert [n for n, _ in named] == [n for n, _ in named_eager]
    assert [(p.shape, p.dtype, p.requires_grad) for p in fused.parameters()] == [
        (p.shape, p.dtype, p.requires_grad) for p in eager.parameters()
    ]
    assert [p for _, p in named] == list(fused.parameters())  # the same objects, in the same order
    assert list(fused.buffers()) == list(eager.buffers()) == []


def test_parameters_of_a_converted_model_are_the_originals():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    before = list(model.named_parameters())
    convert_checked(model)
    after = list(model.named_parameters())
    assert [n for n, _ in after] == [n for n, _ in before]
    assert all(p is q for (_, p), (_, q) in zip(after, before, strict=False))


@pytest.mark.parametrize("case", list(CASES))
def test_zero_grad(case):
    fused, _, _ = make_pair(case)
    x = torch.randn(SHAPE, requires_grad=True)
    with record_launches() as launched:
        fused(x).sum().backward()
    assert launched
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fused.parameters())
    fused.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in fused.parameters())
    fused.zero_grad()
    assert all(p.grad is None for p in fused.parameters())


@pytest.mark.parametrize(
    "module,expected",
    [
        (
            fused_se.FusedSEModule(16, 4, act="silu", gate="hard_sigmoid"),
            "channel=16, reduction=4, hidden=4, act=silu, gate=hard_sigmoid",
        ),
        (fused_se.FusedConv2dSEModule(24, 6), "channel=24, hidden=6, act=relu, gate=sigmoid"),
        (fused_se.FusedEffectiveSEModule(32), "channel=32, gate=hard_sigmoid"),
        (fused_se.FusedEcaModule(5, circular=True), "kernel_size=5, circular=True, gate=sigmoid"),
    ],
    ids=["se", "conv2d-se", "ese", "eca"],
)
def test_repr_names_channels_and_activations(module, expected):
    text = repr(module)
    assert text.startswith(f"{type(module).__name__}(\n  {expected}\n"), text


class _Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


def test_parametrized_and_reassigned_layers_are_read_as_they_are_now():
    """The block reads a plain Linear's parameters directly; a parametrized layer (its weight
    computed) and a Parameter assigned after construction are what it runs with."""
    from torch.nn.utils import parametrize

    x = torch.randn(SHAPE)
    fused, eager, _ = make_pair("se")
    parametrize.register_parametrization(fused.fc[0], "weight", _Doubled())
    with torch.no_grad():
        eager.fc[0].weight.mul_(2)
    with record_launches() as launched:
        y = fused(x)
    assert launched == fwd_launches("mlp")
    assert_within_torch_error("parametrized", y, eager(x), copy.deepcopy(eager).double()(x.double()))

    fused, eager, _ = make_pair("se")
    fused.fc[2].weight = nn.Parameter(torch.randn_like(fused.fc[2].weight))
    eager.fc[2].weight = nn.Parameter(fused.fc[2].weight.detach().clone())
    assert_within_torch_error("reassigned", fused(x), eager(x), copy.deepcopy(eager).double()(x.double()))
