"""Where the time of one SE block goes on a GPU: for each shape, provider and path, the kernels
one call launches with their device time (torch.profiler), the sum of those, and the wall time
per call when calls are issued back to back (the host's pace where it exceeds the device's).

    python benchmarks/profile_gpu.py [--out DIR] [--batch 128] [--dtype bf16] [--iters 20]
    python benchmarks/profile_gpu.py --host     the host's cost per call and per launch, tiny input

Prints a table and writes profile.json into --out. Rows where wall > device are host-bound:
there the device waits on Python, and a kernel's speed does not show in a timer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch

from fused_se.bench.presets import DTYPES, SERESNET50, SEShape
from fused_se.bench.providers import build_provider, make_call
from fused_se.kernels import force_paths


def _profile(fn, iters: int) -> tuple[dict[str, tuple[int, float]], float]:
    """{kernel name: (launches per call, device µs per call)}, and the wall µs per call."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    wall = (time.perf_counter() - t0) / iters * 1e6
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        sync()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[e.name[:60]]
            k[0] += 1
            k[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    return {n: (c / iters, t / iters) for n, (c, t) in kernels.items()}, wall


def _host_us(fn, iters: int = 2000) -> float:
    """Microseconds per call of fn issued back to back on a tiny input: the host's cost, where the
    device finishes each launch before the host has issued the next."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def host_costs(rounds: int = 5) -> dict[str, float]:
    """Host microseconds per call of one aten launch, of each of the fused passes' launchers, and
    of the fused and eager blocks, on a (1, 64, 4, 4) input; each the least over `rounds` rounds
    that take every case in turn (so that a drift of the host's pace, a clock ramping up, falls
    on every case alike). "JIT launches": every launch through triton's JIT, as before
    fused_se.runtime.launch's cache and replays."""
    from contextlib import ExitStack

    from fused_se import kernels
    from fused_se.runtime.launch import intercepted

    dev = torch.device("cuda")
    shape = SEShape(64, 4, 4, 4)
    x = torch.randn(1, 64, 4, 4, device=dev)
    s = torch.rand(1, 64, device=dev)
    g = torch.randn_like(x)
    eager, fused = (build_provider(p, shape, dev, torch.float32) for p in ("eager", "fused"))

    def on_path(call, path=None, jit=False):
        def fn():
            with ExitStack() as stack:
                if jit:
                    stack.enter_context(intercepted(lambda kernel, grid, inner: kernel[grid]))
                if path is not None:
                    stack.enter_context(force_paths(path))
                return call()

        return fn

    cases = {
        "aten mul (1 launch)": (lambda: x.mul(2.0), 2000),
        "squeeze_fwd (1 launch)": (lambda: kernels.squeeze_fwd(x), 2000),
        "scale_fwd (1 launch)": (lambda: kernels.scale_fwd(x, s), 2000),
        "eager fwd": (make_call(eager, x, g, "fwd"), 2000),
        "fused fwd (three_launch)": (on_path(make_call(fused, x, g, "fwd"), "three_launch"), 2000),
        "fused fwd (auto)": (on_path(make_call(fused, x, g, "fwd")), 2000),
        "fused fwd (auto, JIT launches)": (on_path(make_call(fused, x, g, "fwd"), jit=True), 2000),
        "eager fwd+bwd": (make_call(eager, x, g, "fwd+bwd"), 500),
        "fused fwd+bwd (three_launch)": (on_path(make_call(fused, x, g, "fwd+bwd"), "three_launch"), 500),
        "fused fwd+bwd (auto)": (on_path(make_call(fused, x, g, "fwd+bwd")), 500),
        "fused fwd+bwd (auto, JIT launches)": (on_path(make_call(fused, x, g, "fwd+bwd"), jit=True), 500),
    }
    costs = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, (fn, iters) in cases.items():
            costs[name] = min(costs[name], _host_us(fn, iters))
    costs.update(_launch_costs(x))
    for name, us in costs.items():
        print(f"host {name:40s} {us:8.1f} us per call (least of {rounds} rounds)")
    _host_profile(make_call(fused, x, g, "fwd"), "fused fwd (auto)")
    _host_profile(make_call(fused, x, g, "fwd+bwd"), "fused fwd+bwd (auto)")
    return costs


def _launch_costs(x) -> dict[str, float]:
    """Triton's own host cost for one of the fused kernels: the squeeze's launch as the launcher
    makes it (kernel[grid](...)), replayed with the same arguments, and the same compiled kernel
    launched directly (no binding, no specialisation)."""
    from fused_se.kernels import passes
    from fused_se.runtime import launch as common

    with common.kernel_calls() as calls:
        passes.squeeze_fwd(x)
    kernel, grid, args, kwargs = calls[0]
    compiled = kernel[grid](*args, **kwargs)
    bound = [*args, *(kwargs[n] if n in kwargs else d for n, d in common.param_tail(kernel, len(args)))]
    cached = common.CachedLauncher(kernel, grid)
    out = {
        "triton kernel[grid](...) (squeeze)": _host_us(lambda: kernel[grid](*args, **kwargs)),
        "CachedLauncher (squeeze)": _host_us(lambda: cached(*args, **kwargs)),
    }
    try:
        runner = compiled[(*grid, 1, 1)[:3]]
        out["triton compiled[grid](...) (squeeze)"] = _host_us(lambda: runner(*bound))
    except Exception as e:  # the compiled kernel's calling convention differs between releases
        print(f"compiled[grid] launch: {type(e).__name__}: {e}")
    return out


def _host_profile(fn, label: str, iters: int = 500, top: int = 25) -> None:
    """cProfile of fn called back to back: where the host's time goes, by function."""
    import cProfile
    import pstats

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    print(f"== cProfile: {label}, {iters} calls")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--layouts", default="channels_last,nchw")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--shapes", default="", help="C,H,W,hidden;... (default SE-ResNet-50's stages)")
    p.add_argument("--device", default="cuda", help="cpu tries the plumbing (no device times)")
    p.add_argument("--host", action="store_true", help="only the host costs per call (tiny input)")
    p.add_argument("--no-stream", action="store_true", help="leave out the streamed path (opt-in)")
    args = p.parse_args(argv)
    if args.host:
        costs = host_costs()
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "host.json"), "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "host_us": costs}, f, indent=1
            )
        return 0
    dev = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    shapes = SERESNET50
    if args.shapes:
        shapes = [SEShape(*map(int, s.split(","))) for s in args.shapes.split(";")]
    variants = [("eager", None), ("fused", None), ("fused", "three_launch"), ("fused", "stream")]
    if args.no_stream:
        variants = variants[:-1]
    rows = []
    for layout in args.layouts.split(","):
        for shape in shapes:
            x = torch.randn(args.batch, shape.c, shape.h, shape.w, device=dev, dtype=dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            grad = torch.randn_like(x)
            for mode in args.modes.split(","):
                for provider, path in variants:
                    module = build_provider(provider, shape, dev, dtype)
                    paths = ("three_launch",) if path == "three_launch" else ("three_launch", "stream")
                    if provider == "fused" and path is not None:
                        with force_paths(*paths):
                            call = make_call(module, x, grad, mode)

                            def fn(call=call, paths=paths):
                                with force_paths(*paths):
                                    return call()
                    else:
                        fn = make_call(module, x, grad, mode)
                    try:
                        kernels, wall = _profile(fn, args.iters)
                    except Exception as e:  # report and go on: one path's failure says something too
                        print(f"{layout} {shape.label()} {mode} {provider}/{path}: {type(e).__name__}: {e}")
                        continue
                    device_us = sum(t for _, t in kernels.values())
                    row = {
                        "layout": layout,
                        "shape": shape.label(),
                        "batch": args.batch,
                        "mode": mode,
                        "provider": provider,
                        "path": path or "auto",
                        "wall_us": wall,
                        "device_us": device_us,
                        "launches": sum(c for c, _ in kernels.values()),
                        "kernels": kernels,
                    }
                    rows.append(row)
                    print(
                        f"{layout:13s} {shape.label():10s} {mode:7s} {provider:6s} {path or 'auto':12s} "
                        f"wall {wall:8.1f} us  device {device_us:8.1f} us  launches {row['launches']:.0f}"
                    )
                    for n, (c, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
                        print(f"      {t:8.1f} us  x{c:.0f}  {n}")
                    sys.stdout.flush()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump(
            {
                "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "rows": rows,
            },
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
