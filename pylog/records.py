"""Records and RecordBatch v2 at the level of keys, values and headers.

The one record-level API the broker, the clients and the tools share. Bytes-level work is
in pylog.core (the C core) and compression in pylog.codecs; this module decides what a
record is (``Record``), what the Produce path accepts (``validate_for_append``), how batches
are read (``decode_batch``, ``iter_records``) and written (``BatchBuilder``).

Theory of operation (reading). A batch's records carry deltas: offset = baseOffset +
offsetDelta, timestamp = firstTimestamp + timestampDelta, except under LogAppendTime
(attributes bit 3), where every record's timestamp is the batch's maxTimestamp, as in
Kafka. Header keys are UTF-8 on the wire; they are decoded with errors="surrogateescape" so
any bytes round-trip (``BatchBuilder`` encodes str keys the same way).
"""
from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pylog import codecs
from pylog._core import lib
from pylog.core import (
    BATCH_HEADER_SIZE,
    BatchInfo,
    BatchList,
    CoreError,
    CorruptBatchError,
    RecordWriter,
    TruncatedBatchError,
    decode_records,
    finish_batch,
    scan_batches,
    validate_batches,
    validate_records,
)

DEFAULT_MAX_DECOMPRESSED = codecs.DEFAULT_MAX_DECOMPRESSED
DEFAULT_MAX_BATCH_BYTES = 1 << 20
_MAX_BATCH_SIZE = (1 << 31) - 1


class Compression(enum.IntEnum):
    """Kafka's batch codecs (attributes bits 0-2)."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4

    @property
    def lower_name(self) -> str:
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> "Compression":
        """The codec called ``name`` ("gzip", "ZSTD", ...); ValueError if none is."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown compression {name!r}") from None


def compression_name(codec: int) -> str:
    """The lowercase name of a codec id: "none", "gzip", "snappy", "lz4", "zstd"."""
    return codecs.codec_name(codec)


@dataclass(frozen=True, slots=True)
class Record:
    """One record as a reader sees it. ``headers`` keys are str (surrogateescape-decoded)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


# ---- Produce-path validation --------------------------------------------------------------

def validate_for_append(buf, *, strict: bool = True,
                        max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> BatchList:
    """Validate a Produce payload the way Kafka does before appending it: every batch
    whole, CRC right, header counts consistent (strict: recordCount == lastOffsetDelta + 1),
    and every record walked, compressed batches after decompression. Raises CorruptBatchError
    naming the batch (TruncatedBatchError for a batch cut short)."""
    batches = validate_batches(buf, strict=strict)
    infos = batches.c_infos
    for i in range(batches.count):
        info = infos[i]
        codec = info.attributes & lib.PL_ATTR_COMPRESSION_MASK
        if codec:
            _validate_compressed(buf, i, info, codec, strict, max_decompressed)
    return batches


def _validate_compressed(buf, index: int, info, codec: int, strict: bool,
                         max_decompressed: int) -> None:
    start = info.position + BATCH_HEADER_SIZE
    end = info.position + info.size
    try:
        section = codecs.decompress(codec, memoryview(buf)[start:end],
                                    max_size=max_decompressed)
        validate_records(section, info.record_count, info.last_offset_delta, strict)
    except CoreError as e:
        raise CorruptBatchError(
            e.status, f"batch {index} at byte {info.position}: {compression_name(codec)} "
                      f"records (positions after decompression): {e.message}",
            batch_index=index, batch_position=info.position, error_position=start,
            record_index=e.record_index) from e


# ---- reading --------------------------------------------------------------------------------

def _records_of(buf, info: BatchInfo, max_decompressed: int) -> list[Record]:
    start = info.position + BATCH_HEADER_SIZE
    section = memoryview(buf)[start:info.position + info.size]
    codec = info.compression
    if codec:
        section = codecs.decompress(codec, section, max_size=max_decompressed)
    try:
        rows = decode_records(section, info.record_count)
    except CoreError as e:
        where = "after decompression" if codec else "in the records section"
        raise type(e)(e.status, f"batch at byte {info.position}: {e.message} ({where})",
                      batch_position=info.position, error_position=e.error_position,
                      record_index=e.record_index) from e
    base = info.base_offset
    if info.timestamp_type:
        stamp = info.max_timestamp
        return [Record(base + od, stamp, k, v, _str_headers(h) if h else ())
                for od, _, k, v, h in rows]
    first = info.first_timestamp
    return [Record(base + od, first + td, k, v, _str_headers(h) if h else ())
            for od, td, k, v, h in rows]


def _str_headers(headers: tuple) -> tuple:
    return tuple((k.decode("utf-8", "surrogateescape"), v) for k, v in headers)


def decode_batch(batch_bytes, *, verify_crc: bool = True,
                 max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> list[Record]:
    """The records of exactly one batch, any codec. Compacted batches (fewer records than
    lastOffsetDelta + 1) are fine. CorruptBatchError for anything else than one valid batch."""
    batches = validate_batches(batch_bytes, check_crc=verify_crc, check_records=False)
    if len(batches) != 1:
        raise CorruptBatchError(lib.PL_E_LENGTH,
                                f"expected one batch, found {len(batches)}",
                                batch_index=1 if len(batches) > 1 else -1,
                                batch_position=batches.c_infos[0].size if batches else -1)
    return _records_of(batch_bytes, batches[0], max_decompressed)


def iter_records(buf, *, verify_crc: bool = True,
                 max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> Iterator[Record]:
    """The records of concatenated batches (a log segment, a fetch response), in order. A
    batch cut short at the end (a fetch response trimmed by max_bytes, a torn tail) ends the
    iteration quietly; any other damage raises CorruptBatchError after the records before it."""
    batches, error = scan_batches(buf, check_crc=verify_crc, check_records=False)
    for info in batches:
        yield from _records_of(buf, info, max_decompressed)
    if error is not None and not isinstance(error, TruncatedBatchError):
        raise error


# ---- writing --------------------------------------------------------------------------------

class BatchBuilder:
    """Builds one RecordBatch v2: records are encoded by C (pl_record_write) straight into a
    reused buffer, then compressed if asked, and the header and CRC written by C.

    Invariants: ``_count`` records are in ``_writer`` with offset deltas 0.._count-1;
    ``_first_timestamp`` is the first record's timestamp and ``_max_timestamp`` the largest
    (both None while empty); the records section is at most ``max_batch_bytes`` - 61 bytes,
    except when a single record alone is larger.
    """

    def __init__(self, compression: int = Compression.NONE, *, base_offset: int = 0,
                 partition_leader_epoch: int = -1, producer_id: int = -1,
                 producer_epoch: int = -1, base_sequence: int = -1,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES, timestamp_type: int = 0):
        self.compression = Compression(compression)
        if timestamp_type not in (0, 1):
            raise ValueError(f"timestamp_type {timestamp_type} is not 0 or 1")
        if not BATCH_HEADER_SIZE < max_batch_bytes <= _MAX_BATCH_SIZE:
            raise ValueError(f"max_batch_bytes {max_batch_bytes} outside (61, 2^31 - 1]")
        self.base_offset = base_offset
        self.partition_leader_epoch = partition_leader_epoch
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.max_batch_bytes = max_batch_bytes
        self.timestamp_type = timestamp_type
        self._writer = RecordWriter(BATCH_HEADER_SIZE, min(max_batch_bytes, 1 << 20))
        self._count = 0
        self._first_timestamp: int | None = None
        self._max_timestamp: int | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def size_estimate(self) -> int:
        """The batch's size if built now, uncompressed (an upper bound for compressed ones
        but for the few bytes a codec adds to incompressible data)."""
        return self._writer.position

    def append(self, value, key=None, headers: Sequence = (), timestamp: int | None = None
               ) -> bool:
        """Add a record; False (and nothing added) when it would take the batch past
        max_batch_bytes and the batch is not empty. ``value``/``key``: bytes-like or None;
        ``headers``: (str or bytes name, bytes or None) pairs; ``timestamp``: ms, default now."""
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        first = timestamp if self._first_timestamp is None else self._first_timestamp
        limit = self.max_batch_bytes if self._count else None  # a first record goes alone
        if self._writer.write(self._count, timestamp - first, key, value, headers, limit) < 0:
            return False
        self._count += 1
        self._first_timestamp = first
        if self._max_timestamp is None or timestamp > self._max_timestamp:
            self._max_timestamp = timestamp
        return True

    def build(self) -> bytes:
        """The finished batch. The builder keeps its records (``reset`` starts over)."""
        if not self._count:
            raise ValueError("a batch needs at least one record")
        header = dict(base_offset=self.base_offset,
                      partition_leader_epoch=self.partition_leader_epoch,
                      attributes=int(self.compression) | (self.timestamp_type << 3),
                      producer_id=self.producer_id, producer_epoch=self.producer_epoch,
                      base_sequence=self.base_sequence, last_offset_delta=self._count - 1,
                      record_count=self._count, first_timestamp=self._first_timestamp,
                      max_timestamp=self._max_timestamp)
        if self.compression == Compression.NONE:
            return self._writer.finish(**header)
        payload = codecs.compress(self.compression, self._writer.view())
        batch = bytearray(BATCH_HEADER_SIZE + len(payload))
        batch[BATCH_HEADER_SIZE:] = payload
        finish_batch(batch, len(batch), **header)
        return bytes(batch)

    def reset(self, base_offset: int | None = None, base_sequence: int | None = None) -> None:
        """Empty the builder (keeping its buffer) for the next batch."""
        self._writer.truncate(BATCH_HEADER_SIZE)
        self._count = 0
        self._first_timestamp = self._max_timestamp = None
        if base_offset is not None:
            self.base_offset = base_offset
        if base_sequence is not None:
            self.base_sequence = base_sequence


def build_batch(records: Iterable[tuple], **kw) -> bytes:
    """One batch of ``(key, value, headers, timestamp)`` tuples (timestamp None = now);
    keyword arguments go to BatchBuilder (``compression``, ``base_offset``, ...)."""
    kw.setdefault("max_batch_bytes", _MAX_BATCH_SIZE)
    compression = kw.pop("compression", Compression.NONE)
    builder = BatchBuilder(compression, **kw)
    for key, value, headers, timestamp in records:
        if not builder.append(value, key, headers or (), timestamp):
            raise ValueError(f"records exceed max_batch_bytes {builder.max_batch_bytes}")
    return builder.build()
