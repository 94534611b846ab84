"""The kernels' outputs, bit for bit, on a fixed set of inputs: every path of the two-FC form, the
other two forms, the residual tail, both layouts and three dtypes.

The digests in data/golden_outputs.json were recorded from the kernels before their files were
reorganised; a change that is meant to move code without changing what it computes must keep
them. A change that is meant to change the kernels' arithmetic records them anew, on purpose:
    FUSED_SE_WRITE_GOLDEN=1 pytest tests/kernels/test_golden.py
The interpreter's arithmetic is numpy's, so digests are compared only under the triton release
and the OpenBLAS kernels (numpy.matmul runs tl.dot; tests/conftest.py pins them) they were
recorded with (the file says which).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy
import pytest
import torch
import triton
from se_testing import make_input, make_variant_params, record_launches

import fused_se
from fused_se.kernels import heuristics as hz

GOLDEN = Path(__file__).parent / "data" / "golden_outputs.json"
WRITE = os.environ.get("FUSED_SE_WRITE_GOLDEN") == "1"

# name: (form, (B, C, H, W, hidden or taps), dtype, layout, act, gate, bias, tail, path)
CASES = {
    "mlp-3launch-fp32-nchw": ("mlp", (3, 24, 5, 7, 6), torch.float32, "nchw", "relu", "sigmoid", True, False, "three_launch"),
    "mlp-3launch-bf16-cl": ("mlp", (2, 40, 6, 6, 8), torch.bfloat16, "channels_last", "silu", "hard_sigmoid", False, False, "three_launch"),
    "mlp-3launch-fp64-nchw": ("mlp", (2, 17, 3, 5, 4), torch.float64, "nchw", "relu", "hard_sigmoid", True, False, "three_launch"),
    "mlp-3launch-tail-cl": ("mlp", (3, 24, 5, 5, 6), torch.float32, "channels_last", "relu", "sigmoid", True, True, "three_launch"),
    "mlp-3launch-bf16-nchw-flat": ("mlp", (2, 40, 7, 7, 8), torch.bfloat16, "nchw", "silu", "sigmoid", True, True, "three_launch"),
    "mlp-3launch-fp16-sliced": ("mlp", (2, 20, 4, 6, 5), torch.float16, "sliced_hw", "relu", "sigmoid", True, False, "three_launch"),
    "fc-fp32-nchw": ("fc", (3, 24, 5, 7, 0), torch.float32, "nchw", "relu", "hard_sigmoid", True, False, "three_launch"),
    "fc-bf16-cl-tail": ("fc", (2, 32, 4, 4, 0), torch.bfloat16, "channels_last", "relu", "sigmoid", False, True, "three_launch"),
    "conv-fp32-cl": ("conv", (3, 24, 5, 7, 3), torch.float32, "channels_last", "relu", "sigmoid", True, False, "three_launch"),
    "conv-fp32-nchw-circular": ("conv", (2, 19, 4, 5, 5), torch.float32, "nchw", "relu", "hard_sigmoid", False, True, "three_launch"),
    "mlp-1launch-fp32-cl": ("mlp", (2, 24, 5, 7, 6), torch.float32, "channels_last", "relu", "sigmoid", True, False, "one_launch"),
    "mlp-1launch-bf16-tail": ("mlp", (3, 40, 4, 4, 8), torch.bfloat16, "nchw", "silu", "hard_sigmoid", True, True, "one_launch"),
    "mlp-spread-fp32-nchw": ("mlp", (3, 24, 5, 7, 6), torch.float32, "nchw", "relu", "sigmoid", True, False, "spread"),
    "mlp-spread-bf16-cl-tail": ("mlp", (2, 40, 6, 6, 8), torch.bfloat16, "channels_last", "silu", "hard_sigmoid", False, True, "spread"),
    "mlp-stream-fp32-cl": ("mlp", (9, 33, 4, 5, 8), torch.float32, "channels_last", "relu", "sigmoid", True, False, "stream"),
    "mlp-stream-fp32-nchw-tail": ("mlp", (7, 40, 5, 7, 5), torch.float32, "nchw", "silu", "hard_sigmoid", True, True, "stream"),
    "mlp-stream-bf16-nchw": ("mlp", (10, 24, 9, 9, 3), torch.bfloat16, "nchw", "relu", "sigmoid", False, False, "stream"),
    "mlp-stream-bwd-tail-cl": ("mlp", (9, 24, 5, 5, 6), torch.float32, "channels_last", "relu", "hard_sigmoid", True, True, "stream:16"),
}  # fmt: skip


def _take_path(monkeypatch, path: str, x: torch.Tensor) -> None:
    """Let the planner choose `path` for x: the persistent paths are off in the suite unless turned on."""
    if path in ("one_launch", "spread"):
        monkeypatch.setenv("FUSED_SE_PATHS", path)
    elif path.startswith("stream"):
        # small tiles and an L2 that holds 4 (or the given number of) samples of the forward between its two passes
        lag = int(path.partition(":")[2] or 4)
        monkeypatch.setattr(hz, "STREAM_BLOCK_TILE", 64)
        monkeypatch.setattr(hz, "STREAM_TILE", 64)
        monkeypatch.setattr(hz, "MAX_BLOCK_HW_STREAM", 32)
        monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.5)
        sample = x[0].numel() * x.element_size()
        monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * lag * sample)


def _call(form, x, params, act, gate, residual, sample_scale):
    tail = {} if residual is None else {"residual": residual, "sample_scale": sample_scale, "out_act": "relu"}
    if form == "mlp":
        return fused_se.squeeze_excite(x, *params, act=act, gate=gate, **tail)
    if form == "fc":
        return fused_se.effective_squeeze_excite(x, *params, gate=gate, **tail)
    return fused_se.efficient_channel_attention(x, *params, circular=True, gate=gate, **tail)


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()[:16]


def _run_case(case) -> dict:
    form, (b, c, h, w, k), dtype, layout, act, gate, bias, tail, _ = case
    x = make_input((b, c, h, w), dtype, "cpu", layout).requires_grad_()
    params = [
        None if p is None else p.requires_grad_()
        for p in make_variant_params(
            form, c, k, k, bias, "cpu", dtype=torch.float64 if dtype == torch.float64 else torch.float32
        )
    ]
    residual = make_input((b, c, h, w), dtype, "cpu", layout).requires_grad_() if tail else None
    sample_scale = torch.rand(b) + 0.5 if tail else None
    g = torch.randn(b, c, h, w, dtype=dtype)
    with record_launches() as launched:
        y = _call(form, x, params, act, gate, residual, sample_scale)
        wrt = [x, *(p for p in params if p is not None), *([residual] if tail else [])]
        grads = torch.autograd.grad(y, wrt, g)
    return {"launches": launched, "digests": [_digest(t) for t in (y, *grads)]}


def blas_core() -> Optional[str]:
    """The OpenBLAS kernel set numpy runs on (its fp32 products' order of sums), or None where
    numpy's BLAS is not a bundled OpenBLAS."""
    libs = os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs", "*openblas*")
    for path in glob.glob(libs):
        lib = ctypes.CDLL(path)  # the copy numpy loaded: the same handle
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode().strip()
    return None


def _recorded() -> dict:
    if GOLDEN.exists():
        return json.loads(GOLDEN.read_text())
    return {"triton": triton.__version__, "blas_core": blas_core(), "cases": {}}


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_bitwise_as_recorded(name, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the digests are the interpreter's; on a GPU the kernels' parity tests hold")
    case = CASES[name]
    torch.manual_seed(1234)
    x_probe = make_input(case[1][:4], case[2], "cpu", case[3])
    _take_path(monkeypatch, case[-1], x_probe)
    torch.manual_seed(0)
    got = _run_case(case)
    recorded = _recorded()
    if WRITE:
        recorded["triton"], recorded["blas_core"] = triton.__version__, blas_core()
        recorded["cases"][name] = got
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    if recorded["triton"] != triton.__version__:
        pytest.skip(f"digests recorded under triton {recorded['triton']}, this is {triton.__version__}")
    if recorded.get("blas_core") != blas_core():
        pytest.skip(f"digests recorded on OpenBLAS's {recorded.get('blas_core')} kernels, numpy runs {blas_core()}")
    want = recorded["cases"][name]
    assert got["launches"] == want["launches"]
    assert got["digests"] == want["digests"]
