"""Fused blocks that hold another code base's SE layers where that code base keeps them.

fused_se.convert swaps a model's SE blocks for fused ones that keep the original's own layers
under the original's own attribute names, so that the state_dict keeps its keys. The blocks in
fused_se.modules cover the layouts of timm and torchvision; these cover the rest:

    FusedLayersSEModule       the two layers anywhere below the block's children (a Sequential
                              `attention.0` / `attention.2`, a ModuleList, a wrapper's `conv1.conv`),
                              nn.Linear or pointwise convs; optionally + x (MONAI's add_residual)
    FusedSpeechBrainSEBlock   SpeechBrain's ECAPA-TDNN SEBlock: forward(x, lengths) with SpeechBrain's
                              relative lengths, as the model calls it
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import fx, nn

from .functional import _squeeze_excite
from .modules import FusedSEModule, _check_pointwise_conv, _weight_and_bias, descendant, traced_as_leaf


def _check_layer(name: str, layer: nn.Module, in_features: Optional[int], out_features: Optional[int]) -> None:
    if isinstance(layer, nn.Linear):
        if in_features is not None and (layer.in_features, layer.out_features) != (in_features, out_features):
            raise ValueError(
                f"{name} must map {in_features} to {out_features} features; got {layer.in_features} to "
                f"{layer.out_features}"
            )
        return
    _check_pointwise_conv(name, layer, in_features, out_features)


def _sizes(layer: nn.Module) -> tuple[Optional[int], Optional[int]]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return getattr(layer, "in_channels", None), getattr(layer, "out_channels", None)


class FusedLayersSEModule(FusedSEModule):
    """The two-FC SE around layers that sit anywhere below the block's children.

    ``children`` are the original block's children that hold the two layers (kept under the same
    names, so the state_dict keeps its keys); ``reduce`` and ``expand`` are the paths of the two
    layers below them ("attention.0", "conv1.conv"), each an nn.Linear or a pointwise Conv1d,
    Conv2d or Conv3d. With ``add_input`` the block returns x * s + x (MONAI's ``add_residual``):
    the residual tail with x as the shortcut, in the same pass.
    """

    @classmethod
    def from_children(
        cls,
        children: dict[str, nn.Module],
        reduce: str,
        expand: str,
        *,
        act: str,
        gate: str,
        add_input: bool = False,
    ) -> FusedLayersSEModule:
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        for name, child in children.items():
            setattr(module, name, child)
        reduce_layer, expand_layer = module.get_submodule(reduce), module.get_submodule(expand)
        channels, hidden = _sizes(reduce_layer)
        _check_layer(reduce, reduce_layer, channels, hidden)
        _check_layer(expand, expand_layer, hidden, channels)
        module._configure(channels, hidden, act, gate)
        module.reduction = None
        module._parts = (tuple(reduce.split(".")), tuple(expand.split(".")))  # split once, not per call
        module.add_input = add_input
        return module

    @property
    def _paths(self) -> tuple[str, str]:
        """The two layers' paths below the block, as from_children took them."""
        return tuple(".".join(parts) for parts in self._parts)

    def _excitation(self) -> tuple[Callable[..., torch.Tensor], tuple]:
        reduce, expand = self._parts
        reduce, expand = descendant(self, reduce), descendant(self, expand)  # (no generator: a frame a call)
        return _squeeze_excite, (*_weight_and_bias(reduce), *_weight_and_bias(expand), self.act, self.gate)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, **tail) -> torch.Tensor:
        if isinstance(x, fx.Proxy):
            return traced_as_leaf(self, x, (residual,), tail)
        if self.add_input:
            if residual is not None:
                raise ValueError("this block adds its input (add_residual) and takes no other residual")
            residual = x
        return super().forward(x, residual, **tail)

    def describe(self) -> str:
        return super().describe() + (" + x" if self.add_input else "")

    def extra_repr(self) -> str:
        return super().extra_repr() + (", add_input=True" if self.add_input else "")


def speechbrain_lengths(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """SpeechBrain's relative lengths (B,) (fractions of the sequence, in (0, 1]) as the counts of
    valid positions fused_se's ``lengths`` takes: exactly the positions SpeechBrain's SEBlock keeps,
    l < lengths[b] * L compared in lengths' dtype (speechbrain.dataio.dataio.length_to_mask)."""
    valid = torch.arange(length, device=lengths.device, dtype=lengths.dtype) < (lengths * length)[:, None]
    return valid.sum(1)


class FusedSpeechBrainSEBlock(FusedLayersSEModule):
    """SpeechBrain's ECAPA-TDNN SEBlock, fused: ``forward(x, lengths=None)`` as SERes2NetBlock calls
    it, x of shape (B, C, L) and lengths SpeechBrain's relative lengths (fractions of L) or None.

    The relative lengths become counts as SpeechBrain's own mask counts them (speechbrain_lengths);
    a sample left with no valid position raises a ValueError (SpeechBrain's mean would be NaN).
    """

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if isinstance(x, fx.Proxy):
            return traced_as_leaf(self, x, (lengths,), {})
        counts = None
        if lengths is not None:
            if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
                raise ValueError("lengths must be a 1-D tensor of relative lengths (B,), as SpeechBrain passes them")
            counts = speechbrain_lengths(lengths, x.shape[-1]).to(x.device)
        return super().forward(x, lengths=counts)

    def describe(self) -> str:
        return super().describe() + " lengths=relative"
