"""Requests and responses as kio objects, frames as bytes: the sans-IO codec.

Broker side: ``decode_request(frame, supported)`` turns one frame (from ``FrameDecoder``) into
a ``Request`` whose ``body`` is kio's generated dataclass for that api and version;
``encode_response(header, body)`` gives the size-prefixed response bytes. Client side:
``encode_request`` and ``decode_response``. Nothing here touches a socket.

kio (generated from Kafka's own message schemas, native reader) encodes and decodes every body,
so there is no hand-written codec per api and version. The Fetch response, which must carry
log bytes without copying them, is framed by hand in ``fetch_response``.

Checks in ``decode_request``, in order: an api key the broker does not
serve is UnknownApiKeyError, a version outside its range UnsupportedVersionError (both close
the connection, except ApiVersions, which gets ``api_versions_fallback_response``), then the
header and body must parse exactly to the end of the frame or it is MalformedRequestError.
"""
from __future__ import annotations

import datetime
import functools
import io
import struct
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Callable, NamedTuple

from kio.index import UnknownAPIKey, UnknownEntity, load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from pylog.protocol.errors import (
    EncodeError,
    ErrorCode,
    MalformedRequestError,
    MalformedResponseError,
    UnknownApiKeyError,
    UnsupportedVersionError,
)
from pylog.protocol.header import (
    RequestHeader,
    encode_request_header,
    encode_response_header,
    parse_request_header_after_prefix,
    parse_response_header,
    read_request_prefix,
    request_header_version,
    response_header_version,
)
from pylog.protocol.legacy import LEGACY_VERSIONS, THROTTLE_FIELD_BYTES
from pylog.protocol.versions import ApiKey, VersionRange

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_SIZE_PLACEHOLDER = b"\x00\x00\x00\x00"

Reader = Callable[[Any, int], tuple[Any, int]]
Writer = Callable[[Any, Any], None]


class Request(NamedTuple):
    """A decoded request: its header and its kio body (e.g. ``kio.schema.fetch.v11.request.
    FetchRequest``). The body holds copies, never views of the frame."""

    header: RequestHeader
    body: Any

    @property
    def api_key(self) -> int:
        return self.header.api_key

    @property
    def api_version(self) -> int:
        return self.header.api_version

    @property
    def correlation_id(self) -> int:
        return self.header.correlation_id


class _ApiCodec(NamedTuple):
    """Everything needed to move one (api key, version) on the wire, resolved once."""

    request_schema: type
    response_schema: type
    request_header_version: int
    response_header_version: int
    read_request: Reader
    read_response: Reader
    write_request: Writer
    write_response: Writer


@functools.cache
def _codec(api_key: int, api_version: int) -> _ApiCodec:
    """The kio schemas of (api_key, api_version); LookupError if kio has none.

    A version kio lacks but ``legacy`` maps onto one it has (DeleteTopics v0) gets that
    version's codec, with the response's leading throttle field dropped on write and supplied
    (as 0) on read.
    """
    legacy = LEGACY_VERSIONS.get((api_key, api_version))
    if legacy is not None:
        borrowed = _codec(api_key, legacy.schema_version)
        if not legacy.response_without_leading_throttle:
            return borrowed
        return borrowed._replace(
            read_response=_reader_supplying_throttle(borrowed.read_response),
            write_response=_writer_dropping_throttle(borrowed.write_response))
    try:
        request_schema = load_request_schema(api_key, api_version)
        response_schema = load_response_schema(api_key, api_version)
    except (UnknownAPIKey, UnknownEntity) as exc:
        raise LookupError(f"kio has no schema for api key {api_key} version {api_version}") \
            from exc
    return _ApiCodec(
        request_schema=request_schema,
        response_schema=response_schema,
        request_header_version=request_header_version(api_key, api_version),
        response_header_version=response_header_version(api_key, api_version),
        read_request=entity_reader(request_schema),
        read_response=entity_reader(response_schema),
        write_request=entity_writer(request_schema),
        write_response=entity_writer(response_schema),
    )


def _writer_dropping_throttle(write: Writer) -> Writer:
    """A kio writer that leaves out the leading INT32 throttle_time_ms of what ``write``
    writes (legacy.py)."""
    def write_without_throttle(out: Any, body: Any) -> None:
        scratch = io.BytesIO()
        write(scratch, body)
        out.write(scratch.getbuffer()[THROTTLE_FIELD_BYTES:])
    return write_without_throttle


def _reader_supplying_throttle(read: Reader) -> Reader:
    """A kio reader for a body that lacks the leading throttle_time_ms ``read`` expects: it
    reads a copy with a zero throttle put in front (legacy.py)."""
    def read_with_throttle(view: Any, position: int) -> tuple[Any, int]:
        padded = memoryview(bytes(THROTTLE_FIELD_BYTES) + bytes(view[position:]))
        body, consumed = read(padded, 0)
        return body, consumed - THROTTLE_FIELD_BYTES
    return read_with_throttle


def request_schema(api_key: int, api_version: int) -> type:
    """The kio request class that carries (api_key, api_version), legacy versions included;
    LookupError if there is none."""
    return _codec(api_key, api_version).request_schema


def response_schema(api_key: int, api_version: int) -> type:
    """The kio response class to build for (api_key, api_version), legacy versions included
    (for DeleteTopics v0, v1's class: its throttle field is not sent); LookupError if none."""
    return _codec(api_key, api_version).response_schema


def _readonly(frame: bytes | bytearray | memoryview) -> memoryview:
    # kio's native reader refuses writable buffers; a read-only view costs no copy.
    view = memoryview(frame)
    return view if view.readonly else view.toreadonly()


# ---- broker side ----------------------------------------------------------------------------


def decode_request(frame: bytes | bytearray | memoryview,
                   supported: Mapping[int, VersionRange]) -> Request:
    """Decode one request frame (without its size prefix).

    ``supported`` maps each served api key to its version range (``versions.advertised``).
    Raises UnknownApiKeyError, UnsupportedVersionError or MalformedRequestError, each carrying
    the api key, version and correlation id it could read.
    """
    view = _readonly(frame)
    api_key, api_version, correlation_id = read_request_prefix(view)
    served = supported.get(api_key)
    if served is None:
        raise UnknownApiKeyError(f"api key {api_key} is not served", api_key=api_key,
                                 api_version=api_version, correlation_id=correlation_id)
    if not served.min <= api_version <= served.max:
        raise UnsupportedVersionError(
            f"api key {api_key} version {api_version} is outside {served.min}-{served.max}",
            api_key=api_key, api_version=api_version, correlation_id=correlation_id)
    try:
        codec = _codec(api_key, api_version)
    except LookupError as exc:
        raise UnsupportedVersionError(str(exc), api_key=api_key, api_version=api_version,
                                      correlation_id=correlation_id) from exc
    header, position = parse_request_header_after_prefix(
        view, codec.request_header_version, api_key, api_version, correlation_id)
    try:
        body, consumed = codec.read_request(view, position)
    except Exception as exc:  # kio raises DecodeError, ValueError, ... on hostile bytes
        raise MalformedRequestError(
            f"api key {api_key} v{api_version} body does not parse: {exc!r}", api_key=api_key,
            api_version=api_version, correlation_id=correlation_id) from exc
    left_over = len(view) - position - consumed
    if left_over:
        raise MalformedRequestError(
            f"api key {api_key} v{api_version}: {left_over} bytes after the body",
            api_key=api_key, api_version=api_version, correlation_id=correlation_id)
    return Request(header, body)


def encode_response(header: RequestHeader, body: Any) -> bytes:
    """The size-prefixed response to the request with ``header``; ``body`` is the kio
    response entity of the same api key and version."""
    codec = _checked_codec(header.api_key, header.api_version, body, "response_schema")
    header_bytes = encode_response_header(header.correlation_id, codec.response_header_version)
    return _encode_frame(header_bytes, codec.write_response, body)


def api_versions_response(api_version: int, ranges: Mapping[int, VersionRange], *,
                          error_code: ErrorCode = ErrorCode.NONE,
                          throttle_time_ms: int = 0) -> Any:
    """The kio ApiVersions response body listing ``ranges`` (in api key order)."""
    try:
        codec = _codec(ApiKey.API_VERSIONS, api_version)
    except LookupError as exc:
        raise UnsupportedVersionError(str(exc), api_key=ApiKey.API_VERSIONS,
                                      api_version=api_version) from exc
    schema = codec.response_schema
    field_types = {f.name: f.type for f in fields(schema)}
    (entry_type, _ellipsis) = typing.get_args(field_types["api_keys"])  # tuple[ApiVersion, ...]
    values: dict[str, Any] = {
        "error_code": error_code,
        "api_keys": tuple(entry_type(api_key=int(key), min_version=r.min, max_version=r.max)
                          for key, r in sorted(ranges.items())),
    }
    if "throttle_time" in field_types:
        values["throttle_time"] = datetime.timedelta(milliseconds=throttle_time_ms)
    return schema(**values)


def api_versions_fallback_response(correlation_id: int,
                                   ranges: Mapping[int, VersionRange]) -> bytes:
    """The answer to an ApiVersions request of an unsupported version (KIP-511).

    Response header v0 and a v0 body whatever version was asked: error 35
    UNSUPPORTED_VERSION and the supported ranges, no throttle field. librdkafka then retries
    with v0, kafka-python with min(its max, our max). Keep the connection open afterwards.
    """
    body = api_versions_response(0, ranges, error_code=ErrorCode.UNSUPPORTED_VERSION)
    return _encode_frame(encode_response_header(correlation_id, 0),
                         _codec(ApiKey.API_VERSIONS, 0).write_response, body)


# ---- client side ----------------------------------------------------------------------------


def encode_request(api_key: int, api_version: int, correlation_id: int,
                   client_id: str | None, body: Any) -> bytes:
    """A size-prefixed request; ``body`` is the kio request entity of that api and version."""
    codec = _checked_codec(api_key, api_version, body, "request_schema")
    header_bytes = encode_request_header(api_key, api_version, correlation_id, client_id,
                                         codec.request_header_version)
    return _encode_frame(header_bytes, codec.write_request, body)


def decode_response(api_key: int, api_version: int,
                    frame: bytes | bytearray | memoryview) -> tuple[int, Any]:
    """(correlation_id, kio body) of a response frame (without its size prefix) to a request
    of (api_key, api_version).

    An ApiVersions response carrying error 35 is decoded with the v0 layout, whatever version
    was asked, as every client does (KIP-511). Raises MalformedResponseError.
    """
    try:
        codec = _codec(api_key, api_version)
    except LookupError as exc:
        raise UnsupportedVersionError(str(exc), api_key=api_key, api_version=api_version) \
            from exc
    view = _readonly(frame)
    correlation_id, position = parse_response_header(view, codec.response_header_version)
    if (api_key == ApiKey.API_VERSIONS and len(view) >= position + _INT16.size
            and _INT16.unpack_from(view, position)[0] == ErrorCode.UNSUPPORTED_VERSION):
        codec = _codec(ApiKey.API_VERSIONS, 0)
    try:
        body, consumed = codec.read_response(view, position)
    except Exception as exc:  # kio raises DecodeError, ValueError, ... on hostile bytes
        raise MalformedResponseError(
            f"api key {api_key} v{api_version} response body does not parse: {exc!r}") from exc
    left_over = len(view) - position - consumed
    if left_over:
        raise MalformedResponseError(
            f"api key {api_key} v{api_version} response: {left_over} bytes after the body")
    return correlation_id, body


# ---- internals ------------------------------------------------------------------------------


def _checked_codec(api_key: int, api_version: int, body: Any, role: str) -> _ApiCodec:
    try:
        codec = _codec(api_key, api_version)
    except LookupError as exc:
        raise EncodeError(str(exc)) from exc
    expected = getattr(codec, role)
    if type(body) is not expected:
        raise EncodeError(f"api key {api_key} v{api_version} needs a {expected.__module__}."
                          f"{expected.__qualname__}, not {type(body).__qualname__}")
    return codec


def _encode_frame(header_bytes: bytes, write_body: Writer, body: Any) -> bytes:
    """Size prefix + header + kio-encoded body, as one bytes object."""
    out = io.BytesIO()
    out.write(_SIZE_PLACEHOLDER)
    out.write(header_bytes)
    try:
        write_body(out, body)
    except Exception as exc:  # kio raises struct.error, OutOfBoundValue, TypeError, ...
        raise EncodeError(f"kio cannot encode {type(body).__qualname__}: {exc!r}") from exc
    size = out.tell() - _INT32.size
    if size > 0x7FFFFFFF:
        raise EncodeError(f"message of {size} bytes does not fit an INT32 size")
    out.seek(0)
    out.write(_INT32.pack(size))
    return out.getvalue()

