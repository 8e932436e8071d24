"""One partition replica on this broker: the replication state machine over its PartitionLog.

Theory of operation (DESIGN §5; Kafka's Partition, etcd raft's documented-invariant style)
--------------------------------------------------------------------------------------------
The controller's committed ``PartitionState`` (replicas, ISR, leader, leader epoch,
partition epoch) is the only source of the replication state: ``apply_state`` takes it when
its epochs are newer and makes this replica leader or follower. Nothing here changes the ISR
on its own. The leader *proposes* ISR changes (``maybe_shrink_isr`` for followers that
stopped keeping up, ``maybe_expand_isr`` for followers that caught up), the broker sends the
proposal to the controller (AlterPartition, guarded by the partition epoch it was computed
from), and the ISR changes only when the committed state comes back through
``apply_state``. Until then the proposal is *pending*, and the high watermark counts every
replica of the committed ISR and of the proposal (Kafka's "maximal ISR"): a leader cut off
from the controller can never shrink the ISR to itself and acknowledge writes that a new
leader will not have.

The high watermark (HW) lives in the log (``PartitionLog.high_watermark``), so the log
manager's checkpoints carry it. On the leader, HW = min LEO over the maximal ISR, and only
moves forward. The leader's own LEO counts only once durable when the flush policy asks for
it (fsync=always): an append that came back with a ``durable`` future is not counted until
``on_flushed`` reports that the Flusher's fsync covered it. A follower's HW is
min(leader's HW as last seen, own LEO).

Followers are tracked as Kafka's ReplicaState: the LEO each follower reported (its fetch
offset), and the last time it was caught up: at a fetch reaching the leader's LEO *now*, or
at the previous fetch if this one reaches the LEO the leader had then (so a follower that
keeps fetching but always trails by what arrived meanwhile still counts as caught up).

Sans IO: no clock, no loop, no controller. Every time comes in as ``now_ms``; every ISR
proposal goes out as a returned ``IsrChange``; the caller (ReplicaManager) wakes waiters.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from pylog.controller.metadata import PartitionState
from pylog.protocol import ErrorCode
from pylog.storage.errors import OffsetOutOfRangeError
from pylog.storage.log import AppendResult, PartitionLog, ReadResult

__all__ = [
    "Partition", "FollowerState", "IsrChange", "PartitionError", "NotLeaderOrFollowerError",
    "NotEnoughReplicasError", "KafkaStorageError",
]


# ---- errors ---------------------------------------------------------------------------------

class PartitionError(Exception):
    """A request this replica cannot serve; ``error_code`` is the Kafka code."""
    error_code: int = ErrorCode.UNKNOWN_SERVER_ERROR


class NotLeaderOrFollowerError(PartitionError):
    error_code = ErrorCode.NOT_LEADER_OR_FOLLOWER


class NotEnoughReplicasError(PartitionError):
    """acks=all while the ISR is smaller than min.insync.replicas: nothing was appended."""
    error_code = ErrorCode.NOT_ENOUGH_REPLICAS


class KafkaStorageError(PartitionError):
    """The log failed on disk (a write or fsync error): the replica is offline."""
    error_code = ErrorCode.KAFKA_STORAGE_ERROR


# ---- values ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IsrChange:
    """An ISR change proposed by the leader, computed from ``partition_epoch``."""
    topic: str
    partition: int
    new_isr: tuple[int, ...]
    partition_epoch: int
    leader_epoch: int


class FollowerState:
    """What the leader knows of one follower replica.

    Invariants: log_end_offset is -1 until the follower fetched in the current leader term,
    then the fetch offset of its latest fetch (<= the leader's LEO at that time);
    last_caught_up_ms only increases within a leader term.
    """

    __slots__ = ("replica_id", "log_end_offset", "log_start_offset", "last_caught_up_ms",
                 "last_fetch_ms", "last_fetch_leader_end_offset")

    def __init__(self, replica_id: int, *, last_caught_up_ms: float = 0.0):
        self.replica_id = replica_id
        self.log_end_offset = -1
        self.log_start_offset = -1
        # When it last had everything the leader had (at that fetch).
        self.last_caught_up_ms = last_caught_up_ms
        # Time of its last fetch, and the leader's LEO then (for the "previous fetch" rule).
        self.last_fetch_ms = 0.0
        self.last_fetch_leader_end_offset = -1

    def update(self, fetch_offset: int, log_start_offset: int, now_ms: float,
               leader_end_offset: int) -> None:
        if fetch_offset >= leader_end_offset:
            self.last_caught_up_ms = max(self.last_caught_up_ms, now_ms)
        elif fetch_offset >= self.last_fetch_leader_end_offset:
            self.last_caught_up_ms = max(self.last_caught_up_ms, self.last_fetch_ms)
        self.log_end_offset = fetch_offset
        self.log_start_offset = log_start_offset
        self.last_fetch_ms = now_ms
        self.last_fetch_leader_end_offset = leader_end_offset

    def __repr__(self) -> str:
        return (f"FollowerState({self.replica_id}, leo={self.log_end_offset}, "
                f"caught_up={self.last_caught_up_ms})")


# ---- the state machine ----------------------------------------------------------------------

class Partition:
    """A replica of ``topic``-``index`` on broker ``local_id``, over ``log``."""

    def __init__(self, topic: str, index: int, log: PartitionLog, *, local_id: int,
                 topic_id: uuid.UUID | None = None):
        self.topic = topic
        self.index = index
        self.log = log
        self.local_id = local_id
        self.topic_id = topic_id
        # -- from the controller's committed state (apply_state) --
        # Broker leading this partition, -1 if none or not yet known.
        self.leader_id = -1
        # Only increases; the epoch stamped into every batch this replica appends as leader.
        self.leader_epoch = -1
        # Only increases; the epoch of the committed state applied last.
        self.partition_epoch = -1
        # Committed replica set / ISR / observers / hidden replicas, as the controller has
        # them (the ISR contains the leader).
        self.replicas: tuple[int, ...] = ()
        self.isr: tuple[int, ...] = ()
        self.observers: tuple[int, ...] = ()
        self.hidden: tuple[int, ...] = ()
        # -- leader only --
        # The ISR of a proposal sent to the controller and not answered yet; None if none.
        # At most one proposal is in flight.
        self._pending_isr: tuple[int, ...] | None = None
        # LEO when this replica became leader of the current epoch (the first offset of the
        # epoch): a follower must reach it to join the ISR.
        self._leader_epoch_start_offset = -1
        # One entry per replica other than this one, while leader.
        self._followers: dict[int, FollowerState] = {}
        # -- durability of the local log (flush policy) --
        # Appends whose durable future is still pending; while > 0 only offsets below
        # _flushed_end count as this replica's LEO for the HW.
        self._unflushed_appends = 0
        # Offsets below it are fsynced (the recovery point the last completed flush gave).
        self._flushed_end = log.recovery_point
        # -- life --
        # Set when the log failed on disk; the replica then serves nothing.
        self.offline_reason: str | None = None
        # Set once the partition was removed from this broker (topic deleted).
        self.deleted = False

    def __repr__(self) -> str:
        return (f"Partition({self.topic}-{self.index}, leader={self.leader_id}, "
                f"epoch={self.leader_epoch}, isr={list(self.isr)}, "
                f"leo={self.log_end_offset}, hw={self.high_watermark})")

    # ---- state for readers (metrics, admin, handlers) --------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self.local_id

    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    @property
    def high_watermark(self) -> int:
        return self.log.high_watermark

    @property
    def last_stable_offset(self) -> int:
        """No transactions: the HW."""
        return self.log.high_watermark

    @property
    def size_bytes(self) -> int:
        return self.log.size_bytes

    @property
    def min_insync_replicas(self) -> int:
        return self.log.config.min_insync_replicas

    @property
    def pending_isr(self) -> tuple[int, ...] | None:
        return self._pending_isr

    @property
    def maximal_isr(self) -> tuple[int, ...]:
        """The committed ISR plus any replica a pending proposal adds: what the HW waits for."""
        pending = self._pending_isr
        if pending is None:
            return self.isr
        return self.isr + tuple(r for r in pending if r not in self.isr)

    @property
    def under_min_isr(self) -> bool:
        return len(self.isr) < self.min_insync_replicas

    @property
    def under_replicated(self) -> bool:
        return self.is_leader and len(self.isr) < len(self.replicas) - len(self.observers)

    def follower(self, replica_id: int) -> FollowerState | None:
        return self._followers.get(replica_id)

    @property
    def local_end_offset_for_hw(self) -> int:
        """This replica's LEO as far as the HW may count it: the LEO, or while fsyncs asked
        by the flush policy are pending, the end of what they already made durable."""
        if self._unflushed_appends == 0:
            return self.log.log_end_offset
        return min(self._flushed_end, self.log.log_end_offset)

    # ---- committed state from the controller -----------------------------------------------

    def apply_state(self, state: PartitionState, now_ms: float) -> bool:
        """Take the controller's committed state if it is newer than what this replica has
        (leader epoch first, then partition epoch). Returns True if anything changed."""
        if (state.leader_epoch, state.partition_epoch) <= (self.leader_epoch,
                                                           self.partition_epoch):
            return False
        new_term = state.leader_epoch != self.leader_epoch or state.leader != self.leader_id
        self.leader_id = state.leader
        self.leader_epoch = state.leader_epoch
        self.partition_epoch = state.partition_epoch
        self.replicas = tuple(state.replicas)
        self.isr = tuple(state.isr)
        self.observers = tuple(state.observers)
        self.hidden = tuple(state.hidden)
        # Any newer committed state answers (or voids) an in-flight proposal.
        self._pending_isr = None
        if not self.is_leader:
            self._followers = {}
            self._leader_epoch_start_offset = -1
            return True
        if new_term:
            self._leader_epoch_start_offset = self.log.log_end_offset
            # Members of the ISR get a full lag time to show up; the others must catch up.
            self._followers = {
                r: FollowerState(r, last_caught_up_ms=now_ms if r in self.isr else 0.0)
                for r in self.replicas if r != self.local_id}
        else:
            kept = {r: s for r, s in self._followers.items() if r in self.replicas}
            for r in self.replicas:
                if r != self.local_id and r not in kept:
                    kept[r] = FollowerState(r)
            self._followers = kept
        self._maybe_advance_high_watermark()
        return True

    # ---- leader: appends -----------------------------------------------------------------

    def append_as_leader(self, records, required_acks: int) -> AppendResult:
        """Append a producer's batches (validated, stamped in place by the log).

        Raises NotLeaderOrFollowerError, KafkaStorageError, NotEnoughReplicasError (acks=all
        with the ISR below min.insync.replicas: nothing appended), and the log's errors
        (CorruptBatchError, RecordTooLargeError, InvalidAppendError, ...).
        The caller must hand ``result.durable`` (if set) back through on_flushed /
        on_flush_failed once it completes.
        """
        if self.offline_reason is not None:
            raise KafkaStorageError(f"{self.topic}-{self.index} is offline: "
                                    f"{self.offline_reason}")
        if not self.is_leader:
            raise NotLeaderOrFollowerError(
                f"broker {self.local_id} is not the leader of {self.topic}-{self.index}")
        if required_acks == -1 and len(self.isr) < self.min_insync_replicas:
            raise NotEnoughReplicasError(
                f"{self.topic}-{self.index}: ISR {list(self.isr)} is smaller than "
                f"min.insync.replicas={self.min_insync_replicas}")
        result = self.log.append(records, self.leader_epoch)
        if result.durable is not None:
            self._unflushed_appends += 1
        self._maybe_advance_high_watermark()
        return result

    def on_flushed(self, recovery_point: int) -> bool:
        """A durable future of an append completed; True if the HW moved."""
        self._unflushed_appends = max(0, self._unflushed_appends - 1)
        if recovery_point > self._flushed_end:
            self._flushed_end = recovery_point
        return self._maybe_advance_high_watermark()

    def on_flush_failed(self, error: BaseException) -> None:
        """A durable future failed: the log can no longer promise anything; go offline."""
        self._unflushed_appends = max(0, self._unflushed_appends - 1)
        self.mark_offline(f"fsync failed: {error}")

    def mark_offline(self, reason: str) -> None:
        if self.offline_reason is None:
            self.offline_reason = reason

    def produce_status(self, required_offset: int, leader_epoch: int,
                       required_acks: int) -> int | None:
        """For a produce parked after its append: None while it must wait, else its error
        code. acks=all is done when the HW reached ``required_offset`` (its last offset + 1):
        0, or NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR fell below min.insync.replicas
        meanwhile; acks=1 when the local log is durable there (flush policy)."""
        if self.deleted:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        if self.offline_reason is not None:
            return ErrorCode.KAFKA_STORAGE_ERROR
        if not self.is_leader or self.leader_epoch != leader_epoch:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        if required_acks == -1:
            if self.log.high_watermark < required_offset:
                return None
            if len(self.isr) < self.min_insync_replicas:
                return ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
            return ErrorCode.NONE
        return ErrorCode.NONE if self.local_end_offset_for_hw >= required_offset else None

    # ---- leader: fetches -----------------------------------------------------------------

    def check_leader_epoch(self, current_leader_epoch: int) -> int:
        """FENCED_LEADER_EPOCH / UNKNOWN_LEADER_EPOCH for a request's epoch (-1: no check)."""
        if current_leader_epoch == -1 or current_leader_epoch == self.leader_epoch:
            return ErrorCode.NONE
        if current_leader_epoch < self.leader_epoch:
            return ErrorCode.FENCED_LEADER_EPOCH
        return ErrorCode.UNKNOWN_LEADER_EPOCH

    def check_fetch(self, replica_id: int, current_leader_epoch: int) -> int:
        """The error code for a fetch from ``replica_id`` (-1 a consumer), 0 if it may read:
        offline 56, then the epoch check (74/75), then leadership (6), then a follower that is
        not a replica (6)."""
        if self.deleted:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        if self.offline_reason is not None:
            return ErrorCode.KAFKA_STORAGE_ERROR
        code = self.check_leader_epoch(current_leader_epoch)
        if code:
            return code
        if not self.is_leader:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        if replica_id >= 0 and replica_id not in self._followers:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        return ErrorCode.NONE

    def read_records(self, fetch_offset: int, max_bytes: int, *, from_follower: bool,
                     min_one_batch: bool, with_data: bool = True) -> ReadResult:
        """Whole batches from ``fetch_offset``: below the HW for consumers, below the LEO for
        followers. OffsetOutOfRangeError outside [log start, LEO]. ``with_data=False``
        locates them only (segment, position, length: the sendfile path)."""
        return self.log.read(fetch_offset, max(0, max_bytes),
                             max_offset=None if from_follower else self.log.high_watermark,
                             min_one_batch=min_one_batch, with_data=with_data)

    def fetchable_bytes(self, fetch_offset: int, max_bytes: int, *,
                        from_follower: bool) -> int:
        """Bytes a fetch at ``fetch_offset`` would get now (0 if none or out of range)."""
        end = self.log.log_end_offset if from_follower else self.log.high_watermark
        if not self.log.log_start_offset <= fetch_offset < end:
            return 0
        return self.log.read(fetch_offset, max(0, max_bytes), max_offset=end,
                             with_data=False).length

    def update_follower_fetch_state(self, replica_id: int, fetch_offset: int,
                                    log_start_offset: int, now_ms: float
                                    ) -> tuple[bool, IsrChange | None]:
        """Record a follower's fetch (its LEO is ``fetch_offset``). Returns (HW moved, an ISR
        expansion to propose or None). OffsetOutOfRangeError (state untouched) if the offset
        is outside [log start, LEO]; NotLeaderOrFollowerError if this is not the leader or
        ``replica_id`` is not a follower of it."""
        state = self._followers.get(replica_id) if self.is_leader else None
        if state is None:
            raise NotLeaderOrFollowerError(
                f"broker {replica_id} is not a follower of {self.topic}-{self.index} here")
        leader_end = self.log.log_end_offset
        if not self.log.log_start_offset <= fetch_offset <= leader_end:
            raise OffsetOutOfRangeError(
                f"follower {replica_id} fetches at {fetch_offset}, outside "
                f"[{self.log.log_start_offset}, {leader_end}]", offset=fetch_offset,
                log_start_offset=self.log.log_start_offset, log_end_offset=leader_end)
        state.update(fetch_offset, log_start_offset, now_ms, leader_end)
        moved = self._maybe_advance_high_watermark()
        return moved, self.maybe_expand_isr(replica_id)

    def _maybe_advance_high_watermark(self) -> bool:
        """HW = min LEO over the maximal ISR, never backwards (leader only)."""
        if not self.is_leader:
            return False
        new_hw = self.local_end_offset_for_hw
        local = self.local_id
        followers = self._followers
        for replica in self.maximal_isr:
            if replica != local:
                state = followers.get(replica)
                end = state.log_end_offset if state is not None else -1
                if end < new_hw:
                    new_hw = end
        if new_hw > self.log.high_watermark:
            self.log.high_watermark = new_hw
            return True
        return False

    # ---- leader: ISR proposals -----------------------------------------------------------

    def maybe_expand_isr(self, replica_id: int) -> IsrChange | None:
        """Propose adding a follower whose LEO reached the HW and the start of the current
        leader epoch (not observers, not while another proposal is pending)."""
        if not self.is_leader or self._pending_isr is not None:
            return None
        if replica_id in self.isr or replica_id in self.observers:
            return None
        state = self._followers.get(replica_id)
        if state is None:
            return None
        end = state.log_end_offset
        if end < self.log.high_watermark or end < self._leader_epoch_start_offset:
            return None
        return self._propose(self.isr + (replica_id,))

    def out_of_sync_replicas(self, now_ms: float, max_lag_ms: float) -> list[int]:
        """ISR members (not this one) not caught up within ``max_lag_ms``."""
        out = []
        for replica in self.isr:
            if replica == self.local_id:
                continue
            state = self._followers.get(replica)
            if state is None or now_ms - state.last_caught_up_ms > max_lag_ms:
                out.append(replica)
        return out

    def maybe_shrink_isr(self, now_ms: float, max_lag_ms: float) -> IsrChange | None:
        """Propose removing ISR members not caught up for ``max_lag_ms``
        (replica.lag.time.max.ms). The leader always stays."""
        if not self.is_leader or self._pending_isr is not None:
            return None
        out = self.out_of_sync_replicas(now_ms, max_lag_ms)
        if not out:
            return None
        return self._propose(tuple(r for r in self.isr if r not in out))

    def _propose(self, new_isr: tuple[int, ...]) -> IsrChange:
        self._pending_isr = new_isr
        return IsrChange(self.topic, self.index, new_isr, self.partition_epoch,
                         self.leader_epoch)

    def abort_isr_change(self, change: IsrChange) -> None:
        """The controller refused ``change`` (or it never reached it): forget it, unless a
        newer state or proposal replaced it already."""
        if (self._pending_isr == change.new_isr
                and self.partition_epoch == change.partition_epoch):
            self._pending_isr = None
            self._maybe_advance_high_watermark()

    # ---- follower ------------------------------------------------------------------------

    def append_as_follower(self, records, leader_high_watermark: int) -> AppendResult:
        """Append batches fetched from the leader (offsets and epochs kept), then take
        HW = min(leader's HW, own LEO)."""
        if self.offline_reason is not None:
            raise KafkaStorageError(f"{self.topic}-{self.index} is offline: "
                                    f"{self.offline_reason}")
        if self.is_leader:
            raise NotLeaderOrFollowerError(
                f"broker {self.local_id} leads {self.topic}-{self.index}: no follower append")
        result = self.log.append_as_follower(records)
        self.update_follower_high_watermark(leader_high_watermark)
        return result

    def update_follower_high_watermark(self, leader_high_watermark: int) -> bool:
        """Follower: HW = min(leader's HW, own LEO), forward only. True if it moved."""
        if self.is_leader:
            return False
        new_hw = min(leader_high_watermark, self.log.log_end_offset)
        if new_hw > self.log.high_watermark:
            self.log.high_watermark = new_hw
            return True
        return False
