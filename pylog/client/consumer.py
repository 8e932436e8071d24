"""The native consumer: ``AsyncConsumer`` (asyncio) and ``Consumer`` (blocking).

Partitions come from ``assign`` (manual) or, with a ``group_id``, from ``subscribe``: the
consumer then joins the group and its partitions are the ones the group's leader assigns
(``pylog.client.membership`` runs the protocol; rebalances happen inside ``getmany``). With a
group id, a newly assigned partition starts at the group's committed offset, else per
``auto_offset_reset``; positions are committed with ``commit``/``commit_async`` or
automatically (``enable_auto_commit``).

Theory of operation. Each assigned partition has a ``_PartitionState``: ``position`` (the
next offset ``getmany`` returns; None while it must be looked up with ListOffsets, following
``reset_to``), ``fetch_offset`` (the next offset to fetch: the position plus whatever is
already buffered), a buffer of decoded records and a ``seek_epoch`` bumped by every seek, so a
Fetch answer that left before a seek is recognised and dropped.

Fetching is driven by ``_maybe_fetch``, run whenever something may have become fetchable
(``getmany``, an answer, an assignment, a seek, a metadata refresh, a position reset); it
sends nothing while a group rebalance is under way (``_rebalancing``). It
sends one long-poll Fetch per leader broker that has none in flight, for that broker's
partitions whose position is known and whose buffer holds less than
``max_partition_fetch_bytes`` (so the next fetch overlaps the caller's work on the previous
one). Answers are decoded (``decode.decode_fetched``) into the buffers. Per-partition errors:
OFFSET_OUT_OF_RANGE resets the position per ``auto_offset_reset`` (or is raised by the next
``getmany`` with "error"); errors meaning stale metadata (NOT_LEADER_OR_FOLLOWER, ...) and
lost connections refresh the metadata and retry after ``retry_backoff_ms`` on the new
leader; other errors are raised by the next ``getmany``.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from pylog.client.assignors import resolve_assignors
from pylog.client.coordinator import OffsetAndMetadata
from pylog.client.decode import ConsumerRecord, decode_fetched
from pylog.client.errors import (
    METADATA_STALE_CODES,
    ClientClosedError,
    KafkaError,
    KafkaTimeoutError,
    NoOffsetForPartitionError,
    remote_error,
)
from pylog.client.loop_thread import LoopThread
from pylog.client.membership import (
    CallbackListener,
    ConsumerRebalanceListener,
    GroupMembership,
)
from pylog.client.metadata import Cluster
from pylog.protocol import ApiKey, ErrorCode

EARLIEST = -2   # ListOffsets timestamps (Kafka's sentinels)
LATEST = -1
COMMITTED = -3  # reset_to: the group's committed offset first, then auto_offset_reset
_RESETS = {"earliest": EARLIEST, "latest": LATEST, "error": None}


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class OffsetAndTimestamp(NamedTuple):
    offset: int
    timestamp: int


class _PartitionState:
    __slots__ = ("position", "reset_to", "fetch_offset", "chunks", "buffered_bytes",
                 "seek_epoch", "in_flight", "retry_at", "high_watermark", "log_start_offset",
                 "last_stable_offset")

    def __init__(self, reset_to: int | None):
        self.position: int | None = None   # next offset to return; None = look it up
        # EARLIEST / LATEST / COMMITTED / None (= raise) when looked up
        self.reset_to = reset_to
        self.fetch_offset = -1             # next offset to fetch (>= position), once known
        # Decoded records not yet returned: lists, each consumed from its front.
        self.chunks: collections.deque[list[ConsumerRecord]] = collections.deque()
        self.buffered_bytes = 0            # wire bytes behind the records in chunks
        self.seek_epoch = 0                # bumped by each seek/reset; stale answers dropped
        self.in_flight = False             # a Fetch including this partition is unanswered
        self.retry_at = 0.0                # monotonic time before which it is not fetched
        self.high_watermark = -1
        self.log_start_offset = -1
        self.last_stable_offset = -1

    def clear_buffer(self) -> None:
        self.chunks.clear()
        self.buffered_bytes = 0
        self.seek_epoch += 1


class AsyncConsumer:
    """Read assigned partitions, or the partitions a consumer group assigns (``group_id``
    and ``subscribe``). See the module docstring.

    ``await start()`` (or ``async with``), then ``assign``/``assign_topic`` (optionally
    ``seek``) or ``subscribe``; then ``await getmany(...)`` or ``async for record in
    consumer``; with a group, ``commit``/``commit_async`` (or auto-commit).

    Group options (the Java client's names and defaults): ``session_timeout_ms``,
    ``heartbeat_interval_ms`` (default 3000, or a third of a shorter session timeout),
    ``max_poll_interval_ms`` (also the rebalance timeout sent in
    JoinGroup unless ``rebalance_timeout_ms`` is given), ``enable_auto_commit``,
    ``auto_commit_interval_ms``, ``partition_assignment_strategy`` (names among "range",
    "roundrobin", or assignor objects, in preference order), ``group_instance_id`` (static
    membership). Rebalance callbacks: ``listener`` (a ``ConsumerRebalanceListener``) or
    ``on_assign`` / ``on_revoke`` / ``on_lost`` callables taking a set of partitions; they
    may be coroutine functions.
    """

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", *,
                 group_id: str | None = None, client_rack: str | None = None,
                 fetch_max_wait_ms: int = 500,
                 fetch_min_bytes: int = 1, fetch_max_bytes: int = 50 * 1024 * 1024,
                 max_partition_fetch_bytes: int = 1024 * 1024,
                 auto_offset_reset: str = "earliest", isolation_level: int = 1,
                 check_crcs: bool = True, request_timeout_ms: int = 30_000,
                 retry_backoff_ms: int = 100, client_id: str = "pylog-consumer",
                 connect_timeout_ms: int = 10_000, session_timeout_ms: int = 10_000,
                 heartbeat_interval_ms: int | None = None,
                 max_poll_interval_ms: int = 300_000,
                 rebalance_timeout_ms: int | None = None, enable_auto_commit: bool = True,
                 auto_commit_interval_ms: int = 5000,
                 partition_assignment_strategy: Any = ("range", "roundrobin"),
                 group_instance_id: str | None = None, metadata_max_age_ms: int = 300_000,
                 listener: ConsumerRebalanceListener | None = None,
                 on_assign: Callable | None = None, on_revoke: Callable | None = None,
                 on_lost: Callable | None = None):
        if auto_offset_reset not in _RESETS:
            raise ValueError("auto_offset_reset must be 'earliest', 'latest' or 'error'")
        if isolation_level not in (0, 1):
            raise ValueError("isolation_level must be 0 (read_uncommitted) or 1 (committed)")
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise ValueError("group_id must be a non-empty string (or None for no group)")
        if heartbeat_interval_ms is None:  # Java's 3000, or a third of a shorter session
            heartbeat_interval_ms = min(3000, session_timeout_ms // 3)
        if not 0 < heartbeat_interval_ms < session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be > 0 and < session_timeout_ms")
        if auto_commit_interval_ms <= 0 or max_poll_interval_ms <= 0:
            raise ValueError("auto_commit_interval_ms and max_poll_interval_ms must be > 0")
        if listener is not None and (on_assign or on_revoke or on_lost):
            raise ValueError("give either listener or on_assign/on_revoke/on_lost")
        if listener is None and (on_assign or on_revoke or on_lost):
            listener = CallbackListener(on_assign, on_revoke, on_lost)
        self.group_id = group_id
        self.client_rack = client_rack
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.auto_offset_reset = auto_offset_reset
        self.isolation_level = isolation_level
        self.check_crcs = check_crcs
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.cluster = Cluster(bootstrap, client_id=client_id,
                               request_timeout_ms=request_timeout_ms,
                               connect_timeout_ms=connect_timeout_ms,
                               retry_backoff_ms=retry_backoff_ms,
                               allow_auto_topic_creation=False)
        self._assignment: dict[TopicPartition, _PartitionState] = {}
        # Node ids with a Fetch in flight (one per broker at a time).
        self._fetching: set[int] = set()
        self._tasks: set[asyncio.Task] = set()
        self._resetting = False
        self._refreshing = False
        # Errors to raise from the next getmany, in the order they happened.
        self._errors: collections.deque[Exception] = collections.deque()
        self._data_ready: asyncio.Event | None = None
        self._round_robin = 0
        # A group rebalance is under way: nothing is fetched or handed out.
        self._rebalancing = False
        self._group: GroupMembership | None = None
        if group_id is not None:
            self._group = GroupMembership(
                self, group_id, assignors=resolve_assignors(partition_assignment_strategy),
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=(rebalance_timeout_ms if rebalance_timeout_ms is not None
                                      else max_poll_interval_ms),
                enable_auto_commit=enable_auto_commit,
                auto_commit_interval_ms=auto_commit_interval_ms,
                group_instance_id=group_instance_id, request_timeout_ms=request_timeout_ms,
                connect_timeout_ms=connect_timeout_ms, retry_backoff_ms=retry_backoff_ms,
                metadata_max_age_ms=metadata_max_age_ms, listener=listener)
        # Where a newly assigned partition starts: the committed offset (with a group id),
        # else per auto_offset_reset.
        self._initial_reset = COMMITTED if group_id is not None else _RESETS[auto_offset_reset]
        self._started = False
        self._closed = False

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (KafkaConnectionError if no bootstrap server answers)."""
        self._data_ready = asyncio.Event()
        await self.cluster.refresh()
        self._started = True
        self._maybe_fetch()

    async def __aenter__(self) -> AsyncConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave the group (committing first with auto-commit) and close the connections."""
        if self._closed:
            return
        try:
            if self._group is not None and self._started:
                await self._group.close()
        finally:
            self._close_now()
        await self.cluster.close()

    def _close_now(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._data_ready is not None:
            self._data_ready.set()

    # ---- assignment and positions -----------------------------------------------------------

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Read exactly these (topic, partition) pairs from now on (positions of partitions
        kept are kept; new ones start at the group's committed offset when there is a group
        id, else per ``auto_offset_reset``, unless ``seek`` is called)."""
        if self._group is not None and self._group.subscription is not None:
            raise ValueError("this consumer is subscribed: assign() and subscribe() are "
                             "mutually exclusive (unsubscribe first)")
        self._set_assignment(partitions)

    def _set_assignment(self, partitions: Iterable[tuple[str, int]]) -> None:
        wanted = [TopicPartition(*tp) for tp in partitions]
        old = self._assignment
        self._assignment = {tp: old.get(tp) or _PartitionState(self._initial_reset)
                            for tp in wanted}
        self.cluster.track({tp.topic for tp in wanted})
        self._maybe_fetch()

    def _assign_from_group(self, partitions: Iterable[tuple[str, int]]) -> None:
        """The membership's assignment (eager protocol: every partition starts afresh)."""
        self._assignment = {}
        self._set_assignment(partitions)

    # ---- consumer groups --------------------------------------------------------------------

    def subscribe(self, topics: str | Iterable[str],
                  listener: ConsumerRebalanceListener | None = None) -> None:
        """Join the consumer group (``group_id``) for ``topics``; the partitions come from
        the group's assignment, on the next ``getmany``. ``listener`` replaces the one given
        to the constructor."""
        group = self._require_group("subscribe")
        if self._assignment and group.subscription is None:
            raise ValueError("this consumer has a manual assignment: assign() and "
                             "subscribe() are mutually exclusive (assign([]) first)")
        group.subscribe([topics] if isinstance(topics, str) else topics, listener)

    def subscription(self) -> set[str]:
        """The topics subscribed to (empty when not subscribed)."""
        if self._group is None or self._group.subscription is None:
            return set()
        return set(self._group.subscription)

    async def unsubscribe(self) -> None:
        """Leave the group (revoking the partitions; committing first with auto-commit)."""
        group = self._require_group("unsubscribe")
        await group.leave_group()
        self._assignment = {}

    def _require_group(self, what: str) -> GroupMembership:
        if self._group is None:
            raise ValueError(f"{what} needs a consumer group: pass group_id")
        return self._group

    def _positions(self) -> dict[TopicPartition, int]:
        """The position of each assigned partition whose position is known."""
        return {tp: st.position for tp, st in self._assignment.items()
                if st.position is not None}

    def _offsets_to_commit(self, offsets) -> dict[TopicPartition, OffsetAndMetadata]:
        if offsets is None:
            return {tp: OffsetAndMetadata(o) for tp, o in self._positions().items()}
        result = {}
        for tp, value in dict(offsets).items():
            if isinstance(value, int):
                value = OffsetAndMetadata(value)
            elif not isinstance(value, OffsetAndMetadata):
                value = OffsetAndMetadata(*value)
            if value.offset < 0:
                raise ValueError(f"cannot commit offset {value.offset} for {tp}")
            result[TopicPartition(*tp)] = value
        return result

    async def commit(self, offsets: Mapping[tuple[str, int], Any] | None = None, *,
                     timeout_ms: int | None = None) -> None:
        """Commit ``offsets`` ({tp: offset | OffsetAndMetadata | (offset, metadata)}; the
        offset of the *next* record to read) or, when None, the position of every assigned
        partition. Retriable errors are retried until ``timeout_ms`` (request_timeout_ms).
        CommitFailedError: the group rebalanced meanwhile; RebalanceInProgressError: it is
        rebalancing now."""
        group = self._require_group("commit")
        await group.commit(self._offsets_to_commit(offsets),
                           timeout_ms=self.request_timeout_ms if timeout_ms is None
                           else timeout_ms)

    def commit_async(self, offsets: Mapping[tuple[str, int], Any] | None = None,
                     callback: Callable[[dict, Exception | None], Any] | None = None
                     ) -> asyncio.Future:
        """Send one commit without waiting; returns its future (None, or the error), and
        calls ``callback(offsets, error_or_None)`` when it is answered. Not retried."""
        group = self._require_group("commit_async")
        wanted = self._offsets_to_commit(offsets)

        async def run():
            error = None
            try:
                await group.commit_once(wanted)
            except KafkaError as exc:
                error = exc
            if callback is not None:
                callback(wanted, error)
            if error is not None:
                raise error
        future = asyncio.ensure_future(run())
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    async def committed(self, tp: tuple[str, int], *, timeout_ms: int | None = None
                        ) -> int | None:
        """The group's committed offset of ``tp`` (None when there is none)."""
        found = await self.committed_offsets([tp], timeout_ms=timeout_ms)
        value = found[TopicPartition(*tp)]
        return None if value is None else value.offset

    async def committed_offsets(self, tps: Iterable[tuple[str, int]], *,
                                timeout_ms: int | None = None
                                ) -> dict[TopicPartition, OffsetAndMetadata | None]:
        """The group's committed offsets (with their metadata) of ``tps``."""
        group = self._require_group("committed")
        return await group.committed([TopicPartition(*tp) for tp in tps],
                                     timeout_ms=self.request_timeout_ms if timeout_ms is None
                                     else timeout_ms)

    def _wake(self) -> None:
        if self._data_ready is not None:
            self._data_ready.set()

    def _report(self, error: BaseException) -> None:
        """An error for the next getmany to raise."""
        if not self._closed:
            self._errors.append(error)
            self._wake()

    async def assign_topic(self, topic: str) -> list[TopicPartition]:
        """Assign every partition of ``topic`` (KafkaError if it does not exist)."""
        metadata = await self.cluster.topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        self.assign([*self._assignment, *[tp for tp in tps if tp not in self._assignment]])
        return tps

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        """The next record returned for ``tp`` will be the one at ``offset``."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        state = self._state(tp)
        state.clear_buffer()
        state.position = state.fetch_offset = offset
        state.retry_at = 0.0
        self._maybe_fetch()

    def seek_to_beginning(self, *tps: tuple[str, int]) -> None:
        """Move to the log start of ``tps`` (all assigned partitions when none given)."""
        self._seek_to(tps, EARLIEST)

    def seek_to_end(self, *tps: tuple[str, int]) -> None:
        """Move to the end (the high watermark) of ``tps`` (all when none given)."""
        self._seek_to(tps, LATEST)

    def _seek_to(self, tps, where: int) -> None:
        for tp in tps or list(self._assignment):
            state = self._state(tp)
            state.clear_buffer()
            state.position = None
            state.reset_to = where
            state.retry_at = 0.0
        self._maybe_fetch()

    async def position(self, tp: tuple[str, int]) -> int:
        """The offset of the next record ``getmany`` returns for ``tp`` (looked up if need be)."""
        state = self._state(tp)
        while state.position is None:
            self._raise_pending()
            await self._reset_positions([TopicPartition(*tp)])
        return state.position

    def highwater(self, tp: tuple[str, int]) -> int:
        """The high watermark of ``tp`` as of the last fetch (-1 before one)."""
        return self._state(tp).high_watermark

    def _state(self, tp) -> _PartitionState:
        try:
            return self._assignment[TopicPartition(*tp)]
        except KeyError:
            raise ValueError(f"{tp} is not assigned") from None

    # ---- offsets lookups --------------------------------------------------------------------

    async def beginning_offsets(self, tps: Iterable[tuple[str, int]]) -> dict[TopicPartition, int]:
        found = await self._list_offsets({TopicPartition(*tp): EARLIEST for tp in tps})
        return {tp: o.offset for tp, o in found.items()}

    async def end_offsets(self, tps: Iterable[tuple[str, int]]) -> dict[TopicPartition, int]:
        """The high watermark (the last stable offset under read_committed) of each."""
        found = await self._list_offsets({TopicPartition(*tp): LATEST for tp in tps})
        return {tp: o.offset for tp, o in found.items()}

    async def offsets_for_times(self, timestamps: dict[tuple[str, int], int]
                                ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition the first offset whose timestamp is >= the given one (ms),
        None when there is none."""
        found = await self._list_offsets({TopicPartition(*tp): ts
                                          for tp, ts in timestamps.items()})
        return {tp: (o if o.offset >= 0 else None) for tp, o in found.items()}

    async def _list_offsets(self, wanted: dict[TopicPartition, int], *,
                            timeout_ms: int | None = None
                            ) -> dict[TopicPartition, OffsetAndTimestamp]:
        deadline = time.monotonic() + (timeout_ms or self.request_timeout_ms) / 1000
        result: dict[TopicPartition, OffsetAndTimestamp] = {}
        todo = dict(wanted)
        last_error: Exception | None = None
        while todo:
            if time.monotonic() >= deadline:
                raise last_error or KafkaTimeoutError("ListOffsets did not complete in time")
            for topic in {tp.topic for tp in todo}:
                await self.cluster.topic(topic, timeout_ms=int(
                    max(0.0, deadline - time.monotonic()) * 1000))
            by_node: dict[int, list[TopicPartition]] = {}
            for tp in todo:
                by_node.setdefault(self.cluster.leader(*tp), []).append(tp)
            retry = False
            for node_id, tps in by_node.items():
                try:
                    if node_id < 0:
                        raise remote_error(ErrorCode.LEADER_NOT_AVAILABLE, f"{tps[0]}")
                    answers = await self._list_offsets_at(node_id, {tp: todo[tp] for tp in tps})
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    last_error, retry = exc, True
                    continue
                for tp, (code, offset, stamp) in answers.items():
                    if code == 0:
                        result[tp] = OffsetAndTimestamp(offset, stamp)
                        del todo[tp]
                        continue
                    error = remote_error(code, f"ListOffsets {tp.topic}-{tp.partition}")
                    if not error.retriable:
                        raise error
                    last_error, retry = error, True
            if retry and todo:
                await self.cluster.refresh()
                await asyncio.sleep(self.retry_backoff_s)
        return result

    async def _list_offsets_at(self, node_id: int, wanted: dict[TopicPartition, int]
                               ) -> dict[TopicPartition, tuple[int, int, int]]:
        connection = await self.cluster.connection(node_id)
        topics: dict[str, list[dict]] = {}
        for tp, timestamp in wanted.items():
            topics.setdefault(tp.topic, []).append(
                {"partition_index": tp.partition, "current_leader_epoch": -1,
                 "timestamp": timestamp})
        response = await connection.request(ApiKey.LIST_OFFSETS, {
            "replica_id": -1, "isolation_level": self.isolation_level,
            "topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]})
        answers = {}
        for t in response.topics:
            for p in t.partitions:
                tp = TopicPartition(t.name, int(p.partition_index))
                if tp in wanted:
                    answers[tp] = (int(p.error_code), int(getattr(p, "offset", -1)),
                                   int(getattr(p, "timestamp", -1)))
        for tp in wanted:
            answers.setdefault(tp, (int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION), -1, -1))
        return answers

    # ---- reading ----------------------------------------------------------------------------

    async def getmany(self, *partitions: tuple[str, int], timeout_ms: int = 0,
                      max_records: int | None = None
                      ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Records fetched so far (of ``partitions``, or of every assigned one), waiting up to
        ``timeout_ms`` for some when none are buffered. At most ``max_records`` in all.
        Raises the errors fetching met (e.g. CorruptRecordError, OffsetOutOfRangeError with
        auto_offset_reset="error")."""
        if self._closed:
            raise ClientClosedError("consumer is closed")
        if not self._started:
            raise ClientClosedError("consumer is not started")
        only = {TopicPartition(*tp) for tp in partitions} if partitions else None
        deadline = time.monotonic() + timeout_ms / 1000
        group = self._group
        while True:
            self._data_ready.clear()
            self._raise_pending()
            if group is not None:
                group.on_poll_start()
            try:
                taken = self._take(only, max_records)
                self._maybe_fetch()
                if taken:
                    return taken
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return {}
                try:
                    async with asyncio.timeout(remaining):
                        await self._data_ready.wait()
                except TimeoutError:
                    pass
            finally:
                if group is not None:
                    group.on_poll_end()

    def __aiter__(self) -> AsyncConsumer:
        return self

    async def __anext__(self) -> ConsumerRecord:
        """The next record, waiting as long as it takes (StopAsyncIteration once closed)."""
        while not self._closed:
            taken = await self.getmany(timeout_ms=self.fetch_max_wait_ms, max_records=1)
            for records in taken.values():
                return records[0]
        raise StopAsyncIteration

    def _raise_pending(self) -> None:
        if self._errors:
            raise self._errors.popleft()

    def _take(self, only: set[TopicPartition] | None, max_records: int | None
              ) -> dict[TopicPartition, list[ConsumerRecord]]:
        taken: dict[TopicPartition, list[ConsumerRecord]] = {}
        if self._rebalancing:
            return taken
        budget = max_records if max_records is not None else 1 << 62
        tps = [tp for tp, st in self._assignment.items()
               if st.chunks and (only is None or tp in only)]
        if not tps:
            return taken
        start = self._round_robin % len(tps)
        self._round_robin += 1
        for tp in tps[start:] + tps[:start]:
            if budget <= 0:
                break
            state = self._assignment[tp]
            out: list[ConsumerRecord] = []
            while state.chunks and budget > 0:
                chunk = state.chunks[0]
                if len(chunk) <= budget:
                    out.extend(chunk)
                    budget -= len(chunk)
                    state.chunks.popleft()
                else:
                    out.extend(chunk[:budget])
                    del chunk[:budget]
                    budget = 0
            if out:
                taken[tp] = out
                state.position = out[-1].offset + 1
            if not state.chunks:
                state.buffered_bytes = 0
                state.position = state.fetch_offset
        return taken

    # ---- fetching ---------------------------------------------------------------------------

    def _maybe_fetch(self) -> None:
        if not self._started or self._closed or self._rebalancing:
            return
        now = time.monotonic()
        by_node: dict[int, list[TopicPartition]] = {}
        needs_reset = False
        needs_metadata = False
        for tp, state in self._assignment.items():
            if state.in_flight or now < state.retry_at:
                continue
            if state.position is None:
                needs_reset = True
                continue
            if state.buffered_bytes >= self.max_partition_fetch_bytes:
                continue
            leader = self.cluster.leader(*tp)
            if leader < 0:
                needs_metadata = True
                continue
            if leader not in self._fetching:
                by_node.setdefault(leader, []).append(tp)
        for node_id, tps in by_node.items():
            self._fetching.add(node_id)
            # Offsets and seek epochs are taken now, not when the task runs: a seek in
            # between must make this request's answer stale, not retarget the request.
            sent = {}
            for tp in tps:
                state = self._assignment[tp]
                state.in_flight = True
                sent[tp] = (state.fetch_offset, state.seek_epoch)
            self._spawn(self._fetch(node_id, sent))
        if needs_reset and not self._resetting:
            self._resetting = True
            self._spawn(self._reset_then_fetch())
        if needs_metadata:
            self._refresh_metadata()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        """A background task's unexpected failure is raised by the next getmany (a bug must
        not leave the consumer silently waiting)."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closed:
            self._errors.append(task.exception())
            self._data_ready.set()

    def _refresh_metadata(self, delay: float = 0.0) -> None:
        if not self._refreshing:
            self._refreshing = True
            self._spawn(self._refresh_then_fetch(delay))

    async def _refresh_then_fetch(self, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            await self.cluster.refresh()
        except KafkaError:
            await asyncio.sleep(self.retry_backoff_s)
        finally:
            self._refreshing = False
        self._maybe_fetch()

    async def _reset_then_fetch(self) -> None:
        try:
            waiting = [tp for tp, st in self._assignment.items() if st.position is None]
            await self._reset_positions(waiting)
        except KafkaError as exc:
            self._errors.append(exc)
            self._data_ready.set()
            await asyncio.sleep(self.retry_backoff_s)
        finally:
            self._resetting = False
        self._maybe_fetch()

    async def _reset_positions(self, tps: list[TopicPartition]) -> None:
        """Look up the position of ``tps`` per their ``reset_to``: the group's committed
        offset, then ListOffsets per auto_offset_reset (raising for "error")."""
        epochs = {tp: st.seek_epoch for tp in tps
                  if (st := self._assignment.get(tp)) is not None and st.position is None}

        def still_waiting(tp) -> _PartitionState | None:
            """The state of ``tp`` if neither reassigned nor sought since the lookup began."""
            state = self._assignment.get(tp)
            if state is None or state.seek_epoch != epochs[tp] or state.position is not None:
                return None
            return state
        from_group = [tp for tp in epochs if self._assignment[tp].reset_to == COMMITTED]
        if from_group:
            committed = await self._group.committed(from_group,
                                                    timeout_ms=self.request_timeout_ms)
            for tp in from_group:
                state = still_waiting(tp)
                if state is None or state.reset_to != COMMITTED:
                    continue
                if committed.get(tp) is not None:
                    state.position = state.fetch_offset = committed[tp].offset
                else:
                    state.reset_to = _RESETS[self.auto_offset_reset]
        wanted: dict[TopicPartition, int] = {}
        for tp in epochs:
            state = still_waiting(tp)
            if state is None:
                continue
            if state.reset_to is None:
                raise NoOffsetForPartitionError(
                    f"{tp.topic}-{tp.partition}: no valid position and "
                    "auto_offset_reset='error'", tp.topic, tp.partition)
            wanted[tp] = state.reset_to
        if not wanted:
            return
        found = await self._list_offsets(wanted)
        for tp, answer in found.items():
            state = still_waiting(tp)
            if state is not None:
                state.position = state.fetch_offset = answer.offset

    async def _fetch(self, node_id: int, sent: dict[TopicPartition, tuple[int, int]]) -> None:
        try:
            try:
                connection = await self.cluster.connection(node_id)
                response = await connection.request(
                    ApiKey.FETCH, self._fetch_request(node_id, sent),
                    timeout_ms=self.request_timeout_ms + self.fetch_max_wait_ms)
            except KafkaError as exc:
                if not exc.retriable:
                    self._errors.append(exc)
                    self._data_ready.set()
                self._back_off(sent, refresh=True)
                return
            code = int(getattr(response, "error_code", 0))
            if code:
                error = remote_error(code, "Fetch")
                if not error.retriable:
                    self._errors.append(error)
                    self._data_ready.set()
                self._back_off(sent, refresh=True)
                return
            answered = set()
            for t in response.responses:
                for p in t.partitions:
                    tp = TopicPartition(t.topic, int(p.partition_index))
                    if tp in sent:
                        answered.add(tp)
                        self._on_partition_answer(tp, sent[tp], p)
            self._back_off({tp: v for tp, v in sent.items() if tp not in answered},
                           refresh=False)
        finally:
            self._fetching.discard(node_id)
            for tp in sent:
                state = self._assignment.get(tp)
                if state is not None:
                    state.in_flight = False
            self._maybe_fetch()

    def _fetch_request(self, node_id: int, sent: dict[TopicPartition, tuple[int, int]]) -> dict:
        topics: dict[str, list[dict]] = {}
        snapshot = self.cluster.snapshot
        for tp, (offset, _epoch) in sent.items():
            pm = snapshot.topics[tp.topic].partitions.get(tp.partition)
            topics.setdefault(tp.topic, []).append({
                "partition": tp.partition,
                "current_leader_epoch": pm.leader_epoch if pm is not None else -1,
                "fetch_offset": offset, "log_start_offset": -1,
                "partition_max_bytes": self.max_partition_fetch_bytes})
        return {"replica_id": -1, "max_wait": self.fetch_max_wait_ms,
                "min_bytes": self.fetch_min_bytes, "max_bytes": self.fetch_max_bytes,
                "isolation_level": self.isolation_level, "session_id": 0,
                "session_epoch": -1,
                "topics": [{"topic": t, "partitions": ps} for t, ps in topics.items()],
                "forgotten_topics_data": [], "rack_id": self.client_rack or ""}

    def _on_partition_answer(self, tp: TopicPartition, sent: tuple[int, int], p: Any) -> None:
        state = self._assignment.get(tp)
        fetch_offset, epoch = sent
        if state is None or state.seek_epoch != epoch or state.fetch_offset != fetch_offset:
            return  # unassigned, or sought since the request left
        code = int(p.error_code)
        state.high_watermark = int(p.high_watermark)
        state.log_start_offset = int(getattr(p, "log_start_offset", -1))
        state.last_stable_offset = int(getattr(p, "last_stable_offset", -1))
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            if self.auto_offset_reset == "error":
                self._errors.append(remote_error(
                    code, f"{tp.topic}-{tp.partition} offset {fetch_offset}"))
                state.retry_at = time.monotonic() + self.retry_backoff_s
                self._data_ready.set()
                return
            state.clear_buffer()
            state.position = None
            state.reset_to = _RESETS[self.auto_offset_reset]
            return
        if code:
            error = remote_error(code, f"Fetch {tp.topic}-{tp.partition}")
            state.retry_at = time.monotonic() + self.retry_backoff_s
            if code in METADATA_STALE_CODES:
                self._refresh_metadata()
            if not error.retriable:
                self._errors.append(error)
                self._data_ready.set()
            return
        data = p.records or b""
        aborted = None
        if self.isolation_level == 1 and getattr(p, "aborted_transactions", None):
            aborted = [(int(a.producer_id), int(a.first_offset)) for a in p.aborted_transactions]
        decoded = decode_fetched(tp.topic, tp.partition, data, fetch_offset,
                                 check_crcs=self.check_crcs, aborted=aborted)
        if decoded.records:
            state.chunks.append(decoded.records)
            state.buffered_bytes += len(data)
        state.fetch_offset = decoded.next_offset
        if not state.chunks:
            state.position = state.fetch_offset
        if decoded.error is not None:
            self._errors.append(decoded.error)
            state.retry_at = time.monotonic() + self.retry_backoff_s
        if decoded.records or decoded.error is not None:
            self._data_ready.set()

    def _back_off(self, sent: dict[TopicPartition, tuple[int, int]], *, refresh: bool) -> None:
        if not sent:
            return
        until = time.monotonic() + self.retry_backoff_s
        for tp in sent:
            state = self._assignment.get(tp)
            if state is not None:
                state.retry_at = until
        if refresh:
            self._refresh_metadata(delay=self.retry_backoff_s)
        else:
            self._spawn(self._fetch_later(self.retry_backoff_s))

    async def _fetch_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._maybe_fetch()


class _ThreadedListener(ConsumerRebalanceListener):
    """Runs a blocking consumer's rebalance callbacks in a worker thread, so that they may
    call the ``Consumer``'s own blocking methods (``commit``, ``position``, ``seek``), which
    run on the event loop the rebalance itself runs on."""

    def __init__(self, inner: ConsumerRebalanceListener):
        self.inner = inner

    async def _run(self, method: Callable, partitions) -> None:
        await asyncio.get_running_loop().run_in_executor(None, method, partitions)

    async def on_partitions_revoked(self, revoked):
        await self._run(self.inner.on_partitions_revoked, revoked)

    async def on_partitions_assigned(self, assigned):
        await self._run(self.inner.on_partitions_assigned, assigned)

    async def on_partitions_lost(self, lost):
        method = getattr(self.inner, "on_partitions_lost", None) or \
            self.inner.on_partitions_revoked
        await self._run(method, lost)


def _threaded(listener: ConsumerRebalanceListener | None) -> _ThreadedListener | None:
    return None if listener is None else _ThreadedListener(listener)


class Consumer:
    """Blocking consumer: an ``AsyncConsumer`` on an event loop in a background thread.
    Same keyword arguments; ``poll`` is ``getmany``; iteration yields records and stops after
    ``consumer_timeout_ms`` without one (never, when None). Rebalance callbacks run in a
    worker thread while ``poll`` (or iteration) waits, and may call this consumer's methods."""

    def __init__(self, bootstrap: str | Iterable[str] = "127.0.0.1:9092", *,
                 consumer_timeout_ms: int | None = None, **config):
        self.consumer_timeout_ms = consumer_timeout_ms
        callbacks = {k: config.pop(k) for k in ("on_assign", "on_revoke", "on_lost")
                     if config.get(k) is not None}
        if callbacks:
            if config.get("listener") is not None:
                raise ValueError("give either listener or on_assign/on_revoke/on_lost")
            config["listener"] = CallbackListener(**callbacks)
        config["listener"] = _threaded(config.get("listener"))
        self._thread = LoopThread("pylog-consumer")
        try:
            self._consumer: AsyncConsumer = self._thread.run(self._create(bootstrap, config))
        except BaseException:
            self._thread.stop()
            raise
        self._pending: collections.deque[ConsumerRecord] = collections.deque()
        self._closed = False

    @staticmethod
    async def _create(bootstrap, config) -> AsyncConsumer:
        consumer = AsyncConsumer(bootstrap, **config)
        await consumer.start()
        return consumer

    def _call(self, fn, *args):
        async def call():
            return fn(*args)
        return self._thread.run(call())

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        self._pending.clear()
        self._call(self._consumer.assign, list(partitions))

    def assign_topic(self, topic: str) -> list[TopicPartition]:
        return self._thread.run(self._consumer.assign_topic(topic))

    def subscribe(self, topics: str | Iterable[str],
                  listener: ConsumerRebalanceListener | None = None) -> None:
        self._call(self._consumer.subscribe, topics if isinstance(topics, str)
                   else list(topics), _threaded(listener))

    def subscription(self) -> set[str]:
        return self._call(self._consumer.subscription)

    def unsubscribe(self) -> None:
        self._pending.clear()
        self._thread.run(self._consumer.unsubscribe())

    def _consumed(self, offsets) -> Any:
        """``offsets`` for a commit; None means what the caller has been handed: records
        taken from the loop but not yet returned by iteration are not consumed."""
        if offsets is not None:
            return offsets
        if not self._pending:
            return None
        positions = self._call(self._consumer._positions)
        for record in reversed(self._pending):
            positions[TopicPartition(record.topic, record.partition)] = record.offset
        return positions

    def commit(self, offsets: Mapping[tuple[str, int], Any] | None = None, *,
               timeout_ms: int | None = None) -> None:
        self._thread.run(self._consumer.commit(self._consumed(offsets), timeout_ms=timeout_ms))

    def commit_async(self, offsets: Mapping[tuple[str, int], Any] | None = None,
                     callback: Callable[[dict, Exception | None], Any] | None = None
                     ) -> concurrent.futures.Future:
        """Returns a concurrent.futures.Future; ``callback`` runs on the loop thread."""
        offsets = self._consumed(offsets)

        done: concurrent.futures.Future = concurrent.futures.Future()

        async def run():
            try:
                await self._consumer.commit_async(offsets, callback)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
                done.set_exception(exc)
            else:
                done.set_result(None)
        self._thread.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(run()))
        return done

    def committed(self, tp: tuple[str, int], *, timeout_ms: int | None = None) -> int | None:
        return self._thread.run(self._consumer.committed(tp, timeout_ms=timeout_ms))

    def committed_offsets(self, tps, *, timeout_ms: int | None = None
                          ) -> dict[TopicPartition, OffsetAndMetadata | None]:
        return self._thread.run(self._consumer.committed_offsets(list(tps),
                                                                 timeout_ms=timeout_ms))

    def assignment(self) -> set[TopicPartition]:
        return self._call(self._consumer.assignment)

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        self._drop_pending(tp)
        self._call(self._consumer.seek, tp, offset)

    def seek_to_beginning(self, *tps: tuple[str, int]) -> None:
        self._drop_pending(*tps)
        self._call(self._consumer.seek_to_beginning, *tps)

    def seek_to_end(self, *tps: tuple[str, int]) -> None:
        self._drop_pending(*tps)
        self._call(self._consumer.seek_to_end, *tps)

    def _drop_pending(self, *tps: tuple[str, int]) -> None:
        drop = {TopicPartition(*tp) for tp in tps}
        self._pending = collections.deque(
            r for r in self._pending
            if drop and TopicPartition(r.topic, r.partition) not in drop)

    def position(self, tp: tuple[str, int]) -> int:
        for record in self._pending:  # records handed over but not yet returned
            if (record.topic, record.partition) == tuple(tp):
                return record.offset
        return self._thread.run(self._consumer.position(tp))

    def highwater(self, tp: tuple[str, int]) -> int:
        return self._call(self._consumer.highwater, tp)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None
             ) -> dict[TopicPartition, list[ConsumerRecord]]:
        if self._pending:
            result: dict[TopicPartition, list[ConsumerRecord]] = {}
            n = len(self._pending) if max_records is None else min(max_records,
                                                                    len(self._pending))
            for _ in range(n):
                r = self._pending.popleft()
                result.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
            return result
        return self._thread.run(self._consumer.getmany(timeout_ms=timeout_ms,
                                                       max_records=max_records))

    def __iter__(self):
        return self

    def __next__(self) -> ConsumerRecord:
        if not self._pending:
            wait = self.consumer_timeout_ms
            deadline = None if wait is None else time.monotonic() + wait / 1000
            while not self._pending:
                remaining = 1000 if deadline is None else int(
                    (deadline - time.monotonic()) * 1000)
                if remaining <= 0:
                    raise StopIteration
                taken = self._thread.run(self._consumer.getmany(timeout_ms=remaining))
                for records in taken.values():
                    self._pending.extend(records)
        return self._pending.popleft()

    def beginning_offsets(self, tps) -> dict[TopicPartition, int]:
        return self._thread.run(self._consumer.beginning_offsets(list(tps)))

    def end_offsets(self, tps) -> dict[TopicPartition, int]:
        return self._thread.run(self._consumer.end_offsets(list(tps)))

    def offsets_for_times(self, timestamps) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        return self._thread.run(self._consumer.offsets_for_times(dict(timestamps)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.run(self._consumer.close())
        finally:
            self._thread.stop()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
