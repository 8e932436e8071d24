"""The ReplicaManager: every partition replica of this broker, and the entry points for
Produce, Fetch and ListOffsets.

Theory of operation
-------------------
Partitions follow the controller. The manager listens to it: for every partition whose
replicas include this broker it makes sure a log exists (``LogManager.get_or_create`` with
the topic's config over the broker's defaults) and hands the committed state to the
``Partition``; a partition that left the metadata (topic deleted, replica moved) is removed
and its log deleted. The reaction is level-triggered: each notification is compared with
what this broker has, so a missed or repeated notification cannot leave it wrong. A
partition directory carries the id of the topic it was created for (``partition.metadata``),
so a log left behind by a deleted topic is never served as the data of a new topic with the
same name.

Produce appends to each partition leader (the log validates and stamps the batches in the
request buffer), then answers at once (acks 0/1) or parks the request in the purgatory
until every partition's high watermark passed its last offset (acks=all). Under a flush
policy that fsyncs (fsync=always), an append hands back a durable future from the Flusher;
its completion comes back to the loop (``call_soon_threadsafe``) and only then does the
append count for the HW and for acks=1.

Fetch reads every partition at once; with fewer than min_bytes and no error it parks in the
same purgatory until an append, HW change, leader change or deletion of one of its
partitions gives it enough, or max_wait_ms passes, and then reads again. Consumers read
below the HW, followers (replica_id >= 0) below the LEO; a follower's fetch offset is its
LEO, which may move the HW (completing parked produces) and put it back in the ISR.

ISR changes: a periodic check proposes shrinking the ISR of followers that lag more than
replica.lag.time.max.ms; follower fetches propose expansions. Proposals go to the controller
in a task (a remote controller will be a network call); the committed state comes back
through the listener, and only that changes a partition's ISR.

Everything runs on the event loop thread.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

from pylog.broker.file_region import FileRegion
from pylog.broker.partition import IsrChange, Partition, PartitionError
from pylog.broker.purgatory import DelayedOperation, Purgatory
from pylog.controller.metadata import (ClusterMetadata, InvalidTopicError, MetadataError,
                                       TopicInfo)
from pylog.core import CoreError, CorruptBatchError, SegmentFullError
from pylog.protocol import ErrorCode
from pylog.storage.checkpoint import atomic_write
from pylog.storage.config import ConfigError, LogConfig
from pylog.storage.errors import (InvalidAppendError, LogClosedError, OffsetOutOfRangeError,
                                  RecordTooLargeError, StaleLeaderEpochError)
from pylog.storage.manager import LogManager
from pylog.storage.producer_state import ProducerStateError

__all__ = [
    "ReplicaManager", "ProduceResult", "FetchPartitionRequest", "FetchPartitionResult",
    "ListOffsetsResult", "PARTITION_METADATA_FILE", "LATEST_TIMESTAMP", "EARLIEST_TIMESTAMP",
    "CONSUMER_REPLICA_ID", "DEBUGGING_REPLICA_ID",
]

_default_logger = logging.getLogger("pylog.broker.replica_manager")

TopicPartition = tuple[str, int]

LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2
CONSUMER_REPLICA_ID = -1
DEBUGGING_REPLICA_ID = -2  # Kafka's: reads up to the LEO, from any replica
PARTITION_METADATA_FILE = "partition.metadata"


# ---- request and result values --------------------------------------------------------------

@dataclass(slots=True)
class ProduceResult:
    error_code: int
    base_offset: int = -1
    log_append_time: int = -1
    log_start_offset: int = -1
    error_message: str | None = None


@dataclass(slots=True)
class FetchPartitionRequest:
    topic: str
    partition: int
    fetch_offset: int
    partition_max_bytes: int
    current_leader_epoch: int = -1
    log_start_offset: int = -1


@dataclass(slots=True)
class FetchPartitionResult:
    topic: str
    partition: int
    error_code: int
    high_watermark: int = -1
    last_stable_offset: int = -1
    log_start_offset: int = -1
    records: "bytes | memoryview | FileRegion" = b""
    """The log's bytes, or (``fetch(..., zero_copy=True)``) a FileRegion the caller owns
    and must close (or send, which closes it)."""
    preferred_read_replica: int = -1


@dataclass(slots=True)
class ListOffsetsResult:
    error_code: int
    timestamp: int = -1
    offset: int = -1
    leader_epoch: int = -1


# ---- delayed operations ---------------------------------------------------------------------

class DelayedProduce(DelayedOperation):
    """A produce waiting for its partitions' HW (acks=all) or local durability (acks=1).

    ``waiting`` maps each partition still waiting to (partition, offset it waits for,
    leader epoch of its append); ``results`` holds every partition's answer and is the
    operation's result.
    """

    __slots__ = ("acks", "waiting", "results")

    def __init__(self, acks: int, waiting: dict[TopicPartition, tuple[Partition, int, int]],
                 results: dict[TopicPartition, ProduceResult]):
        super().__init__()
        self.acks = acks
        self.waiting = waiting
        self.results = results

    def try_complete(self) -> bool:
        for tp, (partition, required_offset, epoch) in list(self.waiting.items()):
            code = partition.produce_status(required_offset, epoch, self.acks)
            if code is None:
                continue
            if code:
                self._set_error(tp, code)
            del self.waiting[tp]
        if self.waiting:
            return False
        return self.finish(self.results)

    def on_expire(self) -> None:
        for tp in self.waiting:
            self._set_error(tp, ErrorCode.REQUEST_TIMED_OUT)
        self.waiting = {}
        self.finish(self.results)

    def on_close(self) -> None:
        for tp in self.waiting:
            self._set_error(tp, ErrorCode.NOT_LEADER_OR_FOLLOWER,
                            "the broker is shutting down")
        self.waiting = {}
        self.finish(self.results)

    def _set_error(self, tp: TopicPartition, code: int, message: str | None = None) -> None:
        # The base offset stays: the data was appended (Kafka answers the same way).
        self.results[tp] = dataclasses.replace(self.results[tp], error_code=code,
                                               error_message=message)


class DelayedFetch(DelayedOperation):
    """A fetch waiting for min_bytes. Its result is None: the fetch reads again when done."""

    __slots__ = ("manager", "replica_id", "min_bytes", "requests", "partitions")

    def __init__(self, manager: "ReplicaManager", replica_id: int, min_bytes: int,
                 requests: list[FetchPartitionRequest],
                 partitions: list[tuple[Partition, int]]):
        super().__init__()
        self.manager = manager
        self.replica_id = replica_id
        self.min_bytes = min_bytes
        self.requests = requests
        # (partition, leader epoch) seen by the first read, per request.
        self.partitions = partitions

    def try_complete(self) -> bool:
        from_follower = self.replica_id >= 0
        available = 0
        lookup = self.manager._partitions
        for request, (partition, epoch) in zip(self.requests, self.partitions):
            if (lookup.get((request.topic, request.partition)) is not partition
                    or partition.leader_epoch != epoch
                    or partition.check_fetch(self.replica_id, request.current_leader_epoch)):
                return self.finish(None)  # the answer changed: an error to report
            offset = request.fetch_offset
            if not partition.log_start_offset <= offset <= partition.log_end_offset:
                return self.finish(None)  # now out of range (retention, truncation)
            end = partition.log_end_offset if from_follower else partition.high_watermark
            if end > offset:
                if self.min_bytes <= 1:
                    return self.finish(None)
                available += partition.fetchable_bytes(offset, request.partition_max_bytes,
                                                       from_follower=from_follower)
                if available >= self.min_bytes:
                    return self.finish(None)
        return False

    def on_expire(self) -> None:
        self.finish(None)


# ---- the manager ----------------------------------------------------------------------------

class ReplicaManager:
    """All partition replicas of broker ``node_id``.

    ``clock``: monotonic seconds (replica lag); purgatory deadlines use the event loop's
    clock. ``loop``: the event loop (default: the running one, taken when first needed).
    """

    def __init__(self, node_id: int, log_manager: LogManager, controller, *,
                 clock: Callable[[], float] = time.monotonic,
                 loop: asyncio.AbstractEventLoop | None = None,
                 replica_lag_time_max_ms: int = 30000,
                 checkpoint_interval_ms: int = 5000,
                 logger: logging.Logger | None = None):
        self.node_id = node_id
        self.log_manager = log_manager
        self.controller = controller
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self.checkpoint_interval_ms = checkpoint_interval_ms
        self.logger = logger or _default_logger
        self._clock = clock
        self._loop = loop
        # Invariant: exactly the partitions of the last applied metadata that have this
        # broker among their replicas, each over the open log of its topic-partition.
        self._partitions: dict[TopicPartition, Partition] = {}
        self._purgatory = Purgatory("replica-manager", loop=loop)
        self._isr_tasks: set[asyncio.Task] = set()
        # Durable futures of appends whose fsync has not completed (see _watch_flush).
        self._inflight_flushes: set[Future] = set()
        self._background: list[asyncio.Task] = []
        self._closed = False
        controller.add_listener(self.on_metadata)
        self.on_metadata(controller.metadata)

    # ---- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic work (ISR expiry, HW checkpoints). Call on the running loop."""
        loop = self._event_loop()
        if self._background:
            return
        self._background = [
            loop.create_task(self._every(self.replica_lag_time_max_ms / 2,
                                         self.maybe_shrink_isr), name="pylog-isr-expiry"),
            loop.create_task(self._every(self.checkpoint_interval_ms, self._checkpoint),
                             name="pylog-hw-checkpoint"),
        ]

    async def close(self) -> None:
        """Stop: answer parked fetches with what there is, let the fsyncs in flight finish
        (the produces waiting for them succeed), answer the produces still waiting for
        replicas with NOT_LEADER_OR_FOLLOWER, write the checkpoints. New requests are
        refused (produce) or answered without waiting (fetch). The LogManager stays open:
        its owner closes it afterwards (that flushes every log and sets the clean-shutdown
        marker)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.controller.remove_listener(self.on_metadata)
        except ValueError:
            pass
        for task in self._background:
            task.cancel()
        tasks = self._background + list(self._isr_tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._background = []
        for op in self._purgatory.operations():
            if isinstance(op, DelayedFetch):
                op.finish(None)
        if self._inflight_flushes:
            await asyncio.wait([asyncio.wrap_future(f) for f in self._inflight_flushes])
            await asyncio.sleep(0)  # their completions were queued first: let them run
        self._purgatory.close()
        try:
            await asyncio.wrap_future(self.log_manager.checkpoint(background=True))
        except Exception as e:
            self.logger.error("checkpoint at shutdown failed: %s", e)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- partitions ----------------------------------------------------------------------

    def partition(self, topic: str, partition: int) -> Partition | None:
        return self._partitions.get((topic, partition))

    def partitions(self) -> list[Partition]:
        return list(self._partitions.values())

    @property
    def purgatory(self) -> Purgatory:
        return self._purgatory

    # ---- produce -------------------------------------------------------------------------

    async def produce(self, acks: int, timeout_ms: int,
                      entries: Mapping[TopicPartition, memoryview], *,
                      allow_auto_create: bool = False) -> dict[TopicPartition, ProduceResult]:
        """Append each partition's batches; the answer per partition (module doc).
        ``allow_auto_create``: create an unknown topic (valid name) with the controller's
        defaults first, instead of answering UNKNOWN_TOPIC_OR_PARTITION."""
        if acks not in (0, 1, -1):
            return {tp: ProduceResult(ErrorCode.INVALID_REQUIRED_ACKS,
                                      error_message=f"acks must be 0, 1 or -1, not {acks}")
                    for tp in entries}
        results: dict[TopicPartition, ProduceResult] = {}
        waiting: dict[TopicPartition, tuple[Partition, int, int]] = {}
        for tp, records in entries.items():
            results[tp] = self._append(tp, records, acks, allow_auto_create, waiting)
        if acks == 0 or not waiting:
            return results
        op = DelayedProduce(acks, waiting, results)
        future = self._purgatory.watch(op, list(waiting), timeout_ms / 1000)
        if not future.done():
            try:
                await future
            except asyncio.CancelledError:
                self._purgatory.cancel(op)
                raise
        return results

    def _append(self, tp: TopicPartition, records, acks: int, allow_auto_create: bool,
                waiting: dict) -> ProduceResult:
        partition = self._partitions.get(tp)
        if partition is None and allow_auto_create and not self._closed:
            refused = self._auto_create(tp[0])
            if refused is not None:
                return refused
            partition = self._partitions.get(tp)
        if partition is None:
            return ProduceResult(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                 error_message=f"{tp[0]}-{tp[1]} is not hosted here")
        if self._closed:
            return ProduceResult(ErrorCode.NOT_LEADER_OR_FOLLOWER,
                                 error_message="the broker is shutting down")
        if records is None or len(records) == 0:
            return ProduceResult(ErrorCode.INVALID_RECORD, error_message="no record batch")
        view = memoryview(records)
        if view.readonly:  # offsets are stamped in place: work on a copy
            view = memoryview(bytearray(view))
        try:
            result = partition.append_as_leader(view, acks)
        except PartitionError as e:
            return ProduceResult(e.error_code, error_message=str(e))
        except CorruptBatchError as e:
            return ProduceResult(ErrorCode.CORRUPT_MESSAGE, error_message=str(e))
        except RecordTooLargeError as e:
            return ProduceResult(ErrorCode.MESSAGE_TOO_LARGE, error_message=str(e))
        except SegmentFullError as e:  # one batch larger than a whole segment
            return ProduceResult(ErrorCode.MESSAGE_TOO_LARGE, error_message=str(e))
        except InvalidAppendError as e:
            return ProduceResult(ErrorCode.INVALID_RECORD, error_message=str(e))
        except StaleLeaderEpochError as e:
            self.logger.warning("%s-%d: %s", tp[0], tp[1], e)
            return ProduceResult(ErrorCode.NOT_LEADER_OR_FOLLOWER, error_message=str(e))
        except ProducerStateError as e:  # 45, 47, 59; the log start lets a client tell a
            # producer removed with old data (KAFKA-5793) from a real loss
            self.logger.info("%s-%d: %s", tp[0], tp[1], e)
            return ProduceResult(e.error_code, log_start_offset=partition.log_start_offset,
                                 error_message=str(e))
        except LogClosedError as e:
            return ProduceResult(ErrorCode.NOT_LEADER_OR_FOLLOWER, error_message=str(e))
        except OSError as e:  # includes CoreIOError: the log may be damaged on disk
            self.logger.error("%s-%d: append failed, partition offline: %s", tp[0], tp[1], e)
            partition.mark_offline(f"append failed: {e}")
            self._purgatory.check(tp)
            return ProduceResult(ErrorCode.KAFKA_STORAGE_ERROR, error_message=str(e))
        except Exception as e:  # a bug: this partition fails, the others go on
            self.logger.exception("%s-%d: append failed", tp[0], tp[1])
            return ProduceResult(ErrorCode.UNKNOWN_SERVER_ERROR, error_message=str(e))
        if result.durable is not None:
            self._watch_flush(partition, result.durable)
        self._purgatory.check(tp)  # new data (and maybe a new HW) for parked fetches
        answer = ProduceResult(ErrorCode.NONE, base_offset=result.first_offset,
                               log_append_time=result.log_append_time,
                               log_start_offset=result.log_start_offset)
        # A duplicate (an idempotent retry: the original offsets, nothing written) waits like
        # its original would: acks=1 for the local fsync the flush policy may still owe it.
        if acks == -1 or (acks == 1 and (result.durable is not None or result.duplicate)):
            waiting[tp] = (partition, result.next_offset, partition.leader_epoch)
        return answer

    def _auto_create(self, topic: str) -> ProduceResult | None:
        """Create ``topic`` with the controller's defaults unless it exists; the answer for
        the partition if that was refused (INVALID_TOPIC_EXCEPTION for a bad name,
        UNKNOWN_TOPIC_OR_PARTITION otherwise), else None."""
        if topic in self.controller.metadata.topics:
            return None
        try:
            self.controller.create_topic(topic)
        except MetadataError as e:
            self.logger.info("auto-create of topic %r refused: %s", topic, e)
            code = e.error_code if isinstance(e, InvalidTopicError) \
                else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            return ProduceResult(code, error_message=f"auto-create refused: {e}")
        return None

    def _watch_flush(self, partition: Partition, durable: Future) -> None:
        loop = self._event_loop()

        def done(future: Future) -> None:  # on the Flusher thread (or here, if done)
            try:
                loop.call_soon_threadsafe(self._on_flush_done, partition, future)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        self._inflight_flushes.add(durable)
        durable.add_done_callback(done)

    def _on_flush_done(self, partition: Partition, future: Future) -> None:
        self._inflight_flushes.discard(future)
        if future.cancelled():
            error: BaseException | None = LogClosedError("flush cancelled")
        else:
            error = future.exception()
        if error is None:
            partition.on_flushed(future.result())
        else:
            if not partition.deleted:
                self.logger.error("%s-%d: fsync failed, partition offline: %s",
                                  partition.topic, partition.index, error)
            partition.on_flush_failed(error)
        self._purgatory.check((partition.topic, partition.index))

    # ---- fetch ---------------------------------------------------------------------------

    async def fetch(self, replica_id: int, max_wait_ms: int, min_bytes: int, max_bytes: int,
                    isolation_level: int, requests: list[FetchPartitionRequest], *,
                    zero_copy: bool = False) -> list[FetchPartitionResult]:
        """Read each requested partition (module doc); long-polls up to ``max_wait_ms`` for
        ``min_bytes``. Results in request order. ``isolation_level`` changes nothing while
        there are no transactions (last stable offset = HW). ``zero_copy``: records are
        FileRegions (fetch.send.mode=sendfile), owned by the caller."""
        results, total, has_error = self._read_all(replica_id, max_bytes, requests, zero_copy)
        if (has_error or total >= min_bytes or max_wait_ms <= 0 or not requests
                or self._closed):
            return results
        if zero_copy:  # this read is dropped; the one after the wait is answered
            _close_regions(results)
        keys = [(r.topic, r.partition) for r in requests]
        seen = [(p, p.leader_epoch) for p in map(self._partitions.__getitem__, keys)]
        op = DelayedFetch(self, replica_id, min_bytes, requests, seen)
        future = self._purgatory.watch(op, keys, max_wait_ms / 1000)
        if not future.done():
            try:
                await future
            except asyncio.CancelledError:
                self._purgatory.cancel(op)
                raise
        results, _, _ = self._read_all(replica_id, max_bytes, requests, zero_copy)
        return results

    def _read_all(self, replica_id: int, max_bytes: int,
                  requests: list[FetchPartitionRequest], zero_copy: bool = False
                  ) -> tuple[list[FetchPartitionResult], int, bool]:
        """(results, bytes read, whether any partition had an error)."""
        from_follower = replica_id >= 0
        now_ms = self._clock() * 1000 if from_follower else 0.0
        results = []
        total = 0
        remaining = max_bytes
        has_error = False
        for request in requests:
            result = self._read_one(request, replica_id, from_follower, now_ms,
                                    remaining, total == 0, zero_copy)
            if result.error_code:
                has_error = True
            elif result.records:
                total += len(result.records)
                remaining -= len(result.records)
            results.append(result)
        return results, total, has_error

    def _read_one(self, request: FetchPartitionRequest, replica_id: int, from_follower: bool,
                  now_ms: float, remaining: int, first: bool,
                  zero_copy: bool = False) -> FetchPartitionResult:
        topic, index = request.topic, request.partition
        partition = self._partitions.get((topic, index))
        if partition is None:
            return FetchPartitionResult(topic, index, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        code = partition.check_fetch(replica_id, request.current_leader_epoch)
        if code:
            return FetchPartitionResult(topic, index, code)
        try:
            if from_follower:
                moved, change = partition.update_follower_fetch_state(
                    replica_id, request.fetch_offset, request.log_start_offset, now_ms)
                if change is not None:
                    self._submit_isr_change(partition, change)
                if moved:
                    self._purgatory.check((topic, index))
            read = partition.read_records(
                request.fetch_offset, min(request.partition_max_bytes, remaining),
                from_follower=from_follower, min_one_batch=first, with_data=not zero_copy)
            records = read.data or b""
            if zero_copy and read.length:
                try:
                    records = FileRegion.of_segment(read.segment, read.position, read.length)
                except (ValueError, OSError):  # the segment was closed since (retention),
                    # or no descriptor is left (EMFILE): read again, copying
                    read = partition.read_records(
                        request.fetch_offset, min(request.partition_max_bytes, remaining),
                        from_follower=from_follower, min_one_batch=first)
                    records = read.data or b""
        except OffsetOutOfRangeError:
            return FetchPartitionResult(topic, index, ErrorCode.OFFSET_OUT_OF_RANGE)
        except PartitionError as e:
            return FetchPartitionResult(topic, index, e.error_code)
        except LogClosedError:
            return FetchPartitionResult(topic, index, ErrorCode.NOT_LEADER_OR_FOLLOWER)
        except OSError as e:
            self.logger.error("%s-%d: read failed, partition offline: %s", topic, index, e)
            partition.mark_offline(f"read failed: {e}")
            return FetchPartitionResult(topic, index, ErrorCode.KAFKA_STORAGE_ERROR)
        except CoreError as e:  # the segment files contradict themselves
            self.logger.error("%s-%d: read at %d failed: %s", topic, index,
                              request.fetch_offset, e)
            return FetchPartitionResult(topic, index, ErrorCode.KAFKA_STORAGE_ERROR)
        hw = partition.high_watermark
        return FetchPartitionResult(topic, index, ErrorCode.NONE, hw, hw,
                                    partition.log_start_offset, records)

    # ---- list offsets --------------------------------------------------------------------

    def list_offsets(self, topic: str, partition: int, timestamp: int, isolation_level: int,
                     current_leader_epoch: int = -1, *,
                     replica_id: int = CONSUMER_REPLICA_ID) -> ListOffsetsResult:
        """ListOffsets for one partition: LATEST (-1) = HW (the LEO for replica_id != -1),
        EARLIEST (-2) = log start, a timestamp >= 0 = first offset (below that limit) whose
        timestamp is at least it, or offset -1 if none."""
        p = self._partitions.get((topic, partition))
        if p is None:
            return ListOffsetsResult(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        if p.deleted:
            return ListOffsetsResult(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
        if p.offline_reason is not None:
            return ListOffsetsResult(ErrorCode.KAFKA_STORAGE_ERROR)
        code = p.check_leader_epoch(current_leader_epoch)
        if code:
            return ListOffsetsResult(code)
        if replica_id != DEBUGGING_REPLICA_ID and not p.is_leader:
            return ListOffsetsResult(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        limit = p.high_watermark if replica_id == CONSUMER_REPLICA_ID else p.log_end_offset
        if timestamp == LATEST_TIMESTAMP:
            return ListOffsetsResult(ErrorCode.NONE, -1, limit, p.leader_epoch)
        epochs = p.log.epoch_cache
        if timestamp == EARLIEST_TIMESTAMP:
            start = p.log_start_offset
            epoch = epochs.epoch_for_offset(start)
            return ListOffsetsResult(ErrorCode.NONE, -1, start, -1 if epoch is None else epoch)
        if timestamp < 0:
            return ListOffsetsResult(ErrorCode.INVALID_REQUEST)
        try:
            found = p.log.offset_for_timestamp(timestamp)
        except LogClosedError:
            return ListOffsetsResult(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        except (OSError, CoreError) as e:
            self.logger.error("%s-%d: lookup of timestamp %d failed: %s", topic, partition,
                              timestamp, e)
            return ListOffsetsResult(ErrorCode.KAFKA_STORAGE_ERROR)
        if found is None or found[0] >= limit:
            return ListOffsetsResult(ErrorCode.NONE, -1, -1, -1)
        offset, stamp = found
        epoch = epochs.epoch_for_offset(offset)
        return ListOffsetsResult(ErrorCode.NONE, stamp, offset, -1 if epoch is None else epoch)

    # ---- following the controller --------------------------------------------------------

    def on_metadata(self, md: ClusterMetadata) -> None:
        """Make the local partitions match ``md`` (the controller's listener)."""
        if self._closed:
            return
        now_ms = self._clock() * 1000
        wanted: set[TopicPartition] = set()
        for topic in md.topics.values():
            config = None
            for state in topic.partitions.values():
                if self.node_id not in state.replicas:
                    continue
                tp = (topic.name, state.partition)
                wanted.add(tp)
                if config is None:
                    config = self._log_config(topic)
                try:
                    partition = self._ensure_partition(topic, state.partition, config)
                except Exception:
                    self.logger.exception("%s-%d: cannot open its log", *tp)
                    continue
                if partition.apply_state(state, now_ms):
                    self._purgatory.check(tp)
        for tp in [tp for tp in self._partitions if tp not in wanted]:
            self._remove_partition(tp)

    def _log_config(self, topic: TopicInfo) -> LogConfig:
        base = self.log_manager.default_config
        try:
            return LogConfig.from_kafka(topic.configs, base=base)
        except ConfigError as e:
            self.logger.error("topic %s: stored config refused (%s); using the defaults",
                              topic.name, e)
            return base

    def _ensure_partition(self, topic: TopicInfo, index: int, config: LogConfig) -> Partition:
        tp = (topic.name, index)
        partition = self._partitions.get(tp)
        if partition is not None and partition.topic_id != topic.topic_id:
            self._remove_partition(tp)  # deleted and re-created between two notifications
            partition = None
        if partition is not None:
            if partition.log.config != config:
                self.log_manager.get_or_create(topic.name, index, config)
            return partition
        log = self.log_manager.get_or_create(topic.name, index, config)
        stored = read_partition_topic_id(log.directory)
        if stored is not None and stored != topic.topic_id:
            self.logger.warning("%s-%d: the log on disk belongs to topic id %s, not %s (a "
                                "deleted topic of the same name): deleting it", topic.name,
                                index, stored, topic.topic_id)
            self.log_manager.delete(topic.name, index)
            log = self.log_manager.get_or_create(topic.name, index, config)
            stored = None
        if stored is None:
            write_partition_topic_id(log.directory, topic.topic_id)
        partition = Partition(topic.name, index, log, local_id=self.node_id,
                              topic_id=topic.topic_id)
        self._partitions[tp] = partition
        return partition

    def _remove_partition(self, tp: TopicPartition) -> None:
        partition = self._partitions.pop(tp)
        partition.deleted = True
        self._purgatory.check(tp)  # waiters answer UNKNOWN_TOPIC_OR_PARTITION
        try:
            self.log_manager.delete(*tp)
        except Exception:
            self.logger.exception("%s-%d: deleting its log failed", *tp)

    # ---- ISR -----------------------------------------------------------------------------

    def maybe_shrink_isr(self) -> int:
        """Propose removing lagging followers from every led partition's ISR; returns the
        number of proposals sent."""
        now_ms = self._clock() * 1000
        sent = 0
        for partition in list(self._partitions.values()):
            change = partition.maybe_shrink_isr(now_ms, self.replica_lag_time_max_ms)
            if change is not None:
                self._submit_isr_change(partition, change)
                sent += 1
        return sent

    def _submit_isr_change(self, partition: Partition, change: IsrChange) -> None:
        task = self._event_loop().create_task(self._alter_partition(partition, change))
        self._isr_tasks.add(task)
        task.add_done_callback(self._isr_tasks.discard)

    async def _alter_partition(self, partition: Partition, change: IsrChange) -> None:
        try:
            self.controller.alter_partition(
                change.topic, change.partition, change.new_isr, change.partition_epoch,
                leader_id=self.node_id, leader_epoch=change.leader_epoch)
        except MetadataError as e:
            self.logger.info("%s-%d: ISR change to %s refused: %s", change.topic,
                             change.partition, list(change.new_isr), e)
        except Exception:
            self.logger.exception("%s-%d: ISR change to %s failed", change.topic,
                                  change.partition, list(change.new_isr))
        # Committed: the listener applied it already and this is a no-op. Refused or lost:
        # the partition may propose again.
        partition.abort_isr_change(change)
        self._purgatory.check((change.topic, change.partition))

    async def wait_for_isr_changes(self) -> None:
        """Wait until every ISR proposal sent so far has been answered (tests, shutdown)."""
        while self._isr_tasks:
            await asyncio.gather(*list(self._isr_tasks), return_exceptions=True)

    # ---- internals -----------------------------------------------------------------------

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def _every(self, interval_ms: float, action: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                self.logger.exception("periodic %r failed", action)

    async def _checkpoint(self) -> None:
        await asyncio.wrap_future(self.log_manager.checkpoint(background=True))


# ---- the topic id of a partition directory --------------------------------------------------

def _close_regions(results: list[FetchPartitionResult]) -> None:
    for result in results:
        if isinstance(result.records, FileRegion):
            result.records.close()


def read_partition_topic_id(directory: str) -> uuid.UUID | None:
    """The topic id recorded in ``directory``/partition.metadata; None if absent or
    unreadable (then the log is adopted by whoever asks for it)."""
    try:
        with open(os.path.join(directory, PARTITION_METADATA_FILE), "rb") as f:
            text = f.read(4096).decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return None
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    if fields.get("version") != "0":
        return None
    try:
        return uuid.UUID(fields.get("topic_id", ""))
    except ValueError:
        return None


def write_partition_topic_id(directory: str, topic_id: uuid.UUID) -> None:
    """Record ``topic_id`` in ``directory``/partition.metadata (Kafka's file, with the
    id in its canonical text form)."""
    atomic_write(os.path.join(directory, PARTITION_METADATA_FILE),
                 f"version: 0\ntopic_id: {topic_id}\n".encode())
