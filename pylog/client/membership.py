"""A consumer's membership of a group: the classic protocol with eager rebalancing.

Theory of operation. The member goes through these states (``state``):

  UNJOINED --(getmany)--> JOINING --(SyncGroup answered)--> STABLE
  STABLE --(rejoin needed, getmany)--> PREPARING --(revoked)--> JOINING ...

A rebalance is run by ``getmany`` (``on_poll_start``), as the Java client runs it inside
``poll()``: while the caller is in ``getmany`` it has finished with the records it took
before, so the offsets committed on revocation are the ones it processed. The first part of
the rebalance task (PREPARING) commits the positions (with auto-commit), calls the listener's
``on_partitions_revoked`` — both still inside the old generation, so the coordinator accepts
the commit — and drops the assignment; no record is handed out from then until the new
assignment is in place. JOINING sends JoinGroup (protocol type "consumer", one protocol per
assignor, each carrying the ConsumerProtocolSubscription bytes) with the member id it has
("" the first time: a v4+ coordinator answers MEMBER_ID_REQUIRED with an id, and the member
joins again with it). The coordinator answers when every member has joined; the leader
computes the assignment with the chosen assignor from every member's subscription and the
partition counts in metadata, and sends it in SyncGroup; the others send an empty SyncGroup
and receive their part. Then the assignment is installed with each partition's position to be
looked up (the committed offset, else ``auto_offset_reset``), the listener's
``on_partitions_assigned`` runs (a ``seek`` there wins over the committed offset), and
fetching resumes.

A rebalance is needed (``rejoin_needed``) when the subscription changes, when a Heartbeat
answers REBALANCE_IN_PROGRESS (another member joined or left), when the coordinator forgot
this member (UNKNOWN_MEMBER_ID: the member id is reset; ILLEGAL_GENERATION: the generation
is) — then the partitions are *lost*, not revoked: nothing is committed and
``on_partitions_lost`` is called — and, for the leader, when the partition count of a topic of
the group changed. NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE and lost connections make the
coordinator be looked up again (``CoordinatorLink.mark_unknown``).

The heartbeat task sends a Heartbeat every ``heartbeat_interval_ms`` while STABLE (also while
the caller processes records). If the caller has not been in ``getmany`` for
``max_poll_interval_ms`` the member leaves the group (as the Java client does) and re-joins on
its next ``getmany``; if no heartbeat was answered for ``session_timeout_ms`` the coordinator
is looked up again.

Commits: ``commit`` (retries retriable errors until its timeout), ``commit_async`` (one
attempt; the result goes to a callback), auto-commit (asynchronously from ``getmany`` every
``auto_commit_interval_ms``, synchronously before a rebalance and on close). A commit carries
the generation and member id; while JOINING it is refused locally with
RebalanceInProgressError, and a coordinator's ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID becomes
CommitFailedError (and a re-join). A consumer with a group id but a manual assignment commits
with generation -1 and no member id (Kafka accepts that while the group has no members).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pylog.client.assignors import Assignor, MemberSubscription
from pylog.client.consumer_protocol import (
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from pylog.client.coordinator import CoordinatorLink, OffsetAndMetadata
from pylog.client.errors import (
    COORDINATOR_STALE_CODES,
    CommitFailedError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    remote_error,
)
from pylog.protocol import ApiKey, ErrorCode

if TYPE_CHECKING:
    from pylog.client.consumer import AsyncConsumer, TopicPartition

log = logging.getLogger("pylog.client.group")

UNJOINED = "unjoined"    # no generation: never joined, left, or forgotten by the coordinator
PREPARING = "preparing"  # rebalance started: committing and revoking in the old generation
JOINING = "joining"      # JoinGroup / SyncGroup under way
STABLE = "stable"        # a member of the current generation with its assignment installed

# Errors that make a commit worth retrying (Kafka's ConsumerCoordinator).
_COMMIT_RETRIABLE = frozenset({ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
                               ErrorCode.COORDINATOR_NOT_AVAILABLE, ErrorCode.NOT_COORDINATOR,
                               ErrorCode.REQUEST_TIMED_OUT})
_JOIN_GRACE_MS = 5000  # JoinGroup may wait a whole rebalance timeout at the coordinator


class ConsumerRebalanceListener:
    """Told when partitions are taken from and given to this consumer. Override what you
    need; methods may be coroutine functions. ``on_partitions_lost`` (the partitions were
    already given to another member: committing is no longer possible) calls
    ``on_partitions_revoked`` unless overridden, as in the Java client."""

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> Any:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> Any:
        pass

    def on_partitions_lost(self, lost: set[TopicPartition]) -> Any:
        return self.on_partitions_revoked(lost)


class CallbackListener(ConsumerRebalanceListener):
    """A listener made of plain callables (``on_assign``, ``on_revoke``, ``on_lost``)."""

    def __init__(self, on_assign: Callable | None = None, on_revoke: Callable | None = None,
                 on_lost: Callable | None = None):
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost

    def on_partitions_revoked(self, revoked):
        return self._on_revoke(revoked) if self._on_revoke is not None else None

    def on_partitions_assigned(self, assigned):
        return self._on_assign(assigned) if self._on_assign is not None else None

    def on_partitions_lost(self, lost):
        if self._on_lost is not None:
            return self._on_lost(lost)
        return self.on_partitions_revoked(lost)


class GroupMembership:
    """``consumer``'s membership of ``group_id`` (see the module docstring). Created by
    ``AsyncConsumer`` when it has a group id; driven by its ``getmany`` and ``close``."""

    def __init__(self, consumer: AsyncConsumer, group_id: str, *, assignors: list[Assignor],
                 session_timeout_ms: int, heartbeat_interval_ms: int,
                 max_poll_interval_ms: int, enable_auto_commit: bool,
                 auto_commit_interval_ms: int, group_instance_id: str | None,
                 request_timeout_ms: int, connect_timeout_ms: int, retry_backoff_ms: int,
                 metadata_max_age_ms: int, listener: ConsumerRebalanceListener | None):
        self.consumer = consumer
        self.cluster = consumer.cluster
        self.group_id = group_id
        self.assignors = assignors
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.max_poll_interval_ms = max_poll_interval_ms
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self.group_instance_id = group_instance_id
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.metadata_max_age_s = metadata_max_age_ms / 1000
        self.listener = listener
        self.link = CoordinatorLink(self.cluster, group_id,
                                    request_timeout_ms=request_timeout_ms,
                                    connect_timeout_ms=connect_timeout_ms,
                                    retry_backoff_ms=retry_backoff_ms)
        # Topics subscribed to (sorted); None while the consumer is not subscribed.
        self.subscription: tuple[str, ...] | None = None
        self.state = UNJOINED
        # "" until the coordinator hands one out; kept across re-joins, reset by
        # UNKNOWN_MEMBER_ID or a leave.
        self.member_id = ""
        # The generation joined; -1 whenever state is UNJOINED or JOINING after a reset.
        self.generation = -1
        self.protocol: str | None = None
        self.leader_id: str | None = None
        # A new JoinGroup is due (subscription changed, the group rebalances, ...).
        self.rejoin_needed = False
        # Partitions this member holds in the current generation (None: none assigned).
        self.owned: set[TopicPartition] | None = None
        # Leader only: partitions per topic when it assigned (None when not the leader).
        self._assigned_counts: dict[str, int] | None = None
        self._checked_snapshot: object = None
        self._rebalance: asyncio.Task | None = None
        self._next_join_at = 0.0           # backoff after a failed rebalance
        self._heartbeat: asyncio.Task | None = None
        self._heartbeat_wake: asyncio.Event | None = None
        self._last_heartbeat_ok = 0.0
        # getmany calls in progress, and when the last one started or ended.
        self._polling = 0
        self._last_poll = time.monotonic()
        self._next_auto_commit = time.monotonic() + self.auto_commit_interval_s
        self._last_committed: dict[TopicPartition, int] = {}
        self._closed = False

    # ---- subscription -----------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str],
                  listener: ConsumerRebalanceListener | None = None) -> None:
        names = tuple(sorted(set(topics)))
        if not names or not all(isinstance(t, str) and t for t in names):
            raise ValueError("subscribe needs one or more topic names")
        if listener is not None:
            self.listener = listener
        self.cluster.track(names)
        if names != self.subscription:
            self.subscription = names
            self.rejoin_needed = True
            self._next_join_at = 0.0
        self.consumer._wake()

    @property
    def rebalancing(self) -> bool:
        return self._rebalance is not None

    # ---- driven by getmany ------------------------------------------------------------------

    def on_poll_start(self) -> None:
        """Called on each pass of getmany: starts a rebalance when one is due, auto-commits."""
        self._polling += 1
        now = time.monotonic()
        self._last_poll = now
        if self._closed:
            return
        if self.subscription is not None:
            self._check_metadata()
            if self._rebalance is None and (self.state != STABLE or self.rejoin_needed) \
                    and now >= self._next_join_at:
                self.consumer._rebalancing = True   # nothing is handed out from here on
                self._rebalance = asyncio.ensure_future(self._run_rebalance())
                self._rebalance.add_done_callback(self._rebalance_done)
                return
            if self.state != STABLE or self.rejoin_needed:
                return
        if self.enable_auto_commit and now >= self._next_auto_commit:
            self._next_auto_commit = now + self.auto_commit_interval_s
            offsets = self._changed_positions()
            if offsets:
                self.consumer._spawn(self._auto_commit(offsets))

    def on_poll_end(self) -> None:
        self._polling -= 1
        self._last_poll = time.monotonic()

    def _rebalance_done(self, task: asyncio.Task) -> None:
        self._rebalance = None
        self.consumer._rebalancing = False
        if not task.cancelled() and task.exception() is not None:
            self._next_join_at = time.monotonic() + self.retry_backoff_s
            self.consumer._report(task.exception())
        self.consumer._maybe_fetch()
        self.consumer._wake()

    # ---- rebalancing ------------------------------------------------------------------------

    async def _run_rebalance(self) -> None:
        await self._give_up_partitions(why="rebalance")
        self.state = JOINING
        try:
            while True:
                self.rejoin_needed = False
                assigned = await self._join_and_sync()
                if assigned is not None and not self.rejoin_needed:
                    break
        except BaseException:
            self.state = UNJOINED
            raise
        self.state = STABLE
        self._last_heartbeat_ok = time.monotonic()
        self._next_auto_commit = time.monotonic() + self.auto_commit_interval_s
        self._ensure_heartbeat()
        self.owned = set(assigned)
        self._last_committed = {}
        self.consumer._assign_from_group(assigned)
        log.info("group %r generation %d: member %s got %s", self.group_id, self.generation,
                 self.member_id, sorted(assigned))
        await self._call_listener("on_partitions_assigned", set(assigned))

    async def _give_up_partitions(self, why: str) -> None:
        """Before a re-join or a leave: commit and revoke the owned partitions (or declare
        them lost when the generation is gone), then drop them."""
        owned, self.owned = self.owned, None
        if owned is None:
            return
        if self.generation >= 0:
            self.state = PREPARING
            if self.enable_auto_commit:
                await self._commit_quietly(self._changed_positions(), why)
            await self._call_listener("on_partitions_revoked", owned)
        else:
            await self._call_listener("on_partitions_lost", owned)
        self.consumer._assign_from_group(())

    async def _call_listener(self, method: str, partitions: set) -> None:
        if self.listener is None:
            return
        try:
            result = getattr(self.listener, method)(partitions)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's error, raised by getmany
            log.error("group %r: %s raised %r", self.group_id, method, exc)
            self.consumer._report(exc)

    async def _join_and_sync(self) -> list[TopicPartition] | None:
        """One JoinGroup + SyncGroup round; the assignment, or None to join again."""
        metadata = encode_subscription(self.subscription)
        try:
            joined = await self.link.request(ApiKey.JOIN_GROUP, {
                "group_id": self.group_id, "session_timeout": self.session_timeout_ms,
                "rebalance_timeout": self.max_poll_interval_ms, "member_id": self.member_id,
                "group_instance_id": self.group_instance_id, "protocol_type": "consumer",
                "protocols": [{"name": a.name, "metadata": metadata} for a in self.assignors],
                "reason": None,
            }, timeout_ms=max(self.request_timeout_ms,
                              self.max_poll_interval_ms + _JOIN_GRACE_MS))
        except KafkaError as exc:
            return await self._retry_or_raise(exc, "JoinGroup")
        code = int(joined.error_code)
        if code == ErrorCode.MEMBER_ID_REQUIRED:
            self.member_id = joined.member_id  # KIP-394: join again with this id
            return None
        if code:
            return await self._on_group_error(code, "JoinGroup")
        self.member_id = joined.member_id
        self.generation = int(joined.generation_id)
        self.protocol = joined.protocol_name
        self.leader_id = joined.leader
        assignments = []
        self._assigned_counts = None
        if joined.leader == joined.member_id:
            assignments = await self._assign(joined.protocol_name, joined.members)
        try:
            synced = await self.link.request(ApiKey.SYNC_GROUP, {
                "group_id": self.group_id, "generation_id": self.generation,
                "member_id": self.member_id, "group_instance_id": self.group_instance_id,
                "protocol_type": "consumer", "protocol_name": self.protocol,
                "assignments": assignments})
        except KafkaError as exc:
            return await self._retry_or_raise(exc, "SyncGroup")
        code = int(synced.error_code)
        if code:
            return await self._on_group_error(code, "SyncGroup")
        try:
            assignment = decode_assignment(synced.assignment)
        except ValueError as exc:
            raise KafkaError(f"group {self.group_id!r}: the assignment from the leader does "
                             f"not decode: {exc}") from None
        from pylog.client.consumer import TopicPartition
        return [TopicPartition(t, p) for t, p in assignment.partitions]

    async def _retry_or_raise(self, exc: KafkaError, what: str) -> None:
        if not exc.retriable:
            raise exc
        log.info("group %r: %s failed (%s); retrying", self.group_id, what, exc)
        await asyncio.sleep(self.retry_backoff_s)
        return None

    async def _on_group_error(self, code: int, what: str) -> None:
        """A JoinGroup / SyncGroup error: adjust the member and return None (join again), or
        raise what cannot be retried."""
        if code == ErrorCode.UNKNOWN_MEMBER_ID:
            self._reset_member()
            return None
        if code == ErrorCode.ILLEGAL_GENERATION:
            self.generation = -1
            return None
        if code == ErrorCode.REBALANCE_IN_PROGRESS:
            return None
        if code in COORDINATOR_STALE_CODES:
            self.link.mark_unknown(f"{what} answered {ErrorCode(code).name}")
            await asyncio.sleep(self.retry_backoff_s)
            return None
        if code == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
            await asyncio.sleep(self.retry_backoff_s)
            return None
        raise remote_error(code, f"{what} of group {self.group_id!r}")

    async def _assign(self, protocol: str, members) -> list[dict]:
        """The leader's work: every member's assignment, as SyncGroup entries."""
        assignor = next((a for a in self.assignors if a.name == protocol), None)
        if assignor is None:
            raise KafkaError(f"group {self.group_id!r}: the coordinator chose protocol "
                             f"{protocol!r}, which this consumer did not offer")
        subscriptions: dict[str, MemberSubscription] = {}
        for member in members:
            try:
                topics = decode_subscription(member.metadata).topics
            except ValueError as exc:
                log.warning("group %r: member %s sent a subscription that does not decode "
                            "(%s); it gets no partitions", self.group_id, member.member_id, exc)
                topics = ()
            subscriptions[member.member_id] = MemberSubscription(
                topics, getattr(member, "group_instance_id", None))
        topics = sorted({t for s in subscriptions.values() for t in s.topics})
        if topics:
            await self.cluster.refresh(topics)
        counts = self._partition_counts(topics)
        result = assignor.assign(counts, subscriptions)
        self._assigned_counts = counts
        self._checked_snapshot = self.cluster.snapshot
        log.debug("group %r generation %d: %s assignment %s", self.group_id, self.generation,
                  protocol, result)
        return [{"member_id": member, "assignment": encode_assignment(result.get(member, ()))}
                for member in subscriptions]

    def _partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        snapshot = self.cluster.snapshot
        counts = {}
        for topic in topics:
            t = snapshot.topics.get(topic)
            if t is not None and t.error_code == 0 and t.partitions:
                counts[topic] = len(t.partitions)
        return counts

    def _check_metadata(self) -> None:
        """Leader: re-join when a topic of the group changed its partitions (or appeared or
        vanished) since the assignment was computed."""
        if self._assigned_counts is None or self.state != STABLE:
            return
        snapshot = self.cluster.snapshot
        if snapshot is self._checked_snapshot:
            return
        self._checked_snapshot = snapshot
        topics = {t for t in self._assigned_counts} | set(self.subscription or ())
        counts = self._partition_counts(topics)
        if counts != {t: n for t, n in self._assigned_counts.items()}:
            log.info("group %r: partitions changed (%s -> %s); re-joining", self.group_id,
                     self._assigned_counts, counts)
            self.rejoin_needed = True

    def _reset_member(self) -> None:
        self.member_id = ""
        self.generation = -1

    # ---- heartbeats -------------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat_wake = asyncio.Event()
            self._heartbeat = asyncio.ensure_future(self._heartbeat_loop())
            self._heartbeat.add_done_callback(self._heartbeat_done)
        self._heartbeat_wake.set()

    def _heartbeat_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.consumer._report(task.exception())

    async def _heartbeat_loop(self) -> None:
        next_beat = 0.0
        while not self._closed:
            wait = None if self.state != STABLE else max(0.0, next_beat - time.monotonic())
            try:
                async with asyncio.timeout(wait):
                    await self._heartbeat_wake.wait()
            except TimeoutError:
                pass
            self._heartbeat_wake.clear()
            if self.state != STABLE or self._closed:
                continue
            now = time.monotonic()
            if (not self._polling
                    and (now - self._last_poll) * 1000 > self.max_poll_interval_ms):
                log.warning("group %r: no getmany for more than max_poll_interval_ms (%d ms): "
                            "leaving the group; the next getmany joins again", self.group_id,
                            self.max_poll_interval_ms)
                await self._leave("max_poll_interval_ms passed")
                self.consumer._wake()
                continue
            if now < next_beat:
                continue
            if (now - self._last_heartbeat_ok) * 1000 > self.session_timeout_ms:
                self.link.mark_unknown("no heartbeat answered within session_timeout_ms")
            if now - self.cluster.last_refresh > self.metadata_max_age_s:
                self.consumer._refresh_metadata()
            next_beat = now + self.heartbeat_interval_s
            next_beat = await self._beat(next_beat)

    async def _beat(self, next_beat: float) -> float:
        """One Heartbeat; returns when the next one is due."""
        generation = self.generation
        try:
            answer = await self.link.request(ApiKey.HEARTBEAT, {
                "group_id": self.group_id, "generation_id": generation,
                "member_id": self.member_id, "group_instance_id": self.group_instance_id})
        except KafkaError as exc:
            if not exc.retriable:
                raise
            return time.monotonic() + self.retry_backoff_s
        if self.state != STABLE or generation != self.generation:
            return next_beat  # a rebalance started meanwhile: this answer is about the past
        code = int(answer.error_code)
        if code == 0:
            self._last_heartbeat_ok = time.monotonic()
            return next_beat
        if code == ErrorCode.REBALANCE_IN_PROGRESS:
            self._last_heartbeat_ok = time.monotonic()
            if not self.rejoin_needed:
                log.info("group %r: rebalance started; re-joining", self.group_id)
            self.rejoin_needed = True
            self.consumer._wake()
            return next_beat
        if code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.ILLEGAL_GENERATION):
            log.info("group %r: heartbeat answered %s; partitions lost, re-joining",
                     self.group_id, ErrorCode(code).name)
            if code == ErrorCode.UNKNOWN_MEMBER_ID:
                self._reset_member()
            else:
                self.generation = -1
            self.state = UNJOINED
            self.rejoin_needed = True
            self.consumer._wake()
            return next_beat
        if code in COORDINATOR_STALE_CODES:
            self.link.mark_unknown(f"Heartbeat answered {ErrorCode(code).name}")
            return time.monotonic() + self.retry_backoff_s
        error = remote_error(code, f"Heartbeat of group {self.group_id!r}")
        if error.retriable:
            return time.monotonic() + self.retry_backoff_s
        self.state = UNJOINED
        raise error

    # ---- leaving ----------------------------------------------------------------------------

    async def _leave(self, reason: str) -> None:
        """LeaveGroup (dynamic members only, as the Java client), then forget the member."""
        member_id = self.member_id
        self._reset_member()
        self.state = UNJOINED
        self.rejoin_needed = True
        if not member_id or self.group_instance_id is not None:
            return
        try:
            answer = await self.link.request(ApiKey.LEAVE_GROUP, {
                "group_id": self.group_id, "member_id": member_id,
                "members": [{"member_id": member_id, "group_instance_id": None}]},
                timeout_ms=min(self.request_timeout_ms, 5000))
            code = int(answer.error_code)
            if code:
                log.info("group %r: LeaveGroup answered %s", self.group_id,
                         remote_error(code))
        except KafkaError as exc:
            log.info("group %r: LeaveGroup failed (%s): the coordinator drops the member "
                     "after session_timeout_ms", self.group_id, exc)
        log.info("group %r: member %s left (%s)", self.group_id, member_id, reason)

    async def leave_group(self) -> None:
        """Revoke (committing with auto-commit) and leave; the subscription is dropped."""
        await self._cancel_rebalance()
        await self._give_up_partitions(why="unsubscribe")
        await self._leave("unsubscribed")
        self.subscription = None
        self.rejoin_needed = False

    async def _cancel_rebalance(self) -> None:
        task = self._rebalance
        if task is not None:
            joining = self.state == JOINING
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if joining:
                # The coordinator answers a connection's requests in order and holds a
                # JoinGroup until the rebalance completes: a LeaveGroup must not queue
                # behind the abandoned one, so it goes on a new connection.
                self.link.mark_unknown("a join was abandoned")

    async def close(self) -> None:
        """Commit (auto-commit), revoke, leave, stop heartbeating, close the connection."""
        if self._closed:
            return
        try:
            await self._cancel_rebalance()
            if self.subscription is not None:
                await self._give_up_partitions(why="close")
                await self._leave("the consumer is closing")
            elif self.enable_auto_commit:
                await self._commit_quietly(self._changed_positions(), "close")
        finally:
            self._closed = True
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                await asyncio.gather(self._heartbeat, return_exceptions=True)
            await self.link.close()

    # ---- offsets ----------------------------------------------------------------------------

    def _changed_positions(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Positions of the owned partitions that moved since this member last committed."""
        positions = self.consumer._positions()
        return {tp: OffsetAndMetadata(offset) for tp, offset in positions.items()
                if self._last_committed.get(tp) != offset}

    async def _auto_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            await self.commit_once(offsets)
        except KafkaError as exc:
            log.info("group %r: auto-commit failed (%s); retried in %.0f ms", self.group_id,
                     exc, self.auto_commit_interval_s * 1000)

    async def _commit_quietly(self, offsets, why: str) -> None:
        try:
            await self.commit(offsets, timeout_ms=self.request_timeout_ms)
        except KafkaError as exc:
            log.warning("group %r: commit before %s failed: %s", self.group_id, why, exc)

    def _commit_identity(self) -> tuple[int, str]:
        """(generation, member id) a commit carries now; raises when none can be sent."""
        if self.subscription is None and self.owned is None:
            return -1, ""  # manual assignment: a standalone commit
        if self.state in (STABLE, PREPARING) and self.generation >= 0:
            return self.generation, self.member_id
        if self.state == JOINING:
            raise RebalanceInProgressError(
                ErrorCode.REBALANCE_IN_PROGRESS,
                f"group {self.group_id!r} is rebalancing: commit once it is done")
        raise CommitFailedError(f"this consumer is not a member of group {self.group_id!r} "
                                "now (it re-joins on its next getmany)")

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], *,
                     timeout_ms: int) -> None:
        """Commit, retrying retriable errors until ``timeout_ms`` passes."""
        deadline = time.monotonic() + timeout_ms / 1000
        pending = dict(offsets)
        while pending:
            try:
                pending = await self._commit_round(pending)
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                error = exc
            else:
                if not pending:
                    return
                error = None
            if time.monotonic() + self.retry_backoff_s >= deadline:
                raise error or KafkaTimeoutError(
                    f"commit to group {self.group_id!r} did not complete in {timeout_ms} ms")
            await asyncio.sleep(self.retry_backoff_s)

    async def commit_once(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """One OffsetCommit (commit_async / auto-commit: no retry, so an older commit never
        lands after a newer one)."""
        left = await self._commit_round(dict(offsets))
        if left:
            tp = next(iter(left))
            raise KafkaTimeoutError(f"commit of {tp} to group {self.group_id!r} must be "
                                    "retried (coordinator busy or moving)")

    async def _commit_round(self, offsets: dict[TopicPartition, OffsetAndMetadata]
                            ) -> dict[TopicPartition, OffsetAndMetadata]:
        """One OffsetCommit: returns what must be retried; raises what cannot be."""
        if not offsets:
            return {}
        generation, member_id = self._commit_identity()
        codes = await self.link.offset_commit(offsets, generation=generation,
                                              member_id=member_id,
                                              group_instance_id=self.group_instance_id)
        retry = {}
        for tp, code in codes.items():
            if code == 0:
                self._last_committed[tp] = offsets[tp].offset
                continue
            if code in _COMMIT_RETRIABLE:
                if code in COORDINATOR_STALE_CODES:
                    self.link.mark_unknown(f"OffsetCommit answered {ErrorCode(code).name}")
                retry[tp] = offsets[tp]
                continue
            if code == ErrorCode.REBALANCE_IN_PROGRESS:
                self.rejoin_needed = True
                self.consumer._wake()
                raise RebalanceInProgressError(code, f"commit to group {self.group_id!r}")
            if code in (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.ILLEGAL_GENERATION):
                if generation >= 0 and generation == self.generation:
                    if code == ErrorCode.UNKNOWN_MEMBER_ID:
                        self._reset_member()
                    else:
                        self.generation = -1
                    self.state = UNJOINED if self.state == STABLE else self.state
                    self.rejoin_needed = True
                    self.consumer._wake()
                raise CommitFailedError(
                    f"commit to group {self.group_id!r} refused ({ErrorCode(code).name}): the "
                    "group has rebalanced and the partitions may belong to another member",
                    code)
            raise remote_error(code, f"commit of {tp.topic}-{tp.partition} to group "
                                     f"{self.group_id!r}")
        return retry

    async def committed(self, partitions: Iterable[TopicPartition], *, timeout_ms: int
                        ) -> dict[TopicPartition, OffsetAndMetadata | None]:
        """The committed offsets of ``partitions`` (None where the group has none)."""
        wanted = list(partitions)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            error: KafkaError | None = None
            try:
                code, found = await self.link.offset_fetch(wanted)
                # UNKNOWN_TOPIC_OR_PARTITION for one partition: nothing committed there.
                codes = [code] + [c for _, c in found.values()
                                  if c != ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]
                bad = next((c for c in codes if c), 0)
                if not bad:
                    from pylog.client.consumer import TopicPartition
                    return {TopicPartition(*tp): found.get(tp, (None, 0))[0] for tp in wanted}
                if bad in COORDINATOR_STALE_CODES:
                    self.link.mark_unknown(f"OffsetFetch answered {ErrorCode(bad).name}")
                error = remote_error(bad, f"OffsetFetch of group {self.group_id!r}")
                if not error.retriable:
                    raise error
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                error = exc
            if time.monotonic() + self.retry_backoff_s >= deadline:
                raise error
            await asyncio.sleep(self.retry_backoff_s)
