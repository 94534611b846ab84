"""A fused block's layers and parameters without nn.Module.__getattr__, which costs a call about
0.7 us a lookup on a 2-core EPYC (a block reads four to six per call): nn.Module's own dicts of
children and parameters (`_modules`, `_parameters`), checked at import. Where the check fails,
the public `named_children` (a new dict per call) and the layers' `weight` and `bias`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import checks


def _own_dicts() -> Optional[str]:
    """nn.Module keeps its children and parameters in dicts that named_children and
    named_parameters(recurse=False) read, in the same order."""
    parent = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    layer = parent[0]
    kids, params = getattr(parent, "_modules", None), getattr(layer, "_parameters", None)
    if not (isinstance(kids, dict) and isinstance(params, dict)):
        return "nn.Module has no _modules or _parameters dict"
    if list(kids.items()) != list(parent.named_children()):
        return "_modules differs from named_children()"
    if list(params.items()) != list(layer.named_parameters(recurse=False)):
        return "_parameters differs from named_parameters(recurse=False)"
    return None


DIRECT = checks.check("nn.Module._modules and _parameters", _own_dicts)


def children(module: nn.Module) -> dict[str, nn.Module]:
    """module's children by name, in order (not a copy where the check passed: do not change it)."""
    return module._modules if DIRECT else dict(module.named_children())


# The layer classes whose weight and bias are plain Parameters (a parametrized layer's class is a
# subclass that parametrize makes, which computes them).
PLAIN_LAYERS = frozenset((nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))


def weight_and_bias(layer: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """layer.weight and layer.bias; read from a plain nn.Linear's or nn.ConvNd's own parameters
    where the check passed (no Module.__getattr__, no second call). A subclass, a parametrized layer
    (whose class parametrize replaces), may compute them: it is asked."""
    if DIRECT and type(layer) in PLAIN_LAYERS:
        params = layer._parameters
        weight = params.get("weight")
        if weight is not None:
            return weight, params.get("bias")
    return layer.weight, layer.bias
