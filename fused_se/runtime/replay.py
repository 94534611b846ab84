"""Replayed calls: an op body's allocations and launches, recorded at the first call of a
signature and redone at the next ones without the Python that chose them.

An op body spends most of its host time deciding: checks, the planner, the block sizes, each
launcher's argument list, triton's binding of every argument. All of it depends on the call's
signature alone (each tensor's shape, strides, dtype, device and 16-byte alignment, every other
argument's value, and the settings the planner reads), never on the tensors' values. So
`Replayed(body)` runs the body once per signature while recording what it did, and turns that
into a program:

    allocations   each buffer launch.empty / launch.empty_like made: its shape, strides, dtype
    launches      each launch through launch.launch: kernel, grid, arguments (a tensor as the
                  input or buffer it is), and the compiled kernel a CUDA launch returned
    outputs       each tensor the body returned, as an input or a buffer
    names         what launch.record logged (record_launches sees a replay as the body)

A later call of the signature allocates the buffers and issues the launches: on CUDA straight to
the compiled kernels (as launch.CachedLauncher does on a hit, without building a key per
launch), with the buffers the body did not return carved from one allocation and passed as
addresses (an int for a pointer: checks.compiled_call); elsewhere, or where a launch hook, a JIT
pre-run hook, another current device or a tool's binder (launch.intercepted) is there, through
launch.launch.

A recording becomes a program only if the launches and the outputs hold no tensor the body made
by other means (a view, a cast, torch.zeros), no input is passed twice, and no op other than a
launch wrote a buffer or an input (their version counters are where they were; inference
tensors keep none, and there only forward bodies run, which write nothing through torch ops).
Otherwise the signature runs the body on every call, as before: a gradient cast to its weight's
dtype, an empty batch (its zeroed gradients), a persistent path whose wait check reads its
workspace back (in the interpreter, or with FUSED_SE_CHECK_WAITS=1: launch.not_replayable). A
persistent kernel's workspace is made by launch.zeros and zeroed again by every replay.

The settings in the signature: what the caller's `settings()` says (the ops: the paths the planner
may take, FUSED_SE_L2_BYTES, FUSED_SE_CHECK_WAITS) and launch.POISON_OUTPUTS. The heuristics' constants are
read when a signature is first seen: after changing one, call clear(). FUSED_SE_REPLAY=0 turns
replays off (read at import).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Optional

import torch

from . import checks, launch
from .env import getenv

ENV = "FUSED_SE_REPLAY"
ENABLED = getenv(ENV) != "0" and checks.check("Tensor._version", checks.version_counter)

# Bytes between the scratch buffers of a direct replay (and their alignment): past the 16 bytes
# triton specialises a pointer on, as the caching allocator's own blocks are.
SCRATCH_ALIGN = 256

# Signatures kept per body; past it the body's table starts again (a long tail of shapes).
MAX_SIGNATURES = 1024

NOT_REPLAYABLE = object()
# A Program's device when its launches were stubbed (launch.stubbed) on a device without compiled
# kernels: it replays straight to the stand-ins, as a CUDA program to its kernels.
STUB_DEVICE = -1
_TABLES: list[dict] = []


def clear() -> None:
    """Forget every recorded program (after changing a heuristic the bodies read)."""
    for table in _TABLES:
        table.clear()


def signature(args: tuple, settings: tuple = ()) -> tuple:
    """What a body's decisions may depend on: each tensor's dtype, device, shape, strides and
    address modulo 16 (what triton specialises a pointer on), every other argument's value, and
    the settings the body reads."""
    parts = [settings, launch.POISON_OUTPUTS, bool(launch._STUBS)]
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append((a.dtype, a.device, a.shape, a.stride(), a.data_ptr() & 15))
        else:
            parts.append(a)
    return tuple(parts)


class _Launch:
    """One recorded launch: the arguments with each tensor's place left to fill from the slots."""

    __slots__ = ("args", "compiled", "grid", "grid3", "kernel", "kwargs", "params", "tensors")

    def __init__(self, kernel, grid, args: list, kwargs: dict, tensors: tuple, compiled):
        self.kernel, self.grid, self.args, self.kwargs, self.tensors = kernel, grid, args, kwargs, tensors
        self.compiled = compiled if launch.direct_call(compiled) else None
        if self.compiled is not None:  # as CachedLauncher calls it: every parameter, constexprs too
            tail = [kwargs[n] if n in kwargs else d for n, d in launch.param_tail(kernel, len(args))]
            self.params = args + tail
            self.grid3 = (*grid, 1, 1)[:3]


class Program:
    """A body's allocations, launches, logged names and outputs for one signature.

    On the direct path the buffers the body did not return (its scratch: partial sums, the
    excitation's intermediates, a persistent kernel's workspace) are carved from one allocation
    and passed to the compiled kernels as addresses (`offsets`, SCRATCH_ALIGN bytes apart), the
    zeroed ones first (`zeroed_bytes`, zeroed in one fill per call); the outputs are tensors of
    their own."""

    __slots__ = (
        "allocs", "as_tuple", "calls", "consts", "device", "direct_out", "first", "fixed", "kernels", "launches",
        "made", "makers", "names", "offsets", "outputs", "scratch", "scratch_bytes", "scratch_maker",
        "zeroed_bytes",
    )  # fmt: skip

    def __init__(self, allocs, launches, names, outputs, as_tuple, device, first_alloc_slot: int):
        self.allocs, self.launches, self.names = allocs, launches, names
        self.kernels = tuple({id(ln.kernel): ln.kernel for ln in launches}.values())  # each once, for jit_hooked
        self.outputs, self.as_tuple, self.device = outputs, as_tuple, device
        self.first = first_alloc_slot  # slots: the arguments, then the buffers
        returned = {i for i in outputs if isinstance(i, int)}
        self.offsets = [None] * len(allocs)
        # an empty output (a gradient not asked for) made once: it holds nothing a caller could see
        self.fixed = [
            torch.empty_strided(shape, stride, dtype=dtype, device=dev) if 0 in shape and first_alloc_slot + j in returned
            else None
            for j, (shape, stride, dtype, dev, _) in enumerate(allocs)
        ]  # fmt: skip
        # each buffer's maker: new_empty_strided of an empty tensor of its dtype and device, which
        # takes no keyword arguments to parse (torch.empty_strided's dtype and device)
        protos: dict = {}
        self.makers = [
            protos.setdefault((dtype, dev), torch.empty(0, dtype=dtype, device=dev)).new_empty_strided
            for _, _, dtype, dev, _ in allocs
        ]
        self.scratch_maker = (
            torch.empty(0, dtype=torch.uint8, device=allocs[0][3]).new_empty_strided if allocs else None
        )
        self.scratch_bytes = self.zeroed_bytes = 0
        for zeroed in (True, False):  # the zeroed scratch first, so that one fill zeroes it all
            for j, (shape, stride, dtype, _, z) in enumerate(allocs):
                if z != zeroed or device is None or first_alloc_slot + j in returned:
                    continue
                self.offsets[j] = self.scratch_bytes
                span = 0 if 0 in shape else 1 + sum((n - 1) * st for n, st in zip(shape, stride, strict=True))
                self.scratch_bytes += -(-span * dtype.itemsize // SCRATCH_ALIGN) * SCRATCH_ALIGN
            if zeroed:
                self.zeroed_bytes = self.scratch_bytes
        self.calls = None  # the direct path's launches, where every launch was compiled
        if device is not None and all(ln.compiled is not None for ln in launches):
            self._lay_out_direct()

    def _lay_out_direct(self) -> None:
        """The direct path's slots: the arguments, the buffers made per call (`made`: maker, shape,
        strides, zeroed), the scratch's addresses (`scratch`: offsets from the base), then every
        value that is the same on each call (`consts`: the launches' other parameters among their
        tensors, and the empty outputs made once). Each launch takes its parameters up to its last
        tensor from them with one itemgetter, and the rest as they were recorded (`calls`: compiled
        kernel, grid, getter, the tuple of the rest); `direct_out` picks the outputs."""
        n_args, slot_of = self.first, {}
        self.made, self.scratch, self.consts = [], [], []
        for j, ((shape, stride, _, _, zeroed), offset, make) in enumerate(
            zip(self.allocs, self.offsets, self.makers, strict=True)
        ):
            if offset is None and self.fixed[j] is None:
                slot_of[n_args + j] = n_args + len(self.made)
                self.made.append((make, shape, stride, zeroed))
        for j, offset in enumerate(self.offsets):
            if offset is not None:
                slot_of[n_args + j] = n_args + len(self.made) + len(self.scratch)
                self.scratch.append(offset)
        n_slots = n_args + len(self.made) + len(self.scratch)

        def const(value) -> int:
            self.consts.append(value)
            return n_slots + len(self.consts) - 1

        for j, fixed in enumerate(self.fixed):
            if fixed is not None:
                slot_of[n_args + j] = const(fixed)
        self.calls = []
        for ln in self.launches:
            tensors = dict(ln.tensors)
            # the parameters up to the last tensor's from the slots, the rest as one tuple
            end = 1 + max(tensors, default=-1)
            index = [
                slot_of.get(tensors[pos], tensors[pos]) if pos in tensors else const(value)
                for pos, value in enumerate(ln.params[:end])
            ]
            self.calls.append((ln.compiled, ln.grid3, _getter(index), tuple(ln.params[end:])))
        index = [slot_of.get(i, i) if isinstance(i, int) else const(i[0]) for i in self.outputs]
        self.direct_out = _getter(index) if self.as_tuple else _getter(index[:1])

    def __call__(self, args: tuple):
        if not self._direct():
            return self._call_launching(args)
        slots = list(args)
        poison = launch.POISON_OUTPUTS
        for make, shape, stride, zeroed in self.made:
            t = make(shape, stride)
            slots.append(t.zero_() if zeroed else t.fill_(float("nan")) if poison else t)
        if self.scratch:
            scratch = self.scratch_maker((self.scratch_bytes,), (1,))
            if poison:
                scratch.fill_(255)  # NaN in every float width, as launch.empty's poison
            if self.zeroed_bytes:
                scratch[: self.zeroed_bytes].zero_()
            # (freed on return: the stream's later work reuses it in order)
            slots.extend(map(scratch.data_ptr().__add__, self.scratch))
        slots.extend(self.consts)
        if launch._launch_logs:  # (the list itself: a call per replay costs more than the test)
            self._log()
        launch.run_compiled_each(self.calls, 0 if self.device == STUB_DEVICE else launch.raw_stream(self.device), slots)
        out = self.direct_out(slots)
        return out if self.as_tuple else out[0]

    def _call_launching(self, args: tuple):
        """A replay through launch.launch: every buffer a tensor, each launch bound as the body's was."""
        slots = self._slots(args)
        if launch._launch_logs:
            self._log()
        for ln in self.launches:
            a = ln.args.copy()
            for pos, slot in ln.tensors:
                a[pos] = slots[slot]
            launch.launch(ln.kernel, ln.grid)(*a, **ln.kwargs)
        return self._outputs(slots)

    def _slots(self, args: tuple) -> list:
        """The arguments, then each buffer: the empty output made once, or a new tensor."""
        slots = list(args)
        poison = launch.POISON_OUTPUTS
        for (shape, stride, _, _, zeroed), fixed, make in zip(self.allocs, self.fixed, self.makers, strict=True):
            if fixed is not None:
                slots.append(fixed)
            else:
                t = make(shape, stride)
                slots.append(t.zero_() if zeroed else t.fill_(float("nan")) if poison else t)
        return slots

    def _log(self) -> None:
        for name in self.names:
            launch.record(name)

    def _outputs(self, slots: list):
        if self.as_tuple:
            return tuple([slots[i] if type(i) is int else i[0] for i in self.outputs])
        i = self.outputs[0]
        return slots[i] if isinstance(i, int) else i[0]

    def _direct(self) -> bool:
        """Whether the launches may go straight to their compiled kernels: each launch compiled
        (CUDA), nothing hooked or intercepted, the device current."""
        if self.calls is None or launch._INTERCEPTS:
            return False
        if self.device == STUB_DEVICE:
            return bool(launch._STUBS)
        if launch.jit_hooked(self.kernels):
            return False
        return torch.cuda.current_device() == self.device


def _getter(index: list) -> Callable[[list], tuple]:
    """A tuple of the items at these indices, in one C call."""
    if len(index) == 1:
        (i,) = index
        return lambda slots: (slots[i],)
    return operator.itemgetter(*index) if index else lambda slots: ()


class _Recording:
    def __init__(self):
        self.replayable = True  # cleared by launch.not_replayable
        self.allocs: list = []  # (tensor, its version once made, whether it was made zeroed)
        self.launches: list = []  # (kernel, grid, args, kwargs, what the launcher returned)
        self.names: list = []  # what launch.record logged, from this thread only


def _record(body: Callable, args: tuple):
    """(the body's result, its Program or NOT_REPLAYABLE)."""
    rec = _Recording()
    versions = [(a, launch.version(a)) for a in args if isinstance(a, torch.Tensor)]
    with launch.recording(rec):
        result = body(*args)
    return result, _program(rec, args, versions, result)


def _program(rec: _Recording, args: tuple, versions: list, result):
    if not rec.replayable:
        return NOT_REPLAYABLE
    if any(launch.version(t) != v for t, v, *_ in (*versions, *rec.allocs)):
        return NOT_REPLAYABLE  # something other than a launch wrote a tensor
    slot_of = {id(a): i for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    if len(slot_of) != len(versions):
        return NOT_REPLAYABLE  # one tensor passed twice: its launches could not tell the two apart
    for j, (t, *_) in enumerate(rec.allocs):
        slot_of[id(t)] = len(args) + j
    launches, devices = [], set()
    for kernel, grid, largs, kwargs, compiled in rec.launches:
        if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            return NOT_REPLAYABLE
        tensors = []
        for pos, a in enumerate(largs):
            if isinstance(a, torch.Tensor):
                slot = slot_of.get(id(a))
                if slot is None:
                    return NOT_REPLAYABLE  # made by other means than launch.empty
                tensors.append((pos, slot))
                devices.add(a.device)
        template = [None if isinstance(a, torch.Tensor) else a for a in largs]
        launches.append(_Launch(kernel, grid, template, dict(kwargs), tuple(tensors), compiled))
    as_tuple = isinstance(result, (tuple, list))
    outputs = []
    for r in result if as_tuple else (result,):
        if isinstance(r, torch.Tensor):
            slot = slot_of.get(id(r))
            if slot is None:
                return NOT_REPLAYABLE
            outputs.append(slot)
        else:
            outputs.append((r,))
    allocs = [(tuple(t.shape), t.stride(), t.dtype, t.device, zeroed) for t, _, zeroed in rec.allocs]
    device = None
    if len(devices) == 1 and all(ln.compiled is not None for ln in launches):
        (dev,) = devices
        device = dev.index if dev.type == "cuda" else STUB_DEVICE if launch._STUBS else None
    return Program(allocs, launches, tuple(rec.names), outputs, as_tuple, device, len(args))


class Replayed:
    """body, replayed per signature where applies(args) (the calls that launch kernels);
    elsewhere (default: body) runs the calls where it does not. settings(): what else the body's
    decisions read (the planner's switches), part of the signature."""

    def __init__(
        self,
        body: Callable,
        applies: Callable[[tuple], bool],
        elsewhere: Optional[Callable] = None,
        settings: Callable[[], tuple] = tuple,
    ):
        self.__wrapped__ = body
        self.applies, self.settings = applies, settings
        self.elsewhere = body if elsewhere is None else elsewhere
        self.table: dict = {}  # signature -> Program, or NOT_REPLAYABLE (for tests and tools)
        _TABLES.append(self.table)

    def __call__(self, *args):
        return self.keyed(args)[0]

    def keyed(self, args: tuple, key: Optional[tuple] = None) -> tuple:
        """(the body's result, the Program it was replayed or recorded as, or None where it ran as a
        plain call). key: a key that determines this call's signature, given instead of it (`derived`)."""
        if not self.applies(args):
            return self.elsewhere(*args), None
        if not ENABLED:
            return self.__wrapped__(*args), None
        if key is None:
            key = signature(args, self.settings())
        program = self.table.get(key)
        if program is None:
            return self._record_as(args, key)
        return self.run(args, program)

    def derived_call(self, args: tuple, key: tuple):
        """keyed(args, key)[0] for a key `derived` from a Program: its device, where the kernels
        launched, is this call's (applies is not asked)."""
        program = self.table.get(key)
        if program is None:
            return self._record_as(args, key)[0]
        if program is NOT_REPLAYABLE:
            return self.__wrapped__(*args)
        return program(args)

    def _record_as(self, args: tuple, key: tuple) -> tuple:
        """(the body's result, its Program or None), recorded under key."""
        result, program = _record(self.__wrapped__, args)
        table = self.table
        if len(table) >= MAX_SIGNATURES:
            table.clear()
        table[key] = program
        return result, (None if program is NOT_REPLAYABLE else program)

    def run(self, args: tuple, program) -> tuple:
        """keyed(args) for the Program (or NOT_REPLAYABLE) that `table` holds for these args'
        signature (a caller's lookup: table.get(signature(args, settings))). It was
        recorded where applies(args) held, which its signature fixes (x's device): not asked again.
        A Program stays valid for its signature after the table is cleared."""
        if program is NOT_REPLAYABLE:
            return self.__wrapped__(*args), None
        return program(args), program


def derived(program: Program, grad: torch.Tensor, flags: tuple, settings: tuple = ()) -> tuple:
    """A backward's key, for a backward whose other arguments the call that `program` ran determined
    (its saved inputs and the outputs the Program made): the Program itself (hashed by identity, and
    kept alive by the key, so that its identity is never another's), the gradient's strides and
    alignment (autograd hands a gradient in its output's shape, dtype and device, which the Program
    fixed), the other arguments' values (`flags`) and the settings."""
    return program, grad.stride(), grad.data_ptr() & 15, flags, settings, launch.POISON_OUTPUTS, bool(launch._STUBS)
