"""The command line: options, their checks, and main."""

from __future__ import annotations

import argparse
import csv

import torch

from .e2e import run_e2e
from .measure import default_batch, environment
from .presets import DTYPES, LAYOUTS, MODES, PRESETS, PROVIDERS, parse_shape
from .report import format_e2e, format_table, write_csv, write_json, write_plot
from .runner import run


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
        type=parse_shape,
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
