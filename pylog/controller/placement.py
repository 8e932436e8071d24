"""Replica placement: which brokers hold each partition of a new topic (rack-aware).

Theory of operation (Kafka's rack-aware assignment, made deterministic):
1. Order the brokers so that racks alternate: the first broker of every rack (racks by name,
   brokers by id), then the second of every rack, and so on. Neighbours in this list are on
   different racks whenever the racks allow it. Brokers without a rack form one more rack.
2. Partition p is led by the broker at position (start_index + p) mod n: leaders go round
   the list, so every broker leads the same number of partitions (+-1).
3. Its followers are taken from the positions after the leader's, rotated by one more step
   each time the partitions have gone once round the list (so the follower sets of a broker's
   partitions differ between rounds), preferring a broker on a rack that holds no replica of
   this partition yet; once every rack has one, the next unused broker in that order.
So a partition spans min(replication factor, racks) racks, and the same inputs always give
the same assignment (``start_index`` is the only varying input; the controller derives it
from the topic name so that topics do not all start on the same broker).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["BrokerLike", "rack_alternated_brokers", "assign_replicas"]


class BrokerLike(Protocol):
    node_id: int
    rack: str | None


def _rack_key(rack: str | None) -> tuple[bool, str]:
    return (rack is None, rack or "")


def rack_alternated_brokers(brokers: Sequence[BrokerLike]) -> list[int]:
    """Broker ids with racks alternating (step 1 of the module doc)."""
    by_rack: dict[str | None, list[int]] = {}
    for broker in brokers:
        by_rack.setdefault(broker.rack, []).append(broker.node_id)
    racks = sorted(by_rack, key=_rack_key)
    for rack in racks:
        by_rack[rack].sort()
    out: list[int] = []
    depth = max((len(ids) for ids in by_rack.values()), default=0)
    for i in range(depth):
        for rack in racks:
            if i < len(by_rack[rack]):
                out.append(by_rack[rack][i])
    return out


def assign_replicas(brokers: Sequence[BrokerLike], num_partitions: int,
                    replication_factor: int, *, start_index: int = 0
                    ) -> dict[int, list[int]]:
    """``{partition: [broker ids, leader first]}`` for partitions 0..num_partitions-1.

    ValueError unless 1 <= replication_factor <= number of brokers (distinct ids) and
    num_partitions >= 0.
    """
    ids = [b.node_id for b in brokers]
    if len(set(ids)) != len(ids):
        raise ValueError(f"broker ids repeat: {sorted(ids)}")
    n = len(ids)
    if not 1 <= replication_factor <= n:
        raise ValueError(f"replication factor {replication_factor} needs 1..{n} brokers")
    if num_partitions < 0:
        raise ValueError(f"negative number of partitions {num_partitions}")
    rack_of = {b.node_id: b.rack for b in brokers}
    num_racks = len(set(rack_of.values()))
    arranged = rack_alternated_brokers(brokers)
    start_index %= n
    assignment: dict[int, list[int]] = {}
    for p in range(num_partitions):
        first = (start_index + p) % n
        leader = arranged[first]
        replicas = [leader]
        racks_used = {rack_of[leader]}
        if replication_factor > 1:
            shift = (p // n) % (n - 1)
            candidates = [arranged[(first + 1 + (shift + k) % (n - 1)) % n]
                          for k in range(n - 1)]
            while len(replicas) < replication_factor:
                every_rack_used = len(racks_used) == num_racks
                for broker in candidates:
                    if broker not in replicas and (every_rack_used
                                                   or rack_of[broker] not in racks_used):
                        replicas.append(broker)
                        racks_used.add(rack_of[broker])
                        break
        assignment[p] = replicas
    return assignment
