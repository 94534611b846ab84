"""The host proxy of converted models (--host --model's measurement) in a form that runs on this
tree and on an older one alike: for each SE block class of each timm model, the narrowest block's
forward+backward on a (1, C, 1, 1) input, eager against what convert puts in its place (launches
stubbed), the two timed in alternating rounds of `number` calls (a shift in the machine's speed
reaches both), the least round of each. Uses only fused_se.perf.host's _se_inputs, _call and
stubbed_launches, which both trees have. Three names are one block each, at C = 256: "linear", the
two-Linear SE (pool, Linear, ReLU, Linear, sigmoid) against FusedSEModule; "monai", MONAI's
ChannelSELayer against what convert makes of it; "scse", segmentation_models_pytorch's SCSEModule
likewise.

    python host_models_ab.py [--number N] [--repeat R] MODEL...
"""

import argparse
import copy
import timeit

import timm
import torch

import fused_se
from fused_se.perf.host import MODEL_SIZE, _call, _se_inputs, stubbed_launches

parser = argparse.ArgumentParser()
parser.add_argument("models", nargs="+")
parser.add_argument("--number", type=int, default=300)
parser.add_argument("--repeat", type=int, default=15)
args = parser.parse_args()
torch.set_num_threads(1)
print(f"{'model':<16} {'eager block':<18} {'fused as':<22} {'C':>4} {'eager us':>9} {'fused us':>9} {'ratio':>6}")


class LinearSE(torch.nn.Module):
    """The classic SE with Linear layers (what FusedSEModule replaces)."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(c, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, c), torch.nn.Sigmoid()
        )

    def forward(self, x):
        return x * self.fc(x.mean((2, 3))).view(x.shape[0], x.shape[1], 1, 1)


def blocks_of(name: str) -> list:
    """(eager class, fused class, C, eager block, fused block) per SE block class of the model."""
    if name == "linear":
        return [("LinearSE", "FusedSEModule", 256, LinearSE(256, 16).train(), fused_se.FusedSEModule(256).train())]
    if name in ("monai", "scse"):  # one block of the library, converted inside a Sequential
        if name == "monai":
            from monai.networks.blocks import ChannelSELayer

            eager = torch.nn.Sequential(ChannelSELayer(spatial_dims=2, in_channels=256, r=16))
        else:
            from segmentation_models_pytorch.base.modules import SCSEModule

            eager = torch.nn.Sequential(SCSEModule(256, reduction=16))
        fused = fused_se.convert(copy.deepcopy(eager)).train()
        return [(type(eager[0]).__name__, type(fused[0]).__name__, 256, eager.train()[0], fused[0])]
    torch.manual_seed(0)
    eager_model = timm.create_model(name, pretrained=False)
    shapes = _se_inputs(eager_model, MODEL_SIZE)
    fused_model = fused_se.convert(copy.deepcopy(eager_model)).train()
    eager_model.train()
    by_class = {}
    for block, shape in shapes.items():
        key = (type(eager_model.get_submodule(block)).__name__, type(fused_model.get_submodule(block)).__name__)
        by_class.setdefault(key, []).append((shape[1], block))
    out = []
    for (eager_name, fused_name), blocks in by_class.items():
        c, block = min(blocks)
        out.append((eager_name, fused_name, c, eager_model.get_submodule(block), fused_model.get_submodule(block)))
    return out


for name in args.models:
    for eager_name, fused_name, c, eager_block, fused_block in blocks_of(name):
        x = torch.randn(1, c, 1, 1)
        with stubbed_launches():
            calls = [_call(m, x, "fwd+bwd") for m in (eager_block, fused_block)]
            for fn in calls:
                fn()
            best = [float("inf")] * 2
            for _ in range(args.repeat):
                for i, fn in enumerate(calls):
                    best[i] = min(best[i], timeit.timeit(fn, number=args.number))
        eager_us, fused_us = (t / args.number * 1e6 for t in best)
        print(
            f"{name:<16} {eager_name:<18} {fused_name:<22} {c:>4} {eager_us:>9.1f} {fused_us:>9.1f} {fused_us / eager_us:>5.2f}x"
        )
