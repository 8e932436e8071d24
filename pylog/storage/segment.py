"""One log segment: ``<base>.log`` + ``.index`` + ``.timeindex`` (Kafka's layout, DESIGN §4).

``Segment`` owns the three file descriptors, the two index memory maps and the C
``pl_segment`` struct that describes them; the C core (csrc/segment.c) writes batches and index
entries and walks batch headers. The index rule, what a rebuilt index looks like and what is
trusted on open are explained at the top of csrc/segment.c.

Theory of operation
-------------------
Index files. An active segment's index files are preallocated (sparse) to
``max_index_bytes`` and mapped read-write; C fills entries in the map. ``trim_indexes`` (at
roll) and ``close`` cut each file to its used entries, so the size of a cleanly closed index
file says how many entries it has (as in Kafka). On open, an index is mapped at its file size;
it grows back to ``max_index_bytes`` on demand when an append finds it full (a reopened
active segment), so rolled segments are never expanded.

Opening. With ``recover_from=None`` the index files are trusted if ``pl_segment_load`` accepts
them: it keeps their plausible prefix, checks the last entry of each against the batch header
it names and walks headers from about there to the end of the .log (no CRC), re-adding entries
the files lack. A preallocated index left by a crash has a zero tail, which simply ends the
plausible prefix. Entries in the middle are not read back on open (as in Kafka); each lookup
checks the entry it uses, so a damaged one raises OffsetError rather than answering wrong. If
the files are
missing, have a size that is not a multiple of the entry size, contradict the log, or the log's
header chain does not end at the end of the file (a torn tail), the whole segment is recovered
from position 0. With ``recover_from=offset`` (normally the log's recovery point) recovery
starts at the last index entry at or below that offset, a batch boundary known from the index,
so data below it is trusted and everything after it is CRC-checked. Recovery stops at the first
bad or torn batch and the .log is cut there; the ``RecoveryReport`` says where and why.

Threads. Every method must be called from one owner thread, except ``flush`` (any thread, at
any time) and ``read``/``read_into`` (any thread: plain pread). ``_lock`` guards the life of
the memory maps and descriptors: ``flush`` holds it while it fsyncs and msyncs, and
``trim_indexes``, the index growth in ``append``, ``close`` and ``delete`` take it before they
unmap. Appends do not take it otherwise: writing to the map or the file while another thread
msyncs or fsyncs them is safe. Everything appended before ``flush`` was called is durable when
it returns.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass

from pylog._core import ffi, lib
from pylog.core import STATUS_NAMES, check, error_from, new_error

INDEX_ENTRY_SIZE = 8
TIMEINDEX_ENTRY_SIZE = 12
MAX_SEGMENT_BYTES = (1 << 31) - 1     # positions are u32 in the index, int32 in Kafka
MIN_BATCH_SIZE = lib.PL_BATCH_HEADER_SIZE
DEFAULT_INDEX_INTERVAL_BYTES = 4096
DEFAULT_MAX_INDEX_BYTES = 10 * 1024 * 1024
DEFAULT_RECOVERY_SCRATCH_BYTES = 1 << 20

_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
_INDEX_ENTRY = struct.Struct(">II")   # relative offset, position


def log_file_name(base_offset: int) -> str:
    return f"{base_offset:020d}.log"


def index_file_name(base_offset: int) -> str:
    return f"{base_offset:020d}.index"


def timeindex_file_name(base_offset: int) -> str:
    return f"{base_offset:020d}.timeindex"


@dataclass(frozen=True)
class RecoveryReport:
    """What recovery of one segment did, for the caller to log.

    ``cause``: why it ran. ``scanned_from``: the byte position the CRC scan started at.
    ``valid_end``: the end of the last good batch, where the .log now ends.
    ``truncated_bytes``: bytes cut off the .log. ``reason``: what stopped the scan (status
    and position), None if the file simply ended. ``batches``: batches validated."""

    path: str
    cause: str
    scanned_from: int
    valid_end: int
    truncated_bytes: int
    reason: str | None
    batches: int


def _index_entries_bound(log_size: int, interval: int) -> int:
    """Most .index (and .timeindex) entries a log of log_size bytes can need: an entry follows
    at least max(interval, one minimal batch) bytes."""
    return log_size // max(interval, MIN_BATCH_SIZE) + 1


class _IndexFile:
    """One index file: its descriptor, its read-write map and the cffi pointer into the map.

    Invariants: ``capacity`` entries of ``entry_size`` bytes are mapped (no map when 0); the
    pointer, when not NULL, keeps an export of the map, so it is released before the map is
    closed."""

    def __init__(self, path: str, fd: int, entry_size: int):
        self.path = path
        self.fd = fd
        self.entry_size = entry_size
        self.map: mmap.mmap | None = None
        self.pointer = ffi.NULL
        self.capacity = 0

    def file_entries(self) -> tuple[int, int]:
        """(entries, leftover bytes) of the file as it is on disk."""
        size = os.fstat(self.fd).st_size
        return divmod(size, self.entry_size)

    def map_entries(self, entries: int, *, resize_file: bool = True) -> None:
        """Map exactly ``entries`` entries, first setting the file to that size (a grown file
        is a sparse zero tail)."""
        self.unmap()
        size = entries * self.entry_size
        if resize_file and os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)
        if size > 0:
            self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self.pointer = ffi.from_buffer("uint8_t[]", self.map, require_writable=True)
        self.capacity = entries

    def unmap(self) -> None:
        if self.pointer is not ffi.NULL:
            ffi.release(self.pointer)
            self.pointer = ffi.NULL
        if self.map is not None:
            self.map.close()
            self.map = None
        self.capacity = 0

    def flush(self) -> None:
        if self.map is not None:
            self.map.flush()

    def close(self, used_entries: int | None = None) -> None:
        """Unmap, cut the file to ``used_entries`` entries (if given) and close it."""
        self.unmap()
        if self.fd < 0:
            return
        try:
            if used_entries is not None:
                os.ftruncate(self.fd, used_entries * self.entry_size)
        finally:
            os.close(self.fd)
            self.fd = -1


class Segment:
    """One segment of a partition's log. Create with ``Segment.create`` or ``Segment.open``.

    Invariants (the C struct's, see csrc/pylog_core.h): ``size`` bytes of whole batches are in
    the .log; ``next_offset`` is one past the last batch's last offset (``base_offset`` when
    empty); the maps hold the index entries of exactly those batches."""

    def __init__(self, directory: str, base_offset: int, log_fd: int, index: _IndexFile,
                 timeindex: _IndexFile, *, index_interval_bytes: int, max_index_bytes: int):
        self._directory = directory
        self._base_offset = base_offset
        self._log_path = os.path.join(directory, log_file_name(base_offset))
        self._log_fd = log_fd
        self._index = index
        self._timeindex = timeindex
        self._index_interval_bytes = index_interval_bytes
        self._max_index_bytes = max_index_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._err = new_error()
        self._out = ffi.new("int64_t[2]")
        seg = ffi.new("pl_segment *")
        seg.log_fd = log_fd
        seg.base_offset = base_offset
        seg.next_offset = base_offset
        seg.log_size = 0
        seg.index_interval_bytes = index_interval_bytes
        seg.max_timestamp = -1
        seg.offset_of_max_timestamp = -1
        self._seg = seg
        self._attach_maps()
        self.created_monotonic = time.monotonic()
        self._first_append_time: float | None = None

    # ---- construction --------------------------------------------------------------------

    @staticmethod
    def _check_config(base_offset: int, index_interval_bytes: int, max_index_bytes: int):
        if base_offset < 0:
            raise ValueError(f"negative base offset {base_offset}")
        if not 0 <= index_interval_bytes <= 0xFFFFFFFF:
            raise ValueError(f"index_interval_bytes {index_interval_bytes} out of range")
        if max_index_bytes < TIMEINDEX_ENTRY_SIZE:
            raise ValueError(f"max_index_bytes {max_index_bytes} holds no index entry")

    @classmethod
    def create(cls, directory: str, base_offset: int, *,
               index_interval_bytes: int = DEFAULT_INDEX_INTERVAL_BYTES,
               max_index_bytes: int = DEFAULT_MAX_INDEX_BYTES) -> Segment:
        """A new, empty segment; FileExistsError if its .log exists. Index files left without
        a .log are overwritten."""
        cls._check_config(base_offset, index_interval_bytes, max_index_bytes)
        log_path = os.path.join(directory, log_file_name(base_offset))
        log_fd = os.open(log_path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        fds = [log_fd]
        try:
            index = _IndexFile(os.path.join(directory, index_file_name(base_offset)),
                               os.open(os.path.join(directory, index_file_name(base_offset)),
                                       _OPEN_FLAGS | os.O_CREAT | os.O_TRUNC, 0o644),
                               INDEX_ENTRY_SIZE)
            fds.append(index.fd)
            timeindex = _IndexFile(
                os.path.join(directory, timeindex_file_name(base_offset)),
                os.open(os.path.join(directory, timeindex_file_name(base_offset)),
                        _OPEN_FLAGS | os.O_CREAT | os.O_TRUNC, 0o644),
                TIMEINDEX_ENTRY_SIZE)
            fds.append(timeindex.fd)
            index.map_entries(max_index_bytes // INDEX_ENTRY_SIZE)
            timeindex.map_entries(max_index_bytes // TIMEINDEX_ENTRY_SIZE)
            return cls(directory, base_offset, log_fd, index, timeindex,
                       index_interval_bytes=index_interval_bytes,
                       max_index_bytes=max_index_bytes)
        except BaseException:
            for fd in fds:
                os.close(fd)
            os.unlink(log_path)
            raise

    @classmethod
    def open(cls, directory: str, base_offset: int, *,
             index_interval_bytes: int = DEFAULT_INDEX_INTERVAL_BYTES,
             max_index_bytes: int = DEFAULT_MAX_INDEX_BYTES,
             recover_from: int | None = None,
             scratch_bytes: int = DEFAULT_RECOVERY_SCRATCH_BYTES
             ) -> tuple[Segment, RecoveryReport | None]:
        """Open an existing segment (FileNotFoundError if its .log is missing).

        ``recover_from``: None to trust the index files when they are consistent (otherwise
        the segment is recovered from position 0), or an offset, normally the recovery point:
        batches from the last index entry at or below it are CRC-checked, the rest trusted.
        The report is None when nothing was recovered. ``scratch_bytes``: the recovery read
        buffer's initial size (it grows for a larger batch)."""
        cls._check_config(base_offset, index_interval_bytes, max_index_bytes)
        log_path = os.path.join(directory, log_file_name(base_offset))
        log_fd = os.open(log_path, _OPEN_FLAGS)
        fds = [log_fd]
        try:
            missing = []
            files = []
            for name, entry_size in ((index_file_name(base_offset), INDEX_ENTRY_SIZE),
                                     (timeindex_file_name(base_offset), TIMEINDEX_ENTRY_SIZE)):
                path = os.path.join(directory, name)
                try:
                    fd = os.open(path, _OPEN_FLAGS)
                except FileNotFoundError:
                    fd = os.open(path, _OPEN_FLAGS | os.O_CREAT, 0o644)
                    missing.append(name)
                fds.append(fd)
                files.append(_IndexFile(path, fd, entry_size))
            index, timeindex = files
            segment = cls(directory, base_offset, log_fd, index, timeindex,
                          index_interval_bytes=index_interval_bytes,
                          max_index_bytes=max_index_bytes)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        try:
            report = segment._load(missing, recover_from, scratch_bytes)
        except BaseException:
            segment.close()
            raise
        return segment, report

    # ---- opening: trust or recover -------------------------------------------------------

    def _load(self, missing: list[str], recover_from: int | None,
              scratch_bytes: int) -> RecoveryReport | None:
        file_size = os.fstat(self._log_fd).st_size
        cause = None
        if missing:
            cause = f"index file(s) missing: {', '.join(missing)}"
        for f in (self._index, self._timeindex):
            entries, leftover = f.file_entries()
            if leftover and cause is None:
                cause = (f"{os.path.basename(f.path)} has {entries * f.entry_size + leftover} "
                         f"bytes, not a multiple of {f.entry_size}")
            f.map_entries(entries, resize_file=False)
        self._attach_maps(used_from_files=True)

        if cause is None and recover_from is None:
            status = self._call_load(file_size)
            if status == lib.PL_OK:
                self._after_open()
                return None
            if status == lib.PL_E_IO:
                check(status, self._err)
            cause = f"index or log inconsistent: {self._describe(status)}"

        start = 0
        if cause is None:
            cause = f"recovery from offset {recover_from}"
            start = self._index_position_at_or_below(recover_from)
            if start > file_size:
                start = 0
        report = self._recover(cause, start, file_size, scratch_bytes)
        self._after_open()
        return report

    def _call_load(self, end_position: int) -> int:
        """pl_segment_load, growing the maps if the log needs more entries than they hold."""
        status = lib.pl_segment_load(self._seg, end_position, self._err)
        if status == lib.PL_E_FULL:
            self._grow_maps(_index_entries_bound(end_position, self._index_interval_bytes))
            status = lib.pl_segment_load(self._seg, end_position, self._err)
        return status

    def _index_position_at_or_below(self, offset: int) -> int:
        """Position of the last .index entry naming an offset <= ``offset`` (0 if none). The
        entries are not trusted yet: a wrong answer makes pl_segment_load refuse the prefix,
        and recovery then starts from 0."""
        relative = offset - self._base_offset
        index = self._index
        if relative <= 0 or index.map is None:
            return 0
        # A crash leaves a preallocated file: real entries, then zeros (position 0 is never
        # an entry). Search only the entries before the zero tail.
        lo, hi = 0, self._seg.index_entries
        while lo < hi:
            mid = (lo + hi) // 2
            if _INDEX_ENTRY.unpack_from(index.map, mid * INDEX_ENTRY_SIZE)[1] != 0:
                lo = mid + 1
            else:
                hi = mid
        lo, hi = 0, lo
        while lo < hi:
            mid = (lo + hi) // 2
            if _INDEX_ENTRY.unpack_from(index.map, mid * INDEX_ENTRY_SIZE)[0] <= relative:
                lo = mid + 1
            else:
                hi = mid
        return _INDEX_ENTRY.unpack_from(index.map, (lo - 1) * INDEX_ENTRY_SIZE)[1] if lo else 0

    def _recover(self, cause: str, start: int, file_size: int,
                 scratch_bytes: int) -> RecoveryReport:
        self._grow_maps(_index_entries_bound(file_size, self._index_interval_bytes))
        scratch = bytearray(max(scratch_bytes, MIN_BATCH_SIZE))
        valid_end = ffi.new("int64_t *")
        err = self._err
        batches = 0
        scanned_from = start
        while True:
            status = lib.pl_segment_recover(self._seg, start, ffi.from_buffer(scratch),
                                            len(scratch), valid_end, err)
            if status == lib.PL_E_CAPACITY:
                batches += max(err.batch_index, 0)
                needed = err.error_position
                scratch = bytearray(max(needed, 2 * len(scratch)))
                start = err.batch_position
                continue
            if status == lib.PL_OK:
                break
            if status == lib.PL_E_IO or start == 0:
                check(status, err)
            # The trusted prefix before `start` did not hold up: recover the whole segment.
            cause = f"{cause}; index does not match the log before byte {start}, from 0"
            start = scanned_from = 0
            batches = 0
        batches += max(err.batch_index, 0)
        reason = None if err.status == lib.PL_OK else self._describe(err.status)
        end = valid_end[0]
        if file_size > end:
            os.ftruncate(self._log_fd, end)
        return RecoveryReport(path=self._log_path, cause=cause, scanned_from=scanned_from,
                              valid_end=end, truncated_bytes=max(file_size - end, 0),
                              reason=reason, batches=batches)

    def _describe(self, status: int) -> str:
        message = ffi.string(self._err.message).decode("utf-8", "replace")
        return f"{STATUS_NAMES.get(status, status)}: {message}"

    def _after_open(self) -> None:
        if self.size > 0:
            self._first_append_time = self.created_monotonic

    # ---- maps ----------------------------------------------------------------------------

    def _attach_maps(self, *, used_from_files: bool = False) -> None:
        """Point the C struct at the current maps. ``used_from_files``: every mapped entry
        counts as used (pl_segment_load then keeps the plausible ones)."""
        seg = self._seg
        for f, ptr_field, max_field, used_field in (
                (self._index, "index", "index_max_entries", "index_entries"),
                (self._timeindex, "timeindex", "timeindex_max_entries", "timeindex_entries")):
            setattr(seg, ptr_field, f.pointer)
            setattr(seg, max_field, f.capacity)
            if used_from_files:
                setattr(seg, used_field, f.capacity)
            elif getattr(seg, used_field) > f.capacity:
                raise AssertionError("index entries in use past the map")

    def _grow_maps(self, entries: int) -> None:
        """Make each index hold at least ``entries`` entries (and at least its configured
        size), keeping the entries in use."""
        with self._lock:
            for f, configured in ((self._index, self._max_index_bytes // INDEX_ENTRY_SIZE),
                                  (self._timeindex,
                                   self._max_index_bytes // TIMEINDEX_ENTRY_SIZE)):
                want = max(entries, configured)
                if f.capacity < want:
                    f.map_entries(want)
            self._attach_maps()

    def _trim_maps(self) -> None:
        """Cut each index file to its used entries (caller holds _lock)."""
        self._index.map_entries(self._seg.index_entries)
        self._timeindex.map_entries(self._seg.timeindex_entries)
        self._attach_maps()

    # ---- properties ----------------------------------------------------------------------

    @property
    def base_offset(self) -> int:
        return self._base_offset

    @property
    def next_offset(self) -> int:
        """The offset the next appended batch may start at (base_offset when empty)."""
        return self._seg.next_offset

    @property
    def size(self) -> int:
        """Bytes in the .log: where the next batch goes."""
        return self._seg.log_size

    @property
    def max_timestamp(self) -> int:
        """The largest batch maxTimestamp here, -1 if none."""
        return self._seg.max_timestamp

    @property
    def offset_of_max_timestamp(self) -> int:
        """The last offset of the first batch that had max_timestamp, -1 if none."""
        return self._seg.offset_of_max_timestamp

    @property
    def index_entries(self) -> int:
        return self._seg.index_entries

    @property
    def timeindex_entries(self) -> int:
        return self._seg.timeindex_entries

    @property
    def log_path(self) -> str:
        return self._log_path

    @property
    def index_path(self) -> str:
        return self._index.path

    @property
    def timeindex_path(self) -> str:
        return self._timeindex.path

    @property
    def first_append_time(self) -> float | None:
        """time.monotonic() of the first append (for segment.ms); the open time for a
        segment opened with data; None while empty."""
        return self._first_append_time

    @property
    def closed(self) -> bool:
        return self._closed

    def is_full(self, batch_len: int) -> bool:
        """True if ``batch_len`` more bytes cannot go into this segment: they would pass the
        2^31-1 byte limit, or an index (at its configured size) could lack room for them."""
        if self.size + batch_len > MAX_SEGMENT_BYTES:
            return True
        needed = batch_len // max(self._index_interval_bytes, MIN_BATCH_SIZE) + 1
        seg = self._seg
        index_cap = max(self._index.capacity, self._max_index_bytes // INDEX_ENTRY_SIZE)
        time_cap = max(self._timeindex.capacity,
                       self._max_index_bytes // TIMEINDEX_ENTRY_SIZE)
        return (seg.index_entries + needed > index_cap
                or seg.timeindex_entries + needed > time_cap)

    # ---- writing -------------------------------------------------------------------------

    def append(self, buf, batches) -> None:
        """Append validated, stamped batches: ``buf`` is their bytes, ``batches`` the
        ``core.BatchList`` that validated them (positions counted from buf[0]). Raises
        SegmentFullError (roll), OffsetError (offsets go backwards or leave the 32-bit
        relative range), CoreIOError; nothing is written when it raises."""
        self._check_open()
        data = buf if type(buf) is bytes else ffi.from_buffer(buf)
        length = len(buf)
        count = len(batches)
        infos = batches.c_infos if count else ffi.NULL
        err = self._err
        status = lib.pl_segment_append(self._seg, data, length, infos, count, err)
        if status == lib.PL_E_FULL and self._can_grow_for(length):
            self._grow_maps(0)
            status = lib.pl_segment_append(self._seg, data, length, infos, count, err)
        if status != lib.PL_OK:
            raise error_from(status, err)
        if self._first_append_time is None and length:
            self._first_append_time = time.monotonic()

    def _can_grow_for(self, length: int) -> bool:
        """A full index can grow when it is below its configured size (a reopened segment)."""
        return (self.size + length <= MAX_SEGMENT_BYTES and (
            self._index.capacity < self._max_index_bytes // INDEX_ENTRY_SIZE
            or self._timeindex.capacity < self._max_index_bytes // TIMEINDEX_ENTRY_SIZE))

    def truncate_to(self, offset: int) -> int:
        """Drop every batch holding an offset >= ``offset`` (a batch straddling it goes
        whole), cut the .log and the index entries; returns the new size."""
        self._check_open()
        position = self._out
        check(lib.pl_segment_truncate(self._seg, offset, position, self._err), self._err)
        new_size = position[0]
        if os.fstat(self._log_fd).st_size > new_size:
            os.ftruncate(self._log_fd, new_size)
        if new_size == 0:
            self._first_append_time = None
        return new_size

    # ---- reading -------------------------------------------------------------------------

    def read(self, position: int, length: int) -> bytes:
        """Up to ``length`` bytes of the .log from ``position``: fewer only past ``size``."""
        if position < 0 or length < 0:
            raise ValueError(f"bad read of {length} bytes at {position}")
        length = max(0, min(length, self.size - position))
        if length == 0:
            return b""
        fd = self._log_fd
        first = os.pread(fd, length, position)
        if len(first) == length or not first:
            return first
        parts = [first]
        done = len(first)
        while done < length:
            part = os.pread(fd, length - done, position + done)
            if not part:
                break
            parts.append(part)
            done += len(part)
        return b"".join(parts)

    def read_into(self, position: int, buffer) -> int:
        """Fill ``buffer`` (writable bytes-like) from the .log at ``position``; returns the
        bytes read (fewer than len(buffer) only past ``size``)."""
        if position < 0:
            raise ValueError(f"bad read at {position}")
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self.size - position))
        done = 0
        while done < want:
            n = os.preadv(self._log_fd, [view[done:want]], position + done)
            if n == 0:
                break
            done += n
        return done

    def lookup(self, offset: int) -> int:
        """Position of the batch holding ``offset``, or of the first batch after it; ``size``
        if there is none. OffsetError if the index entry it starts from does not match the
        log (a damaged index file)."""
        out = self._out
        check(lib.pl_segment_lookup(self._seg, offset, out, self._err), self._err)
        return out[0]

    def end_position_for(self, offset: int) -> int:
        """Where a read that must stay below ``offset`` (e.g. the high watermark) ends: the
        start of the batch holding ``offset``, so a batch straddling it is left out, or
        ``size`` when offset >= next_offset."""
        return self.lookup(offset)

    def lookup_time(self, timestamp: int) -> tuple[int, int] | None:
        """(position, base offset) of the first batch whose maxTimestamp >= ``timestamp``, or
        None if no batch here reaches it."""
        out = self._out
        check(lib.pl_segment_lookup_time(self._seg, timestamp, out, out + 1, self._err),
              self._err)
        return None if out[1] < 0 else (out[0], out[1])

    def read_region(self, start_position: int, max_bytes: int,
                    end_position: int) -> tuple[int, int]:
        """(position, length) of the whole batches from ``start_position`` that end by
        ``end_position`` and span at most ``max_bytes``, but always the first batch whole
        (KIP-74). Both positions must be batch boundaries (from lookup/end_position_for)."""
        out = self._out
        check(lib.pl_segment_read_span(self._seg, start_position, end_position, max_bytes,
                                       out, self._err), self._err)
        return start_position, out[0]

    # ---- durability and life -------------------------------------------------------------

    def flush(self) -> None:
        """fsync the .log (fdatasync where there is one) and msync both index maps. Safe from
        any thread while the owner appends; a no-op once closed."""
        with self._lock:
            if self._closed:
                return
            _datasync(self._log_fd)
            self._index.flush()
            self._timeindex.flush()

    def trim_indexes(self) -> None:
        """At roll: cut both index files to their used entries. A later append (if any)
        grows them back."""
        self._check_open()
        with self._lock:
            self._trim_maps()

    def close(self) -> None:
        """Trim the index files (so a reopen trusts their size) and close everything."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            seg = self._seg
            used = (seg.index_entries, seg.timeindex_entries)
            seg.index = seg.timeindex = ffi.NULL
            seg.index_max_entries = seg.timeindex_max_entries = 0
            seg.index_entries = seg.timeindex_entries = 0
            try:
                self._index.close(used[0])
            finally:
                try:
                    self._timeindex.close(used[1])
                finally:
                    os.close(self._log_fd)
                    self._log_fd = seg.log_fd = -1

    def dup_log_fd(self) -> int:
        """A new descriptor of the .log (os.dup): it keeps the file's bytes readable after
        this segment is closed or deleted (a sendfile in flight owns it and closes it).
        ValueError if the segment is already closed."""
        with self._lock:
            self._check_open()
            return os.dup(self._log_fd)

    def delete(self) -> None:
        """Close the segment and remove its three files."""
        self.close()
        for path in (self._log_path, self._index.path, self._timeindex.path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"segment {self._log_path} is closed")

    def __repr__(self) -> str:
        return (f"Segment({self._log_path!r}, offsets [{self.base_offset}, "
                f"{self.next_offset}), {self.size} bytes)")


def _datasync(fd: int) -> None:
    sync = getattr(os, "fdatasync", None) or os.fsync   # macOS has no fdatasync
    sync(fd)
