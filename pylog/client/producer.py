"""The native producer: ``AsyncProducer`` (asyncio) and ``Producer`` (blocking, own loop thread).

Theory of operation. ``send`` picks the partition (explicit, the key's murmur2 or xxhash
partition, or the topic's sticky partition for keyless records) and appends the record to that
partition's open batch (``accumulator``), encoding it in C. A batch is closed when the next
record does not fit ``batch_size``. One sender task wakes when a batch is closed, when the
oldest open batch has waited ``linger_ms``, on ``flush``, and when an answer frees room in a
broker's pipeline. Each pass groups the partitions whose head batch is ready by leader broker
and sends each broker one Produce request holding at most one batch per partition, keeping at
most ``max_in_flight`` requests per broker unanswered. The answer resolves each record's future
with its offset (base offset + position in the batch). A retriable error (or a lost
connection) puts the batch back in its partition's queue in order, refreshes the metadata when
the error says it is stale, and the batch is sent again after ``retry_backoff_ms``, up to
``retries`` times and within ``delivery_timeout_ms``; any other error fails the batch's futures.

Memory is bounded by ``buffer_memory``: ``send`` waits (it is a coroutine) while the bytes of
unacknowledged batches are above it.

Idempotence (``enable_idempotence``, on by default as in the Java client; it needs
acks="all", retries > 0 and max_in_flight <= 5, and is left off when those are set otherwise
and idempotence was not asked for explicitly). ``start`` gets a producer id and epoch
(InitProducerId); every batch carries them and a per-partition sequence number
(``accumulator``), kept across retries, so the broker writes a retried batch once. Answers:

- OUT_OF_ORDER_SEQUENCE_NUMBER for a batch that is *not* the next one the broker expects
  (an earlier batch of the partition failed and is being retried): retriable; the batch is
  re-sent after the earlier ones, in order.
- OUT_OF_ORDER_SEQUENCE_NUMBER for the next expected batch (the broker lost this producer's
  state, or records are really missing), UNKNOWN_PRODUCER_ID while the partition's log start
  is not past what was acknowledged (the broker forgot the producer), INVALID_PRODUCER_EPOCH:
  that batch fails with the broker's error (OutOfOrderSequenceError, UnknownProducerIdError,
  InvalidProducerEpochError), as in the Java client.
- UNKNOWN_PRODUCER_ID with a log start past the last acknowledged offset (retention deleted
  the producer's records and so its state): the batch is retried under a new producer id.

After a batch that carried a sequence fails for good (any error above, a non-retriable error,
retries or delivery_timeout_ms exhausted) the sequences that follow no longer match the
broker's, so the producer *resets its producer id*: it stops sending, waits until nothing is in
flight, asks InitProducerId for a new id (v0/v1 cannot bump the epoch of an id; this is what
the Java client does with such brokers), restarts every partition's sequences at 0 and re-sends
what is queued, re-stamped. A batch whose answer was lost just before such a reset may then be
written twice (the one case idempotence without an epoch bump cannot cover).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pylog.client.accumulator import PartitionQueue, ProducerBatch, add_sequence
from pylog.client.errors import (
    METADATA_STALE_CODES,
    ClientClosedError,
    KafkaError,
    KafkaTimeoutError,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
    UnsupportedVersionError,
    remote_error,
)
from pylog.client.loop_thread import LoopThread
from pylog.client.messages import millis
from pylog.client.metadata import Cluster
from pylog.client.partitioner import KEY_PARTITIONERS, StickyPartitioner
from pylog.protocol import ApiKey, ErrorCode
from pylog.records import BatchBuilder, Compression

_ACKS = {0: 0, 1: 1, -1: -1, "all": -1, "0": 0, "1": 1, "-1": -1}
_MAX_IDEMPOTENT_IN_FLIGHT = 5  # the broker remembers the last 5 batches of a producer
log = logging.getLogger("pylog.client.producer")
_RECORD_OVERHEAD = 64  # bytes a record may add around its key, value and headers


class _TopicLayout(NamedTuple):
    """A topic's partitions in one metadata snapshot (what partitioning needs per record)."""

    snapshot: object        # the ClusterSnapshot it was computed from
    count: int              # partitions; ids are 0..count-1
    all_ids: list[int]
    available: list[int]    # partitions that have a leader


class RecordMetadata(NamedTuple):
    """Where a record was written. ``offset`` is -1 for acks=0; ``timestamp`` is the record's
    CreateTime, or the broker's LogAppendTime when the topic uses it."""

    topic: str
    partition: int
    offset: int
    timestamp: int


def _as_bytes(value: Any, what: str) -> bytes | None:
    if value is None or isinstance(value, (bytes, bytearray, memoryview)):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{what} must be bytes, str or None, not {type(value).__name__}")


def _as_headers(headers: Any) -> list[tuple[str, bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, _as_bytes(value, "a header value")) for name, value in items]


def _parse_compression(compression: str | int | None) -> Compression:
    if compression is None:
        return Compression.NONE
    if isinstance(compression, str):
        return Compression.from_name(compression)
    return Compression(compression)


class AsyncProducer:
    """Produce records to a Kafka-protocol cluster (asyncio). See the module docstring.

    ``await start()`` (or ``async with``) first; ``fut = await send(...)`` then
    ``await fut`` gives a ``RecordMetadata``; ``await flush()``; ``await close()``.

    ``acks`` defaults to "all" and ``enable_idempotence`` to None: idempotent unless acks,
    retries or max_in_flight rule it out (True makes those conflicts a ValueError, False turns
    it off). ``idempotent``, ``producer_id`` and ``producer_epoch`` tell what was decided.
    """

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", *,
                 acks: int | str = "all", linger_ms: float = 5, batch_size: int = 16384,
                 compression: str | int | None = None, retries: int = 2_147_483_647,
                 retry_backoff_ms: int = 100, request_timeout_ms: int = 30_000,
                 delivery_timeout_ms: int = 120_000, max_block_ms: int = 60_000,
                 partitioner: str = "murmur2", max_in_flight: int = 5,
                 max_request_size: int = 1_048_576, buffer_memory: int = 32 << 20,
                 enable_idempotence: bool | None = None, client_id: str = "pylog-producer",
                 connect_timeout_ms: int = 10_000):
        if acks not in _ACKS:
            raise ValueError(f"acks must be 0, 1 or 'all'/-1, not {acks!r}")
        compatible = (_ACKS[acks] == -1 and retries > 0
                      and max_in_flight <= _MAX_IDEMPOTENT_IN_FLIGHT)
        if enable_idempotence and not compatible:
            raise ValueError("enable_idempotence needs acks='all', retries > 0 and "
                             f"max_in_flight <= {_MAX_IDEMPOTENT_IN_FLIGHT}")
        # None (the default): on unless acks, retries or max_in_flight rule it out (Java).
        self.idempotent = compatible if enable_idempotence is None else bool(enable_idempotence)
        if partitioner not in KEY_PARTITIONERS:
            raise ValueError(f"partitioner must be one of {sorted(KEY_PARTITIONERS)}")
        if max_in_flight < 1 or batch_size < 62 or linger_ms < 0:
            raise ValueError("max_in_flight >= 1, batch_size >= 62, linger_ms >= 0 required")
        self.acks = _ACKS[acks]
        self.linger_s = linger_ms / 1000
        self.batch_size = batch_size
        self.compression = _parse_compression(compression)
        self.retries = retries
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.request_timeout_ms = request_timeout_ms
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.max_block_ms = max_block_ms
        self.max_in_flight = max_in_flight
        self.max_request_size = max_request_size
        self.buffer_memory = buffer_memory
        self._key_partition = KEY_PARTITIONERS[partitioner]
        self._sticky = StickyPartitioner()
        self._layouts: dict[str, _TopicLayout] = {}
        self.cluster = Cluster(bootstrap, client_id=client_id,
                               request_timeout_ms=request_timeout_ms,
                               connect_timeout_ms=connect_timeout_ms,
                               retry_backoff_ms=retry_backoff_ms,
                               allow_auto_topic_creation=True)
        # (topic, partition) -> its queue of unacknowledged batches.
        self._queues: dict[tuple[str, int], PartitionQueue] = {}
        # node id -> Produce requests sent to it and not yet answered.
        self._in_flight: collections.Counter[int] = collections.Counter()
        # Bytes of batches created and not yet acknowledged (bounded by buffer_memory).
        self._buffered_bytes = 0
        self._room: asyncio.Event | None = None
        self._wakeup: asyncio.Event | None = None
        # ``done`` futures of every batch created and not yet acknowledged or failed.
        self._unfinished: set[asyncio.Future] = set()
        # Number of flush() calls waiting: while > 0 every head batch is ready at once.
        self._flushing = 0
        self._sender: asyncio.Task | None = None
        self._refreshing: asyncio.Task | None = None
        self._requests: set[asyncio.Task] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Idempotence: the producer id and epoch batches are stamped with (-1 before start).
        self.producer_id = -1
        self.producer_epoch = -1
        # A batch with a sequence failed for good: send nothing until the producer id is
        # reset (which waits until nothing is in flight).
        self._reset_pending = False
        self._resetting: asyncio.Task | None = None
        # No new producer id could be had: every later send fails with this.
        self._fatal: KafkaError | None = None

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the cluster (raises KafkaConnectionError if no bootstrap server answers)
        and start the sender."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._room.set()
        self._wakeup = asyncio.Event()
        try:
            await self.cluster.refresh()
            if self.idempotent:
                await self._init_producer_id()
        except BaseException:
            await self.cluster.close()
            raise
        self._sender = asyncio.ensure_future(self._run_sender())

    async def _init_producer_id(self) -> None:
        """InitProducerId (no transactional id): a new producer id and epoch, retrying
        retriable errors for up to ``max_block_ms``."""
        deadline = time.monotonic() + self.max_block_ms / 1000
        while True:
            try:
                connection = await self.cluster.any_connection()
                try:
                    connection.api_version(ApiKey.INIT_PRODUCER_ID)
                except UnsupportedVersionError:
                    raise UnsupportedVersionError(
                        f"broker {connection.address} does not support idempotent producers "
                        "(no InitProducerId); pass enable_idempotence=False") from None
                answer = await connection.request(ApiKey.INIT_PRODUCER_ID, {
                    "transactional_id": None, "transaction_timeout": 60_000,
                    "producer_id": -1, "producer_epoch": -1})
                code = int(answer.error_code)
                if code == 0:
                    self.producer_id = int(answer.producer_id)
                    self.producer_epoch = int(answer.producer_epoch)
                    log.debug("producer id %d epoch %d", self.producer_id, self.producer_epoch)
                    return
                raise remote_error(code, "InitProducerId")
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(self.retry_backoff_s)

    async def __aenter__(self) -> AsyncProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def flush(self, timeout_ms: int | None = None) -> None:
        """Send every record buffered now and wait for their answers (errors are in each
        record's future, not raised here). KafkaTimeoutError if ``timeout_ms`` passes."""
        pending = list(self._unfinished)
        if not pending:
            return
        self._flushing += 1
        self._wakeup.set()
        try:
            done, not_done = await asyncio.wait(
                pending, timeout=None if timeout_ms is None else timeout_ms / 1000)
            if not_done:
                raise KafkaTimeoutError(f"flush did not complete in {timeout_ms} ms")
        finally:
            self._flushing -= 1

    async def close(self, timeout_ms: int | None = None) -> None:
        """Flush (up to ``timeout_ms``), fail what is left, stop, close connections."""
        if self._closed:
            return
        try:
            if self._sender is not None and timeout_ms != 0:
                await self.flush(timeout_ms)
        except KafkaTimeoutError:
            pass
        finally:
            self._closed = True
            tasks = [t for t in (self._sender, self._refreshing, self._resetting,
                                 *self._requests) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            error = ClientClosedError("producer closed before the record was sent")
            for queue in self._queues.values():
                while queue.batches:
                    self._fail_batch(queue.batches.popleft(), error)
            await self.cluster.close()

    # ---- sending ----------------------------------------------------------------------------

    async def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None,
                   partition: int | None = None, timestamp: int | None = None
                   ) -> asyncio.Future:
        """Buffer one record; returns the future of its ``RecordMetadata``.

        Waits only while the topic's metadata is unknown or ``buffer_memory`` is full.
        ``value``/``key``: bytes (str is UTF-8 encoded) or None; ``headers``: (name, value)
        pairs or a mapping; ``timestamp``: ms since the epoch (default: now).
        """
        future = self._loop.create_future()
        await self._send_into(topic, value, key, headers, partition, timestamp, future)
        return future

    async def send_and_wait(self, topic: str, value: Any = None, key: Any = None,
                            headers: Any = None, partition: int | None = None,
                            timestamp: int | None = None) -> RecordMetadata:
        """``send`` then wait for the answer."""
        return await (await self.send(topic, value, key, headers, partition, timestamp))

    async def partitions_for(self, topic: str) -> list[int]:
        """The partition ids of ``topic`` (waiting for its metadata)."""
        return sorted((await self.cluster.topic(topic, timeout_ms=self.max_block_ms)).partitions)

    async def _send_into(self, topic, value, key, headers, partition, timestamp, sink) -> None:
        if self._closed or self._sender is None:
            raise ClientClosedError("producer is closed" if self._closed
                                    else "producer is not started")
        if self._fatal is not None:
            raise self._fatal
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
        if headers:
            headers = _as_headers(headers)
            size += sum(len(n) + (len(v) if v is not None else 0) for n, v in headers)
        else:
            headers = ()
        if size + _RECORD_OVERHEAD > self.max_request_size:
            raise RecordTooLargeError(f"a record of about {size} bytes exceeds "
                                      f"max_request_size {self.max_request_size}")
        if not self._room.is_set():
            await self._wait_for_room()
        layout = self._layout(topic)
        if layout is None:
            await self.cluster.topic(topic, timeout_ms=self.max_block_ms)
            layout = self._layout(topic)
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        self._append(topic, self._choose_partition(topic, layout, key, partition),
                     value, key, headers, timestamp, sink)

    def _layout(self, topic: str) -> _TopicLayout | None:
        """The partitions of ``topic`` as the current metadata has them (None while unknown
        or leaderless), computed once per metadata snapshot."""
        snapshot = self.cluster.snapshot
        layout = self._layouts.get(topic)
        if layout is not None and layout.snapshot is snapshot:
            return layout
        topic_md = snapshot.topics.get(topic)
        if topic_md is None or not topic_md.ready:
            return None
        layout = _TopicLayout(snapshot, len(topic_md.partitions),
                              list(range(len(topic_md.partitions))),
                              [p.partition for p in topic_md.partitions.values()
                               if p.leader >= 0])
        self._layouts[topic] = layout
        return layout

    def _choose_partition(self, topic: str, layout: _TopicLayout, key,
                          partition: int | None) -> int:
        if partition is not None:
            if not 0 <= partition < layout.count:
                raise UnknownTopicOrPartitionError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    f"{topic!r} has no partition {partition} ({layout.count} partitions)")
            return partition
        if key is not None:
            return self._key_partition(key, layout.count)
        return self._sticky.partition(topic, layout.all_ids, layout.available)

    async def _wait_for_room(self) -> None:
        try:
            async with asyncio.timeout(self.max_block_ms / 1000):
                while not self._room.is_set():
                    await self._room.wait()
        except TimeoutError:
            raise KafkaTimeoutError(f"buffer_memory full for {self.max_block_ms} ms") from None

    def _append(self, topic: str, partition: int, value, key, headers, timestamp: int,
                sink) -> None:
        tp = (topic, partition)
        queue = self._queues.get(tp)
        if queue is None:
            queue = self._queues[tp] = PartitionQueue(topic, partition)
        batch = queue.open_batch()
        if batch is not None:
            before = batch.size_estimate
            if batch.try_append(value, key, headers, timestamp, sink):
                self._account(batch.size_estimate - before)
                return
            self._close_batch(batch)
        batch = self._new_batch(queue)
        if not batch.try_append(value, key, headers, timestamp, sink):
            raise RecordTooLargeError("record does not fit an empty batch")  # not reached
        self._account(batch.size_estimate)
        if batch.size_estimate >= self.batch_size:
            self._close_batch(batch)
        self._wakeup.set()

    def _new_batch(self, queue: PartitionQueue) -> ProducerBatch:
        builder = BatchBuilder(self.compression, max_batch_bytes=self.batch_size)
        batch = ProducerBatch(queue.topic, queue.partition, queue.next_sequence, builder,
                              self.delivery_timeout_s, self._loop.create_future())
        queue.next_sequence += 1
        queue.batches.append(batch)
        self._unfinished.add(batch.done)
        return batch

    def _close_batch(self, batch: ProducerBatch) -> None:
        if batch.closed:
            return
        batch.close()
        layout = self._layout(batch.topic)
        if layout is not None:
            self._sticky.on_batch_closed(batch.topic, batch.partition, layout.all_ids,
                                         layout.available)
        self._wakeup.set()

    def _account(self, delta: int) -> None:
        self._buffered_bytes += delta
        if self._buffered_bytes > self.buffer_memory:
            self._room.clear()
        elif not self._room.is_set():
            self._room.set()

    # ---- the sender -------------------------------------------------------------------------

    async def _run_sender(self) -> None:
        while not self._closed:
            self._wakeup.clear()
            next_wake = self._send_ready()
            if next_wake is None:
                await self._wakeup.wait()
                continue
            delay = next_wake - time.monotonic()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass

    def _send_ready(self) -> float | None:
        """One pass: send what is ready; expire what waited too long. Returns when the next
        pass is due (monotonic time), None to wait for a wakeup only."""
        now = time.monotonic()
        if self._reset_pending:
            return self._while_resetting(now)
        flushing = self._flushing > 0
        by_node: dict[int, list[PartitionQueue]] = {}
        next_wake: float | None = None
        need_metadata = False
        empty = []
        for tp, queue in self._queues.items():
            if not queue.batches:
                # An idle queue is dropped, but not with idempotence: it holds the
                # partition's sequence numbers for this producer id.
                if not queue.in_flight and not self.idempotent:
                    empty.append(tp)
                continue
            if not queue.sendable(now):
                if queue.retry_at > now:
                    next_wake = _earliest(next_wake, queue.retry_at)
                self._expire(queue, now)
                continue
            leader = self.cluster.leader(*tp)
            if leader < 0:
                need_metadata = True
                self._expire(queue, now)
                next_wake = _earliest(next_wake, now + self.retry_backoff_s)
                continue
            if queue.head_ready(now, self.linger_s, flushing):
                by_node.setdefault(leader, []).append(queue)
            else:
                next_wake = _earliest(next_wake, queue.batches[0].created + self.linger_s)
        for tp in empty:
            del self._queues[tp]
        if need_metadata:
            self._refresh_metadata()
        for node_id, queues in by_node.items():
            # Fill this broker's pipeline; an answer wakes the sender when it is full.
            while queues and self._in_flight[node_id] < self.max_in_flight:
                self._send_to(node_id, queues)
                queues = [q for q in queues if q.sendable(now)
                          and q.head_ready(now, self.linger_s, flushing)]
        return next_wake

    def _expire(self, queue: PartitionQueue, now: float) -> None:
        while queue.batches and queue.batches[0].deadline <= now and not queue.in_flight:
            batch = queue.batches.popleft()
            self._after_sequenced_failure(batch, "a batch expired")
            self._fail_batch(batch, KafkaTimeoutError(
                f"{batch.topic}-{batch.partition}: not delivered within delivery_timeout_ms"))

    # ---- idempotence ------------------------------------------------------------------------

    def _after_sequenced_failure(self, batch: ProducerBatch, why: str) -> None:
        """A batch that may have reached the broker with a sequence failed for good: the
        sequences after it no longer match the broker's, so reset the producer id."""
        if (self.idempotent and batch.base_sequence >= 0
                and batch.producer_id == self.producer_id and not self._closed):
            if not self._reset_pending:
                log.warning("%s-%d: %s; resetting the producer id (was %d)", batch.topic,
                            batch.partition, why, self.producer_id)
            self._reset_pending = True
            self._wakeup.set()

    def _while_resetting(self, now: float) -> float:
        """Sender pass during a producer id reset: nothing is sent; the reset starts once no
        request is in flight."""
        for queue in self._queues.values():
            self._expire(queue, now)
        if not any(self._in_flight.values()) and (self._resetting is None
                                                  or self._resetting.done()):
            self._resetting = asyncio.ensure_future(self._reset_producer_id())
        return now + self.retry_backoff_s

    async def _reset_producer_id(self) -> None:
        try:
            await self._init_producer_id()
        except KafkaError as exc:
            log.error("cannot get a new producer id (%s): failing every queued record", exc)
            for queue in self._queues.values():
                while queue.batches:
                    self._fail_batch(queue.batches.popleft(), exc)
            self._fatal = exc
            return
        for queue in self._queues.values():
            queue.reset_sequences()
        self._reset_pending = False
        log.info("new producer id %d epoch %d", self.producer_id, self.producer_epoch)
        self._wakeup.set()

    def _on_sequence_error(self, batch: ProducerBatch, code: int, answer) -> None:
        """An error answer to a batch of an idempotent producer (see the module docstring)."""
        queue = self._queue(batch)
        error = remote_error(code, getattr(answer, "error_message", None)
                             or f"{batch.topic}-{batch.partition} sequence "
                                f"{batch.base_sequence} (producer id {batch.producer_id})")
        current = (batch.producer_id, batch.producer_epoch) == (self.producer_id,
                                                                 self.producer_epoch)
        if code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER and current \
                and not queue.is_next_in_line(batch):
            self._retry_or_fail(batch, error, retriable=True)  # behind a batch being retried
            return
        if code == ErrorCode.UNKNOWN_PRODUCER_ID and current and \
                int(getattr(answer, "log_start_offset", -1)) > queue.last_acked_offset:
            # Retention removed this producer's records and so its state: a new producer id
            # and the batch again (Kafka's KIP-360 case), not an error.
            self._retry_or_fail(batch, error, retriable=True)
            self._after_sequenced_failure(batch, "the broker forgot the producer (log start "
                                                 "moved past its records)")
            return
        self._retry_or_fail(batch, error)

    def _send_to(self, node_id: int, queues: list[PartitionQueue]) -> None:
        batches: list[ProducerBatch] = []
        size = 0
        for queue in queues:
            batch = queue.batches[0]
            if batch.payload is None:
                self._close_batch(batch)
            if self.idempotent and (batch.producer_id, batch.producer_epoch) != \
                    (self.producer_id, self.producer_epoch):
                # First send under this producer id: the partition's next sequence (kept
                # if the batch waits for the next request: it stays at the queue's head).
                batch.stamp_producer(self.producer_id, self.producer_epoch,
                                     queue.next_record_sequence)
                queue.next_record_sequence = add_sequence(queue.next_record_sequence,
                                                          len(batch))
            elif batch.payload is None:
                batch.build()
            if batches and size + len(batch.payload) > self.max_request_size:
                break
            queue.batches.popleft()
            queue.in_flight += 1
            batch.attempts += 1
            size += len(batch.payload)
            batches.append(batch)
        self._in_flight[node_id] += 1
        task = asyncio.ensure_future(self._produce(node_id, batches))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _produce(self, node_id: int, batches: list[ProducerBatch]) -> None:
        try:
            try:
                connection = await self.cluster.connection(node_id)
                topic_data: dict[str, list[dict]] = {}
                for batch in batches:
                    topic_data.setdefault(batch.topic, []).append(
                        {"index": batch.partition, "records": batch.payload})
                values = {"transactional_id": None, "acks": self.acks,
                          "timeout": self.request_timeout_ms,
                          "topic_data": [{"name": t, "partition_data": p}
                                         for t, p in topic_data.items()]}
                if self.acks == 0:
                    connection.send(ApiKey.PRODUCE, values, expect_response=False)
                    for batch in batches:
                        self._complete_batch(batch, -1, -1)
                    return
                await connection.drain()
                response = await connection.send(ApiKey.PRODUCE, values)
            except KafkaError as exc:
                for batch in batches:
                    self._retry_or_fail(batch, exc)
                return
            except asyncio.CancelledError:  # close() gave up waiting for this answer
                for batch in batches:
                    self._fail_batch(batch, ClientClosedError(
                        "producer closed before the broker answered"))
                raise
            answers = {(t.name, int(p.index)): p for t in response.responses
                       for p in t.partition_responses}
            for batch in batches:
                answer = answers.get((batch.topic, batch.partition))
                if answer is None:
                    self._retry_or_fail(batch, KafkaError(
                        f"no answer for {batch.topic}-{batch.partition} in the Produce response"))
                elif int(answer.error_code) == ErrorCode.DUPLICATE_SEQUENCE_NUMBER \
                        and batch.base_sequence >= 0:
                    self._complete_batch(batch, -1, -1)  # written before; offsets unknown
                elif int(answer.error_code) and batch.base_sequence >= 0:
                    self._on_sequence_error(batch, int(answer.error_code), answer)
                elif int(answer.error_code):
                    self._retry_or_fail(batch, remote_error(
                        int(answer.error_code), getattr(answer, "error_message", None)))
                else:
                    self._complete_batch(batch, int(answer.base_offset),
                                         millis(getattr(answer, "log_append_time", None)))
        finally:
            self._in_flight[node_id] -= 1
            if not self._closed:
                self._wakeup.set()

    def _complete_batch(self, batch: ProducerBatch, base_offset: int,
                        log_append_time: int) -> None:
        queue = self._queues.get((batch.topic, batch.partition))
        if queue is not None and queue.in_flight:
            queue.in_flight -= 1
        if queue is not None and batch.base_sequence >= 0 \
                and batch.producer_id == self.producer_id:
            queue.last_acked_sequence = batch.last_sequence
            if base_offset >= 0:
                queue.last_acked_offset = base_offset + len(batch) - 1
        topic, partition = batch.topic, batch.partition
        for i, (sink, stamp) in enumerate(zip(batch.sinks, batch.timestamps)):
            _resolve(sink, RecordMetadata(topic, partition,
                                          base_offset + i if base_offset >= 0 else -1,
                                          log_append_time if log_append_time >= 0 else stamp))
        self._finish(batch)

    def _queue(self, batch: ProducerBatch) -> PartitionQueue:
        queue = self._queues.get((batch.topic, batch.partition))
        if queue is None:
            queue = self._queues[(batch.topic, batch.partition)] = \
                PartitionQueue(batch.topic, batch.partition)
        return queue

    def _retry_or_fail(self, batch: ProducerBatch, error: Exception, *,
                       retriable: bool | None = None) -> None:
        queue = self._queue(batch)
        if queue.in_flight:
            queue.in_flight -= 1
        if retriable is None:
            retriable = getattr(error, "retriable", False)
        if (retriable and not self._closed and batch.attempts <= self.retries
                and time.monotonic() < batch.deadline):
            queue.requeue(batch)
            queue.blocked_until_drained = True
            queue.retry_at = time.monotonic() + self.retry_backoff_s
            code = getattr(error, "error_code", None)
            if code is None or code in METADATA_STALE_CODES:
                self._refresh_metadata()
            return
        if queue.in_flight == 0 and not queue.batches:
            queue.blocked_until_drained = False
        self._after_sequenced_failure(batch, f"a batch failed ({error})")
        self._fail_batch(batch, error)

    def _fail_batch(self, batch: ProducerBatch, error: Exception) -> None:
        for sink in batch.sinks:
            _reject(sink, error)
        self._finish(batch)

    def _finish(self, batch: ProducerBatch) -> None:
        queue = self._queues.get((batch.topic, batch.partition))
        if queue is not None and queue.in_flight == 0:
            queue.blocked_until_drained = False
        self._account(-batch.size_estimate)
        self._unfinished.discard(batch.done)
        if not batch.done.done():
            batch.done.set_result(None)

    def _refresh_metadata(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._refreshing = asyncio.ensure_future(self._refresh_then_wake())

    async def _refresh_then_wake(self) -> None:
        try:
            await self.cluster.refresh()
        except KafkaError:
            await asyncio.sleep(self.retry_backoff_s)
        if not self._closed:
            self._wakeup.set()


def _earliest(a: float | None, b: float) -> float:
    return b if a is None or b < a else a


def _resolve(sink, result) -> None:
    try:
        if not sink.done():
            sink.set_result(result)
    except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
        pass  # cancelled by its owner meanwhile


def _reject(sink, error: Exception) -> None:
    try:
        if not sink.done():
            sink.set_exception(error)
    except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
        pass


class Producer:
    """Blocking producer: an ``AsyncProducer`` on an event loop in a background thread.

    ``send(...)`` returns a ``concurrent.futures.Future`` of ``RecordMetadata`` and blocks only
    while too many records wait to be handed to the loop. ``flush()``, ``close()``; a context
    manager. Same keyword arguments as ``AsyncProducer``.
    """

    _MAX_HANDOFF = 10_000  # records queued for the loop thread before send() blocks

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", **config):
        self._thread = LoopThread("pylog-producer")
        try:
            self._producer: AsyncProducer = self._thread.run(self._create(bootstrap, config))
        except BaseException:
            self._thread.stop()
            raise
        # Records handed from the caller's thread to the loop thread, in send order.
        self._handoff: collections.deque = collections.deque()
        self._handoff_room = threading.Semaphore(self._MAX_HANDOFF)
        self._drain_task: asyncio.Task | None = None
        self._closed = False

    @staticmethod
    async def _create(bootstrap, config) -> AsyncProducer:
        producer = AsyncProducer(bootstrap, **config)
        await producer.start()
        return producer

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None,
             partition: int | None = None, timestamp: int | None = None
             ) -> concurrent.futures.Future:
        if self._closed:
            raise ClientClosedError("producer is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._handoff_room.acquire()
        was_empty = not self._handoff
        self._handoff.append((topic, value, key, headers, partition, timestamp, future))
        if was_empty:
            self._thread.call_soon(self._start_drain)
        return future

    def _start_drain(self) -> None:
        # Runs in the loop thread, as does the end of _drain: a drain still running will see
        # the new records, so one drain at a time keeps the send order.
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._handoff:
            topic, value, key, headers, partition, timestamp, future = self._handoff.popleft()
            self._handoff_room.release()
            try:
                await self._producer._send_into(topic, value, key, headers, partition,
                                                timestamp, future)
            except Exception as exc:  # noqa: BLE001 - the error belongs to that record
                _reject(future, exc)

    def flush(self, timeout_ms: int | None = None) -> None:
        self._thread.run(self._flush_all(timeout_ms))

    async def _flush_all(self, timeout_ms: int | None) -> None:
        # Every send() before this call scheduled (or joined) the drain before this coroutine
        # was scheduled, so waiting for the drain task covers them all.
        while self._drain_task is not None and not self._drain_task.done():
            await asyncio.shield(self._drain_task)
        await self._producer.flush(timeout_ms)

    def partitions_for(self, topic: str) -> list[int]:
        return self._thread.run(self._producer.partitions_for(topic))

    def close(self, timeout_ms: int | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.run(self._close(timeout_ms))
        finally:
            self._thread.stop()

    async def _close(self, timeout_ms: int | None) -> None:
        await self._flush_all(timeout_ms)
        await self._producer.close(timeout_ms)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
