"""The fused modules built from scratch: their state_dicts load from (and into) the timm and
torchvision blocks they stand for, and they compute the same thing."""

import pytest
import torch
from se_testing import FORM_KERNELS, make_variant_params, record_launches, run_variant
from timm.layers.eca import CecaModule, EcaModule
from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
from timm.models._efficientnet_blocks import SqueezeExcite as EfficientNetSE
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

import fused_se

CASES = {
    "timm-se": (
        lambda: SEModule(48, rd_channels=7),
        lambda: fused_se.FusedConv2dSEModule(48, 7),
        "mlp",
    ),
    "timm-efficientnet-se": (
        lambda: EfficientNetSE(48, rd_ratio=0.25, act_layer=nn.SiLU, gate_layer=nn.Hardsigmoid),
        lambda: fused_se.FusedConv2dSEModule(
            48, 12, act="silu", gate="hard_sigmoid", names=("conv_reduce", "conv_expand")
        ),
        "mlp",
    ),
    "torchvision-se": (
        lambda: SqueezeExcitation(48, 5, activation=nn.SiLU),
        lambda: fused_se.FusedConv2dSEModule(48, 5, act="silu"),
        "mlp",
    ),
    "timm-ese": (lambda: EffectiveSEModule(48), lambda: fused_se.FusedEffectiveSEModule(48), "fc"),
    "timm-eca": (lambda: EcaModule(kernel_size=5), lambda: fused_se.FusedEcaModule(5), "conv"),
    "timm-ceca": (lambda: CecaModule(kernel_size=5), lambda: fused_se.FusedEcaModule(5, circular=True), "conv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_state_dicts_load_both_ways(case, device):
    make_original, make_fused, form = CASES[case]
    original, fused = make_original().to(device), make_fused().to(device)
    assert list(fused.state_dict()) == list(original.state_dict())
    fused.load_state_dict(original.state_dict())
    x = torch.randn(3, 48, 5, 7, device=device) * 2
    with record_launches() as launched:
        y = fused(x)
    assert launched == ["squeeze", FORM_KERNELS[form], "scale"]
    torch.testing.assert_close(y, original(x), rtol=1e-5, atol=1e-6)
    other = make_fused().to(device)
    original.load_state_dict(other.state_dict())
    torch.testing.assert_close(other(x), original(x), rtol=1e-5, atol=1e-6)
    assert isinstance(fused, fused_se.FusedSEModule)


def test_options_of_the_linear_module(device):
    m = fused_se.FusedSEModule(48, rd_channels=5, bias=True, act="silu", gate="hard_sigmoid").to(device)
    assert list(m.state_dict()) == ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"]
    assert m.hidden == 5 and m.reduction is None
    assert repr(m).startswith("FusedSEModule(\n  channel=48, hidden=5, act=silu, gate=hard_sigmoid")
    x = torch.randn(2, 48, 3, 3, device=device)
    fc = m.fc
    expected = x * nn.functional.hardsigmoid(fc[2](nn.functional.silu(fc[0](x.mean((2, 3))))))[:, :, None, None]
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)


def test_from_sequential_shares_the_layers():
    fc = nn.Sequential(nn.Linear(32, 4), nn.SiLU(), nn.Linear(4, 32), nn.Sigmoid())
    m = fused_se.FusedSEModule.from_sequential(fc, act="silu", gate="sigmoid")
    assert m.fc is fc and m.channel == 32 and m.hidden == 4
    with pytest.raises(ValueError, match="must map C -> hidden -> C"):
        fused_se.FusedSEModule.from_sequential(
            nn.Sequential(nn.Linear(32, 4), nn.ReLU(), nn.Linear(5, 32), nn.Sigmoid()), act="relu", gate="sigmoid"
        )


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: fused_se.FusedConv2dSEModule(16, 0), ValueError, "rd_channels must be >= 1"),
        (lambda: fused_se.FusedConv2dSEModule(16, 4, act="gelu"), ValueError, "act must be one of"),
        (lambda: fused_se.FusedConv2dSEModule(16, 4, names=("a",)), TypeError, "names must be a tuple"),
        (
            lambda: fused_se.FusedConv2dSEModule.from_layers(
                nn.Conv2d(16, 4, 3), nn.Conv2d(4, 16, 1), act="relu", gate="sigmoid"
            ),
            ValueError,
            "fc1 must be a pointwise \\(1x1\\) conv",
        ),
        (
            lambda: fused_se.FusedConv2dSEModule.from_layers(
                nn.Conv2d(16, 4, 1), nn.Conv2d(4, 8, 1), act="relu", gate="sigmoid"
            ),
            ValueError,
            "fc2 must map 4 to 16 channels",
        ),
        (lambda: fused_se.FusedEffectiveSEModule(0), ValueError, "channels must be >= 1"),
        (lambda: fused_se.FusedEffectiveSEModule(8, gate="relu"), ValueError, "gate must be one of"),
        (lambda: fused_se.FusedEcaModule(4), ValueError, "kernel_size must be odd"),
        (lambda: fused_se.FusedEcaModule(3, circular=1), TypeError, "circular must be a bool"),
        (
            lambda: fused_se.FusedEcaModule.from_layer(nn.Conv1d(1, 1, 3, padding=0), circular=False, gate="sigmoid"),
            ValueError,
            "zero padding 1",
        ),
    ],
    ids=[
        "rd0",
        "act",
        "names",
        "3x3-conv",
        "channels",
        "ese-channels",
        "ese-gate",
        "eca-even",
        "eca-circular-type",
        "eca-padding",
    ],
)
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_eca_takes_any_channel_count(device):
    m = fused_se.FusedEcaModule(3).to(device)
    assert m.channel is None and m.hidden is None
    for c in (1, 7, 300):
        x = torch.randn(2, c, 4, 4, device=device)
        ref = EcaModule(kernel_size=3).to(device)
        ref.load_state_dict(m.state_dict())
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)


def test_functional_errors(device):
    x = torch.randn(2, 8, 3, 3, device=device)
    with record_launches() as launched:
        with pytest.raises(ValueError, match=r"w must have shape \(C, C\) = \(8, 8\)"):
            fused_se.effective_squeeze_excite(x, torch.randn(8, 4, device=device))
        with pytest.raises(ValueError, match="odd number of taps"):
            fused_se.efficient_channel_attention(x, torch.randn(4, device=device))
        with pytest.raises(ValueError, match="wraps around C = 8 channels more than once"):
            fused_se.efficient_channel_attention(x, torch.randn(19, device=device), circular=True)
        with pytest.raises(ValueError, match=r"b must have shape \(1,\)"):
            fused_se.efficient_channel_attention(x, torch.randn(3, device=device), torch.randn(2, device=device))
    assert launched == []


# ---- the dtypes x and the parameters may have, and the module's own errors --------------------

_FORMS = {
    "mlp": lambda: fused_se.FusedSEModule(8, 2, bias=True),
    "fc": lambda: fused_se.FusedEffectiveSEModule(8),
    "conv": lambda: fused_se.FusedEcaModule(3),
}


@pytest.mark.parametrize(
    "x_dtype,param_dtype",
    [
        (torch.float16, torch.bfloat16),
        (torch.bfloat16, torch.float16),
        (torch.float64, torch.float32),
        (torch.float32, torch.float64),
        (torch.float32, torch.bfloat16),
        (torch.float16, torch.float64),
    ],
    ids=str,
)
@pytest.mark.parametrize("form", list(_FORMS))
def test_parameters_of_another_dtype_than_x_are_refused_as_nn_linear_refuses_them(form, x_dtype, param_dtype, device):
    m = _FORMS[form]().to(device=device, dtype=param_dtype)
    x = torch.randn(2, 8, 3, 3, device=device, dtype=x_dtype)
    params = make_variant_params(form, 8, 2, 3, True, device, dtype=param_dtype)
    with record_launches() as launched:
        with pytest.raises(TypeError, match=rf"is {param_dtype} but x is {x_dtype}") as raised:
            m(x)
        assert type(m).__name__ in str(raised.value)  # the block's own terms, with the parameter's name
        with pytest.raises(TypeError, match=rf"is {param_dtype} but x is {x_dtype}"):
            run_variant(fused_se, x, form, params, "relu", "sigmoid")
    assert launched == []  # refused before any kernel runs


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("form", list(_FORMS))
def test_fp32_parameters_run_with_a_16_bit_x_as_under_autocast(form, x_dtype, device):
    m = _FORMS[form]().to(device)
    x = torch.randn(2, 8, 3, 3, device=device, dtype=x_dtype)
    with record_launches() as launched:
        y = m(x)
    assert y.dtype == x_dtype
    assert FORM_KERNELS[form] in launched  # the kernels ran (CUDA, or the interpreter on the CPU)
    if form == "mlp":
        w1, b1, w2, b2 = (p.detach() for p in m.parameters())
        ref = fused_se.reference.squeeze_excite(x.float(), w1, b1, w2, b2)
        torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("form", ["mlp", "fc"])
def test_a_modules_channel_error_names_the_modules_own_argument(form, device):
    m = _FORMS[form]().to(device)
    with record_launches() as launched:
        with pytest.raises(ValueError, match=r"was built with channel=8: x must have 8 channels") as raised:
            m(torch.randn(2, 5, 3, 3, device=device))
    assert launched == []
    assert "w1" not in str(raised.value) and "(C, C)" not in str(raised.value)
    assert isinstance(raised.value.__cause__, ValueError)  # the functional form's error stays in the chain
