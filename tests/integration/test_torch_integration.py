"""The fused ops as native PyTorch ops on the CPU: torch.compile(fullgraph=True), opcheck,
autocast, torch.export and ONNX export.

Under tracing the ops run their torch-ops kernel on the CPU (fused_se.decomposed), also with
the interpreter on; eager calls run the Triton kernels through the interpreter. So the compile
and export tests compare a traced twin against the kernels, and opcheck compares the twin's
fake-tensor metadata against what the kernels return.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from se_testing import FUSED_OPS, ClassicSE, record_launches, record_ops
from torch import nn

import fused_se
from fused_se import _dispatch, ops

# CPU tensors here run the kernels through the Triton interpreter, which the suite turns on only
# where there is no CUDA device; on a GPU machine tests/gpu/test_gpu_integration.py covers the ops.
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="CPU tests through the Triton interpreter (on only without CUDA); see tests/gpu/test_gpu_integration.py",
)


def _tiny_model() -> nn.Sequential:
    """Each fused form once, between convolutions."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        fused_se.FusedSEModule(16, 4),
        nn.ReLU(),
        fused_se.FusedEcaModule(kernel_size=3),
        nn.Conv2d(16, 12, 1),
        fused_se.FusedEffectiveSEModule(12),
    )


def _run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, then the gradients of x and of every parameter, for a fixed cotangent."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # the same drop-path masks on each run
    y = model(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    return [y.detach(), x.grad, *(p.grad for p in model.parameters())]


class _GraphRecorder:
    """A torch.compile backend that keeps the ops of the graphs Dynamo hands over."""

    def __init__(self, inner: str) -> None:
        self.inner = inner
        self.targets: list[str] = []
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        self.targets += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        if self.inner == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.aot_autograd import make_boxed_compiler

        return aot_autograd(fw_compiler=make_boxed_compiler(lambda g, _: g))(gm, example_inputs)

    def fused_ops(self) -> set[str]:
        return {t for t in self.targets if t.startswith("fused_se.")}


# ---- torch.compile ----------------------------------------------------------------------------


def test_compile_fullgraph_inductor_matches_the_kernels():
    model = _tiny_model()
    x = torch.randn(2, 3, 8, 8)
    with record_launches() as launched:
        eager = _run(model, x)
    assert launched, "the eager run did not go through the kernels"
    torch._dynamo.reset()
    backend = _GraphRecorder("inductor")
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with record_launches() as launched:
        ours = _run(compiled, x)
    assert launched == []  # the CPU graph runs the traced twins, not the interpreter
    assert backend.graphs == 1
    assert backend.fused_ops() == {f"{op}.default" for op in FUSED_OPS.values()}
    for o, e in zip(ours, eager, strict=False):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5)


def test_compile_fullgraph_converted_timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = fused_se.convert(
        timm.create_model("seresnet18", pretrained=False, num_classes=10, drop_path_rate=0.1), fuse_residual=True
    )
    assert sum(fused_se.tails.is_installed(m) for m in model.modules()) == 8  # the blocks' forwards are partials
    x = torch.randn(2, 3, 32, 32)
    with record_launches() as launched:
        eager = _run(model, x)
    assert launched
    torch._dynamo.reset()
    backend = _GraphRecorder("aot_eager")  # Inductor's C++ build of a whole ResNet takes minutes on 2 cores
    ours = _run(torch.compile(model, backend=backend, fullgraph=True), x)
    assert backend.graphs == 1
    assert backend.targets.count("fused_se.squeeze_excite.default") == 8  # every SE block, no graph break
    for o, e in zip(ours, eager, strict=False):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5)


# ---- opcheck ----------------------------------------------------------------------------------


def _opcheck(op, args) -> None:
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("interpreter", [True, False], ids=["kernels", "decomposed"])
def test_opcheck_every_op(layout, interpreter, monkeypatch):
    if not interpreter:
        monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    b, c, r, k = 2, 8, 3, 3
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def leaf(*shape):
        return torch.randn(*shape).requires_grad_()

    x = torch.randn(b, c, 3, 3).contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn(b, c, 3, 3).contiguous(memory_format=fmt)
    w1, b1, w2, b2, wfc, bfc, wk, bk = leaf(r, c), leaf(r), leaf(c, r), leaf(c), leaf(c, c), leaf(c), leaf(k), leaf(1)

    _opcheck(ops.squeeze_excite, (x, w1, b1, w2, b2, "silu", "hard_sigmoid"))
    _opcheck(ops.squeeze_excite, (x, w1, None, w2, None, "relu", "sigmoid"))
    _opcheck(ops.effective_squeeze_excite, (x, wfc, bfc, "hard_sigmoid"))
    _opcheck(ops.efficient_channel_attention, (x, wk, bk, True, "sigmoid"))
    _opcheck(ops.efficient_channel_attention, (x, wk, None, False, "hard_sigmoid"))

    with torch.no_grad():
        _, z, s, a = ops.squeeze_excite(x, w1, b1, w2, b2, "silu", "hard_sigmoid")
        _opcheck(
            ops.squeeze_excite_backward,
            (g, x, z, s, a, w1, b1, w2, b2, "silu", "hard_sigmoid", True, True, True, True, False),
        )
        _, z, s, a = ops.effective_squeeze_excite(x, wfc, bfc, "sigmoid")
        _opcheck(ops.effective_squeeze_excite_backward, (g, x, z, s, a, wfc, bfc, "sigmoid", True, True, True))
        _, z, s, a = ops.efficient_channel_attention(x, wk, bk, False, "hard_sigmoid")
        _opcheck(
            ops.efficient_channel_attention_backward,
            (g, x, z, s, a, wk, bk, False, "hard_sigmoid", False, True, True),
        )


# ---- autocast ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interpreter", [True, False], ids=["kernels", "decomposed"])
def test_autocast_cpu_bf16(interpreter, monkeypatch):
    """A conv in bf16 under autocast feeds the SE: fp32 weights, fp32 excitation, bf16 out,
    fp32 weight gradients; within bf16 error of eager SE under the same autocast."""
    if not interpreter:
        monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 32, 3, padding=1)
    eager = ClassicSE(32, 4)
    fused = fused_se.FusedSEModule(32, 4)
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 8, 6, 6)
    results = {}
    for name, se in (("eager", eager), ("fused", fused)):
        se.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), record_launches() as launched, record_ops() as seen:
            y = se(conv(x))
        y.float().square().sum().backward()
        results[name] = (y, [p.grad for p in se.parameters()], launched, seen)
    y, grads, launched, seen = results["fused"]
    assert "fused_se.squeeze_excite" in seen
    assert bool(launched) == interpreter
    assert y.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in fused.parameters())
    assert all(gr.dtype == torch.float32 for gr in grads)
    y_eager, grads_eager, _, _ = results["eager"]
    torch.testing.assert_close(y, y_eager, rtol=2e-2, atol=2e-2)
    for gr, ge in zip(grads, grads_eager, strict=False):
        # eager runs its FCs in bf16 under autocast; ours in fp32: compare at bf16's resolution
        torch.testing.assert_close(gr, ge.float(), rtol=5e-2, atol=5e-2 * ge.abs().max().item())


# ---- export -----------------------------------------------------------------------------------


def _converted_timm(name: str, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return fused_se.convert(timm.create_model(name, pretrained=False, num_classes=10), **kwargs).eval()


def test_torch_export_runs_the_fused_ops():
    model = _converted_timm("seresnet18", fuse_residual=True)
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("fused_se.squeeze_excite.default") == 8
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-5)
    x2 = torch.randn(3, 3, 32, 32)  # the exported program checks its input shapes
    with pytest.raises(Exception, match=r"shape|size|dim"):
        ep.module()(x2)


_HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


@pytest.mark.skipif(not _HAS_ONNX, reason="ONNX export needs onnx and onnxscript (pip install '.[test]')")
def test_onnx_export_is_made_of_standard_ops(tmp_path):
    import onnx

    model = _converted_timm("mobilenetv3_small_050")
    x = torch.randn(2, 3, 32, 32)
    assert sum(isinstance(m, fused_se.FusedSEModule) for m in model.modules()) == 9
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    proto = onnx.load(str(path))
    domains = {n.domain for n in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    op_types = {n.op_type for n in proto.graph.node}
    assert {"ReduceMean", "HardSigmoid"} <= op_types or {"ReduceMean", "Sigmoid"} <= op_types, op_types
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


def test_opcheck_on_the_streamed_paths(monkeypatch):
    """The streamed forward and backward (an L2 of four samples here) against the twin's fake
    tensors and the schema, as the three-launch path above."""
    from fused_se.kernels import heuristics as hz

    x = torch.randn(5, 8, 3, 3).requires_grad_()
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * x[0].numel() * x.element_size())
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.01)
    w1, b1, w2, b2 = (torch.randn(*s).requires_grad_() for s in ((3, 8), (3,), (8, 3), (8,)))
    with record_launches() as launched:
        _opcheck(ops.squeeze_excite, (x, w1, b1, w2, b2, "silu", "hard_sigmoid"))
        _, z, s, a = ops.squeeze_excite(x, w1, b1, w2, b2, "silu", "hard_sigmoid")
        tensors = [t.detach() for t in (torch.randn_like(x), x, z, s, a, w1, b1, w2, b2)]
        _opcheck(ops.squeeze_excite_backward, (*tensors, "silu", "hard_sigmoid", True, True, True, True, True))
    assert "se_fwd_stream" in launched and "se_bwd_stream" in launched, launched
