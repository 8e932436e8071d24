"""The Flusher: the one thread that runs every fsync of a LogManager's logs.

Theory of operation: the event loop must never wait for the disk (DESIGN §4), so a log that
wants to be on disk asks the Flusher (``request_flush``) and gets a
``concurrent.futures.Future``; the broker awaits it (``asyncio.wrap_future``) before it
acknowledges, when the fsync policy says so. Requests coalesce: while one fsync runs, every
request that arrives for the same log is merged into the next one (up to the highest offset
asked), so under ``fsync=always`` one fsync covers all the appends of an event-loop tick --
a group commit. A future completes, with the log's recovery point, only after the fsync that
covers its offset has returned; a failed fsync fails every future it covered.

The same thread also runs flush.ms (it wakes when the oldest unflushed log is due, see
``PartitionLog.flush_due``) and any small background job handed to ``submit`` (checkpoint
writes), so one thread owns all the waiting on the disk.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable

from pylog.storage.errors import LogClosedError
from pylog.storage.log import PartitionLog

__all__ = ["Flusher"]

_default_logger = logging.getLogger("pylog.storage")


class _PendingFlush:
    """Merged flush requests for one log. up_to None means "its log end at flush time"."""
    __slots__ = ("log", "up_to", "futures")

    def __init__(self, log: PartitionLog, up_to: int | None):
        self.log = log
        self.up_to = up_to
        self.futures: list[Future] = []

    def merge(self, up_to: int | None) -> None:
        if self.up_to is not None:
            self.up_to = None if up_to is None else max(self.up_to, up_to)


class Flusher:
    """A dedicated fsync thread. Start it with the constructor, stop it with ``close``."""

    def __init__(self, *, name: str = "pylog-flusher", logger: logging.Logger | None = None):
        self.logger = logger or _default_logger
        self._cond = threading.Condition()
        # Guarded by _cond: requests not yet picked up, by id(log); periodic (flush.ms)
        # candidates, by id(log); jobs from submit(); whether close() was called.
        self._pending: dict[int, _PendingFlush] = {}
        self._periodic: dict[int, PartitionLog] = {}
        self._jobs: list[tuple[Callable[[], object], Future]] = []
        self._stopping = False
        # Counts fsync passes (one per log per wake-up); for tests and metrics.
        self.flush_count = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- asking ------------------------------------------------------------------------------

    def request_flush(self, log: PartitionLog, up_to_offset: int | None = None) -> Future:
        """A future completing (with the recovery point) once ``log`` is fsynced up to
        ``up_to_offset`` (default: its log end when the fsync starts)."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(LogClosedError("the flusher is stopped"))
                return future
            pending = self._pending.get(id(log))
            if pending is None:
                pending = self._pending[id(log)] = _PendingFlush(log, up_to_offset)
            else:
                pending.merge(up_to_offset)
            pending.futures.append(future)
            self._cond.notify()
        return future

    def submit(self, job: Callable[[], object]) -> Future:
        """Run ``job()`` on the flusher thread; the future holds its result or exception."""
        future: Future = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(LogClosedError("the flusher is stopped"))
                return future
            self._jobs.append((job, future))
            self._cond.notify()
        return future

    def register(self, log: PartitionLog) -> None:
        """Watch ``log`` for flush.ms (it is flushed when ``log.flush_due``)."""
        with self._cond:
            self._periodic[id(log)] = log
            self._cond.notify()

    def forget(self, log: PartitionLog) -> None:
        """Stop watching ``log``; its pending requests fail with LogClosedError."""
        with self._cond:
            self._periodic.pop(id(log), None)
            pending = self._pending.pop(id(log), None)
        if pending is not None:
            for future in pending.futures:
                if future.set_running_or_notify_cancel():
                    future.set_exception(LogClosedError(f"{log.directory}: log closed"))

    def close(self, timeout: float | None = None) -> None:
        """Finish the requests already made, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._jobs or self._stopping):
                    timeout = self._seconds_until_periodic_due()
                    if timeout is not None and timeout <= 0:
                        break
                    self._cond.wait(timeout)
                pending, self._pending = self._pending, {}
                jobs, self._jobs = self._jobs, []
                now = time.monotonic()
                due = [log for key, log in self._periodic.items()
                       if key not in pending and log.flush_due(now)]
                stop = self._stopping and not pending and not jobs
            for request in pending.values():
                self._flush(request.log, request.up_to, request.futures)
            for log in due:
                self._flush(log, None, [])
            for job, future in jobs:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(job())
                    except BaseException as e:  # delivered to the submitter
                        future.set_exception(e)
            if stop:
                return

    def _seconds_until_periodic_due(self) -> float | None:
        """Seconds until some watched log with flush.ms may be due, None if none can be."""
        now = time.monotonic()
        soonest = None
        for log in self._periodic.values():
            flush_ms = log.config.flush_ms
            if flush_ms is None or log.closed:
                continue
            if log.unflushed_messages > 0:
                wait = log.last_flush_time + flush_ms / 1000 - now
            else:
                wait = flush_ms / 1000  # data may arrive meanwhile: look again then
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def _flush(self, log: PartitionLog, up_to: int | None, futures: list[Future]) -> None:
        running = [f for f in futures if f.set_running_or_notify_cancel()]
        try:
            recovery_point = log.flush(up_to)
        except BaseException as e:
            if not isinstance(e, LogClosedError):
                self.logger.error("flush of %s failed: %s", log.directory, e)
            for future in running:
                future.set_exception(e)
            return
        self.flush_count += 1
        for future in running:
            future.set_result(recovery_point)
