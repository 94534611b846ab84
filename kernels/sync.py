"""How the persistent kernels (spread and streamed) hand work between programs: a ticket counter,
per-chunk counts and flags in an int32 workspace, and waits that give up.

The workspace's three regions each start a 128-byte line of their own (LINE int32 slots): the
ticket counter (with the failed waits, written only when a wait gives up), the counts, the flags.
A ticket is taken with a relaxed atomic (no fence): the counts (acq_rel) and flags (release,
acquire) alone order the data between programs. A program takes its next ticket before it works
on the current one, so the counter's round trip overlaps the work.

A wait polls a flag at most hz.WAIT_MAX_POLLS times; a wait that gives up is counted in the
workspace and the launch runs to its end, so a bug or a fault turns into an error, never a hang.
Where programs run one after another (the interpreter), a wait does not poll: the order of the
tickets alone must have satisfied it, and a miss is counted in the same slot. The launchers check
that slot where it costs nothing (the interpreter), and on a GPU when FUSED_SE_CHECK_WAITS=1.
The ordering proof is in docs/DESIGN.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..runtime.env import getenv
from ..runtime.launch import INTERPRETED, is_fake, not_replayable, zeros
from . import heuristics as hz

# int32 slots in a 128-byte line; the counts start the second line, the flags the line after them.
LINE = tl.constexpr(32)
TICKET, FAILED_WAITS, FIRST_COUNT = 0, 1, LINE.value
CHECK_ENV = "FUSED_SE_CHECK_WAITS"


def first_flag(counts: int) -> int:
    """The slot of the first flag after `counts` counts: the start of a line."""
    return FIRST_COUNT + -(-counts // LINE.value) * LINE.value


@triton.jit
def take_ticket(ws_ptr):
    """The next ticket: relaxed, since the tickets order no data (the counts and flags do)."""
    return tl.atomic_add(ws_ptr, 1, sem="relaxed")


@triton.jit
def counts_at(ws_ptr):
    """The first count (see first_flag)."""
    return ws_ptr + LINE


@triton.jit
def flags_at(ws_ptr, counts):
    """The first flag after `counts` counts (see first_flag)."""
    return ws_ptr + LINE + tl.cdiv(counts, LINE) * LINE


@triton.jit
def arrive(count_ptr, n):
    """Counts this program's first-pass tile of a chunk done (n in all); True for the last one.
    Its partial sums are stored first (the barrier), and released by the atomic."""
    tl.debug_barrier()
    return tl.atomic_add(count_ptr, 1, sem="acq_rel") == n - 1


@triton.jit
def publish(flag_ptr):
    """The chunk's excitation is stored: lets its second-pass tiles go."""
    tl.debug_barrier()
    tl.atomic_xchg(flag_ptr, 1, sem="release")


@triton.jit
def wait_for(flag_ptr, failed_ptr, max_polls, WAIT: tl.constexpr, target=1):
    """Waits until the counter at flag_ptr reaches target, polling it at most max_polls times, and
    returns whether it got there. A wait that gives up is counted at failed_ptr and the program goes
    on, writing NaN where it would have written what the wait guarded (`poisoned`): a result that
    cannot pass for a plausible one, whether or not the launcher reads the count. Deadlock-free
    without co-residency (docs/DESIGN.md), so a wait gives up only on a bug or a fault. Where
    programs run one after another (WAIT False: the interpreter), the order of the tickets alone
    must have got there; a miss is counted at failed_ptr too. Triton has no portable sleep: the
    polls are not spaced out."""
    if WAIT:
        seen = tl.atomic_add(flag_ptr, 0, sem="acquire")
        polls = 1
        while (seen < target) & (polls < max_polls):
            seen = tl.atomic_add(flag_ptr, 0, sem="acquire")
            polls += 1
        if seen < target:
            tl.atomic_add(failed_ptr, 1)
    else:
        seen = tl.atomic_add(flag_ptr, 0, sem="acquire")
        tl.atomic_add(failed_ptr, (seen < target).to(tl.int32))
    tl.debug_barrier()
    return seen >= target


@triton.jit
def poisoned(v, met):
    """v where its wait was met (`wait_for`'s result), NaN where the wait gave up."""
    return tl.where(met, v, float("nan"))


# Where the interpreter polls too (tests of the give-up path set it): programs then spin as on a GPU.
SPIN_IN_INTERPRETER = False


def spins() -> bool:
    """Whether the persistent kernels poll their flags (WAIT): on a GPU, or where a test asks for it."""
    return not INTERPRETED or SPIN_IN_INTERPRETER


def workspace(counts: int, flags: int, device: torch.device) -> torch.Tensor:
    """The zeroed int32 workspace: the ticket counter and the failed waits, then `counts` counts,
    then `flags` flags, each region on lines of its own."""
    return zeros(first_flag(counts) + flags, dtype=torch.int32, device=device)


def check_waits(ws: torch.Tensor, tickets: int, programs: int, kernel: str, shape: tuple[int, ...]) -> None:
    """Raises where a wait gave up (or, in the interpreter, was satisfied only by luck), or where a
    ticket went untaken. Free in the interpreter (CPU tensors); on a GPU it synchronises, so it runs
    only when FUSED_SE_CHECK_WAITS=1."""
    if not INTERPRETED and getenv(CHECK_ENV) != "1":
        return
    if is_fake(ws) or torch.compiler.is_compiling() or (ws.is_cuda and torch.cuda.is_current_stream_capturing()):
        return  # nothing to read while tracing or capturing a CUDA graph: each replay's count stays in ws
    not_replayable()  # a replay would not read it: this signature runs its body every call
    taken, failed = int(ws[TICKET]), int(ws[FAILED_WAITS])
    if failed == 0 and taken == tickets + programs:
        return
    what = (
        f"{failed} waits gave up after {hz.WAIT_MAX_POLLS} polls"
        if spins()
        else f"{failed} reads before their flag was set by the order of the tickets alone"
    )
    raise RuntimeError(
        f"fused_se: {kernel} on x of shape {tuple(shape)} failed: {what}, {taken} of {tickets} tickets "
        f"(+{programs} final) taken; its outputs are not valid. Set FUSED_SE_PATHS=three_launch to run the "
        "three-launch path instead, and please report the shape, dtype and card."
    )
