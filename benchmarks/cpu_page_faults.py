"""CPU time and minor page faults per call of eager and fused SE blocks, shapes timed one after
another in one process (channels_last, fp32, fwd then fwd+bwd each).

    python benchmarks/cpu_page_faults.py [--threads 1] [--reps 10]

A call whose buffers come back from the operating system (glibc returns a large freed block at
the top of its heap, or an mmapped one, and the next call faults it in again, page by page)
shows thousands of minor faults: 25.7 MB is 6272 pages of 4 KiB. Whether a block is returned
depends on glibc's thresholds, which move with the sizes freed earlier in the process, hence on
what ran before. MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ (or jemalloc, tcmalloc) fix
them.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from fused_se.bench.presets import SEShape
from fused_se.bench.providers import build_provider, make_call

# (batch, C, H = W, hidden): SE-ResNet-50's stages at small batches, in this order
SEQUENCE = [(1, 256, 56, 16), (4, 1024, 14, 64), (1, 2048, 7, 128), (16, 512, 28, 32)]


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(n: int, c: int, h: int, hidden: int, mode: str, provider: str, reps: int) -> tuple[float, float]:
    """(ms per call, minor faults per call) after three warm-up calls."""
    x = torch.randn(n, c, h, h).contiguous(memory_format=torch.channels_last)
    call = make_call(build_provider(provider, SEShape(c, h, h, hidden), torch.device("cpu"), torch.float32), x,
                     torch.randn_like(x), mode)  # fmt: skip
    for _ in range(3):
        call()
    f0, t0 = _faults(), time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t0) / reps * 1e3, (_faults() - f0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--providers", nargs="+", default=["eager", "fused"], choices=["eager", "fused"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for n, c, h, hidden in SEQUENCE:
        for mode in ("fwd", "fwd+bwd"):
            for provider in args.providers:
                ms, faults = measure(n, c, h, hidden, mode, provider, args.reps)
                print(
                    f"{n}x{c}x{h}x{h} {mode:8s} {provider:6s} {ms:8.2f} ms {faults:8.0f} minor faults/call", flush=True
                )


if __name__ == "__main__":
    main()
