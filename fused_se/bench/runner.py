"""The SE-block run: every (shape, layout, mode) case, each provider timed on it, one row each,
handed to a sink as soon as it is measured."""

from __future__ import annotations

import argparse
import contextlib
from typing import Optional, Protocol

import torch

from ..workloads import make_x
from .measure import (
    NOISY_SPREAD,
    Progress,
    copy_bandwidth_gbs,
    environment,
    kernel_launches,
    peak_memory_mb,
    spread,
    time_ms,
)
from .presets import COMPILE_MODES, CUDA_GRAPHED, DTYPES, FUSED, PROVIDERS, SEShape, traffic_bytes
from .providers import build_provider, fused_path, make_call, three_launch_paths


class RowSink(Protocol):
    """Where rows go as they are measured: `add` a new row; `update` after rows already added
    changed (a torch.compile row fills in the speedups against it of its case's other rows)."""

    def add(self, row: dict) -> None: ...

    def update(self) -> None: ...


def provider_passes(providers: list[str]) -> list[list[str]]:
    """The providers in the order they are timed: first eager, eager-conv, fused and fused-3pass
    over every case, then the torch.compile modes (each row compiles anew: slow) over every case,
    so that a run cut short keeps the fast providers' rows of every case."""
    ordered = [p for p in PROVIDERS if p in providers]
    fast = [p for p in ordered if p not in COMPILE_MODES]
    slow = [p for p in ordered if p in COMPILE_MODES]
    return [ps for ps in (fast, slow) if ps]


def _case_key(row: dict) -> tuple:
    return (row["batch"], row["C"], row["H"], row["W"], row.get("spatial"), row["hidden"], row["layout"], row["mode"])


def _speedup(row: dict, base: Optional[dict]) -> Optional[float]:
    return None if base is None else base["median_ms"] / row["median_ms"]


def run(args: argparse.Namespace, sink: Optional[RowSink] = None) -> list[dict]:
    """Time every provider on every case; returns the rows, each given to `sink` when measured."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    env = environment(device)
    env["run"] = getattr(args, "label", None)
    copy_gbs = copy_bandwidth_gbs(device, args.warmup, args.reps) if device.type == "cuda" else None
    cases = [
        (s, n, lay, m)
        for s, n in zip(args.shape_list, args.batch_list, strict=True)
        for lay in args.layouts
        for m in args.modes
    ]
    passes = provider_passes(args.providers)
    progress = Progress(len(cases) * len(args.providers))
    rows: list[dict] = []
    by_case: dict[tuple, dict[str, dict]] = {}
    for providers in passes:
        for shape, n, layout, mode in cases:
            torch.manual_seed(0)
            x = make_x(shape, n, layout, device, dtype)
            grad = torch.randn_like(x)
            shortcut = torch.randn_like(x) if args.tail else None
            for provider in providers:
                progress.step(f"{n}x{shape.label()} {layout} {mode} {provider}")
                if provider in CUDA_GRAPHED and (mode != "fwd" or device.type != "cuda"):
                    continue  # a graph replay times inference on a GPU only
                row = {**env, **measure_row(args, provider, shape, x, grad, shortcut, layout, mode, copy_gbs)}
                case = by_case.setdefault(_case_key(row), {})
                case[provider] = row
                row["speedup_vs_eager"] = _speedup(row, case.get("eager"))
                row["speedup_vs_compile"] = _speedup(row, case.get("compile"))
                rows.append(row)
                progress.close()
                if sink is not None:
                    sink.add(row)
                if provider == "compile":
                    for other in case.values():
                        other["speedup_vs_compile"] = _speedup(other, row)
                    if sink is not None:
                        sink.update()
    progress.close()
    return rows


def measure_row(
    args: argparse.Namespace,
    provider: str,
    shape: SEShape,
    x: torch.Tensor,
    grad: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    layout: str,
    mode: str,
    copy_gbs: Optional[float],
) -> dict:
    """One provider on one case: its timing, traffic, memory, launches and path (the speedups
    are the caller's, which knows the case's other rows)."""
    device = x.device
    module = build_provider(provider, shape, device, x.dtype, args.tail)
    three_pass = provider == "fused-3pass"
    call = make_call(module, x, grad, mode, shortcut, three_pass)
    median, p20, p80 = time_ms(call, device, args.warmup, args.reps)
    x_bytes = x.numel() * x.element_size()
    minimal, own = traffic_bytes(mode, x_bytes, provider, args.tail, shape.spatial_gate)
    # Which code ran: the fused provider's kernels (and which paths), its torch-ops kernel or
    # the reference, or torch's own.
    path = "torch"
    if provider in FUSED:
        with three_launch_paths() if three_pass else contextlib.nullcontext():
            path = fused_path(x, shape, mode, args.tail)
    if not path.startswith("triton") or device.type != "cuda":
        own = None  # the kernels' own traffic says nothing of the CPU paths or the interpreter
    gbs = minimal / median / 1e6
    return {
        "provider": provider,
        "path": f"{path} ({device.type})",
        "batch": x.shape[0],
        "C": shape.c,
        "H": shape.h,  # with W: the map as the kernels see it ((L * ..., 1) for a sequence or a volume)
        "W": shape.w,
        "spatial": "x".join(map(str, shape.dims)),  # the map's own dims: L, HxW or DxHxW
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
        "spread": spread(median, p20, p80),
        "noisy": spread(median, p20, p80) > NOISY_SPREAD,
        "x_bytes": x_bytes,
        "min_traffic_bytes": minimal,
        "own_traffic_bytes": own,
        "gbs_min_traffic": gbs,
        "gbs_own_traffic": None if own is None else own / median / 1e6,
        "copy_gbs": copy_gbs,
        "pct_of_copy": None if copy_gbs is None else 100 * gbs / copy_gbs,
        "peak_mem_mb": (
            peak_memory_mb(make_call(module, x, grad, mode, shortcut, three_pass), device) if mode != "fwd" else None
        ),
        "launches": kernel_launches(call, device),
    }
