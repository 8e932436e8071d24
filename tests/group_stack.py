"""A group coordinator over a real broker core (tests/replica_stack.py) without the network,
for tests on a virtual-time loop: ``__consumer_offsets`` in a temporary data directory, the
coordinator loaded and serving, member ids ``client-1``, ``client-2``, ... in order, and small
helpers that make requests read like the protocol."""
from __future__ import annotations

import asyncio
import itertools

from pylog.broker.group import (OFFSETS_TOPIC, GroupConfig, GroupCoordinator, OffsetCommitEntry,
                                OffsetsTopic, ensure_offsets_topic)
from pylog.records import iter_records
from replica_stack import Stack

RANGE = (("range", b"range-meta"),)


class GroupStack:
    """Broker 1 with ``partitions`` offsets partitions and a started GroupCoordinator."""

    def __init__(self, data_dir, loop, *, partitions: int = 4, brokers=(1,), **settings):
        self.data_dir = data_dir
        self.loop = loop
        self.stack = Stack(data_dir, loop=loop, brokers=brokers)
        self.config = GroupConfig(offsets_topic_num_partitions=partitions, **settings)
        self.wall_ms = 1_700_000_000_000
        count = ensure_offsets_topic(self.stack.controller, self.config)
        self.offsets = OffsetsTopic(self.stack.rm, count,
                                    commit_timeout_ms=self.config.offsets_commit_timeout_ms,
                                    wall_clock_ms=lambda: self.wall_ms)
        ids = itertools.count(1)
        self.coordinator = GroupCoordinator(self.config, self.offsets, loop=loop,
                                            new_member_id=lambda client: f"{client}-{next(ids)}")

    async def start(self) -> "GroupStack":
        self.coordinator.start(self.stack.controller)
        await self.coordinator.wait_loaded()
        return self

    async def close(self) -> None:
        await self.coordinator.close()
        await self.stack.close()

    def records(self, group_id: str):
        """Every record of the group's offsets partition, in order."""
        return self.records_in(self.coordinator.partition_for(group_id))

    def records_in(self, partition: int):
        """Every record of offsets partition ``partition``, in order."""
        log = self.stack.rm.partition(OFFSETS_TOPIC, partition).log
        out, offset = [], log.log_start_offset
        while offset < log.log_end_offset:
            data = log.read(offset, 1 << 20).data
            records = [r for r in iter_records(data) if r.offset >= offset]
            if not records:
                break
            out += records
            offset = records[-1].offset + 1
        return out


async def start_stack(data_dir, loop, **kw) -> GroupStack:
    return await GroupStack(data_dir, loop, **kw).start()


# ---- requests -------------------------------------------------------------------------------

def join(coordinator: GroupCoordinator, group: str, member: str = "", *, session: int = 3000,
         rebalance: int = 10_000, protocols=RANGE, protocol_type: str = "consumer",
         client: str = "client", v4: bool = False, instance: str | None = None
         ) -> asyncio.Future:
    return coordinator.join_group(group, member, instance, client, "", session, rebalance,
                                  protocol_type, protocols, require_known_member_id=v4)


def sync(coordinator: GroupCoordinator, group: str, generation: int, member: str,
         assignments: dict | None = None) -> asyncio.Future:
    return coordinator.sync_group(group, generation, member, None, assignments or {})


async def joined(coordinator, group, member="", **kw):
    """Join and wait for the answer (only for joins that complete without other members)."""
    return await asyncio.wait_for(join(coordinator, group, member, **kw), 60)


async def stable_member(coordinator, group, **kw):
    """A one-member group's member, Stable: (member id, generation)."""
    result = await joined(coordinator, group, **kw)
    assert result.error_code == 0, result
    synced = await asyncio.wait_for(sync(coordinator, group, result.generation_id,
                                         result.member_id, {result.member_id: b"all"}), 60)
    assert synced.error_code == 0, synced
    return result.member_id, result.generation_id


def commit(coordinator, group, offsets: dict, *, generation=-1, member=""):
    """OffsetCommit of {(topic, partition): offset or OffsetCommitEntry}."""
    entries = {tp: o if isinstance(o, OffsetCommitEntry) else OffsetCommitEntry(o)
               for tp, o in offsets.items()}
    return coordinator.commit_offsets(group, generation, member, None, entries)
