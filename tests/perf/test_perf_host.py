"""--host: each fused path runs with its launches stubbed out, and says which kernels it launched."""

import argparse

import pytest

from fused_se.perf import host


def test_each_path_runs_stubbed_and_is_timed():
    args = argparse.Namespace(
        host_paths=list(host.PATHS), host_modes=list(host.MODES), host_channels=32, number=1, repeat=1
    )
    rows = host.run_host(args)
    fused = {(r["mode"], r["path"]): r for r in rows if r["provider"] == "fused"}
    assert fused[("fwd", "three_launch fwd (launches stubbed)")]["launches"] == 3
    assert fused[("fwd", "one_launch fwd (launches stubbed)")]["launches"] == 1
    assert fused[("fwd", "spread fwd (launches stubbed)")]["launches"] == 1
    assert fused[("fwd", "stream fwd (launches stubbed)")]["launches"] == 1
    # the streamed backward adds up its chunks' weight-gradient partials in a launch of its own
    assert fused[("fwd+bwd", "stream fwd, stream bwd (launches stubbed)")]["launches"] == 3
    assert fused[("fwd+bwd", "three_launch fwd, three_launch bwd (launches stubbed)")]["launches"] == 8
    assert all(r["host_us"] > 0 for r in rows)
    assert {r["provider"] for r in rows} == {"eager", "fused"}


def test_stubs_are_undone():
    from fused_se.kernels import sync
    from fused_se.runtime import launch

    before = sync.INTERPRETED
    with host.stubbed_launches():
        assert launch.intercepting()
    assert not launch.intercepting() and sync.INTERPRETED == before
    with pytest.raises(KeyError):
        with host.forced_path("nothing", 2, 1):
            pass
