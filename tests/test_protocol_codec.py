"""Request/response codec: round trips for every advertised (api, version), cross-checked byte
for byte with kafka-python's independent implementation; hostile input; ApiVersions fallback."""
import dataclasses
import datetime
import importlib
import pkgutil
import struct
import types
import typing
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pylog.protocol.codec import request_schema as load_request_schema
from pylog.protocol.codec import response_schema as load_response_schema
from kio.static.primitive import Records

from pylog.protocol.codec import (
    Request,
    api_versions_fallback_response,
    api_versions_response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from pylog.protocol.errors import (
    EncodeError,
    ErrorCode,
    MalformedRequestError,
    MalformedResponseError,
    UnknownApiKeyError,
    UnsupportedVersionError,
)
from pylog.protocol.framing import FrameDecoder
from pylog.protocol.header import RequestHeader
from pylog.protocol.legacy import LEGACY_VERSIONS
from pylog.protocol.versions import ADVERTISED_VERSIONS, ApiKey, VersionRange, advertised

PAIRS = [(int(key), version) for key, served in ADVERTISED_VERSIONS.items()
         for version in range(served.min, served.max + 1)]
PAIR_IDS = [f"{ApiKey(k).name}-v{v}" for k, v in PAIRS]


# ---- representative kio entities ------------------------------------------------------------

_ERROR_CODES = [ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                ErrorCode.NONE, ErrorCode.REBALANCE_IN_PROGRESS]


def _primitive(kafka_type: str, n: int):
    if kafka_type in ("int8", "int16", "int32", "int64"):
        return {"int8": 1, "int16": 1}.get(kafka_type, 1000) * n + 7   # distinct per field
    if kafka_type.startswith("uint"):
        return n
    if kafka_type == "float64":
        return n + 0.5
    if kafka_type == "string":
        return f"name-{n}"
    if kafka_type == "bytes":
        return bytes([n % 256]) * 3
    if kafka_type == "records":
        return Records(bytes([n % 256]) * 5)
    if kafka_type == "bool":
        return n % 2 == 1
    if kafka_type == "error_code":
        return _ERROR_CODES[n % len(_ERROR_CODES)]
    if kafka_type in ("timedelta_i32", "timedelta_i64"):
        return datetime.timedelta(milliseconds=n)
    if kafka_type == "datetime_i64":
        return datetime.datetime.fromtimestamp(n, tz=datetime.timezone.utc)
    if kafka_type == "uuid":
        return uuid.UUID(int=n + 1)
    raise AssertionError(f"no representative value for {kafka_type}")


def representative(schema: type, minimal: bool = False, counter=None):
    """An instance of a kio schema with a distinct value in every field; ``minimal`` sets
    every nullable field to None and every array to empty."""
    counter = counter if counter is not None else iter(range(1, 1_000_000))
    values = {}
    for field in dataclasses.fields(schema):
        field_type = field.type
        nullable = False
        if typing.get_origin(field_type) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(field_type) if a is not type(None)]
            nullable = len(args) < len(typing.get_args(field_type))
            (field_type,) = args
        if minimal and nullable:
            values[field.name] = None
        elif typing.get_origin(field_type) is tuple:
            item = typing.get_args(field_type)[0]
            count = 0 if minimal else 2
            if dataclasses.is_dataclass(item):
                values[field.name] = tuple(representative(item, minimal, counter)
                                           for _ in range(count))
            else:
                values[field.name] = tuple(_primitive(field.metadata["kafka_type"],
                                                      next(counter)) for _ in range(count))
        elif dataclasses.is_dataclass(field_type):
            values[field.name] = representative(field_type, minimal, counter)
        else:
            values[field.name] = _primitive(field.metadata["kafka_type"], next(counter))
    return schema(**values)


def as_sent(api_key: int, version: int, body):
    """``body`` as the receiver sees it: a legacy version (DeleteTopics v0) sends no throttle
    field, so it reads back as 0."""
    legacy = LEGACY_VERSIONS.get((api_key, version))
    if legacy is not None and legacy.response_without_leading_throttle:
        return dataclasses.replace(body, throttle_time=datetime.timedelta(0))
    return body


def strip_size(framed: bytes) -> memoryview:
    decoder = FrameDecoder()
    decoder.feed(framed)
    frame = decoder.next_frame()
    assert frame is not None and decoder.pending_bytes == 0
    return frame


# ---- kafka-python as an independent implementation ------------------------------------------

def _kafka_python_classes():
    from kafka.protocol.api_message import ApiMessage
    classes = {}
    for package in ("admin", "consumer", "metadata", "producer"):
        module = importlib.import_module(f"kafka.protocol.{package}")
        for sub in pkgutil.iter_modules(module.__path__):
            submodule = importlib.import_module(f"kafka.protocol.{package}.{sub.name}")
            for value in vars(submodule).values():
                if (isinstance(value, type) and issubclass(value, ApiMessage)
                        and value is not ApiMessage and getattr(value, "_json", None)):
                    classes[(value.API_KEY, value.type)] = value
    return classes


@pytest.fixture(scope="module")
def kafka_python():
    pytest.importorskip("kafka.protocol.api_message", reason="needs kafka-python >= 3")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _kafka_python_classes()


# ---- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
@pytest.mark.parametrize("api_key,version", PAIRS, ids=PAIR_IDS)
def test_request_round_trip(api_key, version, minimal):
    body = representative(load_request_schema(api_key, version), minimal)
    framed = encode_request(api_key, version, 4242, "client-x", body)
    request = decode_request(strip_size(framed), ADVERTISED_VERSIONS)
    assert isinstance(request, Request)
    assert request.header == RequestHeader(api_key, version, 4242, "client-x", 1)
    assert (request.api_key, request.api_version, request.correlation_id) == \
        (api_key, version, 4242)
    assert request.body == body


@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
@pytest.mark.parametrize("api_key,version", PAIRS, ids=PAIR_IDS)
def test_response_round_trip(api_key, version, minimal):
    body = representative(load_response_schema(api_key, version), minimal)
    header = RequestHeader(api_key, version, -7, None, 1)
    framed = encode_response(header, body)
    correlation_id, decoded = decode_response(api_key, version, strip_size(framed))
    assert correlation_id == -7
    assert decoded == as_sent(api_key, version, body)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("api_key,version", PAIRS, ids=PAIR_IDS)
def test_bytes_agree_with_kafka_python(api_key, version, kafka_python):
    """kafka-python decodes our request and response bytes and re-encodes them identically."""
    if (api_key, version) in LEGACY_VERSIONS:
        pytest.skip("kafka-python 3's classes lack this version; tests/test_protocol_legacy.py"
                    " checks it against kafka.protocol.old")
    body = representative(load_request_schema(api_key, version))
    ours = encode_request(api_key, version, 99, "client-x", body)
    theirs = kafka_python[(api_key, "request")][version].decode(ours, header=True, framed=True)
    assert bytes(theirs.encode(header=True, framed=True)) == ours

    body = representative(load_response_schema(api_key, version))
    if api_key == ApiKey.API_VERSIONS:   # kafka-python reads any error as the v0 layout
        body = dataclasses.replace(body, error_code=ErrorCode.NONE)
    ours = encode_response(RequestHeader(api_key, version, 99, None, 1), body)
    theirs = kafka_python[(api_key, "response")][version].decode(ours, header=True, framed=True)
    assert bytes(theirs.encode(header=True, framed=True)) == ours


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_decodes_kafka_python_produce_v8_with_a_real_batch():
    pytest.importorskip("kafka.protocol.api_message", reason="needs kafka-python >= 3")
    from kafka.protocol.producer import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    builder.append(0, timestamp=1700000000000, key=b"k", value=b"v" * 100, headers=[])
    batch = bytes(builder.build())
    topic = ProduceRequest.TopicProduceData(
        name="orders", partition_data=[
            ProduceRequest.TopicProduceData.PartitionProduceData(index=3, records=batch)])
    request = ProduceRequest[8](transactional_id=None, acks=-1, timeout_ms=30000,
                                topic_data=[topic])
    request.with_header(correlation_id=5, client_id="kafka-python")
    framed = bytes(request.encode(header=True, framed=True))
    decoded = decode_request(strip_size(framed), ADVERTISED_VERSIONS)
    assert decoded.header.client_id == "kafka-python"
    assert decoded.body.acks == -1
    assert decoded.body.timeout == datetime.timedelta(seconds=30)
    (topic_data,) = decoded.body.topic_data
    assert topic_data.name == "orders"
    assert topic_data.partition_data[0].index == 3
    assert topic_data.partition_data[0].records == batch


def _registered_records():
    st.register_type_strategy(Records, st.binary(max_size=64).map(Records))


_registered_records()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), pair=st.sampled_from(PAIRS))
def test_generated_entities_round_trip(data, pair):
    api_key, version = pair
    body = data.draw(st.from_type(load_request_schema(api_key, version)))
    try:
        framed = encode_request(api_key, version, 1, "c", body)
    except EncodeError:
        return            # hypothesis made a value the wire cannot carry (string > 32767 B)
    assert decode_request(strip_size(framed), ADVERTISED_VERSIONS).body == body
    body = data.draw(st.from_type(load_response_schema(api_key, version)))
    try:
        framed = encode_response(RequestHeader(api_key, version, 1, None, 1), body)
    except EncodeError:
        return
    if api_key == ApiKey.API_VERSIONS and body.error_code == ErrorCode.UNSUPPORTED_VERSION:
        return            # decoded with the v0 layout on purpose; tested below
    assert decode_response(api_key, version, strip_size(framed))[1] == \
        as_sent(api_key, version, body)


# ---- errors ---------------------------------------------------------------------------------

def _frame_for(api_key: int, version: int, body: bytes = b"", correlation_id: int = 11) -> bytes:
    return struct.pack(">hhih", api_key, version, correlation_id, -1) + body


def test_unknown_api_key():
    with pytest.raises(UnknownApiKeyError) as info:
        decode_request(_frame_for(999, 0), ADVERTISED_VERSIONS)
    assert (info.value.api_key, info.value.correlation_id) == (999, 11)
    # A Kafka api the broker does not serve (yet) is unknown to it as well.
    with pytest.raises(UnknownApiKeyError):
        decode_request(_frame_for(ApiKey.JOIN_GROUP, 5), advertised([0, 1, 3, 18]))


@pytest.mark.parametrize("api_key,version", [(ApiKey.FETCH, 3), (ApiKey.FETCH, 12),
                                             (ApiKey.METADATA, 9), (ApiKey.PRODUCE, -1),
                                             (ApiKey.API_VERSIONS, 3), (ApiKey.API_VERSIONS, 4)])
def test_unsupported_version(api_key, version):
    with pytest.raises(UnsupportedVersionError) as info:
        decode_request(_frame_for(api_key, version, b"whatever"), ADVERTISED_VERSIONS)
    assert (info.value.api_key, info.value.api_version, info.value.correlation_id) == \
        (api_key, version, 11)


@pytest.mark.parametrize("frame", [b"", b"\x00\x03", b"\x00\x03\x00\x08\x00\x00\x00"])
def test_frame_shorter_than_a_header(frame):
    with pytest.raises(MalformedRequestError) as info:
        decode_request(frame, ADVERTISED_VERSIONS)
    assert info.value.correlation_id is None


def test_left_over_bytes_are_malformed():
    from kio.schema.metadata.v1.request import MetadataRequest
    framed = encode_request(3, 1, 8, None, MetadataRequest(topics=None))
    with pytest.raises(MalformedRequestError) as info:
        decode_request(bytes(strip_size(framed)) + b"\x00", ADVERTISED_VERSIONS)
    assert info.value.correlation_id == 8


def test_truncated_body_is_malformed():
    from kio.schema.metadata.v1.request import MetadataRequest
    from kio.schema.metadata.v1.request import MetadataRequestTopic
    framed = encode_request(3, 1, 8, None,
                            MetadataRequest(topics=(MetadataRequestTopic(name="abc"),)))
    with pytest.raises(MalformedRequestError):
        decode_request(bytes(strip_size(framed))[:-1], ADVERTISED_VERSIONS)


@pytest.mark.parametrize("body", [
    b"\xff\xff\xff\xfe",                     # array count -2
    b"\x7f\xff\xff\xff",                     # array count 2**31-1 with no elements
    b"\x00\x00\x00\x01\x00\x02\xff\xfe",     # topic name not UTF-8
    b"\x00\x00\x00\x01\xff\xff",             # null topic name in a non-nullable field
])
def test_hostile_metadata_bodies(body):
    with pytest.raises(MalformedRequestError):
        decode_request(_frame_for(3, 1, body), ADVERTISED_VERSIONS)


@pytest.mark.parametrize("api_key,version", PAIRS, ids=PAIR_IDS)
@settings(max_examples=25, deadline=None)
@given(body=st.binary(max_size=200), client_id=st.one_of(st.none(), st.text(max_size=10)))
def test_random_bodies_never_crash(api_key, version, body, client_id):
    name = b"" if client_id is None else client_id.encode()
    prefix = struct.pack(">hhih", api_key, version, 3, -1 if client_id is None else len(name))
    try:
        request = decode_request(prefix + name + body, ADVERTISED_VERSIONS)
    except MalformedRequestError as exc:
        assert exc.correlation_id == 3
        return
    assert (request.api_key, request.api_version) == (api_key, version)


@pytest.mark.parametrize("api_key,version", PAIRS, ids=PAIR_IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_mutated_requests_never_crash(api_key, version, data):
    """Valid encodings with bytes overwritten and/or cut short reach deep into the parser."""
    framed = bytearray(encode_request(api_key, version, 3, "c",
                                      representative(load_request_schema(api_key, version))))
    frame = framed[4:]
    for _ in range(data.draw(st.integers(min_value=0, max_value=4))):
        position = data.draw(st.integers(min_value=8, max_value=len(frame) - 1))
        frame[position] = data.draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x01]))
    frame = frame[:data.draw(st.integers(min_value=8, max_value=len(frame)))]
    try:
        request = decode_request(bytes(frame), ADVERTISED_VERSIONS)
    except MalformedRequestError as exc:
        assert exc.correlation_id == 3
        return
    assert (request.api_key, request.api_version) == (api_key, version)


@settings(max_examples=200, deadline=None)
@given(pair=st.sampled_from(PAIRS), body=st.binary(max_size=200))
def test_random_response_bodies_never_crash(pair, body):
    api_key, version = pair
    try:
        decode_response(api_key, version, b"\x00\x00\x00\x01" + body)
    except MalformedResponseError:
        pass


def test_encode_checks_body_matches_api_and_version():
    from kio.schema.metadata.v1.request import MetadataRequest
    from kio.schema.metadata.v1.response import MetadataResponse
    with pytest.raises(EncodeError):
        encode_request(3, 2, 1, None, MetadataRequest(topics=None))   # v1 body as v2
    with pytest.raises(EncodeError):
        encode_request(0, 8, 1, None, MetadataRequest(topics=None))   # Metadata as Produce
    response = representative(MetadataResponse)
    with pytest.raises(EncodeError):
        encode_response(RequestHeader(3, 1, 1, None, 1), MetadataRequest(topics=None))
    with pytest.raises(EncodeError):
        encode_response(RequestHeader(3, 2, 1, None, 1), response)
    with pytest.raises(EncodeError):
        encode_request(3, 99, 1, None, MetadataRequest(topics=None))


def test_encode_errors_from_kio_become_encode_error():
    from kio.schema.heartbeat.v0.response import HeartbeatResponse
    with pytest.raises(EncodeError):
        encode_response(RequestHeader(12, 0, 1, None, 1), HeartbeatResponse(error_code=3))
    from kio.schema.metadata.v1.request import MetadataRequest, MetadataRequestTopic
    with pytest.raises(EncodeError):
        encode_request(3, 1, 1, None, MetadataRequest(
            topics=(MetadataRequestTopic(name="x" * 40000),)))


def test_flexible_requests_use_header_v2_for_the_client_side():
    from kio.schema.api_versions.v3.request import ApiVersionsRequest
    body = ApiVersionsRequest(client_software_name="pylog", client_software_version="0.1")
    framed = encode_request(18, 3, 21, "me", body)
    assert framed[4:16] == struct.pack(">hhih", 18, 3, 21, 2) + b"me"
    assert framed[16:17] == b"\x00"                      # empty tagged fields of header v2


# ---- ApiVersions ----------------------------------------------------------------------------

RANGES = {ApiKey.PRODUCE: VersionRange(3, 8), ApiKey.FETCH: VersionRange(4, 11),
          ApiKey.API_VERSIONS: VersionRange(0, 2)}


def test_fallback_bytes_are_exact():
    expected = (
        b"\x00\x00\x00\x1c"              # size 28
        b"\x00\x00\x00\x2a"              # correlation id 42, response header v0
        b"\x00\x23"                      # error 35 UNSUPPORTED_VERSION
        b"\x00\x00\x00\x03"              # INT32 array count
        b"\x00\x00\x00\x03\x00\x08"      # Produce 3-8
        b"\x00\x01\x00\x04\x00\x0b"      # Fetch 4-11
        b"\x00\x12\x00\x00\x00\x02"      # ApiVersions 0-2
    )                                    # no throttle_time_ms, no tagged fields
    assert api_versions_fallback_response(42, RANGES) == expected


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fallback_is_accepted_by_kafka_python_parsers():
    pytest.importorskip("kafka.protocol.api_message", reason="needs kafka-python >= 3")
    framed = api_versions_fallback_response(42, ADVERTISED_VERSIONS)
    from kafka.protocol.old.api_versions import ApiVersionsResponse_v0
    old = ApiVersionsResponse_v0.decode(framed[8:])
    assert old.error_code == 35
    assert (18, 0, 2) in [tuple(entry) for entry in old.api_keys]
    # kafka-python 3 decodes a v3/v4 answer as v0 when the error is set (what it does live).
    from kafka.protocol.metadata import ApiVersionsResponse
    for asked in (3, 4):
        new = ApiVersionsResponse.decode(framed, version=asked, header=True, framed=True)
        assert new.error_code == 35
        versions = {e.api_key: (e.min_version, e.max_version) for e in new.api_keys}
        assert versions[18] == (0, 2) and versions[1] == (4, 11)


@pytest.mark.parametrize("asked", [3, 4])
def test_client_side_decodes_the_fallback_as_v0(asked):
    correlation_id, body = decode_response(18, asked, strip_size(
        api_versions_fallback_response(5, RANGES)))
    assert correlation_id == 5 and body.error_code == ErrorCode.UNSUPPORTED_VERSION
    assert [(e.api_key, e.min_version, e.max_version) for e in body.api_keys] == \
        [(0, 3, 8), (1, 4, 11), (18, 0, 2)]


@pytest.mark.parametrize("version", [0, 1, 2])
def test_api_versions_response_body(version):
    body = api_versions_response(version, RANGES, throttle_time_ms=25)
    framed = encode_response(RequestHeader(18, version, 1, None, 1), body)
    _, decoded = decode_response(18, version, strip_size(framed))
    assert decoded.error_code == ErrorCode.NONE
    assert [(e.api_key, e.min_version, e.max_version) for e in decoded.api_keys] == \
        [(0, 3, 8), (1, 4, 11), (18, 0, 2)]
    if version >= 1:
        assert decoded.throttle_time == datetime.timedelta(milliseconds=25)
        assert framed[-4:] == b"\x00\x00\x00\x19"         # throttle is the last field


def test_broker_flow_for_librdkafka_api_versions_v3():
    """ApiVersions v3 with header v2 and a compact body: UnsupportedVersionError, then the
    fallback answer the client downgrades from."""
    frame = (struct.pack(">hhi", 18, 3, 77) + b"\x00\x07rdkafka\x00"
             + b"\x0alibrdkafka\x062.0.2\x00")
    with pytest.raises(UnsupportedVersionError) as info:
        decode_request(frame, ADVERTISED_VERSIONS)
    assert info.value.api_key == ApiKey.API_VERSIONS
    answer = api_versions_fallback_response(info.value.correlation_id, ADVERTISED_VERSIONS)
    assert answer[4:8] == struct.pack(">i", 77)
