"""The thin Python face of the C core (pylog._core).

Bytes go in, Python objects come out, C status codes become exceptions. Nothing returned here
points into C memory: results are copied out before the call returns (argon2-cffi's rule).

Theory of operation: every C function returns a status and fills a caller-owned ``pl_error``;
``check`` turns a non-zero status into the matching ``CoreError`` subclass carrying the
position details, so callers catch by kind (``CorruptBatchError`` vs ``CoreIOError``) and
report where the bad bytes are.
"""
from __future__ import annotations

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
