"""The persistent kernels' waits give up instead of hanging, and the launch says so.

Programs run one after another in the interpreter, so there a wait that the order of the tickets
did not satisfy can never be satisfied: with polling turned on (as on a GPU) and a bad ticket order
fed in, the wait must give up after its bounded number of polls, the launch must run to its end,
and the launcher must raise a RuntimeError that names the kernel, the shape and the fallback.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from se_testing import planned

from fused_se import kernels
from fused_se.kernels import heuristics as hz
from fused_se.kernels import plan_backward, plan_forward, sync

pytestmark = pytest.mark.skipif(not kernels.INTERPRETED, reason="forces a never-satisfied wait through the interpreter")


@pytest.fixture
def streamed(monkeypatch):
    """x of 6 samples whose streamed passes apply (an L2 of 4 samples), polling as on a GPU, few polls."""
    x = torch.randn(6, 16, 3, 3)
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * x[0].numel() * 4)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 1.0)
    monkeypatch.setattr(sync, "SPIN_IN_INTERPRETER", True)
    monkeypatch.setattr(hz, "WAIT_MAX_POLLS", 16)
    return x


def _weights(c=16, r=2):
    return torch.randn(r, c), torch.randn(c, r)


def test_a_forward_wait_that_cannot_be_met_gives_up_and_raises(streamed):
    x, (w1, w2) = streamed, _weights()
    cfg = planned(plan_forward(x, 2), "stream")
    assert cfg is not None
    # LAG 0 with chunks of 2: sample 0's scale waits on a chunk whose sample 1 is squeezed later
    bad = dataclasses.replace(cfg, chunk=2, lag=0)
    with pytest.raises(RuntimeError) as err:
        kernels.se_fwd_stream(x, w1, None, w2, None, "relu", "sigmoid", None, None, False, bad)
    message = str(err.value)
    assert "se_fwd_stream" in message and "(6, 16, 3, 3)" in message
    assert "gave up after 16 polls" in message and "FUSED_SE_PATHS=three_launch" in message


def test_a_backward_wait_that_cannot_be_met_gives_up_and_raises(streamed):
    x, (w1, w2) = streamed, _weights()
    y, z, s, a = kernels.se_fwd_stream(
        x, w1, None, w2, None, "relu", "sigmoid", None, None, False, planned(plan_forward(x, 2), "stream")
    )
    cfg = planned(plan_backward(y, x, 2), "stream")
    assert cfg is not None
    bad = dataclasses.replace(cfg, chunk=2, lag=0)
    need = (True, False, True, False)
    with pytest.raises(RuntimeError, match=r"se_bwd_stream on x of shape \(6, 16, 3, 3\).*gave up after 16 polls"):
        kernels.se_bwd_stream(y, x, z, s, a, w1, None, w2, need, "relu", "sigmoid", None, None, False, bad)


def test_a_good_order_polls_without_giving_up(streamed):
    """The same launch with its planned order: every wait is met on its first poll."""
    x, (w1, w2) = streamed, _weights()
    cfg = planned(plan_forward(x, 2), "stream")
    y, *_ = kernels.se_fwd_stream(x, w1, None, w2, None, "relu", "sigmoid", None, None, False, cfg)
    s = torch.sigmoid(torch.relu(x.mean((2, 3)) @ w1.t()) @ w2.t())
    torch.testing.assert_close(y, x * s[:, :, None, None], rtol=1e-5, atol=1e-6)


def test_the_check_costs_no_sync_on_a_gpu_unless_asked(monkeypatch):
    """Off the interpreter the workspace is read only with FUSED_SE_CHECK_WAITS=1."""
    ws = sync.workspace(1, 1, torch.device("cpu"))
    ws[sync.FAILED_WAITS] = 3  # a launch whose waits gave up
    monkeypatch.setattr(sync, "INTERPRETED", False)
    monkeypatch.delenv(sync.CHECK_ENV, raising=False)
    sync.check_waits(ws, 0, 0, "se_fwd_stream", (1, 2, 3, 4))  # not read: no error, no sync
    monkeypatch.setenv(sync.CHECK_ENV, "1")
    with pytest.raises(RuntimeError, match="3 waits gave up"):
        sync.check_waits(ws, 0, 0, "se_fwd_stream", (1, 2, 3, 4))


# ---- a wait that gives up writes NaN, whether or not the launcher reads the count --------------


@pytest.fixture
def unchecked(monkeypatch):
    """The launchers do not read the failed waits, as on a GPU without FUSED_SE_CHECK_WAITS, and
    every buffer starts with plausible values (0.5) instead of the suite's NaN, as a reused
    allocation may: what a wait guarded must come out NaN all the same."""
    from fused_se.kernels import stream
    from fused_se.runtime import launch

    monkeypatch.setattr(stream, "check_waits", lambda *args: None)
    monkeypatch.setattr(launch, "POISON_OUTPUTS", False)
    made = launch._made

    def stale(out, zeroed=False):
        if not zeroed:
            out.fill_(0.5)
        return made(out, zeroed)

    monkeypatch.setattr(launch, "_made", stale)


def _reference_y(x, w1, w2):
    s = torch.sigmoid(torch.relu(x.mean((2, 3)) @ w1.t()) @ w2.t())
    return x * s[:, :, None, None]


def test_a_forward_wait_that_gives_up_writes_nan_where_it_would_have_written_y(streamed, unchecked):
    x, (w1, w2) = streamed, _weights()
    bad = dataclasses.replace(planned(plan_forward(x, 2), "stream"), chunk=2, lag=0)
    y, *_ = kernels.se_fwd_stream(x, w1, None, w2, None, "relu", "sigmoid", None, None, False, bad)
    # LAG 0: each chunk's first sample is scaled before its second is squeezed; the second's waits are met
    waited_in_vain = torch.tensor([b % 2 == 0 for b in range(x.shape[0])])
    assert torch.isnan(y[waited_in_vain]).all()
    torch.testing.assert_close(y[~waited_in_vain], _reference_y(x, w1, w2)[~waited_in_vain], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("relu_tail", [False, True], ids=["plain", "relu-tail"])
def test_a_backward_wait_that_gives_up_writes_nan_where_it_would_have_written_dx(streamed, unchecked, relu_tail):
    x, (w1, w2) = streamed, _weights()
    y, z, s, a = kernels.se_fwd_stream(
        x, w1, None, w2, None, "relu", "sigmoid", None, None, False, planned(plan_forward(x, 2), "stream")
    )
    relu_out = torch.relu(y) if relu_tail else None
    bad = dataclasses.replace(planned(plan_backward(y, x, 2), "stream"), chunk=2, lag=0)
    need = (True, False, True, False)
    g = torch.randn_like(x)
    dx, *_ = kernels.se_bwd_stream(g, x, z, s, a, w1, None, w2, need, "relu", "sigmoid", None, relu_out, False, bad)
    waited_in_vain = torch.tensor([b % 2 == 0 for b in range(x.shape[0])])
    assert torch.isnan(dx[waited_in_vain]).all()  # through the ReLU's mask too: NaN, never a plausible 0
    assert not torch.isnan(dx[~waited_in_vain]).any()
