"""The Fetch response (v4-v11), framed by hand so that log bytes are never copied.

Every other message goes through kio. A Fetch response carries record batches straight from
the log (memoryviews of mmapped segments, or buffers read from the file), so it is written as
a list of buffers for ``transport.writelines`` / ``socket.sendmsg``: small bytearrays for the
size prefix, header and per-partition fields, and between them the caller's record buffers
themselves.

Layout (non-flexible, response header v0):
  size INT32, correlation_id INT32,
  throttle_time_ms INT32, (v7+) error_code INT16, session_id INT32,
  responses [topic STRING,
             partitions [partition_index INT32, error_code INT16, high_watermark INT64,
                          last_stable_offset INT64, (v5+) log_start_offset INT64,
                          aborted_transactions NULLABLE [producer_id INT64, first_offset INT64],
                          (v11+) preferred_read_replica INT32,
                          records INT32 length + bytes]]

``records`` is never null: no records is length 0 (librdkafka fails to parse -1 and
kafka-python crashes on it, KAFKA-PROTOCOL.md section 4). ``aborted_transactions=None`` is
written as a null array, which every client accepts. The tests check every version against
kio's FetchResponse reader and writer.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from pylog.protocol.errors import EncodeError, ErrorCode
from pylog.protocol.versions import VersionRange

Buffer = Union[bytes, bytearray, memoryview]

FETCH_RESPONSE_VERSIONS = VersionRange(4, 11)

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_NULL_ARRAY = -1
_ABORTED_TRANSACTION = struct.Struct(">qq")
# correlation_id, throttle_time_ms
_TOP_V4 = struct.Struct(">ii")
# correlation_id, throttle_time_ms, error_code, session_id
_TOP_V7 = struct.Struct(">iihi")
# partition_index, error_code, high_watermark, last_stable_offset, [v5+ log_start_offset]
_PARTITION_HEAD_V4 = struct.Struct(">ihqq")
_PARTITION_HEAD_V5 = struct.Struct(">ihqqq")
# Fast path without aborted transactions: head, null array, [v11 preferred replica], length.
_PARTITION_V4 = struct.Struct(">ihqqii")
_PARTITION_V5 = struct.Struct(">ihqqqii")
_PARTITION_V11 = struct.Struct(">ihqqqiii")


@dataclass(slots=True)
class FetchPartitionResponse:
    """One partition of a Fetch response; ``records`` are the log's bytes, in order, as
    separate buffers (written as they are, never copied or joined)."""

    partition_index: int
    error_code: int = ErrorCode.NONE
    high_watermark: int = -1
    last_stable_offset: int = -1
    log_start_offset: int = -1
    records: Sequence[Buffer] = ()
    aborted_transactions: Sequence[tuple[int, int]] | None = None
    preferred_read_replica: int = -1


@dataclass(slots=True)
class FetchTopicResponse:
    topic: str
    partitions: Sequence[FetchPartitionResponse]


def encode_fetch_response(correlation_id: int, api_version: int,
                          responses: Sequence[FetchTopicResponse], *,
                          throttle_time_ms: int = 0, error_code: int = ErrorCode.NONE,
                          session_id: int = 0) -> list[Buffer]:
    """A whole Fetch response frame (size prefix included) as a list of buffers.

    The record buffers of each partition appear in the list as the same objects the caller
    passed (empty ones are left out), so they must stay unchanged until written. ``error_code``
    and ``session_id`` are written from v7 on; ``preferred_read_replica`` from v11 on (-1
    unless reads are redirected to a follower, KIP-392).
    """
    if api_version not in FETCH_RESPONSE_VERSIONS:
        raise EncodeError(f"hand-framed Fetch response supports versions "
                          f"{FETCH_RESPONSE_VERSIONS.min}-{FETCH_RESPONSE_VERSIONS.max}, "
                          f"not {api_version}")
    try:
        parts = _encode(correlation_id, api_version, responses, throttle_time_ms,
                        error_code, session_id)
    except (struct.error, OverflowError) as exc:
        raise EncodeError(f"Fetch response field out of range: {exc}") from exc
    return parts


def _part_size(part) -> int:
    """Wire size of one records part: a buffer's bytes, or the length of a file region
    (pylog.broker.file_region, sent with sendfile), which is sized but not a buffer."""
    return part.nbytes if isinstance(part, memoryview) else len(part)


def _encode(correlation_id: int, api_version: int, responses: Sequence[FetchTopicResponse],
            throttle_time_ms: int, error_code: int, session_id: int) -> list[Buffer]:
    parts: list[Buffer] = []
    size_prefix_and_top = bytearray(_INT32.size)
    if api_version >= 7:
        size_prefix_and_top += _TOP_V7.pack(correlation_id, throttle_time_ms, error_code,
                                            session_id)
    else:
        size_prefix_and_top += _TOP_V4.pack(correlation_id, throttle_time_ms)
    size_prefix_and_top += _INT32.pack(len(responses))
    out = size_prefix_and_top
    total = 0
    for topic in responses:
        name = topic.topic.encode()
        out += _INT16.pack(len(name))
        out += name
        out += _INT32.pack(len(topic.partitions))
        for partition in topic.partitions:
            records_size = 0
            for part in partition.records:
                records_size += _part_size(part)
            _write_partition(out, api_version, partition, records_size)
            if records_size:
                parts.append(out)
                total += len(out)
                parts.extend(part for part in partition.records if _part_size(part))
                total += records_size
                out = bytearray()
    if out:
        parts.append(out)
        total += len(out)
    payload_size = total - _INT32.size
    if payload_size > 0x7FFFFFFF:
        raise EncodeError(f"Fetch response of {payload_size} bytes does not fit an INT32 size")
    _INT32.pack_into(size_prefix_and_top, 0, payload_size)
    return parts


def _write_partition(out: bytearray, api_version: int, p: FetchPartitionResponse,
                     records_size: int) -> None:
    if p.aborted_transactions is None:
        if api_version >= 11:
            out += _PARTITION_V11.pack(p.partition_index, p.error_code, p.high_watermark,
                                       p.last_stable_offset, p.log_start_offset, _NULL_ARRAY,
                                       p.preferred_read_replica, records_size)
        elif api_version >= 5:
            out += _PARTITION_V5.pack(p.partition_index, p.error_code, p.high_watermark,
                                      p.last_stable_offset, p.log_start_offset, _NULL_ARRAY,
                                      records_size)
        else:
            out += _PARTITION_V4.pack(p.partition_index, p.error_code, p.high_watermark,
                                      p.last_stable_offset, _NULL_ARRAY, records_size)
        return
    if api_version >= 5:
        out += _PARTITION_HEAD_V5.pack(p.partition_index, p.error_code, p.high_watermark,
                                       p.last_stable_offset, p.log_start_offset)
    else:
        out += _PARTITION_HEAD_V4.pack(p.partition_index, p.error_code, p.high_watermark,
                                       p.last_stable_offset)
    out += _INT32.pack(len(p.aborted_transactions))
    for producer_id, first_offset in p.aborted_transactions:
        out += _ABORTED_TRANSACTION.pack(producer_id, first_offset)
    if api_version >= 11:
        out += _INT32.pack(p.preferred_read_replica)
    out += _INT32.pack(records_size)
