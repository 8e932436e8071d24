"""confluent-kafka (librdkafka 2.16) against `pylog serve`: Producer with acks=all and acks=1,
idempotence and every codec, delivery callbacks with the right offsets; Consumer with assign()
(no group); AdminClient create/list/delete topics and its errors. See interop_support for the
record mix and the checks."""
from __future__ import annotations

import time

import pytest

from interop_clients import ck_consumer, ck_produce, ck_read
from interop_support import (
    RECORDS,
    assert_delivered_in_order,
    assert_high_watermarks,
    assert_stored_codecs,
    assert_topic,
    by_partition,
    control_plane,
    create_topic,
    interop_broker,  # noqa: F401  (module-scoped `pylog serve`)
    make_records,
    stored_batches,
    topic_name,
    topic_state,
)

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import KafkaError, KafkaException, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

# One Producer per row, each writing a fifth of the records, in this order.
PRODUCERS = [
    # acks,  codec,    extra config
    ("all", "none",   {"enable.idempotence": True}),
    ("1",   "gzip",   {}),
    ("all", "snappy", {}),
    ("1",   "lz4",    {}),
    ("all", "zstd",   {"linger.ms": 20, "batch.num.messages": 500}),
]


def test_confluent_producers_and_assign_consumer(interop_broker, request):
    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=3)
    records = make_records(RECORDS, seed=11)
    per_producer = len(records) // len(PRODUCERS)
    placements, codecs = [], []
    for index, (acks, codec, extra) in enumerate(PRODUCERS):
        chunk = records[index * per_producer:(index + 1) * per_producer]
        placements += ck_produce(bootstrap, topic, chunk, acks=acks, codec=codec, **extra)
        codecs += [codec] * len(chunk)
    partitions = [p for p, _ in placements]
    assert set(partitions) == {0, 1, 2}, "the default partitioner spreads keyed records"
    # Delivery callbacks: per partition 0, 1, 2, ... in the order the records were produced.
    assert_delivered_in_order(partitions, [o for _, o in placements], where="delivery reports")
    expected = by_partition(records, partitions)
    counts = {p: len(rs) for p, rs in expected.items()}
    assert_high_watermarks(interop_broker, topic, counts)
    assert_stored_codecs(interop_broker, topic, placements, codecs, where="confluent-kafka")
    # The idempotent producer's batches carry its producer id and sequence numbers.
    idempotent = {placements[i] for i in range(per_producer)}
    for p in range(3):
        for batch in stored_batches(interop_broker, topic, p):
            if (p, batch.base_offset) in idempotent:
                assert batch.producer_id >= 0 and batch.base_sequence >= 0, batch
            else:
                assert batch.producer_id == -1, batch

    assert_topic(expected, ck_read(bootstrap, topic, counts), where="confluent-kafka assign")

    consumer = ck_consumer(bootstrap)
    try:
        for p, n in counts.items():
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assert (low, high) == (0, n)
        # assign() at an explicit offset starts exactly there.
        start = counts[1] // 2
        consumer.assign([TopicPartition(topic, 1, start)])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            got += consumer.consume(num_messages=3 - len(got), timeout=0.5)
        assert [m.offset() for m in got] == [start, start + 1, start + 2]
        assert [(m.key(), m.value()) for m in got] == \
            [(r.key, r.value) for r in expected[1][start:start + 3]]
    finally:
        consumer.close()


def _error_code(future) -> int:
    with pytest.raises(KafkaException) as info:
        future.result(timeout=20)
    return info.value.args[0].code()


def test_confluent_admin_client(interop_broker, request):
    admin = AdminClient({"bootstrap.servers": interop_broker.bootstrap})
    topic = topic_name(request)
    defaults = topic + "-defaults"

    created = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1),
                                   NewTopic(defaults)], operation_timeout=10)
    assert {name: f.result(timeout=20) for name, f in created.items()} == \
        {topic: None, defaults: None}

    metadata = admin.list_topics(timeout=20)
    status, cluster = control_plane(interop_broker, "GET", "/v1/cluster")
    assert status == 200
    assert metadata.cluster_id == cluster["cluster_id"]
    assert metadata.controller_id == 1
    assert {b.id: (b.host, b.port) for b in metadata.brokers.values()} == \
        {1: ("127.0.0.1", interop_broker.port)}
    described = metadata.topics[topic]
    assert described.error is None
    assert sorted(described.partitions) == [0, 1, 2]
    for p in described.partitions.values():
        assert (p.leader, p.replicas, p.isrs, p.error) == (1, [1], [1], None)
    assert len(metadata.topics[defaults].partitions) == 1   # the broker's num.partitions
    assert len(topic_state(interop_broker, topic)["partitions"]) == 3

    # Errors, each for its own topic of the same request.
    errors = admin.create_topics([
        NewTopic(topic, num_partitions=3, replication_factor=1),
        NewTopic(topic + "-zero", num_partitions=0, replication_factor=1),
        NewTopic(topic + "-rf2", num_partitions=1, replication_factor=2),
        NewTopic("bad name!", num_partitions=1, replication_factor=1),
    ], operation_timeout=10)
    assert _error_code(errors[topic]) == KafkaError.TOPIC_ALREADY_EXISTS
    assert _error_code(errors[topic + "-zero"]) == KafkaError.INVALID_PARTITIONS
    assert _error_code(errors[topic + "-rf2"]) == KafkaError.INVALID_REPLICATION_FACTOR
    assert _error_code(errors["bad name!"]) == KafkaError.TOPIC_EXCEPTION
    for name in (topic + "-zero", topic + "-rf2"):
        assert topic_state(interop_broker, name) is None

    # validate_only checks without creating.
    checked = admin.create_topics([NewTopic(topic + "-dry", num_partitions=2)],
                                  validate_only=True)
    assert checked[topic + "-dry"].result(timeout=20) is None
    assert topic_state(interop_broker, topic + "-dry") is None

    deleted = admin.delete_topics([topic, defaults], operation_timeout=10)
    assert {name: f.result(timeout=20) for name, f in deleted.items()} == \
        {topic: None, defaults: None}
    assert topic_state(interop_broker, topic) is None
    remaining = admin.list_topics(timeout=20).topics
    assert topic not in remaining and defaults not in remaining
    missing = admin.delete_topics([topic], operation_timeout=10)
    assert _error_code(missing[topic]) == KafkaError.UNKNOWN_TOPIC_OR_PART
