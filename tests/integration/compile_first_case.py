"""One torch.compile case, run in a fresh process by test_compile_first.py: the model is compiled and
called before anything of fused_se has run eagerly in the process, as a user's first call would be.

    python compile_first_case.py CASE [DEVICE [MODE]]

CASE: module | seresnet18 | seresnet18-tail | dynamic; DEVICE: cpu (default) or cuda; MODE: a
torch.compile mode (e.g. reduce-overhead, CUDA graphs), with Inductor. Prints one JSON line: the graphs the backend
was handed, the fused ops in them, and the largest difference from the same model run eagerly
afterwards (output, then the gradients of x and of every parameter).
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

import fused_se


class Recorder:
    """A torch.compile backend that counts the graphs Dynamo hands over and the fused ops in them."""

    def __init__(self, inner: str) -> None:
        self.inner = inner
        self.graphs = 0
        self.fused_ops: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        self.fused_ops += [
            str(n.target) for n in gm.graph.nodes if n.op == "call_function" and str(n.target).startswith("fused_se.")
        ]
        if self.inner == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.aot_autograd import make_boxed_compiler

        return aot_autograd(fw_compiler=make_boxed_compiler(lambda g, _: g))(gm, example_inputs)


def run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, then the gradients of x and of every parameter, for a fixed cotangent."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # the same drop-path masks on each run
    y = model(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device))
    return [y.detach().clone(), x.grad, *(p.grad.clone() for p in model.parameters())]


def max_diff(ours: list[torch.Tensor], eager: list[torch.Tensor]) -> float:
    return max((o.double() - e.double()).abs().max().item() for o, e in zip(ours, eager, strict=False))


def main(case: str, device: str = "cpu", mode: str | None = None) -> dict:
    torch.manual_seed(0)
    if case in ("module", "dynamic"):
        model: nn.Module = fused_se.FusedSEModule(64, 8)
        batches, shape, inner = ((2, 3, 4, 5) if case == "dynamic" else (2,)), (64, 5, 5), "inductor"
    else:
        import timm

        model = timm.create_model("seresnet18", pretrained=False, num_classes=10, drop_path_rate=0.1)
        model = fused_se.convert(model, fuse_residual=case.endswith("-tail"))
        # Inductor's C++ build of a whole ResNet takes minutes on two cores; Dynamo, where the
        # compile-first failures live, runs the same either way.
        batches, shape, inner = (2,), (3, 32, 32), "aot_eager"
    model = model.to(device)
    xs = [torch.randn(b, *shape, device=device) for b in batches]
    backend = Recorder(inner)
    dynamic = case == "dynamic" or None
    if mode is None:
        compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=dynamic)
    else:  # a mode is Inductor's: the graphs are not counted
        compiled = torch.compile(model, mode=mode, fullgraph=True, dynamic=dynamic)
    ours = [run(compiled, x) for x in xs]  # before any eager call
    eager = [run(model, x) for x in xs]
    return {
        "graphs": backend.graphs,
        "fused_ops": backend.fused_ops,
        "max_diff": max(max_diff(o, e) for o, e in zip(ours, eager, strict=False)),
        "scale": max(t.abs().max().item() for e in eager for t in e),
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
