"""Which implementation runs: the Triton kernels or the reference in PyTorch ops."""

from __future__ import annotations

import os

import torch

BACKEND_ENV = "FUSED_SE_BACKEND"
BACKENDS = ("auto", "triton", "reference")


def interpreter_enabled() -> bool:
    """True when the Triton interpreter runs kernels on the CPU (TRITON_INTERPRET=1 at import)."""
    try:
        from triton import knobs
    except ImportError:  # triton < 3.4 reads the variable directly
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
    return bool(knobs.runtime.interpret)


def backend_for(x: torch.Tensor) -> str:
    """ "triton" or "reference" for an input on x's device.

    CUDA tensors run the kernels; CPU tensors run the reference unless the interpreter is on.
    FUSED_SE_BACKEND=triton|reference forces one path; it is read on every call.
    """
    forced = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if forced not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}; got {forced!r}")
    kernels_run_here = x.device.type == "cuda" or (x.device.type == "cpu" and interpreter_enabled())
    if forced == "reference":
        return "reference"
    if forced == "triton":
        if not kernels_run_here:
            raise RuntimeError(
                f"{BACKEND_ENV}=triton, but the Triton kernels cannot run on {x.device.type} tensors here: "
                "use CUDA tensors, or set TRITON_INTERPRET=1 before triton is imported to run them on the CPU"
            )
        return "triton"
    return "triton" if kernels_run_here else "reference"
