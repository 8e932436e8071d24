"""Idempotent producers in the partition log: Kafka's sequence and epoch rules, duplicates of
the last 5 batches, expiry, snapshots, recovery, truncation and the log start."""
import logging
import os

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from pylog.records import build_batch, iter_records
from pylog.storage.checkpoint import encode_checkpoint
from pylog.storage.config import LogConfig
from pylog.storage.errors import InvalidAppendError
from pylog.storage.log import PartitionLog
from pylog.storage.producer_state import (INT32_MAX, NUM_BATCHES_TO_RETAIN,
                                          InvalidProducerEpochError, OutOfOrderSequenceError,
                                          ProducerStateManager, UnknownProducerIdError,
                                          in_sequence, increment_sequence, snapshot_file_name)

DAY_MS = 24 * 3600 * 1000
T0 = 1_700_000_000_000
SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=128)
PID = 4000


class Clock:
    """Injected wall clock in ms."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def batch(pid=PID, epoch=0, seq=0, n=1, *, value=b"v", timestamp=T0, **kw):
    """A fresh writable batch of ``n`` records from producer ``pid``."""
    records = [(None, value + b"-%d" % i, (), timestamp) for i in range(n)]
    return bytearray(build_batch(records, producer_id=pid, producer_epoch=epoch,
                                 base_sequence=seq, **kw))


def open_log(path, config=SMALL, clock=None, **kw):
    return PartitionLog.open(str(path), config, clock=clock or Clock(), **kw)


def values(log):
    """Every record value in the log, in offset order."""
    out = []
    offset = log.log_start_offset
    for _ in range(10_000):
        result = log.read(offset, 1 << 20)
        if result.empty:
            return out
        records = [r for r in iter_records(result.data) if r.offset >= offset]
        out.extend(r.value for r in records)
        offset = records[-1].offset + 1
    raise AssertionError("read did not finish")


def entry_view(state):
    """The producer entries without their append times (which replay sets to 'now')."""
    return {pid: (e.epoch, list(e.batches)) for pid, e in state.producers.items()}


# ---- sequence arithmetic -------------------------------------------------------------------

def test_sequence_arithmetic_wraps_at_int32_max():
    assert increment_sequence(0, 4) == 4
    assert increment_sequence(INT32_MAX - 2, 2) == INT32_MAX
    assert increment_sequence(INT32_MAX - 1, 2) == 0
    assert increment_sequence(INT32_MAX, 1) == 0
    assert increment_sequence(INT32_MAX - 1, 5) == 3
    assert in_sequence(4, 5) and in_sequence(INT32_MAX, 0)
    assert not in_sequence(4, 6) and not in_sequence(4, 4) and not in_sequence(INT32_MAX, 1)


# ---- the rules on the leader path ----------------------------------------------------------

def test_new_producer_at_sequence_zero_and_its_continuation_are_appended(tmp_path):
    log = open_log(tmp_path)
    first = log.append(batch(seq=0, n=3), 0)
    second = log.append(batch(seq=3, n=2), 0)
    assert (first.first_offset, first.last_offset) == (0, 2)
    assert (second.first_offset, second.last_offset) == (3, 4)
    assert not first.duplicate and not second.duplicate
    entry = log.producer_state.entry(PID)
    assert entry.epoch == 0 and entry.last_seq == 4 and entry.last_offset == 4
    assert [(b.first_seq, b.last_seq, b.first_offset, b.last_offset) for b in entry.batches] \
        == [(0, 2, 0, 2), (3, 4, 3, 4)]
    assert entry.batches[0].timestamp == T0


@pytest.mark.parametrize("back", range(1, NUM_BATCHES_TO_RETAIN + 1))
def test_a_repeat_of_each_of_the_last_five_batches_returns_its_original_offsets(tmp_path,
                                                                                  back):
    log = open_log(tmp_path)
    sent, results = [], []
    for i in range(NUM_BATCHES_TO_RETAIN + 2):
        sent.append(batch(seq=2 * i, n=2, value=b"b%d" % i))
        results.append(log.append(bytearray(sent[-1]), 0))
    end, size = log.log_end_offset, log.size_bytes
    original = results[-back]
    retry = log.append(bytearray(sent[-back]), 0)
    assert retry.duplicate
    assert (retry.first_offset, retry.last_offset) == (original.first_offset,
                                                       original.last_offset)
    assert (log.log_end_offset, log.size_bytes) == (end, size)
    assert values(log).count(b"b%d-0" % (len(sent) - back)) == 1


def test_a_repeat_older_than_the_last_five_batches_is_out_of_order(tmp_path):
    log = open_log(tmp_path)
    sent = [batch(seq=i) for i in range(NUM_BATCHES_TO_RETAIN + 1)]
    for b in sent:
        log.append(bytearray(b), 0)
    with pytest.raises(OutOfOrderSequenceError) as info:
        log.append(bytearray(sent[0]), 0)
    assert info.value.error_code == 45 and info.value.producer_id == PID
    assert log.log_end_offset == len(sent)


def test_a_gap_in_the_sequence_is_out_of_order_and_changes_nothing(tmp_path):
    log = open_log(tmp_path)
    log.append(batch(seq=0, n=2), 0)
    before = entry_view(log.producer_state)
    with pytest.raises(OutOfOrderSequenceError):
        log.append(batch(seq=3), 0)
    assert log.log_end_offset == 2 and entry_view(log.producer_state) == before
    log.append(batch(seq=2), 0)  # the right one still goes in
    assert log.log_end_offset == 3


def test_a_partial_overlap_with_the_last_batch_is_out_of_order(tmp_path):
    log = open_log(tmp_path)
    log.append(batch(seq=0, n=3), 0)
    with pytest.raises(OutOfOrderSequenceError):
        log.append(batch(seq=1, n=3), 0)  # same start region, different range: no duplicate


def test_an_older_epoch_is_refused_with_invalid_producer_epoch(tmp_path):
    log = open_log(tmp_path)
    log.append(batch(epoch=3, seq=0), 0)
    with pytest.raises(InvalidProducerEpochError) as info:
        log.append(batch(epoch=2, seq=1), 0)
    assert info.value.error_code == 47
    with pytest.raises(InvalidProducerEpochError):
        log.append(batch(epoch=2, seq=0), 0)  # even a "repeat" under the old epoch
    assert log.log_end_offset == 1


def test_a_newer_epoch_must_start_at_zero_and_forgets_the_older_batches(tmp_path):
    log = open_log(tmp_path)
    old = batch(epoch=0, seq=0, n=2)
    log.append(bytearray(old), 0)
    log.append(batch(epoch=0, seq=2), 0)
    with pytest.raises(OutOfOrderSequenceError):
        log.append(batch(epoch=1, seq=3), 0)
    bumped = log.append(batch(epoch=1, seq=0), 0)
    assert not bumped.duplicate and bumped.first_offset == 3
    entry = log.producer_state.entry(PID)
    assert entry.epoch == 1 and [b.first_offset for b in entry.batches] == [3]
    with pytest.raises(InvalidProducerEpochError):
        log.append(bytearray(old), 0)


def test_an_unknown_producer_must_start_at_zero(tmp_path):
    log = open_log(tmp_path)
    with pytest.raises(UnknownProducerIdError) as info:
        log.append(batch(pid=77, seq=5), 0)
    assert info.value.error_code == 59 and info.value.producer_id == 77
    assert log.log_end_offset == 0 and log.producer_state.entry(77) is None
    log.append(batch(pid=77, seq=0), 0)
    assert log.producer_state.entry(77).last_seq == 0


def test_sequences_wrap_around_after_int32_max(tmp_path):
    log = open_log(tmp_path)
    # Only a follower append (unchecked, as Kafka replicates) can put a producer near the end
    # of the sequence space without writing 2^31 records.
    log.append_as_follower(batch(seq=INT32_MAX - 4, n=3, base_offset=0,
                                 partition_leader_epoch=0))
    assert log.producer_state.entry(PID).last_seq == INT32_MAX - 2
    wrapping = batch(seq=INT32_MAX - 1, n=3)  # sequences MAX-1, MAX, 0
    result = log.append(bytearray(wrapping), 0)
    assert log.producer_state.entry(PID).last_seq == 0
    retry = log.append(bytearray(wrapping), 0)
    assert retry.duplicate and retry.first_offset == result.first_offset
    with pytest.raises(OutOfOrderSequenceError):
        log.append(batch(seq=0), 0)
    log.append(batch(seq=1, n=2), 0)
    assert log.producer_state.entry(PID).last_seq == 2


def test_a_producer_exactly_at_int32_max_continues_at_zero(tmp_path):
    log = open_log(tmp_path)
    log.append_as_follower(batch(seq=INT32_MAX, base_offset=0, partition_leader_epoch=0))
    with pytest.raises(OutOfOrderSequenceError):
        log.append(batch(seq=1), 0)
    assert log.append(batch(seq=INT32_MAX), 0).duplicate
    log.append(batch(seq=0), 0)
    assert log.producer_state.entry(PID).last_seq == 0


def test_batches_without_a_producer_id_skip_every_check(tmp_path):
    log = open_log(tmp_path)
    plain = batch(pid=-1, epoch=-1, seq=-1)
    for _ in range(3):
        assert not log.append(bytearray(plain), 0).duplicate
    assert log.log_end_offset == 3 and not log.producer_state.producers


def test_every_batch_is_checked_before_any_is_written(tmp_path):
    log = open_log(tmp_path)
    log.append(batch(seq=0), 0)
    good, gap = batch(seq=1), batch(seq=5)
    with pytest.raises(OutOfOrderSequenceError) as info:
        log.append(bytearray(bytes(good) + bytes(gap)), 0)
    assert info.value.batch_index == 1
    assert log.log_end_offset == 1 and log.producer_state.entry(PID).last_seq == 0
    # Several batches of one producer in one request chain their sequences.
    result = log.append(bytearray(bytes(good) + bytes(batch(seq=2, n=2))), 0)
    assert (result.first_offset, result.last_offset) == (1, 3)
    assert log.producer_state.entry(PID).last_seq == 3


def test_a_request_mixing_a_retry_with_new_batches_is_refused(tmp_path):
    log = open_log(tmp_path)
    first = batch(seq=0)
    log.append(bytearray(first), 0)
    with pytest.raises(InvalidAppendError):
        log.append(bytearray(bytes(first) + bytes(batch(seq=1))), 0)
    assert log.log_end_offset == 1


def test_two_producers_in_one_request_are_checked_independently(tmp_path):
    log = open_log(tmp_path)
    log.append(bytearray(bytes(batch(pid=1, seq=0)) + bytes(batch(pid=2, seq=0, n=2))), 0)
    assert log.producer_state.entry(1).last_offset == 0
    assert log.producer_state.entry(2).last_offset == 2
    with pytest.raises(UnknownProducerIdError):
        log.append(bytearray(bytes(batch(pid=1, seq=1)) + bytes(batch(pid=3, seq=1))), 0)
    assert log.log_end_offset == 3


def test_transactional_batches_are_checked_and_stored_unchanged(tmp_path):
    log = open_log(tmp_path)
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True,
                                        producer_id=PID, producer_epoch=0, base_sequence=0,
                                        batch_size=1 << 20)
    builder.append(0, timestamp=T0, key=None, value=b"tx", headers=[])
    data = bytes(builder.build())
    log.append(bytearray(data), 0)
    stored = log.read(0, 1 << 20).data
    assert stored[12:] == data[12:] and stored[:8] == (0).to_bytes(8, "big")
    assert log.producer_state.entry(PID).last_seq == 0
    with pytest.raises(OutOfOrderSequenceError):
        log.append(batch(seq=4), 0)


# ---- expiry ----------------------------------------------------------------------------------

def test_an_idle_producer_expires_and_then_must_start_over(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, LogConfig(segment_bytes=1024, producer_id_expiration_ms=60_000),
                   clock)
    log.append(batch(seq=0), 0)
    clock.now += 59_999
    log.append(batch(seq=1), 0)  # not yet: the idle time counts from the last append
    clock.now += 60_000
    assert log.producer_state.entry(PID) is None
    with pytest.raises(UnknownProducerIdError):
        log.append(batch(seq=2), 0)
    log.append(batch(seq=0), 0)
    assert log.producer_state.entry(PID).batches[0].first_offset == 2


def test_expired_entries_are_swept_and_not_snapshotted(tmp_path):
    clock = Clock()
    config = LogConfig(segment_bytes=1024, producer_id_expiration_ms=1000)
    log = open_log(tmp_path, config, clock)
    log.append(batch(pid=1, seq=0), 0)
    clock.now += 600
    log.append(batch(pid=2, seq=0), 0)
    clock.now += 500  # pid 1 idle 1100 ms, pid 2 idle 500 ms
    assert log.producer_state.remove_expired() == 1
    assert set(log.producer_state.producers) == {2}
    clock.now += 10 * 60 * 1000  # the periodic sweep runs with the next append
    log.append(batch(pid=3, seq=0), 0)
    assert set(log.producer_state.producers) == {3}
    clock.now += 2000
    log.close()
    reopened = open_log(tmp_path, config, clock, clean_shutdown=True)
    assert not reopened.producer_state.producers


# ---- snapshots, recovery -------------------------------------------------------------------

def fill(log, producers=3, rounds=8):
    """Round-robin batches of 2 records from ``producers`` producers; returns every batch
    sent with its result."""
    sent = []
    seqs = {pid: 0 for pid in range(1, producers + 1)}
    for r in range(rounds):
        for pid in seqs:
            data = batch(pid=pid, seq=seqs[pid], n=2, value=b"p%dr%d" % (pid, r))
            sent.append((bytes(data), log.append(data, 0)))
            seqs[pid] += 2
    return sent


def assert_retries_are_deduplicated(log, sent):
    """A retry of each producer's last 5 batches gives the original offsets, writes nothing."""
    end = log.log_end_offset
    by_pid = {}
    for data, result in sent:
        by_pid.setdefault(int.from_bytes(data[43:51], "big"), []).append((data, result))
    for batches in by_pid.values():
        for data, result in batches[-NUM_BATCHES_TO_RETAIN:]:
            retry = log.append(bytearray(data), 0)
            assert retry.duplicate and retry.first_offset == result.first_offset
    assert log.log_end_offset == end


def test_snapshots_are_written_at_roll_and_close_and_loaded_on_open(tmp_path):
    clock = Clock()
    log = open_log(tmp_path, clock=clock)
    sent = fill(log)
    assert len(log.segments) > 2
    offsets = log.producer_state.snapshot_offsets()
    assert offsets == [s.base_offset for s in log.segments[1:]]
    state = {pid: e.copy() for pid, e in log.producer_state.producers.items()}
    end = log.log_end_offset
    log.close()
    assert os.path.exists(tmp_path / snapshot_file_name(end))
    clock.now += 5000
    reopened = open_log(tmp_path, clock=clock, clean_shutdown=True)
    # Loaded as written (append times included): nothing was replayed.
    assert dict(reopened.producer_state.producers) == state
    assert_retries_are_deduplicated(reopened, sent)


def test_closing_a_log_nobody_wrote_to_rewrites_no_snapshot(tmp_path):
    log = open_log(tmp_path)
    sent = fill(log, producers=2, rounds=3)
    end = log.log_end_offset
    log.close()
    path = tmp_path / snapshot_file_name(end)
    inode = os.stat(path).st_ino                  # a rewrite replaces the file (rename)
    reopened = open_log(tmp_path, clean_shutdown=True)
    reopened.close()
    assert os.stat(path).st_ino == inode
    reopened = open_log(tmp_path, clean_shutdown=True)
    reopened.append(batch(pid=1, seq=6), 0)
    reopened.truncate_to(end)                     # back at the same offset, state rebuilt
    reopened.append(batch(pid=2, seq=6), 0)
    reopened.close()
    after = open_log(tmp_path, clean_shutdown=True)
    assert after.producer_state.entry(2).last_seq == 6
    assert after.producer_state.entry(1).last_seq == 5
    assert_retries_are_deduplicated(after, sent[-2:])


def test_a_damaged_snapshot_is_ignored_and_the_state_rebuilt_from_the_log(tmp_path, caplog):
    log = open_log(tmp_path)
    sent = fill(log)
    expected = entry_view(log.producer_state)
    end = log.log_end_offset
    log.close()
    path = tmp_path / snapshot_file_name(end)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="pylog.storage"):
        reopened = open_log(tmp_path, clean_shutdown=True)
    assert entry_view(reopened.producer_state) == expected
    assert any("checksum" in r.getMessage() for r in caplog.records)
    assert not path.exists()
    assert_retries_are_deduplicated(reopened, sent)


@pytest.mark.parametrize("content", [
    b"",
    b"0\n1\n",
    b"garbage\x00\xff" * 10,
    encode_checkpoint(0, [(1, 0, T0, 0, 0, 0, 10**6, T0)]),          # offset past the snapshot
    encode_checkpoint(0, [(1, 0, T0, 0, 0, 0, 0, T0), (1, 1, T0, 1, 1, 1, 1, T0)]),  # 2 epochs
    encode_checkpoint(0, [(-1, 0, T0, 0, 0, 0, 0, T0)]),             # negative producer id
    encode_checkpoint(0, [(1, 0, T0, 0, 0, 0, 0)]),                  # a field missing
    encode_checkpoint(0, [(1, 0, T0, 0, 0, 0, 0, "x")]),             # not a number
    encode_checkpoint(0, [(1, 0, T0, 0, 0, 0, 0, T0)] * 2),          # offsets not increasing
    encode_checkpoint(0, [(1, 0, T0, i, i, i, i, T0) for i in range(6)]),  # > 5 batches
    encode_checkpoint(0, [(1, 0, T0, 0, 0, 0, 0, T0), (2, 0, T0, 1, 1, 1, 1, T0),
                          (1, 0, T0, 2, 2, 2, 2, T0)]),              # a producer split in two
    encode_checkpoint(0, [(1, 70000, T0, 0, 0, 0, 0, T0)]),         # epoch not an INT16
])
def test_any_malformed_snapshot_is_dropped_for_a_replay(tmp_path, content):
    log = open_log(tmp_path)
    sent = fill(log, producers=2, rounds=3)
    expected = entry_view(log.producer_state)
    end = log.log_end_offset
    log.close()
    (tmp_path / snapshot_file_name(end)).write_bytes(content)
    reopened = open_log(tmp_path, clean_shutdown=True)
    assert entry_view(reopened.producer_state) == expected
    assert not (tmp_path / snapshot_file_name(end)).exists()
    assert_retries_are_deduplicated(reopened, sent)


def test_reopen_without_close_rebuilds_the_state_from_the_last_snapshot_and_the_log(
        tmp_path, caplog):
    log = open_log(tmp_path)
    sent = fill(log)
    expected = entry_view(log.producer_state)
    last_snapshot = log.producer_state.snapshot_offsets()[-1]
    assert last_snapshot < log.log_end_offset  # some batches only in the log
    # A SIGKILL: the log is never closed, no snapshot at the end, no clean-shutdown marker.
    with caplog.at_level(logging.INFO, logger="pylog.storage"):
        crashed = open_log(tmp_path, recovery_point=0)
    assert entry_view(crashed.producer_state) == expected
    assert any(f"snapshot at offset {last_snapshot}" in r.getMessage() for r in caplog.records)
    assert_retries_are_deduplicated(crashed, sent)
    # The sequence goes on where it was.
    with pytest.raises(OutOfOrderSequenceError):
        crashed.append(batch(pid=1, seq=100), 0)
    crashed.append(batch(pid=1, seq=16), 0)


def test_without_any_snapshot_the_whole_log_is_replayed(tmp_path):
    log = open_log(tmp_path)
    sent = fill(log)
    expected = entry_view(log.producer_state)
    for offset in log.producer_state.snapshot_offsets():
        os.unlink(tmp_path / snapshot_file_name(offset))
    crashed = open_log(tmp_path)
    assert entry_view(crashed.producer_state) == expected
    assert_retries_are_deduplicated(crashed, sent)


def test_replay_reads_batches_larger_than_its_chunk(tmp_path, monkeypatch):
    import pylog.storage.producer_state as producer_state
    monkeypatch.setattr(producer_state, "_REPLAY_CHUNK_BYTES", 100)
    log = open_log(tmp_path, LogConfig(segment_bytes=1 << 20))
    log.append(batch(seq=0, n=20, value=b"x" * 50), 0)
    log.append(batch(seq=20, n=1), 0)
    log.append(batch(seq=21, n=20, value=b"y" * 50), 0)
    expected = entry_view(log.producer_state)
    crashed = open_log(tmp_path, LogConfig(segment_bytes=1 << 20))
    assert entry_view(crashed.producer_state) == expected


def test_a_follower_append_takes_the_batches_unchecked(tmp_path):
    log = open_log(tmp_path)
    log.append_as_follower(batch(seq=7, n=2, base_offset=0, partition_leader_epoch=0))
    log.append_as_follower(batch(seq=20, base_offset=2, partition_leader_epoch=0))  # a gap
    entry = log.producer_state.entry(PID)
    assert entry.last_seq == 20 and [b.first_offset for b in entry.batches] == [0, 2]


# ---- truncation and the log start ----------------------------------------------------------

def test_truncation_rebuilds_the_state_and_drops_snapshots_past_the_new_end(tmp_path):
    log = open_log(tmp_path)
    sent = fill(log, producers=1, rounds=12)
    snapshots = log.producer_state.snapshot_offsets()
    cut = sent[7][1].first_offset  # batches 7.. go
    log.truncate_to(cut)
    assert log.log_end_offset == cut
    assert log.producer_state.snapshot_offsets() == [o for o in snapshots if o <= cut]
    entry = log.producer_state.entry(1)
    assert entry.last_seq == 13 and entry.last_offset == cut - 1
    # A retry of a truncated batch is new again; one of the kept batches is a duplicate.
    assert log.append(bytearray(sent[6][0]), 0).duplicate
    again = log.append(bytearray(sent[7][0]), 0)
    assert not again.duplicate and again.first_offset == cut


def test_emptying_the_log_forgets_every_producer_and_snapshot(tmp_path):
    log = open_log(tmp_path)
    fill(log)
    log.truncate_fully_and_start_at(500)
    assert not log.producer_state.producers and not log.producer_state.snapshot_offsets()
    with pytest.raises(UnknownProducerIdError):
        log.append(batch(pid=1, seq=16), 0)


def test_producers_whose_batches_all_fall_below_the_log_start_are_forgotten(tmp_path):
    log = open_log(tmp_path, LogConfig(segment_bytes=1 << 20))
    log.append(batch(pid=1, seq=0, n=2), 0)       # offsets 0-1
    log.append(batch(pid=2, seq=0, n=2), 0)       # offsets 2-3
    log.append(batch(pid=2, seq=2, n=2), 0)       # offsets 4-5
    log.roll()
    log.append(batch(pid=3, seq=0), 0)            # offset 6
    log.high_watermark = log.log_end_offset
    log.delete_records_before(3)
    state = log.producer_state
    assert set(state.producers) == {2, 3}
    assert [b.first_offset for b in state.entry(2).batches] == [2, 4]
    log.delete_records_before(5)
    assert [b.first_offset for b in state.entry(2).batches] == [4]
    assert state.snapshot_offsets() == [6]
    log.delete_records_before(6)
    assert set(state.producers) == {3}
    assert state.snapshot_offsets() == [6]
    with pytest.raises(UnknownProducerIdError):
        log.append(batch(pid=2, seq=4), 0)
    log.append(batch(pid=2, seq=0), 0)


def test_retention_of_old_segments_forgets_their_producers_across_a_reopen(tmp_path):
    clock = Clock()
    config = LogConfig(segment_bytes=1024, retention_ms=1000)
    log = open_log(tmp_path, config, clock)
    log.append(batch(pid=1, seq=0, timestamp=T0 - 10_000), 0)
    log.roll()
    log.append(batch(pid=2, seq=0, timestamp=T0), 0)
    log.high_watermark = log.log_end_offset
    assert log.delete_old_segments() == 1
    assert set(log.producer_state.producers) == {2}
    log.close()
    reopened = open_log(tmp_path, config, clock, clean_shutdown=True, log_start_offset=1)
    assert set(reopened.producer_state.producers) == {2}


def test_the_manager_alone_rejects_a_zero_expiration(tmp_path):
    with pytest.raises(ValueError):
        ProducerStateManager(str(tmp_path), expiration_ms=0, clock=Clock())


def test_a_crash_after_a_clean_reopen_replays_from_the_close_snapshot(tmp_path, caplog):
    log = open_log(tmp_path, LogConfig(segment_bytes=1 << 20))
    first = fill(log, producers=2, rounds=3)
    closed_at = log.log_end_offset
    log.close()
    reopened = open_log(tmp_path, LogConfig(segment_bytes=1 << 20), clean_shutdown=True)
    later = []
    for pid, seq in ((1, 6), (2, 6), (1, 8)):
        data = batch(pid=pid, seq=seq, n=2, value=b"later")
        later.append((bytes(data), reopened.append(data, 0)))
    expected = entry_view(reopened.producer_state)
    with caplog.at_level(logging.INFO, logger="pylog.storage"):
        crashed = open_log(tmp_path, LogConfig(segment_bytes=1 << 20))
    assert entry_view(crashed.producer_state) == expected
    assert any(f"snapshot at offset {closed_at} and 3 batches replayed" in r.getMessage()
               for r in caplog.records)
    assert_retries_are_deduplicated(crashed, first + later)


def test_the_expiration_setting_flows_from_the_broker_config_to_every_log(tmp_path):
    from pylog.broker.config import BrokerConfig
    from pylog.storage.config import ConfigError
    config = BrokerConfig.from_properties({"producer.id.expiration.ms": "5000"},
                                          data_dir=str(tmp_path))
    defaults = config.log_config()
    assert defaults.producer_id_expiration_ms == 5000
    # Topic configs are applied over the broker defaults and keep it; it is not one of them.
    topic = LogConfig.from_kafka({"retention.ms": "1000"}, base=defaults)
    assert topic.producer_id_expiration_ms == 5000
    with pytest.raises(ConfigError):
        LogConfig.from_kafka({"producer.id.expiration.ms": "1"})
    log = open_log(tmp_path / "log", topic)
    assert log.producer_state.expiration_ms == 5000
    log.update_config(LogConfig(producer_id_expiration_ms=7000))
    assert log.producer_state.expiration_ms == 7000


# ---- a model check ----------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("new"), st.integers(1, 2), st.integers(1, 4)),
    st.tuples(st.just("retry"), st.integers(1, 2), st.integers(1, NUM_BATCHES_TO_RETAIN + 2)),
    st.tuples(st.just("gap"), st.integers(1, 2), st.integers(1, 3)),
    st.tuples(st.just("reopen"), st.booleans(), st.just(0)),
    st.tuples(st.just("roll"), st.just(0), st.just(0)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_OPERATIONS)
def test_random_appends_retries_gaps_and_reopens_follow_the_rules(operations):
    """Against a model: every retry of the last 5 batches is a duplicate with the original
    offsets (also across clean and crash reopens), older retries and gaps are refused, and
    the log holds each batch once."""
    import tempfile
    with tempfile.TemporaryDirectory() as directory:
        log = open_log(directory)
        sent = {pid: [] for pid in (1, 2)}   # per producer: (bytes, first offset, count)
        expected_values = []
        for op, pid, arg in operations:
            history = sent.get(pid, [])
            next_seq = sum(count for _, _, count in history)
            if op == "new":
                values_ = [b"p%d-s%d" % (pid, next_seq + i) for i in range(arg)]
                data = bytearray(build_batch([(None, v, (), T0) for v in values_],
                                             producer_id=pid, producer_epoch=0,
                                             base_sequence=next_seq))
                result = log.append(bytearray(data), 0)
                assert not result.duplicate and result.first_offset == len(expected_values)
                history.append((bytes(data), result.first_offset, arg))
                expected_values.extend(values_)
            elif op == "retry" and history:
                data, first_offset, _ = history[-min(arg, len(history))]
                if min(arg, len(history)) <= NUM_BATCHES_TO_RETAIN:
                    result = log.append(bytearray(data), 0)
                    assert result.duplicate and result.first_offset == first_offset
                else:
                    with pytest.raises(OutOfOrderSequenceError):
                        log.append(bytearray(data), 0)
            elif op == "gap":
                error = OutOfOrderSequenceError if history else UnknownProducerIdError
                with pytest.raises(error):
                    log.append(batch(pid=pid, seq=next_seq + arg), 0)
            elif op == "reopen":
                if pid:  # clean
                    log.close()
                    log = open_log(directory, clean_shutdown=True)
                else:    # a crash: no snapshot at the end, no clean-shutdown marker
                    log.close_without_flush()  # (only to release the files)
                    log = open_log(directory)
            elif op == "roll":
                log.roll()
        assert values(log) == expected_values
        log.close()
