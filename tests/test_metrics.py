"""BrokerMetrics on its own: what each recording call does to the rendered Prometheus text."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from pylog.broker.metrics import CONTENT_TYPE, LATENCY_BUCKETS, BrokerMetrics
from pylog.protocol import ADVERTISED_VERSIONS, ApiKey


def scrape(metrics: BrokerMetrics) -> tuple[dict[str, str], dict[tuple, float]]:
    """(family name -> type, (sample name, sorted label items) -> value) of one render."""
    types: dict[str, str] = {}
    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def value(samples: dict[tuple, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@dataclass
class StandInPartition:
    """The attributes the collector reads from a pylog.broker Partition."""

    topic: str
    index: int
    log_start_offset: int = 0
    log_end_offset: int = 0
    high_watermark: int = 0
    size_bytes: int = 0
    leader_epoch: int = 0
    is_leader: bool = True
    replicas: list[int] = field(default_factory=lambda: [1])
    isr: list[int] = field(default_factory=lambda: [1])


class StandInReplicaManager:
    def __init__(self, partitions: list[StandInPartition]):
        self.hosted = partitions

    def partitions(self):
        return iter(self.hosted)


def test_empty_registry_renders_every_family_with_its_type():
    types, samples = scrape(BrokerMetrics(process_metrics=False))
    assert types == {
        "pylog_requests": "counter",
        "pylog_request_errors": "counter",
        "pylog_request_latency_seconds": "histogram",
        "pylog_bytes_in": "counter",
        "pylog_records_in": "counter",
        "pylog_bytes_out": "counter",
        "pylog_connections": "gauge",
        "pylog_partition_log_start_offset": "gauge",
        "pylog_partition_log_end_offset": "gauge",
        "pylog_partition_high_watermark": "gauge",
        "pylog_partition_size_bytes": "gauge",
        "pylog_partition_leader_epoch": "gauge",
        "pylog_partition_replicas": "gauge",
        "pylog_partition_isr_size": "gauge",
        "pylog_partition_is_leader": "gauge",
    }
    assert samples == {("pylog_connections", ()): 0.0}
    assert CONTENT_TYPE.startswith("text/plain")


def test_observe_request_counts_requests_errors_and_latency_by_api_and_version():
    metrics = BrokerMetrics(process_metrics=False)
    metrics.observe_request(ApiKey.PRODUCE, 8, 0.0002)
    metrics.observe_request(ApiKey.PRODUCE, 8, 0.003, error=True)
    metrics.observe_request(ApiKey.PRODUCE, 7, 0.5)
    metrics.observe_request(ApiKey.FETCH, 11, 100.0)
    _, samples = scrape(metrics)
    produce8 = {"api": "PRODUCE", "version": "8"}
    assert value(samples, "pylog_requests_total", **produce8) == 2
    assert value(samples, "pylog_request_errors_total", **produce8) == 1
    assert value(samples, "pylog_request_latency_seconds_count", **produce8) == 2
    assert math.isclose(value(samples, "pylog_request_latency_seconds_sum", **produce8), 0.0032)
    buckets = {le: value(samples, "pylog_request_latency_seconds_bucket", le=le, **produce8)
               for le in ("0.0001", "0.00025", "0.0025", "0.005", "+Inf")}
    assert buckets == {"0.0001": 0, "0.00025": 1, "0.0025": 1, "0.005": 2, "+Inf": 2}
    assert value(samples, "pylog_requests_total", api="PRODUCE", version="7") == 1
    assert value(samples, "pylog_request_errors_total", api="PRODUCE", version="7") == 0
    fetch = {"api": "FETCH", "version": "11"}
    assert value(samples, "pylog_request_latency_seconds_bucket", le="30.0", **fetch) == 0
    assert value(samples, "pylog_request_latency_seconds_bucket", le="+Inf", **fetch) == 1


def test_latency_on_a_bucket_bound_falls_in_that_bucket():
    metrics = BrokerMetrics(process_metrics=False)
    for bound in LATENCY_BUCKETS:
        metrics.observe_request(ApiKey.METADATA, 8, bound)
    _, samples = scrape(metrics)
    labels = {"api": "METADATA", "version": "8"}
    for i, bound in enumerate(LATENCY_BUCKETS):
        le = prometheus_client.utils.floatToGoString(bound)
        assert value(samples, "pylog_request_latency_seconds_bucket", le=le, **labels) == i + 1


def test_negative_and_nan_latencies_count_as_zero():
    metrics = BrokerMetrics(process_metrics=False)
    metrics.observe_request(ApiKey.METADATA, 1, -5.0)
    metrics.observe_request(ApiKey.METADATA, 1, float("nan"))
    _, samples = scrape(metrics)
    labels = {"api": "METADATA", "version": "1"}
    assert value(samples, "pylog_request_latency_seconds_sum", **labels) == 0.0
    assert value(samples, "pylog_request_latency_seconds_bucket", le="0.0001", **labels) == 2


def test_unknown_keys_and_unsupported_versions_share_bounded_series():
    metrics = BrokerMetrics(process_metrics=False)
    metrics.observe_request(ApiKey.API_VERSIONS, 3, 0.0001, error=True)  # librdkafka's first try
    metrics.observe_request(4242, 0, 0.0001, error=True)
    metrics.observe_request(-1, -1, 0.0001, error=True)
    rng = random.Random(7)
    for _ in range(20_000):
        metrics.observe_request(rng.randint(-2**15, 2**15 - 1), rng.randint(-2**15, 2**15 - 1),
                                0.001, error=rng.random() < 0.5)
    _, samples = scrape(metrics)
    assert value(samples, "pylog_requests_total", api="API_VERSIONS", version="unsupported") >= 1
    assert value(samples, "pylog_requests_total", api="UNKNOWN", version="unsupported") >= 2
    series = {labels for (name, labels) in samples if name == "pylog_requests_total"}
    bound = len(ApiKey) + 1 + sum(r.max - r.min + 1 for r in ADVERTISED_VERSIONS.values())
    assert len(series) <= bound
    assert sum(v for (name, _), v in samples.items() if name == "pylog_requests_total") == 20_003


def test_bytes_and_records_by_topic_and_connections():
    metrics = BrokerMetrics(process_metrics=False)
    metrics.add_bytes_in("orders", 1000, 10)
    metrics.add_bytes_in("orders", 500, 5)
    metrics.add_bytes_out("orders", 4096)
    metrics.add_bytes_out("clicks", 7)
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed()
    _, samples = scrape(metrics)
    assert value(samples, "pylog_bytes_in_total", topic="orders") == 1500
    assert value(samples, "pylog_records_in_total", topic="orders") == 15
    assert value(samples, "pylog_bytes_out_total", topic="orders") == 4096
    assert value(samples, "pylog_bytes_out_total", topic="clicks") == 7
    assert value(samples, "pylog_bytes_in_total", topic="clicks") == 0
    assert value(samples, "pylog_connections") == 2


def test_partition_gauges_are_read_at_scrape_time():
    p0 = StandInPartition("orders", 0, log_start_offset=3, log_end_offset=10, high_watermark=8,
                          size_bytes=4096, leader_epoch=2, replicas=[1, 2, 3], isr=[1, 2])
    p1 = StandInPartition("orders", 1, is_leader=False)
    replica_manager = StandInReplicaManager([p0, p1])
    metrics = BrokerMetrics(process_metrics=False)
    metrics.replica_manager = replica_manager
    _, samples = scrape(metrics)
    labels = {"topic": "orders", "partition": "0"}
    assert value(samples, "pylog_partition_log_start_offset", **labels) == 3
    assert value(samples, "pylog_partition_log_end_offset", **labels) == 10
    assert value(samples, "pylog_partition_high_watermark", **labels) == 8
    assert value(samples, "pylog_partition_size_bytes", **labels) == 4096
    assert value(samples, "pylog_partition_leader_epoch", **labels) == 2
    assert value(samples, "pylog_partition_replicas", **labels) == 3
    assert value(samples, "pylog_partition_isr_size", **labels) == 2
    assert value(samples, "pylog_partition_is_leader", **labels) == 1
    assert value(samples, "pylog_partition_is_leader", topic="orders", partition="1") == 0

    p0.log_end_offset, p0.high_watermark, p0.size_bytes = 25, 25, 9000
    _, samples = scrape(metrics)
    assert value(samples, "pylog_partition_log_end_offset", **labels) == 25
    assert value(samples, "pylog_partition_high_watermark", **labels) == 25
    assert value(samples, "pylog_partition_size_bytes", **labels) == 9000


def test_topic_counters_are_dropped_once_the_topic_is_no_longer_hosted():
    replica_manager = StandInReplicaManager([StandInPartition("kept", 0),
                                             StandInPartition("gone", 0)])
    metrics = BrokerMetrics(replica_manager, process_metrics=False)
    metrics.add_bytes_in("kept", 10, 1)
    metrics.add_bytes_in("gone", 20, 2)
    _, samples = scrape(metrics)
    assert value(samples, "pylog_bytes_in_total", topic="gone") == 20
    replica_manager.hosted = [StandInPartition("kept", 0)]
    _, samples = scrape(metrics)
    assert value(samples, "pylog_bytes_in_total", topic="gone") is None
    assert value(samples, "pylog_bytes_in_total", topic="kept") == 10
    assert value(samples, "pylog_partition_log_end_offset", topic="gone", partition="0") is None


def test_each_broker_has_its_own_registry_and_the_global_one_is_untouched():
    first, second = BrokerMetrics(), BrokerMetrics()
    first.observe_request(ApiKey.PRODUCE, 8, 0.001)
    first.connection_opened()
    _, samples = scrape(second)
    assert value(samples, "pylog_requests_total", api="PRODUCE", version="8") is None
    assert value(samples, "pylog_connections") == 0
    assert first.registry is not second.registry
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "pylog_" not in global_text


def test_process_metrics_are_included_unless_turned_off():
    with_process, _ = scrape(BrokerMetrics())
    without_process, _ = scrape(BrokerMetrics(process_metrics=False))
    if prometheus_client.ProcessCollector(registry=None).collect():  # /proc exists (Linux)
        assert with_process.get("process_cpu_seconds") == "counter"
    assert not any(name.startswith("process_") for name in without_process)


def test_label_values_that_need_escaping_still_parse():
    # Topic names are validated where they enter; the exposition must not break if one is not.
    odd = 'quo"te\\back\nslash'
    metrics = BrokerMetrics(StandInReplicaManager([StandInPartition(odd, 0, log_end_offset=4)]),
                            process_metrics=False)
    metrics.add_bytes_in(odd, 9, 1)
    _, samples = scrape(metrics)
    assert value(samples, "pylog_bytes_in_total", topic=odd) == 9
    assert value(samples, "pylog_partition_log_end_offset", topic=odd, partition="0") == 4
