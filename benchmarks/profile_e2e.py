"""Where a whole-model training step's time goes on a GPU: for each model and variant of
`fused-se-bench --e2e`, the wall time per step, the device's busy time per step (the sum of its
kernels' times, torch.profiler), the launches per step, the host's time to issue a step, and the
kernels that take the most device time. The models are timed in interleaved rounds (the least of
each is reported), since the host's pace drifts over a run. A step whose wall time exceeds its device time is bound
by the host: the GPU waits on Python.

    python benchmarks/profile_e2e.py [--out DIR] [--batch 64] [--size 224] [--steps 5] [--rounds 5]
        [--models resnet50:eager,seresnet50:eager,seresnet50:converted,seresnet50:converted:noreplay]

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

sys.path.insert(0, os.path.dirname(__file__))
from profile_gpu import _host_profile  # a script beside this one


def _step_for(name: str, variant: str, batch: int, size: int, device: torch.device, option: str = ""):
    """One training step of the model; option "noreplay": the fused blocks' bodies run on every
    call (fused_se.runtime.replay off), to see what the replays save in a whole step."""
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
    step = _training_step(model, x, target, amp=True)
    if option != "noreplay":
        return step
    from fused_se.runtime import replay

    def step_without_replays():
        replay.ENABLED = False
        try:
            step()
        finally:
            replay.ENABLED = True

    return step_without_replays


def _timed(step, steps: int) -> tuple[float, float]:
    """(wall ms per step over `steps` back-to-back steps, host ms to issue one step on an idle device)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps * 1e3
    t0 = time.perf_counter()
    step()
    issue = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    return wall, issue


def _device(step, top: int) -> dict:
    """The device's busy time per step (the sum of its kernels' times), launches, top kernels."""
    from torch.profiler import ProfilerActivity, profile

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
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "device_ms": sum(t for _, t in kernels.values()) / 3 / 1e3,
        "launches": sum(c for c, _ in kernels.values()) / 3,
        "top": [(n, c / 3, t / 3 / 1e3) for n, (c, t) in ranked],
    }


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
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the least is reported")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--models", default="resnet50:eager,seresnet50:eager,seresnet50:converted")
    p.add_argument("--cprofile", action="store_true", help="also cProfile 5 steps of each model (host, tottime)")
    p.add_argument("--ops", action="store_true", help="also the torch ops of 3 steps by their host (self CPU) time")
    args = p.parse_args(argv)
    device = torch.device("cuda")
    specs = [tuple(spec.split(":")) for spec in args.models.split(",")]
    steps = {spec: _step_for(*spec[:2], args.batch, args.size, device, *spec[2:]) for spec in specs}
    for step in steps.values():  # compile, record, warm the allocator
        for _ in range(5):
            step()
    # interleaved rounds, the least of each model's: the host's pace drifts over a run
    walls, issues = defaultdict(list), defaultdict(list)
    for _ in range(args.rounds):
        for spec, step in steps.items():
            wall, issue = _timed(step, args.steps)
            walls[spec].append(wall)
            issues[spec].append(issue)
    rows = []
    for spec, step in steps.items():
        name, variant = spec[0], ":".join(spec[1:])
        r = {"model": name, "variant": variant, "batch": args.batch, "size": args.size,
             "wall_ms": min(walls[spec]), "wall_ms_rounds": walls[spec],
             "issue_ms": min(issues[spec]), "issue_ms_rounds": issues[spec], **_device(step, args.top)}  # fmt: skip
        rows.append(r)
        print(
            f"{name:16s} {variant:16s} wall {r['wall_ms']:7.2f} ms  device {r['device_ms']:7.2f} ms  "
            f"issue {r['issue_ms']:7.2f} ms  launches {r['launches']:.0f}  "
            f"(wall per round {' '.join(f'{w:.1f}' for w in walls[spec])})"
        )
        for n, c, t in r["top"]:
            print(f"      {t:7.3f} ms  x{c:4.0f}  {n}")
        if args.ops:
            _ops(step, f"{name} {variant}")
        if args.cprofile:
            _host_profile(step, f"{name} {variant}", iters=5)
        sys.stdout.flush()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_e2e.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
