"""The fused SE block against eager PyTorch on the CPU (the ops' torch-ops kernel), per call, at
SE-ResNet-50's stage shapes over a range of batches. Eager and fused calls are timed in
interleaved rounds (in alternating order), and the least time per call of each is reported: a
2-core machine's pace drifts within a run, and a median over one provider's calls then another's
mixes that drift into the ratio.

    python benchmarks/profile_cpu.py [--batches 1 8 32] [--threads 2] [--rounds 7] [--ms 40]
        [--layouts channels_last nchw] [--modes fwd fwd+bwd] [--dtype fp32] [--json FILE]

"fused/eager" is the ratio of times per call: below 1 the fused block is faster.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fused_se.bench.presets import PRESETS
from fused_se.bench.providers import build_provider, make_call

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def _per_call_us(call, seconds: float) -> float:
    """Mean microseconds per call over a run of calls lasting about `seconds`."""
    n, t0 = 0, time.perf_counter()
    while True:
        call()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return elapsed / n * 1e6


def compare(batch, shape, layout, mode, dtype, rounds: int, seconds: float) -> dict:
    """The least per-call time of eager and fused over interleaved rounds, after a warm-up round."""
    x = torch.randn(batch, shape.c, *shape.dims, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
    grad = torch.randn_like(x)
    calls = {
        p: make_call(build_provider(p, shape, torch.device("cpu"), dtype), x, grad, mode) for p in ("eager", "fused")
    }
    best = {p: float("inf") for p in calls}
    for r in range(rounds + 1):
        # each round in the other order, so that neither provider always runs first
        for p, call in list(calls.items())[:: 1 if r % 2 else -1]:
            t = _per_call_us(call, seconds)
            if r:  # round 0 warms the allocator and the caches
                best[p] = min(best[p], t)
    return {"eager_us": best["eager"], "fused_us": best["fused"], "ratio": best["fused"] / best["eager"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--ms", type=float, default=40.0, help="ms of calls per provider per round")
    p.add_argument("--layouts", nargs="+", default=["channels_last"], choices=list(LAYOUTS))
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads, {args.dtype}, least of {args.rounds} rounds")
    print(f"{'shape':>18s} {'layout':>13s} {'mode':>7s} {'eager us':>10s} {'fused us':>10s} {'fused/eager':>11s}")
    for layout in args.layouts:
        for batch in args.batches:
            for shape in PRESETS["seresnet50"]:
                for mode in args.modes:
                    row = compare(batch, shape, layout, mode, DTYPES[args.dtype], args.rounds, args.ms / 1e3)
                    name = f"{batch}x{shape.c}x{'x'.join(map(str, shape.dims))}"
                    rows.append({"shape": name, "layout": layout, "mode": mode, "threads": args.threads, **row})
                    print(
                        f"{name:>18s} {layout:>13s} {mode:>7s} {row['eager_us']:10.1f} {row['fused_us']:10.1f} "
                        f"{row['ratio']:11.2f}",
                        flush=True,
                    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
