"""The floor under a fused block's host time, with the interface the plain route now has: an
autograd.Function taking x, the two conv weights as the layers hold them, the biases and the tail,
returning y alone and saving ten tensors (x, z, s, a, the tail's two, the four parameters), whose
bodies make the eight buffers a call makes and do nothing else. Against timm's SEModule in eager
PyTorch and the block convert puts in its place (launches stubbed, as --host --model times it).
Forward+backward on a (1, 256, 1, 1) input, one thread; the three calls alternate in rounds of
100, and each row is the least of 30 rounds."""

import timeit

import timm
import torch

import fused_se
from fused_se.perf.host import _call, stubbed_launches

torch.set_num_threads(1)


class Empty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, act, gate, residual, sample_scale, out_act):
        b, c = x.shape[:2]
        y, z, s = torch.empty_like(x), torch.empty(b, c), torch.empty(b, c)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, z, s, s, sample_scale, None, w1, b1, w2, b2)
        return y

    @staticmethod
    def backward(ctx, g):
        x, _z, _s, _a, _d, _out, w1, b1, w2, b2 = ctx.saved_tensors
        grads = (torch.empty_like(x), torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2))
        return (*grads, torch.empty_like(b2), None, None, None, None, None)


class EmptyBlock(torch.nn.Module):
    def __init__(self, se):
        super().__init__()
        self.fc1, self.fc2 = se.fc1, se.fc2

    def forward(self, x):
        w1, w2 = self.fc1.weight, self.fc2.weight
        return Empty.apply(x, w1, self.fc1.bias, w2, self.fc2.bias, "relu", "sigmoid", None, None, "identity")


eager = timm.create_model("seresnet50", pretrained=False).train().layer1[0].se
fused = fused_se.convert(timm.create_model("seresnet50", pretrained=False)).train().layer1[0].se
x = torch.randn(1, 256, 1, 1)
calls = {
    "eager SEModule": _call(eager, x, "fwd+bwd"),
    "empty Function, same interface": _call(EmptyBlock(eager), x, "fwd+bwd"),
}
with stubbed_launches():
    calls[f"{type(fused).__name__} (launches stubbed)"] = _call(fused, x, "fwd+bwd")
    for _ in range(50):
        for fn in calls.values():
            fn()
    rounds = {name: [] for name in calls}
    for _ in range(30):
        for name, fn in calls.items():
            rounds[name].append(timeit.timeit(fn, number=100) / 100 * 1e6)
eager_us = min(rounds["eager SEModule"])
for name, times in rounds.items():
    print(f"{name:45s} {min(times):7.1f} us  {min(times) / eager_us:.2f}x eager")
