"""``__consumer_offsets`` on this broker: which partition a group lives in, creating the topic,
writing the coordinator's records through the ReplicaManager, and reading a partition back.

A group's coordinator is the leader of partition ``toPositive(murmur2(utf8(group_id))) % N``
of ``__consumer_offsets``, as DESIGN.md §10 decided (the Java client's key hash, shared with
pylog.client.partitioner). Kafka itself uses ``Utils.abs(groupId.hashCode) % N`` (Java's
String hash), so a pylog group may live in another partition number than it would in Kafka;
clients never compute it (they ask FindCoordinator), only tools reading the topic's raw
partitions would notice. N is the topic's partition count, fixed when it is created
(``offsets.topic.num.partitions`` only matters then).

Writes go through ``ReplicaManager.produce`` with acks=all, exactly like a producer's batch:
validated, stamped, appended by the partition leader, and answered once the high watermark
passed the batch, so an acknowledged commit is on every in-sync replica. Reads go straight to
the partition's log, up to its end: when this broker leads the partition its log is the
truth (followers truncate to it).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from pylog.client.partitioner import murmur2, to_positive
from pylog.core import CoreError, scan_batches
from pylog.protocol import ErrorCode
from pylog.records import Record, build_batch, decode_batch

from pylog.broker.group.config import OFFSETS_TOPIC, GroupConfig

__all__ = ["OFFSETS_TOPIC", "partition_for", "offsets_topic_configs", "ensure_offsets_topic",
           "OffsetsTopic", "AppendOutcome"]

_log = logging.getLogger("pylog.broker.group.offsets_topic")

#: Attributes bit 5: a control batch (transaction markers), never a coordinator record.
_CONTROL_BATCH = 0x20
#: Bytes read from the log per step when loading.
LOAD_CHUNK_BYTES = 1 << 20


def partition_for(group_id: str, num_partitions: int) -> int:
    """The offsets partition of ``group_id`` (Kafka's ``partitionFor``)."""
    return to_positive(murmur2(group_id.encode("utf-8"))) % num_partitions


def offsets_topic_configs(config: GroupConfig) -> dict[str, str]:
    """The topic configs ``__consumer_offsets`` is created with (Kafka's: compacted, small
    segments)."""
    return {"cleanup.policy": "compact", "segment.bytes": str(config.offsets_topic_segment_bytes)}


def ensure_offsets_topic(controller, config: GroupConfig) -> int:
    """Create ``__consumer_offsets`` if it does not exist (replication factor
    min(offsets.topic.replication.factor, brokers)); its partition count either way."""
    existing = controller.metadata.topics.get(OFFSETS_TOPIC)
    if existing is not None:
        return len(existing.partitions)
    brokers = len(controller.metadata.live_broker_ids())
    replication = max(1, min(config.offsets_topic_replication_factor, brokers))
    info = controller.create_topic(OFFSETS_TOPIC, config.offsets_topic_num_partitions,
                                   replication, offsets_topic_configs(config))
    _log.info("created %s: %d partitions, replication factor %d", OFFSETS_TOPIC,
              len(info.partitions), replication)
    return len(info.partitions)


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """An append's answer: the ReplicaManager's error code, and the offset of the first record
    (-1 on error)."""
    error_code: int
    base_offset: int = -1


class OffsetsTopic:
    """The coordinator's view of ``__consumer_offsets`` over a ReplicaManager."""

    def __init__(self, replica_manager, num_partitions: int, *, commit_timeout_ms: int,
                 wall_clock_ms: Callable[[], int] | None = None):
        if num_partitions < 1:
            raise ValueError(f"{OFFSETS_TOPIC} needs at least one partition")
        self.replica_manager = replica_manager
        self.num_partitions = num_partitions
        self.commit_timeout_ms = commit_timeout_ms
        self.wall_clock_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)

    def partition_for(self, group_id: str) -> int:
        return partition_for(group_id, self.num_partitions)

    def led_partitions(self) -> set[int]:
        """The offsets partitions this broker leads (and can serve) now."""
        led = set()
        for index in range(self.num_partitions):
            partition = self.replica_manager.partition(OFFSETS_TOPIC, index)
            if (partition is not None and partition.is_leader and not partition.deleted
                    and partition.offline_reason is None):
                led.add(index)
        return led

    async def append(self, partition: int, records: Sequence[tuple[bytes, bytes | None]]
                     ) -> AppendOutcome:
        """Append ``(key, value)`` records (value None: a tombstone) as one batch to
        ``partition`` and wait until the high watermark passed it."""
        now = self.wall_clock_ms()
        batch = bytearray(build_batch((key, value, (), now) for key, value in records))
        results = await self.replica_manager.produce(
            -1, self.commit_timeout_ms, {(OFFSETS_TOPIC, partition): memoryview(batch)})
        result = results[(OFFSETS_TOPIC, partition)]
        if result.error_code:
            _log.warning("%s-%d: append of %d records failed with error %d (%s)", OFFSETS_TOPIC,
                         partition, len(records), result.error_code, result.error_message)
            return AppendOutcome(result.error_code)
        return AppendOutcome(ErrorCode.NONE, result.base_offset)

    async def read(self, partition: int) -> AsyncIterator[Record]:
        """Every record of ``partition`` from its log start to its end, in offset order,
        yielding to the event loop between chunks. Batches that fail their CRC end the read
        (logged): what follows them cannot be trusted."""
        replica = self.replica_manager.partition(OFFSETS_TOPIC, partition)
        if replica is None:
            return
        log = replica.log
        offset = log.log_start_offset
        while offset < log.log_end_offset:
            chunk = log.read(offset, LOAD_CHUNK_BYTES)
            if chunk.empty:
                break
            data = memoryview(chunk.data)
            batches, error = scan_batches(data, check_records=False)
            for info in batches:
                if not info.attributes & _CONTROL_BATCH:
                    try:
                        records = decode_batch(data[info.position:info.end])
                    except CoreError as e:
                        _log.error("%s-%d: batch at offset %d does not decode (%s): loading "
                                   "stops there", OFFSETS_TOPIC, partition, info.base_offset, e)
                        return
                    for record in records:
                        if record.offset >= offset:
                            yield record
                offset = max(offset, info.next_offset)
            if error is not None or not batches:
                _log.error("%s-%d: unreadable batch at offset %d (%s): loading stops there",
                           OFFSETS_TOPIC, partition, offset, error)
                return
            await asyncio.sleep(0)
