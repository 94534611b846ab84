"""The L2 model on its own: LRU over lines, write-allocate without a fetch, write-back."""

import numpy as np
import pytest

from fused_se.perf.l2 import Access, LRUCache, replay, span_lines


def _acc(lines, write=False, read=True):
    return Access(np.array(lines, dtype=np.int64), write=write, read=read)


def test_reads_miss_once_then_hit():
    r = replay([[_acc([0, 1, 2])], [_acc([2, 1, 0])]], capacity_bytes=4 * 128)
    assert r.per_event_read == [3 * 128, 0]
    assert r.write_bytes == 0


def test_lru_evicts_the_least_recently_used_line():
    # capacity 2: 0, 1, touch 0, then 2 evicts 1 (not 0)
    cache = LRUCache(2 * 128)
    reads, writes = [0], [0]
    for line in (0, 1, 0, 2):
        cache.access([line], write=False, read=True, owner=0, reads=reads, writes=writes)
    assert 0 in cache and 2 in cache and 1 not in cache
    assert reads == [3 * 128]


def test_write_allocates_without_fetch_and_writes_back_on_eviction():
    # event 0 writes line 5; event 1 reads 6 and 7 (capacity 2): 5 is evicted dirty, charged to event 0
    r = replay([[_acc([5], write=True, read=False)], [_acc([6, 7])]], capacity_bytes=2 * 128)
    assert r.per_event_read == [0, 2 * 128]
    assert r.per_event_write == [128, 0]


def test_dirty_lines_are_flushed_at_the_end_and_a_clean_eviction_costs_nothing():
    r = replay([[_acc([1, 2], write=True, read=False), _acc([3])]], capacity_bytes=8 * 128)
    assert (r.read_bytes, r.write_bytes) == (128, 2 * 128)
    r = replay([[_acc([1, 2, 3])]], capacity_bytes=128)
    assert r.write_bytes == 0 and r.read_bytes == 3 * 128


def test_an_atomic_fetches_its_line_and_dirties_it():
    r = replay([[_acc([9], write=True, read=True)]], capacity_bytes=128)
    assert (r.read_bytes, r.write_bytes) == (128, 128)


def test_a_stream_past_capacity_misses_on_the_second_read():
    lines = list(range(100))
    small = replay([[_acc(lines)], [_acc(lines)]], capacity_bytes=50 * 128)
    large = replay([[_acc(lines)], [_acc(lines)]], capacity_bytes=100 * 128)
    assert small.read_bytes == 200 * 128
    assert large.read_bytes == 100 * 128


def test_span_lines_and_capacity_checks():
    assert span_lines(100, 300).tolist() == [0, 1, 2]
    assert span_lines(128, 256).tolist() == [1]
    assert span_lines(5, 5).size == 0
    with pytest.raises(ValueError, match="at least one"):
        LRUCache(64)
