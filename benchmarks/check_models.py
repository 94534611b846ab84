"""Converted real models against their originals on one device: forward and backward parity.

    python benchmarks/check_models.py --json out.json                  (CUDA, bf16, channels_last)
    TRITON_INTERPRET=1 python benchmarks/check_models.py --device cpu --size 32 --batch 2

For each model (random weights, nothing is downloaded): the original in fp32 is the reference;
the original and the converted copy run in --dtype with --layout. A result passes when the
converted model's error against the reference is at most twice the original's own error in
that dtype, plus 1% of the reference's largest magnitude (the rule of the parity suite, with the
slack of 16-bit training). Eval mode, so that batch norm uses its running statistics. Checks the
output and the gradients of the input and of every SE parameter.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

MODELS = {
    "timm/efficientnet_b0": ("timm", "efficientnet_b0"),
    "timm/mobilenetv3_large_100": ("timm", "mobilenetv3_large_100"),
    "torchvision/efficientnet_b0": ("torchvision", "efficientnet_b0"),
    "torchvision/mobilenet_v3_large": ("torchvision", "mobilenet_v3_large"),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _build(source: str, name: str) -> torch.nn.Module:
    if source == "timm":
        import timm

        return timm.create_model(name)
    import torchvision

    return getattr(torchvision.models, name)()


def _run(model, x, g, se_params):
    x = x.detach().clone().requires_grad_()
    y = model(x)
    grads = torch.autograd.grad(y, [x, *se_params], g.to(y.dtype))
    return [y.detach(), *grads]


def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.float() - ref.float()).abs().max().item()


def check(label: str, dtype: torch.dtype, layout: str, batch: int, size: int, device: torch.device) -> dict:
    import fused_se
    from fused_se.kernels import record_launches

    torch.manual_seed(0)
    model = _build(*MODELS[label]).to(device).eval()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    reference = copy.deepcopy(model).to(memory_format=fmt)
    eager = copy.deepcopy(model).to(dtype).to(memory_format=fmt)
    converted, report = fused_se.convert(copy.deepcopy(model).to(dtype).to(memory_format=fmt), return_report=True)

    def se_params(m):  # the SE blocks' parameters, in the same order in every copy
        return [p for r in report.replaced for p in m.get_submodule(r.name).parameters()]

    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
    g_out = torch.randn(batch, 1000, device=device)
    ref = _run(reference, x, g_out, se_params(reference))
    own = _run(eager, x.to(dtype), g_out, se_params(eager))
    with record_launches() as launched:
        t0 = time.perf_counter()
        ours = _run(converted, x.to(dtype), g_out, se_params(converted))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    names = ["output", "grad of input"] + [f"grad of SE parameter {i}" for i in range(len(ref) - 2)]
    worst = {"name": None, "ratio": 0.0}
    failures = []
    for name, o, e, r in zip(names, ours, own, ref, strict=True):
        bound = 2 * _err(e, r) + 0.01 * max(1e-6, r.abs().max().item())
        err = _err(o, r)
        if err / bound > worst["ratio"]:
            worst = {"name": name, "ratio": err / bound, "error": err, "bound": bound, "eager_error": _err(e, r)}
        if not err <= bound:  # NaN fails too
            failures.append(f"{name}: error {err:.3g} > bound {bound:.3g}")
    return {
        "model": label,
        "dtype": str(dtype).replace("torch.", ""),
        "layout": layout,
        "batch": batch,
        "size": size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "replaced": len(report.replaced),
        "skipped": [f"{s.name}: {s.reason}" for s in report.skipped],
        "kernel_launches": len(launched),
        "checked_tensors": len(ref),
        "worst": worst,
        "failures": failures,
        "passed": not failures and len(report.replaced) > 0 and len(launched) > 0,
        "seconds_first_call": round(seconds, 3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for label in args.models:
        row = check(label, DTYPES[args.dtype], args.layout, args.batch, args.size, device)
        rows.append(row)
        status = "ok  " if row["passed"] else "FAIL"
        w = row["worst"]
        print(
            f"{status} {label:32s} {row['replaced']:3d} SE blocks fused, {row['checked_tensors']} tensors checked; "
            f"worst: {w['name']} at {w['ratio']:.2f} of its bound"
        )
        for f in row["failures"]:
            print(f"     {f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "rows": rows,
                },
                f,
                indent=2,
            )
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
