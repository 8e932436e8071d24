"""The broker's Prometheus metrics: one registry per broker, rendered in the text format.

Theory of operation
-------------------
The data plane reports every request, every produced and fetched byte and every connection, so
the recording calls sit on the hot path and must cost about a microsecond. prometheus_client's
own ``Counter``/``Histogram`` children take a lock per increment: a cached child's ``inc`` plus
``observe`` costs ≈ 1.2 µs here, more than the whole budget. So the hot path only adds to plain
Python numbers held in small slotted objects (one per (api key, version) pair and one per
topic), ≈ 0.2 µs a request, and they become metric families when ``/metrics`` is scraped.

Those plain numbers are confined to one thread: every recording method and ``render`` are
called from the broker's event-loop thread (the data plane and the aiohttp control plane share
that loop), which is what makes the unlocked ``+=`` correct, and what lets ``render`` read the
ReplicaManager's partitions (which live on that thread too).

A scrape also runs on the event loop, so its cost is a pause of the data plane. The families
of bounded size (requests, errors and latency by api and version; connections; the process)
go through a collector in this broker's own ``CollectorRegistry`` and prometheus_client's
exposition. The families that grow with the number of topics and partitions (bytes/records by
topic; log start, LEO, HW, size, leader epoch, replicas, ISR size and leadership by
partition) are written directly: prometheus_client's exposition costs ≈ 6 µs a sample (label
validation and escaping), 47 ms a scrape for 1,000 partitions, against ≈ 3 ms written here.
Writing them directly is safe because their label values are topic names, validated where
they enter (``[a-zA-Z0-9._-]``, nothing to escape; escaped all the same should one slip
through) and partition numbers, and their values are integers.

Per-partition gauges are not recorded at all: they are read from the ReplicaManager at scrape
time, so they are exact and cost nothing between scrapes.

Label cardinality is bounded against hostile clients: an api key pylog does not know is
counted as ``api="UNKNOWN"``, and a version outside the advertised range as
``version="unsupported"``; per-topic counters exist only for topics this broker hosts (a
deleted topic's counters are dropped at the next scrape, as Kafka drops its topic metrics).
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from pylog.protocol import ADVERTISED_VERSIONS, ApiKey

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "BrokerMetrics"]

#: The Content-Type of ``BrokerMetrics.render()``'s output.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Upper bounds (seconds) of the request latency histogram: from a pipelined request served in
#: tens of microseconds up to a long-poll fetch or an acks=all produce waiting out its timeout.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

_UNKNOWN_API = "UNKNOWN"
_UNSUPPORTED_VERSION = "unsupported"
_BUCKET_LABELS = tuple(floatToGoString(b) for b in LATENCY_BUCKETS) + ("+Inf",)

# (metric name, help) of the per-topic counters, in the order of _TopicStats.values().
_TOPIC_COUNTERS = (
    ("pylog_bytes_in_total", "Record batch bytes appended by producers."),
    ("pylog_records_in_total", "Records appended by producers."),
    ("pylog_bytes_out_total", "Log bytes sent to fetchers."),
)

# (metric name, help) of the per-partition gauges, in the order of _partition_values().
_PARTITION_GAUGES = (
    ("pylog_partition_log_start_offset", "First offset still in the log."),
    ("pylog_partition_log_end_offset", "Offset of the next record to be appended (LEO)."),
    ("pylog_partition_high_watermark",
     "Offset below which every record is on every ISR member (HW)."),
    ("pylog_partition_size_bytes", "Bytes of log segments on disk."),
    ("pylog_partition_leader_epoch", "Current leader epoch."),
    ("pylog_partition_replicas", "Assigned replicas."),
    ("pylog_partition_isr_size", "In-sync replicas."),
    ("pylog_partition_is_leader", "1 if this broker leads the partition, else 0."),
)


class _RequestStats:
    """Requests answered for one (api, version) label pair since the broker started.

    Invariants: ``bucket_counts[i]`` counts requests whose latency is in
    (LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]] (the last slot: above the last bound), so their
    sum is the request count; ``errors`` <= that count; ``seconds_sum`` >= 0.
    """

    __slots__ = ("api", "version", "bucket_counts", "seconds_sum", "errors")

    def __init__(self, api: str, version: str):
        self.api = api
        self.version = version
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds_sum = 0.0
        self.errors = 0


class _TopicStats:
    """Bytes and records through one topic since this broker started hosting it (all >= 0)."""

    __slots__ = ("bytes_in", "records_in", "bytes_out")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.records_in = 0
        self.bytes_out = 0

    def values(self) -> tuple[int, int, int]:
        return self.bytes_in, self.records_in, self.bytes_out


def _request_labels(api_key: int, api_version: int) -> tuple[str, str, bool]:
    """The (api, version) labels of a request, and whether the pair may be cached on its own.

    Only advertised pairs get their own label values (a bounded set); anything else shares
    one "unsupported" series per api so a client sending random keys and versions cannot
    grow the registry.
    """
    try:
        key = ApiKey(api_key)
    except ValueError:
        return _UNKNOWN_API, _UNSUPPORTED_VERSION, False
    supported = ADVERTISED_VERSIONS.get(key)
    if supported is not None and api_version in supported:
        return key.name, str(api_version), True
    return key.name, _UNSUPPORTED_VERSION, False


class BrokerMetrics:
    """The metrics of one broker, in a CollectorRegistry of its own.

    ``replica_manager`` (settable after construction, since the broker may build its metrics
    first) is read at scrape time for the per-partition gauges; None renders no partitions.
    ``registry`` holds the families of bounded size; ``render`` adds the per-topic and
    per-partition ones (module docstring).
    """

    def __init__(self, replica_manager: Any = None, *, process_metrics: bool = True):
        self.replica_manager = replica_manager
        #: (api_key, api_version) as sent -> stats; holds advertised pairs only (bounded).
        self._requests: dict[tuple[int, int], _RequestStats] = {}
        #: (api label, version label) -> stats; every series, including the shared fallbacks.
        self._series: dict[tuple[str, str], _RequestStats] = {}
        #: topic -> stats; topics that had traffic and were still hosted at the last scrape.
        self._topics: dict[str, _TopicStats] = {}
        #: open client connections; >= 0 while opens and closes are paired.
        self._connections = 0
        self.registry = CollectorRegistry()
        self.registry.register(_RequestCollector(self))
        if process_metrics:
            # process_cpu_seconds_total, resident memory, open fds (Linux /proc; empty elsewhere).
            ProcessCollector(registry=self.registry)

    # -- hot path -----------------------------------------------------------------------------

    def observe_request(self, api_key: int, api_version: int, seconds: float,
                        error: bool = False) -> None:
        """Count one answered request and its latency; ``error`` if it failed as a whole."""
        stats = self._requests.get((api_key, api_version))
        if stats is None:
            stats = self._stats_for(api_key, api_version)
        if not seconds >= 0.0:  # negative or NaN from a misbehaving clock
            seconds = 0.0
        stats.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        stats.seconds_sum += seconds
        if error:
            stats.errors += 1

    def add_bytes_in(self, topic: str, n_bytes: int, n_records: int) -> None:
        """Count bytes and records appended to ``topic`` by producers."""
        stats = self._topics.get(topic)
        if stats is None:
            stats = self._topics[topic] = _TopicStats()
        stats.bytes_in += n_bytes
        stats.records_in += n_records

    def add_bytes_out(self, topic: str, n_bytes: int) -> None:
        """Count log bytes of ``topic`` sent to fetchers (consumers and followers)."""
        stats = self._topics.get(topic)
        if stats is None:
            stats = self._topics[topic] = _TopicStats()
        stats.bytes_out += n_bytes

    def connection_opened(self) -> None:
        self._connections += 1

    def connection_closed(self) -> None:
        self._connections -= 1

    # -- scrape -------------------------------------------------------------------------------

    def render(self) -> bytes:
        """Every metric of this broker in the Prometheus text format (``CONTENT_TYPE``)."""
        replica_manager = self.replica_manager
        partitions = None if replica_manager is None else list(replica_manager.partitions())
        if partitions is not None:
            self._forget_topics_not_in(partitions)
        lines: list[str] = []
        _write_topic_counters(lines, self._topics)
        _write_partition_gauges(lines, partitions or ())
        return generate_latest(self.registry) + "".join(lines).encode()

    def _stats_for(self, api_key: int, api_version: int) -> _RequestStats:
        api, version, cacheable = _request_labels(api_key, api_version)
        stats = self._series.get((api, version))
        if stats is None:
            stats = self._series[(api, version)] = _RequestStats(api, version)
        if cacheable:
            self._requests[(api_key, api_version)] = stats
        return stats

    def _forget_topics_not_in(self, partitions: list[Any]) -> None:
        hosted = {partition.topic for partition in partitions}
        for gone in [topic for topic in self._topics if topic not in hosted]:
            del self._topics[gone]


class _RequestCollector:
    """The request and connection families of a BrokerMetrics, for its registry."""

    def __init__(self, metrics: BrokerMetrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        labels = ["api", "version"]
        requests = CounterMetricFamily("pylog_requests", "Kafka requests answered.",
                                       labels=labels)
        errors = CounterMetricFamily(
            "pylog_request_errors",
            "Kafka requests that failed as a whole (undecodable, unsupported, or a handler error).",
            labels=labels)
        latency = HistogramMetricFamily(
            "pylog_request_latency_seconds",
            "Time from a request's arrival to its response being queued.", labels=labels)
        for stats in self._metrics._series.values():
            label_values = [stats.api, stats.version]
            cumulative = []
            running = 0
            for bound, count in zip(_BUCKET_LABELS, stats.bucket_counts):
                running += count
                cumulative.append((bound, running))
            requests.add_metric(label_values, running)
            errors.add_metric(label_values, stats.errors)
            latency.add_metric(label_values, cumulative, stats.seconds_sum)
        yield requests
        yield errors
        yield latency
        yield GaugeMetricFamily("pylog_connections", "Open Kafka-protocol client connections.",
                                value=self._metrics._connections)


# -- direct exposition of the families that grow with topics and partitions ----------------------

def _label_value(text: str) -> str:
    """``text`` escaped for a label value of the text format (a no-op for topic names)."""
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def _write_family_header(lines: list[str], name: str, help_text: str, kind: str) -> None:
    lines.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")


def _write_topic_counters(lines: list[str], topics: dict[str, _TopicStats]) -> None:
    rows = [(f'{{topic="{_label_value(topic)}"}} ', stats.values())
            for topic, stats in topics.items()]
    for column, (name, help_text) in enumerate(_TOPIC_COUNTERS):
        _write_family_header(lines, name, help_text, "counter")
        lines.extend([f"{name}{labels}{values[column]}\n" for labels, values in rows])


def _partition_values(partition: Any) -> tuple[int, ...]:
    """One partition's gauge values, in the order of _PARTITION_GAUGES."""
    return (partition.log_start_offset, partition.log_end_offset, partition.high_watermark,
            partition.size_bytes, partition.leader_epoch, len(partition.replicas),
            len(partition.isr), 1 if partition.is_leader else 0)


def _write_partition_gauges(lines: list[str], partitions: Iterable[Any]) -> None:
    rows = [(f'{{topic="{_label_value(p.topic)}",partition="{int(p.index)}"}} ',
             _partition_values(p)) for p in partitions]
    for column, (name, help_text) in enumerate(_PARTITION_GAUGES):
        _write_family_header(lines, name, help_text, "gauge")
        lines.extend([f"{name}{labels}{int(values[column])}\n" for labels, values in rows])
