"""Bounds and bad input against a real `pylog serve` (issue item 4), over raw sockets: each
case gets the Kafka error or has its one connection closed, nothing corrupt is stored, and
another client is served right after."""
import random
import re
import socket
import struct
import time
import urllib.request

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from broker_fixture import BrokerFactory
from kafka_wire import Wire, body, entity, raw_frame
from pylog.protocol.errors import ErrorCode

REQUEST_LIMIT = 1 << 20
MESSAGE_LIMIT = 4096


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    """A broker with small limits and auto-create off."""
    factory = BrokerFactory(tmp_path_factory.mktemp("bounded-broker"))
    running = factory.start(settings={
        "socket.request.max.bytes": str(REQUEST_LIMIT),
        "message.max.bytes": str(MESSAGE_LIMIT),
        "auto.create.topics.enable": "false",
        "connection.max.inflight.requests": "16",
        "connection.write.buffer.bytes": str(1 << 20),
    })
    with Wire(running.bootstrap) as wire:
        created = wire.call(19, 4, body(19, 4, timeout=5000, validate_only=False, topics=(
            entity(19, 4, "topics", name="bounds", num_partitions=1, replication_factor=1,
                   assignments=(), configs=()),)))
        assert created.topics[0].error_code == ErrorCode.NONE
    yield running
    factory.cleanup(failed=False)


def _batch(values, payload_size=None):
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 22)
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=None, value=value, headers=[])
    return bytearray(builder.build())


def _produce(wire, topic, records, version=8):
    answer = wire.call(0, version, body(0, version, transactional_id=None, acks=1, timeout=5000,
                                        topic_data=(entity(0, version, "topic_data", name=topic,
                                                           partition_data=(entity(
                                                               0, version,
                                                               "topic_data.partition_data",
                                                               index=0, records=bytes(records)),
                                                           )),)))
    return answer.responses[0].partition_responses[0]


def _fetch_request(topic, offset, max_bytes=1 << 20):
    return body(1, 11, replica_id=-1, max_wait=0, min_bytes=1, max_bytes=max_bytes,
                isolation_level=0, session_id=0, session_epoch=-1, topics=(
                    entity(1, 11, "topics", topic=topic, partitions=(
                        entity(1, 11, "topics.partitions", partition=0, fetch_offset=offset,
                               partition_max_bytes=max_bytes, current_leader_epoch=-1,
                               log_start_offset=-1),)),),
                forgotten_topics_data=(), rack_id="")


def _end_offset(bootstrap, topic="bounds"):
    with Wire(bootstrap) as wire:
        answer = wire.call(2, 5, body(2, 5, replica_id=-1, isolation_level=0, topics=(
            entity(2, 5, "topics", name=topic, partitions=(
                entity(2, 5, "topics.partitions", partition_index=0, timestamp=-1,
                       current_leader_epoch=-1),)),)))
    return answer.topics[0].partitions[0].offset


def assert_served(running):
    """A new client gets ApiVersions and Metadata answered."""
    with Wire(running.bootstrap) as wire:
        assert wire.call(18, 2, body(18, 2)).error_code == ErrorCode.NONE
        metadata = wire.call(3, 8, body(3, 8, topics=None, allow_auto_topic_creation=False,
                                        include_cluster_authorized_operations=False,
                                        include_topic_authorized_operations=False))
        assert "bounds" in {t.name for t in metadata.topics}
    assert running.alive()


def _connections(running) -> int:
    with urllib.request.urlopen(f"{running.control_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(float(re.search(r"^pylog_connections (\S+)$", text, re.M).group(1)))


def _wait_connections(running, expected, deadline=10.0):
    end = time.monotonic() + deadline
    while _connections(running) != expected:
        assert time.monotonic() < end, f"{_connections(running)} connections, not {expected}"
        time.sleep(0.02)


# ---- frames that close their connection -----------------------------------------------------

@pytest.mark.parametrize("raw", [
    pytest.param(struct.pack(">i", REQUEST_LIMIT + 1), id="over-request-limit"),
    pytest.param(struct.pack(">i", 2**31 - 1), id="huge-size"),
    pytest.param(struct.pack(">i", -5), id="negative-size"),
    pytest.param(struct.pack(">i", 0), id="zero-size"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-garbage"),
    pytest.param(bytes(range(255, -1, -1)) * 8, id="binary-garbage"),
    pytest.param(struct.pack(">i", 200) + random.Random(7).randbytes(200),
                 id="random-frame"),
    pytest.param(raw_frame(9999, 0, 1), id="unknown-api-key"),
    pytest.param(raw_frame(11, 5, 1), id="group-api-not-served-yet"),
    pytest.param(raw_frame(1, 12, 1), id="fetch-v12"),
    pytest.param(raw_frame(1, 3, 1), id="fetch-v3"),
    pytest.param(raw_frame(3, 9, 1), id="metadata-v9"),
    pytest.param(raw_frame(0, 2, 1), id="produce-v2"),
    pytest.param(raw_frame(3, 1, 1, b"\xff\xff\xff\xfe"), id="metadata-negative-count"),
    pytest.param(raw_frame(0, 8, 1, b"\x00"), id="produce-truncated"),
])
def test_bad_frames_close_the_connection_only(bounded, raw):
    with Wire(bounded.bootstrap) as wire:
        wire.send_raw(raw)
        assert wire.is_closed_by_peer()
    assert_served(bounded)


def test_request_over_the_limit_is_refused_before_its_body_arrives(bounded):
    with Wire(bounded.bootstrap) as wire:
        wire.send_raw(struct.pack(">i", REQUEST_LIMIT + 100) + b"\x00" * 1000)
        assert wire.is_closed_by_peer()
    # A request just under the limit is read and answered (here: a Produce refused by
    # message.max.bytes, not by the frame limit).
    with Wire(bounded.bootstrap) as wire:
        answer = _produce(wire, "bounds", _batch([b"z" * (REQUEST_LIMIT - 2000)]))
        assert answer.error_code == ErrorCode.MESSAGE_TOO_LARGE
    assert_served(bounded)


def test_client_vanishing_mid_request(bounded):
    _wait_connections(bounded, 0)
    for cut in (2, 9, 40):
        frame = raw_frame(3, 1, 5, b"\x00\x00\x00\x01\x00\x06bounds")
        sock = socket.create_connection(("127.0.0.1", bounded.port), timeout=5)
        sock.sendall(frame[:cut])
        sock.close()
    # A long-poll fetch in flight when its client vanishes is cleaned up too.
    wire = Wire(bounded.bootstrap)
    offset = _end_offset(bounded.bootstrap)
    request = _fetch_request("bounds", offset)
    request = body(1, 11, **{**{f: getattr(request, f) for f in request.__dataclass_fields__},
                             "max_wait": 30_000})
    wire.send(1, 11, request)
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wire.close()                                          # RST
    _wait_connections(bounded, 0)
    assert_served(bounded)


def test_client_that_never_reads_its_fetches_is_not_buffered(bounded):
    """Pipelined 1 MiB fetches that are never read: the broker stops reading that client
    (bounded in-flight and write buffer), its memory stays bounded, others are served."""
    with Wire(bounded.bootstrap) as wire:
        start = _end_offset(bounded.bootstrap)
        for _ in range(64):
            assert _produce(wire, "bounds", _batch([b"f" * 4000])).error_code == 0
    rss_before = bounded.rss_bytes()
    hog = Wire(bounded.bootstrap)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    hog.sock.settimeout(0.5)
    request = _fetch_request("bounds", start, max_bytes=1 << 20)
    sent = 0
    try:
        for _ in range(3000):          # ~256 KiB each if all were answered: 750 MiB in total
            hog.send(1, 11, request)
            sent += 1
    except socket.timeout:
        pass                            # the broker stopped reading: the socket is full
    time.sleep(0.5)
    grown = bounded.rss_bytes() - rss_before
    assert_served(bounded)
    assert grown < 200 * 1024 * 1024, f"broker grew by {grown >> 20} MiB"
    # The stuck client itself gets its answers, in order, once it reads.
    hog.sock.settimeout(10)
    for expected in range(1, 6):
        frame = hog.read_frame()
        assert struct.unpack_from(">i", frame)[0] == expected
    hog.close()
    print(f"\n[bounds] {sent} fetches sent without reading; broker RSS grew "
          f"{grown / 2**20:.1f} MiB")


# ---- Kafka errors, nothing stored -----------------------------------------------------------

def test_message_max_bytes(bounded):
    before = _end_offset(bounded.bootstrap)
    with Wire(bounded.bootstrap) as wire:
        answer = _produce(wire, "bounds", _batch([b"m" * (MESSAGE_LIMIT * 2)]))
        assert answer.error_code == ErrorCode.MESSAGE_TOO_LARGE
        assert _produce(wire, "bounds", _batch([b"ok"])).error_code == ErrorCode.NONE
    assert _end_offset(bounded.bootstrap) == before + 1
    assert_served(bounded)


@pytest.mark.parametrize("damage", ["crc", "magic", "record-count", "length"])
def test_corrupt_batches_are_refused_and_not_stored(bounded, damage):
    before = _end_offset(bounded.bootstrap)
    good = _batch([b"good-1", b"good-2"])
    bad = _batch([b"bad-1", b"bad-2"])
    if damage == "crc":
        bad[-1] ^= 0xFF                                  # payload byte: CRC mismatch
    elif damage == "magic":
        bad[16] = 1
    elif damage == "record-count":
        struct.pack_into(">i", bad, 57, 5)
    else:
        struct.pack_into(">i", bad, 8, len(bad))          # batchLength past the end
    with Wire(bounded.bootstrap) as wire:
        assert _produce(wire, "bounds", bad).error_code == ErrorCode.CORRUPT_MESSAGE
        assert _produce(wire, "bounds", good, version=3).error_code == ErrorCode.NONE
        fetched = wire.call(1, 11, _fetch_request("bounds", before)).responses[0].partitions[0]
    assert _end_offset(bounded.bootstrap) == before + 2
    assert b"good-1" in fetched.records and b"bad-1" not in fetched.records
    assert_served(bounded)


def test_unknown_topic_and_partition_with_auto_create_off(bounded):
    with Wire(bounded.bootstrap) as wire:
        assert _produce(wire, "no-such-topic", _batch([b"x"])).error_code == \
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        answer = wire.call(0, 8, body(0, 8, transactional_id=None, acks=1, timeout=5000,
                                      topic_data=(entity(0, 8, "topic_data", name="bounds",
                                                         partition_data=(entity(
                                                             0, 8, "topic_data.partition_data",
                                                             index=7, records=bytes(
                                                                 _batch([b"x"]))),)),)))
        assert answer.responses[0].partition_responses[0].error_code == \
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        fetched = wire.call(1, 11, _fetch_request("no-such-topic", 0))
        assert fetched.responses[0].partitions[0].error_code == \
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert_served(bounded)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc", "x" * 250, "sp ace", "é"])
def test_invalid_topic_names_are_refused_everywhere(bounded, name):
    with Wire(bounded.bootstrap) as wire:
        assert _produce(wire, name, _batch([b"x"])).error_code == \
            ErrorCode.INVALID_TOPIC_EXCEPTION
        metadata = wire.call(3, 4, body(3, 4, topics=(entity(3, 4, "topics", name=name),),
                                        allow_auto_topic_creation=True))
        assert metadata.topics[0].error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
        created = wire.call(19, 4, body(19, 4, timeout=5000, validate_only=False, topics=(
            entity(19, 4, "topics", name=name, num_partitions=1, replication_factor=1,
                   assignments=(), configs=()),)))
        assert created.topics[0].error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
        fetched = wire.call(1, 11, _fetch_request(name, 0))
        assert fetched.responses[0].partitions[0].error_code == \
            ErrorCode.INVALID_TOPIC_EXCEPTION
        offsets = wire.call(2, 5, body(2, 5, replica_id=-1, isolation_level=0, topics=(
            entity(2, 5, "topics", name=name, partitions=(
                entity(2, 5, "topics.partitions", partition_index=0, timestamp=-1,
                       current_leader_epoch=-1),)),)))
        assert offsets.topics[0].partitions[0].error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
    assert_served(bounded)


def test_invalid_acks_and_null_records(bounded):
    with Wire(bounded.bootstrap) as wire:
        answer = wire.call(0, 8, body(0, 8, transactional_id=None, acks=2, timeout=5000,
                                      topic_data=(entity(0, 8, "topic_data", name="bounds",
                                                         partition_data=(entity(
                                                             0, 8, "topic_data.partition_data",
                                                             index=0, records=bytes(
                                                                 _batch([b"x"]))),)),)))
        assert answer.responses[0].partition_responses[0].error_code == \
            ErrorCode.INVALID_REQUIRED_ACKS
        answer = wire.call(0, 8, body(0, 8, transactional_id=None, acks=1, timeout=5000,
                                      topic_data=(entity(0, 8, "topic_data", name="bounds",
                                                         partition_data=(entity(
                                                             0, 8, "topic_data.partition_data",
                                                             index=0, records=None),)),)))
        assert answer.responses[0].partition_responses[0].error_code == \
            ErrorCode.CORRUPT_MESSAGE
    assert_served(bounded)


def test_failed_acks0_produce_closes_the_connection(bounded):
    with Wire(bounded.bootstrap) as wire:
        wire.send(0, 8, body(0, 8, transactional_id=None, acks=0, timeout=5000, topic_data=(
            entity(0, 8, "topic_data", name="no-such-topic", partition_data=(
                entity(0, 8, "topic_data.partition_data", index=0,
                       records=bytes(_batch([b"x"]))),)),)))
        assert wire.is_closed_by_peer()
    assert_served(bounded)


def test_broker_still_healthy_after_everything(bounded):
    assert bounded.health()[0] == 200
    assert_served(bounded)


def test_two_brokers_cannot_share_a_data_directory(tmp_path):
    factory = BrokerFactory(tmp_path)
    try:
        first = factory.start()
        second = factory.start(first.data_dir, wait=False)
        assert second.process.wait(20) != 0
        assert "in use by another process" in second.stderr()
        assert first.health()[0] == 200
    finally:
        factory.cleanup(failed=False)


def test_clear_errors_for_a_busy_port_and_another_clusters_data(tmp_path):
    factory = BrokerFactory(tmp_path)
    try:
        first = factory.start()
        busy = factory.start(port=first.port, wait=False)
        assert busy.process.wait(20) != 0
        lines = [line for line in busy.stderr().splitlines() if line.startswith("pylog:")]
        assert lines and f"cannot listen on 127.0.0.1:{first.port}" in lines[0]
        assert "Traceback" not in busy.stderr()
        first.stop()
        foreign = factory.start(first.data_dir, settings={"cluster.id": "another-cluster"},
                                wait=False)
        assert foreign.process.wait(20) != 0
        assert "belongs to cluster" in foreign.stderr()
        assert "Traceback" not in foreign.stderr()
        bad = factory.start(settings={"no.such.setting": "1"}, wait=False)
        assert bad.process.wait(20) == 2
        assert "no.such.setting" in bad.stderr()
    finally:
        factory.cleanup(failed=False)
