"""The hand-parsed Produce request (v3-v8): same results as kio's decoder on kio's own
encodings and on garbage, record views that point into the frame, hostile counts refused."""
import datetime
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.index import load_request_schema

from pylog.protocol.codec import decode_request, encode_request
from pylog.protocol.errors import MalformedRequestError, UnsupportedVersionError
from pylog.protocol.framing import FrameDecoder
from pylog.protocol.produce_request import (PRODUCE_REQUEST_VERSIONS, ProducePartition,
                                            parse_produce_request)
from pylog.protocol.versions import ADVERTISED_VERSIONS

VERSIONS = list(range(PRODUCE_REQUEST_VERSIONS.min, PRODUCE_REQUEST_VERSIONS.max + 1))


def _frame_of(framed: bytes) -> memoryview:
    """The writable frame a broker gets from its FrameDecoder."""
    decoder = FrameDecoder()
    decoder.feed(framed)
    frame = decoder.next_frame()
    assert frame is not None and decoder.pending_bytes == 0
    return frame


def _kio_request(version: int, topics, acks=1, timeout_ms=1500, transactional_id=None):
    schema = load_request_schema(0, version)
    topic_type = schema.__dataclass_fields__["topic_data"].type.__args__[0]
    partition_type = topic_type.__dataclass_fields__["partition_data"].type.__args__[0]
    return schema(
        transactional_id=transactional_id, acks=acks,
        timeout=datetime.timedelta(milliseconds=timeout_ms),
        topic_data=tuple(topic_type(name=name, partition_data=tuple(
            partition_type(index=index, records=records) for index, records in partitions))
            for name, partitions in topics))


def _as_kio_shape(parsed):
    """The parsed request in kio's shape, for comparison with kio's decoder."""
    return (parsed.transactional_id, parsed.acks, parsed.timeout_ms,
            tuple((t.name, tuple((p.index, None if p.records is None else bytes(p.records))
                                 for p in t.partitions)) for t in parsed.topics))


def _kio_shape(body):
    return (body.transactional_id, body.acks, body.timeout // datetime.timedelta(milliseconds=1),
            tuple((t.name, tuple((p.index, p.records) for p in (t.partition_data or ())))
                  for t in (body.topic_data or ())))


def _kio_outcome(frame: bytes):
    try:
        request = decode_request(frame, ADVERTISED_VERSIONS)
    except MalformedRequestError:
        return "malformed"
    return (request.header, _kio_shape(request.body))


def _our_outcome(frame):
    try:
        parsed = parse_produce_request(frame)
    except MalformedRequestError as exc:
        assert exc.api_key == 0
        return "malformed"
    return (parsed.header, _as_kio_shape(parsed))


@pytest.mark.parametrize("version", VERSIONS)
def test_parses_what_kio_encodes_with_views_into_the_frame(version):
    records_a = b"\x00" * 8 + b"batch-a" * 10
    body = _kio_request(version, [("orders", [(0, records_a), (3, None)]),
                                  ("audit.log-1", [(7, b"")])],
                        acks=-1, timeout_ms=30000, transactional_id="tx")
    frame = _frame_of(encode_request(0, version, 77, "client-1", body))
    parsed = parse_produce_request(frame)
    assert parsed.header.correlation_id == 77 and parsed.header.client_id == "client-1"
    assert parsed.api_version == version and parsed.correlation_id == 77
    assert (parsed.transactional_id, parsed.acks, parsed.timeout_ms) == ("tx", -1, 30000)
    assert [t.name for t in parsed.topics] == ["orders", "audit.log-1"]
    first = parsed.topics[0].partitions[0]
    assert first.index == 0 and bytes(first.records) == records_a
    assert parsed.topics[0].partitions[1] == ProducePartition(3, None)
    assert bytes(parsed.topics[1].partitions[0].records) == b""
    # The records are a writable window on the frame itself: stamping one changes the other.
    assert not first.records.readonly
    first.records[0:8] = struct.pack(">q", 1234)
    assert bytes(frame).count(struct.pack(">q", 1234)) == 1
    assert _as_kio_shape(parsed)[3][0][1][0][1][:8] == struct.pack(">q", 1234)


def test_a_read_only_frame_gives_read_only_views():
    body = _kio_request(8, [("t", [(0, b"xyz")])])
    parsed = parse_produce_request(encode_request(0, 8, 1, None, body)[4:])
    assert parsed.topics[0].partitions[0].records.readonly
    assert bytes(parsed.topics[0].partitions[0].records) == b"xyz"


_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                 max_size=12)
_topics = st.lists(st.tuples(_names, st.lists(st.tuples(
    st.integers(-2**31, 2**31 - 1), st.one_of(st.none(), st.binary(max_size=40))),
    max_size=4)), max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from(VERSIONS), topics=_topics,
       acks=st.integers(-2**15, 2**15 - 1), timeout_ms=st.integers(-2**31, 2**31 - 1),
       transactional_id=st.one_of(st.none(), _names), client_id=st.one_of(st.none(), _names))
def test_agrees_with_kio_on_generated_requests(version, topics, acks, timeout_ms,
                                               transactional_id, client_id):
    body = _kio_request(version, topics, acks, timeout_ms, transactional_id)
    frame = _frame_of(encode_request(0, version, 5, client_id, body))
    ours = _our_outcome(frame)
    assert ours != "malformed"
    assert ours == _kio_outcome(bytes(frame))


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(VERSIONS), data=st.data())
def test_agrees_with_kio_on_mutated_and_truncated_requests(version, data):
    body = _kio_request(version, [("orders", [(0, b"r" * 30), (1, None)]), ("b", [(2, b"")])],
                        transactional_id="t")
    frame = bytearray(encode_request(0, version, 9, "c", body)[4:])
    for _ in range(data.draw(st.integers(min_value=0, max_value=4))):
        position = data.draw(st.integers(min_value=8, max_value=len(frame) - 1))
        frame[position] = data.draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
    cut = data.draw(st.integers(min_value=8, max_value=len(frame) + 3))
    frame = bytes(frame[:cut]) + b"\x00" * max(0, cut - len(frame))
    assert _our_outcome(frame) == _kio_outcome(frame)


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(VERSIONS), body=st.binary(max_size=120),
       client_id=st.one_of(st.none(), st.text(max_size=6)))
def test_agrees_with_kio_on_garbage_bodies(version, body, client_id):
    name = b"" if client_id is None else client_id.encode()
    frame = struct.pack(">hhih", 0, version, 3, -1 if client_id is None else len(name)) \
        + name + body
    assert _our_outcome(frame) == _kio_outcome(frame)


def _body(*parts: bytes) -> bytes:
    return struct.pack(">hhih", 0, 8, 21, -1) + b"".join(parts)


_PRELUDE = struct.pack(">hhi", -1, 1, 1000)   # null transactional id, acks 1, timeout


@pytest.mark.parametrize("frame,reason", [
    (_body(_PRELUDE, struct.pack(">i", -2)), "negative topic_data count"),
    (_body(_PRELUDE, struct.pack(">i", 2**31 - 1)), "does not fit"),
    (_body(_PRELUDE, struct.pack(">ih", 1, -1), struct.pack(">i", 0)), "invalid string"),
    (_body(_PRELUDE, struct.pack(">ih", 1, 1), b"t", struct.pack(">i", 300_000_000)),
     "does not fit"),
    (_body(_PRELUDE, struct.pack(">ih", 1, 1), b"t", struct.pack(">iii", 1, 0, -5)),
     "negative records length"),
    (_body(_PRELUDE, struct.pack(">ih", 1, 1), b"t", struct.pack(">iii", 1, 0, 99), b"x"),
     "run past the end"),
    (_body(_PRELUDE, struct.pack(">i", 0), b"\x00"), "1 bytes after the body"),
    (_body(struct.pack(">h", 3), b"\xff\xfe\xfd", _PRELUDE[2:], struct.pack(">i", 0)),
     "not UTF-8"),
    (_body(_PRELUDE[:3]), "cut off"),
])
def test_hostile_bodies_are_malformed_with_the_header_kept(frame, reason):
    with pytest.raises(MalformedRequestError, match=reason) as info:
        parse_produce_request(frame)
    assert (info.value.api_key, info.value.api_version, info.value.correlation_id) == (0, 8, 21)
    assert _kio_outcome(frame) == "malformed"


def test_null_arrays_read_as_empty_like_kio():
    frame = _body(_PRELUDE, struct.pack(">ih", 1, 1), b"t", struct.pack(">i", -1))
    parsed = parse_produce_request(frame)
    assert [(t.name, t.partitions) for t in parsed.topics] == [("t", [])]
    assert _our_outcome(frame) == _kio_outcome(frame)


@pytest.mark.parametrize("version", [-1, 0, 2, 9, 12])
def test_versions_outside_3_to_8_are_unsupported(version):
    frame = struct.pack(">hhih", 0, version, 4, -1) + _PRELUDE + struct.pack(">i", 0)
    with pytest.raises(UnsupportedVersionError) as info:
        parse_produce_request(frame)
    assert info.value.correlation_id == 4


def test_other_api_keys_are_a_caller_error():
    with pytest.raises(ValueError):
        parse_produce_request(struct.pack(">hhih", 1, 4, 4, -1))


def test_header_shorter_than_its_prefix():
    with pytest.raises(MalformedRequestError):
        parse_produce_request(b"\x00\x00\x00")
