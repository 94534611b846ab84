"""The kernel report's helpers: JIT-faithful specialisation, width and ptxas parsing, occupancy."""

import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from fused_se.perf.kernel_report import parse_ptxas, programs_per_sm, ptx_widths, sass_fences, sass_widths


def test_ptx_widths_count_vector_loads_and_stores():
    ptx = """
    @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    ld.global.L1::evict_last.v2.b32 { %r5, %r6 }, [ %rd2 + 0 ];
    ld.global.b16 %rs1, [ %rd3 + 0 ];
    st.global.v4.b32 [ %rd4 + 0 ], { %r1, %r2, %r3, %r4 };
    st.global.b32 [ %rd5 + 0 ], %r7;
    ld.shared.v4.b32 { %r1, %r2, %r3, %r4 }, [ %r8 ];
    """
    w = ptx_widths(ptx)
    assert w["ld"] == Counter({128: 1, 64: 1, 16: 1})
    assert w["st"] == Counter({128: 1, 32: 1})


def test_sass_widths():
    sass = (
        "LDG.E.128 R4, desc[UR4][R2.64] ;\n LDG.E R9, desc[UR4][R6.64] ;\n LDG.E.U16 R1, [R2] ;\n STG.E.64 [R2], R4 ;"
    )
    w = sass_widths(sass)
    assert w["ld"] == Counter({128: 1, 32: 1, 16: 1}) and w["st"] == Counter({64: 1})


def test_sass_fences_count_membars_and_l1_invalidations():
    sass = "MEMBAR.ALL.GPU ;\n ERRBAR ;\n ATOMG.E.ADD.STRONG.GPU PT, R3, [R2.64], R5 ;\n CCTL.IVALL ;\n MEMBAR.SC.GPU ;"
    assert sass_fences(sass) == "2/1"
    assert sass_fences("ATOMG.E.ADD.STRONG.GPU PT, R3, [R2.64], R5 ;") == "0/0"


def test_parse_ptxas_and_occupancy():
    log = "ptxas info    : Used 168 registers, 16 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads"
    r = parse_ptxas(log)
    assert r == {"registers": 168, "spill_store_bytes": 12, "spill_load_bytes": 12, "stack_bytes": 16}
    # a kernel that calls a function it does not inline: ptxas lists each one's spills
    log = """ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    8 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers
ptxas info    : Function properties for f
    0 bytes stack frame, 20 bytes spill stores, 24 bytes spill loads"""
    r = parse_ptxas(log)
    assert r == {"registers": 128, "spill_store_bytes": 24, "spill_load_bytes": 32, "stack_bytes": 8}
    # 168 registers x 32 lanes = 5376 per warp, 16 warps: 86016 > 65536 registers per SM
    assert programs_per_sm(90, 168, 0, 16) == 0
    assert programs_per_sm(90, 128, 0, 16) == 1  # 65536 / (4096 x 16)
    assert programs_per_sm(90, 32, 0, 4) == 16  # warps: 64 / 4
    assert programs_per_sm(80, 40, 100_000, 4) == 1  # shared memory: 164 KB / (100 KB + 1 KB)


_CHILD = textwrap.dedent(
    """
    import sys, torch, triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fused_se.perf.kernel_report import jit_compile_args, compile_variant, ptx_widths

    @triton.jit
    def copy(x_ptr, y_ptr, n, stride, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs * stride, tl.load(x_ptr + offs * stride, mask=offs < n), mask=offs < n)

    x, y = torch.empty(1024), torch.empty(1024)
    target = GPUTarget("cuda", 90, 32)
    sig, consts, attrs, opts = jit_compile_args(copy, (x, y, 64, 1), {"BLOCK": 512, "num_warps": 4}, target)
    assert sig["stride"] == "constexpr" and consts[(3,)] == 1, (sig, consts)
    assert all(attrs[(i,)] for i in (0, 1, 2)), attrs
    faithful = ptx_widths(compile_variant(copy, sig, consts, attrs, opts, target)[0].asm["ptx"])
    plain_sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "stride": "i32", "BLOCK": "constexpr"}
    plain = ptx_widths(triton.compile(ASTSource(copy, plain_sig, constexprs={"BLOCK": 512}), target=target).asm["ptx"])
    print("faithful", dict(faithful["ld"]), "plain", dict(plain["ld"]))
    assert faithful["ld"][128] and not plain["ld"][128]
    """
)


def _nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _nvidia_backend(), reason="this triton has no nvidia backend to compile with")
def test_jit_specialisation_gives_the_gpus_vector_loads(tmp_path):
    """A copy kernel compiled with the JIT's attributes for real arguments (16-byte aligned
    pointers, n divisible by 16, stride 1 a constant) loads 128 bits per thread; compiled with
    a plain signature, as ahead-of-time tests used to, it does not."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


_TICKET_CHILD = textwrap.dedent(
    """
    import torch, triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from fused_se.kernels import sync
    from fused_se.perf.kernel_report import compile_variant, cuobjdump_path, jit_compile_args, sass_fences, sass_of

    @triton.jit
    def tickets(ws_ptr, out_ptr, n):
        t = sync.take_ticket(ws_ptr)
        while t < n:
            following = sync.take_ticket(ws_ptr)
            tl.store(out_ptr + t, t)
            t = following

    @triton.jit
    def fenced(ws_ptr, out_ptr, n):
        t = tl.atomic_add(ws_ptr, 1, sem="acq_rel")
        while t < n:
            tl.store(out_ptr + t, t)
            t = tl.atomic_add(ws_ptr, 1, sem="acq_rel")

    target, tool = GPUTarget("cuda", 90, 32), cuobjdump_path()
    ws, out = torch.zeros(32, dtype=torch.int32), torch.empty(64, dtype=torch.int32)
    got = {}
    for kernel in (tickets, fenced):
        compiled, _ = compile_variant(kernel, *jit_compile_args(kernel, (ws, out, 64), {"num_warps": 4}, target), target)
        got[kernel.__name__] = sass_fences(sass_of(compiled.asm["cubin"], tool))
    print(got)
    assert got["tickets"] == "0/0" and got["fenced"] != "0/0", got
    """
)


@pytest.mark.skipif(not _nvidia_backend(), reason="this triton has no nvidia backend to compile with")
def test_tickets_compile_without_fences(tmp_path):
    """The persistent kernels' tickets (relaxed atomics, the next one taken ahead) compile for
    sm_90 with no MEMBAR and no L1 invalidation; the same loop with acq_rel tickets has them."""
    from fused_se.perf.kernel_report import cuobjdump_path

    if cuobjdump_path() is None:
        pytest.skip("no cuobjdump (triton's bundled one or on PATH) to read the SASS with")
    script = tmp_path / "child.py"
    script.write_text(_TICKET_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


_STREAM_CHILD = textwrap.dedent(
    """
    import types
    from triton.backends.compiler import GPUTarget
    from fused_se.perf import kernel_report as kr

    launches = kr.record_launches()
    args = types.SimpleNamespace(
        card="h100", l2_bytes=None, dtype="bf16", preset="seresnet50", batch=None,
        shapes=["128,256,56,56,16", "128,512,28,28,32"], layouts=["channels_last", "nchw"],
    )
    kr.exercise_bench_shapes(args)
    target, seen, rows = GPUTarget("cuda", 90, 32), set(), []
    for kernel, kargs, kwargs in launches:
        if not kernel.__name__.endswith("_stream_kernel"):
            continue
        variant = kr.jit_compile_args(kernel, kargs, kwargs, target)
        key = kr.variant_key(kernel, *variant)
        if key not in seen:
            seen.add(key)
            res = kr.parse_ptxas(kr.compile_variant(kernel, *variant, target)[1])
            rows.append((kernel.__name__, kwargs["BLOCK_C"], kwargs["EX_BLOCK_R"], res["registers"], res["spill_store_bytes"]))
    print(rows)
    # two stages, two layouts, forward and backward: eight variants
    assert {r[0] for r in rows} == {"_se_fwd_stream_kernel", "_se_bwd_stream_kernel"} and len(rows) == 8, rows
    assert all(r[4] == 0 for r in rows), rows
    """
)


@pytest.mark.skipif(not _nvidia_backend(), reason="this triton has no nvidia backend to compile with")
def test_streamed_kernels_of_the_bench_stages_do_not_spill(tmp_path):
    """The streamed forward and backward, as SE-ResNet-50's streamed stages launch them (bf16,
    batch 128, both layouts, planned for an H100), compile for sm_90 at 16 warps without spilling
    (the backward's excitation a function it calls, not inlined, with one channel loop per product)."""
    script = tmp_path / "child.py"
    script.write_text(_STREAM_CHILD)
    # nothing runs (the launches are recorded): no waits to check
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSED_SE_CHECK_WAITS")}
    env["FUSED_SE_PATHS"] = "stream"
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
