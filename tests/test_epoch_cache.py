"""LeaderEpochCache: Kafka's leader-epoch bookkeeping and its checkpoint file."""
import os

import pytest
from hypothesis import given, settings, strategies as st

from pylog.storage.checkpoint import CorruptCheckpointError, read_epoch_checkpoint
from pylog.storage.epoch_cache import (EPOCH_CHECKPOINT_NAME, UNDEFINED_EPOCH,
                                       UNDEFINED_EPOCH_OFFSET, LeaderEpochCache)

UNDEFINED = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)


def cache_of(*entries):
    return LeaderEpochCache(None, list(entries))


def test_assign_appends_new_epochs_and_ignores_known_ones():
    cache = cache_of()
    assert cache.latest_epoch is None
    assert cache.assign(0, 0)
    assert not cache.assign(0, 5)          # a later batch of the current epoch
    assert cache.assign(2, 10)
    assert not cache.assign(2, 12)
    assert cache.entries == [(0, 0), (2, 10)]
    assert cache.latest_epoch == 2


def test_stale_epoch_is_ignored():
    cache = cache_of((1, 0), (3, 10))
    assert not cache.assign(2, 20)
    assert cache.entries == [(1, 0), (3, 10)]


def test_conflicting_tail_is_replaced():
    cache = cache_of((0, 0), (1, 10), (2, 20))
    assert cache.assign(3, 15)             # a newer epoch starting inside (1, ...) and before 2
    assert cache.entries == [(0, 0), (1, 10), (3, 15)]
    assert cache.assign(3, 12)             # same epoch, earlier start: replaces it
    assert cache.entries == [(0, 0), (1, 10), (3, 12)]
    assert cache.assign(4, 0)              # newer epoch at the very start: everything goes
    assert cache.entries == [(4, 0)]


def test_negative_values_are_refused():
    with pytest.raises(ValueError):
        cache_of().assign(-1, 0)
    with pytest.raises(ValueError):
        cache_of().assign(0, -1)
    with pytest.raises(ValueError):
        cache_of((2, 0), (1, 5))


def test_end_offset_for_kafka_semantics():
    cache = cache_of((1, 0), (3, 10), (5, 20))
    log_end = 25
    assert cache.end_offset_for(UNDEFINED_EPOCH, log_end) == UNDEFINED
    assert cache.end_offset_for(5, log_end) == (5, 25)      # latest epoch: the log end
    assert cache.end_offset_for(3, log_end) == (3, 20)      # ends where 5 starts
    assert cache.end_offset_for(1, log_end) == (1, 10)
    assert cache.end_offset_for(4, log_end) == (3, 20)      # unknown epoch between: floor
    assert cache.end_offset_for(2, log_end) == (1, 10)
    assert cache.end_offset_for(0, log_end) == (0, 0)       # older than all: start of first
    assert cache.end_offset_for(6, log_end) == UNDEFINED    # newer than all we know
    assert cache_of().end_offset_for(0, 0) == UNDEFINED


def test_epoch_for_offset():
    cache = cache_of((1, 5), (3, 10))
    assert cache.epoch_for_offset(4) is None
    assert cache.epoch_for_offset(5) == 1
    assert cache.epoch_for_offset(9) == 1
    assert cache.epoch_for_offset(10) == 3
    assert cache.epoch_for_offset(10**9) == 3


def test_truncate_from_end():
    cache = cache_of((1, 0), (3, 10), (5, 20))
    assert not cache.truncate_from_end(21)
    assert cache.truncate_from_end(20)
    assert cache.entries == [(1, 0), (3, 10)]
    assert cache.truncate_from_end(5)
    assert cache.entries == [(1, 0)]
    assert cache.truncate_from_end(0)
    assert cache.entries == []


def test_truncate_from_start():
    cache = cache_of((1, 0), (3, 10), (5, 20))
    assert cache.truncate_from_start(15)
    assert cache.entries == [(3, 15), (5, 20)]
    assert not cache.truncate_from_start(15)
    assert not cache.truncate_from_start(3)                  # before the first entry
    assert cache.truncate_from_start(20)
    assert cache.entries == [(5, 20)]
    assert cache.truncate_from_start(30)
    assert cache.entries == [(5, 30)]


def test_every_change_is_persisted_and_reloads(tmp_path, monkeypatch):
    cache = LeaderEpochCache.load(str(tmp_path))
    path = tmp_path / EPOCH_CHECKPOINT_NAME
    assert not path.exists()
    cache.assign(0, 0)
    assert read_epoch_checkpoint(str(path)) == [(0, 0)]
    cache.assign(2, 7)
    cache.assign(3, 9)
    cache.truncate_from_end(9)
    cache.truncate_from_start(3)
    assert read_epoch_checkpoint(str(path)) == [(0, 3), (2, 7)]
    assert LeaderEpochCache.load(str(tmp_path)).entries == [(0, 3), (2, 7)]
    writes = []
    monkeypatch.setattr(LeaderEpochCache, "_persist", lambda self, **kw: writes.append(1))
    cache.assign(2, 8)
    cache.truncate_from_end(100)
    cache.truncate_from_start(1)
    assert writes == []                                      # no change, no write


def test_new_epochs_are_fsynced_at_once_truncations_by_sync(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    cache = LeaderEpochCache.load(str(tmp_path))
    cache.assign(0, 0)
    cache.assign(1, 5)
    assert len(synced) == 4                  # file and directory, per new epoch
    synced.clear()
    cache.truncate_from_end(5)
    cache.truncate_from_start(2)
    assert synced == []                      # rewritten, not yet fsynced
    assert read_epoch_checkpoint(str(tmp_path / EPOCH_CHECKPOINT_NAME)) == [(0, 2)]
    cache.sync()
    assert len(synced) == 2
    cache.sync()
    assert len(synced) == 2                  # nothing left to sync


def test_corrupt_or_non_monotonic_file_is_refused(tmp_path):
    from pylog.storage.checkpoint import write_checkpoint
    path = tmp_path / EPOCH_CHECKPOINT_NAME
    write_checkpoint(str(path), 0, [(3, 10), (2, 20)])
    with pytest.raises(CorruptCheckpointError, match="increasing"):
        LeaderEpochCache.load(str(tmp_path))
    path.write_bytes(b"0\n1\n3 10\n")
    with pytest.raises(CorruptCheckpointError):
        LeaderEpochCache.load(str(tmp_path))


operations = st.lists(st.one_of(
    st.tuples(st.just("assign"), st.integers(0, 8), st.integers(0, 100)),
    st.tuples(st.just("end"), st.integers(0, 100)),
    st.tuples(st.just("start"), st.integers(0, 100)),
), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_invariant_holds_under_any_operations(ops):
    cache = cache_of()
    for op in ops:
        if op[0] == "assign":
            before = cache.entries
            changed = cache.assign(op[1], op[2])
            if changed:
                assert cache.latest_entry == (op[1], op[2])
            else:
                assert cache.entries == before
        elif op[0] == "end":
            cache.truncate_from_end(op[1])
            assert all(start < op[1] for _, start in cache.entries)
        else:
            cache.truncate_from_start(op[1])
            assert all(start >= op[1] for _, start in cache.entries)
        entries = cache.entries
        for (e1, s1), (e2, s2) in zip(entries, entries[1:]):
            assert e1 < e2 and s1 < s2
