"""The fused blocks inside the GPU machinery of PyTorch: torch.compile (fullgraph, and
reduce-overhead's CUDA graphs), CUDA graph capture by hand, autocast, and torch.library.opcheck
on every op.

Skipped, with the reason, on machines without CUDA (torch.compile cannot build the Triton kernels
for the interpreter); benchmarks/gpu_check.sh runs them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from se_testing import BACKWARD_KERNELS, FORWARD_KERNELS, assert_within_torch_error, record_launches
from timm.layers.eca import EcaModule
from torch import nn

import fused_se
from fused_se import ops, reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: torch.compile, CUDA graphs, autocast and opcheck of the fused ops run on the GPU",
)

SHAPE = (4, 32, 7, 7)
IMAGE = (4, 3, 8, 8)

# The eager block each case converts from, the fused class that replaces it, its excitation kernel.
BLOCKS = {
    "se": (lambda c: reference.SEModule(c, 4), fused_se.FusedSEModule, "excite"),
    "eca": (lambda c: EcaModule(kernel_size=3), fused_se.FusedEcaModule, "excite_conv"),
}


def launches(case: str) -> list[str]:
    """The launches of one forward and backward of the case's block."""
    kernel = BLOCKS[case][2]
    return [k.replace("excite", kernel) for k in FORWARD_KERNELS + BACKWARD_KERNELS]


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Every test compiles from scratch: no cached graph, no recompilation limit carried over."""
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def randomise(module: nn.Module) -> nn.Module:
    """Parameters away from their init, so that the gates spread out."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module


def small_model(case: str) -> tuple[nn.Module, nn.Module]:
    """A conv, the case's SE block and a conv: the eager model and a converted copy of it."""
    make_block, fused_cls, _ = BLOCKS[case]
    c = SHAPE[1]
    eager = randomise(nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), make_block(c), nn.Conv2d(c, 8, 1)))
    converted = fused_se.convert(copy.deepcopy(eager))
    assert type(converted[2]) is fused_cls, converted
    return eager.cuda(), converted.cuda()


def fused_block(case: str) -> tuple[nn.Module, nn.Module]:
    """The case's fused block and its eager original in fp64 (the reference)."""
    make_block, fused_cls, _ = BLOCKS[case]
    eager = randomise(make_block(SHAPE[1]))
    block = fused_se.convert(nn.Sequential(copy.deepcopy(eager)))[0]
    assert type(block) is fused_cls, block
    return block.cuda(), eager.cuda().double()


def forward_and_grads(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """[y, dx, *d(parameters)] of one forward and backward, without touching any .grad."""
    x = x.detach().requires_grad_()
    y = module(x)
    return [y, *torch.autograd.grad(y, [x, *module.parameters()], g)]


def assert_close_scaled(name: str, ours: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Max abs difference within tol times the expected tensor's largest magnitude (at least 1)."""
    assert ours.dtype == expected.dtype and ours.shape == expected.shape, name
    assert not torch.isnan(ours).any(), f"{name}: NaN in the result"
    scale = max(1.0, expected.abs().max().item())
    err = (ours.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{name}: error {err:.3g} > {tol * scale:.3g}"


# ---- torch.compile -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(BLOCKS))
def test_compile_fullgraph_matches_eager_fused(case, dtype):
    _, model = small_model(case)
    model = model.to(dtype)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(IMAGE, device="cuda", dtype=dtype)
    g = torch.randn(IMAGE[0], 8, *IMAGE[2:], device="cuda", dtype=dtype)
    # Compiling runs the forward op's body on fake tensors (its fake implementation), which records
    # the launches of the Triton path; the reference path records none. (The backward's body is
    # traced too, unless a compiled graph comes from the on-disk cache: not asserted.)
    with record_launches() as launched:
        ours = forward_and_grads(compiled, x, g)
    assert set(launches(case)[:3]) <= set(launched), launched
    expected = forward_and_grads(model, x, g)
    ours = forward_and_grads(compiled, x, g)  # the compiled code, now without tracing
    # Inductor may pick other conv algorithms and layouts (TF32 in fp32): loose, but far below a
    # wrong gate or gradient.
    tol = 5e-3 if dtype == torch.float32 else 3e-2
    names = ["y", "dx"] + [n for n, _ in model.named_parameters()]
    assert len(ours) == len(expected) == len(names)
    for name, a, b in zip(names, ours, expected, strict=False):
        assert a.dtype == dtype, name
        assert_close_scaled(name, a, b, tol)


@pytest.mark.parametrize("case", list(BLOCKS))
def test_compile_reduce_overhead_matches_eager(case):
    """mode="reduce-overhead": CUDA graphs around the compiled forward and backward, replayed
    with new inputs; every step matches the eager block in fp64."""
    from torch._dynamo.utils import counters

    block, eager64 = fused_block(case)
    compiled = torch.compile(block, mode="reduce-overhead")
    counters.clear()
    for step in range(4):  # warm-up, record, then replays
        torch.compiler.cudagraph_mark_step_begin()
        x, g = torch.randn(SHAPE, device="cuda"), torch.randn(SHAPE, device="cuda")
        ours = [t.clone() for t in forward_and_grads(compiled, x, g)]  # before the next replay overwrites them
        expected = forward_and_grads(eager64, x.double(), g.double())
        for i, (a, b) in enumerate(zip(ours, expected, strict=False)):
            torch.testing.assert_close(
                a, b.float(), rtol=1e-4, atol=1e-5, msg=lambda m, s=step, i=i: f"step {s} [{i}]: {m}"
            )
    assert counters["inductor"]["cudagraph_skips"] == 0, "reduce-overhead ran without CUDA graphs"


# ---- CUDA graphs by hand -----------------------------------------------------------------------


def _capture_and_replay(block: nn.Module, eager64: nn.Module, shape: tuple, expect: list[str]) -> None:
    """Forward and backward captured in one CUDA graph (warmed up on a side stream first), then
    replayed with new data copied into the static input and output gradient, against eager."""
    params = list(block.parameters())
    x_static = torch.randn(shape, device="cuda", requires_grad=True)
    g_static = torch.randn(shape, device="cuda")

    def step() -> list[torch.Tensor]:
        y = block(x_static)
        return [y, *torch.autograd.grad(y, [x_static, *params], g_static)]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), record_launches() as launched:
        for _ in range(3):  # compiles the kernels, outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    assert launched == 3 * expect, launched

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), record_launches() as captured:
        static_out = step()
    assert captured == expect

    for _ in range(2):
        x, g = torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda")
        with torch.no_grad():
            x_static.copy_(x)
        g_static.copy_(g)
        with record_launches() as replayed:
            graph.replay()
        assert replayed == []  # nothing but the graph ran
        expected = forward_and_grads(eager64, x.double(), g.double())
        for i, (a, b) in enumerate(zip(static_out, expected, strict=False)):
            torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-5, msg=lambda m, i=i: f"[{i}]: {m}")


@pytest.mark.parametrize("case", list(BLOCKS))
def test_cuda_graph_capture_and_replay(case):
    _capture_and_replay(*fused_block(case), SHAPE, launches(case))


@pytest.mark.parametrize("path", ["spread", "stream"])
def test_cuda_graph_of_the_persistent_paths(path, monkeypatch):
    """The spread forward and the streamed passes zero a workspace and wait on flags in it; in
    a CUDA graph with the backward, replayed on new data, they give what the eager block gives."""
    from fused_se.kernels import heuristics as hz

    if path == "spread":
        monkeypatch.setenv("FUSED_SE_PATHS", "spread")
        expect = ["se_fwd_spread", *BACKWARD_KERNELS]
    else:  # an L2 of four samples: a lag of 4 forward and 2 backward, below the batch of 6
        monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * 32 * 49 * 4)
        monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.01)
        expect = ["se_fwd_stream", "se_bwd_stream", "sum_partials"]  # chunks of one sample: six partials
    _capture_and_replay(*fused_block("se"), (6, 32, 7, 7), expect)


# ---- autocast ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast(dtype):
    """fp32 weights, a conv's low-precision output into the SE block under autocast: the block
    returns its input's dtype, every weight gradient is fp32, and the output and gradients are
    within twice the error of the eager SE under the same autocast (against fp64)."""
    eager, model = small_model("se")
    eager64 = copy.deepcopy(eager).double()
    seen = []
    model[2].register_forward_hook(lambda m, inputs, out: seen.append((inputs[0].dtype, out.dtype)))
    x = torch.randn(IMAGE, device="cuda")
    g = torch.randn(IMAGE[0], 8, *IMAGE[2:], device="cuda", dtype=dtype)

    def run(module: nn.Module) -> list[torch.Tensor]:
        xr = x.detach().requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            y = module(xr)
        return [y, *torch.autograd.grad(y, [xr, *module.parameters()], g)]

    with record_launches() as launched:
        ours = run(model)
    assert launched == launches("se")
    assert seen == [(dtype, dtype)]
    own = run(eager)
    ref = forward_and_grads(eager64, x.double(), g.double())
    names = ["y", "dx"] + [n for n, _ in model.named_parameters()]
    assert ours[0].dtype == own[0].dtype == dtype
    for name, p, dp in zip(names[2:], model.parameters(), ours[2:], strict=False):
        assert p.dtype == dp.dtype == torch.float32, name
    for name, a, b, r in zip(names, ours, own, ref, strict=False):
        assert_within_torch_error(name, a, b, r)


# ---- torch.library.opcheck ---------------------------------------------------------------------


def _x(layout: str) -> torch.Tensor:
    x = torch.randn(SHAPE, device="cuda")
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


def _params(*shapes, bias_shapes=()) -> list:
    """Weights (requiring grad) of the given shapes, then biases, None where a bias shape is None."""
    out = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
    out += [None if s is None else torch.randn(s, device="cuda", requires_grad=True) for s in bias_shapes]
    return out


def _detached(args: tuple) -> tuple:
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def op_cases(layout: str, bias: bool, gate: str) -> list[tuple]:
    """(forward op, its args, backward op, a function of the forward's outputs giving the
    backward's args) for the three excitation forms."""
    c = SHAPE[1]
    r = c // 4
    x = _x(layout)
    w1, w2, b1, b2 = _params((r, c), (c, r), bias_shapes=((r,), (c,)) if bias else (None, None))
    wf, bf = _params((c, c), bias_shapes=((c,),) if bias else (None,))
    wk, bk = _params((5,), bias_shapes=((1,),) if bias else (None,))
    act = "silu" if bias else "relu"
    need = (True, True, bias, True, bias)
    return [
        (
            ops.squeeze_excite,
            (x, w1, b1, w2, b2, act, gate),
            ops.squeeze_excite_backward,
            lambda y, z, s, a: (torch.randn_like(y), x, z, s, a, w1, b1, w2, b2, act, gate, *need),
        ),
        (
            ops.effective_squeeze_excite,
            (x, wf, bf, gate),
            ops.effective_squeeze_excite_backward,
            lambda y, z, s, a: (torch.randn_like(y), x, z, s, a, wf, bf, gate, True, True, bias),
        ),
        (
            ops.efficient_channel_attention,
            (x, wk, bk, bias, gate),  # circular padding with the biases
            ops.efficient_channel_attention_backward,
            lambda y, z, s, a: (torch.randn_like(y), x, z, s, a, wk, bk, bias, gate, True, True, bias),
        ),
    ]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("bias", "gate"), [(False, "sigmoid"), (True, "hard_sigmoid")], ids=["plain", "bias-hard"])
@pytest.mark.parametrize("form", [0, 1, 2], ids=["squeeze_excite", "effective_squeeze_excite", "eca"])
def test_opcheck(form, bias, gate, layout):
    """Schema, autograd registration, fake tensors and AOT dispatch with dynamic shapes, for the
    forward op (inputs requiring grad, so its backward is traced too) and its backward op
    (inputs not requiring grad: its own backward only raises)."""
    forward, args, backward, backward_args = op_cases(layout, bias, gate)[form]
    with record_launches() as launched:
        outputs = forward(*args)
    assert launched, "the forward op did not run the kernels"
    torch.library.opcheck(forward, args)
    bwd_args = _detached(backward_args(*(t.detach() for t in outputs)))
    with record_launches() as launched:
        backward(*bwd_args)
    assert launched, "the backward op did not run the kernels"
    torch.library.opcheck(backward, bwd_args)
    # A partial pattern: only the input gradient, and only the weight gradients.
    n_need = 5 if form == 0 else 3
    for need in ((True,) + (False,) * (n_need - 1), (False,) + (True,) * (n_need - 1)):
        torch.library.opcheck(backward, bwd_args[:-n_need] + need)
