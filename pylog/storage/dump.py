"""Read segment files batch by batch for `pylog dump-log` (Kafka's DumpLogSegments).

Theory of operation: a segment is mapped read-only and walked with the C validator with the
CRC check off, so that a batch whose bytes are structurally sound but whose CRC is wrong is
still shown (``crc_valid: false``) and the walk goes on past it. The walk stops for good where
the structure itself breaks (a length that runs past the file, bad magic, a torn tail): from
there on nothing can be trusted, and the byte position of that batch is reported. Records are
decoded only when asked.

Nothing here writes: it is safe to run against the data directory of a live broker.
"""
from __future__ import annotations

import base64
import mmap
import os
import re
import struct
from dataclasses import dataclass, field, replace
from typing import Iterator

from pylog import core
from pylog.records import Record, compression_name, decode_batch

_BATCH_LENGTH = struct.Struct(">i")


@dataclass
class DumpedBatch:
    """One batch as found in a file, with whether its CRC holds."""
    info: core.BatchInfo
    crc_valid: bool
    records: list[Record] | None = None
    records_error: str | None = None


@dataclass
class DumpProblem:
    """Where a file stops being a valid log: the batch position and what is wrong there."""
    position: int
    reason: str
    fatal: bool  # True: nothing after position was read


@dataclass
class DumpedFile:
    path: str
    size: int
    batches: list[DumpedBatch] = field(default_factory=list)
    problems: list[DumpProblem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems and all(b.crc_valid and b.records_error is None
                                         for b in self.batches)


def segment_files(path: str) -> list[str]:
    """A .log file as given, or every .log file of a partition directory in offset order."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".log"))
        return [os.path.join(path, n) for n in names]
    return [path]


def walk_file(path: str, *, with_records: bool = False) -> DumpedFile:
    """Walk every batch of one segment file. Raises OSError if it cannot be read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        dumped = DumpedFile(path=path, size=size)
        if size == 0:
            return dumped
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                for item in _walk(view, with_records):
                    if isinstance(item, DumpProblem):
                        dumped.problems.append(item)
                    else:
                        dumped.batches.append(item)
            finally:
                view.release()
    return dumped


def _walk(view: memoryview, with_records: bool) -> Iterator[DumpedBatch | DumpProblem]:
    position = 0
    size = len(view)
    while position < size:
        batches, error = core.scan_batches(view[position:], check_crc=False)
        for info in batches:
            info = _shifted(info, position)
            yield _dump_batch(view, info, with_records)
        if error is None:
            return
        bad_at = position + error.batch_position
        skip_to = _next_batch_position(view, bad_at, error)
        yield DumpProblem(bad_at, _describe(error, position), fatal=skip_to is None)
        if skip_to is None:
            return
        position = skip_to


def _dump_batch(view: memoryview, info: core.BatchInfo, with_records: bool) -> DumpedBatch:
    batch = view[info.position:info.position + info.size]
    crc_valid = core.crc32c(batch[21:]) == info.crc
    dumped = DumpedBatch(info=info, crc_valid=crc_valid)
    if with_records:
        try:
            dumped.records = decode_batch(batch, verify_crc=False)
        except core.CoreError as exc:
            dumped.records_error = str(exc)
    return dumped


def _shifted(info: core.BatchInfo, by: int) -> core.BatchInfo:
    return info if by == 0 else replace(info, position=info.position + by)


def _next_batch_position(view: memoryview, bad_at: int, error: core.CoreError) -> int | None:
    """Past a batch whose frame is sound but whose content is not; None if the frame is broken."""
    if isinstance(error, core.TruncatedBatchError) or error.status in (
            core.lib.PL_E_LENGTH, core.lib.PL_E_MAGIC):
        return None
    if bad_at + 12 > len(view):
        return None
    (batch_length,) = _BATCH_LENGTH.unpack_from(view, bad_at + 8)
    end = bad_at + 12 + batch_length
    if batch_length < core.lib.PL_BATCH_HEADER_SIZE - 12 or end > len(view):
        return None
    return end


_BATCH_PREFIX = re.compile(r"^batch \d+ at byte \d+: ")


def _describe(error: core.CoreError, base: int) -> str:
    """One line: what is wrong and where, with positions counted from the file's start."""
    kind = core.STATUS_NAMES.get(error.status, "error")
    detail = _BATCH_PREFIX.sub("", error.message or "")
    if detail.startswith(kind):
        detail = detail[len(kind):].lstrip(": ")
    return f"{kind} in the batch at byte {base + error.batch_position}" + (
        f": {detail}" if detail else "")


# ---- presentation --------------------------------------------------------------------------


def _text(data: bytes | None) -> str:
    if data is None:
        return "null"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + data.hex()
    return text if text.isprintable() else repr(text)


def _json_bytes(data: bytes | None) -> tuple[str | None, str | None]:
    """(value, encoding): UTF-8 text where the bytes are UTF-8, base64 otherwise."""
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def batch_json(batch: DumpedBatch) -> dict:
    info = batch.info
    out = {
        "base_offset": info.base_offset,
        "last_offset": info.last_offset,
        "record_count": info.record_count,
        "size_bytes": info.size,
        "position": info.position,
        "crc": f"0x{info.crc:08x}",
        "crc_valid": batch.crc_valid,
        "leader_epoch": info.partition_leader_epoch,
        "first_timestamp": info.first_timestamp,
        "max_timestamp": info.max_timestamp,
        "timestamp_type": "LogAppendTime" if info.timestamp_type else "CreateTime",
        "compression": compression_name(info.compression),
        "producer_id": info.producer_id,
        "producer_epoch": info.producer_epoch,
        "base_sequence": info.base_sequence,
        "transactional": info.is_transactional,
        "control": info.is_control,
    }
    if batch.records is not None:
        out["records"] = [record_json(r) for r in batch.records]
    if batch.records_error is not None:
        out["records_error"] = batch.records_error
    return out


def record_json(record: Record) -> dict:
    key, key_encoding = _json_bytes(record.key)
    value, value_encoding = _json_bytes(record.value)
    headers = []
    for name, raw in record.headers:
        hvalue, hencoding = _json_bytes(raw)
        headers.append({"key": name, "value": hvalue, "value_encoding": hencoding})
    return {"offset": record.offset, "timestamp": record.timestamp, "key": key,
            "key_encoding": key_encoding, "value": value, "value_encoding": value_encoding,
            "headers": headers}


TABLE_HEADER = ("position", "base_offset", "last_offset", "count", "size", "epoch", "codec",
                "crc", "max_timestamp", "producer_id")


def batch_row(batch: DumpedBatch) -> tuple:
    info = batch.info
    return (info.position, info.base_offset, info.last_offset, info.record_count, info.size,
            info.partition_leader_epoch, compression_name(info.compression),
            "ok" if batch.crc_valid else "BAD", info.max_timestamp, info.producer_id)


def record_line(record: Record) -> str:
    headers = ", ".join(f"{name}={_text(value)}" for name, value in record.headers)
    return (f"    | offset: {record.offset} timestamp: {record.timestamp} "
            f"key: {_text(record.key)} value: {_text(record.value)}"
            + (f" headers: [{headers}]" if headers else ""))
