"""nn.Modules that run the fused SE block."""

from __future__ import annotations

import torch
from torch import nn

from .functional import squeeze_excite


class FusedSEModule(nn.Module):
    """Drop-in for the classic SEModule, with the fused forward and backward.

    Same constructor and the same parameters as

        SEModule(channel, reduction=16):
            avg_pool = AdaptiveAvgPool2d(1)
            fc = Sequential(Linear(C, C // r, bias=False), ReLU(inplace=True),
                            Linear(C // r, C, bias=False), Sigmoid())

    so state_dicts (``fc.0.weight``, ``fc.2.weight``) load both ways. The fc Sequential is
    kept as the container of the parameters; forward does not call it.
    """

    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        for name, value in (("channel", channel), ("reduction", reduction)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int; got {type(value).__name__}")
        if channel < 1:
            raise ValueError(f"channel must be >= 1; got {channel}")
        if not 1 <= reduction <= channel:
            raise ValueError(f"reduction must be between 1 and channel={channel}; got {reduction}")
        hidden = channel // reduction
        self.channel = channel
        self.reduction = reduction
        self.fc = nn.Sequential(
            nn.Linear(channel, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channel, bias=False),
            nn.Sigmoid(),
        )

    @property
    def hidden(self) -> int:
        return self.fc[0].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.fc[0], self.fc[2]
        return squeeze_excite(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, act="relu", gate="sigmoid")

    def extra_repr(self) -> str:
        return f"channel={self.channel}, reduction={self.reduction}, hidden={self.hidden}, act=relu, gate=sigmoid"
