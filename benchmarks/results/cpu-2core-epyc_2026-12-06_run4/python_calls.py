"""Python function calls in one forward+backward of a converted block, against the eager block it
replaces: the calls sys.setprofile sees (torch.autograd.grad's own Python included, on both sides),
counted on the narrowest SE block of timm's seresnet50 and ecaresnet26t on a (1, C, 1, 1) input, the
fused block's launches stubbed, after two warm-up calls (so the fused block replays)."""

import collections
import copy
import sys

import timm
import torch

import fused_se
from fused_se.perf.host import _call, stubbed_launches

torch.set_num_threads(1)
for name in ("seresnet50", "ecaresnet26t"):
    model = timm.create_model(name, pretrained=False)
    fused = fused_se.convert(copy.deepcopy(model)).train()
    block_name, block = min(
        ((n, m) for n, m in fused.named_modules() if isinstance(m, fused_se.FusedSEModule)),
        key=lambda p: p[1].channel or 0,
    )
    for side, module in (("eager", model.get_submodule(block_name).train()), ("fused", block)):
        x = torch.randn(1, block.channel or 256, 1, 1)
        with stubbed_launches():
            fn = _call(module, x, "fwd+bwd")
            fn()
            fn()
            calls = collections.Counter()

            def count(frame, event, arg, calls=calls):
                if event == "call":
                    calls[f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"] += 1

            sys.setprofile(count)
            fn()
            sys.setprofile(None)
        print(f"{name} {side} {type(module).__name__}: {sum(calls.values())} Python calls")
        for where, n in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:3d} {where}")
