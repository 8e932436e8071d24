"""Delayed operations: requests parked until something happens or their time is up.

Theory of operation (Kafka's DelayedOperationPurgatory, on one asyncio loop)
---------------------------------------------------------------------------
An ``acks=all`` produce waits for the high watermark to pass its last offset; a fetch with
too few bytes waits for data. Each is a ``DelayedOperation`` whose ``try_complete`` checks
its condition and, when it holds, calls ``finish`` with the operation's result. The
purgatory parks an operation under *keys* (here: (topic, partition)); whoever changes what
an operation waits for (an append moves the log end, a follower fetch or an fsync moves the
high watermark, a leader change or a deletion ends everything) calls ``check(key)``, which
re-tries every operation parked under that key. A timer per operation calls ``on_expire``
at its deadline; ``close`` ends every operation with ``on_close``.

Every path ends in ``finish`` exactly once: it records the result, cancels the timer,
removes the operation from every key it was parked under and resolves the future its caller
awaits. A caller that stops waiting (its task was cancelled: the client went away) calls
``cancel`` so the operation leaves the purgatory at once instead of at its deadline.

All of it runs on the event loop thread: there is no race between "check" and "park", so
``watch`` tries once before parking and never needs Kafka's second try. Time is the loop's
(``loop.call_later``), so tests drive deadlines with a virtual-time loop.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["DelayedOperation", "Purgatory", "PurgatoryClosedError"]

_log = logging.getLogger("pylog.broker.purgatory")


class PurgatoryClosedError(Exception):
    """An operation was handed to a purgatory that is closed (and on_close did not finish
    it)."""


class DelayedOperation:
    """Base class. Subclasses implement ``try_complete`` and ``on_expire``; each must end in
    ``finish(result)`` when the operation is done (try_complete: only when its condition
    holds, returning True)."""

    __slots__ = ("completed", "result", "_future", "_timer", "_purgatory", "_keys")

    def __init__(self) -> None:
        # Invariant: completed is set once, by finish/fail/cancel, and never cleared; once
        # set, the operation is under no key of any purgatory and has no timer.
        self.completed = False
        self.result: Any = None
        self._future: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._purgatory: Purgatory | None = None
        self._keys: tuple[Hashable, ...] = ()

    # ---- for subclasses ------------------------------------------------------------------

    def try_complete(self) -> bool:
        """Check the condition; if it holds, ``finish`` and return True."""
        raise NotImplementedError

    def on_expire(self) -> None:
        """The deadline passed: ``finish`` with the timed-out result."""
        raise NotImplementedError

    def on_close(self) -> None:
        """The purgatory is closing (broker shutdown): ``finish`` with a final result.
        Default: as on expiry."""
        self.on_expire()

    # ---- completion ----------------------------------------------------------------------

    def finish(self, result: Any = None) -> bool:
        """Complete with ``result``; False (and nothing done) if already completed."""
        if self.completed:
            return False
        self._leave()
        self.result = result
        future = self._future
        if future is not None and not future.done():
            future.set_result(result)
        return True

    def fail(self, exc: BaseException) -> bool:
        """Complete with an exception for the waiting caller (a bug in a condition)."""
        if self.completed:
            return False
        self._leave()
        future = self._future
        if future is not None and not future.done():
            future.set_exception(exc)
        return True

    def _leave(self) -> None:
        self.completed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._purgatory is not None:
            self._purgatory._unwatch(self)
            self._purgatory = None

    def _expire(self) -> None:
        self._timer = None
        if self.completed:
            return
        try:
            self.on_expire()
        except Exception as e:
            _log.exception("%r: on_expire failed", self)
            self.fail(e)
            return
        if not self.completed:  # a subclass that forgot: end it anyway
            self.finish(None)

    def _close(self) -> None:
        try:
            self.on_close()
        except Exception as e:
            _log.exception("%r: on_close failed", self)
            self.fail(e)
            return
        if not self.completed:
            self.fail(PurgatoryClosedError("the broker is shutting down"))


class Purgatory:
    """Parked operations by key, with their timers."""

    def __init__(self, name: str = "purgatory", *, loop: asyncio.AbstractEventLoop | None = None):
        self.name = name
        self._loop = loop
        # Invariant: an operation is in _watchers[k] for every k of its _keys while it is
        # parked (not completed), and nowhere once completed; no empty dicts are kept.
        # dict as an ordered set: completion in parking order, O(1) removal.
        self._watchers: dict[Hashable, dict[DelayedOperation, None]] = {}
        self._parked = 0
        self._closed = False

    def __len__(self) -> int:
        """Operations parked now."""
        return self._parked

    @property
    def closed(self) -> bool:
        return self._closed

    def operations(self) -> list[DelayedOperation]:
        """The parked operations, each once, in parking order per key."""
        return list(dict.fromkeys(op for watchers in self._watchers.values()
                                  for op in watchers))

    def watched(self, key: Hashable) -> int:
        """Operations parked under ``key``."""
        return len(self._watchers.get(key, ()))

    def watch(self, op: DelayedOperation, keys: Iterable[Hashable],
              timeout_s: float) -> asyncio.Future:
        """Try ``op`` now; if it cannot complete, park it under ``keys`` until a ``check`` of
        one of them completes it or ``timeout_s`` passes. Returns the future of its result
        (already done if it completed at once, expired at once for timeout_s <= 0, or the
        purgatory is closed)."""
        loop = self._loop or asyncio.get_running_loop()
        future = loop.create_future()
        op._future = future
        if self._closed:
            op._close()
        else:
            try:
                done = op.try_complete()
            except Exception as e:
                _log.exception("%s: try_complete of %r failed", self.name, op)
                op.fail(e)
                done = True
            if not done and not op.completed:
                if timeout_s <= 0:
                    op._expire()
                else:
                    self._park(op, keys, timeout_s, loop)
        if op.completed and not future.done():
            future.set_result(op.result)
        return future

    def _park(self, op: DelayedOperation, keys: Iterable[Hashable], timeout_s: float,
              loop: asyncio.AbstractEventLoop) -> None:
        op._keys = tuple(dict.fromkeys(keys))
        op._purgatory = self
        for key in op._keys:
            watchers = self._watchers.get(key)
            if watchers is None:
                watchers = self._watchers[key] = {}
            watchers[op] = None
        self._parked += 1
        op._timer = loop.call_later(timeout_s, op._expire)

    def check(self, key: Hashable) -> int:
        """Re-try every operation parked under ``key``; returns how many completed."""
        watchers = self._watchers.get(key)
        if not watchers:
            return 0
        completed = 0
        for op in list(watchers):
            if op.completed:
                continue
            try:
                if op.try_complete():
                    completed += 1
            except Exception as e:
                _log.exception("%s: try_complete of %r failed", self.name, op)
                op.fail(e)
                completed += 1
        return completed

    def cancel(self, op: DelayedOperation) -> bool:
        """Drop ``op`` without a result (its caller stopped waiting). False if it had
        already completed."""
        if op.completed:
            return False
        op._leave()
        future = op._future
        if future is not None and not future.done():
            future.cancel()
        return True

    def close(self) -> int:
        """End every parked operation through ``on_close``; later ``watch`` calls end their
        operation the same way at once. Returns how many were parked."""
        self._closed = True
        ops = self.operations()
        for op in ops:
            if not op.completed:
                op._close()
        return len(ops)

    def _unwatch(self, op: DelayedOperation) -> None:
        for key in op._keys:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.pop(op, None)
                if not watchers:
                    del self._watchers[key]
        op._keys = ()
        self._parked -= 1
