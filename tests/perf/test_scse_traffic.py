"""scSE's bytes counted through the Triton interpreter (fused_se.perf.trace): two passes over x
forward, 3N (N = bytes of x), no (B, HW) tensor written or saved (the scale pass sums q for its
own tile); two over g and x backward, 5N. The rest: forward O(B C) (the squeeze's partial sums,
the gates, each scale program's s_c and w_s) and the excitation's weights; backward O(N / C)
(s_s and dq, fp32 (B, HW): each N / C for fp32 x, written once and read once) and O(B C). At
C = 32 in fp32 that is 3.07N forward (3.14N when q was stored) and 5.31N backward (5.33N)."""

import pytest
import torch

import fused_se
from fused_se.kernels import common as kernels_common
from fused_se.kernels import heuristics as hz
from fused_se.perf.trace import Tracer
from fused_se.runtime import launch

pytestmark = pytest.mark.skipif(not kernels_common.INTERPRETED, reason="counts bytes through the Triton interpreter")


@pytest.fixture(autouse=True)
def _no_poison(monkeypatch):
    # NaN-filling the outputs would add a fill kernel per buffer to the count
    monkeypatch.setattr(launch, "POISON_OUTPUTS", False)


B, C, H, W = 2, 32, 16, 16


def _trace(layout: str):
    """(trace, bytes of x, the shapes autograd saved in the forward, bytes of the channel gate's layers)."""
    torch.manual_seed(0)
    module = fused_se.FusedSCSEModule(C, reduction=4)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(B, C, H, W).to(memory_format=fmt).requires_grad_()
    g = torch.randn_like(x)
    module(x)  # the first call's one-off set-up (imports, probes) stays out of the count
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with Tracer() as tr:
        tr.phase("fwd")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = module(x)
        tr.phase("bwd")
        torch.autograd.grad(y, [x, *module.parameters()], g)
    weights = sum(p.numel() * p.element_size() for p in module.cSE.parameters())
    return tr.trace, x.numel() * x.element_size(), saved, weights


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_scse_moves_3n_forward_and_5n_backward(layout):
    trace, n, saved, weights = _trace(layout)
    fwd = {e.name: e for e in trace.select("fwd") if e.kind == "triton"}
    bwd = {e.name: e for e in trace.select("bwd") if e.kind == "triton"}
    # SE's squeeze kernels (NCHW rows of 256 take the flat one); no q between the passes
    squeeze_kernel = "hw_sum_flat_kernel" if layout == "nchw" else "_hw_sum_kernel"
    assert list(fwd) == [squeeze_kernel, "excite_fwd_block", "_scse_scale_kernel"]
    assert list(bwd) == [
        "_scse_reduce_bwd_kernel",
        "excite_bwd_split",
        "excite_bwd_hidden",
        "excite_bwd_channels",
        "_scse_dx_bwd_kernel",
        "_sum_partials_kernel",  # dw_s's span shares and db_s's program shares, each added up
    ]
    assert saved and all(H * W not in s[1:] for s in saved), saved  # x, z, s, the weights: no (B, HW)
    squeeze, _, scale = fwd.values()
    # x read once by each pass, y written once; the squeeze's splits at least SCSE_MIN_SPLIT_HW long
    rows = (H * W // hz.SCSE_MIN_SPLIT_HW) * B * C * 4
    assert squeeze.read == n and squeeze.written <= rows
    cfg = hz.scse_scale_config(C, H * W, layout == "channels_last", 4)
    assert cfg.one_sweep
    programs = B * hz.cdiv(H * W, cfg.span)
    assert scale.read <= n + programs * (2 * C + 1) * 4 and scale.written == n  # + s_c, w_s, b_s a program
    # y, the partial sums, z and s: a (B, HW) fp32 q would add N / C
    assert sum(e.written for e in trace.select("fwd")) <= n + rows + 2 * B * C * 4
    forward = sum(e.requested for e in trace.select("fwd"))  # every kernel, the torch ops' included
    # x twice and y; the excitation's weights; the partial sums written and read, z and s written, and
    # each scale program's s_c, w_s and b_s
    assert forward <= 3 * n + weights + 2 * rows + 2 * B * C * 4 + programs * (2 * C + 1) * 4
    assert forward <= (3 + 2.5 / C) * n
    reduce_bwd, dx = bwd["_scse_reduce_bwd_kernel"], bwd["_scse_dx_bwd_kernel"]
    assert 2 * n <= reduce_bwd.read <= 2.01 * n and reduce_bwd.written <= 0.075 * n  # s_s and dq: 2N / C
    assert 2 * n <= dx.read <= 2.1 * n and n <= dx.written <= 1.05 * n
    backward = sum(e.requested for e in trace.select("bwd"))
    assert backward <= (5 + 10 / C) * n


def test_the_unet_scse_preset_counts_fused_scse_against_smps_eager_block():
    """--traffic on the unet_scse preset: eager is smp's SCSEModule (its ops), fused the scSE passes."""
    from fused_se import workloads
    from fused_se.perf import traffic

    shape = workloads.UNET_SCSE[3]  # 128 x 32 x 32, the smallest map but one: quick in the interpreter
    assert shape.spatial_gate and workloads.PRESETS["unet_scse"][3] is shape
    rows = {}
    for provider in ("eager", "fused"):
        trace, n = traffic.trace_call(provider, shape, 1, "channels_last", torch.float32)
        events = trace.select(*traffic.PHASES["fwd"])
        rows[provider] = (traffic.path_name(events, "fwd"), sum(e.requested for e in events) / n)
    assert rows["fused"][0] == "triton scse" and rows["eager"][0] == "torch"
    assert rows["fused"][1] <= 3.1  # two passes over x, y written, the weights and O(B C): 3.07N
    assert rows["eager"][1] >= 2 * rows["fused"][1]  # smp's ops: about 9N


def test_the_scse_workload_builds_smps_block_and_the_fused_one_with_its_weights():
    from fused_se import workloads

    shape = workloads.SEShape(16, 4, 4, 4, spatial_gate=True)
    eager = workloads.build_block("eager", shape, torch.device("cpu"), torch.float64)
    fused = workloads.build_block("fused", shape, torch.device("cpu"), torch.float64)
    assert isinstance(fused, fused_se.FusedSCSEModule)
    assert fused.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(fused(x), eager(x))
    with pytest.raises(ValueError, match="not for scSE"):
        workloads.build_block("fused", shape, torch.device("cpu"), torch.float64, tail=True)
