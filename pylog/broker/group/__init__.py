"""The classic group coordinator and the committed offsets it keeps in ``__consumer_offsets``.

- ``group``: one group's state machine (sans IO).
- ``coordinator``: ``GroupCoordinator``, what each group api does, with its timers in the
  broker's purgatory (``delayed``).
- ``schemas``: Kafka's record schemas of ``__consumer_offsets`` (OffsetCommitKey/Value,
  GroupMetadataKey/Value), byte for byte.
- ``offsets_topic``: the topic itself (partition of a group, creation, appends, reads);
  ``loader``: replaying a partition into groups and offsets.
"""
from pylog.broker.group.config import OFFSETS_TOPIC, GroupConfig
from pylog.broker.group.coordinator import (
    NEW_MEMBER_JOIN_TIMEOUT_MS,
    STATIC_MEMBERSHIP_UNSUPPORTED,
    GroupCoordinator,
    GroupDescription,
    GroupOverview,
    LeaveGroupResult,
    MemberDescription,
    MemberLeave,
    OffsetCommitEntry,
    OffsetFetchResult,
)
from pylog.broker.group.group import (
    Group,
    GroupState,
    JoinedMember,
    JoinGroupResult,
    Member,
    OffsetAndMetadata,
    SyncGroupResult,
)
from pylog.broker.group.offsets_topic import (
    OffsetsTopic,
    ensure_offsets_topic,
    offsets_topic_configs,
    partition_for,
)

__all__ = [
    "OFFSETS_TOPIC", "GroupConfig", "GroupCoordinator", "GroupDescription", "GroupOverview",
    "LeaveGroupResult", "MemberDescription", "MemberLeave", "OffsetCommitEntry",
    "OffsetFetchResult", "NEW_MEMBER_JOIN_TIMEOUT_MS", "STATIC_MEMBERSHIP_UNSUPPORTED", "Group",
    "GroupState", "JoinedMember", "JoinGroupResult", "Member", "OffsetAndMetadata",
    "SyncGroupResult", "OffsetsTopic", "ensure_offsets_topic", "offsets_topic_configs",
    "partition_for",
]
