"""Small metadata files: atomic replacement and Kafka's checkpoint text format, checksummed.

Theory of operation: a checkpoint is rewritten whole, never edited. ``atomic_write`` writes the
new content to ``<name>.tmp`` in the same directory, fsyncs it, renames it over ``<name>`` and
fsyncs the directory, so after a crash at any point the file holds either the old or the new
content, never a mix; a stale ``.tmp`` left by a crash is simply overwritten by the next write
and never read.

Format (Kafka's, plus a checksum line, DESIGN §7):

    <version>\\n
    <number of entries>\\n
    <entry fields separated by one space>\\n      (repeated)
    xxh64 <16 lowercase hex digits>\\n

The xxh64 (seed 0) covers every byte before its line. Reading checks the version, the count,
every field and the checksum, and raises CorruptCheckpointError naming the file and the first
thing found wrong. A missing file is not an error (the callers start from nothing), a damaged
one is: guessing offsets from a damaged file could skip recovery or lose data.
"""
from __future__ import annotations

import errno
import os
from typing import Iterable, Mapping, Sequence

import xxhash

from pylog.storage.names import InvalidTopicError, validate_partition, validate_topic_name

__all__ = [
    "CorruptCheckpointError", "atomic_write", "fsync_directory", "write_checkpoint",
    "read_checkpoint", "write_offset_checkpoint", "read_offset_checkpoint",
    "write_epoch_checkpoint", "read_epoch_checkpoint", "TMP_SUFFIX",
    "OFFSET_CHECKPOINT_VERSION", "EPOCH_CHECKPOINT_VERSION",
]

TMP_SUFFIX = ".tmp"
OFFSET_CHECKPOINT_VERSION = 0
EPOCH_CHECKPOINT_VERSION = 0
_CHECKSUM_PREFIX = b"xxh64 "


class CorruptCheckpointError(Exception):
    """A checkpoint file exists but is not a valid checkpoint (or fails its checksum)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"corrupt checkpoint {path}: {reason}")
        self.path = path
        self.reason = reason


# ---- atomic replacement -----------------------------------------------------------------------


def fsync_directory(directory: str) -> None:
    """fsync a directory so that renames and unlinks in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems refuse fsync on a directory; their rename is then as durable
        # as it gets and there is nothing else to do.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename, fsync directory).

    ``durable=False`` skips both fsyncs: still atomic against a process crash, not against
    a power loss.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_directory(directory)


# ---- the generic format -----------------------------------------------------------------------


def seal(body: bytes) -> bytes:
    """``body`` followed by its ``xxh64 <hex>`` line: the trailer every pylog metadata file
    carries (checkpoints, producer-state snapshots, the controller's metadata file)."""
    return body + _CHECKSUM_PREFIX + xxhash.xxh64_hexdigest(body).encode("ascii") + b"\n"


def unseal(path: str, data: bytes, error: type[Exception] = None) -> bytes:
    """The body of sealed bytes, after checking the trailer; raises ``error(path, reason)``
    (CorruptCheckpointError by default) when it is missing or does not match."""
    error = error or CorruptCheckpointError
    if not data.endswith(b"\n"):
        raise error(path, "does not end with a newline (truncated?)")
    checksum_start = data.rfind(b"\n", 0, len(data) - 1) + 1
    body, checksum_line = data[:checksum_start], data[checksum_start:-1]
    if not checksum_line.startswith(_CHECKSUM_PREFIX):
        raise error(path, "the last line is not an xxh64 checksum")
    expected = checksum_line[len(_CHECKSUM_PREFIX):].decode("ascii", "replace")
    actual = xxhash.xxh64_hexdigest(body)
    if expected != actual:
        raise error(path, f"checksum mismatch: file says {expected}, content hashes to {actual}")
    return body


def encode_checkpoint(version: int, entries: Iterable[Sequence[object]]) -> bytes:
    """The bytes of a checkpoint file holding ``entries`` (each a sequence of fields)."""
    lines = [" ".join(str(field) for field in entry) for entry in entries]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"checkpoint entry {line!r} contains a line break")
    body = f"{version}\n{len(lines)}\n".encode() + "".join(f"{line}\n" for line in lines).encode()
    return seal(body)


def write_checkpoint(path: str, version: int, entries: Iterable[Sequence[object]], *,
                     durable: bool = True) -> None:
    """Atomically replace ``path`` with a checkpoint of ``entries``."""
    atomic_write(path, encode_checkpoint(version, entries), durable=durable)


def read_checkpoint(path: str, version: int, fields: int) -> list[list[str]] | None:
    """The entries of the checkpoint at ``path`` (each ``fields`` strings), None if absent."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_checkpoint(path, data, version, fields)


def decode_checkpoint(path: str, data: bytes, version: int, fields: int) -> list[list[str]]:
    """Parse and verify checkpoint bytes; ``path`` only names the file in errors."""
    body = unseal(path, data)
    try:
        lines = body.decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(path, f"not UTF-8 text ({e})") from None
    if len(lines) < 2:
        raise CorruptCheckpointError(path, "missing the version or the count line")
    if lines[0] != str(version):
        raise CorruptCheckpointError(path, f"version {lines[0]!r}, expected {version}")
    if not lines[1].isascii() or not lines[1].isdigit():
        raise CorruptCheckpointError(path, f"count line {lines[1]!r} is not a number")
    count = int(lines[1])
    entries = lines[2:]
    if count != len(entries):
        raise CorruptCheckpointError(path, f"count says {count} entries, found {len(entries)}")
    parsed = []
    for number, line in enumerate(entries, start=3):
        parts = line.split(" ")
        if len(parts) != fields or any(not p for p in parts):
            raise CorruptCheckpointError(path, f"line {number} {line!r}: expected {fields} fields")
        parsed.append(parts)
    return parsed


def _non_negative(path: str, text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise CorruptCheckpointError(path, f"{what} {text!r} is not a non-negative integer")
    return int(text)


# ---- offsets by (topic, partition): recovery point, high watermark, log start ------------------


def write_offset_checkpoint(path: str, offsets: Mapping[tuple[str, int], int], *,
                            durable: bool = True) -> None:
    """Atomically write ``{(topic, partition): offset}`` (entries "topic partition offset")."""
    entries = []
    for (topic, partition), offset in sorted(offsets.items()):
        validate_topic_name(topic)
        validate_partition(partition)
        if offset < 0:
            raise ValueError(f"negative offset {offset} for {topic}-{partition}")
        entries.append((topic, partition, offset))
    write_checkpoint(path, OFFSET_CHECKPOINT_VERSION, entries, durable=durable)


def read_offset_checkpoint(path: str) -> dict[tuple[str, int], int]:
    """``{(topic, partition): offset}`` from an offset checkpoint; {} if the file is absent."""
    entries = read_checkpoint(path, OFFSET_CHECKPOINT_VERSION, 3)
    offsets: dict[tuple[str, int], int] = {}
    for topic, partition_text, offset_text in entries or ():
        try:
            validate_topic_name(topic)
        except InvalidTopicError as e:
            raise CorruptCheckpointError(path, str(e)) from None
        key = (topic, _non_negative(path, partition_text, "partition"))
        if key in offsets:
            raise CorruptCheckpointError(path, f"{topic}-{key[1]} appears twice")
        offsets[key] = _non_negative(path, offset_text, "offset")
    return offsets


# ---- leader epochs: (epoch, start offset) ------------------------------------------------------


def write_epoch_checkpoint(path: str, entries: Sequence[tuple[int, int]], *,
                           durable: bool = True) -> None:
    """Atomically write the leader-epoch entries (lines "epoch start_offset")."""
    for epoch, start_offset in entries:
        if epoch < 0 or start_offset < 0:
            raise ValueError(f"negative leader epoch entry ({epoch}, {start_offset})")
    write_checkpoint(path, EPOCH_CHECKPOINT_VERSION, entries, durable=durable)


def read_epoch_checkpoint(path: str) -> list[tuple[int, int]]:
    """The (epoch, start offset) entries of a leader-epoch checkpoint; [] if absent."""
    entries = read_checkpoint(path, EPOCH_CHECKPOINT_VERSION, 2)
    return [(_non_negative(path, epoch, "epoch"), _non_negative(path, start, "start offset"))
            for epoch, start in entries or ()]
