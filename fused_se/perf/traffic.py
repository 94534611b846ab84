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
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional, TextIO

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
    torch.manual_seed(0)
    x = workloads.make_x(shape, batch, layout, torch.device("cpu"), dtype)  # (B, C, *dims), any rank
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
    if "_scse_scale_kernel" in names or "_scse_reduce_bwd_kernel" in names:
        return "triton scse"
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
    if provider == "fused-3pass" or shape.spatial_gate:  # scSE has its own passes and no planner
        return THREE_LAUNCHES
    from fused_se.functional import _kernels_input
    from fused_se.kernels import plan

    # the (B, C, H, W) view the ops take, whatever the map's rank
    x = _kernels_input(workloads.make_x(shape, batch, layout, torch.device("meta"), dtype))
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
                "shape": f"{batch}x{shape.label()}",
                "spatial": "x".join(map(str, shape.dims)),
                "batch": batch,
                "batch_modeled": full,
                "scale": scale,
                "C": shape.c,
                "H": shape.h,  # with W: the map as the kernels see it ((L * ..., 1) for a sequence or a volume)
                "W": shape.w,
                "hidden": shape.hidden,
                "act": shape.act,
                "gate": shape.gate,
                "dtype": args.dtype,
                "layout": layout,
                "mode": mode,
                "path": path_name(events, mode),
                # scSE has no planner: the same passes at any batch
                "path_at_full_batch": path_name(events, mode) if shape.spatial_gate else paths_label(full_paths, mode),
                "x_bytes": x_bytes,
                "l2_bytes": l2,
                "free_ops": " ".join(f"{k}:{v}" for k, v in sorted(trace.free_ops.items())),
                **summarize(events, l2, c, x_bytes, mode, scale),
            }
        )
    return rows


def _card(args) -> Card:
    c = card(args.card)
    if args.bandwidth:
        c = Card(c.name, c.l2_bytes, args.bandwidth * 1e12, c.launch_us, c.sms, c.source + " (bandwidth overridden)")
    return c


def progress_line(i: int, total: int, shape, batch: int, full: int, scale: float, l2_full: int, tasks: int) -> str:
    """The line printed before a shape's rows: which shape, at which batch, with which L2."""
    run = f"batch {batch}" if scale == 1 else f"batch {batch} for {full}, L2 {l2_full / scale / 2**20:.3g} MiB"
    return f"[{i}/{total}] {batch}x{shape.label()},{shape.hidden}: {run}; {tasks} traced calls"


def _run_here(args, emit: Optional[Callable[[str, object], None]] = None) -> list[dict]:
    """Every row, each handed to emit("row", row) as soon as it is counted, after an
    emit("progress", line) per shape. The eager row of a (shape, layout) is counted first, so
    that every other row's modeled speedup against it is known when the row is."""
    c = _card(args)
    l2_full = args.l2_bytes or c.l2_bytes
    providers = [p for p in PROVIDERS if p in args.providers]  # eager first
    runs = plan_runs(args)
    tasks = [
        (shape, batch, full, scale, layout, provider, args, c, l2_full)
        for shape, batch, full, scale in runs
        for layout in args.layouts
        for provider in providers
    ]
    if args.jobs > 1 and len(tasks) > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(args.jobs)
        results = pool.imap(_rows_for, tasks, chunksize=1)  # in order, as each is done
    else:
        pool = None
        results = (_rows_for(t) for t in tasks)
    rows: list[dict] = []
    eager: dict[tuple, dict] = {}
    per_shape = len(args.layouts) * len(providers)
    try:
        for i, task in enumerate(tasks):
            if i % per_shape == 0 and emit is not None:
                shape, batch, full, scale = task[:4]
                emit("progress", progress_line(i // per_shape + 1, len(runs), shape, batch, full, scale, l2_full,
                                               per_shape))  # fmt: skip
            for r in next(results):
                case = (r["shape"], r["layout"], r["mode"])
                if r["provider"] == "eager":
                    eager[case] = r
                base = eager.get(case)
                r["model_speedup_vs_eager"] = base["model_time_us"] / r["model_time_us"] if base else None
                rows.append(r)
                if emit is not None:
                    emit("row", r)
    finally:
        if pool is not None:
            pool.terminate()
    return rows


def run_traffic(args: argparse.Namespace, emit: Optional[Callable[[str, object], None]] = None) -> list[dict]:
    """The --traffic rows, each handed to emit as it is counted (see _run_here). Runs in this
    process where the kernels are interpreted, else in a child process with TRITON_INTERPRET=1
    (the kernels are defined when triton is imported), which sends each row and progress line
    back as one line of JSON as soon as it has it."""
    from fused_se.kernels import common

    if common.INTERPRETED:
        return _run_here(args, emit)
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "args.json")
        with open(spec, "w") as f:
            json.dump({k: v for k, v in vars(args).items() if k in _ARG_NAMES}, f)
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        cmd = [sys.executable, "-m", "fused_se.perf.traffic", spec]
        rows = []
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, bufsize=1) as child:
            assert child.stdout is not None
            for line in child.stdout:
                kind, item = _message(line)
                if kind == "row":
                    rows.append(item)
                if kind == "other":
                    sys.stdout.write(item)
                elif emit is not None:
                    emit(kind, item)
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, cmd)
        return rows


_MARK = "fused_se.perf.traffic "  # the child's lines to its parent start with this


def _message(line: str) -> tuple[str, object]:
    if not line.startswith(_MARK):
        return "other", line
    message = json.loads(line[len(_MARK) :])
    return message["kind"], message["item"]


_ARG_NAMES = (
    "preset", "shapes", "batch", "scale", "elements", "layouts", "modes", "providers", "dtype", "card", "l2_bytes",
    "bandwidth", "jobs",
)  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The --traffic options (presets, shapes, layouts, modes and dtype as fused-se-bench takes them)."""
    g = p.add_argument_group("traffic (--traffic)", textwrap.fill(L2_MODEL_HELP, 96))
    g.add_argument(
        "--preset", choices=sorted(workloads.PRESETS), default="seresnet50", metavar="NAME",
        help=f"SE placements of a network: {', '.join(sorted(workloads.PRESETS))} (default seresnet50)",
    )  # fmt: skip
    g.add_argument(
        "--shapes", nargs="+", metavar="SHAPE", help=f"explicit shapes, run unscaled. SHAPE: {workloads.SHAPE_SYNTAX}"
    )
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
    g.add_argument(
        "--providers", nargs="+", choices=PROVIDERS, default=list(DEFAULT_PROVIDERS), metavar="P",
        help=f"of {', '.join(PROVIDERS)} (default: {' '.join(DEFAULT_PROVIDERS)})",
    )  # fmt: skip
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


def _short_path(label: str) -> str:
    """A path label for the table: "torch" for eager's ops; the fused paths without "triton", a
    forward and backward that differ as fwd/bwd."""
    if not label.startswith("triton "):
        return label
    label = label.removeprefix("triton ")
    if label.endswith(" bwd"):
        fwd, bwd = label.removesuffix(" bwd").split(" fwd, ")
        return f"{fwd}/{bwd}"
    return label


# (header, width, cell): every line of the table within TABLE_WIDTH columns
_COLUMNS = [
    ("layout", 13, lambda r: r["layout"]),
    ("mode", 7, lambda r: r["mode"]),
    ("provider", 11, lambda r: r["provider"]),
    ("launch", 6, lambda r: str(r["launches"])),
    ("req", 6, lambda r: _n(r["requested_n"])),
    ("DRAM*", 6, lambda r: _n(r["dram_n"])),
    ("us*", 8, lambda r: f"{r['model_time_us']:.1f}"),
    ("vs eager*", 9, lambda r: "-" if r["model_speedup_vs_eager"] is None else f"{r['model_speedup_vs_eager']:.2f}x"),
]
TABLE_WIDTH = 100


def _clip(line: str) -> str:
    return line if len(line) <= TABLE_WIDTH else line[: TABLE_WIDTH - 3] + "..."


def table_header() -> str:
    head = " ".join(h.rjust(w) for h, w, _ in _COLUMNS) + " path"
    return head + "\n" + "-" * min(TABLE_WIDTH, len(head) + 20)


def table_lines(r: dict) -> list[str]:
    """A row's line, and under it the path the modeled batch takes where the batch run took another."""
    path = _short_path(r["path"])
    lines = [_clip(" ".join(cell(r).rjust(w) for _, w, cell in _COLUMNS) + " " + path)]
    full = _short_path(r["path_at_full_batch"])
    if full != path:
        lines.append(_clip(f"{'':13} at batch {r['batch_modeled']} the planner takes {full}"))
    return lines


def footnotes(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "req: bytes requested, counted; DRAM*: an LRU model of L2; floor: 2N fwd, 3N bwd, 5N fwd+bwd",
        f"* model, {rows[0]['card']}: us = DRAM / bandwidth + launches x launch cost, at the modeled batch;",
        "  N = bytes of x; path: torch (eager's ops) or the fused paths, fwd/bwd where they differ",
    ]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        r = next(r for r in rows if r["shape"] == shape)
        if r["scale"] != 1:
            lines.append(
                _clip(
                    f"  {shape}: batch {r['batch']} for {r['batch_modeled']}, L2 {r['l2_bytes'] / 2**20:.3g} MiB "
                    f"(the card's / {r['scale']:g})"
                )
            )
    return lines


class TablePrinter:
    """Prints the table as the run goes: the header at once, a progress line per shape, each row
    as soon as it is counted (flushed); the footnotes at the end."""

    def __init__(self, out: Optional[TextIO] = None) -> None:
        self.out = sys.stdout if out is None else out
        self.rows: list[dict] = []
        print(table_header(), file=self.out, flush=True)

    def __call__(self, kind: str, item) -> None:
        if kind == "row":
            self.rows.append(item)
            lines = table_lines(item)
        else:
            lines = [_clip(str(item))]
        print("\n".join(lines), file=self.out, flush=True)

    def close(self) -> None:
        print("\n".join(footnotes(self.rows)), file=self.out, flush=True)


def format_traffic(rows: list[dict]) -> str:
    """The whole table at once (a run prints it as it goes: TablePrinter)."""
    lines = [table_header()]
    for r in rows:
        lines.extend(table_lines(r))
    return "\n".join(lines + footnotes(rows))


if __name__ == "__main__":  # the child process of run_traffic

    def _send(kind: str, item: object) -> None:
        print(_MARK + json.dumps({"kind": kind, "item": item}), flush=True)

    with open(sys.argv[1]) as f:
        _run_here(argparse.Namespace(**json.load(f)), _send)
