"""PartitionLog append and read, the storage half of Produce and Fetch, beside Segment alone.

    pytest bench/bench_log.py --benchmark-only

Append is PartitionLog.append of one 16 KiB batch of 100-byte records (a client's default
batch.size): deep validation, message.max.bytes, stamping, roll check, Segment.append. The
reference is the Segment-level path alone (validate + stamp + Segment.append), so the
difference is what the log layer costs per Produce. ``fsync=always`` runs the same append
through a LogManager and waits for the Flusher's fsync: its latency is the disk's, reported
for information only. Read is a 1 MiB read at a random offset (lookup + read_region + pread).
Segments roll at 64 MiB so runs stay in the page cache; old segments are deleted as they go.
"""
from __future__ import annotations

import os
import random

import pytest

from pylog import core
from pylog.records import BatchBuilder
from pylog.storage.config import LogConfig
from pylog.storage.log import PartitionLog
from pylog.storage.manager import LogManager
from pylog.storage.segment import Segment

MIB = 1 << 20
CONFIG = LogConfig(segment_bytes=64 * MIB, retention_bytes=128 * MIB, retention_ms=-1)


def one_batch(value_size: int = 100, batch_bytes: int = 16384) -> bytes:
    builder = BatchBuilder(max_batch_bytes=batch_bytes)
    value = os.urandom(value_size // 2) + bytes(value_size - value_size // 2)
    i = 0
    while builder.append(value, key=b"key-%012d" % i, timestamp=1_700_000_000_000 + i):
        i += 1
    return builder.build()


BATCH = one_batch()


class Buffers:
    """Fresh writable copies of the batch, reused round-robin (stamping rewrites them)."""

    def __init__(self, count: int = 64):
        self.buffers = [bytearray(BATCH) for _ in range(count)]
        self.i = 0

    def next(self) -> bytearray:
        self.i = (self.i + 1) % len(self.buffers)
        return self.buffers[self.i]


def _trim(log: PartitionLog) -> None:
    if log.size_bytes > 2 * CONFIG.retention_bytes:
        log.high_watermark = log.log_end_offset
        log.delete_old_segments()


def test_partition_log_append_16k(benchmark, tmp_path):
    log = PartitionLog.open(str(tmp_path), CONFIG)
    buffers = Buffers()

    def append():
        log.append(buffers.next(), 0)
        _trim(log)
    benchmark.group = "append 16 KiB batch"
    benchmark(append)
    benchmark.extra_info["MB/s"] = round(len(BATCH) / benchmark.stats.stats.median / 1e6, 1)
    log.close()


def test_segment_only_append_16k(benchmark, tmp_path):
    state = {"segment": Segment.create(str(tmp_path), 0)}
    buffers = Buffers()

    def append():
        segment = state["segment"]
        if segment.size + len(BATCH) > CONFIG.segment_bytes:
            base = segment.next_offset
            segment.delete()
            segment = state["segment"] = Segment.create(str(tmp_path), base)
        buf = buffers.next()
        batches = core.validate_batches(buf, strict=True)
        core.stamp_batches(buf, segment.next_offset, 0)
        segment.append(buf, batches)
    benchmark.group = "append 16 KiB batch"
    benchmark(append)
    state["segment"].close()


def test_append_16k_fsync_always(benchmark, tmp_path):
    manager = LogManager(str(tmp_path), cluster_id="bench", node_id=0, default_config=CONFIG,
                         fsync="always")
    log = manager.get_or_create("bench", 0)
    buffers = Buffers()

    def append():
        log.append(buffers.next(), 0).durable.result()
        _trim(log)
    benchmark.group = "append 16 KiB batch, fsync always"
    benchmark.pedantic(append, rounds=200, iterations=1)
    manager.close()


@pytest.mark.parametrize("max_bytes", [MIB, 64 * 1024])
def test_read(benchmark, tmp_path, max_bytes):
    log = PartitionLog.open(str(tmp_path), CONFIG)
    buffers = Buffers()
    while log.size_bytes < 32 * MIB:
        log.append(buffers.next(), 0)
    rng = random.Random(1)
    end = log.log_end_offset

    def read():
        return log.read(rng.randrange(end), max_bytes)
    benchmark.group = f"read {max_bytes // 1024} KiB"
    result = benchmark(read)
    assert result.length > 0
    log.close()
