"""Idempotent producers: what one partition knows of each producer id (Kafka's
ProducerStateManager and ProducerAppendInfo, simplified: no transactions).

Theory of operation
-------------------
An idempotent producer stamps every batch with its producer id (from InitProducerId), its
epoch and a base sequence that counts records per partition from 0, wrapping after Int32.MAX
back to 0. For each producer id seen in a partition this module keeps a ``ProducerStateEntry``:
the epoch, the metadata of its newest ``NUM_BATCHES_TO_RETAIN`` (5) batches (first/last
sequence, first/last offset, max timestamp) and when it last appended. A producer has at most 5
requests in flight per partition, so a retry of anything it has not been answered for is one
of those 5 batches.

Leader appends (``prepare_append`` before any byte is written, ``commit`` after) follow
Kafka's rules, checked for every batch of the request before the first is appended:
  - producer id -1 (or any negative id) and control batches: not looked at;
  - a repeat of one of the producer's last 5 batches (same epoch, same first and last
    sequence) is a *duplicate*: nothing is appended, the original offsets are answered with
    error 0. A request must then consist of duplicates only (InvalidAppendError otherwise:
    Kafka takes exactly one batch per partition, so a mix cannot come from a Kafka client);
  - an epoch lower than the known one: InvalidProducerEpochError (47);
  - a higher epoch must start at sequence 0 (else OutOfOrderSequenceError, 45) and
    forgets the older epoch's batches;
  - the same epoch must continue at last sequence + 1 (Int32.MAX is followed by 0), else
    OutOfOrderSequenceError (45): a gap, or an old sequence that is not one of the last 5;
  - a producer id with no state here (never seen, expired, or all its batches below the log
    start) must start at sequence 0, else UnknownProducerIdError (59). This is the rule of
    Kafka before 2.5 (KIP-360 later accepts unknown producers at any sequence); the issue
    asks for it, and clients handle it (KAFKA-5793: the response carries the log start
    offset, and a client whose last acknowledged offset is below it resets its sequence).
Follower appends and recovery (``update``) take the batches as they are, without checks, as
Kafka does for replication.

Expiry. An entry expires ``producer_id_expiration_ms`` (Kafka's producer.id.expiration.ms,
1 day) after its last append. Kafka measures this from the batch's own max timestamp; pylog
measures the broker's clock at the append instead, because with the strict rule above a
client writing old timestamps (replaying history) would otherwise be told 59 on every other
batch. An expired entry counts as absent at once; it is removed by a sweep that appends run
at most every ``expiration_check_interval_ms`` (10 minutes, Kafka's default), and before a
snapshot is written.

Log start. When the log start offset moves forward (retention, DeleteRecords), batch
metadata below it is dropped and a producer left without batches is forgotten (Kafka before
2.5: ``truncateHead``), so its next batch gets 59 with a log start offset above what the
client last had acknowledged.

Snapshots. ``<offset, 20 digits>.snapshot`` in the partition directory holds the state of
every producer as of that offset (all batches below it): one line per retained batch,
``producer_id epoch last_append_ms first_seq last_seq first_offset last_offset timestamp``,
in pylog's checkpoint format (version, count, lines, xxh64 line; written atomically, see
checkpoint.py). Unlike Kafka, which keeps only each producer's last batch, all 5 are kept, so
every retry of the last 5 batches is still recognised after a restart. The log writes one at
every roll (the new segment's base offset; fsynced by the next flush, never on the event
loop) and one at a clean close (the log end offset). ``rebuild`` (open, truncation) loads the
newest readable snapshot at or below the log end (damaged ones are logged and deleted, newer
ones deleted: they describe a log that no longer exists) and replays the log's batch headers
from there; entries replayed from the log count as having appended at the time of the
replay. Without any snapshot the whole log is replayed. Snapshots below the log start offset
are deleted, and all of them when the log is emptied.

Threads. Everything is for the log's owner thread, except ``sync_snapshots`` (the Flusher),
which only touches the set of unsynced snapshot paths under its own lock.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

from pylog import core
from pylog.core import ATTR_CONTROL, BATCH_HEADER_SIZE
from pylog.storage.checkpoint import (CorruptCheckpointError, fsync_directory, read_checkpoint,
                                      write_checkpoint)
from pylog.storage.errors import InvalidAppendError, StorageError

__all__ = [
    "ProducerStateManager", "ProducerStateEntry", "BatchMetadata", "AppendPlan",
    "DuplicateAppend", "ProducerStateError", "OutOfOrderSequenceError",
    "InvalidProducerEpochError", "UnknownProducerIdError", "increment_sequence",
    "in_sequence", "snapshot_file_name", "NUM_BATCHES_TO_RETAIN",
    "DEFAULT_PRODUCER_ID_EXPIRATION_MS", "DEFAULT_EXPIRATION_CHECK_INTERVAL_MS",
    "SNAPSHOT_SUFFIX", "INT32_MAX",
]

INT32_MAX = 2**31 - 1
INT32_MIN = -2**31
INT16_MIN, INT16_MAX = -2**15, 2**15 - 1
NUM_BATCHES_TO_RETAIN = 5
DEFAULT_PRODUCER_ID_EXPIRATION_MS = 24 * 3600 * 1000
DEFAULT_EXPIRATION_CHECK_INTERVAL_MS = 10 * 60 * 1000
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_VERSION = 0
_SNAPSHOT_FIELDS = 8
_SNAPSHOT_FILE = re.compile(r"(\d{20})\.snapshot")
# Bytes read at a time when replaying batch headers from a segment.
_REPLAY_CHUNK_BYTES = 1 << 20

_default_logger = logging.getLogger("pylog.storage")


# ---- errors (each maps onto one Kafka error code) ------------------------------------------

class ProducerStateError(StorageError):
    """A leader append refused by the producer state; ``error_code`` is the Kafka code."""
    error_code: int = -1

    def __init__(self, message: str, *, producer_id: int, batch_index: int):
        super().__init__(message)
        self.producer_id = producer_id
        self.batch_index = batch_index


class OutOfOrderSequenceError(ProducerStateError):
    """A gap in the sequence, an old sequence not among the last 5 batches, or a new epoch
    not starting at 0 (OUT_OF_ORDER_SEQUENCE_NUMBER, 45)."""
    error_code = 45


class InvalidProducerEpochError(ProducerStateError):
    """An epoch older than the one this partition knows (INVALID_PRODUCER_EPOCH, 47)."""
    error_code = 47


class UnknownProducerIdError(ProducerStateError):
    """A producer without state here (new, expired or retained away) whose batch does not
    start at sequence 0 (UNKNOWN_PRODUCER_ID, 59)."""
    error_code = 59


# ---- sequences ------------------------------------------------------------------------------

def increment_sequence(sequence: int, increment: int) -> int:
    """``sequence + increment`` wrapping past Int32.MAX to 0 (Kafka's
    DefaultRecordBatch.incrementSequence)."""
    if sequence > INT32_MAX - increment:
        return increment - (INT32_MAX - sequence) - 1
    return sequence + increment


def in_sequence(last_sequence: int, next_sequence: int) -> bool:
    """True if ``next_sequence`` directly follows ``last_sequence`` (0 follows Int32.MAX)."""
    return next_sequence == last_sequence + 1 or (next_sequence == 0
                                                 and last_sequence == INT32_MAX)


def snapshot_file_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


# ---- values ---------------------------------------------------------------------------------

class BatchMetadata(NamedTuple):
    """One appended batch of a producer: its sequence range, offset range and max timestamp.
    (A NamedTuple: one is built per idempotent batch appended, on the event loop.)"""
    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int
    timestamp: int


class ProducerStateEntry:
    """What this partition knows of one producer id.

    Invariants: ``batches`` holds 1..NUM_BATCHES_TO_RETAIN batches of epoch ``epoch``, oldest
    first, offsets strictly increasing; ``last_append_ms`` is the broker's clock at the newest
    append (or at the replay that found it in the log) and decides expiry.
    """

    __slots__ = ("producer_id", "epoch", "batches", "last_append_ms")

    def __init__(self, producer_id: int, epoch: int, batches: list[BatchMetadata],
                 last_append_ms: int):
        self.producer_id = producer_id
        self.epoch = epoch
        self.batches = batches
        self.last_append_ms = last_append_ms

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq

    @property
    def last_offset(self) -> int:
        return self.batches[-1].last_offset

    def find_batch(self, first_seq: int, last_seq: int) -> BatchMetadata | None:
        """The retained batch with exactly this sequence range, if any."""
        for batch in self.batches:
            if batch.first_seq == first_seq and batch.last_seq == last_seq:
                return batch
        return None

    def add_batch(self, epoch: int, batch: BatchMetadata, now_ms: int) -> None:
        """Record ``batch`` as the newest; a different epoch forgets the older batches."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches = []
        self.batches.append(batch)
        if len(self.batches) > NUM_BATCHES_TO_RETAIN:
            del self.batches[0]
        self.last_append_ms = now_ms

    def copy(self) -> "ProducerStateEntry":
        return ProducerStateEntry(self.producer_id, self.epoch, list(self.batches),
                                  self.last_append_ms)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ProducerStateEntry) and self.producer_id == other.producer_id
                and self.epoch == other.epoch and self.batches == other.batches
                and self.last_append_ms == other.last_append_ms)

    def __repr__(self) -> str:
        return (f"ProducerStateEntry({self.producer_id}, epoch={self.epoch}, "
                f"last_seq={self.last_seq}, batches={len(self.batches)}, "
                f"last_append_ms={self.last_append_ms})")


class DuplicateAppend(NamedTuple):
    """A leader append that repeats batches already in the log: their original offsets."""
    first_offset: int
    last_offset: int
    max_timestamp: int


class AppendPlan(NamedTuple):
    """What a checked leader append does to the state once written: ``entries`` replace the
    current entries of their producer ids. ``duplicate`` is set (and ``entries`` empty) when
    the whole append is a retry of batches already appended."""
    entries: Mapping[int, ProducerStateEntry]
    duplicate: DuplicateAppend | None = None


_NOTHING_TO_DO = AppendPlan({})


# ---- the manager ----------------------------------------------------------------------------

class ProducerStateManager:
    """The producer state of the partition log in ``directory`` (module doc).

    ``clock``: wall-clock milliseconds (the log's; tests inject one).
    """

    def __init__(self, directory: str, *,
                 expiration_ms: int = DEFAULT_PRODUCER_ID_EXPIRATION_MS,
                 expiration_check_interval_ms: int = DEFAULT_EXPIRATION_CHECK_INTERVAL_MS,
                 clock: Callable[[], int], logger: logging.Logger | None = None):
        if expiration_ms < 1:
            raise ValueError(f"producer id expiration {expiration_ms} ms must be positive")
        self.directory = directory
        self.expiration_ms = expiration_ms
        self.expiration_check_interval_ms = expiration_check_interval_ms
        self.logger = logger or _default_logger
        self._clock = clock
        # Invariant: keyed by producer id, the state as of the log end offset of every
        # producer with a batch in the log at or above the log start offset; expired
        # entries may stay until the next sweep (they count as absent).
        self._producers: dict[int, ProducerStateEntry] = {}
        # Clock (ms) of the last sweep of expired entries.
        self._last_sweep_ms = clock()
        # Offset of a snapshot file that holds exactly this state (up to expiry and log
        # start trimming, which a load applies again), None once an append changed it:
        # closing a log nobody wrote to then rewrites nothing.
        self._snapshot_matches: int | None = None
        # Snapshots written without fsync, for the next sync_snapshots (under _sync_lock).
        self._unsynced: set[str] = set()
        self._sync_lock = threading.Lock()

    # ---- reading ---------------------------------------------------------------------------

    @property
    def producers(self) -> Mapping[int, ProducerStateEntry]:
        """Every entry held (expired ones included until the next sweep); do not mutate."""
        return self._producers

    def entry(self, producer_id: int) -> ProducerStateEntry | None:
        """The live (not expired) entry of ``producer_id``."""
        return self._live_entry(producer_id, self._clock())

    def _live_entry(self, producer_id: int, now_ms: int) -> ProducerStateEntry | None:
        entry = self._producers.get(producer_id)
        if entry is not None and now_ms - entry.last_append_ms >= self.expiration_ms:
            return None
        return entry

    # ---- leader appends --------------------------------------------------------------------

    def prepare_append(self, batches: core.BatchList, first_offset: int) -> AppendPlan:
        """Check a leader append of ``batches`` (validated, to be written at
        ``first_offset``) against the state, changing nothing (but sweeping expired
        entries when a sweep is due). Raises ProducerStateError
        (OutOfOrderSequenceError, InvalidProducerEpochError, UnknownProducerIdError) or
        InvalidAppendError (duplicates mixed with new batches); returns the plan to
        ``commit`` once the bytes are written (or the duplicate to answer with)."""
        infos = batches.c_infos
        count = batches.count
        for i in range(count):
            if infos[i].producer_id >= 0:
                break
        else:
            return _NOTHING_TO_DO  # the common case: no idempotent producer
        now = self._clock()
        self._maybe_sweep(now)
        pending: dict[int, ProducerStateEntry] = {}
        duplicates: list[BatchMetadata] = []
        new_batches = 0
        offset = first_offset
        for i in range(count):
            info = infos[i]
            delta = info.last_offset_delta
            base = offset
            offset += delta + 1
            producer_id = info.producer_id
            if producer_id < 0 or info.attributes & ATTR_CONTROL:
                new_batches += 1
                continue
            epoch = info.producer_epoch
            first_seq = info.base_sequence
            last_seq = increment_sequence(first_seq, delta)
            current = self._live_entry(producer_id, now)
            if current is not None and current.epoch == epoch:
                original = current.find_batch(first_seq, last_seq)
                if original is not None:
                    duplicates.append(original)
                    continue
            entry = pending.get(producer_id)
            if entry is None and current is not None:
                entry = current.copy()
            _check_sequence(entry, producer_id, epoch, first_seq, i, base)
            if entry is None:
                entry = ProducerStateEntry(producer_id, epoch, [], now)
            entry.add_batch(epoch, BatchMetadata(first_seq, last_seq, base, base + delta,
                                                 info.max_timestamp), now)
            pending[producer_id] = entry
            new_batches += 1
        if not duplicates:
            return AppendPlan(pending)
        if new_batches:
            raise InvalidAppendError(
                f"the append mixes {len(duplicates)} batches already appended (retries of "
                f"offsets {duplicates[0].first_offset}..) with {new_batches} new ones")
        return AppendPlan({}, DuplicateAppend(
            first_offset=duplicates[0].first_offset,
            last_offset=max(d.last_offset for d in duplicates),
            max_timestamp=max(d.timestamp for d in duplicates)))

    def commit(self, plan: AppendPlan) -> None:
        """Apply a plan of ``prepare_append`` whose bytes were written."""
        if plan.entries:
            self._producers.update(plan.entries)
            self._snapshot_matches = None

    # ---- follower appends and replay -------------------------------------------------------

    def update(self, batches: core.BatchList, now_ms: int | None = None) -> None:
        """Take appended batches (with their offsets) as they are: follower appends and
        recovery (Kafka's replication origin: no sequence checks)."""
        now = self._clock() if now_ms is None else now_ms
        infos = batches.c_infos
        self._update_from((infos[i] for i in range(batches.count)), now)
        self._snapshot_matches = None
        self._maybe_sweep(now)

    def _update_from(self, infos: Iterable, now: int, start_offset: int = -1) -> None:
        producers = self._producers
        for info in infos:
            producer_id = info.producer_id
            if producer_id < 0 or info.attributes & ATTR_CONTROL:
                continue
            base = info.base_offset
            if base < start_offset:
                continue
            delta = info.last_offset_delta
            first_seq = info.base_sequence
            batch = BatchMetadata(first_seq, increment_sequence(first_seq, delta), base,
                                  base + delta, info.max_timestamp)
            entry = producers.get(producer_id)
            if entry is None:
                producers[producer_id] = ProducerStateEntry(producer_id, info.producer_epoch,
                                                            [batch], now)
            else:
                entry.add_batch(info.producer_epoch, batch, now)

    # ---- expiry ----------------------------------------------------------------------------

    def remove_expired(self, now_ms: int | None = None) -> int:
        """Forget every entry idle for producer.id.expiration.ms; returns how many."""
        now = self._clock() if now_ms is None else now_ms
        self._last_sweep_ms = now
        expired = [pid for pid, entry in self._producers.items()
                   if now - entry.last_append_ms >= self.expiration_ms]
        for pid in expired:
            del self._producers[pid]
        return len(expired)

    def _maybe_sweep(self, now_ms: int) -> None:
        if now_ms - self._last_sweep_ms >= self.expiration_check_interval_ms:
            self.remove_expired(now_ms)

    # ---- log start and truncation ----------------------------------------------------------

    def on_log_start_advanced(self, log_start_offset: int) -> None:
        """Drop batch metadata below the new log start, forget producers left without any,
        delete snapshots below it."""
        for pid in list(self._producers):
            entry = self._producers[pid]
            if entry.batches[0].last_offset >= log_start_offset:
                continue
            kept = [b for b in entry.batches if b.last_offset >= log_start_offset]
            if kept:
                entry.batches = kept
            else:
                del self._producers[pid]
        for offset in self.snapshot_offsets():
            if offset < log_start_offset:
                self._delete_snapshot(offset, "below the log start offset")

    def truncate_fully(self) -> None:
        """The log was emptied: forget everything, delete every snapshot."""
        self._producers = {}
        self._snapshot_matches = None
        for offset in self.snapshot_offsets():
            self._delete_snapshot(offset, "the log was emptied")

    def rebuild(self, segments: list, log_start_offset: int, log_end_offset: int) -> None:
        """Rebuild the state from the newest usable snapshot at or below ``log_end_offset``
        and the batches of ``segments`` after it (open, truncation; module doc)."""
        now = self._clock()
        self._producers = {}
        start = None
        for offset in reversed(self.snapshot_offsets()):
            if offset > log_end_offset:
                self._delete_snapshot(offset, f"past the log end offset {log_end_offset}")
                continue
            try:
                self._producers = self._read_snapshot(offset)
            except CorruptCheckpointError as e:
                self.logger.warning("%s; deleting it and using an older snapshot or the log",
                                    e)
                self._delete_snapshot(offset, "damaged")
                continue
            start = offset
            break
        first_base = segments[0].base_offset if segments else log_end_offset
        source = "the log" if start is None else f"the snapshot at offset {start}"
        start = first_base if start is None else max(start, first_base)
        replayed = self._replay(segments, start, log_end_offset, now)
        self._snapshot_matches = log_end_offset if source != "the log" and replayed == 0 \
            and start == log_end_offset else None
        self.on_log_start_advanced(log_start_offset)
        self.remove_expired(now)
        if replayed or self._producers:
            self.logger.info("%s: producer state of %d producers from %s and %d batches "
                             "replayed up to offset %d", self.directory, len(self._producers),
                             source, replayed, log_end_offset)

    def _replay(self, segments: list, start_offset: int, end_offset: int, now_ms: int) -> int:
        """Apply the batches of ``segments`` from ``start_offset`` to ``end_offset``; returns
        the number of batches read."""
        count = 0
        for segment in segments:
            if segment.next_offset <= start_offset or segment.base_offset >= end_offset:
                continue
            position = segment.lookup(start_offset) if segment.base_offset < start_offset \
                else 0
            for info in _batch_headers(segment, position, self.logger):
                if info.base_offset >= end_offset:
                    break
                count += 1
                self._update_from((info,), now_ms, start_offset)
        return count

    # ---- snapshots -------------------------------------------------------------------------

    def snapshot_offsets(self) -> list[int]:
        """Offsets of the snapshot files present, ascending."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_SNAPSHOT_FILE.fullmatch, names) if m)

    def snapshot_path(self, offset: int) -> str:
        return os.path.join(self.directory, snapshot_file_name(offset))

    def take_snapshot(self, offset: int, *, durable: bool = False) -> str:
        """Write the state (as of ``offset``, the log end) to ``<offset>.snapshot``.
        Without ``durable`` the file is atomic against a crash of the process and fsynced by
        the next ``sync_snapshots``. Returns the path. Nothing is written if the snapshot
        at ``offset`` already holds this state."""
        path = self.snapshot_path(offset)
        if self._snapshot_matches == offset and os.path.exists(path):
            if durable:
                self.sync_snapshots()  # it may have been written at a roll, not yet synced
            return path
        self.remove_expired()
        lines = []
        for pid in sorted(self._producers):
            entry = self._producers[pid]
            for b in entry.batches:
                lines.append((pid, entry.epoch, entry.last_append_ms, b.first_seq, b.last_seq,
                              b.first_offset, b.last_offset, b.timestamp))
        write_checkpoint(path, SNAPSHOT_VERSION, lines, durable=durable)
        if not durable:
            with self._sync_lock:
                self._unsynced.add(path)
        self._snapshot_matches = offset
        return path

    def sync_snapshots(self) -> None:
        """fsync the snapshots written without it (any thread: the Flusher calls it)."""
        with self._sync_lock:
            paths, self._unsynced = self._unsynced, set()
        if not paths:
            return
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # deleted meanwhile (truncation, log start)
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(self.directory)

    def _delete_snapshot(self, offset: int, reason: str) -> None:
        path = self.snapshot_path(offset)
        if self._snapshot_matches == offset:
            self._snapshot_matches = None
        with self._sync_lock:
            self._unsynced.discard(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        self.logger.info("%s: deleted producer snapshot %s: %s", self.directory,
                         snapshot_file_name(offset), reason)

    def _read_snapshot(self, offset: int) -> dict[int, ProducerStateEntry]:
        """The entries of ``<offset>.snapshot``; CorruptCheckpointError if it is not a valid
        snapshot of a log ending at ``offset``."""
        path = self.snapshot_path(offset)
        lines = read_checkpoint(path, SNAPSHOT_VERSION, _SNAPSHOT_FIELDS)
        if lines is None:
            raise CorruptCheckpointError(path, "vanished while being read")
        producers: dict[int, ProducerStateEntry] = {}
        previous_pid = None
        for number, fields in enumerate(lines, start=3):
            try:
                (pid, epoch, last_append_ms, first_seq, last_seq, first_offset, last_offset,
                 timestamp) = (_integer(f) for f in fields)
            except ValueError:
                raise CorruptCheckpointError(path, f"line {number}: not integers: "
                                                   f"{' '.join(fields)!r}") from None
            problem = _snapshot_line_problem(pid, epoch, first_seq, last_seq, first_offset,
                                             last_offset, offset)
            if problem:
                raise CorruptCheckpointError(path, f"line {number}: {problem}")
            batch = BatchMetadata(first_seq, last_seq, first_offset, last_offset, timestamp)
            entry = producers.get(pid)
            if entry is None:
                if previous_pid is not None and pid < previous_pid:
                    raise CorruptCheckpointError(path, f"line {number}: producer {pid} out "
                                                       "of order")
                producers[pid] = ProducerStateEntry(pid, epoch, [batch], last_append_ms)
            elif pid != previous_pid:
                raise CorruptCheckpointError(path, f"line {number}: producer {pid} appears "
                                                   "in two places")
            elif (epoch, last_append_ms) != (entry.epoch, entry.last_append_ms):
                raise CorruptCheckpointError(path, f"line {number}: producer {pid} with "
                                                   "two epochs or append times")
            elif first_offset <= entry.last_offset:
                raise CorruptCheckpointError(path, f"line {number}: producer {pid}'s "
                                                   "batches are not in offset order")
            elif len(entry.batches) == NUM_BATCHES_TO_RETAIN:
                raise CorruptCheckpointError(path, f"line {number}: producer {pid} has more "
                                                   f"than {NUM_BATCHES_TO_RETAIN} batches")
            else:
                entry.batches.append(batch)
            previous_pid = pid
        return producers


# ---- helpers --------------------------------------------------------------------------------

def _check_sequence(entry: ProducerStateEntry | None, producer_id: int, epoch: int,
                    first_seq: int, index: int, offset: int) -> None:
    """Kafka's checkProducerEpoch + checkSequence for a client batch against ``entry``
    (None: no state for this producer). Messages are built only on failure."""
    if entry is None:
        if first_seq != 0:
            raise UnknownProducerIdError(
                f"{_where(producer_id, index, offset)}: no state for this producer here (new, "
                f"expired or removed with the log start) and its first sequence is "
                f"{first_seq}, not 0", producer_id=producer_id, batch_index=index)
        return
    if epoch < entry.epoch:
        raise InvalidProducerEpochError(
            f"{_where(producer_id, index, offset)}: epoch {epoch} is older than the current "
            f"epoch {entry.epoch}", producer_id=producer_id, batch_index=index)
    if epoch != entry.epoch:
        if first_seq != 0:
            raise OutOfOrderSequenceError(
                f"{_where(producer_id, index, offset)}: new epoch {epoch} (was "
                f"{entry.epoch}) starts at sequence {first_seq}, not 0",
                producer_id=producer_id, batch_index=index)
        return
    if not in_sequence(entry.last_seq, first_seq):
        raise OutOfOrderSequenceError(
            f"{_where(producer_id, index, offset)}: sequence {first_seq} does not follow the "
            f"last sequence {entry.last_seq} (epoch {epoch})", producer_id=producer_id,
            batch_index=index)


def _where(producer_id: int, index: int, offset: int) -> str:
    return f"producer {producer_id} (batch {index}, at offset {offset})"


def _integer(text: str) -> int:
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(text)
    return int(text)


def _snapshot_line_problem(pid: int, epoch: int, first_seq: int, last_seq: int,
                           first_offset: int, last_offset: int, snapshot_offset: int) -> str:
    if pid < 0:
        return f"negative producer id {pid}"
    if not INT16_MIN <= epoch <= INT16_MAX:
        return f"epoch {epoch} is not an INT16"
    if not (INT32_MIN <= first_seq <= INT32_MAX and INT32_MIN <= last_seq <= INT32_MAX):
        return f"sequences {first_seq}..{last_seq} are not INT32"
    if not 0 <= first_offset <= last_offset < snapshot_offset:
        return (f"offsets {first_offset}..{last_offset} are not within [0, "
                f"{snapshot_offset})")
    return ""


def _batch_headers(segment, position: int, logger: logging.Logger) -> Iterator:
    """The headers (pl_batch_info) of the batches of ``segment`` from byte ``position``,
    read in chunks, CRCs and records not checked (the log was validated on the way in and
    recovered on open). Stops, with a warning, at bytes that are not a batch."""
    end = segment.size
    while position < end:
        data = segment.read(position, min(_REPLAY_CHUNK_BYTES, end - position))
        batches, _ = core.scan_batches(data, check_crc=False, check_records=False)
        if batches.count:
            infos = batches.c_infos
            for i in range(batches.count):
                yield infos[i]
            position += batches.end
            continue
        # A batch larger than the chunk: its header alone says where the next one starts.
        try:
            info = core.peek_batch(data[:BATCH_HEADER_SIZE])
        except core.CoreError as e:
            logger.warning("%s: producer state replay stopped at byte %d: %s",
                           segment.log_path, position, e)
            return
        yield info
        position += info.size
