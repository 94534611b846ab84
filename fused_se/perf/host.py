"""--host: what a call costs on the host, per path, with the kernels taken out.

Eager PyTorch runs the SE block on tiny CPU tensors of the same rank (its dispatch and
autograd, plus a few microseconds of arithmetic on a few hundred elements). The fused block
runs each of its paths with the kernel launches stubbed out (fused_se.runtime.launch.stubbed:
a stand-in for each compiled kernel, whose call does nothing), so the outputs are the uninitialised buffers
(fine for timing). What remains is the op's Python: the checks, autograd, and from a shape's
second call on the replay of its recorded launches (fused_se/runtime/replay.py: the signature, the
allocations, the launches' argument lists; the paths that are not replayed plan every call). A
real launch adds the compiled kernel's own call (and, where no replay runs, triton's binding of
the arguments) on top.
The minimum over repeats, in microseconds per call.
"""

from __future__ import annotations

import copy
import statistics
import timeit
from collections.abc import Iterator
from contextlib import contextmanager

import torch

MODES = ("fwd", "fwd+bwd")
PATHS = ("three_launch", "one_launch", "spread", "stream")
KERNEL_OF = {
    "three_launch": "_scale_kernel",
    "one_launch": "_se_fwd_one_launch_kernel",
    "spread": "_se_fwd_spread_kernel",
    "stream": "_se_fwd_stream_kernel",
}


@contextmanager
def stubbed_launches() -> Iterator[list]:
    """Launches log their kernel's name and run nothing (fused_se.runtime.launch.stubbed: replays
    call the stand-ins as they call compiled kernels on a GPU); the ops take the kernels' path on
    CPU tensors (as with the interpreter on, but without it), and the persistent kernels' check
    of their workspace (which nothing filled) is off, as it is on a GPU by default."""
    import os

    from fused_se import _dispatch
    from fused_se.kernels import sync
    from fused_se.runtime.launch import stubbed

    saved = _dispatch.interpreter_enabled, sync.INTERPRETED
    saved_check = os.environ.pop(sync.CHECK_ENV, None)
    _dispatch.interpreter_enabled, sync.INTERPRETED = (lambda: True), False
    try:
        with stubbed() as names:
            yield names
    finally:
        _dispatch.interpreter_enabled, sync.INTERPRETED = saved
        if saved_check is not None:
            os.environ[sync.CHECK_ENV] = saved_check


@contextmanager
def forced_path(path: str, batch: int, sample_bytes: int) -> Iterator[None]:
    """Holds the planner to one forward path (force_paths; the backward streams with the stream
    forward and takes its three launches otherwise); the streamed paths also need an L2 that x
    is past and a chunk of one sample."""
    import os

    from fused_se.kernels import force_paths
    from fused_se.kernels import heuristics as hz

    names = {name: name for name in PATHS}
    saved_ratio, saved_l2 = hz.STREAM_WEIGHT_RATIO, os.environ.get(hz.L2_ENV)
    if path == "stream":
        # LAG of batch - 4 samples forward, half that backward
        hz.STREAM_WEIGHT_RATIO = 1e-6
        os.environ[hz.L2_ENV] = str(hz.STREAM_L2_FRACTION * (batch - 4) * sample_bytes)
    try:
        with force_paths(names[path]):
            yield
    finally:
        hz.STREAM_WEIGHT_RATIO = saved_ratio
        if saved_l2 is None:
            os.environ.pop(hz.L2_ENV, None)
        else:
            os.environ[hz.L2_ENV] = saved_l2


def _call(module, x, mode: str):
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                return module(x)

        return fwd
    xg = x.detach().requires_grad_(True)
    inputs = [xg, *module.parameters()]
    grad = torch.ones_like(x)

    def fwd_bwd():
        return torch.autograd.grad(module(xg), inputs, grad)

    return fwd_bwd


def min_us(fn, number: int, repeat: int) -> float:
    fn()  # warm-up
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def alternating_rounds_us(fns: list, number: int, repeat: int) -> list[list[float]]:
    """Each of fns timed in `repeat` rounds that alternate between them (number calls of each a
    round, microseconds per call): one list per round, so that two calls are compared within a round,
    at the machine's speed of that round (a VM's shifts by up to 2x within a run)."""
    for fn in fns:
        fn()  # warm-up
    return [[timeit.timeit(fn, number=number) / number * 1e6 for fn in fns] for _ in range(repeat)]


def run_host(args) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a GPU run's host side is one thread; no pool wake-ups for tiny tensors
    try:
        return _run_host(args)
    finally:
        torch.set_num_threads(threads)


def _run_host(args) -> list[dict]:
    from fused_se import workloads

    c, hidden = args.host_channels, max(1, args.host_channels // 16)
    shape = workloads.SEShape(c, 4, 4, hidden)
    rows = []
    for mode in args.host_modes:
        torch.manual_seed(0)
        x = torch.randn(2, c, 4, 4)
        eager = workloads.build_block("eager", shape, torch.device("cpu"), torch.float32)
        rows.append(
            {"provider": "eager", "path": "torch (CPU, tiny tensors)", "mode": mode, "batch": 2,
             "host_us": min_us(_call(eager, x, mode), args.number, args.repeat), "launches": None}
        )  # fmt: skip
        for path in args.host_paths:
            batch = 12 if path == "stream" else 2
            x = torch.randn(batch, c, 4, 4)
            fused = workloads.build_block("fused", shape, torch.device("cpu"), torch.float32)
            with forced_path(path, batch, x[0].numel() * x.element_size()), stubbed_launches() as names:
                fn = _call(fused, x, mode)
                fn()
                if KERNEL_OF[path] not in names and not (path == "stream" and "_se_fwd_stream_kernel" in names):
                    raise RuntimeError(f"fused_se.perf --host: the {path} path did not run (launched {names})")
                launched = list(names)
                names.clear()
                us = min_us(fn, args.number, args.repeat)
            bwd = "stream" if "_se_bwd_stream_kernel" in launched else "three_launch"
            label = f"{path} fwd" + (f", {bwd} bwd" if mode == "fwd+bwd" else "")
            rows.append(
                {"provider": "fused", "path": f"{label} (launches stubbed)", "mode": mode, "batch": batch,
                 "host_us": us, "launches": len(launched)}
            )  # fmt: skip
    return rows


# ---- a converted model's SE blocks --------------------------------------------------------------

MODEL_SIZE = 32  # the tiny CPU input's height and width


def _se_inputs(model, size: int) -> dict[str, tuple]:
    """The input shape of every SE block convert finds in `model`, by the block's name, from one
    forward of the eager model on a (1, 3, size, size) input."""
    import fused_se

    probe = fused_se.convert(copy.deepcopy(model))
    names = [n for n, m in probe.named_modules() if isinstance(m, fused_se.FusedSEModule)]
    shapes: dict[str, tuple] = {}

    def keep(name: str):
        def hook(module, args) -> None:  # returns None: the block's input unchanged
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def model_rows(name: str, number: int, repeat: int, size: int = MODEL_SIZE) -> list[dict]:
    """Host microseconds of forward+backward per SE block class of timm model `name`: the eager block
    against the block convert puts in its place (fused kernels' launches stubbed), and a row for the
    step's SE blocks (each block at its class's cost). Each class is timed at its narrowest block in
    the model on a (1, C, 1, 1) input, where eager's arithmetic is least (a GPU runs it as kernels):
    what is left is dispatch, autograd and Python on both sides. The rest of a training step is the
    same on both sides, so the step's difference is the blocks'. The two are timed in alternating
    rounds; `ratio` is the median of the rounds' fused / eager (each round at one speed of the
    machine), the times the least round of each."""
    import timm

    import fused_se

    torch.manual_seed(0)
    eager_model = timm.create_model(name, pretrained=False)
    shapes = _se_inputs(eager_model, size)
    fused_model = fused_se.convert(copy.deepcopy(eager_model)).train()
    eager_model.train()
    by_class: dict[tuple, list] = {}  # (eager class, fused class) -> [(C, block name), ...]
    for block, shape in shapes.items():
        key = (type(eager_model.get_submodule(block)).__name__, type(fused_model.get_submodule(block)).__name__)
        by_class.setdefault(key, []).append((shape[1], block))
    rows = []
    for (eager_name, fused_name), blocks in by_class.items():
        c, block = min(blocks)
        x = torch.randn(1, c, 1, 1)
        eager_call = _call(eager_model.get_submodule(block), x, "fwd+bwd")
        with stubbed_launches():  # (the eager block launches nothing: stubbing leaves it as it is)
            fused_call = _call(fused_model.get_submodule(block), x, "fwd+bwd")
            rounds = alternating_rounds_us([eager_call, fused_call], number, repeat)
        eager_us, fused_us = (min(r[i] for r in rounds) for i in (0, 1))
        ratio = statistics.median(fused / eager for eager, fused in rounds)
        rows.append({"model": name, "block": eager_name, "fused": fused_name, "shape": f"{c}x1x1",
                     "blocks": len(blocks), "eager_us": eager_us, "fused_us": fused_us, "ratio": ratio})  # fmt: skip
    step_eager = sum(r["eager_us"] * r["blocks"] for r in rows)
    step_fused = sum(r["fused_us"] * r["blocks"] for r in rows)
    step_ratio = sum(r["eager_us"] * r["ratio"] * r["blocks"] for r in rows) / step_eager
    rows.append({"model": name, "block": "the step's SE blocks", "fused": "", "shape": "",
                 "blocks": sum(r["blocks"] for r in rows), "eager_us": step_eager, "fused_us": step_fused,
                 "ratio": step_ratio})  # fmt: skip
    return rows


def run_models(args) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [row for name in args.model for row in model_rows(name, args.number, args.repeat)]
    finally:
        torch.set_num_threads(threads)


def format_models(rows: list[dict]) -> str:
    head = (
        f"{'model':<15} {'eager block':<20} {'fused as':<20} {'C x map':>9} {'n':>3} {'eager us':>9} {'fused':>8} "
        f"{'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model'][:15]:<15} {r['block'][:20]:<20} {r['fused'][:20]:<20} {r['shape']:>9} {r['blocks']:>3} "
            f"{r['eager_us']:>9.1f} {r['fused_us']:>8.1f} {r['ratio']:>5.2f}x"
        )
    lines.append("host us per forward+backward of a block at its class's narrowest C on a 1x1 map (fused: launches")
    lines.append("stubbed), least of the rounds (eager and fused alternate, a round each), one thread of this")
    lines.append("machine's CPU; ratio: the median over the rounds of each round's fused / eager; the step's row:")
    lines.append("each SE block of the model once, at its class's cost and ratio")
    return "\n".join(lines)


def add_arguments(p) -> None:
    g = p.add_argument_group("host (--host)")
    g.add_argument(
        "--model", nargs="+", metavar="NAME",
        help="instead of the one block: each SE block of these timm models against what convert puts in "
        "its place, and the step's SE blocks (e.g. seresnet50 efficientnet_b0)",
    )  # fmt: skip
    g.add_argument("--host-paths", nargs="+", choices=PATHS, default=list(PATHS))
    g.add_argument("--host-modes", nargs="+", choices=MODES, default=list(MODES))
    g.add_argument("--host-channels", type=int, default=32, help="C of the tiny tensors (default 32, 4x4 maps)")
    g.add_argument("--number", type=int, default=200, help="calls per timing (default 200)")
    g.add_argument("--repeat", type=int, default=5, help="timings; the minimum is kept (default 5)")
    g = p.add_argument_group("kernel report (--kernel-report)")
    g.add_argument("--archs", nargs="+", type=int, choices=[80, 90], default=[80, 90], help="sm_80 and sm_90")


def format_host(rows: list[dict]) -> str:
    head = f"{'mode':>8} {'provider':>8} {'path':>40} {'launches':>8} {'host us/call':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        launches = "-" if r["launches"] is None else str(r["launches"])
        lines.append(f"{r['mode']:>8} {r['provider']:>8} {r['path']:>40} {launches:>8} {r['host_us']:>12.1f}")
    lines.append("minimum over repeats, this machine's CPU; fused: the launches' own host cost not included")
    return "\n".join(lines)
