"""The host proxy of converted models (--host --model's measurement) in a form that runs on this
tree and on an older one alike: for each SE block class of each timm model, the narrowest block's
forward+backward on a (1, C, 1, 1) input, eager against what convert puts in its place (launches
stubbed), the two timed in alternating rounds of `number` calls (a shift in the machine's speed
reaches both), the least round of each. Uses only fused_se.perf.host's _se_inputs, _call and
stubbed_launches, which both trees have.

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
for name in args.models:
    torch.manual_seed(0)
    eager_model = timm.create_model(name, pretrained=False)
    shapes = _se_inputs(eager_model, MODEL_SIZE)
    fused_model = fused_se.convert(copy.deepcopy(eager_model)).train()
    eager_model.train()
    by_class = {}
    for block, shape in shapes.items():
        key = (type(eager_model.get_submodule(block)).__name__, type(fused_model.get_submodule(block)).__name__)
        by_class.setdefault(key, []).append((shape[1], block))
    for (eager_name, fused_name), blocks in by_class.items():
        c, block = min(blocks)
        x = torch.randn(1, c, 1, 1)
        with stubbed_launches():
            calls = [_call(m.get_submodule(block), x, "fwd+bwd") for m in (eager_model, fused_model)]
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
