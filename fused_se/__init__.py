"""fused_se: Squeeze-and-Excitation blocks with fused Triton kernels, forward and backward."""

from . import functional, reference
from ._dispatch import backend_for
from .functional import squeeze_excite
from .modules import FusedSEModule
from .version import __version__

__all__ = ["FusedSEModule", "__version__", "backend_for", "functional", "reference", "squeeze_excite"]
