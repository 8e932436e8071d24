"""The thin Python face of the C core (pylog._core).

Bytes go in, Python objects come out, C status codes become exceptions. Nothing returned here
points into C memory: results are copied out before the call returns (argon2-cffi's rule).

Theory of operation: every C function returns a status and fills a caller-owned ``pl_error``;
``check`` turns a non-zero status into the matching ``CoreError`` subclass carrying the
position details, so callers catch by kind (``CorruptBatchError`` vs ``CoreIOError``) and
report where the bad bytes are.
"""
from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pylog._core import ffi, lib

# ---- errors -------------------------------------------------------------------------------


class CoreError(Exception):
    """A C-core call failed. ``status`` is the pl_status code; positions are byte offsets."""

    def __init__(self, status: int, message: str, *, batch_index: int = -1,
                 batch_position: int = -1, error_position: int = -1, record_index: int = -1,
                 sys_errno: int = 0):
        super().__init__(message)
        self.status = status
        self.message = message
        self.batch_index = batch_index
        self.batch_position = batch_position
        self.error_position = error_position
        self.record_index = record_index
        self.sys_errno = sys_errno


class CorruptBatchError(CoreError):
    """Bytes that are not a valid RecordBatch v2 (bad length, magic, CRC, record or count)."""


class TruncatedBatchError(CorruptBatchError):
    """The bytes end inside a batch: a torn tail in a log, a short read on the wire."""


class CapacityError(CoreError):
    """An output array passed to C was too small (an internal sizing bug if it escapes)."""


class CoreIOError(CoreError, OSError):
    """A system call inside the C core failed; ``sys_errno`` holds errno."""


class OffsetError(CoreError):
    """Offsets go backwards or leave a segment's 32-bit relative range."""


class SegmentFullError(CoreError):
    """A segment file or one of its indexes is full: the log must roll."""


class CoreArgumentError(CoreError, ValueError):
    """An argument was out of the range the C function documents."""


_STATUS_CLASS = {
    lib.PL_E_TRUNCATED: TruncatedBatchError,
    lib.PL_E_LENGTH: CorruptBatchError,
    lib.PL_E_MAGIC: CorruptBatchError,
    lib.PL_E_CRC: CorruptBatchError,
    lib.PL_E_RECORD: CorruptBatchError,
    lib.PL_E_COUNT: CorruptBatchError,
    lib.PL_E_CAPACITY: CapacityError,
    lib.PL_E_IO: CoreIOError,
    lib.PL_E_ARG: CoreArgumentError,
    lib.PL_E_OFFSET: OffsetError,
    lib.PL_E_FULL: SegmentFullError,
}

STATUS_NAMES = {
    lib.PL_OK: "ok", lib.PL_E_TRUNCATED: "truncated", lib.PL_E_LENGTH: "bad length",
    lib.PL_E_MAGIC: "bad magic", lib.PL_E_CRC: "bad crc", lib.PL_E_RECORD: "bad record",
    lib.PL_E_COUNT: "bad record count", lib.PL_E_CAPACITY: "capacity", lib.PL_E_IO: "i/o error",
    lib.PL_E_ARG: "bad argument", lib.PL_E_OFFSET: "bad offset", lib.PL_E_FULL: "segment full",
}


def new_error():
    """A fresh, zeroed ``pl_error`` to pass to a C call."""
    return ffi.new("pl_error *")


def error_from(status: int, err) -> CoreError:
    """Build the exception for a failed call from its status and filled ``pl_error``."""
    cls = _STATUS_CLASS.get(status, CoreError)
    message = ffi.string(err.message).decode("utf-8", "replace") if err != ffi.NULL else ""
    if not message:
        message = STATUS_NAMES.get(status, f"status {status}")
    if cls is CoreIOError:
        import os
        message = f"{message}: {os.strerror(err.sys_errno)}" if err.sys_errno else message
    return cls(status, message, batch_index=err.batch_index, batch_position=err.batch_position,
               error_position=err.error_position, record_index=err.record_index,
               sys_errno=err.sys_errno)


def check(status: int, err) -> None:
    """Raise the matching CoreError unless ``status`` is PL_OK."""
    if status != lib.PL_OK:
        raise error_from(status, err)


# ---- CRC-32C ------------------------------------------------------------------------------

CRC_IMPLEMENTATIONS = {0: "portable", 1: "sse4.2", 2: "armv8"}


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of a bytes-like object, optionally extending a previous ``crc``."""
    return lib.pl_crc32c(crc, ffi.from_buffer(data), len(data))


def crc32c_portable(data, crc: int = 0) -> int:
    """CRC-32C through the portable slicing-by-8 path, whatever the CPU offers."""
    return lib.pl_crc32c_portable(crc, ffi.from_buffer(data), len(data))


def crc32c_implementation() -> str:
    """Which CRC-32C path the run-time detection chose: portable, sse4.2 or armv8."""
    return CRC_IMPLEMENTATIONS.get(lib.pl_crc32c_impl(), "unknown")


def force_portable_crc32c(on: bool) -> None:
    """Force the portable CRC path (tests), or go back to run-time detection."""
    lib.pl_crc32c_force_portable(1 if on else 0)


# ---- RecordBatch v2 -----------------------------------------------------------------------
#
# Theory of operation. The broker's hot path handles a Produce payload as one opaque buffer:
# ``validate_batches`` (one C call for the common case) returns a ``BatchList`` that keeps the
# C ``pl_batch_info[]`` array, which the storage layer passes straight back to C
# (``pl_segment_append``); ``BatchInfo`` objects are only built when someone indexes the list.
# Record-level helpers (``decode_records``, ``RecordWriter``) reuse per-thread C scratch arrays:
# every result is copied out into Python objects before the call returns, so reuse is safe as
# long as a thread does one call at a time, which a function call guarantees.

BATCH_HEADER_SIZE = lib.PL_BATCH_HEADER_SIZE
BATCH_OVERHEAD = lib.PL_BATCH_OVERHEAD
ATTR_COMPRESSION_MASK = lib.PL_ATTR_COMPRESSION_MASK
ATTR_TIMESTAMP_TYPE = lib.PL_ATTR_TIMESTAMP_TYPE
ATTR_TRANSACTIONAL = lib.PL_ATTR_TRANSACTIONAL
ATTR_CONTROL = lib.PL_ATTR_CONTROL

# The smallest record: length, attributes, timestampDelta, offsetDelta, key length, value
# length and header count, one byte each. Bounds the arrays a records section can need.
_MIN_RECORD_SIZE = 7
_MIN_HEADER_SIZE = 2

# pl_record_out / pl_header_out are read in bulk with struct (native order, no padding): far
# cheaper than one cdata attribute access per field. Checked against cffi's layout at import.
_RECORD_OUT = struct.Struct("=qiiqiiqq")
_RECORD_FIELDS = ("timestamp_delta", "offset_delta", "key_len", "key_pos", "value_len",
                  "header_count", "value_pos", "header_start")
_HEADER_OUT = struct.Struct("=qqii")
_HEADER_FIELDS = ("key_pos", "value_pos", "key_len", "value_len")


def _check_layout(ctype: str, layout: struct.Struct, fields: tuple) -> None:
    offsets, at = [], 0
    for code in layout.format.lstrip("="):
        offsets.append(at)
        at += struct.calcsize("=" + code)
    if (layout.size != ffi.sizeof(ctype)
            or offsets != [ffi.offsetof(ctype, name) for name in fields]):
        raise ImportError(f"{ctype} layout differs from the struct format {layout.format}")


_check_layout("pl_record_out", _RECORD_OUT, _RECORD_FIELDS)
_check_layout("pl_header_out", _HEADER_OUT, _HEADER_FIELDS)


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """One validated batch, copied out of ``pl_batch_info``. ``position`` is its first byte in
    the buffer that was validated, ``size`` its whole length (batchLength + 12)."""

    position: int
    base_offset: int
    size: int
    partition_leader_epoch: int
    crc: int
    attributes: int
    producer_epoch: int
    last_offset_delta: int
    base_sequence: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int

    @classmethod
    def from_c(cls, c) -> "BatchInfo":
        return cls(c.position, c.base_offset, c.size, c.partition_leader_epoch, c.crc,
                   c.attributes, c.producer_epoch, c.last_offset_delta, c.base_sequence,
                   c.record_count, c.first_timestamp, c.max_timestamp, c.producer_id)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def end(self) -> int:
        """The position just past this batch."""
        return self.position + self.size

    @property
    def compression(self) -> int:
        """The codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd."""
        return self.attributes & ATTR_COMPRESSION_MASK

    @property
    def timestamp_type(self) -> int:
        """0 CreateTime, 1 LogAppendTime."""
        return 1 if self.attributes & ATTR_TIMESTAMP_TYPE else 0

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)


class BatchList(Sequence):
    """The batches of one validated buffer, in order.

    Invariants: ``c_infos`` is a cffi ``pl_batch_info[]`` whose first ``count`` entries are
    filled (it may be longer); positions are counted from the start of the validated buffer.
    """

    __slots__ = ("c_infos", "count")

    def __init__(self, c_infos, count: int):
        self.c_infos = c_infos
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError("batch index out of range")
        return BatchInfo.from_c(self.c_infos[index])

    def __repr__(self) -> str:
        return f"BatchList({self.count} batches, {self.end} bytes)"

    @property
    def end(self) -> int:
        """The position just past the last batch (0 when empty): the bytes these batches cover
        when the buffer was validated from its start."""
        if self.count == 0:
            return 0
        last = self.c_infos[self.count - 1]
        return last.position + last.size

    @property
    def next_offset(self) -> int:
        """The offset after the last batch (-1 when empty)."""
        if self.count == 0:
            return -1
        last = self.c_infos[self.count - 1]
        return last.base_offset + last.last_offset_delta + 1

    @property
    def record_count(self) -> int:
        """Records in all batches, as their headers say."""
        infos = self.c_infos
        return sum(infos[i].record_count for i in range(self.count))


class _Scratch(threading.local):
    """Per-thread C scratch: an error block, out-parameters and growable decode arrays."""

    def __init__(self):
        self.err = ffi.new("pl_error *")
        self.size = ffi.new("size_t *")
        self.int64 = ffi.new("int64_t *")
        self.records = ffi.new("pl_record_out[]", 256)
        self.records_cap = 256
        self.headers = ffi.new("pl_header_out[]", 256)
        self.headers_cap = 256

    def ensure_records(self, n: int) -> None:
        if n > self.records_cap:
            cap = max(n, 2 * self.records_cap)
            self.records = ffi.new("pl_record_out[]", cap)
            self.records_cap = cap

    def ensure_headers(self, n: int) -> None:
        if n > self.headers_cap:
            cap = max(n, 2 * self.headers_cap)
            self.headers = ffi.new("pl_header_out[]", cap)
            self.headers_cap = cap


_scratch = _Scratch()
_EMPTY_INFOS = ffi.new("pl_batch_info[]", 0)


_BATCH_INFO_ARRAY = ffi.typeof("pl_batch_info[]")
_BATCH_INFO_SIZE = ffi.sizeof("pl_batch_info")
_STRICT, _NO_CRC, _NO_RECORDS = (lib.PL_VALIDATE_STRICT, lib.PL_VALIDATE_NO_CRC,
                                 lib.PL_VALIDATE_NO_RECORDS)


def _validate(buf, flags: int):
    """Validate all of buf; returns (c_infos, count, status). Starts with room for one batch
    per 8 KiB (at least 16) and, on PL_E_CAPACITY, doubles the array and resumes."""
    length = len(buf)
    if length == 0:
        return _EMPTY_INFOS, 0, lib.PL_OK
    s = _scratch
    n_out, err = s.size, s.err
    data = buf if type(buf) is bytes else ffi.from_buffer(buf)
    cap = length >> 13
    if cap < 16:
        cap = 16
    infos = ffi.new(_BATCH_INFO_ARRAY, cap)
    n_out[0] = 0
    while True:
        status = lib.pl_batches_resume(data, length, flags, infos, cap, n_out, err)
        if status != lib.PL_E_CAPACITY:
            return infos, n_out[0], status
        bigger = ffi.new(_BATCH_INFO_ARRAY, 2 * cap)
        ffi.memmove(bigger, infos, cap * _BATCH_INFO_SIZE)
        infos, cap = bigger, 2 * cap


def validate_batches(buf, *, strict: bool = False, check_crc: bool = True,
                     check_records: bool = True) -> BatchList:
    """Validate a buffer of concatenated RecordBatch v2 (the whole buffer must be batches).

    ``strict`` is the Produce rule (recordCount == lastOffsetDelta + 1, offset deltas
    0..n-1); the lenient default accepts compacted batches. Records of compressed batches are
    not walked here (see ``pylog.records.validate_for_append``). Raises CorruptBatchError
    (TruncatedBatchError for a torn tail) with the batch and byte positions.
    """
    flags = ((_STRICT if strict else 0) | (0 if check_crc else _NO_CRC)
             | (0 if check_records else _NO_RECORDS))
    infos, count, status = _validate(buf, flags)
    if status != lib.PL_OK:
        raise error_from(status, _scratch.err)
    return BatchList(infos, count)


def scan_batches(buf, *, strict: bool = False, check_crc: bool = True,
                 check_records: bool = True) -> tuple[BatchList, CoreError | None]:
    """Like validate_batches but never raises for bad bytes: the whole, valid batches before
    the first bad one, and the error (None if every byte was good). For recovery, dump tools
    and reading a fetch response that may end inside a batch."""
    flags = ((_STRICT if strict else 0) | (0 if check_crc else _NO_CRC)
             | (0 if check_records else _NO_RECORDS))
    infos, count, status = _validate(buf, flags)
    error = None if status == lib.PL_OK else error_from(status, _scratch.err)
    return BatchList(infos, count), error


def peek_batch(buf) -> BatchInfo:
    """The header of the batch at the start of ``buf`` (at least 61 bytes), checked for a sane
    length and magic only: no CRC, the body need not be present."""
    s = _scratch
    info = ffi.new("pl_batch_info *")
    data = buf if type(buf) is bytes else ffi.from_buffer(buf)
    check(lib.pl_batch_peek(data, len(buf), info, s.err), s.err)
    return BatchInfo.from_c(info)


def fit_batches(buf) -> tuple[int, int, int]:
    """(end, count, next_size) of the whole batches at the start of ``buf``, from their length
    fields only (see pl_batches_fit): ``end`` is where the last whole batch ends, ``next_size``
    the size of the batch starting there (0 if none, -1 if its length is not in buf)."""
    s = _scratch
    end, n = ffi.new("size_t *"), ffi.new("size_t *")
    data = buf if type(buf) is bytes else ffi.from_buffer(buf)
    check(lib.pl_batches_fit(data, len(buf), end, n, s.int64, s.err), s.err)
    return end[0], n[0], s.int64[0]


def stamp_batches(buf_writable, base_offset: int, leader_epoch: int) -> int:
    """Write baseOffset (from ``base_offset`` on) and partitionLeaderEpoch into every batch
    of a writable buffer of validated batches, in place; returns the next offset. Neither
    field is under the CRC. Nothing is written if the buffer is not whole batches."""
    s = _scratch
    data = ffi.from_buffer(buf_writable, require_writable=True)
    check(lib.pl_batches_stamp(data, len(buf_writable), base_offset, leader_epoch,
                               s.int64, s.err), s.err)
    return s.int64[0]


def validate_records(section, record_count: int, last_offset_delta: int,
                     strict: bool = False) -> None:
    """Check a records section (an uncompressed batch's bytes after its header, or a
    compressed batch's payload once decompressed) against its batch's header fields.
    Positions in the error are offsets into ``section``."""
    s = _scratch
    data = section if type(section) is bytes else ffi.from_buffer(section)
    flags = lib.PL_VALIDATE_STRICT if strict else 0
    check(lib.pl_records_validate(data, len(section), record_count, last_offset_delta, flags,
                                  s.err), s.err)


def decode_records(section, record_count: int) -> list[tuple]:
    """Decode a records section into a list of
    ``(offset_delta, timestamp_delta, key, value, headers)``; key and value are bytes or
    None, headers a tuple of ``(key bytes, value bytes or None)``. All bytes are copies."""
    s = _scratch
    length = len(section)
    if record_count < 0:
        raise CoreArgumentError(lib.PL_E_ARG, f"record count {record_count} is negative")
    # a count beyond what the bytes can hold fails in C (records run out) before capacity
    s.ensure_records(min(record_count, length // _MIN_RECORD_SIZE))
    data = section if type(section) is bytes else bytes(section)
    status = lib.pl_records_decode(data, length, record_count, s.records, s.records_cap,
                                   s.headers, s.headers_cap, s.size, s.err)
    if status == lib.PL_E_CAPACITY and s.size[0] > s.headers_cap:
        # more headers than the scratch holds: C counted them all, so one retry suffices
        s.ensure_headers(s.size[0])
        status = lib.pl_records_decode(data, length, record_count, s.records, s.records_cap,
                                       s.headers, s.headers_cap, s.size, s.err)
    if status != lib.PL_OK:
        raise error_from(status, s.err)
    rows = _RECORD_OUT.iter_unpack(ffi.buffer(s.records, record_count * _RECORD_OUT.size))
    header_buf = ffi.buffer(s.headers, s.size[0] * _HEADER_OUT.size)
    out = []
    append = out.append
    for ts_delta, off_delta, key_len, key_pos, value_len, n_headers, value_pos, first in rows:
        key = None if key_len < 0 else data[key_pos:key_pos + key_len]
        value = None if value_len < 0 else data[value_pos:value_pos + value_len]
        headers = _decode_headers(data, header_buf, first, n_headers) if n_headers else ()
        append((off_delta, ts_delta, key, value, headers))
    return out


def _decode_headers(data: bytes, header_buf, first: int, count: int) -> tuple:
    headers = []
    size = _HEADER_OUT.size
    for i in range(first, first + count):
        key_pos, value_pos, key_len, value_len = _HEADER_OUT.unpack_from(header_buf, i * size)
        value = None if value_len < 0 else data[value_pos:value_pos + value_len]
        headers.append((data[key_pos:key_pos + key_len], value))
    return tuple(headers)


# Buffers the C writer fills completely before anyone reads them: no need to zero them first
# (zeroing a fresh megabyte costs about as much as writing the records into it).
_new_uninitialized = ffi.new_allocator(should_clear_after_alloc=False)


class RecordWriter:
    """A records section under construction, written record by record by ``pl_record_write``.

    Invariants: ``_data[0:reserve]`` is left for the caller (a batch header goes there) and
    is only ever written by ``finish``; ``_data[reserve:position]`` holds whole, encoded
    records; ``_capacity`` is the length of ``_data`` (C memory, not zeroed: every byte read
    out was written first).
    """

    __slots__ = ("reserve", "_data", "_capacity", "_pos", "_needed")

    def __init__(self, reserve: int = BATCH_HEADER_SIZE, initial_capacity: int = 16384):
        self.reserve = reserve
        self._capacity = max(initial_capacity, reserve + 64)
        self._data = _new_uninitialized("uint8_t[]", self._capacity)
        self._pos = ffi.new("size_t *", reserve)
        self._needed = ffi.new("size_t *")

    @property
    def position(self) -> int:
        """Where the next record goes: reserve + bytes of records written."""
        return self._pos[0]

    def truncate(self, position: int) -> None:
        """Drop the records written past ``position`` (a value ``position`` had before)."""
        if not self.reserve <= position <= self._pos[0]:
            raise ValueError(f"position {position} outside [{self.reserve}, {self._pos[0]}]")
        self._pos[0] = position

    def _grow(self, needed: int) -> None:
        capacity = max(2 * self._capacity, self._pos[0] + needed)
        bigger = _new_uninitialized("uint8_t[]", capacity)
        ffi.memmove(bigger, self._data, self._pos[0])
        self._data, self._capacity = bigger, capacity

    def write(self, offset_delta: int, timestamp_delta: int, key, value, headers=(),
              limit: int | None = None) -> int:
        """Append one record; returns the new position, or -1 (nothing written) when the
        record would take the position past ``limit``. ``key``/``value`` are bytes-like or
        None; ``headers`` a sequence of (str or bytes key, bytes-like or None value)."""
        if key is None:
            key_ptr, key_len = ffi.NULL, -1
        else:
            key_ptr, key_len = (key if type(key) is bytes else ffi.from_buffer(key)), len(key)
        if value is None:
            value_ptr, value_len = ffi.NULL, -1
        else:
            value_ptr = value if type(value) is bytes else ffi.from_buffer(value)
            value_len = len(value)
        if headers:
            c_headers, keepalive = _c_headers(headers)
            n_headers = len(headers)
        else:
            c_headers, keepalive, n_headers = ffi.NULL, None, 0
        if limit is None:
            limit = 1 << 62
        while True:
            cap = self._capacity
            if limit < cap:  # let C refuse what passes the limit (it wants pos <= cap)
                cap = max(limit, self._pos[0])
            status = lib.pl_record_write(self._data, cap, self._pos, offset_delta,
                                         timestamp_delta, key_ptr, key_len, value_ptr,
                                         value_len, c_headers, n_headers, self._needed)
            if status == lib.PL_OK:
                return self._pos[0]  # keepalive held the header bytes until here
            if status != lib.PL_E_CAPACITY:
                raise CoreArgumentError(status, "record out of range (negative offset delta, "
                                                "or a record larger than 2 GiB)")
            if self._pos[0] + self._needed[0] > limit:
                return -1
            self._grow(self._needed[0])

    def view(self):
        """The records written so far (a buffer over C memory: valid until the next write)."""
        return ffi.buffer(self._data + self.reserve, self._pos[0] - self.reserve)

    def finish(self, **header) -> bytes:
        """The records written so far as one uncompressed batch (``reserve`` must be 61): the
        header and CRC are written in front of them (see finish_batch for the fields)."""
        if self.reserve != BATCH_HEADER_SIZE:
            raise CoreArgumentError(lib.PL_E_ARG, "finish needs a 61-byte reserve")
        length = self._pos[0]
        _finish(self._data, length, **header)
        return ffi.buffer(self._data, length)[:]


def _c_headers(headers):
    c_headers = ffi.new("pl_header_in[]", len(headers))
    keepalive = []
    for i, (name, value) in enumerate(headers):
        if isinstance(name, str):
            name = name.encode("utf-8", "surrogateescape")
        h = c_headers[i]
        key_ptr = ffi.from_buffer(name)
        keepalive.append(key_ptr)
        h.key, h.key_len = key_ptr, len(name)
        if value is None:
            h.value, h.value_len = ffi.NULL, -1
        else:
            value_ptr = ffi.from_buffer(value)
            keepalive.append(value_ptr)
            h.value, h.value_len = value_ptr, len(value)
    return c_headers, keepalive


def finish_batch(batch_writable, length: int, **header) -> None:
    """Write the 61-byte header and CRC of the batch at ``batch_writable[0:length]``, whose
    records section is already at ``[61:length]``. Header fields (all required, keywords):
    base_offset, partition_leader_epoch, attributes, producer_id, producer_epoch,
    base_sequence, last_offset_delta, record_count, first_timestamp, max_timestamp."""
    if length > len(batch_writable):
        raise CoreArgumentError(lib.PL_E_ARG, "batch length past the buffer")
    _finish(ffi.from_buffer(batch_writable, require_writable=True), length, **header)


def _finish(data, length: int, *, base_offset: int, partition_leader_epoch: int,
            attributes: int, producer_id: int, producer_epoch: int, base_sequence: int,
            last_offset_delta: int, record_count: int, first_timestamp: int,
            max_timestamp: int) -> None:
    hdr = ffi.new("pl_batch_header *")
    hdr.base_offset = base_offset
    hdr.partition_leader_epoch = partition_leader_epoch
    hdr.attributes = attributes
    hdr.producer_epoch = producer_epoch
    hdr.last_offset_delta = last_offset_delta
    hdr.base_sequence = base_sequence
    hdr.record_count = record_count
    hdr.first_timestamp = first_timestamp
    hdr.max_timestamp = max_timestamp
    hdr.producer_id = producer_id
    status = lib.pl_batch_finish(data, length, hdr)
    if status != lib.PL_OK:
        raise CoreArgumentError(status, f"batch length {length} outside [61, 2^31 + 11]")


def write_record(writer: RecordWriter, offset_delta: int, timestamp_delta: int, key, value,
                 headers=(), limit: int | None = None) -> int:
    """Append one record to ``writer`` (see RecordWriter.write); returns its new position,
    or -1 when it would pass ``limit``."""
    return writer.write(offset_delta, timestamp_delta, key, value, headers, limit)
