"""The squeeze as torch's mean over HW against a product with a vector of 1/HW (a GEMV per
sample), per call (median and least of 300), both layouts.

    python gemv_squeeze.py
"""

import statistics
import time

import torch

torch.set_num_threads(2)


def bench(f, n=300):
    for _ in range(10):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6, min(ts) * 1e6


for B, C, H in [(1, 256, 56), (1, 512, 28), (1, 1024, 14), (1, 2048, 7), (8, 256, 56), (8, 512, 28), (8, 2048, 7)]:
    for cl in (True, False):
        x = torch.randn(B, C, H, H)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        hw = H * H
        ones = torch.full((hw,), 1.0 / hw)
        xv = x.permute(0, 2, 3, 1).reshape(B, hw, C) if cl else x.view(B, C, hw)

        def gemv(xv=xv, ones=ones, cl=cl):
            return torch.matmul(ones, xv) if cl else torch.matmul(xv, ones)

        def mean(x=x):
            return x.mean((2, 3))

        torch.testing.assert_close(gemv(), mean())
        m, g = bench(mean), bench(gemv)
        print(
            f"{B}x{C}x{H}x{H} {'channels_last' if cl else 'nchw':13s} mean {m[0]:7.1f} us (least {m[1]:7.1f})"
            f"  gemv {g[0]:7.1f} us (least {g[1]:7.1f})  gemv/mean {g[0] / m[0]:.2f}"
        )
