"""One partition's log: a directory of segments, with roll, retention, truncation and recovery.

Layout (DESIGN §4): ``<data-dir>/<topic>-<partition>/`` holds ``<base offset, 20 digits>.log``
(+ ``.index``, ``.timeindex``) per segment and ``leader-epoch-checkpoint``. The segment with
the highest base offset is the *active* one: the only one appended to.

Theory of operation
-------------------
Offsets. The log end offset (LEO) is the active segment's next offset; the log start offset
is the first offset a reader may ask for (it only moves forward, through retention or
``delete_records_before``, or backwards only with ``truncate_fully_and_start_at``). Segments
below the log start offset are deleted whole, so a segment may begin before it.

Append. A leader append validates the batches deeply (``records.validate_for_append``,
strict: compressed records are decompressed and checked), refuses any batch over
message.max.bytes, stamps base offsets and the leader epoch into the caller's buffer (C, no
copy, neither field is under the CRC), rolls if the active segment is full or old, records a
new epoch in the epoch cache *before* the bytes land (so the cache is never behind the log),
then hands the bytes to the active segment. A follower append keeps the leader's offsets and
epochs and only checks that it continues this log exactly at the LEO.

Idempotent producers (producer_state.py). Before stamping, a leader append checks every
batch that carries a producer id against the partition's producer state (epoch, sequence);
a retry of one of a producer's last 5 batches writes nothing and answers their original
offsets. After the bytes landed the state takes the batches (follower appends unchecked).
The state is snapshotted at each roll and at close, rebuilt on open and after a truncation
from the newest snapshot plus the log after it, and trimmed when the log start moves.

Flush and the recovery point. Data below ``recovery_point`` is known to be on disk (fsynced).
``flush`` fsyncs the epoch checkpoint if a truncation rewrote it, then the segments between
the recovery point and the target, then moves the recovery point. A segment is flushed when it is rolled (asynchronously when a flush requester
is set, see below) and everything at ``close``. On open after a crash only the segments from
the one holding the recovery point onwards are scanned (``Segment.open(recover_from=...)``):
the C scan stops at the first torn or corrupt batch; the file is cut there, every later
segment is deleted (its offsets would no longer follow on), and exactly what was cut is
logged on the "pylog.storage" logger. After a clean shutdown nothing is scanned.

Flush policy. After each append, if flush.messages is set and LEO - recovery point reached
it, the log asks for a flush up to its new LEO and returns the request's future in
``AppendResult.durable``. With a ``flush_requester`` (the LogManager's Flusher) the fsync runs
on the Flusher's thread and the future completes when it returned; without one (a standalone
log, tests) the flush runs inline and the future is already done. flush.ms is the Flusher's
business (it polls ``flush_due``).

Threads. Every method except ``flush`` must be called from one owner thread (the broker's
event loop). ``flush`` may run on another thread (the Flusher) at the same time as appends,
reads, rolls and truncations. ``_lock`` guards what they share: the list of segments (changed
only by the owner thread, under the lock; read by ``flush`` under the lock), the recovery
point and the truncation counter. The fsyncs themselves run outside ``_lock``: a Segment's
own lock keeps its files alive while it is fsynced (Segment.flush is a no-op once the owner
closed or deleted it), so appends never wait for the disk; the owner thread waits at most for
one segment's fsync, when it trims or closes that very segment.

The log cleaner (cleaner.py) is the one other thread that changes the segment list: under
``_lock`` it replaces a run of non-active segments by their cleaned copy
(``replace_segments``), always assigning new lists, never editing them in place. So the
owner thread may read the list without the lock where it only needs the active segment or
any one consistent list (``read`` takes both lists under the lock once), and decides and
removes segments (retention, truncation) under the lock. A replaced segment stays open until
``close_retired_segments`` (the cleaner calls it file.delete.delay.ms later), so a read that
took it just before the swap still finds its files open. The cleaner reads segments only
under ``segments_held()`` or through descriptors of its own.
"""
from __future__ import annotations

import bisect
import logging
import os
import re
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from pylog import core, records
from pylog.core import lib
from pylog.storage.cleaner import finish_interrupted_cleaning, refuse_keyless_records
from pylog.storage.config import LogConfig
from pylog.storage.epoch_cache import LeaderEpochCache
from pylog.storage.errors import (CorruptLogError, InvalidAppendError, LogClosedError,
                                  OffsetOutOfRangeError, RecordTooLargeError,
                                  StaleLeaderEpochError)
from pylog.storage.producer_state import AppendPlan, ProducerStateManager
from pylog.storage.segment import Segment

__all__ = ["PartitionLog", "AppendResult", "ReadResult", "FlushRequester"]

_default_logger = logging.getLogger("pylog.storage")

# Files a crashed operation may leave behind; never part of a live log.
STRAY_SUFFIXES = (".tmp", ".deleted", ".cleaned", ".swap")
_SEGMENT_FILE = re.compile(r"(\d{20})\.(log|index|timeindex)")
# Largest last-offset distance from a segment's base: relative offsets are 32-bit in the
# indexes, and Kafka keeps them to a signed int.
_MAX_RELATIVE_OFFSET = 2**31 - 1

FlushRequester = Callable[["PartitionLog", int], Future]
"""``(log, up_to_offset) -> Future`` that completes (with the log's recovery point) once
``log.flush(up_to_offset)`` has run on some other thread."""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class AppendResult:
    """What an append did. ``durable`` is set when the flush policy asked for an fsync of this
    append: a future that completes (result: the recovery point) once the data is on disk;
    a broker acknowledging under ``fsync=always`` waits for it."""
    first_offset: int
    last_offset: int
    batches: core.BatchList
    record_count: int
    size: int
    max_timestamp: int
    log_append_time: int
    log_start_offset: int
    durable: Future | None = None
    duplicate: bool = False
    """True when nothing was written: the batches repeat ones an idempotent producer
    already appended, whose original offsets these are (record_count and size are 0)."""

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


@dataclass(frozen=True)
class ReadResult:
    """Whole batches read from one segment. Empty reads have ``offset_first_batch`` -1,
    ``data`` b"", no segment, position -1 and length 0. ``segment``/``position``/``length``
    locate the bytes in ``segment.log_path`` for a sendfile path."""
    offset_first_batch: int
    data: bytes | None
    segment: Segment | None
    position: int
    length: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int

    @property
    def empty(self) -> bool:
        return self.length == 0


class PartitionLog:
    """The log of one partition replica. Create with ``PartitionLog.open``."""

    def __init__(self, directory: str, config: LogConfig, *, segments: list[Segment],
                 epoch_cache: LeaderEpochCache, log_start_offset: int, recovery_point: int,
                 recovery_reports: list, clock: Callable[[], int],
                 logger: logging.Logger, flush_requester: FlushRequester | None):
        self.directory = directory
        self.config = config
        self.logger = logger
        self._clock = clock
        self._flush_requester = flush_requester
        # Invariant: sorted by base offset, never empty; segments[i].next_offset <=
        # segments[i+1].base_offset; the last one is the active segment. Changed only under
        # _lock, by the owner thread or by the cleaner (which assigns new lists, never
        # edits them: see the module doc); _bases mirrors the base offsets for bisect.
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        # Invariant: segments[0].base_offset <= log_start_offset <= log end offset.
        self._log_start_offset = log_start_offset
        # Invariant: log_start_offset <= high_watermark <= log end offset.
        self._high_watermark = log_start_offset
        # Invariant: every offset below it is fsynced; <= log end offset. Under _lock.
        self._recovery_point = recovery_point
        # Bumped (under _lock) by every truncation, so a flush that raced one does not move
        # the recovery point over bytes it never fsynced.
        self._truncations = 0
        self._epoch_cache = epoch_cache
        # Idempotent producers' state as of the log end offset (producer_state.py); built by
        # open() (snapshot + replay), kept in step by appends, truncation and retention.
        self._producer_state = ProducerStateManager(
            directory, expiration_ms=config.producer_id_expiration_ms, clock=clock,
            logger=logger)
        # Wall-clock ms of the first append to the active segment (or of the open, if it
        # had data then); None while it is empty. segment.ms counts from here.
        self._active_since_ms = clock() if segments[-1].size > 0 else None
        # time.monotonic() of the last finished flush (flush.ms, read by the Flusher).
        self._last_flush_time = time.monotonic()
        self.recovery_reports = recovery_reports
        self._closed = False
        self._lock = threading.Lock()
        # Segments the log cleaner replaced, with the time.monotonic() of the swap: out of
        # the list and their files unlinked, but still open for a read that took them just
        # before; closed by close_retired_segments (or close). Under _lock.
        self._retired: list[tuple[float, Segment]] = []

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str, config: LogConfig, *, recovery_point: int = 0,
             log_start_offset: int = 0, clean_shutdown: bool = False,
             logger: logging.Logger | None = None, clock: Callable[[], int] | None = None,
             flush_requester: FlushRequester | None = None) -> "PartitionLog":
        """Open (creating if needed) the log in ``directory``.

        ``recovery_point``: offset below which the data was flushed (from the recovery-point
        checkpoint); segments from the one holding it onwards are scanned, unless
        ``clean_shutdown``. ``log_start_offset``: from the log-start-offset checkpoint.
        ``clock``: wall-clock milliseconds, for segment.ms (tests inject one).
        """
        logger = logger or _default_logger
        clock = clock or _wall_clock_ms
        os.makedirs(directory, exist_ok=True)
        bases = _scan_directory(directory, logger)
        segments: list[Segment] = []
        reports = []
        try:
            for i, base in enumerate(bases):
                recover = not clean_shutdown and (
                    i + 1 == len(bases) or bases[i + 1] > recovery_point)
                recover_from = max(recovery_point, base) if recover else None
                segment, report = Segment.open(
                    directory, base, index_interval_bytes=config.index_interval_bytes,
                    max_index_bytes=config.segment_index_bytes, recover_from=recover_from)
                segments.append(segment)
                if report is None:
                    continue
                reports.append(report)
                if report.truncated_bytes > 0 or report.reason:
                    logger.warning(
                        "recovery of %s: cut at byte %d, dropped %d bytes: %s (scanned from "
                        "byte %d; %s)", report.path, report.valid_end, report.truncated_bytes,
                        report.reason or "torn tail", report.scanned_from, report.cause)
                    for later in bases[i + 1:]:
                        _delete_segment_files(directory, later, logger,
                                              f"follows the cut in segment {base}")
                    break
                logger.info("recovery of %s: scanned from byte %d, %d batches, intact (%s)",
                            report.path, report.scanned_from, report.batches, report.cause)
            for earlier, later in zip(segments, segments[1:]):
                if earlier.next_offset > later.base_offset:
                    raise CorruptLogError(
                        f"{directory}: segment {earlier.base_offset} ends at offset "
                        f"{earlier.next_offset}, past the start of segment {later.base_offset}")
            if not segments:
                segments.append(Segment.create(
                    directory, max(log_start_offset, 0),
                    index_interval_bytes=config.index_interval_bytes,
                    max_index_bytes=config.segment_index_bytes))
            epoch_cache = LeaderEpochCache.load(directory)
        except BaseException:
            for segment in segments:
                segment.close()
            raise
        log_end = segments[-1].next_offset
        log = cls(directory, config, segments=segments, epoch_cache=epoch_cache,
                  log_start_offset=max(log_start_offset, segments[0].base_offset),
                  recovery_point=log_end if clean_shutdown else min(recovery_point, log_end),
                  recovery_reports=reports, clock=clock, logger=logger,
                  flush_requester=flush_requester)
        if log._log_start_offset > log_end:
            logger.warning("%s: log start offset %d is past the log end %d: starting empty "
                           "at %d", directory, log._log_start_offset, log_end,
                           log._log_start_offset)
            log.truncate_fully_and_start_at(log._log_start_offset)
        epoch_cache.truncate_from_end(log.log_end_offset)
        epoch_cache.truncate_from_start(log._log_start_offset)
        log._high_watermark = log._log_start_offset
        try:
            log._rebuild_producer_state()
        except BaseException:
            log.close_without_flush()
            raise
        return log

    # ---- state -------------------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    @high_watermark.setter
    def high_watermark(self, offset: int) -> None:
        """Set the HW, clamped to [log start offset, log end offset]."""
        self._high_watermark = min(max(offset, self._log_start_offset), self.log_end_offset)

    @property
    def epoch_cache(self) -> LeaderEpochCache:
        return self._epoch_cache

    @property
    def producer_state(self) -> ProducerStateManager:
        return self._producer_state

    @property
    def latest_epoch(self) -> int | None:
        return self._epoch_cache.latest_epoch

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """OffsetsForLeaderEpoch for this log: (epoch, end offset), (-1, -1) if unknown."""
        return self._epoch_cache.end_offset_for(epoch, self.log_end_offset)

    @property
    def segments(self) -> list[Segment]:
        """The segments, oldest first (a copy of the list)."""
        return list(self._segments)

    @property
    def active_segment(self) -> Segment:
        return self._segments[-1]

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def unflushed_messages(self) -> int:
        """Offsets appended since the recovery point (Kafka's count for flush.messages)."""
        return self.log_end_offset - self._recovery_point

    @property
    def last_flush_time(self) -> float:
        """time.monotonic() when the last flush attempt ended (or the log was opened)."""
        return self._last_flush_time

    def flush_due(self, now_monotonic: float) -> bool:
        """True if flush.ms is set, there is unflushed data and flush.ms has passed."""
        flush_ms = self.config.flush_ms
        return (flush_ms is not None and not self._closed and self.unflushed_messages > 0
                and (now_monotonic - self._last_flush_time) * 1000 >= flush_ms)

    def update_config(self, config: LogConfig) -> None:
        """Apply a changed topic config (index sizes take effect for new segments)."""
        self.config = config
        self._producer_state.expiration_ms = config.producer_id_expiration_ms

    # ---- appending ---------------------------------------------------------------------------

    def append(self, buf, leader_epoch: int) -> AppendResult:
        """Append client batches as leader: validate (strict, deep), stamp offsets and
        ``leader_epoch`` into ``buf`` (a writable bytearray/memoryview), write.

        Raises CorruptBatchError (and subclasses) for invalid batches, RecordTooLargeError,
        StaleLeaderEpochError, InvalidAppendError (empty or read-only buffer; its subclass
        InvalidRecordError for a record without a key when cleanup.policy has "compact"), the
        producer state's ProducerStateError (OutOfOrderSequenceError, ...): every batch is
        checked before any is written. A retry of batches already appended by an idempotent
        producer writes nothing and returns their original offsets (``duplicate`` set).
        """
        self._check_open()
        view = memoryview(buf)
        if view.readonly:
            raise InvalidAppendError("append needs a writable buffer: offsets are stamped "
                                     "in place")
        if leader_epoch < 0:
            raise ValueError(f"leader epoch {leader_epoch} is negative")
        batches = records.validate_for_append(view, strict=True)
        if len(batches) == 0:
            raise InvalidAppendError("no record batches to append")
        if self.config.cleanup_compact:
            refuse_keyless_records(view, batches)  # InvalidRecordError, as Kafka
        infos = batches.c_infos
        limit = self.config.message_max_bytes
        for i in range(batches.count):
            size = infos[i].size
            if size > limit:
                raise RecordTooLargeError(
                    f"batch {i} is {size} bytes, message.max.bytes is {limit}",
                    batch_index=i, size=size, limit=limit)
        latest = self._epoch_cache.latest_epoch
        if latest is not None and leader_epoch < latest:
            raise StaleLeaderEpochError(
                f"append with leader epoch {leader_epoch}, the log is at epoch {latest}",
                epoch=leader_epoch, latest_epoch=latest)
        first_offset = self.log_end_offset
        plan = self._producer_state.prepare_append(batches, first_offset)
        if plan.duplicate is not None:
            original = plan.duplicate
            return AppendResult(first_offset=original.first_offset,
                                last_offset=original.last_offset, batches=batches,
                                record_count=0, size=0, max_timestamp=original.max_timestamp,
                                log_append_time=-1, log_start_offset=self._log_start_offset,
                                duplicate=True)
        next_offset = core.stamp_batches(view, first_offset, leader_epoch)
        # Stamp the validation's batch infos the same way, so they describe the bytes now.
        offset = first_offset
        for i in range(batches.count):
            info = infos[i]
            info.base_offset = offset
            info.partition_leader_epoch = leader_epoch
            offset += info.last_offset_delta + 1
        if offset != next_offset:
            raise AssertionError(f"stamping disagrees: {offset} != {next_offset}")
        return self._append_validated(view, batches, [(leader_epoch, first_offset)], plan)

    def append_as_follower(self, buf) -> AppendResult:
        """Append batches copied from the leader, keeping their offsets and leader epochs.

        The first batch must start exactly at the log end offset (core.OffsetError if not)
        and base offsets must increase; batches are checked leniently (CRC, structure; a
        compacted batch may hold fewer records than its offset range).
        """
        self._check_open()
        view = memoryview(buf)
        batches = core.validate_batches(view, strict=False)
        if len(batches) == 0:
            raise InvalidAppendError("no record batches to append")
        expected = self.log_end_offset
        epochs = []
        infos = batches.c_infos
        for i in range(batches.count):
            info = infos[i]
            base, epoch = info.base_offset, info.partition_leader_epoch
            if (i == 0 and base != expected) or base < expected:
                raise core.OffsetError(
                    lib.PL_E_OFFSET,
                    f"follower batch {i} starts at offset {base}, expected "
                    f"{'exactly ' if i == 0 else 'at least '}{expected}",
                    batch_index=i, batch_position=info.position)
            expected = base + info.last_offset_delta + 1
            if epoch >= 0 and (not epochs or epoch != epochs[-1][0]):
                epochs.append((epoch, base))
        return self._append_validated(view, batches, epochs)

    def _append_validated(self, view: memoryview, batches: core.BatchList,
                          epochs: list[tuple[int, int]],
                          producer_plan: AppendPlan | None = None) -> AppendResult:
        """Write validated, stamped batches; then the producer state takes them (the
        leader's checked ``producer_plan``, or the batches as they are for a follower)."""
        infos = batches.c_infos
        first_offset = infos[0].base_offset
        next_offset = batches.next_offset
        segment = self._maybe_roll(len(view), next_offset)
        for epoch, start in epochs:
            self._epoch_cache.assign(epoch, start)
        try:
            try:
                segment.append(view, batches)
            except core.SegmentFullError:
                if segment.size == 0:
                    raise
                segment = self.roll()
                segment.append(view, batches)
        except BaseException:
            # The epoch entries were written ahead of bytes that never landed.
            self._epoch_cache.truncate_from_end(self.log_end_offset)
            raise
        if producer_plan is None:
            self._producer_state.update(batches)
        else:
            self._producer_state.commit(producer_plan)
        if self._active_since_ms is None:
            self._active_since_ms = self._clock()
        record_count = 0
        max_timestamp = -1
        for i in range(batches.count):
            info = infos[i]
            record_count += info.record_count
            if info.max_timestamp > max_timestamp:
                max_timestamp = info.max_timestamp
        durable = None
        flush_messages = self.config.flush_messages
        if flush_messages is not None and self.unflushed_messages >= flush_messages:
            durable = self._request_flush(next_offset)
        return AppendResult(first_offset=first_offset, last_offset=next_offset - 1,
                            batches=batches, record_count=record_count, size=len(view),
                            max_timestamp=max_timestamp, log_append_time=-1,
                            log_start_offset=self._log_start_offset, durable=durable)

    def _maybe_roll(self, incoming_bytes: int, next_offset: int) -> Segment:
        """The segment to append to: the active one, or a new one if the active one is
        non-empty and would pass segment.bytes, is older than segment.ms, or cannot express
        the incoming offsets relative to its base. (A full index rolls on SegmentFullError.)"""
        segment = self._segments[-1]
        if segment.size == 0:
            return segment
        config = self.config
        since = self._active_since_ms
        if (segment.size + incoming_bytes > config.segment_bytes
                or (since is not None and self._clock() - since >= config.segment_ms)
                or next_offset - 1 - segment.base_offset > _MAX_RELATIVE_OFFSET):
            return self.roll()
        return segment

    # ---- rolling and flushing ----------------------------------------------------------------

    def roll(self) -> Segment:
        """Start a new active segment at the log end offset (no-op if the active one is
        empty); the old one's indexes are trimmed and a flush up to the new base is asked."""
        self._check_open()
        old = self._segments[-1]
        if old.size == 0:
            return old
        new_base = old.next_offset
        with self._lock:
            old.trim_indexes()
            new = Segment.create(self.directory, new_base,
                                 index_interval_bytes=self.config.index_interval_bytes,
                                 max_index_bytes=self.config.segment_index_bytes)
            self._segments.append(new)
            self._bases.append(new_base)
        self._active_since_ms = None
        self.logger.info("%s: rolled new segment at offset %d (previous: %d bytes)",
                         self.directory, new_base, old.size)
        self._snapshot_producer_state(new_base, durable=False)  # fsynced by the flush
        self._request_flush(new_base)
        return new

    def _snapshot_producer_state(self, offset: int, *, durable: bool) -> None:
        """A producer-state snapshot at ``offset`` (the log end). Failing to write one is
        logged, not raised: it only costs a longer replay at the next open."""
        try:
            self._producer_state.take_snapshot(offset, durable=durable)
        except OSError as e:
            self.logger.warning("%s: producer state snapshot at offset %d not written: %s",
                                self.directory, offset, e)

    def _rebuild_producer_state(self) -> None:
        """Producer state from the newest snapshot at or below the log end, plus replay."""
        self._producer_state.rebuild(self._segments, self._log_start_offset,
                                     self.log_end_offset)

    def _request_flush(self, up_to_offset: int) -> Future:
        if self._flush_requester is not None:
            return self._flush_requester(self, up_to_offset)
        future: Future = Future()
        try:
            future.set_result(self.flush(up_to_offset))
        except Exception as e:  # handed to whoever waits on the future
            future.set_exception(e)
        return future

    def flush(self, up_to_offset: int | None = None) -> int:
        """fsync every segment holding offsets in [recovery point, up_to_offset) and move the
        recovery point there. Default: the log end offset. Returns the recovery point.
        Thread-safe against the owner thread (see the module doc)."""
        with self._lock:
            if self._closed:
                raise LogClosedError(f"{self.directory}: log is closed")
            log_end = self._segments[-1].next_offset
            target = log_end if up_to_offset is None else min(up_to_offset, log_end)
            start = self._recovery_point
            if target <= start:
                return start
            truncations = self._truncations
            pending = [s for s in self._segments
                       if s.base_offset < target and s.next_offset > start]
        try:
            self._epoch_cache.sync()  # epochs on disk before the data they describe
            for segment in pending:
                segment.flush()  # a no-op if the owner closed or deleted it meanwhile
            self._producer_state.sync_snapshots()  # those written at rolls
        finally:
            # Also after a failure: flush.ms retries after another interval, not in a loop.
            self._last_flush_time = time.monotonic()
        with self._lock:
            if truncations == self._truncations and target > self._recovery_point:
                self._recovery_point = target
            return self._recovery_point

    # ---- reading -----------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, *, max_offset: int | None = None,
             min_one_batch: bool = True, with_data: bool = True) -> ReadResult:
        """Whole batches from the segment holding ``offset``, at most ``max_bytes`` (but at
        least one batch if ``min_one_batch``), none at or above ``max_offset`` (the HW for
        consumers; default the log end). The first batch may start before ``offset``.

        OffsetOutOfRangeError unless log start <= offset <= log end; an offset in
        [max_offset, log end] reads nothing. ``with_data=False`` locates the bytes without
        reading them (``data`` None).
        """
        self._check_open()
        log_end = self.log_end_offset
        if offset < self._log_start_offset or offset > log_end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{self._log_start_offset}, {log_end}]",
                offset=offset, log_start_offset=self._log_start_offset,
                log_end_offset=log_end)
        limit = log_end if max_offset is None else min(max_offset, log_end)
        with self._lock:  # the cleaner thread may swap segments: take one consistent list
            segments, bases = self._segments, self._bases
        i = bisect.bisect_right(bases, offset) - 1
        while offset < limit and i < len(segments):
            segment = segments[i]
            if segment.base_offset >= limit:
                break
            start = segment.lookup(offset)
            end = segment.size if limit >= segment.next_offset else \
                segment.end_position_for(limit)
            if start < end:
                position, length = segment.read_region(start, max(max_bytes, 0), end)
                if length > max_bytes and not min_one_batch:
                    break
                data = segment.read(position, length) if with_data else None
                first = int.from_bytes(data[:8], "big", signed=True) if with_data else \
                    self._base_offset_at(segment, position)
                return ReadResult(offset_first_batch=first, data=data, segment=segment,
                                  position=position, length=length,
                                  log_start_offset=self._log_start_offset,
                                  log_end_offset=log_end, high_watermark=self._high_watermark)
            # Nothing at or after offset in this segment below the limit: the next segment.
            i += 1
            if i < len(segments):
                offset = max(offset, segments[i].base_offset)
        return ReadResult(offset_first_batch=-1, data=b"" if with_data else None,
                          segment=None, position=-1, length=0,
                          log_start_offset=self._log_start_offset, log_end_offset=log_end,
                          high_watermark=self._high_watermark)

    @staticmethod
    def _base_offset_at(segment: Segment, position: int) -> int:
        return int.from_bytes(segment.read(position, 8), "big", signed=True)

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after the log start whose timestamp
        is >= ``timestamp`` (ListOffsets by time), None if there is none."""
        self._check_open()
        if timestamp < 0:
            raise ValueError(f"timestamp {timestamp} is negative (ListOffsets' special "
                             "values -1/-2 are the broker's: log end / log start)")
        for segment in list(self._segments):
            if segment.max_timestamp < timestamp or segment.next_offset <= self._log_start_offset:
                continue
            found = segment.lookup_time(timestamp)
            if found is None:
                continue
            position = found[0]
            while position < segment.size:
                position, length = segment.read_region(position, 0, segment.size)
                batch = segment.read(position, length)
                hit = self._first_record_at_or_after(batch, timestamp)
                if hit is not None:
                    return hit
                position += length
        return None

    def _first_record_at_or_after(self, batch: bytes, timestamp: int) -> tuple[int, int] | None:
        for record in records.decode_batch(batch):
            if record.timestamp >= timestamp and record.offset >= self._log_start_offset:
                return record.offset, record.timestamp
        return None

    # ---- truncation --------------------------------------------------------------------------

    def truncate_to(self, offset: int) -> bool:
        """Drop every batch holding offsets at or past ``offset`` (a follower's divergent
        tail). A batch straddling ``offset`` goes whole, so the log may end below it. Returns
        False if the log already ends at or below ``offset``."""
        self._check_open()
        if offset < 0:
            raise ValueError(f"cannot truncate to negative offset {offset}")
        if offset >= self.log_end_offset:
            return False
        if offset < self._segments[0].base_offset:
            self.truncate_fully_and_start_at(offset)
            return True
        with self._lock:
            self._truncations += 1
            while len(self._segments) > 1 and self._segments[-1].base_offset > offset:
                dropped = self._segments.pop()
                self._bases.pop()
                dropped.delete()
            active = self._segments[-1]
            active.truncate_to(offset)
            self._recovery_point = min(self._recovery_point, active.next_offset)
        log_end = self.log_end_offset
        self._epoch_cache.truncate_from_end(log_end)
        self._log_start_offset = min(self._log_start_offset, log_end)
        self._high_watermark = min(self._high_watermark, log_end)
        self._active_since_ms = self._clock() if self._segments[-1].size > 0 else None
        self._rebuild_producer_state()  # snapshots past the new end go, the rest replays
        self.logger.info("%s: truncated to offset %d (log end now %d)", self.directory,
                         offset, log_end)
        return True

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Delete every segment and start empty at ``offset`` (log start = LEO = HW)."""
        self._check_open()
        if offset < 0:
            raise ValueError(f"cannot start a log at negative offset {offset}")
        with self._lock:
            self._truncations += 1
            for segment in self._segments:
                segment.delete()
            self._segments = [Segment.create(
                self.directory, offset, index_interval_bytes=self.config.index_interval_bytes,
                max_index_bytes=self.config.segment_index_bytes)]
            self._bases = [offset]
            self._recovery_point = offset
        self._epoch_cache.clear()
        self._producer_state.truncate_fully()
        self._log_start_offset = offset
        self._high_watermark = offset
        self._active_since_ms = None
        self.logger.info("%s: emptied, starting at offset %d", self.directory, offset)

    # ---- retention ---------------------------------------------------------------------------

    def delete_records_before(self, offset: int) -> int:
        """Advance the log start offset to ``offset`` (DeleteRecords) and delete segments
        wholly below it. ``offset`` may not pass the high watermark. Returns the log start."""
        self._check_open()
        if offset > self._high_watermark:
            raise OffsetOutOfRangeError(
                f"cannot move the log start to {offset}, past the high watermark "
                f"{self._high_watermark}", offset=offset,
                log_start_offset=self._log_start_offset, log_end_offset=self.log_end_offset)
        if offset > self._log_start_offset:
            self._advance_log_start(offset)
            self._delete_segment_prefix(
                lambda segment, following: following.base_offset <= self._log_start_offset,
                "below the log start offset")
        return self._log_start_offset

    def delete_old_segments(self, now_ms: int | None = None) -> int:
        """Apply retention: delete whole non-active segments, oldest first, that lie below the
        log start offset, are older than retention.ms (by their newest timestamp), or that
        retention.bytes wants gone; never a segment holding offsets at or above the high
        watermark. retention.ms and retention.bytes apply only when cleanup.policy contains
        "delete". Returns the number deleted."""
        self._check_open()
        now_ms = self._clock() if now_ms is None else now_ms
        deleted = self._delete_segment_prefix(
            lambda segment, following: following.base_offset <= self._log_start_offset,
            "below the log start offset")
        if not self.config.cleanup_delete:
            return deleted
        retention_ms = self.config.retention_ms
        if retention_ms >= 0:
            deleted += self._delete_segment_prefix(
                lambda segment, following: now_ms - _newest_timestamp(segment) > retention_ms,
                f"older than retention.ms={retention_ms}")
        retention_bytes = self.config.retention_bytes
        if retention_bytes >= 0:
            excess = self.size_bytes - retention_bytes

            def over_size(segment: Segment, following: Segment) -> bool:
                nonlocal excess
                if excess - segment.size < 0:
                    return False
                excess -= segment.size
                return True
            deleted += self._delete_segment_prefix(
                over_size, f"log over retention.bytes={retention_bytes}")
        return deleted

    def _delete_segment_prefix(self, deletable: Callable[[Segment, Segment], bool],
                               reason: str) -> int:
        """Delete the longest run of oldest non-active segments for which ``deletable`` holds
        and whose offsets are all below the high watermark."""
        count = 0
        while True:
            # The check and the removal under one hold of the lock: the cleaner thread may
            # swap the first segments in between otherwise.
            with self._lock:
                if len(self._segments) <= 1:
                    break
                segment, following = self._segments[0], self._segments[1]
                if segment.next_offset > self._high_watermark or \
                        not deletable(segment, following):
                    break
                base, end, size = segment.base_offset, segment.next_offset, segment.size
                self._segments.pop(0)
                self._bases.pop(0)
                segment.delete()
            count += 1
            self.logger.info("%s: deleted segment %d (offsets %d..%d, %d bytes): %s",
                             self.directory, base, base, end - 1, size, reason)
            if following.base_offset > self._log_start_offset:
                self._advance_log_start(following.base_offset)
        return count

    def _advance_log_start(self, offset: int) -> None:
        self._log_start_offset = offset
        self._high_watermark = max(self._high_watermark, offset)
        self._epoch_cache.truncate_from_start(offset)
        self._producer_state.on_log_start_advanced(offset)

    # ---- the log cleaner's hooks (storage/cleaner.py, on the cleaner's thread) ----------------

    @property
    def truncation_count(self) -> int:
        """Truncations so far: the cleaner notices one between two of its passes."""
        return self._truncations

    @contextmanager
    def segments_held(self) -> Iterator[list[Segment]]:
        """The segment list (a copy) with the log's lock held: until the block ends no
        segment is closed, deleted, truncated or replaced, so another thread may read through
        them and open its own descriptors on their files. Keep the block short: reads, rolls
        and retention wait for it. LogClosedError if the log is closed."""
        with self._lock:
            self._check_open()
            yield list(self._segments)

    def replace_segments(self, old: list[Segment], install: Callable[[], Segment], *,
                         truncations: int) -> Segment | None:
        """Swap ``old``, a run of consecutive non-active segments, for the one segment that
        ``install()`` puts in their place on disk and opens (cleaner.install_swapped_segment),
        all under the log's lock. Does nothing and returns None if the log changed since the
        cleaner looked at it: closed, truncated (``truncations`` is the count it saw), or
        ``old`` no longer such a run (retention deleted some). The old segments leave the
        list but stay open (a read may have taken them just before) until
        close_retired_segments or close."""
        with self._lock:
            segments = self._segments
            if self._closed or self._truncations != truncations or not old:
                return None
            first = next((i for i, s in enumerate(segments) if s is old[0]), None)
            if first is None:
                return None
            end = first + len(old)
            if end >= len(segments) or any(a is not b for a, b in zip(segments[first:end], old)):
                return None
            new = install()
            if new.base_offset != old[0].base_offset or \
                    new.next_offset > segments[end].base_offset:
                raise AssertionError(f"{self.directory}: cleaned segment {new!r} does not "
                                     f"fit between {segments[first - 1] if first else None!r} "
                                     f"and {segments[end]!r}")
            replaced = segments[:first] + [new] + segments[end:]
            # New lists, never edited in place: a reader holding the old ones stays consistent.
            self._segments = replaced
            self._bases = [s.base_offset for s in replaced]
            swapped_at = time.monotonic()
            self._retired.extend((swapped_at, s) for s in old)
        return new

    def close_retired_segments(self, swapped_before: float) -> int:
        """Close the segments the cleaner replaced before ``swapped_before``
        (time.monotonic()); returns how many. Their files are already unlinked."""
        with self._lock:
            due = [s for t, s in self._retired if t < swapped_before]
            self._retired = [(t, s) for t, s in self._retired if t >= swapped_before]
        for segment in due:
            segment.close()
        return len(due)

    # ---- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Snapshot the producer state at the log end, flush everything, trim the active
        segment's indexes, close the files."""
        if self._closed:
            return
        self._snapshot_producer_state(self.log_end_offset, durable=True)
        self.flush()
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.close()
            self._close_retired_locked()

    def close_without_flush(self) -> None:
        """Close the files without fsync (the log is about to be deleted)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for segment in self._segments:
                segment.close()
            self._close_retired_locked()

    def _close_retired_locked(self) -> None:
        retired, self._retired = self._retired, []
        for _, segment in retired:
            segment.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self.directory}: log is closed")

    def __repr__(self) -> str:
        return (f"PartitionLog({self.directory!r}, start={self._log_start_offset}, "
                f"end={self.log_end_offset}, hw={self._high_watermark}, "
                f"segments={len(self._segments)})")


# ---- directory housekeeping ----------------------------------------------------------------------


def _scan_directory(directory: str, logger: logging.Logger) -> list[int]:
    """Base offsets of the segments in ``directory``, sorted; removes leftovers of crashed
    operations (temporary and deleted files, indexes without a .log). A log cleaner swap
    that a crash interrupted is finished or undone first (cleaner.py)."""
    finish_interrupted_cleaning(directory, logger)
    logs: set[int] = set()
    indexes: dict[int, list[str]] = {}
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.endswith(STRAY_SUFFIXES):
            logger.info("%s: removing leftover file %s", directory, name)
            os.unlink(path)
            continue
        match = _SEGMENT_FILE.fullmatch(name)
        if match is None:
            continue
        base = int(match.group(1))
        if match.group(2) == "log":
            logs.add(base)
        else:
            indexes.setdefault(base, []).append(name)
    for base, names in indexes.items():
        if base not in logs:
            for name in names:
                logger.info("%s: removing index without a log: %s", directory, name)
                os.unlink(os.path.join(directory, name))
    return sorted(logs)


def _delete_segment_files(directory: str, base: int, logger: logging.Logger,
                          reason: str) -> None:
    log_path = os.path.join(directory, f"{base:020d}.log")
    try:
        size = os.path.getsize(log_path)
    except FileNotFoundError:
        size = 0
    for suffix in ("log", "index", "timeindex"):
        try:
            os.unlink(os.path.join(directory, f"{base:020d}.{suffix}"))
        except FileNotFoundError:
            pass
    logger.warning("recovery: deleted segment %s (%d bytes): %s", log_path, size, reason)


def _newest_timestamp(segment: Segment) -> int:
    """A segment's largest record timestamp, or its file's mtime if it has none (Kafka)."""
    if segment.max_timestamp >= 0:
        return segment.max_timestamp
    return os.stat(segment.log_path).st_mtime_ns // 1_000_000
