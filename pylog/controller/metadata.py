"""Cluster metadata: brokers, topics, and the replication state of every partition (sans IO).

Theory of operation
-------------------
``ClusterMetadata`` is a plain value owned by the controller (controller.py); nothing here
touches a file or a socket. Every method that changes it validates first, changes second and
bumps ``version`` last, so a refused change leaves no trace and two metadata values with the
same version are the same metadata (brokers follow changes by version, DESIGN §6). The
controller applies a change to a *copy*, persists the copy, and only then makes it current:
that is what lets the store say "committed" before anyone is told.

Partition state and its epochs (DESIGN §5, Kafka's KRaft PartitionRegistration):
  leader_epoch     bumped at every leader change (stamped into every batch the leader writes)
  partition_epoch  bumped at every change of the partition's state (leader, ISR, replicas):
                   an AlterPartition names the partition epoch it was computed from and is
                   refused with INVALID_UPDATE_VERSION when that is no longer current, so a
                   leader can never apply an ISR change computed from a stale view.

Errors carry the Kafka error code the broker answers with (``error_code``).
"""
from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from pylog.controller.placement import assign_replicas
from pylog.protocol import ErrorCode
from pylog.storage import names
from pylog.storage.config import ConfigError, LogConfig

__all__ = [
    "BrokerInfo", "PartitionState", "TopicInfo", "ClusterMetadata", "MetadataError",
    "TopicExistsError", "InvalidPartitionsError", "InvalidReplicationFactorError",
    "InvalidTopicError", "InvalidConfigError", "InvalidReplicaAssignmentError",
    "InvalidRequestError", "UnknownTopicError", "StalePartitionEpochError",
    "NotLeaderError", "FencedLeaderEpochError", "IneligibleReplicaError",
    "MAX_PARTITIONS_PER_REQUEST", "INVALID_UPDATE_VERSION", "INELIGIBLE_REPLICA",
]

# Kafka codes for AlterPartition that pylog.protocol.ErrorCode does not list (they never reach
# a client: only brokers send AlterPartition).
INVALID_UPDATE_VERSION = 95
INELIGIBLE_REPLICA = 107

# Kafka's KRaft controller refuses a single operation that would create more than 10,000
# records; one partition is one record. Without a bound, one CreateTopics could ask for
# 2^31 - 1 partition directories (each with preallocated index files).
MAX_PARTITIONS_PER_REQUEST = 10_000
MAX_REPLICATION_FACTOR = 2**15 - 1  # replication_factor is an INT16 on the wire


# ---- errors ---------------------------------------------------------------------------------

class MetadataError(Exception):
    """A metadata change refused; ``error_code`` is the Kafka code to answer with."""

    error_code: int = ErrorCode.UNKNOWN_SERVER_ERROR


class TopicExistsError(MetadataError):
    error_code = ErrorCode.TOPIC_ALREADY_EXISTS


class InvalidPartitionsError(MetadataError):
    error_code = ErrorCode.INVALID_PARTITIONS


class InvalidReplicationFactorError(MetadataError):
    error_code = ErrorCode.INVALID_REPLICATION_FACTOR


class InvalidReplicaAssignmentError(MetadataError):
    error_code = ErrorCode.INVALID_REPLICA_ASSIGNMENT


class InvalidTopicError(MetadataError):
    error_code = ErrorCode.INVALID_TOPIC_EXCEPTION


class InvalidConfigError(MetadataError):
    error_code = ErrorCode.INVALID_CONFIG


class InvalidRequestError(MetadataError):
    error_code = ErrorCode.INVALID_REQUEST


class UnknownTopicError(MetadataError):
    error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


class StalePartitionEpochError(MetadataError):
    """AlterPartition computed from a partition epoch that is no longer current."""
    error_code = INVALID_UPDATE_VERSION


class NotLeaderError(MetadataError):
    """AlterPartition from a broker that is not the partition's leader."""
    error_code = ErrorCode.NOT_LEADER_OR_FOLLOWER


class FencedLeaderEpochError(MetadataError):
    """AlterPartition from the leader of an older leader epoch."""
    error_code = ErrorCode.FENCED_LEADER_EPOCH


class IneligibleReplicaError(MetadataError):
    """A proposed ISR that is empty, lacks the leader, repeats a broker, or names a broker
    that is not a replica or is an observer (observers never join the ISR)."""
    error_code = INELIGIBLE_REPLICA


# ---- values ---------------------------------------------------------------------------------

@dataclass
class BrokerInfo:
    """A registered broker and where clients reach it."""
    node_id: int
    host: str
    port: int
    rack: str | None = None


@dataclass
class PartitionState:
    """The controller's record of one partition.

    Invariants (checked by every ClusterMetadata mutation):
      replicas        every broker holding a copy, in preference order; non-empty, distinct;
                      the first is the preferred leader
      observers       a subset of replicas that replicate but never join the ISR
      hidden          a subset of replicas that never serve client reads
      leader          a member of isr (-1 only when no replica can lead)
      leader_epoch    >= 0; bumped at every leader change, never lowered
      isr             a non-empty subset of replicas \\ observers holding every committed
                      offset; contains the leader
      partition_epoch >= 0; bumped at every change of this record, never lowered
    """
    topic: str
    partition: int
    replicas: list[int]
    leader: int
    leader_epoch: int
    isr: list[int]
    partition_epoch: int
    observers: list[int] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)


@dataclass
class TopicInfo:
    """A topic: its id (new for every creation, so a re-created topic is a different topic),
    its partitions by index (0 .. n-1) and its configs (Kafka names, string values, only the
    ones set for this topic: the broker's defaults fill the rest)."""
    name: str
    topic_id: uuid.UUID
    partitions: dict[int, PartitionState]
    configs: dict[str, str] = field(default_factory=dict)


# ---- the metadata ---------------------------------------------------------------------------

class ClusterMetadata:
    """Brokers and topics of one cluster.

    Invariants: ``version`` strictly increases with every change (and only then); every
    ``PartitionState`` satisfies its documented invariants; topic names are valid and no two
    collide once '.' and '_' are identified (Kafka's metric-name rule).
    """

    def __init__(self, cluster_id: str, controller_id: int, *, version: int = 0,
                 brokers: dict[int, BrokerInfo] | None = None,
                 topics: dict[str, TopicInfo] | None = None):
        self.cluster_id = cluster_id
        self.controller_id = controller_id
        self.version = version
        self.brokers: dict[int, BrokerInfo] = brokers if brokers is not None else {}
        self.topics: dict[str, TopicInfo] = topics if topics is not None else {}

    def __repr__(self) -> str:
        return (f"ClusterMetadata(cluster_id={self.cluster_id!r}, version={self.version}, "
                f"brokers={sorted(self.brokers)}, topics={len(self.topics)})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterMetadata):
            return NotImplemented
        return (self.cluster_id, self.controller_id, self.version, self.brokers,
                self.topics) == (other.cluster_id, other.controller_id, other.version,
                                 other.brokers, other.topics)

    def copy(self) -> "ClusterMetadata":
        """A deep copy: changing it never changes this one."""
        return copy.deepcopy(self)

    def _bump(self) -> None:
        self.version += 1

    # ---- reading -------------------------------------------------------------------------

    def live_broker_ids(self) -> list[int]:
        """Brokers that can take replicas, by id. Every registered broker counts until broker
        heartbeats exist (they come with replication, DESIGN §6)."""
        return sorted(self.brokers)

    def partition(self, topic: str, partition: int) -> PartitionState | None:
        info = self.topics.get(topic)
        return None if info is None else info.partitions.get(partition)

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        for info in self.topics.values():
            if info.topic_id == topic_id:
                return info
        return None

    # ---- brokers -------------------------------------------------------------------------

    def register_broker(self, info: BrokerInfo) -> None:
        """Add or update a broker. Re-registering the same details changes nothing."""
        if isinstance(info.node_id, bool) or not isinstance(info.node_id, int) \
                or not 0 <= info.node_id < 2**31:
            raise InvalidRequestError(f"broker id {info.node_id!r} is not in 0..2^31-1")
        if not isinstance(info.port, int) or not 0 <= info.port <= 65535:
            raise InvalidRequestError(f"broker port {info.port!r} is not in 0..65535")
        if self.brokers.get(info.node_id) == info:
            return
        self.brokers[info.node_id] = BrokerInfo(info.node_id, info.host, info.port, info.rack)
        self._bump()

    # ---- topics --------------------------------------------------------------------------

    def create_topic(self, name: str, num_partitions: int, replication_factor: int,
                     configs: Mapping[str, Any] | None = None,
                     assignments: Mapping[int, Sequence[int]] | None = None, *,
                     topic_id: uuid.UUID | None = None, start_index: int | None = None,
                     validate_only: bool = False) -> TopicInfo:
        """Create a topic, every replica in sync and the first replica leading, epochs 0.

        ``assignments`` (partition -> broker ids) replaces placement; then
        ``num_partitions`` and ``replication_factor`` must be -1 or agree with it.
        ``configs``: Kafka topic configs; None values are dropped (Kafka's "use the
        default"). ``start_index``: placement's rotation (default: from the name, so topics
        spread their leaders). ``validate_only``: check everything, change nothing.
        """
        self._check_new_topic_name(name)
        stored_configs = _validate_configs(configs)
        if assignments is not None:
            replica_lists = self._check_assignments(assignments, num_partitions,
                                                    replication_factor)
        else:
            replica_lists = self._place(name, num_partitions, replication_factor, start_index)
        partitions = {
            p: PartitionState(topic=name, partition=p, replicas=list(replicas),
                              leader=replicas[0], leader_epoch=0, isr=list(replicas),
                              partition_epoch=0)
            for p, replicas in replica_lists.items()}
        info = TopicInfo(name=name, topic_id=topic_id or uuid.uuid4(), partitions=partitions,
                         configs=stored_configs)
        if validate_only:
            return info
        self.topics[name] = info
        self._bump()
        return info

    def delete_topic(self, name: str) -> TopicInfo:
        """Remove a topic; returns what it was."""
        try:
            names.validate_topic_name(name)
        except names.InvalidTopicError as e:
            raise InvalidTopicError(str(e)) from None
        info = self.topics.pop(name, None)
        if info is None:
            raise UnknownTopicError(f"topic {name!r} does not exist")
        self._bump()
        return info

    def _check_new_topic_name(self, name: str) -> None:
        try:
            names.validate_topic_name(name)
        except names.InvalidTopicError as e:
            raise InvalidTopicError(str(e)) from None
        if name in self.topics:
            raise TopicExistsError(f"topic {name!r} already exists")
        folded = _collision_key(name)
        for existing in self.topics:
            if _collision_key(existing) == folded:
                raise InvalidTopicError(
                    f"topic {name!r} collides with existing topic {existing!r} (names that "
                    "differ only in '.' and '_' share metric names)")

    def _place(self, name: str, num_partitions: int, replication_factor: int,
               start_index: int | None) -> dict[int, list[int]]:
        if isinstance(num_partitions, bool) or not isinstance(num_partitions, int) \
                or num_partitions < 1:
            raise InvalidPartitionsError(
                f"number of partitions must be at least 1, got {num_partitions!r}")
        if num_partitions > MAX_PARTITIONS_PER_REQUEST:
            raise InvalidPartitionsError(
                f"{num_partitions} partitions is more than the {MAX_PARTITIONS_PER_REQUEST} "
                "one request may create")
        if isinstance(replication_factor, bool) or not isinstance(replication_factor, int) \
                or not 1 <= replication_factor <= MAX_REPLICATION_FACTOR:
            raise InvalidReplicationFactorError(
                f"replication factor must be in 1..{MAX_REPLICATION_FACTOR}, got "
                f"{replication_factor!r}")
        live = [self.brokers[b] for b in self.live_broker_ids()]
        if replication_factor > len(live):
            raise InvalidReplicationFactorError(
                f"replication factor {replication_factor} is larger than the number of live "
                f"brokers, {len(live)}")
        if start_index is None:
            start_index = _stable_hash(name)
        return assign_replicas(live, num_partitions, replication_factor,
                               start_index=start_index)

    def _check_assignments(self, assignments: Mapping[int, Sequence[int]],
                           num_partitions: int, replication_factor: int
                           ) -> dict[int, list[int]]:
        count = len(assignments)
        if count == 0:
            raise InvalidReplicaAssignmentError("the replica assignment is empty")
        if count > MAX_PARTITIONS_PER_REQUEST:
            raise InvalidPartitionsError(
                f"{count} partitions is more than the {MAX_PARTITIONS_PER_REQUEST} one "
                "request may create")
        if num_partitions not in (-1, count):
            raise InvalidRequestError(
                f"num_partitions {num_partitions} contradicts the {count} partitions of the "
                "replica assignment (send -1 with an assignment)")
        if sorted(assignments) != list(range(count)):
            raise InvalidReplicaAssignmentError(
                f"assigned partitions must be numbered 0..{count - 1}, got "
                f"{sorted(assignments)}")
        out: dict[int, list[int]] = {}
        width = None
        for p in range(count):
            replicas = list(assignments[p])
            if not replicas:
                raise InvalidReplicaAssignmentError(f"partition {p} has no replicas")
            if len(set(replicas)) != len(replicas):
                raise InvalidReplicaAssignmentError(
                    f"partition {p} lists a broker twice: {replicas}")
            for broker in replicas:
                if broker not in self.brokers:
                    raise InvalidReplicaAssignmentError(
                        f"partition {p} is assigned to broker {broker}, which is not "
                        "registered")
            if width is None:
                width = len(replicas)
            elif len(replicas) != width:
                raise InvalidReplicaAssignmentError(
                    f"partition {p} has {len(replicas)} replicas, partition 0 has {width}: "
                    "all partitions need the same number")
            out[p] = replicas
        if replication_factor not in (-1, width):
            raise InvalidRequestError(
                f"replication_factor {replication_factor} contradicts the assignment's "
                f"{width} replicas per partition (send -1 with an assignment)")
        return out

    # ---- partition state -----------------------------------------------------------------

    def alter_partition(self, topic: str, partition: int, new_isr: Iterable[int],
                        partition_epoch: int, *, leader_id: int | None = None,
                        leader_epoch: int | None = None) -> PartitionState:
        """Commit an ISR change proposed by the leader (Kafka's AlterPartition).

        Refused with StalePartitionEpochError unless ``partition_epoch`` is the current one;
        with NotLeaderError / FencedLeaderEpochError when ``leader_id`` / ``leader_epoch``
        are given and are not the current leader's; with IneligibleReplicaError for an ISR
        that breaks the PartitionState invariants. An ISR equal to the current one changes
        nothing. Returns (a copy of) the partition's state afterwards.
        """
        state = self.partition(topic, partition)
        if state is None:
            raise UnknownTopicError(f"partition {topic}-{partition} does not exist")
        if leader_id is not None and leader_id != state.leader:
            raise NotLeaderError(f"broker {leader_id} is not the leader of {topic}-{partition} "
                                 f"(broker {state.leader} is)")
        if leader_epoch is not None and leader_epoch != state.leader_epoch:
            raise FencedLeaderEpochError(
                f"leader epoch {leader_epoch} of {topic}-{partition} is not the current "
                f"{state.leader_epoch}")
        if partition_epoch != state.partition_epoch:
            raise StalePartitionEpochError(
                f"partition epoch {partition_epoch} of {topic}-{partition} is stale (current: "
                f"{state.partition_epoch})")
        isr = list(new_isr)
        _check_isr(state, isr)
        if isr != state.isr:
            state.isr = isr
            state.partition_epoch += 1
            self._bump()
        return copy.deepcopy(state)

    # ---- persistence form ----------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-ready dict (the store's format, see store.py)."""
        return {
            "cluster_id": self.cluster_id,
            "controller_id": self.controller_id,
            "version": self.version,
            "brokers": [{"node_id": b.node_id, "host": b.host, "port": b.port,
                         "rack": b.rack} for _, b in sorted(self.brokers.items())],
            "topics": [{
                "name": t.name,
                "topic_id": str(t.topic_id),
                "configs": dict(sorted(t.configs.items())),
                "partitions": [{
                    "partition": s.partition, "replicas": s.replicas, "leader": s.leader,
                    "leader_epoch": s.leader_epoch, "isr": s.isr,
                    "partition_epoch": s.partition_epoch, "observers": s.observers,
                    "hidden": s.hidden} for _, s in sorted(t.partitions.items())],
            } for _, t in sorted(self.topics.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "ClusterMetadata":
        """Inverse of ``to_dict``; ValueError (or KeyError/TypeError) for anything that is
        not metadata this module could have written."""
        md = cls(_str(data["cluster_id"]), _int(data["controller_id"]),
                 version=_int(data["version"]))
        for b in data["brokers"]:
            rack = b["rack"]
            info = BrokerInfo(_int(b["node_id"]), _str(b["host"]), _int(b["port"]),
                              None if rack is None else _str(rack))
            if info.node_id in md.brokers:
                raise ValueError(f"broker {info.node_id} appears twice")
            md.brokers[info.node_id] = info
        for t in data["topics"]:
            name = names.validate_topic_name(_str(t["name"]))
            if name in md.topics:
                raise ValueError(f"topic {name!r} appears twice")
            configs = {_str(k): _str(v) for k, v in t["configs"].items()}
            partitions: dict[int, PartitionState] = {}
            for p in t["partitions"]:
                state = PartitionState(
                    topic=name, partition=_int(p["partition"]),
                    replicas=_int_list(p["replicas"]), leader=_int(p["leader"]),
                    leader_epoch=_int(p["leader_epoch"]), isr=_int_list(p["isr"]),
                    partition_epoch=_int(p["partition_epoch"]),
                    observers=_int_list(p["observers"]), hidden=_int_list(p["hidden"]))
                _check_loaded_state(state)
                if state.partition in partitions:
                    raise ValueError(f"{name}-{state.partition} appears twice")
                partitions[state.partition] = state
            if sorted(partitions) != list(range(len(partitions))):
                raise ValueError(f"topic {name!r} partitions are not numbered 0..n-1")
            md.topics[name] = TopicInfo(name=name, topic_id=uuid.UUID(_str(t["topic_id"])),
                                        partitions=partitions, configs=configs)
        return md


# ---- helpers --------------------------------------------------------------------------------

def _validate_configs(configs: Mapping[str, Any] | None) -> dict[str, str]:
    """The configs to store (strings, None values dropped), checked by LogConfig."""
    stored: dict[str, str] = {}
    for key, value in (configs or {}).items():
        if not isinstance(key, str):
            raise InvalidConfigError(f"config name {key!r} is not a string")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InvalidConfigError(f"{key}: value {value!r} is not a string or integer")
        stored[key] = str(value).strip()
    try:
        LogConfig.from_kafka(stored)
    except ConfigError as e:
        raise InvalidConfigError(str(e)) from None
    return stored


def _check_isr(state: PartitionState, isr: list[int]) -> None:
    where = f"{state.topic}-{state.partition}"
    if not isr:
        raise IneligibleReplicaError(f"{where}: an ISR cannot be empty")
    if len(set(isr)) != len(isr):
        raise IneligibleReplicaError(f"{where}: ISR {isr} lists a broker twice")
    if state.leader not in isr:
        raise IneligibleReplicaError(f"{where}: ISR {isr} lacks the leader {state.leader}")
    for broker in isr:
        if broker not in state.replicas:
            raise IneligibleReplicaError(f"{where}: broker {broker} is not a replica")
        if broker in state.observers:
            raise IneligibleReplicaError(f"{where}: broker {broker} is an observer")


def _check_loaded_state(state: PartitionState) -> None:
    where = f"{state.topic}-{state.partition}"
    if state.partition < 0 or state.leader_epoch < 0 or state.partition_epoch < 0:
        raise ValueError(f"{where}: negative partition, leader epoch or partition epoch")
    if not state.replicas or len(set(state.replicas)) != len(state.replicas):
        raise ValueError(f"{where}: replicas {state.replicas} empty or repeated")
    if not set(state.observers) <= set(state.replicas) \
            or not set(state.hidden) <= set(state.replicas):
        raise ValueError(f"{where}: observers or hidden replicas outside the replicas")
    if state.leader == -1:
        if not set(state.isr) <= set(state.replicas):
            raise ValueError(f"{where}: ISR {state.isr} outside the replicas")
        return
    try:
        _check_isr(state, state.isr)
    except IneligibleReplicaError as e:
        raise ValueError(str(e)) from None


def _collision_key(name: str) -> str:
    return name.replace(".", "_")


def _stable_hash(name: str) -> int:
    """A placement rotation that depends only on the name (not on Python's hash seed)."""
    return xxhash.xxh32_intdigest(name.encode("utf-8"))


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return [_int(v) for v in value]
