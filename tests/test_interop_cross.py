"""Cross-client interoperability through `pylog serve`: what one client writes, every other
client reads back identically (bytes of keys, values and headers, order, offsets).

Each writer writes RECORDS records once per module to a 3-partition topic, at explicit
partitions (record i to partition (i // 7) % 3), in chunks that each use one codec, so the
broker holds batches from that client compressed every way it can compress. kafka-python reads
only none and gzip here (snappy/lz4/zstd need python libraries that are not in the test
extra), so every writer that uses more codecs also writes a none+gzip topic for it. Records are
limited to what the writer can express (see interop_support.make_records and
interop_clients.kcat_expressible); readers have no limits.
"""
from __future__ import annotations

import asyncio
import zlib

import pytest

from interop_clients import (
    KCAT,
    KEY_DELIM,
    MSG_DELIM,
    READERS,
    aio_produce,
    ck_produce,
    kcat_expressible,
    kcat_produce,
    kp_produce,
    pylog_produce,
)
from interop_support import (
    RECORDS,
    assert_delivered_in_order,
    assert_high_watermarks,
    assert_topic,
    by_partition,
    create_topic,
    interop_broker,  # noqa: F401  (module-scoped `pylog serve`)
    make_records,
    split_round_robin,
)

ALL_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PARTITIONS = 3

# writer -> (codecs it compresses with, make_records flags for what it can express)
WRITERS = {
    "confluent-kafka": (ALL_CODECS, {}),
    "kafka-python": (("none", "gzip"), {"both_null": False, "null_header_values": False}),
    "aiokafka": (ALL_CODECS, {"both_null": False}),
    "pylog": (ALL_CODECS, {}),
    "kcat": (ALL_CODECS, {"avoid": (MSG_DELIM, KEY_DELIM)}),
}


def _option(codec: str):
    return None if codec == "none" else codec


def _write_chunk(writer, bootstrap, topic, chunk, partitions, codec, index):
    """Write one chunk with one codec; the records as the broker should now hold them."""
    if writer == "kcat":
        sent = kcat_expressible(chunk, null_mode=index % 2 == 1, headers=[
            ("writer", "kcat"), ("codec", codec), ("dup", "1"), ("dup", "2"),
            ("ключ", "значение"), ("empty", ""), ("null", None)])
        for p in range(PARTITIONS):
            kcat_produce(bootstrap, topic, [r for r, q in zip(sent, partitions) if q == p],
                         partition=p, codec=codec, null_mode=index % 2 == 1)
        return sent
    if writer == "confluent-kafka":
        placed = ck_produce(bootstrap, topic, chunk, partitions, codec=codec)
    elif writer == "kafka-python":
        placed = kp_produce(bootstrap, topic, chunk, partitions, compression_type=_option(codec))
    elif writer == "aiokafka":
        placed = asyncio.run(aio_produce(bootstrap, topic, chunk, partitions,
                                         compression_type=_option(codec)))
    else:
        placed = pylog_produce(bootstrap, topic, chunk, partitions, compression=_option(codec))
    assert [p for p, _ in placed] == list(partitions)
    return list(chunk)


@pytest.fixture(scope="module")
def written(interop_broker):
    """get(writer, codecs) -> (topic, {partition: records}): written on first use."""
    cache = {}

    def get(writer: str, codecs: tuple[str, ...]):
        if (writer, codecs) not in cache:
            topic = f"cross-{writer}-{'-'.join(codecs)}"
            create_topic(interop_broker, topic, partitions=PARTITIONS)
            records = make_records(RECORDS, seed=zlib.crc32(topic.encode()),
                                   **WRITERS[writer][1])
            partitions = split_round_robin(records, PARTITIONS)
            held = []
            for index, codec in enumerate(codecs):
                lo = index * len(records) // len(codecs)
                hi = (index + 1) * len(records) // len(codecs)
                held += _write_chunk(writer, interop_broker.bootstrap, topic, records[lo:hi],
                                     partitions[lo:hi], codec, index)
            expected = by_partition(held, partitions)
            assert_high_watermarks(interop_broker, topic,
                                   {p: len(rs) for p, rs in expected.items()})
            cache[(writer, codecs)] = (topic, expected)
        return cache[(writer, codecs)]
    return get


def _pairs():
    for writer in WRITERS:
        for reader in READERS:
            if writer != reader:
                needs_kcat = "kcat" in (writer, reader)
                yield pytest.param(writer, reader, id=f"{writer}-to-{reader}", marks=(
                    [pytest.mark.skipif(KCAT is None, reason="kcat not installed")]
                    if needs_kcat else []))


@pytest.mark.parametrize("writer,reader", list(_pairs()))
def test_written_by_one_read_by_another(interop_broker, written, writer, reader):
    codecs = WRITERS[writer][0]
    if reader == "kafka-python":
        codecs = tuple(c for c in codecs if c in ("none", "gzip"))
    topic, expected = written(writer, codecs)
    counts = {p: len(rs) for p, rs in expected.items()}
    got = READERS[reader](interop_broker.bootstrap, topic, counts)
    assert_topic(expected, got, where=f"{topic}: written by {writer}, read by {reader}")


def test_the_record_mix_has_every_edge_case():
    """What the interop tests claim to cover is in the records they write."""
    records = make_records(RECORDS, seed=1)
    assert len(records) >= 10_000
    assert any(r.key is None and r.value is None for r in records)
    assert any(r.key == b"" for r in records) and any(r.value == b"" for r in records)
    assert any(r.value is not None and len(r.value) >= 100 * 1024 for r in records)
    for field in ("key", "value"):
        data = [getattr(r, field) for r in records if getattr(r, field)]
        assert any(_not_utf8(d) for d in data), f"binary {field}s"
        assert any(not _not_utf8(d) and not d.isascii() for d in data), f"UTF-8 {field}s"
    assert any(not r.headers for r in records)
    assert any(len(r.headers) >= 3 for r in records)
    assert any(len({n for n, _ in r.headers}) < len(r.headers) for r in records), "dup names"
    assert any(not n.isascii() for r in records for n, _ in r.headers)
    assert any(v is None for r in records for _, v in r.headers)
    assert any(v and _not_utf8(v) for r in records for _, v in r.headers)
    # The flags remove exactly what a client cannot send.
    limited = make_records(RECORDS, seed=1, both_null=False, null_header_values=False,
                           avoid=(MSG_DELIM,))
    assert not any(r.key is None and r.value is None for r in limited)
    assert not any(v is None for r in limited for _, v in r.headers)
    assert not any(MSG_DELIM in (r.key or b"") + b"|" + (r.value or b"") for r in limited)
    assert any(r.key is None for r in limited) and any(r.value is None for r in limited)


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_acknowledged_offsets_agree_across_clients(interop_broker, request):
    """Two clients appending to the same partitions in turn: each one's acknowledged offsets
    continue exactly where the other's ended."""
    topic = request.node.name
    create_topic(interop_broker, topic, partitions=2)
    records = make_records(2_000, seed=7, both_null=False, null_header_values=False)
    writers = [
        lambda chunk, parts: ck_produce(interop_broker.bootstrap, topic, chunk, parts),
        lambda chunk, parts: kp_produce(interop_broker.bootstrap, topic, chunk, parts),
        lambda chunk, parts: asyncio.run(aio_produce(interop_broker.bootstrap, topic, chunk,
                                                     parts)),
        lambda chunk, parts: pylog_produce(interop_broker.bootstrap, topic, chunk, parts),
    ]
    partitions = [i % 2 for i in range(len(records))]
    placed = []
    step = len(records) // 8
    for turn in range(8):
        lo, hi = turn * step, (turn + 1) * step
        placed += writers[turn % 4](records[lo:hi], partitions[lo:hi])
    assert [p for p, _ in placed] == partitions
    assert_delivered_in_order(partitions, [o for _, o in placed], where="alternating clients")
    expected = by_partition(records, partitions)
    assert_topic(expected, READERS["pylog"](interop_broker.bootstrap, topic,
                                            {0: len(expected[0]), 1: len(expected[1])}),
                 where="alternating clients")
