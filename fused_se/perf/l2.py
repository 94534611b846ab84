"""A model of a card's L2: LRU over 128-byte lines, write-allocate, write-back.

Replayed over the accesses of a sequence of kernels, in the order they ran, it gives the bytes
that would move between L2 and DRAM:

- a read of a line that is not held fetches it (one line from DRAM) and makes it the most
  recently used; a read of a held line costs nothing;
- a write allocates the line without fetching it (write-allocate, whole lines) and marks it
  dirty; a dirty line costs one line of DRAM writes when it is evicted, or at the end (every
  output reaches memory eventually);
- an atomic is a read and a write;
- the cache starts empty (the inputs come from DRAM).

A model, not a card: real L2s are set-associative, split in two partitions on the A100 and
H100, sector-based (32-byte sectors within 128-byte lines), and keep lines by policies that are
not plain LRU. Writes are charged per line, as if each line were written whole.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

LINE_BYTES = 128


@dataclass
class Access:
    """The lines one load, store or span touched, in order, and whether it wrote them."""

    lines: np.ndarray  # int64 line numbers (address // LINE_BYTES), unique
    write: bool
    read: bool = True  # an atomic reads and writes; a store only writes


@dataclass
class Replay:
    """DRAM bytes of a replay, in all and per event (the index of the sequence replayed)."""

    read_bytes: int = 0
    write_bytes: int = 0
    per_event_read: list[int] = field(default_factory=list)
    per_event_write: list[int] = field(default_factory=list)

    @property
    def dram_bytes(self) -> int:
        return self.read_bytes + self.write_bytes


class LRUCache:
    """LRU over lines of line_bytes, capacity_bytes in all; see the module docstring."""

    def __init__(self, capacity_bytes: int, line_bytes: int = LINE_BYTES) -> None:
        if capacity_bytes < line_bytes:
            raise ValueError(f"L2 capacity must hold at least one {line_bytes}-byte line; got {capacity_bytes} bytes")
        self.line_bytes = line_bytes
        self.capacity = capacity_bytes // line_bytes
        # line -> the event that last dirtied it, or -1 while clean
        self._lines: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, line: int) -> bool:
        return line in self._lines

    def access(self, lines: Iterable[int], write: bool, read: bool, owner: int, reads: list, writes: list) -> None:
        """Touches the lines in order; adds DRAM reads to reads[owner] and write-backs to
        writes[event that dirtied the evicted line]."""
        held = self._lines
        cap = self.capacity
        lb = self.line_bytes
        move = held.move_to_end
        for line in lines:
            state = held.get(line)
            if state is None:
                if read and not write:
                    reads[owner] += lb
                elif read and write:  # an atomic on a line not held: fetched, then dirtied
                    reads[owner] += lb
                held[line] = owner if write else -1
                if len(held) > cap:
                    _, dirty = held.popitem(last=False)
                    if dirty >= 0:
                        writes[dirty] += lb
            else:
                move(line)
                if write:
                    held[line] = owner

    def flush(self, writes: list) -> None:
        """Writes every dirty line back (charged to the event that dirtied it) and empties the cache."""
        for dirty in self._lines.values():
            if dirty >= 0:
                writes[dirty] += self.line_bytes
        self._lines.clear()


def replay(events: Sequence[Sequence[Access]], capacity_bytes: int, line_bytes: int = LINE_BYTES) -> Replay:
    """Replays each event's accesses, events in order, through an empty LRUCache; flushes at the end."""
    cache = LRUCache(capacity_bytes, line_bytes)
    reads = [0] * len(events)
    writes = [0] * len(events)
    for i, accesses in enumerate(events):
        for a in accesses:
            cache.access(a.lines.tolist(), a.write, a.read, i, reads, writes)
    cache.flush(writes)
    return Replay(sum(reads), sum(writes), reads, writes)


def span_lines(start: int, end: int, line_bytes: int = LINE_BYTES) -> np.ndarray:
    """The lines of the byte range [start, end)."""
    if end <= start:
        return np.empty(0, dtype=np.int64)
    return np.arange(start // line_bytes, (end - 1) // line_bytes + 1, dtype=np.int64)
