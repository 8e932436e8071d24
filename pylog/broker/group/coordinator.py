"""The classic group coordinator: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
OffsetFetch, ListGroups, DescribeGroups and DeleteGroups over the groups of the offsets
partitions this broker leads.

Theory of operation (Kafka's classic GroupCoordinator, on one asyncio loop)
--------------------------------------------------------------------------
The groups are ``group.Group`` state machines; this class decides what each request does to
them, answers it, and keeps their timers in the broker's purgatory (``delayed``):

- JoinGroup and SyncGroup may have to wait for other members. Their answer is a future; the
  group holds a callback that resolves it (``Member.awaiting_join`` / ``awaiting_sync``)
  and the coordinator calls it when the rebalance gets there. Heartbeat, LeaveGroup,
  OffsetFetch, ListGroups and DescribeGroups answer at once.
- PreparingRebalance ends through a DelayedJoin (every member re-joined, or the longest
  rebalance timeout passed: the members that did not re-join are removed). An empty group's
  first rebalance waits group.initial.rebalance.delay.ms (0 by default: the first member is
  answered at once and later members start a new rebalance).
- Every member has a DelayedHeartbeat: a heartbeat, a commit or a completed rebalance
  replaces it; when it expires the member is removed (a rebalance for the others) unless it is
  waiting in a rebalance, which its rebalance timeout bounds instead. A new member that never
  completed a join gets NEW_MEMBER_JOIN_TIMEOUT_MS; a pending member (MEMBER_ID_REQUIRED) its
  session timeout to come back.
- After a generation is formed every member must send SyncGroup within the rebalance timeout
  (DelayedSync), else it is removed and the group rebalances.
- The leader's SyncGroup writes the generation (GroupMetadataValue) to the offsets partition;
  only when the high watermark passed it are the assignments handed out and the group Stable.
  A write failure sends the members back to re-join.
- OffsetCommit writes one batch of OffsetCommitKey/Value records and answers once the high
  watermark passed it; only then does the offset count for OffsetFetch. DeleteGroups writes
  tombstones for every offset and the group.

Ownership: the coordinator serves a group only while this broker leads the group's offsets
partition and has loaded it (``on_metadata`` follows the controller: a partition it starts
leading is loaded in a task — its groups answer COORDINATOR_LOAD_IN_PROGRESS meanwhile — and
one it stops leading is unloaded, held requests answered NOT_COORDINATOR). Elsewhere the
answer is NOT_COORDINATOR, and the client asks FindCoordinator again.

Static membership (KIP-345, group_instance_id) is not supported: a JoinGroup with a group
instance id is refused with INVALID_REQUEST (see ``STATIC_MEMBERSHIP_UNSUPPORTED``); with no
static member ever registered, the other apis ignore an instance id exactly as Kafka does for
an unknown one.

Everything runs on the event-loop thread; the only awaits are log appends (and loading), after
which the group's state is checked again.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pylog.protocol import ErrorCode

from pylog.broker.group.config import GroupConfig
from pylog.broker.group.delayed import (DelayedHeartbeat, DelayedJoin, DelayedSync,
                                        InitialDelayedJoin, heartbeat_key, join_key, sync_key)
from pylog.broker.group.group import (Group, GroupState, JoinGroupResult, Member,
                                      OffsetAndMetadata, Protocol, SyncGroupResult)
from pylog.broker.group.loader import PartitionLoader
from pylog.broker.group.offsets_topic import OffsetsTopic
from pylog.broker.group.schemas import (GroupMetadataValue, MemberMetadataValue,
                                        OffsetCommitValue, group_metadata_key,
                                        group_metadata_value, offset_commit_key,
                                        offset_commit_value)
from pylog.broker.purgatory import Purgatory

__all__ = [
    "GroupCoordinator", "LeaveGroupResult", "MemberLeave", "OffsetCommitEntry",
    "OffsetFetchResult", "GroupOverview", "GroupDescription", "MemberDescription",
    "NEW_MEMBER_JOIN_TIMEOUT_MS", "STATIC_MEMBERSHIP_UNSUPPORTED",
]

_default_logger = logging.getLogger("pylog.broker.group.coordinator")

#: How long a new member's first JoinGroup may be held (Kafka's NewMemberJoinTimeoutMs).
NEW_MEMBER_JOIN_TIMEOUT_MS = 300_000
#: The answer to a JoinGroup with a group instance id: static membership is not implemented.
#: INVALID_REQUEST because the request is valid Kafka but this broker cannot serve it and
#: every client treats 42 as fatal, so a consumer configured with group.instance.id fails at
#: once with a clear error instead of silently running as a dynamic member.
STATIC_MEMBERSHIP_UNSUPPORTED = ErrorCode.INVALID_REQUEST


# ---- results of the immediate apis ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MemberLeave:
    member_id: str
    group_instance_id: str | None
    error_code: int


@dataclass(frozen=True, slots=True)
class LeaveGroupResult:
    error_code: int
    members: tuple[MemberLeave, ...] = ()


@dataclass(frozen=True, slots=True)
class OffsetCommitEntry:
    """One partition of an OffsetCommit request."""
    offset: int
    leader_epoch: int = -1
    metadata: str | None = None


@dataclass(frozen=True, slots=True)
class OffsetFetchResult:
    """``offsets``: (topic, partition, committed or None) in the order asked (all of the
    group's offsets, sorted, when all were asked for)."""
    error_code: int
    offsets: tuple[tuple[str, int, OffsetAndMetadata | None], ...] = ()


@dataclass(frozen=True, slots=True)
class GroupOverview:
    group_id: str
    protocol_type: str
    state: str


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupDescription:
    error_code: int
    group_id: str
    state: str = GroupState.DEAD.value
    protocol_type: str = ""
    protocol: str = ""
    members: tuple[MemberDescription, ...] = ()


def _random_member_id(client_id: str) -> str:
    return f"{client_id}-{uuid.uuid4()}"


def _responder(future: asyncio.Future) -> Callable[[Any], None]:
    """A callback that resolves ``future`` unless its caller stopped waiting."""
    def respond(result: Any) -> None:
        if not future.done():
            future.set_result(result)
    return respond


def _store_error(code: int) -> int:
    """A group metadata write's error as SyncGroup reports it (Kafka's storeGroup)."""
    if code in (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.NOT_ENOUGH_REPLICAS,
                ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, ErrorCode.REQUEST_TIMED_OUT):
        return ErrorCode.COORDINATOR_NOT_AVAILABLE
    if code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.KAFKA_STORAGE_ERROR):
        return ErrorCode.NOT_COORDINATOR
    if code in (ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.RECORD_LIST_TOO_LARGE,
                ErrorCode.INVALID_FETCH_SIZE):
        return ErrorCode.UNKNOWN_SERVER_ERROR
    return code


def _commit_error(code: int) -> int:
    """An offset commit write's error as OffsetCommit reports it (Kafka's storeOffsets)."""
    if code in (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.NOT_ENOUGH_REPLICAS,
                ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND):
        return ErrorCode.COORDINATOR_NOT_AVAILABLE
    if code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.KAFKA_STORAGE_ERROR):
        return ErrorCode.NOT_COORDINATOR
    if code in (ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.RECORD_LIST_TOO_LARGE,
                ErrorCode.INVALID_FETCH_SIZE):
        return ErrorCode.INVALID_COMMIT_OFFSET_SIZE
    return code


class GroupCoordinator:
    """The group coordinator of one broker, over its ``OffsetsTopic``.

    ``loop``: the event loop (default: the running one, taken when first needed); purgatory
    deadlines use its clock. ``wall_clock_ms``: timestamps stored with groups and offsets.
    ``new_member_id(client_id)``: member ids (default ``client_id-uuid4``, as Kafka).
    """

    def __init__(self, config: GroupConfig, offsets: OffsetsTopic, *,
                 loop: asyncio.AbstractEventLoop | None = None,
                 wall_clock_ms: Callable[[], int] | None = None,
                 new_member_id: Callable[[str], str] | None = None,
                 logger: logging.Logger | None = None):
        self.config = config
        self.offsets = offsets
        self.logger = logger or _default_logger
        self._loop = loop
        self._wall_clock_ms = wall_clock_ms or offsets.wall_clock_ms
        self._new_member_id = new_member_id or _random_member_id
        self._purgatory = Purgatory("group-coordinator", loop=loop)
        # Invariant: the groups of the owned partitions, and only those, by id.
        self._groups: dict[str, Group] = {}
        # Offsets partitions led here and loaded: their groups are served.
        self._owned: set[int] = set()
        # Offsets partitions led here being loaded (never also in _owned).
        self._loading: dict[int, asyncio.Task] = {}
        # (group id, member id) -> the session timer of that member or pending member.
        self._heartbeats: dict[tuple[str, str], DelayedHeartbeat] = {}
        # Background work (group metadata writes); cancelled at close.
        self._tasks: set[asyncio.Task] = set()
        self._controller: Any = None
        # True between start() and close(): requests are served.
        self._active = False

    # ---- life --------------------------------------------------------------------------------

    def start(self, controller: Any = None) -> None:
        """Serve: follow ``controller``'s metadata (if given) and load every offsets partition
        this broker leads now. Call on the running loop."""
        self._event_loop()
        self._active = True
        if controller is not None:
            self._controller = controller
            controller.add_listener(self.on_metadata)
        self.on_metadata()

    async def wait_loaded(self) -> None:
        """Until no offsets partition is being loaded."""
        while self._loading:
            await asyncio.gather(*list(self._loading.values()), return_exceptions=True)

    async def close(self) -> None:
        """Stop serving: held JoinGroups and SyncGroups answer NOT_COORDINATOR (the clients
        look for the coordinator again), timers stop, background writes are cancelled."""
        if not self._active:
            return
        self._active = False
        if self._controller is not None:
            try:
                self._controller.remove_listener(self.on_metadata)
            except ValueError:
                pass
        for task in self._loading.values():
            task.cancel()
        for group in list(self._groups.values()):
            self._unload_group(group)
        self._owned.clear()
        self._purgatory.close()
        for task in list(self._tasks):
            task.cancel()
        pending = list(self._loading.values()) + list(self._tasks)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._loading.clear()

    @property
    def active(self) -> bool:
        return self._active

    @property
    def purgatory(self) -> Purgatory:
        return self._purgatory

    def group(self, group_id: str) -> Group | None:
        """The group (for tests and admin views); read-only for callers."""
        return self._groups.get(group_id)

    def groups(self) -> list[Group]:
        return list(self._groups.values())

    def partition_for(self, group_id: str) -> int:
        return self.offsets.partition_for(group_id)

    @property
    def owned_partitions(self) -> frozenset[int]:
        return frozenset(self._owned)

    @property
    def loading_partitions(self) -> frozenset[int]:
        return frozenset(self._loading)

    # ---- ownership ---------------------------------------------------------------------------

    def on_metadata(self, _metadata: Any = None) -> None:
        """Load the offsets partitions this broker started leading, unload those it stopped
        leading (the controller's listener; level-triggered)."""
        if not self._active:
            return
        led = self.offsets.led_partitions()
        for partition in sorted(led - self._owned - set(self._loading)):
            task = self._event_loop().create_task(self._load(partition),
                                                  name=f"pylog-load-offsets-{partition}")
            self._loading[partition] = task
        for partition in sorted((self._owned | set(self._loading)) - led):
            self._resign(partition)

    async def _load(self, partition: int) -> None:
        loader = PartitionLoader(partition)
        try:
            async for record in self.offsets.read(partition):
                loader.apply(record)
        except asyncio.CancelledError:
            self._loading.pop(partition, None)
            raise
        except Exception:
            self.logger.exception("loading offsets partition %d failed: its groups answer "
                                  "NOT_COORDINATOR until the next metadata change retries",
                                  partition)
            self._loading.pop(partition, None)
            return
        if self._loading.get(partition) is not asyncio.current_task():
            return  # resigned meanwhile
        del self._loading[partition]
        now = self._wall_clock_ms()
        groups = loader.groups(now)
        for group in groups:
            self._groups[group.group_id] = group
            for member in group.members.values():
                self._schedule_heartbeat(group, member, member.session_timeout_ms)
        self._owned.add(partition)
        if loader.records:
            self.logger.info("loaded offsets partition %d: %d records, %d groups, %d offsets "
                             "(%d records skipped)", partition, loader.records, len(groups),
                             sum(len(g.offsets) for g in groups), loader.skipped)

    def _resign(self, partition: int) -> None:
        task = self._loading.pop(partition, None)
        if task is not None:
            task.cancel()
        for group in [g for g in self._groups.values() if g.partition == partition]:
            self._unload_group(group)
        self._owned.discard(partition)

    def _unload_group(self, group: Group) -> None:
        """Forget a group this broker no longer coordinates (its data stays in the log)."""
        group.transition_to(GroupState.DEAD, self._wall_clock_ms())
        for member in list(group.members.values()):
            group.maybe_invoke_join_callback(
                member, JoinGroupResult.error(member.member_id, ErrorCode.NOT_COORDINATOR))
            group.maybe_invoke_sync_callback(member, SyncGroupResult(ErrorCode.NOT_COORDINATOR))
        for member_id in list(group.members) + list(group.pending_members):
            self._cancel_heartbeat(group.group_id, member_id)
        self._purgatory.check(join_key(group.group_id))
        self._purgatory.check(sync_key(group.group_id))
        if self._groups.get(group.group_id) is group:
            del self._groups[group.group_id]

    def _validate_group_status(self, group_id: str | None, *, needs_id: bool) -> int | None:
        """Kafka's validateGroupStatus: the error for a request about ``group_id``, or None.
        ``needs_id``: the api needs a non-empty group id (every api but the offset and admin
        ones)."""
        if group_id is None or (needs_id and not group_id):
            return ErrorCode.INVALID_GROUP_ID
        if not self._active:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        partition = self.partition_for(group_id)
        if partition in self._loading:
            return ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        if partition not in self._owned:
            return ErrorCode.NOT_COORDINATOR
        return None

    def _add_group(self, group_id: str) -> Group:
        group = Group(group_id, self.partition_for(group_id), now_ms=self._wall_clock_ms())
        self._groups[group_id] = group
        return group

    def _maybe_drop(self, group: Group) -> None:
        """Forget a group created by a request that left nothing in it."""
        if group.is_removable() and self._groups.get(group.group_id) is group:
            del self._groups[group.group_id]

    # ---- JoinGroup ---------------------------------------------------------------------------

    def join_group(self, group_id: str, member_id: str, group_instance_id: str | None,
                   client_id: str, client_host: str, session_timeout_ms: int,
                   rebalance_timeout_ms: int, protocol_type: str,
                   protocols: Sequence[Protocol], *, require_known_member_id: bool
                   ) -> asyncio.Future:
        """A JoinGroup; the future gives its JoinGroupResult (maybe only after the rebalance).
        ``require_known_member_id``: JoinGroup v4+ (an empty member id gets
        MEMBER_ID_REQUIRED with a new id to join with)."""
        future = self._event_loop().create_future()
        respond = _responder(future)
        error = self._validate_group_status(group_id, needs_id=True)
        if error is None and group_instance_id is not None:
            self.logger.info("group %r: refusing JoinGroup with group instance id %r: static "
                             "membership is not supported", group_id, group_instance_id)
            error = STATIC_MEMBERSHIP_UNSUPPORTED
        if error is None and not (self.config.min_session_timeout_ms <= session_timeout_ms
                                  <= self.config.max_session_timeout_ms):
            error = ErrorCode.INVALID_SESSION_TIMEOUT
        if error is not None:
            respond(JoinGroupResult.error(member_id, error))
            return future
        offered = _unique_protocols(protocols)
        group = self._groups.get(group_id)
        if group is None:
            if member_id:
                respond(JoinGroupResult.error(member_id, ErrorCode.UNKNOWN_MEMBER_ID))
                return future
            group = self._add_group(group_id)
        if not member_id:
            self._join_new_member(group, client_id, client_host, session_timeout_ms,
                                  rebalance_timeout_ms, protocol_type, offered,
                                  require_known_member_id, respond)
        else:
            self._join_current_member(group, member_id, client_id, client_host,
                                      session_timeout_ms, rebalance_timeout_ms, protocol_type,
                                      offered, respond)
        if group.state is GroupState.PREPARING_REBALANCE:
            self._purgatory.check(join_key(group_id))
        self._maybe_drop(group)
        return future

    def _join_new_member(self, group: Group, client_id: str, client_host: str,
                         session_timeout_ms: int, rebalance_timeout_ms: int, protocol_type: str,
                         protocols: tuple[Protocol, ...], require_known_member_id: bool,
                         respond: Callable[[JoinGroupResult], None]) -> None:
        if group.state is GroupState.DEAD:
            respond(JoinGroupResult.error("", ErrorCode.COORDINATOR_NOT_AVAILABLE))
            return
        if not group.supports_protocols(protocol_type, [name for name, _ in protocols]):
            respond(JoinGroupResult.error("", ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
            return
        member_id = self._new_member_id(client_id)
        if require_known_member_id:
            # KIP-394: the member comes back with this id; until then it is pending and
            # holds up a rebalance in progress, at most for its session timeout.
            group.add_pending_member(member_id)
            self._schedule_heartbeat_of(group, member_id, session_timeout_ms, pending=True)
            respond(JoinGroupResult.error(member_id, ErrorCode.MEMBER_ID_REQUIRED))
            return
        self._add_member_and_rebalance(group, member_id, client_id, client_host,
                                       session_timeout_ms, rebalance_timeout_ms, protocol_type,
                                       protocols, respond)

    def _join_current_member(self, group: Group, member_id: str, client_id: str,
                             client_host: str, session_timeout_ms: int,
                             rebalance_timeout_ms: int, protocol_type: str,
                             protocols: tuple[Protocol, ...],
                             respond: Callable[[JoinGroupResult], None]) -> None:
        if group.state is GroupState.DEAD:
            respond(JoinGroupResult.error(member_id, ErrorCode.COORDINATOR_NOT_AVAILABLE))
            return
        if not group.supports_protocols(protocol_type, [name for name, _ in protocols]):
            respond(JoinGroupResult.error(member_id, ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
            return
        if group.is_pending_member(member_id):
            self._add_member_and_rebalance(group, member_id, client_id, client_host,
                                           session_timeout_ms, rebalance_timeout_ms,
                                           protocol_type, protocols, respond)
            return
        member = group.members.get(member_id)
        if member is None:
            respond(JoinGroupResult.error(member_id, ErrorCode.UNKNOWN_MEMBER_ID))
            return
        state = group.state
        if state is GroupState.PREPARING_REBALANCE:
            self._update_member_and_rebalance(group, member, protocols, rebalance_timeout_ms,
                                              session_timeout_ms, respond,
                                              f"member {member_id} re-joined")
        elif state is GroupState.COMPLETING_REBALANCE:
            if member.matches(protocols):
                # The same metadata: it missed the answer of this generation; answer again.
                respond(self._join_result(group, member))
            else:
                self._update_member_and_rebalance(group, member, protocols,
                                                  rebalance_timeout_ms, session_timeout_ms,
                                                  respond, f"member {member_id} changed its "
                                                  "metadata during CompletingRebalance")
        elif state is GroupState.STABLE:
            if group.is_leader(member_id):
                # The leader re-joining asks for a rebalance (e.g. the topics changed).
                self._update_member_and_rebalance(group, member, protocols,
                                                  rebalance_timeout_ms, session_timeout_ms,
                                                  respond, f"leader {member_id} re-joined")
            elif not member.matches(protocols):
                self._update_member_and_rebalance(group, member, protocols,
                                                  rebalance_timeout_ms, session_timeout_ms,
                                                  respond, f"member {member_id} changed its "
                                                  "metadata")
            else:
                respond(self._join_result(group, member, with_members=False))
        else:  # Empty: a member id of a group that has none; let the client start over
            respond(JoinGroupResult.error(member_id, ErrorCode.UNKNOWN_MEMBER_ID))

    def _add_member_and_rebalance(self, group: Group, member_id: str, client_id: str,
                                  client_host: str, session_timeout_ms: int,
                                  rebalance_timeout_ms: int, protocol_type: str,
                                  protocols: tuple[Protocol, ...],
                                  respond: Callable[[JoinGroupResult], None]) -> None:
        member = Member(member_id, None, client_id, client_host, rebalance_timeout_ms,
                        session_timeout_ms, protocol_type, protocols, is_new=True)
        if group.state is GroupState.PREPARING_REBALANCE and group.generation_id == 0:
            group.new_member_added = True
        group.add(member, respond)
        # New members cannot heartbeat before their first answer; a JoinGroup abandoned by
        # its client is dropped after NEW_MEMBER_JOIN_TIMEOUT_MS.
        self._schedule_heartbeat(group, member, NEW_MEMBER_JOIN_TIMEOUT_MS)
        self._maybe_prepare_rebalance(group, f"member {member_id} joined")

    def _update_member_and_rebalance(self, group: Group, member: Member,
                                     protocols: tuple[Protocol, ...], rebalance_timeout_ms: int,
                                     session_timeout_ms: int,
                                     respond: Callable[[JoinGroupResult], None],
                                     reason: str) -> None:
        # A JoinGroup of this member still held is superseded by this one: its client gave up
        # on it (or pipelined another); answer it so nothing waits behind it.
        group.maybe_invoke_join_callback(member, JoinGroupResult.error(
            member.member_id, ErrorCode.REBALANCE_IN_PROGRESS))
        group.update_member(member, protocols, rebalance_timeout_ms, session_timeout_ms,
                            respond)
        self._maybe_prepare_rebalance(group, reason)

    def _join_result(self, group: Group, member: Member, *, with_members: bool = True
                     ) -> JoinGroupResult:
        leader = group.is_leader(member.member_id)
        return JoinGroupResult(
            ErrorCode.NONE, member.member_id, group.generation_id, group.protocol_type,
            group.protocol_name, group.leader_id or "",
            group.current_member_metadata() if leader and with_members else ())

    # ---- rebalance ---------------------------------------------------------------------------

    def _maybe_prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.can_rebalance():
            self._prepare_rebalance(group, reason)

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.state is GroupState.COMPLETING_REBALANCE:
            self._reset_and_propagate_assignment_error(group, ErrorCode.REBALANCE_IN_PROGRESS)
        self._remove_sync_expiration(group)
        if group.state is GroupState.EMPTY:
            delay = self.config.initial_rebalance_delay_ms
            operation: DelayedJoin = InitialDelayedJoin(
                self, group, delay, delay, max(group.rebalance_timeout_ms - delay, 0))
            timeout_ms = delay
        else:
            operation = DelayedJoin(self, group)
            timeout_ms = group.rebalance_timeout_ms
        group.transition_to(GroupState.PREPARING_REBALANCE, self._wall_clock_ms())
        self.logger.info("group %r: preparing to rebalance (generation %d): %s",
                         group.group_id, group.generation_id, reason)
        self._purgatory.watch(operation, [join_key(group.group_id)], timeout_ms / 1000)

    def join_is_complete(self, group: Group) -> bool:
        """DelayedJoin's condition: every member re-joined and no pending member is left."""
        return group.state is not GroupState.PREPARING_REBALANCE \
            or group.has_all_members_joined()

    def on_initial_delay_expired(self, operation: InitialDelayedJoin) -> None:
        group = operation.group
        if (group.state is GroupState.PREPARING_REBALANCE and group.new_member_added
                and operation.remaining_ms > 0):
            group.new_member_added = False
            delay = min(operation.configured_delay_ms, operation.remaining_ms)
            remaining = max(operation.remaining_ms - operation.delay_ms, 0)
            self._purgatory.watch(
                InitialDelayedJoin(self, group, operation.configured_delay_ms, delay, remaining),
                [join_key(group.group_id)], delay / 1000)
            return
        self.on_complete_join(group)

    def on_complete_join(self, group: Group) -> None:
        """End PreparingRebalance: drop members that did not re-join, form the generation and
        answer every held JoinGroup (the leader with every member's metadata)."""
        if group.state is not GroupState.PREPARING_REBALANCE \
                or self._groups.get(group.group_id) is not group:
            return
        for member in group.not_yet_rejoined_members():
            self.logger.info("group %r: removing member %s, which did not re-join in time",
                             group.group_id, member.member_id)
            group.remove(member.member_id)
            self._cancel_heartbeat(group.group_id, member.member_id)
        if not group.maybe_elect_new_joined_leader() and group.members:
            self.logger.error("group %r: no member re-joined; waiting another rebalance "
                              "timeout", group.group_id)
            self._purgatory.watch(DelayedJoin(self, group), [join_key(group.group_id)],
                                  group.rebalance_timeout_ms / 1000)
            return
        group.init_next_generation(self._wall_clock_ms())
        if group.state is GroupState.EMPTY:
            self.logger.info("group %r: generation %d is empty", group.group_id,
                             group.generation_id)
            self._spawn(self._store_empty_group(group))
            return
        self.logger.info("group %r: generation %d formed with %d members, protocol %r, "
                         "leader %s", group.group_id, group.generation_id, len(group.members),
                         group.protocol_name, group.leader_id)
        for member in list(group.members.values()):
            group.maybe_invoke_join_callback(member, self._join_result(group, member))
            self._schedule_heartbeat(group, member, member.session_timeout_ms)
            member.is_new = False
            group.pending_sync_members.add(member.member_id)
        self._purgatory.watch(DelayedSync(self, group, group.generation_id),
                              [sync_key(group.group_id)], group.rebalance_timeout_ms / 1000)

    # ---- SyncGroup ---------------------------------------------------------------------------

    def sync_group(self, group_id: str, generation_id: int, member_id: str,
                   group_instance_id: str | None, assignments: Mapping[str, bytes]
                   ) -> asyncio.Future:
        """A SyncGroup; the future gives its SyncGroupResult (a follower's only once the
        leader's assignment is stored)."""
        future = self._event_loop().create_future()
        respond = _responder(future)
        error = self._validate_group_status(group_id, needs_id=True)
        if error == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
            error = ErrorCode.REBALANCE_IN_PROGRESS  # the client re-joins once loaded
        group = self._groups.get(group_id) if error is None else None
        if error is None:
            if group is None:
                error = ErrorCode.UNKNOWN_MEMBER_ID
            elif group.state is GroupState.DEAD:
                error = ErrorCode.COORDINATOR_NOT_AVAILABLE
            elif not group.has(member_id):
                error = ErrorCode.UNKNOWN_MEMBER_ID
            elif generation_id != group.generation_id:
                error = ErrorCode.ILLEGAL_GENERATION
            elif group.state is GroupState.EMPTY:
                error = ErrorCode.UNKNOWN_MEMBER_ID
            elif group.state is GroupState.PREPARING_REBALANCE:
                error = ErrorCode.REBALANCE_IN_PROGRESS
        if error is not None:
            respond(SyncGroupResult(error))
            return future
        member = group.members[member_id]
        if group.state is GroupState.STABLE:
            self._remove_pending_sync_member(group, member_id)
            respond(SyncGroupResult(ErrorCode.NONE, member.assignment, group.protocol_type,
                                    group.protocol_name))
            self._schedule_heartbeat(group, member, member.session_timeout_ms)
            return future
        # CompletingRebalance: wait for the leader's assignment to be stored.
        group.maybe_invoke_sync_callback(member, SyncGroupResult(ErrorCode.REBALANCE_IN_PROGRESS))
        member.awaiting_sync = respond
        self._remove_pending_sync_member(group, member_id)
        if group.is_leader(member_id):
            assignment = {m: bytes(assignments.get(m, b"")) for m in group.members}
            missing = [m for m in group.members if m not in assignments]
            if missing:
                self.logger.warning("group %r: the leader's assignment leaves out %s; they "
                                    "get an empty one", group_id, missing)
            self._spawn(self._complete_sync(group, group.generation_id, assignment))
        return future

    async def _complete_sync(self, group: Group, generation_id: int,
                             assignment: dict[str, bytes]) -> None:
        code = await self._store_group(group, assignment)
        if (group.state is not GroupState.COMPLETING_REBALANCE
                or group.generation_id != generation_id
                or self._groups.get(group.group_id) is not group):
            return  # the group moved on while the write was in flight
        if code:
            self.logger.warning("group %r: storing generation %d failed (error %d): "
                                "rebalancing", group.group_id, generation_id, code)
            self._reset_and_propagate_assignment_error(group, code)
            self._maybe_prepare_rebalance(group, "storing the group assignment failed")
            return
        for member in group.members.values():
            member.assignment = assignment.get(member.member_id, b"")
        self._propagate_assignment(group, ErrorCode.NONE)
        group.transition_to(GroupState.STABLE, self._wall_clock_ms())
        self.logger.info("group %r: generation %d is stable", group.group_id, generation_id)

    def _propagate_assignment(self, group: Group, error: int) -> None:
        ok = error == ErrorCode.NONE
        for member in list(group.members.values()):
            result = SyncGroupResult(error, member.assignment,
                                     group.protocol_type if ok else None,
                                     group.protocol_name if ok else None)
            if group.maybe_invoke_sync_callback(member, result):
                # Its session may have expired while it waited (expiry is ignored then):
                # start a fresh one.
                self._schedule_heartbeat(group, member, member.session_timeout_ms)

    def _reset_and_propagate_assignment_error(self, group: Group, error: int) -> None:
        for member in group.members.values():
            member.assignment = b""
        self._propagate_assignment(group, error)

    def sync_is_complete(self, group: Group, generation_id: int) -> bool:
        """DelayedSync's condition: the generation ended or every member sent SyncGroup."""
        return (group.state not in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE)
                or group.generation_id != generation_id or not group.pending_sync_members)

    def on_expire_pending_sync(self, group: Group, generation_id: int) -> None:
        if (group.state not in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE)
                or group.generation_id != generation_id
                or self._groups.get(group.group_id) is not group):
            return
        missing = sorted(group.pending_sync_members)
        if not missing:
            return
        self.logger.info("group %r: removing members %s, which sent no SyncGroup in time",
                         group.group_id, missing)
        for member_id in missing:
            member = group.members.get(member_id)
            if member is not None:
                group.maybe_invoke_join_callback(
                    member, JoinGroupResult.error("", ErrorCode.UNKNOWN_MEMBER_ID))
                group.remove(member_id)
                self._cancel_heartbeat(group.group_id, member_id)
        self._maybe_prepare_rebalance(group, f"members {missing} sent no SyncGroup")

    def _remove_pending_sync_member(self, group: Group, member_id: str) -> None:
        group.pending_sync_members.discard(member_id)
        self._purgatory.check(sync_key(group.group_id))

    def _remove_sync_expiration(self, group: Group) -> None:
        group.pending_sync_members.clear()
        self._purgatory.check(sync_key(group.group_id))

    # ---- Heartbeat and sessions --------------------------------------------------------------

    def heartbeat(self, group_id: str, generation_id: int, member_id: str,
                  group_instance_id: str | None = None) -> int:
        """A Heartbeat's error code: 27 while the group prepares a rebalance (how members
        learn to re-join), 0 in CompletingRebalance and Stable."""
        error = self._validate_group_status(group_id, needs_id=True)
        if error == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
            return ErrorCode.NONE  # Kafka answers blindly while loading
        if error is not None:
            return error
        group = self._groups.get(group_id)
        if group is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if group.state is GroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        member = group.members.get(member_id)
        if member is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if generation_id != group.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        if group.state is GroupState.EMPTY:
            return ErrorCode.UNKNOWN_MEMBER_ID
        self._schedule_heartbeat(group, member, member.session_timeout_ms)
        if group.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS
        return ErrorCode.NONE

    def _schedule_heartbeat(self, group: Group, member: Member, timeout_ms: int) -> None:
        self._schedule_heartbeat_of(group, member.member_id, timeout_ms, pending=False)

    def _schedule_heartbeat_of(self, group: Group, member_id: str, timeout_ms: int, *,
                               pending: bool) -> None:
        """(Re)start the session timer of a member or pending member."""
        self._cancel_heartbeat(group.group_id, member_id)
        operation = DelayedHeartbeat(self, group, member_id, pending=pending)
        self._heartbeats[(group.group_id, member_id)] = operation
        self._purgatory.watch(operation, [heartbeat_key(group.group_id, member_id)],
                              timeout_ms / 1000)

    def _cancel_heartbeat(self, group_id: str, member_id: str) -> None:
        operation = self._heartbeats.pop((group_id, member_id), None)
        if operation is not None:
            self._purgatory.cancel(operation)

    def on_expire_heartbeat(self, operation: DelayedHeartbeat) -> None:
        """A session timer ran out: remove the (pending) member unless a rebalance it waits
        in keeps it."""
        group, member_id = operation.group, operation.member_id
        key = (group.group_id, member_id)
        if self._heartbeats.get(key) is operation:
            del self._heartbeats[key]
        if group.state is GroupState.DEAD or self._groups.get(group.group_id) is not group:
            return
        if operation.pending:
            if group.remove_pending_member(member_id):
                self.logger.info("group %r: pending member %s did not join within its session "
                                 "timeout", group.group_id, member_id)
                if group.state is GroupState.PREPARING_REBALANCE:
                    self._purgatory.check(join_key(group.group_id))
                self._maybe_drop(group)
            return
        member = group.members.get(member_id)
        if member is None:
            return
        if not member.is_new and (member.is_awaiting_join or member.is_awaiting_sync):
            return  # the rebalance it waits in bounds it
        self.logger.info("group %r: member %s expired (no heartbeat within %d ms)",
                         group.group_id, member_id, member.session_timeout_ms)
        self._remove_member_and_update_group(group, member,
                                             f"member {member_id} expired")

    def _remove_member_and_update_group(self, group: Group, member: Member,
                                        reason: str) -> None:
        group.maybe_invoke_join_callback(
            member, JoinGroupResult.error("", ErrorCode.UNKNOWN_MEMBER_ID))
        group.maybe_invoke_sync_callback(member, SyncGroupResult(ErrorCode.UNKNOWN_MEMBER_ID))
        group.remove(member.member_id)
        self._cancel_heartbeat(group.group_id, member.member_id)
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._maybe_prepare_rebalance(group, reason)
        elif group.state is GroupState.PREPARING_REBALANCE:
            self._purgatory.check(join_key(group.group_id))
        self._purgatory.check(sync_key(group.group_id))

    # ---- LeaveGroup --------------------------------------------------------------------------

    def leave_group(self, group_id: str, members: Sequence[tuple[str, str | None]]
                    ) -> LeaveGroupResult:
        """A LeaveGroup of (member id, group instance id) pairs (v0-v2 send one pair)."""
        error = self._validate_group_status(group_id, needs_id=True)
        if error is not None:
            return LeaveGroupResult(error)
        group = self._groups.get(group_id)
        if group is None:
            return LeaveGroupResult(ErrorCode.NONE, tuple(
                MemberLeave(m, i, ErrorCode.UNKNOWN_MEMBER_ID) for m, i in members))
        if group.state is GroupState.DEAD:
            return LeaveGroupResult(ErrorCode.COORDINATOR_NOT_AVAILABLE)
        results = []
        for member_id, instance_id in members:
            if not member_id:
                code = ErrorCode.UNKNOWN_MEMBER_ID  # removal by instance id: no static members
            elif group.remove_pending_member(member_id):
                self._cancel_heartbeat(group_id, member_id)
                if group.state is GroupState.PREPARING_REBALANCE:
                    self._purgatory.check(join_key(group_id))
                code = ErrorCode.NONE
            elif group.has(member_id):
                self.logger.info("group %r: member %s left", group_id, member_id)
                self._remove_member_and_update_group(group, group.members[member_id],
                                                     f"member {member_id} left")
                code = ErrorCode.NONE
            else:
                code = ErrorCode.UNKNOWN_MEMBER_ID
            results.append(MemberLeave(member_id, instance_id, code))
        self._maybe_drop(group)
        return LeaveGroupResult(ErrorCode.NONE, tuple(results))

    # ---- offsets -----------------------------------------------------------------------------

    async def commit_offsets(self, group_id: str, generation_id: int, member_id: str,
                             group_instance_id: str | None,
                             offsets: Mapping[tuple[str, int], OffsetCommitEntry]
                             ) -> dict[tuple[str, int], int]:
        """An OffsetCommit: each partition's error code, once the commit is in the log.

        Accepted from a member of the current generation while the group is Stable or
        PreparingRebalance (commit-on-revoke), REBALANCE_IN_PROGRESS in CompletingRebalance;
        and with generation -1 and no member id only while the group has no members
        (offsets without group management).
        """
        def every(code: int) -> dict[tuple[str, int], int]:
            return {tp: code for tp in offsets}

        error = self._validate_group_status(group_id, needs_id=False)
        if error is not None:
            return every(error)
        group = self._groups.get(group_id)
        if group is None:
            if generation_id >= 0:
                return every(ErrorCode.ILLEGAL_GENERATION)
            group = self._add_group(group_id)
        error = self._validate_offset_commit(group, generation_id, member_id)
        if error is None and group.state is GroupState.COMPLETING_REBALANCE:
            error = ErrorCode.REBALANCE_IN_PROGRESS
        if error is not None:
            self._maybe_drop(group)
            return every(error)
        member = group.members.get(member_id)
        if member is not None:  # Stable or PreparingRebalance: a commit is a sign of life
            self._schedule_heartbeat(group, member, member.session_timeout_ms)
        results: dict[tuple[str, int], int] = {}
        now = self._wall_clock_ms()
        written: list[tuple[tuple[str, int], OffsetAndMetadata]] = []
        for tp, entry in offsets.items():
            metadata = entry.metadata if entry.metadata is not None else ""
            if len(metadata) > self.config.offset_metadata_max_bytes:
                results[tp] = ErrorCode.OFFSET_METADATA_TOO_LARGE
            else:
                written.append((tp, OffsetAndMetadata(entry.offset, entry.leader_epoch,
                                                      metadata, now)))
        if written:
            code, base = await self._append(group.partition, [
                (offset_commit_key(group_id, topic, partition),
                 offset_commit_value(OffsetCommitValue(o.offset, o.leader_epoch, o.metadata,
                                                       o.commit_timestamp)))
                for (topic, partition), o in written], _commit_error)
            if code == ErrorCode.NONE and self._groups.get(group_id) is group \
                    and group.state is not GroupState.DEAD:
                for index, ((topic, partition), o) in enumerate(written):
                    group.commit_offset(topic, partition, OffsetAndMetadata(
                        o.offset, o.leader_epoch, o.metadata, o.commit_timestamp, base + index))
            for tp, _ in written:
                results[tp] = code
        self._maybe_drop(group)
        return results

    def _validate_offset_commit(self, group: Group, generation_id: int,
                                member_id: str) -> int | None:
        if group.state is GroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if generation_id >= 0 or member_id:
            if not group.has(member_id):
                return ErrorCode.UNKNOWN_MEMBER_ID
            if generation_id != group.generation_id:
                return ErrorCode.ILLEGAL_GENERATION
            return None
        if group.state is not GroupState.EMPTY:
            return ErrorCode.UNKNOWN_MEMBER_ID  # only members commit to a group with members
        return None

    def fetch_offsets(self, group_id: str, partitions: Sequence[tuple[str, int]] | None
                      ) -> OffsetFetchResult:
        """An OffsetFetch: ``partitions`` None = every offset of the group. A partition
        without a committed offset gives None (offset -1, metadata "")."""
        error = self._validate_group_status(group_id, needs_id=False)
        if error is not None:
            return OffsetFetchResult(error)
        group = self._groups.get(group_id)
        offsets = {} if group is None or group.state is GroupState.DEAD else group.offsets
        if partitions is None:
            return OffsetFetchResult(ErrorCode.NONE, tuple(
                (topic, partition, offsets[(topic, partition)])
                for topic, partition in sorted(offsets)))
        return OffsetFetchResult(ErrorCode.NONE, tuple(
            (topic, partition, offsets.get((topic, partition))) for topic, partition in partitions))

    # ---- admin -------------------------------------------------------------------------------

    def list_groups(self) -> tuple[int, list[GroupOverview]]:
        """(error code, every group): COORDINATOR_LOAD_IN_PROGRESS while a partition loads
        (with the groups known so far)."""
        if not self._active:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE, []
        error = ErrorCode.COORDINATOR_LOAD_IN_PROGRESS if self._loading else ErrorCode.NONE
        return error, [GroupOverview(g.group_id, g.protocol_type or "", g.state.value)
                       for g in sorted(self._groups.values(), key=lambda g: g.group_id)]

    def describe_group(self, group_id: str) -> GroupDescription:
        """A DescribeGroups entry; an unknown group is "Dead" without members (error 0), as
        in Kafka."""
        error = self._validate_group_status(group_id, needs_id=False)
        if error is not None:
            return GroupDescription(error, group_id)
        group = self._groups.get(group_id)
        if group is None:
            return GroupDescription(ErrorCode.NONE, group_id)
        stable = group.state is GroupState.STABLE
        members = tuple(MemberDescription(m.member_id, m.group_instance_id, m.client_id,
                                          m.client_host, metadata, assignment)
                        for m, metadata, assignment in group.describe_members())
        return GroupDescription(ErrorCode.NONE, group_id, group.state.value,
                                group.protocol_type or "",
                                (group.protocol_name or "") if stable else "", members)

    async def delete_groups(self, group_ids: Iterable[str]) -> dict[str, int]:
        """DeleteGroups: only empty groups (else NON_EMPTY_GROUP); their offsets and group
        record are tombstoned in the log, then they are forgotten."""
        results: dict[str, int] = {}
        deleting: list[Group] = []
        for group_id in dict.fromkeys(group_ids):
            error = self._validate_group_status(group_id, needs_id=False)
            group = self._groups.get(group_id) if error is None else None
            if error is not None:
                results[group_id] = error
            elif group is None or group.state is GroupState.DEAD:
                results[group_id] = ErrorCode.GROUP_ID_NOT_FOUND
            elif group.state is not GroupState.EMPTY or group.pending_members:
                results[group_id] = ErrorCode.NON_EMPTY_GROUP
            else:
                group.transition_to(GroupState.DEAD, self._wall_clock_ms())
                deleting.append(group)
        writes = [self._tombstone_group(group) for group in deleting]
        for group, code in zip(deleting, await asyncio.gather(*writes)):
            if self._groups.get(group.group_id) is group:
                del self._groups[group.group_id]
            results[group.group_id] = code
            self.logger.info("group %r deleted (%s)", group.group_id,
                             "tombstones written" if code == 0 else f"tombstones failed: {code}")
        return results

    async def _tombstone_group(self, group: Group) -> int:
        removed = group.remove_all_offsets()
        records: list[tuple[bytes, bytes | None]] = [
            (offset_commit_key(group.group_id, topic, partition), None)
            for topic, partition in sorted(removed)]
        if group.generation_id > 0:  # a group that only stored offsets never wrote its record
            records.append((group_metadata_key(group.group_id), None))
        if not records:
            return ErrorCode.NONE
        code, _ = await self._append(group.partition, records, _store_error)
        return code

    # ---- writing -----------------------------------------------------------------------------

    async def _store_group(self, group: Group, assignment: Mapping[str, bytes]) -> int:
        """Write the group's generation (GroupMetadataValue) and wait for it."""
        protocol = group.protocol_name
        value = GroupMetadataValue(
            group.protocol_type or "", group.generation_id, protocol, group.leader_id,
            group.state_timestamp, tuple(
                MemberMetadataValue(m.member_id, m.group_instance_id, m.client_id,
                                    m.client_host, m.rebalance_timeout_ms,
                                    m.session_timeout_ms,
                                    m.metadata(protocol) if protocol else b"",
                                    assignment.get(m.member_id, b""))
                for m in group.members.values()))
        code, _ = await self._append(group.partition, [(group_metadata_key(group.group_id),
                                                        group_metadata_value(value))],
                                     _store_error)
        return code

    async def _store_empty_group(self, group: Group) -> None:
        code = await self._store_group(group, {})
        if code:
            # Harmless: if the broker stops before the next generation is written, the
            # previous one comes back, and its members have to re-join anyway.
            self.logger.warning("group %r: storing empty generation %d failed (error %d)",
                                group.group_id, group.generation_id, code)

    async def _append(self, partition: int, records: Sequence[tuple[bytes, bytes | None]],
                      map_error: Callable[[int], int]) -> tuple[int, int]:
        """Append to the offsets partition: (the mapped error code, the offset of the first
        record or -1)."""
        try:
            outcome = await self.offsets.append(partition, records)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.logger.exception("offsets partition %d: append failed", partition)
            return ErrorCode.UNKNOWN_SERVER_ERROR, -1
        if outcome.error_code:
            return map_error(outcome.error_code), -1
        return ErrorCode.NONE, outcome.base_offset

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._event_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.logger.error("group coordinator task failed", exc_info=task.exception())

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop


def _unique_protocols(protocols: Sequence[Protocol]) -> tuple[Protocol, ...]:
    """The offered protocols, each name once (its first offer), as immutable bytes."""
    seen: dict[str, bytes] = {}
    for name, metadata in protocols:
        if name not in seen:
            seen[name] = bytes(metadata)
    return tuple(seen.items())
