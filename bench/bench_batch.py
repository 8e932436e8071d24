"""RecordBatch v2 throughput: C validation (GB/s), record decoding and building (records/s).

    pytest bench/bench_batch.py --benchmark-only

Inputs are 1 MiB of uncompressed batches of 16 KiB (Kafka clients' default batch.size), of
100-byte or 1 KiB values, so the validation figures include walking every record's varints,
which is what the Produce path pays. The compressed variant shows what the decompression
inside validate_for_append costs on top of it. On CPUs with AVX-512 and VPCLMULQDQ the CRC runs
in the same pass as the record walk (csrc/records.c, pl_crc_with_records); the records-only and
portable-CRC variants show the two halves of that pass and what it saves.
"""
import os

import pytest

from pylog import core
from pylog.records import BatchBuilder, Compression, decode_batch, iter_records, \
    validate_for_append

MIB = 1 << 20
TIMESTAMP = 1_700_000_000_000


def batches_of(value_size: int, total: int = MIB, batch_bytes: int = 16384,
               compression: int = Compression.NONE) -> bytes:
    """About `total` bytes of batches of `batch_bytes`; each record has a 16-byte key and a
    value of `value_size` bytes, half of it random (different in every record) and half
    zeros, so that compressed batches shrink about as much as typical payloads do."""
    pool = os.urandom(1 << 20)
    half = value_size // 2
    out, offset, size = [], 0, 0
    builder = BatchBuilder(compression, max_batch_bytes=batch_bytes)
    while size < total:
        builder.reset(base_offset=offset)
        while True:
            start = (offset * 7919) % (len(pool) - half)
            value = pool[start:start + half] + bytes(value_size - half)
            if not builder.append(value, key=b"key-%012d" % offset,
                                  timestamp=TIMESTAMP + offset):
                break
            offset += 1
        batch = builder.build()
        out.append(batch)
        size += len(batch)
    return b"".join(out)


DATA = {size: batches_of(size) for size in (100, 1024)}


def _record_count(buf) -> int:
    return core.validate_batches(buf).record_count


@pytest.mark.parametrize("value_size", [100, 1024], ids=["100B-records", "1KiB-records"])
def test_validate_1mib_uncompressed_gbps(benchmark, value_size):
    """validate_batches, strict, CRC and every record walked: the Produce-path check."""
    buf = DATA[value_size]
    benchmark.group = "validate 1 MiB (CRC + record walk)"
    infos = benchmark(core.validate_batches, buf, strict=True)
    assert infos.end == len(buf)
    benchmark.extra_info["GB/s"] = round(len(buf) / benchmark.stats.stats.median / 1e9, 2)
    benchmark.extra_info["batches"] = len(infos)
    benchmark.extra_info["ns per record"] = round(
        benchmark.stats.stats.median / infos.record_count * 1e9, 2)


@pytest.mark.parametrize("value_size", [100, 1024], ids=["100B-records", "1KiB-records"])
def test_validate_1mib_records_only_gbps(benchmark, value_size):
    """The record walk alone (strict, no CRC): the scalar half of the Produce-path check."""
    buf = DATA[value_size]
    benchmark.group = "validate 1 MiB (record walk only)"
    infos = benchmark(core.validate_batches, buf, strict=True, check_crc=False)
    benchmark.extra_info["GB/s"] = round(len(buf) / benchmark.stats.stats.median / 1e9, 2)
    benchmark.extra_info["ns per record"] = round(
        benchmark.stats.stats.median / infos.record_count * 1e9, 2)


@pytest.mark.parametrize("value_size", [100, 1024], ids=["100B-records", "1KiB-records"])
def test_validate_1mib_portable_crc_gbps(benchmark, value_size):
    """The Produce-path check forced onto the portable CRC (no CPU-specific code at all)."""
    buf = DATA[value_size]
    benchmark.group = "validate 1 MiB (CRC + record walk, portable CRC)"
    core.force_portable_crc32c(True)
    try:
        benchmark(core.validate_batches, buf, strict=True)
    finally:
        core.force_portable_crc32c(False)
    benchmark.extra_info["GB/s"] = round(len(buf) / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("value_size", [100, 1024], ids=["100B-records", "1KiB-records"])
def test_validate_1mib_headers_and_crc_only_gbps(benchmark, value_size):
    """The same without the record walk: what the CRC and header checks cost alone."""
    buf = DATA[value_size]
    benchmark.group = "validate 1 MiB (CRC only)"
    benchmark(core.validate_batches, buf, check_records=False)
    benchmark.extra_info["GB/s"] = round(len(buf) / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("codec", [Compression.LZ4, Compression.ZSTD, Compression.GZIP],
                         ids=lambda c: Compression(c).lower_name)
def test_validate_for_append_compressed_gbps(benchmark, codec):
    """validate_for_append on ~1 MiB (uncompressed) of 100-byte records: decompression and
    the record walk of every compressed batch. GB/s counts uncompressed bytes."""
    buf = batches_of(100, compression=codec)
    raw_bytes = sum(len(r.value) + len(r.key) for r in iter_records(buf))
    benchmark.group = "validate_for_append, compressed"
    benchmark(validate_for_append, buf)
    benchmark.extra_info["GB/s (uncompressed payload)"] = round(
        raw_bytes / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("value_size", [100, 1024], ids=["100B-records", "1KiB-records"])
def test_decode_records_per_second(benchmark, value_size):
    """iter_records over 1 MiB: C decode plus one Record object per record."""
    buf = DATA[value_size]
    n = _record_count(buf)
    benchmark.group = "decode records"
    result = benchmark(lambda: sum(1 for _ in iter_records(buf)))
    assert result == n
    benchmark.extra_info["records/s"] = round(n / benchmark.stats.stats.median)


def test_decode_one_batch_records_per_second(benchmark):
    """decode_batch of one 16 KiB batch of 100-byte records."""
    buf = DATA[100]
    first = core.validate_batches(buf)[0]
    batch = buf[:first.size]
    benchmark.group = "decode records"
    benchmark(decode_batch, batch)
    benchmark.extra_info["records/s"] = round(first.record_count / benchmark.stats.stats.median)


@pytest.mark.parametrize("value_size", [100, 1024], ids=["100B-records", "1KiB-records"])
def test_builder_records_per_second(benchmark, value_size):
    """BatchBuilder.append of 1000 records then build, uncompressed."""
    value = os.urandom(value_size)
    keys = [b"key-%012d" % i for i in range(1000)]

    def build():
        builder = BatchBuilder(max_batch_bytes=64 * MIB)
        append = builder.append
        for i, key in enumerate(keys):
            append(value, key, (), TIMESTAMP + i)
        return builder.build()

    benchmark.group = "BatchBuilder"
    batch = benchmark(build)
    assert len(decode_batch(batch)) == 1000
    benchmark.extra_info["records/s"] = round(1000 / benchmark.stats.stats.median)
    benchmark.extra_info["MB/s"] = round(len(batch) / benchmark.stats.stats.median / 1e6)
