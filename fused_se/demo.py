"""A short demo: FusedSEModule forward and backward against the classic SEModule.

    python -m fused_se.demo [--batch 8] [--channels 256] [--reduction 16] [--size 14] [--dtype fp32]

On a machine without a CUDA device the Triton kernels run in the Triton interpreter on the
CPU (slow, but the same kernels); the speedups need a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m fused_se.demo", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--reduction", type=int, default=16)
    p.add_argument("--size", type=int, default=14, help="H = W of the feature map")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        # Must happen before triton is imported: triton.jit reads it when the kernels are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")

    import fused_se
    from fused_se import kernels
    from fused_se.reference import SEModule

    device = torch.device("cuda" if cuda else "cpu")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    classic = SEModule(args.channels, args.reduction).to(device)
    fused = fused_se.FusedSEModule(args.channels, args.reduction).to(device)
    fused.load_state_dict(classic.state_dict())
    classic64 = SEModule(args.channels, args.reduction).to(device).double()
    classic64.load_state_dict(classic.state_dict())

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device).to(memory_format=fmt)
    g = torch.randn_like(x)

    def run(module, dt):
        module.zero_grad(set_to_none=True)
        xi = x.detach().to(dt).clone().requires_grad_(True)
        y = module.to(dt)(xi)
        y.backward(g.to(dt))
        return [y.detach(), xi.grad, module.fc[0].weight.grad, module.fc[2].weight.grad]

    where = torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)"
    print(f"fused_se {fused_se.__version__} | torch {torch.__version__} | kernels on {where}")
    print(
        f"x: {tuple(x.shape)} {args.dtype} {'channels_last' if args.channels_last else 'NCHW'}, reduction {args.reduction}"
    )
    t0 = time.perf_counter()
    with kernels.record_launches() as launched:
        ours = run(fused, dtype)
    elapsed = time.perf_counter() - t0
    eager = run(classic, dtype)
    ref = run(classic64, torch.float64)
    print(f"fused forward + backward ran {len(launched)} kernels: {', '.join(launched)} ({elapsed:.2f} s)")
    print(f"{'tensor':<12}{'fused vs fp64':>16}{'eager vs fp64':>16}")
    worst = 0.0
    for name, a, e, r in zip(["y", "grad x", "grad fc.0", "grad fc.2"], ours, eager, ref):
        err_a = (a.double() - r).abs().max().item()
        err_e = (e.double() - r).abs().max().item()
        worst = max(worst, err_a / max(2 * err_e, 1e-6))
        print(f"{name:<12}{err_a:>16.3e}{err_e:>16.3e}")
    ok = worst <= 1.0 and len(launched) == 6
    print("parity: OK (fused error within 2x eager's own)" if ok else "parity: FAILED")
    if not cuda:
        print("note: the speedups fused_se exists for need a CUDA GPU; here the kernels ran in the interpreter.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
