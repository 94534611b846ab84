"""Conv layers' weights as they are: the functional forms take a pointwise conv's (O, I, 1, ...)
weight as the (O, I) matrix it holds, on every path, and hand its gradient back in the weight's own
shape and strides (channels_last too, as DDP's gradient buckets expect), and ECA's Conv1d(1, 1, K)
weight as its K taps; the conv blocks pass their weights without a view (an autograd node, forward
and backward, on every call)."""

from __future__ import annotations

import pytest
import torch
from se_testing import BACKWARD_KERNELS, record_launches

import fused_se
from fused_se import _dispatch
from fused_se.kernels import heuristics as hz

C, HIDDEN = 24, 6

# every path of the two-FC form that a forward may take, with the launches each makes
PATHS = {
    "three_launch": (["squeeze", "excite", "scale"], BACKWARD_KERNELS),
    "one_launch": (["se_fwd_one_launch"], BACKWARD_KERNELS),
    "spread": (["se_fwd_spread"], BACKWARD_KERNELS),
    "stream": (["se_fwd_stream"], ["se_bwd_stream", "sum_partials"]),
    "decomposed": ([], []),  # the CPU kernel: torch ops, no launch
    "reference": ([], []),  # plain autograd through torch ops
}


def _take(path: str, x: torch.Tensor, monkeypatch) -> None:
    if path in ("one_launch", "spread"):
        monkeypatch.setenv("FUSED_SE_PATHS", f"three_launch,{path}")
    elif path == "stream":  # x past an L2 of four samples, in tiles the small shape fills
        monkeypatch.setattr(hz, "STREAM_BLOCK_TILE", 64)
        monkeypatch.setattr(hz, "STREAM_TILE", 64)
        monkeypatch.setattr(hz, "MAX_BLOCK_HW_STREAM", 32)
        sample = x[0].numel() * x.element_size()
        monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * sample)
        monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.5)
    elif path == "decomposed":
        if x.is_cuda:
            pytest.skip("the CPU kernel runs on CPU tensors only")
        monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    elif path == "reference":
        monkeypatch.setenv("FUSED_SE_BACKEND", "reference")


def _conv_weight(o: int, i: int, layout: str, device) -> torch.Tensor:
    """A 1x1 conv's (o, i, 1, 1) weight, contiguous or in channels_last strides (i, 1, i, i), which
    differ from the contiguous ones on the size-1 dims alone."""
    if layout == "contiguous":
        return torch.randn(o, i, 1, 1, device=device)
    w = torch.randn(o, 1, 1, i, device=device).permute(0, 3, 1, 2)
    assert w.stride() == (i, 1, i, i)
    return w


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)


def _run(fn, x, params, g):
    x = _leaf(x)
    params = [_leaf(p) for p in params]
    with record_launches() as launched:
        y = fn(x, *params)
        grads = torch.autograd.grad(y, [x, *params], g)
    return y, grads, params, launched


@pytest.mark.parametrize("weights", ["contiguous", "channels_last"])
@pytest.mark.parametrize("path", list(PATHS))
def test_conv_weights_give_the_matrices_results_in_their_own_shape_and_strides(path, weights, device, monkeypatch):
    x = torch.randn(7, C, 6, 5, device=device).contiguous(memory_format=torch.channels_last)
    w1, w2 = _conv_weight(HIDDEN, C, weights, device), _conv_weight(C, HIDDEN, weights, device)
    b1, b2 = torch.randn(HIDDEN, device=device), torch.randn(C, device=device)
    g = torch.randn_like(x)
    _take(path, x, monkeypatch)

    def fn(x, w1, b1, w2, b2):
        return fused_se.squeeze_excite(x, w1, b1, w2, b2, gate="hard_sigmoid")

    y, grads, params, launched = _run(fn, x, [w1, b1, w2, b2], g)
    forward, backward = PATHS[path]
    assert launched == forward + backward, f"{path} ran {launched}"
    matrices = [w1.flatten(1), b1, w2.flatten(1), b2]
    y2, grads2, _, launched2 = _run(fn, x, matrices, g)
    assert launched2 == launched
    # the same arithmetic on the same values: the same bits
    assert torch.equal(y, y2)
    for name, got, want, p in zip(["x", "w1", "b1", "w2", "b2"], grads, grads2, [x, *params], strict=True):
        assert got.shape == p.shape, f"d{name}: shape {tuple(got.shape)}, not its input's {tuple(p.shape)}"
        assert torch.equal(got.reshape(want.shape), want), f"d{name} differs from the matrices'"
        if name in ("w1", "w2"):
            assert got.stride() == p.stride(), f"d{name}: strides {got.stride()}, not the weight's {p.stride()}"


@pytest.mark.parametrize("weights", ["contiguous", "channels_last"])
def test_effective_se_takes_a_conv_weight(weights, device):
    x = torch.randn(3, C, 4, 4, device=device)
    w = _conv_weight(C, C, weights, device)
    b = torch.randn(C, device=device)
    g = torch.randn_like(x)

    def fn(x, w, b):
        return fused_se.effective_squeeze_excite(x, w, b)

    y, grads, params, launched = _run(fn, x, [w, b], g)
    assert "excite_fc_bwd" in launched
    y2, grads2, _, _ = _run(fn, x, [w.flatten(1), b], g)
    assert torch.equal(y, y2)
    assert grads[1].shape == w.shape and grads[1].stride() == params[0].stride()
    for got, want in zip(grads, grads2, strict=True):
        assert torch.equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("path", ["three_launch", "decomposed", "reference"])
@pytest.mark.parametrize("circular", [False, True])
def test_eca_takes_a_conv1d_weight(path, circular, device, monkeypatch):
    x = torch.randn(3, C, 4, 4, device=device)
    w, b = torch.randn(1, 1, 5, device=device), torch.randn(1, device=device)
    g = torch.randn_like(x)
    _take(path, x, monkeypatch)

    def fn(x, w, b):
        return fused_se.efficient_channel_attention(x, w, b, circular=circular)

    y, grads, _, launched = _run(fn, x, [w, b], g)
    assert ("excite_conv_bwd" in launched) == (path == "three_launch"), launched
    y2, grads2, _, _ = _run(fn, x, [w.view(-1), b], g)
    assert torch.equal(y, y2)
    assert grads[1].shape == w.shape
    for got, want in zip(grads, grads2, strict=True):
        assert torch.equal(got.reshape(want.shape), want)


def _graph_nodes(y: torch.Tensor) -> set[str]:
    seen, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return {type(n).__name__ for n in seen}


@pytest.mark.parametrize(
    "make",
    [
        lambda: fused_se.FusedConv2dSEModule(C, HIDDEN),
        lambda: fused_se.FusedEffectiveSEModule(C),
        lambda: fused_se.FusedEcaModule(5, bias=True),
    ],
    ids=["conv2d_se", "effective_se", "eca"],
)
def test_conv_blocks_add_no_view_to_the_graph(make, device):
    """The block's autograd graph is its op and the parameters' accumulators: no view node a call,
    forward or backward."""
    block = make().to(device).to(memory_format=torch.channels_last)
    x = torch.randn(2, C, 3, 3, device=device, requires_grad=True)
    with record_launches() as launched:
        y = block(x)
    assert launched, "the kernels ran"
    nodes = _graph_nodes(y)
    assert not {n for n in nodes if "View" in n or "Permute" in n or "Reshape" in n}, nodes
    y.sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.stride() == p.stride(), f"{name}: {p.grad.stride()} vs {p.stride()}"


@pytest.mark.parametrize(
    "shape,error",
    [((HIDDEN, C, 3, 3), "pointwise"), ((HIDDEN, C, 1, 2), "pointwise"), ((HIDDEN,), "must have shape")],
)
def test_a_weight_that_is_not_a_pointwise_conv_is_refused(shape, error, device):
    x = torch.randn(2, C, 3, 3, device=device)
    w1 = torch.randn(shape, device=device)
    with record_launches() as launched, pytest.raises(ValueError, match=error):
        fused_se.squeeze_excite(x, w1, None, torch.randn(C, HIDDEN, device=device), None)
    assert launched == []
