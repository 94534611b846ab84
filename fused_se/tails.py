"""Residual-block tails routed through the fused SE's epilogue: convert(model, fuse_residual=True).

In timm's ResNet blocks (Bottleneck, BasicBlock: SE-ResNet, SE-ResNeXt, ECA-ResNet, ...) the
attention block's output goes through drop_path, `+= shortcut` and the block's last ReLU:

    out = act(drop_path(se(x)) + shortcut)

Unfused, that tail reads and writes x's size about 8 times; in the SE's scale pass it costs one
more read (the shortcut) than the SE alone. A block whose tail is fused keeps its modules and
its state_dict; only its forward changes, to one that runs the same modules in the same order
and hands the shortcut, drop_path's per-sample factor and the activation to the fused SE. The
new forward is an instance attribute (a functools.partial, so it pickles and deep-copies with
the block); revert removes it.

MONAI's SEBlock (SEResNet, SEResNeXt, SENet154's bottlenecks, 1-D to 3-D) ends the same way,
`act(se_layer(conv3(conv2(conv1(x)))) + project(x))` with no drop-path: kind "monai SEBlock".
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import fx, nn

from .modules import FusedSEModule, has_forward, install_forward, remove_forward
from .runtime.modules import children

# The modules each block's forward runs, in timm's order (timm.models.resnet).
_BLOCK_LAYOUTS = {
    "Bottleneck": (
        ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3"),
        "act3",
    ),
    "BasicBlock": (("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2"), "act2"),
}
_OUT_ACTS = {nn.ReLU: "relu", nn.Identity: "identity"}
# MONAI's SEBlock and its subclasses, which keep its forward: project(x) first, then the convs.
_MONAI = "monai SEBlock"
_MONAI_CLASSES = ("SEBlock", "SEBottleneck", "SEResNetBottleneck", "SEResNeXtBottleneck")
_MONAI_STEPS = ("conv1", "conv2", "conv3")


class TailSkip(Exception):
    """A residual block whose tail cannot be fused; the message is the reason."""


def block_kind(module: nn.Module) -> Optional[str]:
    """ "Bottleneck" or "BasicBlock" for timm's ResNet blocks, "monai SEBlock" for MONAI's (exact
    classes), else None."""
    resnet = sys.modules.get("timm.models.resnet")
    for kind in _BLOCK_LAYOUTS:
        cls = getattr(resnet, kind, None) if resnet is not None else None
        if cls is not None and type(module) is cls:
            return kind
    monai = sys.modules.get("monai.networks.blocks.squeeze_and_excitation")
    if monai is not None and any(type(module) is getattr(monai, c, None) for c in _MONAI_CLASSES):
        return _MONAI
    return None


def se_of(block: nn.Module, kind: str) -> Optional[nn.Module]:
    """The block's attention block (``se``; MONAI's ``se_layer``)."""
    return getattr(block, "se_layer" if kind == _MONAI else "se", None)


def _drop_path_class() -> Optional[type]:
    drop = sys.modules.get("timm.layers.drop")
    return getattr(drop, "DropPath", None) if drop is not None else None


def _out_act(module: nn.Module) -> str:
    name = _OUT_ACTS.get(type(module))
    if name is None:
        raise TailSkip(f"the activation after the add, {type(module).__name__}, is not ReLU or Identity")
    return name


def check_block(block: nn.Module, kind: str) -> str:
    """Raises TailSkip with the reason if the block's tail cannot be fused; else describes it."""
    if kind == _MONAI:
        return _check_monai(block)
    steps, act_name = _BLOCK_LAYOUTS[kind]
    missing = [n for n in (*steps, act_name, "se", "drop_path", "downsample") if not hasattr(block, n)]
    if missing:
        raise TailSkip(f"not the timm {kind} layout this conversion knows (no {', '.join(missing)})")
    if not isinstance(block.se, FusedSEModule):
        raise TailSkip(f"its attention block {type(block.se).__name__} was not fused")
    if block.drop_path is not None and type(block.drop_path) is not _drop_path_class():
        raise TailSkip(f"{type(block.drop_path).__name__} between the SE and the add is not timm's DropPath")
    act = _out_act(getattr(block, act_name))
    drop = "" if block.drop_path is None else f" * drop_path(p={block.drop_path.drop_prob:g})"
    return f"out = {act}(se(x){drop} + shortcut)"


def _check_monai(block: nn.Module) -> str:
    missing = [n for n in (*_MONAI_STEPS, "project", "se_layer", "act") if not hasattr(block, n)]
    if missing:
        raise TailSkip(f"not the MONAI SEBlock layout this conversion knows (no {', '.join(missing)})")
    if not isinstance(block.se_layer, FusedSEModule):
        raise TailSkip(f"its attention block {type(block.se_layer).__name__} was not fused")
    if getattr(block.se_layer, "add_input", False):
        raise TailSkip("its attention block adds its own input (add_residual)")
    return f"out = {_out_act(block.act)}(se(x) + project(x))"


def _sample_scale(drop_path: Optional[nn.Module], x: torch.Tensor) -> Optional[torch.Tensor]:
    """drop_path's per-sample factor, drawn as timm draws it (same generator calls, same values)."""
    if drop_path is None or not drop_path.training or drop_path.drop_prob == 0.0:
        return None
    keep = 1.0 - drop_path.drop_prob
    factor = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if keep > 0.0 and drop_path.scale_by_keep:
        factor.div_(keep)
    return factor.view(x.shape[0])


def fused_tail_forward(block: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The block's forward, with its tail in the SE's scale pass (its class's own under an FX trace,
    where the fused SE is one node)."""
    if isinstance(x, fx.Proxy):
        return type(block).forward(block, x)
    # the block's modules through its children's dict (runtime.modules), not Module.__getattr__
    # (about 0.7 us a lookup, a dozen a call); a name that is not a child is read as an attribute
    own = children(block)

    def part(name: str):
        return own[name] if name in own else getattr(block, name)

    if kind == _MONAI:  # as MONAI's SEBlock.forward: the projection first
        shortcut = part("project")(x)
        for name in _MONAI_STEPS:
            x = part(name)(x)
        return part("se_layer")(x, shortcut, out_act=_out_act(part("act")))
    steps, act_name = _BLOCK_LAYOUTS[kind]
    shortcut = x
    for name in steps:
        x = part(name)(x)
    sample_scale = _sample_scale(part("drop_path"), x)
    downsample = part("downsample")
    if downsample is not None:
        shortcut = downsample(shortcut)
    return part("se")(x, shortcut, out_act=_out_act(part(act_name)), sample_scale=sample_scale)


def install(block: nn.Module, kind: str) -> None:
    install_forward(block, fused_tail_forward, kind=kind)


def is_installed(block: nn.Module) -> bool:
    return has_forward(block, fused_tail_forward)


def uninstall(block: nn.Module) -> None:
    remove_forward(block, fused_tail_forward)
