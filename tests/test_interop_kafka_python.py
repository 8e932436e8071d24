"""kafka-python 3 against `pylog serve`: KafkaProducer with its default idempotence (and gzip,
and a non-idempotent acks=1 producer), KafkaConsumer without a group (assign +
seek_to_beginning, seek, beginning/end offsets), KafkaAdminClient create/list/describe/delete
topics. Only gzip among the codecs: snappy/lz4/zstd need python libraries that are not in the
test extra. See interop_support for the record mix and the checks."""
from __future__ import annotations

import time

import pytest

from interop_clients import kp_consumer, kp_produce, kp_read
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

kafka = pytest.importorskip("kafka")
from kafka import TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient  # noqa: E402
from kafka.errors import (  # noqa: E402
    InvalidPartitionsError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

# kafka-python refuses records with a null key and a null value, and None header values.
KP_RECORDS = dict(both_null=False, null_header_values=False)


def test_kafka_python_producers_and_consumer_without_group(interop_broker, request):
    bootstrap = interop_broker.bootstrap
    topic = topic_name(request)
    create_topic(interop_broker, topic, partitions=3)
    records = make_records(RECORDS, seed=21, **KP_RECORDS)
    third = len(records) // 3
    chunks = [
        # records,             explicit partitions,       producer config,                  codec
        (records[:third], None, {}, "none"),
        (records[third:2 * third], None, {"compression_type": "gzip", "linger_ms": 5}, "gzip"),
        (records[2 * third:], [i % 3 for i in range(len(records) - 2 * third)],
         {"acks": 1, "enable_idempotence": False}, "none"),
    ]
    placements, codecs, idempotent = [], [], []
    for chunk, partitions, config, codec in chunks:
        placements += kp_produce(bootstrap, topic, chunk, partitions, **config)
        codecs += [codec] * len(chunk)
        idempotent += [config.get("enable_idempotence", True)] * len(chunk)
    partitions = [p for p, _ in placements]
    assert set(partitions) == {0, 1, 2}
    assert_delivered_in_order(partitions, [o for _, o in placements], where="futures")
    expected = by_partition(records, partitions)
    counts = {p: len(rs) for p, rs in expected.items()}
    assert_high_watermarks(interop_broker, topic, counts)
    assert_stored_codecs(interop_broker, topic, placements, codecs, where="kafka-python")

    # Idempotence in effect: the default producers' batches carry a producer id, and their
    # sequence numbers count that producer's records in the partition from 0 without a gap.
    flags = dict(zip(placements, idempotent))
    producers = set()
    for p in range(3):
        sequences: dict[int, int] = {}
        for batch in stored_batches(interop_broker, topic, p):
            if not flags[(p, batch.base_offset)]:
                assert batch.producer_id == -1 and batch.base_sequence == -1, batch
                continue
            assert batch.producer_id >= 0 and batch.producer_epoch >= 0, batch
            assert batch.base_sequence == sequences.get(batch.producer_id, 0), batch
            sequences[batch.producer_id] = batch.base_sequence + batch.last_offset_delta + 1
        producers |= set(sequences)
    assert len(producers) == 2, "two idempotent producers, two producer ids"

    assert_topic(expected, kp_read(bootstrap, topic, counts), where="kafka-python assign")

    consumer = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        assert consumer.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert consumer.end_offsets(tps) == {tp: counts[tp.partition] for tp in tps}
        tp = TopicPartition(topic, 2)
        consumer.assign([tp])
        start = counts[2] - 4
        consumer.seek(tp, start)
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < deadline:
            got += [m for ms in consumer.poll(timeout_ms=500).values() for m in ms]
        assert [m.offset for m in got] == list(range(start, counts[2]))
        assert [(m.key, m.value) for m in got] == [(r.key, r.value) for r in expected[2][-4:]]
        assert consumer.position(tp) == counts[2]
    finally:
        consumer.close()


def test_kafka_python_admin_client(interop_broker, request):
    topic = topic_name(request)
    admin = KafkaAdminClient(bootstrap_servers=interop_broker.bootstrap)
    try:
        admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1},
                             topic + "-defaults": {}}, wait_for_metadata=True)
        assert {topic, topic + "-defaults"} <= set(admin.list_topics())

        (described,) = admin.describe_topics([topic])
        assert (described["name"], described["error_code"]) == (topic, 0)
        assert [(p["partition_index"], p["leader_id"], p["replica_nodes"], p["isr_nodes"],
                 p["error_code"]) for p in sorted(described["partitions"],
                                                  key=lambda p: p["partition_index"])] == \
            [(i, 1, [1], [1], 0) for i in range(3)]
        (defaults,) = admin.describe_topics([topic + "-defaults"])
        assert len(defaults["partitions"]) == 1   # the broker's num.partitions

        cluster = admin.describe_cluster()
        status, plane = control_plane(interop_broker, "GET", "/v1/cluster")
        assert status == 200
        assert cluster["cluster_id"] == plane["cluster_id"]
        assert cluster["controller_id"] == 1
        assert [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]] == \
            [(1, "127.0.0.1", interop_broker.port)]

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}})
        with pytest.raises(InvalidPartitionsError):
            admin.create_topics({topic + "-zero": {"num_partitions": 0,
                                                   "replication_factor": 1}})
        assert topic_state(interop_broker, topic + "-zero") is None
        answer = admin.create_topics({topic + "-dry": {"num_partitions": 2}},
                                     validate_only=True)
        assert [t["error_code"] for t in answer["topics"]] == [0]
        assert topic_state(interop_broker, topic + "-dry") is None

        answer = admin.delete_topics([topic, topic + "-defaults"])
        assert sorted((t["name"], t["error_code"]) for t in answer["topics"]) == \
            [(topic, 0), (topic + "-defaults", 0)]
        assert topic not in admin.list_topics()
        assert topic_state(interop_broker, topic) is None
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.delete_topics([topic])
    finally:
        admin.close()
