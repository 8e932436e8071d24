"""Topic administration over the Kafka protocol (CreateTopics, DeleteTopics, Metadata) with
pylog's AsyncAdmin/Admin against a real broker process."""
import asyncio
import itertools
import time

import pytest

from client_support import broker  # noqa: F401 - fixture
from pylog.client import Admin, AsyncAdmin, KafkaConnectionError, NewTopic
from pylog.client.errors import (
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from pylog.protocol import ErrorCode

_names = itertools.count()


def unique(prefix="adm"):
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**9}"


def run(coro, timeout=30):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


def test_create_describe_list_delete(broker):
    name = unique()

    async def scenario():
        async with AsyncAdmin(broker.bootstrap) as admin:
            assert await admin.create_topics(name, partitions=4,
                                             configs={"retention.ms": "60000"}) == {name: None}
            assert name in await admin.list_topics()
            [description] = await admin.describe_topics(name)
            assert description.name == name and not description.is_internal
            assert [p.partition for p in description.partitions] == [0, 1, 2, 3]
            cluster = await admin.describe_cluster()
            node_ids = [b.node_id for b in cluster["brokers"]]
            for p in description.partitions:
                assert p.leader in node_ids
                assert p.replicas == (p.leader,) and p.isr == (p.leader,)
                assert p.leader_epoch >= 0
            assert await admin.delete_topics(name) == {name: None}
            assert name not in await admin.list_topics()
            with pytest.raises(UnknownTopicOrPartitionError):
                await admin.describe_topics(name)
    run(scenario())


def test_several_topics_and_per_topic_errors(broker):
    a, b = unique(), unique()

    async def scenario():
        async with AsyncAdmin(broker.bootstrap) as admin:
            await admin.create_topics([NewTopic(a, 2), NewTopic(b, 3)])
            descriptions = {d.name: d for d in await admin.describe_topics([a, b])}
            assert len(descriptions[a].partitions) == 2
            assert len(descriptions[b].partitions) == 3
            results = await admin.create_topics([a, unique()], raise_errors=False)
            assert isinstance(results[a], TopicAlreadyExistsError)
            assert results[a].error_code == ErrorCode.TOPIC_ALREADY_EXISTS
            assert [v for k, v in results.items() if k != a] == [None]
            await admin.delete_topics([a, b])
            assert not {a, b} & set(await admin.list_topics())
    run(scenario())


@pytest.mark.parametrize("kwargs,error", [
    (dict(name="bad/name"), InvalidTopicError),
    (dict(name=".."), InvalidTopicError),
    (dict(partitions=0), InvalidPartitionsError),
    (dict(replication_factor=3), InvalidReplicationFactorError),
])
def test_create_errors(broker, kwargs, error):
    if broker.kind == "tansu":
        pytest.skip("Tansu does not validate topic creation like Kafka")
    name = kwargs.pop("name", unique())

    async def scenario():
        async with AsyncAdmin(broker.bootstrap) as admin:
            with pytest.raises(error) as caught:
                await admin.create_topics(name, **kwargs)
            assert not caught.value.retriable
            assert name not in await admin.list_topics()
    run(scenario())


def test_create_existing_and_delete_unknown(broker):
    name = unique()

    async def scenario():
        async with AsyncAdmin(broker.bootstrap) as admin:
            await admin.create_topics(name)
            with pytest.raises(TopicAlreadyExistsError):
                await admin.create_topics(name)
            await admin.delete_topics(name)
            with pytest.raises(UnknownTopicOrPartitionError):
                await admin.delete_topics(name)
    run(scenario())


def test_validate_only_creates_nothing(broker):
    name = unique()

    async def scenario():
        async with AsyncAdmin(broker.bootstrap) as admin:
            assert await admin.create_topics(name, partitions=2, validate_only=True) == \
                {name: None}
            assert name not in await admin.list_topics()
    run(scenario())


def test_blocking_admin(broker):
    name = unique()
    with Admin(broker.bootstrap) as admin:
        admin.create_topics(name, partitions=2)
        assert name in admin.list_topics()
        assert len(admin.describe_topics([name])[0].partitions) == 2
        admin.delete_topics(name)
        assert name not in admin.list_topics()


def test_unreachable():
    with pytest.raises(KafkaConnectionError, match="cannot reach 127.0.0.1:1"):
        Admin("127.0.0.1:1", connect_timeout_ms=2000)
