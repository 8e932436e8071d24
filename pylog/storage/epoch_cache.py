"""The leader-epoch cache: at which offset each leader epoch began in this replica's log.

Theory of operation (Kafka's LeaderEpochFileCache): every batch carries the leader epoch of
the leader that appended it. The cache keeps one (epoch, start offset) entry per epoch present
in the log, the start offset being the first offset written in that epoch. It answers
OffsetsForLeaderEpoch: "where does epoch E end in your log?" is the start offset of the first
epoch after E (or the log end offset if E is the latest), which a follower uses to find where
its log diverged from the leader's and truncate exactly there (DESIGN §5).

Invariant of ``entries``: epochs strictly increase and start offsets strictly increase.
``assign`` keeps it: an epoch below the latest is stale (from a deposed leader, or a log being
rewritten under us) and ignored; an entry that conflicts with the tail (same or higher epoch
than some entries but starting at or before them) replaces that tail, as Kafka does.

The cache is rewritten to ``leader-epoch-checkpoint`` (atomically) on every change. A new
epoch (``assign``) is fsynced before the log appends the data that caused it, so the file can
be ahead of the log after a crash or power loss (repaired on open with
``truncate_from_end(log end)``) but never behind it; this is the one fsync on the owner
thread, once per leader epoch. Truncations only shrink the cache, and open re-applies them
from the log itself (``truncate_from_end(log end)``, ``truncate_from_start(log start)``), so
their rewrite is not fsynced at once: ``sync()`` does it later, on the flushing thread, before
the log's data is fsynced (Kafka also flushes truncations asynchronously).

Not thread-safe, except ``sync``: the owning PartitionLog calls everything else from its owner
thread only.
"""
from __future__ import annotations

import bisect
import logging
import os

from pylog.storage.checkpoint import (CorruptCheckpointError, fsync_directory,
                                      read_epoch_checkpoint, write_epoch_checkpoint)

__all__ = ["LeaderEpochCache", "UNDEFINED_EPOCH", "UNDEFINED_EPOCH_OFFSET",
           "EPOCH_CHECKPOINT_NAME"]

UNDEFINED_EPOCH = -1
UNDEFINED_EPOCH_OFFSET = -1
EPOCH_CHECKPOINT_NAME = "leader-epoch-checkpoint"

_log = logging.getLogger("pylog.storage")


class LeaderEpochCache:
    """(epoch, start offset) pairs of one partition's log, persisted to ``path``."""

    def __init__(self, path: str | None, entries: list[tuple[int, int]] | None = None, *,
                 durable: bool = True):
        """``path`` None keeps the cache in memory only (tests, tools)."""
        self.path = path
        self.durable = durable
        # True while the file holds a rewrite that was not fsynced yet (see sync()).
        self._needs_sync = False
        # Invariant: epochs and start offsets both strictly increase along the list.
        self._epochs: list[int] = []
        self._starts: list[int] = []
        for epoch, start in entries or ():
            if self._epochs and (epoch <= self._epochs[-1] or start <= self._starts[-1]):
                raise ValueError(f"leader epoch entries not strictly increasing at "
                                 f"({epoch}, {start})")
            self._epochs.append(epoch)
            self._starts.append(start)

    @classmethod
    def load(cls, directory: str, *, durable: bool = True) -> "LeaderEpochCache":
        """The cache persisted in a partition directory (empty if it has no checkpoint).

        Raises CorruptCheckpointError if the file is damaged or its entries are not
        strictly increasing.
        """
        path = os.path.join(directory, EPOCH_CHECKPOINT_NAME)
        entries = read_epoch_checkpoint(path)
        try:
            return cls(path, entries, durable=durable)
        except ValueError as e:
            raise CorruptCheckpointError(path, str(e)) from None

    # ---- reading -----------------------------------------------------------------------------

    @property
    def entries(self) -> list[tuple[int, int]]:
        """A copy of the (epoch, start offset) entries, oldest first."""
        return list(zip(self._epochs, self._starts))

    @property
    def latest_epoch(self) -> int | None:
        """The newest epoch in the log, None if the cache is empty."""
        return self._epochs[-1] if self._epochs else None

    @property
    def earliest_entry(self) -> tuple[int, int] | None:
        return (self._epochs[0], self._starts[0]) if self._epochs else None

    @property
    def latest_entry(self) -> tuple[int, int] | None:
        return (self._epochs[-1], self._starts[-1]) if self._epochs else None

    def epoch_for_offset(self, offset: int) -> int | None:
        """The epoch the record at ``offset`` was written in, None if before every entry."""
        i = bisect.bisect_right(self._starts, offset) - 1
        return self._epochs[i] if i >= 0 else None

    def end_offset_for(self, requested_epoch: int, log_end_offset: int) -> tuple[int, int]:
        """OffsetsForLeaderEpoch: (largest epoch <= requested, end offset of that epoch).

        Kafka's answers: the latest epoch ends at the log end offset; an older epoch E ends
        where the first epoch after E starts, and the epoch returned is the largest known one
        not above E (or E itself if E is older than everything here, with the start of our
        first epoch as its end). UNDEFINED (-1, -1) when E is -1, the cache is empty, or E is
        newer than anything here.
        """
        if requested_epoch == UNDEFINED_EPOCH or not self._epochs:
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        if requested_epoch == self._epochs[-1]:
            return requested_epoch, log_end_offset
        higher = bisect.bisect_right(self._epochs, requested_epoch)
        if higher == len(self._epochs):
            return UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET
        if higher == 0:
            return requested_epoch, self._starts[0]
        return self._epochs[higher - 1], self._starts[higher]

    def __len__(self) -> int:
        return len(self._epochs)

    def __repr__(self) -> str:
        return f"LeaderEpochCache({self.entries!r})"

    # ---- changing ----------------------------------------------------------------------------

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that ``epoch`` starts at ``start_offset``; True if the cache changed.

        No change when ``epoch`` is the latest and starts at or before ``start_offset`` (a
        later batch of the current epoch), or when ``epoch`` is older than the latest
        (stale). Otherwise entries at or after ``start_offset``, and entries of ``epoch`` or
        newer, are replaced by the new one.
        """
        if epoch < 0 or start_offset < 0:
            raise ValueError(f"cannot assign leader epoch {epoch} at offset {start_offset}")
        if self._epochs:
            latest = self._epochs[-1]
            if epoch < latest:
                _log.warning("leader epoch cache %s: ignoring stale epoch %d at offset %d, "
                             "latest is (%d, %d)", self.path, epoch, start_offset, latest,
                             self._starts[-1])
                return False
            if epoch == latest and start_offset >= self._starts[-1]:
                return False
        removed = []
        while self._epochs and (self._epochs[-1] >= epoch or self._starts[-1] >= start_offset):
            removed.append((self._epochs.pop(), self._starts.pop()))
        if removed:
            _log.info("leader epoch cache %s: (%d, %d) replaces %s", self.path, epoch,
                      start_offset, removed[::-1])
        self._epochs.append(epoch)
        self._starts.append(start_offset)
        self._persist(durable=self.durable)
        return True

    def truncate_from_end(self, end_offset: int) -> bool:
        """Drop entries starting at or after ``end_offset`` (the log was cut there)."""
        cut = bisect.bisect_left(self._starts, end_offset)
        if cut == len(self._starts):
            return False
        del self._epochs[cut:], self._starts[cut:]
        self._persist(durable=False)
        return True

    def truncate_from_start(self, start_offset: int) -> bool:
        """The log now starts at ``start_offset``: drop entries wholly before it and move the
        start of the epoch holding it up to ``start_offset``."""
        keep = bisect.bisect_right(self._starts, start_offset) - 1
        if keep < 0 or (keep == 0 and self._starts[0] == start_offset):
            return False
        del self._epochs[:keep], self._starts[:keep]
        self._starts[0] = start_offset
        self._persist(durable=False)
        return True

    def clear(self) -> bool:
        """Forget every entry (the log was emptied)."""
        if not self._epochs:
            return False
        self._epochs.clear()
        self._starts.clear()
        self._persist(durable=False)
        return True

    def _persist(self, *, durable: bool) -> None:
        if self.path is None:
            return
        if not durable:
            self._needs_sync = True
        write_epoch_checkpoint(self.path, self.entries, durable=durable)
        if durable:
            self._needs_sync = False

    def sync(self) -> None:
        """fsync the file (and its directory) if a truncation rewrote it without. Safe from
        another thread than the owner: it only fsyncs whatever file is there."""
        if self.path is None or not self._needs_sync or not self.durable:
            return
        self._needs_sync = False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(os.path.dirname(self.path))
