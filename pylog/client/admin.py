"""Topic and consumer-group administration over the Kafka protocol: ``AsyncAdmin`` and the
blocking ``Admin``.

CreateTopics and DeleteTopics go to the controller that Metadata names (any broker when it
names none); listing and describing read Metadata. Errors come back per topic: with
``raise_errors`` (the default) the first one is raised, otherwise a dict maps each topic to
its error or None.

Groups: ListGroups goes to every broker (each coordinates some groups); DescribeGroups,
DeleteGroups and OffsetFetch go to the group's coordinator (FindCoordinator), looked up again
and retried while it answers NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE or
COORDINATOR_LOAD_IN_PROGRESS. Members' assignments are decoded when the group uses the
"consumer" protocol.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pylog.client.consumer_protocol import decode_assignment
from pylog.client.coordinator import CoordinatorLink, OffsetAndMetadata
from pylog.client.errors import (
    COORDINATOR_STALE_CODES,
    KafkaError,
    NotControllerError,
    remote_error,
)
from pylog.client.loop_thread import LoopThread
from pylog.client.metadata import Cluster
from pylog.protocol import ApiKey, ErrorCode


@dataclass(frozen=True, slots=True)
class NewTopic:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PartitionDescription:
    partition: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    offline_replicas: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TopicDescription:
    name: str
    partitions: list[PartitionDescription]
    is_internal: bool = False


@dataclass(frozen=True, slots=True)
class GroupListing:
    group_id: str
    protocol_type: str


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    # (topic, partition) pairs of a "consumer" group member; None when the group uses
    # another protocol or the assignment does not decode.
    assignment: list[tuple[str, int]] | None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str              # Stable, PreparingRebalance, CompletingRebalance, Empty, Dead
    protocol_type: str
    protocol: str           # the assignor chosen ("range", ...), "" when not stable
    members: list[MemberDescription]


class AsyncAdmin:
    """``await start()`` (or ``async with``), then topic and group operations, then
    ``close()``."""

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", *,
                 request_timeout_ms: int = 30_000, connect_timeout_ms: int = 10_000,
                 retry_backoff_ms: int = 100, client_id: str = "pylog-admin"):
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.cluster = Cluster(bootstrap, client_id=client_id,
                               request_timeout_ms=request_timeout_ms,
                               connect_timeout_ms=connect_timeout_ms)

    async def start(self) -> None:
        await self.cluster.refresh()

    async def __aenter__(self) -> AsyncAdmin:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self.cluster.close()

    async def _controller_request(self, api_key: int, values: dict):
        """Send to the controller, once more after a refresh if it answers NOT_CONTROLLER."""
        for attempt in range(2):
            snapshot = self.cluster.snapshot if attempt == 0 else await self.cluster.refresh()
            node = snapshot.controller_id
            connection = (await self.cluster.connection(node) if node in snapshot.brokers
                          else await self.cluster.any_connection())
            response = await connection.request(api_key, values)
            entries = getattr(response, "topics", None) or getattr(response, "responses", ())
            if attempt == 0 and any(int(e.error_code) == ErrorCode.NOT_CONTROLLER
                                    for e in entries):
                continue
            return response
        raise NotControllerError(ErrorCode.NOT_CONTROLLER, "no controller found")

    async def create_topics(self, topics: str | NewTopic | Iterable[str | NewTopic], *,
                            partitions: int = 1, replication_factor: int = 1,
                            configs: dict[str, str] | None = None, validate_only: bool = False,
                            raise_errors: bool = True) -> dict[str, KafkaError | None]:
        """Create topics (names take ``partitions``/``replication_factor``/``configs``;
        ``NewTopic``s carry their own)."""
        wanted = [t if isinstance(t, NewTopic) else
                  NewTopic(t, partitions, replication_factor, configs)
                  for t in _as_list(topics)]
        response = await self._controller_request(ApiKey.CREATE_TOPICS, {
            "topics": [{"name": t.name, "num_partitions": t.partitions,
                        "replication_factor": t.replication_factor, "assignments": [],
                        "configs": [{"name": k, "value": v}
                                    for k, v in (t.configs or {}).items()]}
                       for t in wanted],
            "timeout": self.request_timeout_ms, "validate_only": validate_only})
        return self._results(((r.name, int(r.error_code), getattr(r, "error_message", None))
                              for r in response.topics), [t.name for t in wanted],
                             raise_errors)

    async def delete_topics(self, topics: str | Iterable[str], *, raise_errors: bool = True
                            ) -> dict[str, KafkaError | None]:
        names = _as_list(topics)
        response = await self._controller_request(ApiKey.DELETE_TOPICS, {
            "topic_names": names, "timeout": self.request_timeout_ms})
        return self._results(((r.name, int(r.error_code), None) for r in response.responses),
                             names, raise_errors)

    async def list_topics(self, *, include_internal: bool = False) -> list[str]:
        snapshot = await self.cluster.refresh(all_topics=True)
        return sorted(name for name, t in snapshot.topics.items()
                      if t.error_code == 0 and (include_internal or not t.is_internal))

    async def describe_topics(self, topics: str | Iterable[str] | None = None
                              ) -> list[TopicDescription]:
        """Partitions with leader, replicas and ISR of ``topics`` (all when None). An unknown
        topic raises UnknownTopicOrPartitionError."""
        if topics is None:
            snapshot = await self.cluster.refresh(all_topics=True)
            names = sorted(n for n, t in snapshot.topics.items() if t.error_code == 0)
        else:
            names = _as_list(topics)
            snapshot = await self.cluster.refresh(names)
        result = []
        for name in names:
            t = snapshot.topics.get(name)
            code = t.error_code if t is not None else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            if code:
                raise remote_error(code, f"topic {name!r}")
            result.append(TopicDescription(name, [
                PartitionDescription(p.partition, p.leader, p.leader_epoch, p.replicas, p.isr,
                                     p.offline_replicas)
                for _, p in sorted(t.partitions.items())], t.is_internal))
        return result

    async def describe_cluster(self) -> dict:
        snapshot = await self.cluster.refresh()
        return {"cluster_id": snapshot.cluster_id, "controller_id": snapshot.controller_id,
                "brokers": sorted(snapshot.brokers.values(), key=lambda b: b.node_id)}

    # ---- consumer groups ----------------------------------------------------------------------

    async def list_groups(self) -> list[GroupListing]:
        """Every group of every broker (sorted by id)."""
        snapshot = await self.cluster.refresh()
        groups: dict[str, GroupListing] = {}
        for node_id in sorted(snapshot.brokers):
            connection = await self.cluster.connection(node_id)
            response = await connection.request(ApiKey.LIST_GROUPS, {"states_filter": []})
            if int(response.error_code):
                raise remote_error(int(response.error_code), f"ListGroups at broker {node_id}")
            for g in response.groups:
                groups[g.group_id] = GroupListing(g.group_id, g.protocol_type)
        return [groups[g] for g in sorted(groups)]

    async def _group_request(self, group_id: str, api_key: int, values: dict, error_of):
        """A request to ``group_id``'s coordinator, retried while the coordinator moves or
        loads (``error_of(response)`` gives the code that says so)."""
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        link = CoordinatorLink(self.cluster, group_id, request_timeout_ms=self.request_timeout_ms,
                               connect_timeout_ms=self.connect_timeout_ms,
                               retry_backoff_ms=self.retry_backoff_ms)
        try:
            while True:
                try:
                    response = await link.request(api_key, values)
                    code = error_of(response)
                    if code not in COORDINATOR_STALE_CODES and \
                            code != ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
                        return response
                    link.mark_unknown(f"answered {ErrorCode(code).name}")
                    error: KafkaError = remote_error(code, f"group {group_id!r}")
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    error = exc
                await self._back_off_or_raise(error, deadline)
        finally:
            await link.close()

    async def _back_off_or_raise(self, error: KafkaError, deadline: float) -> None:
        """Wait retry_backoff_ms before the next try of a coordinator request, or raise
        ``error`` when that wait would pass ``deadline`` (a time.monotonic() value)."""
        backoff = self.retry_backoff_ms / 1000
        if time.monotonic() + backoff >= deadline:
            raise error
        await asyncio.sleep(backoff)

    async def describe_groups(self, group_ids: str | Iterable[str]) -> list[GroupDescription]:
        """State, protocol and members of each group (a group the coordinator does not know
        is described as state "Dead" with no members, as Kafka does)."""
        result = []
        for group_id in _as_list(group_ids):
            response = await self._group_request(
                group_id, ApiKey.DESCRIBE_GROUPS,
                {"groups": [group_id], "include_authorized_operations": False},
                lambda r: int(r.groups[0].error_code) if r.groups else 0)
            g = next((g for g in response.groups if g.group_id == group_id), None)
            if g is None:
                raise KafkaError(f"DescribeGroups answered nothing about group {group_id!r}")
            if int(g.error_code):
                raise remote_error(int(g.error_code), f"group {group_id!r}")
            members = []
            for m in g.members:
                assignment = None
                if g.protocol_type == "consumer":
                    try:
                        assignment = sorted(decode_assignment(m.member_assignment).partitions)
                    except ValueError:
                        assignment = None
                members.append(MemberDescription(m.member_id,
                                                 getattr(m, "group_instance_id", None),
                                                 m.client_id, m.client_host, assignment))
            result.append(GroupDescription(group_id, g.group_state, g.protocol_type,
                                           g.protocol_data, members))
        return result

    async def delete_groups(self, group_ids: str | Iterable[str], *, raise_errors: bool = True
                            ) -> dict[str, KafkaError | None]:
        """Delete groups (and their committed offsets); only groups without members can be
        deleted (NON_EMPTY_GROUP otherwise)."""
        names = _as_list(group_ids)
        answers = []
        for group_id in names:
            response = await self._group_request(
                group_id, ApiKey.DELETE_GROUPS, {"groups_names": [group_id]},
                lambda r: int(r.results[0].error_code) if r.results else 0)
            answers += [(r.group_id, int(r.error_code), f"group {r.group_id!r}")
                        for r in response.results]
        return self._results(answers, names, raise_errors)

    async def list_group_offsets(self, group_id: str,
                                 partitions: Iterable[tuple[str, int]] | None = None
                                 ) -> dict[tuple[str, int], OffsetAndMetadata]:
        """The offsets ``group_id`` committed (of ``partitions``, or all of them); partitions
        without a committed offset are left out."""
        from pylog.client.consumer import TopicPartition

        wanted = None if partitions is None else [tuple(tp) for tp in partitions]
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        link = CoordinatorLink(self.cluster, group_id, request_timeout_ms=self.request_timeout_ms,
                               connect_timeout_ms=self.connect_timeout_ms,
                               retry_backoff_ms=self.retry_backoff_ms)
        try:
            while True:
                try:
                    code, found = await link.offset_fetch(wanted)
                    codes = [code] + [c for _, c in found.values()]
                    bad = next((c for c in codes if c), 0)
                    if not bad:
                        return {TopicPartition(*tp): committed
                                for tp, (committed, _) in sorted(found.items())
                                if committed is not None}
                    if bad in COORDINATOR_STALE_CODES:
                        link.mark_unknown(f"OffsetFetch answered {ErrorCode(bad).name}")
                    error = remote_error(bad, f"offsets of group {group_id!r}")
                    if not error.retriable:
                        raise error
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    error = exc
                await self._back_off_or_raise(error, deadline)
        finally:
            await link.close()

    @staticmethod
    def _results(answers, names: list[str], raise_errors: bool) -> dict[str, KafkaError | None]:
        results: dict[str, KafkaError | None] = {name: None for name in names}
        for name, code, message in answers:
            results[name] = remote_error(code, message or f"topic {name!r}") if code else None
        if raise_errors:
            for error in results.values():
                if error is not None:
                    raise error
        return results


def _as_list(topics) -> list:
    if isinstance(topics, (str, NewTopic)):
        return [topics]
    return list(topics)


class Admin:
    """Blocking admin client (its own event loop thread); same methods as ``AsyncAdmin``."""

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", **config):
        self._thread = LoopThread("pylog-admin")
        try:
            self._admin: AsyncAdmin = self._thread.run(self._create(bootstrap, config))
        except BaseException:
            self._thread.stop()
            raise

    @staticmethod
    async def _create(bootstrap, config) -> AsyncAdmin:
        admin = AsyncAdmin(bootstrap, **config)
        await admin.start()
        return admin

    def create_topics(self, topics, **kw) -> dict[str, KafkaError | None]:
        return self._thread.run(self._admin.create_topics(topics, **kw))

    def delete_topics(self, topics, **kw) -> dict[str, KafkaError | None]:
        return self._thread.run(self._admin.delete_topics(topics, **kw))

    def list_topics(self, **kw) -> list[str]:
        return self._thread.run(self._admin.list_topics(**kw))

    def describe_topics(self, topics=None) -> list[TopicDescription]:
        return self._thread.run(self._admin.describe_topics(topics))

    def describe_cluster(self) -> dict:
        return self._thread.run(self._admin.describe_cluster())

    def list_groups(self) -> list[GroupListing]:
        return self._thread.run(self._admin.list_groups())

    def describe_groups(self, group_ids) -> list[GroupDescription]:
        return self._thread.run(self._admin.describe_groups(group_ids))

    def delete_groups(self, group_ids, **kw) -> dict[str, KafkaError | None]:
        return self._thread.run(self._admin.delete_groups(group_ids, **kw))

    def list_group_offsets(self, group_id: str, partitions=None
                           ) -> dict[tuple[str, int], OffsetAndMetadata]:
        return self._thread.run(self._admin.list_group_offsets(group_id, partitions))

    def close(self) -> None:
        try:
            self._thread.run(self._admin.close())
        finally:
            self._thread.stop()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
