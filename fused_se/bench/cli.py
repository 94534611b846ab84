"""The command line: options, their checks (all before anything runs), and main."""

from __future__ import annotations

import argparse
import sys

import torch

from .._cli import HelpFormatter, Parser, check_writable, prog_name
from .measure import CPU_TIMER_THRESHOLD, NOISY_SPREAD, default_batch, environment
from .presets import DTYPES, LAYOUTS, MODES, PRESETS, PROVIDERS, parse_shape
from .report import RowWriter, device_table, format_vs_compile, legend, noise_note, se_table, write_plot
from .runner import provider_passes, run


def build_parser() -> argparse.ArgumentParser:
    prog = prog_name("fused_se.bench")
    p = Parser(
        prog=prog,
        usage=(
            f"{prog} [--preset NAME | --shapes SHAPE ...] [--providers P ...] [options]\n"
            f"       {prog} --e2e [options]            (whole models: --e2e --help)\n"
            f"       {prog} --traffic | --host | --kernel-report [options]"
        ),
        description=(
            f"  {prog}                                   SE-ResNet-50's SE shapes\n"
            f"  {prog} --preset efficientnet_b0 --modes fwd --providers eager fused\n"
            f"  {prog} --shapes 32,256,56,56 8,1024,L300,128 --json out.json --plot out.png\n"
            f"  {prog} --tail                            SE + residual add + ReLU\n"
            f"  {prog} --e2e --models seresnet50 --modes eager compile\n"
            "\n"
            "Times the fused SE block against eager PyTorch and torch.compile on this machine's device."
        ),
        formatter_class=HelpFormatter,
        epilog=(
            "Providers: eager (SEModule with Linear FCs), eager-conv (1x1 Conv2d FCs, as timm and\n"
            "torchvision), fused (FusedSEModule, on the path the planner picks), fused-3pass (the fused block\n"
            "held to its three launches each way), compile (torch.compile of eager, default mode),\n"
            "compile-max-autotune (mode max-autotune-no-cudagraphs), compile-reduce-overhead; eager-cudagraph\n"
            "and fused-cudagraph (the block's inference captured once in a CUDA graph and replayed: fwd on a\n"
            "GPU only, other rows skipped). Default: eager, eager-conv, compile and fused on a GPU; eager,\n"
            "eager-conv and fused on a CPU (compiling there takes long and measures nothing this project is\n"
            "for). The torch.compile providers run last, after the others have run on every shape: each of\n"
            "their rows compiles anew.\n"
            "Modes: fwd (inference, no grad), bwd (backward alone), fwd+bwd.\n"
            "Each row is printed, and written to --json and --csv, as soon as it is measured.\n"
            "Timing: triton.testing.do_bench on a GPU; on a CPU torch.utils.benchmark's adaptive_autorange,\n"
            f"one thread, until the interquartile range is within {100 * CPU_TIMER_THRESHOLD:.0f}% of the median or "
            "--reps ms have passed.\n"
            f"spread is (p80 - p20) / median; past {100 * NOISY_SPREAD:.0f}% it is marked !, and a speedup read from "
            "such a row ?.\n"
            "GB/s is against the minimal traffic of the SE block (N = bytes of x): 2N fwd, 3N bwd, 5N fwd+bwd.\n"
            "On a GPU also: own GB/s against the fused kernels' own traffic (3N, 4N, 7N), %copy (GB/s against\n"
            "a device-to-device copy measured in the same run), peak memory (fwd+bwd and bwd) and kernel\n"
            "launches (the CUDA allocator and profiler)."
        ),
    )
    what = p.add_argument_group("what to time")
    what.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="seresnet50",
        metavar="NAME",
        help=f"SE placements of a network: {', '.join(sorted(PRESETS))} (default: seresnet50)",
    )
    what.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        metavar="SHAPE",
        help="explicit shapes; replace the preset. SHAPE: N,C,H,W[,hidden] for an image map, or N,C,SPATIAL[,hidden] "
        "with SPATIAL L<length> for a sequence (8,1024,L300,128), HxW, or DxHxW for a volume (2,256,24x24x24,16); "
        "hidden defaults to C // 16",
    )
    what.add_argument(
        "--batch", type=int, help="batch of the preset's shapes (default: 128 where it fits on a GPU, 2 on a CPU)"
    )
    what.add_argument(
        "--providers",
        nargs="+",
        choices=PROVIDERS,
        metavar="P",
        help=f"of {', '.join(PROVIDERS)} (default: see below)",
    )
    what.add_argument("--modes", nargs="+", choices=MODES, default=["fwd", "fwd+bwd"], help="default: fwd fwd+bwd")
    what.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    what.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on a GPU, fp32 on a CPU")
    what.add_argument(
        "--tail",
        action="store_true",
        help="time a ResNet block's tail, relu(se(x) + shortcut), instead of the SE alone (traffic: 3N fwd, "
        "5N bwd, 8N fwd+bwd minimal; the fused tail's own 4N, 6N, 10N)",
    )
    how = p.add_argument_group("how")
    how.add_argument("--warmup", type=int, help="ms of warm-up calls per row (default 25 on a GPU, 20 on a CPU)")
    how.add_argument(
        "--reps", type=int, help="ms of timed calls per row (default 100 on a GPU; on a CPU at most, default 300)"
    )
    how.add_argument("--device", help="default: cuda if there is one, else cpu")
    out = p.add_argument_group("outputs")
    out.add_argument("--json", metavar="FILE", help="write the rows as JSON (a list; rewritten after each row)")
    out.add_argument("--csv", metavar="FILE", help="write the rows as CSV (rewritten after each row)")
    out.add_argument(
        "--append", action="store_true", help="keep the rows already in --json and --csv, and add this run's"
    )
    out.add_argument("--label", help="a name for this run, recorded in each row as `run`")
    out.add_argument(
        "--plot",
        metavar="FILE",
        help="write a PNG: speedup and bandwidth by shape and provider, of one mode and layout (fwd+bwd and "
        "channels_last where timed; the titles say which); needs matplotlib",
    )
    instead = p.add_argument_group("instead (each with options of its own: FLAG --help)")
    instead.add_argument(
        "--e2e",
        action="store_true",
        help="training steps of whole models (timm ResNet-50, SE-ResNet-50, EfficientNet-B0; MONAI's 3-D "
        "SE-ResNet-50), eager and converted, eager, compiled and CUDA-graphed; needs timm",
    )
    instead.add_argument(
        "--traffic",
        action="store_true",
        help="bytes per call counted through the Triton interpreter, DRAM bytes and time modeled "
        "(LRU L2 over 128-byte lines, write-allocate)",
    )
    instead.add_argument(
        "--host", action="store_true", help="host microseconds per call, the fused kernels' launches stubbed"
    )
    instead.add_argument(
        "--kernel-report",
        action="store_true",
        help="registers, spills and load widths of every kernel variant, compiled as the JIT would",
    )
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
    args.warmup = args.warmup if args.warmup is not None else (25 if cuda else 20)
    args.reps = args.reps if args.reps is not None else (100 if cuda else 300)
    for name in ("batch", "warmup", "reps"):
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
    for name in ("json", "csv", "plot"):
        path = getattr(args, name)
        why = path and check_writable(path)
        if why:
            p.error(f"--{name} {path}: {why}")
    if args.append and not (args.json or args.csv):
        p.error("--append adds to --json or --csv: give one")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib (pip install matplotlib, or pip install 'fused_se[bench]')")
    return args


PERF_FLAGS = ("--traffic", "--host", "--kernel-report")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in PERF_FLAGS for a in argv):  # counted and modeled, not timed: fused_se.perf's own options
        from ..perf.cli import main as perf_main

        return perf_main(argv, prog=prog_name("fused_se.bench"))
    if "--e2e" in argv:  # whole models: fused_se.bench.e2e's own options
        from .e2e import main as e2e_main

        return e2e_main([a for a in argv if a != "--e2e"], prog=f"{prog_name('fused_se.bench')} --e2e")
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    env = environment(device)
    print(
        f"fused-se-bench on {env['device']} | torch {env['torch']} | triton {env['triton']} | fused_se {env['fused_se']}",
        flush=True,
    )
    shapes = ", ".join(f"{n}x{s.label()},{s.hidden}" for n, s in zip(args.batch_list, args.shape_list, strict=True))
    order = " ".join(p for ps in provider_passes(args.providers) for p in ps)
    print(f"{args.dtype}, shapes (N x C x spatial, hidden) {shapes}, providers {order}", flush=True)
    writer = RowWriter(se_table(gpu=cuda, providers=args.providers), args.json, args.csv, args.append)
    rows = run(args, writer)
    against = format_vs_compile(rows)
    if against:
        print(against)
    if cuda and rows:
        device = device_table()
        print("\n".join(["", device.header(), *(device.line(r) for r in rows)]))
        print(f"device-to-device copy: {rows[0]['copy_gbs']:.1f} GB/s")
    if args.plot and rows:
        write_plot(rows, args.plot)
    for line in noise_note(rows) + legend():
        print(line)
    if not cuda:
        print(
            "note: CPU timings of the CPU paths (the fused ops run their torch-ops kernel here, or the\n"
            "Triton interpreter); the speedups fused_se exists for need a CUDA GPU."
        )
    return 0
