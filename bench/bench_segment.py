"""Segment append, read and lookup, beside a plain os.write of the same bytes.

    pytest bench/bench_segment.py --benchmark-only

Append is the Produce path's storage half: validate (strict, records walked), stamp offsets in
place, then Segment.append (pwrite + index entries), on 1 MiB of 16 KiB batches of 100-byte or
1 KiB records. The reference is os.write of the same 1 MiB to a plain file in the same
directory, so both pay the same page-cache copy; the ratio test alternates the two round by
round (the machine is shared and noisy) and reports the median of (os.write time / segment
time): the target is >= 0.7. Files are restarted every ROLL_BYTES so the runs stay in the page
cache. Read is a 1 MiB pread of a region found the way Fetch finds it (lookup +
read_region); lookup is random offsets in a segment filled to FULL_SEGMENT_BYTES.
"""
from __future__ import annotations

import os
import random
import statistics
import time

import pytest

from pylog import core
from pylog.records import BatchBuilder
from pylog.core import SegmentFullError
from pylog.storage.segment import Segment

MIB = 1 << 20
ROLL_BYTES = 64 * MIB
FULL_SEGMENT_BYTES = 1 << 30
TIMESTAMP = 1_700_000_000_000


def batches_of(value_size: int, total: int = MIB, batch_bytes: int = 16384) -> bytes:
    """About `total` bytes of batches of `batch_bytes` (a client's default batch.size), each
    record a 16-byte key and a `value_size`-byte half-random value."""
    value = os.urandom(value_size // 2) + bytes(value_size - value_size // 2)
    out, size, offset = [], 0, 0
    builder = BatchBuilder(max_batch_bytes=batch_bytes)
    while size < total:
        builder.reset(base_offset=offset)
        while builder.append(value, key=b"key-%012d" % offset, timestamp=TIMESTAMP + offset):
            offset += 1
        batch = builder.build()
        out.append(batch)
        size += len(batch)
    return b"".join(out)


DATA = {size: batches_of(size) for size in (100, 1024)}


class SegmentWriter:
    """Appends one buffer at a time through validate + stamp + Segment.append, starting a new
    segment (and deleting the old one) every ROLL_BYTES."""

    def __init__(self, directory: str):
        self.directory = directory
        self.segment = Segment.create(directory, 0)

    def append(self, buf: bytearray) -> None:
        seg = self.segment
        if seg.size + len(buf) > ROLL_BYTES:
            seg = self._roll()
        batches = core.validate_batches(buf, strict=True)
        core.stamp_batches(buf, seg.next_offset, 0)
        try:
            seg.append(buf, batches)
        except SegmentFullError:
            seg = self._roll()
            core.stamp_batches(buf, seg.next_offset, 0)
            seg.append(buf, batches)

    def _roll(self) -> Segment:
        old = self.segment
        base = old.next_offset
        old.delete()
        self.segment = Segment.create(self.directory, base)
        return self.segment

    def close(self) -> None:
        self.segment.delete()


class FileWriter:
    """os.write of the same bytes to a plain file, restarted every ROLL_BYTES."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.size = 0

    def append(self, buf) -> None:
        if self.size + len(buf) > ROLL_BYTES:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.size = 0
        view = memoryview(buf)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(buf)

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


@pytest.fixture
def writers(tmp_path):
    seg_dir = tmp_path / "segment"
    seg_dir.mkdir()
    segment_writer = SegmentWriter(str(seg_dir))
    file_writer = FileWriter(str(tmp_path / "plain.bin"))
    yield segment_writer, file_writer
    segment_writer.close()
    file_writer.close()


@pytest.mark.parametrize("value_size", [100, 1024])
def test_append_1mib(benchmark, writers, value_size):
    segment_writer, _ = writers
    buf = bytearray(DATA[value_size])
    benchmark.group = "segment append 1 MiB"
    benchmark(segment_writer.append, buf)
    benchmark.extra_info["GB/s"] = round(len(buf) / benchmark.stats.stats.median / 1e9, 2)
    benchmark.extra_info["batches"] = len(core.validate_batches(buf))


@pytest.mark.parametrize("value_size", [100, 1024])
def test_plain_write_1mib(benchmark, writers, value_size):
    _, file_writer = writers
    buf = bytearray(DATA[value_size])
    benchmark.group = "segment append 1 MiB"
    benchmark(file_writer.append, buf)
    benchmark.extra_info["GB/s"] = round(len(buf) / benchmark.stats.stats.median / 1e9, 2)


def _best_of(fn, buf, rounds: int = 16) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(buf)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("value_size", [100, 1024])
def test_append_ratio_alternating(benchmark, writers, value_size):
    """Median over alternating rounds of (os.write time / segment append time)."""
    segment_writer, file_writer = writers
    buf = bytearray(DATA[value_size])
    ratios, parts = [], {"validate": [], "stamp": [], "append": []}

    def one_round():
        seg_t = _best_of(segment_writer.append, buf)
        file_t = _best_of(file_writer.append, buf)
        ratios.append(file_t / seg_t)

    benchmark.group = "segment/os.write ratio"
    benchmark.pedantic(one_round, rounds=11, iterations=1)
    # Where the time goes, one step at a time (best of 16 each).
    seg = segment_writer.segment
    parts["validate"] = _best_of(lambda b: core.validate_batches(b, strict=True), buf)
    parts["stamp"] = _best_of(lambda b: core.stamp_batches(b, seg.next_offset, 0), buf)
    batches = core.validate_batches(buf, strict=True)

    def append_only(b):
        if seg.size + len(b) > ROLL_BYTES:
            seg.truncate_to(0)
        core.stamp_batches(b, seg.next_offset, 0)
        seg.append(b, batches)

    parts["append"] = _best_of(append_only, buf) - parts["stamp"]
    benchmark.extra_info["segment/os.write speed ratio (median)"] = \
        round(statistics.median(ratios), 3)
    benchmark.extra_info["ratio min/max"] = [round(min(ratios), 3), round(max(ratios), 3)]
    benchmark.extra_info["os.write GB/s"] = round(len(buf) / _best_of(file_writer.append, buf)
                                                  / 1e9, 2)
    for name, seconds in parts.items():
        benchmark.extra_info[f"{name} GB/s"] = round(len(buf) / max(seconds, 1e-9) / 1e9, 2)


@pytest.fixture(scope="module")
def full_segment(tmp_path_factory):
    """A segment filled to FULL_SEGMENT_BYTES with 16 KiB batches of 1 KiB records, and a
    random sample of the offsets and timestamps in it."""
    directory = tmp_path_factory.mktemp("full")
    seg = Segment.create(str(directory), 0)
    buf = bytearray(DATA[1024])
    batches = core.validate_batches(buf, strict=True)
    while seg.size + len(buf) <= FULL_SEGMENT_BYTES:
        core.stamp_batches(buf, seg.next_offset, 0)
        seg.append(buf, batches)
    rng = random.Random(1)
    offsets = [rng.randrange(seg.next_offset) for _ in range(1000)]
    yield seg, offsets
    seg.delete()


def test_lookup_in_full_segment(benchmark, full_segment):
    seg, offsets = full_segment
    benchmark.group = "segment lookup"

    def lookups():
        for offset in offsets:
            seg.lookup(offset)

    benchmark(lookups)
    benchmark.extra_info["segment MiB"] = seg.size // MIB
    benchmark.extra_info["index entries"] = seg.index_entries
    benchmark.extra_info["us per lookup"] = \
        round(benchmark.stats.stats.median / len(offsets) * 1e6, 2)


def test_lookup_time_in_full_segment(benchmark, full_segment):
    seg, offsets = full_segment
    benchmark.group = "segment lookup"
    # the records' timestamps are TIMESTAMP + offset within each 1 MiB buffer
    stamps = [TIMESTAMP + offset % 900 for offset in offsets]

    def lookups():
        for ts in stamps:
            seg.lookup_time(ts)

    benchmark(lookups)
    benchmark.extra_info["time index entries"] = seg.timeindex_entries
    benchmark.extra_info["us per lookup"] = \
        round(benchmark.stats.stats.median / len(stamps) * 1e6, 2)


def test_fetch_read_1mib(benchmark, full_segment):
    """What a Fetch does in the storage layer: lookup, bound to whole batches, pread 1 MiB."""
    seg, offsets = full_segment
    benchmark.group = "segment read 1 MiB"
    cycle = iter(range(1 << 62))

    def fetch():
        offset = offsets[next(cycle) % len(offsets)]
        start = seg.lookup(offset)
        position, length = seg.read_region(start, MIB, seg.size)
        return seg.read(position, length)

    data = benchmark(fetch)
    assert 0 < len(data) <= MIB + 16384
    benchmark.extra_info["us per fetch"] = round(benchmark.stats.stats.median * 1e6, 1)
    benchmark.extra_info["GB/s"] = round(MIB / benchmark.stats.stats.median / 1e9, 2)


def test_read_1mib(benchmark, full_segment):
    seg, _ = full_segment
    benchmark.group = "segment read 1 MiB"
    data = benchmark(seg.read, 12345 * 16, MIB)
    assert len(data) == MIB
    benchmark.extra_info["us per read"] = round(benchmark.stats.stats.median * 1e6, 1)
