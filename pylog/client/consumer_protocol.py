"""The "consumer" embedded protocol: the opaque bytes consumers put in JoinGroup and SyncGroup.

The group coordinator never looks inside these bytes; only consumers do, so every member of a
group must write and read them exactly as the Java client does (Kafka's
ConsumerProtocolSubscription.json and ConsumerProtocolAssignment.json, written by
``ConsumerProtocol.serializeSubscription/Assignment`` as a version-prefixed message):

  Subscription v0:  version INT16, topics [STRING], user_data NULLABLE_BYTES
  Assignment v0:    version INT16, assigned_partitions [topic STRING, partitions [INT32]],
                    user_data NULLABLE_BYTES

(STRING = INT16 length + UTF-8; arrays and bytes = INT32 count/length, -1 = null.) pylog writes
version 0, as kafka-python does. Later versions only append fields (v1 owned partitions, v2
generation, v3 rack), so a reader of v0 reads any version's leading fields and ignores the
rest: that is how Kafka itself stays compatible. Decoding is bounds-checked: hostile bytes
raise ``ValueError`` and never read past the buffer.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

VERSION = 0

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


class Subscription(NamedTuple):
    topics: tuple[str, ...]
    user_data: bytes | None = None
    version: int = VERSION


class Assignment(NamedTuple):
    partitions: tuple[tuple[str, int], ...]   # (topic, partition) pairs
    user_data: bytes | None = None
    version: int = VERSION


# ---- writing --------------------------------------------------------------------------------


def _string(value: str) -> bytes:
    data = value.encode()
    if len(data) > 0x7FFF:
        raise ValueError(f"string of {len(data)} bytes does not fit INT16")
    return _I16.pack(len(data)) + data


def _nullable_bytes(value: bytes | None) -> bytes:
    return _I32.pack(-1) if value is None else _I32.pack(len(value)) + bytes(value)


def encode_subscription(topics, user_data: bytes | None = None) -> bytes:
    """Subscription v0 bytes; topics sorted, as the Java client writes them."""
    names = sorted(set(topics))
    return b"".join([_I16.pack(VERSION), _I32.pack(len(names)), *map(_string, names),
                     _nullable_bytes(user_data)])


def encode_assignment(partitions, user_data: bytes | None = None) -> bytes:
    """Assignment v0 bytes for (topic, partition) pairs: grouped by topic (topics sorted,
    partitions sorted within each)."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append(int(partition))
    parts = [_I16.pack(VERSION), _I32.pack(len(by_topic))]
    for topic in sorted(by_topic):
        ids = sorted(by_topic[topic])
        parts += [_string(topic), _I32.pack(len(ids)), *(_I32.pack(p) for p in ids)]
    parts.append(_nullable_bytes(user_data))
    return b"".join(parts)


# ---- reading --------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data):
        self.data = memoryview(bytes(data))
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"consumer protocol bytes truncated at {self.pos} "
                             f"(need {n} of {len(self.data) - self.pos} left)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def i16(self) -> int:
        return _I16.unpack(self.take(2))[0]

    def i32(self) -> int:
        return _I32.unpack(self.take(4))[0]

    def string(self) -> str:
        n = self.i16()
        if n < 0:
            raise ValueError("null string where a topic name is expected")
        try:
            return bytes(self.take(n)).decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"topic name is not UTF-8: {exc}") from None

    def count(self) -> int:
        n = self.i32()
        if n < -1:
            raise ValueError(f"negative array length {n}")
        # Every element takes at least 2 bytes: a count beyond that is a lie, refuse early.
        if n > (len(self.data) - self.pos) // 2 + 1:
            raise ValueError(f"array length {n} exceeds the bytes left")
        return max(n, 0)

    def nullable_bytes(self) -> bytes | None:
        if self.pos == len(self.data):
            return None  # some writers leave out a trailing null user_data
        n = self.i32()
        if n == -1:
            return None
        return bytes(self.take(n))


def decode_subscription(data) -> Subscription:
    """The subscription in JoinGroup member metadata (any version >= 0)."""
    reader = _Reader(data)
    version = reader.i16()
    if version < 0:
        raise ValueError(f"subscription version {version} is negative")
    topics = tuple(reader.string() for _ in range(reader.count()))
    return Subscription(topics, reader.nullable_bytes(), version)


def decode_assignment(data) -> Assignment:
    """The assignment in a SyncGroup answer (any version >= 0). Empty bytes (a member the
    leader gave nothing, as some brokers send on errors) mean no partitions."""
    if not data:
        return Assignment(())
    reader = _Reader(data)
    version = reader.i16()
    if version < 0:
        raise ValueError(f"assignment version {version} is negative")
    partitions: list[tuple[str, int]] = []
    for _ in range(reader.count()):
        topic = reader.string()
        partitions += [(topic, reader.i32()) for _ in range(reader.count())]
    return Assignment(tuple(partitions), reader.nullable_bytes(), version)
