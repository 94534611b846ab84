"""fused_se: Squeeze-and-Excitation blocks with fused Triton kernels, forward and backward."""

from . import _checkout, functional, reference
from ._dispatch import backend_for
from .conversion import ConversionReport, convert, revert
from .functional import (
    effective_squeeze_excite,
    efficient_channel_attention,
    spatial_channel_squeeze_excite,
    squeeze_excite,
)
from .modules import FusedConv2dSEModule, FusedEcaModule, FusedEffectiveSEModule, FusedSCSEModule, FusedSEModule
from .version import __version__

_checkout.install()  # a run from a source checkout's root finds its kernels/ as fused_se.kernels

__all__ = [
    "ConversionReport",
    "FusedConv2dSEModule",
    "FusedEcaModule",
    "FusedEffectiveSEModule",
    "FusedSCSEModule",
    "FusedSEModule",
    "__version__",
    "backend_for",
    "convert",
    "effective_squeeze_excite",
    "efficient_channel_attention",
    "functional",
    "reference",
    "revert",
    "spatial_channel_squeeze_excite",
    "squeeze_excite",
]
