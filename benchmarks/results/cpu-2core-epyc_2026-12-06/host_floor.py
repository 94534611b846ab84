"""The floor under a fused block's host time: an autograd.Function with the fused op's interface
(x, the two conv weights viewed as matrices, the biases and the tail's arguments in; y, z, s, a out;
ten tensors saved; the eight buffers a call makes) whose bodies do nothing else, against timm's
SEModule in eager PyTorch and the block convert puts in its place (launches stubbed, as --host
--model times it). Forward+backward on a (1, 256, 1, 1) input, one thread, least of the repeats."""

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
        return y, z, s, s

    @staticmethod
    def backward(ctx, g, *_):
        x, _z, _s, _a, _d, _out, w1, b1, w2, b2 = ctx.saved_tensors
        grads = (torch.empty_like(x), torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2))
        return (*grads, torch.empty_like(b2), None, None, None, None, None)


class EmptyBlock(torch.nn.Module):
    def __init__(self, se):
        super().__init__()
        self.fc1, self.fc2 = se.fc1, se.fc2

    def forward(self, x):
        w1, w2 = self.fc1.weight.flatten(1), self.fc2.weight.flatten(1)
        return Empty.apply(x, w1, self.fc1.bias, w2, self.fc2.bias, "relu", "sigmoid", None, None, "identity")[0]


def us(fn, number=3000, repeat=7):
    fn()
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


model = timm.create_model("seresnet50", pretrained=False).train()
eager = model.layer1[0].se
fused = fused_se.convert(timm.create_model("seresnet50", pretrained=False)).train().layer1[0].se
x = torch.randn(1, 256, 1, 1)
rows = [
    ("eager SEModule", us(_call(eager, x, "fwd+bwd"))),
    ("empty Function, same interface", us(_call(EmptyBlock(eager), x, "fwd+bwd"))),
]
with stubbed_launches():
    rows.append((f"{type(fused).__name__} (launches stubbed)", us(_call(fused, x, "fwd+bwd"))))
for name, t in rows:
    print(f"{name:45s} {t:7.1f} us  {t / rows[0][1]:.2f}x eager")
