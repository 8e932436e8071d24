"""The LogManager: every partition log of one data directory, and the files they share.

A data directory holds:
  meta.properties                       which cluster and node it belongs to (meta.py)
  <topic>-<partition>/                  one PartitionLog each (log.py)
  recovery-point-offset-checkpoint      per partition: offset below which data was fsynced
  replication-offset-checkpoint         per partition: high watermark
  log-start-offset-checkpoint           per partition: log start offset
  cleaner-offset-checkpoint             per compacted partition: first dirty offset (cleaner.py)
  .clean_shutdown                       present only between a clean close and the next open
  .lock                                 flock()ed while a LogManager has the directory open

Theory of operation: the three checkpoints are rewritten whole and atomically (checkpoint.py)
by ``checkpoint()``, which the broker calls periodically and ``close()`` calls last. On open
they seed each log; a log missing from them starts from 0 (full recovery, HW at log start).
The clean-shutdown marker is written after every log was flushed and closed and the
checkpoints written, and removed as soon as the logs are open again: present at open, it
proves nothing was appended after the last flush, so recovery is skipped; absent, every log is
scanned from its recovery point. A damaged checkpoint is logged and treated as absent (and
forces recovery): it can only cost a longer scan, a lower HW, or an earlier log start.

Deleting a partition renames its directory to ``<name>.<uuid>-delete`` (one atomic step, so a
crash never leaves half a log looking alive), then removes it; leftovers are removed on open.

``fsync`` (None, "os", "always" or an interval in ms) is a broker-wide promise: when given it
overrides flush.messages/flush.ms of every log this manager opens (config.py). Every fsync
requested through the Flusher runs on the Flusher's thread, never the caller's.

Only one process may use a data directory at a time: the manager holds an exclusive flock on
``.lock`` from open to close (the kernel drops it if the process dies), so a second broker
started on the same directory fails with DataDirectoryLockedError instead of corrupting it.

Threads: like PartitionLog, every method is for the owner thread (the event loop), except
that the Flusher thread flushes logs and runs background checkpoint writes, and the log
cleaner's thread (``start_cleaner``; cleaner.py) compacts logs whose cleanup.policy contains
"compact" and swaps their cleaned segments in under each log's lock. ``delete`` stops a
cleaning of that log first; ``close`` stops the cleaner before it closes the logs.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import uuid
from concurrent.futures import Future
from typing import Callable, Iterator

from pylog.storage.cleaner import CleanerConfig, CleanResult, LogCleaner
from pylog.storage.checkpoint import (CorruptCheckpointError, atomic_write, fsync_directory,
                                      read_offset_checkpoint, write_offset_checkpoint)
from pylog.storage.config import FsyncPolicy, LogConfig, parse_fsync_policy
from pylog.storage.errors import LogClosedError
from pylog.storage.flusher import Flusher
from pylog.storage.log import PartitionLog
from pylog.storage.meta import MetaProperties, ensure_meta_properties
from pylog.storage.names import (parse_partition_dir_name, partition_dir_name,
                                 validate_partition, validate_topic_name)

__all__ = [
    "LogManager", "Flusher", "DataDirectoryLockedError", "LOCK_FILE", "RECOVERY_POINT_CHECKPOINT", "HIGH_WATERMARK_CHECKPOINT",
    "LOG_START_CHECKPOINT", "CLEAN_SHUTDOWN_MARKER",
]

RECOVERY_POINT_CHECKPOINT = "recovery-point-offset-checkpoint"
HIGH_WATERMARK_CHECKPOINT = "replication-offset-checkpoint"
LOG_START_CHECKPOINT = "log-start-offset-checkpoint"
CLEAN_SHUTDOWN_MARKER = ".clean_shutdown"
LOCK_FILE = ".lock"
_DELETED_DIR = re.compile(r".+\.[0-9a-f]{32}-delete")

_default_logger = logging.getLogger("pylog.storage")

TopicPartition = tuple[str, int]


class DataDirectoryLockedError(Exception):
    """Another process (or another LogManager) has this data directory open."""


def _lock_directory(data_dir: str) -> int:
    """An fd holding an exclusive flock on ``data_dir``/.lock (created if needed)."""
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirectoryLockedError(
            f"data directory {data_dir} is in use by another process") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class LogManager:
    """All partition logs under ``data_dir``. Opening it loads (and, after a crash, recovers)
    every partition directory found there."""

    def __init__(self, data_dir: str, *, cluster_id: str, node_id: int,
                 default_config: LogConfig | None = None, fsync: FsyncPolicy | None = None,
                 config_for: Callable[[str], LogConfig] | None = None,
                 logger: logging.Logger | None = None, clock: Callable[[], int] | None = None,
                 cleaner_config: CleanerConfig | None = None):
        """``config_for(topic)`` gives the config of a topic found on disk (default:
        ``default_config``); ``clock`` is wall-clock ms for the logs and the log cleaner
        (tests); ``cleaner_config``: the log cleaner's settings (its thread starts only with
        ``start_cleaner``)."""
        self.data_dir = os.path.abspath(data_dir)
        self.logger = logger or _default_logger
        self._lock_fd = _lock_directory(self.data_dir)
        try:
            self.meta: MetaProperties = ensure_meta_properties(self.data_dir, cluster_id,
                                                               node_id)
        except BaseException:
            self._unlock()
            raise
        self.fsync = None if fsync is None else parse_fsync_policy(fsync)
        self.default_config = self._apply_fsync(default_config or LogConfig())
        self._config_for = config_for
        self._clock = clock
        # Invariant: one open PartitionLog per partition directory present on disk.
        self._logs: dict[TopicPartition, PartitionLog] = {}
        self._closed = False
        self.flusher = Flusher(logger=self.logger)
        try:
            self._load()
            # Compaction of cleanup.policy=compact logs, on its own thread (cleaner.py).
            self.cleaner = LogCleaner(self.data_dir, self.items, config=cleaner_config,
                                      clock=clock, logger=self.logger)
        except BaseException:
            for log in self._logs.values():
                log.close_without_flush()
            self.flusher.close()
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _apply_fsync(self, config: LogConfig) -> LogConfig:
        return config if self.fsync is None else config.with_fsync(self.fsync)

    def _path(self, name: str) -> str:
        return os.path.join(self.data_dir, name)

    def _load(self) -> None:
        marker = self._path(CLEAN_SHUTDOWN_MARKER)
        clean = os.path.exists(marker)
        recovery_points = self._read_checkpoint(RECOVERY_POINT_CHECKPOINT)
        high_watermarks = self._read_checkpoint(HIGH_WATERMARK_CHECKPOINT)
        log_starts = self._read_checkpoint(LOG_START_CHECKPOINT)
        if recovery_points is None:
            clean = False  # without recovery points, only a full scan is safe
            recovery_points = {}
        self.logger.info("%s: opening logs (%s)", self.data_dir,
                         "clean shutdown, no recovery" if clean else "recovering from the "
                         "recovery points")
        for name in sorted(os.listdir(self.data_dir)):
            path = self._path(name)
            if not os.path.isdir(path):
                continue
            if _DELETED_DIR.fullmatch(name):
                self.logger.info("%s: removing partly deleted log %s", self.data_dir, name)
                shutil.rmtree(path)
                continue
            key = parse_partition_dir_name(name)
            if key is None:
                self.logger.warning("%s: ignoring directory %s (not <topic>-<partition>)",
                                    self.data_dir, name)
                continue
            config = self._apply_fsync(self._config_for(key[0]) if self._config_for
                                       else self.default_config)
            log = PartitionLog.open(
                path, config, recovery_point=recovery_points.get(key, 0),
                log_start_offset=(log_starts or {}).get(key, 0), clean_shutdown=clean,
                logger=self.logger, clock=self._clock,
                flush_requester=self.flusher.request_flush)
            log.high_watermark = (high_watermarks or {}).get(key, 0)
            self._logs[key] = log
            self.flusher.register(log)
        if os.path.exists(marker):
            os.unlink(marker)
            fsync_directory(self.data_dir)

    def _read_checkpoint(self, name: str) -> dict[TopicPartition, int] | None:
        try:
            return read_offset_checkpoint(self._path(name))
        except CorruptCheckpointError as e:
            self.logger.error("%s; treating it as absent", e)
            return None

    # ---- partitions --------------------------------------------------------------------------

    def get(self, topic: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic, partition))

    def __contains__(self, key: TopicPartition) -> bool:
        return key in self._logs

    def __len__(self) -> int:
        return len(self._logs)

    def __iter__(self) -> Iterator[TopicPartition]:
        return iter(list(self._logs))

    def items(self) -> list[tuple[TopicPartition, PartitionLog]]:
        return list(self._logs.items())

    def get_or_create(self, topic: str, partition: int,
                      config: LogConfig | None = None) -> PartitionLog:
        """The log of (topic, partition), created empty if absent. A ``config`` given for an
        existing log replaces its config. Raises InvalidTopicError for a bad name."""
        self._check_open()
        validate_topic_name(topic)
        validate_partition(partition)
        config = self._apply_fsync(config) if config is not None else None
        log = self._logs.get((topic, partition))
        if log is not None:
            if config is not None and config != log.config:
                log.update_config(config)
            return log
        path = self._path(partition_dir_name(topic, partition))
        created = not os.path.isdir(path)
        log = PartitionLog.open(path, config or self.default_config, clean_shutdown=created,
                                logger=self.logger, clock=self._clock,
                                flush_requester=self.flusher.request_flush)
        if created:
            fsync_directory(self.data_dir)
            self.cleaner.forget((topic, partition))  # an entry left by a deleted namesake
        self._logs[(topic, partition)] = log
        self.flusher.register(log)
        return log

    def delete(self, topic: str, partition: int) -> bool:
        """Close and remove the log of (topic, partition); False if there was none."""
        self._check_open()
        log = self._logs.pop((topic, partition), None)
        if log is None:
            return False
        self.flusher.forget(log)
        self.cleaner.abort_and_wait(log)  # a pass over it stops between two batches
        self.cleaner.forget((topic, partition))
        log.close_without_flush()
        doomed = f"{log.directory}.{uuid.uuid4().hex}-delete"
        os.rename(log.directory, doomed)
        fsync_directory(self.data_dir)
        shutil.rmtree(doomed)
        self.logger.info("%s: deleted log of %s-%d", self.data_dir, topic, partition)
        return True

    # ---- periodic work -----------------------------------------------------------------------

    def checkpoint(self, *, background: bool = False) -> Future | None:
        """Write the three offset checkpoints from the logs' current state. With
        ``background`` the values are taken now and written (fsynced) on the Flusher thread;
        the returned future completes when they are on disk."""
        self._check_open()
        snapshot = self._checkpoint_snapshot()
        if background:
            return self.flusher.submit(lambda: self._write_checkpoints(*snapshot))
        self._write_checkpoints(*snapshot)
        return None

    def _checkpoint_snapshot(self) -> tuple[dict, dict, dict]:
        items = list(self._logs.items())
        return ({key: log.recovery_point for key, log in items},
                {key: log.high_watermark for key, log in items},
                {key: log.log_start_offset for key, log in items})

    def _write_checkpoints(self, recovery_points: dict, high_watermarks: dict,
                           log_starts: dict) -> None:
        write_offset_checkpoint(self._path(RECOVERY_POINT_CHECKPOINT), recovery_points)
        write_offset_checkpoint(self._path(HIGH_WATERMARK_CHECKPOINT), high_watermarks)
        write_offset_checkpoint(self._path(LOG_START_CHECKPOINT), log_starts)

    def run_retention(self, now_ms: int | None = None) -> int:
        """Apply retention to every log; the number of segments deleted."""
        self._check_open()
        return sum(log.delete_old_segments(now_ms) for log in self._logs.values())

    def start_cleaner(self) -> bool:
        """Start the log cleaner's thread (a pass every log.cleaner.backoff.ms) unless
        log.cleaner.enable is false; True if it runs."""
        self._check_open()
        if not self.cleaner.config.enable:
            return False
        self.cleaner.start()
        return True

    def stop_cleaner(self) -> None:
        """Stop the log cleaner's thread (a pass in progress stops between two batches)."""
        self.cleaner.stop()

    def run_cleaner_once(self, now_ms: int | None = None) -> list[CleanResult]:
        """One cleaner pass over every compacted log that is due, on the calling thread
        (tests, tools); it waits for a pass of the cleaner's thread in progress."""
        self._check_open()
        return self.cleaner.run_once(now_ms)

    def flush_all(self) -> Future:
        """Ask the Flusher to flush every log to its end; one future for all of them."""
        self._check_open()
        futures = [self.flusher.request_flush(log) for log in self._logs.values()]
        return self.flusher.submit(lambda: [f.result() for f in futures])

    # ---- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Clean shutdown: drain the Flusher, flush and close every log, write the
        checkpoints, then the clean-shutdown marker (only if all of that succeeded).
        The directory lock is released in any case."""
        if self._closed:
            return
        self._closed = True
        try:
            self.cleaner.stop()  # before the logs close: a pass stops between two batches
            self.flusher.close()
            failure = None
            for log in self._logs.values():
                try:
                    log.close()
                except Exception as e:  # close the others; no marker: the next open recovers
                    self.logger.error("closing %s failed: %s", log.directory, e)
                    failure = failure or e
            if failure is not None:
                raise failure
            self._write_checkpoints(*self._checkpoint_snapshot())
            atomic_write(self._path(CLEAN_SHUTDOWN_MARKER), b"")
            self.logger.info("%s: closed cleanly", self.data_dir)
        finally:
            self._unlock()

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self.data_dir}: log manager is closed")

    def __enter__(self) -> "LogManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
