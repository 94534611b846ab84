"""The SE-block run: every (shape, layout, mode) case, each provider timed on it, one row each."""

from __future__ import annotations

import argparse
import contextlib

import torch

from .measure import _Progress, copy_bandwidth_gbs, environment, kernel_launches, peak_memory_mb, time_ms
from .presets import DTYPES, FUSED, traffic_bytes
from .providers import build_provider, fused_path, make_call, three_launch_paths


def run(args: argparse.Namespace) -> list[dict]:

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    shapes, batches = args.shape_list, args.batch_list
    env = environment(device)
    copy_gbs = copy_bandwidth_gbs(device, args.warmup, args.reps)
    cases = [(s, n, lay, m) for s, n in zip(shapes, batches) for lay in args.layouts for m in args.modes]
    progress = _Progress(len(cases) * len(args.providers))
    rows = []
    for shape, n, layout, mode in cases:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        torch.manual_seed(0)
        x = torch.randn(n, shape.c, shape.h, shape.w, device=device, dtype=dtype).to(memory_format=fmt)
        grad = torch.randn_like(x)
        shortcut = torch.randn_like(x) if args.tail else None
        x_bytes = x.numel() * x.element_size()
        case_rows = {}
        for provider in args.providers:
            progress.step(f"{shape.label()} {layout} {mode} {provider}")
            module = build_provider(provider, shape, device, dtype, args.tail)
            three_pass = provider == "fused-3pass"
            call = make_call(module, x, grad, mode, shortcut, three_pass)
            median, p20, p80 = time_ms(call, device, args.warmup, args.reps)
            minimal, own = traffic_bytes(mode, x_bytes, provider, args.tail)
            # Which code ran: the fused provider's kernels (and which paths), its torch-ops
            # kernel or the reference, or torch's own.
            path = "torch"
            if provider in FUSED:
                with three_launch_paths() if three_pass else contextlib.nullcontext():
                    path = fused_path(x, shape, mode, args.tail)
            if not path.startswith("triton"):
                own = None  # the kernels' own traffic says nothing of the CPU paths
            case_rows[provider] = {
                **env,
                "provider": provider,
                "path": f"{path} ({device.type})",
                "batch": n,
                "C": shape.c,
                "H": shape.h,
                "W": shape.w,
                "hidden": shape.hidden,
                "act": shape.act,
                "gate": shape.gate,
                "dtype": args.dtype,
                "layout": layout,
                "mode": mode,
                "tail": args.tail,
                "median_ms": median,
                "p20_ms": p20,
                "p80_ms": p80,
                "x_bytes": x_bytes,
                "min_traffic_bytes": minimal,
                "own_traffic_bytes": own,
                "gbs_min_traffic": minimal / median / 1e6,
                "gbs_own_traffic": None if own is None else own / median / 1e6,
                "copy_gbs": copy_gbs,
                "pct_of_copy": 100 * minimal / median / 1e6 / copy_gbs,
                "peak_mem_mb": (
                    peak_memory_mb(make_call(module, x, grad, mode, shortcut, three_pass), device)
                    if mode != "fwd"
                    else None
                ),
                "launches": kernel_launches(call, device),
            }
        for r in case_rows.values():
            eager, compiled = case_rows.get("eager"), case_rows.get("compile")
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None
            r["speedup_vs_compile"] = compiled["median_ms"] / r["median_ms"] if compiled else None
            rows.append(r)
    progress.close()
    return rows
