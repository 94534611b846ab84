"""fused_se.convert and revert on real timm and torchvision models (random weights, nothing is
downloaded) and on the cases it must leave alone."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from se_testing import ClassicSE, randomize_norms, record_launches
from timm.layers.eca import CecaModule, EcaModule
from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
from timm.models._efficientnet_blocks import SqueezeExcite as EfficientNetSE
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

import fused_se

SE_CLASSES = (SEModule, EffectiveSEModule, EfficientNetSE, EcaModule, CecaModule, SqueezeExcitation)

MODELS = {
    "timm-seresnet18": lambda: timm.create_model("seresnet18"),
    "timm-efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
    "timm-mobilenetv3_small_100": lambda: timm.create_model("mobilenetv3_small_100"),
    "timm-regnety_002": lambda: timm.create_model("regnety_002"),
    "timm-ese_vovnet19b_slim_dw": lambda: timm.create_model("ese_vovnet19b_slim_dw"),
    "timm-ecaresnet26t": lambda: timm.create_model("ecaresnet26t"),
    "tv-mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "tv-efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "tv-regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(),
}


def _forward_backward(model: nn.Module, x: torch.Tensor, g_seed: int = 1):
    """Output and the gradients of the input and of every parameter (by name)."""
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(1234)  # the same dropout and drop-path masks on both sides in train mode
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(g_seed)).to(y)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=False)
    grads = torch.autograd.grad(y, [x, *params], g, allow_unused=True)
    return y.detach(), dict(zip(["input", *names], grads, strict=False))


def _max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref).abs().max().item()


@pytest.mark.parametrize("name", list(MODELS))
def test_real_model(name, device):
    model = MODELS[name]().to(device)
    randomize_norms(model)
    original = copy.deepcopy(model)
    original64 = copy.deepcopy(model).double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    se_names = {n for n, m in model.named_modules() if type(m) in SE_CLASSES}
    assert se_names, "the model has no SE block"

    converted, report = fused_se.convert(model, return_report=True)

    # Every SE block is replaced (none of these models has one that cannot be fused).
    assert converted is model
    assert {r.name for r in report.replaced} == se_names and not report.skipped, str(report)
    for n in se_names:
        assert isinstance(model.get_submodule(n), fused_se.FusedSEModule)
    # The same Parameter objects under the same names, and the same state_dict.
    assert {n: id(p) for n, p in model.named_parameters()} == {n: id(p) for n, p in params.items()}
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], state[k]) for k in state)

    # fp32 in eval mode: the output within twice the original's own error against fp64.
    x = torch.randn(4, 3, 32, 32, device=device)
    model.eval()
    original.eval()
    original64.eval()
    with torch.no_grad(), record_launches() as launched:
        y = model(x)
    assert launched.count("squeeze") == len(se_names), "a fused block did not run its kernels"
    with torch.no_grad():
        y_own, y_ref = original(x), original64(x.double())
    bound = 2 * _max_err(y_own, y_ref) + 1e-5 * max(1.0, y_ref.abs().max().item())
    assert _max_err(y, y_ref) <= bound, f"fp32 output: error {_max_err(y, y_ref):.3g} > {bound:.3g}"

    # Gradients in fp64, in eval and in train mode (batch norm on batch statistics, dropout and
    # drop-path drawn alike on both sides). In fp32 a ReLU whose input is within rounding of 0
    # may flip on one side and not on the other, which moves a gradient by O(1): fp64 makes the
    # comparison tight instead.
    model.double()
    for train in (False, True):
        model.train(train)
        original64.train(train)
        with record_launches() as launched:
            y, grads = _forward_backward(model, x.double())
        assert launched.count("squeeze") == len(se_names), "a fused block did not run its kernels"
        y_ref, grads_ref = _forward_backward(original64, x.double())
        assert grads.keys() == grads_ref.keys()
        pairs = [("output", y, y_ref)] + [(f"grad of {k}", grads[k], grads_ref[k]) for k in grads_ref]
        for what, got, want in pairs:
            if want is None:
                assert got is None, what
                continue
            err = _max_err(got, want)
            assert err <= 1e-9 * max(1.0, want.abs().max().item()), f"{what} (train={train}): error {err:.3g}"

    assert fused_se.revert(model) is model
    assert [type(m) for m in model.modules()] == [type(m) for m in original64.modules()]
    model.eval()
    original64.eval()
    with torch.no_grad(), record_launches() as launched:
        y, y_ref = model(x.double()), original64(x.double())
    assert launched == []
    # The same eager modules again; only the running statistics of train mode differ in the last bits.
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)


# ---- what convert must leave alone, and why ----------------------------------------------------


@pytest.mark.parametrize(
    "block,reason",
    [
        (SEModule(32, norm_layer=nn.BatchNorm2d), "BatchNorm2d between the two FCs"),
        (SEModule(32, add_maxpool=True), "add_maxpool"),
        (SEModule(32, act_layer=nn.GELU), "activation GELU is not supported"),
        (SEModule(32, gate_layer="tanh"), "gate Tanh is not supported"),
        (EffectiveSEModule(32, add_maxpool=True), "add_maxpool"),
        (EcaModule(64, use_mlp=True), "use_mlp"),
        (SqueezeExcitation(32, 8, scale_activation=nn.Tanh), "gate Tanh is not supported"),
    ],
    ids=["norm", "maxpool", "gelu", "tanh", "ese-maxpool", "eca-mlp", "tv-tanh"],
)
def test_unfusable_blocks_are_reported_and_kept(block, reason):
    model = nn.Sequential(nn.Conv2d(3, 32 if not isinstance(block, EcaModule) else 64, 1), block)
    before = copy.deepcopy(model)
    model, report = fused_se.convert(model, return_report=True)
    assert model[1] is block and not report.replaced
    assert [(s.name, s.original) for s in report.skipped] == [("1", type(block).__name__)]
    assert reason in report.skipped[0].reason
    assert reason in str(report)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(model(x), before(x))


def test_rexnet_blocks_with_a_norm_are_skipped():
    model = timm.create_model("rexnet_100")
    n_se = sum(type(m) is SEModule for m in model.modules())
    model, report = fused_se.convert(model, return_report=True)
    assert n_se > 0 and not report.replaced and len(report.skipped) == n_se
    assert all("BatchNorm2d between the two FCs" in s.reason for s in report.skipped)


# ---- the classic structure, the model root, sharing, repeated calls ----------------------------


def test_classic_structure_is_recognised(device):
    se = ClassicSE(64, 8).to(device)
    model = nn.Sequential(nn.Conv2d(8, 64, 1), se, fused_se.reference.SEModule(64, 4)).to(device)
    original = copy.deepcopy(model)
    model, report = fused_se.convert(model, return_report=True)
    assert [type(m) for m in model] == [nn.Conv2d, fused_se.FusedSEModule, fused_se.FusedSEModule]
    assert model[1].fc is se.fc and model[1].hidden == 8 and model[2].hidden == 16
    assert [r.name for r in report.replaced] == ["1", "2"]
    x = torch.randn(2, 8, 5, 5, device=device)
    with record_launches() as launched:
        torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-6)
    assert launched.count("squeeze") == 2


def test_model_that_is_an_se_block():
    se = SqueezeExcitation(16, 4)
    fused = fused_se.convert(se)
    assert isinstance(fused, fused_se.FusedConv2dSEModule) and fused.fc1 is se.fc1
    assert fused_se.revert(fused) is se


def test_shared_block_is_replaced_once():
    se = SEModule(16)
    model = nn.Sequential(se, nn.ReLU(), se)
    model, report = fused_se.convert(model, return_report=True)
    assert model[0] is model[2] and isinstance(model[0], fused_se.FusedSEModule)
    assert len(report.replaced) == 1
    fused_se.revert(model)
    assert model[0] is se and model[2] is se


def test_convert_twice_changes_nothing():
    model = nn.Sequential(SEModule(16))
    fused_se.convert(model)
    first = model[0]
    model, report = fused_se.convert(model, return_report=True)
    assert model[0] is first and not report.replaced and not report.skipped


def test_optimizer_state_follows_the_shared_parameters():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), SEModule(16, rd_ratio=0.25))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    fused_se.convert(model)
    before = model[1].fc1.weight.detach().clone()
    opt.zero_grad()
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    assert not torch.equal(model[1].fc1.weight, before)  # the optimizer still owns the fused block's weights


def test_deepcopy_of_a_converted_model_reverts():
    model = fused_se.convert(nn.Sequential(SEModule(16)))
    clone = copy.deepcopy(model)
    fused_se.revert(clone)
    assert type(clone[0]) is SEModule and clone[0].fc1.weight is not model[0].fc1.weight
    assert isinstance(model[0], fused_se.FusedSEModule)


def test_training_mode_is_carried_over():
    model = nn.Sequential(SEModule(16)).eval()
    fused_se.convert(model)
    assert not model[0].training
    model.train()
    fused_se.revert(model)
    assert model[0].training


def test_verbose_logs_the_table(caplog):
    model = nn.Sequential(SEModule(16), SEModule(16, add_maxpool=True))
    with caplog.at_level(logging.INFO, logger="fused_se"):
        fused_se.convert(model, verbose=True)
    text = caplog.text
    assert "1 replaced, 1 skipped" in text and "FusedConv2dSEModule" in text and "add_maxpool" in text


def test_convert_rejects_a_non_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        fused_se.convert({"not": "a module"})
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        fused_se.revert(None)


def test_convert_does_not_import_timm_or_torchvision():
    code = (
        "import sys, torch, fused_se\n"
        "m = torch.nn.Sequential(fused_se.reference.SEModule(16, 4))\n"
        "m, report = fused_se.convert(m, return_report=True)\n"
        "assert len(report.replaced) == 1, report\n"
        "assert 'timm' not in sys.modules and 'torchvision' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
