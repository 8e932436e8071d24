"""PartitionLog: append, read, roll, retention, truncation, epochs, reopen and recovery."""
import logging
import os

import pytest

from pylog import core
from pylog.records import Compression, build_batch, decode_batch, iter_records
from pylog.storage.config import LogConfig
from pylog.storage.errors import (InvalidAppendError, OffsetOutOfRangeError,
                                  RecordTooLargeError, StaleLeaderEpochError)
from pylog.storage.log import PartitionLog

SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=128)


def batch(values, timestamp=1_000, *, compression=Compression.NONE, timestamps=None):
    """A fresh writable batch of records with the given values."""
    stamps = timestamps or [timestamp] * len(values)
    return bytearray(build_batch([(None, v, (), t) for v, t in zip(values, stamps)],
                                 compression=compression))


def open_log(path, config=SMALL, **kw):
    return PartitionLog.open(str(path), config, **kw)


def fill(log, batches, per_batch=3, epoch=0, timestamp=1_000):
    """Append ``batches`` batches of ``per_batch`` records valued b"<offset>"."""
    results = []
    for _ in range(batches):
        first = log.log_end_offset
        values = [str(first + j).encode() for j in range(per_batch)]
        results.append(log.append(batch(values, timestamp), epoch))
    return results


def read_all(log, *, max_offset=None):
    """Every record readable from the log start, by repeated reads."""
    out = []
    offset = log.log_start_offset
    for _ in range(100_000):
        result = log.read(offset, 1 << 20, max_offset=max_offset)
        if result.empty:
            return out
        for record in iter_records(result.data):
            if record.offset >= offset:
                out.append(record)
        offset = out[-1].offset + 1
    raise AssertionError("read_all did not finish")


def assert_values_are_offsets(records, start=0):
    assert [r.offset for r in records] == list(range(start, start + len(records)))
    assert all(r.value == str(r.offset).encode() for r in records)


def test_append_read_round_trip_across_rolls(tmp_path):
    log = open_log(tmp_path)
    results = fill(log, 60)
    assert [r.first_offset for r in results] == list(range(0, 180, 3))
    assert results[-1].last_offset == 179 and results[-1].next_offset == 180
    assert log.log_end_offset == 180
    segments = log.segments
    assert len(segments) > 3
    assert all(s.size <= SMALL.segment_bytes for s in segments)
    assert [s.base_offset for s in segments] == sorted(s.base_offset for s in segments)
    for earlier, later in zip(segments, segments[1:]):
        assert earlier.next_offset == later.base_offset
    files = sorted(os.listdir(tmp_path))
    for s in segments:
        assert f"{s.base_offset:020d}.log" in files
        assert f"{s.base_offset:020d}.index" in files
    assert_values_are_offsets(read_all(log))
    # every offset is found: the first batch returned holds it
    for offset in range(180):
        result = log.read(offset, 1)
        first = decode_batch(result.data)
        assert first[0].offset <= offset <= first[-1].offset
        assert result.offset_first_batch == first[0].offset
    log.close()


def test_compressed_batches_round_trip(tmp_path):
    log = open_log(tmp_path)
    for codec in (Compression.GZIP, Compression.ZSTD, Compression.LZ4, Compression.SNAPPY):
        first = log.log_end_offset
        log.append(batch([str(first + j).encode() for j in range(5)], compression=codec), 0)
    assert_values_are_offsets(read_all(log))


def test_read_bounded_by_high_watermark_and_max_bytes(tmp_path):
    log = open_log(tmp_path, LogConfig())
    results = fill(log, 10)                  # batches [0-2] [3-5] ... [27-29]
    size = results[0].size
    log.high_watermark = 15                  # a batch boundary
    records = read_all(log, max_offset=log.high_watermark)
    assert_values_are_offsets(records)
    assert records[-1].offset == 14
    # at or above the HW (but not past the log end): empty, not an error
    for offset in (15, 20, 29, 30):
        assert log.read(offset, 1 << 20, max_offset=15).empty
    # a HW inside a batch: that batch stays hidden
    assert read_all(log, max_offset=16)[-1].offset == 14
    # max_bytes: whole batches only, at least one
    assert log.read(0, 1).length == size
    assert log.read(0, 0).length == size
    assert log.read(0, 2 * size + size // 2).length == 2 * size
    assert log.read(0, 1, min_one_batch=False).empty
    assert log.read(0, size, min_one_batch=False).length == size
    located = log.read(3, 2 * size, with_data=False)
    assert located.data is None and located.offset_first_batch == 3
    assert located.segment.read(located.position, located.length) == log.read(3, 2 * size).data


def test_offset_out_of_range_edges(tmp_path):
    log = open_log(tmp_path)
    fill(log, 20)
    log_end = log.log_end_offset
    assert log.read(log_end, 100).empty
    for bad in (-1, log_end + 1, log_end + 1000):
        with pytest.raises(OffsetOutOfRangeError) as info:
            log.read(bad, 100)
        assert info.value.log_end_offset == log_end and info.value.offset == bad
    log.high_watermark = log_end
    log.delete_records_before(10)
    assert log.log_start_offset == 10
    with pytest.raises(OffsetOutOfRangeError):
        log.read(9, 100)
    result = log.read(10, 100)
    assert decode_batch(result.data)[0].offset <= 10      # the batch holding 10
    with pytest.raises(OffsetOutOfRangeError):
        log.delete_records_before(log_end + 1)             # past the HW


def test_truncate_then_append_continues(tmp_path):
    log = open_log(tmp_path)
    fill(log, 40)                            # several segments, batches of 3
    log.high_watermark = log.log_end_offset
    first_segment_end = log.segments[0].next_offset
    target = first_segment_end + 3           # a batch boundary in the second segment
    doomed = [s.log_path for s in log.segments[2:]]
    assert log.truncate_to(target)
    assert log.log_end_offset == target
    assert len(log.segments) == 2
    assert not any(os.path.exists(p) for p in doomed)
    assert log.high_watermark == target
    assert log.recovery_point <= target
    results = fill(log, 5)
    assert results[0].first_offset == target
    assert_values_are_offsets(read_all(log))
    # a target inside a batch drops that whole batch
    assert log.truncate_to(target + 4)       # batch [target+3, target+5]
    assert log.log_end_offset == target + 3
    assert not log.truncate_to(log.log_end_offset)
    assert_values_are_offsets(read_all(log))
    log.close()
    reopened = open_log(tmp_path, clean_shutdown=True)
    assert reopened.log_end_offset == target + 3
    assert_values_are_offsets(read_all(reopened))


def test_truncate_below_first_segment_starts_over(tmp_path):
    log = open_log(tmp_path)
    fill(log, 30)
    log.high_watermark = log.log_end_offset
    second_base = log.segments[1].base_offset
    log.delete_records_before(second_base)  # the first segment goes
    assert log.segments[0].base_offset == second_base
    assert log.truncate_to(second_base - 3)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (
        second_base - 3, second_base - 3, second_base - 3)
    assert [s.base_offset for s in log.segments] == [second_base - 3]
    assert log.epoch_cache.entries == []
    assert fill(log, 1)[0].first_offset == second_base - 3
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".log")) == [
        f"{second_base - 3:020d}.log"]
    log.truncate_fully_and_start_at(500)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (500, 500, 500)
    assert fill(log, 1)[0].first_offset == 500


def test_roll_by_segment_ms(tmp_path):
    now = [1_000_000]
    config = LogConfig(segment_ms=60_000)
    log = open_log(tmp_path, config, clock=lambda: now[0])
    fill(log, 2)
    now[0] += 59_999
    fill(log, 1)
    assert len(log.segments) == 1
    now[0] += 1
    fill(log, 1)                             # 60 s after the first append: rolls
    assert [s.base_offset for s in log.segments] == [0, 9]
    now[0] += 59_999                         # counted from the new segment's first append
    fill(log, 1)
    assert [s.base_offset for s in log.segments] == [0, 9]
    log.roll()                               # an empty active segment never rolls by age
    now[0] += 10 * 60_000
    fill(log, 1)
    assert [s.base_offset for s in log.segments] == [0, 9, 15]
    now[0] += 60_000
    fill(log, 1)
    assert [s.base_offset for s in log.segments] == [0, 9, 15, 18]


def test_explicit_roll_and_flush_advance_recovery_point(tmp_path):
    log = open_log(tmp_path, LogConfig())
    fill(log, 3)
    assert log.recovery_point == 0
    new = log.roll()
    assert new.base_offset == 9 and log.recovery_point == 9   # standalone: flushed inline
    assert log.roll() is new                                    # empty active: no-op
    fill(log, 2)
    assert log.flush() == 15 and log.recovery_point == 15
    assert log.unflushed_messages == 0


def test_retention_by_time(tmp_path):
    log = open_log(tmp_path, LogConfig(segment_bytes=1024, retention_ms=1_000))
    for ts in (10_000, 20_000, 30_000):      # three segments of distinct ages
        fill(log, 3, timestamp=ts)
        log.roll()
    fill(log, 1, timestamp=40_000)           # the active segment, also "old"
    bases = [s.base_offset for s in log.segments]
    assert len(bases) == 4
    # never above the high watermark: nothing can go while HW is at the log start
    assert log.delete_old_segments(10**9) == 0
    log.high_watermark = bases[2]            # only the first two segments are below it
    assert log.delete_old_segments(10**9) == 2
    assert log.log_start_offset == bases[2]
    log.high_watermark = log.log_end_offset
    assert log.delete_old_segments(20_500) == 0              # segment 3 (30 s) is young
    assert log.delete_old_segments(31_001) == 1
    assert log.delete_old_segments(10**9) == 0               # never the active segment
    assert [s.base_offset for s in log.segments] == [bases[3]]
    assert log.log_start_offset == bases[3]
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".log")) == [
        f"{bases[3]:020d}.log"]
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)
    assert_values_are_offsets(read_all(log), start=bases[3])


def test_retention_by_bytes(tmp_path):
    log = open_log(tmp_path, LogConfig(segment_bytes=1024, retention_bytes=2500,
                                       retention_ms=-1))
    fill(log, 60)
    log.high_watermark = log.log_end_offset
    sizes = [s.size for s in log.segments]
    deleted = log.delete_old_segments(10**12)
    assert deleted > 0
    # whole segments, oldest first, as long as what is left stays >= retention.bytes
    assert log.size_bytes >= 2500
    assert log.size_bytes - 2500 < sizes[deleted]
    assert log.size_bytes == sum(sizes[deleted:])
    assert log.log_start_offset == log.segments[0].base_offset
    assert_values_are_offsets(read_all(log), start=log.log_start_offset)


def test_offset_for_timestamp(tmp_path):
    log = open_log(tmp_path)
    for i in range(30):                      # record j of batch i: timestamp 1000*i + 10*j
        first = log.log_end_offset
        log.append(batch([str(first + j).encode() for j in range(3)],
                         timestamps=[1000 * i + 10 * j for j in range(3)]), 0)
    assert len(log.segments) > 1
    assert log.offset_for_timestamp(0) == (0, 0)
    assert log.offset_for_timestamp(1) == (1, 10)
    assert log.offset_for_timestamp(5010) == (16, 5010)
    assert log.offset_for_timestamp(5011) == (17, 5020)
    assert log.offset_for_timestamp(5021) == (18, 6000)          # next batch's first
    assert log.offset_for_timestamp(29_020) == (89, 29_020)
    assert log.offset_for_timestamp(29_021) is None
    log.high_watermark = log.log_end_offset
    log.delete_records_before(17)
    assert log.offset_for_timestamp(0) == (17, 5020)           # not before the log start


def test_offset_for_timestamp_out_of_order_timestamps(tmp_path):
    log = open_log(tmp_path)
    log.append(batch([b"0", b"1"], timestamps=[500, 100]), 0)
    log.append(batch([b"2"], timestamps=[300]), 0)
    assert log.offset_for_timestamp(200) == (0, 500)
    assert log.offset_for_timestamp(501) is None


def test_follower_append_keeps_offsets_and_epochs(tmp_path):
    leader = open_log(tmp_path / "leader")
    fill(leader, 4, epoch=0)
    fill(leader, 4, epoch=3)
    leader.truncate_to(leader.log_end_offset)  # no-op
    follower = open_log(tmp_path / "follower")
    offset = 0
    while offset < leader.log_end_offset:
        chunk = leader.read(offset, 200)
        result = follower.append_as_follower(chunk.data)
        assert result.first_offset == offset
        offset = result.next_offset
    assert follower.log_end_offset == leader.log_end_offset
    assert follower.epoch_cache.entries == leader.epoch_cache.entries == [(0, 0), (3, 12)]
    assert follower.read(0, 1 << 20).data == leader.read(0, 1 << 20).data
    assert_values_are_offsets(read_all(follower))


def test_follower_append_rejects_a_gap_or_overlap(tmp_path):
    leader = open_log(tmp_path / "leader")
    fill(leader, 4)
    follower = open_log(tmp_path / "follower")
    follower.append_as_follower(leader.read(0, 1).data)      # offsets 0..2
    for offset in (6, 0):                                    # a gap, then a repeat
        with pytest.raises(core.OffsetError, match="expected exactly 3"):
            follower.append_as_follower(leader.read(offset, 1).data)
    assert follower.log_end_offset == 3
    bad = bytearray(leader.read(3, 1).data)
    bad[-1] ^= 0xFF                                          # CRC no longer matches
    with pytest.raises(core.CorruptBatchError):
        follower.append_as_follower(bad)
    assert follower.log_end_offset == 3


def test_epoch_cache_follows_appends_and_truncation(tmp_path):
    log = open_log(tmp_path)
    fill(log, 2, epoch=0)                    # 0..5
    fill(log, 2, epoch=2)                    # 6..11
    fill(log, 2, epoch=5)                    # 12..17
    assert log.epoch_cache.entries == [(0, 0), (2, 6), (5, 12)]
    assert log.end_offset_for_epoch(5) == (5, 18)
    assert log.end_offset_for_epoch(2) == (2, 12)
    assert log.end_offset_for_epoch(3) == (2, 12)
    assert log.end_offset_for_epoch(7) == (-1, -1)
    with pytest.raises(StaleLeaderEpochError):
        fill(log, 1, epoch=4)
    assert log.log_end_offset == 18
    # the epoch is stamped into every batch
    assert [b.partition_leader_epoch for b in core.validate_batches(log.read(0, 1 << 20).data)
            ][:2] == [0, 0]
    log.truncate_to(9)
    assert log.epoch_cache.entries == [(0, 0), (2, 6)]
    fill(log, 1, epoch=6)
    assert log.epoch_cache.entries == [(0, 0), (2, 6), (6, 9)]
    log.close()
    assert open_log(tmp_path).epoch_cache.entries == [(0, 0), (2, 6), (6, 9)]


def test_reopen_after_clean_close_needs_no_recovery(tmp_path):
    log = open_log(tmp_path)
    fill(log, 50, epoch=1)
    log.high_watermark = 30
    before = read_all(log)
    end, segments = log.log_end_offset, [(s.base_offset, s.size) for s in log.segments]
    log.close()
    reopened = open_log(tmp_path, recovery_point=0, clean_shutdown=True)
    assert reopened.recovery_reports == []
    assert reopened.log_end_offset == end and reopened.recovery_point == end
    assert [(s.base_offset, s.size) for s in reopened.segments] == segments
    assert read_all(reopened) == before
    for offset in range(end):
        first = decode_batch(reopened.read(offset, 1).data)
        assert first[0].offset <= offset <= first[-1].offset
    assert fill(reopened, 1, epoch=1)[0].first_offset == end
    assert reopened.epoch_cache.entries == [(1, 0)]


def test_unclean_reopen_scans_from_the_recovery_point(tmp_path):
    log = open_log(tmp_path)
    fill(log, 50)
    log.close()
    reopened = open_log(tmp_path, recovery_point=0)
    assert len(reopened.recovery_reports) == len(reopened.segments)
    assert all(r.truncated_bytes == 0 for r in reopened.recovery_reports)
    assert_values_are_offsets(read_all(reopened))


def test_message_max_bytes(tmp_path):
    log = open_log(tmp_path, LogConfig(message_max_bytes=200))
    fill(log, 1)
    big = batch([b"x" * 300])
    with pytest.raises(RecordTooLargeError) as info:
        log.append(big, 0)
    assert info.value.size == len(big) and info.value.limit == 200
    assert log.log_end_offset == 3
    log.append(batch([b"x" * 100]), 0)
    assert log.log_end_offset == 4


def test_bad_appends_change_nothing(tmp_path):
    log = open_log(tmp_path)
    fill(log, 1)
    corrupt = batch([b"a", b"b"])
    corrupt[-1] ^= 1
    with pytest.raises(core.CorruptBatchError):
        log.append(corrupt, 0)
    with pytest.raises(core.TruncatedBatchError):
        log.append(batch([b"a"])[:-3], 0)
    with pytest.raises(InvalidAppendError):
        log.append(bytearray(), 0)
    with pytest.raises(InvalidAppendError):
        log.append(bytes(batch([b"a"])), 0)            # read-only: cannot stamp
    assert log.log_end_offset == 3 and log.size_bytes == log.read(0, 1 << 20).length


def test_flush_messages_policy_flushes(tmp_path):
    log = open_log(tmp_path, LogConfig(flush_messages=5))
    first = fill(log, 1)[0]
    assert first.durable is None and log.recovery_point == 0
    second = fill(log, 1)[0]                 # 6 unflushed >= 5
    assert second.durable is not None and second.durable.result(timeout=10) == 6
    assert log.recovery_point == 6


def test_corrupt_batch_in_unflushed_segment_cuts_there(tmp_path, caplog):
    log = open_log(tmp_path)
    fill(log, 60)
    segments = log.segments
    assert len(segments) >= 4
    recovery_point = segments[2].base_offset  # as if only segments 0 and 1 were flushed
    victim = segments[2]
    batches = core.validate_batches(victim.read(0, victim.size))
    bad = batches[len(batches) // 2]
    cut_offset = bad.base_offset
    path, size = victim.log_path, victim.size
    later = [s.log_path for s in segments[3:]]
    log.close()
    with open(path, "r+b") as f:             # a byte inside the batch's records
        f.seek(bad.position + bad.size - 2)
        byte = f.read(1)
        f.seek(bad.position + bad.size - 2)
        f.write(bytes([byte[0] ^ 0x55]))
    caplog.set_level(logging.INFO, logger="pylog.storage")
    reopened = open_log(tmp_path, recovery_point=recovery_point)
    assert reopened.log_end_offset == cut_offset
    assert os.path.getsize(path) == bad.position
    assert not any(os.path.exists(p) for p in later)
    assert_values_are_offsets(read_all(reopened))
    cut_messages = [r.getMessage() for r in caplog.records if "cut at byte" in r.getMessage()]
    assert len(cut_messages) == 1
    message = cut_messages[0]
    assert path in message and f"byte {bad.position}" in message
    assert f"dropped {size - bad.position} bytes" in message and "crc" in message.lower()
    for p in later:
        assert any(p in r.getMessage() and "deleted" in r.getMessage()
                   for r in caplog.records)
    assert fill(reopened, 1)[0].first_offset == cut_offset


def test_leftovers_of_crashed_operations_are_removed(tmp_path):
    log = open_log(tmp_path)
    fill(log, 5)
    log.close()
    leftovers = ["00000000000000000000.log.deleted", "leader-epoch-checkpoint.tmp",
                 "00000000000000000099.index", "00000000000000000099.timeindex",
                 "00000000000000000007.log.swap"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"junk")
    (tmp_path / "notes.txt").write_bytes(b"kept")
    reopened = open_log(tmp_path, clean_shutdown=True)
    remaining = set(os.listdir(tmp_path))
    assert not remaining & set(leftovers)
    assert "notes.txt" in remaining
    assert_values_are_offsets(read_all(reopened))


def test_flush_on_another_thread_while_the_owner_appends_rolls_and_truncates(tmp_path):
    import threading
    log = open_log(tmp_path, LogConfig(segment_bytes=512, index_interval_bytes=64))
    stop = threading.Event()
    errors = []

    def flusher():
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                assert log.flush() <= log.log_end_offset
            except Exception as e:  # reported to the main thread
                errors.append(e)
                return

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for round_ in range(30):
            fill(log, 10)
            log.high_watermark = log.log_end_offset
            if round_ % 5 == 4:
                log.truncate_to(log.log_end_offset - 7)
            if round_ % 7 == 6:
                log.delete_records_before(log.segments[len(log.segments) // 2].base_offset)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    assert log.flush() == log.log_end_offset
    assert_values_are_offsets(read_all(log), start=log.log_start_offset)
    log.close()
    reopened = open_log(tmp_path, recovery_point=0, log_start_offset=log.log_start_offset)
    assert all(r.truncated_bytes == 0 for r in reopened.recovery_reports)
    assert reopened.log_end_offset == log.log_end_offset
