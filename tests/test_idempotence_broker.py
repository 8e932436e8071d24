"""Idempotent producers through a real `pylog serve`: retries are written once.

Raw frames (tests/kafka_wire.py) send exact Produce requests: the same idempotent request
twice, retries of each of the last 5 batches, a sequence gap (45), an unknown producer id
(59), an old epoch (47), and retries after a clean and a SIGKILL restart. A TCP proxy between
kafka-python / confluent-kafka and the broker loses acknowledgements: it closes the
connection instead of forwarding the response to a Produce (the broker has appended by then),
so the client retries, and the log must still hold each record once."""
import asyncio
import socket
import struct
import threading
from concurrent.futures import Future

import pytest
from kafka import KafkaProducer
from kafka.record.default_records import DefaultRecordBatchBuilder

from broker_fixture import BrokerFactory, free_port
from kafka_wire import Wire, body, entity
from pylog.protocol.errors import ErrorCode
from pylog.records import iter_records
from replica_stack import Stack
from virtual_time import run

T0 = 1_700_000_000_000
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    factory = BrokerFactory(tmp_path_factory.mktemp("idempotence-broker"))
    running = factory.start()
    yield running
    factory.cleanup(failed=False)


# ---- raw protocol helpers ---------------------------------------------------------------------

def init_producer_id(wire):
    answer = wire.call(22, 1, body(22, 1, transactional_id=None, transaction_timeout=60000))
    assert answer.error_code == ErrorCode.NONE and answer.producer_epoch == 0
    return answer.producer_id


def idempotent_batch(pid, seq, values, epoch=0):
    """A batch written by kafka-python's builder (an independent writer)."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=pid, producer_epoch=epoch,
                                        base_sequence=seq, batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=T0 + i, key=None, value=value, headers=[])
    return bytes(builder.build())


def produce(wire, topic, records, acks=-1):
    """One Produce v8 for partition 0; the partition's response."""
    request = body(0, 8, transactional_id=None, acks=acks, timeout=5000, topic_data=(
        entity(0, 8, "topic_data", name=topic, partition_data=(
            entity(0, 8, "topic_data.partition_data", index=0, records=records),)),))
    return wire.call(0, 8, request).responses[0].partition_responses[0]


def read_values(bootstrap, topic):
    """Every record value of partition 0, in offset order (asserting offsets 0, 1, ...)."""
    values, offset = [], 0
    with Wire(bootstrap) as wire:
        for _ in range(1000):
            answer = wire.call(1, 11, body(
                1, 11, replica_id=-1, max_wait=0, min_bytes=1, max_bytes=1 << 20,
                isolation_level=0, session_id=0, session_epoch=-1, topics=(
                    entity(1, 11, "topics", topic=topic, partitions=(
                        entity(1, 11, "topics.partitions", partition=0, fetch_offset=offset,
                               partition_max_bytes=1 << 20, current_leader_epoch=-1,
                               log_start_offset=-1),)),),
                forgotten_topics_data=(), rack_id=""))
            data = answer.responses[0].partitions[0]
            assert data.error_code == ErrorCode.NONE
            records = [r for r in iter_records(bytes(data.records)) if r.offset >= offset]
            if not records:
                return values
            assert [r.offset for r in records] == list(range(offset, offset + len(records)))
            values.extend(r.value for r in records)
            offset = records[-1].offset + 1
    raise AssertionError("reading did not finish")


# ---- the rules on the wire ---------------------------------------------------------------------

def test_the_same_idempotent_produce_sent_twice_is_written_once(shared):
    with Wire(shared.bootstrap) as wire:
        pid = init_producer_id(wire)
        data = idempotent_batch(pid, 0, [b"a", b"b", b"c"])
        first = produce(wire, "idem-twice", data)
        again = produce(wire, "idem-twice", data)
    assert (first.error_code, first.base_offset) == (ErrorCode.NONE, 0)
    assert (again.error_code, again.base_offset) == (ErrorCode.NONE, 0)
    assert read_values(shared.bootstrap, "idem-twice") == [b"a", b"b", b"c"]


@pytest.mark.parametrize("acks", [1, -1])
def test_retries_of_each_of_the_last_five_batches_get_their_original_offsets(shared, acks):
    topic = f"idem-last-five-{acks}"
    with Wire(shared.bootstrap) as wire:
        pid = init_producer_id(wire)
        sent = [idempotent_batch(pid, 2 * i, [b"%d-0" % i, b"%d-1" % i]) for i in range(7)]
        offsets = [produce(wire, topic, data, acks).base_offset for data in sent]
        assert offsets == list(range(0, 14, 2))
        for data, offset in list(zip(sent, offsets))[-5:]:
            retry = produce(wire, topic, data, acks)
            assert (retry.error_code, retry.base_offset) == (ErrorCode.NONE, offset)
        too_old = produce(wire, topic, sent[1], acks)
        assert too_old.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert read_values(shared.bootstrap, topic) == [b"%d-%d" % (i, j) for i in range(7)
                                                    for j in range(2)]


def test_a_sequence_gap_is_refused_with_45(shared):
    with Wire(shared.bootstrap) as wire:
        pid = init_producer_id(wire)
        assert produce(wire, "idem-gap", idempotent_batch(pid, 0, [b"x"])).error_code == 0
        gap = produce(wire, "idem-gap", idempotent_batch(pid, 2, [b"y"]))
        assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert gap.base_offset == -1 and "sequence 2" in gap.error_message
        assert produce(wire, "idem-gap", idempotent_batch(pid, 1, [b"z"])).base_offset == 1
    assert read_values(shared.bootstrap, "idem-gap") == [b"x", b"z"]


def test_an_unknown_producer_id_is_refused_with_59_and_the_log_start(shared):
    with Wire(shared.bootstrap) as wire:
        pid = init_producer_id(wire)
        answer = produce(wire, "idem-unknown", idempotent_batch(pid, 5, [b"late"]))
        assert answer.error_code == ErrorCode.UNKNOWN_PRODUCER_ID
        assert answer.log_start_offset == 0   # what a client compares with its last ack
        assert produce(wire, "idem-unknown", idempotent_batch(pid, 0, [b"ok"])).error_code == 0
    assert read_values(shared.bootstrap, "idem-unknown") == [b"ok"]


def test_an_older_epoch_is_refused_with_47(shared):
    with Wire(shared.bootstrap) as wire:
        pid = init_producer_id(wire)
        assert produce(wire, "idem-epoch", idempotent_batch(pid, 0, [b"e1"], epoch=1)) \
            .error_code == 0
        old = produce(wire, "idem-epoch", idempotent_batch(pid, 1, [b"e0"], epoch=0))
        assert old.error_code == ErrorCode.INVALID_PRODUCER_EPOCH
    assert read_values(shared.bootstrap, "idem-epoch") == [b"e1"]


def test_non_idempotent_batches_are_never_deduplicated(shared):
    plain = idempotent_batch(-1, -1, [b"p"], epoch=-1)
    with Wire(shared.bootstrap) as wire:
        assert [produce(wire, "idem-plain", plain).base_offset for _ in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_retry_after_a_broker_restart_is_still_deduplicated(broker_factory, how):
    first = broker_factory.start(settings={"log.segment.bytes": "300"})  # a few rolls
    topic = "idem-restart"
    with Wire(first.bootstrap) as wire:
        pid = init_producer_id(wire)
        sent = [idempotent_batch(pid, i, [b"r%d" % i + b"." * 40]) for i in range(9)]
        offsets = [produce(wire, topic, data).base_offset for data in sent]
    assert offsets == list(range(9))
    if how == "sigterm":
        assert first.stop() == 0
    else:
        first.kill()
    again = broker_factory.start(first.data_dir)
    with Wire(again.bootstrap) as wire:
        for data, offset in list(zip(sent, offsets))[-5:]:
            retry = produce(wire, topic, data)
            assert (retry.error_code, retry.base_offset) == (ErrorCode.NONE, offset)
        gap = produce(wire, topic, idempotent_batch(pid, 10, [b"gap"]))
        assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert produce(wire, topic, idempotent_batch(pid, 9, [b"next"])).base_offset == 9
    assert read_values(again.bootstrap, topic) == [b"r%d" % i + b"." * 40
                                                   for i in range(9)] + [b"next"]


# ---- the ReplicaManager in process --------------------------------------------------------------

def test_the_replica_manager_maps_each_refusal_and_answers_a_retry_like_its_original(tmp_path):
    """Codes 45/47/59 with the log start offset; nothing appended for them. A retry while the
    original's fsync (flush.messages=1) is still running waits for it, as the original
    does, and both get the original offset."""
    tp = ("t", 0)

    async def main(loop):
        stack = Stack(tmp_path / "data", clock=loop.time, loop=loop)
        stack.controller.create_topic("t", 1, 1, {"flush.messages": "1"})
        rm = stack.rm
        log = rm.partition(*tp).log
        fsyncs: list[Future] = []

        def slow_disk(log_, up_to):  # an fsync that completes when the test says so
            future: Future = Future()
            fsyncs.append(future)
            return future

        async def produce(data, acks=1):
            return (await rm.produce(acks, 30000, {tp: memoryview(bytearray(data))}))[tp]

        refused = await produce(idempotent_batch(7, 3, [b"x"], 0))
        assert (refused.error_code, refused.base_offset, refused.log_start_offset) == \
            (ErrorCode.UNKNOWN_PRODUCER_ID, -1, 0)
        assert (await produce(idempotent_batch(7, 0, [b"a"], 1))).base_offset == 0
        for seq, epoch, code in ((2, 1, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER),
                                 (1, 0, ErrorCode.INVALID_PRODUCER_EPOCH)):
            refused = await produce(idempotent_batch(7, seq, [b"x"], epoch))
            assert (refused.error_code, refused.log_start_offset) == (code, 0)
        assert log.log_end_offset == 1
        log._flush_requester = slow_disk
        data = idempotent_batch(7, 1, [b"b", b"c"], 1)
        original = loop.create_task(produce(data))
        retry = loop.create_task(produce(data))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(fsyncs) == 1 and log.log_end_offset == 3
        assert not original.done() and not retry.done()  # neither before the fsync
        fsyncs[0].set_result(log.flush())
        for task in (original, retry):
            answer = await task
            assert (answer.error_code, answer.base_offset) == (ErrorCode.NONE, 1)
        assert log.log_end_offset == 3
        await stack.close()
    run(main)


# ---- lost acknowledgements ---------------------------------------------------------------------

class AckDroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of the broker that, for the first ``drops`` Produce
    responses, closes the client's connection instead of forwarding the response: the broker
    has appended, the client never hears of it and retries."""

    def __init__(self, drops: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_port: int | None = None
        self.drops_left = drops
        self.dropped = 0
        self.produce_responses = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._spawn(self._accept_loop)

    def close(self) -> None:
        self._closed = True
        _close(self.listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            produce_ids: set[int] = set()
            self._spawn(self._requests, client, upstream, produce_ids)
            self._spawn(self._responses, upstream, client, produce_ids)

    def _requests(self, client, upstream, produce_ids) -> None:
        """Client to broker: note the correlation id of every Produce."""
        try:
            while True:
                frame = _read_frame(client)
                api_key, _, correlation_id = struct.unpack_from(">hhi", frame, 4)
                if api_key == 0:
                    produce_ids.add(correlation_id)
                upstream.sendall(frame)
        except OSError:
            pass
        _close(client)
        _close(upstream)

    def _responses(self, upstream, client, produce_ids) -> None:
        """Broker to client: drop the connection at a Produce response while drops are left."""
        try:
            while True:
                frame = _read_frame(upstream)
                (correlation_id,) = struct.unpack_from(">i", frame, 4)
                if correlation_id in produce_ids:
                    with self._lock:
                        self.produce_responses += 1
                        drop = self.drops_left > 0
                        if drop:
                            self.drops_left -= 1
                            self.dropped += 1
                    if drop:
                        break
                client.sendall(frame)
        except OSError:
            pass
        _close(client)
        _close(upstream)


def _read_frame(sock) -> bytes:
    """A whole frame (size prefix included); OSError when the peer closed."""
    header = _read_exactly(sock, 4)
    (size,) = struct.unpack(">i", header)
    return header + _read_exactly(sock, size)


def _read_exactly(sock, n) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _close(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def lossy(broker_factory):
    """(broker, proxy): the broker advertises the proxy, so every client connection goes
    through it; the proxy drops the first two Produce acknowledgements."""
    proxy = AckDroppingProxy(drops=2)
    port = free_port()
    running = broker_factory.start(port=port, settings={
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{proxy.port}"})
    proxy.start(port)
    yield running, proxy
    proxy.close()


def _send_with_kafka_python(bootstrap, topic, values):
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                             linger_ms=0, max_in_flight_requests_per_connection=1,
                             request_timeout_ms=10_000, max_block_ms=10_000,
                             reconnect_backoff_ms=20, retry_backoff_ms=20)
    try:
        futures = [producer.send(topic, value=v, partition=0) for v in values]
        producer.flush(timeout=DEADLINE_S)
        return [f.get(timeout=DEADLINE_S).offset for f in futures]
    finally:
        producer.close(timeout=5)


def _send_with_confluent_kafka(bootstrap, topic, values):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0,
        "max.in.flight.requests.per.connection": 1, "reconnect.backoff.ms": 20,
        "retry.backoff.ms": 20, "message.timeout.ms": int(DEADLINE_S * 1000)})
    offsets: dict[int, int] = {}
    errors = []

    def delivered(error, message, index):
        if error is not None:
            errors.append(error)
        else:
            offsets[index] = message.offset()

    for index, value in enumerate(values):
        producer.produce(topic, value=value, partition=0,
                         on_delivery=lambda e, m, i=index: delivered(e, m, i))
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0
    assert not errors
    return [offsets[i] for i in range(len(values))]


def _send_with_aiokafka(bootstrap, topic, values):
    aiokafka = pytest.importorskip("aiokafka")

    async def run():
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=0,
            request_timeout_ms=10_000, retry_backoff_ms=20)
        await producer.start()
        try:
            return [(await producer.send_and_wait(topic, v, partition=0)).offset
                    for v in values]
        finally:
            await producer.stop()

    return asyncio.run(asyncio.wait_for(run(), DEADLINE_S))


# kcat is left out: with the connection to its only broker dropped, kcat (librdkafka 2.0)
# reports "all broker connections are down" and terminates instead of retrying: a choice of
# the tool, not of the client library, which confluent-kafka exercises above.
SENDERS = {"kafka-python": _send_with_kafka_python, "confluent-kafka": _send_with_confluent_kafka,
           "aiokafka": _send_with_aiokafka}


@pytest.mark.parametrize("client", list(SENDERS))
def test_a_lost_acknowledgement_makes_the_client_retry_and_the_record_is_written_once(
        lossy, client):
    running, proxy = lossy
    bootstrap = f"127.0.0.1:{proxy.port}"
    topic = "idem-lost-ack"
    values = [b"lost-ack-%d" % i for i in range(20)]
    offsets = SENDERS[client](bootstrap, topic, values)
    assert proxy.dropped >= 1                      # acknowledgements that never arrived
    assert read_values(running.bootstrap, topic) == values
    if offsets is not None:
        assert offsets == list(range(len(values)))
