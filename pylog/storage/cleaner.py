"""The log cleaner: compaction of every log whose cleanup.policy contains "compact" (Kafka's
LogCleaner), on one worker thread, never on the event loop.

Theory of operation
-------------------
Sections. For each compacted log the cleaner keeps one offset, the *first dirty offset*, in
the data directory's ``cleaner-offset-checkpoint`` (checkpoint.py's format: atomic,
checksummed). Segments wholly below it are *clean*: every record in them was compacted against
everything up to it. The segments after them are *dirty* up to the *first uncleanable offset*,
the smallest of: the active segment's base (the active segment is never touched), the high
watermark (what consumers cannot read yet may still be truncated) and the base of the first
dirty segment whose newest timestamp is younger than min.compaction.lag.ms. Only whole
segments below it are cleaned. A missing, damaged or out-of-range checkpoint entry, or a
truncation of the log seen since the last pass, makes the whole log dirty: that costs work,
never a record (and only lengthens the life of tombstones, see below).

When. A log is cleaned when dirty bytes / (clean + dirty bytes) is above
min.cleanable.dirty.ratio (Kafka compares strictly), or when a dirty segment's first batch
is older than max.compaction.lag.ms, or when a tombstone kept by an earlier pass has become
deletable (known in memory only; after a restart the other two rules apply).

A pass over one log (Kafka's algorithm).
 1. The offset map: each keyed record of the dirty section gives key -> offset, the latest
    winning. It is bounded (log.cleaner.dedupe.buffer.size, an estimate per entry): when it
    is full after a segment, this pass's dirty section ends there.
 2. Groups: the segments from the first one to the end of that section, in consecutive runs
    whose original sizes fit one segment (segment.bytes, segment.index.bytes, 32-bit relative
    offsets); each run becomes one cleaned segment with the base offset of its first.
 3. Filtering, batch by batch. A record goes when the map holds a later offset for its key,
    when it has no key (Kafka drops those; appends to a compacted log refuse them, see
    ``refuse_keyless_records``), or when it is a tombstone (null value) whose segment's
    tombstones have expired. A batch that keeps every record is copied byte for byte. One
    that keeps some is re-encoded (pl_record_write + pl_batch_finish) with its base offset,
    lastOffsetDelta, the records' offset and timestamp deltas, its first timestamp,
    producer id / epoch / base sequence, partition leader epoch and attributes (codec
    included) unchanged: offsets, sequences and timestamps stay what they were, the batch now
    holds fewer records than its offset span, and its maxTimestamp is that of the records
    left (LogAppendTime batches keep theirs). One that keeps none is dropped, except, as
    Kafka's RETAIN_EMPTY, when it is the last batch in the log of a producer id that has not
    expired (producer.id.expiration.ms, by the batch's maxTimestamp): it stays as an empty
    batch (no records, no compression, both timestamps its old maxTimestamp) so that the
    producer's epoch and last sequence survive a rebuild of the producer state; a later
    pass drops it once the producer wrote a later batch or expired. Control batches are
    copied unchanged (pylog writes none; transactions are out of scope).
    A group in which nothing is dropped is not rewritten.
 4. The swap (below) of each rewritten group, then the checkpoint moves to the end of the
    section. A pass that could not swap a group (the log changed under it) stops and leaves
    the checkpoint; the next pass redoes the work.

Tombstones. delete.retention.ms counts from the moment the cleaner first passed a tombstone
(a consumer reading from the start within that time sees it). That moment is kept as the
mtime of the segment file, from the cleaner's clock: a segment written (or, unchanged,
passed over) while it held dirty data gets mtime = now; a rewritten group of clean segments
gets the newest mtime of its members (a tombstone may live longer, never shorter). A
tombstone is dropped only from a clean segment whose mtime is delete.retention.ms or more
in the past; the dirty section's tombstones are on their first pass and always kept.

Atomic swap and crash safety. A group's cleaned segment is written by the ordinary Segment
code into a private directory ``<base>.cleaning/`` of the partition directory, fsynced and
closed (indexes trimmed), its mtime set; its three files are renamed to
``<base>.log.cleaned`` (+ ``.index.cleaned``, ``.timeindex.cleaned``), the directory fsynced,
then to ``.swap`` (the indexes first, the log last), the directory fsynced. The appearance
of ``<base>.log.swap`` is the commit point: "this segment replaces every original segment
whose base offset lies in [base, its next offset)". Then, under the log's lock
(``PartitionLog.replace_segments``), once it is checked that the group is still exactly there
(retention, truncation or deletion may have changed the log meanwhile: the cleaned files are
then discarded), ``install_swapped_segment`` unlinks the group's originals other than the
first, fsyncs the directory, renames the ``.swap`` log over ``<base>.log`` and its indexes
over the old ones, and opens the new segment; the log puts it in its list.
``finish_interrupted_cleaning`` (run by PartitionLog.open before it scans the directory)
brings every crash point to the old or the new segments:
  - ``*.cleaning`` directories, ``*.cleaned`` files: the swap never began; deleted;
  - ``<base>.log.swap``: the swap committed; it is finished: the originals in its range are
    deleted, base's index files dropped (they may be the old ones) and the swap renamed to
    ``<base>.log``; the segment's indexes are rebuilt from the log (a CRC-checked scan) when
    it is opened. (A committed swap is whole batches, fsynced before its rename, and
    ``<base>.log`` exists until the swap takes its name; a ``.swap`` file that is not both is
    no swap of the cleaner's and is deleted, logged as an error);
  - an index ``.swap`` file beside ``<base>.log.cleaned``: the swap was not committed (the
    log is renamed last); deleted with it;
  - an index ``.swap`` file without any log swap: the log rename happened, the index renames
    may not have: base's index files are all dropped and rebuilt.
An original at or past the swap's next offset that was not unlinked yet (all its records
were superseded) survives such a crash: it overlaps nothing and only holds records that a
later record of the same key supersedes; the next pass removes them.

Threads. One worker thread (log.cleaner.threads = 1) runs ``run_once`` every
log.cleaner.backoff.ms; tests and tools call ``run_once`` directly (passes never overlap).
The cleaner never uses a log's Segment objects outside the log's lock (the owner thread may
close them): under the lock it opens its own descriptors on the segment files and reads
those afterwards. Appends only touch the active segment, which is never cleaned. Readers on
the owner thread take the segment list under the lock (one consistent list); a replaced
segment stays open for log.segment.delete.delay.ms (Kafka's file.delete.delay.ms, 60 s) so
that a read which began before the swap ends on the old, already unlinked, files.
``abort_and_wait`` (a log about to be deleted) and ``stop`` interrupt a pass between batches.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from pylog import codecs, core
from pylog.core import (ATTR_COMPRESSION_MASK, ATTR_CONTROL, BATCH_HEADER_SIZE, BatchInfo,
                        RecordWriter)
from pylog.storage.checkpoint import (CorruptCheckpointError, fsync_directory,
                                      read_offset_checkpoint, write_offset_checkpoint)
from pylog.storage.config import KAFKA_INT_MAX, KAFKA_LONG_MAX, MIB, ConfigError
from pylog.storage.errors import InvalidRecordError, LogClosedError
from pylog.storage.segment import (INDEX_ENTRY_SIZE, TIMEINDEX_ENTRY_SIZE, Segment,
                                   index_file_name, log_file_name, timeindex_file_name)

if TYPE_CHECKING:
    from pylog.storage.log import PartitionLog

__all__ = [
    "LogCleaner", "CleanerConfig", "CleanResult", "CLEANER_CHECKPOINT", "CLEANED_SUFFIX",
    "SWAP_SUFFIX", "CLEANING_DIR_SUFFIX", "finish_interrupted_cleaning",
    "install_swapped_segment", "refuse_keyless_records",
]

CLEANER_CHECKPOINT = "cleaner-offset-checkpoint"
CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"
CLEANING_DIR_SUFFIX = ".cleaning"

_SWAP_LOG = re.compile(r"(\d{20})\.log\.swap")
_SWAP_INDEX = re.compile(r"(\d{20})\.(index|timeindex)\.swap")
_SEGMENT_LOG = re.compile(r"(\d{20})\.log")
_SEGMENT_SUFFIXES = ("log", "index", "timeindex")
# Estimated memory of one offset-map entry besides its key bytes (dict slot, bytes and int
# objects), for log.cleaner.dedupe.buffer.size.
_MAP_ENTRY_OVERHEAD = 100
# Cleaned batches are handed to the segment in runs of about this many bytes.
_WRITE_RUN_BYTES = 1 << 20
_MAX_RELATIVE_OFFSET = KAFKA_INT_MAX

_default_logger = logging.getLogger("pylog.storage")

TopicPartition = tuple[str, int]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanerConfig:
    """Broker-wide settings of the cleaner, under Kafka's broker config names."""

    enable: bool = True
    """log.cleaner.enable: whether ``LogManager.start_cleaner`` starts the thread."""
    threads: int = 1
    """log.cleaner.threads: pylog runs exactly one cleaner thread."""
    backoff_ms: int = 15_000
    """log.cleaner.backoff.ms: the pause after a pass. >= 1."""
    dedupe_buffer_size: int = 128 * MIB
    """log.cleaner.dedupe.buffer.size: memory the offset map may take (estimated)."""
    io_buffer_size: int = MIB
    """log.cleaner.io.buffer.size: bytes read from a segment at a time. >= 1 KiB."""
    file_delete_delay_ms: int = 60_000
    """log.segment.delete.delay.ms: how long a replaced segment stays open for reads that
    began before the swap. >= 0."""

    def __post_init__(self) -> None:
        if not isinstance(self.enable, bool):
            raise ConfigError("log.cleaner.enable", f"expected true or false, got "
                                                    f"{self.enable!r}")
        if self.threads != 1:
            raise ConfigError("log.cleaner.threads",
                              f"{self.threads!r}: pylog runs exactly one cleaner thread")
        _int_range("log.cleaner.backoff.ms", self.backoff_ms, 1, KAFKA_LONG_MAX)
        _int_range("log.cleaner.dedupe.buffer.size", self.dedupe_buffer_size, 1,
                   KAFKA_LONG_MAX)
        _int_range("log.cleaner.io.buffer.size", self.io_buffer_size, 1024, KAFKA_INT_MAX)
        _int_range("log.segment.delete.delay.ms", self.file_delete_delay_ms, 0,
                   KAFKA_LONG_MAX)


def _int_range(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(name, f"{value!r} is not an integer in {low}..{high}")


@dataclass(frozen=True)
class CleanResult:
    """What one pass did to one log. ``first_dirty`` / ``clean_end``: the first dirty
    offset before and after the pass; ``completed`` False when it stopped before the end
    (then the checkpoint did not move)."""

    topic: str
    partition: int
    reason: str
    dirty_ratio: float
    first_dirty: int
    clean_end: int
    segments_before: int
    segments_after: int
    bytes_before: int
    bytes_after: int
    records_removed: int
    tombstones_removed: int
    keyless_removed: int
    empty_batches_kept: int
    completed: bool


class _Aborted(Exception):
    """The pass over one log stops (stop(), abort_and_wait(), or the log changed)."""


# ---- appends to compacted logs -----------------------------------------------------------------


def refuse_keyless_records(buf, batches: core.BatchList) -> None:
    """Raise InvalidRecordError (INVALID_RECORD, 87) if a record of the validated ``batches``
    in ``buf`` has no key: Kafka refuses those in a compacted topic. Control batches are
    not looked at. Compressed batches are decompressed (they were validated just before)."""
    view = memoryview(buf)
    infos = batches.c_infos
    for i in range(batches.count):
        info = infos[i]
        if info.attributes & ATTR_CONTROL:
            continue
        section = view[info.position + BATCH_HEADER_SIZE:info.position + info.size]
        codec = info.attributes & ATTR_COMPRESSION_MASK
        if codec:
            section = codecs.decompress(codec, section)
        for j, row in enumerate(core.decode_records(section, info.record_count)):
            if row[2] is None:
                raise InvalidRecordError(
                    f"batch {i}, record {j}: a compacted topic cannot accept a record "
                    "without a key", batch_index=i, record_index=j)


# ---- recovery on open ------------------------------------------------------------------------


def finish_interrupted_cleaning(directory: str, logger: logging.Logger | None = None) -> None:
    """Bring a partition directory left by a crash during cleaning to a consistent state
    (module doc, "Atomic swap and crash safety"). Call before the segments are scanned."""
    logger = logger or _default_logger
    names = os.listdir(directory)
    changed = False
    for name in names:
        path = os.path.join(directory, name)
        if name.endswith(CLEANING_DIR_SUFFIX) and os.path.isdir(path):
            logger.info("%s: removing an unfinished cleaned segment %s", directory, name)
            shutil.rmtree(path)
            changed = True
    swapped = []
    for base in sorted(int(m.group(1)) for m in map(_SWAP_LOG.fullmatch, names) if m):
        swap_path = os.path.join(directory, log_file_name(base) + SWAP_SUFFIX)
        next_offset = _end_offset_of_file(swap_path, base)
        if next_offset is None or log_file_name(base) not in names:
            # Not a swap this cleaner committed: those are whole batches (fsynced before
            # the rename) and the segment they replace is there until they take its name.
            logger.error("%s: removing %s: %s", directory, os.path.basename(swap_path),
                         "not whole record batches" if next_offset is None else
                         f"no segment {base} for it to replace")
            _unlink_quietly(swap_path)
        else:
            _complete_swap(directory, base, next_offset, names, logger)
            swapped.append(base)
        changed = True
    for name in names:
        match = _SWAP_INDEX.fullmatch(name)
        if match is None or int(match.group(1)) in swapped:
            continue
        base = int(match.group(1))
        _unlink_quietly(os.path.join(directory, name))
        changed = True
        if log_file_name(base) + CLEANED_SUFFIX in names:
            continue   # the swap was not committed: its log never left .cleaned
        logger.warning("%s: an interrupted cleaner swap left %s: the index files of segment "
                       "%d are rebuilt from its log", directory, name, base)
        for suffix in ("index", "timeindex"):
            _unlink_quietly(os.path.join(directory, f"{base:020d}.{suffix}"))
    for name in names:
        if name.endswith(CLEANED_SUFFIX) and not os.path.isdir(os.path.join(directory, name)):
            logger.info("%s: removing %s (a cleaned segment that was never swapped in)",
                        directory, name)
            _unlink_quietly(os.path.join(directory, name))
            changed = True
    if changed:
        fsync_directory(directory)


def _complete_swap(directory: str, base: int, next_offset: int, names: list[str],
                   logger: logging.Logger) -> None:
    swap_path = os.path.join(directory, log_file_name(base) + SWAP_SUFFIX)
    replaced = []
    for name in names:
        match = _SEGMENT_LOG.fullmatch(name)
        if match is None:
            continue
        original = int(match.group(1))
        if base < original < next_offset:
            for suffix in _SEGMENT_SUFFIXES:
                _unlink_quietly(os.path.join(directory, f"{original:020d}.{suffix}"))
            replaced.append(original)
    for suffix in ("index", "timeindex"):
        for tail in ("", SWAP_SUFFIX, CLEANED_SUFFIX):
            _unlink_quietly(os.path.join(directory, f"{base:020d}.{suffix}{tail}"))
    os.replace(swap_path, os.path.join(directory, log_file_name(base)))
    logger.warning("%s: finished an interrupted cleaner swap: segment %d (offsets up to %d) "
                   "replaces segment %d%s; its indexes are rebuilt", directory, base,
                   next_offset, base,
                   "".join(f", {b}" for b in replaced))


def _end_offset_of_file(path: str, base: int) -> int | None:
    """The offset after the last batch of a segment file (``base`` if it is empty), from
    the batch headers (structure only: opening the segment checks the CRCs); None if the
    file is not whole batches starting at ``base`` or later."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        end = base
        for info in _iter_headers(fd, os.fstat(fd).st_size, MIB):
            if info.base_offset < end:
                return None
            end = info.base_offset + info.last_offset_delta + 1
        return end
    except (core.CoreError, _Aborted):
        return None
    finally:
        os.close(fd)


def install_swapped_segment(directory: str, base: int, replaced_bases: list[int], *,
                            index_interval_bytes: int, max_index_bytes: int,
                            logger: logging.Logger | None = None) -> Segment:
    """The swap itself (called by PartitionLog.replace_segments with the log's lock held):
    unlink the originals ``replaced_bases`` (other than ``base``), make that durable, rename
    ``<base>.*.swap`` over ``<base>.*`` (the log first) and open the new segment."""
    logger = logger or _default_logger
    for other in replaced_bases:
        if other == base:
            continue
        for suffix in _SEGMENT_SUFFIXES:
            _unlink_quietly(os.path.join(directory, f"{other:020d}.{suffix}"))
    fsync_directory(directory)
    for name in (log_file_name(base), index_file_name(base), timeindex_file_name(base)):
        os.replace(os.path.join(directory, name + SWAP_SUFFIX), os.path.join(directory, name))
    segment, report = Segment.open(directory, base, index_interval_bytes=index_interval_bytes,
                                   max_index_bytes=max_index_bytes)
    if report is not None:
        logger.warning("%s: cleaned segment %d needed recovery after the swap: %s", directory,
                       base, report)
    return segment


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---- reading segment files through the cleaner's own descriptors -------------------------------


def _pread_exact(fd: int, length: int, position: int) -> bytes:
    parts = []
    done = 0
    while done < length:
        part = os.pread(fd, length - done, position + done)
        if not part:
            raise _Aborted(f"the segment file ended at byte {position + done}, before the "
                           f"{length} bytes at {position} it had (truncated meanwhile)")
        parts.append(part)
        done += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _iter_batches(fd: int, size: int, chunk: int, *, check_crc: bool = True
                  ) -> Iterator[tuple[int, BatchInfo, memoryview]]:
    """Every batch in the first ``size`` bytes of a segment file: (its position in the file,
    info, its bytes), read ``chunk`` bytes at a time (a larger batch alone).
    CorruptBatchError (or another CoreError) for damage."""
    position = 0
    while position < size:
        data = _pread_exact(fd, min(chunk, size - position), position)
        batches, error = core.scan_batches(data, check_crc=check_crc, check_records=False)
        if batches.count == 0:
            if not isinstance(error, core.TruncatedBatchError) or \
                    len(data) < BATCH_HEADER_SIZE:
                raise _positioned(error, position)
            whole = core.peek_batch(data[:BATCH_HEADER_SIZE]).size
            if position + whole > size:
                raise _positioned(error, position)
            data = _pread_exact(fd, whole, position)
            batches, error = core.scan_batches(data, check_crc=check_crc,
                                               check_records=False)
            if error is not None:
                raise _positioned(error, position)
        elif error is not None and not isinstance(error, core.TruncatedBatchError):
            raise _positioned(error, position)
        view = memoryview(data)
        for info in batches:
            yield position + info.position, info, view[info.position:info.position + info.size]
        position += batches.end


def _iter_headers(fd: int, size: int, chunk: int) -> Iterator[BatchInfo]:
    """The batch headers of a segment file (no CRC check: for offsets and producer ids)."""
    for _, info, _ in _iter_batches(fd, size, chunk, check_crc=False):
        yield info


def _positioned(error: core.CoreError | None, base: int) -> core.CoreError:
    if error is None:
        return core.CorruptBatchError(core.lib.PL_E_LENGTH,
                                      f"no batch at byte {base}", batch_position=base)
    return type(error)(error.status, f"at byte {base + max(error.batch_position, 0)}: "
                                     f"{error.message}",
                       batch_position=base + max(error.batch_position, 0),
                       error_position=base + max(error.error_position, 0),
                       record_index=error.record_index)


def _records_of(info: BatchInfo, raw: memoryview) -> list[tuple]:
    """(offset_delta, timestamp_delta, key, value, headers) of each record of a batch."""
    section = raw[BATCH_HEADER_SIZE:]
    if info.compression:
        section = codecs.decompress(info.compression, section)
    return core.decode_records(section, info.record_count)


# ---- one pass over one log: the plan -----------------------------------------------------------


@dataclass
class _Plan:
    """What the log looked like under its lock, and what to clean.

    Segments ``[0, clean)`` are clean, ``[clean, cleanable)`` dirty and cleanable; the
    last one is the active segment. ``fds`` (only when opened for cleaning) are the
    cleaner's own read descriptors, one per segment, valid whatever the owner does."""

    key: TopicPartition
    log: "PartitionLog"
    truncations: int
    first_dirty: int
    segments: list[Segment]
    bases: list[int]
    next_offsets: list[int]
    sizes: list[int]
    index_bytes: list[tuple[int, int]]
    clean: int
    cleanable: int
    dirty_ratio: float
    reason: str | None
    fds: list[int] = field(default_factory=list)
    mtimes_ms: list[int] = field(default_factory=list)

    def close_files(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


# ---- writing one cleaned segment ---------------------------------------------------------------


class _CleanedSegmentWriter:
    """Builds the cleaned segment of one group in ``<base>.cleaning/`` (module doc)."""

    def __init__(self, directory: str, base: int, *, index_interval_bytes: int,
                 max_index_bytes: int):
        self.directory = directory
        self.base = base
        self.workdir = os.path.join(directory, f"{base:020d}{CLEANING_DIR_SUFFIX}")
        if os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir)
        os.mkdir(self.workdir)
        self.segment: Segment | None = Segment.create(
            self.workdir, base, index_interval_bytes=index_interval_bytes,
            max_index_bytes=max_index_bytes)
        self._run = bytearray()
        self.size = 0

    def add(self, batch) -> None:
        self._run += batch
        if len(self._run) >= _WRITE_RUN_BYTES:
            self._write_run()

    def _write_run(self) -> None:
        if not self._run:
            return
        data = bytes(self._run)
        self._run.clear()
        batches = core.validate_batches(data, check_crc=False, check_records=False)
        self.segment.append(data, batches)
        self.size += len(data)

    def finish(self, mtime_ms: int) -> None:
        """Write, fsync and close the segment, set its mtime, and move its files to
        ``.cleaned`` then ``.swap`` names in the partition directory."""
        self._write_run()
        segment, self.segment = self.segment, None
        segment.flush()
        segment.close()  # trims the index files to their entries
        names = (index_file_name(self.base), timeindex_file_name(self.base),
                 log_file_name(self.base))
        stamp = mtime_ms * 1_000_000
        os.utime(os.path.join(self.workdir, log_file_name(self.base)), ns=(stamp, stamp))
        for name in names:
            fd = os.open(os.path.join(self.workdir, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in names:
            os.replace(os.path.join(self.workdir, name),
                       os.path.join(self.directory, name + CLEANED_SUFFIX))
        os.rmdir(self.workdir)
        fsync_directory(self.directory)
        for name in names:   # the log last: its .swap name is the commit point
            os.replace(os.path.join(self.directory, name + CLEANED_SUFFIX),
                       os.path.join(self.directory, name + SWAP_SUFFIX))
        fsync_directory(self.directory)

    def discard(self) -> None:
        """Remove whatever this writer left (never the live segment files)."""
        if self.segment is not None:
            self.segment.close()
            self.segment = None
        if os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)
        for name in (log_file_name(self.base), index_file_name(self.base),
                     timeindex_file_name(self.base)):
            for suffix in (CLEANED_SUFFIX, SWAP_SUFFIX):
                try:
                    os.unlink(os.path.join(self.directory, name + suffix))
                except OSError:
                    pass


@dataclass
class _Counts:
    records_removed: int = 0
    tombstones_removed: int = 0
    keyless_removed: int = 0
    empty_batches_kept: int = 0


# ---- the cleaner -------------------------------------------------------------------------------


class LogCleaner:
    """Compacts the logs that ``logs()`` lists (module doc). ``data_dir`` holds the
    checkpoint; ``clock`` is wall-clock ms (tombstone and lag ages; tests inject one)."""

    def __init__(self, data_dir: str,
                 logs: Callable[[], list[tuple[TopicPartition, "PartitionLog"]]], *,
                 config: CleanerConfig | None = None, clock: Callable[[], int] | None = None,
                 logger: logging.Logger | None = None):
        self.data_dir = data_dir
        self.config = config or CleanerConfig()
        self.logger = logger or _default_logger
        self._logs = logs
        self._clock = clock or _wall_clock_ms
        self._checkpoint_path = os.path.join(data_dir, CLEANER_CHECKPOINT)
        # Guards _first_dirty and the checkpoint file. Invariant: _first_dirty holds, per
        # partition, an offset below which the log was compacted (module doc), and the file
        # never more than the dict (it is written after the dict moved forward).
        self._checkpoint_lock = threading.Lock()
        self._first_dirty: dict[TopicPartition, int] = self._read_checkpoint()
        # Serialises passes; the fields below belong to the pass holding it.
        self._pass_lock = threading.Lock()
        # Per partition: (the log object, its truncation count) at the last pass, to notice
        # truncations; the earliest clock time a kept tombstone becomes deletable; logs whose
        # data could not be read (not tried again until reopened, as Kafka's "uncleanable").
        self._truncations_seen: dict[TopicPartition, tuple["PartitionLog", int]] = {}
        self._tombstones_due: dict[TopicPartition, int] = {}
        self._uncleanable: dict[TopicPartition, "PartitionLog"] = {}
        # Guarded by _cond: the log being cleaned now, logs whose pass must stop, stop().
        self._cond = threading.Condition()
        self._current: "PartitionLog | None" = None
        self._aborting: set = set()
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # Passes run and cleaned segments swapped in (for tests and metrics).
        self.passes = 0
        self.swaps = 0

    # ---- the checkpoint --------------------------------------------------------------------

    def _read_checkpoint(self) -> dict[TopicPartition, int]:
        try:
            return read_offset_checkpoint(self._checkpoint_path)
        except CorruptCheckpointError as e:
            self.logger.error("%s; every compacted log is treated as dirty", e)
            return {}

    def _write_checkpoint(self) -> None:
        """Write the dict, pruned to the partitions still present (caller holds the lock)."""
        present = {key for key, _ in self._logs()}
        for key in [k for k in self._first_dirty if k not in present]:
            del self._first_dirty[key]
        write_offset_checkpoint(self._checkpoint_path, self._first_dirty)

    @property
    def first_dirty_offsets(self) -> dict[TopicPartition, int]:
        """The first dirty offset of each compacted partition, as checkpointed."""
        with self._checkpoint_lock:
            return dict(self._first_dirty)

    def forget(self, key: TopicPartition) -> None:
        """Drop a partition's checkpoint entry now (its log is deleted, or a new log with
        that name was created: an old entry would call its new data clean)."""
        with self._checkpoint_lock:
            if self._first_dirty.pop(key, None) is not None:
                self._write_checkpoint()

    # ---- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (a pass every log.cleaner.backoff.ms)."""
        if self._thread is not None:
            return
        with self._cond:
            self._stopping = False
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="pylog-log-cleaner",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop_requested():
            try:
                self.run_once()
            except Exception:  # a bug: keep the thread alive, try again after the backoff
                self.logger.exception("log cleaner pass failed")
            self._wake.wait(self.config.backoff_ms / 1000)

    def stop(self) -> None:
        """Stop the thread, interrupting a pass between two batches, and wait until no pass
        runs (``run_once`` on other threads too). Passes started afterwards do nothing."""
        with self._cond:
            self._stopping = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._pass_lock:  # a pass run by another thread (run_once) has stopped too
            pass

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _stop_requested(self) -> bool:
        with self._cond:
            return self._stopping

    def abort_and_wait(self, log: "PartitionLog") -> None:
        """Make a pass over ``log`` stop (its temporary files removed) and wait until it has;
        for a log about to be deleted. Returns at once if nothing cleans it."""
        with self._cond:
            self._aborting.add(log)
            while self._current is log:
                self._cond.wait()

    def _check_abort(self, log: "PartitionLog") -> None:
        with self._cond:
            if self._stopping:
                raise _Aborted("the cleaner is stopping")
            if log in self._aborting:
                raise _Aborted("cleaning was aborted (the log is being deleted)")
        if log.closed:
            raise _Aborted("the log was closed")

    # ---- a pass ----------------------------------------------------------------------------

    def run_once(self, now_ms: int | None = None) -> list[CleanResult]:
        """Clean every compacted log that is due (filthiest first); close replaced segments
        whose delay passed. Returns what was done per log cleaned."""
        with self._pass_lock:
            now = self._clock() if now_ms is None else now_ms
            logs = self._logs()
            with self._cond:
                self._aborting = {log for log in self._aborting if not log.closed}
            due = []
            for key, log in logs:
                if self._stop_requested():
                    break
                if log.closed or not log.config.cleanup_compact \
                        or self._uncleanable.get(key) is log:
                    continue
                try:
                    plan = self._plan(key, log, now, open_files=False)
                except (LogClosedError, _Aborted):
                    continue
                except Exception:
                    if log.closed:
                        continue
                    self.logger.exception("%s: cannot plan its cleaning; not trying again "
                                          "until it is reopened", log.directory)
                    self._uncleanable[key] = log
                    continue
                if plan.reason is not None:
                    due.append(plan)
            due.sort(key=lambda p: p.dirty_ratio, reverse=True)
            results = []
            for plan in due:
                if self._stop_requested():
                    break
                result = self._clean(plan.key, plan.log, now)
                if result is not None:
                    results.append(result)
            self._close_retired(logs)
            self.passes += 1
            return results

    def _close_retired(self, logs) -> None:
        older_than = time.monotonic() - self.config.file_delete_delay_ms / 1000
        for _, log in logs:
            try:
                log.close_retired_segments(older_than)
            except Exception:
                self.logger.exception("%s: closing replaced segments failed", log.directory)

    def _plan(self, key: TopicPartition, log: "PartitionLog", now: int, *,
              open_files: bool) -> _Plan:
        config = log.config
        with log.segments_held() as segments:
            truncations = log.truncation_count
            count = len(segments)
            bases = [s.base_offset for s in segments]
            next_offsets = [s.next_offset for s in segments]
            sizes = [s.size for s in segments]
            first_dirty = self._first_dirty_of(key, log, truncations, log.log_start_offset,
                                               next_offsets[-1])
            clean = 0
            while clean < count - 1 and bases[clean + 1] <= first_dirty:
                clean += 1
            upper = min(log.high_watermark, bases[-1])
            if config.min_compaction_lag_ms > 0:
                for s in segments[clean:count - 1]:
                    if s.max_timestamp > now - config.min_compaction_lag_ms:
                        upper = min(upper, s.base_offset)
                        break
            cleanable = 0
            while cleanable < count - 1 and next_offsets[cleanable] <= upper:
                cleanable += 1
            clean = min(clean, cleanable)
            clean_bytes = sum(sizes[:clean])
            dirty_bytes = sum(sizes[clean:cleanable])
            total = clean_bytes + dirty_bytes
            ratio = dirty_bytes / total if total else 0.0
            reason = None
            if dirty_bytes > 0 and ratio > config.min_cleanable_dirty_ratio:
                reason = f"dirty ratio {ratio:.2f} > {config.min_cleanable_dirty_ratio}"
            elif dirty_bytes > 0 and config.max_compaction_lag_ms < KAFKA_LONG_MAX:
                oldest = _oldest_first_batch_timestamp(segments[clean:cleanable])
                if oldest is not None and oldest < now - config.max_compaction_lag_ms:
                    reason = (f"a dirty record is older than max.compaction.lag.ms="
                              f"{config.max_compaction_lag_ms}")
            if reason is None and clean > 0 and \
                    self._tombstones_due.get(key, KAFKA_LONG_MAX) <= now:
                reason = "tombstones past delete.retention.ms"
            plan = _Plan(key=key, log=log, truncations=truncations, first_dirty=first_dirty,
                         segments=list(segments), bases=bases, next_offsets=next_offsets,
                         sizes=sizes,
                         index_bytes=[(s.index_entries * INDEX_ENTRY_SIZE,
                                       s.timeindex_entries * TIMEINDEX_ENTRY_SIZE)
                                      for s in segments],
                         clean=clean, cleanable=cleanable, dirty_ratio=ratio, reason=reason)
            if open_files and reason is not None:
                try:
                    for s in segments:
                        plan.fds.append(os.open(s.log_path,
                                                os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
                    plan.mtimes_ms = [os.fstat(fd).st_mtime_ns // 1_000_000
                                      for fd in plan.fds]
                except BaseException:
                    plan.close_files()
                    raise
            return plan

    def _first_dirty_of(self, key: TopicPartition, log: "PartitionLog", truncations: int,
                        log_start: int, log_end: int) -> int:
        seen = self._truncations_seen.get(key)
        with self._checkpoint_lock:
            offset = self._first_dirty.get(key)
            if seen is not None and seen[0] is log and seen[1] != truncations:
                self.logger.info("%s: truncated since the last cleaning: all of it is dirty",
                                 log.directory)
                offset = None
            if offset is None or not log_start <= offset <= log_end:
                offset = log_start
                self._first_dirty[key] = offset
        self._truncations_seen[key] = (log, truncations)
        return offset

    def _clean(self, key: TopicPartition, log: "PartitionLog", now: int) -> CleanResult | None:
        with self._cond:
            if log in self._aborting or self._stopping:
                return None
            self._current = log
        plan = None
        try:
            plan = self._plan(key, log, now, open_files=True)
            if plan.reason is None:
                return None
            return self._clean_log(plan, now)
        except (_Aborted, LogClosedError) as e:
            self.logger.info("%s: cleaning stopped: %s", log.directory, e)
            return None
        except core.CoreError as e:
            self.logger.error("%s: cannot clean (damaged data: %s); not trying again until "
                              "it is reopened", log.directory, e)
            self._uncleanable[key] = log
            return None
        except Exception:
            if log.closed:
                return None
            self.logger.exception("%s: cleaning failed; not trying again until it is "
                                  "reopened", log.directory)
            self._uncleanable[key] = log
            return None
        finally:
            if plan is not None:
                plan.close_files()
            with self._cond:
                self._current = None
                self._cond.notify_all()

    def _clean_log(self, plan: _Plan, now: int) -> CleanResult:
        log = plan.log
        config = log.config
        chunk = self.config.io_buffer_size
        offset_map, end = self._build_offset_map(plan, chunk)
        clean_end = max(plan.first_dirty, plan.bases[end])
        groups = _group_segments(plan, end, config)
        counts = _Counts()
        producers: dict[int, tuple[int, int]] | None = None

        def is_last_of_live_producer(info: BatchInfo) -> bool:
            nonlocal producers
            if producers is None:
                producers = self._producer_last_batches(plan, chunk)
            last = producers.get(info.producer_id)
            return (last is not None and last[0] == info.last_offset
                    and now - last[1] < config.producer_id_expiration_ms)

        segments_after = len(plan.segments)
        bytes_after = sum(plan.sizes)
        tombstones_due = KAFKA_LONG_MAX
        completed = True
        for group in groups:
            outcome = self._clean_group(plan, group, offset_map, now, chunk, counts,
                                        is_last_of_live_producer)
            if outcome is None:
                completed = False
                break
            new_size, due = outcome
            tombstones_due = min(tombstones_due, due)
            if new_size is not None:
                segments_after -= len(group) - 1
                bytes_after += new_size - sum(plan.sizes[i] for i in group)
        if completed:
            with self._checkpoint_lock:
                self._first_dirty[plan.key] = clean_end
                self._write_checkpoint()
            if tombstones_due < KAFKA_LONG_MAX:
                self._tombstones_due[plan.key] = tombstones_due
            else:
                self._tombstones_due.pop(plan.key, None)
        result = CleanResult(
            topic=plan.key[0], partition=plan.key[1], reason=plan.reason or "",
            dirty_ratio=plan.dirty_ratio, first_dirty=plan.first_dirty,
            clean_end=clean_end if completed else plan.first_dirty,
            segments_before=len(plan.segments), segments_after=segments_after,
            bytes_before=sum(plan.sizes), bytes_after=bytes_after,
            records_removed=counts.records_removed,
            tombstones_removed=counts.tombstones_removed,
            keyless_removed=counts.keyless_removed,
            empty_batches_kept=counts.empty_batches_kept, completed=completed)
        self.logger.info(
            "%s: cleaned offsets below %d (%s): %d -> %d segments, %d -> %d bytes, %d records "
            "removed (%d tombstones, %d without a key), %d empty batches kept%s",
            log.directory, result.clean_end, result.reason, result.segments_before,
            result.segments_after, result.bytes_before, result.bytes_after,
            result.records_removed, result.tombstones_removed, result.keyless_removed,
            result.empty_batches_kept, "" if completed else "; stopped early")
        return result

    def _build_offset_map(self, plan: _Plan, chunk: int) -> tuple[dict[bytes, int], int]:
        """key -> latest offset over the dirty section, and the index of the first segment
        past the section it covers (it ends early when the map is full)."""
        offset_map: dict[bytes, int] = {}
        used = 0
        first_dirty = plan.first_dirty
        end = plan.clean
        for i in range(plan.clean, plan.cleanable):
            for _, info, raw in _iter_batches(plan.fds[i], plan.sizes[i], chunk):
                self._check_abort(plan.log)
                if info.is_control or info.next_offset <= first_dirty:
                    continue
                base = info.base_offset
                for offset_delta, _, key, _, _ in _records_of(info, raw):
                    offset = base + offset_delta
                    if key is None or offset < first_dirty:
                        continue
                    if key not in offset_map:
                        used += len(key) + _MAP_ENTRY_OVERHEAD
                    offset_map[key] = offset
            end = i + 1
            if used >= self.config.dedupe_buffer_size:
                self.logger.info("%s: offset map full after segment %d; the rest of the "
                                 "dirty section waits for the next pass", plan.log.directory,
                                 plan.bases[i])
                break
        return offset_map, end

    def _producer_last_batches(self, plan: _Plan, chunk: int) -> dict[int, tuple[int, int]]:
        """producer id -> (last offset, max timestamp) of its last batch in the whole log."""
        last: dict[int, tuple[int, int]] = {}
        for fd, size in zip(plan.fds, plan.sizes):
            for info in _iter_headers(fd, size, chunk):
                if info.producer_id >= 0:
                    last[info.producer_id] = (info.last_offset, info.max_timestamp)
        return last

    def _clean_group(self, plan: _Plan, group: list[int], offset_map: dict[bytes, int],
                     now: int, chunk: int, counts: _Counts,
                     is_last_of_live_producer: Callable[[BatchInfo], bool]
                     ) -> tuple[int | None, int] | None:
        """Filter one group; swap it in if anything changed. Returns (the new segment's size,
        or None if nothing changed; when its kept tombstones become deletable), or None if
        the swap could not be made (the log changed)."""
        log = plan.log
        config = log.config
        retention = config.delete_retention_ms
        dirty = [i >= plan.clean for i in group]
        group_time = now if any(dirty) else max(plan.mtimes_ms[i] for i in group)
        writer: _CleanedSegmentWriter | None = None
        has_tombstones = False
        unchanged_due = KAFKA_LONG_MAX
        try:
            for member, i in enumerate(group):
                fd = plan.fds[i]
                member_time = now if dirty[member] else plan.mtimes_ms[i]
                drop_tombstones = not dirty[member] and now - plan.mtimes_ms[i] >= retention
                for position, info, raw in _iter_batches(fd, plan.sizes[i], chunk):
                    self._check_abort(log)
                    replacement, kept_tombstones = _filter_batch(
                        info, raw, offset_map, drop_tombstones, counts,
                        is_last_of_live_producer)
                    if kept_tombstones:
                        has_tombstones = True
                        unchanged_due = min(unchanged_due, member_time + retention)
                    if replacement is raw and writer is None:
                        continue
                    if writer is None:
                        writer = _CleanedSegmentWriter(
                            log.directory, plan.bases[group[0]],
                            index_interval_bytes=config.index_interval_bytes,
                            max_index_bytes=_index_room(plan, group, config))
                        # Everything before this batch was kept as it is: copy it over.
                        for earlier in group[:member]:
                            _copy_batches(writer, plan.fds[earlier], plan.sizes[earlier],
                                          chunk)
                        _copy_batches(writer, fd, position, chunk)
                    if replacement is not None:
                        writer.add(replacement)
            if writer is None:
                for member, i in enumerate(group):
                    if dirty[member]:   # passed for the first time: its tombstones' clock
                        stamp = now * 1_000_000
                        os.utime(plan.fds[i], ns=(stamp, stamp))
                        os.fsync(plan.fds[i])   # before the checkpoint calls it clean
                return None, unchanged_due
            writer.finish(group_time)
            new_size = writer.size
            # From here on the files are the crash recovery's: a swap that fails half-way
            # must leave them for finish_interrupted_cleaning, never delete them.
            swapped, writer = writer, None
            replaced = [plan.segments[i] for i in group]
            base = plan.bases[group[0]]
            new_segment = log.replace_segments(
                replaced, lambda: install_swapped_segment(
                    log.directory, base, [plan.bases[i] for i in group],
                    index_interval_bytes=config.index_interval_bytes,
                    max_index_bytes=config.segment_index_bytes, logger=self.logger),
                truncations=plan.truncations)
            if new_segment is None:
                self.logger.info("%s: the log changed during cleaning; cleaned segment %d "
                                 "discarded", log.directory, base)
                swapped.discard()
                return None
            self.swaps += 1
            fsync_directory(log.directory)
            return new_size, (group_time + retention if has_tombstones else KAFKA_LONG_MAX)
        except BaseException:
            if writer is not None:
                writer.discard()
            raise


def _copy_batches(writer: _CleanedSegmentWriter, fd: int, end: int, chunk: int) -> None:
    """Copy the batches in bytes [0, end) of a segment file (already read and checked)."""
    position = 0
    while position < end:
        data = _pread_exact(fd, min(chunk, end - position), position)
        batches, _ = core.scan_batches(data, check_crc=False, check_records=False)
        if batches.count == 0:   # one batch larger than the chunk
            whole = core.peek_batch(data[:BATCH_HEADER_SIZE]).size
            data = _pread_exact(fd, whole, position)
            taken = whole
        else:
            taken = batches.end
        writer.add(memoryview(data)[:taken])
        position += taken


def _filter_batch(info: BatchInfo, raw: memoryview, offset_map: dict[bytes, int],
                  drop_tombstones: bool, counts: _Counts,
                  is_last_of_live_producer: Callable[[BatchInfo], bool]):
    """(what to write instead of the batch: ``raw`` itself if every record stays, new bytes,
    or None to drop it; whether a kept record is a tombstone). Module doc, step 3."""
    if info.is_control:
        return raw, False
    if info.record_count == 0:   # an empty batch an earlier pass kept for its producer
        keep = info.producer_id >= 0 and is_last_of_live_producer(info)
        return (raw if keep else None), False
    rows = _records_of(info, raw)
    base = info.base_offset
    kept = []
    kept_tombstones = False
    for row in rows:
        offset_delta, _, key, value, _ = row
        if key is None:
            counts.keyless_removed += 1
        elif offset_map.get(key, -1) > base + offset_delta:
            pass
        elif value is None and drop_tombstones:
            counts.tombstones_removed += 1
        else:
            kept.append(row)
            kept_tombstones = kept_tombstones or value is None
            continue
        counts.records_removed += 1
    if len(kept) == len(rows):
        return raw, kept_tombstones
    if kept:
        return _encode_batch(info, kept), kept_tombstones
    if info.producer_id >= 0 and is_last_of_live_producer(info):
        counts.empty_batches_kept += 1
        return _empty_batch(info), False
    return None, False


def _batch_header(info: BatchInfo, **changes) -> dict:
    header = dict(base_offset=info.base_offset,
                  partition_leader_epoch=info.partition_leader_epoch,
                  attributes=info.attributes, producer_id=info.producer_id,
                  producer_epoch=info.producer_epoch, base_sequence=info.base_sequence,
                  last_offset_delta=info.last_offset_delta, record_count=info.record_count,
                  first_timestamp=info.first_timestamp, max_timestamp=info.max_timestamp)
    header.update(changes)
    return header


def _encode_batch(info: BatchInfo, rows: list[tuple]) -> bytes:
    """The batch ``info`` holding only ``rows``: same offsets, deltas and header fields; the
    records re-encoded (and recompressed with the batch's codec)."""
    writer = RecordWriter(BATCH_HEADER_SIZE)
    for offset_delta, timestamp_delta, key, value, headers in rows:
        writer.write(offset_delta, timestamp_delta, key, value, headers)
    if info.timestamp_type:   # LogAppendTime: every record reads the batch's maxTimestamp
        max_timestamp = info.max_timestamp
    else:
        max_timestamp = info.first_timestamp + max(row[1] for row in rows)
    header = _batch_header(info, record_count=len(rows), max_timestamp=max_timestamp)
    if not info.compression:
        return writer.finish(**header)
    payload = codecs.compress(info.compression, writer.view())
    batch = bytearray(BATCH_HEADER_SIZE + len(payload))
    batch[BATCH_HEADER_SIZE:] = payload
    core.finish_batch(batch, len(batch), **header)
    return bytes(batch)


def _empty_batch(info: BatchInfo) -> bytes:
    """Kafka's empty batch header for a producer's last batch: no records, no compression,
    the original offsets span, producer fields and maxTimestamp as both timestamps."""
    batch = bytearray(BATCH_HEADER_SIZE)
    core.finish_batch(batch, len(batch), **_batch_header(
        info, attributes=info.attributes & ~ATTR_COMPRESSION_MASK, record_count=0,
        first_timestamp=info.max_timestamp))
    return bytes(batch)


def _index_room(plan: _Plan, group: list[int], config) -> int:
    """Index capacity (bytes) for a group's cleaned segment: the configured size, or more if
    the group's bytes could need more entries (a config lowered since they were written)."""
    entries = sum(plan.sizes[i] for i in group) // max(config.index_interval_bytes,
                                                        BATCH_HEADER_SIZE) + 1
    return max(config.segment_index_bytes, entries * TIMEINDEX_ENTRY_SIZE)


def _group_segments(plan: _Plan, end: int, config) -> list[list[int]]:
    """Segments [0, end) in consecutive runs that fit one segment (Kafka's
    groupSegmentsBySize, on the original sizes: a cleaned run is never larger)."""
    groups: list[list[int]] = []
    i = 0
    while i < end:
        group = [i]
        size = plan.sizes[i]
        index_bytes, timeindex_bytes = plan.index_bytes[i]
        i += 1
        while i < end:
            more_index, more_time = plan.index_bytes[i]
            if (size + plan.sizes[i] > config.segment_bytes
                    or index_bytes + more_index > config.segment_index_bytes
                    or timeindex_bytes + more_time > config.segment_index_bytes
                    or plan.next_offsets[i] - 1 - plan.bases[group[0]] > _MAX_RELATIVE_OFFSET):
                break
            group.append(i)
            size += plan.sizes[i]
            index_bytes += more_index
            timeindex_bytes += more_time
            i += 1
        groups.append(group)
    return groups


def _oldest_first_batch_timestamp(segments: list[Segment]) -> int | None:
    """The smallest positive maxTimestamp among the first batches of ``segments`` (Kafka's
    earliest dirty segment timestamp for max.compaction.lag.ms); the caller holds the log's
    lock, so reading through the Segment is safe."""
    oldest = None
    for segment in segments:
        if segment.size < BATCH_HEADER_SIZE:
            continue
        stamp = core.peek_batch(segment.read(0, BATCH_HEADER_SIZE)).max_timestamp
        if stamp > 0 and (oldest is None or stamp < oldest):
            oldest = stamp
    return oldest
