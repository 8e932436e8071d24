"""The hand-framed Fetch response, checked against kio's FetchResponse reader and writer."""
import datetime
import importlib
import mmap

import pytest

from pylog.protocol.codec import decode_response, encode_response
from pylog.protocol.errors import EncodeError, ErrorCode
from pylog.protocol.fetch_response import (
    FetchPartitionResponse,
    FetchTopicResponse,
    encode_fetch_response,
)
from pylog.protocol.framing import FrameDecoder
from pylog.protocol.header import RequestHeader

VERSIONS = range(4, 12)


def sample_topics():
    return [
        FetchTopicResponse("orders", [
            FetchPartitionResponse(0, ErrorCode.NONE, high_watermark=120, last_stable_offset=120,
                                   log_start_offset=3,
                                   records=[b"batch-one:", bytearray(b"batch-two:"),
                                            memoryview(b"--batch-three--")[2:-2]]),
            FetchPartitionResponse(1, ErrorCode.NONE, high_watermark=0, last_stable_offset=0,
                                   log_start_offset=0, records=[]),          # nothing to send
            FetchPartitionResponse(2, ErrorCode.OFFSET_OUT_OF_RANGE, high_watermark=5,
                                   last_stable_offset=5, log_start_offset=1,
                                   records=[b"", b""],                     # empty parts only
                                   aborted_transactions=[]),
        ]),
        FetchTopicResponse("empty-topic", []),
        FetchTopicResponse("payments", [
            FetchPartitionResponse(7, ErrorCode.NOT_LEADER_OR_FOLLOWER, high_watermark=-1,
                                   last_stable_offset=-1, log_start_offset=-1),
            FetchPartitionResponse(8, high_watermark=10, last_stable_offset=9,
                                   log_start_offset=2, records=[b"x" * 1000],
                                   aborted_transactions=[(1234, 5), (-1, 2**40)]),
        ]),
    ]


def unframe(parts) -> memoryview:
    decoder = FrameDecoder()
    decoder.feed(b"".join(bytes(p) for p in parts))
    frame = decoder.next_frame()
    assert frame is not None and decoder.pending_bytes == 0
    return frame


def kio_entity(version: int, topics, throttle_ms: int, error_code: int, session_id: int):
    """The same response as kio's own dataclasses, records joined into bytes."""
    module = importlib.import_module(f"kio.schema.fetch.v{version}.response")
    responses = []
    for topic in topics:
        partitions = []
        for p in topic.partitions:
            values = dict(partition_index=p.partition_index, error_code=p.error_code,
                          high_watermark=p.high_watermark,
                          last_stable_offset=p.last_stable_offset,
                          aborted_transactions=None if p.aborted_transactions is None else
                          tuple(module.AbortedTransaction(producer_id=a, first_offset=b)
                                for a, b in p.aborted_transactions),
                          records=b"".join(bytes(r) for r in p.records))
            if version >= 5:
                values["log_start_offset"] = p.log_start_offset
            if version >= 11:
                values["preferred_read_replica"] = p.preferred_read_replica
            partitions.append(module.PartitionData(**values))
        responses.append(module.FetchableTopicResponse(topic=topic.topic,
                                                       partitions=tuple(partitions)))
    values = dict(throttle_time=datetime.timedelta(milliseconds=throttle_ms),
                  responses=tuple(responses))
    if version >= 7:
        values.update(error_code=error_code, session_id=session_id)
    return module.FetchResponse(**values)


@pytest.mark.parametrize("version", VERSIONS)
def test_bytes_equal_kio_writer(version):
    topics = sample_topics()
    parts = encode_fetch_response(31, version, topics, throttle_time_ms=17,
                                  error_code=ErrorCode.NONE, session_id=0)
    expected = encode_response(RequestHeader(1, version, 31, None, 1),
                               kio_entity(version, topics, 17, ErrorCode.NONE, 0))
    assert b"".join(bytes(p) for p in parts) == expected


@pytest.mark.parametrize("version", VERSIONS)
def test_kio_reader_parses_it(version):
    topics = sample_topics()
    parts = encode_fetch_response(9, version, topics, throttle_time_ms=3,
                                  error_code=ErrorCode.FETCH_SESSION_ID_NOT_FOUND, session_id=0)
    correlation_id, response = decode_response(1, version, unframe(parts))
    assert correlation_id == 9
    assert response.throttle_time == datetime.timedelta(milliseconds=3)
    if version >= 7:
        assert response.error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
        assert response.session_id == 0
    assert [t.topic for t in response.responses] == ["orders", "empty-topic", "payments"]
    orders, empty, payments = response.responses
    assert empty.partitions == ()
    p0, p1, p2 = orders.partitions
    assert p0.records == b"batch-one:batch-two:batch-three"
    assert (p0.high_watermark, p0.last_stable_offset) == (120, 120)
    assert p0.aborted_transactions is None
    assert p1.records == b"" and p1.records is not None         # length 0, never null
    assert p2.records == b"" and p2.error_code == ErrorCode.OFFSET_OUT_OF_RANGE
    assert p2.aborted_transactions == ()
    p7, p8 = payments.partitions
    assert p7.error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER and p7.records == b""
    assert [(a.producer_id, a.first_offset) for a in p8.aborted_transactions] == \
        [(1234, 5), (-1, 2**40)]
    assert p8.records == b"x" * 1000
    if version >= 5:
        assert p0.log_start_offset == 3 and p8.log_start_offset == 2
    if version >= 11:
        assert all(p.preferred_read_replica == -1 for p in (p0, p1, p2, p7, p8))


def test_empty_records_are_written_as_length_zero():
    parts = encode_fetch_response(1, 4, [FetchTopicResponse("t", [
        FetchPartitionResponse(0, high_watermark=0, last_stable_offset=0)])])
    (only,) = parts
    assert bytes(only).endswith(b"\xff\xff\xff\xff" + b"\x00\x00\x00\x00")  # null aborted, 0


def test_record_buffers_are_passed_through_not_copied():
    first, second = bytearray(b"A" * 100), memoryview(b"B" * 50)
    parts = encode_fetch_response(1, 11, [FetchTopicResponse("t", [
        FetchPartitionResponse(0, records=[first, b"", second]),
        FetchPartitionResponse(1, records=[]),
    ])])
    assert parts[1] is first and parts[2] is second
    assert len(parts) == 4                       # head, first, second, tail (partition 1)
    total = sum(memoryview(p).nbytes for p in parts)
    assert int.from_bytes(bytes(parts[0][:4]), "big") == total - 4


def test_records_from_an_mmapped_file(tmp_path):
    path = tmp_path / "00000000000000000000.log"
    path.write_bytes(b"0123456789" * 100)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            parts = encode_fetch_response(2, 11, [FetchTopicResponse("t", [
                FetchPartitionResponse(0, high_watermark=1, last_stable_offset=1,
                                       log_start_offset=0, records=[view[100:600]])])])
            assert parts[1].obj is mm
            _, response = decode_response(1, 11, unframe(parts))
            assert response.responses[0].partitions[0].records == (b"0123456789" * 100)[100:600]
        finally:
            for part in parts:
                if isinstance(part, memoryview):
                    part.release()
            view.release()


def test_preferred_read_replica_is_written_from_v11():
    topic = [FetchTopicResponse("t", [FetchPartitionResponse(0, preferred_read_replica=3)])]
    _, response = decode_response(1, 11, unframe(encode_fetch_response(1, 11, topic)))
    assert response.responses[0].partitions[0].preferred_read_replica == 3


def test_defaults_are_kafkas_no_session_no_throttle():
    _, response = decode_response(1, 11, unframe(encode_fetch_response(1, 11, [])))
    assert response.responses == () and response.session_id == 0
    assert response.error_code == ErrorCode.NONE
    assert response.throttle_time == datetime.timedelta(0)


@pytest.mark.parametrize("version", [3, 12, -1])
def test_only_versions_4_to_11(version):
    with pytest.raises(EncodeError):
        encode_fetch_response(1, version, [])


@pytest.mark.parametrize("topics", [
    [FetchTopicResponse("t" * 40000, [])],
    [FetchTopicResponse("t", [FetchPartitionResponse(2**31)])],
    [FetchTopicResponse("t", [FetchPartitionResponse(0, error_code=40000)])],
    [FetchTopicResponse("t", [FetchPartitionResponse(0, high_watermark=2**63)])],
])
def test_out_of_range_fields_raise_encode_error(topics):
    with pytest.raises(EncodeError):
        encode_fetch_response(1, 11, topics)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # kafka-python's resource loading
@pytest.mark.parametrize("version", VERSIONS)
def test_kafka_python_parses_it(version):
    pytest.importorskip("kafka.protocol.api_message", reason="needs kafka-python >= 3")
    from kafka.protocol.consumer import FetchResponse

    parts = encode_fetch_response(12, version, sample_topics())
    decoded = FetchResponse[version].decode(b"".join(bytes(p) for p in parts),
                                            header=True, framed=True)
    assert decoded.header.correlation_id == 12
    orders = decoded.responses[0]
    assert orders.topic == "orders"
    assert bytes(orders.partitions[0].records) == b"batch-one:batch-two:batch-three"
    assert bytes(orders.partitions[1].records) == b""
