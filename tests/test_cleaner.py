"""The log cleaner (compaction): what it keeps and drops, when it runs, how its segment swap
survives a crash at any point, and how it shares a log with appends and reads."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest
from click.testing import CliRunner
from kafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from kafka.record import MemoryRecords

from pylog import core
from pylog.cli import main as cli_main
from pylog.records import Compression, build_batch, iter_records
from pylog.storage import cleaner as cleaner_module
from pylog.storage.checkpoint import read_offset_checkpoint
from pylog.storage.cleaner import CLEANER_CHECKPOINT, CleanerConfig
from pylog.storage.config import ConfigError, LogConfig
from pylog.storage.errors import InvalidRecordError
from pylog.storage.log import PartitionLog
from pylog.storage.manager import LogManager

T0 = 1_700_000_000_000
PAD = b"p" * 600   # one padded batch per 1 KiB segment: segments never group


class Clock:
    """Injected wall clock (ms)."""

    def __init__(self, now: int = T0 + 1_000):
        self.now = now

    def __call__(self) -> int:
        return self.now


def compact(**kw) -> LogConfig:
    kw.setdefault("segment_bytes", 1024)
    kw.setdefault("index_interval_bytes", 128)
    kw.setdefault("cleanup_policy", "compact")
    return LogConfig(**kw)


def manager(path, config: LogConfig | None = None, clock=None, **kw) -> LogManager:
    return LogManager(str(path), cluster_id="test-cluster", node_id=1,
                      default_config=config or compact(), clock=clock or Clock(), **kw)


def append(log, records, *, compression=Compression.NONE, timestamp=T0, epoch=0, **kw):
    """One batch of (key, value) records, appended as leader."""
    return log.append(bytearray(build_batch([(k, v, (), timestamp) for k, v in records],
                                            compression=compression, **kw)), epoch)


def append_logged(log, appended, records, **kw):
    result = append(log, records, **kw)
    appended += [(result.first_offset + i, k, v) for i, (k, v) in enumerate(records)]
    return result


def commit(log) -> None:
    log.high_watermark = log.log_end_offset


def read_all(log) -> list:
    """Every record readable from the log start, by repeated reads (past gaps)."""
    out, offset = [], log.log_start_offset
    for _ in range(100_000):
        result = log.read(offset, 1 << 20)
        if result.empty:
            return out
        out += [r for r in iter_records(result.data) if r.offset >= offset]
        offset = core.validate_batches(result.data, check_records=False).next_offset
    raise AssertionError("read_all did not finish")


def triples(records) -> list[tuple]:
    return [(r.offset, r.key, r.value) for r in records]


def compacted(appended, clean_end: int) -> list[tuple]:
    """What compacting everything below ``clean_end`` leaves of ``appended`` (offset, key,
    value): below it each key's latest record there, from it on everything."""
    latest = {key: offset for offset, key, _ in appended if offset < clean_end}
    return [t for t in appended if t[0] >= clean_end or latest[t[1]] == t[0]]


def segment_batches(directory) -> list[core.BatchInfo]:
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".log"):
            with open(os.path.join(directory, name), "rb") as f:
                out += list(core.validate_batches(f.read(), check_records=False))
    return out


def kafka_python_records(directory) -> tuple[list[tuple], int]:
    """(offset, key, value) of every record of the segment files, read by kafka-python's
    reader (CRCs checked), and how many batches hold fewer records than their span."""
    out, partial = [], 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            records = MemoryRecords(f.read())
        while (batch := records.next_batch()) is not None:
            assert batch.validate_crc()
            if batch.records_count < batch.last_offset_delta + 1:
                partial += 1
            out += [(r.offset, r.key, r.value) for r in batch]
    return out, partial


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.002)


# ---- what compaction keeps ----------------------------------------------------------------------


def test_compaction_shrinks_the_log_and_keeps_each_keys_latest_value_at_its_offset(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    appended = []
    for i in range(0, 300, 3):
        append_logged(log, appended, [(b"key-%d" % ((i + j) * 7 % 23), b"value-%d" % (i + j))
                                      for j in range(3)])
    commit(log)
    assert triples(read_all(log)) == appended
    size_before = log.size_bytes

    [result] = m.run_cleaner_once()
    assert result.completed and result.clean_end == log.active_segment.base_offset
    assert result.records_removed > 200
    assert log.size_bytes < size_before / 2
    expected = compacted(appended, result.clean_end)
    assert triples(read_all(log)) == expected
    latest = {key: (offset, value) for offset, key, value in appended}
    assert {key: (offset, value) for offset, key, value in expected} == latest
    # kafka-python's reader sees the same records, CRCs intact, and batches that hold
    # fewer records than the offsets they span
    theirs, partial = kafka_python_records(log.directory)
    assert theirs == expected and partial > 0
    assert read_offset_checkpoint(str(tmp_path / CLEANER_CHECKPOINT)) == \
        {("t", 0): result.clean_end}
    m.close()
    m = manager(tmp_path)
    assert triples(read_all(m.get("t", 0))) == expected
    m.close()


def test_tombstones_survive_delete_retention_ms_after_the_first_pass_then_go(tmp_path):
    clock = Clock(T0)
    config = compact(delete_retention_ms=10_000, min_cleanable_dirty_ratio=0.0)
    m = manager(tmp_path, config, clock)
    log = m.get_or_create("t", 0)
    append(log, [(b"gone", b"v1"), (b"pad-0", PAD)])
    append(log, [(b"kept", b"v2"), (b"pad-1", PAD)])
    tombstone = append(log, [(b"gone", None), (b"pad-2", PAD)]).first_offset
    append(log, [(b"pad-3", PAD)])
    commit(log)
    assert len(log.segments) == 4

    [first] = m.run_cleaner_once()             # first pass at T0: v1 goes, the tombstone stays
    values = {(r.offset, r.key, r.value) for r in read_all(log)}
    assert (tombstone, b"gone", None) in values and first.tombstones_removed == 0
    assert not any(value == b"v1" for _, _, value in values)
    m.close()

    # the time of the first pass is on disk: it counts across a restart
    clock.now = T0 + 9_999
    m = manager(tmp_path, config, clock)
    log = m.get("t", 0)
    append(log, [(b"pad-4", PAD)])
    commit(log)
    [second] = m.run_cleaner_once()
    assert second.tombstones_removed == 0
    assert (tombstone, b"gone", None) in triples(read_all(log))

    clock.now = T0 + 10_000
    append(log, [(b"pad-5", PAD)])
    commit(log)
    [third] = m.run_cleaner_once()
    assert third.tombstones_removed == 1
    records = triples(read_all(log))
    assert not any(key == b"gone" for _, key, _ in records)
    assert (2, b"kept", b"v2") in records
    assert [key for _, key, _ in records] == [b"pad-0", b"kept", b"pad-1", b"pad-2", b"pad-3",
                                              b"pad-4", b"pad-5"]
    m.close()


def test_expired_tombstones_alone_make_the_log_due(tmp_path):
    clock = Clock(T0)
    m = manager(tmp_path, compact(delete_retention_ms=5_000), clock)
    log = m.get_or_create("t", 0)
    append(log, [(b"a", b"1"), (b"pad-0", PAD)])
    append(log, [(b"a", None), (b"pad-1", PAD)])
    append(log, [(b"pad-2", PAD)])
    commit(log)
    assert len(m.run_cleaner_once()) == 1
    clock.now = T0 + 4_999
    assert m.run_cleaner_once() == []          # no dirty data, tombstone not due yet
    clock.now = T0 + 5_000
    [result] = m.run_cleaner_once()
    assert result.tombstones_removed == 1 and "tombstones" in result.reason
    assert not any(r.key == b"a" for r in read_all(log))
    assert m.run_cleaner_once() == []
    m.close()


def test_the_active_segment_and_everything_from_the_high_watermark_are_untouched(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for i in range(150):
        append(log, [(b"k%d" % (i % 4), b"v%d" % i)])
    segments = log.segments
    assert len(segments) >= 5
    log.high_watermark = segments[3].base_offset + 1   # inside segment 3
    kept = segments[3:]
    contents = [s.read(0, s.size) for s in kept]

    [result] = m.run_cleaner_once()
    assert result.clean_end == segments[3].base_offset
    after = log.segments
    assert all(a is b for a, b in zip(after[-len(kept):], kept))
    assert [s.read(0, s.size) for s in kept] == contents
    active = log.active_segment
    keys = [r.key for r in iter_records(active.read(0, active.size))]
    assert len(keys) > len(set(keys))          # its duplicates are all still there

    commit(log)
    [result] = m.run_cleaner_once()
    assert result.clean_end == active.base_offset
    assert log.active_segment is active and active.read(0, active.size) == contents[-1]
    m.close()


def test_min_compaction_lag_keeps_young_segments_dirty(tmp_path):
    clock = Clock(T0 + 1_000)
    m = manager(tmp_path, compact(min_compaction_lag_ms=500), clock)
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k%d" % (i % 3), b"v%d" % i)], timestamp=T0)
    young = log.active_segment.base_offset
    for i in range(60):
        append(log, [(b"k%d" % (i % 3), b"w%d" % i)], timestamp=T0 + 800)
    commit(log)
    young_segments = [s for s in log.segments if s.base_offset >= young]
    contents = [s.read(0, s.size) for s in young_segments]
    [result] = m.run_cleaner_once()
    assert result.clean_end == young
    assert [s.read(0, s.size) for s in young_segments] == contents
    clock.now = T0 + 1_301
    [result] = m.run_cleaner_once()
    assert result.clean_end == log.active_segment.base_offset
    m.close()


# ---- when it runs -------------------------------------------------------------------------------


def test_the_dirty_ratio_gates_cleaning(tmp_path):
    m = manager(tmp_path, compact(min_cleanable_dirty_ratio=0.5))
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k%d" % i, b"x" * 40)])
    commit(log)
    [first] = m.run_cleaner_once()
    assert first.dirty_ratio == 1.0 and first.records_removed == 0

    refused = 0
    for i in range(500):
        append(log, [(b"k%d" % (i % 7), b"y" * 40)])
        commit(log)
        first_dirty = m.cleaner.first_dirty_offsets[("t", 0)]
        segments = log.segments[:-1]
        clean = sum(s.size for s in segments if s.base_offset < first_dirty)
        dirty = sum(s.size for s in segments if s.base_offset >= first_dirty)
        results = m.run_cleaner_once()
        if dirty / (clean + dirty) > 0.5:
            [result] = results
            assert result.dirty_ratio == pytest.approx(dirty / (clean + dirty))
            assert result.records_removed > 0
            break
        assert results == []
        assert m.cleaner.first_dirty_offsets[("t", 0)] == first_dirty
        refused += dirty > 0
    else:
        raise AssertionError("the dirty ratio never passed 0.5")
    assert refused > 0
    m.close()


def test_max_compaction_lag_cleans_below_the_dirty_ratio(tmp_path):
    clock = Clock(T0)
    m = manager(tmp_path, compact(min_cleanable_dirty_ratio=0.9, max_compaction_lag_ms=60_000),
                clock)
    log = m.get_or_create("t", 0)
    for i in range(80):
        append(log, [(b"k%d" % i, b"x" * 40)], timestamp=T0)
    commit(log)
    assert len(m.run_cleaner_once()) == 1
    for i in range(12):
        append(log, [(b"k%d" % (i % 2), b"y" * 40)], timestamp=T0)
    commit(log)
    clock.now = T0 + 60_000
    assert m.run_cleaner_once() == []
    clock.now = T0 + 60_001
    [result] = m.run_cleaner_once()
    assert "max.compaction.lag.ms" in result.reason and result.dirty_ratio < 0.9
    m.close()


def test_logs_with_the_delete_policy_are_never_cleaned(tmp_path):
    m = manager(tmp_path, compact(cleanup_policy="delete"))
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k", b"v%d" % i)])
    commit(log)
    size = log.size_bytes
    assert m.run_cleaner_once() == [] and log.size_bytes == size
    m.close()


# ---- record batches -----------------------------------------------------------------------------


_KAFKA_PYTHON_READS = {Compression.GZIP: has_gzip(), Compression.SNAPPY: has_snappy(),
                       Compression.LZ4: has_lz4(), Compression.ZSTD: has_zstd()}


@pytest.mark.parametrize("codec", [Compression.GZIP, Compression.SNAPPY, Compression.LZ4,
                                   Compression.ZSTD])
def test_compressed_batches_are_cleaned_and_keep_their_codec(tmp_path, codec):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    appended = []
    for i in range(0, 250, 5):
        append_logged(log, appended, [(b"k%d" % ((i + j) % 13), b"value-%d-" % (i + j) * 4)
                                      for j in range(5)], compression=codec)
    commit(log)
    [result] = m.run_cleaner_once()
    expected = compacted(appended, result.clean_end)
    assert triples(read_all(log)) == expected
    batches = segment_batches(log.directory)
    assert all(b.compression == codec for b in batches)
    assert any(0 < b.record_count < b.last_offset_delta + 1 for b in batches)
    if _KAFKA_PYTHON_READS[codec]:
        assert kafka_python_records(log.directory)[0] == expected
    m.close()


def test_batches_of_idempotent_producers_keep_their_producer_fields(tmp_path):
    clock = Clock(T0 + 1_000)
    m = manager(tmp_path, compact(min_cleanable_dirty_ratio=0.0), clock)
    log = m.get_or_create("t", 0)
    pid, epoch = 4000, 3

    def produce(records, sequence, producer=pid):
        return append(log, records, epoch=2, producer_id=producer, producer_epoch=epoch,
                      base_sequence=sequence, timestamp=T0)

    a = produce([(b"a", b"1"), (b"b", b"1"), (b"c", b"1")], 0)    # all superseded: goes
    b = produce([(b"a", b"2"), (b"x", b"2"), (b"y", b"2")], 3)    # keeps a
    c = produce([(b"b", b"3"), (b"c", b"3"), (b"z", b"3")], 6)    # keeps b, c
    append(log, [(b"x", b"4"), (b"y", b"4"), (b"z", b"4")], epoch=2)
    e = produce([(b"q", b"5"), (b"r", b"5")], 9)                   # the producer's last batch
    append(log, [(b"q", b"6"), (b"r", b"6")], epoch=2)
    other = produce([(b"s", b"7")], 0, producer=4001)             # another producer's last
    append(log, [(b"s", b"8")], epoch=2)
    log.roll()
    append(log, [(b"pad", b"9")], epoch=2)
    commit(log)
    originals = {info.base_offset: info for info in segment_batches(log.directory)}

    [result] = m.run_cleaner_once()
    assert result.empty_batches_kept == 2
    after = {info.base_offset: info for info in segment_batches(log.directory)}
    assert a.first_offset not in after
    for appended, count in ((b, 1), (c, 2), (e, 0), (other, 0)):
        old, new = originals[appended.first_offset], after[appended.first_offset]
        assert new.record_count == count
        assert (new.last_offset_delta, new.producer_id, new.producer_epoch,
                new.base_sequence, new.partition_leader_epoch) == \
            (old.last_offset_delta, old.producer_id, old.producer_epoch, old.base_sequence, 2)
    empty = after[e.first_offset]
    assert empty.compression == 0 and empty.first_timestamp == empty.max_timestamp == T0
    # kafka-python reads the kept empty batch as the producer's last sequence
    with open(log.segments[0].log_path, "rb") as f:
        records = MemoryRecords(f.read())
    found = {}
    while (batch := records.next_batch()) is not None:
        found[batch.base_offset] = batch
    assert found[e.first_offset].last_sequence == 10
    assert found[e.first_offset].producer_id == pid and list(found[e.first_offset]) == []
    assert {(r.key, r.value) for r in read_all(log)} == {
        (b"a", b"2"), (b"b", b"3"), (b"c", b"3"), (b"x", b"4"), (b"y", b"4"), (b"z", b"4"),
        (b"q", b"6"), (b"r", b"6"), (b"s", b"8"), (b"pad", b"9")}

    # once the producers expired (producer.id.expiration.ms), their empty batches go too
    clock.now = T0 + LogConfig().producer_id_expiration_ms + 1
    append(log, [(b"pad", b"10")], epoch=2)
    log.roll()
    commit(log)
    m.run_cleaner_once()
    left = {info.base_offset for info in segment_batches(log.directory)}
    assert e.first_offset not in left and other.first_offset not in left
    m.close()


@pytest.mark.parametrize("timestamp_type", [0, 1])
def test_survivors_keep_their_timestamps(tmp_path, timestamp_type):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for i in range(0, 120, 4):
        log.append(bytearray(build_batch(
            [(b"k%d" % ((i + j) % 9), b"v%d" % (i + j), (), T0 + 10 * (i + j))
             for j in range(4)], timestamp_type=timestamp_type)), 0)
    commit(log)
    stamps = {r.offset: r.timestamp for r in read_all(log)}
    m.run_cleaner_once()
    survivors = read_all(log)
    assert len(survivors) < len(stamps)
    assert all(r.timestamp == stamps[r.offset] for r in survivors)
    for info in segment_batches(log.directory):
        if info.record_count and timestamp_type == 0:   # maxTimestamp of what is left
            assert info.max_timestamp == max(
                r.timestamp for r in survivors
                if info.base_offset <= r.offset <= info.last_offset)
    m.close()


def test_records_without_a_key_written_before_compaction_was_on_are_dropped(tmp_path):
    m = manager(tmp_path, compact(cleanup_policy="delete"))
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(None if i % 3 == 0 else b"k%d" % (i % 2), b"v%d" % i)])
    log = m.get_or_create("t", 0, compact(cleanup_policy="compact,delete"))
    commit(log)
    [result] = m.run_cleaner_once()
    assert result.keyless_removed > 0
    cleaned = [r for r in read_all(log) if r.offset < result.clean_end]
    assert cleaned and all(r.key is not None for r in cleaned)
    m.close()


def test_records_without_a_key_are_refused_by_a_compacted_log(tmp_path):
    log = PartitionLog.open(str(tmp_path / "compacted"), compact())
    for codec in (Compression.NONE, Compression.GZIP):
        with pytest.raises(InvalidRecordError) as info:
            append(log, [(b"k", b"v"), (None, b"v")], compression=codec)
        assert (info.value.batch_index, info.value.record_index) == (0, 1)
    assert log.log_end_offset == 0
    append(log, [(b"k", b"v")])
    assert log.log_end_offset == 1
    log.close()
    plain = PartitionLog.open(str(tmp_path / "plain"), compact(cleanup_policy="delete"))
    append(plain, [(None, b"v")])
    assert plain.log_end_offset == 1
    plain.close()


def test_produce_of_a_keyless_record_to_a_compacted_topic_is_87(tmp_path):
    from replica_stack import Stack
    from virtual_time import run

    async def main(loop):
        stack = Stack(tmp_path / "data", clock=loop.time, loop=loop)
        stack.controller.create_topic("t", 1, 1, {"cleanup.policy": "compact"})
        tp = ("t", 0)
        keyless = bytearray(build_batch([(None, b"v", (), T0)]))
        assert (await stack.rm.produce(1, 1000, {tp: memoryview(keyless)}))[tp].error_code == 87
        keyed = bytearray(build_batch([(b"k", b"v", (), T0)]))
        assert (await stack.rm.produce(1, 1000, {tp: memoryview(keyed)}))[tp].error_code == 0
        await stack.close()
    run(main)


def test_dump_log_reads_a_cleaned_segment_as_intact(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for i in range(0, 120, 4):
        append(log, [(b"k%d" % ((i + j) % 5), b"v%d" % (i + j)) for j in range(4)])
    commit(log)
    m.run_cleaner_once()
    directory = log.directory
    m.close()
    result = CliRunner().invoke(cli_main, ["dump-log", "--json", "--records", directory],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert rows and all(row["crc_valid"] and "records_error" not in row for row in rows)
    partial = [row for row in rows
               if row["record_count"] < row["last_offset"] - row["base_offset"] + 1]
    assert partial and all(len(row["records"]) == row["record_count"] for row in partial)
    table = CliRunner().invoke(cli_main, ["dump-log", directory], catch_exceptions=False)
    assert table.exit_code == 0 and "NOT intact" not in table.output


# ---- segments: grouping, the swap, crashes ------------------------------------------------------


def test_small_cleaned_segments_are_grouped_into_one(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    appended = []
    for i in range(60):
        append_logged(log, appended, [(b"k%d" % (i % 3), b"v%d" % i)])
        if i % 2:
            log.roll()
    commit(log)
    before = log.segments
    [result] = m.run_cleaner_once()
    after = log.segments
    assert result.segments_after == len(after) < len(before) // 3
    assert {s.base_offset for s in after} <= {s.base_offset for s in before}
    assert all(s.size <= 1024 for s in after)
    assert triples(read_all(log)) == compacted(appended, result.clean_end)
    m.close()


def test_a_replaced_segment_stays_readable_until_its_delay_passed(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k%d" % (i % 3), b"v%d" % i)])
    commit(log)
    old = log.segments[0]
    old_bytes = old.read(0, old.size)
    m.run_cleaner_once()
    assert log.segments[0] is not old
    # its files are gone from the directory, but a read that took it still works
    assert not old.closed and old.read(0, old.size) == old_bytes
    assert old.lookup(old.base_offset) == 0
    assert log.close_retired_segments(time.monotonic() + 1) >= 1 and old.closed
    m.close()

    m = manager(tmp_path / "nodelay", cleaner_config=CleanerConfig(file_delete_delay_ms=0))
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k%d" % (i % 3), b"v%d" % i)])
    commit(log)
    old = log.segments[0]
    m.run_cleaner_once()
    assert old.closed
    m.close()


class Crash(Exception):
    """Stands for the process dying at this point."""


def crashed_after_swap_files(tmp_path, monkeypatch):
    """A log whose cleaner wrote its first group's cleaned segment up to the .swap files and
    then died. Returns (a copy of the directory as the crash left it, its records before,
    the records after a finished swap, the bases of the group)."""
    m = manager(tmp_path / "data")
    log = m.get_or_create("t", 0)
    appended = []
    for i in range(48):
        key = b"u%d" % i if i % 12 == 11 else b"k%d" % (i % 5)
        append_logged(log, appended, [(key, b"v%d" % i)])
        if i % 4 == 3:
            log.roll()
    commit(log)
    groups = []

    def crash(self, old, install, *, truncations):
        groups.append([s.base_offset for s in old])
        raise Crash()
    monkeypatch.setattr(PartitionLog, "replace_segments", crash)
    assert m.run_cleaner_once() == []
    crashed = tmp_path / "crashed"
    shutil.copytree(log.directory, crashed)
    clean_end = log.active_segment.base_offset
    m.close()
    monkeypatch.undo()
    [group] = groups
    group_end = log.segments[len(group)].base_offset
    assert len(group) > 1
    swapped = [t for t in compacted(appended, clean_end) if t[0] < group_end] + \
        [t for t in appended if t[0] >= group_end]
    assert swapped != appended
    names = set(os.listdir(crashed))
    assert {f"{group[0]:020d}.{s}.swap" for s in ("log", "index", "timeindex")} <= names
    return crashed, appended, swapped, group


def _unlink_segment(directory, base):
    for suffix in ("log", "index", "timeindex"):
        os.unlink(os.path.join(directory, f"{base:020d}.{suffix}"))


@pytest.mark.parametrize("stage", [
    "cleaning-directory", "cleaned-files", "swap-files", "others-unlinked", "log-renamed",
    "index-renamed", "all-renamed"])
def test_a_crash_at_any_point_of_the_swap_recovers_a_consistent_log(tmp_path, monkeypatch,
                                                                    stage):
    crashed, before, swapped, group = crashed_after_swap_files(tmp_path, monkeypatch)
    base = f"{group[0]:020d}"

    def swap_to(suffix_from, suffix_to, kinds=("index", "timeindex", "log")):
        for kind in kinds:
            os.replace(crashed / f"{base}.{kind}{suffix_from}",
                       crashed / f"{base}.{kind}{suffix_to}")

    expected = swapped
    if stage == "cleaning-directory":        # died while writing the cleaned segment
        swap_to(".swap", "", kinds=())
        for kind in ("index", "timeindex", "log"):
            os.unlink(crashed / f"{base}.{kind}.swap")
        work = crashed / f"{base}.cleaning"
        work.mkdir()
        (work / f"{base}.log").write_bytes(b"half a segment")
        expected = before
    elif stage == "cleaned-files":           # died before the .swap renames
        swap_to(".swap", ".cleaned", kinds=("log",))
        expected = before
    elif stage in ("others-unlinked", "log-renamed", "index-renamed", "all-renamed"):
        for other in group[1:]:
            _unlink_segment(crashed, other)
        if stage != "others-unlinked":
            swap_to(".swap", "", kinds=("log",))
        if stage == "index-renamed":
            swap_to(".swap", "", kinds=("timeindex",))
        if stage == "all-renamed":
            swap_to(".swap", "", kinds=("index", "timeindex"))

    # a recovery point past the end: only the last segment is scanned, the others' index
    # files are trusted, so stale indexes next to a swapped-in log would show
    log = PartitionLog.open(str(crashed), compact(), recovery_point=2**62)
    leftovers = [n for n in os.listdir(crashed)
                 if n.endswith((".swap", ".cleaned", ".cleaning"))]
    assert leftovers == []
    assert triples(read_all(log)) == expected
    if stage in ("swap-files", "others-unlinked", "log-renamed", "index-renamed"):
        # the swapped-in segment's index files were dropped (they may be the old ones)
        # and rebuilt from its log
        assert [r.cause for r in log.recovery_reports
                if r.path.endswith(f"{base}.log")] == \
            [f"index file(s) missing: {base}.index, {base}.timeindex"]
    elif stage == "cleaned-files":   # nothing was committed: the original is trusted as is
        assert not [r for r in log.recovery_reports if r.path.endswith(f"{base}.log")]
    for offset in range(log.log_end_offset):   # every lookup agrees with the log
        result = log.read(offset, 1)
        batches = core.validate_batches(result.data, check_records=False)
        assert batches.next_offset > offset
    log.close()
    reopened = PartitionLog.open(str(crashed), compact(), clean_shutdown=True)
    assert triples(read_all(reopened)) == expected
    reopened.close()


def test_a_swap_that_the_cleaner_did_not_write_is_removed(tmp_path):
    log = PartitionLog.open(str(tmp_path), compact())
    for i in range(30):
        append(log, [(b"k%d" % i, b"v")])
    log.close()
    (tmp_path / f"{50:020d}.log.swap").write_bytes(b"junk")
    (tmp_path / f"{0:020d}.log.swap").write_bytes(b"\x00" * 70)   # not whole batches
    log = PartitionLog.open(str(tmp_path), compact())
    assert [r.key for r in read_all(log)] == [b"k%d" % i for i in range(30)]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".swap")]
    log.close()


# ---- threads ------------------------------------------------------------------------------------


def test_appends_and_reads_go_on_while_the_cleaner_thread_swaps(tmp_path):
    m = manager(tmp_path, compact(min_cleanable_dirty_ratio=0.0),
                cleaner_config=CleanerConfig(backoff_ms=1))
    log = m.get_or_create("t", 0)
    assert m.start_cleaner()
    written, latest = {}, {}
    deadline = time.monotonic() + 30
    i = 0
    while (m.cleaner.swaps < 10 or i < 1500) and time.monotonic() < deadline:
        key, value = b"k%d" % (i % 40), b"v%d" % i
        offset = append(log, [(key, value)]).first_offset
        written[offset] = (key, value)
        latest[key] = (offset, value)
        commit(log)
        if i % 100 == 0:   # whatever a read sees is what was written at that offset
            for record in read_all(log):
                assert written[record.offset] == (record.key, record.value)
        i += 1
    assert m.cleaner.swaps >= 10
    m.stop_cleaner()
    assert not m.cleaner.running
    final = {r.key: (r.offset, r.value) for r in read_all(log)}
    assert final == latest
    m.close()
    m = manager(tmp_path)
    assert {r.key: (r.offset, r.value) for r in read_all(m.get("t", 0))} == latest
    m.close()


def test_the_cleaner_thread_runs_until_the_manager_closes(tmp_path):
    m = manager(tmp_path, cleaner_config=CleanerConfig(backoff_ms=5))
    log = m.get_or_create("t", 0)
    for i in range(90):
        append(log, [(b"k%d" % (i % 3), b"v%d" % i)])
    commit(log)
    size = log.size_bytes
    assert m.start_cleaner() and m.cleaner.running
    wait_for(lambda: log.size_bytes < size / 2)
    m.close()
    assert not m.cleaner.running
    off = manager(tmp_path / "off", cleaner_config=CleanerConfig(enable=False))
    assert off.start_cleaner() is False and not off.cleaner.running
    off.close()


def test_deleting_a_log_stops_its_cleaning_first(tmp_path, monkeypatch):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k%d" % (i % 3), b"v%d" % i)])
    commit(log)
    entered, release = threading.Event(), threading.Event()
    real = cleaner_module._filter_batch

    def slow_filter(*args, **kw):
        entered.set()
        release.wait(10)
        return real(*args, **kw)
    monkeypatch.setattr(cleaner_module, "_filter_batch", slow_filter)
    results = []
    cleaning = threading.Thread(target=lambda: results.append(m.run_cleaner_once()))
    cleaning.start()
    assert entered.wait(10)

    def release_once_aborting():
        wait_for(lambda: log in m.cleaner._aborting, timeout=10)
        release.set()
    releaser = threading.Thread(target=release_once_aborting)
    releaser.start()
    assert m.delete("t", 0)
    releaser.join(10)
    cleaning.join(10)
    assert results == [[]]
    assert not any(n.endswith((".cleaning", ".swap", ".cleaned"))
                   for _, dirs, files in os.walk(tmp_path) for n in dirs + files)
    assert ("t", 0) not in m.cleaner.first_dirty_offsets
    m.close()


# ---- the checkpoint and truncation --------------------------------------------------------------


def test_a_damaged_cleaner_checkpoint_makes_the_whole_log_dirty(tmp_path):
    m = manager(tmp_path)
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k%d" % (i % 3), b"v%d" % i)])
    commit(log)
    [result] = m.run_cleaner_once()
    assert result.first_dirty == 0 and result.clean_end > 0
    m.close()
    path = tmp_path / CLEANER_CHECKPOINT
    data = bytearray(path.read_bytes())
    data[data.index(b"t 0 ") + 4] ^= 1
    path.write_bytes(bytes(data))
    m = manager(tmp_path)
    assert m.cleaner.first_dirty_offsets == {}
    [again] = m.run_cleaner_once()
    assert again.first_dirty == 0 and again.clean_end == result.clean_end
    assert read_offset_checkpoint(str(path)) == {("t", 0): result.clean_end}
    m.close()


def test_a_truncation_makes_the_whole_log_dirty_again(tmp_path):
    m = manager(tmp_path, compact(min_cleanable_dirty_ratio=0.9))
    log = m.get_or_create("t", 0)
    for i in range(60):
        append(log, [(b"k%d" % (i % 3), b"v%d" % i)])
    commit(log)
    [first] = m.run_cleaner_once()
    assert first.clean_end > 10
    log.truncate_to(first.clean_end - 2)
    for i in range(20):
        append(log, [(b"k%d" % (i % 3), b"w%d" % i)])
    commit(log)
    [second] = m.run_cleaner_once()
    assert second.first_dirty == log.log_start_offset
    assert {r.key: r.value for r in read_all(log)} == {b"k%d" % (i % 3): b"w%d" % i
                                                      for i in range(17, 20)}
    m.close()


# ---- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, normalised, compacts, deletes", [
    ("compact", "compact", True, False),
    ("delete", "delete", False, True),
    ("compact,delete", "compact,delete", True, True),
    ("delete, compact", "delete,compact", True, True),
])
def test_cleanup_policies(policy, normalised, compacts, deletes):
    config = LogConfig.from_kafka({"cleanup.policy": policy})
    assert (config.cleanup_policy, config.cleanup_compact, config.cleanup_delete) == \
        (normalised, compacts, deletes)
    assert LogConfig.from_kafka(config.to_kafka()) == config


def test_compaction_settings_have_kafkas_defaults_and_names():
    config = LogConfig()
    assert (config.delete_retention_ms, config.min_cleanable_dirty_ratio,
            config.min_compaction_lag_ms, config.max_compaction_lag_ms) == \
        (86_400_000, 0.5, 0, 2**63 - 1)
    custom = LogConfig.from_kafka({"delete.retention.ms": "5", "min.cleanable.dirty.ratio":
                                   "0.25", "min.compaction.lag.ms": 7,
                                   "max.compaction.lag.ms": "8"})
    assert (custom.delete_retention_ms, custom.min_cleanable_dirty_ratio,
            custom.min_compaction_lag_ms, custom.max_compaction_lag_ms) == (5, 0.25, 7, 8)
    assert custom.to_kafka()["min.cleanable.dirty.ratio"] == "0.25"


@pytest.mark.parametrize("mapping, name", [
    ({"cleanup.policy": "shrink"}, "cleanup.policy"),
    ({"cleanup.policy": ""}, "cleanup.policy"),
    ({"cleanup.policy": "compact,compact"}, "cleanup.policy"),
    ({"delete.retention.ms": "-1"}, "delete.retention.ms"),
    ({"min.cleanable.dirty.ratio": "1.5"}, "min.cleanable.dirty.ratio"),
    ({"min.cleanable.dirty.ratio": "nan"}, "min.cleanable.dirty.ratio"),
    ({"min.cleanable.dirty.ratio": "half"}, "min.cleanable.dirty.ratio"),
    ({"min.compaction.lag.ms": "-5"}, "min.compaction.lag.ms"),
    ({"max.compaction.lag.ms": "0"}, "max.compaction.lag.ms"),
    ({"min.compaction.lag.ms": "10", "max.compaction.lag.ms": "5"}, "min.compaction.lag.ms"),
])
def test_bad_compaction_settings_name_the_setting(mapping, name):
    with pytest.raises(ConfigError) as info:
        LogConfig.from_kafka(mapping)
    assert info.value.name == name


def test_cleaner_settings_are_checked():
    with pytest.raises(ConfigError) as info:
        CleanerConfig(threads=2)
    assert info.value.name == "log.cleaner.threads"
    with pytest.raises(ConfigError):
        CleanerConfig(backoff_ms=0)


@pytest.mark.parametrize("policy, deleted", [("compact", False), ("compact,delete", True),
                                             ("delete", True)])
def test_retention_by_time_and_size_applies_only_with_delete(tmp_path, policy, deleted):
    log = PartitionLog.open(str(tmp_path), compact(cleanup_policy=policy, retention_ms=1_000,
                                                   retention_bytes=100),
                            clock=Clock(T0 + 10_000))
    for i in range(60):
        append(log, [(b"k%d" % i, b"v")], timestamp=T0)
    commit(log)
    assert (log.delete_old_segments() > 0) is deleted
    log.close()
