"""The launch path: launch(kernel, grid)(*args) for every kernel, the buffers kernels write
(empty, zeros, empty_like), the launch records, and `intercepted`, the one hook for tools that
watch or replace launches.

A launch is bound three ways (`bind`):
- while something may trace it (torch.compile, a dispatch mode, a functorch transform), through
  wrap_triton where wrapping is on, so that a traced graph holds the kernel;
- in the interpreter, kernel[grid];
- elsewhere (CUDA tensors) through the launch cache (`CachedLauncher`), which calls triton's
  compiled kernels as its JIT does (`run_compiled`) where checks.compiled_call passed, else
  kernel[grid]. wrap_triton's eager path, a higher-order op's dispatch, took about 0.5 ms a launch
  on an H200's host; triton's JIT binds and specialises every argument on every launch (about 17
  of the 32 us a launch of the squeeze took there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

import torch
import triton
from torch.library import wrap_triton
from triton import knobs

from . import checks
from .trace import is_fake, is_wrap_triton_enabled, tracing  # noqa: F401  (is_fake: for the kernels)

DIRECT = checks.check("triton's compiled-kernel call", checks.compiled_call)


@triton.jit
def _probe(x):
    pass


# True when triton.jit makes interpreter functions (TRITON_INTERPRET=1 when this module was
# imported, which is when fused_se.kernels defined its kernels): they run on CPU tensors, with numpy.
INTERPRETED: bool = not isinstance(_probe, triton.runtime.JITFunction)


def _wrap_triton_takes(kernel) -> bool:
    """Whether wrap_triton takes this process's kernels (triton.jit makes them all of one kind).
    torch 2.11's wrap_triton refuses the interpreter's functions, which newer torch hands back
    unwrapped; where it refuses, the kernels launch as they are, as they do on newer torch."""
    try:
        wrap_triton(kernel)
    except RuntimeError:
        return False
    return True


WRAP_TRITON = _wrap_triton_takes(_probe)

# When set, every buffer a kernel writes is filled with NaN first, so an element a kernel
# forgets to write shows up in the tests.
POISON_OUTPUTS = False


def bind(kernel, grid):
    """kernel[grid] as this call should launch it (the module's docstring)."""
    if _STUBS:
        return _StubLauncher(kernel)
    if tracing():
        return (wrap_triton(kernel) if WRAP_TRITON and is_wrap_triton_enabled() else kernel)[grid]
    if INTERPRETED or not DIRECT:
        return kernel[grid]
    return CachedLauncher(kernel, grid)


# ---- intercepting launches -------------------------------------------------------------------

# (binder, how a launch would be bound without it) of each `intercepted` block open, innermost
# last; empty almost always.
_INTERCEPTS: list = []


@contextmanager
def intercepted(binder: Callable) -> Iterator[None]:
    """Within the block every launch is bound by binder(kernel, grid, inner) instead, inner being
    how it would have been bound (a tool may call it, or launch nothing). Replays launch through
    `launch` too while a binder is in place (never straight to the compiled kernels)."""
    if _INTERCEPTS:
        outer, outer_inner = _INTERCEPTS[-1]

        def inner(kernel, grid):
            return outer(kernel, grid, outer_inner)
    else:
        inner = bind
    entry = (binder, inner)
    _INTERCEPTS.append(entry)
    try:
        yield
    finally:
        del _INTERCEPTS[next(i for i in reversed(range(len(_INTERCEPTS))) if _INTERCEPTS[i] is entry)]


def intercepting() -> bool:
    return bool(_INTERCEPTS)


@contextmanager
def kernel_calls() -> Iterator[list]:
    """Within the block every launch runs as it would and is recorded: (kernel, grid, args, kwargs)."""
    calls: list = []

    def recording(kernel, grid, inner):
        launcher = inner(kernel, grid)

        def run(*args, **kwargs):
            calls.append((kernel, grid, args, kwargs))
            return launcher(*args, **kwargs)

        return run

    with intercepted(recording):
        yield calls


# ---- stubbed launches (host time) ------------------------------------------------------------

# The name logs of the `stubbed` blocks open, innermost last; empty almost always.
_STUBS: list[list[str]] = []


class _StubCompiled:
    """What a stubbed launch returns in place of a compiled kernel: its call (run_compiled's
    arguments) logs the kernel's name and runs nothing."""

    __slots__ = ("function", "name", "packed_metadata")

    def __init__(self, name: str):
        self.name, self.function, self.packed_metadata = name, None, None

    def run(self, *args) -> None:
        if _STUBS:
            _STUBS[-1].append(self.name)


class _StubLauncher:
    """A stubbed launch: logs the kernel's name; returns the stand-in where a replay could call it
    directly (a JIT kernel, whose parameter list param_tail reads; not the interpreter's)."""

    __slots__ = ("compiled", "direct")

    def __init__(self, kernel):
        self.compiled = _StubCompiled(kernel.__name__)
        self.direct = hasattr(kernel, "params")

    def __call__(self, *args, **kwargs) -> Optional[_StubCompiled]:
        self.compiled.run()
        return self.compiled if self.direct else None


@contextmanager
def stubbed() -> Iterator[list[str]]:
    """Within the block no kernel is compiled or run, on any device: each launch logs its kernel's
    name (the list yielded) and returns a stand-in for the compiled kernel, which replays call as
    they call compiled kernels on a GPU (replay.py's direct path: scratch carved from one buffer,
    no binding). Every other step of a call runs as it would: what remains is the host's share
    (fused_se.perf --host). Outputs are left uninitialised. A replay recorded here replays only
    here (stubbing is part of its signature)."""
    log: list[str] = []
    _STUBS.append(log)
    try:
        yield log
    finally:
        del _STUBS[next(i for i, other in enumerate(_STUBS) if other is log)]


def stubbing() -> bool:
    return bool(_STUBS)


# ---- launching -------------------------------------------------------------------------------


def launch(kernel, grid):
    """kernel[grid], launched on the device of its first tensor argument's current stream,
    whichever device is current; recorded where a replay records (replay.py)."""
    if _INTERCEPTS:
        binder, inner = _INTERCEPTS[-1]
        launcher = binder(kernel, grid, inner)
    else:
        launcher = bind(kernel, grid)

    def run(*args, **kwargs) -> None:
        for first in args:
            if isinstance(first, torch.Tensor):
                break
        # the tensor's flags, not its device's fields: device.type costs a call a fifth of a microsecond
        if not first.is_cuda or first.get_device() == torch.cuda.current_device():
            compiled = launcher(*args, **kwargs)
        else:
            with torch.cuda.device(first.device):
                compiled = launcher(*args, **kwargs)
        rec = getattr(_recordings, "rec", None)
        if rec is not None:
            rec.launches.append((kernel, grid, args, kwargs, compiled))

    return run


def _hooked(hook) -> bool:
    """Whether a triton launch hook is set (a profiler's): triton's own path then runs, which calls it."""
    return hook is not None and getattr(hook, "calls", True)


def jit_hooked(kernels) -> bool:
    """Whether a launch of any of these kernels must go through triton's JIT, which calls the
    hooks: a launch hook (a profiler's) or a kernel's pre-run hooks."""
    runtime = knobs.runtime
    if _hooked(runtime.launch_enter_hook) or _hooked(runtime.launch_exit_hook):
        return True
    for k in kernels:  # (a loop, not any() over a generator: a frame a call)
        if k.pre_run_hooks:
            return True
    return False


def direct_call(compiled) -> bool:
    """Whether `compiled`, what a launch returned, can be called by run_compiled."""
    return DIRECT and hasattr(compiled, "run") and hasattr(compiled, "function")


def run_compiled(compiled, grid3: tuple, stream: int, params) -> None:
    """A compiled kernel called as triton's JIT calls it (checks.compiled_call): the grid's three
    dimensions, the raw stream, every parameter in order (constexprs included, `param_tail`), no hooks."""
    g0, g1, g2 = grid3
    compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *params)


def run_compiled_each(calls, stream: int, slots: list) -> None:
    """run_compiled of each (compiled, grid3, getter, rest) of calls in turn, its parameters
    getter(slots) and then rest."""
    for compiled, (g0, g1, g2), first, rest in calls:
        compiled.run(
            g0, g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *first(slots), *rest
        )


def param_tail(kernel, n_args: int) -> tuple:
    """(name, default) of each parameter of `kernel` past its first n_args: what a compiled kernel's
    call takes after the positional arguments, a keyword argument's value or the default."""
    return tuple((p.name, p.default) for p in kernel.params[n_args:])


def raw_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


# The compiled kernels CachedLauncher has launched, by kernel, grid, device and arguments.
_COMPILED: dict = {}
_COMPILED_MAX = 4096


def clear_cache() -> None:
    _COMPILED.clear()


def cache_size() -> int:
    return len(_COMPILED)


class CachedLauncher:
    """kernel[grid] for CUDA tensors, without triton's per-launch binding of every argument.

    The compiled kernel is looked up by a key at least as fine as triton's own: every non-tensor
    argument by value (each launcher passes a parameter one type only), every tensor by its dtype
    and whether its address is 16-byte aligned (the one property of a pointer triton specialises
    on), with the grid and the device. A miss, a launch hook (a profiler's) or the JIT's pre-run
    hooks take triton's own path; a miss caches what that path compiled."""

    __slots__ = ("grid", "kernel")

    def __init__(self, kernel, grid):
        self.kernel = kernel
        self.grid = grid

    def __call__(self, *args, **kwargs):
        kernel, grid = self.kernel, self.grid
        first = args[0]
        device = (
            first if isinstance(first, torch.Tensor) else next(a for a in args if isinstance(a, torch.Tensor))
        ).device
        if device.type != "cuda" or jit_hooked((kernel,)):
            return kernel[grid](*args, **kwargs)
        device = device.index
        key = (
            kernel,
            grid,
            device,
            tuple([(a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, torch.Tensor) else a for a in args]),
            tuple(kwargs.items()),
        )
        hit = _COMPILED.get(key)
        if hit is None:
            compiled = kernel[grid](*args, **kwargs)
            if hasattr(compiled, "result"):  # compiled asynchronously
                compiled = compiled.result()
            tail = param_tail(kernel, len(args))
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            _COMPILED[key] = (compiled, tail, (*grid, 1, 1)[:3])
            return compiled
        compiled, tail, grid3 = hit
        params = args + tuple([kwargs[n] if n in kwargs else d for n, d in tail]) if tail else args
        run_compiled(compiled, grid3, raw_stream(device), params)
        return compiled


# ---- launch records --------------------------------------------------------------------------

_launch_logs: list[list[str]] = []


@contextmanager
def record_launches() -> Iterator[list[str]]:
    """Collects the names of the Triton kernels launched inside the block."""
    log: list[str] = []
    _launch_logs.append(log)
    try:
        yield log
    finally:
        del _launch_logs[next(i for i, other in enumerate(_launch_logs) if other is log)]  # not by equality


def logging_launches() -> bool:
    return bool(_launch_logs)


def record(name: str) -> None:
    """Logs a launch's name (record_launches; a replay logs the names its recording logged)."""
    for log in _launch_logs:
        log.append(name)
    rec = getattr(_recordings, "rec", None)
    if rec is not None:
        rec.names.append(name)


# The recording (replay.py) this thread's launches and buffers go to, if any.
_recordings = threading.local()


@contextmanager
def recording(rec) -> Iterator[None]:
    """Within the block, this thread's launches, buffers and logged names are also appended to
    rec.launches, rec.allocs and rec.names (replay.py); `not_replayable` clears rec.replayable."""
    outer = getattr(_recordings, "rec", None)
    _recordings.rec = rec
    try:
        yield
    finally:
        _recordings.rec = outer


def not_replayable() -> None:
    """The body this thread is recording does what a replay would not redo (a check that reads a
    buffer back): its signature runs the body on every call (replay.py)."""
    rec = getattr(_recordings, "rec", None)
    if rec is not None:
        rec.replayable = False


# ---- buffers ---------------------------------------------------------------------------------


def version(t: torch.Tensor) -> Optional[int]:
    """t's version counter (how many in-place ops wrote it), None for an inference tensor (which keeps none)."""
    return None if t.is_inference() else t._version


def _made(out: torch.Tensor, zeroed: bool = False) -> torch.Tensor:
    if POISON_OUTPUTS and not zeroed:
        out.fill_(float("nan"))
    rec = getattr(_recordings, "rec", None)
    if rec is not None:
        rec.allocs.append((out, version(out), zeroed))
    return out


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _made(torch.empty(shape, dtype=dtype, device=device))


def zeros(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed buffer (a persistent kernel's workspace): a replay zeroes it again on every call."""
    return _made(torch.zeros(shape, dtype=dtype, device=device), zeroed=True)


def empty_like(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    # preserve_format keeps NCHW or channels_last for dense inputs and picks one of the two
    # for anything else, so the result is always a layout the kernels take as it is.
    return _made(torch.empty_like(x, dtype=dtype, memory_format=torch.preserve_format))
