"""Where the time of one SE block goes on a GPU, on device time: for each shape, layout, mode and
provider, the kernels one call launches with their device time (torch.profiler), the sum of those,
and the wall time per call when calls are issued back to back (the host's pace where it exceeds the
device's). Providers: eager (the eager SEModule), compile (torch.compile of that eager module, modes
default and max-autotune-no-cudagraphs: Inductor's kernels listed by name and time), fused (the path
the planner picks), fused-3pass (held to the three launches) and fused-stream (the streamed path
allowed).

    python benchmarks/profile_gpu.py --out DIR [--batch 128] [--dtype bf16] [--iters 20]
        [--providers eager compile fused ...] [--compile-modes default max-autotune-no-cudagraphs]
    python benchmarks/profile_gpu.py --dry-run --out DIR     the plumbing on a CPU: tiny shapes, no timings
    python benchmarks/profile_gpu.py --host     the host's cost per call and per launch, tiny input

Prints a line per row with its kernels and writes blocks.json into --out (a list of rows, rewritten
after each): shape (BxCxHxW), layout, mode, provider, compile_mode, path, device_us, wall_us,
launches, n_bytes (bytes of x), copy_gbps (a device-to-device copy measured in the same run), card,
kernels. Rows where wall > device are host-bound: there the device waits on Python, and a kernel's
speed does not show in a timer. Without a GPU it refuses, unless --dry-run: then every row is marked
dry_run, its card "cpu (dry run)", and its times are the CPU ops' own, a check of the plumbing only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from typing import Optional

import torch

from fused_se.bench.e2e import is_kernel
from fused_se.bench.measure import copy_bandwidth_gbs, environment
from fused_se.bench.presets import DTYPES, SERESNET50, SEShape
from fused_se.bench.providers import build_provider, make_call
from fused_se.kernels import force_paths


def _profile(fn, iters: int) -> tuple[dict[str, tuple[int, float]], float]:
    """{kernel name: (launches per call, device µs per call)}, and the wall µs per call. On a CPU (a
    dry run) the aten ops and Inductor's CPU kernels stand for the kernels, each with its own time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    wall = (time.perf_counter() - t0) / iters * 1e6
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
        sync()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if cuda and is_kernel(e):  # not a record_function range's span (Inductor's, compiled)
            t = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        elif not cuda and (e.name.startswith("aten::") or "cpp_fused" in e.name):
            t = e.self_cpu_time_total
        else:
            continue
        k = kernels[e.name[:80]]
        k[0] += 1
        k[1] += t
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


PROVIDERS = ("eager", "compile", "fused", "fused-3pass", "fused-stream")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
FUSED_PATHS = {"fused": None, "fused-3pass": ("three_launch",), "fused-stream": ("three_launch", "stream")}
DRY_RUN_SHAPES = "16,4,4,4;32,3,3,4"  # tiny: the plumbing, not the figures


def _call_for(provider: str, compile_mode: Optional[str], shape: SEShape, x, grad, mode: str):
    """The call one row profiles, and its path label."""
    dev, dtype = x.device, x.dtype
    if provider in ("eager", "compile"):
        module = build_provider("eager", shape, dev, dtype)
        if provider == "compile":
            torch._dynamo.reset()  # each row compiles anew: no recompile limit sends it back to eager
            module = torch.compile(module, mode=None if compile_mode == "default" else compile_mode)
        return make_call(module, x, grad, mode), "torch" if provider == "eager" else f"inductor {compile_mode}"
    module = build_provider("fused", shape, dev, dtype)
    paths = FUSED_PATHS[provider]
    if paths is None:
        return make_call(module, x, grad, mode), "auto"
    with force_paths(*paths):
        call = make_call(module, x, grad, mode)

    def fn():
        with force_paths(*paths):
            return call()

    return fn, ",".join(paths)


def _write(rows: list[dict], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    p.add_argument("--batch", type=int, help="default 128 (2 with --dry-run)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 (fp32 with --dry-run)")
    p.add_argument("--iters", type=int, help="calls per profile and per wall timing (default 20; 2 with --dry-run)")
    p.add_argument("--layouts", default="channels_last,nchw")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--shapes", default="", help="C,H,W,hidden;... (default SE-ResNet-50's stages)")
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--compile-modes", nargs="+", choices=COMPILE_MODES, default=list(COMPILE_MODES))
    p.add_argument("--dry-run", action="store_true", help="on the CPU: tiny shapes, rows marked dry_run, no timings")
    p.add_argument("--host", action="store_true", help="only the host costs per call (tiny input)")
    p.add_argument("--no-stream", action="store_true", help="leave out the streamed path (fused-stream)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        p.exit(2, f"{p.prog}: error: no CUDA device here: this times kernels on a GPU (--dry-run tries the "
                  "plumbing on the CPU, with tiny shapes and no timings)\n")  # fmt: skip
    if args.host:
        costs = host_costs()
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "host.json"), "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "host_us": costs}, f, indent=1
            )
        return 0
    dry = args.dry_run
    dev = torch.device("cpu" if dry else "cuda")
    dtype = DTYPES[args.dtype or ("fp32" if dry else "bf16")]
    batch = args.batch or (2 if dry else 128)
    iters = args.iters or (2 if dry else 20)
    shapes = SERESNET50
    if args.shapes or dry:
        shapes = [SEShape(*map(int, s.split(","))) for s in (args.shapes or DRY_RUN_SHAPES).split(";")]
    providers = [pr for pr in args.providers if not (args.no_stream and pr == "fused-stream")]
    variants = [(pr, m) for pr in providers for m in (args.compile_modes if pr == "compile" else [None])]
    env = environment(dev)
    copy_gbps = None if dry else copy_bandwidth_gbs(dev, 25, 100)
    base = {"card": "cpu (dry run)" if dry else env["device"], "torch": env["torch"], "triton": env["triton"],
            "fused_se": env["fused_se"], "timestamp": env["timestamp"], "dry_run": dry, "dtype": str(dtype)[6:],
            "copy_gbps": copy_gbps}  # fmt: skip
    print(f"{base['card']} | torch {env['torch']} | triton {env['triton']} | copy {copy_gbps or '-'} GB/s")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "blocks.json")
    rows: list[dict] = []
    for layout in args.layouts.split(","):
        for shape in shapes:
            x = torch.randn(batch, shape.c, shape.h, shape.w, device=dev, dtype=dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            grad = torch.randn_like(x)
            for mode in args.modes.split(","):
                for provider, compile_mode in variants:
                    label = f"{layout} {shape.label()} {mode} {provider}" + (f" {compile_mode}" if compile_mode else "")
                    try:
                        fn, path = _call_for(provider, compile_mode, shape, x, grad, mode)
                        kernels, wall = _profile(fn, iters)
                    except Exception as e:  # report and go on: one provider's failure says something too
                        print(f"{label}: {type(e).__name__}: {e}")
                        continue
                    device_us = sum(t for _, t in kernels.values())
                    row = {
                        "shape": f"{batch}x{shape.c}x{shape.h}x{shape.w}",
                        "hidden": shape.hidden,
                        "layout": layout,
                        "mode": mode,
                        "provider": provider,
                        "compile_mode": compile_mode,
                        "path": path,
                        "device_us": device_us,
                        "wall_us": wall,
                        "launches": None if dry else sum(c for c, _ in kernels.values()),
                        "n_bytes": x.numel() * x.element_size(),
                        **base,
                        "kernels": {n: [c, t] for n, (c, t) in kernels.items()},
                    }
                    rows.append(row)
                    _write(rows, out)
                    launches = "-" if row["launches"] is None else f"{row['launches']:.0f}"
                    print(f"{label:56s} wall {wall:9.1f} us  device {device_us:9.1f} us  launches {launches}")
                    for n, (c, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:12]:
                        print(f"      {t:9.1f} us  x{c:<4.0f} {n[:70]}")
                    sys.stdout.flush()
    if dry:
        print("cpu dry run: the plumbing on tiny shapes; the CPU ops' own times stand for device time, no timing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
