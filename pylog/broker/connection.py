"""One client connection of the Kafka listener: frames in, responses out in request order.

Theory of operation
-------------------
A ``KafkaConnection`` is an asyncio ``BufferedProtocol``: the socket reads straight into its
``FrameDecoder``'s buffer, and each complete frame is a memoryview into that buffer (a Produce
request's records are stamped in place there). All per-connection state lives in this object
(uvicorn's model), and all of it is touched only from the event loop.

Pipeline. Frames are taken in order. For each, the handler of its api key decodes it and
``handle`` runs at once, *eagerly*: the handler's synchronous part (for Produce: validating
and appending) runs before the next frame is looked at, so requests of one connection take
effect in the order they were sent. A handler that must wait (long-poll Fetch, acks=all
Produce) is suspended at its first real wait and finished by a task, while the next frames are
read and handled. Responses are written strictly in request order: every request that expects
an answer gets a slot in ``_pending`` when it is taken; a slot is filled when its handler
finishes; ``_flush`` writes filled slots from the head and stops at the first unfilled one.
Produce with acks=0 takes no slot and sends nothing.

Flow control (no unbounded buffering). Reading stops (``pause_reading``) while either
  - ``_inflight`` reaches ``max_inflight`` (requests taken but not answered: handlers still
    running plus answers waiting behind an earlier slow one), or
  - the transport's write buffer is above its high-water mark (``pause_writing``: the client
    does not read its responses).
While reading is stopped no new frames are taken from the decoder either, so memory per
connection is bounded by the decoder's buffer, ``max_inflight`` requests and the responses
the transport holds. Reading resumes when both conditions clear.

Errors. A bad size prefix (negative, above ``socket.request.max.bytes``), an unknown api key,
an unsupported version of anything but ApiVersions, or a frame that does not parse closes the
connection (abort: a client that sends garbage may not be reading either). A handler that
raises is logged and its request answered with UNKNOWN_SERVER_ERROR where the api can say
so, else the connection is closed. Nothing that happens on one connection reaches another.
When the connection is lost, its running handlers are cancelled and its slots dropped.

Writing. A response is either one bytes object or, for Fetch, a list of buffers with the log's
bytes in it; ``write_buffers`` hands the list to the transport without joining it. With
``fetch.send.mode=sendfile`` the list holds FileRegions (pylog.broker.file_region) in place of
log bytes: ``write_buffers`` writes the parts before the first region and returns the rest,
which a task (``_sending``) sends with ``loop.sendfile`` (it waits for the transport's buffer
to drain, then os.sendfile from the segment file to the socket; transports that cannot, e.g.
TLS, get the file's bytes copied by asyncio's fallback). While that task runs nothing else is
written, so responses stay in request order; a region whose file gives fewer bytes than the
response announced (its segment was truncated) closes the connection instead of corrupting
the stream.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from pylog.protocol.errors import (ErrorCode, FrameError, MalformedRequestError, RequestError,
                                   UnknownApiKeyError, UnsupportedVersionError)
from pylog.protocol.framing import FrameDecoder
from pylog.protocol.header import read_request_prefix

from pylog.broker.file_region import FileRegion
from pylog.broker.handlers.base import CloseConnection, Handler

if TYPE_CHECKING:
    from pylog.broker.server import KafkaServer

log = logging.getLogger("pylog.broker.connection")

_SCRATCH_BYTES = 4096
# Python 3.12's selector transport queues writelines' buffers as they are (sendmsg).
_SCATTER_WRITELINES = sys.version_info >= (3, 12)
# Selector socket transports mark themselves sendfile-capable with this (asyncio's own
# loop.sendfile checks the same attribute); TLS and other transports do not.
_SENDFILE_NATIVE = getattr(getattr(asyncio, "constants", None), "_SendfileMode",
                           None) and asyncio.constants._SendfileMode.TRY_NATIVE


class _Slot:
    """One request that expects a response, in request order.

    ``payload`` is None until the handler finished (``done``); then the frame bytes or the
    list of buffers to write.
    """

    __slots__ = ("api_key", "api_version", "started", "payload", "done", "error")

    def __init__(self, api_key: int, api_version: int, started: float):
        self.api_key = api_key
        self.api_version = api_version
        self.started = started
        self.payload: Any = None
        self.done = False
        self.error = False


def write_buffers(transport: asyncio.WriteTransport, buffers: list) -> list:
    """Write a list of buffers without joining them into one new bytes object; the parts from
    the first FileRegion on are not written but returned, for ``send_parts`` (else []).

    uvloop's and Python 3.12+'s selector transports implement ``writelines`` as scatter-gather
    (the buffers are queued as they are, and sent with sendmsg). Python 3.11's base
    ``writelines`` joins them first, so there each buffer is written on its own: the transport
    sends it directly while the socket takes it, and copies only what the socket did not take.
    """
    start = 0
    for i, part in enumerate(buffers):
        if type(part) is FileRegion:
            _write_list(transport, buffers[start:i])
            if not _sendfile_now(transport, part):
                return buffers[i:]
            part.close()
            start = i + 1
    _write_list(transport, buffers[start:] if start else buffers)
    return []


def _sendfile_now(transport: asyncio.WriteTransport, region: FileRegion) -> bool:
    """Fast path: os.sendfile ``region`` straight to the socket if the transport is a plain
    selector socket transport with nothing queued (what it would write next is exactly this).
    True if all of it went; else False with what went consumed from the region (the socket
    is full, the file ended early, or an error the transport will meet and report)."""
    if (getattr(transport, "_sendfile_compatible", None) is not _SENDFILE_NATIVE
            or transport.is_closing() or transport.get_write_buffer_size()):
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    out = sock.fileno()
    while True:
        try:
            sent = os.sendfile(out, region.fd, region.position, region.length)
        except OSError:  # EAGAIN: the rest waits for the socket; others: the async path
            return False
        if sent == region.length:
            return True
        if sent == 0:  # the file ended early: the async path finds it and closes
            return False
        region.consume(sent)


def _write_list(transport: asyncio.WriteTransport, buffers: list) -> None:
    if _SCATTER_WRITELINES or not _is_stdlib_transport(transport):
        transport.writelines(buffers)
        return
    for buffer in buffers:
        transport.write(buffer)


async def send_parts(transport: asyncio.WriteTransport, parts: list) -> None:
    """Send ``parts`` (FileRegions and buffers) in order, closing every region, sent or not.
    ConnectionError if a region's file gives fewer bytes than its length."""
    loop = asyncio.get_running_loop()
    try:
        start = 0
        while start < len(parts):
            part = parts[start]
            if type(part) is FileRegion:
                await _send_region(loop, transport, part)
                part.close()
                start += 1
                continue
            end = start
            while end < len(parts) and type(parts[end]) is not FileRegion:
                end += 1
            _write_list(transport, parts[start:end])
            start = end
    finally:
        for part in parts:
            if type(part) is FileRegion:
                part.close()


async def _send_region(loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport,
                       region: FileRegion) -> None:
    if transport.is_closing():
        raise ConnectionError("connection closed before a file region was sent")
    # loop.sendfile seeks the file when done: the descriptor shares its offset with the
    # segment's, which reads and writes only at explicit positions (pread/pwrite).
    with io.FileIO(region.fd, "rb", closefd=False) as file:
        try:
            sent = await loop.sendfile(transport, file, region.position, region.length)
        except NotImplementedError:  # a loop without sendfile (uvloop): copy
            transport.write(region.read())
            return
    if sent != region.length:
        raise ConnectionError(f"file region gave {sent} of {region.length} bytes "
                              "(segment truncated)")


def _is_stdlib_transport(transport: Any) -> bool:
    return type(transport).__module__.startswith("asyncio.")


class KafkaConnection(asyncio.BufferedProtocol):
    """The Kafka protocol on one accepted socket."""

    def __init__(self, server: "KafkaServer"):
        self._server = server
        self._handlers: dict[int, Handler] = server.handlers
        self._metrics = server.metrics
        config = server.config
        # Splits the byte stream; a bad size prefix is final (FrameError).
        self._decoder = FrameDecoder(config.socket_request_max_bytes)
        self._max_inflight = config.max_inflight_requests_per_connection
        self._write_high_water = config.connection_write_buffer_bytes
        self._transport: asyncio.Transport | None = None
        self.peer: str = "?"
        # Invariant: slots in request order; only the head may be written, and only once done.
        self._pending: deque[_Slot] = deque()
        # Invariant: _inflight = len(_pending) + running handlers that have no slot (acks=0).
        self._inflight = 0
        # Handler tasks still running; cancelled when the connection goes.
        self._tasks: set[asyncio.Task] = set()
        # True between the transport's pause_writing and resume_writing.
        self._writing_paused = False
        # True while this protocol has paused the transport's reading.
        self._reading_paused = False
        # True while _take_frames runs (it is not re-entered from a flush inside it).
        self._taking = False
        # Set once the connection is closing or lost: nothing is read, handled or written.
        self._closed = False
        # The task sending a response's file regions (send_parts), or None. Invariant: while
        # set, _flush writes nothing (the task calls it when done); the task is in _tasks.
        self._sending: asyncio.Task | None = None
        self._scratch: bytearray | None = None

    # ---- introspection (tests, metrics) -------------------------------------------------

    @property
    def inflight(self) -> int:
        """Requests taken and not yet answered (handlers running + responses queued, + 1
        while a response's file regions are being sent)."""
        return self._inflight + (self._sending is not None)

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # duck-typed: uvloop's transports are not asyncio.Transport subclasses
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        transport.set_write_buffer_limits(high=self._write_high_water)
        self._server.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self._pending.clear()
        self._inflight = 0
        self._server.connection_closed(self)

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if not self._closed:
            try:
                return self._decoder.get_buffer(sizehint)
            except FrameError as exc:
                self._abort(f"bad frame: {exc}")
        # Closed: the transport may still complete one read; give it somewhere harmless.
        if self._scratch is None:
            self._scratch = bytearray(_SCRATCH_BYTES)
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        self._decoder.buffer_updated(nbytes)
        self._take_frames()

    def eof_received(self) -> bool:
        if self._decoder.pending_bytes:
            log.debug("%s: closed mid-request (%d bytes of an unfinished frame)", self.peer,
                      self._decoder.pending_bytes)
        return False  # close our side too; connection_lost cancels what is running

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._take_frames()

    # ---- taking requests ----------------------------------------------------------------

    def _take_frames(self) -> None:
        """Take and dispatch complete frames while there is capacity, then (un)pause reading."""
        if self._taking:
            return
        self._taking = True
        try:
            while (not self._closed and not self._writing_paused
                   and self._inflight < self._max_inflight):
                try:
                    frame = self._decoder.next_frame()
                except FrameError as exc:
                    self._abort(f"bad frame: {exc}")
                    return
                if frame is None:
                    break
                self._dispatch(frame)
        finally:
            self._taking = False
        self._update_reading()

    def _update_reading(self) -> None:
        if self._closed or self._transport is None:
            return
        stop = self._writing_paused or self._inflight >= self._max_inflight
        if stop and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        elif not stop and self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    def _dispatch(self, frame: memoryview) -> None:
        started = time.perf_counter()
        try:
            api_key, api_version, correlation_id = read_request_prefix(frame)
            handler = self._handlers.get(api_key)
            if handler is None:
                raise UnknownApiKeyError(f"api key {api_key} is not served", api_key=api_key,
                                         api_version=api_version,
                                         correlation_id=correlation_id)
            request = handler.decode(frame)
        except RequestError as exc:
            self._refuse(exc)
            return
        except Exception:
            log.exception("%s: decoding a request failed", self.peer)
            self._abort("request decoding failed")
            return
        slot = None
        if handler.expects_response(request):
            slot = _Slot(api_key, api_version, started)
            self._pending.append(slot)
        self._inflight += 1
        try:
            result = handler.handle(request)
            if asyncio.iscoroutine(result):
                result = self._run_eagerly(result, handler, request, slot)
                if result is _SUSPENDED:
                    return
        except CloseConnection as exc:
            self._abort(str(exc))
            return
        except Exception:
            log.exception("%s: handler of api key %d v%d failed", self.peer, api_key,
                          api_version)
            self._answer_error(handler, request, slot)
            return
        self._finish(slot, result, api_key, api_version, started)

    def _refuse(self, exc: RequestError) -> None:
        if isinstance(exc, UnknownApiKeyError):
            reason = f"unknown api key {exc.api_key}"
        elif isinstance(exc, UnsupportedVersionError):
            reason = f"unsupported version {exc.api_version} of api key {exc.api_key}"
        elif isinstance(exc, MalformedRequestError):
            reason = f"malformed request: {exc}"
        else:
            reason = str(exc)
        if self._metrics is not None and exc.api_key is not None:
            self._metrics.observe_request(exc.api_key, exc.api_version or 0, 0.0, error=True)
        self._abort(reason)

    # ---- running handlers ---------------------------------------------------------------

    def _run_eagerly(self, coro, handler: Handler, request: Any, slot: _Slot | None) -> Any:
        """Run ``coro`` up to its first suspension; its result if it never suspends, else
        ``_SUSPENDED`` after handing the rest to a task. Exceptions propagate."""
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            return stop.value
        task = asyncio.get_running_loop().create_task(_resume(coro, awaited))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._handler_done(t, handler, request, slot))
        return _SUSPENDED

    def _handler_done(self, task: asyncio.Task, handler: Handler, request: Any,
                      slot: _Slot | None) -> None:
        self._tasks.discard(task)
        if self._closed or task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, CloseConnection):
            self._abort(str(exc))
            return
        if exc is not None:
            log.error("%s: handler of api key %d failed", self.peer, handler.api_key,
                      exc_info=exc)
            self._answer_error(handler, request, slot)
            return
        started = slot.started if slot is not None else time.perf_counter()
        self._finish(slot, task.result(), handler.api_key,
                     getattr(request, "api_version", 0), started)

    def _answer_error(self, handler: Handler, request: Any, slot: _Slot | None) -> None:
        if slot is None:  # nothing to answer with: tell the client by closing
            self._abort("a request without a response failed")
            return
        try:
            payload = handler.error_response(request, ErrorCode.UNKNOWN_SERVER_ERROR)
        except Exception:
            log.exception("%s: building the error response failed", self.peer)
            payload = None
        if payload is None:
            self._abort("request failed and its api cannot report the error")
            return
        slot.error = True
        self._finish(slot, payload, slot.api_key, slot.api_version, slot.started)

    def _finish(self, slot: _Slot | None, payload: Any, api_key: int, api_version: int,
                started: float) -> None:
        if self._closed:
            return
        if slot is None:
            self._inflight -= 1
            if self._metrics is not None:
                self._metrics.observe_request(api_key, api_version,
                                              time.perf_counter() - started)
            if not self._taking:
                self._take_frames()
            return
        if payload is None:
            log.error("%s: handler of api key %d returned no response", self.peer, api_key)
            self._abort("handler returned no response")
            return
        slot.payload = payload
        slot.done = True
        self._flush()

    def _flush(self) -> None:
        """Write every finished response at the head of the queue, in order."""
        transport = self._transport
        pending = self._pending
        metrics = self._metrics
        now = time.perf_counter()
        while self._sending is None and pending and pending[0].done:
            slot = pending.popleft()
            self._inflight -= 1
            payload = slot.payload
            if type(payload) is bytes:
                transport.write(payload)
            else:
                rest = write_buffers(transport, payload)
                if rest:
                    self._start_sending(rest)
            if metrics is not None:
                metrics.observe_request(slot.api_key, slot.api_version, now - slot.started,
                                        slot.error)
        if not self._taking:
            self._take_frames()

    def _start_sending(self, parts: list) -> None:
        task = asyncio.get_running_loop().create_task(self._send_rest(parts))
        self._sending = task
        self._tasks.add(task)

    async def _send_rest(self, parts: list) -> None:
        """Send the file regions of one response, then write what queued up behind it."""
        try:
            await send_parts(self._transport, parts)
        except (ConnectionError, OSError, RuntimeError) as exc:
            self._abort(f"sending a fetch response failed: {exc}")
            return
        finally:
            self._tasks.discard(self._sending)
            self._sending = None
        if self._closed:
            return
        # loop.sendfile pauses the transport's reading and restores what it found: this
        # protocol may have (un)paused in between, so state its own wish again.
        transport = self._transport
        if self._reading_paused == transport.is_reading():
            if self._reading_paused:
                transport.pause_reading()
            else:
                transport.resume_reading()
        self._flush()

    # ---- closing ------------------------------------------------------------------------

    def _abort(self, reason: str) -> None:
        if self._closed:
            return
        log.info("%s: closing connection: %s", self.peer, reason)
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def stop_reading(self) -> None:
        """Take no more requests (broker shutdown); those already taken still finish."""
        if self._closed or self._transport is None:
            return
        self._max_inflight = 0
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def close(self) -> None:
        """Close now, dropping whatever is still running or unsent."""
        self._abort("broker is shutting down")


_SUSPENDED = object()


async def _resume(coro, awaited: Any) -> Any:
    """Finish a coroutine that ``_run_eagerly`` started and that is suspended on ``awaited``
    (what it yielded: an asyncio future, or None for a bare yield).

    Each step waits for the yielded future, then resumes the coroutine, which reads the
    future's outcome itself (as it would under a Task). Cancellation reaches the coroutine the
    same way: cancelling this task cancels the future it waits on, and the coroutine sees
    CancelledError at its own await; if the future had already finished, CancelledError is
    thrown into the coroutine instead.
    """
    while True:
        step: Any = coro.send
        value: Any = None
        if awaited is not None and getattr(awaited, "_asyncio_future_blocking", None) is not True:
            step, value = coro.throw, RuntimeError(f"handler yielded {awaited!r}, not a future")
        else:
            try:
                if awaited is None:
                    await asyncio.sleep(0)
                else:
                    # As Task.__step does with what a coroutine yields: the coroutine's own
                    # await marked the future "being awaited"; this await takes it over.
                    awaited._asyncio_future_blocking = False
                    await awaited
            except asyncio.CancelledError as cancel:
                if awaited is None or not awaited.cancelled():
                    step, value = coro.throw, cancel
            except BaseException:
                pass  # the coroutine reads the future's exception itself when resumed
        try:
            awaited = step(value)
        except StopIteration as stop:
            return stop.value
