"""Times the fused SE block against the classic eager SEModule, forward and forward+backward.

    python benchmarks/bench_se.py [--batch 64] [--dtype bf16] [--preset seresnet50] [--json FILE]

On a CUDA device it times with triton.testing.do_bench (median and p20/p80 over many runs).
Without one it times the CPU path with a repeated wall-clock timer, which says nothing about
the GPU kernels: it only keeps the script itself working.

GB/s is the effective bandwidth against the minimal traffic of the SE block (N = bytes of x):
2N forward (read x, write y) and 5N forward+backward (plus read dy and x, write dx).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from se_shapes import PRESETS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_TRAFFIC = {"fwd": 2, "fwd+bwd": 5}  # multiples of N


def _time_ms(fn, device, warmup: int, reps: int) -> tuple[float, float, float]:
    if device.type == "cuda":
        import triton.testing

        q = triton.testing.do_bench(fn, warmup=warmup, rep=reps, quantiles=[0.5, 0.2, 0.8])
        return tuple(q)
    for _ in range(2):
        fn()
    times = []
    for _ in range(max(3, reps // 25)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    qs = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return statistics.median(times), qs[1], qs[7]


def _step(module, x, grad, mode):
    if mode == "fwd":

        def fn():
            with torch.no_grad():
                module(x)

    else:
        xg = x.detach().requires_grad_(True)
        inputs = [xg, *module.parameters()]

        def fn():
            # autograd.grad, not backward: accumulating into .grad would add a full-size add to each run.
            torch.autograd.grad(module(xg), inputs, grad)

    return fn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="fused SE vs eager SE timings")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--preset", choices=sorted(PRESETS), default="seresnet50")
    p.add_argument("--shape", action="append", default=[], help="C,H,W,r (repeatable); replaces the preset")
    p.add_argument("--warmup", type=int, default=25, help="ms of warm-up per case (GPU)")
    p.add_argument("--rep", type=int, default=100, help="ms of timed runs per case (GPU)")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)

    import fused_se
    from fused_se.reference import SEModule

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] or PRESETS[args.preset]
    meta = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({platform.processor() or 'unknown'})",
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "fused_se": fused_se.__version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": args.batch,
        "dtype": args.dtype,
        "backend": fused_se.backend_for(torch.empty(0, device=device)),
    }
    print(" | ".join(f"{k} {v}" for k, v in meta.items()))
    header = f"{'C':>5} {'HxW':>7} {'layout':>13} {'mode':>8} {'eager ms':>9} {'fused ms':>9} {'speedup':>8} {'eager GB/s':>10} {'fused GB/s':>10}"
    print(header)
    rows = []
    for c, h, w, r in shapes:
        eager = SEModule(c, r).to(device=device, dtype=dtype)
        fused = fused_se.FusedSEModule(c, r).to(device=device, dtype=dtype)
        fused.load_state_dict(eager.state_dict())
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(args.batch, c, h, w, device=device, dtype=dtype).to(memory_format=fmt)
            grad = torch.randn_like(x)
            n_bytes = x.numel() * x.element_size()
            for mode in ("fwd", "fwd+bwd"):
                t_eager = _time_ms(_step(eager, x, grad, mode), device, args.warmup, args.rep)
                t_fused = _time_ms(_step(fused, x, grad, mode), device, args.warmup, args.rep)
                traffic = MIN_TRAFFIC[mode] * n_bytes
                row = dict(
                    meta,
                    C=c,
                    H=h,
                    W=w,
                    reduction=r,
                    layout=layout,
                    mode=mode,
                    eager_ms=t_eager[0],
                    eager_p20_ms=t_eager[1],
                    eager_p80_ms=t_eager[2],
                    fused_ms=t_fused[0],
                    fused_p20_ms=t_fused[1],
                    fused_p80_ms=t_fused[2],
                    speedup=t_eager[0] / t_fused[0],
                    eager_gbs=traffic / t_eager[0] / 1e6,
                    fused_gbs=traffic / t_fused[0] / 1e6,
                )
                rows.append(row)
                print(
                    f"{c:>5} {f'{h}x{w}':>7} {layout:>13} {mode:>8} {row['eager_ms']:>9.4f} {row['fused_ms']:>9.4f}"
                    f" {row['speedup']:>7.2f}x {row['eager_gbs']:>10.1f} {row['fused_gbs']:>10.1f}"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if device.type != "cuda":
        print(
            f"note: no CUDA device; these are CPU timings ({meta['backend']} path), which say nothing of the GPU kernels."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
