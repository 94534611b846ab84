"""--traffic: the bytes each provider moves per call, counted, and the DRAM bytes and time a
card would need for them, modeled.

For each provider, shape, layout and mode, one call runs on the CPU under the Tracer
(fused_se.perf.trace): the fused providers' Triton kernels through the Triton interpreter,
every load, store and atomic counted; eager PyTorch's aten ops (and the torch ops around the
fused kernels) as one kernel each, reading their inputs' spans and writing their outputs.
Then:

- bytes_requested: what the kernels ask for (the interpreter's masked elements x element size;
  an aten op's spans), counted, not modeled;
- dram_bytes (model): the same accesses replayed, in launch order and, within a launch, in the
  interpreter's program order, through an LRU model of the card's L2 over 128-byte lines with
  write-allocate (fused_se.perf.l2), the cache empty at the start of the mode and every dirty
  line written back at the end;
- minimal_bytes: 2N forward, 3N backward, 5N both (N = bytes of x): read x, write y; read dy
  and x, write dx;
- model_time_us: the modeled batch's time, dram_n x its N / the card's bandwidth + launches x
  its launch cost; and model_speedup_vs_eager, the eager row's model time over this row's.

SE-ResNet-50's shapes at batch 128 take minutes per pass in the interpreter, so a preset runs
each shape at a smaller batch with the L2 scaled down by the same factor (--elements, --scale):
bytes per N hold while x stays past L2 (or within it) as at the modeled batch. The fused
providers run the paths the planner picks for the modeled batch (the one each phase would take
at the full batch, on the card's L2 and SM count), not those it would pick for the batch run;
where that path does not apply at the batch run (a streamed pass needs a lag of two chunks)
the row names the path that ran beside the full batch's. What does not scale: the weights,
read a few times per call whatever the batch, weigh `scale` times more per N at the batch run
than at the modeled one (at SE-ResNet-50's 7 x 7 stage, with hidden 128, about 0.6N per read
of both FCs' weights at batch 8 against 0.04N at 128); `--shapes 128,2048,7,7,128` runs that
stage at its full batch in about a minute. torch.compile has no row: Inductor has no CPU
Triton kernels to count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch

from fused_se import workloads

from .cards import CARDS, Card, card
from .l2 import replay
from .trace import Event, Trace, Tracer

PROVIDERS = ("eager", "eager-conv", "classic", "fused", "fused-3pass")
DEFAULT_PROVIDERS = ["eager", "eager-conv", "fused", "fused-3pass"]
FUSED = ("fused", "fused-3pass")
PHASES = {"fwd": ("fwd",), "bwd": ("bwd",), "fwd+bwd": ("fwd", "bwd")}
FULL_BATCH = 128  # the GPU bench's batch
THREE_LAUNCHES = ("three_launch", "three_launch")  # fused-3pass's (forward, backward) paths
# elements of x per run of a preset shape: SE-ResNet-50's first stage at batch 1 (the default
# preset's run, fwd and bwd of two fused and two eager providers in two layouts, within about
# three minutes on two cores)
DEFAULT_ELEMENTS = 256 * 56 * 56

L2_MODEL_HELP = (
    "The L2 model is LRU over 128-byte lines with write-allocate (no fetch on a write miss; a dirty line costs "
    "a line of DRAM writes when evicted, or at the end), replayed in launch order and, within a launch, in the "
    "Triton interpreter's program order (programs one after another; for the persistent kernels, ticket order), "
    "starting empty. Every time is a model: DRAM bytes / the card's bandwidth + launches x its launch cost."
)


@contextmanager
def planned_for(l2_bytes: int, sms: int) -> Iterator[None]:
    """The paths planned for this L2 (FUSED_SE_L2_BYTES) and SM count, on the CPU."""
    from fused_se.kernels import heuristics as hz

    saved_env = os.environ.get(hz.L2_ENV)
    saved_sm = hz.sm_count
    os.environ[hz.L2_ENV] = str(l2_bytes)
    hz.sm_count = lambda device: sms if device.type != "cuda" else saved_sm(device)
    try:
        yield
    finally:
        hz.sm_count = saved_sm
        if saved_env is None:
            os.environ.pop(hz.L2_ENV, None)
        else:
            os.environ[hz.L2_ENV] = saved_env


def build(provider: str, shape, dtype: torch.dtype) -> torch.nn.Module:
    if provider == "classic":
        from fused_se.reference import SEModule

        if shape.act != "relu" or shape.gate != "sigmoid" or shape.c % shape.hidden:
            raise ValueError(f"classic SEModule is ReLU/sigmoid with C // reduction hidden units; got {shape}")
        torch.manual_seed(0)
        return SEModule(shape.c, shape.c // shape.hidden).to(dtype=dtype)
    return workloads.build_block(provider, shape, torch.device("cpu"), dtype)


def trace_call(
    provider: str, shape, batch: int, layout: str, dtype: torch.dtype, paths: Optional[tuple[str, str]] = None
) -> tuple[Trace, int]:
    """One forward and backward of the provider under the Tracer: (trace, bytes of x). paths:
    the (forward, backward) path a fused provider is held to (the planner's choice otherwise)."""
    module = build(provider, shape, dtype)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    x = torch.randn(batch, shape.c, shape.h, shape.w, dtype=dtype).to(memory_format=fmt)
    grad = torch.randn_like(x)
    xg = x.detach().requires_grad_(True)
    inputs = [xg, *module.parameters()]
    if provider == "fused-3pass":
        paths = THREE_LAUNCHES
    fwd_paths, bwd_paths = (_held_to(p) for p in (paths or (None, None)))
    with Tracer() as tr:
        tr.phase("fwd")
        with fwd_paths:
            y = module(xg)
        tr.phase("bwd")
        with bwd_paths:
            torch.autograd.grad(y, inputs, grad)
    return tr.trace, x.numel() * x.element_size()


def _held_to(path: Optional[str]) -> contextlib.AbstractContextManager:
    from fused_se.kernels import force_paths

    return contextlib.nullcontext() if path is None else force_paths(path)


def path_name(events: list[Event], mode: str) -> str:
    names = {e.name for e in events if e.kind == "triton"}
    if not names:
        return "torch"
    fwd = "stream" if "_se_fwd_stream_kernel" in names else None
    fwd = fwd or ("spread" if "_se_fwd_spread_kernel" in names else None)
    fwd = fwd or ("one_launch" if "_se_fwd_one_launch_kernel" in names else "three_launch")
    bwd = "stream" if "_se_bwd_stream_kernel" in names else "three_launch"
    return paths_label((fwd, bwd), mode)


def full_size_paths(provider: str, shape, batch: int, layout: str, dtype: torch.dtype) -> Optional[tuple[str, str]]:
    """The (forward, backward) paths the planner picks for a fused provider at the modeled batch
    (nothing runs: a meta tensor); None for the others."""
    if provider not in FUSED:
        return None
    if provider == "fused-3pass":
        return THREE_LAUNCHES
    from fused_se.kernels import plan

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.empty(batch, shape.c, shape.h, shape.w, dtype=dtype, device="meta").to(memory_format=fmt)
    return plan.plan_forward(x, shape.hidden).path, plan.plan_backward(x, x, shape.hidden, None, False, True).path


def paths_label(paths: Optional[tuple[str, str]], mode: str) -> str:
    """A row's path column from the (forward, backward) paths: "torch" for eager's ops."""
    if paths is None:
        return "torch"
    fwd, bwd = paths
    if mode == "fwd":
        return f"triton {fwd}"
    if mode == "bwd":
        return f"triton {bwd}"
    return f"triton {fwd}" if fwd == bwd else f"triton {fwd} fwd, {bwd} bwd"


def summarize(events: list[Event], l2_bytes: int, c: Card, x_bytes: int, mode: str, scale: float = 1.0) -> dict:
    """Counted and modeled bytes of one mode's kernels; the time modeled at `scale` times the
    batch that ran (the same bytes per N, the same launches)."""
    result = replay([e.accesses for e in events], l2_bytes)
    launches = len(events)
    requested = sum(e.requested for e in events)
    time_us = result.dram_bytes * scale / c.dram_bytes_per_s * 1e6 + launches * c.launch_us
    return {
        "launches": launches,
        "kernels": " ".join(e.name for e in events),
        "bytes_requested": requested,
        "dram_bytes": result.dram_bytes,
        "dram_read_bytes": result.read_bytes,
        "dram_write_bytes": result.write_bytes,
        "minimal_bytes": workloads.MIN_TRAFFIC[mode] * x_bytes,
        "requested_n": requested / x_bytes,
        "dram_n": result.dram_bytes / x_bytes,
        "model_time_us": time_us,
    }


def plan_runs(args) -> list[tuple]:
    """(shape, batch run, batch modeled, scale) per shape: --shapes run as given; a preset's
    shapes at batch max(1, --elements // (C H W)) (each run about as long as another), the L2
    scaled by the same factor, or at batch // --scale where --scale is given."""
    if args.shapes:
        return [(s, n, n, 1.0) for n, s in (workloads.parse_shape(t) for t in args.shapes)]
    full = args.batch or FULL_BATCH
    runs = []
    for shape in workloads.PRESETS[args.preset]:
        if args.scale:
            batch = max(1, full // args.scale)
        else:
            batch = max(1, min(full, args.elements // (shape.c * shape.h * shape.w)))
        runs.append((shape, batch, full, full / batch))
    return runs


def _rows_for(task) -> list[dict]:
    """Every mode's rows of one (shape, layout, provider): one traced call, replayed per mode."""
    shape, batch, full, scale, layout, provider, args, c, l2_full = task
    dtype = workloads.DTYPES[args.dtype]
    l2 = max(128, int(l2_full / scale))
    with planned_for(l2_full, c.sms):
        full_paths = full_size_paths(provider, shape, full, layout, dtype)
    with planned_for(l2, c.sms):
        trace, x_bytes = trace_call(provider, shape, batch, layout, dtype, full_paths)
    rows = []
    for mode in args.modes:
        events = trace.select(*PHASES[mode])
        rows.append(
            {
                "model": "LRU L2 model; times modeled, not measured",
                "card": c.name,
                "provider": provider,
                "shape": f"{batch}x{shape.c}x{shape.h}x{shape.w}",
                "batch": batch,
                "batch_modeled": full,
                "scale": scale,
                "C": shape.c,
                "H": shape.h,
                "W": shape.w,
                "hidden": shape.hidden,
                "act": shape.act,
                "gate": shape.gate,
                "dtype": args.dtype,
                "layout": layout,
                "mode": mode,
                "path": path_name(events, mode),
                "path_at_full_batch": paths_label(full_paths, mode),
                "x_bytes": x_bytes,
                "l2_bytes": l2,
                "free_ops": " ".join(f"{k}:{v}" for k, v in sorted(trace.free_ops.items())),
                **summarize(events, l2, c, x_bytes, mode, scale),
            }
        )
    return rows


def _run_here(args) -> list[dict]:
    c = card(args.card)
    if args.bandwidth:
        c = Card(c.name, c.l2_bytes, args.bandwidth * 1e12, c.launch_us, c.sms, c.source + " (bandwidth overridden)")
    l2_full = args.l2_bytes or c.l2_bytes
    tasks = [
        (shape, batch, full, scale, layout, provider, args, c, l2_full)
        for shape, batch, full, scale in plan_runs(args)
        for layout in args.layouts
        for provider in args.providers
    ]
    if args.jobs > 1 and len(tasks) > 1:
        import multiprocessing

        # the slow rows (the interpreted ones) first, so that the workers finish together
        order = sorted(range(len(tasks)), key=lambda i: tasks[i][5] not in FUSED)
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            done = dict(zip(order, pool.map(_rows_for, [tasks[i] for i in order], chunksize=1)))
        results = [done[i] for i in range(len(tasks))]
    else:
        results = [_rows_for(t) for t in tasks]
    rows = []
    by_case: dict[tuple, list[dict]] = {}
    for task_rows in results:
        for r in task_rows:
            by_case.setdefault((r["shape"], r["layout"], r["mode"]), []).append(r)
    for case in by_case.values():
        eager = next((r for r in case if r["provider"] == "eager"), None)
        for r in case:
            r["model_speedup_vs_eager"] = eager["model_time_us"] / r["model_time_us"] if eager else None
        rows.extend(case)
    return rows


def run_traffic(args: argparse.Namespace) -> list[dict]:
    """The --traffic rows. Runs in this process where the kernels are interpreted, else in a
    child process with TRITON_INTERPRET=1 (the kernels are defined when triton is imported)."""
    from fused_se.kernels import common

    if common.INTERPRETED:
        return _run_here(args)
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "args.json")
        out = os.path.join(tmp, "rows.json")
        with open(spec, "w") as f:
            json.dump({k: v for k, v in vars(args).items() if k in _ARG_NAMES}, f)
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        subprocess.run([sys.executable, "-m", "fused_se.perf.traffic", spec, out], env=env, check=True)
        with open(out) as f:
            return json.load(f)


_ARG_NAMES = (
    "preset", "shapes", "batch", "scale", "elements", "layouts", "modes", "providers", "dtype", "card", "l2_bytes",
    "bandwidth", "jobs",
)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The --traffic options (presets, shapes, layouts, modes and dtype as fused-se-bench takes them)."""
    g = p.add_argument_group("traffic (--traffic): " + L2_MODEL_HELP)
    g.add_argument("--preset", choices=sorted(workloads.PRESETS), default="seresnet50")
    g.add_argument("--shapes", nargs="+", metavar="N,C,H,W[,hidden]", help="explicit shapes, run unscaled")
    g.add_argument("--batch", type=int, help=f"the preset's batch modeled (default {FULL_BATCH})")
    g.add_argument(
        "--elements",
        type=int,
        default=DEFAULT_ELEMENTS,
        help=f"run each preset shape at batch max(1, ELEMENTS // (C H W)) with the L2 scaled by the same factor "
        f"as the batch (default {DEFAULT_ELEMENTS}: batch 1, 2, 4, 8 for SE-ResNet-50's stages); the "
        "interpreter takes minutes per pass at batch 128. The fused providers run the paths the modeled "
        "batch takes, and the time is the modeled batch's",
    )
    g.add_argument("--scale", type=int, help="instead: run the preset at batch // SCALE, the L2 divided by SCALE")
    g.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    g.add_argument("--layouts", nargs="+", choices=workloads.LAYOUTS, default=list(workloads.LAYOUTS))
    g.add_argument("--modes", nargs="+", choices=workloads.MODES, default=list(workloads.MODES))
    g.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(DEFAULT_PROVIDERS))
    g.add_argument("--dtype", choices=sorted(workloads.DTYPES), default="bf16", help="default bf16, as on a GPU")
    g.add_argument("--card", choices=sorted(CARDS), default="h100", help="L2, bandwidth and launch cost (cards.py)")
    g.add_argument(
        "--l2-bytes",
        type=int,
        help="the L2 that both the path planner (FUSED_SE_L2_BYTES) and the model assume, before --scale "
        "(default: the card's)",
    )
    g.add_argument("--bandwidth", type=float, metavar="TB/s", help="DRAM bandwidth (default: the card's)")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("scale", "elements", "jobs", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be positive; got {value}")
    if args.shapes:
        if args.batch is not None:
            p.error("--batch applies to a preset; with --shapes, give N in each shape")
        for s in args.shapes:
            try:
                workloads.parse_shape(s)
            except argparse.ArgumentTypeError as e:
                p.error(f"--shapes: {e}")
    if args.l2_bytes is not None and args.l2_bytes < 128:
        p.error(f"--l2-bytes must be at least one 128-byte line; got {args.l2_bytes}")


def _n(v: float) -> str:
    return f"{v:.2f}N"


def format_traffic(rows: list[dict]) -> str:
    head = (
        f"{'shape':>16} {'layout':>13} {'mode':>7} {'provider':>11} {'path':>26} {'launch':>6} {'requested':>9} "
        f"{'DRAM*':>7} {'floor':>6} {'time us*':>9} {'vs eager*':>9}  {'path at full batch':<28}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = "-" if r["model_speedup_vs_eager"] is None else f"{r['model_speedup_vs_eager']:.2f}x"
        lines.append(
            f"{r['shape']:>16} {r['layout']:>13} {r['mode']:>7} {r['provider']:>11} {r['path']:>26} "
            f"{r['launches']:>6} {_n(r['requested_n']):>9} {_n(r['dram_n']):>7} "
            f"{_n(r['minimal_bytes'] / r['x_bytes']):>6} {r['model_time_us']:>9.1f} {speed:>9}  "
            f"{r['path_at_full_batch']:<28}"
        )
    r0 = rows[0] if rows else None
    if r0:
        lines.append(
            f"* model, {r0['card']}: DRAM from an LRU model of L2; time = DRAM / bandwidth + launches x launch cost, "
            "at the modeled batch. N = bytes of x; requested: counted."
        )
        for shape in dict.fromkeys(r["shape"] for r in rows):
            r = next(r for r in rows if r["shape"] == shape)
            if r["scale"] != 1:
                lines.append(
                    f"  {shape}: batch {r['batch']} for {r['batch_modeled']}, L2 {r['l2_bytes'] / 2**20:.3g} MiB "
                    f"(the card's / {r['scale']:g})"
                )
    return "\n".join(lines)


if __name__ == "__main__":  # the child process of run_traffic
    with open(sys.argv[1]) as f:
        ns = argparse.Namespace(**json.load(f))
    with open(sys.argv[2], "w") as f:
        json.dump(_run_here(ns), f)
