"""pylog's own client (pylog.client) against `pylog serve`, through the same checks as the other
clients: the blocking Producer/Consumer/Admin and the asyncio AsyncProducer/AsyncConsumer/
AsyncAdmin. Keyed records land where Java's (and kafka-python's) murmur2 partitioner puts them.
See interop_support for the record mix and the checks."""
from __future__ import annotations

import asyncio
import time

import pytest

from interop_support import (
    RECORDS,
    Got,
    adrain,
    assert_delivered_in_order,
    assert_high_watermarks,
    assert_stored_codecs,
    assert_topic,
    by_partition,
    create_topic,
    group_got,
    interop_broker,  # noqa: F401  (module-scoped `pylog serve`)
    make_records,
    normalize_headers,
    topic_name,
    topic_state,
)
from pylog.client import (
    Admin,
    AsyncAdmin,
    AsyncConsumer,
    AsyncProducer,
    Consumer,
    NewTopic,
    Producer,
)
from pylog.client.errors import (
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

# One blocking Producer per row, each writing a fifth of the records, in this order.
PRODUCERS = [
    # config                                             codec
    ({"acks": "all"},                                   "none"),
    ({"acks": 1, "compression": "gzip"},                "gzip"),
    ({"acks": "all", "compression": "snappy"},          "snappy"),
    ({"acks": 1, "compression": "lz4", "linger_ms": 0}, "lz4"),
    ({"acks": "all", "compression": "zstd", "batch_size": 65536}, "zstd"),
]
BASE_TIMESTAMP = 1_700_000_000_000


def test_pylog_sync_producer_consumer(interop_broker, request):
    from kafka.partitioner.default import murmur2  # the Java client's hash, independent

    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=3)
    records = make_records(RECORDS, seed=41)
    fifth = len(records) // len(PRODUCERS)
    placements, codecs = [], []
    for index, (config, codec) in enumerate(PRODUCERS):
        chunk = records[index * fifth:(index + 1) * fifth]
        with Producer(bootstrap, **config) as producer:
            futures = [producer.send(topic, value=r.value, key=r.key, headers=list(r.headers),
                                     timestamp=BASE_TIMESTAMP + index * fifth + i)
                       for i, r in enumerate(chunk)]
            producer.flush(timeout_ms=30_000)
            metadata = [f.result(timeout=30) for f in futures]
        assert all(md.topic == topic for md in metadata)
        assert [md.timestamp for md in metadata] == \
            [BASE_TIMESTAMP + index * fifth + i for i in range(len(chunk))]
        placements += [(md.partition, md.offset) for md in metadata]
        codecs += [codec] * len(chunk)
    partitions = [p for p, _ in placements]
    for record, partition in zip(records, partitions):
        if record.key is not None:
            assert partition == (murmur2(record.key) & 0x7FFFFFFF) % 3, record.key
    assert_delivered_in_order(partitions, [o for _, o in placements], where="pylog futures")
    expected = by_partition(records, partitions)
    counts = {p: len(rs) for p, rs in expected.items()}
    assert_high_watermarks(interop_broker, topic, counts)
    assert_stored_codecs(interop_broker, topic, placements, codecs, where="pylog producer")

    stamps = {}
    with Consumer(bootstrap) as consumer:
        consumer.assign([(topic, p) for p in counts])
        consumer.seek_to_beginning()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < len(records) and time.monotonic() < deadline:
            for rs in consumer.poll(timeout_ms=500).values():
                for r in rs:
                    got.append((r.partition, Got(r.offset, r.key, r.value,
                                                 normalize_headers(r.headers))))
                    stamps[(r.partition, r.offset)] = r.timestamp
        assert_topic(expected, group_got(got), where="pylog Consumer")
        assert [stamps[placement] for placement in placements] == \
            [BASE_TIMESTAMP + i for i in range(len(records))]

        tps = [(topic, p) for p in range(3)]
        assert {tuple(tp): o for tp, o in consumer.beginning_offsets(tps).items()} == \
            {tp: 0 for tp in tps}
        assert {tuple(tp): o for tp, o in consumer.end_offsets(tps).items()} == \
            {(topic, p): counts[p] for p in range(3)}
        # offsets_for_times: the first record stamped at or after a time.
        target = placements[len(records) // 2]
        found = consumer.offsets_for_times({(topic, target[0]): BASE_TIMESTAMP
                                            + len(records) // 2})
        assert [(o.offset, o.timestamp) for o in found.values()] == \
            [(target[1], BASE_TIMESTAMP + len(records) // 2)]
        consumer.seek((topic, target[0]), target[1])
        assert consumer.position((topic, target[0])) == target[1]


async def _async_roundtrip(bootstrap: str, topic: str, records) -> tuple[list, dict]:
    placements = []
    async with AsyncProducer(bootstrap, acks="all", compression="lz4") as producer:
        for r in records[:100]:
            md = await producer.send_and_wait(topic, r.value, r.key, list(r.headers))
            placements.append((md.partition, md.offset))
        futures = [await producer.send(topic, r.value, r.key, list(r.headers),
                                       partition=i % 2)
                   for i, r in enumerate(records[100:])]
        await producer.flush(timeout_ms=30_000)
        placements += [((md := f.result()).partition, md.offset) for f in futures]
    async with AsyncConsumer(bootstrap) as consumer:
        assigned = await consumer.assign_topic(topic)
        assert sorted(assigned) == [(topic, 0), (topic, 1)]

        async def poll():
            batch = await consumer.getmany(timeout_ms=500)
            return [(r.partition, Got(r.offset, r.key, r.value, normalize_headers(r.headers)))
                    for rs in batch.values() for r in rs]
        got = group_got(await adrain(poll, len(records)))
        assert consumer.highwater((topic, 0)) == len(got.get(0, []))
    return placements, got


def test_pylog_async_producer_consumer(interop_broker, request):
    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=2)
    records = make_records(RECORDS, seed=42)
    placements, got = asyncio.run(_async_roundtrip(bootstrap, topic, records))
    partitions = [p for p, _ in placements]
    assert_delivered_in_order(partitions, [o for _, o in placements], where="AsyncProducer")
    expected = by_partition(records, partitions)
    assert_high_watermarks(interop_broker, topic, {p: len(rs) for p, rs in expected.items()})
    assert_stored_codecs(interop_broker, topic, placements, ["lz4"] * len(records),
                         where="AsyncProducer")
    assert_topic(expected, got, where="AsyncConsumer")


def test_pylog_sync_admin(interop_broker, request):
    topic = topic_name(request)
    with Admin(interop_broker.bootstrap) as admin:
        assert admin.create_topics([NewTopic(topic, partitions=3),
                                    NewTopic(topic + "-b", partitions=1)]) == \
            {topic: None, topic + "-b": None}
        assert {topic, topic + "-b"} <= set(admin.list_topics())
        (described,) = admin.describe_topics(topic)
        assert [(p.partition, p.leader, p.replicas, p.isr) for p in described.partitions] == \
            [(i, 1, (1,), (1,)) for i in range(3)]
        cluster = admin.describe_cluster()
        assert cluster["controller_id"] == 1
        assert [(b.node_id, b.port) for b in cluster["brokers"]] == [(1, interop_broker.port)]

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics(topic, partitions=3)
        with pytest.raises(InvalidPartitionsError):
            admin.create_topics(topic + "-zero", partitions=0)
        with pytest.raises(InvalidReplicationFactorError):
            admin.create_topics(topic + "-rf2", replication_factor=2)
        with pytest.raises(InvalidTopicError):
            admin.create_topics("bad name!")
        assert admin.create_topics(topic + "-dry", validate_only=True) == {topic + "-dry": None}
        assert topic_state(interop_broker, topic + "-dry") is None

        assert admin.delete_topics([topic, topic + "-b"]) == {topic: None, topic + "-b": None}
        assert topic not in admin.list_topics()
        assert topic_state(interop_broker, topic) is None
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.delete_topics(topic)


def test_pylog_async_admin(interop_broker, request):
    topic = topic_name(request)

    async def scenario():
        async with AsyncAdmin(interop_broker.bootstrap) as admin:
            assert await admin.create_topics(topic, partitions=2) == {topic: None}
            (described,) = await admin.describe_topics([topic])
            assert [p.partition for p in described.partitions] == [0, 1]
            answer = await admin.create_topics(topic, raise_errors=False)
            assert isinstance(answer[topic], TopicAlreadyExistsError)
            assert await admin.delete_topics(topic) == {topic: None}
            assert topic not in await admin.list_topics()
            with pytest.raises(UnknownTopicOrPartitionError):
                await admin.describe_topics([topic])

    asyncio.run(scenario())
    assert topic_state(interop_broker, topic) is None
