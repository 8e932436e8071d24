"""The group coordinator's timers, as delayed operations in the broker's purgatory.

Kafka's DelayedJoin, InitialDelayedJoin, DelayedHeartbeat and DelayedSync. Each only decides
*when*; what happens then is the coordinator's (``on_complete_join``, ...). Every operation
``finish``es itself first (leaving the purgatory) and then calls the coordinator, so a
coordinator callback may park a new operation under the same key.

Keys: ``("join", group_id)``, ``("sync", group_id)``, ``("heartbeat", group_id, member_id)``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pylog.broker.purgatory import DelayedOperation

if TYPE_CHECKING:
    from pylog.broker.group.coordinator import GroupCoordinator
    from pylog.broker.group.group import Group

__all__ = ["DelayedJoin", "InitialDelayedJoin", "DelayedHeartbeat", "DelayedSync", "join_key",
           "sync_key", "heartbeat_key"]


def join_key(group_id: str) -> tuple:
    return ("join", group_id)


def sync_key(group_id: str) -> tuple:
    return ("sync", group_id)


def heartbeat_key(group_id: str, member_id: str) -> tuple:
    return ("heartbeat", group_id, member_id)


class DelayedJoin(DelayedOperation):
    """PreparingRebalance: done when every member re-joined (checked on ``join_key``), or at
    the rebalance timeout; either way the coordinator completes the join."""

    __slots__ = ("coordinator", "group")

    def __init__(self, coordinator: "GroupCoordinator", group: "Group"):
        super().__init__()
        self.coordinator = coordinator
        self.group = group

    def try_complete(self) -> bool:
        if not self.coordinator.join_is_complete(self.group):
            return False
        self.finish(None)
        self.coordinator.on_complete_join(self.group)
        return True

    def on_expire(self) -> None:
        self.finish(None)
        self.coordinator.on_complete_join(self.group)

    def on_close(self) -> None:
        self.finish(None)   # the coordinator answers held requests itself when it closes


class InitialDelayedJoin(DelayedJoin):
    """The first rebalance of an empty group waits ``delay_ms`` for more members (Kafka's
    group.initial.rebalance.delay.ms); each new member extends the wait by up to the delay
    again, never past the rebalance timeout (``remaining_ms``)."""

    __slots__ = ("configured_delay_ms", "delay_ms", "remaining_ms")

    def __init__(self, coordinator: "GroupCoordinator", group: "Group", configured_delay_ms: int,
                 delay_ms: int, remaining_ms: int):
        super().__init__(coordinator, group)
        self.configured_delay_ms = configured_delay_ms
        self.delay_ms = delay_ms
        self.remaining_ms = remaining_ms

    def try_complete(self) -> bool:
        return False

    def on_expire(self) -> None:
        self.finish(None)
        self.coordinator.on_initial_delay_expired(self)


class DelayedHeartbeat(DelayedOperation):
    """A member's (or pending member's) session: expires unless rescheduled (each heartbeat,
    commit or completed rebalance replaces it with a new one)."""

    __slots__ = ("coordinator", "group", "member_id", "pending")

    def __init__(self, coordinator: "GroupCoordinator", group: "Group", member_id: str, *,
                 pending: bool):
        super().__init__()
        self.coordinator = coordinator
        self.group = group
        self.member_id = member_id
        self.pending = pending

    def try_complete(self) -> bool:
        return False

    def on_expire(self) -> None:
        self.finish(None)
        self.coordinator.on_expire_heartbeat(self)


class DelayedSync(DelayedOperation):
    """CompletingRebalance/Stable of one generation: every member must send its SyncGroup
    within the rebalance timeout; done when all did (checked on ``sync_key``) or the
    generation ended, else the coordinator removes the missing ones at the deadline."""

    __slots__ = ("coordinator", "group", "generation_id")

    def __init__(self, coordinator: "GroupCoordinator", group: "Group", generation_id: int):
        super().__init__()
        self.coordinator = coordinator
        self.group = group
        self.generation_id = generation_id

    def try_complete(self) -> bool:
        if not self.coordinator.sync_is_complete(self.group, self.generation_id):
            return False
        return self.finish(None)

    def on_expire(self) -> None:
        self.finish(None)
        self.coordinator.on_expire_pending_sync(self.group, self.generation_id)
