"""Errors of the storage layer that are not C-core errors (those live in pylog.core).

Each maps onto one Kafka error code the broker answers with; the code is noted per class.
"""
from __future__ import annotations

__all__ = [
    "StorageError", "OffsetOutOfRangeError", "RecordTooLargeError", "InvalidAppendError",
    "StaleLeaderEpochError", "LogClosedError", "CorruptLogError", "InvalidRecordError",
]


class StorageError(Exception):
    """Base of the storage layer's own errors."""


class OffsetOutOfRangeError(StorageError):
    """An offset outside [log start offset, log end offset] (OFFSET_OUT_OF_RANGE, 1)."""

    def __init__(self, message: str, *, offset: int, log_start_offset: int,
                 log_end_offset: int):
        super().__init__(message)
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class RecordTooLargeError(StorageError):
    """A batch larger than message.max.bytes (MESSAGE_TOO_LARGE, 10)."""

    def __init__(self, message: str, *, batch_index: int, size: int, limit: int):
        super().__init__(message)
        self.batch_index = batch_index
        self.size = size
        self.limit = limit


class InvalidAppendError(StorageError, ValueError):
    """An append that cannot be taken as given: no batches, or a read-only buffer where the
    offsets must be stamped in place (a caller's bug rather than bad client data)."""


class InvalidRecordError(InvalidAppendError):
    """A record this log's config forbids (INVALID_RECORD, 87): a record without a key in a
    compacted log, which Kafka refuses ("Compacted topic cannot accept message without
    key"). ``batch_index`` / ``record_index`` locate it in the appended buffer."""

    def __init__(self, message: str, *, batch_index: int, record_index: int):
        super().__init__(message)
        self.batch_index = batch_index
        self.record_index = record_index


class StaleLeaderEpochError(StorageError):
    """A leader append with an epoch older than the newest one in the log
    (FENCED_LEADER_EPOCH, 74): a deposed leader must not write."""

    def __init__(self, message: str, *, epoch: int, latest_epoch: int):
        super().__init__(message)
        self.epoch = epoch
        self.latest_epoch = latest_epoch


class LogClosedError(StorageError):
    """The log was closed (or deleted) and takes no more calls."""


class CorruptLogError(StorageError):
    """The segment files of a partition contradict each other (overlapping offsets): nothing
    safe can be served from them without an operator looking."""
