"""The producer's per-partition record accumulators: batches built in C, in partition order.

Theory of operation. Each partition has a queue of batches (``PartitionQueue``): the last one
may be *open* (records are still appended to it, in C through ``records.BatchBuilder``), the
ones before it are *closed* (full, or taken by the sender once ``linger_ms`` passed). The
sender takes at most one batch per partition per Produce request (Kafka accepts exactly one)
from the head of the queue; several requests, and so several batches of one partition, may be
in flight at once. Every batch gets a per-partition sequence number when created; a batch that
fails with a retriable error is put back into the queue in sequence order, and the partition
is held (``blocked_until_drained``) until its other batches in flight have come back, so that
batches are re-sent in the order they were first made. Batches that succeed while an earlier
one failed cannot be undone (without idempotence, a broker does not deduplicate): strict
per-partition order under retries therefore needs ``max_in_flight=1``, as with the Java client.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from pylog.records import BatchBuilder


class ProducerBatch:
    """One RecordBatch v2 in the making or in flight, and the futures of its records."""

    __slots__ = ("topic", "partition", "sequence", "builder", "sinks", "timestamps",
                 "created", "deadline", "attempts", "closed", "payload", "done",
                 "size_estimate")

    def __init__(self, topic: str, partition: int, sequence: int, builder: BatchBuilder,
                 delivery_timeout_s: float, done: asyncio.Future):
        self.topic = topic
        self.partition = partition
        self.sequence = sequence          # per partition, increasing in creation order
        self.builder = builder
        self.sinks: list[Any] = []        # one future (asyncio or concurrent) per record
        self.timestamps: list[int] = []   # each record's CreateTime, ms
        self.created = time.monotonic()
        self.deadline = self.created + delivery_timeout_s
        self.attempts = 0                 # Produce requests sent with this batch
        self.closed = False               # no more records will be appended
        self.payload: bytes | None = None  # the built batch, once closed and taken
        self.done = done                  # resolved when every sink is resolved
        self.size_estimate = 0

    def try_append(self, value, key, headers, timestamp: int, sink) -> bool:
        if not self.builder.append(value, key, headers, timestamp):
            return False
        self.sinks.append(sink)
        self.timestamps.append(timestamp)
        self.size_estimate = self.builder.size_estimate
        return True

    def close(self) -> None:
        self.closed = True

    def build(self) -> bytes:
        if self.payload is None:
            self.closed = True
            self.payload = self.builder.build()
            self.builder = None  # type: ignore[assignment]  # its buffer is no longer needed
        return self.payload

    def __len__(self) -> int:
        return len(self.sinks)


class PartitionQueue:
    """The batches of one partition that are not yet acknowledged, and their send state."""

    __slots__ = ("topic", "partition", "batches", "next_sequence", "in_flight",
                 "retry_at", "blocked_until_drained")

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        # Waiting batches in sequence order; only the last may be open.
        self.batches: collections.deque[ProducerBatch] = collections.deque()
        self.next_sequence = 0
        # Batches of this partition in Produce requests not yet answered.
        self.in_flight = 0
        # time.monotonic() before which nothing is sent (retry backoff), 0 = no wait.
        self.retry_at = 0.0
        # A batch failed and was put back: send nothing until in_flight drops to 0, so the
        # put-back batches go out again in their original order.
        self.blocked_until_drained = False

    def open_batch(self) -> ProducerBatch | None:
        if self.batches and not self.batches[-1].closed:
            return self.batches[-1]
        return None

    def requeue(self, batch: ProducerBatch) -> None:
        """Put a failed batch back in sequence order."""
        index = len(self.batches)
        while index > 0 and self.batches[index - 1].sequence > batch.sequence:
            index -= 1
        self.batches.insert(index, batch)

    def sendable(self, now: float) -> bool:
        return (bool(self.batches) and now >= self.retry_at
                and not (self.blocked_until_drained and self.in_flight))

    def head_ready(self, now: float, linger_s: float, flushing: bool) -> bool:
        """The head batch should go now: closed, lingered enough, or a flush is asked."""
        head = self.batches[0]
        return head.closed or flushing or now - head.created >= linger_s
