"""The group coordinator's settings (Kafka's broker names; defaults chosen for fast groups)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["GroupConfig", "OFFSETS_TOPIC"]

#: Kafka's internal topic of committed offsets and group metadata (DESIGN.md §10).
OFFSETS_TOPIC = "__consumer_offsets"


@dataclass(frozen=True)
class GroupConfig:
    min_session_timeout_ms: int = 1000
    """group.min.session.timeout.ms: a JoinGroup asking for less gets INVALID_SESSION_TIMEOUT
    (Kafka's default is 6000; 1 s lets tests and impatient users detect a dead member fast)."""
    max_session_timeout_ms: int = 300_000
    """group.max.session.timeout.ms: a JoinGroup asking for more gets INVALID_SESSION_TIMEOUT."""
    initial_rebalance_delay_ms: int = 0
    """group.initial.rebalance.delay.ms: how long the first rebalance of an empty group waits
    for more members (0: answer the first member at once)."""
    offsets_topic_num_partitions: int = 16
    """offsets.topic.num.partitions: partitions of __consumer_offsets, fixed at its creation."""
    offsets_topic_replication_factor: int = 3
    """offsets.topic.replication.factor: capped at the number of brokers when created."""
    offsets_topic_segment_bytes: int = 100 * 1024 * 1024
    """offsets.topic.segment.bytes: segment size of __consumer_offsets (small, so that the
    cleaner can compact all but the active segment)."""
    offsets_commit_timeout_ms: int = 5000
    """offsets.commit.timeout.ms: how long a commit (or group metadata write) waits for the
    offsets partition's high watermark."""
    offset_metadata_max_bytes: int = 4096
    """offset.metadata.max.bytes: longer commit metadata gets OFFSET_METADATA_TOO_LARGE."""

    @classmethod
    def from_broker_config(cls, config: Any) -> "GroupConfig":
        """The group settings of a BrokerConfig."""
        return cls(
            min_session_timeout_ms=config.group_min_session_timeout_ms,
            max_session_timeout_ms=config.group_max_session_timeout_ms,
            initial_rebalance_delay_ms=config.group_initial_rebalance_delay_ms,
            offsets_topic_num_partitions=config.offsets_topic_num_partitions,
            offsets_topic_replication_factor=config.offsets_topic_replication_factor,
            offsets_topic_segment_bytes=config.offsets_topic_segment_bytes,
            offsets_commit_timeout_ms=config.offsets_commit_timeout_ms,
            offset_metadata_max_bytes=config.offset_metadata_max_bytes,
        )
