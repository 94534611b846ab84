"""A CPU forward chunked by sample, so that the scale re-reads each chunk of x from cache, against
eager's ops over the whole batch (the same math; timed in alternation, medians).

    python chunked_fwd.py BATCH C H [ROUNDS]
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
B, C, H = map(int, sys.argv[1:4])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 60
r = C // 16
x = torch.randn(B, C, H, H).contiguous(memory_format=torch.channels_last)
w1, b1, w2, b2 = torch.randn(r, C) * 0.05, torch.randn(r), torch.randn(C, r) * 0.05, torch.randn(C)


def eager():
    z = x.mean((2, 3))
    s = torch.sigmoid(F.linear(torch.relu(F.linear(z, w1, b1)), w2, b2))
    return x * s.view(B, C, 1, 1)


def chunked(k):
    def call():
        y = torch.empty_like(x)
        for i in range(0, B, k):
            xc = x[i : i + k]
            s = F.linear(F.linear(xc.mean((2, 3)), w1, b1).relu_(), w2, b2).sigmoid_()
            torch.mul(xc, s.view(-1, C, 1, 1), out=y[i : i + k])
        return y

    return call


calls = {"eager": eager, **{f"chunks of {k}": chunked(k) for k in (1, 2, 4) if k < B}}
want = eager()
for call in calls.values():
    torch.testing.assert_close(call(), want)
    for _ in range(5):
        call()
times = {p: [] for p in calls}
names = list(calls)
for i in range(rounds):
    for p in names if i % 2 else names[::-1]:
        t0 = time.perf_counter()
        calls[p]()
        times[p].append(time.perf_counter() - t0)
base = statistics.median(times["eager"])
print(f"{B}x{C}x{H}x{H} channels_last fp32, {rounds} rounds")
for p, v in times.items():
    m = statistics.median(v)
    print(f"  {p:12s} median {m * 1e6:9.1f} us  vs eager {m / base:.2f}x")
