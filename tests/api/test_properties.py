"""Property-based parity: random ranks (sequences, images, volumes), shapes, strides, dtypes,
variants, residual tails, forward paths and requires_grad patterns against eager PyTorch, through
the kernels.

The example count is bounded for CI (the "ci" profile: a fixed seed, a bounded number of
examples); `HYPOTHESIS_PROFILE=long pytest tests/api/test_properties.py` runs many more by hand.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from se_testing import (
    FORM_KERNELS,
    assert_within_torch_error,
    eager_variant,
    make_variant_params,
    record_launches,
)

import fused_se
from fused_se.functional import _kernels_input
from fused_se.kernels import force_paths, plan_forward
from fused_se.kernels import heuristics as hz

# The MLP form's forward launches on each planned path.
_FORWARD_LAUNCHES = {
    "three_launch": ["squeeze", "excite", "scale"],
    "one_launch": ["se_fwd_one_launch"],
    "spread": ["se_fwd_spread"],
    "stream": ["se_fwd_stream"],
}

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# How x is laid out in memory: the two native layouts, strided views taken as they are, and
# views that are neither NCHW nor channels_last (copied once).
LAYOUTS = ["nchw", "channels_last", "sliced_c", "batch_step", "sliced_hw", "hw_transposed", "c_last_permuted"]


def _make_x(b, c, h, w, dtype, layout, device):
    kw = {"dtype": dtype, "device": device}
    if layout == "nchw":
        return torch.randn(b, c, h, w, **kw)
    if layout == "channels_last":
        return torch.randn(b, c, h, w, **kw).to(memory_format=torch.channels_last)
    if layout == "sliced_c":
        return torch.randn(b, 2 * c, h, w, **kw)[:, 1::2]
    if layout == "batch_step":
        return torch.randn(2 * b, c, h, w, **kw)[::2]
    if layout == "sliced_hw":
        return torch.randn(b, c, h + 1, w + 2, **kw)[:, :, 1:, 1 : w + 1]
    if layout == "hw_transposed":  # W strides over H's rows: H and W do not flatten in order
        return torch.randn(b, c, w, h, **kw).transpose(2, 3)
    return torch.randn(h, b, w, c, **kw).permute(1, 3, 0, 2)  # a layout no one uses on purpose


def _make_x_rank(b, c, spatial, dtype, layout, device):
    """x of rank 3 (spatial (L,)) or 5 (spatial (D, H, W)) in the layout named as for rank 4."""
    if len(spatial) == 2:
        return _make_x(b, c, *spatial, dtype, layout, device)
    kw = {"dtype": dtype, "device": device}
    n = len(spatial)
    if layout == "nchw":
        return torch.randn(b, c, *spatial, **kw)
    if layout == "channels_last":  # channels fastest
        return torch.randn(b, *spatial, c, **kw).movedim(-1, 1)
    if layout == "sliced_c":
        return torch.randn(b, 2 * c, *spatial, **kw)[:, 1::2]
    if layout == "batch_step":
        return torch.randn(2 * b, c, *spatial, **kw)[::2]
    if layout == "sliced_hw":  # the last spatial dim sliced: a volume's dims no longer flatten
        return torch.randn(b, c, *spatial[:-1], spatial[-1] + 2, **kw)[..., 1:-1]
    if layout == "hw_transposed":  # the spatial dims in reverse order in memory
        return torch.randn(b, c, *reversed(spatial), **kw).permute(0, 1, *range(n + 1, 1, -1))
    return torch.randn(*spatial, b, c, **kw).permute(n, n + 1, *range(n))  # batch and channels slowest


def _spatial():
    """(L,), (H, W) or (D, H, W): x of rank 3, 4 or 5 (a volume's sides up to 5, to stay small)."""
    return st.one_of(
        st.tuples(st.integers(1, 40)),
        st.tuples(st.integers(1, 9), st.integers(1, 9)),
        st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    )


@st.composite
def cases(draw):
    form = draw(st.sampled_from(["mlp", "fc", "conv"]))
    path = draw(st.sampled_from(["three", "one_launch", "spread", "stream"]))
    return {
        "form": form,
        "b": draw(st.integers(3, 9) if path == "stream" else st.integers(1, 5)),
        "c": draw(st.integers(1, 40)),
        "spatial": draw(_spatial()),
        "hidden": draw(st.integers(1, 20)),
        "k": draw(st.sampled_from([1, 3, 5])),
        "act": draw(st.sampled_from(["relu", "silu"])),
        "gate": draw(st.sampled_from(["sigmoid", "hard_sigmoid"])),
        "bias": draw(st.booleans()),
        "circular": draw(st.booleans()),
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "grads": draw(st.lists(st.booleans(), min_size=6, max_size=6)),  # x, 4 weights, the residual
        "tail": draw(st.sampled_from([None, "identity", "relu"])),
        "drop": draw(st.booleans()),
        "path": path,
        "l2_samples": draw(st.sampled_from([2, 4])),  # the streamed passes' L2, in samples of x
    }


def _run(fn, x, params, residual, grads, g):
    x = x.detach().clone().requires_grad_(grads[0])
    leaves = [
        p.detach().clone().requires_grad_(n) if p is not None else None
        for p, n in zip(params, grads[1:5], strict=False)
    ]
    if residual is not None:
        residual = residual.detach().clone().requires_grad_(grads[5])
    y = fn(x, leaves, residual)
    wrt = [t for t in [x, *leaves, residual] if t is not None and t.requires_grad]
    return [y.detach(), *(torch.autograd.grad(y, wrt, g) if wrt else [])]


def _eager_tail(x, form, params, act, gate, circular, residual, out_act, d):
    y = eager_variant(x, form, params, act, gate, circular)
    if residual is None:
        return y
    if d is not None:
        y = y * d.to(y.dtype).view(-1, *(1,) * (x.dim() - 1))
    y = y + residual
    return torch.relu(y) if out_act == "relu" else y


@pytest.mark.filterwarnings("ignore::UserWarning")
@given(case=cases())
def test_random_inputs_match_eager(case):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if case["form"] == "conv" and case["circular"] and (case["k"] - 1) // 2 > case["c"]:
        case["circular"] = False  # torch's circular padding cannot wrap more than once either
    b, c, spatial, dtype = case["b"], case["c"], case["spatial"], case["dtype"]
    hw = math.prod(spatial)
    params = make_variant_params(case["form"], c, case["hidden"], case["k"], case["bias"], device)
    x = _make_x_rank(b, c, spatial, dtype, case["layout"], device) * 2
    g = torch.randn(b, c, *spatial, device=device, dtype=dtype)
    residual = None if case["tail"] is None else torch.randn(b, c, *spatial, device=device, dtype=dtype)
    d = torch.rand(b, device=device) * 2 if case["tail"] is not None and case["drop"] else None
    form, act, gate, circular = case["form"], case["act"], case["gate"], case["circular"]
    tail = {} if residual is None else {"out_act": case["tail"], "sample_scale": d}

    def fused(x, p, r):
        kw = tail if r is None else {**tail, "residual": r}
        if form == "mlp":
            return fused_se.squeeze_excite(x, *p, act=act, gate=gate, **kw)
        if form == "fc":
            return fused_se.effective_squeeze_excite(x, *p, gate=gate, **kw)
        return fused_se.efficient_channel_attention(x, *p, circular=circular, gate=gate, **kw)

    def eager(x, p, r, d=d):
        return _eager_tail(x, form, p, act, gate, circular, r, case["tail"], d)

    # The two-FC form's other paths: the one-launch or spread forward (batches up to 8), or the streamed
    # passes with an L2 of 2 or 4 samples of x (a lag of 2 or 4 forward, about half backward).
    saved = hz.l2_bytes, hz.STREAM_WEIGHT_RATIO
    paths = force_paths(*({"one_launch", "spread"} & {case["path"]}), "stream")
    paths.__enter__()
    if case["path"] == "stream":
        hz.l2_bytes = lambda device: hz.STREAM_L2_FRACTION * case["l2_samples"] * c * hw * x.element_size()
        hz.STREAM_WEIGHT_RATIO = 0.01
    try:
        dense = _kernels_input(x)  # the (B, C, H, W) view (of one copy, where needed) that the ops take
        if form != "mlp":
            expect = ["squeeze", FORM_KERNELS[form], "scale"]
        else:
            expect = _FORWARD_LAUNCHES[plan_forward(dense, case["hidden"]).path]
        with record_launches() as launched:
            ours = _run(fused, x, params, residual, case["grads"], g)
    finally:
        hz.l2_bytes, hz.STREAM_WEIGHT_RATIO = saved
        paths.__exit__(None, None, None)
    assert launched[: len(expect)] == expect, launched
    own = _run(eager, x, params, residual, case["grads"], g)
    params64 = [p.double() if p is not None else None for p in params]
    r64 = None if residual is None else residual.double()
    d64 = None if d is None else d.double()
    ref = _run(lambda x, p, r: eager(x, p, r, d64), x.double(), params64, r64, case["grads"], g.double())
    assert ours[0].dtype == dtype and ours[0].shape == x.shape
    for i, (o, e, r) in enumerate(zip(ours, own, ref, strict=False)):
        assert_within_torch_error(f"tensor {i} of {case}", o, e.to(o.dtype), r)
