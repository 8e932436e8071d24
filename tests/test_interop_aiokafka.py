"""aiokafka 0.14 against `pylog serve`: AIOKafkaProducer (send_and_wait, batched send with
futures, create_batch/send_batch, acks=all and acks=1, idempotence, every codec),
AIOKafkaConsumer with assign (no group), AIOKafkaAdminClient create/list/describe/delete
topics. See interop_support for the record mix and the checks."""
from __future__ import annotations

import asyncio
import time

import pytest

from interop_clients import aio_read_async
from interop_support import (
    RECORDS,
    assert_delivered_in_order,
    assert_high_watermarks,
    assert_stored_codecs,
    assert_topic,
    by_partition,
    create_topic,
    interop_broker,  # noqa: F401  (module-scoped `pylog serve`)
    make_records,
    stored_batches,
    topic_name,
    topic_state,
)

aiokafka = pytest.importorskip("aiokafka")
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

# aiokafka refuses a record whose key and value are both null.
AIO_RECORDS = dict(both_null=False)
SEND_AND_WAIT = 200   # records sent one at a time with send_and_wait before the batched sends


async def _produce_all(bootstrap: str, topic: str, records):
    """Four producers, a quarter each; returns per record (partition, offset), codec and
    whether its producer was idempotent."""
    quarter = len(records) // 4
    placements, codecs, idempotent = [], [], []

    # 1. acks=all, lz4: send_and_wait one by one, then send() futures gathered.
    chunk = records[:quarter]
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                compression_type="lz4") as producer:
        for r in chunk[:SEND_AND_WAIT]:
            md = await producer.send_and_wait(topic, r.value, key=r.key, headers=list(r.headers))
            placements.append((md.partition, md.offset))
        futures = [await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                   for r in chunk[SEND_AND_WAIT:]]
        placements += [(md.partition, md.offset)
                       for md in await asyncio.wait_for(asyncio.gather(*futures), 30)]
    codecs += ["lz4"] * len(chunk)
    idempotent += [False] * len(chunk)

    # 2. acks=1, snappy, explicit partitions.
    chunk = records[quarter:2 * quarter]
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, compression_type="snappy",
                                linger_ms=5) as producer:
        futures = [await producer.send(topic, r.value, key=r.key, headers=list(r.headers),
                                       partition=i % 3) for i, r in enumerate(chunk)]
        placements += [(md.partition, md.offset)
                       for md in await asyncio.wait_for(asyncio.gather(*futures), 30)]
    codecs += ["snappy"] * len(chunk)
    idempotent += [False] * len(chunk)

    # 3. zstd, batches built by the caller (create_batch/send_batch), one partition per batch.
    chunk = records[2 * quarter:3 * quarter]
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                compression_type="zstd") as producer:
        pending = list(enumerate(chunk))
        batch_number = 0
        while pending:
            batch = producer.create_batch()
            taken = 0
            for _, r in pending:
                if batch.append(key=r.key, value=r.value, timestamp=None,
                                headers=list(r.headers)) is None:
                    break
                taken += 1
            assert taken > 0, "a record did not fit an empty batch"
            partition = batch_number % 3
            md = await asyncio.wait_for(
                await producer.send_batch(batch, topic, partition=partition), 30)
            placements += [(partition, md.offset + i) for i in range(taken)]
            pending = pending[taken:]
            batch_number += 1
        assert batch_number > 3, "several caller-built batches"
    codecs += ["zstd"] * len(chunk)
    idempotent += [False] * len(chunk)

    # 4. idempotent, gzip, send() futures.
    chunk = records[3 * quarter:]
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                compression_type="gzip") as producer:
        futures = [await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                   for r in chunk]
        placements += [(md.partition, md.offset)
                       for md in await asyncio.wait_for(asyncio.gather(*futures), 30)]
    codecs += ["gzip"] * len(chunk)
    idempotent += [True] * len(chunk)
    return placements, codecs, idempotent


def test_aiokafka_producers_and_assign_consumer(interop_broker, request):
    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=3)
    records = make_records(RECORDS, seed=31, **AIO_RECORDS)
    placements, codecs, idempotent = asyncio.run(_produce_all(bootstrap, topic, records))

    partitions = [p for p, _ in placements]
    assert set(partitions) == {0, 1, 2}
    assert_delivered_in_order(partitions, [o for _, o in placements], where="aiokafka futures")
    expected = by_partition(records, partitions)
    counts = {p: len(rs) for p, rs in expected.items()}
    assert_high_watermarks(interop_broker, topic, counts)
    assert_stored_codecs(interop_broker, topic, placements, codecs, where="aiokafka")
    flags = dict(zip(placements, idempotent))
    for p in range(3):
        for batch in stored_batches(interop_broker, topic, p):
            assert (batch.producer_id >= 0) == flags[(p, batch.base_offset)], batch

    assert_topic(expected, asyncio.run(aio_read_async(bootstrap, topic, counts)),
                 where="aiokafka assign")
    asyncio.run(_offsets_and_seek(bootstrap, topic, counts, expected))


async def _offsets_and_seek(bootstrap, topic, counts, expected):
    async with AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False) as consumer:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        assert await consumer.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert await consumer.end_offsets(tps) == {tp: counts[tp.partition] for tp in tps}
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        start = counts[0] // 3
        consumer.seek(tp, start)
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=5 - len(got))
            got += batch.get(tp, [])
        assert [m.offset for m in got] == list(range(start, start + 5))
        assert [(m.key, m.value) for m in got] == \
            [(r.key, r.value) for r in expected[0][start:start + 5]]


def test_aiokafka_admin_client(interop_broker, request):
    asyncio.run(_admin(interop_broker, topic_name(request)))


async def _admin(interop_broker, topic):
    admin = AIOKafkaAdminClient(bootstrap_servers=interop_broker.bootstrap)
    await admin.start()
    try:
        answer = await admin.create_topics([NewTopic(topic, 3, 1)])
        assert [tuple(e[:2]) for e in answer.topic_errors] == [(topic, 0)]
        assert topic in await admin.list_topics()
        (described,) = await admin.describe_topics([topic])
        assert (described["topic"], described["error_code"]) == (topic, 0)
        assert sorted((p["partition"], p["leader"], p["replicas"], p["isr"], p["error_code"])
                      for p in described["partitions"]) == \
            [(i, 1, [1], [1], 0) for i in range(3)]
        cluster = await admin.describe_cluster()
        assert cluster["controller_id"] == 1
        assert [(b["node_id"], b["host"], b["port"]) for b in cluster["brokers"]] == \
            [(1, "127.0.0.1", interop_broker.port)]

        again = await admin.create_topics([NewTopic(topic, 3, 1),
                                           NewTopic(topic + "-rf2", 1, 2)])
        assert sorted(tuple(e[:2]) for e in again.topic_errors) == \
            [(topic, 36), (topic + "-rf2", 38)]   # TOPIC_ALREADY_EXISTS, INVALID_REPLICATION
        assert topic_state(interop_broker, topic + "-rf2") is None

        deleted = await admin.delete_topics([topic])
        assert [tuple(e[:2]) for e in deleted.topic_error_codes] == [(topic, 0)]
        assert topic not in await admin.list_topics()
        assert topic_state(interop_broker, topic) is None
        missing = await admin.delete_topics([topic])
        assert [tuple(e[:2]) for e in missing.topic_error_codes] == [(topic, 3)]
    finally:
        await admin.close()
