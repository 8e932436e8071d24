"""The HTTP control plane over a real LogManager, Controller and ReplicaManager in tmp_path.

Each test runs one coroutine under ``asyncio.run`` with aiohttp's TestServer (127.0.0.1, a free
port) and TestClient; every coroutine is bounded by ``wait_for``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from pylog.broker.config import BrokerConfig
from pylog.broker.http import MAX_BODY_BYTES, create_control_app
from pylog.broker.metrics import CONTENT_TYPE, BrokerMetrics
from pylog.broker.replica_manager import ReplicaManager
from pylog.controller import BrokerInfo, Controller, MetadataStore
from pylog.protocol import ApiKey, ErrorCode
from pylog.records import build_batch
from pylog.storage.manager import LogManager

CLUSTER_ID = "control-plane-test"
NODE_ID = 1
DEFAULT_PARTITIONS = 3
TEST_TIMEOUT_S = 30


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


@contextlib.asynccontextmanager
async def control_plane(tmp_path, *, ready: bool = True
                        ) -> AsyncIterator[tuple[SimpleNamespace, TestClient]]:
    """A broker's parts (what pylog.broker.app.Broker exposes) and a client of its app."""
    data_dir = str(tmp_path / "data")
    log_manager = LogManager(data_dir, cluster_id=CLUSTER_ID, node_id=NODE_ID)
    controller = Controller(MetadataStore.in_data_dir(data_dir), cluster_id=CLUSTER_ID,
                            node_id=NODE_ID, default_partitions=DEFAULT_PARTITIONS,
                            default_replication_factor=1)
    controller.register_broker(BrokerInfo(NODE_ID, "127.0.0.1", 9092))
    replica_manager = ReplicaManager(NODE_ID, log_manager, controller)
    broker = SimpleNamespace(
        config=BrokerConfig(data_dir=data_dir, node_id=NODE_ID),
        controller=controller,
        replica_manager=replica_manager,
        metrics=BrokerMetrics(replica_manager),
        ready=ready,
    )
    try:
        async with TestClient(TestServer(create_control_app(broker))) as client:
            yield broker, client
    finally:
        await replica_manager.close()
        log_manager.close()


async def produce(broker, topic: str, partition: int, n_records: int) -> None:
    batch = build_batch([(b"k%d" % i, b"v" * 100, (), None) for i in range(n_records)])
    results = await broker.replica_manager.produce(
        1, 5000, {(topic, partition): memoryview(bytearray(batch))})
    assert results[(topic, partition)].error_code == ErrorCode.NONE


async def scrape(client: TestClient) -> dict[tuple, float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def partition_sample(samples: dict[tuple, float], name: str, topic: str, partition: int):
    return samples.get((name, (("partition", str(partition)), ("topic", topic))))


async def expect_error(response, status: int, error: ErrorCode) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == error.name
    assert isinstance(body["message"], str) and body["message"]
    return body


# ---- health and metrics -------------------------------------------------------------------

def test_health_is_503_until_the_broker_is_ready_then_200(tmp_path):
    async def body():
        async with control_plane(tmp_path, ready=False) as (broker, client):
            response = await client.get("/health")
            assert response.status == 503
            assert await response.json() == {"status": "unavailable", "node_id": NODE_ID}
            broker.ready = True
            response = await client.get("/health")
            assert response.status == 200
            assert await response.json() == {
                "status": "ok", "node_id": NODE_ID, "cluster_id": CLUSTER_ID,
                "metadata_version": broker.controller.metadata.version,
            }
            broker.ready = False  # stopping
            assert (await client.get("/health")).status == 503
    run(body())


def test_admin_routes_refuse_while_not_ready_but_metrics_answer(tmp_path):
    async def body():
        async with control_plane(tmp_path, ready=False) as (_, client):
            for method, path in [("GET", "/v1/topics"), ("GET", "/v1/cluster"),
                                 ("GET", "/v1/topics/t"), ("DELETE", "/v1/topics/t")]:
                await expect_error(await client.request(method, path), 503,
                                   ErrorCode.BROKER_NOT_AVAILABLE)
            await expect_error(await client.post("/v1/topics", json={"name": "t"}), 503,
                               ErrorCode.BROKER_NOT_AVAILABLE)
            await scrape(client)
    run(body())


def test_metrics_follow_appends_and_requests(tmp_path):
    async def body():
        async with control_plane(tmp_path) as (broker, client):
            response = await client.post("/v1/topics", json={"name": "events", "partitions": 2})
            assert response.status == 201
            samples = await scrape(client)
            for name in ("pylog_partition_log_start_offset", "pylog_partition_log_end_offset",
                         "pylog_partition_high_watermark", "pylog_partition_leader_epoch"):
                assert partition_sample(samples, name, "events", 0) == 0, name
            assert partition_sample(samples, "pylog_partition_is_leader", "events", 1) == 1
            assert partition_sample(samples, "pylog_partition_isr_size", "events", 1) == 1
            size_before = partition_sample(samples, "pylog_partition_size_bytes", "events", 0)
            assert size_before is not None

            await produce(broker, "events", 0, 7)
            samples = await scrape(client)
            assert partition_sample(samples, "pylog_partition_log_end_offset", "events", 0) == 7
            assert partition_sample(samples, "pylog_partition_high_watermark", "events", 0) == 7
            assert partition_sample(samples, "pylog_partition_size_bytes", "events",
                                    0) > size_before + 7 * 100
            assert partition_sample(samples, "pylog_partition_log_end_offset", "events", 1) == 0

            produce_v8 = (("api", "PRODUCE"), ("version", "8"))
            assert ("pylog_requests_total", produce_v8) not in samples
            broker.metrics.observe_request(ApiKey.PRODUCE, 8, 0.002)
            broker.metrics.observe_request(ApiKey.PRODUCE, 8, 0.004, error=True)
            broker.metrics.add_bytes_in("events", 1234, 7)
            samples = await scrape(client)
            assert samples[("pylog_requests_total", produce_v8)] == 2
            assert samples[("pylog_request_errors_total", produce_v8)] == 1
            assert samples[("pylog_request_latency_seconds_count", produce_v8)] == 2
            assert samples[("pylog_bytes_in_total", (("topic", "events"),))] == 1234
            assert samples[("pylog_records_in_total", (("topic", "events"),))] == 7

            assert (await client.delete("/v1/topics/events")).status == 200
            samples = await scrape(client)
            assert partition_sample(samples, "pylog_partition_log_end_offset", "events",
                                    0) is None
            assert ("pylog_bytes_in_total", (("topic", "events"),)) not in samples
    run(body())


# ---- topic admin ----------------------------------------------------------------------------

def test_topic_create_list_describe_delete(tmp_path):
    async def body():
        async with control_plane(tmp_path) as (broker, client):
            response = await client.post("/v1/topics", json={
                "name": "orders", "partitions": 3, "replication_factor": 1,
                "configs": {"retention.ms": "60000", "segment.bytes": 1048576}})
            assert response.status == 201
            assert response.headers["Location"] == "/v1/topics/orders"
            created = await response.json()
            assert created["name"] == "orders"
            assert created["configs"] == {"retention.ms": "60000", "segment.bytes": "1048576"}
            topic_id = created["topic_id"]
            assert topic_id == str(broker.controller.metadata.topics["orders"].topic_id)

            await client.post("/v1/topics", json={"name": "a-first"})
            response = await client.get("/v1/topics")
            assert response.status == 200
            assert await response.json() == {"topics": [
                {"name": "a-first",
                 "topic_id": str(broker.controller.metadata.topics["a-first"].topic_id),
                 "partitions": DEFAULT_PARTITIONS, "replication_factor": 1},
                {"name": "orders", "topic_id": topic_id, "partitions": 3,
                 "replication_factor": 1},
            ]}

            await produce(broker, "orders", 1, 4)
            response = await client.get("/v1/topics/orders")
            assert response.status == 200
            described = await response.json()
            assert described["name"] == "orders" and described["topic_id"] == topic_id
            assert described["configs"] == created["configs"]
            assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
            for entry in described["partitions"]:
                local = broker.replica_manager.partition("orders", entry["partition"])
                assert entry == {
                    "partition": entry["partition"], "leader": NODE_ID, "replicas": [NODE_ID],
                    "isr": [NODE_ID], "observers": [], "hidden": [], "leader_epoch": 0,
                    "partition_epoch": 0, "log_start_offset": 0,
                    "log_end_offset": 4 if entry["partition"] == 1 else 0,
                    "high_watermark": 4 if entry["partition"] == 1 else 0,
                    "size_bytes": local.size_bytes,
                }
            assert described["partitions"][1]["size_bytes"] > described["partitions"][0][
                "size_bytes"]

            response = await client.delete("/v1/topics/orders")
            assert response.status == 200
            assert await response.json() == {"deleted": "orders"}
            assert "orders" not in broker.controller.metadata.topics
            assert broker.replica_manager.partition("orders", 0) is None
            await expect_error(await client.get("/v1/topics/orders"), 404,
                               ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
            await expect_error(await client.delete("/v1/topics/orders"), 404,
                               ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
            names = [t["name"] for t in (await (await client.get("/v1/topics")).json())["topics"]]
            assert names == ["a-first"]
    run(body())


def test_create_uses_the_broker_defaults_and_accepts_json_scalars_as_configs(tmp_path):
    async def body():
        async with control_plane(tmp_path) as (broker, client):
            response = await client.post("/v1/topics", json={
                "name": "defaults", "partitions": -1, "replication_factor": None,
                "configs": {"min.insync.replicas": 1, "retention.bytes": None}})
            assert response.status == 201, await response.text()
            created = await response.json()
            assert len(created["partitions"]) == DEFAULT_PARTITIONS
            assert created["configs"] == {"min.insync.replicas": "1"}
            assert all(p["log_end_offset"] == 0 for p in created["partitions"])
    run(body())


@pytest.mark.parametrize(("payload", "status", "error"), [
    ({"name": "taken"}, 409, ErrorCode.TOPIC_ALREADY_EXISTS),
    ({}, 400, ErrorCode.INVALID_TOPIC_EXCEPTION),
    ({"name": 7}, 400, ErrorCode.INVALID_TOPIC_EXCEPTION),
    ({"name": "bad name!"}, 400, ErrorCode.INVALID_TOPIC_EXCEPTION),
    ({"name": ".."}, 400, ErrorCode.INVALID_TOPIC_EXCEPTION),
    ({"name": "x" * 250}, 400, ErrorCode.INVALID_TOPIC_EXCEPTION),
    ({"name": "t_aken"}, 400, ErrorCode.INVALID_TOPIC_EXCEPTION),  # collides with t.aken
    ({"name": "new", "partitions": 0}, 400, ErrorCode.INVALID_PARTITIONS),
    ({"name": "new", "partitions": "3"}, 400, ErrorCode.INVALID_PARTITIONS),
    ({"name": "new", "partitions": True}, 400, ErrorCode.INVALID_PARTITIONS),
    ({"name": "new", "partitions": 10_001}, 400, ErrorCode.INVALID_PARTITIONS),
    ({"name": "new", "replication_factor": 2}, 400, ErrorCode.INVALID_REPLICATION_FACTOR),
    ({"name": "new", "replication_factor": 1.0}, 400, ErrorCode.INVALID_REPLICATION_FACTOR),
    ({"name": "new", "configs": {"retention.ms": "soon"}}, 400, ErrorCode.INVALID_CONFIG),
    ({"name": "new", "configs": {"no.such.config": "1"}}, 400, ErrorCode.INVALID_CONFIG),
    ({"name": "new", "configs": {"retention.ms": [1]}}, 400, ErrorCode.INVALID_CONFIG),
    ({"name": "new", "configs": ["retention.ms"]}, 400, ErrorCode.INVALID_CONFIG),
    ({"name": "new", "partition": 3}, 400, ErrorCode.INVALID_REQUEST),
    (["new"], 400, ErrorCode.INVALID_REQUEST),
    ("new", 400, ErrorCode.INVALID_REQUEST),
    (5, 400, ErrorCode.INVALID_REQUEST),
])
def test_create_refusals(tmp_path, payload, status, error):
    async def body():
        async with control_plane(tmp_path) as (broker, client):
            for name in ("taken", "t.aken"):
                assert (await client.post("/v1/topics", json={"name": name})).status == 201
            version = broker.controller.metadata.version
            await expect_error(await client.post("/v1/topics", json=payload), status, error)
            assert broker.controller.metadata.version == version
            assert sorted(broker.controller.metadata.topics) == ["t.aken", "taken"]
    run(body())


def test_bodies_that_are_not_json_are_refused(tmp_path):
    async def body():
        async with control_plane(tmp_path) as (broker, client):
            for data in (b"{not json", b"\xff\xfe\x00", b""):
                response = await client.post("/v1/topics", data=data,
                                             headers={"Content-Type": "application/json"})
                await expect_error(response, 400, ErrorCode.INVALID_REQUEST)
            response = await client.post("/v1/topics", data=b" " * (MAX_BODY_BYTES + 1))
            await expect_error(response, 413, ErrorCode.INVALID_REQUEST)
            assert broker.controller.metadata.topics == {}
    run(body())


def test_describe_and_delete_check_the_topic_name(tmp_path):
    async def body():
        async with control_plane(tmp_path) as (_, client):
            await expect_error(await client.get("/v1/topics/missing"), 404,
                               ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
            for bad in ("bad!name", "x" * 250, "sp%20ace"):
                await expect_error(await client.get(f"/v1/topics/{bad}"), 400,
                                   ErrorCode.INVALID_TOPIC_EXCEPTION)
                await expect_error(await client.delete(f"/v1/topics/{bad}"), 400,
                                   ErrorCode.INVALID_TOPIC_EXCEPTION)
    run(body())


def test_cluster_view(tmp_path):
    async def body():
        async with control_plane(tmp_path) as (broker, client):
            response = await client.get("/v1/cluster")
            assert response.status == 200
            assert await response.json() == {
                "cluster_id": CLUSTER_ID, "controller_id": NODE_ID,
                "metadata_version": broker.controller.metadata.version,
                "brokers": [{"node_id": NODE_ID, "host": "127.0.0.1", "port": 9092,
                             "rack": None}],
            }
            before = broker.controller.metadata.version
            await client.post("/v1/topics", json={"name": "bump"})
            cluster = await (await client.get("/v1/cluster")).json()
            assert cluster["metadata_version"] > before
    run(body())


# ---- failures are JSON ----------------------------------------------------------------------

def test_http_level_failures_are_json(tmp_path):
    async def body():
        async with control_plane(tmp_path) as (_, client):
            await expect_error(await client.get("/no/such/route"), 404,
                               ErrorCode.INVALID_REQUEST)
            response = await client.put("/v1/topics", json={"name": "t"})
            await expect_error(response, 405, ErrorCode.INVALID_REQUEST)
            assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
            await expect_error(await client.post("/health"), 405, ErrorCode.INVALID_REQUEST)
    run(body())


def test_a_bug_becomes_a_json_500_and_is_logged(tmp_path, caplog):
    async def body():
        async with control_plane(tmp_path) as (broker, client):
            assert (await client.post("/v1/topics", json={"name": "t"})).status == 201

            def broken(topic, partition):
                raise RuntimeError("replica manager exploded")

            broker.replica_manager.partition = broken
            with caplog.at_level(logging.ERROR, logger="pylog.broker.http"):
                response = await client.get("/v1/topics/t")
                body = await expect_error(response, 500, ErrorCode.UNKNOWN_SERVER_ERROR)
            assert "exploded" not in body["message"] and "Traceback" not in body["message"]
            assert any("replica manager exploded" in (r.exc_text or "") or
                       (r.exc_info and "exploded" in str(r.exc_info[1]))
                       for r in caplog.records)
            del broker.replica_manager.partition
            assert (await client.get("/v1/topics/t")).status == 200
    run(body())
