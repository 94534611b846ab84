"""--kernel-report: every kernel variant the bench shapes launch, compiled ahead of time as the
JIT would compile it for the GPU, with its registers, spills, shared memory, programs per SM
and the widths of its global loads and stores.

The JIT specialises on its arguments: a pointer whose address, or an integer whose value, is
divisible by 16 gets the tt.divisibility = 16 attribute (which lets the compiler prove 16-byte
alignment and vectorise), and an integer equal to 1 becomes a constant. jit_compile_args()
runs triton's own binder (triton.runtime.jit.create_function_from_signature, the function
JITFunction.run builds) and JITFunction._pack_args on the real launch arguments, so that the
signature, constants and attributes are those a launch on the GPU would compile with. CPU
tensors stand in for the GPU's: their addresses are 64-byte aligned, as CUDA's are at least.

Registers and spills come from ptxas's own report (-v, which triton passes); load and store
widths from the PTX (ld.global / st.global with their vector widths) and, where triton's
bundled cuobjdump is present, from the SASS (LDG / STG .128, .64, ...).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from typing import Optional

# per SM, sm_80 and sm_90: registers, shared memory (bytes), warps, resident blocks
SM_LIMITS = {80: (65536, 167936, 64, 32), 90: (65536, 233472, 64, 32)}
SMEM_RESERVED_PER_BLOCK = 1024


# the process's launches stay intercepted once recording starts (held here: a dropped stack would end it)
_FOR_GOOD = contextlib.ExitStack()


def record_launches():
    """Binds every launch to a recorder for the rest of the process (nothing runs) and claims the
    interpreter, so that the ops take the kernels' path on CPU tensors; returns the list that
    the launches (kernel, args, kwargs) go into."""
    from fused_se import _dispatch
    from fused_se.runtime.launch import intercepted

    launches: list = []

    class _Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((self.kernel, args, kwargs))

            return launch

    _FOR_GOOD.enter_context(intercepted(lambda kernel, grid, inner: _Recorder(kernel)[grid]))  # never left
    _dispatch.interpreter_enabled = lambda: True
    return launches


def jit_compile_args(kernel, args, kwargs, target):
    """(signature, constexprs, attrs, options) as JITFunction.run derives them for a launch."""
    from triton import knobs
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def variant_key(kernel, signature, constexprs, attrs, options) -> tuple:
    return (
        kernel.__name__,
        tuple(sorted(signature.items())),
        tuple(sorted((str(k), repr(v)) for k, v in constexprs.items())),
        tuple(sorted((str(k), repr(v)) for k, v in attrs.items())),
        options.num_warps,
    )


def compile_variant(kernel, signature, constexprs, attrs, options, target):
    """triton.compile as JITFunction._do_compile calls it; returns (compiled, ptxas log)."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    src = ASTSource(kernel, signature, constexprs, attrs)
    log = io.StringIO()
    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    # ptxas reports registers and spills only when it runs: not from triton's cache
    knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options.__dict__)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    return compiled, log.getvalue()


_PTX_MEM = re.compile(r"\b(ld|st)\.global((?:\.[A-Za-z0-9_:]+)*)")


def ptx_widths(ptx: str) -> dict[str, Counter]:
    """{"ld": Counter(bits -> count), "st": ...} of the PTX's global loads and stores."""
    out = {"ld": Counter(), "st": Counter()}
    for op, mods in _PTX_MEM.findall(ptx):
        parts = mods.strip(".").split(".")
        vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
        bits = next((int(p[1:]) for p in parts if re.fullmatch(r"[bfsu]\d+", p)), 0)
        out[op][vec * bits] += 1
    return out


_SASS_MEM = re.compile(r"\b(LDG|STG)((?:\.[A-Z0-9_]+)*)")


def sass_widths(sass: str) -> dict[str, Counter]:
    out = {"ld": Counter(), "st": Counter()}
    for op, mods in _SASS_MEM.findall(sass):
        parts = mods.strip(".").split(".")
        bits = 32
        for p in parts:
            if p in ("128", "64"):
                bits = int(p)
            elif p in ("U16", "S16"):
                bits = 16
            elif p in ("U8", "S8"):
                bits = 8
        out["ld" if op == "LDG" else "st"][bits] += 1
    return out


_SASS_SYNC = re.compile(r"\b(MEMBAR|CCTL\.IVALL)\b")


def sass_fences(sass: str) -> str:
    """Memory fences in the SASS: MEMBAR (a release's or an acq_rel atomic's, before it) and
    CCTL.IVALL (an acquire's L1 invalidation, after it). The persistent kernels' tickets need
    neither; their counts and flags do."""
    c = Counter(_SASS_SYNC.findall(sass))
    return f"{c['MEMBAR']}/{c['CCTL.IVALL']}"


def cuobjdump_path() -> Optional[str]:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


def sass_of(cubin: bytes, tool: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        name = f.name
    try:
        return subprocess.run([tool, "-sass", name], capture_output=True, text=True, check=True).stdout
    finally:
        os.remove(name)


def parse_ptxas(log: str) -> dict:
    """The kernel's registers, and its spills and stack frame added up over every function in
    the log: the kernel's, and those of the functions it calls that are not inlined."""
    regs = re.search(r"Used (\d+) registers", log)

    def total(pattern: str) -> Optional[int]:
        found = re.findall(pattern, log)
        return sum(map(int, found)) if found else None

    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_store_bytes": total(r"(\d+) bytes spill stores"),
        "spill_load_bytes": total(r"(\d+) bytes spill loads"),
        "stack_bytes": total(r"(\d+) bytes stack frame"),
    }


def programs_per_sm(arch: int, registers: Optional[int], smem: int, num_warps: int) -> Optional[int]:
    """Resident programs per SM by registers (allocated per warp in units of 256), shared
    memory (plus 1 KB reserved per block) and warps."""
    if registers is None:
        return None
    reg_file, smem_sm, warps_sm, blocks_sm = SM_LIMITS[arch]
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = reg_file // (per_warp * num_warps)
    by_smem = smem_sm // (smem + SMEM_RESERVED_PER_BLOCK) if smem else blocks_sm
    return min(by_regs, by_smem, warps_sm // num_warps, blocks_sm)


def _fmt_widths(c: Counter) -> str:
    return " ".join(f"{bits}b:{n}" for bits, n in sorted(c.items(), reverse=True)) or "-"


def exercise_bench_shapes(args) -> None:
    """Forward and backward of fused and fused-3pass on the bench shapes (nothing runs: the
    launches are recorded), planned for the card's L2 and SM count."""
    import torch

    from fused_se import workloads

    from .cards import card
    from .traffic import planned_for

    c = card(args.card)
    l2 = args.l2_bytes or c.l2_bytes
    dtype = workloads.DTYPES[args.dtype]
    if args.shapes:
        cases = [workloads.parse_shape(s) for s in args.shapes]
    else:
        cases = [(args.batch or 128, s) for s in workloads.PRESETS[args.preset]]
    for n, shape in cases:
        for layout in args.layouts:
            for provider in ("fused", "fused-3pass"):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                with planned_for(l2, c.sms):
                    module = workloads.build_block(provider, shape, torch.device("cpu"), dtype)
                    x = torch.empty(n, shape.c, shape.h, shape.w, dtype=dtype).to(memory_format=fmt)
                    xg = x.requires_grad_(True)
                    paths = workloads.three_launch_paths() if provider == "fused-3pass" else contextlib.nullcontext()
                    with paths:
                        y = module(xg)
                        torch.autograd.grad(y, [xg, *module.parameters()], torch.empty_like(y))


def _report_here(args) -> list[dict]:
    from triton.backends.compiler import GPUTarget

    launches = record_launches()
    exercise_bench_shapes(args)
    tool = cuobjdump_path()
    rows = []
    for arch in args.archs:
        target = GPUTarget("cuda", arch, 32)
        seen = set()
        for kernel, kargs, kkwargs in launches:
            sig, constexprs, attrs, options = jit_compile_args(kernel, kargs, kkwargs, target)
            key = variant_key(kernel, sig, constexprs, attrs, options)
            if key in seen:
                continue
            seen.add(key)
            compiled, log = compile_variant(kernel, sig, constexprs, attrs, options, target)
            res = parse_ptxas(log)
            ptx = ptx_widths(compiled.asm["ptx"])
            sass_text = sass_of(compiled.asm["cubin"], tool) if tool else None
            sass = sass_widths(sass_text) if tool else None
            smem = compiled.metadata.shared
            flags = {kernel.arg_names[k[0]] if isinstance(k, tuple) else k: v for k, v in constexprs.items()}
            rows.append(
                {
                    "arch": f"sm_{arch}",
                    "kernel": kernel.__name__,
                    "num_warps": options.num_warps,
                    "constexprs": " ".join(f"{k}={v}" for k, v in flags.items()),
                    "divisible_by_16": sum(1 for v in attrs.values() if v),
                    **res,
                    "shared_bytes": smem,
                    "programs_per_sm": programs_per_sm(arch, res["registers"], smem, options.num_warps),
                    "ptx_ld": _fmt_widths(ptx["ld"]),
                    "ptx_st": _fmt_widths(ptx["st"]),
                    "sass_ld": _fmt_widths(sass["ld"]) if sass else "no cuobjdump",
                    "sass_st": _fmt_widths(sass["st"]) if sass else "no cuobjdump",
                    "sass_fences": sass_fences(sass_text) if sass_text else "no cuobjdump",
                }
            )
    return rows


def run_kernel_report(args) -> list[dict]:
    """Compiles in a child process without the interpreter (the kernels must be JIT functions)."""
    import json

    from fused_se.kernels import common

    if not common.INTERPRETED and os.environ.get("FUSED_SE_KERNEL_REPORT_CHILD"):
        return _report_here(args)
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = os.path.join(tmp, "args.json"), os.path.join(tmp, "rows.json")
        with open(spec, "w") as f:
            json.dump({k: v for k, v in vars(args).items() if k in _ARG_NAMES}, f)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["FUSED_SE_KERNEL_REPORT_CHILD"] = "1"
        subprocess.run([sys.executable, "-m", "fused_se.perf.kernel_report", spec, out], env=env, check=True)
        with open(out) as f:
            return json.load(f)


_ARG_NAMES = ("preset", "shapes", "batch", "layouts", "dtype", "card", "l2_bytes", "archs")


def format_report(rows: list[dict]) -> str:
    head = (
        f"{'arch':>5} {'kernel':>26} {'warps':>5} {'regs':>4} {'spill st/ld':>11} {'smem':>6} {'prog/SM':>7} "
        f"{'PTX ld':>18} {'PTX st':>14} {'SASS ld':>22} {'SASS st':>16} {'fences':>6}  constexprs"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        spill = f"{r['spill_store_bytes']}/{r['spill_load_bytes']}"
        lines.append(
            f"{r['arch']:>5} {r['kernel']:>26} {r['num_warps']:>5} {r['registers']!s:>4} {spill:>11} "
            f"{r['shared_bytes']:>6} {r['programs_per_sm']!s:>7} {r['ptx_ld']:>18} {r['ptx_st']:>14} "
            f"{r['sass_ld']:>22} {r['sass_st']:>16} {r['sass_fences']:>6}  {r['constexprs']}"
        )
    lines.append("widths: bits per thread per instruction : static count of such instructions")
    lines.append("fences: MEMBAR / CCTL.IVALL instructions in the SASS (static count)")
    lines.extend(summarize_report(rows))
    return "\n".join(lines)


def summarize_report(rows: list[dict]) -> list[str]:
    """Per arch: variants, those that spill, the most registers per kernel, and the variants
    whose global loads of x (the streaming kernels') are all narrower than 128 bits."""
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        sel = [r for r in rows if r["arch"] == arch]
        spills = [f"{r['kernel']}({r['spill_store_bytes']} B)" for r in sel if r["spill_store_bytes"]]
        regs: dict[str, int] = {}
        for r in sel:
            regs[r["kernel"]] = max(regs.get(r["kernel"], 0), r["registers"] or 0)
        narrow = [r for r in sel if "128b" not in r["ptx_ld"]]
        out.append(
            f"{arch}: {len(sel)} variants; spilling: {', '.join(spills) or 'none'}; most registers: "
            + ", ".join(f"{k} {v}" for k, v in regs.items())
            + f"; no 128-bit global load: {len(narrow)} ("
            + ", ".join(sorted({r["kernel"] for r in narrow}))
            + ")"
        )
    return out


if __name__ == "__main__":
    import argparse
    import json

    with open(sys.argv[1]) as f:
        ns = argparse.Namespace(**json.load(f))
    with open(sys.argv[2], "w") as f:
        json.dump(_report_here(ns), f)
