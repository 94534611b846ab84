"""scSE's bytes counted through the Triton interpreter (fused_se.perf.trace): two passes over x
forward, 3N (N = bytes of x); two over g and x backward, 5N; the rest O(N / C) (q and dq, fp32
(B, HW): each N / C for fp32 x, written once and read once or twice) and O(B C) (the HW tiles'
partial sums, the excitation, dw_s's shares). At C = 32 in fp32 that is 3.14N forward and 5.33N
backward."""

import pytest
import torch

import fused_se
from fused_se.kernels import common as kernels_common
from fused_se.perf.trace import Tracer
from fused_se.runtime import launch

pytestmark = pytest.mark.skipif(not kernels_common.INTERPRETED, reason="counts bytes through the Triton interpreter")


@pytest.fixture(autouse=True)
def _no_poison(monkeypatch):
    # NaN-filling the outputs would add a fill kernel per buffer to the count
    monkeypatch.setattr(launch, "POISON_OUTPUTS", False)


C = 32


def _trace(layout: str):
    torch.manual_seed(0)
    module = fused_se.FusedSCSEModule(C, reduction=4)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, C, 16, 16).to(memory_format=fmt).requires_grad_()
    g = torch.randn_like(x)
    with Tracer() as tr:
        tr.phase("fwd")
        y = module(x)
        tr.phase("bwd")
        torch.autograd.grad(y, [x, *module.parameters()], g)
    return tr.trace, x.numel() * x.element_size()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_scse_moves_3n_forward_and_5n_backward(layout):
    trace, n = _trace(layout)
    fwd = {e.name: e for e in trace.select("fwd") if e.kind == "triton"}
    bwd = {e.name: e for e in trace.select("bwd") if e.kind == "triton"}
    assert list(fwd) == ["_scse_squeeze_kernel", "excite_fwd_block", "_scse_scale_kernel"]
    assert list(bwd) == [
        "_scse_squeeze_kernel",
        "excite_bwd_split",
        "excite_bwd_hidden",
        "excite_bwd_channels",
        "_scse_scale_kernel",
    ]
    squeeze, _, scale = fwd.values()
    # x read once by each pass, y written once; the partial sums, q and the gates next to nothing
    assert n <= squeeze.read <= 1.01 * n and squeeze.written <= 0.05 * n
    assert n <= scale.read <= 1.05 * n and scale.written == n
    forward = sum(e.requested for e in trace.select("fwd"))  # every kernel, the torch ops' included
    assert forward <= (3 + 5 / C) * n
    reduce_bwd, *_, dx = bwd.values()
    assert 2 * n <= reduce_bwd.read <= 2.05 * n and reduce_bwd.written <= 0.05 * n
    assert 2 * n <= dx.read <= 2.1 * n and n <= dx.written <= 1.05 * n
    backward = sum(e.requested for e in trace.select("bwd"))
    assert backward <= (5 + 12 / C) * n


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
    assert rows["fused"][1] <= 3.3  # two passes over x, y written, O(N / C) for q and the partial sums
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
