"""DDP smoke run: training steps of a converted timm SE-ResNet-50 under DistributedDataParallel.

    python benchmarks/ddp_smoke.py                                   (one GPU: NCCL, bf16 autocast, channels_last)
    python benchmarks/ddp_smoke.py --device cpu --backend gloo --batch 2 --size 64 --steps 2

One process (world size 1, rendezvous on 127.0.0.1 at a free port): the model's SE blocks are
replaced by fused ones (fused_se.convert), the model is wrapped in DDP, and --steps SGD steps run
on one fixed random batch (random weights, nothing is downloaded). Prints one line of JSON: the
loss before the first step and after the last, the median step time after the first step, how many
fused blocks the model holds, how many Triton kernels each step launched and the warnings the
steps raised. Exits with 1 when the model holds no fused block, a loss is not finite, or the
kernels did not run where they should (on a GPU); with 2 when the device or the process group
backend asked for is not there (no CUDA: a message that says so).

On the CPU the fused blocks run their reference path, or the Triton interpreter when
TRITON_INTERPRET=1 is set (slow: use a small --batch and --size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
import warnings


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: cuda")
    p.add_argument(
        "--backend", choices=("nccl", "gloo"), help="process group backend (default: nccl on cuda, gloo on cpu)"
    )
    p.add_argument("--model", default="seresnet50", help="a timm model name (default: seresnet50)")
    p.add_argument("--batch", type=int, help="batch size (default: 64 on cuda, 2 on cpu)")
    p.add_argument("--size", type=int, help="image size (default: 224 on cuda, 64 on cpu)")
    p.add_argument("--steps", type=int, default=5, help="training steps, the first a warm-up (default: 5)")
    p.add_argument("--amp", choices=("bf16", "none"), help="autocast dtype (default: bf16 on cuda, none on cpu)")
    p.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    p.add_argument("--gradient-as-bucket-view", action="store_true", help="DDP option")
    p.add_argument("--static-graph", action="store_true", help="DDP option")
    p.add_argument("--json", metavar="PATH", help="also write the summary to PATH")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.backend = args.backend or ("nccl" if cuda else "gloo")
    args.batch = args.batch or (64 if cuda else 2)
    args.size = args.size or (224 if cuda else 64)
    args.amp = args.amp or ("bf16" if cuda else "none")
    if args.steps < 2:
        p.error("--steps must be at least 2 (a warm-up step and a timed one)")
    if args.backend == "nccl" and not cuda:
        p.error("--backend nccl needs --device cuda")
    return args


def run(args: argparse.Namespace) -> dict:
    import timm
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fused_se
    from fused_se.kernels import record_launches

    cuda = args.device == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group(args.backend, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model, report = fused_se.convert(timm.create_model(args.model, num_classes=1000), return_report=True)
        fused = sum(isinstance(m, fused_se.FusedSEModule) for m in model.modules())
        fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
        model = model.to(device, memory_format=fmt).train()
        ddp = DDP(
            model,
            device_ids=[device.index] if cuda else None,
            gradient_as_bucket_view=args.gradient_as_bucket_view,
            static_graph=args.static_graph,
        )
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
        y = torch.randint(0, 1000, (args.batch,), device=device)
        amp = torch.bfloat16 if args.amp == "bf16" else None

        def forward_loss() -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                return F.cross_entropy(ddp(x), y)

        losses, times, launches = [], [], []
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            for _ in range(args.steps):
                t0 = time.perf_counter()
                with record_launches() as launched:
                    loss = forward_loss()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if cuda:
                    torch.cuda.synchronize(device)
                times.append((time.perf_counter() - t0) * 1e3)
                losses.append(loss.item())
                launches.append(len(launched))
            with torch.no_grad():
                loss_after = forward_loss().item()
        return {
            "model": args.model,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "backend": args.backend,
            "world_size": dist.get_world_size(),
            "batch": args.batch,
            "size": args.size,
            "amp": args.amp,
            "layout": args.layout,
            "gradient_as_bucket_view": args.gradient_as_bucket_view,
            "static_graph": args.static_graph,
            "se_blocks_replaced": len(report.replaced),
            "se_blocks_skipped": len(report.skipped),
            "fused_modules": fused,
            "fused_present": fused > 0,
            "path": fused_se.backend_for(x),
            "kernel_launches_per_step": launches[-1],
            "loss_before": losses[0],
            "loss_after": loss_after,
            "steps": args.steps,
            "step_ms": statistics.median(times[1:]),
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
            "warnings": sorted({str(w.message).splitlines()[0] for w in warned}),
            "torch": torch.__version__,
            "fused_se": fused_se.__version__,
        }
    finally:
        dist.destroy_process_group()


def problems(summary: dict) -> list[str]:
    found = []
    if not summary["fused_present"]:
        found.append("the model holds no fused SE block")
    if not all(map(math.isfinite, (summary["loss_before"], summary["loss_after"]))):
        found.append("a loss is not finite")
    if summary["path"] == "triton" and summary["kernel_launches_per_step"] == 0:
        found.append("the fused blocks launched no Triton kernel")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "ddp_smoke: no CUDA device here; for a CPU smoke run: --device cpu --backend gloo --batch 2 --size 64",
            file=sys.stderr,
        )
        return 2
    if not torch.distributed.is_available() or not torch.distributed.is_backend_available(args.backend):
        print(f"ddp_smoke: this torch build has no {args.backend} backend", file=sys.stderr)
        return 2
    try:
        import fused_se.kernels  # noqa: F401
    except ModuleNotFoundError as e:
        print(
            f"ddp_smoke: {e}; install fused_se (pip install .), the source tree has no fused_se.kernels",
            file=sys.stderr,
        )
        return 2

    summary = run(args)
    found = problems(summary)
    summary["ok"] = not found
    line = json.dumps(summary)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    for problem in found:
        print(f"ddp_smoke: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
