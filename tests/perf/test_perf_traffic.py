"""Bytes counted through the Triton interpreter against each path's documented budget, the
streamed paths' modeled DRAM bytes, and eager PyTorch's count against a hand count.

N = bytes of x. The budgets (docs/DESIGN.md): squeeze reads x (N); scale reads x, writes y (2N);
backward: the sum of dy * x reads both (2N), the dx pass reads dy and writes dx (2N); the
excitations move O(B*C) and the weights, tiny next to N."""

import pytest
import torch

from fused_se.bench import SEShape
from fused_se.kernels import common as kernels_common
from fused_se.perf import traffic
from fused_se.perf.cards import CARDS
from fused_se.perf.l2 import replay
from fused_se.perf.trace import Tracer
from fused_se.runtime import launch

pytestmark = pytest.mark.skipif(not kernels_common.INTERPRETED, reason="counts bytes through the Triton interpreter")

SHAPE = SEShape(64, 14, 14, 4)
BATCH = 4
L2 = 40 * 2**20  # the planner's default
SMS = 2  # the interpreter's SM count: no HW split of the squeeze


@pytest.fixture(autouse=True)
def _no_poison(monkeypatch):
    # NaN-filling the outputs would add a fill kernel per buffer to the count
    monkeypatch.setattr(launch, "POISON_OUTPUTS", False)


def _trace(provider, layout="nchw", batch=BATCH, shape=SHAPE, dtype=torch.float32, l2=L2):
    with traffic.planned_for(l2, SMS):
        return traffic.trace_call(provider, shape, batch, layout, dtype)


def _triton(trace, phase):
    return {e.name: e for e in trace.select(phase) if e.kind == "triton"}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_three_launch_passes_move_their_budget(layout):
    """NCHW at 14 x 14 takes the flat passes, whose scale reads s once per element (from L1 on a
    GPU: (B, C) values, next to nothing from DRAM) where the tiles read it once per tile."""
    trace, n = _trace("fused-3pass", layout)
    fwd, bwd = _triton(trace, "fwd"), _triton(trace, "bwd")
    flat = layout == "nchw"
    squeeze_k, scale_k = ("hw_sum_flat_kernel", "scale_flat_kernel") if flat else ("_hw_sum_kernel", "_scale_kernel")
    assert list(fwd) == [squeeze_k, "excite_fwd_block", scale_k]
    excite_bwd = ["excite_bwd_split", "excite_bwd_hidden", "excite_bwd_channels"]
    assert list(bwd) == [squeeze_k, *excite_bwd, scale_k]
    squeeze, excite, scale = fwd.values()
    s_reads = n if flat else 0  # fp32 x: an fp32 s per element is N more
    assert squeeze.read == pytest.approx(n, rel=0.01) and squeeze.written < 0.02 * n
    assert scale.read == pytest.approx(n + s_reads, rel=0.05) and scale.written == n
    assert replay([scale.accesses], L2).dram_bytes == pytest.approx(2 * n, rel=0.05)  # x read, y written
    assert excite.requested < 0.1 * n
    sum_gx, *excitation, dx = bwd.values()
    assert sum_gx.read == pytest.approx(2 * n, rel=0.01) and sum_gx.written < 0.02 * n
    assert dx.read == pytest.approx(n + 2 * s_reads, rel=0.05) and dx.written == n  # s and dz per element
    assert replay([dx.accesses], L2).dram_bytes == pytest.approx(2 * n, rel=0.05)
    assert sum(ev.requested for ev in excitation) < 0.15 * n


def test_one_launch_forward_requests_x_twice_and_y_once(one_launch):
    trace, n = _trace("fused")
    (ev,) = _triton(trace, "fwd").values()
    assert ev.name == "_se_fwd_one_launch_kernel"
    assert ev.written == pytest.approx(n, rel=0.02)
    assert 2 * n <= ev.read <= 2.1 * n
    # within L2 the re-read is served by it: the floor, 2N
    assert replay([ev.accesses], CARDS["h100"].l2_bytes).dram_bytes == pytest.approx(2 * n, rel=0.02)


def test_spread_forward_requests_x_twice_and_y_once(spread):
    trace, n = _trace("fused")
    (ev,) = _triton(trace, "fwd").values()
    assert ev.name == "_se_fwd_spread_kernel"
    assert ev.written == pytest.approx(n, rel=0.05)
    assert 2 * n <= ev.read <= 2.3 * n  # each squeeze tile reads its block of W1 too


def _stream_case(layout, model_l2_factor):
    """B = 24 samples, the planner's L2 sixteen (x 1.5 times past it): the streamed passes run,
    LAG 4 forward and 2 backward (the first passes' reads of a window take a quarter of L2). The
    model's L2 is model_l2_factor times the planner's."""
    sample = SHAPE.c * SHAPE.h * SHAPE.w * 4
    trace, n = _trace("fused", layout, batch=24, l2=16 * sample)
    assert [e.name for e in trace.select("fwd") if e.kind == "triton"] == ["_se_fwd_stream_kernel"]
    # the backward's second launch adds up the chunks' weight-gradient partials
    assert [e.name for e in trace.select("bwd") if e.kind == "triton"] == [
        "_se_bwd_stream_kernel",
        "_sum_partials_kernel",
    ]
    out = {}
    for phase in ("fwd", "bwd"):
        kernels = [e for e in trace.select(phase) if e.kind == "triton"]
        dram = replay([e.accesses for e in kernels], model_l2_factor * 16 * sample).dram_bytes
        out[phase] = (sum(e.requested for e in kernels) / n, dram / n)
    return out


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_streamed_passes_at_their_floor(layout):
    """Requested: x twice and y (3N) forward; dy twice, x and dx (4N) backward, and the weight
    gradients' partials read again by the launch that adds them up. Modeled DRAM with the L2 the
    paths were planned for: the 2N / 3N floor (measured 2.02N and 3.11N, 3.07N without the
    partials' second read), the window between a sample's two passes leaving room in L2 for the
    outputs written in it (with half of L2 for the first passes' reads, it was 2.86N and 3.83N);
    with twice that L2, the same."""
    same = _stream_case(layout, 1)
    req_f, dram_f = same["fwd"]
    req_b, dram_b = same["bwd"]
    assert 3.0 <= req_f <= 3.1 and 4.0 <= req_b <= 4.25
    assert dram_f <= 2.1 and dram_b <= 3.15
    roomy = _stream_case(layout, 2)
    assert roomy["fwd"][1] == pytest.approx(2.0, abs=0.05)
    assert roomy["bwd"][1] == pytest.approx(3.0, abs=0.1)


def test_three_launches_past_l2_miss_on_the_second_read():
    sample = SHAPE.c * SHAPE.h * SHAPE.w * 4
    trace, n = _trace("fused-3pass", batch=12, l2=8 * sample)
    fwd = [e.accesses for e in trace.select("fwd")]
    assert replay(fwd, 8 * sample).dram_bytes / n == pytest.approx(3.0, abs=0.05)
    assert replay(fwd, 64 * sample).dram_bytes / n == pytest.approx(2.0, abs=0.05)


def test_eager_classic_semodule_matches_a_hand_count():
    """The classic SEModule (AdaptiveAvgPool2d, Linear without bias, ReLU, Linear, Sigmoid,
    x * s) in fp32: each aten op reads its inputs and writes its outputs."""
    shape = SEShape(32, 8, 8, 2)
    b, c, r = 2, shape.c, shape.hidden
    trace, n = _trace("classic", batch=b, shape=shape)
    f = 4  # fp32
    bc, br, rc = b * c * f, b * r * f, r * c * f
    forward = {
        "mean": n + bc,  # pool: read x, write z
        "mm": (bc + rc + br) + (br + rc + bc),  # z W1^T, h W2^T
        "relu_": 2 * br,  # in place: read and write h
        "sigmoid": 2 * bc,
        "mul": 2 * n + bc,  # x * s: read x and s, write y
    }
    backward = {
        "mul": (n + bc + n) + (2 * n + n),  # dy * s; dy * x
        "sum": n + bc,  # ds = sum over H, W of dy * x
        "sigmoid_backward": 3 * bc,
        "mm": 2 * (bc + br + rc) + 2 * (br + bc + rc),  # dW2, dh; dW1, dz
        "threshold_backward": 3 * br,
        "div": bc + n,  # the pool's backward: dz / HW expanded to x's size
        "add": 3 * n,  # the two parts of dx
    }
    for phase, hand in (("fwd", forward), ("bwd", backward)):
        counted: dict[str, int] = {}
        for e in trace.select(phase):
            assert e.kind == "aten"
            counted[e.name.removeprefix("aten.")] = counted.get(e.name.removeprefix("aten."), 0) + e.requested
        assert counted == hand, phase
    assert len(trace.select("fwd")) == 6 and len(trace.select("bwd")) == 11


def test_rows_model_time_from_dram_and_launches():
    c = CARDS["h100"]
    trace, n = _trace("fused-3pass")
    row = traffic.summarize(trace.select("fwd"), L2, c, n, "fwd")
    assert row["launches"] == 3
    assert row["minimal_bytes"] == 2 * n
    assert row["model_time_us"] == pytest.approx(row["dram_bytes"] / c.dram_bytes_per_s * 1e6 + 3 * c.launch_us)
    assert traffic.path_name(trace.select("fwd"), "fwd") == "triton three_launch"


def test_tracer_refuses_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(kernels_common, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        Tracer()


def test_a_scaled_run_takes_the_modeled_batchs_paths_and_time(one_launch):
    """A preset row run at batch 1 for batch 16: the fused kernels of batch 16 (three launches; at
    batch 1 the planner would take one launch), and the time of 16 times the bytes."""
    import argparse

    c = CARDS["h100"]
    args = argparse.Namespace(dtype="fp32", modes=["fwd", "fwd+bwd"])
    task = (SHAPE, 1, 16, 16.0, "nchw", "fused", args, c, c.l2_bytes)
    with traffic.planned_for(c.l2_bytes // 16, c.sms):
        assert traffic.full_size_paths("fused", SHAPE, 1, "nchw", torch.float32)[0] == "one_launch"
    fwd, both = traffic._rows_for(task)
    assert fwd["path"] == fwd["path_at_full_batch"] == "triton three_launch"
    assert both["path"] == "triton three_launch" and both["launches"] == 8
    assert fwd["launches"] == 3 and fwd["kernels"].split()[1] == "excite_fwd_block"
    assert fwd["l2_bytes"] == c.l2_bytes // 16
    dram_full = fwd["dram_bytes"] * 16
    assert fwd["model_time_us"] == pytest.approx(dram_full / c.dram_bytes_per_s * 1e6 + 3 * c.launch_us)
