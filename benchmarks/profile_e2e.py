"""Where a whole-model training step's time goes on a GPU: for each model and variant of
`fused-se-bench --e2e`, the wall time per step, the device's busy time per step (the sum of its
kernels' times, torch.profiler), the launches per step, the host's time to issue a step, and the
kernels that take the most device time. A step whose wall time exceeds its device time is bound
by the host: the GPU waits on Python.

    python benchmarks/profile_e2e.py [--out DIR] [--batch 64] [--size 224] [--steps 10]
        [--models resnet50:eager,seresnet50:eager,seresnet50:converted]

Prints a table and writes profile_e2e.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch


def _step_for(name: str, variant: str, batch: int, size: int, device: torch.device):
    import timm

    from fused_se.bench.e2e import _training_step
    from fused_se.conversion import convert

    torch.manual_seed(0)
    model = timm.create_model(name).to(device)
    if variant.startswith("converted"):
        convert(model, fuse_residual=variant == "converted+tails")
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device=device)
    return _training_step(model, x, target, amp=True)


def _measure(step, steps: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps * 1e3
    # the host's time to issue one step, the device idle first (a queue that fills would block it)
    issue = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        issue.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    kernels: dict = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[e.name[:70]]
            k[0] += 1
            k[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    device_ms = sum(t for _, t in kernels.values()) / 3 / 1e3
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "wall_ms": wall,
        "device_ms": device_ms,
        "issue_ms": min(issue),
        "launches": sum(c for c, _ in kernels.values()) / 3,
        "top": [(n, c / 3, t / 3 / 1e3) for n, (c, t) in ranked],
    }


def _cprofile(step, label: str, steps: int = 5, top: int = 25) -> None:
    import cProfile
    import pstats

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    prof.disable()
    print(f"== cProfile: {label}, {steps} steps")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def _ops(step, label: str, steps: int = 3, rows: int = 30) -> None:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    print(f"== torch ops: {label}, {steps} steps, by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--models", default="resnet50:eager,seresnet50:eager,seresnet50:converted")
    p.add_argument("--cprofile", action="store_true", help="also cProfile 5 steps of each model (host, tottime)")
    p.add_argument("--ops", action="store_true", help="also the torch ops of 3 steps by their host (self CPU) time")
    args = p.parse_args(argv)
    device = torch.device("cuda")
    rows = []
    for spec in args.models.split(","):
        name, variant = spec.split(":")
        r = {"model": name, "variant": variant, "batch": args.batch, "size": args.size}
        r.update(_measure(_step_for(name, variant, args.batch, args.size, device), args.steps, args.top))
        rows.append(r)
        print(
            f"{name:16s} {variant:16s} wall {r['wall_ms']:7.2f} ms  device {r['device_ms']:7.2f} ms  "
            f"issue {r['issue_ms']:7.2f} ms  launches {r['launches']:.0f}"
        )
        for n, c, t in r["top"]:
            print(f"      {t:7.3f} ms  x{c:4.0f}  {n}")
        if args.ops:
            _ops(_step_for(name, variant, args.batch, args.size, device), f"{name} {variant}")
        if args.cprofile:
            _cprofile(_step_for(name, variant, args.batch, args.size, device), f"{name} {variant}")
        sys.stdout.flush()
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_e2e.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
