"""Partition assignors of the classic consumer protocol, exactly as the Java client's.

The group leader runs the assignor that the coordinator chose (the first protocol of the
leader's list that every member supports) over every member's subscription and the partition
counts it sees in metadata; the result goes to the members in SyncGroup. Members of one group
may be different clients (kafka-python, librdkafka, Java, pylog), and any of them may be the
leader, so the same inputs must give the same assignment whichever client computes it: these
are line-by-line ports of org.apache.kafka.clients.consumer.RangeAssignor and RoundRobinAssignor
(without racks, which pylog does not send).

Member order (``MemberInfo.compareTo`` in Java): members with a group instance id (static
members) first, ordered by it; then the others by member id. Both ids compare as Java strings
(UTF-16 code units; the same as Python's order for the ASCII ids brokers hand out).

- range: per topic, the members subscribed to it in member order take consecutive runs of the
  partitions; the first ``partitions % members`` members get one more.
- roundrobin: every partition of every subscribed topic (topics sorted, partitions ascending)
  dealt in turn to the members in member order, skipping members not subscribed to its topic.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol


class MemberSubscription(NamedTuple):
    topics: tuple[str, ...]
    group_instance_id: str | None = None


class Assignor(Protocol):
    name: str

    def assign(self, partitions_per_topic: Mapping[str, int],
               subscriptions: Mapping[str, MemberSubscription]
               ) -> dict[str, list[tuple[str, int]]]:
        """member id -> its (topic, partition) pairs, for every member in ``subscriptions``."""


def _java_key(text: str) -> tuple[int, ...]:
    """Sort key equal to java.lang.String.compareTo (UTF-16 code unit order)."""
    data = text.encode("utf-16-be")
    return tuple(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))


def member_order(members: Mapping[str, MemberSubscription]) -> list[str]:
    """Member ids in Java's MemberInfo order (static members first, by instance id)."""
    def key(member_id: str):
        instance = members[member_id].group_instance_id
        if instance is not None:
            return (0, _java_key(instance), ())
        return (1, (), _java_key(member_id))
    return sorted(members, key=key)


class RangeAssignor:
    name = "range"

    def assign(self, partitions_per_topic: Mapping[str, int],
               subscriptions: Mapping[str, MemberSubscription]
               ) -> dict[str, list[tuple[str, int]]]:
        assignment: dict[str, list[tuple[str, int]]] = {m: [] for m in subscriptions}
        ordered = member_order(subscriptions)
        topics = sorted({t for s in subscriptions.values() for t in s.topics})
        for topic in topics:
            count = partitions_per_topic.get(topic)
            if count is None:
                continue
            members = [m for m in ordered if topic in subscriptions[m].topics]
            per_member, extra = divmod(count, len(members))
            for i, member in enumerate(members):
                start = per_member * i + min(i, extra)
                length = per_member + (1 if i + 1 <= extra else 0)
                assignment[member].extend((topic, p) for p in range(start, start + length))
        return assignment


class RoundRobinAssignor:
    name = "roundrobin"

    def assign(self, partitions_per_topic: Mapping[str, int],
               subscriptions: Mapping[str, MemberSubscription]
               ) -> dict[str, list[tuple[str, int]]]:
        assignment: dict[str, list[tuple[str, int]]] = {m: [] for m in subscriptions}
        ordered = member_order(subscriptions)
        if not ordered:
            return assignment
        topics = sorted({t for s in subscriptions.values() for t in s.topics})
        turn = 0  # Java's CircularIterator over the ordered members
        for topic in topics:
            count = partitions_per_topic.get(topic)
            if count is None:
                continue
            for partition in range(count):
                # Some member is subscribed to ``topic`` (it came from a subscription), so
                # this finds one within a full turn.
                while topic not in subscriptions[ordered[turn]].topics:
                    turn = (turn + 1) % len(ordered)
                assignment[ordered[turn]].append((topic, partition))
                turn = (turn + 1) % len(ordered)
        return assignment


#: The assignors pylog's consumer knows, by protocol name.
ASSIGNORS: dict[str, Assignor] = {"range": RangeAssignor(), "roundrobin": RoundRobinAssignor()}


def resolve_assignors(strategy) -> list[Assignor]:
    """``partition_assignment_strategy`` (names and/or assignor objects, in preference order)
    as assignor objects."""
    if isinstance(strategy, str) or hasattr(strategy, "assign"):
        strategy = (strategy,)
    result: list[Assignor] = []
    for item in strategy:
        if isinstance(item, str):
            try:
                item = ASSIGNORS[item]
            except KeyError:
                raise ValueError(f"unknown partition assignment strategy {item!r} "
                                 f"(known: {', '.join(ASSIGNORS)})") from None
        if not isinstance(getattr(item, "name", None), str) or not callable(
                getattr(item, "assign", None)):
            raise ValueError(f"{item!r} is not an assignor (needs .name and .assign)")
        result.append(item)
    if not result:
        raise ValueError("partition_assignment_strategy is empty")
    if len({a.name for a in result}) != len(result):
        raise ValueError("partition_assignment_strategy names an assignor twice")
    return result
