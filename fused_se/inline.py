"""SE written inline in a block's forward, fused in place: EfficientNet-PyTorch's MBConvBlock.

EfficientNet-PyTorch's MBConvBlock (as segmentation_models_pytorch vendors it in
encoders/_efficientnet.py) has no SE module: its forward runs

    x_squeezed = F.adaptive_avg_pool2d(x, 1)
    x_squeezed = self._se_expand(self._swish(self._se_reduce(x_squeezed)))
    x = torch.sigmoid(x_squeezed) * x

between the depthwise conv and the projection. convert gives such a block a forward of its own,
the same modules in the same order with the fused op in the SE's place (the SE's two 1x1 convs
seen as a FusedConv2dSEModule that is no child of the block), as fused_se.tails does for residual
tails: the block keeps its modules and its state_dict, drop-connect draws as before, and revert
removes the forward. The class's forward is checked to be the one mirrored here (the names its
code uses) before anything is installed. Under an FX trace the block runs its own class's forward.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Optional

import torch
from torch import fx, nn

from .modules import FusedConv2dSEModule, has_forward, install_forward, remove_forward

_SMP_EFFICIENTNET = "segmentation_models_pytorch.encoders._efficientnet"
_KIND = "MBConvBlock"

# The names segmentation_models_pytorch 0.6's MBConvBlock.forward uses: another forward (a later
# release, the EfficientNet-PyTorch package's own) is left alone rather than run wrongly.
_MBCONV_NAMES = frozenset(
    {
        "_has_expansion", "_expand_conv", "_bn0", "_swish", "_depthwise_conv", "_bn1", "_has_se", "F",
        "adaptive_avg_pool2d", "_se_reduce", "_se_expand", "torch", "sigmoid", "_project_conv", "_bn2",
        "_has_drop_connect", "drop_connect", "training",
    }
)  # fmt: skip


class InlineSkip(Exception):
    """A block whose inline SE cannot be fused; the message is the reason."""


def block_class() -> Optional[type]:
    module = sys.modules.get(_SMP_EFFICIENTNET)
    return getattr(module, _KIND, None) if module is not None else None


def _check_se_conv(name: str, conv: nn.Module) -> None:
    """smp's same-padding convs: with one tap and no static padding they are plain 1x1 convs."""
    if not isinstance(conv, nn.Conv2d):
        raise InlineSkip(f"{name} is a {type(conv).__name__}, not a Conv2d")
    if not isinstance(getattr(conv, "static_padding", nn.Identity()), nn.Identity):
        raise InlineSkip(f"{name} pads its input ({conv.static_padding!r})")


def build(block: nn.Module, act_of: Callable[[nn.Module], str]) -> Optional[FusedConv2dSEModule]:
    """The block's SE as a fused block around its own convs; None for a block without SE. Raises
    InlineSkip (or convert's skip, for an activation the kernels do not have) with the reason."""
    names = getattr(getattr(type(block), "forward", None), "__code__", None)
    if names is None or set(names.co_names) != _MBCONV_NAMES:
        raise InlineSkip(f"{type(block).__qualname__}.forward is not the one this conversion mirrors")
    if not block._has_se:
        return None
    _check_se_conv("_se_reduce", block._se_reduce)
    _check_se_conv("_se_expand", block._se_expand)
    act = act_of(block._swish)
    try:
        return FusedConv2dSEModule.from_layers(
            block._se_reduce, block._se_expand, act=act, gate="sigmoid", names=("_se_reduce", "_se_expand")
        )
    except (TypeError, ValueError) as e:
        raise InlineSkip(str(e)) from None


def fused_mbconv_forward(
    block: nn.Module, inputs: torch.Tensor, drop_connect_rate: Optional[float] = None, *, se: FusedConv2dSEModule
) -> torch.Tensor:
    """MBConvBlock.forward (segmentation_models_pytorch 0.6) with the fused SE in its place."""
    if isinstance(inputs, fx.Proxy):
        return type(block).forward(block, inputs, drop_connect_rate)
    x = inputs
    if block._has_expansion:
        x = block._expand_conv(inputs)
        x = block._bn0(x)
        x = block._swish(x)
    x = block._depthwise_conv(x)
    x = block._bn1(x)
    x = block._swish(x)
    op, args = se._excitation()
    x = op(x, *args, None, "identity", None)
    x = block._project_conv(x)
    x = block._bn2(x)
    if block._has_drop_connect:
        if drop_connect_rate is not None and drop_connect_rate > 0:
            drop_connect = sys.modules[type(block).__module__].drop_connect
            x = drop_connect(x, p=drop_connect_rate, training=block.training)
        x = x + inputs
    return x


def install(block: nn.Module, se: FusedConv2dSEModule) -> None:
    install_forward(block, fused_mbconv_forward, se=se)


def is_installed(block: nn.Module) -> bool:
    return has_forward(block, fused_mbconv_forward)


def se_of(block: nn.Module) -> FusedConv2dSEModule:
    """The fused SE the installed forward runs."""
    return block.__dict__["forward"].keywords["se"]


def uninstall(block: nn.Module) -> None:
    remove_forward(block, fused_mbconv_forward)
