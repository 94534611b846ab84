"""The floor under the fused ECA block's host time: an autograd.Function with the plain route's
interface (x, the conv's weight and bias, circular, gate, the tail's three arguments and the known
Program, y returned alone, eight saved tensors) whose forward makes y, z and s and whose backward
makes dx and dw, and does nothing else; against timm's EcaModule (ecaresnet26t's first stage) and
the block convert puts in its place (launches stubbed). Forward+backward on a (1, 256, 1, 1)
input, one thread; the three alternate in rounds of 300 calls, 30 rounds; each row: the least
round, and the median over the rounds of the round's ratio to eager.

    python eca_floor.py
"""

import copy
import statistics
import timeit

import timm
import torch

import fused_se
from fused_se.perf.host import _call, stubbed_launches

torch.set_num_threads(1)


class Empty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, circular, gate, residual, sample_scale, out_act, known):
        n, c = x.shape[:2]
        y, z, s = torch.empty_like(x), x.new_empty(n, c), x.new_empty(n, c)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, z, s, s, sample_scale, None, w, b)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, _z, _s, _a, _d, _out, w, _b = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(w), None, None, None, None, None, None, None


class EmptyBlock(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        conv = self.conv
        return Empty.apply(x, conv.weight, conv.bias, False, "sigmoid", None, None, "identity", None)


torch.manual_seed(0)
model = timm.create_model("ecaresnet26t", pretrained=False)
eager = model.train().layer1[0].se
fused = fused_se.convert(copy.deepcopy(model)).train().layer1[0].se
x = torch.randn(1, 256, 1, 1)
calls = {
    "eager EcaModule": _call(eager, x, "fwd+bwd"),
    "empty Function, same interface": _call(EmptyBlock(eager.conv), x, "fwd+bwd"),
}
with stubbed_launches():
    calls[f"{type(fused).__name__} (launches stubbed)"] = _call(fused, x, "fwd+bwd")
    for _ in range(50):
        for fn in calls.values():
            fn()
    rounds = {name: [] for name in calls}
    for _ in range(30):
        for name, fn in calls.items():
            rounds[name].append(timeit.timeit(fn, number=300) / 300 * 1e6)
eager_rounds = rounds["eager EcaModule"]
print(f"{'':36s} {'least us':>9s} {'x eager (median of rounds)':>28s}")
for name, times in rounds.items():
    ratio = statistics.median(t / e for t, e in zip(times, eager_rounds, strict=True))
    print(f"{name:36s} {min(times):9.1f} {ratio:28.2f}")
