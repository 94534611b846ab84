"""A short demo: FusedSEModule forward and backward against the classic SEModule.

    fused-se-demo [--batch 8] [--channels 256] [--reduction 16] [--size 14] [--dtype fp32] [--channels-last]

Prints the path the planner chose for the fused block (fused_se.kernels.plan), the kernels that
ran, and each result's error against an fp64 reference beside eager PyTorch's own error in the
same dtype. Parity holds when every fused error is within twice eager's (with a floor of
PARITY_FLOOR), the rule of the parity suite; exit status 0 if it holds, 1 if not.

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
# A fused error passes at up to PARITY_FACTOR x eager's own error against fp64, or PARITY_FLOOR,
# whichever is larger (eager's error can be ~0 where fp32 is exact).
PARITY_FACTOR = 2.0
PARITY_FLOOR = 1e-6


def _parse(argv):
    from fused_se.bench.cli import prog_name

    p = argparse.ArgumentParser(prog=prog_name("fused_se.demo"), description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--reduction", type=int, default=16)
    p.add_argument("--size", type=int, default=14, help="H = W of the feature map")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)
    for name in ("batch", "channels", "reduction", "size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive; got {getattr(args, name)}")
    if args.reduction > args.channels:
        p.error(f"--reduction {args.reduction} is more than --channels {args.channels}")
    return args


def parity(ours: list[torch.Tensor], eager: list[torch.Tensor], ref: list[torch.Tensor]) -> list[tuple]:
    """Per tensor: (fused error, eager error, allowed, passed), errors as max |a - ref|."""
    out = []
    for a, e, r in zip(ours, eager, ref, strict=True):
        err_a = (a.double() - r).abs().max().item()
        err_e = (e.double() - r).abs().max().item()
        allowed = max(PARITY_FACTOR * err_e, PARITY_FLOOR)
        out.append((err_a, err_e, allowed, err_a <= allowed))
    return out


def path_label(x: torch.Tensor, grad: torch.Tensor, hidden: int) -> str:
    """Which path the fused block takes for x: the planner's forward and backward paths where the
    Triton kernels run, else the backend that runs instead (decomposed, reference)."""
    import fused_se

    backend = fused_se.backend_for(x)
    if backend != "triton":
        return f"{backend} (not the Triton kernels)"
    from fused_se.kernels import plan_backward, plan_forward

    fwd = plan_forward(x, hidden).path
    bwd = plan_backward(grad, x, hidden).path
    return f"forward {fwd}, backward {bwd}"


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
    hidden = fused.fc[0].out_features

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
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"x: {tuple(x.shape)} {args.dtype} {layout}, reduction {args.reduction} (hidden width {hidden})")
    print(f"path: {path_label(x.to(dtype), g.to(dtype), hidden)}")
    t0 = time.perf_counter()
    with kernels.record_launches() as launched:
        ours = run(fused, dtype)
    elapsed = time.perf_counter() - t0
    eager = run(classic, dtype)
    ref = run(classic64, torch.float64)
    ran = ", ".join(launched) if launched else "none (the Triton kernels did not run)"
    print(f"fused forward + backward ran {len(launched)} Triton kernels: {ran} ({elapsed:.2f} s)")
    print(f"{'tensor':<12}{'fused vs fp64':>16}{'eager vs fp64':>16}{'allowed':>12}")
    results = parity(ours, eager, ref)
    for name, (err_a, err_e, allowed, passed) in zip(["y", "grad x", "grad fc.0", "grad fc.2"], results, strict=True):
        print(f"{name:<12}{err_a:>16.3e}{err_e:>16.3e}{allowed:>12.3e}{'' if passed else '  FAILED'}")
    ok = all(passed for *_, passed in results)
    rule = f"fused error within {PARITY_FACTOR:g}x eager's own, or {PARITY_FLOOR:g}"
    print(f"parity: OK ({rule})" if ok else f"parity: FAILED (some fused error is past {rule})")
    if not cuda:
        print("note: the speedups fused_se exists for need a CUDA GPU; here the kernels ran in the interpreter.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
