"""fused_se.convert on MONAI, Hugging Face transformers and SpeechBrain models (random weights,
small configurations, nothing downloaded): every SE block replaced, the output and every gradient
equal to the original's in fp64 in eval and train mode, the state_dict unchanged, revert."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from se_testing import assert_same_outputs_and_grads, model_outputs_and_grads, randomize_norms, record_launches
from torch import nn

import fused_se
from fused_se import tails


def _optional(name: str):
    """The module, or None where it cannot be imported (its tests then skip, the others still run)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


monai_se = _optional("monai.networks.blocks.squeeze_and_excitation")
monai_nets = _optional("monai.networks.nets")
transformers = _optional("transformers")
hf_efficientnet = _optional("transformers.models.efficientnet.modeling_efficientnet")
hf_regnet = _optional("transformers.models.regnet.modeling_regnet")

needs_monai = pytest.mark.skipif(monai_se is None or monai_nets is None, reason="monai is not installed")
needs_transformers = pytest.mark.skipif(
    hf_efficientnet is None or hf_regnet is None, reason="transformers is not installed"
)


@pytest.fixture(scope="module")
def ecapa():
    """SpeechBrain's ECAPA-TDNN module, imported when a test first asks for it, not at collection:
    SpeechBrain's lazy modules raise ImportError (k2 missing) when hypothesis's pytest plugin scans
    sys.modules at the end of collection. Skips where it does not import."""
    module = _optional("speechbrain.lobes.models.ECAPA_TDNN")
    if module is None:
        pytest.skip("speechbrain (or its torchaudio) does not import")
    return module


def _check_converted(model: nn.Module, inputs: tuple, se_classes: tuple, *args, skipped: int = 0, **options):
    """Converts `model` (fp64) and holds it to the original; returns the report."""
    model = model.double()
    randomize_norms(model)
    inputs = tuple(x.double() for x in inputs)
    original = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: id(p) for n, p in model.named_parameters()}
    se_names = {n for n, m in model.named_modules() if type(m) in se_classes}
    assert se_names, "the model has no SE block"

    converted, report = fused_se.convert(model, return_report=True, **options)
    replaced = {r.name for r in report.replaced}
    assert replaced | {s.name for s in report.skipped} == se_names and len(report.skipped) == skipped, str(report)
    fused_count = len(replaced)
    for n in replaced:
        assert isinstance(converted.get_submodule(n) if n else converted, fused_se.FusedSEModule)
    assert {n: id(p) for n, p in converted.named_parameters()} == params
    after = converted.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)

    for train in (False, True):
        converted.train(train)
        original.train(train)
        with record_launches() as launched:
            got = model_outputs_and_grads(converted, inputs, *args)
        assert launched.count("squeeze") == fused_count, "a fused block did not run its kernels"
        assert_same_outputs_and_grads(got, model_outputs_and_grads(original, inputs, *args), f"train={train}")

    reverted = fused_se.revert(converted)
    assert not any(tails.is_installed(m) for m in reverted.modules())
    assert [type(m) for m in reverted.modules()] == [type(m) for m in original.modules()]
    assert list(reverted.state_dict()) == list(state)
    return report


# ---- MONAI ---------------------------------------------------------------------------------------


@needs_monai
def test_monai_seresnet50_3d():
    model = monai_nets.SEResNet50(spatial_dims=3, in_channels=1, num_classes=3, layers=(1, 1, 1, 1))
    report = _check_converted(model, (torch.randn(3, 1, 8, 8, 8),), (monai_se.ChannelSELayer,))
    assert len(report.replaced) == 4 and {r.fused for r in report.replaced} == {"FusedLayersSEModule"}


@needs_monai
def test_monai_seresnext_residual_tails():
    """fuse_residual=True: each SE-ResNeXt bottleneck's relu(se(x) + project(x)) in the SE's scale pass
    (2-D here; the 3-D SE-ResNet-50 above takes the same blocks' SE without the tail)."""
    model = monai_nets.SEResNext50(spatial_dims=2, in_channels=1, num_classes=3, layers=(1, 1, 1, 1))
    x = torch.randn(3, 1, 8, 8)
    report = _check_converted(model, (x,), (monai_se.ChannelSELayer,), fuse_residual=True)
    assert len(report.tails_fused) == 4 and not report.tails_skipped, str(report)
    assert {r.details for r in report.tails_fused} == {"out = relu(se(x) + project(x))"}


@needs_monai
@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize(
    "options",
    [{}, {"add_residual": True}, {"acti_type_1": "swish"}, {"acti_type_1": "memswish"}],
    ids=["relu-sigmoid", "add_residual", "swish", "memswish"],
)
def test_monai_channel_se_layer(spatial_dims, options):
    if spatial_dims == 2 and "add_residual" in options:
        spatial_dims = 1  # each option on two ranks: keep the case count small
    layer = monai_se.ChannelSELayer(spatial_dims, 12, r=3, **options)
    x = torch.randn(2, 12, *(5, 4, 3)[:spatial_dims])
    report = _check_converted(layer, (x,), (monai_se.ChannelSELayer,))
    assert report.replaced[0].details.endswith("+ x") == bool(options.get("add_residual"))


@needs_monai
def test_monai_skips_what_the_kernels_do_not_compute():
    for layer, reason in [
        (monai_se.ResidualSELayer(2, 8), "LeakyReLU is not supported"),
        (monai_se.ChannelSELayer(2, 8, acti_type_1=("swish", {"alpha": 2.0})), "Swish with alpha=2.0 is not SiLU"),
    ]:
        converted, report = fused_se.convert(layer, return_report=True)
        assert converted is layer and not report.replaced
        assert reason in report.skipped[0].reason, str(report)


@needs_monai
def test_monai_add_residual_takes_no_other_residual():
    fused = fused_se.convert(monai_se.ChannelSELayer(1, 8, add_residual=True))
    x = torch.randn(2, 8, 5)
    with pytest.raises(ValueError, match="adds its input"):
        fused(x, x)


# ---- Hugging Face transformers -----------------------------------------------------------------


@needs_transformers
def test_hf_efficientnet():
    config = transformers.EfficientNetConfig(
        image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128
    )
    model = transformers.EfficientNetModel(config)
    _check_converted(model, (torch.randn(2, 3, 32, 32),), (hf_efficientnet.EfficientNetSqueezeExciteLayer,))


@needs_transformers
def test_hf_regnet():
    config = transformers.RegNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], groups_width=8, layer_type="y"
    )
    model = transformers.RegNetModel(config)
    _check_converted(model, (torch.randn(2, 3, 32, 32),), (hf_regnet.RegNetSELayer,))


@needs_transformers
def test_hf_se_layers_by_class():
    """The other Hugging Face SE layers that fit a fused form, and one that does not (its gate)."""
    pp_lcnet = pytest.importorskip("transformers.models.pp_lcnet.modeling_pp_lcnet")
    qwen = pytest.importorskip("transformers.models.qwen2_5_omni.modeling_qwen2_5_omni")
    pp_ocr = pytest.importorskip("transformers.models.pp_ocrv5_mobile_det.modeling_pp_ocrv5_mobile_det")
    se = pp_lcnet.PPLCNetSqueezeExcitationModule(16, reduction=4)
    _check_converted(se, (torch.randn(2, 16, 3, 5),), (type(se),))
    se = qwen.SqueezeExcitationBlock(12, 4, 12)
    _check_converted(se, (torch.randn(2, 12, 7),), (type(se),))
    se = pp_ocr.PPOCRV5MobileDetSqueezeExcitationModule(16, 4)
    _, report = fused_se.convert(se, return_report=True)
    assert not report.replaced and "clamp(0.2 a + 0.5, 0, 1)" in report.skipped[0].reason


# ---- SpeechBrain ---------------------------------------------------------------------------------


def _ecapa(ecapa):
    return ecapa.ECAPA_TDNN(
        16, lin_neurons=8, channels=[16, 16, 16, 16, 48], attention_channels=8, se_channels=8, res2net_scale=2
    )


@pytest.mark.parametrize("with_lengths", [False, True], ids=["no-lengths", "relative-lengths"])
def test_speechbrain_ecapa_tdnn(with_lengths, ecapa):
    x = torch.randn(3, 20, 16)  # (batch, time, features)
    # 0.6 * 20 is 12.000001 in fp32: SpeechBrain's mask keeps 13 positions, and so must the fused block
    args = (torch.tensor([1.0, 0.6, 0.33]),) if with_lengths else ()
    report = _check_converted(_ecapa(ecapa), (x,), (ecapa.SEBlock,), *args)
    assert len(report.replaced) == 3 and {r.fused for r in report.replaced} == {"FusedSpeechBrainSEBlock"}


def test_speechbrain_lengths_count_as_speechbrain_masks(ecapa):
    from speechbrain.dataio.dataio import length_to_mask

    relative = torch.tensor([1.0, 0.6, 0.33, 0.05, 1 / 3])
    for length in (1, 7, 20, 333):
        mask = length_to_mask(relative * length, max_len=length)
        counts = fused_se.adapters.speechbrain_lengths(relative, length)
        assert torch.equal(counts, mask.sum(1).long())
        assert torch.equal(mask.bool(), torch.arange(length) < counts[:, None])  # a prefix: the kernels' mask


def test_speechbrain_se_block_with_lengths_through_the_kernels(ecapa):
    block = ecapa.SEBlock(12, 4, 12).double()
    x = torch.randn(3, 12, 10, dtype=torch.float64)
    lengths = torch.tensor([1.0, 0.55, 0.1], dtype=torch.float64)
    want = block(x, lengths)
    fused = fused_se.convert(copy.deepcopy(block))
    with record_launches() as launched:
        got = fused(x, lengths)
    assert launched == ["squeeze", "excite", "scale"]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
