"""fetch.send.mode=sendfile: Fetch ships FileRegions with sendfile, byte for byte as ``copy``.

Two layers. In process: ``send_parts`` (the connection's sender) over a loopback socket, with
regions of a real PartitionLog, including a segment deleted (retention's ``Segment.delete``)
while its region is half sent, and a region whose file was cut short (the connection must
close rather than send a short frame). Against ``pylog serve``: one broker per mode with the
same batches written the same way; raw Fetch responses (several partitions, KIP-74's
oversized first batch, max_bytes and partition_max_bytes limits, v4 and v11) must be identical
byte for byte, and kafka-python and confluent-kafka consumers must read the same records.
"""
from __future__ import annotations

import asyncio
import os
import random

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from broker_fixture import BrokerFactory
from interop_clients import ck_read, kp_read
from kafka_wire import Wire, body, entity
from pylog.broker.config import BrokerConfig, BrokerConfigError
from pylog.broker.connection import send_parts, write_buffers
from pylog.broker.file_region import FileRegion
from pylog.protocol.errors import ErrorCode
from pylog.storage.config import LogConfig
from pylog.storage.log import PartitionLog

DEADLINE_S = 20.0
TOPIC = "sendfile"
PARTITIONS = 3
BIG_VALUE = 300_000          # one record of partition 2's first batch: over the limits below


# ---- in process: the sender --------------------------------------------------------------------

def _batch(values, first_timestamp=1_700_000_000_000):
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 24)
    for i, value in enumerate(values):
        builder.append(i, timestamp=first_timestamp + i, key=b"k%d" % i, value=value,
                       headers=[])
    return bytearray(builder.build())


def _log_with_bytes(tmp_path, batches: int, values_per_batch: int, value_size: int):
    log = PartitionLog.open(str(tmp_path / "log"), LogConfig(segment_bytes=1 << 30))
    rng = random.Random(7)
    for _ in range(batches):
        log.append(_batch([rng.randbytes(value_size) for _ in range(values_per_batch)]), 0)
    return log


async def _serve_once(send):
    """A loopback server whose one connection runs ``send(transport)``; returns (reader,
    writer, the task running send)."""
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    class Sender(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.set_result(asyncio.ensure_future(send(transport)))

    server = await asyncio.get_running_loop().create_server(Sender, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    task = await asyncio.wait_for(accepted, DEADLINE_S)
    server.close()
    return reader, writer, task


async def _read_all(reader, expected: int) -> bytes:
    data = bytearray()
    while len(data) < expected:
        chunk = await asyncio.wait_for(reader.read(1 << 16), DEADLINE_S)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_parts_of_buffers_and_regions_arrive_in_order(tmp_path):
    log = _log_with_bytes(tmp_path, batches=6, values_per_batch=50, value_size=1000)
    first = log.read(0, 100_000, with_data=False)
    second = log.read(120, 1 << 20, with_data=False)
    assert first.length and second.length and second.position > first.position
    expected = (b"head" + first.segment.read(first.position, first.length) + b"middle"
                + second.segment.read(second.position, second.length) + b"tail")
    regions = [FileRegion.of_segment(r.segment, r.position, r.length) for r in (first, second)]
    parts = [b"head", regions[0], bytearray(b"middle"), regions[1], memoryview(b"tail")]

    async def send(transport):
        # The connection's path: what the socket takes now goes at once, the rest by task.
        rest = write_buffers(transport, parts)
        assert not rest or type(rest[0]) is FileRegion
        await send_parts(transport, rest)

    async def run():
        reader, writer, task = await _serve_once(send)
        got = await _read_all(reader, len(expected))
        await asyncio.wait_for(task, DEADLINE_S)
        writer.close()
        return got

    assert asyncio.run(run()) == expected
    assert all(region.closed for region in regions)
    log.close()


def test_segment_deleted_while_its_region_is_in_flight_is_sent_whole(tmp_path):
    # 8 MiB: far more than the socket buffers, so most of it is still unsent when the
    # segment goes (the reader does not read until then).
    log = _log_with_bytes(tmp_path, batches=16, values_per_batch=512, value_size=1024)
    read = log.read(0, 64 << 20, with_data=False)
    segment = read.segment
    expected = segment.read(read.position, read.length)
    assert len(expected) > 8_000_000
    region = FileRegion.of_segment(segment, read.position, read.length)

    async def send(transport):
        rest = write_buffers(transport, [b"", region])
        assert rest == [region]          # the socket took only part of it at once
        await send_parts(transport, rest)

    async def run():
        reader, writer, task = await _serve_once(send)
        head = await asyncio.wait_for(reader.readexactly(1 << 16), DEADLINE_S)
        assert not task.done()           # in flight
        segment.delete()                 # what retention does: close the fd, unlink the files
        assert not os.path.exists(segment.log_path)
        rest = await _read_all(reader, len(expected) - len(head))
        await asyncio.wait_for(task, DEADLINE_S)
        writer.close()
        return head + rest

    assert asyncio.run(run()) == expected
    assert region.closed


def test_region_cut_short_raises_instead_of_sending_a_short_frame(tmp_path):
    path = tmp_path / "cut.log"
    path.write_bytes(bytes(range(256)) * 64)               # 16 KiB
    fd = os.open(path, os.O_RDWR)
    region = FileRegion(os.dup(fd), 0, 16384)
    os.ftruncate(fd, 4096)                                  # a truncation under the region
    os.close(fd)

    async def send(transport):
        await send_parts(transport, write_buffers(transport, [b"hdr", region]))

    async def run():
        reader, writer, task = await _serve_once(send)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(task, DEADLINE_S)
        writer.close()

    asyncio.run(run())
    assert region.closed


def test_region_of_a_closed_segment_is_refused(tmp_path):
    log = _log_with_bytes(tmp_path, batches=1, values_per_batch=3, value_size=10)
    read = log.read(0, 1 << 20, with_data=False)
    read.segment.close()
    with pytest.raises(ValueError):
        FileRegion.of_segment(read.segment, read.position, read.length)


def test_fetch_send_mode_setting():
    assert BrokerConfig(data_dir="/d", fetch_send_mode="sendfile").fetch_send_mode == "sendfile"
    with pytest.raises(BrokerConfigError, match="fetch.send.mode"):
        BrokerConfig(data_dir="/d", fetch_send_mode="splice")


# ---- against pylog serve: both modes, byte for byte --------------------------------------------

def _produce(wire, partition, batch):
    version = 8
    answer = wire.call(0, version, body(0, version, transactional_id=None, acks=1, timeout=5000,
                                        topic_data=(entity(0, version, "topic_data", name=TOPIC,
                                                           partition_data=(entity(
                                                               0, version,
                                                               "topic_data.partition_data",
                                                               index=partition,
                                                               records=bytes(batch)),)),)))
    assert answer.responses[0].partition_responses[0].error_code == ErrorCode.NONE


def _written() -> dict[int, list[list[bytes]]]:
    """Per partition, its batches' values: partition 2 starts with an oversized batch."""
    rng = random.Random(11)
    batches = {p: [[rng.randbytes(rng.randrange(0, 2000)) for _ in range(rng.randrange(1, 40))]
                   for _ in range(25)] for p in range(PARTITIONS)}
    batches[2].insert(0, [rng.randbytes(BIG_VALUE)])
    return batches


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    factory = BrokerFactory(tmp_path_factory.mktemp("fetch-send-mode"))
    running = {mode: factory.start(settings={"fetch.send.mode": mode})
               for mode in ("copy", "sendfile")}
    written = _written()
    for broker in running.values():
        with Wire(broker.bootstrap) as wire:
            created = wire.call(19, 4, body(19, 4, timeout=5000, validate_only=False, topics=(
                entity(19, 4, "topics", name=TOPIC, num_partitions=PARTITIONS,
                       replication_factor=1, assignments=(), configs=()),)))
            assert created.topics[0].error_code == ErrorCode.NONE
            for partition, batches in written.items():
                for index, values in enumerate(batches):
                    _produce(wire, partition, _batch(values, 1_700_000_000_000 + index * 100))
    yield running, written
    factory.cleanup(failed=False)


def _fetch_frame(wire, version, offsets, max_bytes, partition_max_bytes) -> bytes:
    fields = dict(replica_id=-1, max_wait=0, min_bytes=1, max_bytes=max_bytes,
                  isolation_level=0, topics=(entity(1, version, "topics", topic=TOPIC,
                                                    partitions=tuple(
                      entity(1, version, "topics.partitions", partition=p, fetch_offset=o,
                             partition_max_bytes=partition_max_bytes,
                             **({"current_leader_epoch": -1, "log_start_offset": -1}
                                if version >= 9 else {"log_start_offset": -1}
                                if version >= 5 else {}))
                      for p, o in offsets.items())),))
    if version >= 7:
        fields.update(session_id=0, session_epoch=-1, forgotten_topics_data=())
    if version >= 11:
        fields["rack_id"] = ""
    wire.send(1, version, body(1, version, **fields))
    return wire.read_frame()


FETCHES = [
    pytest.param(11, {0: 0, 1: 0, 2: 0}, 1 << 24, 1 << 20, id="all-partitions"),
    pytest.param(11, {2: 0, 0: 0}, 1 << 24, 1000, id="kip74-oversized-first-batch"),
    pytest.param(11, {0: 0, 1: 0, 2: 0}, 20_000, 1 << 20, id="max-bytes-limit"),
    pytest.param(11, {0: 7, 1: 30, 2: 5}, 50_000, 9_000, id="mid-batch-offsets"),
    pytest.param(11, {0: 10_000}, 1 << 20, 1 << 20, id="out-of-range"),
    pytest.param(4, {0: 0, 1: 3, 2: 1}, 300_000, 100_000, id="v4"),
]


@pytest.mark.parametrize("version,offsets,max_bytes,partition_max_bytes", FETCHES)
def test_raw_fetch_responses_are_identical(brokers, version, offsets, max_bytes,
                                           partition_max_bytes):
    running, _ = brokers
    frames = {}
    for mode, broker in running.items():
        with Wire(broker.bootstrap) as wire:
            # Twice on one connection: responses after a sendfile stay in order and intact.
            frames[mode] = [_fetch_frame(wire, version, offsets, max_bytes,
                                         partition_max_bytes) for _ in range(2)]
    assert frames["copy"] == frames["sendfile"]
    assert frames["copy"][0][4:] == frames["copy"][1][4:]  # only the correlation id differs
    if 10_000 not in offsets.values():
        assert len(frames["copy"][0]) > 1000                   # records were shipped
    if partition_max_bytes == 1000:                            # KIP-74: the whole big batch
        assert len(frames["copy"][0]) > BIG_VALUE


@pytest.mark.parametrize("reader", [kp_read, ck_read], ids=["kafka-python", "confluent-kafka"])
def test_consumers_read_the_same_records_in_both_modes(brokers, reader):
    running, written = brokers
    counts = {p: sum(len(values) for values in batches) for p, batches in written.items()}
    got = {mode: reader(broker.bootstrap, TOPIC, counts) for mode, broker in running.items()}
    assert got["copy"] == got["sendfile"]
    for partition, batches in written.items():
        values = [value for values in batches for value in values]
        assert [g.value for g in got["sendfile"][partition]] == values
        assert [g.offset for g in got["sendfile"][partition]] == list(range(len(values)))
