"""A real `pylog serve` subprocess against kafka-python 3 (an independent client) and raw
frames: ApiVersions and its fallback on the wire, Metadata at every version, produce with
acks 0/1/all read back exactly, auto-create, topic admin with each error code, ListOffsets,
InitProducerId across restarts, data and HW across SIGTERM and SIGKILL restarts."""
import struct
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.record.default_records import DefaultRecordBatchBuilder

from broker_fixture import BrokerFactory
from kafka_wire import Wire, body, entity, raw_frame
from pylog.broker.handlers import HANDLER_CLASSES
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import ApiKey, advertised

IMPLEMENTED = advertised(cls.api_key for cls in HANDLER_CLASSES)
INT32_MIN = -2**31
CLIENT_DEADLINE_MS = 10_000


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One broker for the tests that do not restart it (auto-create on, 2 partitions)."""
    factory = BrokerFactory(tmp_path_factory.mktemp("shared-broker"))
    running = factory.start(settings={"num.partitions": "2"})
    yield running
    factory.cleanup(failed=False)


def _producer(bootstrap, **kw):
    return KafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=CLIENT_DEADLINE_MS,
                         max_block_ms=CLIENT_DEADLINE_MS, **kw)


def _consume(bootstrap, topic, partition, count, start=None):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000,
                             request_timeout_ms=CLIENT_DEADLINE_MS, enable_auto_commit=False)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    if start is None:
        consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, start)
    records = []
    deadline = time.monotonic() + 20
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def _batch(values, *, keys=None, timestamp=1_700_000_000_000):
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=timestamp + i, key=None if keys is None else keys[i],
                       value=value, headers=[])
    return bytes(builder.build())


def _produce_raw(wire, topic, partition, records, acks=1, version=8):
    request = body(0, version, transactional_id=None, acks=acks, timeout=5000, topic_data=(
        entity(0, version, "topic_data", name=topic, partition_data=(
            entity(0, version, "topic_data.partition_data", index=partition,
                   records=records),)),))
    if acks == 0:
        wire.send(0, version, request)
        return None
    response = wire.call(0, version, request)
    return response.responses[0].partition_responses[0]


# ---- ApiVersions ----------------------------------------------------------------------------

def test_api_versions_v0_and_v2_list_exactly_the_implemented_apis(shared):
    with Wire(shared.bootstrap) as wire:
        for version in (0, 1, 2):
            response = wire.call(18, version, body(18, version))
            assert response.error_code == ErrorCode.NONE
            listed = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
            # Produce is listed from v0, as Kafka 4 does (KAFKA-18659): librdkafka < 2.11.1
            # compresses with gzip/snappy/lz4 only then. v0-v2 requests are still refused
            # (test_broker_bounds, produce-v2).
            assert listed == {**{int(k): tuple(r) for k, r in IMPLEMENTED.items()},
                              ApiKey.PRODUCE: (0, IMPLEMENTED[ApiKey.PRODUCE].max)}
    assert listed[ApiKey.DELETE_TOPICS] == (0, 3)
    assert listed[ApiKey.JOIN_GROUP] == (0, 5)       # the group apis (KAFKA-PROTOCOL §1)
    assert listed[ApiKey.OFFSET_COMMIT] == (2, 7) and listed[ApiKey.OFFSET_FETCH] == (1, 5)


def test_api_versions_v3_gets_the_v0_fallback_and_the_connection_stays_open(shared):
    with Wire(shared.bootstrap) as wire:
        # ApiVersions v3 as librdkafka sends it: request header v2 (tagged fields), compact
        # strings in the body.
        header = struct.pack(">hhih", 18, 3, 4711, 7) + b"rdkafka" + b"\x00"
        payload = header + b"\x08librdkafka\x062.0.2\x00"
        wire.send_raw(struct.pack(">i", len(payload)) + payload)
        frame = wire.read_frame()
        correlation_id, error_code, count = struct.unpack_from(">ihi", frame)
        assert (correlation_id, error_code) == (4711, 35)
        entries = [struct.unpack_from(">hhh", frame, 10 + 6 * i) for i in range(count)]
        assert len(frame) == 10 + 6 * count          # v0 layout: no throttle, no tags
        assert (18, 0, 2) in entries
        # The client retries with v0 on the same connection.
        response = wire.call(18, 0, body(18, 0))
        assert response.error_code == ErrorCode.NONE


# ---- Metadata -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", range(0, 9))
def test_metadata_every_version(shared, version):
    topic = f"meta-v{version}"
    with Wire(shared.bootstrap) as wire:
        topics = (entity(3, version, "topics", name=topic),)
        first = wire.call(3, version, body(3, version, topics=topics,
                                           allow_auto_topic_creation=True,
                                           include_cluster_authorized_operations=False,
                                           include_topic_authorized_operations=False))
        assert [(t.name, t.error_code) for t in first.topics] == \
            [(topic, ErrorCode.LEADER_NOT_AVAILABLE)]            # auto-created just now
        second = wire.call(3, version, body(3, version, topics=topics,
                                            allow_auto_topic_creation=True,
                                            include_cluster_authorized_operations=False,
                                            include_topic_authorized_operations=False))
    (described,) = second.topics
    assert described.error_code == ErrorCode.NONE
    assert [p.partition_index for p in described.partitions] == [0, 1]
    for p in described.partitions:
        assert (p.leader_id, tuple(p.replica_nodes), tuple(p.isr_nodes)) == (1, (1,), (1,))
        if version >= 7:
            assert p.leader_epoch == 0
    (broker,) = second.brokers
    assert (broker.node_id, broker.host, broker.port) == (1, "127.0.0.1", shared.port)
    if version >= 1:
        assert second.controller_id == 1
    if version >= 8:
        assert described.topic_authorized_operations == INT32_MIN
        assert second.cluster_authorized_operations == INT32_MIN


def test_metadata_topic_selection_and_errors(shared):
    with Wire(shared.bootstrap) as wire:
        wire.call(3, 1, body(3, 1, topics=(entity(3, 1, "topics", name="sel-a"),)))
        every = wire.call(3, 0, body(3, 0, topics=()))               # v0 [] = all
        assert "sel-a" in {t.name for t in every.topics}
        every = wire.call(3, 1, body(3, 1, topics=None))             # v1 null = all
        assert "sel-a" in {t.name for t in every.topics}
        none = wire.call(3, 1, body(3, 1, topics=()))                # v1 [] = none
        assert none.topics == () and none.brokers
        refused = wire.call(3, 4, body(3, 4, topics=(
            entity(3, 4, "topics", name="never-created"),
            entity(3, 4, "topics", name="bad/name"),
            entity(3, 4, "topics", name=".."),
        ), allow_auto_topic_creation=False))
        assert [(t.name, t.error_code) for t in refused.topics] == [
            ("never-created", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
            ("bad/name", ErrorCode.INVALID_TOPIC_EXCEPTION),
            ("..", ErrorCode.INVALID_TOPIC_EXCEPTION)]
        asked = wire.call(3, 8, body(3, 8, topics=(entity(3, 8, "topics", name="sel-a"),),
                                     allow_auto_topic_creation=False,
                                     include_cluster_authorized_operations=True,
                                     include_topic_authorized_operations=True))
        assert asked.topics[0].topic_authorized_operations == 3576
        assert asked.cluster_authorized_operations == 8096


def test_kafka_python_admin_list_and_describe(shared):
    admin = KafkaAdminClient(bootstrap_servers=shared.bootstrap,
                             request_timeout_ms=CLIENT_DEADLINE_MS)
    try:
        admin.create_topics([NewTopic("admin-listed", 3, 1)])
        assert "admin-listed" in admin.list_topics()
        (described,) = admin.describe_topics(["admin-listed"])
        assert len(described["partitions"]) == 3
        assert admin.describe_cluster()["controller_id"] == 1
    finally:
        admin.close()


# ---- Produce and Fetch ----------------------------------------------------------------------

@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_produce_and_read_back_exact_offsets_and_bytes(shared, acks):
    topic = f"produce-acks-{acks}"
    producer = _producer(shared.bootstrap, acks=acks, linger_ms=2)
    sent = [(f"key-{i}".encode(), f"value-{i}-".encode() * (i % 7 + 1),
             [("h", str(i).encode())]) for i in range(500)]
    futures = [producer.send(topic, key=k, value=v, headers=h, partition=0) for k, v, h in sent]
    producer.flush(timeout=20)
    if acks != 0:
        assert [f.get(timeout=10).offset for f in futures] == list(range(500))
    producer.close()
    records = _consume(shared.bootstrap, topic, 0, 500)
    assert [r.offset for r in records] == list(range(500))
    assert [(r.key, r.value, r.headers) for r in records] == sent


def test_acks0_has_no_response_and_acks1_answers_offsets(shared):
    records = _batch([b"a", b"b", b"c"])
    with Wire(shared.bootstrap) as wire:
        wire.call(3, 1, body(3, 1, topics=(entity(3, 1, "topics", name="raw-produce"),)))
        assert _produce_raw(wire, "raw-produce", 0, records, acks=0) is None
        # The next answer on the wire is the ApiVersions one: acks=0 sent nothing.
        correlation_id = wire.send(18, 0, body(18, 0))
        assert wire.receive(18, 0, correlation_id).error_code == ErrorCode.NONE
        answer = _produce_raw(wire, "raw-produce", 0, records, acks=1)
        assert (answer.error_code, answer.base_offset) == (ErrorCode.NONE, 3)
        answer = _produce_raw(wire, "raw-produce", 0, records, acks=-1, version=3)
        assert (answer.error_code, answer.base_offset) == (ErrorCode.NONE, 6)
    assert [r.value for r in _consume(shared.bootstrap, "raw-produce", 0, 9)] == \
        [b"a", b"b", b"c"] * 3


@pytest.mark.parametrize("version", [4, 7, 11])
def test_fetch_raw_versions_empty_records_and_out_of_range(shared, version):
    with Wire(shared.bootstrap) as wire:
        wire.call(3, 1, body(3, 1, topics=(entity(3, 1, "topics", name=f"fetch-{version}"),)))
        _produce_raw(wire, f"fetch-{version}", 0, _batch([b"x", b"y"]))

        def fetch(offset, max_wait_ms=0, session_id=0):
            return wire.call(1, version, body(
                1, version, replica_id=-1, max_wait=max_wait_ms, min_bytes=1,
                max_bytes=1 << 20, isolation_level=1, session_id=session_id, session_epoch=-1,
                topics=(entity(1, version, "topics", topic=f"fetch-{version}", partitions=(
                    entity(1, version, "topics.partitions", partition=0, fetch_offset=offset,
                           partition_max_bytes=1 << 20, current_leader_epoch=-1,
                           log_start_offset=-1),)),),
                forgotten_topics_data=(), rack_id=""))

        data = fetch(0).responses[0].partitions[0]
        assert (data.error_code, data.high_watermark, data.last_stable_offset) == (0, 2, 2)
        assert len(data.records) > 61
        empty = fetch(2, max_wait_ms=50).responses[0].partitions[0]     # at the HW = LEO
        assert empty.error_code == ErrorCode.NONE and empty.records == b""   # never null
        beyond = fetch(3).responses[0].partitions[0]
        assert beyond.error_code == ErrorCode.OFFSET_OUT_OF_RANGE
        if version >= 7:
            assert fetch(0).session_id == 0
            assert fetch(0, session_id=99).error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
        if version >= 11:
            assert data.preferred_read_replica == -1


def test_long_poll_fetch_does_not_block_its_connection(shared):
    """A fetch parked for data, then a produce on the same connection: the broker reads and
    runs the produce while the fetch waits, the produce wakes the fetch, and both answers come
    back in request order long before the fetch's 8 s wait."""
    with Wire(shared.bootstrap) as wire:
        wire.call(3, 1, body(3, 1, topics=(entity(3, 1, "topics", name="long-poll"),)))
        fetch = body(1, 11, replica_id=-1, max_wait=8000, min_bytes=1, max_bytes=1 << 20,
                     isolation_level=0, session_id=0, session_epoch=-1, topics=(
                         entity(1, 11, "topics", topic="long-poll", partitions=(
                             entity(1, 11, "topics.partitions", partition=0, fetch_offset=0,
                                    partition_max_bytes=1 << 20, current_leader_epoch=-1,
                                    log_start_offset=-1),)),),
                     forgotten_topics_data=(), rack_id="")
        produce = body(0, 8, transactional_id=None, acks=1, timeout=5000, topic_data=(
            entity(0, 8, "topic_data", name="long-poll", partition_data=(
                entity(0, 8, "topic_data.partition_data", index=0,
                       records=_batch([b"wake"])),)),))
        began = time.monotonic()
        fetch_id = wire.send(1, 11, fetch)
        produce_id = wire.send(0, 8, produce)
        fetched = wire.receive(1, 11, fetch_id).responses[0].partitions[0]
        produced = wire.receive(0, 8, produce_id).responses[0].partition_responses[0]
        assert time.monotonic() - began < 6
    assert fetched.error_code == ErrorCode.NONE and fetched.high_watermark == 1
    assert b"wake" in fetched.records
    assert (produced.error_code, produced.base_offset) == (ErrorCode.NONE, 0)


def test_auto_create_on_produce_and_its_absence(broker_factory):
    on = broker_factory.start()
    producer = _producer(on.bootstrap, acks=1)
    assert producer.send("made-by-produce", b"v").get(timeout=10).offset == 0
    producer.close()
    off = broker_factory.start(settings={"auto.create.topics.enable": "false"})
    with Wire(off.bootstrap) as wire:
        answer = _produce_raw(wire, "not-there", 0, _batch([b"v"]))
        assert answer.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        response = wire.call(3, 8, body(3, 8, topics=(entity(3, 8, "topics", name="not-there"),),
                                        allow_auto_topic_creation=True,
                                        include_cluster_authorized_operations=False,
                                        include_topic_authorized_operations=False))
        assert response.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


# ---- topic admin ----------------------------------------------------------------------------

def _create(wire, version, *topics, validate_only=False):
    request = body(19, version, timeout=5000, validate_only=validate_only, topics=tuple(
        entity(19, version, "topics", name=name, num_partitions=partitions,
               replication_factor=replication, assignments=(), configs=tuple(
                   entity(19, version, "topics.configs", name=k, value=v)
                   for k, v in (configs or {}).items()))
        for name, partitions, replication, configs in topics))
    return [(t.name, t.error_code, t.error_message) for t in wire.call(19, version,
                                                                     request).topics]


def test_create_topics_error_codes(shared):
    with Wire(shared.bootstrap) as wire:
        results = _create(wire, 4,
                          ("ct-ok", 3, 1, {"retention.ms": "60000"}),
                          ("ct-defaults", -1, -1, None),
                          ("ct-zero-partitions", 0, 1, None),
                          ("ct-rf-too-big", 1, 3, None),
                          ("bad name!", 1, 1, None),
                          ("ct-bad-config", 1, 1, {"no.such.config": "1"}),
                          ("ct-bad-value", 1, 1, {"retention.ms": "soon"}),
                          ("ct-dup", 1, 1, None), ("ct-dup", 1, 1, None))
        codes = {name: code for name, code, _ in results}
        assert codes == {"ct-ok": 0, "ct-defaults": 0, "ct-zero-partitions": 37,
                         "ct-rf-too-big": 38, "bad name!": 17, "ct-bad-config": 40,
                         "ct-bad-value": 40, "ct-dup": 42}
        assert all(message for name, code, message in results if code)
        assert _create(wire, 4, ("ct-ok", 1, 1, None))[0][1] == ErrorCode.TOPIC_ALREADY_EXISTS
        # -1/-1 = broker defaults only from v4.
        assert _create(wire, 3, ("ct-v3-default", -1, 1, None))[0][1] == 37
        assert _create(wire, 3, ("ct-v3-default", 1, -1, None))[0][1] == 38
        # validate_only checks and creates nothing.
        assert _create(wire, 2, ("ct-validate", 2, 1, None), validate_only=True)[0][1] == 0
        assert _create(wire, 2, ("ct-ok", 2, 1, None), validate_only=True)[0][1] == 36
        metadata = wire.call(3, 1, body(3, 1, topics=None))
        counts = {t.name: len(t.partitions) for t in metadata.topics}
    assert counts["ct-ok"] == 3 and counts["ct-defaults"] == 2
    assert "ct-validate" not in counts and "ct-zero-partitions" not in counts


@pytest.mark.parametrize("version", [0, 1, 3])
def test_delete_topics(shared, version):
    with Wire(shared.bootstrap) as wire:
        _create(wire, 4, (f"dt-{version}", 1, 1, None))
        response = wire.call(20, version, body(20, version, timeout=5000, topic_names=(
            f"dt-{version}", "dt-unknown", "bad/name")))
        assert [(r.name, r.error_code) for r in response.responses] == [
            (f"dt-{version}", 0), ("dt-unknown", 3), ("bad/name", 17)]
        metadata = wire.call(3, 4, body(3, 4, topics=(
            entity(3, 4, "topics", name=f"dt-{version}"),), allow_auto_topic_creation=False))
        assert metadata.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_delete_topics_v0_as_kafka_python_encodes_it(shared):
    from kafka.protocol.old.admin import DeleteTopicsRequest_v0, DeleteTopicsResponse_v0
    with Wire(shared.bootstrap) as wire:
        _create(wire, 4, ("dt-kp-v0", 1, 1, None))
        payload = bytes(DeleteTopicsRequest_v0(topics=["dt-kp-v0", "dt-kp-missing"],
                                               timeout=5000).encode())
        wire.send_raw(raw_frame(20, 0, 606, payload, client_id="kp"))
        frame = wire.read_frame()
        assert struct.unpack_from(">i", frame)[0] == 606
        decoded = DeleteTopicsResponse_v0.decode(frame[4:])
        assert [tuple(r) for r in decoded.topic_error_codes] == [("dt-kp-v0", 0),
                                                                 ("dt-kp-missing", 3)]


# ---- ListOffsets, FindCoordinator -----------------------------------------------------------

def test_list_offsets_earliest_latest_and_by_time(shared):
    base = 1_700_000_000_000
    with Wire(shared.bootstrap) as wire:
        _create(wire, 4, ("lo", 1, 1, None))
        for chunk in range(3):
            _produce_raw(wire, "lo", 0, _batch([b"r%d" % i for i in range(10)],
                                               timestamp=base + chunk * 1000))
        for version in range(1, 6):
            def lookup(timestamp):
                request = body(2, version, replica_id=-1, isolation_level=0, topics=(
                    entity(2, version, "topics", name="lo", partitions=(
                        entity(2, version, "topics.partitions", partition_index=0,
                               timestamp=timestamp, current_leader_epoch=-1),)),))
                p = wire.call(2, version, request).topics[0].partitions[0]
                return p.error_code, p.offset, p.timestamp
            assert lookup(-2) == (0, 0, -1)
            assert lookup(-1) == (0, 30, -1)
            assert lookup(base + 1000) == (0, 10, base + 1000)
            assert lookup(base + 1005) == (0, 15, base + 1005)
            assert lookup(base + 99_000) == (0, -1, -1)
    consumer = KafkaConsumer(bootstrap_servers=shared.bootstrap,
                             request_timeout_ms=CLIENT_DEADLINE_MS)
    tp = TopicPartition("lo", 0)
    assert consumer.beginning_offsets([tp]) == {tp: 0}
    assert consumer.end_offsets([tp]) == {tp: 30}
    assert consumer.offsets_for_times({tp: base + 2003})[tp].offset == 23
    consumer.close()


@pytest.mark.parametrize("version", [0, 1, 2])
def test_find_coordinator_names_this_broker(shared, version):
    with Wire(shared.bootstrap) as wire:
        answer = wire.call(10, version, body(10, version, key="group-1", key_type=0))
        assert (answer.error_code, answer.node_id, answer.host, answer.port) == \
            (0, 1, "127.0.0.1", shared.port)
        if version >= 1:
            refused = wire.call(10, version, body(10, version, key="tx", key_type=1))
            assert (refused.error_code, refused.node_id) == (ErrorCode.INVALID_REQUEST, -1)


# ---- restarts -------------------------------------------------------------------------------

def _init_producer_id(bootstrap, version=1, transactional_id=None):
    with Wire(bootstrap) as wire:
        answer = wire.call(22, version, body(22, version, transactional_id=transactional_id,
                                             transaction_timeout=60000))
    return answer.error_code, answer.producer_id, answer.producer_epoch


def test_init_producer_id_increases_and_survives_restart(broker_factory):
    first = broker_factory.start()
    ids = [_init_producer_id(first.bootstrap, version)[1] for version in (0, 1, 1)]
    assert ids == sorted(set(ids)) and ids[0] >= 0
    assert _init_producer_id(first.bootstrap)[2] == 0
    assert _init_producer_id(first.bootstrap, transactional_id="tx")[0] == \
        ErrorCode.INVALID_REQUEST
    last = _init_producer_id(first.bootstrap)[1]
    first.kill()                                   # not even a clean stop
    again = broker_factory.start(first.data_dir)
    assert _init_producer_id(again.bootstrap)[1] > last
    # kafka-python 3's default producer is idempotent: it needs InitProducerId.
    producer = _producer(again.bootstrap)
    assert producer.send("idempotent", b"v").get(timeout=10).offset == 0
    producer.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill", "sigkill-fsync-always"])
def test_data_and_high_watermark_survive_a_restart(broker_factory, how):
    first = broker_factory.start(args=["--fsync", "always"] if "fsync" in how else [])
    producer = _producer(first.bootstrap, acks="all", linger_ms=5)
    sent = [(b"k%d" % i, b"v%d" % i * 20) for i in range(2000)]
    futures = [producer.send("durable", key=k, value=v, partition=0) for k, v in sent]
    producer.flush(timeout=20)
    assert futures[-1].get(timeout=10).offset == 1999
    producer.close()
    if how == "sigterm":
        assert first.stop() == 0
        assert "stopped cleanly" in first.stderr()
    else:
        first.kill()
    again = broker_factory.start(first.data_dir)
    records = _consume(again.bootstrap, "durable", 0, 2000)
    assert [(r.key, r.value) for r in records] == sent
    assert [r.offset for r in records] == list(range(2000))
    consumer = KafkaConsumer(bootstrap_servers=again.bootstrap,
                             request_timeout_ms=CLIENT_DEADLINE_MS)
    tp = TopicPartition("durable", 0)
    assert consumer.end_offsets([tp]) == {tp: 2000}          # the HW came back too
    consumer.close()


def test_startup_time_is_measured(broker_factory, capsys):
    """Measured, never asserted: process start to /health 200, and the broker's own figure
    (opening logs, metadata, listeners) with 20 partitions of data."""
    first = broker_factory.start()
    with Wire(first.bootstrap) as wire:
        _create(wire, 4, ("startup", 20, 1, None))
        for partition in range(20):
            _produce_raw(wire, "startup", partition, _batch([b"x" * 100] * 50))
    first.stop()
    again = broker_factory.start(first.data_dir)
    line = next(line for line in again.stderr().splitlines() if " ready in " in line)
    with capsys.disabled():
        print(f"\n[startup] process to /health 200: {again.started_in_s:.3f} s; "
              f"broker: {line.split(' ready in ')[1]}")
    assert again.health()[0] == 200
