"""The Kafka listener: one asyncio server whose connections are ``KafkaConnection``s.

The server owns the listening socket and the set of live connections; everything about one
connection is in pylog.broker.connection. Stopping is two-phase so that a clean shutdown
neither drops answers it could give nor waits without bound:
  1. ``stop_accepting()``: close the listening socket, and stop reading on every connection
     (requests already taken go on; no new ones are taken);
  2. ``drain(timeout)``: wait until every connection has answered what it took, or the time
     is up; ``close_all()`` then closes whatever is left.
The broker runs its ReplicaManager's close between the two when the wait is over, which
completes or fails every parked operation so that their answers can still be written.

uvloop is used when asked for and installed (``install_event_loop_policy``); the listener works the
same on asyncio's own loop. Both transports set TCP_NODELAY on accepted sockets themselves.
"""
from __future__ import annotations

import asyncio
import os
import logging
from typing import Any

from pylog.broker.connection import KafkaConnection
from pylog.broker.handlers.base import Handler

log = logging.getLogger("pylog.broker.server")

_LISTEN_BACKLOG = 1024
_DRAIN_POLL_SECONDS = 0.01


def install_event_loop_policy() -> str:
    """The event loop to run: asyncio's, or uvloop's when PYLOG_EVENT_LOOP=uvloop and it is
    installed. Opt-in because it measured no faster here (bench/README.md) and is less
    exercised by the test suite. Returns the name of the loop in use."""
    if os.environ.get("PYLOG_EVENT_LOOP", "asyncio") != "uvloop":
        return "asyncio"
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


class KafkaServer:
    """Accepts Kafka clients on (host, port) and serves them with ``handlers``."""

    def __init__(self, config: Any, handlers: dict[int, Handler], metrics: Any = None):
        self.config = config
        self.handlers = handlers
        self.metrics = metrics
        # Invariant: exactly the connections whose connection_made ran and whose
        # connection_lost has not.
        self.connections: set[KafkaConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self.host: str | None = None
        self.port: int | None = None

    async def start(self) -> tuple[str, int]:
        """Bind and listen; the (host, port) actually bound (port 0 picks a free one).
        Raises OSError (e.g. EADDRINUSE) if the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: KafkaConnection(self), self.config.host, self.config.port,
            reuse_address=True, backlog=_LISTEN_BACKLOG, start_serving=True)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        log.debug("Kafka listener on %s:%d", self.host, self.port)
        return self.host, self.port

    # ---- connection bookkeeping (called by KafkaConnection) -----------------------------

    def connection_opened(self, connection: KafkaConnection) -> None:
        self.connections.add(connection)
        if self.metrics is not None:
            self.metrics.connection_opened()

    def connection_closed(self, connection: KafkaConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            if self.metrics is not None:
                self.metrics.connection_closed()

    # ---- stopping -----------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening socket and stop taking requests on every connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.stop_reading()

    def inflight(self) -> int:
        """Requests taken and not yet answered, over all connections."""
        return sum(connection.inflight for connection in self.connections)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every taken request to be answered; True if
        they all were."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.inflight() and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        return self.inflight() == 0

    async def close_all(self) -> None:
        """Close every connection (unsent answers are dropped) and the listener."""
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
