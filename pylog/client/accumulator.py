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

With idempotence, each batch also carries the producer id and epoch and a *record* sequence
number (``base_sequence``: the partition's count of records sent before it, wrapping at
INT32 max as Kafka's sequences do), stamped when the batch is first sent under the current
producer id and kept on every retry, so the broker recognises a retry of a batch it already
wrote and answers with the original offsets. A broker that checks sequences refuses a batch
that does not follow the last one it wrote (OUT_OF_ORDER_SEQUENCE_NUMBER), so the batches sent
behind a failed one come back too and are re-sent after it, in order: ordering holds with up
to 5 batches in flight.
"""
from __future__ import annotations

import asyncio
import collections
import struct
import time
from typing import Any

from pylog.core import crc32c
from pylog.records import BatchBuilder

_MAX_SEQUENCE = 0x7FFFFFFF
# RecordBatch v2 header: crc UINT32 @17 covers bytes 21..end; producerId INT64 @43,
# producerEpoch INT16 @51, baseSequence INT32 @53.
_CRC_AT = 17
_CRC_FROM = 21
_PRODUCER_FIELDS = struct.Struct(">qhi")
_PRODUCER_FIELDS_AT = 43
_CRC = struct.Struct(">I")


def add_sequence(sequence: int, increment: int) -> int:
    """``sequence + increment`` wrapping past INT32 max to 0 (Kafka's incrementSequence)."""
    if sequence > _MAX_SEQUENCE - increment:
        return increment - (_MAX_SEQUENCE - sequence) - 1
    return sequence + increment


def restamp_producer(payload: bytes, producer_id: int, producer_epoch: int,
                     base_sequence: int) -> bytes:
    """``payload`` (one built RecordBatch v2) with new producer fields and CRC."""
    batch = bytearray(payload)
    _PRODUCER_FIELDS.pack_into(batch, _PRODUCER_FIELDS_AT, producer_id, producer_epoch,
                               base_sequence)
    _CRC.pack_into(batch, _CRC_AT, crc32c(memoryview(batch)[_CRC_FROM:]))
    return bytes(batch)


class ProducerBatch:
    """One RecordBatch v2 in the making or in flight, and the futures of its records."""

    __slots__ = ("topic", "partition", "sequence", "builder", "sinks", "timestamps",
                 "created", "deadline", "attempts", "closed", "payload", "done",
                 "size_estimate", "producer_id", "producer_epoch", "base_sequence")

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
        # Idempotence: the producer id/epoch and first record sequence the payload carries
        # (-1 until first sent under a producer id; re-stamped after a producer id reset).
        self.producer_id = -1
        self.producer_epoch = -1
        self.base_sequence = -1

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

    def stamp_producer(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        """Carry these producer fields (building the batch now if it is not built)."""
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        if self.payload is None:
            self.closed = True
            self.builder.producer_id = producer_id
            self.builder.producer_epoch = producer_epoch
            self.builder.base_sequence = base_sequence
            self.build()
        else:
            self.payload = restamp_producer(self.payload, producer_id, producer_epoch,
                                            base_sequence)

    @property
    def last_sequence(self) -> int:
        return add_sequence(self.base_sequence, len(self.sinks) - 1)

    def __len__(self) -> int:
        return len(self.sinks)


class PartitionQueue:
    """The batches of one partition that are not yet acknowledged, and their send state."""

    __slots__ = ("topic", "partition", "batches", "next_sequence", "in_flight",
                 "retry_at", "blocked_until_drained", "next_record_sequence",
                 "last_acked_sequence", "last_acked_offset")

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
        # Idempotence, under the current producer id (all reset with it): the sequence the
        # next batch sent for the first time gets; the last sequence and offset the broker
        # acknowledged (-1: none yet).
        self.next_record_sequence = 0
        self.last_acked_sequence = -1
        self.last_acked_offset = -1

    def reset_sequences(self) -> None:
        """A new producer id: sequences start again at 0."""
        self.next_record_sequence = 0
        self.last_acked_sequence = -1
        self.last_acked_offset = -1

    def is_next_in_line(self, batch: ProducerBatch) -> bool:
        """The broker's next expected sequence is this batch's (nothing before it is missing
        from the broker's point of view)."""
        return batch.base_sequence == add_sequence(self.last_acked_sequence, 1)

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
