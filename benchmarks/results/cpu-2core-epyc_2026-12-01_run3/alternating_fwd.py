"""Eager vs fused CPU forward, one call of each in alternation (the order flipped every round), so
that the machine's drift hits both alike: per-call median and least times, and their ratios.

    python alternating_fwd.py BATCH C [ROUNDS]     (C picks the SE-ResNet-50 stage)
"""

import statistics
import sys
import time

import torch

from fused_se.bench.presets import PRESETS
from fused_se.bench.providers import build_provider, make_call

torch.set_num_threads(2)
stages = {s.c: s for s in PRESETS["seresnet50"]}
batch, c = int(sys.argv[1]), int(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 400
shape = stages[c]
x = torch.randn(batch, c, *shape.dims).contiguous(memory_format=torch.channels_last)
g = torch.randn_like(x)
calls = {
    p: make_call(build_provider(p, shape, torch.device("cpu"), torch.float32), x, g, "fwd") for p in ("eager", "fused")
}
for call in calls.values():
    for _ in range(20):
        call()
times = {p: [] for p in calls}
for i in range(rounds):
    for p in ("eager", "fused") if i % 2 else ("fused", "eager"):
        t0 = time.perf_counter()
        calls[p]()
        times[p].append(time.perf_counter() - t0)
med = {p: statistics.median(v) * 1e6 for p, v in times.items()}
least = {p: min(v) * 1e6 for p, v in times.items()}
print(f"{batch}x{c}x{'x'.join(map(str, shape.dims))} channels_last fp32, {rounds} rounds")
for p in calls:
    print(f"  {p:6s} median {med[p]:8.1f} us  least {least[p]:8.1f} us")
print(f"  fused/eager: median {med['fused'] / med['eager']:.3f}, least {least['fused'] / least['eager']:.3f}")
