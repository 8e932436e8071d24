"""Kafka framing: every message is an INT32 big-endian size (excluding itself) and a payload.

``FrameDecoder`` splits a received byte stream into frames without touching a socket. It
fits asyncio's ``BufferedProtocol`` directly (``get_buffer`` / ``buffer_updated``: the socket
reads straight into the decoder's buffer) and also takes plain bytes (``feed``).

Theory of operation. The decoder owns one bytearray. Bytes ``[_start, _end)`` are received
but not yet handed out; ``get_buffer`` exposes ``[_end, len)`` for the next read. A complete
frame is handed out as a memoryview *into* that bytearray (no copy, and writable, so a caller
may patch bytes in place). Handing out views creates the one hazard: reusing the buffer would
overwrite a frame the caller still holds (a request parked while it waits, say). The decoder
therefore reuses memory only when no view of the bytearray is alive, which Python itself
tracks: a bytearray refuses to change size while views of it exist. ``_has_live_views``
asks exactly that with a one-byte shrink-and-restore. When views are alive the decoder keeps
appending after ``_end`` while there is room, and otherwise moves the unconsumed bytes to a
fresh bytearray, leaving the old one to the views that keep it alive. So a frame's bytes never
change while the caller holds the frame; holding frames costs memory, never correctness.

A size prefix is validated as soon as its 4 bytes arrive, before any buffer is sized for it,
so a hostile prefix cannot make the decoder allocate. A bad prefix is final: framing is lost,
and every later call raises the same error until the connection is closed.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from pylog.protocol.errors import FrameError, FrameTooLargeError, InvalidFrameError

_SIZE = struct.Struct(">i")
SIZE_PREFIX_BYTES = _SIZE.size

#: Kafka's default ``socket.request.max.bytes`` (100 MiB).
DEFAULT_MAX_FRAME_BYTES = 100 * 1024 * 1024
#: Room offered to each socket read when no larger frame is pending.
DEFAULT_READ_BYTES = 256 * 1024
#: A buffer grown above this (for one huge frame) is dropped once it is empty.
DEFAULT_RETAIN_BYTES = 16 * 1024 * 1024


def _has_live_views(buffer: bytearray) -> bool:
    """True while any memoryview of ``buffer`` exists (a frame the caller still holds).

    A bytearray cannot change size while it has exports, so shrinking it by one byte raises
    BufferError exactly then; otherwise the byte is put back (no reallocation either way).
    """
    if not buffer:
        return False
    last = buffer[-1]
    try:
        del buffer[-1]
    except BufferError:
        return True
    buffer.append(last)
    return False


class FrameDecoder:
    """Splits a byte stream into size-prefixed frames.

    Feed it with ``get_buffer`` + ``buffer_updated`` (asyncio BufferedProtocol) or ``feed``;
    take complete frames with ``next_frame`` (or iterate ``frames()``) after each update. A
    frame is a memoryview of the payload without its size prefix; its bytes stay unchanged
    for as long as the caller holds it (see the module docstring). A size prefix above
    ``max_frame_bytes`` raises FrameTooLargeError, a negative one InvalidFrameError; a zero
    size is a valid, empty frame (the request decoder then rejects it).
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, *,
                 read_bytes: int = DEFAULT_READ_BYTES,
                 retain_bytes: int = DEFAULT_RETAIN_BYTES):
        if max_frame_bytes < 0 or max_frame_bytes > 0x7FFFFFFF:
            raise ValueError(f"max_frame_bytes must be in [0, 2**31 - 1], not {max_frame_bytes}")
        if read_bytes < 1:
            raise ValueError(f"read_bytes must be positive, not {read_bytes}")
        # Largest payload accepted; a larger size prefix is a FrameTooLargeError.
        self.max_frame_bytes = max_frame_bytes
        # Minimum room offered to one read; the buffer's starting size.
        self._read_bytes = read_bytes
        # An empty buffer larger than this is replaced by a small one (memory is returned).
        self._retain_bytes = max(retain_bytes, read_bytes)
        # Invariant: 0 <= _start <= _end <= len(_buffer). [_start, _end) = received bytes not
        # yet returned as frames; [_end, len) = free room; [0, _start) = frames already
        # returned, which may still be viewed by the caller and so are only reused after
        # _has_live_views() says no view is alive.
        self._buffer = bytearray(read_bytes)
        self._start = 0
        self._end = 0
        # Set once framing is lost; every later call raises it again.
        self._error: FrameError | None = None

    # ---- input ------------------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable room for the next read (at least ``sizehint`` bytes when positive).

        The room covers the rest of a frame whose size is already known, so a large frame is
        read with few calls. Release the view (or let it go) before calling again.
        """
        self._raise_if_failed()
        wanted = max(sizehint, self._read_bytes, self._missing_bytes())
        buffer = self._buffer
        if self._start > 0 and not _has_live_views(buffer):
            pending = self._end - self._start
            if pending == 0 and len(buffer) > self._retain_bytes:
                self._buffer = bytearray(self._read_bytes)
            elif pending:
                buffer[0:pending] = buffer[self._start:self._end]
            self._start, self._end = 0, pending
        if len(self._buffer) - self._end < wanted:
            self._move_to_new_buffer(wanted)
        return memoryview(self._buffer)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written at the start of the last ``get_buffer`` view."""
        self._raise_if_failed()
        if nbytes < 0 or nbytes > len(self._buffer) - self._end:
            raise ValueError(f"buffer_updated({nbytes}) outside the {len(self._buffer) - self._end}"
                             " bytes offered by get_buffer")
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (a copy into the decoder's buffer)."""
        source = memoryview(data).cast("B")
        room = self.get_buffer(len(source))
        try:
            room[:len(source)] = source
        finally:
            room.release()
        self.buffer_updated(len(source))

    # ---- output -----------------------------------------------------------------------------

    def next_frame(self) -> memoryview | None:
        """The next complete frame's payload, or None until more bytes arrive."""
        self._raise_if_failed()
        available = self._end - self._start
        if available < SIZE_PREFIX_BYTES:
            return None
        size = self._checked_size()
        if available - SIZE_PREFIX_BYTES < size:
            return None
        first = self._start + SIZE_PREFIX_BYTES
        self._start = first + size
        return memoryview(self._buffer)[first:self._start]

    def frames(self) -> Iterator[memoryview]:
        """Every complete frame received so far, in order."""
        while (frame := self.next_frame()) is not None:
            yield frame

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet returned in a frame (non-zero at EOF = truncated frame)."""
        return self._end - self._start

    # ---- internals --------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _checked_size(self) -> int:
        """The size prefix at ``_start`` (4 bytes must be present), validated."""
        (size,) = _SIZE.unpack_from(self._buffer, self._start)
        if size < 0:
            self._error = InvalidFrameError(size)
            raise self._error
        if size > self.max_frame_bytes:
            self._error = FrameTooLargeError(size, self.max_frame_bytes)
            raise self._error
        return size

    def _missing_bytes(self) -> int:
        """Bytes still to receive to complete the frame in progress (0 if its size is unknown)."""
        available = self._end - self._start
        if available < SIZE_PREFIX_BYTES:
            return 0
        return max(0, SIZE_PREFIX_BYTES + self._checked_size() - available)

    def _move_to_new_buffer(self, wanted: int) -> None:
        """Copy the pending bytes to a new bytearray with ``wanted`` bytes of room after them.

        The old bytearray is not resized (views may be alive); it is freed when the last view
        goes. ``wanted`` already covers the whole rest of a frame whose size is known, so one
        frame never needs more than one move.
        """
        pending = self._end - self._start
        fresh = bytearray(pending + wanted)
        fresh[0:pending] = self._buffer[self._start:self._end]
        self._buffer = fresh
        self._start, self._end = 0, pending


def frame(payload_parts: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """One frame as bytes: the INT32 size of the joined parts, then the parts."""
    payload = b"".join(payload_parts)
    return _SIZE.pack(len(payload)) + payload


def frame_iovec(payload_parts: Iterable[bytes | bytearray | memoryview]
                ) -> list[bytes | bytearray | memoryview]:
    """One frame as a list of buffers for ``writelines``/``sendmsg``: the size, then the parts
    themselves (not copied)."""
    parts = list(payload_parts)
    size = sum(memoryview(part).nbytes for part in parts)
    if size > 0x7FFFFFFF:
        raise FrameError(f"frame payload of {size} bytes does not fit an INT32 size", size)
    return [_SIZE.pack(size), *parts]
