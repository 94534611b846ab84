"""fused_se.convert beyond its class table: SE blocks found by their traced forward (the structural
match), the SE written inline in segmentation_models_pytorch's EfficientNet blocks, and converted
models under torch.fx (symbolic_trace, create_feature_extractor) and torch.jit.script."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from se_testing import assert_same_outputs_and_grads, model_outputs_and_grads, randomize_norms, record_launches
from timm.layers.squeeze_excite import SEModule as TimmSE
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import fused_se
from fused_se import inline, tails


def _assert_same(
    model: nn.Module, original: nn.Module, x: torch.Tensor, launches: int, backward=None, train=(False, True)
):
    """fp64: the output and every gradient equal to the original's, in eval and train mode, and the
    fused kernels launched `launches` times forward and `backward` (default: as many) backward."""
    backward = launches if backward is None else backward
    for mode in train:
        model.train(mode)
        original.train(mode)
        with record_launches() as launched:
            got = model_outputs_and_grads(model, (x,))
        assert launched.count("squeeze") == launches and launched.count("excite_bwd") == backward, launched
        assert_same_outputs_and_grads(got, model_outputs_and_grads(original, (x,)), f"train={mode}")


# ---- SE blocks under names and layouts the class table does not know ------------------------------


class LinearMeanSE(nn.Module):
    """Linear layers with bias, x.mean, functional relu, torch.sigmoid, a gate indexed to (B, C, 1, 1)."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.squeeze_fc = nn.Linear(c, hidden)
        self.excite_fc = nn.Linear(hidden, c)

    def forward(self, x):
        y = x.mean((2, 3))
        y = F.relu(self.squeeze_fc(y))
        return x * torch.sigmoid(self.excite_fc(y))[:, :, None, None]


class ViewExpandSE(nn.Module):
    """Linear layers without bias in a Sequential under other names, sizes read from x, expand_as."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.mlp = nn.Sequential(nn.Linear(c, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, c, bias=False))
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.mlp(self.gap(x).view(b, c))
        return self.gate(y).view(b, c, 1, 1).expand_as(x) * x


class ConvSwishSE(nn.Module):
    """1x1 convs without bias, the pool as a module, swish written x * sigmoid(x), F.hardsigmoid."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.down = nn.Conv2d(c, hidden, 1, bias=False)
        self.up = nn.Conv2d(hidden, c, 1, bias=False)

    def forward(self, x):
        h = self.down(self.pool(x))
        h = h * torch.sigmoid(h)
        return F.hardsigmoid(self.up(h)) * x


class Conv1dSE(nn.Module):
    """Pointwise Conv1d with bias over a (B, C, L) input, mean over the last dim, nn modules."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv1d(c, hidden, 1), nn.Conv1d(hidden, c, 1)
        self.act, self.g = nn.ReLU(inplace=True), nn.Sigmoid()

    def forward(self, x):
        return x * self.g(self.b(self.act(self.a(x.mean(-1, keepdim=True)))))


class Conv3dSE(nn.Module):
    """Pointwise Conv3d, F.adaptive_avg_pool3d, the activation and the gate as tensor methods."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv3d(c, hidden, 1), nn.Conv3d(hidden, c, 1)

    def forward(self, x):
        return torch.mul(x, self.expand(self.reduce(F.adaptive_avg_pool3d(x, 1)).relu()).sigmoid())


STRUCTURAL = {
    "linear-mean-functional": (LinearMeanSE, (2, 24, 5, 3), ("squeeze_fc", "excite_fc"), "relu", "sigmoid"),
    "linear-view-expand_as": (ViewExpandSE, (2, 24, 4, 4), ("mlp.0", "mlp.2"), "silu", "hard_sigmoid"),
    "conv-swish-written-out": (ConvSwishSE, (2, 24, 3, 5), ("down", "up"), "silu", "hard_sigmoid"),
    "conv1d-sequence": (Conv1dSE, (2, 24, 7), ("a", "b"), "relu", "sigmoid"),
    "conv3d-volume": (Conv3dSE, (2, 16, 3, 2, 2), ("reduce", "expand"), "relu", "sigmoid"),
}


@pytest.mark.parametrize("case", list(STRUCTURAL))
def test_se_found_by_its_forward(case):
    cls, shape, layers, act, gate = STRUCTURAL[case]
    model = nn.Sequential(nn.Identity(), cls(shape[1], 6)).double()
    original = copy.deepcopy(model)
    se = model[1]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: id(p) for n, p in model.named_parameters()}

    model, report = fused_se.convert(model, return_report=True)
    assert not report.skipped, str(report)
    assert [(r.name, r.original, r.rule) for r in report.replaced] == [("1", cls.__name__, "structure")]
    assert "structure" in str(report)
    fused = model[1]
    assert type(fused) is fused_se.adapters.FusedLayersSEModule
    assert (fused._paths, fused.act, fused.gate, fused.hidden) == (layers, act, gate, 6)
    assert all(fused.get_submodule(p) is se.get_submodule(p) for p in layers)
    assert {n: id(p) for n, p in model.named_parameters()} == params
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)

    _assert_same(model, original, torch.randn(shape, dtype=torch.float64), launches=1, train=(False,))

    assert fused_se.revert(model) is model and model[1] is se


# ---- near misses: skipped, and the report names the op -----------------------------------------


class NormBetweenSE(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(c, 4), nn.BatchNorm1d(4), nn.Linear(4, c)

    def forward(self, x):
        y = self.fc2(torch.relu(self.bn(self.fc1(x.mean((2, 3))))))
        return x * y.sigmoid()[:, :, None, None]


class TanhSE(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.tanh(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class GeluSE(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.avg_pool, self.fc1, self.act, self.fc2 = (
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, 4, 1),
            nn.GELU(),
            nn.Conv2d(4, c, 1),
        )

    def forward(self, x):
        return x * self.fc2(self.act(self.fc1(self.avg_pool(x)))).sigmoid()


class ScaledSE(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(2.0 * self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class PlusInputSE(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))) + x


class MaxToo(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        z = x.mean((2, 3), keepdim=True) + x.amax((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))


@pytest.mark.parametrize(
    "block,reason",
    [
        (NormBetweenSE(), "`bn` (BatchNorm1d) between the two FCs"),
        (TanhSE(), "torch.tanh where the activation (relu, silu) was expected"),
        (GeluSE(), "activation GELU is not supported"),
        (ScaledSE(), "operator.mul where the second FC"),
        (PlusInputSE(), "the output is operator.add"),
        (MaxToo(), "operator.add where the squeeze"),
    ],
    ids=["norm-between", "tanh", "gelu-module", "extra-op", "plus-input", "max-pool-too"],
)
def test_near_misses_are_skipped_naming_the_op(block, reason):
    model = nn.Sequential(nn.Identity(), block).eval()
    x = torch.randn(2, 16, 3, 3)
    want = model(x)
    model, report = fused_se.convert(model, return_report=True)
    assert model[1] is block and not report.replaced
    assert [(s.name, s.rule) for s in report.skipped] == [("1", "structure")]
    assert reason in report.skipped[0].reason, report.skipped[0].reason
    assert reason in str(report)
    with record_launches() as launched:
        assert torch.equal(model(x), want)
    assert launched == []


class Untraceable(nn.Module):
    """An SE-shaped candidate whose forward branches on a value (no trace), holding a timm SE inside."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.avg_pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.inner = TimmSE(c, rd_channels=4)

    def forward(self, x):
        if x.mean() > 100:
            x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.avg_pool(x)))))
        return self.inner(x)


class Head(nn.Module):
    """A classifier head: an average and two FCs, but no product with the input."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Linear(c, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1))))


def test_what_is_not_an_se_is_no_match_and_convert_looks_inside():
    model = nn.Sequential(Untraceable(), Head())
    model, report = fused_se.convert(model, return_report=True)
    assert not report.skipped, str(report)
    assert [(r.name, r.rule) for r in report.replaced] == [("0.inner", "class")]
    assert isinstance(model[0].inner, fused_se.FusedSEModule)


def test_timm_legacy_senet_blocks_found_by_structure():
    """timm's legacy SENet SEModule (x.mean, 1x1 convs, module_input * x) is in no class table."""
    from timm.models.senet import SEModule as LegacySE

    model = timm.create_model("legacy_seresnet18")
    model, report = fused_se.convert(model, return_report=True)
    assert len(report.replaced) == 8 and not report.skipped, str(report)
    assert {(r.original, r.rule) for r in report.replaced} == {("SEModule", "structure")}
    assert not any(type(m) is LegacySE for m in model.modules())


class IdentityNormSE(nn.Module):
    """timm's layout with its norm left out as nn.Identity, the pool flattened by nn.Flatten."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc1, self.bn, self.act, self.fc2 = nn.Linear(c, 4), nn.Identity(), nn.ReLU(), nn.Linear(4, c)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(self.act(self.bn(self.fc1(self.pool(x))))))[..., None, None]


def test_identity_and_flatten_are_no_ops_of_the_match():
    model = nn.Sequential(IdentityNormSE()).double()
    original = copy.deepcopy(model)
    model, report = fused_se.convert(model, return_report=True)
    assert [(r.rule, r.fused) for r in report.replaced] == [("structure", "FusedLayersSEModule")], str(report)
    _assert_same(model, original, torch.randn(2, 16, 3, 3, dtype=torch.float64), launches=1, train=(False,))


def test_the_class_table_comes_first():
    _, report = fused_se.convert(nn.Sequential(TimmSE(16, rd_channels=4)), return_report=True)
    assert [r.rule for r in report.replaced] == ["class"]
    _, report = fused_se.convert(nn.Sequential(fused_se.reference.SEModule(16, 4)), return_report=True)
    assert [r.rule for r in report.replaced] == ["classic"]


# ---- segmentation_models_pytorch ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smp():
    return pytest.importorskip("segmentation_models_pytorch")


def _unet_efficientnet_b0(smp):
    model = smp.Unet("efficientnet-b0", encoder_weights=None, encoder_depth=2, decoder_channels=(8, 8))
    randomize_norms(model)
    return model.double()


def test_smp_unet_efficientnet_b0_inline_se(smp):
    """EfficientNet-PyTorch's MBConvBlock: the SE written in the block's forward, fused in place."""
    model = _unet_efficientnet_b0(smp)
    original = copy.deepcopy(model)
    blocks = [n for n, m in model.named_modules() if type(m) is inline.block_class()]
    assert len(blocks) == 16
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: id(p) for n, p in model.named_parameters()}

    model, report = fused_se.convert(model, return_report=True)
    assert not report.skipped, str(report)
    assert [(r.name, r.rule, r.fused) for r in report.replaced] == [(n, "inline", "inline SE") for n in blocks]
    assert all(inline.is_installed(model.get_submodule(n)) for n in blocks)
    assert {n: id(p) for n, p in model.named_parameters()} == params
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)

    # encoder_depth=2 runs the first five blocks (the first without expansion, the third with
    # drop-connect, which draws in train mode); the decoder takes the third's output, so the
    # backward reaches three of them
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ran = []
    hooks = [b.register_forward_pre_hook(lambda b, _: ran.append(b)) for b in original.encoder._blocks]
    with torch.no_grad():
        original.eval()(x)
    for hook in hooks:
        hook.remove()
    assert not ran[0]._has_expansion and any(b._has_drop_connect for b in ran[:3])
    _, grads = model_outputs_and_grads(original, (x,))
    reached = sum(grads[f"{n}._se_reduce.weight"] is not None for n in blocks)
    assert (len(ran), reached) == (5, 3)
    _assert_same(model, original, x, launches=len(ran), backward=reached)
    model.eval()
    original.eval()
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), record_launches() as launched:
        y = model(xc)
    assert launched.count("squeeze") == len(ran)
    torch.testing.assert_close(y, original(xc), rtol=1e-9, atol=1e-9)

    assert fused_se.convert(model, return_report=True)[1].replaced == []  # already fused
    assert fused_se.revert(model) is model
    assert not any(inline.is_installed(m) for m in model.modules())
    with torch.no_grad(), record_launches() as launched:
        torch.testing.assert_close(model(x), original(x), rtol=1e-9, atol=1e-9)
    assert launched == []


def test_smp_se_resnext50_blocks_found_by_structure(smp):
    """smp's SENet SEModule (avg_pool, fc1, relu, fc2, sigmoid as 1x1 convs with bias): 16 blocks in
    the SE-ResNeXt-50 Unet, found by the structural match; one block run against the original."""
    from segmentation_models_pytorch.encoders._senet import SEModule

    model = smp.Unet("se_resnext50_32x4d", encoder_weights=None)
    state = list(model.state_dict())
    model, report = fused_se.convert(model, return_report=True)
    assert len(report.replaced) == 16 and not report.skipped, str(report)
    assert {(r.original, r.rule, r.fused) for r in report.replaced} == {
        ("SEModule", "structure", "FusedLayersSEModule")
    }
    assert list(model.state_dict()) == state
    assert not any(type(m) is SEModule for m in model.modules())

    se = SEModule(32, 4).double()
    block = nn.Sequential(nn.Identity(), se)
    fused = fused_se.convert(copy.deepcopy(block))
    assert type(fused[1]) is fused_se.adapters.FusedLayersSEModule and fused[1]._paths == ("fc1", "fc2")
    _assert_same(fused, block, torch.randn(2, 32, 4, 3, dtype=torch.float64), launches=1)


# ---- FX and TorchScript on converted models ----------------------------------------------------


def _fused_nodes(gm: torch.fx.GraphModule) -> int:
    return sum(
        n.op == "call_module" and isinstance(gm.get_submodule(n.target), fused_se.FusedSEModule) for n in gm.graph.nodes
    )


def test_symbolic_trace_of_a_converted_timm_model():
    model = timm.create_model("seresnet18").double().eval()
    randomize_norms(model)
    original = copy.deepcopy(model)
    fused_se.convert(model, fuse_residual=True)
    gm = torch.fx.symbolic_trace(model)
    assert _fused_nodes(gm) == 8  # each fused SE one node; the blocks' tails traced as their class writes them
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad(), record_launches() as launched:
        y = gm(x)
    assert launched.count("squeeze") == 8
    torch.testing.assert_close(y, original(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "make,nodes",
    [
        (lambda: timm.create_model("seresnet18"), ["layer1", "layer2"]),
        (lambda: torchvision.models.mobilenet_v3_small(), ["features.1", "features.4"]),
    ],
    ids=["timm-seresnet18", "tv-mobilenet_v3_small"],
)
def test_create_feature_extractor_on_a_converted_model(make, nodes):
    """torchvision's feature extraction, with no leaf modules named: the fused blocks are nodes of its
    graphs (train and eval) and the features are the original's."""
    model = make().double()
    randomize_norms(model)
    original = copy.deepcopy(model)
    fused_se.convert(model)
    extractor = create_feature_extractor(model, return_nodes=nodes)
    reference = create_feature_extractor(original, return_nodes=nodes)
    assert _fused_nodes(extractor) >= 2
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for train in (False, True):
        extractor.train(train)
        reference.train(train)
        with torch.no_grad(), record_launches() as launched:
            got = extractor(x)
        assert launched.count("squeeze") == _fused_nodes(extractor)
        with torch.no_grad():
            want = reference(x)
        for name in nodes:
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9)


def _refuses_script(model: nn.Module) -> None:
    with pytest.raises(RuntimeError, match=r"call fused_se\.revert\(model\) before scripting") as info:
        torch.jit.script(model)
    assert "\n" not in str(info.value)


def test_torch_jit_script_says_to_revert_first():
    _refuses_script(fused_se.convert(nn.Sequential(nn.Conv2d(3, 16, 1), TimmSE(16))))
    _refuses_script(fused_se.convert(timm.create_model("seresnet18"), fuse_residual=True).layer1[0])
    model = fused_se.revert(fused_se.convert(nn.Sequential(nn.Conv2d(3, 16, 1), TimmSE(16))))
    torch.jit.script(model)  # reverted: scripts as before
    model = fused_se.revert(fused_se.convert(timm.create_model("seresnet18").layer1[0], fuse_residual=True))
    assert not tails.is_installed(model) and "__prepare_scriptable__" not in model.__dict__


def test_smp_block_with_inline_se_under_fx_and_jit(smp):
    """A traced Unet runs the blocks' own forward (the original graph); scripting one says to revert."""
    model = _unet_efficientnet_b0(smp).eval()
    original = copy.deepcopy(model)
    fused_se.convert(model)
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad(), record_launches() as launched:
        torch.testing.assert_close(gm(x), original(x), rtol=1e-9, atol=1e-9)
    assert launched == []
    _refuses_script(model.encoder._blocks[0])
    fused_se.revert(model)
    assert "__prepare_scriptable__" not in model.encoder._blocks[0].__dict__
