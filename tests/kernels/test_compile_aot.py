"""Every kernel variant the op launches compiles for real GPUs, on a machine without one.

The interpreter does not check what only the GPU compiler does (tl.dot's minimum sizes, the
dtypes tl.dot accepts, register allocation by ptxas), so this test runs the fused forward and
backward over dtypes, layouts, biases, split and gradient patterns with the launches recorded
instead of run, and compiles each distinct variant ahead of time to a cubin for sm_80 and
sm_90 with Triton's bundled ptxas, specialised as the JIT specialises a launch with those
arguments (fused_se.perf.kernel_report.jit_compile_args: pointers and integers divisible by 16
marked so, integers equal to 1 made constants), so that register counts, spills and vector
widths are the ones the GPU gets. It runs in a subprocess, since the kernels must be plain
JIT functions, not the interpreter's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import ExitStack

import pytest

TARGETS = ["80", "90"]


# the process's launches stay intercepted once recording starts (held here: a dropped stack would end it)
_FOR_GOOD = ExitStack()


def _can_compile_for_gpu() -> bool:
    """The nvidia backend with its ptxas is part of every Linux x86-64 triton wheel."""
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _can_compile_for_gpu(), reason="this triton has no nvidia backend to compile with")
def test_kernels_compile_for_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # nothing runs in the child (launches are recorded), so no persistent kernel fills its workspace
    env.pop("FUSED_SE_CHECK_WAITS", None)
    # One process per target, side by side: compiling is CPU-bound and single-threaded.
    procs = {
        arch: subprocess.Popen(
            [sys.executable, __file__, arch],
            env=env,
            cwd=os.path.dirname(__file__),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for arch in TARGETS
    }
    for arch, proc in procs.items():
        out, _ = proc.communicate(timeout=480)
        assert proc.returncode == 0, f"sm_{arch}:\n{out}"
        match = re.search(r"compiled (\d+) kernel variants", out)
        assert match and int(match.group(1)) >= 150, f"sm_{arch}: too few variants recorded:\n{out}"


# ---- the subprocess ----------------------------------------------------------------------------


def _record_launches():
    """Binds every launch to a recorder for the rest of the process; returns the list of launches."""
    from fused_se.runtime.launch import intercepted

    launches = []

    class _Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, num_warps=4, **constexprs):
                launches.append((self.kernel, args, constexprs, num_warps))

            return launch

    _FOR_GOOD.enter_context(intercepted(lambda kernel, grid, inner: _Recorder(kernel)[grid]))  # never left
    # The ops take the kernels' path on CPU tensors only with the interpreter on: claim it, since
    # nothing runs here (without this the ops would run their torch-ops kernel and record nothing).
    from fused_se import _dispatch

    _dispatch.interpreter_enabled = lambda: True
    return launches


def _exercise(launches):
    """Runs forward and backward over the cases that pick different kernel variants."""
    import torch

    from fused_se import ops
    from fused_se.kernels import heuristics as hz

    # The one-launch and spread forwards are exercised on their own cases below; off for the
    # three-launch ones.
    os.environ["FUSED_SE_PATHS"] = "three_launch,stream"

    def backward(op, x, y, z, s, a, weights, flags, needs):
        for need in needs:
            op(y, x, z, s, a, *weights, *flags, *need)

    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    cases = []
    for dtype in dtypes:
        for shape in ((1, 16, 40, 40), (3, 65, 7, 7), (300, 24, 5, 13)):
            for layout in ("nchw", "channels_last"):
                cases.append((dtype, shape, layout, True, "relu", "sigmoid"))
        cases.append((dtype, (3, 512, 7, 7), "nchw", False, "relu", "sigmoid"))  # W1 over the recompute threshold
        for act, gate in (("silu", "sigmoid"), ("relu", "hard_sigmoid"), ("silu", "hard_sigmoid")):
            cases.append((dtype, (3, 65, 7, 7), "nchw", True, act, gate))
    # MobileNetV3-Large's widest hidden layer (960 -> 240): BLOCK_R = 256.
    cases.append((torch.bfloat16, (3, 960, 7, 7), "channels_last", True, "relu", "hard_sigmoid"))
    hidden = {512: 128, 960: 240}
    for dtype, (b, c, h, w), layout, bias, act, gate in cases:
        r = hidden.get(c, max(1, c // 16))
        x = torch.randn(b, c, h, w, dtype=dtype)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        w1, w2 = torch.randn(r, c), torch.randn(c, r)
        b1, b2 = (torch.randn(r), torch.randn(c)) if bias else (None, None)
        y, z, s, a = ops.squeeze_excite(x, w1, b1, w2, b2, act, gate)
        needs = [(True, True, bias, True, bias)]
        if act == "relu" and gate == "sigmoid":  # the partial-gradient variants, once per tiling
            needs += [(True, False, False, False, False), (False, True, bias, True, bias)]
        backward(ops.squeeze_excite_backward, x, y, z, s, a, (w1, b1, w2, b2), (act, gate), needs)

    # The other excitation forms: every dtype, with and without a bias, both gates; the
    # partial-gradient variants in one dtype.
    for dtype in dtypes:
        for bias, gate, circular in ((True, "hard_sigmoid", True), (False, "sigmoid", False)):
            needs = [(True, True, bias)]
            if dtype == torch.bfloat16:
                needs += [(False, True, bias), (True, False, False)]
            for b, c in ((3, 65), (40, 256)):
                x = torch.randn(b, c, 7, 7, dtype=dtype)
                w, bb = torch.randn(c, c), (torch.randn(c) if bias else None)
                y, z, s, a = ops.effective_squeeze_excite(x, w, bb, gate)
                backward(ops.effective_squeeze_excite_backward, x, y, z, s, a, (w, bb), (gate,), needs)
                w, bb = torch.randn(5), (torch.randn(1) if bias else None)
                y, z, s, a = ops.efficient_channel_attention(x, w, bb, circular, gate)
                backward(ops.efficient_channel_attention_backward, x, y, z, s, a, (w, bb), (circular, gate), needs)

    # The one-launch forward (small batches): every dtype and layout, act x gate, biases, the
    # residual tail, hidden widths up to its limit.
    os.environ["FUSED_SE_PATHS"] = "one_launch"
    for dtype in dtypes:
        for layout in ("nchw", "channels_last"):
            for c, r, act, gate, bias in ((65, 4, "relu", "sigmoid", False), (960, 240, "silu", "hard_sigmoid", True)):
                x = torch.randn(2, c, 7, 7, dtype=dtype)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                w1, w2 = torch.randn(r, c), torch.randn(c, r)
                b1, b2 = (torch.randn(r), torch.randn(c)) if bias else (None, None)
                ops.squeeze_excite(x, w1, b1, w2, b2, act, gate)
                ops.squeeze_excite(
                    x, w1, b1, w2, b2, act, gate, torch.randn_like(x), torch.rand(2, dtype=dtype), "relu"
                )
    os.environ["FUSED_SE_PATHS"] = "three_launch,stream"

    # The persistent kernels (spread, streamed) in fp32, bf16 (fp16 compiles as bf16 does: the
    # same code but for the element type) and fp64.
    persistent_dtypes = (torch.float32, torch.bfloat16, torch.float64)

    # The spread forward (small batches): both layouts, act x gate, biases, the residual tail,
    # hidden widths up to its limit.
    os.environ["FUSED_SE_PATHS"] = "spread"
    for dtype in persistent_dtypes:
        for layout in ("nchw", "channels_last"):
            for c, r, act, gate, bias in ((65, 4, "relu", "sigmoid", False), (960, 120, "silu", "hard_sigmoid", True)):
                x = torch.randn(2, c, 7, 7, dtype=dtype)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                w1, w2 = torch.randn(r, c), torch.randn(c, r)
                b1, b2 = (torch.randn(r), torch.randn(c)) if bias else (None, None)
                ops.squeeze_excite(x, w1, b1, w2, b2, act, gate)
                assert launches[-1][0].__name__ == "_se_fwd_spread_kernel"
                ops.squeeze_excite(
                    x, w1, b1, w2, b2, act, gate, torch.randn_like(x), torch.rand(2, dtype=dtype), "relu"
                )
    os.environ["FUSED_SE_PATHS"] = "three_launch,stream"

    # The streamed forward and backward (x past L2): both layouts, act x gate,
    # biases, the residual tail and both backward tails; chunks of 1, 16 and 64 samples. Each
    # launch must be the streamed kernel (asserted below), or the variants would go unchecked.
    def stream_l2(x, lag):
        hz.l2_bytes = lambda device: hz.STREAM_L2_FRACTION * lag * x[0].numel() * x.element_size()

    grads = (True, True, True, True, True)
    for dtype in persistent_dtypes:
        for layout in ("nchw", "channels_last"):
            for c, r, act, gate, bias in ((65, 4, "relu", "sigmoid", False), (960, 120, "silu", "hard_sigmoid", True)):
                if c == 960 and (dtype, layout) != (torch.bfloat16, "channels_last"):
                    continue  # the widest hidden layer the streamed paths take (BLOCK_R = 128), once
                x = torch.randn(12, c, 7, 7, dtype=dtype)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                w1, w2 = torch.randn(r, c), torch.randn(c, r)
                b1, b2 = (torch.randn(r), torch.randn(c)) if bias else (None, None)
                hz.STREAM_WEIGHT_RATIO = 0.01
                stream_l2(x, 8)
                y, z, s, a = ops.squeeze_excite(x, w1, b1, w2, b2, act, gate)
                assert launches[-1][0].__name__ == "_se_fwd_stream_kernel"
                ops.squeeze_excite_backward(y, x, z, s, a, w1, b1, w2, b2, act, gate, *grads)
                # then the launch that adds up the chunks' weight-gradient partials
                assert [k.__name__ for k, *_ in launches[-2:]] == ["_se_bwd_stream_kernel", "_sum_partials_kernel"]
                residual, d = torch.randn_like(x), torch.rand(12, dtype=dtype)
                y, z, s, a = ops.squeeze_excite(x, w1, b1, w2, b2, act, gate, residual, d, "relu")
                for need_dres in (True, False):
                    ops.squeeze_excite_backward(
                        y, x, z, s, a, w1, b1, w2, b2, act, gate, *grads, need_dres, d, y
                    )  # fmt: skip
                    assert [k.__name__ for k, *_ in launches[-2:]] == ["_se_bwd_stream_kernel", "_sum_partials_kernel"]
    for b, chunk in ((40, 16), (200, 64)):
        x = torch.randn(b, 65, 7, 7, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        w1, w2 = torch.randn(4, 65), torch.randn(65, 4)
        hz.STREAM_WEIGHT_RATIO = chunk * x[0].numel() * 2 / (2 * 65 * 4 * 4)
        stream_l2(x, 2 * chunk)
        y, z, s, a = ops.squeeze_excite(x, w1, None, w2, None, "relu", "sigmoid")
        assert launches[-1][0].__name__ == "_se_fwd_stream_kernel" and launches[-1][2]["EX_BLOCK_B"] == chunk
        hz.STREAM_WEIGHT_RATIO *= 2  # the backward's samples are twice the bytes (g and x)
        stream_l2(x, 4 * chunk)
        ops.squeeze_excite_backward(y, x, z, s, a, w1, None, w2, None, "relu", "sigmoid", *grads)
        assert [k.__name__ for k, *_ in launches[-2:]] == [
            "_se_bwd_stream_kernel",
            "_sum_partials_kernel",
        ] and launches[-2][2]["EX_BLOCK_B"] == chunk
    hz.l2_bytes = lambda device: hz.DEFAULT_L2_BYTES

    # The residual tail in the scale pass (shortcut, drop-path's factor, ReLU) and its backward
    # passes (masked by the output, the shortcut's gradient written or not).
    for dtype in dtypes:
        for layout in ("nchw", "channels_last"):
            x = torch.randn(3, 65, 7, 7, dtype=dtype)
            if layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
            residual, d = torch.randn(3, 65, 7, 7, dtype=dtype), torch.rand(3, dtype=dtype)
            w1, w2 = torch.randn(4, 65), torch.randn(65, 4)
            for out_act, sample_scale in (("relu", d), ("relu", None), ("identity", d)):
                y, z, s, a = ops.squeeze_excite(
                    x, w1, None, w2, None, "relu", "sigmoid", residual, sample_scale, out_act
                )
                out = y if out_act == "relu" else None
                for need_dres in (True, False):
                    ops.squeeze_excite_backward(
                        y, x, z, s, a, w1, None, w2, None, "relu", "sigmoid",
                        True, True, False, True, False, need_dres, sample_scale, out,
                    )  # fmt: skip

    # A sequence's squeeze over its valid positions (lengths, int64 and int32): the squeeze and the
    # dx pass with lengths, in every dtype and both layouts of a (B, C, L) sequence seen as (B, C, L, 1).
    from fused_se import ops_lengths

    for dtype in dtypes:
        for layout in ("nchw", "channels_last"):
            x = torch.randn(3, 65, 37, dtype=dtype)
            if layout == "channels_last":
                x = torch.randn(3, 37, 65, dtype=dtype).transpose(1, 2)
            x = x.unsqueeze(-1)
            w1, w2 = torch.randn(4, 65), torch.randn(65, 4)
            for n in (torch.tensor([37, 1, 20]), torch.tensor([37, 1, 20], dtype=torch.int32)):
                y, z, s, a = ops_lengths.squeeze_excite_lengths(x, w1, None, w2, None, "relu", "sigmoid", n)
                ops_lengths.squeeze_excite_lengths_backward(
                    y, x, z, s, a, w1, None, w2, None, "relu", "sigmoid", n, True, True, False, True, False
                )

    _exercise_scse()


def _exercise_scse():
    """scSE's passes (kernels/scse.py): every dtype, both layouts, the tiles of both (a 128-channel
    channels_last tile, a 1024-position NCHW one), the forward's scale over every channel at once
    (up to 16 warps: 768 channels of 32-byte NCHW rows) and in two sweeps (2049 channels in NCHW),
    with and without the spatial gate's bias, fp32 parameters with a 16-bit x, and each backward
    gradient pattern."""
    import torch

    from fused_se import kernels

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for shape, layout in (
            ((3, 65, 7, 7), "nchw"),
            ((3, 65, 7, 7), "channels_last"),
            ((2, 256, 16, 16), "channels_last"),
            ((2, 16, 64, 64), "nchw"),
            ((1, 768, 16, 16), "nchw"),
            ((1, 2049, 4, 4), "nchw"),
        ):
            x = torch.randn(shape, dtype=dtype)
            if layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
            b, c = shape[:2]
            pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) and shape[1] == 65 else dtype
            acc = kernels.acc_dtype(dtype)
            ws, s, dz = torch.randn(c, dtype=pdt), torch.rand(b, c, dtype=acc), torch.randn(b, c, dtype=acc)
            for bs in (torch.randn(1, dtype=pdt), None):
                kernels.scse_squeeze_fwd(x)
                kernels.scse_scale_fwd(x, s, ws, bs)
                _, ss, dq, _ = kernels.scse_reduce_bwd(x, x, ws, bs)
                for need in ((True, True), (True, False), (False, True)):
                    kernels.scse_dx_bwd(x, x, s, dz, ss, dq, ws, *need)


def _main(arch: str) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fused_se.perf.kernel_report import jit_compile_args

    launches = _record_launches()
    _exercise(launches)
    target = GPUTarget("cuda", int(arch), 32)
    seen = set()
    for kernel, args, constexprs, num_warps in launches:
        # the signature, constants and attributes the JIT derives from these arguments: pointers
        # and integers divisible by 16 marked so, integers equal to 1 made constants
        sig, consts, attrs, options = jit_compile_args(kernel, args, {**constexprs, "num_warps": num_warps}, target)
        # one compile per code variant (types, constants, warps), specialised as its first launch
        # is: launches that differ only in which arguments divide by 16 add time, not coverage
        # (the kernel report, fused_se.perf, compiles each of those)
        key = (kernel.__name__, tuple(sorted(sig.items())), repr(sorted(consts.items())), num_warps)
        if key in seen:
            continue
        seen.add(key)
        src = ASTSource(kernel, sig, constexprs=consts, attrs=attrs)
        try:
            triton.compile(src, target=target, options=options.__dict__)
        except Exception as e:
            print(f"FAILED {kernel.__name__} {constexprs} num_warps={num_warps}: {e}")
            return 1
    print(f"compiled {len(seen)} kernel variants for sm_{arch}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
