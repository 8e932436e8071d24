"""DeleteTopics v0, carried by v1's kio schemas (pylog.protocol.legacy), checked byte for byte
against kafka-python's own v0 classes (kafka.protocol.old.admin)."""
import datetime
import struct

import pytest

from pylog.protocol.codec import (decode_request, decode_response, encode_request,
                                  encode_response, request_schema, response_schema)
from pylog.protocol.errors import ErrorCode
from pylog.protocol.header import RequestHeader, encode_request_header
from pylog.protocol.versions import ADVERTISED_VERSIONS, ApiKey

old_admin = pytest.importorskip("kafka.protocol.old.admin")


def _v0_request_frame(topics, timeout_ms, correlation_id=31, client_id="kp"):
    body = old_admin.DeleteTopicsRequest_v0(topics=topics, timeout=timeout_ms).encode()
    return encode_request_header(20, 0, correlation_id, client_id, 1) + bytes(body)


def test_v0_is_advertised():
    assert ADVERTISED_VERSIONS[ApiKey.DELETE_TOPICS].min == 0


def test_kafka_python_v0_request_decodes():
    request = decode_request(_v0_request_frame(["a", "topic-2"], 1500), ADVERTISED_VERSIONS)
    assert request.header == RequestHeader(20, 0, 31, "kp", 1)
    assert request.body.topic_names == ("a", "topic-2")
    assert request.body.timeout == datetime.timedelta(milliseconds=1500)


def test_v0_request_we_encode_is_kafka_pythons():
    body = request_schema(20, 0)(topic_names=("x", "yy"),
                                 timeout=datetime.timedelta(milliseconds=9))
    framed = encode_request(20, 0, 31, "kp", body)
    assert framed[4:] == _v0_request_frame(["x", "yy"], 9)


def test_v0_response_has_no_throttle_field_and_kafka_python_reads_it():
    schema = response_schema(20, 0)
    result_type = schema.__dataclass_fields__["responses"].type.__args__[0]
    body = schema(throttle_time=datetime.timedelta(milliseconds=250), responses=(
        result_type(name="gone", error_code=ErrorCode.NONE),
        result_type(name="missing", error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)))
    framed = encode_response(RequestHeader(20, 0, 44, None, 1), body)
    (size, correlation_id) = struct.unpack_from(">ii", framed)
    assert (size, correlation_id) == (len(framed) - 4, 44)
    payload = framed[8:]
    decoded = old_admin.DeleteTopicsResponse_v0.decode(payload)
    assert [(r[0], r[1]) for r in decoded.responses] == [("gone", 0), ("missing", 3)]
    expected = old_admin.DeleteTopicsResponse_v0(
        responses=[("gone", 0), ("missing", 3)]).encode()
    assert payload == bytes(expected)
    # v1 of the same body is exactly 4 bytes longer: the throttle field in front.
    v1 = encode_response(RequestHeader(20, 1, 44, None, 1), body)
    assert v1[8:12] == struct.pack(">i", 250) and v1[12:] == payload
    # Reading v0 back gives the body with the throttle it never carried set to 0.
    _, back = decode_response(20, 0, framed[4:])
    assert back.responses == body.responses
    assert back.throttle_time == datetime.timedelta(0)
