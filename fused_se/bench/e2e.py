"""Whole-model training steps: one harness behind `fused-se-bench --e2e` (`python -m fused_se.bench
--e2e`) and `benchmarks/profile_e2e.py`.

A step is forward, cross-entropy, backward and an SGD step (momentum 0.9); on a GPU under bf16
autocast with the model and input in channels_last. Models: timm resnet50 (the floor: no SE),
seresnet50 and efficientnet_b0, and MONAI's SEResNet50(spatial_dims=3) on a volume. Variants: eager
(the model as built), converted (`fused_se.convert`) and converted+tail (`convert(model,
fuse_residual=True)`, ResNet blocks only). Modes: eager; compile (`torch.compile` of the whole
model, default mode, not fullgraph, after one eager step); cudagraph (the whole step captured once
with torch.cuda.graph and replayed; CUDA only).

Models that share a family (resnet50 and seresnet50) are timed together at each batch and mode,
in interleaved rounds (the host's pace drifts over a run), and each row keeps the least of its
rounds. Per row: wall ms per step (steps issued back to back), host ms to issue one step on an idle
device, and from torch.profiler over a few more steps the device ms per step (the sum of the
kernels' times), the kernels per step and the SE blocks' own device ms: in eager mode the kernels
under record_function ranges around the SE blocks' forwards and of the backward nodes those
forwards made (with the tail fused, the tail is the block's own work); under compile and CUDA
graphs the fused kernels by name (converted variants only: Inductor fuses eager SE blocks into
their neighbours). A compile row's first step, which compiles, is reported apart (compile_s).

On a CPU the same harness runs as a dry run: tiny inputs, every row marked `dry_run` and its card
"cpu (dry run)"; the CPU ops' times stand where a GPU's kernels would. It checks the plumbing and
claims no speed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .._cli import HelpFormatter, Parser, check_writable
from .measure import environment
from .report import E2E_FIELDS, Column, RowWriter, Table, _num

SE_RANGE = "fused_se.bench.se_block"  # the record_function range around each SE block's forward


@dataclass(frozen=True)
class E2EModel:
    name: str
    family: str  # models of a family are timed together (resnet50 is seresnet50's floor)
    variants: tuple[str, ...]
    gpu_batches: tuple[int, ...]
    volume: bool = False  # a 3-D model on a 1-channel volume


MODELS = {
    m.name: m
    for m in (
        E2EModel("resnet50", "resnet50", ("eager",), (64, 256)),
        E2EModel("seresnet50", "resnet50", ("eager", "converted", "converted+tail"), (64, 256)),
        E2EModel("efficientnet_b0", "efficientnet_b0", ("eager", "converted"), (64,)),
        E2EModel("monai_seresnet50_3d", "monai_seresnet50_3d", ("eager", "converted"), (4,), volume=True),
    )
}
VARIANTS = ("eager", "converted", "converted+tail")
MODES = ("eager", "compile", "cudagraph")
FIELDS = E2E_FIELDS
NUM_CLASSES = 1000


# ---- options ---------------------------------------------------------------------------------


def build_parser(prog: str = "python -m fused_se.bench --e2e") -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        usage=f"{prog} [--models M ...] [--modes M ...] [--batches B ...] [options]",
        description=(
            f"  {prog}                           every model, variant and mode\n"
            f"  {prog} --models seresnet50 --modes compile --batches 128\n"
            f"  {prog} --models monai_seresnet50_3d --modes eager cudagraph --out results/\n"
            f"  {prog} --device cpu --modes eager     a dry run: tiny inputs, no timings\n"
            "\n"
            "Training steps of whole models (forward, backward, SGD), eager and converted by fused_se,\n"
            "eager, compiled and CUDA-graphed: wall, device, host and SE blocks' ms per step."
        ),
        formatter_class=HelpFormatter,
    )
    what = p.add_argument_group("what to time (split a GPU run into commands of at most 10 minutes)")
    what.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        metavar="M",
        help=f"of {', '.join(MODELS)} (default: all)",
    )
    what.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        metavar="V",
        help=f"of {', '.join(VARIANTS)} (default: each model's own)",
    )
    what.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        metavar="M",
        help="of eager, compile, cudagraph (default: all three on a GPU; eager on a CPU, where "
        "Inductor takes minutes per model)",
    )
    what.add_argument(
        "--batches",
        nargs="+",
        type=int,
        metavar="B",
        help="every selected model's batches (default on a GPU: resnet50 and seresnet50 64 256, "
        "efficientnet_b0 64, monai_seresnet50_3d 4; on a CPU 2)",
    )
    what.add_argument("--size", type=int, help="image size (default 224 on a GPU, 32 on a CPU)")
    what.add_argument("--volume", type=int, help="MONAI's volume edge (default 96 on a GPU, 16 on a CPU)")
    how = p.add_argument_group("how")
    how.add_argument("--steps", type=int, help="steps per round (default 5 on a GPU, 1 on a CPU)")
    how.add_argument("--rounds", type=int, help="interleaved rounds; the least is kept (default 5; 2 on a CPU)")
    how.add_argument("--profile-steps", type=int, help="steps under torch.profiler (default 3; 1 on a CPU)")
    how.add_argument("--warmup-steps", type=int, default=3, help="steps before timing (default 3)")
    how.add_argument("--device", help="default: cuda if there is one, else cpu (a dry run)")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", metavar="DIR", help="write e2e.json, e2e.txt (the table) and e2e.png into DIR")
    out.add_argument("--json", metavar="FILE", help="write the rows as JSON (rewritten after each row)")
    out.add_argument("--plot", metavar="FILE", help="write a PNG of step time per model and mode")
    out.add_argument("--append", action="store_true", help="keep the rows already in the JSON file")
    out.add_argument("--label", help="a name for this run, recorded in each row as `run`")
    # the names fused-se-bench --e2e took before
    p.add_argument("--e2e-batch", type=int, dest="batches_one", help=argparse.SUPPRESS)
    p.add_argument("--e2e-size", type=int, dest="size", help=argparse.SUPPRESS)
    return p  # fmt: skip


def parse_args(argv=None, prog: str = "python -m fused_se.bench --e2e") -> argparse.Namespace:
    p = build_parser(prog)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device not in ("cuda", "cpu"):
        p.error(f"--device must be cuda or cpu; got {args.device}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    cpu = args.device == "cpu"
    if args.batches_one is not None:
        args.batches = [*(args.batches or []), args.batches_one]
    args.modes = args.modes or (["eager"] if cpu else list(MODES))
    if cpu and "cudagraph" in args.modes:
        p.error("--modes cudagraph needs a CUDA device")
    args.size = args.size or (32 if cpu else 224)
    args.volume = args.volume or (16 if cpu else 96)
    args.steps = args.steps or (1 if cpu else 5)
    args.rounds = args.rounds or (2 if cpu else 5)
    args.profile_steps = args.profile_steps or (1 if cpu else 3)
    for name in ("size", "volume", "steps", "rounds", "profile_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    if args.warmup_steps < 1:
        p.error(f"--warmup-steps must be at least 1; got {args.warmup_steps}")
    if any(b < 1 for b in args.batches or []):
        p.error(f"--batches must be positive; got {args.batches}")
    if cpu and any(MODELS[m].volume for m in args.models) and 1 in (args.batches or []):
        p.error("monai_seresnet50_3d trains its BatchNorm on a 1x1x1 map at the end: a batch of 1 cannot")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        args.json = args.json or os.path.join(args.out, "e2e.json")
        args.plot = args.plot or os.path.join(args.out, "e2e.png")
    for name in ("json", "plot"):
        path = getattr(args, name)
        why = path and check_writable(path)
        if why:
            p.error(f"--{name} {path}: {why}")
    if args.append and not args.json:
        p.error("--append adds to --json: give it (or --out)")
    try:
        import timm  # noqa: F401
    except ImportError:
        p.error("needs timm (pip install timm, or pip install 'fused_se[bench]')")
    if any(MODELS[m].volume for m in args.models):
        try:
            import monai  # noqa: F401
        except ImportError:
            p.error("monai_seresnet50_3d needs monai (pip install monai), or leave it out with --models")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib (pip install matplotlib)")
    return args


# ---- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    model: str
    variant: str
    mode: str
    batch: int
    step: Optional[Callable[[], None]] = None
    se_modules: tuple = ()
    first_step_s: Optional[float] = None
    error: Optional[str] = None


def plan_groups(args: argparse.Namespace) -> list[tuple[str, int, str, list[tuple[str, str]]]]:
    """(family, batch, mode, [(model, variant), ...]) in the order they run: the models of a family
    at one batch and mode are timed together, in interleaved rounds."""
    cpu = args.device == "cpu"
    groups: dict[tuple[str, int, str], list[tuple[str, str]]] = {}
    for name in args.models:
        m = MODELS[name]
        batches = args.batches or ([2] if cpu else list(m.gpu_batches))
        for batch in batches:
            for mode in args.modes:
                for variant in (v for v in m.variants if v in args.variants):
                    groups.setdefault((m.family, batch, mode), []).append((name, variant))
    return [(f, b, mode, cases) for (f, b, mode), cases in groups.items()]


def build_model(name: str, variant: str, device: torch.device) -> tuple[nn.Module, tuple[str, ...]]:
    """The model on the device (pretrained=False, seed 0) and the names of its SE blocks (those
    fused_se.convert replaces, whether or not this variant is converted)."""
    from ..conversion import convert

    torch.manual_seed(0)
    if MODELS[name].volume:
        from monai.networks.nets import SEResNet50

        model = SEResNet50(spatial_dims=3, in_channels=1, num_classes=NUM_CLASSES)
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
    if variant == "eager":
        _, report = convert(copy.deepcopy(model), return_report=True)
    else:
        _, report = convert(model, fuse_residual=variant == "converted+tail", return_report=True)
    return model.to(device), tuple(r.name for r in report.replaced)


def _inputs(name: str, batch: int, args: argparse.Namespace, device: torch.device, fmt) -> tuple:
    if MODELS[name].volume:
        x = torch.randn(batch, 1, args.volume, args.volume, args.volume, device=device)
    else:
        x = torch.randn(batch, 3, args.size, args.size, device=device)
    return x.to(memory_format=fmt), torch.randint(0, NUM_CLASSES, (batch,), device=device)


def make_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, mode: str, amp: bool) -> Callable[[], None]:
    """One training step of the mode (the model already built, converted and on the device)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dev = x.device.type

    def loss_of(net: nn.Module, cache: bool = True) -> torch.Tensor:
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp, cache_enabled=cache):
            return nn.functional.cross_entropy(net(x), target)

    def eager_step(net: nn.Module = model) -> None:
        loss_of(net).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if mode == "eager":
        return eager_step
    if mode == "compile":
        eager_step()  # one eager step first: the fused blocks' first calls run outside Dynamo
        compiled = torch.compile(model)  # default mode, not fullgraph
        return lambda: eager_step(compiled)
    if mode != "cudagraph":
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    # the whole step captured once (torch.cuda.graphs' whole-network capture), after warm-up steps
    # on a side stream; autocast's weight cache off, as capture asks
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            loss_of(model, cache=False).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss_of(model, cache=False).backward()
        opt.step()
    return graph.replay


# ---- measuring ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(step: Callable[[], None], steps: int, device: torch.device) -> tuple[float, float]:
    """(wall ms per step over `steps` back-to-back steps, host ms to issue one step on an idle device)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    wall = (time.perf_counter() - t0) / steps * 1e3
    t0 = time.perf_counter()
    step()
    issue = (time.perf_counter() - t0) * 1e3
    _sync(device)
    return wall, issue


@contextlib.contextmanager
def se_ranges(modules: tuple) -> contextlib.AbstractContextManager:
    """A record_function range (SE_RANGE) around each forward of the given modules."""
    from torch.autograd.profiler import record_function

    open_ranges: list = []

    def enter(module, inputs):
        r = record_function(SE_RANGE)
        r.__enter__()
        open_ranges.append(r)

    def leave(module, inputs, output):
        open_ranges.pop().__exit__(None, None, None)

    handles = [h for m in modules for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def fused_kernel_names() -> frozenset:
    """The names of fused_se's Triton functions (kernels and the helpers they call)."""
    import importlib
    import pkgutil

    import triton

    from .. import kernels

    names = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        names.update(v.__name__ for v in vars(module).values() if isinstance(v, triton.runtime.jit.JITFunction))
    return frozenset(names)


def _is_fused(name: str, names: frozenset) -> bool:
    return name in names or any(name.startswith(n + "_") for n in names if len(n) > 8)


def is_kernel(e) -> bool:
    """A device event that is work (a kernel, copy or fill), not a record_function range's span on
    the device's timeline (the profiler lists those as CUDA events too)."""
    return e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)


def _descendants(event) -> list:
    out, todo = [], list(event.cpu_children)
    while todo:
        e = todo.pop()
        out.append(e)
        todo.extend(e.cpu_children)
    return out


def _device_us(e, cuda: bool) -> float:
    if not cuda:
        return e.self_cpu_time_total
    return e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total


def profile_steps(step: Callable[[], None], steps: int, device: torch.device, se_modules: tuple, mode: str) -> dict:
    """Device ms per step (the kernels' times; on a CPU the ops' own times), kernels per step, the SE
    blocks' device ms (see the module's docstring) and the kernels that took the most time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ranges = se_ranges(se_modules) if mode == "eager" else contextlib.nullcontext()
    _sync(device)
    with ranges, profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    events = prof.events()
    if cuda:
        kernels = [e for e in events if is_kernel(e)]
        times = [(e.name, _device_us(e, True)) for e in kernels]
    else:  # the ops that did the work: each op's own time, without its children's
        kernels = [e for e in events if e.name.startswith("aten::")]
        times = [(e.name, e.self_cpu_time_total) for e in kernels]
    total = sum(t for _, t in times)
    se_us, how = None, None
    if mode == "eager" and se_modules:
        ranges_ = [e for e in events if e.name == SE_RANGE]
        seqs = {d.sequence_nr for r in ranges_ for d in _descendants(r) if d.sequence_nr >= 0}
        backward = [
            e for e in events if e.name.startswith("autograd::engine::evaluate_function:") and e.sequence_nr in seqs
        ]
        if cuda:  # a range's device time holds its descendants' kernels
            se_us = sum(_device_us(e, True) for e in (*ranges_, *backward))
        else:  # the aten ops' own times, as the total counts them
            ops = [d for e in (*ranges_, *backward) for d in (e, *_descendants(e)) if d.name.startswith("aten::")]
            se_us = sum(d.self_cpu_time_total for d in ops)
        how = "ranges"
    elif cuda and se_modules:
        names = fused_kernel_names()
        fused = [t for n, t in times if _is_fused(n, names)]
        if fused:
            se_us, how = sum(fused), "kernel names"
    by_name: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for n, t in times:
        by_name[n[:80]][0] += 1
        by_name[n[:80]][1] += t
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:12]
    return {
        "device_ms": total / steps / 1e3,
        "launches": len(kernels) / steps if cuda else None,
        "se_device_ms": None if se_us is None else se_us / steps / 1e3,
        "se_attribution": how,
        "top_kernels": [[n, c / steps, t / steps / 1e3] for n, (c, t) in top],
    }


# ---- the run -----------------------------------------------------------------------------------


def _prepare(name: str, variant: str, mode: str, batch: int, args, device: torch.device) -> Case:
    case = Case(name, variant, mode, batch)
    cuda = device.type == "cuda"
    fmt = (torch.channels_last_3d if MODELS[name].volume else torch.channels_last) if cuda else torch.contiguous_format
    try:
        model, se_names = build_model(name, variant, device)
        model = model.to(memory_format=fmt).train()
        x, target = _inputs(name, batch, args, device, fmt)
        modules = dict(model.named_modules())
        case.se_modules = tuple(modules[n] for n in se_names if n in modules)
        case.step = make_step(model, x, target, mode, amp=cuda)  # compile: after one eager step
        t0 = time.perf_counter()
        case.step()  # compiles (compile), or the first replay of the captured graph (cudagraph)
        _sync(device)
        case.first_step_s = time.perf_counter() - t0
        for _ in range(args.warmup_steps - 1):
            case.step()
        _sync(device)
    except Exception as e:  # a row that says why, and the run goes on
        case.step, case.error = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    return case


def run_e2e(args: argparse.Namespace, sink=None, say: Callable[[str], None] = print) -> list[dict]:
    """Every (model, variant, mode, batch) row, each handed to sink.add as soon as it is measured."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    env = environment(device)
    dry = not cuda
    base = {
        "card": "cpu (dry run)" if dry else env["device"], "torch": env["torch"], "triton": env["triton"],
        "fused_se": env["fused_se"], "timestamp": env["timestamp"], "run": getattr(args, "label", None),
        "dry_run": dry, "amp": "bf16" if cuda else "off", "layout": "channels_last" if cuda else "contiguous",
    }  # fmt: skip
    rows = []
    groups = plan_groups(args)
    for i, (_family, batch, mode, members) in enumerate(groups, 1):
        names = ", ".join(f"{m} {v}" for m, v in members)
        say(textwrap.fill(f"[{i}/{len(groups)}] {mode}, batch {batch}: {names}", 100, subsequent_indent="    "))
        cases = [_prepare(m, v, mode, batch, args, device) for m, v in members]
        walls, issues = defaultdict(list), defaultdict(list)
        for _ in range(args.rounds):
            for c in cases:
                if c.step is not None:
                    wall, issue = timed_round(c.step, args.steps, device)
                    walls[id(c)].append(wall)
                    issues[id(c)].append(issue)
        for c in cases:
            size = args.volume if MODELS[c.model].volume else args.size
            row = {"model": c.model, "variant": c.variant, "mode": c.mode, "batch": c.batch, "size": size,
                   "wall_ms": None, "device_ms": None, "host_ms": None, "launches": None, "se_device_ms": None,
                   "se_attribution": None, "compile_s": c.first_step_s if mode == "compile" else None,
                   "first_step_s": c.first_step_s, "wall_ms_rounds": walls[id(c)], "images_per_s": None,
                   **base, "error": c.error, "top_kernels": None}  # fmt: skip
            if c.step is not None:
                try:
                    row.update(profile_steps(c.step, args.profile_steps, device, c.se_modules, mode))
                    row["wall_ms"] = min(walls[id(c)])
                    row["host_ms"] = min(issues[id(c)])
                    row["images_per_s"] = c.batch / row["wall_ms"] * 1e3
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            if sink is not None:
                sink.add(row)
        del cases  # one group's models on the device at a time
        if cuda:
            torch.cuda.empty_cache()
    return rows


# ---- the table and the plot ----------------------------------------------------------------------


def e2e_table() -> Table:
    """At most 100 columns: a line per row."""
    return Table(
        [
            Column("model", 19, lambda r: r["model"], left=True),
            Column("variant", 14, lambda r: r["variant"], left=True),
            Column("mode", 9, lambda r: r["mode"], left=True),
            Column("batch", 5, lambda r: str(r["batch"])),
            Column("wall ms", 8, _num("wall_ms", ".2f")),
            Column("dev ms", 8, _num("device_ms", ".2f")),
            Column("host ms", 7, _num("host_ms", ".2f")),
            Column("kern", 5, _num("launches", ".0f")),
            Column("SE ms", 7, _num("se_device_ms", ".2f")),
            Column("comp s", 6, _num("compile_s", ".1f")),
            Column("", 1, lambda r: "!" if r.get("error") else "", left=True),
        ]
    )


def e2e_notes(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append(f"! error: {r['model']} {r['variant']} {r['mode']} {r['batch']}: {r['error']}"[:100])
    if any(r.get("dry_run") for r in rows):
        lines.append("cpu dry run: a check of the harness on tiny inputs; no figure here is a GPU's, or a timing")
        lines.append("  to compare: dev ms and SE ms are the CPU ops' own times, and kern is not counted")
    else:
        lines.append("wall: steps back to back, least of rounds; dev: kernels' time (profiler); host: issuing a")
        lines.append("  step; kern: kernels per step; SE: the SE blocks' kernels; comp s: the compiling first step")
    return lines


def write_plot(rows: list[dict], path: str) -> None:
    """Wall ms per step by model and variant (x) and mode (bars), a panel per batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("wall_ms") is not None]
    if not rows:
        raise ValueError("no measured rows to plot")
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        sel = [r for r in rows if r["batch"] == batch]
        labels = list(dict.fromkeys(f"{r['model']}\n{r['variant']}" for r in sel))
        modes = [m for m in MODES if any(r["mode"] == m for r in sel)]
        width = 0.8 / len(modes)
        for j, mode in enumerate(modes):
            by = {f"{r['model']}\n{r['variant']}": r["wall_ms"] for r in sel if r["mode"] == mode}
            ax.bar([i + j * width for i in range(len(labels))], [by.get(lab, 0) for lab in labels], width, label=mode)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=30, fontsize=7, ha="right")
        ax.set_ylabel("wall ms per training step")
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.legend(fontsize=8)
    r0 = rows[0]
    what = "cpu dry run: plumbing check, not a timing" if r0.get("dry_run") else r0["card"]
    fig.suptitle(f"fused_se {r0['fused_se']}, torch {r0['torch']}: {what}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None, prog: str = "python -m fused_se.bench --e2e") -> int:
    args = parse_args(argv, prog)
    device = torch.device(args.device)
    env = environment(device)
    where = env["device"] if device.type == "cuda" else "cpu dry run (tiny inputs, no timings)"
    print(f"{prog}: {where}\ntorch {env['torch']} | triton {env['triton']} | fused_se {env['fused_se']}", flush=True)
    table = e2e_table()
    writer = RowWriter(table, args.json, None, args.append)
    rows = run_e2e(args, writer)
    notes = e2e_notes(rows)
    print("\n".join(notes), flush=True)
    if args.out:
        with open(os.path.join(args.out, "e2e.txt"), "w") as f:
            lines = [table.header(), *(Table(table.columns).line(r) for r in writer.json_before + rows), *notes]
            f.write("\n".join(lines) + "\n")
    if args.plot and any(r.get("wall_ms") is not None for r in writer.json_before + rows):
        write_plot(writer.json_before + rows, args.plot)
    return 1 if rows and all(r.get("error") for r in rows) else 0
