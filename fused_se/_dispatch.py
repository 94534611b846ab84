"""Which path runs: the Triton kernels, their twins in torch ops, or the autograd reference."""

from __future__ import annotations

from typing import Optional

import torch

from .runtime.env import getenv
from .runtime.trace import any_trace

BACKEND_ENV = "FUSED_SE_BACKEND"
BACKENDS = ("auto", "triton", "reference")


_INTERPRETED: Optional[bool] = None  # fused_se.runtime.launch.INTERPRETED, once imported


def interpreter_enabled() -> bool:
    """True when the Triton interpreter runs the kernels on the CPU (TRITON_INTERPRET=1 when
    triton.jit defined them, which is when fused_se.kernels was first imported). Kept once known,
    but never stored while torch.compile traces: a global assigned in traced code breaks dynamo's
    guards on it."""
    global _INTERPRETED
    if _INTERPRETED is not None:
        return _INTERPRETED
    from .runtime.launch import INTERPRETED  # triton is imported here, on first use, not by `import fused_se`

    if not torch.compiler.is_compiling():
        _INTERPRETED = INTERPRETED
    return INTERPRETED


def kernels_run_for(x: torch.Tensor) -> bool:
    """True where the Triton kernels run on x: CUDA, or the CPU with the interpreter on. From the
    tensor's flags (x.device.type costs a third of a microsecond on every call)."""
    return x.is_cuda or (x.is_cpu and interpreter_enabled())


def backend_for(x: torch.Tensor) -> str:
    """Which path an input on x's device takes: "triton", "decomposed" or "reference".

    "triton": the fused ops run the Triton kernels (CUDA tensors; CPU tensors with the interpreter on).
    "decomposed": the same ops, with the kernels' twins in torch ops as their body (CPU tensors
    otherwise); torch.compile, torch.export and ONNX export see the fused ops either way.
    "reference": fused_se.reference, plain autograd through torch ops (supports double backward);
    also what torch.onnx.export traces, so that the ONNX graph is made of standard operators.
    FUSED_SE_BACKEND=triton|reference forces one path; it is read on every call.
    """
    forced = getenv(BACKEND_ENV)
    if forced is None:  # the usual case: nothing to parse
        forced = "auto"
    else:
        forced = forced.strip().lower() or "auto"
        if forced not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}; got {forced!r}")
    if forced == "reference" or (any_trace() and torch.onnx.is_in_onnx_export()):
        return "reference"
    if kernels_run_for(x):
        return "triton"
    if forced == "triton":
        raise RuntimeError(
            f"{BACKEND_ENV}=triton, but the Triton kernels cannot run on {x.device.type} tensors here: "
            "use CUDA tensors, or set TRITON_INTERPRET=1 before triton is imported to run them on the CPU"
        )
    return "decomposed"
