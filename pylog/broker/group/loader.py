"""Replaying one ``__consumer_offsets`` partition into groups and committed offsets (sans IO).

The records are applied in log order, the later record of a key replacing the earlier one and
a tombstone removing it: what a compacted log keeps is exactly what this replay ends with,
compacted or not. What comes out (Kafka's GroupMetadataManager.loadGroupsAndOffsets):

- a group with a GroupMetadataValue that lists members is Stable in its stored generation,
  with those members, their chosen protocol's subscription and their assignment (the
  coordinator then starts their session timers: members that keep heartbeating never notice
  the coordinator moved or restarted);
- one with a GroupMetadataValue without members is Empty, keeping its generation and
  protocol type;
- one with only committed offsets (a group that commits without group management) is Empty,
  generation 0;
- offsets are attached to their group whatever it is.

A record whose key or value does not decode is skipped with a warning: one damaged record
must not cost every other group its offsets.
"""
from __future__ import annotations

import logging

from pylog.records import Record

from pylog.broker.group.group import Group, GroupState, OffsetAndMetadata, member_from_stored
from pylog.broker.group.schemas import (GroupMetadataKey, GroupMetadataValue, OffsetCommitKey,
                                        RecordSchemaError, decode_group_metadata_value,
                                        decode_key, decode_offset_commit_value)

__all__ = ["PartitionLoader"]

_log = logging.getLogger("pylog.broker.group.loader")


class PartitionLoader:
    """Feed it the records of offsets partition ``partition`` in order (``apply``), then take
    the groups (``groups``)."""

    def __init__(self, partition: int):
        self.partition = partition
        # group id -> (topic, partition) -> the latest committed offset.
        self.offsets: dict[str, dict[tuple[str, int], OffsetAndMetadata]] = {}
        # group id -> its latest group metadata (tombstoned groups are absent).
        self.metadata: dict[str, GroupMetadataValue] = {}
        self.records = 0
        self.skipped = 0

    def apply(self, record: Record) -> None:
        self.records += 1
        if record.key is None:
            self._skip(record, "no key")
            return
        try:
            key = decode_key(record.key)
        except RecordSchemaError as e:
            self._skip(record, f"key: {e}")
            return
        try:
            if isinstance(key, OffsetCommitKey):
                self._apply_offset(key, record)
            elif isinstance(key, GroupMetadataKey):
                self._apply_group(key, record)
        except RecordSchemaError as e:
            self._skip(record, f"value: {e}")

    def _apply_offset(self, key: OffsetCommitKey, record: Record) -> None:
        tp = (key.topic, key.partition)
        if record.value is None:
            offsets = self.offsets.get(key.group)
            if offsets is not None:
                offsets.pop(tp, None)
            return
        value = decode_offset_commit_value(record.value)
        self.offsets.setdefault(key.group, {})[tp] = OffsetAndMetadata(
            value.offset, value.leader_epoch, value.metadata, value.commit_timestamp,
            record.offset)

    def _apply_group(self, key: GroupMetadataKey, record: Record) -> None:
        if record.value is None:
            self.metadata.pop(key.group, None)
            return
        self.metadata[key.group] = decode_group_metadata_value(record.value)

    def _skip(self, record: Record, why: str) -> None:
        self.skipped += 1
        _log.warning("offsets partition %d: record at offset %d skipped (%s)", self.partition,
                     record.offset, why)

    def groups(self, now_ms: int) -> list[Group]:
        """Every group the replay ended with, each with its offsets."""
        built = []
        for group_id in sorted(set(self.metadata) | {g for g, o in self.offsets.items() if o}):
            value = self.metadata.get(group_id)
            group = _restore(group_id, self.partition, value, now_ms) if value is not None \
                else Group(group_id, self.partition, now_ms=now_ms)
            group.offsets = dict(self.offsets.get(group_id, {}))
            built.append(group)
        return built


def _restore(group_id: str, partition: int, value: GroupMetadataValue, now_ms: int) -> Group:
    stamp = value.current_state_timestamp if value.current_state_timestamp >= 0 else now_ms
    members = value.members if value.protocol else ()
    if value.members and not value.protocol:
        _log.warning("group %r: stored with members but no protocol; loaded empty", group_id)
    group = Group(group_id, partition, now_ms=stamp,
                  state=GroupState.STABLE if members else GroupState.EMPTY)
    group.generation_id = value.generation
    group.protocol_type = value.protocol_type or None
    for stored in members:
        if stored.member_id not in group.members:
            group.add(member_from_stored(stored, value.protocol_type, value.protocol), None)
    if group.members:
        group.protocol_name = value.protocol
        if value.leader in group.members:
            group.leader_id = value.leader
    return group
