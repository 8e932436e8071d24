"""The partition state machine with a simulated follower (issue 3, item 3).

Broker 1 (this one) leads ``t-0`` with replicas [1, 2]; broker 2 is simulated: it "fetches"
through ReplicaManager.fetch with replica_id=2 at the offset its log would have. Time is
virtual (tests/virtual_time.py): deadlines and replica lag cost no real time.
"""
from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import Future

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylog.broker.partition import NotEnoughReplicasError, Partition
from pylog.controller import PartitionState, StalePartitionEpochError
from pylog.storage.config import LogConfig
from pylog.storage.log import PartitionLog
from replica_stack import Stack, batch, fetch_request, offsets_of
from virtual_time import run

TP = ("t", 0)
LAG_MS = 10_000


def leader_stack(tmp_path, loop, *, min_isr: int = 1, replicas=(1, 2)) -> Stack:
    stack = Stack(tmp_path / "data", brokers=sorted(set(replicas) | {1}), clock=loop.time,
                  loop=loop, lag_ms=LAG_MS)
    stack.controller.create_topic("t", -1, -1, {"min.insync.replicas": str(min_isr)},
                                  assignments={0: list(replicas)})
    return stack


async def follower_fetch(stack: Stack, offset: int, replica: int = 2):
    [result] = await stack.rm.fetch(replica, 0, 1, 1 << 20, 0,
                                    [fetch_request("t", 0, offset)])
    return result


async def consumer_fetch(stack: Stack, offset: int):
    [result] = await stack.rm.fetch(-1, 0, 1, 1 << 20, 0, [fetch_request("t", 0, offset)])
    return result


def produce(stack: Stack, acks: int, records: bytearray, timeout_ms: int = 30_000):
    return stack.rm.produce(acks, timeout_ms, {TP: memoryview(records)})


# ---- acks=all ---------------------------------------------------------------------------------

def test_acks_all_parks_until_the_follower_catches_up(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop, min_isr=2)
        partition = stack.rm.partition(*TP)
        assert partition.is_leader and partition.isr == (1, 2)
        waiting = loop.create_task(produce(stack, -1, batch(3)))
        await asyncio.sleep(0)
        assert not waiting.done() and stack.rm.purgatory.watched(TP) == 1
        assert partition.log_end_offset == 3 and partition.high_watermark == 0
        # the follower fetches from 0: it gets the data (up to the LEO) but does not have it
        read = await follower_fetch(stack, 0)
        assert offsets_of(read.records) == [0, 1, 2] and read.high_watermark == 0
        await asyncio.sleep(0)
        assert not waiting.done()
        # its next fetch says it has everything: HW = 3 passes the last offset (2)
        read = await follower_fetch(stack, 3)
        assert read.high_watermark == 3
        result = (await waiting)[TP]
        assert result.error_code == 0 and result.base_offset == 0
        await stack.close()
    run(main)


def test_acks_all_waits_for_its_own_last_offset_only(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        first = loop.create_task(produce(stack, -1, batch(2)))    # offsets 0-1
        second = loop.create_task(produce(stack, -1, batch(2)))   # offsets 2-3
        await asyncio.sleep(0)
        await follower_fetch(stack, 1)   # HW 1: not past offset 1 yet
        await asyncio.sleep(0)
        assert not first.done()
        await follower_fetch(stack, 2)   # HW 2: first done, second not
        await asyncio.sleep(0)
        assert first.done() and (await first)[TP].error_code == 0
        assert not second.done()
        await follower_fetch(stack, 4)
        assert (await second)[TP].base_offset == 2
        await stack.close()
    run(main)


def test_acks_all_times_out_with_7(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        start = loop.time()
        result = (await produce(stack, -1, batch(3), timeout_ms=1500))[TP]
        assert result.error_code == 7
        assert result.base_offset == 0  # appended, just not replicated in time
        assert loop.time() - start == pytest.approx(1.5)
        partition = stack.rm.partition(*TP)
        assert partition.log_end_offset == 3 and partition.high_watermark == 0
        assert len(stack.rm.purgatory) == 0
        await stack.close()
    run(main)


def test_acks_all_refused_with_19_when_isr_below_min_insync(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop, min_isr=3, replicas=(1, 2, 3))
        stack.controller.alter_partition("t", 0, [1, 2], 0)
        partition = stack.rm.partition(*TP)
        assert partition.isr == (1, 2)
        result = (await produce(stack, -1, batch(3)))[TP]
        assert result.error_code == 19
        assert partition.log_end_offset == 0  # nothing appended
        # acks=1 does not care about the ISR size
        assert (await produce(stack, 1, batch(1)))[TP].error_code == 0
        assert partition.log_end_offset == 1
        await stack.close()
    run(main)


def test_acks_all_answered_20_when_the_isr_shrank_after_the_append(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop, min_isr=2)
        partition = stack.rm.partition(*TP)
        waiting = loop.create_task(produce(stack, -1, batch(3), timeout_ms=60_000))
        await asyncio.sleep(LAG_MS / 1000 + 1)  # the follower never fetches
        assert not waiting.done()
        assert stack.rm.maybe_shrink_isr() == 1
        # proposed, not committed: the ISR and HW wait for the controller
        assert partition.pending_isr == (1,) and partition.isr == (1, 2)
        assert partition.high_watermark == 0 and not waiting.done()
        await stack.rm.wait_for_isr_changes()
        assert partition.isr == (1,) and partition.partition_epoch == 1
        assert stack.controller.metadata.partition("t", 0).isr == [1]
        result = (await waiting)[TP]
        assert result.error_code == 20 and partition.high_watermark == 3
        # and new acks=all produces are refused up front
        assert (await produce(stack, -1, batch(1)))[TP].error_code == 19
        await stack.close()
    run(main)


def test_acks_all_on_a_single_replica_completes_at_once(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop, replicas=(1,))
        start = loop.time()
        result = (await produce(stack, -1, batch(4)))[TP]
        assert result.error_code == 0 and loop.time() == start
        assert stack.rm.partition(*TP).high_watermark == 4
        await stack.close()
    run(main)


# ---- reads: HW for consumers, LEO for followers ---------------------------------------------

def test_consumers_never_read_at_or_after_the_high_watermark(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        await produce(stack, 1, batch(2, timestamp=1000))   # 0-1
        await produce(stack, 1, batch(3, timestamp=5000))   # 2-4
        await follower_fetch(stack, 2)      # follower has the first batch: HW 2
        partition = stack.rm.partition(*TP)
        assert (partition.high_watermark, partition.log_end_offset) == (2, 5)
        read = await consumer_fetch(stack, 0)
        assert offsets_of(read.records) == [0, 1]
        assert read.high_watermark == read.last_stable_offset == 2
        for offset in (2, 3, 4, 5):  # [HW, LEO]: empty, no error
            read = await consumer_fetch(stack, offset)
            assert (read.error_code, read.records) == (0, b"")
        assert (await consumer_fetch(stack, 6)).error_code == 1
        # the follower reads on to the LEO
        assert offsets_of((await follower_fetch(stack, 2)).records) == [2, 3, 4]
        assert stack.rm.list_offsets("t", 0, -1, 0).offset == 2
        assert stack.rm.list_offsets("t", 0, -1, 0, replica_id=-2).offset == 5
        # by time: the first record at 5000 is at offset 2, not below the HW yet
        assert stack.rm.list_offsets("t", 0, 5000, 0).offset == -1
        assert stack.rm.list_offsets("t", 0, 5000, 0, replica_id=-2).offset == 2
        await stack.close()
    run(main)


def test_follower_beyond_the_leader_end_is_out_of_range(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        await produce(stack, 1, batch(2))
        assert (await follower_fetch(stack, 3)).error_code == 1
        partition = stack.rm.partition(*TP)
        assert partition.follower(2).log_end_offset == -1  # state untouched
        assert (await follower_fetch(stack, 0, replica=7)).error_code == 6  # not a replica
        await stack.close()
    run(main)


# ---- ISR shrink and expand, through the controller -------------------------------------------

def test_isr_shrinks_only_after_the_lag_time(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        partition = stack.rm.partition(*TP)
        await asyncio.sleep(LAG_MS / 1000 - 1)
        assert stack.rm.maybe_shrink_isr() == 0
        await asyncio.sleep(2)
        assert stack.rm.maybe_shrink_isr() == 1
        assert stack.rm.maybe_shrink_isr() == 0  # one proposal in flight at a time
        await stack.rm.wait_for_isr_changes()
        assert partition.isr == (1,) and partition.pending_isr is None
        await stack.close()
    run(main)


def test_a_follower_that_keeps_fetching_stays_in_sync(tmp_path):
    """It always trails by what arrived since its last fetch, yet is caught up as of that
    fetch (Kafka's lastCaughtUpTime rule)."""
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        partition = stack.rm.partition(*TP)
        follower_end = 0
        for _ in range(30):
            await produce(stack, 1, batch(1))
            await follower_fetch(stack, follower_end)  # one append behind, every time
            follower_end = partition.log_end_offset    # what that fetch brought it
            await asyncio.sleep(LAG_MS / 1000 / 4)
            assert stack.rm.maybe_shrink_isr() == 0
        assert stack.rm.partition(*TP).isr == (1, 2)
        await stack.close()
    run(main)


def test_isr_expands_after_catch_up_and_only_once_committed(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        partition = stack.rm.partition(*TP)
        await asyncio.sleep(LAG_MS / 1000 + 1)
        stack.rm.maybe_shrink_isr()
        await stack.rm.wait_for_isr_changes()
        assert partition.isr == (1,)
        await produce(stack, 1, batch(5))
        assert partition.high_watermark == 5
        await follower_fetch(stack, 3)  # behind the HW: not eligible
        assert partition.pending_isr is None
        await follower_fetch(stack, 5)  # reached the HW and the epoch start
        assert partition.pending_isr == (1, 2) and partition.isr == (1,)
        assert stack.controller.metadata.partition("t", 0).isr == [1]
        await stack.rm.wait_for_isr_changes()
        assert partition.isr == (1, 2) and partition.partition_epoch == 2
        assert stack.controller.metadata.partition("t", 0).isr == [1, 2]
        await stack.close()
    run(main)


def test_pending_expansion_already_holds_back_the_high_watermark(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        partition = stack.rm.partition(*TP)
        await asyncio.sleep(LAG_MS / 1000 + 1)
        stack.rm.maybe_shrink_isr()
        await stack.rm.wait_for_isr_changes()
        await produce(stack, 1, batch(2))
        await follower_fetch(stack, 2)  # proposes (1, 2)
        assert partition.pending_isr == (1, 2)
        await produce(stack, 1, batch(2))  # LEO 4; follower still at 2
        assert partition.high_watermark == 2  # the maximal ISR counts the follower
        await stack.close()
    run(main)


def test_stale_proposal_is_refused_and_never_applied(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop, replicas=(1, 2, 3))
        partition = stack.rm.partition(*TP)
        await asyncio.sleep(LAG_MS / 1000 + 1)
        await follower_fetch(stack, 0, replica=3)  # 3 is caught up, 2 is not
        assert stack.rm.maybe_shrink_isr() == 1
        assert partition.pending_isr == (1, 3)
        # before the proposal reaches the controller, another change commits
        stack.controller.alter_partition("t", 0, [1, 2], 0)
        assert partition.isr == (1, 2) and partition.partition_epoch == 1
        await stack.rm.wait_for_isr_changes()   # the proposal (epoch 0) is refused
        assert partition.isr == (1, 2) and partition.pending_isr is None
        with pytest.raises(StalePartitionEpochError):
            stack.controller.alter_partition("t", 0, [1, 3], 0)
        # a fresh proposal from the current epoch goes through
        assert stack.rm.maybe_shrink_isr() == 1
        await stack.rm.wait_for_isr_changes()
        assert partition.isr == (1,) and partition.partition_epoch == 2
        await stack.close()
    run(main)


def test_stale_committed_state_is_ignored(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        partition = stack.rm.partition(*TP)
        stack.controller.alter_partition("t", 0, [1], 0)
        assert partition.partition_epoch == 1 and partition.isr == (1,)
        old = PartitionState("t", 0, [1, 2], 1, 0, [1, 2], 0)
        assert not partition.apply_state(old, loop.time() * 1000)
        assert partition.isr == (1,)
        await stack.close()
    run(main)


def test_leader_epoch_checks_and_not_leader(tmp_path):
    async def main(loop):
        stack = leader_stack(tmp_path, loop)
        partition = stack.rm.partition(*TP)
        await produce(stack, 1, batch(1))
        newer = PartitionState("t", 0, [1, 2], 1, 3, [1, 2], 4)
        assert partition.apply_state(newer, loop.time() * 1000)
        for epoch, code in ((2, 74), (4, 75), (3, 0), (-1, 0)):
            [read] = await stack.rm.fetch(-1, 0, 0, 1 << 20, 0,
                                          [fetch_request("t", 0, 0, epoch=epoch)])
            assert read.error_code == code, epoch
            assert stack.rm.list_offsets("t", 0, -1, 0, epoch).error_code == code
        # appends are stamped with the new epoch
        result = (await produce(stack, 1, batch(1)))[TP]
        assert partition.log.epoch_cache.latest_entry == (3, result.base_offset)
        # leadership moves to broker 2: this one answers 6 and parked produces end with 6
        waiting = loop.create_task(produce(stack, -1, batch(1)))
        await asyncio.sleep(0)
        assert partition.apply_state(PartitionState("t", 0, [1, 2], 2, 4, [1, 2], 5),
                                     loop.time() * 1000)
        stack.rm.purgatory.check(TP)
        assert (await waiting)[TP].error_code == 6
        assert (await produce(stack, 1, batch(1)))[TP].error_code == 6
        assert (await consumer_fetch(stack, 0)).error_code == 6
        assert stack.rm.list_offsets("t", 0, -1, 0).error_code == 6
        await stack.close()
    run(main)


# ---- sans IO: the partition over a log ------------------------------------------------------

def two_replica_partition(directory, **log_kw) -> Partition:
    log = PartitionLog.open(directory, log_kw.pop("config", LogConfig()), **log_kw)
    partition = Partition("t", 0, log, local_id=1)
    partition.apply_state(PartitionState("t", 0, [1, 2], 1, 0, [1, 2], 0), 0.0)
    return partition


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "fetch", "shrink", "expand"]),
                          st.integers(min_value=0, max_value=4)), max_size=25))
def test_high_watermark_never_passes_an_isr_member(steps):
    with tempfile.TemporaryDirectory() as directory:
        p = two_replica_partition(directory)
        follower_end, last_hw, now = 0, 0, 0.0
        for action, n in steps:
            now += 1000.0
            if action == "append":
                p.append_as_leader(batch(n + 1), 1)
            elif action == "fetch":
                follower_end = min(p.log_end_offset, follower_end + n)
                _, change = p.update_follower_fetch_state(2, follower_end, 0, now)
                if change is not None:  # the controller commits at once
                    p.apply_state(PartitionState("t", 0, [1, 2], 1, 0, list(change.new_isr),
                                                 p.partition_epoch + 1), now)
            elif action == "shrink":
                change = p.maybe_shrink_isr(now, 1500.0)
                if change is not None:
                    p.apply_state(PartitionState("t", 0, [1, 2], 1, 0, list(change.new_isr),
                                                 p.partition_epoch + 1), now)
            if 2 in p.maximal_isr:
                assert p.high_watermark <= follower_end
            assert last_hw <= p.high_watermark <= p.log_end_offset
            read = p.read_records(0, 1 << 20, from_follower=False, min_one_batch=True)
            assert all(o < p.high_watermark for o in offsets_of(read.data))
            last_hw = p.high_watermark
        p.log.close()


def test_append_counts_for_the_high_watermark_only_once_durable(tmp_path):
    flushes: list[tuple[int, Future]] = []

    def requester(log, up_to):
        future: Future = Future()
        flushes.append((up_to, future))
        return future

    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig().with_fsync("always"),
                            flush_requester=requester)
    p = Partition("t", 0, log, local_id=1)
    p.apply_state(PartitionState("t", 0, [1], 1, 0, [1], 0), 0.0)
    result = p.append_as_leader(batch(3), 1)
    assert result.durable is flushes[0][1]
    assert p.high_watermark == 0 and p.local_end_offset_for_hw == 0
    assert p.produce_status(3, 0, 1) is None and p.produce_status(3, 0, -1) is None
    p.append_as_leader(batch(2), 1)
    assert p.on_flushed(log.flush(3))          # first fsync covers the first append
    assert p.high_watermark == 3
    assert p.produce_status(3, 0, 1) == 0 and p.produce_status(5, 0, 1) is None
    assert p.on_flushed(log.flush(5))
    assert p.high_watermark == 5 and p.produce_status(5, 0, -1) == 0
    p.on_flush_failed(OSError(5, "EIO"))      # a failed fsync takes the replica offline
    assert p.produce_status(5, 0, 1) == 56
    log.close()


def test_not_enough_replicas_is_raised_before_appending(tmp_path):
    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig(min_insync_replicas=2))
    p = Partition("t", 0, log, local_id=1)
    p.apply_state(PartitionState("t", 0, [1, 2], 1, 0, [1], 0), 0.0)
    with pytest.raises(NotEnoughReplicasError) as info:
        p.append_as_leader(batch(1), -1)
    assert info.value.error_code == 19 and log.log_end_offset == 0
    log.close()


def test_follower_high_watermark_is_min_of_leader_hw_and_own_end(tmp_path):
    leader_dir, follower_dir = tmp_path / "leader", tmp_path / "follower"
    leader = two_replica_partition(str(leader_dir))
    follower_log = PartitionLog.open(str(follower_dir), LogConfig())
    follower = Partition("t", 0, follower_log, local_id=2)
    follower.apply_state(PartitionState("t", 0, [1, 2], 1, 0, [1, 2], 0), 0.0)
    assert not follower.is_leader
    leader.append_as_leader(batch(3), 1)
    leader.append_as_leader(batch(2), 1)
    read = leader.read_records(0, 1 << 20, from_follower=True, min_one_batch=True)
    first_batch = bytearray(read.data[:len(batch(3))])
    follower.append_as_follower(first_batch, leader_high_watermark=5)
    assert follower.high_watermark == 3           # own LEO limits it
    leader.update_follower_fetch_state(2, 3, 0, 1.0)
    assert leader.high_watermark == 3
    follower.append_as_follower(bytearray(read.data[len(first_batch):]),
                                leader_high_watermark=leader.high_watermark)
    assert (follower.log_end_offset, follower.high_watermark) == (5, 3)  # leader's HW
    leader.log.close()
    follower_log.close()


def test_observers_replicate_but_never_join_the_isr(tmp_path):
    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig())
    p = Partition("t", 0, log, local_id=1)
    p.apply_state(PartitionState("t", 0, [1, 2, 3], 1, 0, [1, 2], 0, observers=[3]), 0.0)
    p.append_as_leader(batch(4), 1)
    p.update_follower_fetch_state(2, 4, 0, 1.0)
    assert p.high_watermark == 4  # the observer (3) has nothing yet: it does not count
    moved, change = p.update_follower_fetch_state(3, 4, 0, 2.0)
    assert change is None and p.pending_isr is None and p.isr == (1, 2)
    assert not p.under_replicated
    assert p.maybe_shrink_isr(100_000.0, 1000.0).new_isr == (1,)  # 2 stopped fetching
    log.close()
