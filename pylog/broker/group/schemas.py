"""The records the group coordinator keeps in ``__consumer_offsets``, byte for byte as Kafka's.

Kafka's group coordinator writes two kinds of record into its offsets topic, and pylog writes
the same bytes, so that a compacted offsets log keeps the latest value per key and a
tombstone (a null value) deletes one (apache/kafka, group-coordinator/src/main/resources/
common/message/*.json). Every key starts with an INT16 *key version*, which says what the key
is; every value starts with an INT16 *value version*, which says how its fields are laid out:

  key version 0 or 1   OffsetCommitKey      group STRING, topic STRING, partition INT32
  key version 2        GroupMetadataKey     group STRING
  key version 3+       records of Kafka's newer coordinators (transactions, KIP-848 groups):
                       pylog never writes them and skips them when loading

  OffsetCommitValue    v0: offset INT64, metadata STRING, commitTimestamp INT64
                       v1: v0 + expireTimestamp INT64
                       v2: as v0
                       v3: offset INT64, leaderEpoch INT32, metadata STRING, commitTimestamp INT64
  GroupMetadataValue   protocolType STRING, generation INT32, protocol NULLABLE_STRING,
                       leader NULLABLE_STRING, (v2+) currentStateTimestamp INT64,
                       members [memberId STRING, (v3+) groupInstanceId NULLABLE_STRING,
                       clientId STRING, clientHost STRING, (v1+) rebalanceTimeout INT32,
                       sessionTimeout INT32, subscription BYTES, assignment BYTES]

pylog writes OffsetCommitKey v1 with OffsetCommitValue v3, and GroupMetadataKey v2 with
GroupMetadataValue v3: the newest non-flexible versions, what Kafka 2.1 - 3.x write. It reads
every non-flexible version (values 0-3). Value v4 (flexible, tagged fields) is never written
by pylog and is refused when read, like any other unknown version.

Types are Kafka's classic ones: STRING = INT16 length + UTF-8 (-1 = null where nullable),
BYTES = INT32 length + bytes, ARRAY = INT32 count, integers big-endian. Decoding never reads
past the buffer and demands that the bytes end exactly where the record does: anything else
is a ``RecordSchemaError``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "RecordSchemaError", "OffsetCommitKey", "GroupMetadataKey", "OtherKey", "OffsetCommitValue",
    "GroupMetadataValue", "MemberMetadataValue", "offset_commit_key", "group_metadata_key",
    "offset_commit_value", "group_metadata_value", "decode_key", "decode_offset_commit_value",
    "decode_group_metadata_value", "OFFSET_COMMIT_KEY_VERSION", "GROUP_METADATA_KEY_VERSION",
    "OFFSET_COMMIT_VALUE_VERSION", "GROUP_METADATA_VALUE_VERSION",
]

OFFSET_COMMIT_KEY_VERSION = 1
GROUP_METADATA_KEY_VERSION = 2
OFFSET_COMMIT_VALUE_VERSION = 3
GROUP_METADATA_VALUE_VERSION = 3
_MAX_READ_VALUE_VERSION = 3

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_STRING_MAX = 0x7FFF


class RecordSchemaError(ValueError):
    """Bytes that are not a record of these schemas (truncated, trailing bytes, negative
    lengths, bad UTF-8, an unknown version)."""


# ---- values ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OffsetCommitKey:
    group: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class GroupMetadataKey:
    group: str


@dataclass(frozen=True, slots=True)
class OtherKey:
    """A key of a record type pylog does not keep (key version 3 and above)."""
    version: int


@dataclass(frozen=True, slots=True)
class OffsetCommitValue:
    offset: int
    leader_epoch: int          # -1: none
    metadata: str
    commit_timestamp: int
    expire_timestamp: int = -1  # only value v1 has it


@dataclass(frozen=True, slots=True)
class MemberMetadataValue:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int   # value v0 has none: the session timeout stands in
    session_timeout_ms: int
    subscription: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupMetadataValue:
    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    current_state_timestamp: int  # -1: none (values v0, v1)
    members: tuple[MemberMetadataValue, ...]


# ---- writing --------------------------------------------------------------------------------

def _string(value: str | None, *, nullable: bool = False) -> bytes:
    if value is None:
        if not nullable:
            raise RecordSchemaError("null in a non-nullable string")
        return _INT16.pack(-1)
    data = value.encode("utf-8")
    if len(data) > _STRING_MAX:
        raise RecordSchemaError(f"string of {len(data)} bytes is longer than {_STRING_MAX}")
    return _INT16.pack(len(data)) + data


def _bytes(value: bytes) -> bytes:
    return _INT32.pack(len(value)) + bytes(value)


def offset_commit_key(group: str, topic: str, partition: int) -> bytes:
    """OffsetCommitKey (key version 1)."""
    return (_INT16.pack(OFFSET_COMMIT_KEY_VERSION) + _string(group) + _string(topic)
            + _INT32.pack(partition))


def group_metadata_key(group: str) -> bytes:
    """GroupMetadataKey (key version 2)."""
    return _INT16.pack(GROUP_METADATA_KEY_VERSION) + _string(group)


def offset_commit_value(value: OffsetCommitValue) -> bytes:
    """OffsetCommitValue v3 (the expire timestamp exists only in v1 and is not written)."""
    return (_INT16.pack(OFFSET_COMMIT_VALUE_VERSION) + _INT64.pack(value.offset)
            + _INT32.pack(value.leader_epoch) + _string(value.metadata)
            + _INT64.pack(value.commit_timestamp))


def group_metadata_value(value: GroupMetadataValue) -> bytes:
    """GroupMetadataValue v3."""
    parts = [_INT16.pack(GROUP_METADATA_VALUE_VERSION), _string(value.protocol_type),
             _INT32.pack(value.generation), _string(value.protocol, nullable=True),
             _string(value.leader, nullable=True), _INT64.pack(value.current_state_timestamp),
             _INT32.pack(len(value.members))]
    for m in value.members:
        parts += [_string(m.member_id), _string(m.group_instance_id, nullable=True),
                  _string(m.client_id), _string(m.client_host),
                  _INT32.pack(m.rebalance_timeout_ms), _INT32.pack(m.session_timeout_ms),
                  _bytes(m.subscription), _bytes(m.assignment)]
    return b"".join(parts)


# ---- reading --------------------------------------------------------------------------------

class _Reader:
    """Bounds-checked reads from one record's bytes."""

    __slots__ = ("view", "position")

    def __init__(self, data: bytes | bytearray | memoryview):
        self.view = memoryview(data)
        self.position = 0

    def _take(self, n: int, what: str) -> memoryview:
        end = self.position + n
        if n < 0 or end > len(self.view):
            raise RecordSchemaError(f"{what}: needs {n} bytes at {self.position}, the record "
                                    f"has {len(self.view)}")
        chunk = self.view[self.position:end]
        self.position = end
        return chunk

    def int16(self, what: str) -> int:
        return _INT16.unpack(self._take(2, what))[0]

    def int32(self, what: str) -> int:
        return _INT32.unpack(self._take(4, what))[0]

    def int64(self, what: str) -> int:
        return _INT64.unpack(self._take(8, what))[0]

    def string(self, what: str, *, nullable: bool = False) -> str | None:
        length = self.int16(what)
        if length == -1 and nullable:
            return None
        if length < 0:
            raise RecordSchemaError(f"{what}: string length {length}")
        try:
            return bytes(self._take(length, what)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordSchemaError(f"{what}: not UTF-8 ({e.reason})") from None

    def bytes(self, what: str) -> bytes:
        length = self.int32(what)
        if length < 0:
            raise RecordSchemaError(f"{what}: bytes length {length}")
        return bytes(self._take(length, what))

    def end(self, what: str) -> None:
        left = len(self.view) - self.position
        if left:
            raise RecordSchemaError(f"{what}: {left} bytes after the record")


def decode_key(data: bytes | bytearray | memoryview
               ) -> OffsetCommitKey | GroupMetadataKey | OtherKey:
    """What a ``__consumer_offsets`` key is. Keys of versions 3 and above are OtherKey (their
    bytes are not checked: they belong to record types pylog does not keep)."""
    reader = _Reader(data)
    version = reader.int16("key version")
    if version in (0, OFFSET_COMMIT_KEY_VERSION):
        key = OffsetCommitKey(reader.string("group"), reader.string("topic"),
                              reader.int32("partition"))
    elif version == GROUP_METADATA_KEY_VERSION:
        key = GroupMetadataKey(reader.string("group"))
    elif version > GROUP_METADATA_KEY_VERSION:
        return OtherKey(version)
    else:
        raise RecordSchemaError(f"key version {version}")
    reader.end("key")
    return key


def decode_offset_commit_value(data: bytes | bytearray | memoryview) -> OffsetCommitValue:
    """OffsetCommitValue v0-v3."""
    reader = _Reader(data)
    version = reader.int16("offset commit value version")
    if not 0 <= version <= _MAX_READ_VALUE_VERSION:
        raise RecordSchemaError(f"offset commit value version {version}")
    offset = reader.int64("offset")
    leader_epoch = reader.int32("leaderEpoch") if version >= 3 else -1
    metadata = reader.string("metadata")
    commit_timestamp = reader.int64("commitTimestamp")
    expire_timestamp = reader.int64("expireTimestamp") if version == 1 else -1
    reader.end("offset commit value")
    return OffsetCommitValue(offset, leader_epoch, metadata, commit_timestamp, expire_timestamp)


def decode_group_metadata_value(data: bytes | bytearray | memoryview) -> GroupMetadataValue:
    """GroupMetadataValue v0-v3."""
    reader = _Reader(data)
    version = reader.int16("group metadata value version")
    if not 0 <= version <= _MAX_READ_VALUE_VERSION:
        raise RecordSchemaError(f"group metadata value version {version}")
    protocol_type = reader.string("protocolType")
    generation = reader.int32("generation")
    protocol = reader.string("protocol", nullable=True)
    leader = reader.string("leader", nullable=True)
    state_timestamp = reader.int64("currentStateTimestamp") if version >= 2 else -1
    count = reader.int32("members count")
    if count < 0:
        raise RecordSchemaError(f"members count {count}")
    members = []
    for _ in range(count):
        member_id = reader.string("memberId")
        instance_id = reader.string("groupInstanceId", nullable=True) if version >= 3 else None
        client_id = reader.string("clientId")
        client_host = reader.string("clientHost")
        rebalance_timeout = reader.int32("rebalanceTimeout") if version >= 1 else None
        session_timeout = reader.int32("sessionTimeout")
        members.append(MemberMetadataValue(
            member_id, instance_id, client_id, client_host,
            session_timeout if rebalance_timeout is None else rebalance_timeout,
            session_timeout, reader.bytes("subscription"), reader.bytes("assignment")))
    reader.end("group metadata value")
    return GroupMetadataValue(protocol_type, generation, protocol, leader, state_timestamp,
                              tuple(members))
