"""One asyncio connection to one broker: framing, correlation ids, pipelining, versions.

Theory of operation. A Kafka broker answers the requests of one connection in the order it
received them, so the connection keeps the requests that expect an answer in a FIFO
(``_in_flight``) and matches each response frame to its head; the correlation id is checked
against the head's and a mismatch is a protocol violation (framing may be fine, but nothing
that follows can be trusted). Requests are written as soon as they are made — many may be in
flight at once (pipelining); flow control is the transport's (``drain`` waits while the
kernel buffer is full). Produce with acks=0 expects no answer and never enters the FIFO.

Every request has a deadline. When one passes, that request fails with KafkaTimeoutError and
the whole connection is closed (as the Java client does): its answer may still arrive, and
every answer after it would then be matched to the wrong request. Closing fails every other
request in flight with KafkaConnectionError, which is retriable.

Versions: ``connect`` sends ApiVersions at the highest version this client speaks (v2); a
broker that does not know it answers error 35 in the v0 layout with its own ranges
(KIP-511), and the request is repeated at min(ours, its max). Then, per api, the version used
is the highest inside both this client's range (``CLIENT_VERSIONS``, pylog's protocol table,
which kio has schemas for) and the broker's.
"""
from __future__ import annotations

import asyncio
import collections
import os
from types import MappingProxyType
from typing import Any

from pylog.client import messages
from pylog.client.errors import (
    ClientClosedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    ProtocolViolationError,
    UnsupportedVersionError,
    remote_error,
)
from pylog.protocol import (
    ADVERTISED_VERSIONS,
    ApiKey,
    ErrorCode,
    FrameDecoder,
    FrameError,
    ProtocolError,
    VersionRange,
    decode_response,
    encode_request,
)
from pylog.protocol.framing import DEFAULT_MAX_FRAME_BYTES

#: The versions this client speaks, per api key: pylog's protocol table, plus InitProducerId
#: up to v4 (v2+ flexible): some brokers answer v0/v1 without a transactional id wrongly
#: (Tansu: UNKNOWN_SERVER_ERROR, it reads the producer id and epoch that only v3+ carry).
CLIENT_VERSIONS = MappingProxyType({**ADVERTISED_VERSIONS,
                                    ApiKey.INIT_PRODUCER_ID: VersionRange(0, 4)})

_MAX_CORRELATION_ID = 0x7FFFFFFF


def describe_os_error(exc: BaseException) -> str:
    """"connection refused", "timed out", ... for a socket error."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    code = getattr(exc, "errno", None)
    if code:
        return os.strerror(code).lower()
    if isinstance(exc, OSError) and exc.__cause__ is None and exc.args:
        return str(exc.args[-1])
    return str(exc) or type(exc).__name__


class _InFlight:
    """A request sent that awaits its answer."""

    __slots__ = ("correlation_id", "api_key", "api_version", "future", "timer")

    def __init__(self, correlation_id: int, api_key: int, api_version: int,
                 future: asyncio.Future, timer: asyncio.TimerHandle):
        self.correlation_id = correlation_id
        self.api_key = api_key
        self.api_version = api_version
        self.future = future
        self.timer = timer


class _Protocol(asyncio.BufferedProtocol):
    """Feeds received bytes into the connection's FrameDecoder; reports frames and events."""

    def __init__(self, connection: BrokerConnection):
        self._connection = connection

    def connection_made(self, transport):
        self._connection._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._connection._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._connection._on_bytes(nbytes)

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc):
        self._connection._on_lost(exc)

    def pause_writing(self):
        self._connection._writable = self._connection._loop.create_future()

    def resume_writing(self):
        waiter = self._connection._writable
        self._connection._writable = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class BrokerConnection:
    """A connection to the broker at ``host:port`` (``node_id`` as metadata names it, -1 for a
    bootstrap server). Create, then ``await connect()``; ``request`` / ``send`` / ``close``."""

    def __init__(self, host: str, port: int, *, node_id: int = -1, client_id: str = "pylog",
                 request_timeout_ms: int = 30_000,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.host = host
        self.port = port
        self.node_id = node_id
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        # Requests written whose answers have not arrived, in the order they were written
        # (= the order the broker answers in).
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        # Next correlation id to use; wraps at INT32 max (ids only need to differ in flight).
        self._next_correlation_id = 0
        # Pending future while the transport has paused writing; None while writable.
        self._writable: asyncio.Future | None = None
        # Set once closed (locally or by the peer): the reason every later call fails with.
        self._closed_error: Exception | None = None
        self._closed = self._loop.create_future()
        # After connect(): the broker's ranges and the version chosen per api key.
        self.broker_versions: dict[int, VersionRange] = {}
        self.api_versions: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<BrokerConnection node {self.node_id} {self.host}:{self.port}>"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ---- life cycle -------------------------------------------------------------------------

    async def connect(self, *, timeout_ms: int = 10_000) -> None:
        """Open the TCP connection and negotiate versions. KafkaConnectionError when the broker
        cannot be reached, UnsupportedVersionError when no ApiVersions version is shared."""
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                await self._loop.create_connection(lambda: _Protocol(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise KafkaConnectionError(
                f"cannot reach {self.address}: {describe_os_error(exc)}",
                self.host, self.port) from exc
        try:
            await self._negotiate()
        except BaseException:
            self.close()
            raise

    async def _negotiate(self) -> None:
        version = CLIENT_VERSIONS[ApiKey.API_VERSIONS].max
        for _attempt in range(2):
            body = messages.build_request(ApiKey.API_VERSIONS, version, {})
            response = await self._send_body(ApiKey.API_VERSIONS, version, body, True,
                                             self.request_timeout_ms)
            ranges = {int(e.api_key): VersionRange(int(e.min_version), int(e.max_version))
                      for e in response.api_keys}
            code = int(response.error_code)
            if code == ErrorCode.UNSUPPORTED_VERSION:
                theirs = ranges.get(ApiKey.API_VERSIONS, VersionRange(0, 0))
                lower = min(version, theirs.max)
                if lower == version or lower < CLIENT_VERSIONS[ApiKey.API_VERSIONS].min:
                    break
                version = lower
                continue
            if code:
                raise remote_error(code, f"ApiVersions from {self.address}")
            self.broker_versions = ranges
            self.api_versions = {}
            for key, ours in CLIENT_VERSIONS.items():
                theirs = ranges.get(int(key))
                if theirs is None:
                    continue
                chosen = min(ours.max, theirs.max)
                if chosen >= max(ours.min, theirs.min):
                    self.api_versions[int(key)] = chosen
            return
        raise UnsupportedVersionError(f"{self.address} supports no ApiVersions version this "
                                      "client speaks")

    def close(self, error: Exception | None = None) -> None:
        """Close now; every request in flight fails (with ``error`` if given). Idempotent."""
        if self._closed_error is not None:
            return
        self._closed_error = error or ClientClosedError(f"connection to {self.address} closed")
        if self._transport is not None:
            self._transport.close()
        self._fail_in_flight(self._closed_error)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._transport is None and not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the transport is gone (after ``close`` or a connection loss)."""
        await asyncio.shield(self._closed)

    @property
    def closed(self) -> bool:
        return self._closed_error is not None

    @property
    def in_flight(self) -> int:
        """Requests sent that still await an answer."""
        return len(self._in_flight)

    # ---- requests ---------------------------------------------------------------------------

    def api_version(self, api_key: int) -> int:
        """The version used for ``api_key`` on this connection."""
        try:
            return self.api_versions[api_key]
        except KeyError:
            raise UnsupportedVersionError(
                f"{self.address} supports no version of api {ApiKey(api_key).name} that this "
                f"client speaks (broker: {self.broker_versions.get(api_key)}, client: "
                f"{CLIENT_VERSIONS.get(api_key)})") from None

    def build(self, api_key: int, values: dict[str, Any]) -> Any:
        """The request body of ``api_key`` at this connection's version."""
        return messages.build_request(api_key, self.api_version(api_key), values)

    def send(self, api_key: int, values: dict[str, Any] | Any, *, expect_response: bool = True,
             timeout_ms: int | None = None) -> asyncio.Future | None:
        """Write one request now and return the future of its answer (a kio response body),
        or None when no answer is expected. ``values``: a dict for ``build``, or a kio body
        built for ``api_version(api_key)``."""
        version = self.api_version(api_key)
        body = values if not isinstance(values, dict) else \
            messages.build_request(api_key, version, values)
        return self._send_body(api_key, version, body, expect_response,
                               self.request_timeout_ms if timeout_ms is None else timeout_ms)

    async def request(self, api_key: int, values: dict[str, Any] | Any, *,
                      timeout_ms: int | None = None) -> Any:
        """Send one request and wait for its answer (waiting first if writing is paused)."""
        if self._writable is not None:
            await self.drain()
        future = self.send(api_key, values, timeout_ms=timeout_ms)
        return await future

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self._writable is not None and self._closed_error is None:
            await asyncio.shield(self._writable)
        if self._closed_error is not None:
            raise self._closed_error

    def _send_body(self, api_key: int, version: int, body: Any, expect_response: bool,
                   timeout_ms: int) -> asyncio.Future | None:
        if self._closed_error is not None:
            raise self._connection_error_for_new_request()
        correlation_id = self._next_correlation_id
        self._next_correlation_id = (correlation_id + 1) & _MAX_CORRELATION_ID
        frame = encode_request(api_key, version, correlation_id, self.client_id, body)
        self._transport.write(frame)
        if not expect_response:
            return None
        future = self._loop.create_future()
        timer = self._loop.call_later(timeout_ms / 1000, self._on_timeout, correlation_id)
        self._in_flight.append(_InFlight(correlation_id, api_key, version, future, timer))
        return future

    def _connection_error_for_new_request(self) -> Exception:
        error = self._closed_error
        if isinstance(error, KafkaConnectionError):
            return KafkaConnectionError(str(error), self.host, self.port)
        if isinstance(error, ClientClosedError):
            return ClientClosedError(str(error))
        return KafkaConnectionError(f"connection to {self.address} is closed: {error}",
                                    self.host, self.port)

    # ---- events from the protocol -----------------------------------------------------------

    def _on_bytes(self, nbytes: int) -> None:
        try:
            self._decoder.buffer_updated(nbytes)
            while (frame := self._decoder.next_frame()) is not None:
                self._on_frame(frame)
                if self._closed_error is not None:
                    return
        except FrameError as exc:
            self.close(ProtocolViolationError(f"{self.address} sent a bad frame: {exc}"))

    def _on_frame(self, frame: memoryview) -> None:
        if not self._in_flight:
            self.close(ProtocolViolationError(
                f"{self.address} sent a response to no request"))
            return
        head = self._in_flight.popleft()
        head.timer.cancel()
        try:
            correlation_id, body = decode_response(head.api_key, head.api_version, frame)
        except ProtocolError as exc:
            error = ProtocolViolationError(f"{self.address}: {exc}")
            _fail(head.future, error)
            self.close(error)
            return
        finally:
            frame.release()
        if correlation_id != head.correlation_id:
            error = ProtocolViolationError(
                f"{self.address} answered correlation id {correlation_id}, expected "
                f"{head.correlation_id}")
            _fail(head.future, error)
            self.close(error)
            return
        if not head.future.done():
            head.future.set_result(body)

    def _on_timeout(self, correlation_id: int) -> None:
        for entry in self._in_flight:
            if entry.correlation_id == correlation_id:
                _fail(entry.future, KafkaTimeoutError(
                    f"no answer from {self.address} to {ApiKey(entry.api_key).name} "
                    "in time; connection closed"))
                break
        self.close(KafkaConnectionError(
            f"connection to {self.address} closed after a request timed out",
            self.host, self.port))

    def _on_lost(self, exc: Exception | None) -> None:
        if self._closed_error is None:
            why = describe_os_error(exc) if exc is not None else "closed by the broker"
            self._closed_error = KafkaConnectionError(
                f"connection to {self.address} lost: {why}", self.host, self.port)
            self._fail_in_flight(self._closed_error)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(None)

    def _fail_in_flight(self, error: Exception) -> None:
        while self._in_flight:
            entry = self._in_flight.popleft()
            entry.timer.cancel()
            _fail(entry.future, _copy_error(error))


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _copy_error(error: Exception) -> Exception:
    """A fresh exception of the same kind (one instance raised in many tasks would collect
    their tracebacks)."""
    if isinstance(error, KafkaConnectionError):
        return KafkaConnectionError(str(error), error.host, error.port)
    try:
        return type(error)(str(error))
    except TypeError:
        return error


