"""The client's view of the cluster: brokers, topics, partitions, leaders; one connection per
broker.

Theory of operation. ``Cluster`` holds an immutable ``ClusterSnapshot`` replaced wholesale by
each Metadata answer, so a reader never sees half an update. It asks for the topics the
client uses (``track``) or, on request, all topics. A refresh is made when asked for
(``refresh``): the producer and consumer ask after a retriable error that means the
metadata is stale (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
a lost connection, ...), and when a topic or leader they need is unknown. Concurrent refreshes
share one request. Metadata goes to any broker already connected, else to a known broker, else
to the bootstrap servers in turn.

Connections are opened lazily, one per node id (concurrent callers share one connect), and a
closed connection is replaced on next use. The bootstrap connection (node id -1) is closed as
soon as metadata names the brokers: clients then talk to the addresses brokers advertise.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pylog.client.connection import BrokerConnection
from pylog.client.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    remote_error,
)
from pylog.protocol import ApiKey, ErrorCode


@dataclass(frozen=True, slots=True)
class BrokerMetadata:
    node_id: int
    host: str
    port: int
    rack: str | None = None


@dataclass(frozen=True, slots=True)
class PartitionMetadata:
    topic: str
    partition: int
    leader: int                      # -1 while no leader is available
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    offline_replicas: tuple[int, ...] = ()
    error_code: int = 0


@dataclass(frozen=True, slots=True)
class TopicMetadata:
    name: str
    error_code: int
    partitions: dict[int, PartitionMetadata]
    is_internal: bool = False

    @property
    def ready(self) -> bool:
        """Known, with partitions, each with a leader."""
        return (self.error_code == 0 and bool(self.partitions)
                and all(p.leader >= 0 for p in self.partitions.values()))


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    cluster_id: str | None = None
    controller_id: int = -1
    brokers: dict[int, BrokerMetadata] = field(default_factory=dict)
    topics: dict[str, TopicMetadata] = field(default_factory=dict)


def parse_bootstrap(bootstrap: str | Iterable[str]) -> list[tuple[str, int]]:
    """``"h1:9092,h2:9093"`` or ``["h1:9092", ...]`` → [(host, port), ...]; ValueError if bad."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    result = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap server {item!r} is not HOST:PORT")
        result.append((host.strip("[]"), int(port)))
    if not result:
        raise ValueError("no bootstrap server given")
    return result


class Cluster:
    """Metadata cache and connection pool shared by a producer, consumer or admin."""

    def __init__(self, bootstrap: str | Iterable[str], *, client_id: str = "pylog",
                 request_timeout_ms: int = 30_000, connect_timeout_ms: int = 10_000,
                 retry_backoff_ms: int = 100, allow_auto_topic_creation: bool = False):
        self.bootstrap = parse_bootstrap(bootstrap)
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.allow_auto_topic_creation = allow_auto_topic_creation
        # The latest metadata; replaced, never mutated.
        self.snapshot = ClusterSnapshot()
        # Topics asked for in each refresh (the ones this client uses).
        self._tracked: set[str] = set()
        # Open (or opening) connections by node id; a closed one is replaced on next use.
        self._connections: dict[int, BrokerConnection] = {}
        self._connecting: dict[int, asyncio.Future] = {}
        # The refresh in progress, shared by every caller that asks meanwhile.
        self._refresh: asyncio.Future | None = None
        # time.monotonic() of the last answered refresh (0 = never).
        self.last_refresh = 0.0
        self._closed = False

    # ---- metadata ---------------------------------------------------------------------------

    def track(self, topics: Iterable[str]) -> None:
        """Include ``topics`` in every later refresh."""
        self._tracked.update(topics)

    def leader(self, topic: str, partition: int) -> int:
        """Leader node id of a partition, -1 if unknown or leaderless."""
        t = self.snapshot.topics.get(topic)
        p = t.partitions.get(partition) if t is not None else None
        return p.leader if p is not None else -1

    def partitions(self, topic: str) -> list[int]:
        """Partition ids of ``topic`` (sorted), [] while unknown."""
        t = self.snapshot.topics.get(topic)
        return sorted(t.partitions) if t is not None and t.error_code == 0 else []

    async def refresh(self, topics: Iterable[str] = (), *, all_topics: bool = False
                      ) -> ClusterSnapshot:
        """Fetch metadata now (joining a refresh in progress unless new topics are asked)."""
        topics = set(topics)
        new_topics = topics - self._tracked
        self.track(topics)
        if self._refresh is not None and not new_topics and not all_topics:
            return await asyncio.shield(self._refresh)
        future = asyncio.ensure_future(self._do_refresh(all_topics))
        if not all_topics:
            self._refresh = future
            future.add_done_callback(self._refresh_done)
        return await asyncio.shield(future)

    def _refresh_done(self, future: asyncio.Future) -> None:
        if self._refresh is future:
            self._refresh = None
        if not future.cancelled():
            future.exception()  # retrieved: callers got it through their own await

    async def _do_refresh(self, all_topics: bool) -> ClusterSnapshot:
        connection = await self.any_connection()
        version = connection.api_version(ApiKey.METADATA)
        if all_topics:
            topics = [] if version == 0 else None
        else:
            topics = [{"name": t} for t in sorted(self._tracked)]
            if not topics and version == 0:
                topics = [{"name": "__pylog_no_topic__"}]  # v0: [] would mean every topic
        response = await connection.request(ApiKey.METADATA, {
            "topics": topics,
            "allow_auto_topic_creation": self.allow_auto_topic_creation,
            "include_cluster_authorized_operations": False,
            "include_topic_authorized_operations": False,
        })
        brokers = {int(b.node_id): BrokerMetadata(int(b.node_id), b.host, int(b.port),
                                                  getattr(b, "rack", None))
                   for b in response.brokers}
        fresh: dict[str, TopicMetadata] = {}
        for t in response.topics:
            partitions = {}
            for p in t.partitions:
                partitions[int(p.partition_index)] = PartitionMetadata(
                    topic=t.name, partition=int(p.partition_index), leader=int(p.leader_id),
                    leader_epoch=int(getattr(p, "leader_epoch", -1)),
                    replicas=tuple(int(r) for r in p.replica_nodes),
                    isr=tuple(int(r) for r in p.isr_nodes),
                    offline_replicas=tuple(int(r) for r in getattr(p, "offline_replicas", ())),
                    error_code=int(p.error_code))
            fresh[t.name] = TopicMetadata(t.name, int(t.error_code), partitions,
                                          bool(getattr(t, "is_internal", False)))
        if all_topics:
            topics_now = fresh
        else:
            topics_now = {name: tm for name, tm in self.snapshot.topics.items()
                          if name not in fresh}
            topics_now.update(fresh)
        self.snapshot = ClusterSnapshot(
            cluster_id=getattr(response, "cluster_id", None),
            controller_id=int(getattr(response, "controller_id", -1)),
            brokers=brokers, topics=topics_now)
        self.last_refresh = time.monotonic()
        self._forget_departed_brokers()
        return self.snapshot

    def _forget_departed_brokers(self) -> None:
        bootstrap = self._connections.pop(-1, None)
        if bootstrap is not None and self.snapshot.brokers:
            bootstrap.close()
        elif bootstrap is not None:
            self._connections[-1] = bootstrap
        for node_id in list(self._connections):
            if node_id >= 0 and node_id not in self.snapshot.brokers:
                self._connections.pop(node_id).close()

    async def topic(self, name: str, *, timeout_ms: int | None = None,
                    must_exist: bool = True) -> TopicMetadata:
        """Metadata of ``name`` once every partition has a leader, refreshing (with backoff)
        while the broker says LEADER_NOT_AVAILABLE or the like. A non-retriable topic error
        is raised; UNKNOWN_TOPIC_OR_PARTITION too once ``timeout_ms`` passes, or at once
        when ``must_exist`` is False (then the unknown topic's metadata is returned)."""
        deadline = time.monotonic() + (self.request_timeout_ms if timeout_ms is None
                                       else timeout_ms) / 1000
        self.track([name])
        t = self.snapshot.topics.get(name)
        if t is not None and t.ready:
            return t
        while True:
            snapshot = await self.refresh([name])
            t = snapshot.topics.get(name)
            if t is not None and t.ready:
                return t
            code = t.error_code if t is not None else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            if code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION and not must_exist:
                return t if t is not None else TopicMetadata(name, int(code), {})
            error = remote_error(code, f"topic {name!r}") if code else None
            if error is not None and not error.retriable:
                raise error
            if time.monotonic() >= deadline:
                if error is not None:
                    raise error
                raise KafkaTimeoutError(f"topic {name!r} has partitions without a leader")
            await asyncio.sleep(self.retry_backoff_ms / 1000)

    # ---- connections ------------------------------------------------------------------------

    async def connection(self, node_id: int) -> BrokerConnection:
        """The connection to broker ``node_id`` (opened now if needed)."""
        existing = self._connections.get(node_id)
        if existing is not None and not existing.closed:
            return existing
        pending = self._connecting.get(node_id)
        if pending is None:
            broker = self.snapshot.brokers.get(node_id)
            if broker is None:
                raise KafkaConnectionError(f"broker {node_id} is not in the metadata")
            pending = asyncio.ensure_future(self._open(node_id, broker.host, broker.port))
            self._connecting[node_id] = pending
            pending.add_done_callback(lambda f, n=node_id: self._connecting.pop(n, None))
        return await asyncio.shield(pending)

    async def _open(self, node_id: int, host: str, port: int) -> BrokerConnection:
        if self._closed:
            raise KafkaConnectionError("client closed", host, port)
        connection = BrokerConnection(host, port, node_id=node_id, client_id=self.client_id,
                                      request_timeout_ms=self.request_timeout_ms)
        await connection.connect(timeout_ms=self.connect_timeout_ms)
        if self._closed:
            connection.close()
            raise KafkaConnectionError("client closed", host, port)
        self._connections[node_id] = connection
        return connection

    async def any_connection(self) -> BrokerConnection:
        """Some live connection: an open one, else a known broker, else a bootstrap server."""
        for node_id, conn in self._connections.items():
            if not conn.closed and node_id >= 0:
                return conn
        errors: list[str] = []
        brokers = list(self.snapshot.brokers.values())
        random.shuffle(brokers)
        for broker in brokers:
            try:
                return await self.connection(broker.node_id)
            except KafkaError as exc:
                errors.append(str(exc))
        bootstrap = self._connections.get(-1)
        if bootstrap is not None and not bootstrap.closed:
            return bootstrap
        for host, port in self.bootstrap:
            try:
                return await self._open(-1, host, port)
            except KafkaConnectionError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise KafkaConnectionError(errors[0], *self.bootstrap[0])
        raise KafkaConnectionError("no broker reachable: " + "; ".join(errors))

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()
