"""Topic administration over the Kafka protocol: ``AsyncAdmin`` and the blocking ``Admin``.

CreateTopics and DeleteTopics go to the controller that Metadata names (any broker when it
names none); listing and describing read Metadata. Errors come back per topic: with
``raise_errors`` (the default) the first one is raised, otherwise a dict maps each topic to
its error or None.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pylog.client.errors import KafkaError, NotControllerError, remote_error
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


class AsyncAdmin:
    """``await start()`` (or ``async with``), then the topic operations, then ``close()``."""

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", *,
                 request_timeout_ms: int = 30_000, connect_timeout_ms: int = 10_000,
                 client_id: str = "pylog-admin"):
        self.request_timeout_ms = request_timeout_ms
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

    def close(self) -> None:
        try:
            self._thread.run(self._admin.close())
        finally:
            self._thread.stop()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
