"""What only a GPU can show: a tensor past 2**31 elements, streams, a second device.

Skipped, with the reason, on machines without CUDA; benchmarks/gpu_check.sh runs them.
"""

import pytest
import torch
from se_testing import record_launches

import fused_se
from fused_se import reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_tensor_past_int32_elements():
    """About 2.2e9 bf16 elements, forward and backward, against the reference run one sample
    at a time (the reference's fp32 temporaries of the whole tensor would not fit)."""
    b, c, h, w = 4, 512, 1024, 1050
    assert b * c * h * w > 2**31
    torch.manual_seed(0)
    m = fused_se.FusedSEModule(c, 16).cuda()  # fp32 weights, bf16 activations
    x = torch.randn(b, c, h, w, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(b, c, h, w, device="cuda", dtype=torch.bfloat16)
    with record_launches() as launched:
        y = m(x)
        y.backward(g)
    assert launched == ["squeeze", "excite", "scale", "scale_bwd", "excite_bwd", "squeeze_scale_bwd"]
    w1, w2 = m.fc[0].weight, m.fc[2].weight
    dw1, dw2 = torch.zeros_like(w1), torch.zeros_like(w2)
    for i in range(b):
        xi = x[i : i + 1].detach().requires_grad_()
        w1i, w2i = w1.detach().requires_grad_(), w2.detach().requires_grad_()
        yi = reference.squeeze_excite(xi, w1i, None, w2i)
        yi.backward(g[i : i + 1])
        torch.testing.assert_close(y[i : i + 1], yi, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(x.grad[i : i + 1], xi.grad, rtol=2e-2, atol=2e-2)
        dw1 += w1i.grad
        dw2 += w2i.grad
        del xi, yi
    torch.testing.assert_close(w1.grad, dw1, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(w2.grad, dw2, rtol=1e-2, atol=1e-2)


@cuda
def test_kernels_run_on_the_current_stream():
    """With the default stream held up by a long sleep, work issued under a side stream must
    finish on that stream alone: it would hang behind the sleep (or read unfinished, NaN-filled
    buffers) had it gone to the default stream. The reference runs on leaves of its own: a graph
    through x built on the default stream and kept alive would bind x's gradient accumulation to
    that stream, and autograd would then hold the side stream's backward behind the sleep. The
    timed call is a steady-state replay: its buffers come from the allocator's cache."""
    m = fused_se.FusedSEModule(256, 16).cuda()
    x = torch.randn(8, 256, 14, 14, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    x_ref = x.detach().requires_grad_()
    w1, w2 = m.fc[0].weight.detach(), m.fc[2].weight.detach()
    y_ref = reference.squeeze_excite(x_ref, w1, None, w2)
    dx_ref = torch.autograd.grad(y_ref, x_ref, g)[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # outside the timed window: compile, record (runtime/replay.py), replay once
        for _ in range(2):
            torch.autograd.grad(m(x), x, g)
    side.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of spinning on the default stream
    with torch.cuda.stream(side):
        y = m(x)
        (dx,) = torch.autograd.grad(y, x, g)
        y_host, dx_host = y.to("cpu", non_blocking=False), dx.to("cpu", non_blocking=False)
    assert not torch.cuda.current_stream().query(), "the default stream was not busy: the test shows nothing"
    torch.testing.assert_close(y_host, y_ref.detach().cpu(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dx_host, dx_ref.cpu(), rtol=1e-4, atol=1e-5)
    torch.cuda.synchronize()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_a_device_that_is_not_current():
    torch.cuda.set_device(0)
    m = fused_se.FusedSEModule(64, 16).to("cuda:1")
    x = torch.randn(4, 64, 7, 7, device="cuda:1", requires_grad=True)
    y = m(x)
    y.sum().backward()
    x_ref = x.detach().requires_grad_()
    y_ref = reference.squeeze_excite(x_ref, m.fc[0].weight, None, m.fc[2].weight)
    y_ref.sum().backward()
    assert y.device == x.grad.device == torch.device("cuda:1")
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_peak_memory_of_a_training_step_is_at_most_eagers(layout):
    """Forward and backward of the fused block hold no temporary the size of x; eager's
    backward of x * s holds one (g * x) on top of y and dx."""
    from fused_se.bench import EagerSE, SEShape

    shape = SEShape(256, 56, 56, 16)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(32, 256, 56, 56, device="cuda", dtype=torch.bfloat16).to(memory_format=fmt)
    g = torch.randn_like(x)

    def peak(module):
        xg = x.detach().requires_grad_()
        module(xg).backward(g)  # warm-up: kernels compiled, .grad buffers allocated
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        module(xg).backward(g)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    eager = EagerSE(shape, conv=False).cuda().to(torch.bfloat16)
    fused = fused_se.FusedSEModule(256, rd_channels=16, bias=True).cuda().to(torch.bfloat16)
    assert peak(fused) <= peak(eager)


def _stream_case(tail: bool, c: int, h: int, r: int):
    """A block whose x is four times the card's L2 (so the streamed passes are chosen), with
    its inputs, and the paths it took."""
    from fused_se.kernels import heuristics as hz

    w = h
    sample = c * h * w * 2
    b = max(8, 4 * hz.l2_bytes(torch.device("cuda")) // sample)
    torch.manual_seed(0)
    x = torch.randn(b, c, h, w, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    w1 = (torch.randn(r, c, device="cuda") / c**0.5).requires_grad_()
    w2 = (torch.randn(c, r, device="cuda") / r**0.5).requires_grad_()
    residual = torch.randn_like(x).requires_grad_() if tail else None
    d = torch.rand(b, device="cuda") if tail else None

    def run():
        xg = x.detach().requires_grad_()
        with record_launches() as launched:
            kw = {"residual": residual, "out_act": "relu", "sample_scale": d} if tail else {}
            y = fused_se.squeeze_excite(xg, w1, None, w2, **kw)
            wrt = [xg, w1, w2] + ([residual] if tail else [])
            grads = torch.autograd.grad(y, wrt, g)
        return [y, *grads], launched

    return run


@cuda
@pytest.mark.parametrize("tail", [False, True], ids=["plain", "relu-tail"])
@pytest.mark.parametrize(("c", "h", "r"), [(256, 56, 16), (512, 28, 32)], ids=["stage1", "stage2"])
def test_streamed_passes_repeat_bit_for_bit_and_match_three_launches(c, h, r, tail, monkeypatch):
    """The streamed forward and backward wait on flags across programs: run twenty times, every
    output must be the same bits (a race would show as a difference), and match the
    three-launch path to bf16 rounding. SE-ResNet-50's first stage streams a sample at a time,
    its second in chunks of samples (4 forward, 2 backward; the third's chunks of 32 leave no two
    in the quarter of L2 a window's reads may take)."""

    run = _stream_case(tail, c, h, r)
    first, launched = run()
    # many chunks a batch: their weight-gradient partials are added up by one more launch
    assert launched == ["se_fwd_stream", "se_bwd_stream", "sum_partials"], launched
    for _ in range(20):
        again, _ = run()
        for a, b in zip(first, again, strict=False):
            assert torch.equal(a, b)
    monkeypatch.setenv("FUSED_SE_PATHS", "three_launch")
    three, launched = run()
    assert "se_fwd_stream" not in launched and "se_bwd_stream" not in launched
    for name, a, b in zip(["y", "dx", "dw1", "dw2", "dres"], first, three, strict=False):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)


@cuda
def test_streamed_passes_under_torch_compile(monkeypatch):
    """Inductor launches the streamed kernels itself (a while loop, atomics on the workspace):
    the compiled forward and backward give the eager op's bits for y and dx; the weight gradients
    agree to fp32 rounding, since Inductor compiles the `sum(0)` of their per-chunk partials into a
    reduction of its own, which adds them in another order."""
    from fused_se.kernels import heuristics as hz

    b, c, h, w, r = 16, 64, 14, 14, 4
    x = torch.randn(b, c, h, w, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    # through the environment: a closure over x would touch a real tensor while torch.compile traces
    monkeypatch.setenv("FUSED_SE_L2_BYTES", str(hz.STREAM_L2_FRACTION * 4 * x[0].numel() * 2))
    g = torch.randn_like(x)
    w1 = torch.randn(r, c, device="cuda", requires_grad=True)
    w2 = torch.randn(c, r, device="cuda", requires_grad=True)

    def run(fn):
        xg = x.detach().requires_grad_()
        y = fn(xg)
        return (y, *torch.autograd.grad(y, [xg, w1, w2], g))

    def se(x):
        return fused_se.squeeze_excite(x, w1, None, w2)

    with record_launches() as launched:
        eager = run(se)
    # many chunks a batch: their weight-gradient partials are added up by one more launch
    assert launched == ["se_fwd_stream", "se_bwd_stream", "sum_partials"], launched
    compiled = run(torch.compile(se, fullgraph=True))  # AOTAutograd compiles the backward too
    for name, a, b_ in zip(["y", "dx"], eager[:2], compiled[:2], strict=False):
        assert torch.equal(a, b_), name
    for name, a, b_ in zip(["dw1", "dw2"], eager[2:], compiled[2:], strict=False):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-5 * a.abs().max().item(), msg=name)


@cuda
@pytest.mark.parametrize("b", [1, 8])
@pytest.mark.parametrize(("c", "h", "r"), [(256, 56, 16), (2048, 7, 128)], ids=["stage1", "stage4"])
def test_spread_forward_repeats_bit_for_bit_and_matches_three_launches(c, h, r, b, spread, monkeypatch):
    """The spread forward (small batches) waits on counts and flags across programs: twenty
    runs give the same bits, and the three launches agree to bf16 rounding."""

    torch.manual_seed(0)
    x = torch.randn(b, c, h, h, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    w1 = torch.randn(r, c, device="cuda") / c**0.5
    w2 = torch.randn(c, r, device="cuda") / r**0.5
    with torch.no_grad(), record_launches() as launched:
        first = fused_se.squeeze_excite(x, w1, None, w2)
        for _ in range(20):
            assert torch.equal(fused_se.squeeze_excite(x, w1, None, w2), first)
    assert set(launched) == {"se_fwd_spread"}, launched
    monkeypatch.setenv("FUSED_SE_PATHS", "three_launch")
    with torch.no_grad(), record_launches() as launched:
        three = fused_se.squeeze_excite(x, w1, None, w2)
    assert launched == ["squeeze", "excite", "scale"], launched
    torch.testing.assert_close(first.float(), three.float(), rtol=2e-2, atol=2e-2)


def _count_jit_runs(monkeypatch) -> list:
    """Counts the launches that go through triton's JIT (binding every argument) instead of a
    compiled kernel that fused_se.runtime.launch.CachedLauncher has cached."""
    import triton

    calls = []
    run = triton.runtime.JITFunction.run

    def counting(self, *args, **kwargs):
        calls.append(self.__name__)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(triton.runtime.JITFunction, "run", counting)
    return calls


@cuda
def test_cached_launches_skip_the_jit_and_match_it(monkeypatch):
    """A block's second call launches every kernel from the cache of compiled kernels, without
    triton's JIT, and gives the bits of the first call (which went through the JIT)."""
    from fused_se.runtime import launch as common

    m = fused_se.FusedSEModule(256, 16).cuda()
    x = torch.randn(4, 256, 7, 7, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    common.clear_cache()
    jit_runs = _count_jit_runs(monkeypatch)
    first = [m(x), *torch.autograd.grad(m(x), [x, m.fc[0].weight], g)]
    assert jit_runs and common.cache_size() > 0
    jit_runs.clear()
    second = [m(x), *torch.autograd.grad(m(x), [x, m.fc[0].weight], g)]
    assert jit_runs == []
    for a, b in zip(first, second, strict=False):
        assert torch.equal(a, b)
    y_ref = reference.squeeze_excite(x, m.fc[0].weight, None, m.fc[2].weight)
    torch.testing.assert_close(second[0], y_ref, rtol=1e-5, atol=1e-5)


@cuda
def test_replayed_calls_launch_the_compiled_kernels_directly(monkeypatch):
    """A signature's second call (fused_se/runtime/replay.py) launches its compiled kernels without triton's
    JIT or the launch cache, plans nothing, and gives the first call's bits; under
    a launch hook the replay goes through the JIT, which calls the hook."""
    from triton import knobs

    from fused_se import kernels
    from fused_se.runtime import launch as common

    m = fused_se.FusedSEModule(256, 16).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 256, 14, 14, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn_like(x)

    def fwd_bwd():
        y = m(x)
        return [y, *torch.autograd.grad(y, [x, *m.parameters()], g)]

    first = fwd_bwd()
    binds, plans = [], []
    with monkeypatch.context() as mp:
        mp.setattr(common.CachedLauncher, "__call__", lambda self, *a, **k: binds.append(a))
        mp.setattr(kernels, "plan_forward", lambda *a: plans.append(a))
        mp.setattr(kernels, "plan_backward", lambda *a: plans.append(a))
        jit_runs = _count_jit_runs(mp)
        second = fwd_bwd()
        torch.cuda.synchronize()
    assert binds == [] and plans == [] and jit_runs == []
    for a, b in zip(first, second, strict=False):
        assert torch.equal(a, b)
    seen = []
    hook = lambda metadata: seen.append(metadata)  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        third = fwd_bwd()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) >= 4
    for a, b in zip(first, third, strict=False):
        assert torch.equal(a, b)


@cuda
def test_the_spread_forward_replays_directly_with_its_workspace_zeroed_again(monkeypatch):
    """The spread forward's replay zeroes its workspace in the scratch allocation on every call
    and launches the compiled kernel directly: calls 2 to 5 give the first call's bits, with
    triton's JIT and the planner not run."""
    from fused_se import kernels
    from fused_se.runtime import replay

    m = fused_se.FusedSEModule(512, 32).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 512, 28, 28, device="cuda").to(memory_format=torch.channels_last)
    with torch.no_grad(), kernels.force_paths("spread"):
        assert kernels.plan_forward(x, 32).path == "spread"
        first = m(x)
        plans = []
        with monkeypatch.context() as mp:
            mp.setattr(kernels, "plan_forward", lambda *a: plans.append(a))
            jit_runs = _count_jit_runs(mp)
            later = [m(x) for _ in range(4)]
            torch.cuda.synchronize()
    assert plans == [] and jit_runs == []
    programs = [p for table in replay._TABLES for p in table.values() if p is not replay.NOT_REPLAYABLE]
    assert any(p.zeroed_bytes for p in programs)
    for y in later:
        assert torch.equal(y, first)


@cuda
def test_the_streamed_passes_replay_directly(monkeypatch):
    """With the wait checks off (a GPU's default), the streamed forward and backward replay: the
    backward's weight-gradient partials are added up by a launch, not by torch ops, so calls 2 to
    5 give the first call's bits with the planner and triton's JIT not run."""
    from fused_se import kernels
    from fused_se.kernels import heuristics as hz

    monkeypatch.delenv("FUSED_SE_CHECK_WAITS", raising=False)
    # an L2 of four samples: a lag of 4 forward and 2 backward, below the batch of 6
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * 32 * 49 * 4)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.01)
    m = fused_se.FusedSEModule(32, rd_channels=8).cuda()
    x = torch.randn(6, 32, 7, 7, device="cuda", requires_grad=True)
    g = torch.randn_like(x)

    def step():
        y = m(x)
        return [y, *torch.autograd.grad(y, [x, *m.parameters()], g)]

    with kernels.force_paths("stream"):
        with record_launches() as launched:
            first = step()
        assert launched == ["se_fwd_stream", "se_bwd_stream", "sum_partials"], launched
        plans = []
        with monkeypatch.context() as mp:
            mp.setattr(kernels, "plan_forward", lambda *a: plans.append(a))
            mp.setattr(kernels, "plan_backward", lambda *a: plans.append(a))
            jit_runs = _count_jit_runs(mp)
            later = [step() for _ in range(4)]
            torch.cuda.synchronize()
    assert plans == [] and jit_runs == []
    for outs in later:
        for a, b in zip(outs, first, strict=False):
            assert torch.equal(a, b)


@cuda
def test_cached_launches_tell_misaligned_tensors_apart(monkeypatch):
    """x one element past a 16-byte boundary compiles (and caches) its own kernels: the aligned
    x's kernels assume aligned addresses and would load the wrong elements, or fault."""
    from fused_se.runtime import launch as common

    m = fused_se.FusedSEModule(64, 4).cuda().half()
    base = torch.randn(2 * 64 * 5 * 5 + 1, device="cuda", dtype=torch.float16)
    aligned = base[:-1].view(2, 64, 5, 5)
    shifted = base[1:].view(2, 64, 5, 5)
    assert aligned.data_ptr() % 16 == 0 and shifted.data_ptr() % 16 != 0
    common.clear_cache()
    with torch.no_grad():
        m(aligned)
        entries = common.cache_size()
        jit_runs = _count_jit_runs(monkeypatch)
        y = m(shifted)
    assert jit_runs and common.cache_size() > entries
    w1, w2 = m.fc[0].weight, m.fc[2].weight
    torch.testing.assert_close(y, reference.squeeze_excite(shifted, w1, None, w2), rtol=2e-3, atol=2e-3)


@cuda
def test_launch_hooks_take_the_jit(monkeypatch):
    """With a triton launch hook set (a profiler's), every launch goes through triton's JIT, which
    calls it."""
    from triton import knobs

    m = fused_se.FusedSEModule(128, 8).cuda()
    x = torch.randn(2, 128, 6, 6, device="cuda")
    with torch.no_grad():
        m(x)  # cached
        seen = []
        hook = lambda metadata: seen.append(metadata)  # noqa: E731
        knobs.runtime.launch_enter_hook.add(hook)
        try:
            m(x)
        finally:
            knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) >= 1
