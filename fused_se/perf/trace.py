"""Counting the bytes a call moves: every Triton kernel's loads, stores and atomics (through
the Triton interpreter), and every aten op around them, as kernels in the order they ran.

Triton kernels: the interpreter runs each load and store of each program through numpy; the
Tracer wraps its builder's masked load and store and its atomics and records, per launch, the
lines (128 bytes) that the elements the mask lets through touch, and the bytes they request
(elements x element size). Within a launch the accesses keep the interpreter's order: programs
one after another, each in program order (for the persistent kernels, whose first program
takes every ticket, that is ticket order).

Aten ops (eager PyTorch, and the torch ops around the fused kernels): a TorchDispatchMode sees
each op; each one that computes is one kernel that reads the spans of its tensor inputs and
writes the spans of its outputs (a span: from the lowest to the highest byte a strided view
covers; a broadcast input spans only its own bytes). Free, as on a GPU, where no kernel runs:
views and aliases (an output sharing an input's storage, from an op that writes none: view,
t, expand, select, detach, a `.to` to the same dtype), allocations (empty, empty_like,
new_empty, empty_strided), and the `*_like` ops' template argument, which is read for its
shape only. The fused_se ops are opened up: their bodies run under the mode, so their own
allocations, casts and sums count too.

Needs the kernels interpreted (TRITON_INTERPRET=1 before triton was first imported).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .l2 import LINE_BYTES, Access, span_lines

# aten ops that allocate without a kernel, and ops whose tensor inputs are templates only
ALLOCATIONS = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "set_", "resize_"})
TEMPLATE_ONLY = frozenset({"zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "new_zeros", "new_ones"})
# in-place ops that overwrite their target without reading it
WRITE_ONLY = frozenset({"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_"})


@dataclass
class Event:
    """One kernel: a Triton launch or an aten op that computes."""

    name: str
    kind: str  # "triton" or "aten"
    phase: str
    requested: int = 0  # bytes asked for: loads, stores and atomics (aten: the spans read and written)
    read: int = 0
    written: int = 0
    accesses: list[Access] = field(default_factory=list)


@dataclass
class Trace:
    events: list[Event] = field(default_factory=list)
    free_ops: dict[str, int] = field(default_factory=dict)  # aten ops taken as free, with their counts

    def select(self, *phases: str) -> list[Event]:
        return [e for e in self.events if e.phase in phases]


def interpreter_hooks_available() -> Optional[str]:
    """None where this triton's interpreter has what the Tracer wraps; else why not."""
    try:
        from triton.runtime import interpreter
    except ImportError as e:
        return f"triton's interpreter cannot be imported: {e}"
    missing = [
        name
        for owner, name in (
            (interpreter.InterpreterBuilder, "create_masked_load"),
            (interpreter.InterpreterBuilder, "create_masked_store"),
            (interpreter.InterpreterBuilder, "create_atomic_rmw"),
            (interpreter.InterpreterBuilder, "create_atomic_cas"),
            (interpreter.GridExecutor, "__call__"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        import triton

        return (
            f"triton {triton.__version__}'s interpreter has no {', '.join(missing)}: the byte counter wraps "
            "InterpreterBuilder's masked load/store and atomics and GridExecutor.__call__ (triton 3.x)"
        )
    return None


def _elem_bytes(handle) -> int:
    return max(1, handle.get_element_ty().primitive_bitwidth // 8)


def _lines_of(addrs: np.ndarray) -> np.ndarray:
    return np.unique(addrs.astype(np.int64) // LINE_BYTES)


def _tensor_span(t: torch.Tensor, base: int) -> tuple[int, int]:
    """[start, end) in bytes of what the strided view covers, its storage placed at base."""
    if t.numel() == 0:
        return 0, 0
    es = t.element_size()
    lo = sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True) if s < 0)
    hi = sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True) if s > 0)
    first = base + t.storage_offset() * es
    return first + lo * es, first + (hi + 1) * es


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _op_body(name: str):
    """The Python body of the fused_se op `name` (a triton_op), from the module that declares it."""
    from fused_se import ops, ops_scse

    for module in (ops, ops_scse):
        op = getattr(module, name, None)
        if op is not None:
            return op._init_fn
    raise LookupError(f"no fused_se op {name!r} in fused_se.ops or fused_se.ops_scse")


class _Mode(TorchDispatchMode):
    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tr = self.tracer
        if tr._in_launch:
            return func(*args, **kwargs)
        if func.namespace == "fused_se":
            body = _op_body(func._opname)
            with self:
                return body(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in ALLOCATIONS:
            out = func(*args, **kwargs)
            tr._free(name)
            return out
        reads: list[torch.Tensor] = []
        written: list[tuple[torch.Tensor, bool]] = []  # (tensor, whether the op reads it first)
        if name not in TEMPLATE_ONLY:
            schema_args = func._schema.arguments
            named = [(schema_args[i] if i < len(schema_args) else None, a) for i, a in enumerate(args)]
            named += [(next((s for s in schema_args if s.name == k), None), a) for k, a in kwargs.items()]
            for spec, a in named:
                info = spec.alias_info if spec is not None else None
                if info is not None and info.is_write:
                    rmw = name not in WRITE_ONLY and spec.name != "out"
                    written.extend((t, rmw) for t in _tensors(a))
                else:
                    reads.extend(_tensors(a))
        out = func(*args, **kwargs)
        inputs = {_storage_key(t) for t in reads + [w for w, _ in written] if t.numel()}
        outs = [t for t in _tensors(out) if t.numel()]
        if not written:
            outs = [t for t in outs if _storage_key(t) not in inputs]  # aliases of an input: free
            if not outs:
                tr._free(name)
                return out
        ev = tr._open(f"aten.{name}", "aten")
        for t in reads:
            if t.numel():
                start, end = _tensor_span(t, tr._vbase(t))
                ev.accesses.append(Access(span_lines(start, end), write=False))
                ev.read += end - start
        spans: dict[tuple[int, int], bool] = {}
        for t, rmw in written:
            if t.numel():
                spans[_tensor_span(t, tr._vbase(t))] = rmw
        for t in outs:
            spans.setdefault(_tensor_span(t, tr._vbase(t)), False)
        for (start, end), rmw in spans.items():
            ev.accesses.append(Access(span_lines(start, end), write=True, read=rmw))
            ev.written += end - start
            if rmw:
                ev.read += end - start
        ev.requested = ev.read + ev.written
        return out


class Tracer:
    """Records the kernels a block of code runs (see the module docstring); use as a context
    manager, and tag the parts with phase()."""

    def __init__(self) -> None:
        why = interpreter_hooks_available()
        if why:
            raise RuntimeError(f"fused_se.perf: {why}")
        from fused_se.kernels import common

        if not common.INTERPRETED:
            raise RuntimeError(
                "fused_se.perf counts bytes through the Triton interpreter: set TRITON_INTERPRET=1 before "
                "triton is first imported (python -m fused_se.perf does)"
            )
        self.trace = Trace()
        self._phase = ""
        self._in_launch = False
        self._current: Optional[Event] = None
        # Storages get addresses of their own, 512-byte aligned as the CUDA caching allocator
        # aligns its blocks (the CPU allocator aligns to 64 bytes only, which would split rows
        # across lines that a GPU would not): (storage address, bytes) -> virtual base.
        self._bases: dict[tuple[int, int], int] = {}
        self._next_base = 1 << 40
        self._ranges = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))

    def _vbase(self, t: torch.Tensor) -> int:
        st = t.untyped_storage()
        key = (st.data_ptr(), st.nbytes())
        base = self._bases.get(key)
        if base is None:
            base = self._bases[key] = self._next_base
            self._next_base += -(-max(1, key[1]) // 512) * 512 + 512
        return base

    def _launch_ranges(self, values) -> None:
        """The storages a launch's tensor arguments live in, for mapping its addresses."""
        spans = {}
        for t in values:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                st = t.untyped_storage()
                spans[st.data_ptr()] = (st.data_ptr() + st.nbytes(), self._vbase(t))
        starts = np.array(sorted(spans), dtype=np.int64)
        self._ranges = (
            starts,
            np.array([spans[s][0] for s in starts], dtype=np.int64),
            np.array([spans[s][1] for s in starts], dtype=np.int64),
        )

    def _virtual(self, addrs: np.ndarray) -> np.ndarray:
        starts, ends, bases = self._ranges
        a = addrs.astype(np.int64)
        idx = np.searchsorted(starts, a, side="right") - 1
        if idx.min() < 0 or not np.all(a < ends[idx]):
            raise RuntimeError("fused_se.perf: a kernel touched memory outside its tensor arguments")
        return a - starts[idx] + bases[idx]

    def phase(self, name: str) -> None:
        self._phase = name

    def _open(self, name: str, kind: str) -> Event:
        ev = Event(name, kind, self._phase)
        self.trace.events.append(ev)
        return ev

    def _free(self, name: str) -> None:
        self.trace.free_ops[name] = self.trace.free_ops.get(name, 0) + 1

    def _memory(self, ptrs, mask, write: bool, read: bool) -> None:
        ev = self._current
        if ev is None:
            return
        addrs = ptrs.data
        if mask is not None:
            m = np.broadcast_to(mask.data.astype(bool, copy=False), addrs.shape)
            addrs = addrs[m]
        else:
            addrs = addrs.reshape(-1)
        if addrs.size == 0:
            return
        nbytes = int(addrs.size) * _elem_bytes(ptrs)
        ev.requested += nbytes * (2 if read and write else 1)
        if read:
            ev.read += nbytes
        if write:
            ev.written += nbytes
        ev.accesses.append(Access(_lines_of(self._virtual(addrs)), write=write, read=read))

    @contextmanager
    def _patched(self) -> Iterator[None]:
        from triton.runtime import interpreter as ti

        builder, executor = ti.InterpreterBuilder, ti.GridExecutor
        saved = {
            "load": builder.create_masked_load,
            "store": builder.create_masked_store,
            "rmw": builder.create_atomic_rmw,
            "cas": builder.create_atomic_cas,
            "call": executor.__call__,
        }
        tracer = self

        def masked_load(b, ptrs, mask, *rest):
            tracer._memory(ptrs, mask, write=False, read=True)
            return saved["load"](b, ptrs, mask, *rest)

        def masked_store(b, ptrs, value, mask, *rest):
            tracer._memory(ptrs, mask, write=True, read=False)
            return saved["store"](b, ptrs, value, mask, *rest)

        def atomic_rmw(b, op, ptr, val, mask, *rest):
            tracer._memory(ptr, mask, write=True, read=True)
            return saved["rmw"](b, op, ptr, val, mask, *rest)

        def atomic_cas(b, ptr, cmp, val, *rest):
            tracer._memory(ptr, None, write=True, read=True)
            return saved["cas"](b, ptr, cmp, val, *rest)

        real_patch_lang = ti._patch_lang
        langs = (ti.tl, ti.tl.core)

        def call(ex, *args, **kwargs):
            ev = tracer._open(ex.fn.__name__, "triton")
            tracer._launch_ranges([*args, *kwargs.values()])
            tracer._current, tracer._in_launch = ev, True
            # Speed only: the interpreter patches triton.language (module-wide) at the launch
            # and again, to no effect, at every call of a jit helper: patch each module once.
            patched: set[int] = set()
            scopes = []

            def patch_once(fn):
                found = {id(v) for v in fn.__globals__.values() if any(v is m for m in langs)}
                if not found <= patched:
                    patched.update(found)
                    scopes.append(real_patch_lang(fn))
                return ti._LangPatchScope()

            ti._patch_lang = patch_once
            try:
                return saved["call"](ex, *args, **kwargs)
            finally:
                ti._patch_lang = real_patch_lang
                for scope in reversed(scopes):
                    scope.restore()
                tracer._current, tracer._in_launch = None, False

        builder.create_masked_load = masked_load
        builder.create_masked_store = masked_store
        builder.create_atomic_rmw = atomic_rmw
        builder.create_atomic_cas = atomic_cas
        executor.__call__ = call
        try:
            yield
        finally:
            builder.create_masked_load = saved["load"]
            builder.create_masked_store = saved["store"]
            builder.create_atomic_rmw = saved["rmw"]
            builder.create_atomic_cas = saved["cas"]
            executor.__call__ = saved["call"]

    def __enter__(self) -> Tracer:
        self._stack = self._patched()
        self._stack.__enter__()
        self._mode = _Mode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._stack.__exit__(*exc)
