"""pytest-benchmark suite over fused-se-bench's presets: eager PyTorch, the reference the tests
compare against (fused_se.reference), and the fused block.

    pytest benchmarks/ --benchmark-group-by=group          (needs pytest-benchmark)

On a GPU the presets' shapes at batch 32; on a CPU a small version of each (batch 2, maps a
quarter the side), which keeps the suite working but measures the CPU paths only.
"""

from __future__ import annotations

import pytest
import torch

import fused_se
from fused_se.bench import PRESETS, SEShape, build_provider, make_call

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
BATCH = 32 if DEVICE.type == "cuda" else 2

CASES = [(preset, shape) for preset, shapes in PRESETS.items() for shape in shapes]


def _small(shape: SEShape) -> SEShape:
    if DEVICE.type == "cuda":
        return shape
    side = max(1, shape.h // 4)
    return SEShape(shape.c, side, side, shape.hidden, shape.act, shape.gate)


class _Reference(torch.nn.Module):
    """fused_se.reference.squeeze_excite with the fused module's weights."""

    def __init__(self, fused: fused_se.FusedSEModule) -> None:
        super().__init__()
        self.fused = fused

    def forward(self, x):
        fc1, fc2 = self.fused.fc[0], self.fused.fc[2]
        return fused_se.reference.squeeze_excite(
            x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, act=self.fused.act, gate=self.fused.gate
        )


def _module(provider: str, shape: SEShape) -> torch.nn.Module:
    if provider == "reference":
        return _Reference(build_provider("fused", shape, DEVICE, DTYPE))
    return build_provider(provider, shape, DEVICE, DTYPE)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["eager", "reference", "fused"])
@pytest.mark.parametrize("case", CASES, ids=[f"{p}-{s.label()}" for p, s in CASES])
def test_se_block(benchmark, case, provider, mode):
    preset, shape = case
    shape = _small(shape)
    x = torch.randn(BATCH, shape.c, shape.h, shape.w, device=DEVICE, dtype=DTYPE)
    x = x.to(memory_format=torch.channels_last)
    call = make_call(_module(provider, shape), x, torch.randn_like(x), mode)

    def run():
        call()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{preset} {BATCH}x{shape.label()} {mode}"
    benchmark.extra_info.update(provider=provider, device=str(DEVICE), dtype=str(DTYPE))
    benchmark(run)
