"""Segment: append, indexes, lookups, truncation, reopen and crash recovery (csrc/segment.c and
pylog/storage/segment.py).

Expected index bytes come from ``expected_indexes``, an independent Python statement of the
index rule documented at the top of csrc/segment.c, fed only with batch sizes, offsets and
timestamps; expected lookups come from a plain list of the batches.
"""
from __future__ import annotations

import os
import random
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylog import core
from pylog.storage.segment import (INDEX_ENTRY_SIZE, TIMEINDEX_ENTRY_SIZE, RecoveryReport,
                                   Segment, index_file_name, log_file_name,
                                   timeindex_file_name)

CLIENT_BATCHES = Path("/work/shared/testdata/client-batches")


# ---- building batches ------------------------------------------------------------------------

def build_batch(records: list[tuple[bytes | None, bytes | None, int]]) -> bytes:
    """One uncompressed batch of (key, value, timestamp) records, base offset 0. Prefers
    pylog.records; falls back to kafka-python's independent writer."""
    try:
        from pylog.records import build_batch as pylog_build
    except ImportError:
        pylog_build = None
    if pylog_build is not None:
        return pylog_build([(k, v, (), ts) for k, v, ts in records])
    from kafka.record.default_records import DefaultRecordBatchBuilder
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 30)
    for i, (k, v, ts) in enumerate(records):
        builder.append(i, timestamp=ts, key=k, value=v, headers=[])
    return bytes(builder.build())


def make_batch(n_records: int, value_size: int, timestamp: int) -> bytes:
    return build_batch([(b"key", b"v" * value_size, timestamp + i) for i in range(n_records)])


@dataclass
class Stored:
    """One batch as the segment holds it."""
    position: int
    size: int
    base_offset: int
    last_offset: int
    max_timestamp: int


def append_batches(seg: Segment, batches: list[bytes], *, base_offset: int | None = None
                   ) -> list[Stored]:
    """Validate, stamp (from base_offset, default the segment's next offset) and append
    batches in one call; returns them as stored."""
    buf = bytearray(b"".join(batches))
    infos = core.validate_batches(buf)
    core.stamp_batches(buf, seg.next_offset if base_offset is None else base_offset, 0)
    position = seg.size
    seg.append(buf, infos)
    stored = []
    for info in infos:
        base = struct.unpack_from(">q", buf, info.position)[0]
        stored.append(Stored(position + info.position, info.size, base,
                             base + info.last_offset_delta, info.max_timestamp))
    return stored


def expected_indexes(stored: list[Stored], seg_base: int, interval: int) -> tuple[bytes, bytes]:
    """The .index and .timeindex bytes the documented rule gives for these batches."""
    index, timeindex = bytearray(), bytearray()
    since, max_ts, off_max, last_indexed = 0, -1, -1, -1
    for b in stored:
        if b.max_timestamp > max_ts:
            max_ts, off_max = b.max_timestamp, b.last_offset
        if b.position > 0 and since >= interval:
            index += struct.pack(">II", b.base_offset - seg_base, b.position)
            if max_ts > last_indexed:
                timeindex += struct.pack(">qI", max_ts, off_max - seg_base)
                last_indexed = max_ts
            since = 0
        since += b.size
    return bytes(index), bytes(timeindex)


def used_index_bytes(seg: Segment) -> tuple[bytes, bytes]:
    with open(seg.index_path, "rb") as f:
        index = f.read(seg.index_entries * INDEX_ENTRY_SIZE)
    with open(seg.timeindex_path, "rb") as f:
        timeindex = f.read(seg.timeindex_entries * TIMEINDEX_ENTRY_SIZE)
    return index, timeindex


def expected_lookup(stored: list[Stored], offset: int, size: int) -> int:
    for b in stored:
        if b.last_offset >= offset:
            return b.position
    return size


def expected_lookup_time(stored: list[Stored], timestamp: int) -> tuple[int, int] | None:
    for b in stored:
        if b.max_timestamp >= timestamp:
            return b.position, b.base_offset
    return None


def mixed_batches(rng: random.Random, n: int, *, start_ts: int = 10_000) -> list[bytes]:
    """n batches of 1-6 records of 0-400 byte values; timestamps wander, sometimes backwards."""
    out, ts = [], start_ts
    for _ in range(n):
        ts += rng.randint(-50, 100)
        out.append(make_batch(rng.randint(1, 6), rng.randint(0, 400), ts))
    return out


def assert_matches(seg: Segment, stored: list[Stored], interval: int) -> None:
    """Size, offsets, timestamps, index bytes and every lookup agree with the batch list."""
    size = stored[-1].position + stored[-1].size if stored else 0
    assert seg.size == size
    assert seg.next_offset == (stored[-1].last_offset + 1 if stored else seg.base_offset)
    max_ts = max((b.max_timestamp for b in stored), default=-1)
    assert seg.max_timestamp == max_ts
    if stored:
        first_max = next(b for b in stored if b.max_timestamp == max_ts)
        assert seg.offset_of_max_timestamp == first_max.last_offset
    assert used_index_bytes(seg) == expected_indexes(stored, seg.base_offset, interval)
    for offset in range(seg.base_offset - 1, seg.next_offset + 2):
        assert seg.lookup(offset) == expected_lookup(stored, offset, size), offset
    for ts in sorted({b.max_timestamp for b in stored} | {0, max_ts + 1}):
        assert seg.lookup_time(ts) == expected_lookup_time(stored, ts), ts


# ---- append, read, indexes, lookups -----------------------------------------------------------

def test_create_makes_three_files_with_preallocated_indexes(tmp_path):
    seg = Segment.create(str(tmp_path), 42, max_index_bytes=1000)
    try:
        assert os.path.basename(seg.log_path) == log_file_name(42) == "00000000000000000042.log"
        assert os.path.getsize(seg.log_path) == 0
        assert os.path.getsize(seg.index_path) == 1000 // 8 * 8
        assert os.path.getsize(seg.timeindex_path) == 1000 // 12 * 12
        assert (seg.base_offset, seg.next_offset, seg.size) == (42, 42, 0)
        assert (seg.max_timestamp, seg.offset_of_max_timestamp) == (-1, -1)
        assert seg.first_append_time is None
        with pytest.raises(FileExistsError):
            Segment.create(str(tmp_path), 42)
    finally:
        seg.close()


def test_append_reads_back_byte_identical(tmp_path):
    rng = random.Random(1)
    seg = Segment.create(str(tmp_path), 0)
    try:
        written = bytearray()
        for _ in range(5):
            batches = mixed_batches(rng, rng.randint(1, 8))
            before = seg.size
            append_batches(seg, batches)
            with open(seg.log_path, "rb") as f:
                f.seek(before)
                written += f.read()
        assert seg.read(0, seg.size) == bytes(written)
        assert seg.read(10, 100) == bytes(written[10:110])
        assert seg.read(seg.size - 5, 100) == bytes(written[-5:])   # short only at EOF
        assert seg.read(seg.size, 10) == b""
        buffer = bytearray(seg.size + 10)
        assert seg.read_into(0, buffer) == seg.size
        assert buffer[:seg.size] == written
        assert seg.first_append_time is not None
    finally:
        seg.close()


@pytest.mark.parametrize("interval", [0, 100, 1000, 4096])
def test_index_entries_follow_the_interval(tmp_path, interval):
    rng = random.Random(interval)
    seg = Segment.create(str(tmp_path), 1000, index_interval_bytes=interval)
    try:
        stored = []
        for _ in range(6):
            stored += append_batches(seg, mixed_batches(rng, rng.randint(1, 10)))
        index, timeindex = expected_indexes(stored, 1000, interval)
        assert len(index) // 8 == seg.index_entries
        if interval == 0:
            assert seg.index_entries == len(stored) - 1   # every batch but the first
        assert used_index_bytes(seg) == (index, timeindex)
        assert_matches(seg, stored, interval)
    finally:
        seg.close()


def test_index_is_the_same_however_batches_are_grouped_into_appends(tmp_path):
    rng = random.Random(7)
    batches = mixed_batches(rng, 40)
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    one = Segment.create(str(tmp_path / "one"), 0, index_interval_bytes=500)
    many = Segment.create(str(tmp_path / "many"), 0, index_interval_bytes=500)
    try:
        stored = append_batches(one, batches)
        for b in batches:
            append_batches(many, [b])
        assert one.read(0, one.size) == many.read(0, many.size)
        assert one.index_entries > 2
        assert used_index_bytes(one) == used_index_bytes(many)
        assert_matches(many, stored, 500)
    finally:
        one.close()
        many.close()


def test_lookup_every_offset_with_gaps_between_batches(tmp_path):
    """Offsets with holes (a compacted log or a follower copy): an offset in a hole finds the
    next batch; one past the end finds the end."""
    rng = random.Random(3)
    seg = Segment.create(str(tmp_path), 500, index_interval_bytes=300)
    try:
        stored, next_base = [], 500
        for _ in range(30):
            next_base += rng.choice([0, 0, 1, 7])
            stored += append_batches(seg, mixed_batches(rng, 1), base_offset=next_base)
            next_base = stored[-1].last_offset + 1
        assert seg.index_entries > 3
        assert_matches(seg, stored, 300)
        assert seg.end_position_for(seg.next_offset) == seg.size
        mid = stored[10]
        if mid.last_offset > mid.base_offset:
            # a read bounded by an offset inside a batch leaves that batch out
            assert seg.end_position_for(mid.base_offset + 1) == mid.position
    finally:
        seg.close()


def test_lookup_time_with_timestamps_going_back(tmp_path):
    seg = Segment.create(str(tmp_path), 0, index_interval_bytes=200)
    try:
        stamps = [100, 50, 300, 300, 200, 400, 10, 400, 900, 5, 1000, 999]
        stored = []
        for ts in stamps:
            stored += append_batches(seg, [make_batch(2, 120, ts)])
        assert seg.timeindex_entries > 1
        for t in range(0, 1005, 5):
            assert seg.lookup_time(t) == expected_lookup_time(stored, t), t
        assert seg.max_timestamp == 1001
        assert seg.offset_of_max_timestamp == stored[10].last_offset
    finally:
        seg.close()


def test_read_region_bounds_reads_to_whole_batches(tmp_path):
    seg = Segment.create(str(tmp_path), 0, index_interval_bytes=256)
    try:
        stored = append_batches(seg, [make_batch(1, 100 + 37 * i, i) for i in range(20)])
        ends = [b.position + b.size for b in stored]
        for start_batch in (0, 3, 19):
            start = stored[start_batch].position
            for max_bytes in (0, 1, 150, 1000, 5000, 10 ** 9):
                for end in (ends[-1], ends[12], start):
                    if end < start:
                        continue
                    position, length = seg.read_region(start, max_bytes, end)
                    assert position == start
                    fits = [e for e in ends if start < e <= end and e - start <= max_bytes]
                    whole_first = [e for e in ends if start < e <= end][:1]
                    want_end = fits[-1] if fits else (whole_first[0] if whole_first else start)
                    assert length == want_end - start, (start, max_bytes, end)
        with pytest.raises(core.CoreArgumentError):
            seg.read_region(0, 10, seg.size + 1)
    finally:
        seg.close()


def test_truncate_then_append_again(tmp_path):
    rng = random.Random(11)
    batches = mixed_batches(rng, 25)
    for cut_batch in (0, 1, 7, 24):
        directory = tmp_path / str(cut_batch)
        directory.mkdir()
        seg = Segment.create(str(directory), 100, index_interval_bytes=400)
        try:
            stored = append_batches(seg, batches)
            target = stored[cut_batch]
            # cutting at an offset inside a batch drops that whole batch
            offset = target.base_offset + (1 if target.last_offset > target.base_offset else 0)
            new_size = seg.truncate_to(offset)
            assert new_size == target.position == os.path.getsize(seg.log_path)
            kept = stored[:cut_batch]
            assert_matches(seg, kept, 400)
            kept += append_batches(seg, mixed_batches(rng, 6))
            assert_matches(seg, kept, 400)
            assert seg.truncate_to(seg.next_offset + 5) == seg.size   # past the end: no-op
        finally:
            seg.close()


# ---- reopen ----------------------------------------------------------------------------------

def test_reopen_after_close_trusts_the_trimmed_indexes(tmp_path):
    rng = random.Random(5)
    seg = Segment.create(str(tmp_path), 7, index_interval_bytes=300)
    stored = append_batches(seg, mixed_batches(rng, 30))
    before = used_index_bytes(seg)
    seg.close()
    assert os.path.getsize(seg.index_path) == len(before[0])       # trimmed at close
    assert os.path.getsize(seg.timeindex_path) == len(before[1])
    seg, report = Segment.open(str(tmp_path), 7, index_interval_bytes=300)
    try:
        assert report is None
        assert_matches(seg, stored, 300)
        assert seg.first_append_time is not None
        # a reopened active segment grows its trimmed index back when it needs room
        stored += append_batches(seg, mixed_batches(rng, 30))
        assert_matches(seg, stored, 300)
    finally:
        seg.close()


def test_reopen_after_crash_trusts_the_zero_tailed_indexes(tmp_path):
    """A process crash leaves the preallocated index files with their entries and zeros."""
    rng = random.Random(6)
    seg = Segment.create(str(tmp_path), 0, index_interval_bytes=300, max_index_bytes=4096)
    try:
        stored = append_batches(seg, mixed_batches(rng, 30))
        assert os.path.getsize(seg.index_path) == 4096
        copy = tmp_path / "copy"
        copy.mkdir()
        for path in (seg.log_path, seg.index_path, seg.timeindex_path):
            shutil.copy(path, copy)
    finally:
        seg.close()
    reopened, report = Segment.open(str(copy), 0, index_interval_bytes=300,
                                    max_index_bytes=4096)
    try:
        assert report is None
        assert_matches(reopened, stored, 300)
    finally:
        reopened.close()


def closed_segment(tmp_path, rng, n=30, interval=300, base=0) -> list[Stored]:
    seg = Segment.create(str(tmp_path), base, index_interval_bytes=interval)
    try:
        return append_batches(seg, mixed_batches(rng, n))
    finally:
        seg.close()


@pytest.mark.parametrize("which", ["index", "timeindex", "both"])
def test_missing_index_files_are_rebuilt(tmp_path, which):
    stored = closed_segment(tmp_path, random.Random(8))
    for name in {"index": [index_file_name(0)], "timeindex": [timeindex_file_name(0)],
                 "both": [index_file_name(0), timeindex_file_name(0)]}[which]:
        os.unlink(tmp_path / name)
    seg, report = Segment.open(str(tmp_path), 0, index_interval_bytes=300)
    try:
        assert isinstance(report, RecoveryReport)
        assert "missing" in report.cause
        assert (report.scanned_from, report.truncated_bytes, report.reason) == (0, 0, None)
        assert report.batches == len(stored)
        assert_matches(seg, stored, 300)
    finally:
        seg.close()


@pytest.mark.parametrize("damage", ["garbage", "zeros", "odd_size", "entry_mid_batch",
                                    "stale_time_entry"])
def test_corrupt_index_is_rebuilt(tmp_path, damage):
    stored = closed_segment(tmp_path, random.Random(9))
    index_path = tmp_path / index_file_name(0)
    time_path = tmp_path / timeindex_file_name(0)
    if damage == "garbage":
        index_path.write_bytes(random.Random(1).randbytes(index_path.stat().st_size))
    elif damage == "zeros":
        time_path.write_bytes(bytes(time_path.stat().st_size))
    elif damage == "odd_size":
        with open(index_path, "ab") as f:
            f.write(b"\x01\x02\x03")
    elif damage == "entry_mid_batch":
        data = bytearray(index_path.read_bytes())
        rel, pos = struct.unpack_from(">II", data, len(data) - 8)
        struct.pack_into(">II", data, len(data) - 8, rel, pos + 5)
        index_path.write_bytes(bytes(data))
    else:  # the last time entry names the right offset with a wrong timestamp
        data = bytearray(time_path.read_bytes())
        ts, rel = struct.unpack_from(">qI", data, len(data) - 12)
        struct.pack_into(">qI", data, len(data) - 12, ts + 1, rel)
        time_path.write_bytes(bytes(data))
    seg, report = Segment.open(str(tmp_path), 0, index_interval_bytes=300)
    try:
        # rebuilt either by the header walk (no implausible entry was kept) or by recovery
        if report is not None:
            assert (report.scanned_from, report.truncated_bytes, report.reason) == (0, 0, None)
        elif damage in ("odd_size", "entry_mid_batch", "stale_time_entry"):
            pytest.fail(f"{damage}: the index was trusted")
        assert_matches(seg, stored, 300)
    finally:
        seg.close()


# ---- recovery --------------------------------------------------------------------------------

def test_torn_tail_at_every_byte_of_the_last_batch(tmp_path):
    rng = random.Random(12)
    src = tmp_path / "src"
    src.mkdir()
    stored = closed_segment(src, rng, n=12)
    last = stored[-1]
    full = (src / log_file_name(0)).read_bytes()
    for cut in range(1, last.size):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(src, work)
        with open(work / log_file_name(0), "r+b") as f:
            f.truncate(last.position + cut)
        recover_from = None if cut % 2 else 0    # the trusted path must notice it too
        seg, report = Segment.open(str(work), 0, index_interval_bytes=300,
                                   recover_from=recover_from)
        try:
            assert report is not None, cut
            assert report.valid_end == last.position
            assert report.truncated_bytes == cut
            assert "truncated" in report.reason and str(last.position) in report.reason
            assert os.path.getsize(seg.log_path) == last.position
            assert seg.read(0, seg.size) == full[:last.position]
            assert_matches(seg, stored[:-1], 300)
        finally:
            seg.close()
        shutil.rmtree(work)


def test_flipped_byte_in_the_last_batch(tmp_path):
    rng = random.Random(13)
    src = tmp_path / "src"
    src.mkdir()
    stored = closed_segment(src, rng, n=10)
    last = stored[-1]
    # batchLength, magic, crc and everything under the crc (baseOffset and the leader epoch
    # are not checksummed: a changed value there is a different, valid batch)
    spots = list(range(8, 12)) + [16] + list(range(17, last.size))
    for spot in rng.sample(spots, 40) + [8, 16, 17, 21, last.size - 1]:
        work = tmp_path / f"flip{spot}"
        shutil.copytree(src, work)
        with open(work / log_file_name(0), "r+b") as f:
            f.seek(last.position + spot)
            byte = f.read(1)[0]
            f.seek(last.position + spot)
            f.write(bytes([byte ^ 0x10]))
        seg, report = Segment.open(str(work), 0, index_interval_bytes=300, recover_from=0)
        try:
            assert report.valid_end == last.position, spot
            assert report.truncated_bytes == last.size
            assert report.reason
            assert_matches(seg, stored[:-1], 300)
        finally:
            seg.close()
        shutil.rmtree(work)


@pytest.mark.parametrize("tail", [b"\x00" * 100, b"garbage!" * 20, b"\x00" * 11, b"\xff" * 61])
def test_garbage_after_the_last_batch_is_cut(tmp_path, tail):
    stored = closed_segment(tmp_path, random.Random(14))
    size = stored[-1].position + stored[-1].size
    with open(tmp_path / log_file_name(0), "ab") as f:
        f.write(tail)
    for recover_from in (None, 0, stored[-1].base_offset):
        seg, report = Segment.open(str(tmp_path), 0, index_interval_bytes=300,
                                   recover_from=recover_from)
        try:
            if recover_from is None:
                assert report.scanned_from == 0
            assert (report.valid_end, report.truncated_bytes) == (size, len(tail))
            assert_matches(seg, stored, 300)
        finally:
            seg.close()
        with open(tmp_path / log_file_name(0), "ab") as f:
            f.write(tail)


def test_recovery_from_an_offset_checks_only_from_its_index_entry(tmp_path):
    rng = random.Random(15)
    stored = closed_segment(tmp_path, rng, n=40, interval=500, base=1000)
    middle = stored[25]
    seg, report = Segment.open(str(tmp_path), 1000, index_interval_bytes=500,
                               recover_from=middle.base_offset)
    try:
        assert 0 < report.scanned_from <= middle.position
        assert report.scanned_from in {b.position for b in stored}
        assert report.batches == sum(1 for b in stored if b.position >= report.scanned_from)
        assert (report.truncated_bytes, report.reason) == (0, None)
        assert_matches(seg, stored, 500)
    finally:
        seg.close()


def test_recovery_grows_scratch_for_a_large_batch(tmp_path):
    seg = Segment.create(str(tmp_path), 0, index_interval_bytes=100)
    try:
        stored = append_batches(seg, [make_batch(1, 50, 1), make_batch(3, 20_000, 2),
                                      make_batch(1, 50, 3)])
    finally:
        seg.close()
    assert stored[1].size > 60_000
    seg, report = Segment.open(str(tmp_path), 0, index_interval_bytes=100, recover_from=0,
                               scratch_bytes=256)
    try:
        assert (report.batches, report.truncated_bytes, report.reason) == (3, 0, None)
        assert_matches(seg, stored, 100)
    finally:
        seg.close()


def test_recovery_keeps_real_client_batches(tmp_path):
    """Batches written by librdkafka, kafka-python, aiokafka and kcat (compressed ones too)
    survive recovery untouched, with their stored offsets."""
    cases = sorted(p for p in CLIENT_BATCHES.iterdir() if p.is_dir()) \
        if CLIENT_BATCHES.is_dir() else []
    if not cases:
        pytest.skip("no client batch test data")
    for case in cases:
        data = b"".join(p.read_bytes() for p in sorted(case.glob("*.bin")))
        infos = core.validate_batches(data)
        directory = tmp_path / case.name
        directory.mkdir()
        seg = Segment.create(str(directory), 0, index_interval_bytes=1024)
        try:
            seg.append(data, infos)
        finally:
            seg.close()
        seg, report = Segment.open(str(directory), 0, index_interval_bytes=1024,
                                   recover_from=0)
        try:
            assert (report.batches, report.truncated_bytes, report.reason) == \
                (len(infos), 0, None), case.name
            assert seg.read(0, seg.size) == data
            assert seg.next_offset == infos[-1].next_offset
        finally:
            seg.close()


# ---- refusals --------------------------------------------------------------------------------

def test_full_index_refuses_and_writes_nothing(tmp_path):
    seg = Segment.create(str(tmp_path), 0, index_interval_bytes=0,
                         max_index_bytes=3 * INDEX_ENTRY_SIZE)
    try:
        # one timestamp throughout: a single time entry, 3 offset entries (the first batch
        # has none)
        stored = append_batches(seg, [make_batch(1, 10, 5) for _ in range(4)])
        assert (seg.index_entries, seg.timeindex_entries) == (3, 1)
        size, log_size = seg.size, os.path.getsize(seg.log_path)
        assert seg.is_full(100)
        with pytest.raises(core.SegmentFullError):
            append_batches(seg, [make_batch(1, 10, 5)])
        assert (seg.size, os.path.getsize(seg.log_path)) == (size, log_size)
        assert_matches(seg, stored, 0)
    finally:
        seg.close()


def test_full_time_index_refuses(tmp_path):
    # 2 time entries fit in 24 bytes, 3 offset entries: the third rising timestamp is refused
    seg = Segment.create(str(tmp_path), 0, index_interval_bytes=0, max_index_bytes=24)
    try:
        append_batches(seg, [make_batch(1, 10, i) for i in range(3)])
        assert (seg.index_entries, seg.timeindex_entries) == (2, 2)
        with pytest.raises(core.SegmentFullError):
            append_batches(seg, [make_batch(1, 10, 99)])
        assert seg.next_offset == 3
    finally:
        seg.close()


def test_offsets_must_move_forward_and_stay_relative(tmp_path):
    seg = Segment.create(str(tmp_path), 100)
    try:
        append_batches(seg, [make_batch(3, 10, 1)])
        size = seg.size
        with pytest.raises(core.OffsetError):
            append_batches(seg, [make_batch(1, 10, 2)], base_offset=102)   # overlaps
        with pytest.raises(core.OffsetError):
            append_batches(seg, [make_batch(1, 10, 2)], base_offset=50)    # below base
        with pytest.raises(core.OffsetError):   # past the 32-bit relative range
            append_batches(seg, [make_batch(1, 10, 2)], base_offset=100 + 2 ** 31)
        assert seg.size == size == os.path.getsize(seg.log_path)
        assert seg.next_offset == 103
        append_batches(seg, [make_batch(1, 10, 2)], base_offset=110)       # a gap is fine
        assert seg.next_offset == 111
    finally:
        seg.close()


def test_infos_must_describe_the_buffer(tmp_path):
    seg = Segment.create(str(tmp_path), 0)
    try:
        three = bytearray(make_batch(1, 10, 1) * 3)
        core.stamp_batches(three, 0, 0)
        one_size = len(three) // 3
        infos = core.validate_batches(three[:2 * one_size])
        with pytest.raises(core.CoreArgumentError):
            seg.append(three[:one_size], infos)    # infos run past the buffer
        with pytest.raises(core.CoreArgumentError):
            seg.append(three, infos)               # bytes no info covers
        assert seg.size == 0
    finally:
        seg.close()


def test_closed_segment_refuses_work(tmp_path):
    seg = Segment.create(str(tmp_path), 0)
    append_batches(seg, [make_batch(1, 10, 1)])
    seg.close()
    seg.close()     # idempotent
    seg.flush()     # a no-op once closed
    with pytest.raises(ValueError):
        append_batches(seg, [make_batch(1, 10, 1)])
    seg, _ = Segment.open(str(tmp_path), 0)
    seg.delete()
    assert not any(tmp_path.iterdir())


def test_flush_runs_beside_appends_and_trim(tmp_path):
    seg = Segment.create(str(tmp_path), 0, index_interval_bytes=100)
    stop = threading.Event()
    errors = []

    def flusher():
        try:
            for _ in range(10_000):
                if stop.is_set():
                    return
                seg.flush()
        except Exception as e:   # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        stored = []
        for i in range(50):
            stored += append_batches(seg, [make_batch(2, 60, i)])
        seg.trim_indexes()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and not errors
    try:
        assert_matches(seg, stored, 100)
        assert os.path.getsize(seg.index_path) == seg.index_entries * INDEX_ENTRY_SIZE
    finally:
        seg.close()


# ---- any prefix recovers ---------------------------------------------------------------------

@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_prefix_recovers_to_its_last_whole_batch(tmp_path_factory, data):
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    n = data.draw(st.integers(1, 25), label="batches")
    interval = data.draw(st.sampled_from([0, 64, 500, 4096]), label="interval")
    directory = tmp_path_factory.mktemp("prefix")
    rng = random.Random(seed)
    seg = Segment.create(str(directory), 10, index_interval_bytes=interval)
    try:
        stored = append_batches(seg, mixed_batches(rng, n))
        full = seg.read(0, seg.size)
    finally:
        seg.close()
    cut = data.draw(st.integers(0, len(full)), label="cut")
    with open(directory / log_file_name(10), "r+b") as f:
        f.truncate(cut)
    recover_from = data.draw(st.sampled_from([None, 10, stored[n // 2].base_offset]),
                             label="recover_from")
    seg, report = Segment.open(str(directory), 10, index_interval_bytes=interval,
                               recover_from=recover_from)
    try:
        kept = [b for b in stored if b.position + b.size <= cut]
        end = kept[-1].position + kept[-1].size if kept else 0
        assert seg.size == end == os.path.getsize(seg.log_path)
        if report is not None:
            assert (report.valid_end, report.truncated_bytes) == (end, cut - end)
        else:
            assert cut == end
        assert seg.read(0, seg.size) == full[:end]
        assert_matches(seg, kept, interval)
    finally:
        seg.close()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_appends_truncations_and_reopens_keep_the_model(tmp_path_factory, data):
    """Any sequence of appends, truncations, trims, clean reopens and crash reopens (the files
    copied while open) leaves the segment equal to a plain list of its batches."""
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    interval = data.draw(st.sampled_from([0, 100, 700]), label="interval")
    rng = random.Random(seed)
    root = tmp_path_factory.mktemp("model")
    directory = root / "0"
    directory.mkdir()
    seg = Segment.create(str(directory), 5, index_interval_bytes=interval,
                         max_index_bytes=1 << 16)
    stored: list[Stored] = []
    try:
        for step in range(data.draw(st.integers(1, 12), label="steps")):
            action = data.draw(st.sampled_from(
                ["append", "append", "truncate", "reopen", "crash", "trim"]), label="action")
            if action == "append":
                stored += append_batches(seg, mixed_batches(rng, rng.randint(1, 6)))
            elif action == "truncate":
                offset = rng.randint(4, seg.next_offset + 1)
                seg.truncate_to(offset)
                stored = [b for b in stored if b.last_offset < offset]
            elif action == "trim":
                seg.trim_indexes()
            else:
                if action == "crash":
                    directory = root / str(step + 1)
                    directory.mkdir()
                    for path in (seg.log_path, seg.index_path, seg.timeindex_path):
                        shutil.copy(path, directory)
                seg.close()
                seg, report = Segment.open(str(directory), 5, index_interval_bytes=interval,
                                           max_index_bytes=1 << 16)
                assert report is None, (action, report)
            assert_matches(seg, stored, interval)
    finally:
        seg.close()


def assert_correct_or_refused(seg: Segment, stored: list[Stored]) -> None:
    """Every answer agrees with the batch list or is refused with OffsetError: index entries
    are checked against the batch they name when they are used."""
    size = stored[-1].position + stored[-1].size
    ends = [b.position + b.size for b in stored]
    for offset in range(-1, seg.next_offset + 2):
        try:
            assert seg.lookup(offset) == expected_lookup(stored, offset, size), offset
        except core.OffsetError:
            pass
    for b in stored:
        try:
            assert seg.lookup_time(b.max_timestamp) == \
                expected_lookup_time(stored, b.max_timestamp)
        except core.OffsetError:
            pass
        try:
            _, length = seg.read_region(b.position, 3000, size)
            assert b.position + length in ends
        except core.OffsetError:
            pass


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_index_files_beside_a_valid_log(tmp_path_factory, data):
    """Index files replaced by random bytes, cut, extended or with flipped bits never make a
    valid log read wrong. Damage that open can see (implausible entries, a last entry that
    does not match its batch, a bad size) is rebuilt, giving the exact index; a flipped bit in
    an entry open does not check is refused when a lookup uses that entry."""
    directory = tmp_path_factory.mktemp("hostile")
    rng = random.Random(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    stored = closed_segment(directory, rng, n=rng.randint(1, 30), interval=200)
    flipped = False
    for name in (index_file_name(0), timeindex_file_name(0)):
        path = directory / name
        real = bytearray(path.read_bytes())
        how = data.draw(st.sampled_from(["random", "flip", "keep", "extend", "cut"]),
                        label=name)
        if how == "random":
            path.write_bytes(data.draw(st.binary(max_size=200), label=f"{name} bytes"))
        elif how == "flip" and real:
            for _ in range(data.draw(st.integers(1, 4), label="flips")):
                real[rng.randrange(len(real))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(real))
            flipped = True
        elif how == "extend":
            path.write_bytes(bytes(real) + data.draw(st.binary(max_size=48), label="tail"))
        elif how == "cut":
            path.write_bytes(bytes(real[:data.draw(st.integers(0, len(real)), label="cut")]))
    recover_from = data.draw(st.sampled_from([None, 0, stored[-1].base_offset]),
                             label="recover_from")
    seg, report = Segment.open(str(directory), 0, index_interval_bytes=200,
                               recover_from=recover_from)
    try:
        if report is not None:
            assert (report.truncated_bytes, report.reason) == (0, None)
        if flipped:
            assert seg.size == stored[-1].position + stored[-1].size
            assert seg.next_offset == stored[-1].last_offset + 1
            assert seg.max_timestamp == max(b.max_timestamp for b in stored)
            assert_correct_or_refused(seg, stored)
        else:
            assert_matches(seg, stored, 200)
    finally:
        seg.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=st.binary(max_size=600), index=st.binary(max_size=64),
       timeindex=st.binary(max_size=64), recover_from=st.sampled_from([None, 0, 3]))
def test_random_files_never_crash_open(tmp_path_factory, log, index, timeindex, recover_from):
    """Three files of random bytes: open cuts the log to its valid prefix (here: nothing, or
    the few batches that random bytes cannot form) and every call after it answers."""
    directory = tmp_path_factory.mktemp("random")
    (directory / log_file_name(0)).write_bytes(log)
    (directory / index_file_name(0)).write_bytes(index)
    (directory / timeindex_file_name(0)).write_bytes(timeindex)
    seg, report = Segment.open(str(directory), 0, recover_from=recover_from)
    try:
        assert seg.size == os.path.getsize(seg.log_path) <= len(log)
        if seg.size < len(log):
            assert report is not None and report.reason
        for value in (-1, 0, 1, 2 ** 31, 2 ** 62):
            assert 0 <= seg.lookup(value) <= seg.size
            found = seg.lookup_time(value)
            assert found is None or 0 <= found[0] < seg.size
        assert seg.read_region(0, 10, seg.size)[1] <= seg.size
        seg.truncate_to(1)
    finally:
        seg.close()
