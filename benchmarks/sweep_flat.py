"""Device time of the NCHW squeeze passes, tiled against flat, over the flat squeeze's launch
parameters (channels a program, elements a run, warps), at SE-ResNet-50's NCHW row lengths.

    python benchmarks/sweep_flat.py [--batch 128] [--dtype bf16] [--out DIR]

Each row: the kernels' device time per call (torch.profiler), for the squeeze of x (N bytes
read) and the backward's sums of g * x (2N), and the read bandwidth they reach. The flat rows
force the flat passes (heuristics.flat_rows) where the tiles would otherwise run.
Writes sweep_flat.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager

import torch

sys.path.insert(0, os.path.dirname(__file__))
from profile_gpu import _profile

from fused_se import kernels
from fused_se.bench.presets import DTYPES
from fused_se.kernels import heuristics as hz

# (rows, block, warps); None: the tiled passes
CONFIGS = [None, (32, 256, 1), (32, 512, 2), (64, 256, 1), (16, 256, 1), (32, 512, 1), (32, 1024, 4), (8, 256, 1)]
SHAPES = [(2048, 7, 7), (1024, 14, 14), (512, 28, 28)]


@contextmanager
def _config(cfg):
    names = ("flat_rows", "FLAT_LONG_ROWS", "FLAT_REDUCE_ROWS", "FLAT_REDUCE_BLOCK", "FLAT_REDUCE_WARPS")
    saved = {n: getattr(hz, n) for n in names}
    hz.flat_rows = lambda hw: cfg is not None
    if cfg is not None:  # one config for every row length
        hz.FLAT_LONG_ROWS = 1 << 30
        hz.FLAT_REDUCE_ROWS, hz.FLAT_REDUCE_BLOCK, hz.FLAT_REDUCE_WARPS = cfg
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(hz, n, v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    dtype = DTYPES[args.dtype]
    rows = []
    for c, h, w in SHAPES:
        x = torch.randn(args.batch, c, h, w, device="cuda", dtype=dtype)
        g = torch.randn_like(x)
        n_bytes = x.numel() * x.element_size()
        for cfg in CONFIGS:
            if cfg is not None and cfg[0] * h * w // cfg[1] > 64:
                continue  # too many runs to unroll
            with _config(cfg):
                for name, fn, reads in (
                    ("squeeze", lambda x=x: kernels.squeeze_fwd(x), n_bytes),
                    ("scale_bwd", lambda x=x, g=g: kernels.scale_bwd(g, x), 2 * n_bytes),
                ):
                    try:
                        kern, _ = _profile(fn, args.iters)
                    except Exception as e:  # a config that does not compile says so and the sweep goes on
                        print(f"{c}x{h}x{w} {name} {cfg}: {type(e).__name__}: {e}")
                        continue
                    us = sum(t for _, t in kern.values())
                    row = {"shape": f"{c}x{h}x{w}", "pass": name, "config": cfg, "device_us": us,
                           "read_gbs": reads / us / 1e3, "kernels": sorted(kern)}  # fmt: skip
                    rows.append(row)
                    label = "tiled" if cfg is None else "flat rows={} block={} warps={}".format(*cfg)
                    print(f"{c:5d}x{h}x{w:<3d} {name:9s} {label:30s} {us:8.1f} us {row['read_gbs']:7.0f} GB/s")
                    sys.stdout.flush()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sweep_flat.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "batch": args.batch, "dtype": args.dtype, "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
