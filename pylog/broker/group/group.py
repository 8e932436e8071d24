"""One consumer group as the classic group protocol sees it: members, generations, the state.

Sans IO: no clock (times come in as ``now_ms``), no timers, no log, no asyncio. A member's
pending JoinGroup or SyncGroup is an opaque callback the coordinator put there; the group only
says when to call it. The coordinator (``coordinator.py``) owns the timers and the log and
drives this machine; this module is Kafka's GroupMetadata/MemberMetadata.

Theory of operation (Kafka's classic rebalance protocol)
--------------------------------------------------------
States and the only transitions allowed (``transition_to`` refuses any other):

    Empty ──join──▶ PreparingRebalance ──all joined / timeout──▶ CompletingRebalance
      ▲                 ▲   │                                          │
      │ (no member left)│   └──────────── leave / expiry / join ◀──────┤
      └─────────────────┘                                              ▼ leader's SyncGroup
                                         PreparingRebalance ◀──────── Stable
    any state ──▶ Dead (deleted, or its offsets partition moved away)

A *generation* is one agreed membership with one assignment. PreparingRebalance collects
JoinGroups: each member's JoinGroup is held (``awaiting_join``) until every member has
re-joined or the rebalance timeout passed; then the generation is bumped, the protocol every
member supports that most members prefer is chosen, and every held JoinGroup is answered (the
leader gets every member's metadata). CompletingRebalance waits for the leader's SyncGroup,
which carries the assignment; followers' SyncGroups are held (``awaiting_sync``) until it
comes. Stable: everybody has an assignment; heartbeats keep members alive. A member that
joins, leaves or changes its subscription, or whose session expires, sends the group back to
PreparingRebalance; the others learn it from their heartbeat (REBALANCE_IN_PROGRESS) and
re-join.

Members that asked to join without a member id while a member id is required (JoinGroup v4+,
KIP-394) are *pending*: they have an id but are not members until they join with it.
"""
from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GroupState", "IllegalGroupStateError", "Member", "Group", "OffsetAndMetadata",
    "JoinGroupResult", "SyncGroupResult", "JoinedMember", "Protocol",
]

#: (protocol name, that protocol's metadata bytes), in the member's order of preference.
Protocol = tuple[str, bytes]


class GroupState(enum.Enum):
    """Kafka's names, as DescribeGroups and ListGroups show them."""
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


_VALID_PREVIOUS_STATES: dict[GroupState, frozenset[GroupState]] = {
    GroupState.EMPTY: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.PREPARING_REBALANCE: frozenset({GroupState.STABLE,
                                               GroupState.COMPLETING_REBALANCE,
                                               GroupState.EMPTY}),
    GroupState.COMPLETING_REBALANCE: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.STABLE: frozenset({GroupState.COMPLETING_REBALANCE}),
    GroupState.DEAD: frozenset(GroupState),
}


class IllegalGroupStateError(RuntimeError):
    """A transition the protocol does not have: a bug in the coordinator."""


# ---- results handed to the waiting requests ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class JoinedMember:
    """One member as the leader's JoinGroup response lists it."""
    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinGroupResult:
    error_code: int
    member_id: str
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str = ""
    members: tuple[JoinedMember, ...] = ()

    @classmethod
    def error(cls, member_id: str, error_code: int) -> "JoinGroupResult":
        return cls(error_code, member_id)


@dataclass(frozen=True, slots=True)
class SyncGroupResult:
    error_code: int
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(frozen=True, slots=True)
class OffsetAndMetadata:
    """A committed offset. ``log_offset``: where its record is in the offsets partition (-1
    if unknown); a later record of the same key supersedes an earlier one."""
    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_timestamp: int = -1
    log_offset: int = -1


# ---- members ------------------------------------------------------------------------------

@dataclass(eq=False)
class Member:
    """One member of a group.

    Invariants: ``protocols`` is non-empty and names are unique; ``awaiting_join`` is set
    exactly while a JoinGroup of this member is held, ``awaiting_sync`` exactly while a
    SyncGroup is held (never both); ``is_new`` until the member's first JoinGroup was
    answered with a generation.
    """
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    protocol_type: str
    protocols: tuple[Protocol, ...]
    assignment: bytes = b""
    awaiting_join: Callable[[JoinGroupResult], None] | None = None
    awaiting_sync: Callable[[SyncGroupResult], None] | None = None
    is_new: bool = False

    @property
    def protocol_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.protocols)

    @property
    def is_awaiting_join(self) -> bool:
        return self.awaiting_join is not None

    @property
    def is_awaiting_sync(self) -> bool:
        return self.awaiting_sync is not None

    def metadata(self, protocol: str) -> bytes:
        for name, data in self.protocols:
            if name == protocol:
                return data
        raise KeyError(f"member {self.member_id} does not support protocol {protocol!r}")

    def matches(self, protocols: Sequence[Protocol]) -> bool:
        """Same protocols, same metadata, same order."""
        return tuple((n, bytes(m)) for n, m in protocols) == self.protocols

    def vote(self, candidates: Iterable[str]) -> str:
        """The first protocol of this member's preference among ``candidates``."""
        allowed = set(candidates)
        for name, _ in self.protocols:
            if name in allowed:
                return name
        raise KeyError(f"member {self.member_id} supports none of {sorted(allowed)}")


# ---- the group ----------------------------------------------------------------------------

class Group:
    """A group and its committed offsets. ``partition``: the offsets partition it lives in."""

    def __init__(self, group_id: str, partition: int, *, now_ms: int,
                 state: GroupState = GroupState.EMPTY):
        self.group_id = group_id
        self.partition = partition
        # Changes only through transition_to (see the module doc for the allowed moves).
        self.state = state
        # Wall-clock ms of the last state change (kept in GroupMetadataValue).
        self.state_timestamp = now_ms
        # Only increases; 0 until the first generation. Every member of a CompletingRebalance
        # or Stable group was answered with it.
        self.generation_id = 0
        # The protocol type of the members (all members share one); kept while Empty so the
        # group still shows it, replaced by the first member to join an empty group.
        self.protocol_type: str | None = None
        # The protocol chosen for the current generation; None while Empty.
        self.protocol_name: str | None = None
        # A member id of ``members``, or None exactly when there are no members.
        self.leader_id: str | None = None
        # Members in join order (dict order is the order the leader sees them in).
        self.members: dict[str, Member] = {}
        # Ids handed out with MEMBER_ID_REQUIRED that have not joined yet (never in members).
        self.pending_members: set[str] = set()
        # Members of this generation that have not sent their SyncGroup yet.
        self.pending_sync_members: set[str] = set()
        # == number of members with awaiting_join set.
        self.num_members_awaiting_join = 0
        # protocol name -> number of members that support it.
        self.supported_protocols: Counter[str] = Counter()
        # A member joined an empty group during the initial rebalance delay (Kafka's
        # InitialDelayedJoin extends the delay once per such join).
        self.new_member_added = False
        # (topic, partition) -> the committed offset.
        self.offsets: dict[tuple[str, int], OffsetAndMetadata] = {}

    def __repr__(self) -> str:
        return (f"Group({self.group_id!r}, {self.state.value}, generation={self.generation_id}, "
                f"members={list(self.members)}, leader={self.leader_id!r})")

    # ---- state ------------------------------------------------------------------------------

    def is_in(self, *states: GroupState) -> bool:
        return self.state in states

    def can_rebalance(self) -> bool:
        return self.state in _VALID_PREVIOUS_STATES[GroupState.PREPARING_REBALANCE]

    def transition_to(self, state: GroupState, now_ms: int) -> None:
        if self.state not in _VALID_PREVIOUS_STATES[state]:
            raise IllegalGroupStateError(f"group {self.group_id!r}: no transition from "
                                         f"{self.state.value} to {state.value}")
        self.state = state
        self.state_timestamp = now_ms

    # ---- membership -------------------------------------------------------------------------

    def has(self, member_id: str) -> bool:
        return member_id in self.members

    def is_leader(self, member_id: str) -> bool:
        return self.leader_id == member_id

    def is_pending_member(self, member_id: str) -> bool:
        return member_id in self.pending_members

    def add_pending_member(self, member_id: str) -> None:
        self.pending_members.add(member_id)

    def remove_pending_member(self, member_id: str) -> bool:
        if member_id in self.pending_members:
            self.pending_members.discard(member_id)
            return True
        return False

    def add(self, member: Member, awaiting_join: Callable[[JoinGroupResult], None] | None
            ) -> None:
        """Add ``member`` (its JoinGroup held by ``awaiting_join``); the first member of an
        empty group sets the protocol type, the first member without a leader leads."""
        if member.member_id in self.members:
            raise IllegalGroupStateError(f"member {member.member_id} is already in the group")
        if not self.members:
            self.protocol_type = member.protocol_type
        elif member.protocol_type != self.protocol_type:
            raise IllegalGroupStateError(f"protocol type {member.protocol_type!r} differs from "
                                         f"the group's {self.protocol_type!r}")
        if self.leader_id is None:
            self.leader_id = member.member_id
        self.members[member.member_id] = member
        self.supported_protocols.update(member.protocol_names)
        member.awaiting_join = awaiting_join
        if awaiting_join is not None:
            self.num_members_awaiting_join += 1
        self.pending_members.discard(member.member_id)

    def remove(self, member_id: str) -> Member:
        """Remove a member (its held requests are the caller's to answer first); a new
        leader is the first remaining member."""
        member = self.members.pop(member_id)
        self.supported_protocols.subtract(member.protocol_names)
        self.supported_protocols += Counter()  # drop zero counts
        if member.awaiting_join is not None:
            self.num_members_awaiting_join -= 1
        self.pending_sync_members.discard(member_id)
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)
        return member

    def update_member(self, member: Member, protocols: Sequence[Protocol],
                      rebalance_timeout_ms: int, session_timeout_ms: int,
                      awaiting_join: Callable[[JoinGroupResult], None]) -> None:
        """A current member re-joins (maybe with new protocols or timeouts)."""
        self.supported_protocols.subtract(member.protocol_names)
        self.supported_protocols += Counter()
        member.protocols = tuple((n, bytes(m)) for n, m in protocols)
        self.supported_protocols.update(member.protocol_names)
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.session_timeout_ms = session_timeout_ms
        if member.awaiting_join is None:
            self.num_members_awaiting_join += 1
        member.awaiting_join = awaiting_join

    def maybe_invoke_join_callback(self, member: Member, result: JoinGroupResult) -> bool:
        callback = member.awaiting_join
        if callback is None:
            return False
        member.awaiting_join = None
        self.num_members_awaiting_join -= 1
        callback(result)
        return True

    def maybe_invoke_sync_callback(self, member: Member, result: SyncGroupResult) -> bool:
        callback = member.awaiting_sync
        if callback is None:
            return False
        member.awaiting_sync = None
        callback(result)
        return True

    @property
    def rebalance_timeout_ms(self) -> int:
        """The longest rebalance timeout of the members (0 without members)."""
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def has_all_members_joined(self) -> bool:
        return (len(self.members) == self.num_members_awaiting_join
                and not self.pending_members)

    def not_yet_rejoined_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.awaiting_join is None]

    def maybe_elect_new_joined_leader(self) -> bool:
        """Make sure the leader is a member that re-joined: False if no member did."""
        if self.leader_id is None:
            return False
        if self.members[self.leader_id].is_awaiting_join:
            return True
        for member_id, member in self.members.items():
            if member.is_awaiting_join:
                self.leader_id = member_id
                return True
        return False

    # ---- protocols --------------------------------------------------------------------------

    def supports_protocols(self, protocol_type: str, protocol_names: Sequence[str]) -> bool:
        """May a member with these protocols join? An empty group takes any non-empty
        offer; otherwise the type must match and one protocol be supported by every member."""
        if not self.members:
            return bool(protocol_type) and bool(protocol_names)
        return (protocol_type == self.protocol_type
                and any(self.supported_protocols[name] == len(self.members)
                        for name in protocol_names))

    def candidate_protocols(self) -> list[str]:
        """Protocols every member supports, in the order the first member prefers them."""
        count = len(self.members)
        first = next(iter(self.members.values()))
        return [name for name in first.protocol_names if self.supported_protocols[name] == count]

    def select_protocol(self) -> str:
        """Each member votes for its favourite protocol among those all members support; the
        most votes win, ties going to the first member's preference."""
        if not self.members:
            raise IllegalGroupStateError("no members to choose a protocol")
        candidates = self.candidate_protocols()
        if not candidates:
            raise IllegalGroupStateError("the members share no protocol")
        votes = Counter(member.vote(candidates) for member in self.members.values())
        return max(candidates, key=lambda name: (votes[name], -candidates.index(name)))

    def init_next_generation(self, now_ms: int) -> None:
        """End PreparingRebalance: bump the generation and choose the protocol (members
        left) or become Empty (none left)."""
        self.generation_id += 1
        if self.members:
            self.protocol_name = self.select_protocol()
            self.transition_to(GroupState.COMPLETING_REBALANCE, now_ms)
        else:
            self.protocol_name = None
            self.transition_to(GroupState.EMPTY, now_ms)
        self.pending_sync_members.clear()

    def current_member_metadata(self) -> tuple[JoinedMember, ...]:
        """Every member with its metadata for the chosen protocol (the leader's list)."""
        if self.protocol_name is None:
            raise IllegalGroupStateError("no protocol chosen")
        return tuple(JoinedMember(m.member_id, m.group_instance_id,
                                  m.metadata(self.protocol_name))
                     for m in self.members.values())

    # ---- offsets ----------------------------------------------------------------------------

    def commit_offset(self, topic: str, partition: int, committed: OffsetAndMetadata) -> bool:
        """Keep ``committed`` unless a later record of the same key is kept already."""
        current = self.offsets.get((topic, partition))
        if (current is not None and committed.log_offset >= 0
                and current.log_offset > committed.log_offset):
            return False
        self.offsets[(topic, partition)] = committed
        return True

    def remove_all_offsets(self) -> dict[tuple[str, int], OffsetAndMetadata]:
        removed, self.offsets = self.offsets, {}
        return removed

    def is_removable(self) -> bool:
        """Nothing worth keeping: empty, no pending member, no offset, never a generation."""
        return (self.state is GroupState.EMPTY and not self.members and not self.pending_members
                and not self.offsets and self.generation_id == 0)

    def describe_members(self) -> list[tuple[Member, bytes, bytes]]:
        """(member, metadata, assignment) as DescribeGroups shows them: with the chosen
        protocol's metadata and the assignment only while Stable (Kafka's summary)."""
        if self.state is GroupState.STABLE and self.protocol_name is not None:
            return [(m, m.metadata(self.protocol_name), m.assignment)
                    for m in self.members.values()]
        return [(m, b"", b"") for m in self.members.values()]


def member_from_stored(value: Any, protocol_type: str, protocol: str | None) -> Member:
    """A member restored from a GroupMetadataValue member (schemas.MemberMetadataValue)."""
    protocols: tuple[Protocol, ...] = ((protocol, value.subscription),) if protocol else ()
    return Member(value.member_id, value.group_instance_id, value.client_id,
                  value.client_host, value.rebalance_timeout_ms, value.session_timeout_ms,
                  protocol_type, protocols, assignment=value.assignment)
