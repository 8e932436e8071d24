"""Finding a consumer group's coordinator and talking to it.

``find_coordinator`` asks any broker (FindCoordinator, key_type 0 = group) which broker
coordinates a group, retrying while the answer is COORDINATOR_NOT_AVAILABLE (or the like).

``CoordinatorLink`` holds the connection to one group's coordinator. It is a connection of its
own, apart from the client's per-broker connections (as the Java client keeps one under node
id MAX_INT - id): a broker answers the requests of a connection in order, so a Heartbeat
must not wait behind a long-poll Fetch on the same socket. The coordinator is looked up on
first use and again after ``mark_unknown`` (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, a lost
connection, a timeout); concurrent callers share one lookup and one connect. Every request
failing with a lost connection marks the coordinator unknown before the error is raised.

``offset_commit`` and ``offset_fetch`` are single OffsetCommit / OffsetFetch round trips that
return the per-partition error codes; what to retry is the caller's business (it depends on
whether the caller is a group member or an admin).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

from pylog.client.connection import BrokerConnection
from pylog.client.errors import (
    ClientClosedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    UnsupportedVersionError,
    remote_error,
)
from pylog.client.metadata import BrokerMetadata, Cluster
from pylog.protocol import ApiKey

log = logging.getLogger("pylog.client.coordinator")

GROUP_KEY = 0  # FindCoordinator key_type for a consumer group


class OffsetAndMetadata(NamedTuple):
    offset: int
    metadata: str = ""


_Fetched = tuple[OffsetAndMetadata | None, int]  # (committed or None, error code)


async def find_coordinator(cluster: Cluster, group_id: str, *, timeout_ms: int,
                           retry_backoff_ms: int = 100) -> BrokerMetadata:
    """The broker coordinating ``group_id``; retriable errors are retried until
    ``timeout_ms`` passes, others raised."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            connection = await cluster.any_connection()
            response = await connection.request(ApiKey.FIND_COORDINATOR,
                                                 {"key": group_id, "key_type": GROUP_KEY})
            code = int(response.error_code)
            if code == 0:
                return BrokerMetadata(int(response.node_id), response.host, int(response.port))
            raise remote_error(code, getattr(response, "error_message", None)
                               or f"FindCoordinator for group {group_id!r}")
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() + retry_backoff_ms / 1000 >= deadline:
                raise
            log.debug("coordinator of %r not found yet: %s", group_id, exc)
        await asyncio.sleep(retry_backoff_ms / 1000)


class CoordinatorLink:
    """The connection to ``group_id``'s coordinator (see the module docstring)."""

    def __init__(self, cluster: Cluster, group_id: str, *, request_timeout_ms: int = 30_000,
                 connect_timeout_ms: int = 10_000, retry_backoff_ms: int = 100):
        self.cluster = cluster
        self.group_id = group_id
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        # The coordinator as last found; None while unknown (to be looked up).
        self.coordinator: BrokerMetadata | None = None
        self._connection: BrokerConnection | None = None
        # The lookup + connect in progress, shared by concurrent callers.
        self._connecting: asyncio.Future | None = None
        self._closed = False

    async def connection(self) -> BrokerConnection:
        """The open connection to the coordinator (finding and connecting if needed)."""
        if self._closed:
            raise ClientClosedError("consumer is closed")
        if self._connection is not None and not self._connection.closed:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, future: asyncio.Future) -> None:
        if self._connecting is future:
            self._connecting = None
        if not future.cancelled():
            future.exception()  # retrieved: every caller got it through its own await

    async def _connect(self) -> BrokerConnection:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        coordinator = await find_coordinator(self.cluster, self.group_id,
                                             timeout_ms=self.request_timeout_ms,
                                             retry_backoff_ms=self.retry_backoff_ms)
        connection = BrokerConnection(coordinator.host, coordinator.port,
                                      node_id=coordinator.node_id,
                                      client_id=self.cluster.client_id,
                                      request_timeout_ms=self.request_timeout_ms)
        await connection.connect(timeout_ms=self.connect_timeout_ms)
        if self._closed:
            connection.close()
            raise ClientClosedError("consumer is closed")
        self.coordinator = coordinator
        self._connection = connection
        log.debug("group %r: coordinator is broker %d at %s:%d", self.group_id,
                  coordinator.node_id, coordinator.host, coordinator.port)
        return connection

    def mark_unknown(self, reason: str) -> None:
        """Forget the coordinator (the next request looks it up again)."""
        if self.coordinator is not None:
            log.info("group %r: coordinator %s unknown now: %s", self.group_id,
                     self.coordinator.node_id, reason)
        self.coordinator = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @property
    def known(self) -> bool:
        return self._connection is not None and not self._connection.closed

    async def request(self, api_key: int, values: dict[str, Any], *,
                      timeout_ms: int | None = None) -> Any:
        """One request to the coordinator. A lost connection or a timeout marks the
        coordinator unknown (and is raised: both are retriable)."""
        connection = await self.connection()
        try:
            return await connection.request(api_key, values, timeout_ms=timeout_ms)
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            if self._connection is connection:
                self.mark_unknown(str(exc))
            raise

    def version(self, api_key: int) -> int:
        """The version negotiated for ``api_key`` (-1 while not connected)."""
        if self._connection is None:
            return -1
        return self._connection.api_versions.get(api_key, -1)

    # ---- offsets ----------------------------------------------------------------------------

    async def offset_commit(self, offsets: dict[tuple[str, int], OffsetAndMetadata], *,
                            generation: int, member_id: str,
                            group_instance_id: str | None = None) -> dict[tuple[str, int], int]:
        """OffsetCommit once; the error code per partition (a partition missing from the
        answer counts as UNKNOWN_TOPIC_OR_PARTITION)."""
        topics: dict[str, list[dict]] = {}
        for (topic, partition), committed in offsets.items():
            topics.setdefault(topic, []).append({
                "partition_index": partition, "committed_offset": committed.offset,
                "committed_leader_epoch": -1, "committed_metadata": committed.metadata})
        response = await self.request(ApiKey.OFFSET_COMMIT, {
            "group_id": self.group_id, "generation_id_or_member_epoch": generation,
            "member_id": member_id, "group_instance_id": group_instance_id,
            "retention_time": -1,
            "topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]})
        codes = {(t.name, int(p.partition_index)): int(p.error_code)
                 for t in response.topics for p in t.partitions}
        return {tp: codes.get(tp, 3) for tp in offsets}

    async def offset_fetch(self, partitions: list[tuple[str, int]] | None
                           ) -> tuple[int, dict[tuple[str, int], _Fetched]]:
        """OffsetFetch once: (group-level error code, {tp: (committed or None, error code)}).
        ``partitions`` None asks for every partition the group committed (OffsetFetch v2+)."""
        if partitions is None:
            await self.connection()
            if self.version(ApiKey.OFFSET_FETCH) < 2:
                raise UnsupportedVersionError("the coordinator's OffsetFetch is older than "
                                              "v2: it cannot list a group's offsets")
            topics = None
        else:
            by_topic: dict[str, list[int]] = {}
            for topic, partition in partitions:
                by_topic.setdefault(topic, []).append(partition)
            topics = [{"name": t, "partition_indexes": ps} for t, ps in by_topic.items()]
        response = await self.request(ApiKey.OFFSET_FETCH,
                                      {"group_id": self.group_id, "topics": topics,
                                       "require_stable": False})
        result: dict[tuple[str, int], tuple[OffsetAndMetadata | None, int]] = {}
        for t in response.topics:
            for p in t.partitions:
                offset = int(p.committed_offset)
                committed = (OffsetAndMetadata(offset, p.metadata or "") if offset >= 0
                             else None)
                result[(t.name, int(p.partition_index))] = (committed, int(p.error_code))
        return int(getattr(response, "error_code", 0)), result

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()
            await connection.wait_closed()
