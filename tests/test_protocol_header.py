"""Request/response headers: hand-built bytes, version mapping, hostile input."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.index import api_key_map, load_request_schema, load_response_schema, schema_name_map

from pylog.protocol.errors import MalformedRequestError, MalformedResponseError
from pylog.protocol.header import (
    RequestHeader,
    encode_request_header,
    encode_response_header,
    parse_request_header,
    parse_response_header,
    request_header_version,
    response_header_version,
)

PREFIX = struct.pack(">hhi", 3, 8, 0x01020304)   # Metadata v8, correlation id


def test_header_v0_has_no_client_id():
    frame = PREFIX + b"BODY"
    header, offset = parse_request_header(frame, 0)
    assert header == RequestHeader(3, 8, 0x01020304, None, 0)
    assert frame[offset:] == b"BODY"


def test_header_v1_client_id():
    frame = PREFIX + b"\x00\x05hello" + b"BODY"
    header, offset = parse_request_header(frame, 1)
    assert (header.api_key, header.api_version, header.correlation_id) == (3, 8, 0x01020304)
    assert header.client_id == "hello" and header.header_version == 1
    assert frame[offset:] == b"BODY"


def test_header_v1_null_and_empty_client_id():
    header, offset = parse_request_header(PREFIX + b"\xff\xff", 1)
    assert header.client_id is None and offset == 10
    header, offset = parse_request_header(PREFIX + b"\x00\x00", 1)
    assert header.client_id == "" and offset == 10


def test_header_v1_utf8_client_id():
    name = "prodücer".encode()
    header, _ = parse_request_header(PREFIX + struct.pack(">h", len(name)) + name, 1)
    assert header.client_id == "prodücer"


def test_header_v2_client_id_is_int16_then_tagged_fields():
    # client_id keeps its INT16 length in v2 (not a compact string); then tagged fields:
    # count 2, tag 0 size 3 "abc", tag 300 (varint ac 02) size 1 "z".
    tagged = b"\x02" + b"\x00\x03abc" + b"\xac\x02\x01z"
    frame = PREFIX + b"\x00\x03cli" + tagged + b"BODY"
    header, offset = parse_request_header(frame, 2)
    assert header.client_id == "cli" and header.header_version == 2
    assert frame[offset:] == b"BODY"


def test_header_v2_without_tagged_fields():
    frame = PREFIX + b"\xff\xff\x00" + b"B"
    header, offset = parse_request_header(frame, 2)
    assert header.client_id is None and frame[offset:] == b"B"


def test_librdkafka_style_api_versions_v3_header():
    # What librdkafka sends first: ApiVersions v3, header v2, body with compact strings.
    body = b"\x0alibrdkafka\x062.0.2\x00"
    frame = struct.pack(">hhi", 18, 3, 1) + b"\x00\x07rdkafka" + b"\x00" + body
    header, offset = parse_request_header(frame, request_header_version(18, 3))
    assert header == RequestHeader(18, 3, 1, "rdkafka", 2)
    assert frame[offset:] == body


@pytest.mark.parametrize("frame,version", [
    (b"", 1),
    (PREFIX[:7], 0),
    (PREFIX + b"\x00", 1),                  # client id length cut off
    (PREFIX + b"\x00\x05hell", 1),          # client id cut off
    (PREFIX + b"\xff\xfe", 1),              # length -2
    (PREFIX + b"\x80\x00", 1),              # length -32768
    (PREFIX + b"\x00\x02\xff\xfe", 1),      # not UTF-8
    (PREFIX + b"\xff\xff", 2),              # tagged-field count missing
    (PREFIX + b"\xff\xff\x01\x00\x05ab", 2),  # tagged field longer than the frame
    (PREFIX + b"\xff\xff\xff\xff\xff\xff\xff\x01", 2),  # varint longer than 5 bytes
    (PREFIX + b"\xff\xff\x01\x80", 2),      # varint cut off
])
def test_malformed_request_headers(frame, version):
    with pytest.raises(MalformedRequestError):
        parse_request_header(frame, version)


def test_malformed_header_error_carries_what_was_read():
    with pytest.raises(MalformedRequestError) as info:
        parse_request_header(PREFIX + b"\x00\x09x", 1)
    assert (info.value.api_key, info.value.api_version, info.value.correlation_id) == \
        (3, 8, 0x01020304)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), version=st.sampled_from([0, 1, 2]))
def test_random_bytes_never_crash_the_header_parser(data, version):
    try:
        header, offset = parse_request_header(data, version)
    except MalformedRequestError:
        return
    assert 8 <= offset <= len(data)


@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize("client_id", [None, "", "client-1", "ümlaut"])
def test_encode_then_parse_request_header(version, client_id):
    encoded = encode_request_header(1, 11, -5, client_id, version)
    header, offset = parse_request_header(encoded + b"rest", version)
    assert offset == len(encoded)
    assert header == RequestHeader(1, 11, -5, client_id if version else None, version)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # kafka-python's resource loading
def test_request_header_bytes_match_kafka_python():
    pytest.importorskip("kafka.protocol.api_message", reason="needs kafka-python >= 3")
    from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest

    request = MetadataRequest[8](topics=None, allow_auto_topic_creation=True,
                                 include_cluster_authorized_operations=False,
                                 include_topic_authorized_operations=False)
    request.with_header(correlation_id=77, client_id="kp")
    encoded = bytes(request.encode(header=True, framed=False))
    assert encoded.startswith(encode_request_header(3, 8, 77, "kp", 1))

    flexible = ApiVersionsRequest[3](client_software_name="x", client_software_version="1")
    flexible.with_header(correlation_id=5, client_id="c")
    encoded = bytes(flexible.encode(header=True, framed=False))
    assert encoded.startswith(encode_request_header(18, 3, 5, "c", 2))


def test_response_headers():
    assert encode_response_header(0x01020304, 0) == b"\x01\x02\x03\x04"
    assert encode_response_header(-1, 1) == b"\xff\xff\xff\xff\x00"
    assert parse_response_header(b"\x00\x00\x00\x09BODY", 0) == (9, 4)
    assert parse_response_header(b"\x00\x00\x00\x09\x01\x00\x01zBODY", 1) == (9, 8)
    for bad, version in [(b"\x00\x00\x00", 0), (b"\x00\x00\x00\x01", 1),
                         (b"\x00\x00\x00\x01\x01\x00\x05", 1)]:
        with pytest.raises(MalformedResponseError):
            parse_response_header(bad, version)
    with pytest.raises(ValueError):
        encode_response_header(1, 2)


def test_header_versions_follow_flexibility():
    assert request_header_version(1, 11) == 1 and response_header_version(1, 11) == 0
    assert request_header_version(1, 12) == 2 and response_header_version(1, 12) == 1
    assert request_header_version(3, 9) == 2 and response_header_version(3, 9) == 1
    # ApiVersions responses always use header v0, even for flexible versions.
    assert request_header_version(18, 3) == 2 and response_header_version(18, 3) == 0
    assert response_header_version(18, 4) == 0
    with pytest.raises(LookupError):
        request_header_version(1, 3)           # Fetch v3: gone from Kafka 4's schemas
    with pytest.raises(LookupError):
        response_header_version(9999, 0)


def test_header_versions_agree_with_flexibility_for_every_kio_schema():
    checked = 0
    for api_key, name in api_key_map.items():
        for version in schema_name_map[name]:
            request = load_request_schema(api_key, version)
            response = load_response_schema(api_key, version)
            checked += 1
            assert request_header_version(api_key, version) == (2 if request.__flexible__ else 1)
            expected = 1 if response.__flexible__ and api_key != 18 else 0
            assert response_header_version(api_key, version) == expected
    assert checked > 250
