"""The planner: the one place the MLP form's path is chosen, and the switches that restrict it."""

from __future__ import annotations

import pytest
import torch
from se_testing import FORWARD_KERNELS, record_launches

import fused_se
from fused_se.kernels import heuristics as hz
from fused_se.kernels import plan


def _forward_launches(x, r=2):
    with record_launches() as launched:
        fused_se.squeeze_excite(x, torch.randn(r, x.shape[1]), None, torch.randn(x.shape[1], r))
    return launched


@pytest.mark.parametrize(
    ("paths", "expect"),
    [
        ("auto", "one_launch"),
        ("", "one_launch"),
        ("three_launch", "three_launch"),
        ("spread", "spread"),
        (" Spread , stream ", "spread"),
        ("one_launch,spread", "one_launch"),
    ],
)
def test_fused_se_paths_restricts_the_forward(paths, expect, monkeypatch):
    monkeypatch.setenv(plan.PATHS_ENV, paths)
    x = torch.randn(2, 16, 3, 3)
    assert plan.enabled_paths() >= {"three_launch"}
    assert plan.plan_forward(x, 2).path == expect
    launches = {"one_launch": ["se_fwd_one_launch"], "spread": ["se_fwd_spread"], "three_launch": FORWARD_KERNELS}
    assert _forward_launches(x) == launches[expect]


def test_an_unknown_path_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(plan.PATHS_ENV, "three_launch,warp")
    with pytest.raises(ValueError, match="FUSED_SE_PATHS: unknown path 'warp'"):
        plan.plan_forward(torch.randn(2, 16, 3, 3), 2)
    with pytest.raises(ValueError, match="force_paths: unknown path 'fast'"), plan.force_paths("fast"):
        pass


def test_force_paths_wins_over_the_environment_and_nests(monkeypatch):
    monkeypatch.setenv(plan.PATHS_ENV, "auto")
    x = torch.randn(2, 16, 3, 3)
    with plan.force_paths("three_launch"):
        assert plan.plan_forward(x, 2) == plan.THREE_LAUNCH
        with plan.force_paths("spread"):
            assert plan.plan_forward(x, 2).path == "spread"
        assert plan.enabled_paths() == {"three_launch"}
    assert plan.plan_forward(x, 2).path == "one_launch"


def test_the_l2_override_moves_the_streamed_threshold(monkeypatch):
    """FUSED_SE_L2_BYTES sets the L2 the paths are planned for: x of 9 samples streams under an L2
    of four forward samples, and not under the default L2."""
    x = torch.randn(9, 32, 4, 4)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.1)
    assert plan.plan_forward(x, 2) == plan.THREE_LAUNCH
    monkeypatch.setenv(hz.L2_ENV, str(hz.STREAM_L2_FRACTION * 4 * x[0].numel() * 4))
    fwd = plan.plan_forward(x, 2)
    assert fwd.path == "stream" and fwd.config.lag == 4
    assert plan.plan_backward(x, x, 2).path == "stream"
    assert plan.plan_backward(x, x, 2, need_dx=False) == plan.THREE_LAUNCH  # weights only
    monkeypatch.setenv(hz.L2_ENV, "lots")
    with pytest.raises(ValueError, match="FUSED_SE_L2_BYTES must be a positive number of bytes"):
        plan.plan_forward(x, 2)


def test_auto_leaves_the_streamed_passes_out(monkeypatch):
    """Where the streamed passes apply, "auto" plans three launches; naming stream plans it."""
    x = torch.randn(9, 32, 4, 4)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.1)
    monkeypatch.setenv(hz.L2_ENV, str(hz.STREAM_L2_FRACTION * 4 * x[0].numel() * 4))
    monkeypatch.setenv(plan.PATHS_ENV, "auto")
    assert "stream" not in plan.enabled_paths()
    assert plan.plan_forward(x, 2) == plan.THREE_LAUNCH
    assert plan.plan_backward(x, x, 2) == plan.THREE_LAUNCH
    monkeypatch.setenv(plan.PATHS_ENV, "stream")
    assert plan.plan_forward(x, 2).path == "stream"
    assert plan.plan_backward(x, x, 2).path == "stream"


def test_the_other_forms_and_unflattenable_strides_take_three_launches(monkeypatch):
    monkeypatch.setenv(plan.PATHS_ENV, "auto")
    sliced = torch.randn(2, 16, 5, 6)[:, :, 1:4, 1:5]
    assert plan.plan_forward(sliced, 2) == plan.THREE_LAUNCH
    x = torch.randn(2, 16, 3, 3)
    with record_launches() as launched:
        fused_se.effective_squeeze_excite(x, torch.randn(16, 16))
        fused_se.efficient_channel_attention(x, torch.randn(3))
    assert launched == ["squeeze", "excite_fc", "scale", "squeeze", "excite_conv", "scale"]


@pytest.mark.parametrize(("hw", "layout"), [(3136, "nchw"), (784, "nchw"), (196, "nchw"), (784, "channels_last")])
def test_tickets_of_a_bench_shape_hold_a_full_tile(hw, layout):
    """At SE-ResNet-50's sizes a ticket takes STREAM_TILE elements (64 KB of bf16; 6 KB at 28 x 28
    and 14 x 14 in NCHW when a ticket was one channel block), whatever the layout."""
    c = 512
    sample = c * hw * 2
    cfg = hz.stream_config(1024, c, hw, 32, torch.bfloat16, layout == "channels_last", sample, 132, 64 * 4 * sample)
    assert cfg is not None
    elements = cfg.c_steps * cfg.block_c * min(cfg.hw_tile, hw)
    assert hz.STREAM_TILE * 3 // 4 <= elements <= hz.STREAM_TILE, (cfg, elements)


@pytest.mark.parametrize(
    "triton_version,numpy_version,interpreted,refused",
    [
        ("3.6.0", "2.4.0", True, True),
        ("3.6.0", "2.3.5", True, False),
        ("3.6.0", "2.4.0", False, False),  # on a GPU the interpreter is off: numpy is not its engine
        ("3.7.0", "2.4.1", True, False),
        ("3.8.0+git1234", "2.10.0rc1", True, False),
    ],
)
def test_the_interpreters_numpy_is_checked_against_its_triton(triton_version, numpy_version, interpreted, refused):
    from fused_se._requirements import check_interpreter_numpy

    if refused:
        with pytest.raises(ImportError, match=r"needs numpy < 2.4.*pip install 'numpy<2.4'"):
            check_interpreter_numpy(triton_version, numpy_version, interpreted)
    else:
        check_interpreter_numpy(triton_version, numpy_version, interpreted)
