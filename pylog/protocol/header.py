"""Request and response headers, and which header version each (api key, version) uses.

Request header versions (Kafka's RequestHeader.json):
  v0  api_key INT16, api_version INT16, correlation_id INT32
  v1  v0 + client_id NULLABLE_STRING (INT16 length, -1 = null)
  v2  v1 + tagged fields. client_id stays an INT16-length string even here: Kafka special-
      cases it so that a broker can read any request's client id before knowing whether the
      version is flexible (which is how an ApiVersions v3+ request can be answered at all).
Response header versions: v0 = correlation_id INT32; v1 = v0 + tagged fields.

A flexible body has request header v2 and response header v1, a classic body v1 and v0,
except that ApiVersions responses always use response header v0 (a client that sent too new
a version must still be able to read the error). Only ControlledShutdown v0, which pylog does
not serve, uses request header v0. The mapping is read from kio's schemas
(``__header_schema__``), which encode these rules.

Headers are parsed by hand: they are small, and the client id must be read with the INT16
length whatever the version.
"""
from __future__ import annotations

import functools
import struct
from typing import NamedTuple

from kio.index import UnknownAPIKey, UnknownEntity, load_request_schema, load_response_schema

from pylog.protocol.errors import MalformedRequestError, MalformedResponseError

_REQUEST_PREFIX = struct.Struct(">hhi")   # api_key, api_version, correlation_id
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
REQUEST_PREFIX_BYTES = _REQUEST_PREFIX.size
_UVARINT_MAX_BYTES = 5                    # Kafka's unsigned varint (a 32-bit value)


class RequestHeader(NamedTuple):
    """A parsed request header; ``header_version`` is 0, 1 or 2."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    header_version: int


@functools.cache
def request_header_version(api_key: int, api_version: int) -> int:
    """Request header version (1 or 2) of a request kio knows; LookupError otherwise."""
    try:
        schema = load_request_schema(api_key, api_version)
    except (UnknownAPIKey, UnknownEntity) as exc:
        raise LookupError(f"no schema for api key {api_key} version {api_version}") from exc
    return int(schema.__header_schema__.__version__)


@functools.cache
def response_header_version(api_key: int, api_version: int) -> int:
    """Response header version (0 or 1) of a response kio knows; LookupError otherwise."""
    try:
        schema = load_response_schema(api_key, api_version)
    except (UnknownAPIKey, UnknownEntity) as exc:
        raise LookupError(f"no schema for api key {api_key} version {api_version}") from exc
    return int(schema.__header_schema__.__version__)


def read_request_prefix(frame: memoryview | bytes) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id): the first 8 bytes, common to all versions."""
    if len(frame) < REQUEST_PREFIX_BYTES:
        raise MalformedRequestError(
            f"frame of {len(frame)} bytes is shorter than a request header")
    api_key, api_version, correlation_id = _REQUEST_PREFIX.unpack_from(frame, 0)
    return api_key, api_version, correlation_id


def parse_request_header(frame: memoryview | bytes, header_version: int
                         ) -> tuple[RequestHeader, int]:
    """Parse a request header; returns it and the offset where the body starts.

    Raises MalformedRequestError for a truncated header, a bad client id length or encoding,
    or malformed tagged fields.
    """
    if header_version not in (0, 1, 2):
        raise ValueError(f"request header version must be 0, 1 or 2, not {header_version}")
    return parse_request_header_after_prefix(frame, header_version,
                                             *read_request_prefix(frame))


def parse_request_header_after_prefix(frame: memoryview | bytes, header_version: int,
                                      api_key: int, api_version: int, correlation_id: int
                                      ) -> tuple[RequestHeader, int]:
    """``parse_request_header`` for a caller that has read the prefix already."""
    position = REQUEST_PREFIX_BYTES
    client_id = None
    try:
        if header_version >= 1:
            client_id, position = _read_nullable_string(frame, position)
            if header_version == 2:
                position = _skip_tagged_fields(frame, position)
    except _Truncated as exc:
        raise MalformedRequestError(
            f"request header v{header_version}: {exc}", api_key=api_key,
            api_version=api_version, correlation_id=correlation_id) from None
    header = RequestHeader(api_key, api_version, correlation_id, client_id, header_version)
    return header, position


def encode_request_header(api_key: int, api_version: int, correlation_id: int,
                          client_id: str | None, header_version: int) -> bytes:
    """The bytes of a request header (v0, v1 or v2 with no tagged fields)."""
    if header_version not in (0, 1, 2):
        raise ValueError(f"request header version must be 0, 1 or 2, not {header_version}")
    out = _REQUEST_PREFIX.pack(api_key, api_version, correlation_id)
    if header_version >= 1:
        if client_id is None:
            out += _INT16.pack(-1)
        else:
            encoded = client_id.encode()
            out += _INT16.pack(len(encoded)) + encoded
    if header_version == 2:
        out += b"\x00"
    return out


def encode_response_header(correlation_id: int, header_version: int) -> bytes:
    """The bytes of a response header (v0, or v1 with no tagged fields)."""
    if header_version == 0:
        return _INT32.pack(correlation_id)
    if header_version == 1:
        return _INT32.pack(correlation_id) + b"\x00"
    raise ValueError(f"response header version must be 0 or 1, not {header_version}")


def parse_response_header(frame: memoryview | bytes, header_version: int) -> tuple[int, int]:
    """(correlation_id, body offset) of a response; MalformedResponseError if truncated."""
    if header_version not in (0, 1):
        raise ValueError(f"response header version must be 0 or 1, not {header_version}")
    try:
        if len(frame) < _INT32.size:
            raise _Truncated("frame shorter than a correlation id")
        (correlation_id,) = _INT32.unpack_from(frame, 0)
        position = _INT32.size
        if header_version == 1:
            position = _skip_tagged_fields(frame, position)
    except _Truncated as exc:
        raise MalformedResponseError(f"response header v{header_version}: {exc}") from None
    return correlation_id, position


# ---- primitives -----------------------------------------------------------------------------


class _Truncated(Exception):
    """Internal: a field does not fit in the frame or is invalid."""


def _read_nullable_string(frame: memoryview | bytes, position: int) -> tuple[str | None, int]:
    if len(frame) < position + _INT16.size:
        raise _Truncated("client id length is cut off")
    (length,) = _INT16.unpack_from(frame, position)
    position += _INT16.size
    if length == -1:
        return None, position
    if length < 0:
        raise _Truncated(f"negative client id length {length}")
    end = position + length
    if end > len(frame):
        raise _Truncated(f"client id of {length} bytes is cut off")
    try:
        text = str(frame[position:end], "utf-8")
    except UnicodeDecodeError:
        raise _Truncated("client id is not UTF-8") from None
    return text, end


def _read_uvarint(frame: memoryview | bytes, position: int) -> tuple[int, int]:
    value = 0
    for index in range(_UVARINT_MAX_BYTES):
        if position >= len(frame):
            raise _Truncated("varint is cut off")
        byte = frame[position]
        position += 1
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position
    raise _Truncated("varint longer than 5 bytes")


def _skip_tagged_fields(frame: memoryview | bytes, position: int) -> int:
    """Skip a tagged-field section (count, then tag, size, bytes per field)."""
    count, position = _read_uvarint(frame, position)
    for _ in range(count):
        _tag, position = _read_uvarint(frame, position)
        size, position = _read_uvarint(frame, position)
        position += size
        if position > len(frame):
            raise _Truncated("tagged field is cut off")
    return position
