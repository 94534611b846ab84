"""Whole-model training steps (--e2e): timm SE-ResNet-50 eager and converted against ResNet-50,
and EfficientNet-B0 eager and converted."""

from __future__ import annotations

import argparse
from typing import Callable, Optional

import torch
from torch import nn

from .measure import NOISY_SPREAD, Progress, environment, spread, time_ms
from .runner import RowSink

# resnet50 first: the SE-ResNet-50 rows' overhead over it is known when they are measured.
E2E_MODELS = [
    ("resnet50", "eager"),
    ("seresnet50", "eager"),
    ("seresnet50", "converted"),
    ("seresnet50", "converted+tails"),  # convert(model, fuse_residual=True)
    ("efficientnet_b0", "eager"),
    ("efficientnet_b0", "converted"),
]


def _training_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, amp: bool) -> Callable[[], None]:
    """One SGD step: forward (bf16 autocast where amp), cross-entropy, backward, update."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_e2e(args: argparse.Namespace, sink: Optional[RowSink] = None) -> list[dict]:
    """Training steps (forward, backward, SGD step) of whole timm models; images/s and the
    SE overhead of SE-ResNet-50 over ResNet-50, eager and converted. Each row goes to `sink` as it
    is measured."""
    import timm

    from .. import backend_for
    from ..conversion import convert

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.e2e_batch or (64 if cuda else 2)
    size = args.e2e_size or (224 if cuda else 64)
    env = environment(device)
    env["run"] = getattr(args, "label", None)
    rows = []
    floor = None
    progress = Progress(len(E2E_MODELS))
    for name, variant in E2E_MODELS:
        progress.step(f"{name} {variant}")
        torch.manual_seed(0)
        model = timm.create_model(name).to(device)
        if variant.startswith("converted"):
            convert(model, fuse_residual=variant == "converted+tails")
        fmt = torch.channels_last if cuda else torch.contiguous_format
        model = model.to(memory_format=fmt).train()
        x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
        target = torch.randint(0, 1000, (batch,), device=device)
        step = _training_step(model, x, target, amp=cuda)
        median, p20, p80 = time_ms(step, device, args.warmup, args.reps)
        if name == "resnet50":
            floor = median
        over = 100 * (median / floor - 1) if name == "seresnet50" and floor else None
        row = {**env, "model": name, "variant": variant, "batch": batch, "size": size,
               "path": backend_for(x) if variant.startswith("converted") else "torch",
               "amp": "bf16" if cuda else "off", "layout": "channels_last" if cuda else "nchw",
               "median_ms": median, "p20_ms": p20, "p80_ms": p80, "spread": spread(median, p20, p80),
               "noisy": spread(median, p20, p80) > NOISY_SPREAD, "images_per_s": batch / median * 1e3,
               "overhead_vs_resnet50_pct": over}  # fmt: skip
        rows.append(row)
        progress.close()
        if sink is not None:
            sink.add(row)
        del model, step  # one model on the device at a time
    progress.close()
    return rows
