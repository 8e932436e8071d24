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
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pylog.client.accumulator import PartitionQueue, ProducerBatch
from pylog.client.errors import (
    METADATA_STALE_CODES,
    ClientClosedError,
    KafkaError,
    KafkaTimeoutError,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
    remote_error,
)
from pylog.client.loop_thread import LoopThread
from pylog.client.messages import millis
from pylog.client.metadata import Cluster
from pylog.client.partitioner import KEY_PARTITIONERS, StickyPartitioner
from pylog.protocol import ApiKey, ErrorCode
from pylog.records import BatchBuilder, Compression

_ACKS = {0: 0, 1: 1, -1: -1, "all": -1, "0": 0, "1": 1, "-1": -1}
_RECORD_OVERHEAD = 64  # bytes a record may add around its key, value and headers


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
    """

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", *,
                 acks: int | str = 1, linger_ms: float = 5, batch_size: int = 16384,
                 compression: str | int | None = None, retries: int = 2_147_483_647,
                 retry_backoff_ms: int = 100, request_timeout_ms: int = 30_000,
                 delivery_timeout_ms: int = 120_000, max_block_ms: int = 60_000,
                 partitioner: str = "murmur2", max_in_flight: int = 5,
                 max_request_size: int = 1_048_576, buffer_memory: int = 32 << 20,
                 enable_idempotence: bool = False, client_id: str = "pylog-producer",
                 connect_timeout_ms: int = 10_000):
        if acks not in _ACKS:
            raise ValueError(f"acks must be 0, 1 or 'all'/-1, not {acks!r}")
        if enable_idempotence:
            raise ValueError("enable_idempotence is not supported yet")
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

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the cluster (raises KafkaConnectionError if no bootstrap server answers)
        and start the sender."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._room.set()
        self._wakeup = asyncio.Event()
        await self.cluster.refresh()
        self._sender = asyncio.ensure_future(self._run_sender())

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
            for task in (self._sender, self._refreshing, *self._requests):
                if task is not None:
                    task.cancel()
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
        value = _as_bytes(value, "value")
        key = _as_bytes(key, "key")
        header_list = _as_headers(headers)
        size = ((len(value) if value is not None else 0) + (len(key) if key is not None else 0)
                + sum(len(n) + (len(v) if v is not None else 0) for n, v in header_list)
                + _RECORD_OVERHEAD)
        if size > self.max_request_size:
            raise RecordTooLargeError(f"a record of about {size} bytes exceeds "
                                      f"max_request_size {self.max_request_size}")
        if not self._room.is_set():
            await self._wait_for_room()
        topic_md = self.cluster.snapshot.topics.get(topic)
        if topic_md is None or not topic_md.ready:
            topic_md = await self.cluster.topic(topic, timeout_ms=self.max_block_ms)
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        self._append(topic, self._choose_partition(topic, topic_md, key, partition),
                     value, key, header_list, timestamp, sink)

    def _choose_partition(self, topic: str, topic_md, key, partition: int | None) -> int:
        count = len(topic_md.partitions)
        if partition is not None:
            if partition not in topic_md.partitions:
                raise UnknownTopicOrPartitionError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    f"{topic!r} has no partition {partition} ({count} partitions)")
            return partition
        if key is not None:
            return self._key_partition(bytes(key), count)
        all_ids = list(range(count))
        available = [p.partition for p in topic_md.partitions.values() if p.leader >= 0]
        return self._sticky.partition(topic, all_ids, available)

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
        topic_md = self.cluster.snapshot.topics.get(batch.topic)
        if topic_md is not None:
            all_ids = list(range(len(topic_md.partitions)))
            available = [p.partition for p in topic_md.partitions.values() if p.leader >= 0]
            self._sticky.on_batch_closed(batch.topic, batch.partition, all_ids, available)
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
        flushing = self._flushing > 0
        by_node: dict[int, list[PartitionQueue]] = {}
        next_wake: float | None = None
        need_metadata = False
        empty = []
        for tp, queue in self._queues.items():
            if not queue.batches:
                if not queue.in_flight:
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
            self._fail_batch(batch, KafkaTimeoutError(
                f"{batch.topic}-{batch.partition}: not delivered within delivery_timeout_ms"))

    def _send_to(self, node_id: int, queues: list[PartitionQueue]) -> None:
        batches: list[ProducerBatch] = []
        size = 0
        for queue in queues:
            batch = queue.batches[0]
            if batch.payload is None:
                self._close_batch(batch)
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
            answers = {(t.name, int(p.index)): p for t in response.responses
                       for p in t.partition_responses}
            for batch in batches:
                answer = answers.get((batch.topic, batch.partition))
                if answer is None:
                    self._retry_or_fail(batch, KafkaError(
                        f"no answer for {batch.topic}-{batch.partition} in the Produce response"))
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
        topic, partition = batch.topic, batch.partition
        for i, (sink, stamp) in enumerate(zip(batch.sinks, batch.timestamps)):
            _resolve(sink, RecordMetadata(topic, partition,
                                          base_offset + i if base_offset >= 0 else -1,
                                          log_append_time if log_append_time >= 0 else stamp))
        self._finish(batch)

    def _retry_or_fail(self, batch: ProducerBatch, error: Exception) -> None:
        queue = self._queues.get((batch.topic, batch.partition))
        if queue is None:
            queue = self._queues[(batch.topic, batch.partition)] = \
                PartitionQueue(batch.topic, batch.partition)
        if queue.in_flight:
            queue.in_flight -= 1
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
