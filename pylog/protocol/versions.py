"""The api keys and version ranges pylog advertises in ApiVersions.

The ranges are KAFKA-PROTOCOL.md section 1's recommended set, which every tested client
(librdkafka 2.0 and 2.16, kafka-python 2.0/2.3/3.0, aiokafka 0.12/0.14) accepts. Three rules
shape it:

- Every range is non-flexible, so bodies use the classic encodings (checked against kio's
  schemas by the tests).
- Clients may pick any version inside a range, and some clients infer a Kafka release from
  the maxima and then hard-code versions, so a range is downward-closed (every version from
  floor to max is served) and the set reads as one real Kafka release (2.4).
- Where kio (generated from Kafka 4's schemas, which dropped old versions by KIP-896) has no
  schema, the floor is Kafka 4's floor: CreateTopics 2, OffsetForLeaderEpoch 2.
  CreateTopics 2-4 is the range KAFKA-PROTOCOL.md verified with all seven clients; no client
  ever sent CreateTopics v0/v1. DeleteTopics v0 (asked for by the issue) is v1 without the
  response's throttle field and is served through v1's schemas (``legacy``).

The broker advertises only the keys it has handlers for: ``advertised(implemented_keys)``.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple


class ApiKey(enum.IntEnum):
    """Kafka api keys pylog knows (Kafka's names, ApiKeys.java)."""

    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    INIT_PRODUCER_ID = 22
    OFFSET_FOR_LEADER_EPOCH = 23
    DELETE_GROUPS = 42


class VersionRange(NamedTuple):
    """Inclusive range of versions served for one api key."""

    min: int
    max: int

    def __contains__(self, version: object) -> bool:  # type: ignore[override]
        return isinstance(version, int) and self.min <= version <= self.max


ADVERTISED_VERSIONS: Mapping[ApiKey, VersionRange] = MappingProxyType({
    ApiKey.API_VERSIONS: VersionRange(0, 2),
    ApiKey.METADATA: VersionRange(0, 8),
    ApiKey.PRODUCE: VersionRange(3, 8),
    ApiKey.FETCH: VersionRange(4, 11),
    ApiKey.LIST_OFFSETS: VersionRange(1, 5),
    ApiKey.FIND_COORDINATOR: VersionRange(0, 2),
    ApiKey.JOIN_GROUP: VersionRange(0, 5),
    ApiKey.SYNC_GROUP: VersionRange(0, 3),
    ApiKey.HEARTBEAT: VersionRange(0, 3),
    ApiKey.LEAVE_GROUP: VersionRange(0, 3),
    ApiKey.OFFSET_COMMIT: VersionRange(2, 7),
    ApiKey.OFFSET_FETCH: VersionRange(1, 5),
    ApiKey.CREATE_TOPICS: VersionRange(2, 4),
    ApiKey.INIT_PRODUCER_ID: VersionRange(0, 1),
    ApiKey.DELETE_TOPICS: VersionRange(0, 3),
    ApiKey.OFFSET_FOR_LEADER_EPOCH: VersionRange(2, 3),
    ApiKey.LIST_GROUPS: VersionRange(0, 2),
    ApiKey.DESCRIBE_GROUPS: VersionRange(0, 4),
    ApiKey.DELETE_GROUPS: VersionRange(0, 1),
})


def advertised(implemented_keys: Iterable[int]) -> dict[ApiKey, VersionRange]:
    """The ranges to advertise for the api keys that have a handler, in api key order.

    Keys without an entry in ``ADVERTISED_VERSIONS`` are left out: an api is advertised only
    once its version range has been decided here.
    """
    wanted = set(implemented_keys)
    return {key: ADVERTISED_VERSIONS[key] for key in sorted(ADVERTISED_VERSIONS)
            if key in wanted}
