"""The private APIs of fused_se/runtime/__init__.py's table, each checked against what this process
runs with. check(name, probe) runs once per API at import: a probe returns None where the API is as
expected, else why not; where it is not, one warning names it and the caller takes its public path.
Nothing here imports triton: its probes import it when they run (launch.py's import).
FUSED_SE_PRIVATE_APIS=0 (read at import) fails every check: the public paths alone, as a way
around a private API that passes its check and still misbehaves, and to time what the seam saves.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional

# name -> why its public path runs instead (for tests and bug reports)
FALLBACKS: dict[str, str] = {}
ENV = "FUSED_SE_PRIVATE_APIS"
ALLOWED = os.environ.get(ENV) != "0"


def check(name: str, probe: Callable[[], Optional[str]]) -> bool:
    """Whether the private API `name` is as expected (probe() returned None); else one warning."""
    try:
        why = probe() if ALLOWED else f"{ENV}=0"
    except Exception as e:  # an API gone or renamed fails its probe, whatever it raises
        why = f"{type(e).__name__}: {e}"
    if why is None:
        return True
    if name not in FALLBACKS:
        FALLBACKS[name] = why
        warnings.warn(
            f"fused_se: {name} is not as fused_se was checked on ({why}); its public path runs instead (slower on the "
            "host, same results)",
            RuntimeWarning,
            stacklevel=2,
        )
    return False


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# What triton's JIT calls a compiled kernel with (triton 3.4 to 3.8), whitespace removed.
JIT_CALL = _squash(
    "kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, launch_metadata, "
    "knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound_args.values())"
)
LAUNCHER_LEAD = ("self", "gridX", "gridY", "gridZ", "stream", "function")
INT_POINTER = "must be either uint64 or have data_ptr method"


def compiled_call() -> Optional[str]:
    """triton's compiled-kernel call convention, as launch.run_compiled and run_compiled_each use it."""
    import triton
    from triton import knobs
    from triton.compiler import CompiledKernel
    from triton.runtime.jit import JITFunction

    if JIT_CALL not in _squash(inspect.getsource(JITFunction.run)):
        return "JITFunction.run no longer calls kernel.run(grid_0, grid_1, grid_2, stream, function, metadata, ...)"
    if not hasattr(CompiledKernel, "run"):
        return "CompiledKernel has no run"
    init = inspect.getsource(CompiledKernel.__init__)
    if "self.packed_metadata" not in init or "self.function" not in init:
        return "CompiledKernel no longer sets packed_metadata and function"
    driver = Path(triton.__file__).parent / "backends" / "nvidia"
    why = launcher_params((driver / "driver.py").read_text())
    if why is not None:
        return why
    sources = [(driver / name).read_text() for name in ("driver.py", "driver.c") if (driver / name).exists()]
    if not any(INT_POINTER in text for text in sources):
        return "the CUDA launcher may no longer take an int address for a pointer"
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if hook is not None and not isinstance(getattr(hook, "calls", None), list):
            return "knobs.runtime's launch hooks are neither None nor a chain with .calls"

    def probe(x_ptr, n, BLOCK: triton.language.constexpr = 4):
        pass

    fn = JITFunction(probe)
    params = [(p.name, p.default) for p in fn.params]
    if params[0] != ("x_ptr", inspect.Parameter.empty) or params[2] != ("BLOCK", 4):
        return f"JITFunction.params no longer give each parameter's name and default: {params}"
    if not isinstance(fn.pre_run_hooks, list):
        return "JITFunction.pre_run_hooks is not a list"
    import torch

    if not callable(getattr(torch._C, "_cuda_getCurrentRawStream", None)):
        return "torch._C._cuda_getCurrentRawStream is gone"
    return None


def launcher_params(source: str) -> Optional[str]:
    """Whether the CUDA launcher class in triton's nvidia driver.py (its text) is called as
    (gridX, gridY, gridZ, stream, function, ...)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "CudaLauncher":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__call__":
                    names = tuple(a.arg for a in fn.args.args)
                    if names[: len(LAUNCHER_LEAD)] != LAUNCHER_LEAD or fn.args.vararg is None:
                        return f"CudaLauncher.__call__ takes {names}, not (gridX, gridY, gridZ, stream, function, ...)"
                    return None
    return "no CudaLauncher.__call__ in triton's nvidia driver.py"


def trace_queries() -> Optional[str]:
    """torch's flags for what may trace or intercept a call, as eager.plain_eager and launch.tracing ask them."""
    import torch

    c = torch._C
    said = (
        c._len_torch_dispatch_stack(),
        c._are_functorch_transforms_active(),
        c._is_torch_function_mode_enabled(),
        c._is_tracing(),
    )
    if said != (0, False, False, False):
        return f"outside any mode they say {said}"
    return None


def wrap_toggle() -> Optional[str]:
    from torch._library.triton import is_wrap_triton_enabled, set_wrap_triton_enabled

    before = is_wrap_triton_enabled()
    with set_wrap_triton_enabled(False):
        off = is_wrap_triton_enabled()
    if off is not False or is_wrap_triton_enabled() != before:
        return "set_wrap_triton_enabled(False) is not seen by is_wrap_triton_enabled, or not undone"
    return None


def fake_query() -> Optional[str]:
    import torch
    from torch._subclasses.fake_tensor import is_fake

    return None if is_fake(torch.empty(1)) is False else "is_fake says a real tensor is fake"


def version_counter() -> Optional[str]:
    """Tensor._version, which replays read to tell that only launches wrote a tensor."""
    import torch

    t = torch.zeros(1)
    before = t._version
    t.add_(1)
    return None if t._version == before + 1 else "an in-place op does not bump Tensor._version"


def environ_data() -> Optional[str]:
    environ = os.environ
    data = getattr(environ, "_data", None)
    encode, decode = getattr(environ, "encodekey", None), getattr(environ, "decodevalue", None)
    if not (isinstance(data, dict) and callable(encode) and callable(decode)):
        return "os.environ has no _data dict with encodekey and decodevalue"
    for name in list(environ)[:1]:
        if decode(data[encode(name)]) != environ[name]:
            return "os.environ._data disagrees with os.environ"
    return None
