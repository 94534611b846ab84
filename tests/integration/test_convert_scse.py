"""convert on segmentation_models_pytorch's Unet with scSE decoder attention: every SCSEModule
replaced by a FusedSCSEModule holding its layers, the output and every gradient as the original's
(eval and train), the state_dict unchanged, and revert."""

import pytest
import torch
from se_testing import randomize_norms, record_launches

import fused_se

smp = pytest.importorskip("segmentation_models_pytorch")
from segmentation_models_pytorch.base.modules import SCSEModule  # noqa: E402


def _outputs_and_grads(model, x, g, mode, state):
    """y and every gradient in eval or train mode, from the same BatchNorm statistics (a training
    forward updates them)."""
    model.load_state_dict(state)
    model.train(mode == "train")
    x = x.detach().clone().requires_grad_()
    y = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    # some of the encoder's parameters reach no output (None here, before and after)
    return [y.detach(), *torch.autograd.grad(y, [x, *params], g, allow_unused=True)]


def _assert_same(ours, expected):
    assert len(ours) == len(expected)
    for o, e in zip(ours, expected, strict=False):
        assert (o is None) == (e is None)
        if o is not None:
            torch.testing.assert_close(o, e, rtol=1e-9, atol=1e-10)


def test_convert_smp_unet_scse():
    torch.manual_seed(0)
    model = smp.Unet(encoder_name="resnet18", encoder_weights=None, decoder_attention_type="scse", classes=2)
    model = model.double()
    randomize_norms(model)
    originals = {name: m for name, m in model.named_modules() if type(m) is SCSEModule}
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    g = torch.randn(1, 2, 64, 64, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {}
    ran = set()  # smp's last decoder block has no skip connection, and no call of its attention1
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: ran.add(name)) for name, m in originals.items()]
    for mode in ("eval", "train"):
        expected[mode] = _outputs_and_grads(model, x, g, mode, state)
    for hook in hooks:
        hook.remove()
    assert len(ran) >= 8
    model.load_state_dict(state)
    params = list(model.parameters())

    model, report = fused_se.convert(model, return_report=True)
    assert sorted(r.name for r in report.replaced) == sorted(originals) and report.skipped == []
    fused = {name: m for name, m in model.named_modules() if isinstance(m, fused_se.FusedSCSEModule)}
    assert fused.keys() == originals.keys()
    assert not any(type(m) is SCSEModule for m in model.modules())
    for name, block in fused.items():
        assert block.cSE is originals[name].cSE and block.sSE is originals[name].sSE
    assert list(model.parameters()) == params  # the same Parameter objects, in the same order
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())

    for mode in ("eval", "train"):
        with record_launches() as launched:
            ours = _outputs_and_grads(model, x, g, mode, state)
        assert launched.count("scse_squeeze") == launched.count("scse_dx_bwd") == len(ran)
        _assert_same(ours, expected[mode])

    model = fused_se.revert(model)
    assert {name: m for name, m in model.named_modules() if type(m) is SCSEModule} == originals
    with record_launches() as launched:
        ours = _outputs_and_grads(model, x, g, "eval", state)
    assert "scse_squeeze" not in launched
    _assert_same(ours, expected["eval"])


def test_convert_skips_an_scse_with_another_spatial_gate():
    block = SCSEModule(16, reduction=4)
    block.sSE[1] = torch.nn.Hardsigmoid()
    model, report = fused_se.convert(torch.nn.Sequential(block), return_report=True)
    assert report.replaced == [] and "spatial gate Hardsigmoid is not a sigmoid" in report.skipped[0].reason
    assert model[0] is block
