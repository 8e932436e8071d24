"""An asyncio event loop on virtual time, for tests of timeouts without sleeping.

``loop.time()`` is a number that only moves when the loop has nothing to do but wait for a
timer: then it jumps straight to that timer's deadline. So ``asyncio.sleep(30)`` or a
30-second request timeout takes no real time, and the order of events is exactly the order
of their deadlines. I/O and callbacks from other threads still work (they are polled without
blocking); if the loop has neither a timer nor anything ready, it blocks for real, at most
``idle_limit`` seconds, then fails the test instead of hanging.
"""
from __future__ import annotations

import asyncio
import selectors


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, idle_limit: float):
        super().__init__()
        self.now = 0.0
        self.idle_limit = idle_limit

    def select(self, timeout=None):
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer at all: only another thread or a socket can help
            events = super().select(self.idle_limit)
            if not events:
                raise RuntimeError(f"virtual-time loop idle for {self.idle_limit} s with "
                                   "nothing scheduled: the test is stuck")
            return events
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, idle_limit: float = 10.0):
        self._virtual = _VirtualSelector(idle_limit)
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run(coro_fn, *args):
    """Run ``coro_fn(loop, *args)`` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro_fn(loop, *args))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
