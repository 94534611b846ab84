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
        assert launch.stubbing()
    assert not launch.stubbing() and sync.INTERPRETED == before
    with pytest.raises(KeyError):
        with host.forced_path("nothing", 2, 1):
            pass


def test_a_models_se_blocks_are_timed_against_what_convert_puts_in_their_place(monkeypatch):
    """--host --model: a row per SE block class (eager against its fused replacement, launches stubbed)
    and the step's row, which counts every SE block of the model."""
    pytest.importorskip("timm")
    import timm

    import fused_se

    stubbed = []
    real = host.stubbed_launches

    def recording():
        stubbed.append(True)
        return real()

    monkeypatch.setattr(host, "stubbed_launches", recording)
    rows = host.model_rows("seresnet18", number=1, repeat=1)
    blocks, step = rows[:-1], rows[-1]
    assert [(r["block"], r["fused"], r["shape"]) for r in blocks] == [("SEModule", "FusedConv2dSEModule", "64x1x1")]
    converted = fused_se.convert(timm.create_model("seresnet18", pretrained=False))
    count = sum(isinstance(m, fused_se.FusedSEModule) for m in converted.modules())
    assert blocks[0]["blocks"] == step["blocks"] == count == 8
    assert step["eager_us"] == 8 * blocks[0]["eager_us"] and step["fused_us"] == 8 * blocks[0]["fused_us"]
    assert step["ratio"] == pytest.approx(blocks[0]["ratio"])  # one class: the step's ratio is its
    assert stubbed == [True]  # the fused block ran with its launches stubbed
    assert all(len(line) <= 100 for line in host.format_models(rows).splitlines())


def test_alternating_rounds_time_every_call_in_turn():
    """--host --model times the eager and the fused block in alternating rounds, so that a change in
    the machine's speed during the run reaches both."""
    order = []
    rounds = host.alternating_rounds_us([lambda: order.append("a"), lambda: order.append("b")], number=2, repeat=3)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3  # a warm-up call each, then rounds of `number` calls
    assert len(rounds) == 3 and all(len(r) == 2 and min(r) > 0 for r in rounds)


_STUBBED_REPLAY = """
import torch, fused_se
from fused_se import ops
from fused_se.perf.host import stubbed_launches
from fused_se.runtime import replay
from fused_se.runtime.launch import INTERPRETED, kernel_calls, stubbing

assert not INTERPRETED  # triton.jit's kernels, whose parameter lists a direct replay reads
m = fused_se.FusedSEModule(32, 4)
x = torch.randn(2, 32, 4, 4, requires_grad=True)
logs = []
with stubbed_launches() as names:
    for _ in range(3):
        torch.autograd.grad(m(x), [x, *m.parameters()], torch.ones_like(x))
        logs.append(list(names))
        names.clear()
programs = [p for t in (ops.TWO_FC.plain_forward.table, ops.TWO_FC.plain_backward.table) for p in t.values()]
assert len(programs) == 2 and all(p.device == replay.STUB_DEVICE for p in programs), programs
assert logs[0] == logs[1] == logs[2] and len(logs[0]) >= 4, logs  # every launch logged, replays too
assert all(k[2] is True for k in ops.TWO_FC.plain_forward.table)  # stubbing is part of the signature
assert not stubbing()
print("ok")
"""


def test_stubbed_replays_call_the_stand_ins_as_compiled_kernels():
    """Without the interpreter (as --host runs), a stubbed call's replays go the direct path, as
    on a GPU: the programs' device is the stub's, every launch is logged on every call, and a
    program recorded stubbed is never replayed unstubbed (its signature says so)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _STUBBED_REPLAY], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
