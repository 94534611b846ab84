"""convert(model) swaps the SE blocks of a built model for fused ones; revert(model) undoes it.

Recognised blocks (by exact class, looked up among the modules already imported, so importing
fused_se never imports timm or torchvision):

    timm SEModule / SqueezeExcite            fc1, act, fc2, gate (1x1 convs)    -> FusedConv2dSEModule
    timm _efficientnet_blocks.SqueezeExcite  conv_reduce, act1, conv_expand     -> FusedConv2dSEModule
    torchvision ops.SqueezeExcitation        fc1, activation, fc2, scale_act.   -> FusedConv2dSEModule
    timm EffectiveSEModule                   fc (C x C 1x1 conv), gate          -> FusedEffectiveSEModule
    timm EcaModule / CecaModule              conv (Conv1d(1, 1, k)), gate       -> FusedEcaModule
    any module shaped like the classic SE    avg_pool, fc = Sequential(Linear, act, Linear, gate)
                                                                                -> FusedSEModule
    MONAI ChannelSELayer (1-D, 2-D, 3-D)     fc = Sequential(Linear, act, Linear, gate), add_residual
                                                                                -> FusedLayersSEModule
    Hugging Face EfficientNet, ALIGN SE      reduce, act_reduce, expand (1x1 convs), sigmoid
                                                                                -> FusedConv2dSEModule
    Hugging Face RegNetSELayer               attention = Sequential(conv, ReLU, conv, Sigmoid)
                                                                                -> FusedLayersSEModule
    Hugging Face PP-LCNet (v1, v3, v4) SE    convolutions = ModuleList(conv, ReLU, conv, Hardsigmoid)
                                                                                -> FusedLayersSEModule
    Hugging Face Qwen2.5-Omni's ECAPA SE     conv1, relu, conv2 (pointwise Conv1d), sigmoid
                                                                                -> FusedConv2dSEModule
    SpeechBrain ECAPA-TDNN SEBlock           conv1.conv, conv2.conv, with relative lengths
                                                                                -> FusedSpeechBrainSEBlock
    segmentation_models_pytorch SCSEModule   cSE = Sequential(pool, conv, act, conv, gate), sSE = Sequential(conv, Sigmoid)
                                                                                -> FusedSCSEModule

Then, for blocks the table does not name:

    SE inline in a block's forward: segmentation_models_pytorch's EfficientNet MBConvBlock
                                                                 -> a forward with the fused op (inline.py)
    any small module whose forward computes x * gate(FC(act(FC(mean(x)))))
                                                                 -> FusedLayersSEModule (structural.py)

The fused block holds the original's own layers, so it shares their Parameter objects (optimizer
state and tied weights keep working) and the model's state_dict keeps its keys and values. What
cannot be fused (a norm layer between the FCs, a max-pool added to the squeeze, an activation the
kernels do not have) stays as it is and is reported with the reason. The report names the rule that
found each block: "class" (the table), "classic" (the classic SE's children), "structure" (its
traced forward), "inline" (an SE inside a block's forward).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Union

from torch import nn

from . import inline, structural, tails
from .adapters import FusedLayersSEModule, FusedSpeechBrainSEBlock
from .modules import FusedConv2dSEModule, FusedEcaModule, FusedEffectiveSEModule, FusedSCSEModule, FusedSEModule

logger = logging.getLogger("fused_se")

# The attribute of a fused block that keeps the module it replaced, for revert. Kept out of
# the module tree (a plain attribute), so it adds nothing to state_dict or parameters().
_ORIGINAL = "_fused_se_original"


class _Skip(Exception):
    """A recognised SE block that cannot be fused; the message is the reason."""


def _imported_class(module_name: str, class_name: str) -> Optional[type]:
    """The class if its module is already imported (never imports anything)."""
    module = sys.modules.get(module_name)
    return getattr(module, class_name, None) if module is not None else None


def _activation_name(module: object, kinds: dict[str, list[tuple[str, str]]], role: str) -> str:
    for name, classes in kinds.items():
        for module_name, class_name in classes:
            cls = getattr(nn, class_name) if module_name == "torch.nn" else _imported_class(module_name, class_name)
            if cls is not None and type(module) is cls:
                _check_parameterised(module, role)
                return name
    raise _Skip(f"{role} {type(module).__name__} is not supported (supported: {', '.join(kinds)})")


def _check_parameterised(module: object, role: str) -> None:
    """MONAI's Swish, x * sigmoid(alpha * x), is SiLU only at alpha = 1."""
    swish = _imported_class("monai.networks.blocks.activation", "Swish")
    if swish is not None and type(module) is swish and module.alpha != 1.0:
        raise _Skip(f"{role} Swish with alpha={module.alpha} is not SiLU (alpha=1)")


_ACTS = {
    "relu": [("torch.nn", "ReLU")],
    "silu": [
        ("torch.nn", "SiLU"),
        ("timm.layers.activations", "Swish"),
        ("timm.layers.activations_me", "SwishMe"),
        ("transformers.activations", "SiLUActivation"),
        ("monai.networks.blocks.activation", "Swish"),
        ("monai.networks.blocks.activation", "MemoryEfficientSwish"),
    ],
}
_GATES = {
    "sigmoid": [("torch.nn", "Sigmoid"), ("timm.layers.activations", "Sigmoid")],
    "hard_sigmoid": [
        ("torch.nn", "Hardsigmoid"),
        ("timm.layers.activations", "HardSigmoid"),
        ("timm.layers.activations_me", "HardSigmoidMe"),
    ],
}


def _act(module: object, role: str = "activation") -> str:
    return _activation_name(module, _ACTS, role)


def _gate(module: object) -> str:
    return _activation_name(module, _GATES, "gate")


def _no_maxpool(module: nn.Module) -> None:
    if getattr(module, "add_maxpool", False):
        raise _Skip("add_maxpool: the squeeze also takes a max over H and W")


def _two_convs(reduce_name: str, act_name: str, expand_name: str, gate_name: str):
    def build(module: nn.Module) -> FusedSEModule:
        act = _act(getattr(module, act_name))
        gate = _gate(getattr(module, gate_name))
        reduce, expand = getattr(module, reduce_name), getattr(module, expand_name)
        try:
            return FusedConv2dSEModule.from_layers(reduce, expand, act=act, gate=gate, names=(reduce_name, expand_name))
        except (TypeError, ValueError) as e:
            raise _Skip(str(e)) from None

    return build


def _timm_se(module: nn.Module) -> FusedSEModule:
    _no_maxpool(module)
    if not isinstance(module.bn, nn.Identity):
        raise _Skip(f"a {type(module.bn).__name__} between the two FCs")
    return _two_convs("fc1", "act", "fc2", "gate")(module)


def _timm_ese(module: nn.Module) -> FusedSEModule:
    _no_maxpool(module)
    gate = _gate(module.gate)
    try:
        return FusedEffectiveSEModule.from_layer(module.fc, gate=gate)
    except (TypeError, ValueError) as e:
        raise _Skip(str(e)) from None


def _timm_eca(circular: bool):
    def build(module: nn.Module) -> FusedSEModule:
        if getattr(module, "conv2", None) is not None:
            raise _Skip("use_mlp: a hidden layer in the channel conv")
        if circular and module.padding != (module.conv.kernel_size[0] - 1) // 2:
            raise _Skip(f"circular padding {module.padding} is not (k - 1) // 2")
        gate = _gate(module.gate)
        try:
            return FusedEcaModule.from_layer(module.conv, circular=circular, gate=gate)
        except (TypeError, ValueError) as e:
            raise _Skip(str(e)) from None

    return build


def _torchvision_se(module: nn.Module) -> FusedSEModule:
    pool = module.avgpool
    if not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))):
        raise _Skip(f"the squeeze is {pool!r}, not a global average")
    return _two_convs("fc1", "activation", "fc2", "scale_activation")(module)


def _global_average(pool: nn.Module) -> None:
    pools = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
    size = getattr(pool, "output_size", None)
    if not (isinstance(pool, pools) and (size == 1 or (isinstance(size, tuple) and set(size) == {1}))):
        raise _Skip(f"the squeeze is {pool!r}, not a global average")


def _wrapped(build):
    """build's result, or the reason it cannot be built as a skip."""
    try:
        return build()
    except (TypeError, ValueError) as e:
        raise _Skip(str(e)) from None


def _layers_in(container: str, act_at: int, gate_at: int):
    """A block whose two layers and activations sit in one container (Sequential, ModuleList)
    as (reduce, act, expand, gate) at positions 0 to 3."""

    def build(module: nn.Module) -> FusedSEModule:
        layers = getattr(module, container)
        if len(layers) != 4:
            raise _Skip(f"{container} holds {len(layers)} modules, not (reduce, act, expand, gate)")
        act, gate = _act(layers[act_at]), _gate(layers[gate_at])
        return _wrapped(
            lambda: FusedLayersSEModule.from_children(
                {container: layers}, f"{container}.0", f"{container}.2", act=act, gate=gate
            )
        )

    return build


def _monai_se(module: nn.Module) -> FusedSEModule:
    """MONAI's ChannelSELayer (and ResidualSELayer): x * s, plus x with add_residual (`result += x`,
    no activation after it)."""
    _global_average(module.avg_pool)
    fc = module.fc
    act, gate = _act(fc[1]), _gate(fc[3])
    add_input = bool(module.add_residual)
    return _wrapped(
        lambda: FusedLayersSEModule.from_children({"fc": fc}, "fc.0", "fc.2", act=act, gate=gate, add_input=add_input)
    )


def _hf_efficientnet_se(module: nn.Module) -> FusedSEModule:
    _global_average(module.squeeze)
    return _two_convs("reduce", "act_reduce", "expand", "act_expand")(module)


def _hf_regnet_se(module: nn.Module) -> FusedSEModule:
    _global_average(module.pooler)
    return _layers_in("attention", 1, 3)(module)


def _hf_pp_lcnet_se(module: nn.Module) -> FusedSEModule:
    _global_average(module.avg_pool)
    return _layers_in("convolutions", 1, 3)(module)


def _hf_pp_ocr_det_se(module: nn.Module) -> FusedSEModule:
    raise _Skip("the gate clamp(0.2 a + 0.5, 0, 1) is not a sigmoid or torch's hard sigmoid (slope 1/6)")


def _ecapa_se(module: nn.Module) -> FusedSEModule:
    """Hugging Face's copy of ECAPA-TDNN's SE (Qwen2.5-Omni): conv1, relu, conv2, sigmoid over the mean of a (B, C, L)."""
    return _two_convs("conv1", "relu", "conv2", "sigmoid")(module)


_SPEECHBRAIN_CONVS = (("speechbrain.nnet.CNN", "Conv1d"), ("speechbrain.lobes.models.ECAPA_TDNN", "Conv1d"))


def _speechbrain_conv(name: str, wrapper: nn.Module) -> None:
    classes = [_imported_class(m, c) for m, c in _SPEECHBRAIN_CONVS]
    if type(wrapper) not in [c for c in classes if c is not None]:
        raise _Skip(f"{name} is a {type(wrapper).__name__}, not SpeechBrain's Conv1d")
    if not wrapper.skip_transpose or wrapper.unsqueeze:
        raise _Skip(f"{name} transposes or unsqueezes its input (skip_transpose=False or a 2-D input)")
    if wrapper.padding not in ("same", "valid", "causal"):
        raise _Skip(f"{name} has padding {wrapper.padding!r}")


def _speechbrain_se(module: nn.Module) -> FusedSEModule:
    """SpeechBrain's ECAPA-TDNN SEBlock: forward(x, lengths) with relative lengths."""
    _speechbrain_conv("conv1", module.conv1)
    _speechbrain_conv("conv2", module.conv2)
    act, gate = _act(module.relu), _gate(module.sigmoid)
    children = {"conv1": module.conv1, "conv2": module.conv2}
    return _wrapped(
        lambda: FusedSpeechBrainSEBlock.from_children(children, "conv1.conv", "conv2.conv", act=act, gate=gate)
    )


def _smp_scse(module: nn.Module) -> FusedSEModule:
    """segmentation_models_pytorch's SCSEModule: x * cSE(x) + x * sSE(x), the spatial gate a
    Conv2d(C, 1, 1) and a sigmoid."""
    cse, sse = module.cSE, module.sSE
    if not (isinstance(cse, nn.Sequential) and len(cse) == 5 and isinstance(sse, nn.Sequential) and len(sse) == 2):
        raise _Skip("cSE is not (pool, conv, act, conv, gate) or sSE not (conv, gate)")
    _global_average(cse[0])
    act, gate = _act(cse[2]), _gate(cse[4])
    if _activation_name(sse[1], _GATES, "spatial gate") != "sigmoid":
        raise _Skip(f"the spatial gate {type(sse[1]).__name__} is not a sigmoid")
    return _wrapped(lambda: FusedSCSEModule.from_module(module, act=act, gate=gate))


_HF = "transformers.models."

# (module, class, builder) of the blocks recognised by class.
_KNOWN: list[tuple[str, str, Callable[[nn.Module], FusedSEModule]]] = [
    ("timm.layers.squeeze_excite", "SEModule", _timm_se),
    ("timm.layers.squeeze_excite", "EffectiveSEModule", _timm_ese),
    ("timm.models._efficientnet_blocks", "SqueezeExcite", _two_convs("conv_reduce", "act1", "conv_expand", "gate")),
    ("timm.models.efficientnet_blocks", "SqueezeExcite", _two_convs("conv_reduce", "act1", "conv_expand", "gate")),
    ("timm.layers.eca", "EcaModule", _timm_eca(circular=False)),
    ("timm.layers.eca", "CecaModule", _timm_eca(circular=True)),
    ("torchvision.ops.misc", "SqueezeExcitation", _torchvision_se),
    ("monai.networks.blocks.squeeze_and_excitation", "ChannelSELayer", _monai_se),
    ("monai.networks.blocks.squeeze_and_excitation", "ResidualSELayer", _monai_se),
    (_HF + "efficientnet.modeling_efficientnet", "EfficientNetSqueezeExciteLayer", _hf_efficientnet_se),
    (_HF + "align.modeling_align", "AlignVisionSqueezeExciteLayer", _hf_efficientnet_se),
    (_HF + "regnet.modeling_regnet", "RegNetSELayer", _hf_regnet_se),
    (_HF + "pp_lcnet.modeling_pp_lcnet", "PPLCNetSqueezeExcitationModule", _hf_pp_lcnet_se),
    (_HF + "pp_lcnet_v3.modeling_pp_lcnet_v3", "PPLCNetV3SqueezeExcitationModule", _hf_pp_lcnet_se),
    (_HF + "pp_lcnet_v4.modeling_pp_lcnet_v4", "PPLCNetV4SqueezeExcitationModule", _hf_pp_lcnet_se),
    (
        _HF + "pp_ocrv5_mobile_det.modeling_pp_ocrv5_mobile_det",
        "PPOCRV5MobileDetSqueezeExcitationModule",
        _hf_pp_ocr_det_se,
    ),
    (
        _HF + "pp_ocrv6_small_det.modeling_pp_ocrv6_small_det",
        "PPOCRV6SmallDetSqueezeExcitationModule",
        _hf_pp_ocr_det_se,
    ),
    (_HF + "qwen2_5_omni.modeling_qwen2_5_omni", "SqueezeExcitationBlock", _ecapa_se),
    ("speechbrain.lobes.models.ECAPA_TDNN", "SEBlock", _speechbrain_se),
    ("segmentation_models_pytorch.base.modules", "SCSEModule", _smp_scse),
]


def _classic_shape(module: nn.Module) -> bool:
    """Children exactly avg_pool = AdaptiveAvgPool2d(1) and fc = Sequential(Linear, act, Linear, gate)."""
    children = dict(module.named_children())
    if set(children) != {"avg_pool", "fc"} or dict(module.named_parameters(recurse=False)):
        return False
    pool, fc = children["avg_pool"], children["fc"]
    return (
        isinstance(pool, nn.AdaptiveAvgPool2d)
        and pool.output_size in (1, (1, 1))
        and type(fc) is nn.Sequential
        and len(fc) == 4
        and type(fc[0]) is nn.Linear
        and type(fc[2]) is nn.Linear
    )


def _classic(module: nn.Module) -> FusedSEModule:
    fc = module.fc
    act, gate = _act(fc[1]), _gate(fc[3])
    try:
        return FusedSEModule.from_sequential(fc, act=act, gate=gate)
    except (TypeError, ValueError) as e:
        raise _Skip(str(e)) from None


class _NoMatch(Exception):
    """Not an SE block after all (the structural match): convert looks inside it as usual."""


def _structural(module: nn.Module) -> FusedSEModule:
    try:
        return structural.build(module, _act, _gate)
    except structural.NoMatch as e:
        raise _NoMatch(str(e)) from None
    except structural.NearMiss as e:
        raise _Skip(str(e)) from None


def _inline(block: nn.Module) -> nn.Module:
    """The block itself, its forward now running the fused SE in the place of its inline one."""
    if inline.is_installed(block):
        raise _NoMatch("already fused")
    try:
        se = inline.build(block, _act)
    except inline.InlineSkip as e:
        raise _Skip(str(e)) from None
    if se is None:
        raise _NoMatch("no SE in this block")
    inline.install(block, se)
    return block


def _builder(module: nn.Module) -> Optional[tuple[Callable[[nn.Module], nn.Module], str]]:
    """How to fuse the module, and the rule that says so; None where it is no SE block."""
    if isinstance(module, FusedSEModule):
        return None
    cls = type(module)
    for module_name, class_name, build in _KNOWN:
        if cls is _imported_class(module_name, class_name):
            return build, "class"
    if cls is inline.block_class():
        return _inline, "inline"
    if _classic_shape(module):
        return _classic, "classic"
    if structural.is_candidate(module):
        return _structural, "structure"
    return None


# --------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replaced:
    name: str  # the module's qualified name in the model ("" for the model itself)
    original: str  # its class
    fused: str  # the fused block's class ("inline SE" for a block whose forward now runs it)
    details: str
    rule: str = "class"  # what found it: "class", "classic", "structure", "inline" (tails: "tail")


@dataclass(frozen=True)
class Skipped:
    name: str
    original: str
    reason: str
    rule: str = "class"


@dataclass
class ConversionReport:
    """What convert replaced and what it left alone, and why. str() gives a table."""

    replaced: list[Replaced] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # With fuse_residual=True: the residual blocks whose tail runs in the SE's epilogue, and those left as they are.
    tails_fused: list[Replaced] = field(default_factory=list)
    tails_skipped: list[Skipped] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(name, original class, rule, outcome, details or reason) for every SE block found, then
        for every residual block whose tail was considered."""
        out = [(r.name or "<model>", r.original, r.rule, f"-> {r.fused}", r.details) for r in self.replaced]
        out += [(s.name or "<model>", s.original, s.rule, "skipped", s.reason) for s in self.skipped]
        out += [(r.name or "<model>", r.original, "tail", "tail fused", r.details) for r in self.tails_fused]
        out += [(s.name or "<model>", s.original, "tail", "tail skipped", s.reason) for s in self.tails_skipped]
        return out

    def __str__(self) -> str:
        head = f"fused_se.convert: {len(self.replaced)} replaced, {len(self.skipped)} skipped"
        if self.tails_fused or self.tails_skipped:
            head += f"; residual tails: {len(self.tails_fused)} fused, {len(self.tails_skipped)} skipped"
        rows = self.rows()
        if not rows:
            return head + " (no SE block found)"
        table = [("module", "class", "rule", "outcome", "details"), *rows]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines = [head]
        for row in table:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# convert and revert
# --------------------------------------------------------------------------------------


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def convert(
    model: nn.Module, *, fuse_residual: bool = False, verbose: bool = False, return_report: bool = False
) -> Union[nn.Module, tuple[nn.Module, ConversionReport]]:
    """Replaces, in place, every SE block of ``model`` that the fused kernels can run.

    Returns the model (the fused block itself if ``model`` is an SE block), or ``(model,
    report)`` with ``return_report=True``. ``verbose=True`` logs the report's table on the
    "fused_se" logger (to stderr when logging is not configured). A module reached through
    several names is replaced once, everywhere. Blocks already fused are left as they are.

    Blocks are found by class (the table above), by their inline SE (smp's EfficientNet
    MBConvBlock: its forward is replaced, its modules kept), by the classic SE's children, and
    else by their forward traced with torch.fx (fused_se.structural); the report names the rule.

    ``fuse_residual=True`` also routes the tail of timm's ResNet blocks (Bottleneck,
    BasicBlock) and of MONAI's SEBlock (its SE-ResNet bottlenecks) whose attention block is fused, ``act(drop_path(se(x)) + shortcut)``, through
    the SE's scale pass (see fused_se.tails); a block with anything else between the SE and
    the add is left as it is and reported.
    """
    _check_model(model)
    if not isinstance(fuse_residual, bool):
        raise TypeError(f"fuse_residual must be a bool; got {type(fuse_residual).__name__}")
    report = ConversionReport()
    handled: dict[int, Optional[FusedSEModule]] = {}  # id -> its fused block, or None if skipped
    handled_names: set[str] = set()
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if _below(name, handled_names):
            continue  # inside a block already replaced or skipped
        if id(module) not in handled:
            found = _builder(module)
            if found is None:
                continue
            build, rule = found
            try:
                fused = build(module)
            except _NoMatch:
                continue
            except _Skip as e:
                report.skipped.append(Skipped(name, type(module).__name__, str(e), rule))
                fused = None
            else:
                if fused is module:  # changed in place (an inline SE): nothing to swap
                    details = inline.se_of(module).describe()
                    report.replaced.append(Replaced(name, type(module).__name__, "inline SE", details, rule))
                    fused = None
                else:
                    fused.train(module.training)
                    fused.__dict__[_ORIGINAL] = module
                    description = fused.describe()
                    report.replaced.append(
                        Replaced(name, type(module).__name__, type(fused).__name__, description, rule)
                    )
            handled[id(module)] = fused
        handled_names.add(name)
        fused = handled[id(module)]
        if fused is None:
            continue
        if not name:  # the model is itself an SE block
            model = fused
            break
        _set_child(model, name, fused)
    if fuse_residual:
        _fuse_tails(model, report)
    if verbose:
        _log(str(report))
    return (model, report) if return_report else model


def _fuse_tails(model: nn.Module, report: ConversionReport) -> None:
    for name, block in model.named_modules():
        kind = tails.block_kind(block)
        if kind is None or tails.se_of(block, kind) is None or tails.is_installed(block):
            continue
        try:
            details = tails.check_block(block, kind)
        except tails.TailSkip as e:
            report.tails_skipped.append(Skipped(name, kind, str(e)))
            continue
        tails.install(block, kind)
        report.tails_fused.append(Replaced(name, kind, "tail", details))


def _below(name: str, names: set[str]) -> bool:
    """Whether a strict ancestor of the module called `name` is in `names`."""
    if "" in names:
        return True
    parts = name.split(".")
    return any(".".join(parts[:i]) in names for i in range(1, len(parts)))


def revert(model: nn.Module) -> nn.Module:
    """Puts back, in place, every module that convert replaced in ``model``; returns the model
    (the original block itself if ``model`` is a fused block made by convert)."""
    _check_model(model)
    for module in model.modules():
        tails.uninstall(module)
        inline.uninstall(module)
    for name, module in list(model.named_modules(remove_duplicate=False)):
        original = module.__dict__.get(_ORIGINAL)
        if original is None:
            continue
        original.train(module.training)
        if not name:
            return original
        _set_child(model, name, original)
    return model


def _log(text: str) -> None:
    if logger.hasHandlers():
        logger.info(text)
    else:
        print(text, file=sys.stderr)
