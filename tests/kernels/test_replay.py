"""Replayed calls (fused_se/runtime/replay.py): a signature's second call redoes the first call's allocations
and launches without planning again, gives the same bits in new buffers, and a call the replay
cannot redo faithfully runs the body every time."""

from __future__ import annotations

import itertools
import os
from unittest import mock

import pytest
import torch
from se_testing import record_launches

import fused_se
from fused_se import kernels, ops
from fused_se.runtime import replay
from fused_se.runtime.launch import kernel_calls


@pytest.fixture
def plans(monkeypatch) -> list:
    """The forward and backward plans the ops make: a replay makes none."""
    made = []
    forward, backward = kernels.plan_forward, kernels.plan_backward

    def plan_forward(*args, **kwargs):
        made.append("forward")
        return forward(*args, **kwargs)

    def plan_backward(*args, **kwargs):
        made.append("backward")
        return backward(*args, **kwargs)

    monkeypatch.setattr(kernels, "plan_forward", plan_forward)
    monkeypatch.setattr(kernels, "plan_backward", plan_backward)
    return made


def _programs() -> list:
    return [p for table in replay._TABLES for p in table.values()]


def _fwd_bwd(m, x, g):
    y = m(x)
    return [y, *torch.autograd.grad(y, [x, *m.parameters()], g)]


def test_second_call_replays_the_first_and_gives_its_bits(plans, device):
    m = fused_se.FusedSEModule(24, 6).to(device)
    x = torch.randn(3, 24, 5, 6, device=device, requires_grad=True)
    g = torch.randn_like(x)
    with record_launches() as first_names, kernel_calls() as first_calls:
        first = _fwd_bwd(m, x, g)
    assert plans == ["forward", "backward"]
    progs = _programs()
    assert len(progs) == 2 and all(isinstance(p, replay.Program) for p in progs)
    plans.clear()
    with record_launches() as names, kernel_calls() as calls:
        second = _fwd_bwd(m, x, g)
    assert plans == []  # nothing planned: both bodies were replayed
    assert names == first_names  # what record_launches logs is the body's
    assert [(k, grid) for k, grid, _, _ in calls] == [(k, grid) for k, grid, _, _ in first_calls]
    for a, b in zip(first, second, strict=False):
        assert torch.equal(a, b)
    assert second[0].data_ptr() != first[0].data_ptr()  # a new output, not the first call's


def test_no_grad_calls_replay_the_body_too(plans, device):
    m = fused_se.FusedSEModule(16, 4).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 4, 4, device=device).to(memory_format=torch.channels_last)
    with torch.no_grad():
        y1 = m(x)
        y2 = m(x)
    assert plans == ["forward"]
    assert torch.equal(y1, y2) and y2.is_contiguous(memory_format=torch.channels_last)


def test_a_new_signature_is_recorded_anew(plans, device, monkeypatch):
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(2, 16, 4, 4, device=device)
    with torch.no_grad():
        m(x)
        m(x[:1])  # another shape
        m(x.to(memory_format=torch.channels_last))  # other strides
        m(torch.randn(2 * 16 * 16 + 1, device=device)[1:].view(2, 16, 4, 4))  # another alignment
        monkeypatch.setenv("FUSED_SE_PATHS", "three_launch")  # other paths allowed
        m(x)
        m(x)
    assert plans == ["forward"] * 5


def test_a_switch_set_after_replays_is_read_by_the_next_call(plans, device):
    """The switches are in every signature as they are set: a value set after a replay (the
    planner's refusal of an unknown path, the reference backend) is seen by the next call, with or
    without a gradient, and the replays resume once it is unset."""
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(2, 16, 4, 4, device=device, requires_grad=True)
    for _ in range(2):
        y = m(x)
        y.sum().backward()
    assert plans == ["forward", "backward"]
    with mock.patch.dict(os.environ, {"FUSED_SE_PATHS": "warp"}):
        for grad in (True, False):
            with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="FUSED_SE_PATHS: unknown path 'warp'"):
                m(x)
    with mock.patch.dict(os.environ, {"FUSED_SE_BACKEND": "reference"}):
        y_ref = m(x)
        assert y_ref.grad_fn.name() != y.grad_fn.name()  # the reference's autograd, not the fused Function
    torch.testing.assert_close(y_ref, y)
    del plans[:]
    y_again = m(x)
    assert y_again.grad_fn.name() == y.grad_fn.name()  # the fused Function again, not the reference
    y_again.sum().backward()
    assert plans == []  # and replayed, forward and backward


def test_heuristics_are_read_again_after_clear(plans, device):
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(2, 16, 4, 4, device=device)
    with torch.no_grad():
        m(x)
        replay.clear()
        m(x)
    assert plans == ["forward", "forward"]


def test_zeroed_gradients_of_an_empty_batch_are_not_replayed(plans, device):
    """An empty batch's weight gradients are zeroed by a torch op, not a launch: the body runs
    on every call, and every call's gradients are zeros (a replay would leave them NaN-poisoned)."""
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(0, 16, 4, 4, device=device, requires_grad=True)
    for _ in range(2):
        y = m(x)
        grads = torch.autograd.grad(y, list(m.parameters()), torch.ones_like(y))
        assert all(torch.equal(gr, torch.zeros_like(gr)) for gr in grads)
    assert plans.count("backward") == 2
    assert replay.NOT_REPLAYABLE in _programs()


def test_one_tensor_passed_twice_is_not_replayed(plans, device):
    """residual is x itself: a recording could not tell which launch argument was which."""
    w1, w2 = torch.randn(4, 16, device=device), torch.randn(16, 4, device=device)
    x = torch.randn(2, 16, 4, 4, device=device)
    other = torch.randn_like(x)
    with torch.no_grad():
        y1 = fused_se.squeeze_excite(x, w1, None, w2, residual=x)
        fused_se.squeeze_excite(x, w1, None, w2, residual=x)
        y2 = fused_se.squeeze_excite(x, w1, None, w2, residual=other)
    assert plans == ["forward"] * 3
    torch.testing.assert_close(y2 - other, y1 - x)  # the residual added is the one passed


def test_a_persistent_path_whose_wait_check_reads_runs_its_body_every_call(plans, device, spread):
    """In the interpreter the spread forward's wait check reads its workspace back after the
    launch, which a replay would not: the body runs every call."""
    m = fused_se.FusedSEModule(16, 2).to(device)
    x = torch.randn(8, 16, 3, 3, device=device)
    with torch.no_grad(), kernels.force_paths("spread"), record_launches() as names:
        m(x)
        m(x)
    assert names == ["se_fwd_spread"] * 2 and plans == ["forward"] * 2
    assert _programs() == [replay.NOT_REPLAYABLE]


def test_a_persistent_path_is_replayed_with_its_workspace_zeroed_again(plans, device, spread, monkeypatch):
    """Where the wait check reads nothing (a GPU's default), the spread forward is replayed: its
    workspace (launch.zeros) is zeroed again on every call, and the calls give the first's bits.
    Laid out for the direct path, the workspace comes first in the scratch, in the zeroed span."""
    from fused_se.kernels import spread as spread_module

    monkeypatch.setattr(spread_module, "check_waits", lambda *args: None)
    m = fused_se.FusedSEModule(16, 2).to(device)
    x = torch.randn(8, 16, 3, 3, device=device)
    with torch.no_grad(), kernels.force_paths("spread"), record_launches() as names:
        ys = [m(x) for _ in range(3)]
    assert names == ["se_fwd_spread"] * 3 and plans == ["forward"]
    (program,) = _programs()
    assert program is not replay.NOT_REPLAYABLE
    for y in ys[1:]:
        assert torch.equal(y, ys[0])
    zeroed = [j for j, alloc in enumerate(program.allocs) if alloc[4]]
    assert len(zeroed) == 1 and program.allocs[zeroed[0]][2] == torch.int32  # the workspace
    laid = replay.Program(
        program.allocs, program.launches, program.names, program.outputs, program.as_tuple, 0, program.first
    )
    assert laid.offsets[zeroed[0]] == 0
    (shape,) = [alloc[0] for alloc in program.allocs if alloc[4]]
    assert laid.zeroed_bytes >= shape[0] * 4 and laid.zeroed_bytes % replay.SCRATCH_ALIGN == 0
    assert all(o is None or o >= laid.zeroed_bytes for j, o in enumerate(laid.offsets) if j not in zeroed)


def test_the_streamed_passes_replay_with_their_partial_sums_launched(plans, device, monkeypatch):
    """Where the wait checks read nothing (a GPU's default), the streamed forward and backward
    are replayed: the backward's weight-gradient partials of several chunks are added up by a
    launch (sum_partials), not by torch ops, so a second call redoes the first's launches
    without planning and gives its bits."""
    from fused_se.kernels import heuristics as hz
    from fused_se.kernels import stream as stream_kernels

    monkeypatch.setattr(stream_kernels, "check_waits", lambda *args: None)
    for name, value in (("STREAM_BLOCK_TILE", 64), ("STREAM_TILE", 64), ("MAX_BLOCK_HW_STREAM", 32)):
        monkeypatch.setattr(hz, name, value)  # small tiles: several tickets a sample
    m = fused_se.FusedSEModule(24, rd_channels=6).to(device)
    x = torch.randn(8, 24, 4, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    # an L2 that holds four samples between a sample's two passes, chunks of one sample
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * x[0].numel() * 4)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 1.0)
    g = torch.randn_like(x)
    with kernels.force_paths("stream"), record_launches() as names:
        first = _fwd_bwd(m, x, g)
        second = _fwd_bwd(m, x, g)
    assert names == ["se_fwd_stream", "se_bwd_stream", "sum_partials"] * 2
    assert plans == ["forward", "backward"]  # the second call planned nothing
    progs = _programs()
    assert len(progs) == 2 and replay.NOT_REPLAYABLE not in progs
    for a, b in zip(first, second, strict=False):
        assert torch.equal(a, b)


def test_replay_can_be_turned_off(plans, device, monkeypatch):
    monkeypatch.setattr(replay, "ENABLED", False)
    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(2, 16, 4, 4, device=device)
    with torch.no_grad():
        m(x)
        m(x)
    assert plans == ["forward"] * 2 and _programs() == []


def test_the_custom_op_path_is_never_replayed(plans, device):
    """Under a dispatch or function mode (as under tracing) the custom op runs its own body."""
    from torch.overrides import TorchFunctionMode

    class PassThrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    m = fused_se.FusedSEModule(16, 4).to(device)
    x = torch.randn(2, 16, 4, 4, device=device)
    with torch.no_grad(), PassThrough():
        assert not ops.plain_eager((x,))
        m(x)
        m(x)
    assert plans == ["forward"] * 2 and _programs() == []


def test_scratch_is_carved_from_one_buffer_on_the_direct_path(device):
    """A program's buffers that the body does not return get byte offsets into one allocation,
    aligned and apart; the returned ones stay tensors. (Offsets are for the direct CUDA path;
    in the interpreter every buffer is a tensor, so there they are laid out as if on a device.)"""
    m = fused_se.FusedSEModule(24, 6).to(device)
    x = torch.randn(3, 24, 5, 6, device=device, requires_grad=True)
    y = m(x)
    torch.autograd.grad(y, [x, *m.parameters()], torch.ones_like(y))
    (bwd,) = [p for p in _programs() if "excite_bwd" in p.names]
    if bwd.device is None:  # the interpreter: every buffer is a tensor, and the layout is made here
        assert bwd.offsets == [None] * len(bwd.allocs)
    laid = replay.Program(bwd.allocs, bwd.launches, bwd.names, bwd.outputs, bwd.as_tuple, 0, bwd.first)
    returned = {i - bwd.first for i in bwd.outputs if isinstance(i, int)}
    spans = []
    for j, ((shape, stride, dtype, *_), offset) in enumerate(zip(laid.allocs, laid.offsets, strict=False)):
        if j in returned:
            assert offset is None
            continue
        assert offset is not None and offset % replay.SCRATCH_ALIGN == 0
        nbytes = (
            0 if 0 in shape else (1 + sum((n - 1) * st for n, st in zip(shape, stride, strict=False))) * dtype.itemsize
        )
        spans.append((offset, offset + nbytes))
    assert len(spans) >= 5  # the partial sums of g * x, dz, and the excitation backward's four
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert laid.scratch_bytes >= spans[-1][1]


def test_residual_tail_and_lengths_replay_with_their_extra_outputs(plans, device):
    """The ReLU tail's backward also returns the shortcut's gradient, the lengths op reads a
    (B,) tensor of counts: both replay and give the first call's bits."""
    w1, w2 = torch.randn(4, 16, device=device), torch.randn(16, 4, device=device)
    x = torch.randn(2, 16, 3, 5, device=device, requires_grad=True)
    res = torch.randn_like(x, requires_grad=True)
    seq = torch.randn(3, 16, 9, device=device, requires_grad=True)
    lengths = torch.tensor([9, 4, 1], device=device)

    def tail():
        y = fused_se.squeeze_excite(x, w1, None, w2, residual=res, out_act="relu")
        return [y, *torch.autograd.grad(y, [x, res], torch.ones_like(y))]

    def counted():
        y = fused_se.squeeze_excite(seq, w1, None, w2, lengths=lengths)
        return [y, *torch.autograd.grad(y, [seq], torch.ones_like(y))]

    for call, planned in ((tail, ["forward", "backward"]), (counted, [])):  # the lengths op has one path
        plans.clear()
        first, second = call(), call()
        assert plans == planned  # from the first call only
        for a, b in zip(first, second, strict=False):
            assert torch.equal(a, b)
    assert sum(isinstance(p, replay.Program) for p in _programs()) == 4  # both ops' forward and backward


def test_the_backward_replays_under_a_key_derived_from_its_forwards(plans, device):
    """The plain backward's key is the forward's Program and the gradient's strides and alignment:
    its saved inputs and the forward's outputs are what the forward's key fixed, and autograd hands
    the gradient in y's shape, dtype and device (a float64 one cast to y's float32: the same key).
    A gradient in another layout is a new signature, recorded anew, and gives the same values."""
    m = fused_se.FusedSEModule(24, 6).to(device)
    x = torch.randn(3, 24, 5, 6, device=device, requires_grad=True)
    g = torch.randn_like(x)
    first = _fwd_bwd(m, x, g)
    second = _fwd_bwd(m, x, g)
    assert plans == ["forward", "backward"]
    (fwd_program,) = ops.TWO_FC.plain_forward.table.values()
    (bwd_key,) = ops.TWO_FC.plain_backward.table
    assert bwd_key[0] is fwd_program and bwd_key[1] == g.stride()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(first, _fwd_bwd(m, x, g.double()), strict=True):
        assert torch.equal(a, b)
    assert plans == ["forward", "backward"]
    third = _fwd_bwd(m, x, g.to(memory_format=torch.channels_last))
    assert plans == ["forward", "backward", "backward"] and len(ops.TWO_FC.plain_backward.table) == 2
    for a, b in zip(first, third, strict=True):
        torch.testing.assert_close(a, b)


def test_a_backward_whose_forward_ran_its_body_takes_a_whole_signature(plans, device, spread):
    """In the interpreter the spread forward runs its body every call (its wait check reads): no
    key fixes what the backward is given, which then takes the signature of all its arguments."""
    m = fused_se.FusedSEModule(16, 2).to(device)
    x = torch.randn(8, 16, 3, 3, device=device, requires_grad=True)
    with kernels.force_paths("spread"):
        first = _fwd_bwd(m, x, torch.ones_like(x))
        second = _fwd_bwd(m, x, torch.ones_like(x))
    assert list(ops.TWO_FC.plain_forward.table.values()) == [replay.NOT_REPLAYABLE]
    (bwd_key,) = ops.TWO_FC.plain_backward.table
    assert len(bwd_key) > 2 and plans.count("backward") == 1
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_empty_outputs_are_made_once_per_program(device):
    """A gradient not asked for comes back as an empty tensor: a program makes it once, not per call."""
    m = fused_se.FusedSEModule(24, 6).to(device)
    x = torch.randn(3, 24, 5, 6, device=device, requires_grad=True)
    for _ in range(2):
        _fwd_bwd(m, x, torch.ones_like(x))
    (bwd,) = ops.TWO_FC.plain_backward.table.values()
    empties = [(j, f) for j, f in enumerate(bwd.fixed) if f is not None]
    assert empties and all(f.numel() == 0 and 0 in bwd.allocs[j][0] for j, f in empties)
    assert all(f is None for j, f in enumerate(bwd.fixed) if 0 not in bwd.allocs[j][0])


_DIRECT_PARAMS = """
import torch, fused_se
from fused_se import kernels
from fused_se.perf.host import stubbed_launches
from fused_se.runtime import launch
from fused_se.runtime.launch import INTERPRETED, kernel_calls

assert not INTERPRETED
seen = []
launch._StubCompiled.run = lambda self, *args: seen.append((self.name, args[:3], args[9:]))


def expected(calls):
    out = []
    for kernel, grid, args, kwargs in calls:
        tail = [kwargs[n] if n in kwargs else d for n, d in launch.param_tail(kernel, len(args))]
        out.append((kernel.__name__, (*grid, 1, 1)[:3], (*args, *tail)))
    return out


def check(first, replayed, as_replayed):
    # as_replayed: each tensor of the recording call -> what the replay passed in its place (kept
    # across the forward's and the backward's check: z and s go from one to the other)
    assert [(n, g) for n, g, _ in first] == [(n, g) for n, g, _ in replayed], (first, replayed)
    here = {}
    for (_, _, params), (_, _, again) in zip(first, replayed, strict=True):
        assert len(params) == len(again)
        for p, q in zip(params, again, strict=True):
            if not isinstance(p, torch.Tensor):
                assert type(p) is type(q) and p == q, (p, q)
                continue
            if isinstance(q, torch.Tensor):  # an output: a tensor like the recording's
                assert (q.shape, q.stride(), q.dtype) == (p.shape, p.stride(), p.dtype)
            else:  # scratch: an address
                assert type(q) is int and q % 16 == 0
            if id(p) in as_replayed:
                assert as_replayed[id(p)] is q or as_replayed[id(p)] == q
            as_replayed[id(p)] = here[id(p)] = q
    # distinct buffers stay distinct within a call (the backward's scratch may reuse the forward's)
    ids = [id(q) if isinstance(q, torch.Tensor) else q for q in here.values()]
    assert len(set(ids)) == len(ids), here


def run(make, x, paths=None):
    torch.manual_seed(0)
    m = make()
    xg = x.detach().requires_grad_(True)
    params = list(m.parameters())
    with stubbed_launches(), kernels.force_paths(*(paths or ())):
        with kernel_calls() as fwd_calls:
            y = m(xg)
        with kernel_calls() as bwd_calls:
            torch.autograd.grad(y, [xg, *params], torch.ones_like(x))
        first_fwd, first_bwd = expected(fwd_calls), expected(bwd_calls)
        seen.clear()
        y = m(xg)
        replayed_fwd = list(seen)
        seen.clear()
        torch.autograd.grad(y, [xg, *params], torch.ones_like(x))
        as_replayed = {}
        check(first_fwd, replayed_fwd, as_replayed)
        check(first_bwd, list(seen), as_replayed)
    return len(first_fwd) + len(first_bwd)


x = torch.randn(2, 32, 4, 4)
n = run(lambda: fused_se.FusedSEModule(32, 4), x)
n += run(lambda: fused_se.FusedEcaModule(3), x)
n += run(lambda: fused_se.FusedEcaModule(3, circular=True, bias=True), x.to(memory_format=torch.channels_last))
n += run(lambda: fused_se.FusedSEModule(32, 4), x, ("spread",))
print("ok", n)
"""


def test_a_direct_replay_passes_each_launch_the_parameters_its_recording_did():
    """The direct path (as on a GPU: here through the stubs' stand-ins, which log what they are
    given) hands every compiled kernel the recorded call's grid and parameters: the same values
    where they were not tensors, a new buffer like the recorded one where a tensor was returned,
    an aligned scratch address where it was not, and one value for one buffer across launches."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _DIRECT_PARAMS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
