"""The Produce request (v3-v8), parsed by hand so that records stay inside the receive buffer.

kio decodes a Produce request's records into an immutable ``bytes`` copy. The broker needs the
opposite: it validates each batch in C, then overwrites baseOffset and partitionLeaderEpoch *in
the bytes it received* (neither is covered by the CRC) and appends those bytes unchanged. So
this module walks the body itself and returns, for every partition, a memoryview of its records
inside the frame: writable when the frame is (``FrameDecoder`` hands out writable views), and
never a copy.

Layout (every version 3-8 is the same and non-flexible; request header v1):
  transactional_id NULLABLE_STRING, acks INT16, timeout_ms INT32,
  topic_data [name STRING, partition_data [index INT32, records NULLABLE_BYTES]]
STRING = INT16 length + UTF-8 (-1 is not allowed), NULLABLE_STRING: -1 = null,
NULLABLE_BYTES = INT32 length (-1 = null), ARRAY = INT32 count, where -1 reads as null (an
empty array), as kio reads it. Any other negative length or count, a length or count that runs
past the end of the frame, a string that is not UTF-8, or bytes left after the body raise
MalformedRequestError: the same frames kio refuses (the tests check both decoders agree).

Hostile counts cannot make the parser loop or allocate: every element of an array takes at
least a fixed number of bytes, so a count larger than the remaining bytes allow is refused
before the first element is read.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from pylog.protocol.errors import MalformedRequestError, UnsupportedVersionError
from pylog.protocol.header import (RequestHeader, parse_request_header_after_prefix,
                                   read_request_prefix)
from pylog.protocol.versions import ApiKey, VersionRange

#: The Produce versions this parser reads (all share one body layout).
PRODUCE_REQUEST_VERSIONS = VersionRange(3, 8)
_REQUEST_HEADER_VERSION = 1

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_ACKS_TIMEOUT = struct.Struct(">hi")
_INDEX_LENGTH = struct.Struct(">ii")
# Smallest encodings of one array element: a topic is a name length and a partition count; a
# partition is an index and a records length.
_MIN_TOPIC_BYTES = _INT16.size + _INT32.size
_MIN_PARTITION_BYTES = _INDEX_LENGTH.size
_NULL = -1


class ProducePartition(NamedTuple):
    """One partition's records: a view into the request frame (writable if the frame is), or
    None when the client sent null records."""

    index: int
    records: memoryview | None


class ProduceTopic(NamedTuple):
    name: str
    partitions: list[ProducePartition]


class ProduceRequestData(NamedTuple):
    """A parsed Produce request. ``topics`` keeps the order and duplicates of the request."""

    header: RequestHeader
    transactional_id: str | None
    acks: int
    timeout_ms: int
    topics: list[ProduceTopic]

    @property
    def api_key(self) -> int:
        return self.header.api_key

    @property
    def api_version(self) -> int:
        return self.header.api_version

    @property
    def correlation_id(self) -> int:
        return self.header.correlation_id


class _Malformed(Exception):
    """Internal: the body does not parse; turned into MalformedRequestError with the header."""


def parse_produce_request(frame: memoryview | bytes | bytearray) -> ProduceRequestData:
    """Parse a whole Produce request frame (header and body, without the size prefix).

    Raises UnsupportedVersionError for a version outside 3-8 and MalformedRequestError for a
    frame that is not exactly one well-formed request (both carry the api key, version and
    correlation id). ValueError if the frame is not a Produce request at all (a caller bug:
    dispatch on the api key first).
    """
    view = memoryview(frame)
    api_key, api_version, correlation_id = read_request_prefix(view)
    if api_key != ApiKey.PRODUCE:
        raise ValueError(f"api key {api_key} is not Produce")
    if api_version not in PRODUCE_REQUEST_VERSIONS:
        raise UnsupportedVersionError(
            f"Produce version {api_version} is outside {PRODUCE_REQUEST_VERSIONS.min}-"
            f"{PRODUCE_REQUEST_VERSIONS.max}", api_key=api_key, api_version=api_version,
            correlation_id=correlation_id)
    header, position = parse_request_header_after_prefix(
        view, _REQUEST_HEADER_VERSION, api_key, api_version, correlation_id)
    try:
        return _parse_body(view, position, header)
    except _Malformed as exc:
        raise MalformedRequestError(
            f"Produce v{api_version} body: {exc}", api_key=api_key, api_version=api_version,
            correlation_id=correlation_id) from None


def _parse_body(view: memoryview, position: int, header: RequestHeader) -> ProduceRequestData:
    end = len(view)
    transactional_id, position = _read_string(view, position, nullable=True)
    if position + _ACKS_TIMEOUT.size > end:
        raise _Malformed("acks/timeout_ms cut off")
    acks, timeout_ms = _ACKS_TIMEOUT.unpack_from(view, position)
    position += _ACKS_TIMEOUT.size
    topic_count, position = _read_count(view, position, _MIN_TOPIC_BYTES, "topic_data")
    topics = []
    for _ in range(topic_count):
        name, position = _read_string(view, position, nullable=False)
        partition_count, position = _read_count(view, position, _MIN_PARTITION_BYTES,
                                                "partition_data")
        partitions = []
        for _ in range(partition_count):
            if position + _INDEX_LENGTH.size > end:
                raise _Malformed("partition index/records length cut off")
            index, length = _INDEX_LENGTH.unpack_from(view, position)
            position += _INDEX_LENGTH.size
            if length == _NULL:
                partitions.append(ProducePartition(index, None))
                continue
            if length < 0:
                raise _Malformed(f"negative records length {length}")
            if position + length > end:
                raise _Malformed(f"records of {length} bytes run past the end of the frame")
            partitions.append(ProducePartition(index, view[position:position + length]))
            position += length
        topics.append(ProduceTopic(name, partitions))
    if position != end:
        raise _Malformed(f"{end - position} bytes after the body")
    return ProduceRequestData(header, transactional_id, acks, timeout_ms, topics)


def _read_count(view: memoryview, position: int, min_element_bytes: int,
                what: str) -> tuple[int, int]:
    if position + _INT32.size > len(view):
        raise _Malformed(f"{what} count cut off")
    (count,) = _INT32.unpack_from(view, position)
    position += _INT32.size
    if count == _NULL:
        return 0, position
    if count < 0:
        raise _Malformed(f"negative {what} count {count}")
    if count * min_element_bytes > len(view) - position:
        raise _Malformed(f"{what} count {count} does not fit the {len(view) - position} "
                         "bytes left")
    return count, position


def _read_string(view: memoryview, position: int, *, nullable: bool
                 ) -> tuple[str | None, int]:
    if position + _INT16.size > len(view):
        raise _Malformed("string length cut off")
    (length,) = _INT16.unpack_from(view, position)
    position += _INT16.size
    if length == _NULL and nullable:
        return None, position
    if length < 0:
        raise _Malformed(f"invalid string length {length}")
    end = position + length
    if end > len(view):
        raise _Malformed(f"string of {length} bytes runs past the end of the frame")
    try:
        return str(view[position:end], "utf-8"), end
    except UnicodeDecodeError:
        raise _Malformed("string is not UTF-8") from None
