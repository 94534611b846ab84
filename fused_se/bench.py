"""fused-se-bench: the fused SE block against eager PyTorch and torch.compile, on your device.

    fused-se-bench                                  the default: SE-ResNet-50's SE shapes
    fused-se-bench --preset efficientnet_b0 --modes fwd --providers eager fused
    fused-se-bench --shapes 32,256,56,56 --dtype fp16 --json out.json --csv out.csv --plot out.png
    fused-se-bench --tail                           SE + residual add + ReLU: a ResNet block's tail
    fused-se-bench --providers fused fused-3pass    the chosen paths against the three launches
    fused-se-bench --e2e                            training steps of whole timm models
    python -m fused_se.bench --help

Each row times one provider on one (shape, layout, mode): median and p20/p80 in ms
(triton.testing.do_bench on a GPU; a repeated wall-clock timer on a CPU), the speedup against
eager and against torch.compile, the effective bandwidth against the minimal traffic of the SE
block (N = bytes of x: 2N forward, 3N backward, 5N forward+backward) and against the
implementation's own traffic where it is known (fused: 3N, 4N, 7N), the percent of a
device-to-device copy's bandwidth measured in the same run, the peak memory of a training step
and the kernel launches per call (from the profiler, on a GPU). fused-3pass is the fused block
held to its three-launch passes (the one-launch, spread and streamed paths off).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .version import __version__

# ---- presets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SEShape:
    """Where an SE block sits in a network: its input map and its excitation."""

    c: int
    h: int
    w: int
    hidden: int
    act: str = "relu"
    gate: str = "sigmoid"

    def label(self) -> str:
        return f"{self.c}x{self.h}x{self.w}"


# SE-ResNet-50: the SE of each stage's bottlenecks (r = 16, ReLU, sigmoid) at 224x224.
SERESNET50 = [SEShape(256, 56, 56, 16), SEShape(512, 28, 28, 32), SEShape(1024, 14, 14, 64), SEShape(2048, 7, 7, 128)]
# EfficientNet-B0 at 224x224: the distinct SE placements (SiLU inside, sigmoid gate).
EFFICIENTNET_B0 = [
    SEShape(c, h, h, r, "silu", "sigmoid")
    for c, h, r in [
        (32, 112, 8),
        (96, 56, 4),
        (144, 56, 6),
        (144, 28, 6),
        (240, 28, 10),
        (240, 14, 10),
        (480, 14, 20),
        (672, 14, 28),
        (672, 7, 28),
        (1152, 7, 48),
    ]
]
# MobileNetV3-Large at 224x224 (ReLU inside, hard sigmoid gate).
MOBILENETV3 = [
    SEShape(c, h, h, r, "relu", "hard_sigmoid")
    for c, h, r in [(72, 28, 24), (120, 28, 32), (480, 14, 120), (672, 14, 168), (672, 7, 168), (960, 7, 240)]
]
PRESETS = {"seresnet50": SERESNET50, "efficientnet_b0": EFFICIENTNET_B0, "mobilenetv3": MOBILENETV3}

MODES = ("fwd", "bwd", "fwd+bwd")
# Bytes moved, in multiples of N = bytes of x: the least any implementation must move, and the
# fused kernels' own budget (DESIGN.md): read x, write y; read dy and x, write dx.
MIN_TRAFFIC = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}
FUSED_TRAFFIC = {"fwd": 3, "bwd": 4, "fwd+bwd": 7}
# With --tail, out = relu(se(x) + shortcut): read x and the shortcut, write out; read dy, out
# (the ReLU's mask) and x, write dx and the shortcut's gradient. The fused tail adds the
# shortcut to the scale pass (4N) and, backward, writes the masked dy that the dx pass reads
# (4N + 2N).
MIN_TRAFFIC_TAIL = {"fwd": 3, "bwd": 5, "fwd+bwd": 8}
FUSED_TRAFFIC_TAIL = {"fwd": 4, "bwd": 6, "fwd+bwd": 10}
PROVIDERS = (
    "eager", "eager-conv", "compile", "compile-max-autotune", "compile-reduce-overhead", "fused", "fused-3pass",
)  # fmt: skip
FUSED = ("fused", "fused-3pass")
COMPILE_MODES = {
    "compile": None,
    "compile-max-autotune": "max-autotune-no-cudagraphs",
    "compile-reduce-overhead": "reduce-overhead",
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "channels_last")


def traffic_bytes(mode: str, x_bytes: int, provider: str, tail: bool = False) -> tuple[int, Optional[int]]:
    """(minimal traffic, the provider's own traffic or None where it is not known) in bytes."""
    minimal, fused = (MIN_TRAFFIC_TAIL, FUSED_TRAFFIC_TAIL) if tail else (MIN_TRAFFIC, FUSED_TRAFFIC)
    own = fused[mode] * x_bytes if provider in FUSED else None
    return minimal[mode] * x_bytes, own


# ---- the providers -------------------------------------------------------------------------

_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU}
_GATES = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}


class EagerSE(nn.Module):
    """The SE block as eager code writes it: Linear FCs (SENet), or 1x1 convs (timm, torchvision)."""

    def __init__(self, shape: SEShape, conv: bool, tail: bool = False) -> None:
        super().__init__()
        c, r = shape.c, shape.hidden
        self.conv, self.tail = conv, tail
        if conv:
            self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
        else:
            self.fc1, self.fc2 = nn.Linear(c, r), nn.Linear(r, c)
        self.act, self.gate = _ACTS[shape.act](inplace=True), _GATES[shape.gate]()

    def forward(self, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None) -> torch.Tensor:
        z = x.mean((2, 3), keepdim=self.conv)
        s = self.gate(self.fc2(self.act(self.fc1(z))))
        y = x * (s if self.conv else s[:, :, None, None])
        if not self.tail:
            return y
        y += shortcut  # as timm's Bottleneck: in place, then an in-place ReLU
        return torch.relu_(y)


class FusedTail(nn.Module):
    """The fused block with the tail in its scale pass: relu(se(x) + shortcut)."""

    def __init__(self, se: nn.Module) -> None:
        super().__init__()
        self.se = se

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return self.se(x, shortcut, out_act="relu")


def build_provider(
    provider: str, shape: SEShape, device: torch.device, dtype: torch.dtype, tail: bool = False
) -> nn.Module:
    from .modules import FusedSEModule

    torch.manual_seed(0)
    eager = EagerSE(shape, conv=False, tail=tail).to(device=device, dtype=dtype)
    if provider == "eager":
        return eager
    if provider == "eager-conv":
        return EagerSE(shape, conv=True, tail=tail).to(device=device, dtype=dtype)
    if provider in COMPILE_MODES:
        # Every row compiles its own module: start from a clean cache, so that no recompile
        # limit sends a later row back to eager without a word.
        torch._dynamo.reset()
        return torch.compile(eager, mode=COMPILE_MODES[provider])
    fused = FusedSEModule(shape.c, rd_channels=shape.hidden, bias=True, act=shape.act, gate=shape.gate)
    fused.fc[0].load_state_dict(eager.fc1.state_dict())
    fused.fc[2].load_state_dict(eager.fc2.state_dict())
    return (FusedTail(fused) if tail else fused).to(device=device, dtype=dtype)


@contextmanager
def three_launch_paths() -> Iterator[None]:
    """The fused kernels' three-launch passes only (the fused-3pass provider, to weigh the other
    paths against the passes they replace in the same run)."""
    from .kernels import force_paths

    with force_paths("three_launch"):
        yield


def _in_three_launch_paths(fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        with three_launch_paths():
            return fn()

    return call


def make_call(
    module: nn.Module,
    x: torch.Tensor,
    grad: torch.Tensor,
    mode: str,
    shortcut: Optional[torch.Tensor] = None,
    three_pass: bool = False,
) -> Callable[[], object]:
    """One call of the mode: forward without grad, backward alone (the graph kept), or both.
    With a shortcut (the tail), the module takes it as its second input, and it gets a gradient."""
    if three_pass:
        with three_launch_paths():  # the "bwd" call's forward runs here
            return _in_three_launch_paths(make_call(module, x, grad, mode, shortcut))
    extra = () if shortcut is None else (shortcut,)
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                return module(x, *extra)

        return fwd
    xg = x.detach().requires_grad_(True)
    extra = tuple(t.detach().requires_grad_(True) for t in extra)
    inputs = [xg, *extra, *module.parameters()]
    if mode == "bwd":
        y = module(xg, *extra)

        def bwd():
            return torch.autograd.grad(y, inputs, grad, retain_graph=True)

        return bwd

    def fwd_bwd():
        # autograd.grad, not .backward(): accumulating into .grad would add a pass of its own.
        return torch.autograd.grad(module(xg, *extra), inputs, grad)

    return fwd_bwd


# ---- measuring -----------------------------------------------------------------------------


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> tuple[float, float, float]:
    """(median, p20, p80) in ms. On a GPU warmup and reps are milliseconds for do_bench; on a
    CPU they are counts of calls."""
    if device.type == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, warmup=warmup, rep=reps, quantiles=[0.5, 0.2, 0.8]))
    for _ in range(max(1, warmup)):
        fn()
    times = []
    for _ in range(max(3, reps)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    deciles = statistics.quantiles(times, n=10)
    return statistics.median(times), deciles[1], deciles[7]


def copy_bandwidth_gbs(device: torch.device, warmup: int, reps: int) -> float:
    """Device-to-device copy bandwidth (read + write) of a buffer far larger than the caches."""
    n = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, reps)[0]
    return 2 * n / ms / 1e6


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory allocated during one call beyond what was allocated before it (GPU only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def kernel_launches(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """GPU kernels launched by one call, as the profiler counts them (GPU only)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def default_batch(device: torch.device, shapes: list[SEShape], dtype: torch.dtype) -> int:
    """128 on a GPU where the largest map fits 16 times over in a quarter of the free memory;
    less where it does not; 2 on a CPU, so that the default run stays short."""
    if device.type != "cuda":
        return 2
    free, _ = torch.cuda.mem_get_info(device)
    per_sample = max(s.c * s.h * s.w for s in shapes) * torch.empty(0, dtype=dtype).element_size()
    return max(1, min(128, free // 4 // (16 * per_sample)))


# ---- the run -------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "fused_se": __version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.live = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.live:
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {what[:50]:50s}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.live:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def fused_path(x: torch.Tensor, shape: SEShape, mode: str = "fwd", tail: bool = False) -> str:
    """The fused provider's path for x in this mode: "triton 3-pass", "triton 1-launch" or
    "triton spread" (forwards of small batches) or "triton stream" (x past L2), as
    "triton <fwd> fwd, <bwd> bwd" where fwd+bwd mixes two; "decomposed" or "reference" off the
    kernels."""
    from . import backend_for

    backend = backend_for(x)
    if backend != "triton":
        return backend
    from .kernels import plan_backward, plan_forward

    labels = {"three_launch": "3-pass", "one_launch": "1-launch", "spread": "spread", "stream": "stream"}
    fwd = labels[plan_forward(x, shape.hidden).path]
    # the tail's backward reads the ReLU's output and writes the shortcut's gradient
    bwd = labels[plan_backward(x, x, shape.hidden, x if tail else None, tail).path]
    if mode == "fwd" or (mode == "fwd+bwd" and fwd == bwd):
        return f"triton {fwd}"
    if mode == "bwd":
        return f"triton {bwd}"
    return f"triton {fwd} fwd, {bwd} bwd"


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


# ---- output --------------------------------------------------------------------------------

ROW_FIELDS = [
    "device", "torch", "triton", "fused_se", "timestamp", "provider", "path", "batch", "C", "H", "W", "hidden",
    "act", "gate", "dtype", "layout", "mode", "tail", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager",
    "speedup_vs_compile", "x_bytes", "min_traffic_bytes", "own_traffic_bytes", "gbs_min_traffic",
    "gbs_own_traffic", "copy_gbs", "pct_of_copy", "peak_mem_mb", "launches",
]  # fmt: skip


def _fmt(v, spec: str, width: int, suffix: str = "") -> str:
    return ("-" if v is None else format(v, spec) + suffix).rjust(width)


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'shape':>13} {'layout':>13} {'mode':>12} {'provider':>23} {'path':>24} {'ms':>9} {'p20-p80':>17} "
        f"{'vs eager':>8} {'vs comp':>8} {'GB/s':>7} {'%copy':>6} {'own GB/s':>8} {'peak MB':>8} {'launch':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']}x{r['C']}x{r['H']}x{r['W']}"
        mode = r["mode"] + ("+tail" if r.get("tail") else "")
        lines.append(
            f"{shape:>13} {r['layout']:>13} {mode:>12} {r['provider']:>23} {r['path']:>24} {r['median_ms']:>9.4f} "
            + f"{r['p20_ms']:>8.4f}-{r['p80_ms']:<8.4f} {_fmt(r['speedup_vs_eager'], '.2f', 8, 'x')} "
            + f"{_fmt(r['speedup_vs_compile'], '.2f', 8, 'x')} {r['gbs_min_traffic']:>7.1f} {r['pct_of_copy']:>5.1f}% "
            + f"{_fmt(r['gbs_own_traffic'], '.1f', 8)} {_fmt(r['peak_mem_mb'], '.1f', 8)} {_fmt(r['launches'], 'd', 6)}"
        )
    return "\n".join(lines)


def write_json(rows: list[dict], path: str) -> None:
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mode = "fwd+bwd" if any(r["mode"] == "fwd+bwd" for r in rows) else rows[0]["mode"]
    layout = "channels_last" if any(r["layout"] == "channels_last" for r in rows) else rows[0]["layout"]
    sel = [r for r in rows if r["mode"] == mode and r["layout"] == layout]
    shapes = list(dict.fromkeys(f"{r['C']}x{r['H']}x{r['W']}" for r in sel))
    providers = list(dict.fromkeys(r["provider"] for r in sel))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(providers)
    for i, p in enumerate(providers):
        by_shape = {f"{r['C']}x{r['H']}x{r['W']}": r for r in sel if r["provider"] == p}
        xs = [j + i * width for j in range(len(shapes))]
        ax1.bar(xs, [by_shape[s]["speedup_vs_eager"] or 0 for s in shapes], width, label=p)
        ax2.bar(xs, [by_shape[s]["pct_of_copy"] for s in shapes], width, label=p)
    for ax, title in ((ax1, "speedup against eager"), (ax2, "bandwidth, % of device copy (minimal traffic)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=20)
        ax.set_title(f"{title}\n{mode}, {layout}, {sel[0]['dtype']}, batch {sel[0]['batch']}", fontsize=10)
        ax.legend(fontsize=8)
    ax1.axhline(1.0, color="gray", lw=0.8)
    fig.suptitle(f"fused_se {sel[0]['fused_se']} on {sel[0]['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- end-to-end training steps -------------------------------------------------------------

E2E_MODELS = [
    ("seresnet50", "eager"),
    ("seresnet50", "converted"),
    ("seresnet50", "converted+tails"),  # convert(model, fuse_residual=True)
    ("resnet50", "eager"),
    ("efficientnet_b0", "eager"),
    ("efficientnet_b0", "converted"),
]


def _training_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, amp: bool) -> Callable[[], None]:
    """One SGD step: forward (bf16 autocast where amp), cross-entropy, backward, update."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_e2e(args: argparse.Namespace) -> list[dict]:
    """Training steps (forward, backward, SGD step) of whole timm models; images/s and the
    SE overhead of SE-ResNet-50 over ResNet-50, eager and converted."""
    import timm

    from . import backend_for
    from .conversion import convert

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.e2e_batch or (64 if cuda else 2)
    size = args.e2e_size or (224 if cuda else 64)
    env = environment(device)
    rows = []
    progress = _Progress(len(E2E_MODELS))
    for name, variant in E2E_MODELS:
        progress.step(f"{name} {variant}")
        torch.manual_seed(0)
        model = timm.create_model(name).to(device)
        if variant.startswith("converted"):
            convert(model, fuse_residual=variant == "converted+tails")
        fmt = torch.channels_last if cuda else torch.contiguous_format
        model = model.to(memory_format=fmt).train()
        x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
        target = torch.randint(0, 1000, (batch,), device=device)
        step = _training_step(model, x, target, amp=cuda)
        median, p20, p80 = time_ms(step, device, args.warmup, args.reps)
        rows.append(
            {**env, "model": name, "variant": variant, "batch": batch, "size": size,
             "path": backend_for(x) if variant.startswith("converted") else "torch",
             "amp": "bf16" if cuda else "off", "layout": "channels_last" if cuda else "nchw",
             "median_ms": median, "p20_ms": p20, "p80_ms": p80, "images_per_s": batch / median * 1e3}
        )  # fmt: skip
    progress.close()
    floor = next(r for r in rows if r["model"] == "resnet50")["median_ms"]
    for r in rows:
        r["overhead_vs_resnet50_pct"] = 100 * (r["median_ms"] / floor - 1) if r["model"] == "seresnet50" else None
    return rows


def format_e2e(rows: list[dict]) -> str:
    head = (
        f"{'model':>16} {'variant':>15} {'ms/step':>9} {'p20-p80':>17} {'images/s':>9} {'SE overhead vs resnet50':>24}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        over = "-" if r["overhead_vs_resnet50_pct"] is None else f"{r['overhead_vs_resnet50_pct']:+.1f}%"
        lines.append(
            f"{r['model']:>16} {r['variant']:>15} {r['median_ms']:>9.2f} {r['p20_ms']:>8.2f}-{r['p80_ms']:<8.2f} "
            f"{r['images_per_s']:>9.1f} {over:>24}"
        )
    return "\n".join(lines)


# ---- the command line ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse_shape(text: str) -> tuple[int, SEShape]:
    parts = text.split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (4, 5) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"shape must be N,C,H,W or N,C,H,W,hidden with positive integers; got {text!r}"
        )
    n, c, h, w = values[:4]
    hidden = values[4] if len(values) == 5 else max(1, c // 16)
    return n, SEShape(c, h, w, hidden)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fused-se-bench",
        description="Times the fused SE block against eager PyTorch and torch.compile on this machine's device.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Providers: eager (SEModule with Linear FCs), eager-conv (1x1 Conv2d FCs, as timm and torchvision),\n"
            "compile (torch.compile of eager, default mode), compile-max-autotune (mode max-autotune-no-cudagraphs),\n"
            "compile-reduce-overhead, fused. Default: eager, eager-conv, compile and fused on a GPU; eager,\n"
            "eager-conv and fused on a CPU (compiling there takes long and measures nothing this project is for).\n"
            "Modes: fwd (inference, no grad), bwd (backward alone), fwd+bwd.\n"
            "GB/s is against the minimal traffic of the SE block (N = bytes of x): 2N fwd, 3N bwd, 5N fwd+bwd;\n"
            "own GB/s against the fused kernels' own traffic: 3N, 4N, 7N. %copy compares GB/s with a device-to-\n"
            "device copy measured in the same run. Peak memory (fwd+bwd and bwd) and kernel launches come from\n"
            "the CUDA allocator and profiler, on a GPU only."
        ),
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="seresnet50",
        help="SE placements of a network (default: seresnet50)",
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        type=_parse_shape,
        metavar="N,C,H,W[,hidden]",
        help="explicit shapes; replace the preset (hidden defaults to C // 16)",
    )
    p.add_argument(
        "--batch", type=int, help="batch of the preset's shapes (default: 128 where it fits on a GPU, 2 on a CPU)"
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=["fwd", "fwd+bwd"])
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, help="default: see below")
    p.add_argument(
        "--tail",
        action="store_true",
        help="time a ResNet block's tail, relu(se(x) + shortcut), instead of the SE alone (traffic: 3N fwd, "
        "5N bwd, 8N fwd+bwd minimal; the fused tail's own 4N, 6N, 10N)",
    )
    p.add_argument("--warmup", type=int, help="GPU: ms of warm-up per row (default 25); CPU: calls (default 2)")
    p.add_argument("--reps", type=int, help="GPU: ms of timed calls per row (default 100); CPU: calls (default 10)")
    p.add_argument("--device", help="default: cuda if there is one, else cpu")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="write a PNG: speedup and %% of copy bandwidth by shape and provider (needs matplotlib)",
    )
    p.add_argument(
        "--e2e",
        action="store_true",
        help="instead: training steps of timm seresnet50 (eager, converted), resnet50, efficientnet_b0 (eager, converted); needs timm",
    )
    p.add_argument("--e2e-batch", type=int, help="--e2e batch (default: 64 on a GPU, 2 on a CPU)")
    p.add_argument("--e2e-size", type=int, help="--e2e image size (default: 224 on a GPU, 64 on a CPU)")
    return p  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if device.type not in ("cuda", "cpu"):
        p.error(f"--device must be cuda or cpu; got {args.device}")
    cuda = device.type == "cuda"
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.warmup = args.warmup if args.warmup is not None else (25 if cuda else 2)
    args.reps = args.reps if args.reps is not None else (100 if cuda else 10)
    for name in ("batch", "warmup", "reps", "e2e_batch", "e2e_size"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive; got {value}")
    if args.providers is None:
        args.providers = ["eager", "eager-conv", "compile", "fused"] if cuda else ["eager", "eager-conv", "fused"]
    if args.shapes:
        if args.batch is not None:
            p.error("--batch applies to a preset; with --shapes, give N in each shape")
        args.batch_list = [n for n, _ in args.shapes]
        args.shape_list = [s for _, s in args.shapes]
    else:
        args.shape_list = PRESETS[args.preset]
        batch = args.batch or default_batch(device, args.shape_list, DTYPES[args.dtype])
        args.batch_list = [batch] * len(args.shape_list)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib (pip install matplotlib, or pip install 'fused_se[bench]')")
    if args.e2e and args.tail:
        p.error("--tail times SE blocks; --e2e times whole models (converted with fuse_residual=True): give one")
    if args.e2e:
        try:
            import timm  # noqa: F401
        except ImportError:
            p.error("--e2e needs timm (pip install timm, or pip install 'fused_se[bench]')")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    env = environment(device)
    print(
        f"fused-se-bench on {env['device']} | torch {env['torch']} | triton {env['triton']} | fused_se {env['fused_se']}"
    )
    if args.e2e:
        rows = run_e2e(args)
        print(format_e2e(rows))
    else:
        shapes = ", ".join(f"{n}x{s.c}x{s.h}x{s.w}" for n, s in zip(args.batch_list, args.shape_list))
        print(f"{args.dtype}, shapes {shapes}, providers {' '.join(args.providers)}")
        rows = run(args)
        print(format_table(rows))
        print(f"device-to-device copy: {rows[0]['copy_gbs']:.1f} GB/s")
        if args.plot:
            write_plot(rows, args.plot)
    if args.json:
        write_json(rows, args.json)
    if args.csv:
        if args.e2e:
            fields = list(rows[0])
            with open(args.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
        else:
            write_csv(rows, args.csv)
    if device.type != "cuda":
        print(
            "note: CPU timings of the CPU paths (the fused ops run their torch-ops kernel here, or the "
            "Triton interpreter); "
            "the speedups fused_se exists for need a CUDA GPU."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
