"""A byte range of a segment's .log, to be sent with sendfile instead of read into Python.

Theory of operation
-------------------
With ``fetch.send.mode=sendfile`` a Fetch response carries, for each partition with data, a
``FileRegion`` in place of the bytes: the position and length the log located, and a
descriptor of the segment file. The descriptor is a ``dup`` of the segment's own, taken when
the fetch is read, so the region owns it: retention may delete the segment (close its
descriptor, unlink its files) and the cleaner may retire it while the response waits behind
others or is being sent, and the dup still reads the very bytes that were located (an
unlinked file lives until its last descriptor closes). Only truncation of the same file (a
leader demoted to follower cutting its divergent tail) can shorten the bytes under a region;
the sender then gets fewer bytes than the length the response header promised and closes
the connection rather than send a corrupt frame.

The region is closed by whoever finishes with it: the connection after sending it, the
ReplicaManager when it drops a read (long-poll), or, as a last resort for a response that is
dropped unsent (the connection was lost), the garbage collector (``__del__``).
"""
from __future__ import annotations

import os

__all__ = ["FileRegion", "region_size"]


class FileRegion:
    """``length`` bytes at ``position`` of the file open on ``fd`` (owned, closed once)."""

    __slots__ = ("fd", "position", "length")

    def __init__(self, fd: int, position: int, length: int):
        if position < 0 or length <= 0:
            os.close(fd)
            raise ValueError(f"bad file region of {length} bytes at {position}")
        # Invariant: fd >= 0 until close(), then -1; the region owns it.
        self.fd = fd
        self.position = position
        self.length = length

    @classmethod
    def of_segment(cls, segment, position: int, length: int) -> "FileRegion":
        """The region of ``segment``'s .log; ValueError if the segment is closed already."""
        return cls(segment.dup_log_fd(), position, length)

    def __len__(self) -> int:
        return self.length

    def consume(self, sent: int) -> None:
        """``sent`` bytes of the front went out: the region is the rest (never empty)."""
        if not 0 <= sent < self.length:
            raise ValueError(f"consumed {sent} of a {self.length}-byte region")
        self.position += sent
        self.length -= sent

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def read(self) -> bytes:
        """The region's bytes (the copy path, for transports that cannot sendfile).
        OSError if the file no longer holds all of them."""
        if self.fd < 0:
            raise OSError(f"file region of {self.length} bytes is closed")
        parts = []
        done = 0
        while done < self.length:
            part = os.pread(self.fd, self.length - done, self.position + done)
            if not part:
                raise OSError(f"file region ends after {done} of {self.length} bytes")
            parts.append(part)
            done += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        return f"FileRegion(fd={self.fd}, position={self.position}, length={self.length})"


def region_size(part) -> int:
    """Bytes a response part puts on the wire: a FileRegion's length or a buffer's size."""
    if isinstance(part, FileRegion):
        return part.length
    return memoryview(part).nbytes
